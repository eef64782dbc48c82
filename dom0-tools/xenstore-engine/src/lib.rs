//! The xenstore engine: Xen's xenstore semantics without any transport.
//!
//! [`store`] holds the node tree, permissions, transactions, watches and
//! quotas; [`request`] frames and parses `xsd_sockmsg` messages and runs
//! them on a store. rxenstored serves it over Unix sockets and domain ring
//! pages; the loopback hypervisor over its per-domain sockets.

pub mod request;
pub mod store;

pub use request::{dispatch, error_message, handle, message, watch_event, FrameError, FrameReader};
pub use store::{Answer, Caller, ConnId, Errno, Fire, Op, Quotas, Store};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
