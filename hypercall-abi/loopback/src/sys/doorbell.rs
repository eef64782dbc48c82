//! Doorbells: how one process wakes another for an event channel, and the
//! `epoll` set that collects a handle's doorbells.
//!
//! A doorbell is an `AF_UNIX` stream socket pair. The port's owner keeps
//! one end (the *receiver*) in its `epoll` set; the other end (the *bell*)
//! goes, through the hypervisor, to whoever may notify the port. Ringing
//! sends one byte with `MSG_DONTWAIT`; draining reads whatever accumulated.
//!
//! Why not an eventfd: both sides of an eventfd share one open file
//! description, so a malicious port owner could switch it to blocking mode
//! and saturate its counter, and the next notifier would block forever
//! (eventfd ignores `RWF_NOWAIT`). Here the non-blocking behaviour is a
//! per-call flag of the sender, a full buffer only means "already
//! pending", and the notifier never reads what the owner reads.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::{cvt, cvt_size, retry};

/// The receiving end of a doorbell.
#[derive(Debug)]
pub(crate) struct Doorbell(OwnedFd);

/// Creates a doorbell: the receiver, and the bell that rings it.
pub(crate) fn doorbell() -> io::Result<(Doorbell, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two ints, as socketpair(2)
    // requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair just returned these descriptors; each is owned
    // exactly once.
    let (rx, bell) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The receiver never sends: close that direction, so that the bell's
    // holders have nothing to read.
    // SAFETY: shutdown(2) takes plain values.
    unsafe { libc::shutdown(rx.as_raw_fd(), libc::SHUT_WR) };
    Ok((Doorbell(rx), bell))
}

/// What ringing a bell did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rung {
    /// The event was queued, or one was already pending.
    Delivered,
    /// Nobody holds the receiver any more.
    Gone,
}

/// Rings `bell` without ever blocking.
pub(crate) fn ring(bell: BorrowedFd<'_>) -> io::Result<Rung> {
    let byte = [1u8];
    let rc = retry(|| {
        // SAFETY: `byte` is a readable 1-byte buffer alive for the call; the
        // flags make the call non-blocking and SIGPIPE-free whatever the
        // descriptor's own flags are.
        cvt_size(unsafe {
            libc::send(
                bell.as_raw_fd(),
                byte.as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        })
    });
    match rc {
        Ok(_) => Ok(Rung::Delivered),
        // A full buffer holds undrained events: this one is pending already.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Rung::Delivered),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED)
            ) =>
        {
            Ok(Rung::Gone)
        }
        Err(e) => Err(e),
    }
}

/// Whether `fd` is an `AF_UNIX` stream socket, i.e. can be a bell.
pub(crate) fn is_bell(fd: BorrowedFd<'_>) -> bool {
    sockopt_int(fd, libc::SO_DOMAIN).ok() == Some(libc::AF_UNIX)
        && sockopt_int(fd, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
}

fn sockopt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are exclusively borrowed and `len` holds the
    // size of `v`, which the kernel writes at most.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            std::ptr::addr_of_mut!(v).cast(),
            &mut len,
        )
    })?;
    Ok(v)
}

impl Doorbell {
    /// Consumes every event rung so far. Bounded: a bell rung faster than
    /// we drain is left pending rather than keeping us here.
    pub(crate) fn drain(&self) -> io::Result<()> {
        let mut buf = [0u8; 256];
        for _ in 0..64 {
            let rc = retry(|| {
                // SAFETY: `buf` is a writable buffer alive for the call; the
                // flag makes the call non-blocking whatever the
                // descriptor's flags.
                cvt_size(unsafe {
                    libc::recv(
                        self.0.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                })
            });
            match rc {
                Ok(n) if n < buf.len() => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An `epoll` set whose entries are one-shot: an entry that fired stays
/// disarmed (the event channel is masked) until [`Epoll::rearm`].
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    /// A new, empty set.
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes a flag and touches no memory of ours.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: epoll_create1 just returned this descriptor; owned once.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
            u64: data,
        };
        // SAFETY: `ev` is a valid epoll_event, exclusively borrowed for the
        // call; both descriptors are valid for their borrows.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) })?;
        Ok(())
    }

    /// Adds `fd`, armed, reporting `data` when it becomes readable.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, data)
    }

    /// Re-arms `fd` after it fired; it fires again at once if still readable.
    pub(crate) fn rearm(&self, fd: BorrowedFd<'_>, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, data)
    }

    /// Removes `fd` from the set.
    pub(crate) fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null allowed
        // since Linux 2.6.9); the descriptors are valid for their borrows.
        cvt(unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever, 0: not at all) for one entry
    /// to fire and returns its data.
    pub(crate) fn wait_one(&self, timeout_ms: i32) -> io::Result<Option<u64>> {
        // SAFETY: epoll_event is plain old data for which all-zeroes is valid.
        let mut ev: libc::epoll_event = unsafe { zeroed() };
        let n = retry(|| {
            // SAFETY: `ev` is a writable array of one epoll_event, as
            // maxevents = 1 tells the kernel.
            cvt(unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, timeout_ms) })
        })?;
        Ok((n == 1).then_some(ev.u64))
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Whether `fd` becomes readable within `timeout_ms`.
#[cfg(test)]
pub(crate) fn readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, exclusively borrowed for the call.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rung_bell_fires_once_until_rearmed() {
        let (rx, bell) = doorbell().unwrap();
        assert!(is_bell(bell.as_fd()));
        let ep = Epoll::new().unwrap();
        ep.add(rx.as_fd(), 7).unwrap();
        assert_eq!(ep.wait_one(0).unwrap(), None);
        for _ in 0..3 {
            assert_eq!(ring(bell.as_fd()).unwrap(), Rung::Delivered);
        }
        assert_eq!(ep.wait_one(0).unwrap(), Some(7));
        assert_eq!(
            ep.wait_one(0).unwrap(),
            None,
            "one-shot: masked until re-armed"
        );
        rx.drain().unwrap();
        ep.rearm(rx.as_fd(), 7).unwrap();
        assert_eq!(
            ep.wait_one(0).unwrap(),
            None,
            "drained events are not delivered twice"
        );
        ring(bell.as_fd()).unwrap();
        assert_eq!(ep.wait_one(0).unwrap(), Some(7));
    }

    #[test]
    fn ringing_never_blocks_and_survives_the_receiver() {
        let (rx, bell) = doorbell().unwrap();
        for _ in 0..100_000 {
            assert_eq!(ring(bell.as_fd()).unwrap(), Rung::Delivered);
        }
        drop(rx);
        assert_eq!(ring(bell.as_fd()).unwrap(), Rung::Gone);
    }
}
