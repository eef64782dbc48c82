//! rblkback: a userspace dom0 block backend for Linux's xen-blkfront.
//!
//! One process serves one virtual block device (`vbd`) to one frontend,
//! from a raw image file, a host block device or a qcow2 image with its
//! backing chain ([`qcow2`], [`image`]). It speaks the PV block protocol
//! of `xen/io/blkif.h` exactly as Linux's in-kernel xen-blkback
//! does towards xen-blkfront: the same xenstore nodes and states
//! ([`xenbus`]), multi-page and multi-queue rings ([`queue`]), indirect
//! requests, persistent grants ([`grants`]), flush, barrier and discard,
//! and the same status for every malformed request ([`request`]).
//!
//! The backend is generic over a [`platform::Platform`]: real Xen through
//! Linux's `/dev/xen` devices ([`platform::XenPlatform`]), or the loopback
//! hypervisor ([`platform::LoopbackPlatform`]) that the tests use.
//!
//! | module | what |
//! |---|---|
//! | [`xenbus`] | the handshake with the frontend; [`Backend`] runs a device |
//! | [`queue`] | one ring and its thread: consume, serve, respond, notify |
//! | [`request`] | validation of each request copied off a ring |
//! | [`device`] | the I/O of one request: grants to disk and back |
//! | [`grants`] | mapping the frontend's pages, persistent or per request |
//! | [`disk`] | the storage: raw file or block device, or memory |
//! | [`qcow2`] | qcow2 images with backing files, and creating them |
//! | [`image`] | choosing the format; per-guest overlays over a shared base |
//! | [`stats`] | request counters |
//! | [`memgrant`] | an in-process grant table for tests and fuzzing |
//!
//! Requests are served synchronously, one queue per thread. Pages are
//! mapped (not grant-copied), which on both platforms costs one round trip
//! per request or, with persistent grants, none once the cache is warm;
//! a raw disk then reads or writes them in place with one positioned
//! vectored call (`preadv`/`pwritev`), a qcow2 image through a bounce
//! buffer.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod device;
pub mod disk;
mod filemap;
pub mod grants;
pub mod image;
pub mod memgrant;
pub use pv_backend_common::platform;
pub mod qcow2;
pub mod queue;
pub mod request;
pub mod stats;
mod sys;
mod uring;
pub mod xenbus;

pub use disk::{Disk, DiskError, IoMode, MemDisk, RawDisk, RawDiskOptions};
pub use image::{create_overlay, open_image, ImageFormat};
pub use qcow2::{Qcow2Disk, Qcow2Error, Qcow2Options};
pub use platform::{LoopbackPlatform, Platform, PlatformError, XenPlatform};
pub use pv_backend_common::StopSignal;
pub use xenbus::{Backend, BackendConfig, BackendError, XenbusState};
