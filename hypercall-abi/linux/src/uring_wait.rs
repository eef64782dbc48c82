//! [`EventChannels::unmask_and_wait`](hypercall_abi::platform::EventChannels::unmask_and_wait)
//! in one system call: an io_uring submits the unmask (a write to the
//! evtchn fd), the read of the next pending port and a poll of the stop
//! fd, and sleeps until the read or the poll completes.
//!
//! In a PV dom0 every system call goes through Xen (about 80 us each
//! under this project's emulated test host); a backend thread pays the
//! wait on every wake-up, so three calls become one.
//!
//! The read and the poll stay in flight between calls when the wait ends
//! for the other one; their buffers are owned here, and dropping the
//! waiter cancels them and waits for their completions first. Every
//! `unsafe` of this path is in this module.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use hypercall_abi::xen::EvtchnPort;

const READ: u64 = 1;
const UNMASK: u64 = 2;
const STOP: u64 = 3;
const CANCEL: u64 = 4;
const ALSO: u64 = 5;

/// What a wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    Port(EvtchnPort),
    Stopped,
    /// The other fd is readable.
    Also,
    TimedOut,
    /// The read completed without a port (nothing to read after all).
    Nothing,
}

/// One thread's io_uring for waiting on an evtchn handle.
pub(crate) struct UringWait {
    ring: IoUring,
    /// Where the in-flight read puts the port (stable: boxed).
    port_buf: Box<[u8; 4]>,
    /// What the unmask writes (stable: boxed; the write completes within
    /// the submitting call, but it is kept here all the same).
    unmask_buf: Box<[u8; 4]>,
    /// The evtchn fd a read is in flight on.
    read_in_flight: Option<RawFd>,
    /// The stop fd a poll is in flight on.
    stop_armed: Option<RawFd>,
    /// The other fd a poll is in flight on.
    also_armed: Option<RawFd>,
}

impl std::fmt::Debug for UringWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringWait")
            .field("read_in_flight", &self.read_in_flight)
            .field("stop_armed", &self.stop_armed)
            .field("also_armed", &self.also_armed)
            .finish_non_exhaustive()
    }
}

impl UringWait {
    /// A small ring; fails where io_uring is missing or forbidden.
    pub(crate) fn new() -> io::Result<Self> {
        Ok(UringWait {
            ring: IoUring::new(8)?,
            port_buf: Box::new([0; 4]),
            unmask_buf: Box::new([0; 4]),
            read_in_flight: None,
            stop_armed: None,
            also_armed: None,
        })
    }

