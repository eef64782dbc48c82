//! The storage behind a virtual block device.
//!
//! [`Disk`] is what the request handler needs from storage: byte-addressed
//! reads and writes, a cache flush, discard, and the geometry the xenbus
//! handshake advertises. [`RawDisk`] serves a raw image file or a host
//! block device; [`MemDisk`] keeps the disk in memory (tests, fuzzing);
//! [`Qcow2Disk`](crate::qcow2::Qcow2Disk) serves qcow2 images and their
//! backing chains, and [`crate::image`] chooses between them.
//!
//! The data of a request lives in the frontend's granted pages, which
//! reach a disk as [`SharedMemory`] regions
//! ([`read_vectored`](Disk::read_vectored),
//! [`write_vectored`](Disk::write_vectored)). A raw disk hands them to
//! the kernel as an iovec list (`preadv`/`pwritev`), with no copy in this
//! process; other disks go through a [`BounceBuffer`] and their
//! byte-addressed [`read_at`](Disk::read_at)/[`write_at`](Disk::write_at).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};
use hypercall_abi::xen::PAGE_SIZE;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::filemap::FileMap;
use crate::sys;

/// Why a disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Opening or inspecting the image failed.
    #[error("cannot open {path}: {source}; check that it exists and that rblkback may open it")]
    Open {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The image is neither a regular file nor a block device.
    #[error("{0} is neither a regular file nor a block device")]
    NotADisk(PathBuf),
    /// The logical sector size asked for is not 512 or 4096, or the image
    /// size is not a multiple of it.
    #[error("{0}")]
    Geometry(String),
    /// An I/O system call failed.
    #[error("{op} of {len} bytes at byte {offset} failed: {source}")]
    Io {
        /// `"read"`, `"write"`, `"flush"` or `"discard"`.
        op: &'static str,
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A write, flush or discard on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The range lies beyond the end of the disk.
    #[error("{len} bytes at byte {offset} lie beyond the {size}-byte disk")]
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// Disk size in bytes.
        size: u64,
    },
    /// The storage cannot discard.
    #[error("the disk does not support discard")]
    DiscardUnsupported,
    /// Copying between the bounce buffer and the frontend's pages failed.
    #[error("accessing the frontend's pages failed: {0}")]
    Pages(#[from] SharedMemoryError),
    /// The options asked for cannot be had with this image.
    #[error("{0}")]
    Options(String),
    /// A qcow2 image cannot be opened or its metadata is bad.
    #[error(transparent)]
    Qcow2(#[from] crate::qcow2::Qcow2Error),
}

/// Storage for a virtual block device. Offsets and lengths are in bytes;
/// the request handler only passes ranges it checked against
/// [`size`](Disk::size) and, for writes, [`read_only`](Disk::read_only).
pub trait Disk: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Logical sector size advertised to the frontend: 512 or 4096.
    fn sector_size(&self) -> u32;
    /// Physical sector size advertised to the frontend.
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Whether [`discard`](Disk::discard) can work.
    fn supports_discard(&self) -> bool;
    /// Granularity of discards in bytes (`discard-granularity`).
    fn discard_granularity(&self) -> u32 {
        self.sector_size()
    }
    /// Alignment, in bytes, that data buffers and offsets need (O_DIRECT).
    fn buffer_alignment(&self) -> usize {
        1
    }
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError>;
    /// Fills `regions` (the frontend's pages, consecutive on the disk) from
    /// `offset`. By default through `bounce` and [`read_at`](Disk::read_at);
    /// disks that can give the regions to the kernel override it.
    fn read_vectored(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        bounce: &mut BounceBuffer,
    ) -> Result<(), DiskError> {
        bounce_read(self, offset, regions, bounce)
    }
    /// Writes `regions` (consecutive on the disk) at `offset`. By default
    /// through `bounce` and [`write_at`](Disk::write_at).
    fn write_vectored(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        bounce: &mut BounceBuffer,
    ) -> Result<(), DiskError> {
        bounce_write(self, offset, regions, bounce)
    }
    /// The file descriptor through which `regions` can be read or written
    /// (`write`) at `offset` directly, as one vectored operation that the
    /// caller submits itself (batched, through io_uring), after the same
    /// checks as [`read_vectored`](Disk::read_vectored) and
    /// [`write_vectored`](Disk::write_vectored) make. `None` (the
    /// default): use those instead.
    fn direct_fd(
        &self,
        _offset: u64,
        _regions: &[SharedMemory<'_>],
        _write: bool,
    ) -> Result<Option<std::os::fd::RawFd>, DiskError> {
        Ok(None)
    }
    /// Whether reads and writes go through [`direct_fd`](Disk::direct_fd)
    /// (so that a batch's I/O is submitted together) rather than one by
    /// one. The default: no.
    fn batches_io(&self) -> bool {
        false
    }
    /// Makes completed writes durable (`fdatasync`).
    fn flush(&self) -> Result<(), DiskError>;
    /// Deallocates `len` bytes at `offset`; they read back as zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError>;
}

/// A disk chosen at run time (see [`crate::image::open_image`]).
impl Disk for Box<dyn Disk> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn sector_size(&self) -> u32 {
        (**self).sector_size()
    }

    fn physical_sector_size(&self) -> u32 {
        (**self).physical_sector_size()
    }

    fn read_only(&self) -> bool {
        (**self).read_only()
    }

    fn supports_discard(&self) -> bool {
        (**self).supports_discard()
    }

    fn discard_granularity(&self) -> u32 {
        (**self).discard_granularity()
    }

    fn buffer_alignment(&self) -> usize {
        (**self).buffer_alignment()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        (**self).read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        (**self).write_at(offset, buf)
    }

    fn read_vectored(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        bounce: &mut BounceBuffer,
    ) -> Result<(), DiskError> {
        (**self).read_vectored(offset, regions, bounce)
    }

    fn write_vectored(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        bounce: &mut BounceBuffer,
    ) -> Result<(), DiskError> {
        (**self).write_vectored(offset, regions, bounce)
    }

    fn direct_fd(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        write: bool,
    ) -> Result<Option<std::os::fd::RawFd>, DiskError> {
        (**self).direct_fd(offset, regions, write)
    }

    fn batches_io(&self) -> bool {
        (**self).batches_io()
    }

    fn flush(&self) -> Result<(), DiskError> {
        (**self).flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        (**self).discard(offset, len)
    }
}

#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct AlignedPage([u8; PAGE_SIZE]);

/// A page-aligned scratch buffer (so that it suits `O_DIRECT`) for disks
/// that cannot do I/O on the frontend's pages directly. It is allocated on
/// first use and grows to the largest request seen.
#[derive(Default)]
pub struct BounceBuffer {
    pages: Vec<AlignedPage>,
}

impl std::fmt::Debug for BounceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceBuffer").field("pages", &self.pages.len()).finish()
    }
}

