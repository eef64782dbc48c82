//! `AF_UNIX` `SOCK_SEQPACKET` sockets whose messages carry file
//! descriptors (`SCM_RIGHTS`): the loopback hypervisor's control channel.
//!
//! A sequenced-packet socket keeps message boundaries, so one request is
//! one `recvmsg`, and the descriptors arrive with the message they belong
//! to.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{cvt, cvt_size, retry};

/// Most descriptors one message may carry (`SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// One connected sequenced-packet socket.
#[derive(Debug)]
pub(crate) struct SeqPacket(OwnedFd);

/// A listening sequenced-packet socket bound to a path.
#[derive(Debug)]
pub(crate) struct SeqPacketListener(OwnedFd);

/// A received message: `len` bytes in the caller's buffer and the
/// descriptors that came with them.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes received; 0 means the peer closed the connection.
    pub(crate) len: usize,
    /// Descriptors that came with the message, owned by us now.
    pub(crate) fds: Vec<OwnedFd>,
}

fn new_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes plain values and touches no memory of ours.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket(2) just returned this descriptor and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data for which all-zeroes is valid.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is empty, has a NUL or is longer than 107 bytes",
                path.display()
            ),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // `len` is at most size_of::<sockaddr_un>() (checked above).
    Ok((addr, len as libc::socklen_t))
}

impl SeqPacketListener {
    /// Binds and listens on `path`.
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        let fd = new_socket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes, borrowed
        // for the call only.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) })?;
        // SAFETY: listen(2) takes plain values.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 64) })?;
        Ok(SeqPacketListener(fd))
    }

    /// Waits for and accepts one connection.
    pub(crate) fn accept(&self) -> io::Result<SeqPacket> {
        let fd = retry(|| {
            // SAFETY: null address pointers ask the kernel not to report
            // the peer's address; the flags are constants.
            cvt(unsafe {
                libc::accept4(
                    self.0.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            })
        })?;
        // SAFETY: accept4 just returned this descriptor and nobody owns it.
        Ok(SeqPacket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }
}

impl SeqPacket {
    /// Connects to the listener bound at `path`.
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        let fd = new_socket()?;
        let (addr, len) = sockaddr(path)?;
        retry(|| {
            // SAFETY: `addr` is a valid sockaddr_un of `len` bytes, borrowed
            // for the call only.
            cvt(unsafe { libc::connect(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) })
        })?;
        Ok(SeqPacket(fd))
    }

    /// A connected pair.
    #[cfg(test)]
    pub(crate) fn pair() -> io::Result<(Self, Self)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a writable array of two ints, as socketpair(2)
        // requires.
        cvt(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: socketpair just returned these two descriptors; each is
        // owned exactly once.
        Ok(unsafe {
            (
                SeqPacket(OwnedFd::from_raw_fd(fds[0])),
                SeqPacket(OwnedFd::from_raw_fd(fds[1])),
            )
        })
    }

    /// Sends `data` as one message, with `fds` attached.
    pub(crate) fn send(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more than 253 descriptors in one message",
            ));
        }
        let mut iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        let mut control = vec![0u64; control_words(fds.len())];
        // SAFETY: msghdr is plain old data for which all-zeroes is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let bytes = fds.len() * size_of::<RawFd>();
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
            // SAFETY: msg_control points at `control`, which is at least
            // CMSG_SPACE(bytes) long (control_words) and 8-aligned, so the
            // first header and its `bytes` of data lie inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        let sent = retry(|| {
            // SAFETY: `msg` points at `iov` (over `data`) and `control`,
            // all alive and unaliased for the call; the kernel only reads
            // them.
            cvt_size(unsafe { libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })
        })?;
        if sent != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "message sent only in part",
            ));
        }
        Ok(())
    }

    /// Receives one message into `buf`. A message longer than `buf`, or
    /// with more descriptors than a message may carry, is an error (its
    /// descriptors are closed).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = vec![0u64; control_words(MAX_FDS)];
        // SAFETY: msghdr is plain old data for which all-zeroes is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() * size_of::<u64>();
        let len = retry(|| {
            // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both
            // exclusively borrowed and alive for the call; the kernel
            // writes at most their lengths.
            cvt_size(unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })
        })?;
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen`
        // bytes of well-formed cmsg headers; CMSG_FIRSTHDR/NXTHDR stay
        // inside that range and return null at its end.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: `cmsg` is a non-null header inside `control` (above).
            let (level, kind, clen) =
                unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
            if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN only computes a size.
                let header = unsafe { libc::CMSG_LEN(0) } as usize;
                let n = clen.saturating_sub(header) / size_of::<RawFd>();
                // SAFETY: the header's data holds `n` descriptors within
                // `cmsg_len`, which the kernel kept inside `control`.
                let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
                for i in 0..n {
                    // SAFETY: index `i < n` is inside the data (above); the
                    // kernel installed each descriptor for us, so each is
                    // owned exactly once, here.
                    fds.push(unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) });
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR above.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message longer than the receive buffer",
            ));
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message carried too many descriptors",
            ));
        }
        Ok(Received { len, fds })
    }

    /// The process id of the peer, as the kernel saw it at connect time.
    pub(crate) fn peer_pid(&self) -> io::Result<libc::pid_t> {
        // SAFETY: ucred is plain old data for which all-zeroes is valid.
        let mut cred: libc::ucred = unsafe { zeroed() };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are exclusively borrowed, and `len` holds
        // the size of `cred`, which the kernel writes at most.
        cvt(unsafe {
            libc::getsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                std::ptr::addr_of_mut!(cred).cast(),
                &mut len,
            )
        })?;
        Ok(cred.pid)
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<OwnedFd> for SeqPacket {
    fn from(fd: OwnedFd) -> Self {
        SeqPacket(fd)
    }
}

/// 8-byte words of control buffer for `n` descriptors: `CMSG_SPACE`.
fn control_words(n: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) } as usize;
    bytes.div_ceil(size_of::<u64>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn messages_carry_descriptors() {
        let (a, b) = SeqPacket::pair().unwrap();
        let (mut s1, s2) = UnixStream::pair().unwrap();
        a.send(b"hello", &[s2.as_fd()]).unwrap();
        drop(s2);
        let mut buf = [0u8; 64];
        let got = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        let mut s2 = UnixStream::from(got.fds.into_iter().next().unwrap());
        s1.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        s2.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        assert_eq!(b.peer_pid().unwrap(), std::process::id() as i32);
    }

    #[test]
    fn oversized_message_is_an_error_not_a_partial_read() {
        let (a, b) = SeqPacket::pair().unwrap();
        a.send(&[7u8; 100], &[]).unwrap();
        let mut buf = [0u8; 10];
        assert!(b.recv(&mut buf).is_err());
        drop(a);
        assert_eq!(
            b.recv(&mut buf).unwrap().len,
            0,
            "closed peer reads as end-of-file"
        );
    }
}
