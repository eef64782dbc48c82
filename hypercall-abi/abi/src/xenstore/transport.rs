//! The byte streams a xenstore client talks over, and where to find them.
//!
//! Two transports carry the same framing (`xs_wire.h`):
//! - the Unix socket of a `xenstored` running in this domain
//!   (`/var/run/xenstored/socket`), and
//! - a kernel device that forwards messages to a xenstored elsewhere, over
//!   the domain's ring page (`/dev/xen/xenbus` on Linux).
//!
//! [`XsStream::open_default`] picks one as `libxenstore`'s `xs_open()` does.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// A byte stream to a xenstore daemon.
///
/// The client reads from one thread while others write, so both directions
/// take `&self`; the fd is polled for readability. One call to
/// [`send`](XsTransport::send) never carries bytes of two messages (the
/// client writes each message on its own), which the Linux xenbus device
/// requires.
pub trait XsTransport: AsFd + Send + Sync + 'static {
    /// Reads whatever bytes are available (at least one, blocking until
    /// then); `Ok(0)` is end of stream.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes some of `buf`, returning how much.
    fn send(&self, buf: &[u8]) -> io::Result<usize>;

    /// Tells the daemon we are done, where the transport can (a socket's
    /// `shutdown`). Called when the connection is abandoned.
    fn shutdown(&self) {}
}

impl XsTransport for UnixStream {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn shutdown(&self) {
        // Best effort: the peer may already be gone.
        let _ = UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
}

impl XsTransport for File {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
}

/// The transport `libxenstore` would use: xenstored's socket or the
/// kernel's xenbus device.
#[derive(Debug)]
pub enum XsStream {
    /// A Unix socket to `xenstored` in this domain.
    Socket(UnixStream),
    /// A character device forwarding to xenstored in another domain
    /// (`/dev/xen/xenbus`).
    Device(File),
}

impl XsStream {
    /// Connects to `path`: a socket if `path` is one, otherwise a device
    /// file opened read-write (`get_handle()` of `libxenstore`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        if meta.file_type().is_socket() {
            UnixStream::connect(path).map(XsStream::Socket)
        } else {
            OpenOptions::new().read(true).write(true).open(path).map(XsStream::Device)
        }
    }

    /// Opens xenstored's socket if it is reachable, otherwise the domain's
    /// xenbus device, as `xs_open(0)` does; see [`daemon_socket_path`] and
    /// [`domain_device_path`]. The error names both paths tried.
    pub fn open_default() -> io::Result<Self> {
        let socket = daemon_socket_path();
        let socket_err = match Self::open(&socket) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        let device = domain_device_path();
        match Self::open(&device) {
            Ok(stream) => Ok(stream),
            Err(device_err) => Err(io::Error::new(
                device_err.kind(),
                format!(
                    "cannot reach xenstore: {}: {socket_err}; {}: {device_err} \
                     (is this a Xen domain, with xenstored running or the xenbus driver loaded?)",
                    socket.display(),
                    device.display()
                ),
            )),
        }
    }
}

impl AsFd for XsStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            XsStream::Socket(s) => s.as_fd(),
            XsStream::Device(f) => f.as_fd(),
        }
    }
}

impl XsTransport for XsStream {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            XsStream::Socket(s) => s.recv(buf),
            XsStream::Device(f) => f.recv(buf),
        }
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            XsStream::Socket(s) => s.send(buf),
            XsStream::Device(f) => f.send(buf),
        }
    }

    fn shutdown(&self) {
        match self {
            XsStream::Socket(s) => XsTransport::shutdown(s),
            XsStream::Device(f) => XsTransport::shutdown(f),
        }
    }
}

/// xenstored's run directory when `XENSTORED_RUNDIR` is unset
/// (`XEN_RUN_STORED` of a default Xen 4.17 build).
pub const DEFAULT_RUNDIR: &str = "/var/run/xenstored";

/// Linux's xenbus device.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";

/// Linux's older xenbus file, used when [`XENBUS_DEVICE`] does not exist.
pub const XENBUS_PROC: &str = "/proc/xen/xenbus";

/// The path of xenstored's socket (`xs_daemon_socket()`): `$XENSTORED_PATH`,
/// else `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`.
pub fn daemon_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os("XENSTORED_PATH") {
        return path.into();
    }
    let rundir = std::env::var_os("XENSTORED_RUNDIR").map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from);
    rundir.join("socket")
}

/// The path of the xenbus device (`xs_domain_dev()` on Linux):
/// `$XENSTORED_PATH`, else `/dev/xen/xenbus` if it exists, else
/// `/proc/xen/xenbus`.
pub fn domain_device_path() -> PathBuf {
    if let Some(path) = std::env::var_os("XENSTORED_PATH") {
        return path.into();
    }
    if Path::new(XENBUS_DEVICE).exists() {
        XENBUS_DEVICE.into()
    } else {
        XENBUS_PROC.into()
    }
}

/// Which of the fds [`poll_two`] found ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The first fd is readable, hung up or in error (a read will not block).
    pub first: bool,
    /// The second fd is readable, hung up or in error.
    pub second: bool,
}

/// Waits, without timeout, until one of two fds is readable or hung up.
pub(crate) fn poll_two(first: BorrowedFd<'_>, second: BorrowedFd<'_>) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd { fd: first.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: second.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of 2 pollfds, exclusively borrowed
        // for the call, and both fds are kept open by the borrows; poll(2)
        // writes only the `revents` fields.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
                return Err(io::Error::from_raw_os_error(libc::EBADF));
            }
            return Ok(Ready { first: ready(&fds[0]), second: ready(&fds[1]) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn open_connects_to_a_socket_and_opens_other_files() {
        let dir = std::env::temp_dir().join(format!("rxen-xs-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("socket");
        let _ = std::fs::remove_file(&sock);
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let file = dir.join("dev");
        std::fs::write(&file, b"").unwrap();

        assert!(matches!(XsStream::open(&sock).unwrap(), XsStream::Socket(_)));
        assert!(matches!(XsStream::open(&file).unwrap(), XsStream::Device(_)));
        let missing = XsStream::open(&dir.join("absent")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn poll_two_reports_which_fd_is_ready() {
        let (a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, _b_peer) = UnixStream::pair().unwrap();
        a_peer.write_all(b"x").unwrap();

        let ready = poll_two(a.as_fd(), b.as_fd()).unwrap();

        assert_eq!(ready, Ready { first: true, second: false });
    }
}
