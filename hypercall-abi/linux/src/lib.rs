//! The Linux platform: Xen through `/dev/xen/*`.
//!
//! Implements the platform traits of [`hypercall_abi::platform`] over the
//! devices Linux's Xen drivers provide, as Xen's own libraries do:
//!
//! | device              | type                                 | library it mirrors    |
//! |---------------------|--------------------------------------|-----------------------|
//! | `/dev/xen/evtchn`   | [`LinuxEvtchn`]: [`EventChannels`]   | `libxenevtchn`        |
//! | `/dev/xen/gntalloc` | [`LinuxGntalloc`]: [`GrantShare`]    | `libxengntshr`        |
//! | `/dev/xen/gntdev`   | [`LinuxGntdev`]: [`GrantMap`]        | `libxengnttab`        |
//! | `/dev/xen/privcmd`  | [`Privcmd`]                          | `libxencall`, `libxenforeignmemory` |
//! | `/dev/xen/xenbus`   | [`xenstore::open`]: [`Xenstore`]     | `libxenstore`         |
//!
//! The raw uapi (ioctl numbers and structures) is in [`sys`], which holds
//! the crate's ioctl calls; memory shared with other domains is only ever
//! reached through [`SharedMemory`](hypercall_abi::platform::SharedMemory).
//!
//! [`EventChannels`]: hypercall_abi::platform::EventChannels
//! [`GrantShare`]: hypercall_abi::platform::GrantShare
//! [`GrantMap`]: hypercall_abi::platform::GrantMap
//! [`Xenstore`]: hypercall_abi::platform::Xenstore

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod error;
pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
mod mapping;
pub mod privcmd;
pub mod sys;
mod uring_wait;
pub mod xenfs;
pub mod xenstore;

pub use error::OpenError;
pub use evtchn::LinuxEvtchn;
pub use gntalloc::{LinuxGntalloc, LinuxSharedGrants, SelfGrantedBuffer, UnmapNotify};
pub use gntdev::{LinuxGntdev, LinuxMappedGrants};
pub use privcmd::{ConsoleChunk, ForeignMapping, HypercallBuffer, Privcmd, PrivcmdError, VcpuAffinity};
pub use xenfs::{LocalStoreRing, XenfsError};

/// Most pages one grant or foreign-mapping request may name (4 GiB), so
/// that sizes computed from a count never overflow.
pub const MAX_PAGES: usize = 1 << 20;
