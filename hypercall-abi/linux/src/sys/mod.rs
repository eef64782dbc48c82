//! The Linux uapi of the Xen devices: ioctl numbers, the structures they
//! carry, and one thin wrapper per ioctl.
//!
//! Every structure is `#[repr(C)]` and quotes the C structure it mirrors;
//! sizes and offsets are asserted at compile time for x86_64 and checked
//! again by the tests against the real headers (linux-libc-dev's
//! `/usr/include/xen/*.h` and libxen-dev's `/usr/include/xen/sys/*.h`),
//! compiled with `cc`. Ioctl numbers are computed with [`ioc`], as the
//! headers' `_IOC()` does, never written as magic numbers.
//!
//! This module holds the crate's `unsafe` ioctl calls. The wrappers are
//! `unsafe fn`s whose contract is that the fd is the device they belong
//! to: on another driver the same number could mean something else.

pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;
pub mod privcmd;
pub mod xenbus;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOC_NONE`: the direction of every Xen device ioctl.
pub const IOC_NONE: u32 = 0;
/// `_IOC_WRITE`.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`.
pub const IOC_READ: u32 = 2;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// `_IOC(dir, type, nr, size)` of `asm-generic/ioctl.h` (x86 and arm64).
///
/// Fails to compile (const panic) if `size` does not fit its 14 bits.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS), "ioctl argument too large for _IOC");
    assert!(dir < 4, "ioctl direction has two bits");
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// Issues `ioctl(fd, request, arg)` and returns its non-negative result.
///
/// # Safety
/// `fd` must be a device whose driver reads and writes, for `request`, no
/// more than the memory `arg` points to (plus whatever memory that memory
/// points to, which must be valid too), and that memory must stay valid
/// and unaliased for the call.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: *mut T) -> io::Result<libc::c_int> {
    // The ioctl number type differs between libcs (`c_ulong` on glibc,
    // `c_int` on musl); numbers fit in 32 bits and are reinterpreted as the
    // kernel does.
    #[allow(clippy::cast_lossless, clippy::useless_conversion)]
    let request = request as libc::Ioctl;
    // SAFETY: the caller guarantees the driver/argument contract; `fd` is
    // open for the duration of the call (borrowed).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Issues an ioctl that takes no argument.
///
/// # Safety
/// `fd` must be a device whose driver takes no argument for `request`.
unsafe fn ioctl_none(fd: BorrowedFd<'_>, request: u32) -> io::Result<libc::c_int> {
    // SAFETY: per the caller, the driver does not dereference the argument.
    unsafe { ioctl(fd, request, std::ptr::null_mut::<u8>()) }
}
