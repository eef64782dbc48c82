//! The crate's system calls that have no safe wrapper in `std`: block
//! device ioctls, `fallocate`, `fstatfs`, `preadv`/`pwritev` on the frontend's pages
//! (the stop signal's are in `pv-backend-common`). Every `unsafe` of the
//! backend outside [`crate::memgrant`] and [`crate::filemap`] (the image
//! mapping and its `SIGBUS` handler) is here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use hypercall_abi::platform::SharedMemory;

/// `BLKGETSIZE64` (`<linux/fs.h>`: `_IOR(0x12, 114, size_t)`): size of a
/// block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `BLKSSZGET` (`_IO(0x12, 104)`): logical block size, an `int`.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `BLKPBSZGET` (`_IO(0x12, 123)`): physical block size, an `unsigned int`.
const BLKPBSZGET: libc::c_ulong = 0x127b;

/// Size in bytes of the block device open as `file`.
pub(crate) fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live local of that type; the fd is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Logical block size of the block device open as `file`.
pub(crate) fn block_device_logical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to
    // a live local of that type; the fd is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Physical block size of the block device open as `file`.
pub(crate) fn block_device_physical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_uint = 0;
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, which
    // points to a live local of that type; the fd is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKPBSZGET, &mut size as *mut libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Deallocates `len` bytes at `offset` of `file` without changing its size
/// (`fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`): later reads
/// of the range return zeroes.
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: fallocate takes no pointers; the fd is open for the call.
        let rc = unsafe {
            libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether `file` lives on a tmpfs (`fstatfs`).
pub(crate) fn is_tmpfs(file: &File) -> io::Result<bool> {
    // SAFETY: a zeroed statfs is a valid value for the kernel to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs writes one statfs through the pointer, which points
    // to a live local of that type; the fd is open for the call.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fs.f_type == libc::TMPFS_MAGIC)
}

/// Most iovecs one `preadv`/`pwritev` call takes (`IOV_MAX`, `<limits.h>`
/// on Linux): longer lists are split.
pub(crate) const IOV_MAX: usize = 1024;

/// Direction of a vectored transfer between a file and shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vectored {
    /// File to memory (`preadv`).
    Read,
    /// Memory to file (`pwritev`).
    Write,
}

/// Fills `regions`, in order, from `file` starting at byte `offset`, with
/// `preadv(2)`: the kernel copies straight into the (granted) memory. Short
/// reads are continued; end of file before the regions are full is
/// `UnexpectedEof`. Every region must be writable.
pub(crate) fn read_vectored_at(file: &File, offset: u64, regions: &[SharedMemory<'_>]) -> io::Result<()> {
    if regions.iter().any(|r| !r.is_writable()) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "a page to read into is mapped read-only"));
    }
    transfer_vectored(file, offset, regions, Vectored::Read)
}

