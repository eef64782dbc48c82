//! What a platform offers to split drivers, as traits.
//!
//! A platform is the thing that carries Xen's ABI for a process: real Xen
//! through Linux's `/dev/xen/*` devices (`xen-linux`), or two processes on
//! one host (`xen-loopback`). Drivers are written against these traits and
//! the implementation is chosen at the edge, in `main`.
//!
//! The traits mirror Xen's own user-space libraries, so that a reader who
//! knows those knows these:
//! - [`EventChannels`] is `libxenevtchn`: one handle, many ports, one fd
//!   that becomes readable when a port fired.
//! - [`GrantShare`] is `libxengntshr` (a frontend grants its pages) and
//!   [`GrantMap`] is `libxengnttab` (a backend maps or copies them).
//! - [`Xenstore`] is `libxenstore`, implemented once for every platform by
//!   [`crate::xenstore::XsClient`] over a byte-stream transport.

mod evtchn;
mod grant;
mod memory;
mod store;

pub use evtchn::{unmask_and_wait_by_poll, EventChannels, EvtchnError, WaitFor, Wake};
pub use grant::{CopyMemory, GrantCopyOp, GrantCopyPtr, GrantError, GrantMap, GrantShare, MappedGrants, SharedGrants};
pub use memory::{SharedMemory, SharedMemoryError};
pub use store::{Transaction, WatchEvent, Xenstore, XsError, XsPerm, XsPermAccess};
