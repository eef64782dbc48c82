//! The loopback's contact with the kernel beyond what `std` offers: memfds
//! and `mmap`, `SOCK_SEQPACKET` sockets carrying file descriptors
//! (`SCM_RIGHTS`), doorbell sockets and `epoll`.
//!
//! Every `unsafe` block of the crate is in this module, each one a single
//! system call over arguments that the surrounding safe function checked.

pub(crate) mod doorbell;
pub(crate) mod mem;
pub(crate) mod seqpacket;

use std::io;

/// Raises this process's soft limit on open descriptors to its hard limit:
/// the hypervisor holds a descriptor per share and per port. Returns the
/// limit now in force.
pub(crate) fn raise_fd_limit() -> io::Result<u64> {
    // SAFETY: rlimit is plain old data for which all-zeroes is valid.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit for the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above; setrlimit only reads `lim`.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok(lim.rlim_cur)
}

/// Turns a `-1`-on-error return value into an `io::Result`.
fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Like [`cvt`] for calls returning `ssize_t`.
fn cvt_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        // rc >= 0 and ssize_t fits in usize on every Linux target.
        Ok(rc.unsigned_abs())
    }
}

/// Retries a system call while it fails with `EINTR`.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
