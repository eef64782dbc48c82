//! Shared memory files (memfd) and their mappings.
//!
//! Grantable memory is a memfd sealed against shrinking and growing, so
//! that a page mapped by another process can never be truncated away under
//! it (which would turn its accesses into `SIGBUS`). A mapping stays valid
//! for as long as it exists, whatever happens to the process that created
//! the file.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use hypercall_abi::platform::SharedMemory;

use super::cvt;

/// Seals every grantable memfd carries: its size can never change again.
pub(crate) const REQUIRED_SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Creates a zero-filled memfd of `len` bytes, sealed with [`REQUIRED_SEALS`].
pub(crate) fn sealed_memfd(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the
    // call; the flags are constants. No memory is handed to the kernel.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: memfd_create just returned this descriptor; nothing else in
    // the process knows it, so it becomes owned exactly once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(u64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?)?;
    // SAFETY: F_ADD_SEALS takes an int argument and touches no memory of
    // ours; the descriptor is valid (owned by `file`).
    cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, REQUIRED_SEALS) })?;
    Ok(file.into())
}

/// The seals of a memfd (`F_GET_SEALS`); fails for other kinds of file.
pub(crate) fn seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS takes no argument and touches no memory of ours;
    // the descriptor is valid for the borrow.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

/// Size in bytes of the file behind `fd`.
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let file = File::from(fd.try_clone_to_owned()?);
    Ok(file.metadata()?.len())
}

/// Opens the file behind `fd` again, read-only: a new open file
/// description through which the kernel refuses writable shared mappings.
pub(crate) fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(OpenOptions::new().read(true).open(path)?.into())
}

/// A range of this process's address space that we mapped, unmapped on drop.
///
/// It hands out no references into the memory, only [`SharedMemory`]
/// accessors that borrow it.
#[derive(Debug)]
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: a Mapping is an address range that this process owns until drop;
// its memory is only ever reached through volatile and atomic accesses of
// `SharedMemory`, which are sound from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: `&Mapping` allows nothing but creating accessors.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`, shared, writable or read-only.
    pub(crate) fn shared(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing
        // (no MAP_FIXED) cannot overlap anything of ours; the arguments
        // are plain values.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        Self::from_mmap(p, len, writable)
    }

    /// Reserves `len` bytes of address space, inaccessible until pages are
    /// mapped into it with [`Mapping::map_fixed`].
    pub(crate) fn reserve(len: usize, writable: bool) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: as in `shared`: a fresh anonymous mapping placed by the
        // kernel overlaps nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        Self::from_mmap(p, len, writable)
    }

    fn from_mmap(p: *mut libc::c_void, len: usize, writable: bool) -> io::Result<Self> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))?;
        Ok(Mapping {
            base,
            len,
            writable,
        })
    }

    /// Maps `len` bytes of `fd` at `file_offset` over bytes `at..at+len` of
    /// this reservation, with this mapping's access.
    ///
    /// Takes `&mut self`: no accessor into the mapping may exist while its
    /// pages are replaced.
    pub(crate) fn map_fixed(
        &mut self,
        at: usize,
        fd: BorrowedFd<'_>,
        file_offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let end = at
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 || end > self.len || at % page_size() != 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let offset = libc::off_t::try_from(file_offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let prot = if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: `at..at+len` lies inside our own reservation (checked), and
        // `&mut self` guarantees no accessor into it is alive, so replacing
        // those pages with MAP_FIXED affects no memory anyone else uses.
        let p = unsafe {
            libc::mmap(
                self.base.as_ptr().add(at).cast(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// An accessor for the whole mapping.
    pub(crate) fn memory(&self) -> SharedMemory<'_> {
        // SAFETY: the range stays mapped while `self` is borrowed (unmapped
        // only in drop); it is readable, and writable iff `self.writable`
        // (the protection it was mapped with); nothing in this crate takes
        // Rust references into it; mmap returns page-aligned addresses.
        unsafe { SharedMemory::new(self.base, self.len, self.writable) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by us and no accessor borrows it any
        // more (they borrow `self`).
        let rc = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if rc != 0 {
            log::error!(
                "munmap of {} bytes failed: {}",
                self.len,
                io::Error::last_os_error()
            );
        }
    }
}

/// The size of the host's pages.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system and touches no memory.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn sealed_memfd_cannot_shrink_and_reopens_read_only() {
        let fd = sealed_memfd(c"test", 8192).unwrap();
        assert_eq!(file_size(fd.as_fd()).unwrap(), 8192);
        assert_eq!(seals(fd.as_fd()).unwrap() & REQUIRED_SEALS, REQUIRED_SEALS);
        let file = File::from(fd.try_clone().unwrap());
        assert!(
            file.set_len(0).is_err(),
            "a sealed memfd must refuse to shrink"
        );

        let rw = Mapping::shared(fd.as_fd(), 0, 8192, true).unwrap();
        rw.memory().write(4096, b"granted").unwrap();
        let ro_fd = reopen_read_only(fd.as_fd()).unwrap();
        assert!(
            Mapping::shared(ro_fd.as_fd(), 0, 4096, true).is_err(),
            "PROT_WRITE of a read-only fd must fail"
        );
        let ro = Mapping::shared(ro_fd.as_fd(), 4096, 4096, false).unwrap();
        let mut buf = [0u8; 7];
        ro.memory().read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"granted");
    }

    #[test]
    fn reservation_gets_pages_in_any_order() {
        let fd = sealed_memfd(c"test", 2 * 4096).unwrap();
        let src = Mapping::shared(fd.as_fd(), 0, 8192, true).unwrap();
        src.memory().write(0, b"first").unwrap();
        src.memory().write(4096, b"second").unwrap();
        let mut area = Mapping::reserve(8192, true).unwrap();
        area.map_fixed(0, fd.as_fd(), 4096, 4096).unwrap();
        area.map_fixed(4096, fd.as_fd(), 0, 4096).unwrap();
        assert!(area.map_fixed(8192, fd.as_fd(), 0, 4096).is_err());
        let mut buf = [0u8; 6];
        area.memory().read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"second");
        area.memory().write(4096, b"FIRST").unwrap();
        src.memory().read(0, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"FIRST");
    }
}