    /// Unmasks `unmask`, then waits for a port of `evtchn` (a
    /// non-blocking /dev/xen/evtchn fd), for `stop` or `also` to be
    /// readable, or for `timeout`. The unmask's error, if any, is returned
    /// as such (`Err` with the unmask's OS error).
    ///
    /// A poll of `also` stays in flight until `also` is readable, and
    /// then ends a wait even if that wait did not ask for it (`Also`).
    pub(crate) fn wait(
        &mut self,
        evtchn: BorrowedFd<'_>,
        unmask: Option<EvtchnPort>,
        stop: BorrowedFd<'_>,
        also: Option<BorrowedFd<'_>>,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<Woken> {
        let (efd, sfd, afd) = (evtchn.as_raw_fd(), stop.as_raw_fd(), also.map(|a| a.as_raw_fd()));
        if self.read_in_flight.is_some_and(|fd| fd != efd)
            || self.stop_armed.is_some_and(|fd| fd != sfd)
            || self.also_armed.is_some_and(|fd| afd.is_some_and(|a| a != fd))
        {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "one waiter waits on the same fds every time"));
        }
        if let Some(port) = unmask {
            *self.unmask_buf = port.to_ne_bytes();
            // No completion on success (SKIP_SUCCESS), so that the wait
            // below is for the read or the stop. Not linked to the read:
            // entries are issued in order, and a read issued first would
            // only wait (the evtchn fd is non-blocking, so io_uring polls
            // it) for the event the unmask lets through.
            let write = opcode::Write::new(types::Fd(efd), self.unmask_buf.as_ptr(), 4)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(UNMASK);
            self.push(&write)?;
        }
        if self.read_in_flight.is_none() {
            let read = opcode::Read::new(types::Fd(efd), self.port_buf.as_mut_ptr(), 4).build().user_data(READ);
            self.push(&read)?;
            self.read_in_flight = Some(efd);
        }
        if self.stop_armed.is_none() {
            let poll = opcode::PollAdd::new(types::Fd(sfd), libc::POLLIN as u32).build().user_data(STOP);
            self.push(&poll)?;
            self.stop_armed = Some(sfd);
        }
        if let (Some(afd), None) = (afd, self.also_armed) {
            let poll = opcode::PollAdd::new(types::Fd(afd), libc::POLLIN as u32).build().user_data(ALSO);
            self.push(&poll)?;
            self.also_armed = Some(afd);
        }
        let ts = timeout.map(|t| types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos()));
        let mut unmask_error = None;
        loop {
            let submitted = match &ts {
                Some(ts) => self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(ts)),
                None => self.ring.submit_and_wait(1),
            };
            match submitted {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) => return Err(e),
            }
            // A call that submitted entries returns their count even when
            // its wait timed out (not ETIME), so with a timeout a return
            // without completions is taken as the timeout. The clock is
            // not read: without a vDSO clock (a PV dom0's "xen"
            // clocksource) each reading is a system call.
            if ts.is_some() && self.ring.completion().is_empty() {
                return Ok(Woken::TimedOut);
            }
            let (mut port, mut stopped, mut nothing, mut ready) = (None, false, false, false);
            for cqe in self.ring.completion() {
                let res = cqe.result();
                match cqe.user_data() {
                    UNMASK => unmask_error = Some(io::Error::from_raw_os_error(-res)),
                    READ => {
                        self.read_in_flight = None;
                        match res {
                            4 => port = Some(u32::from_ne_bytes(*self.port_buf)),
                            r if r < 0 => return Err(io::Error::from_raw_os_error(-r)),
                            _ => nothing = true,
                        }
                    }
                    STOP => {
                        self.stop_armed = None;
                        stopped = true;
                    }
                    ALSO => {
                        self.also_armed = None;
                        ready = true;
                    }
                    _ => {}
                }
            }
            if let Some(e) = unmask_error {
                return Err(e);
            }
            if stopped {
                return Ok(Woken::Stopped);
            }
            if let Some(port) = port {
                return Ok(Woken::Port(port));
            }
            if nothing {
                return Ok(Woken::Nothing);
            }
            if ready {
                return Ok(Woken::Also);
            }
        }
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every buffer an entry names (`port_buf`,
            // `unmask_buf`) is owned by `self` at a stable heap address,
            // and `Drop` cancels what is in flight and waits for it before
            // they are freed; the fds are held by the kernel once
            // submitted.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Full (cannot be with at most three entries a call and an
            // 8-entry ring, but submit what is queued and retry).
            self.ring.submit()?;
        }
    }
}

