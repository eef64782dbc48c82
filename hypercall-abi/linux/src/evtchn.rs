//! Event channels over `/dev/xen/evtchn` (what `libxenevtchn` does on Linux).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use hypercall_abi::platform::{unmask_and_wait_by_poll, EventChannels, EvtchnError, WaitFor, Wake};
use hypercall_abi::xen::{DomId, EvtchnPort};

use crate::error::{open_device, OpenError};
use crate::sys::evtchn as sys;
use crate::uring_wait::{UringWait, Woken};

/// A handle on `/dev/xen/evtchn`: `xenevtchn_handle`.
///
/// The fd is non-blocking, so [`EventChannels::pending`] never blocks; wait
/// with [`EventChannels::wait`] or by polling [`EventChannels::fd`].
/// Dropping the handle closes every port bound through it.
///
/// [`EventChannels::unmask_and_wait`] goes through an io_uring of the
/// handle (one system call a wait instead of three), made at the first
/// wait; where io_uring is missing or forbidden, or after
/// [`set_wait_by_poll`]`(true)`, it polls.
#[derive(Debug)]
pub struct LinuxEvtchn {
    /// Dropped before `file`: it cancels a read in flight on it.
    waiter: Mutex<WaitMode>,
    file: File,
    /// Ports bound through this handle, to refuse operations on others
    /// (the kernel silently ignores unmasking a port that is not ours).
    ports: Mutex<BTreeSet<EvtchnPort>>,
}

impl LinuxEvtchn {
    /// The device.
    pub const PATH: &'static str = "/dev/xen/evtchn";

    /// Opens the device.
    pub fn open() -> Result<Self, OpenError> {
        let file = open_device(Self::PATH, "xen-evtchn", libc::O_NONBLOCK)?;
        Ok(Self { waiter: Mutex::new(WaitMode::Untried), file, ports: Mutex::new(BTreeSet::new()) })
    }

    fn ports(&self) -> MutexGuard<'_, BTreeSet<EvtchnPort>> {
        // The set is updated by single inserts/removes; a panic elsewhere
        // cannot leave it inconsistent.
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bound(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        if self.ports().contains(&port) {
            Ok(())
        } else {
            Err(EvtchnError::NotBound(port))
        }
    }

    /// Binds a virtual IRQ (`VIRQ_*`) to a new port of this handle.
    pub fn bind_virq(&self, virq: u32) -> Result<EvtchnPort, EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        let port = unsafe { sys::bind_virq(self.file.as_fd(), virq) }.map_err(|e| bind_error("bind_virq", e))?;
        self.ports().insert(port);
        Ok(port)
    }

    /// Clears the buffer of pending ports, and its overflow state (after
    /// [`EventChannels::pending`] failed with `EFBIG`: then every port may
    /// have fired and should be checked).
    pub fn reset(&self) -> Result<(), EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        unsafe { sys::reset(self.file.as_fd()) }.map_err(|source| EvtchnError::Io { op: "reset", source })
    }

    /// Allows interdomain bindings to `domid` only, from now on (for a
    /// deprivileged device model).
    pub fn restrict_domid(&self, domid: DomId) -> Result<(), EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        unsafe { sys::restrict_domid(self.file.as_fd(), domid) }
            .map_err(|source| EvtchnError::Io { op: "restrict_domid", source })
    }
}

/// Errors of allocating a port: out of ports, or an OS error.
/// How [`EventChannels::unmask_and_wait`] waits on a [`LinuxEvtchn`].
#[derive(Debug)]
enum WaitMode {
    /// Not waited yet.
    Untried,
    Uring(Box<UringWait>),
    Poll,
}

static WAIT_BY_POLL: AtomicBool = AtomicBool::new(false);

/// Makes the waits of handles that have not waited yet poll (three system
/// calls a wait) instead of going through io_uring: for comparisons, and
/// for hosts where io_uring misbehaves.
pub fn set_wait_by_poll(poll: bool) {
    WAIT_BY_POLL.store(poll, Ordering::Relaxed);
}

impl WaitMode {
    /// The mode of a handle's first wait; the first of a process is
    /// logged.
    fn choose() -> WaitMode {
        static LOGGED: std::sync::Once = std::sync::Once::new();
        if WAIT_BY_POLL.load(Ordering::Relaxed) {
            LOGGED.call_once(|| log::info!("event channel waits: poll, as asked"));
            return WaitMode::Poll;
        }
        match UringWait::new() {
            Ok(w) => {
                LOGGED.call_once(|| log::info!("event channel waits: io_uring"));
                WaitMode::Uring(Box::new(w))
            }
            Err(e) => {
                LOGGED.call_once(|| log::info!("event channel waits: poll (no io_uring: {e})"));
                WaitMode::Poll
            }
        }
    }
}

