//! The two system calls std does not wrap: `poll(2)` and `fork(2)`.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};

/// One `struct pollfd`, borrowing its fd for the call.
#[derive(Debug)]
pub struct PollFd<'fd> {
    raw: libc::pollfd,
    _fd: PhantomData<BorrowedFd<'fd>>,
}

impl<'fd> PollFd<'fd> {
    /// Waits on `fd` for input and/or output room.
    pub fn new(fd: BorrowedFd<'fd>, input: bool, output: bool) -> Self {
        let mut events = 0;
        if input {
            events |= libc::POLLIN;
        }
        if output {
            events |= libc::POLLOUT;
        }
        PollFd {
            raw: libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            _fd: PhantomData,
        }
    }

    /// A slot poll(2) skips (negative fd).
    pub fn none() -> Self {
        PollFd {
            raw: libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            },
            _fd: PhantomData,
        }
    }

    /// Whether anything (input, output room, hang-up, error) happened.
    pub fn ready(&self) -> bool {
        self.raw.revents != 0
    }
}

/// `poll(fds, timeout_ms)`; `EINTR` counts as a timeout.
pub fn poll(fds: &mut [PollFd<'_>], timeout_ms: i32) -> io::Result<()> {
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // A plain array for the kernel: `PollFd`'s layout is not guaranteed.
    let mut raw: Vec<libc::pollfd> = fds.iter().map(|f| f.raw).collect();
    // SAFETY: `raw` is a valid, exclusively borrowed array of `n` pollfds
    // whose fds are borrowed (open) for this call; poll(2) writes only
    // their `revents`.
    let rc = unsafe { libc::poll(raw.as_mut_ptr(), n, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    for (f, r) in fds.iter_mut().zip(raw) {
        f.raw.revents = r.revents;
    }
    Ok(())
}

/// Detaches into the background like C xenstored: forks, the parent exits
/// at once, the child starts a new session with stdio on `/dev/null`.
/// Call it while the process has one thread only.
pub fn daemonize() -> io::Result<()> {
    // SAFETY: the caller guarantees the process is single-threaded, so the
    // child inherits no lock held by another thread.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: setsid(2) takes no arguments and only changes process state.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: dup2(2) on an open fd (`null`) and a standard stream
        // number; it owns no Rust memory.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    std::env::set_current_dir("/")?;
    Ok(())
}
