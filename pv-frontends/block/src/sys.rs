//! The crate's only `unsafe` code: the ioctls of Linux's NBD driver
//! (`include/uapi/linux/nbd.h`), all of which take an integer argument by
//! value and access no memory of ours, and a `read(2)` straight into
//! granted pages.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use hypercall_abi::platform::SharedMemory;

/// Reads exactly `pages.len()` bytes from `fd` into `pages`, as
/// `read_exact` does, with no copy on the way: the kernel writes them
/// into the shared pages itself.
pub fn read_exact_into(fd: BorrowedFd<'_>, pages: &SharedMemory<'_>) -> io::Result<()> {
    if !pages.is_writable() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the pages are read-only"));
    }
    let mut done = 0;
    while done < pages.len() {
        // SAFETY: a SharedMemory is `len()` bytes mapped for its lifetime,
        // writable as just checked, and `done < len()`: the kernel writes
        // at most `len() - done` bytes from `as_ptr() + done`, inside it.
        // No Rust reference into the pages exists (they are only reached
        // through SharedMemory's volatile accesses), so a write by the
        // kernel, or by the peer sharing them, breaks no aliasing rule.
        let n = unsafe { libc::read(fd.as_raw_fd(), pages.as_ptr().add(done).cast(), pages.len() - done) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // 0 < n <= len() - done: a usize.
            n => done += n.unsigned_abs(),
        }
    }
    Ok(())
}

/// `#define NBD_SET_SOCK _IO( 0xab, 0 )`
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
/// `#define NBD_SET_BLKSIZE _IO( 0xab, 1 )`
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
/// `#define NBD_DO_IT _IO( 0xab, 3 )`
const NBD_DO_IT: libc::c_ulong = 0xab03;
/// `#define NBD_CLEAR_SOCK _IO( 0xab, 4 )`
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
/// `#define NBD_SET_SIZE_BLOCKS _IO( 0xab, 7 )`
const NBD_SET_SIZE_BLOCKS: libc::c_ulong = 0xab07;
/// `#define NBD_DISCONNECT _IO( 0xab, 8 )`
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
/// `#define NBD_SET_FLAGS _IO( 0xab, 10 )`
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

/// `NBD_FLAG_HAS_FLAGS`: the flags are meaningful.
pub const NBD_FLAG_HAS_FLAGS: u64 = 1 << 0;
/// `NBD_FLAG_READ_ONLY`.
pub const NBD_FLAG_READ_ONLY: u64 = 1 << 1;
/// `NBD_FLAG_SEND_FLUSH`.
pub const NBD_FLAG_SEND_FLUSH: u64 = 1 << 2;
/// `NBD_FLAG_SEND_TRIM`.
pub const NBD_FLAG_SEND_TRIM: u64 = 1 << 5;

/// An NBD device node, e.g. `/dev/nbd0`.
#[derive(Debug)]
pub struct NbdDevice {
    file: File,
}

impl NbdDevice {
    /// Opens the device node.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(NbdDevice { file: OpenOptions::new().read(true).write(true).open(path)? })
    }

    /// Another handle on the same device (for `NBD_DO_IT` in a thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(NbdDevice { file: self.file.try_clone()? })
    }

    fn ioctl(&self, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
        // SAFETY: `file` is an open NBD device; every request used here
        // takes its argument as an integer by value (nbd.h: `_IO`), so the
        // kernel reads or writes no memory of this process.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), request, arg) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sets block size, size in blocks and `NBD_FLAG_*`, then hands the
    /// kernel its end of the socket.
    pub fn configure(&self, sock: BorrowedFd<'_>, block_size: u64, blocks: u64, flags: u64) -> io::Result<()> {
        let arg = |v: u64| libc::c_ulong::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        self.ioctl(NBD_SET_BLKSIZE, arg(block_size)?)?;
        self.ioctl(NBD_SET_SIZE_BLOCKS, arg(blocks)?)?;
        self.ioctl(NBD_SET_FLAGS, arg(flags)?)?;
        let fd = libc::c_ulong::try_from(sock.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.ioctl(NBD_SET_SOCK, fd)
    }

    /// Runs the device until it is disconnected (`NBD_DO_IT` blocks).
    pub fn run(&self) -> io::Result<()> {
        self.ioctl(NBD_DO_IT, 0)
    }

    /// Asks the kernel to disconnect (it sends `NBD_CMD_DISC`).
    pub fn disconnect(&self) -> io::Result<()> {
        self.ioctl(NBD_DISCONNECT, 0)
    }

    /// Drops the kernel's socket and queue.
    pub fn clear_sock(&self) -> io::Result<()> {
        self.ioctl(NBD_CLEAR_SOCK, 0)
    }
}