impl BounceBuffer {
    /// The first `len` bytes of the buffer, grown if needed.
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        let needed = len.div_ceil(PAGE_SIZE);
        if self.pages.len() < needed {
            self.pages.resize(needed, AlignedPage([0; PAGE_SIZE]));
        }
        &mut self.pages.as_mut_slice().as_mut_bytes()[..len]
    }
}

/// Total length of `regions`.
fn regions_len(regions: &[SharedMemory<'_>]) -> usize {
    regions.iter().map(SharedMemory::len).sum()
}

/// [`Disk::read_vectored`] through a bounce buffer.
pub fn bounce_read<D: Disk + ?Sized>(
    disk: &D,
    offset: u64,
    regions: &[SharedMemory<'_>],
    bounce: &mut BounceBuffer,
) -> Result<(), DiskError> {
    let buf = bounce.get(regions_len(regions));
    disk.read_at(offset, buf)?;
    let mut at = 0;
    for region in regions {
        region.write(0, &buf[at..at + region.len()])?;
        at += region.len();
    }
    Ok(())
}

/// [`Disk::write_vectored`] through a bounce buffer.
pub fn bounce_write<D: Disk + ?Sized>(
    disk: &D,
    offset: u64,
    regions: &[SharedMemory<'_>],
    bounce: &mut BounceBuffer,
) -> Result<(), DiskError> {
    let buf = bounce.get(regions_len(regions));
    let mut at = 0;
    for region in regions {
        region.read(0, &mut buf[at..at + region.len()])?;
        at += region.len();
    }
    disk.write_at(offset, buf)
}

/// How a [`RawDisk`]'s reads and writes reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Each batch's reads and writes in one io_uring submission (through
    /// [`Disk::direct_fd`]): for block devices and files opened O_DIRECT,
    /// where the kernel does real asynchronous I/O.
    Batched,
    /// One `preadv`/`pwritev` per request.
    Sync,
    /// Reads copied from a shared mapping of the file (no system call per
    /// read; see [`crate::filemap`]), writes with `pwritev`, or on tmpfs
    /// through the mapping too: for regular files read through the page
    /// cache. On tmpfs, holes are read with `preadv` (a read fault would
    /// allocate them).
    Mapped,
}

/// How to open a [`RawDisk`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDiskOptions {
    /// Open read-only and refuse writes.
    pub read_only: bool,
    /// Bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// Logical sector size to advertise; by default the block device's, or
    /// 512 for a file.
    pub sector_size: Option<u32>,
    /// How reads and writes reach the kernel; by default batched for
    /// block devices and O_DIRECT files, mapped for other files.
    pub io: Option<IoMode>,
}

/// A raw image: a regular file or a host block device.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    path: PathBuf,
    size: u64,
    sector_size: u32,
    physical_sector_size: u32,
    read_only: bool,
    direct: bool,
    discard_granularity: u32,
    /// Whether reads and writes go through [`Disk::direct_fd`] (batched,
    /// io_uring) rather than one `preadv`/`pwritev` each.
    batched_io: bool,
    /// The file mapped for reads, and on tmpfs writes ([`IoMode::Mapped`]).
    map: Option<FileMap>,
}

