//! Event channels: the doorbells of split drivers.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::xen::{DomId, EvtchnPort};

/// Why an event channel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvtchnError {
    /// The platform's device or peer could not be reached.
    #[error("event channel {op} failed: {source}")]
    Io {
        /// The operation that failed, e.g. `"bind_interdomain"`.
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The port is not bound through this handle.
    #[error("event channel port {0} is not bound through this handle")]
    NotBound(EvtchnPort),
    /// The remote end named a domain or port that does not exist or is not
    /// offered to us.
    #[error("cannot bind to port {port} of domain {domid}: it is not an unbound port offered to this domain")]
    BadRemote {
        /// The remote domain.
        domid: DomId,
        /// The remote port.
        port: EvtchnPort,
    },
    /// No more ports can be allocated.
    #[error("no free event channel ports")]
    NoFreePorts,
}

/// A handle on event channels (`libxenevtchn`'s `xenevtchn_handle`).
///
/// Ports bound through a handle deliver their events to it: the handle's
/// [`fd`](EventChannels::fd) becomes readable, [`pending`](EventChannels::pending)
/// returns the port, and the port stays masked until it is
/// [`unmask`](EventChannels::unmask)ed. Dropping the handle closes its ports.
pub trait EventChannels: Send + Sync {
    /// Allocates a port that `remote` may bind to (`EVTCHNOP_alloc_unbound`).
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, EvtchnError>;

    /// Binds a local port to `remote_port` of domain `remote`
    /// (`EVTCHNOP_bind_interdomain`) and returns the local port.
    fn bind_interdomain(&self, remote: DomId, remote_port: EvtchnPort) -> Result<EvtchnPort, EvtchnError>;

    /// Sends an event to the other end of `port` (`EVTCHNOP_send`).
    fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError>;

    /// An fd, usable in `epoll`/`poll`, that is readable when a port of this
    /// handle has a pending event.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Takes one pending port, if any, without blocking. The port is masked
    /// until [`unmask`](EventChannels::unmask).
    fn pending(&self) -> Result<Option<EvtchnPort>, EvtchnError>;

    /// Waits up to `timeout` (forever with `None`) for a pending port.
    fn wait(&self, timeout: Option<Duration>) -> Result<Option<EvtchnPort>, EvtchnError> {
        if let Some(port) = self.pending()? {
            return Ok(Some(port));
        }
        let timeout_ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        if poll_readable(self.fd(), timeout_ms).map_err(|source| EvtchnError::Io { op: "wait", source })? {
            self.pending()
        } else {
            Ok(None)
        }
    }

    /// Unmasks `port` so that its next event is delivered (`EVTCHNOP_unmask`).
    fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError>;

    /// Unmasks `w.unmask` (the port the previous call returned, if it is
    /// done with), then sleeps until a port of this handle has an event,
    /// `w.stop` or `w.also` is readable, or `w.timeout` passes, and takes
    /// the port: a data path's wait between rounds. One thread waits on a
    /// handle this way, always with the same `stop`.
    ///
    /// An event that comes while a port is masked is held and delivered
    /// at its unmask, so a port may stay masked for a whole round and be
    /// unmasked by the next wait. The default does that in three system
    /// calls (write, poll, read); a platform may do it in fewer.
    fn unmask_and_wait(&self, w: WaitFor<'_>) -> Result<Wake, EvtchnError> {
        unmask_and_wait_by_poll(self, w)
    }

    /// Closes `port` (`EVTCHNOP_close`); the other end sees it closed.
    fn close(&self, port: EvtchnPort) -> Result<(), EvtchnError>;
}

/// What [`EventChannels::unmask_and_wait`] waits for.
#[derive(Debug, Clone, Copy)]
pub struct WaitFor<'a> {
    /// A port to unmask first.
    pub unmask: Option<EvtchnPort>,
    /// Readable once the waiter must stop.
    pub stop: BorrowedFd<'a>,
    /// Another fd to wake for when readable (e.g. a TAP device).
    pub also: Option<BorrowedFd<'a>>,
    /// How long to sleep at most.
    pub timeout: Option<Duration>,
}

impl<'a> WaitFor<'a> {
    /// Unmask `unmask`, then wait for an event or `stop`.
    pub fn new(unmask: Option<EvtchnPort>, stop: BorrowedFd<'a>) -> Self {
        WaitFor { unmask, stop, also: None, timeout: None }
    }
}

/// What [`EventChannels::unmask_and_wait`] woke for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The port had an event, and is masked until unmasked.
    Port(EvtchnPort),
    /// `stop` is readable.
    Stopped,
    /// `also` is readable (or was, since an earlier wait asked for it).
    Also,
    /// The timeout passed.
    TimedOut,
    /// The handle was readable without a pending port (a loopback peer
    /// that hung up): look at the ring and wait again, not at once in a
    /// loop.
    Spurious,
}

/// [`EventChannels::unmask_and_wait`] in three system calls: unmask,
/// `poll` of the handle's fd, `stop` (and `also`), and `pending`.
pub fn unmask_and_wait_by_poll<E: EventChannels + ?Sized>(evtchn: &E, w: WaitFor<'_>) -> Result<Wake, EvtchnError> {
    if let Some(port) = w.unmask {
        evtchn.unmask(port)?;
    }
    let timeout_ms = w.timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut fds = vec![evtchn.fd(), w.stop];
    fds.extend(w.also);
    let ready = poll_readable_fds(&fds, timeout_ms).map_err(|source| EvtchnError::Io { op: "wait", source })?;
    if ready[1] {
        return Ok(Wake::Stopped);
    }
    if ready[0] {
        if let Some(port) = evtchn.pending()? {
            return Ok(Wake::Port(port));
        }
        return Ok(Wake::Spurious);
    }
    if ready.get(2).copied().unwrap_or(false) {
        return Ok(Wake::Also);
    }
    Ok(Wake::TimedOut)
}

/// Waits until one of `fds` is readable (or hung up) or `timeout_ms`
/// passes (-1: forever); returns which are.
fn poll_readable_fds(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> std::io::Result<Vec<bool>> {
    use std::os::fd::AsRawFd;
    let mut pfds: Vec<libc::pollfd> =
        fds.iter().map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    loop {
        // SAFETY: `pfds` is a live array of `pfds.len()` valid pollfds,
        // exclusively borrowed for the call; poll(2) writes only their
        // `revents`.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(pfds.iter().map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0).collect());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Waits until `fd` is readable or `timeout_ms` passes (-1: forever);
/// returns whether it became readable.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `pfd` is a valid pollfd array of length 1, exclusively
        // borrowed for the call; poll(2) writes only its `revents`.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
