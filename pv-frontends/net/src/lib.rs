//! rnetfront: a userspace Xen network frontend.
//!
//! It speaks the PV network protocol of `xen/io/netif.h` towards a
//! backend exactly as Linux's xen-netfront does towards Linux's
//! xen-netback: the same xenstore nodes and states ([`xenbus`]),
//! multi-queue and split event channels ([`queue`]), a receive ring kept
//! full of granted pages, frames sent scatter-gather a page per slot with
//! checksum flags and GSO extra-info slots, received frames put back
//! together from their slots; and it believes nothing the backend sends
//! without checking it ([`tx`], [`rx`]).
//!
//! [`NetFrontend`] is generic over the platform traits of
//! [`hypercall_abi::platform`]: [`GrantShare`] to grant its pages,
//! [`EventChannels`] and [`Xenstore`]. It runs in a Linux guest's
//! userspace on Xen ([`platform::XenGuest`]: `/dev/xen/gntalloc`,
//! `/dev/xen/evtchn`, `/dev/xen/xenbus`), where the `rnetfront` program
//! bridges it to a TAP interface ([`tap`]), or on the loopback hypervisor
//! ([`platform::Loopback`]), which the tests use against a mock netback.
//!
//! | module | what |
//! |---|---|
//! | [`protocol`] | the backend's xenstore nodes, the MAC, the offload metadata of a frame |
//! | [`xenbus`] | the handshake with the backend |
//! | [`queue`] | one queue: tx and rx rings, event channel(s), buffer pages |
//! | [`tx`] | the transmit requests in flight, and the check of each response |
//! | [`rx`] | received frames put together, and the check of each response |
//! | [`device`] | [`NetFrontend`]: connect, send and receive (one frame or a batch) |
//! | [`offload`] | frame headers, and netif offloads to and from `virtio_net_hdr` |
//! | [`stats`] | frame counters |
//! | [`tap`] | `rnetfront tap`: frames between a TAP interface (`rxen-tap`) and the rings |
//! | [`check`] | `rnetfront check`: the handshake and a few test frames |
//! | [`sys`] | `poll(2)` and the stop signal handler (the crate's only `unsafe`) |
//! | [`platform`] | the platforms the binary runs on |
//!
//! ```no_run
//! use rnetfront::{platform::Loopback, FrontendConfig, NetFrontend, Offload};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let platform = Loopback::connect(std::path::Path::new("/tmp/hv"), 1)?;
//! let (grants, evtchn, store) = platform.handles()?;
//! let mut nic = NetFrontend::open(grants, evtchn, store, FrontendConfig::new(0))?;
//! let mut frame = vec![0xff; 60];
//! frame[6..12].copy_from_slice(&nic.mac().unwrap_or_default().0);
//! nic.send(&frame, &Offload::default())?;
//! if let Some(reply) = nic.recv(Some(std::time::Duration::from_secs(1)))? {
//!     println!("{} bytes back", reply.data.len());
//! }
//! nic.disconnect()?;
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
pub mod offload;
pub use pv_frontend_common::platform;
pub mod protocol;
pub mod queue;
pub mod rx;
pub mod stats;
pub mod sys;
pub mod tap;
pub mod tx;
pub mod xenbus;

pub use device::{FrontendConfig, NetFrontend, TxFrame};
pub use error::{Error, ProtocolError};
pub use protocol::{BackendFeatures, Checksum, Gso, GsoKind, Mac, Offload};
pub use rx::RxFrame;
pub use stats::Stats;
