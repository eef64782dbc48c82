//! rnetback: a userspace dom0 network backend for Linux's xen-netfront.
//!
//! One process serves one virtual network interface (`vif`) to one
//! frontend, through a Linux TAP device (`vif<domid>.<devid>`, optionally
//! a port of a bridge) made with `rxen-tap`. It speaks the PV network
//! protocol of `xen/io/netif.h` as Linux's in-kernel xen-netback does
//! towards xen-netfront: the same xenstore nodes and states ([`xenbus`]),
//! multi-queue with split event channels ([`queue`]), scatter-gather,
//! checksum and TCP segmentation offloads ([`offload`]), and the same
//! answer to every malformed packet ([`tx`]), including disabling the
//! interface for a malicious frontend.
//!
//! The backend is generic over a [`platform::Platform`]: real Xen through
//! Linux's `/dev/xen` devices ([`platform::XenPlatform`]), or the loopback
//! hypervisor ([`platform::LoopbackPlatform`]) that the tests use.
//!
//! | module | what |
//! |---|---|
//! | [`xenbus`] | the handshake with the frontend; [`Backend`] runs a device |
//! | [`queue`] | one queue's rings, TAP queue and threads |
//! | [`copy`] | grant copies between frontend pages and the backend's buffers |
//! | [`tx`] | packets from the frontend: validation, grant copy out |
//! | [`rx`] | frames for the frontend: slots, grant copy in, responses |
//! | [`offload`] | checksum and GSO metadata between netif and virtio-net |
//! | [`stats`] | packet counters |
//! | [`memgrant`] | an in-process grant table for tests and fuzzing |
//!
//! Data moves by grant copy only (as netback's receive side and the
//! headers of its transmit side do), one batch per round of packets, into
//! and out of pages the backend granted to its own domain where the
//! platform can (so that the kernel pins no page per copy): the
//! frontend's pages are never mapped, only its two ring pages per queue.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod copy;
pub mod memgrant;
pub mod offload;
pub use pv_backend_common::platform;
pub mod queue;
pub mod rx;
pub mod stats;
pub mod tx;
pub mod xenbus;

pub use platform::{LoopbackPlatform, Platform, PlatformError, XenPlatform};
pub use stats::{Stats, StatsSnapshot};
pub use pv_backend_common::StopSignal;
pub use xenbus::{Backend, BackendConfig, BackendError, TapDelivery, XenbusState};