/// The error of a read of pending ports; an overflow of the kernel's
/// buffer of them (`EFBIG`) is logged as well, since events were lost.
fn read_error(op: &'static str, source: io::Error) -> EvtchnError {
    if source.raw_os_error() == Some(libc::EFBIG) {
        log::error!("event channel buffer overflowed: events were lost; reset() and check every port");
    }
    EvtchnError::Io { op, source }
}

fn bind_error(op: &'static str, source: io::Error) -> EvtchnError {
    match source.raw_os_error() {
        Some(libc::ENOSPC) => EvtchnError::NoFreePorts,
        _ => EvtchnError::Io { op, source },
    }
}

/// Errors of using a port: the kernel says `ENOTCONN` (or `EINVAL` out of
/// range) for a port not bound through this fd.
fn port_error(op: &'static str, port: EvtchnPort, source: io::Error) -> EvtchnError {
    match source.raw_os_error() {
        Some(libc::ENOTCONN | libc::EINVAL) => EvtchnError::NotBound(port),
        _ => EvtchnError::Io { op, source },
    }
}

impl AsFd for LinuxEvtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl EventChannels for LinuxEvtchn {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        let port = unsafe { sys::bind_unbound_port(self.file.as_fd(), u32::from(remote)) }
            .map_err(|e| bind_error("alloc_unbound", e))?;
        self.ports().insert(port);
        Ok(port)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort, EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        let port =
            unsafe { sys::bind_interdomain(self.file.as_fd(), u32::from(remote), remote_port) }.map_err(|source| {
                match source.raw_os_error() {
                    // Xen: the remote port is not unbound for us (EINVAL), or
                    // there is no such domain (ESRCH).
                    Some(libc::EINVAL | libc::ESRCH) => EvtchnError::BadRemote { domid: remote, port: remote_port },
                    _ => bind_error("bind_interdomain", source),
                }
            })?;
        self.ports().insert(port);
        Ok(port)
    }

    fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        unsafe { sys::notify(self.file.as_fd(), port) }.map_err(|e| port_error("notify", port, e))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn pending(&self) -> Result<Option<EvtchnPort>, EvtchnError> {
        let mut buf = [0u8; 4];
        loop {
            return match (&self.file).read(&mut buf) {
                Ok(4) => Ok(Some(u32::from_ne_bytes(buf))),
                Ok(n) => Err(EvtchnError::Io {
                    op: "pending",
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("evtchn read returned {n} bytes, not 4"),
                    ),
                }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => Err(read_error("pending", source)),
            };
        }
    }

    fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        self.bound(port)?;
        match (&self.file).write(&port.to_ne_bytes()) {
            Ok(4) => Ok(()),
            Ok(n) => Err(EvtchnError::Io {
                op: "unmask",
                source: io::Error::new(io::ErrorKind::WriteZero, format!("evtchn write took {n} bytes, not 4")),
            }),
            Err(source) => Err(EvtchnError::Io { op: "unmask", source }),
        }
    }

    fn unmask_and_wait(&self, w: WaitFor<'_>) -> Result<Wake, EvtchnError> {
        if let Some(port) = w.unmask {
            self.bound(port)?;
        }
        // One thread waits on a handle; the lock is never contended.
        let mut mode = self.waiter.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*mode, WaitMode::Untried) {
            *mode = WaitMode::choose();
        }
        let WaitMode::Uring(waiter) = &mut *mode else {
            drop(mode);
            return unmask_and_wait_by_poll(self, w);
        };
        match waiter.wait(self.file.as_fd(), w.unmask, w.stop, w.also, w.timeout) {
            Ok(Woken::Port(port)) => Ok(Wake::Port(port)),
            Ok(Woken::Stopped) => Ok(Wake::Stopped),
            Ok(Woken::Also) => Ok(Wake::Also),
            Ok(Woken::TimedOut) => Ok(Wake::TimedOut),
            Ok(Woken::Nothing) => Ok(Wake::Spurious),
            Err(source) => Err(read_error("unmask_and_wait", source)),
        }
    }

    fn close(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        // SAFETY: `file` is /dev/xen/evtchn, opened by `open`.
        unsafe { sys::unbind(self.file.as_fd(), port) }.map_err(|e| port_error("close", port, e))?;
        self.ports().remove(&port);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_xen_says_so() {
        if std::path::Path::new(LinuxEvtchn::PATH).exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = LinuxEvtchn::open().unwrap_err();

        assert!(matches!(err, OpenError::NotFound { path: "/dev/xen/evtchn", .. }), "{err:?}");
    }

    #[test]
    fn port_errors_name_the_port() {
        let err = port_error("notify", 7, io::Error::from_raw_os_error(libc::ENOTCONN));
        assert!(matches!(err, EvtchnError::NotBound(7)));
        let err = bind_error("alloc_unbound", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(err, EvtchnError::NoFreePorts));
    }
}
