//! rblkfront: a userspace Xen block frontend.
//!
//! It speaks the PV block protocol of `xen/io/blkif.h` towards a backend
//! exactly as Linux's xen-blkfront does: the same xenstore nodes and states
//! ([`xenbus`]), multi-page and multi-queue rings ([`queue`]), indirect
//! requests, persistent grants, flush (or barrier) and discard; and it
//! believes nothing the backend sends without checking it ([`shadow`]).
//!
//! [`BlockFrontend`] is generic over the platform traits of
//! [`hypercall_abi::platform`]: [`GrantShare`] to grant its pages,
//! [`EventChannels`] and [`Xenstore`]. It runs in a Linux guest's
//! userspace on Xen ([`platform::XenGuest`]: `/dev/xen/gntalloc`,
//! `/dev/xen/evtchn`, `/dev/xen/xenbus`) or on the loopback hypervisor
//! ([`platform::Loopback`]), which the tests use against rblkback.
//!
//! | module | what |
//! |---|---|
//! | [`protocol`] | the backend's xenstore nodes, parsed and bounded |
//! | [`xenbus`] | the handshake with the backend |
//! | [`queue`] | one ring: pages, event channel, requests in flight |
//! | [`shadow`] | the requests in flight, and the check of each response |
//! | [`device`] | [`BlockFrontend`]: connect, read, write (one transfer or a batch, copied or in place in the granted pages), flush, discard |
//! | [`stats`] | request counters |
//! | [`check`] | the `rblkfront check` pattern test |
//! | [`nbd`] | `rblkfront nbd`: the NBD transmission protocol served from the device |
//! | [`sys`] | the NBD driver's ioctls, and reads from a socket into granted pages (the crate's only `unsafe`) |
//! | [`platform`] | the platforms the binary runs on |
//!
//! ```no_run
//! use rblkfront::{platform::Loopback, BlockFrontend, FrontendConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let platform = Loopback::connect(std::path::Path::new("/tmp/hv"), 1)?;
//! let (grants, evtchn, store) = platform.handles()?;
//! let mut disk = BlockFrontend::open(grants, evtchn, store, FrontendConfig::new(51712))?;
//! let mut sector0 = vec![0u8; 512];
//! disk.read(0, &mut sector0)?;
//! disk.write(8, &[0xa5; 4096])?;
//! disk.flush()?;
//! disk.disconnect()?;
//! # Ok(())
//! # }
//! ```
//!
//! [`GrantShare`]: hypercall_abi::platform::GrantShare
//! [`EventChannels`]: hypercall_abi::platform::EventChannels
//! [`Xenstore`]: hypercall_abi::platform::Xenstore

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod check;
pub mod device;
mod error;
pub mod nbd;
pub use pv_frontend_common::platform;
pub mod protocol;
pub mod queue;
pub mod shadow;
pub mod stats;
pub mod sys;
pub mod xenbus;

pub use device::{BlockFrontend, FrontendConfig};
pub use error::{Error, ProtocolError};
pub use protocol::DiskInfo;
pub use stats::Stats;
