//! The system calls that have no safe wrapper in `std`: `eventfd`,
//! `poll` and the stop signal handler. Every `unsafe` of the crate is
//! here.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// A new non-blocking, close-on-exec `eventfd` with counter 0.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd, is open, and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to the counter of the eventfd `file`, making it readable.
pub(crate) fn eventfd_signal(file: &File) -> io::Result<()> {
    match (&*file).write(&1u64.to_ne_bytes()) {
        Ok(_) => Ok(()),
        // The counter is saturated: it is readable already.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits until one of `fds` is readable or `timeout` passes (`None`:
/// forever). Returns, for each fd, whether it is readable (or hung up).
pub fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N], timeout: Option<Duration>) -> io::Result<[bool; N]> {
    let ready = poll_readable_slice(&fds, timeout)?;
    let mut out = [false; N];
    for (o, r) in out.iter_mut().zip(ready) {
        *o = r;
    }
    Ok(out)
}

/// [`poll_readable`] for a set of fds whose size is known only at run
/// time.
pub fn poll_readable_slice(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    loop {
        // SAFETY: `pfds` is a live array of `pfds.len()` valid pollfds,
        // exclusively borrowed for the call; poll(2) writes only their
        // `revents`.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if rc >= 0 {
            return Ok(pfds
                .iter()
                .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
                .collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The eventfd that SIGTERM and SIGINT signal, or -1 before
/// [`signal_on_termination`].
static SIGNAL_EVENTFD: AtomicI32 = AtomicI32::new(-1);

/// Set by SIGTERM and SIGINT once [`signal_on_termination`] is in place.
static TERMINATED: AtomicBool = AtomicBool::new(false);

/// Whether SIGTERM or SIGINT came (after [`signal_on_termination`]).
pub(crate) fn terminated() -> bool {
    TERMINATED.load(Ordering::Acquire)
}

extern "C" fn on_termination(_signal: libc::c_int) {
    // An atomic store is async-signal-safe.
    TERMINATED.store(true, Ordering::Release);
    let fd = SIGNAL_EVENTFD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a live 8-byte
        // buffer; `fd` is an eventfd kept open for the life of the process
        // (see `signal_on_termination`). A failed write is harmless: the
        // counter is already non-zero.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

/// Makes SIGTERM and SIGINT signal the eventfd `fd`, which must stay open
/// for the rest of the process's life (the caller leaks or keeps it).
pub(crate) fn signal_on_termination(fd: BorrowedFd<'static>) -> io::Result<()> {
    SIGNAL_EVENTFD.store(fd.as_raw_fd(), Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_termination as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is a fully initialised sigaction whose handler
        // only performs an async-signal-safe write; the old action is not
        // requested.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