/// Writes `regions`, in order, to `file` starting at byte `offset`, with
/// `pwritev(2)`: the kernel copies straight from the (granted) memory.
/// Short writes are continued.
pub(crate) fn write_vectored_at(file: &File, offset: u64, regions: &[SharedMemory<'_>]) -> io::Result<()> {
    transfer_vectored(file, offset, regions, Vectored::Write)
}

fn transfer_vectored(file: &File, offset: u64, regions: &[SharedMemory<'_>], dir: Vectored) -> io::Result<()> {
    let mut offset = offset;
    for chunk in regions.chunks(IOV_MAX) {
        // Raw pointers into the regions: no Rust reference to the memory
        // is made, the kernel reads or writes it.
        let iovecs: Vec<libc::iovec> = chunk
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| libc::iovec { iov_base: r.as_ptr().cast(), iov_len: r.len() })
            .collect();
        let len: usize = iovecs.iter().map(|iov| iov.iov_len).sum();
        // SAFETY: each iovec describes a `SharedMemory` region, borrowed
        // for the whole call, so by `SharedMemory`'s contract it stays
        // mapped, readable, and writable where we read into it (checked by
        // `read_vectored_at`), and no Rust reference to those bytes exists
        // in this process.
        unsafe { transfer_iovecs(file.as_raw_fd(), offset, iovecs, dir == Vectored::Write)? };
        offset += len as u64;
    }
    Ok(())
}

/// Completes a vectored transfer of which the first `done` bytes were
/// already made (an io_uring operation that came back short): the rest
/// of `iovecs` is read or written at `offset + done`.
///
/// # Safety
///
/// As for [`transfer_iovecs`].
pub(crate) unsafe fn finish_iovecs(
    fd: std::os::fd::RawFd,
    offset: u64,
    iovecs: &[libc::iovec],
    done: usize,
    write: bool,
) -> io::Result<()> {
    let mut skip = done;
    let mut rest = Vec::with_capacity(iovecs.len());
    for iov in iovecs {
        if skip >= iov.iov_len {
            skip -= iov.iov_len;
            continue;
        }
        rest.push(libc::iovec { iov_base: iov.iov_base.cast::<u8>().wrapping_add(skip).cast(), iov_len: iov.iov_len - skip });
        skip = 0;
    }
    // SAFETY: the caller's contract (a suffix of the same memory).
    unsafe { transfer_iovecs(fd, offset + done as u64, rest, write) }
}

/// `preadv`/`pwritev` of all of `iovecs` (at most [`IOV_MAX`]) at
/// `offset` of `fd`, continuing short transfers.
///
/// # Safety
///
/// Each iovec must describe memory that stays mapped during the call
/// (writable, for a read) and to which no Rust reference exists: the
/// kernel reads or writes it.
unsafe fn transfer_iovecs(fd: std::os::fd::RawFd, mut offset: u64, mut iovecs: Vec<libc::iovec>, write: bool) -> io::Result<()> {
    let mut first = 0;
    while let Some(rest) = iovecs.get(first..).filter(|rest| !rest.is_empty()) {
        let pos = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let count = libc::c_int::try_from(rest.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `rest` is a live slice of `count` iovecs, each describing
        // memory valid for the kernel to read or write (the caller's
        // contract); the frontend changing it meanwhile only changes the
        // data, as with DMA.
        let rc = unsafe {
            if write {
                libc::pwritev(fd, rest.as_ptr(), count, pos)
            } else {
                libc::preadv(fd, rest.as_ptr(), count, pos)
            }
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Err(if write {
                io::Error::from(io::ErrorKind::WriteZero)
            } else {
                io::Error::from(io::ErrorKind::UnexpectedEof)
            });
        }
        // rc > 0 and at most the bytes asked for.
        let mut done = rc as usize;
        offset += done as u64;
        // Skip the iovecs completed, trim the one completed in part.
        while done > 0 {
            let Some(iov) = iovecs.get_mut(first) else { break };
            if done >= iov.iov_len {
                done -= iov.iov_len;
                first += 1;
            } else {
                iov.iov_base = iov.iov_base.cast::<u8>().wrapping_add(done).cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hypercall_abi::platform::{GrantMap, MappedGrants};
    use hypercall_abi::xen::PAGE_SIZE;

    use super::*;
    use crate::memgrant::MemGrantTable;

    fn temp_file(name: &str, contents: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("rblkback-sys-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn vectored_io_splits_lists_longer_than_iov_max() {
        // 2.5 x IOV_MAX regions of 512 bytes over 320 mapped pages.
        let table = Arc::new(MemGrantTable::new(1));
        let refs: Vec<_> = (0..320).map(|_| table.grant(true)).collect();
        let mapped = table.map(1, &refs, true).unwrap();
        let memory = mapped.memory();
        let n = IOV_MAX * 5 / 2;
        let regions: Vec<_> = (0..n).map(|i| memory.subregion(i * 512, 512).unwrap()).collect();
        let contents: Vec<u8> = (0..n * 512 + 512).map(|i| (i % 253) as u8).collect();
        let (path, file) = temp_file("iovmax", &contents);

        read_vectored_at(&file, 512, &regions).unwrap();
        let mut back = vec![0u8; n * 512];
        memory.read(0, &mut back).unwrap();
        memory.write(0, &vec![0x5a; PAGE_SIZE]).unwrap();
        write_vectored_at(&file, 0, &regions[..8]).unwrap();

        assert_eq!(back, contents[512..]);
        assert_eq!(std::fs::read(&path).unwrap()[..PAGE_SIZE], [0x5a; PAGE_SIZE]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn vectored_reads_refuse_read_only_pages_and_stop_at_end_of_file() {
        let table = Arc::new(MemGrantTable::new(1));
        let (ro, rw) = (table.grant(false), table.grant(true));
        let ro_map = table.map(1, &[ro], false).unwrap();
        let rw_map = table.map(1, &[rw], true).unwrap();
        let (path, file) = temp_file("eof", &[1u8; 1024]);

        let refused = read_vectored_at(&file, 0, &[ro_map.memory()]);
        let eof = read_vectored_at(&file, 0, &[rw_map.memory()]);

        assert_eq!(refused.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(eof.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        std::fs::remove_file(&path).unwrap();
    }
}