impl RawDisk {
    /// Opens `path`.
    pub fn open(path: &Path, options: RawDiskOptions) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open { path: path.to_owned(), source };
        let mut open = OpenOptions::new();
        open.read(true).write(!options.read_only);
        if options.direct {
            open.custom_flags(libc::O_DIRECT);
        }
        let file = open.open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let (size, device_sector, physical, granularity) = if meta.file_type().is_block_device() {
            let size = sys::block_device_size(&file).map_err(open_err)?;
            let logical = sys::block_device_logical_block_size(&file).map_err(open_err)?;
            let physical = sys::block_device_physical_block_size(&file).map_err(open_err)?;
            (size, logical, physical, logical)
        } else if meta.file_type().is_file() {
            // Holes are punched in file system blocks.
            let block = u32::try_from(meta.blksize()).unwrap_or(4096);
            (meta.len(), 512, 512, block)
        } else {
            return Err(DiskError::NotADisk(path.to_owned()));
        };
        let sector_size = options.sector_size.unwrap_or(device_sector);
        if !matches!(sector_size, 512 | 4096) {
            return Err(DiskError::Geometry(format!(
                "logical sector size {sector_size} is not supported; use 512 or 4096"
            )));
        }
        if sector_size < device_sector {
            return Err(DiskError::Geometry(format!(
                "{} has {device_sector}-byte sectors; it cannot be served with {sector_size}-byte sectors",
                path.display()
            )));
        }
        let physical = physical.max(sector_size);
        let size = size - size % u64::from(sector_size);
        let is_file = meta.file_type().is_file();
        // Batching pays where the kernel does real asynchronous I/O: a
        // block device, or a file opened O_DIRECT. A buffered read of a
        // cached page is a copy the ring cannot speed up, and on files
        // that cannot be read without blocking (tmpfs before Linux 6.6)
        // io_uring hands every operation to a worker thread: there the
        // copy is made from a mapping, with no system call at all.
        let io = options.io.unwrap_or(if options.direct || !is_file { IoMode::Batched } else { IoMode::Mapped });
        let map = match io {
            IoMode::Mapped if options.direct || !is_file => {
                return Err(DiskError::Options(format!(
                    "{}: mapped reads need a regular file read through the page cache (not O_DIRECT, not a block device)",
                    path.display()
                )))
            }
            // On tmpfs only pages known to exist are read through the
            // mapping: a read fault on a hole would allocate a page.
            //
            // Writes go through the mapping on tmpfs only: a page of a
            // file system with writeback is write-protected again each
            // time it is written back, so each page written through a
            // mapping would cost a fault per writeback, where one pwritev
            // takes a whole request.
            IoMode::Mapped => match sys::is_tmpfs(&file)
                .and_then(|tmpfs| FileMap::new(&file, size, tmpfs && !options.read_only, tmpfs))
            {
                Ok(map) => map,
                Err(err) => {
                    log::warn!("{}: cannot map the image ({err}); reading with preadv", path.display());
                    None
                }
            },
            IoMode::Batched | IoMode::Sync => None,
        };
        Ok(RawDisk {
            file,
            path: path.to_owned(),
            size,
            sector_size,
            physical_sector_size: physical,
            read_only: options.read_only,
            direct: options.direct,
            discard_granularity: granularity.max(sector_size),
            batched_io: io == IoMode::Batched,
            map,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Chooses batched I/O (io_uring, through [`Disk::direct_fd`]) or one
    /// system call per request; by default batched for block devices and
    /// files opened O_DIRECT only.
    #[must_use]
    pub fn with_batched_io(mut self, batched: bool) -> Self {
        self.batched_io = batched;
        self
    }

    /// Whether reads are copied from a mapping of the file now (mapped
    /// I/O, and no fault seen; on tmpfs, for pages known to exist).
    pub fn reads_mapped(&self) -> bool {
        self.map.as_ref().is_some_and(|map| !map.is_broken())
    }

    /// Makes a copy through the mapping with `copy`, if there is one, not
    /// broken, that `usable` accepts for it. True when done; false when
    /// the file descriptor must do it (no such mapping, or it broke now).
    fn try_mapped(
        &self,
        usable: impl FnOnce(&FileMap) -> bool,
        copy: impl FnOnce(&FileMap) -> Result<bool, SharedMemoryError>,
    ) -> Result<bool, DiskError> {
        let Some(map) = self.map.as_ref().filter(|map| !map.is_broken() && usable(map)) else {
            return Ok(false);
        };
        if copy(map)? {
            return Ok(true);
        }
        log::warn!(
            "{}: an access to the image's mapping faulted (was the file truncated, or is its file system full?); using preadv/pwritev from now on",
            self.path.display()
        );
        Ok(false)
    }

    /// `len` bytes at `offset` were written: their pages exist now.
    fn written(&self, offset: u64, len: u64) {
        if let Some(map) = &self.map {
            map.mark_present(offset, len);
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DiskError::OutOfRange { offset, len, size: self.size }),
        }
    }

    /// Whether the kernel takes `regions` as they are: always, except that
    /// with `O_DIRECT` each must start and end on a logical sector (a
    /// segment may cover part of a page; such requests are bounced).
    fn takes_directly(&self, regions: &[SharedMemory<'_>]) -> bool {
        let align = self.buffer_alignment();
        !self.direct || regions.iter().all(|r| (r.as_ptr() as usize | r.len()) % align == 0)
    }
}

impl Disk for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn discard_granularity(&self) -> u32 {
        self.discard_granularity
    }

    fn buffer_alignment(&self) -> usize {
        if self.direct {
            self.sector_size as usize
        } else {
            1
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(offset, buf.len() as u64)?;
        let len = buf.len() as u64;
        if self.try_mapped(|map| map.is_present(offset, len), |map| map.read_to_slice(offset, buf))? {
            return Ok(());
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| DiskError::Io { op: "read", offset, len: buf.len() as u64, source })
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.check(offset, buf.len() as u64)?;
        if !self.try_mapped(FileMap::is_writable, |map| map.write_from_slice(offset, buf))? {
            self.file
                .write_all_at(buf, offset)
                .map_err(|source| DiskError::Io { op: "write", offset, len: buf.len() as u64, source })?;
        }
        self.written(offset, buf.len() as u64);
        Ok(())
    }

    fn read_vectored(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        bounce: &mut BounceBuffer,
    ) -> Result<(), DiskError> {
        let len = regions_len(regions) as u64;
        self.check(offset, len)?;
        if !self.takes_directly(regions) {
            return bounce_read(self, offset, regions, bounce);
        }
        if self.try_mapped(|map| map.is_present(offset, len), |map| map.read_into(offset, regions))? {
            return Ok(());
        }
        sys::read_vectored_at(&self.file, offset, regions)
            .map_err(|source| DiskError::Io { op: "read", offset, len, source })
    }

    fn write_vectored(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        bounce: &mut BounceBuffer,
    ) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let len = regions_len(regions) as u64;
        self.check(offset, len)?;
        if !self.takes_directly(regions) {
            return bounce_write(self, offset, regions, bounce);
        }
        if !self.try_mapped(FileMap::is_writable, |map| map.write_from(offset, regions))? {
            sys::write_vectored_at(&self.file, offset, regions)
                .map_err(|source| DiskError::Io { op: "write", offset, len, source })?;
        }
        self.written(offset, len);
        Ok(())
    }

    fn batches_io(&self) -> bool {
        self.batched_io
    }

    fn direct_fd(
        &self,
        offset: u64,
        regions: &[SharedMemory<'_>],
        write: bool,
    ) -> Result<Option<std::os::fd::RawFd>, DiskError> {
        if !self.batched_io {
            return Ok(None);
        }
        if write && self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.check(offset, regions_len(regions) as u64)?;
        // Reads into a page mapped read-only are refused by read_vectored;
        // leave them (and regions O_DIRECT cannot take) to it.
        let direct = self.takes_directly(regions)
            && regions.len() <= sys::IOV_MAX
            && (write || regions.iter().all(|r| r.is_writable()));
        Ok(direct.then(|| self.file.as_raw_fd()))
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.file.sync_data().map_err(|source| DiskError::Io { op: "flush", offset: 0, len: 0, source })
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // Before the hole is punched: a read meanwhile may still map a
        // page back (the guest raced its own discard), never the reverse.
        if let Some(map) = &self.map {
            map.mark_hole(offset, len);
        }
        sys::punch_hole(&self.file, offset, len).map_err(|source| match source.raw_os_error() {
            Some(libc::EOPNOTSUPP) => DiskError::DiscardUnsupported,
            _ => DiskError::Io { op: "discard", offset, len, source },
        })
    }
}

/// A disk held in memory.
#[derive(Debug)]
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    sector_size: u32,
    read_only: bool,
}

impl MemDisk {
    /// A zero-filled disk of `size` bytes (rounded down to sectors).
    pub fn new(size: usize, sector_size: u32, read_only: bool) -> Self {
        let size = size - size % sector_size.max(1) as usize;
        MemDisk { data: Mutex::new(vec![0; size]), sector_size, read_only }
    }

