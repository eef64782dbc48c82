//! rxenstored: a xenstore daemon in Rust.
//!
//! It serves the [`xenstore_engine`] store to dom0's tools over the Unix
//! socket Xen's libxenstore connects to (`/var/run/xenstored/socket`), to
//! every introduced domain over its ring page and event channel
//! ([`ring`]), and to dom0's own kernel over the ring Linux's xenfs
//! offers. One thread, one `poll` loop ([`daemon`]).

pub mod daemon;
pub mod platform;
pub mod ring;
pub mod sys;

pub use daemon::{Daemon, DaemonError};
pub use platform::{LinuxXen, NoXen, Platform, PlatformError};

/// Where Xen's tools look for the daemon (`XENSTORED_RUNDIR`).
pub const DEFAULT_RUN_DIR: &str = "/var/run/xenstored";
/// The socket's name in the run directory.
pub const SOCKET_NAME: &str = "socket";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
