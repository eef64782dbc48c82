//! The loopback platform: Xen's split-driver ABI between processes of one
//! Linux host.
//!
//! A small *hypervisor* process ([`Hypervisor`], `xen-loopback serve`)
//! owns the grant tables, the event channel table and a xenstore daemon.
//! Each *domain* is a process that connects to it and claims a domain id
//! ([`LoopbackDomain::connect`]); from then on it uses the platform traits
//! of [`hypercall_abi::platform`] exactly as it would on Xen:
//!
//! - grants ([`LoopbackGrantShare`], [`LoopbackGrantMap`]): granted pages
//!   live in sealed memfds; the hypervisor checks every map against its
//!   grant table (owner, grantee, read-only, not ended) and passes the
//!   memfd, reopened read-only for read-only grants, so that the kernel
//!   itself refuses writes;
//! - event channels ([`LoopbackEventChannels`]): each port is a doorbell
//!   socket in the handle's `epoll` set, one-shot so that a fired port
//!   stays masked until unmasked; a notification rings the peer's doorbell
//!   directly, without a round trip to the hypervisor;
//! - xenstore ([`LoopbackDomain::xenstore`]): the xenstore wire protocol on
//!   a socket the hypervisor opened for the domain, spoken by the shared
//!   [`XsClient`].
//!
//! A domain that exits, is killed or misbehaves is destroyed by the
//! hypervisor; the other domains carry on, and memory they mapped from it
//! stays valid.

mod domain;
pub mod echo;
mod evtchn;
mod grant;
mod hv;
mod proto;
mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use domain::LoopbackDomain;
pub use evtchn::LoopbackEventChannels;
pub use grant::{LoopbackGrantMap, LoopbackGrantShare, LoopbackMappedGrants, LoopbackSharedGrants};
pub use hv::{Hypervisor, SOCKET_NAME};
pub use hypercall_abi::xenstore::XsClient;

/// Why connecting to, or serving as, the loopback hypervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// The hypervisor's control socket could not be created.
    #[error("cannot listen on {path}: {source}; check that the directory exists and is writable")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another hypervisor already answers on the socket.
    #[error("a loopback hypervisor already serves {0}; stop it or use another directory")]
    AlreadyServing(PathBuf),
    /// No hypervisor answers on the socket.
    #[error("cannot reach the loopback hypervisor at {path}: {source}; start it with `xen-loopback serve --dir DIR`")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Talking to the hypervisor failed.
    #[error("loopback hypervisor {op} failed: {source}")]
    Io {
        /// What was being done, e.g. `"hello"`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The hypervisor refused the request.
    #[error("the loopback hypervisor refused: {0}")]
    Refused(String),
    /// The hypervisor answered something that breaks the control protocol.
    #[error("the loopback hypervisor broke the control protocol: {0}")]
    Protocol(&'static str),
    /// The xenstore client could not start.
    #[error("cannot start the xenstore client: {0}")]
    Xenstore(#[from] hypercall_abi::platform::XsError),
}