    /// A copy of `len` bytes at `offset` (zero-filled beyond the end).
    pub fn contents(&self, offset: usize, len: usize) -> Vec<u8> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = vec![0; len];
        if let Some(src) = data.get(offset..) {
            let n = src.len().min(len);
            out[..n].copy_from_slice(&src[..n]);
        }
        out
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, DiskError> {
        let size = self.size();
        let out_of_range = || DiskError::OutOfRange { offset, len: len as u64, size };
        let start = usize::try_from(offset).map_err(|_| out_of_range())?;
        match start.checked_add(len) {
            Some(end) if end as u64 <= size => Ok(start..end),
            _ => Err(out_of_range()),
        }
    }
}

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap_or_else(PoisonError::into_inner).len() as u64
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn supports_discard(&self) -> bool {
        !self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let range = self.range(offset, buf.len())?;
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        buf.copy_from_slice(&data[range]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let range = self.range(offset, buf.len())?;
        self.data.lock().unwrap_or_else(PoisonError::into_inner)[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let len = usize::try_from(len).map_err(|_| DiskError::OutOfRange { offset, len, size: self.size() })?;
        let range = self.range(offset, len)?;
        self.data.lock().unwrap_or_else(PoisonError::into_inner)[range].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rblkback-disk-{}-{name}", std::process::id()))
    }

    #[test]
    fn raw_file_reads_writes_discards_and_flushes() {
        let path = temp_path("rw");
        std::fs::write(&path, vec![0xaau8; 1 << 20]).unwrap();
        let disk = RawDisk::open(&path, RawDiskOptions::default()).unwrap();

        disk.write_at(8192, b"hello disk").unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 10];
        disk.read_at(8192, &mut buf).unwrap();
        disk.discard(0, 65536).unwrap();
        let mut zeroes = vec![1u8; 65536];
        disk.read_at(0, &mut zeroes).unwrap();

        assert_eq!(&buf, b"hello disk");
        assert!(zeroes.iter().all(|&b| b == 0), "a discarded range reads back as zeroes");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20, "discard keeps the size");
        assert_eq!((disk.size(), disk.sector_size(), disk.read_only()), (1 << 20, 512, false));
        assert!(matches!(disk.read_at((1 << 20) - 4, &mut buf), Err(DiskError::OutOfRange { .. })));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn read_only_raw_file_refuses_changes() {
        let path = temp_path("ro");
        std::fs::write(&path, vec![7u8; 4096 * 3 + 100]).unwrap();
        let disk =
            RawDisk::open(&path, RawDiskOptions { read_only: true, sector_size: Some(4096), ..Default::default() })
                .unwrap();

        let mut buf = [0u8; 4];
        disk.read_at(0, &mut buf).unwrap();

        assert_eq!(buf, [7; 4]);
        assert_eq!(disk.size(), 4096 * 3, "a partial last sector is not served");
        assert!(matches!(disk.write_at(0, b"x"), Err(DiskError::ReadOnly)));
        assert!(matches!(disk.discard(0, 4096), Err(DiskError::ReadOnly)));
        assert!(matches!(disk.flush(), Err(DiskError::ReadOnly)));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn odd_sector_sizes_and_non_disks_are_refused() {
        let path = temp_path("geom");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let bad = RawDisk::open(&path, RawDiskOptions { sector_size: Some(1024), ..Default::default() });
        assert!(matches!(bad, Err(DiskError::Geometry(_))));
        assert!(matches!(
            RawDisk::open(&std::env::temp_dir(), RawDiskOptions { read_only: true, ..Default::default() }),
            Err(DiskError::NotADisk(_)) | Err(DiskError::Open { .. })
        ));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn mapped_reads_serve_the_file_and_survive_truncation() {
        let path = temp_path("mapped");
        let data: Vec<u8> = (0..16 * 4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let disk = RawDisk::open(&path, RawDiskOptions::default()).unwrap();
        assert!(disk.reads_mapped(), "a buffered file is read through a mapping by default");
        let sync = RawDisk::open(&path, RawDiskOptions { io: Some(IoMode::Sync), ..Default::default() }).unwrap();
        assert!(!sync.reads_mapped());
        let mut pages = vec![0u64; 2 * 4096 / 8];
        let base = std::ptr::NonNull::new(pages.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `pages` outlives `mem` and is only accessed through it.
        let mem = unsafe { SharedMemory::new(base, 2 * 4096, true) };
        let regions = [mem.subregion(0, 512).unwrap(), mem.subregion(4096, 4096).unwrap()];
        let read = |disk: &RawDisk, offset: u64| -> Result<Vec<u8>, DiskError> {
            disk.read_vectored(offset, &regions, &mut BounceBuffer::default())?;
            let mut out = vec![0u8; 512 + 4096];
            regions[0].read(0, &mut out[..512]).unwrap();
            regions[1].read(0, &mut out[512..]).unwrap();
            Ok(out)
        };
        assert_eq!(read(&disk, 4608).unwrap(), &data[4608..4608 + 4608]);
        // A write (pwritev, through the page cache) is seen by the mapping.
        disk.write_at(5000, b"fresh").unwrap();
        assert_eq!(&read(&disk, 4608).unwrap()[392..397], b"fresh");

        // Another program truncates the image: the read that meets the
        // hole fails (no SIGBUS death), every later read is a preadv,
        // which still serves what is left.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(8 * 4096).unwrap();
        assert!(matches!(read(&disk, 12 * 4096), Err(DiskError::Io { op: "read", .. })));
        assert!(!disk.reads_mapped());
        assert_eq!(&read(&disk, 4608).unwrap()[392..397], b"fresh");

        let direct = RawDisk::open(&path, RawDiskOptions { direct: true, io: Some(IoMode::Mapped), ..Default::default() });
        assert!(matches!(direct, Err(DiskError::Options(_)) | Err(DiskError::Open { .. })));
        std::fs::remove_file(&path).unwrap();
    }

    /// On tmpfs, reading holes of a sparse image allocates nothing (they
    /// are read with preadv); what the disk writes is read from the
    /// mapping afterwards.
    #[test]
    fn mapped_reads_of_a_sparse_tmpfs_image_allocate_nothing() {
        use std::os::unix::fs::MetadataExt;
        let dir = Path::new("/dev/shm");
        assert!(dir.is_dir(), "this test needs a tmpfs at /dev/shm");
        let path = dir.join(format!("rblkback-disk-{}-sparse", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        assert!(sys::is_tmpfs(&file).unwrap(), "/dev/shm is a tmpfs");
        file.set_len(64 << 20).unwrap();
        let disk = RawDisk::open(&path, RawDiskOptions::default()).unwrap();
        let mut buf = vec![1u8; 1 << 20];
        for offset in (0..64u64 << 20).step_by(4 << 20) {
            disk.read_at(offset, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0));
        }
        assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0, "reading holes allocated pages");
        let map = disk.map.as_ref().unwrap();
        assert!(!map.is_present(8192, 512));
        disk.write_at(8192, &[7u8; 512]).unwrap();
        assert!(map.is_present(8192, 512), "a page the disk wrote is read from the mapping");
        let mut out = [0u8; 512];
        disk.read_at(8192, &mut out).unwrap();
        assert_eq!(out, [7u8; 512]);
        disk.discard(0, 1 << 20).unwrap();
        assert!(!map.is_present(8192, 512));
        disk.read_at(8192, &mut out).unwrap();
        assert_eq!(out, [0u8; 512]);
        assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0, "the discard freed the page, no read took it back");

        // Writes go through the mapping on tmpfs, and are in the file.
        disk.write_at(3 << 20, b"mapped write").unwrap();
        disk.flush().unwrap();
        let mut out = [0u8; 12];
        FileExt::read_exact_at(&file, &mut out, 3 << 20).unwrap();
        assert_eq!(&out, b"mapped write");
        // Truncated under us: the write that faults is made again with
        // pwritev (which extends the file), and the mapping is left.
        file.set_len(1 << 20).unwrap();
        disk.write_at(5 << 20, b"after").unwrap();
        assert!(!disk.reads_mapped());
        let mut out = [0u8; 5];
        FileExt::read_exact_at(&file, &mut out, 5 << 20).unwrap();
        assert_eq!(&out, b"after");
        std::fs::remove_file(&path).unwrap();
    }
}