impl Drop for UringWait {
    fn drop(&mut self) {
        let mut targets = Vec::new();
        if self.read_in_flight.is_some() {
            targets.push(READ);
        }
        if self.stop_armed.is_some() {
            targets.push(STOP);
        }
        if self.also_armed.is_some() {
            targets.push(ALSO);
        }
        if targets.is_empty() {
            return;
        }
        for &t in &targets {
            let cancel = opcode::AsyncCancel::new(t).build().user_data(CANCEL);
            if self.push(&cancel).is_err() {
                break;
            }
        }
        // Wait for the cancelled operations' own completions, so that the
        // kernel no longer writes `port_buf` when it is freed (a second at
        // most: a cancelled poll completes at once).
        let timeout = types::Timespec::new().nsec(10_000_000);
        let args = types::SubmitArgs::new().timespec(&timeout);
        for _ in 0..100 {
            if self.read_in_flight.is_none() && self.stop_armed.is_none() && self.also_armed.is_none() {
                return;
            }
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME | libc::EBUSY)) => {}
                Err(_) => break,
            }
            for cqe in self.ring.completion() {
                match cqe.user_data() {
                    READ => self.read_in_flight = None,
                    STOP => self.stop_armed = None,
                    ALSO => self.also_armed = None,
                    _ => {}
                }
            }
        }
        if self.read_in_flight.is_some() {
            // The read could not be cancelled: keep its buffer alive
            // rather than let the kernel write into freed memory.
            log::error!("an evtchn read could not be cancelled; its buffer is leaked");
            std::mem::forget(std::mem::replace(&mut self.port_buf, Box::new([0; 4])));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    /// A non-blocking stream pair standing in for /dev/xen/evtchn: the
    /// waiter reads ports from `evtchn` and writes unmasks to it, and the
    /// test, at `peer`, sees the unmasks and sends ports.
    fn pair() -> (UnixStream, UnixStream) {
        let (evtchn, peer) = UnixStream::pair().unwrap();
        evtchn.set_nonblocking(true).unwrap();
        (evtchn, peer)
    }

    /// A waiter; io_uring is required (dom0's kernel and the build
    /// machine's have it), so a missing one fails the test, not skips it.
    fn waiter() -> UringWait {
        UringWait::new().expect("io_uring")
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a
        // new fd that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a new, owned, open fd.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn signal(fd: &OwnedFd) {
        std::fs::File::from(fd.try_clone().unwrap()).write_all(&1u64.to_ne_bytes()).unwrap();
    }

    #[test]
    fn takes_ports_unmasks_and_stops() {
        let mut w = waiter();
        let (evtchn, mut peer) = pair();
        let stop = eventfd();
        // A port sent before the wait is taken at once.
        peer.write_all(&7u32.to_ne_bytes()).unwrap();
        assert_eq!(w.wait(evtchn.as_fd(), None, stop.as_fd(), None, None).unwrap(), Woken::Port(7));
        // A port sent while the waiter sleeps wakes it; the unmask of the
        // previous port was written first.
        let sender = std::thread::spawn(move || {
            let mut unmask = [0u8; 4];
            peer.read_exact(&mut unmask).unwrap();
            assert_eq!(u32::from_ne_bytes(unmask), 7);
            std::thread::sleep(std::time::Duration::from_millis(50));
            peer.write_all(&9u32.to_ne_bytes()).unwrap();
            peer
        });
        assert_eq!(w.wait(evtchn.as_fd(), Some(7), stop.as_fd(), None, None).unwrap(), Woken::Port(9));
        let mut peer = sender.join().unwrap();
        // A stop ends the wait, with the read left in flight and the
        // unmask written.
        signal(&stop);
        assert_eq!(w.wait(evtchn.as_fd(), Some(9), stop.as_fd(), None, None).unwrap(), Woken::Stopped);
        let mut unmask = [0u8; 4];
        peer.read_exact(&mut unmask).unwrap();
        assert_eq!(u32::from_ne_bytes(unmask), 9);
        assert!(w.read_in_flight.is_some());
        // Another fd than the one a read is in flight on is refused.
        let (other, _other_peer) = pair();
        assert!(w.wait(other.as_fd(), None, stop.as_fd(), None, None).is_err());
        // Dropping cancels the read in flight and returns.
        drop(w);
        // The fd is no longer read: a port sent now stays for others.
        peer.write_all(&11u32.to_ne_bytes()).unwrap();
        let mut buf = [0u8; 4];
        (&evtchn).read_exact(&mut buf).unwrap();
        assert_eq!(u32::from_ne_bytes(buf), 11);
    }

    #[test]
    fn times_out_and_wakes_for_the_other_fd() {
        let mut w = waiter();
        let (evtchn, _peer) = pair();
        let stop = eventfd();
        let also = eventfd();
        let t = std::time::Duration::from_millis(20);
        let start = std::time::Instant::now();
        assert_eq!(w.wait(evtchn.as_fd(), None, stop.as_fd(), Some(also.as_fd()), Some(t)).unwrap(), Woken::TimedOut);
        assert!(start.elapsed() >= t);
        // The poll of `also` stayed armed: it ends the next wait, which
        // does not name it.
        signal(&also);
        assert_eq!(w.wait(evtchn.as_fd(), None, stop.as_fd(), None, None).unwrap(), Woken::Also);
        assert!(w.also_armed.is_none());
    }

    #[test]
    fn a_failed_unmask_is_an_error() {
        let mut w = waiter();
        let (evtchn, peer) = pair();
        let stop = eventfd();
        // The peer is gone: the unmask write fails (EPIPE). The read is
        // its own entry, at the end of the stream at once or left in
        // flight; either way dropping the waiter returns.
        drop(peer);
        let e = w.wait(evtchn.as_fd(), Some(3), stop.as_fd(), None, None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}");
        drop(w);
    }
}
