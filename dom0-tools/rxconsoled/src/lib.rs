//! rxconsoled: the PV console backend daemon, in place of Xen's
//! `xenconsoled`.
//!
//! One process serves every domain but dom0: it maps each domain's
//! console page (`struct xencons_interface`), binds its event channel,
//! and connects the two rings to a pty whose path it writes to
//! `/local/domain/D/console/tty`, where `xl console`, `xenconsole` and
//! `rxl console` find it. With `--log=guest` it also appends each guest's
//! output to `LOG_DIR/guest-NAME.log`, and with `--log=hv` the
//! hypervisor's console to `LOG_DIR/hypervisor.log`, under the same
//! names, in the same format, as xenconsoled (`LOG_DIR` is
//! `/var/log/xen/console` unless `--log-dir` says otherwise), so that
//! tools reading those files work unchanged.
//!
//! # Starting it
//!
//! It needs root, xenstored, and Linux's `xen-evtchn`, `xen-privcmd`
//! (and, to map consoles by grant, `xen-gntdev`) devices. Stop
//! xenconsoled first (two console daemons would fight over every
//! console), then start this one with xenconsoled's options:
//!
//! ```text
//! # as the init script does (detaches; pid file written):
//! rxconsoled --log=guest --pid-file=/var/run/xen/xenconsoled.pid
//! # as the systemd unit does (stays in the foreground, logs to stderr):
//! rxconsoled -i --log=guest
//! ```
//!
//! Options (xenconsoled's): `-i`/`--interactive` (foreground, log to
//! standard error; otherwise detach and log to syslog), `-v`/`--verbose`,
//! `--log=none|guest|hv|all`, `--log-dir=DIR`, `--pid-file=FILE` (when
//! detaching, `/var/run/xen/xenconsoled.pid` by default),
//! `-t`/`--timestamp=none|guest|hv|all`, `-o`/`--overflow-data=discard|keep`,
//! `--replace-escape`. SIGHUP reopens the log files (after rotation);
//! SIGTERM and SIGINT stop the daemon.
//!
//! Consoles served by xenconsoled when it stopped are taken over: the
//! daemon connects every existing domain's console at start-up. Domains
//! whose console `type` is not `xenconsoled` (QEMU's) are left alone.
//!
//! # Differences from xenconsoled
//!
//! - A console without a `limit` node buffers at most
//!   [`buffer::DEFAULT_LIMIT`] bytes for its pty (xenconsoled: no bound),
//!   and no `limit` is honoured above [`buffer::MAX_LIMIT`]: the node is
//!   the guest's to write.
//! - A guest that corrupts its ring indices is no longer served (logged);
//!   xenconsoled ignores the ring until the indices make sense again.
//! - Only the primary PV console (`console/`) is served; Arm's vUART is
//!   not.
//!
//! # Layout
//!
//! [`daemon`] is the loop; [`ring`] the console page; [`buffer`] and
//! [`logfile`] where output goes; [`pty`] the client side; [`store`] the
//! xenstore nodes and watches; [`platform`] Xen (real or a test's). All
//! `unsafe` code is in [`sys`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod buffer;
pub mod daemon;
pub mod logfile;
pub mod platform;
pub mod pty;
pub mod ring;
pub mod store;
pub mod sys;
pub mod syslog;

pub use buffer::Overflow;
pub use daemon::{Daemon, DaemonError, Options, DEFAULT_LOG_DIR};
pub use logfile::LogStyle;
pub use platform::{LinuxXen, Platform, PlatformError};

/// Where xenconsoled keeps its pid when it detaches
/// (`XEN_RUN_DIR/xenconsoled.pid`).
pub const DEFAULT_PID_FILE: &str = "/var/run/xen/xenconsoled.pid";

#[cfg(test)]
mod tests;
