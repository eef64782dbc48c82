//! qcow2 images (QEMU's copy-on-write format, versions 2 and 3).
//!
//! [`Qcow2Disk`] serves a qcow2 image through the [`Disk`] trait: reads go
//! through the L1 and L2 tables to the image's data clusters, to the
//! backing file (raw or qcow2, opened read-only, a chain of at most
//! [`MAX_BACKING_DEPTH`] images) for clusters the image does not hold, or
//! to zeroes. A write to a cluster the image does not hold allocates one
//! from the refcounts and copies the rest of the cluster from where reads
//! of it went before (copy-on-write). [`create`] makes a new image, with or
//! without a backing file, without QEMU's tools.
//!
//! Supported: versions 2 and 3, cluster sizes 512 B to 2 MiB, refcount
//! widths of 8 to 64 bits, the "all zeroes" flag of version 3, reading
//! compressed clusters (zlib) of backing images. Refused when opening, with
//! an error that says so: encryption, external data files, extended L2
//! entries, compression types other than zlib, unknown incompatible
//! features; and, for writing only, images with internal snapshots and
//! images marked dirty or corrupt (QEMU's `qemu-img check -r all` repairs
//! those). A write to a compressed cluster of the image itself is refused.
//!
//! # Metadata and crash safety
//!
//! L2 tables and refcount blocks are cached (bounded) and written back on
//! [`Disk::flush`], in an order that keeps the image consistent on the
//! disk at every instant: data clusters are written as the guest writes
//! them; at a flush, refcount blocks are written and synced together with
//! the data, then refcount table entries, then L2 tables, then L1 entries,
//! each step synced before the next. A cluster is therefore never
//! referenced before its contents and its refcount are durable. Clusters
//! freed by a discard get their refcount lowered only after the L2 tables
//! that no longer reference them are durable, so a crash can leak a
//! cluster but never leave one referenced and free. The image is not
//! marked dirty (no lazy refcounts): after a crash it opens as it was at
//! the last flush, plus possibly some writes since.
//!
//! Discard is supported on version 3 images: whole clusters become "all
//! zeroes" clusters and their host clusters are freed (and their space
//! given back to the host file system); parts of clusters are written
//! with zeroes. Version 2 has no way to say "zeroes over a backing file",
//! and discard there fails as [`DiskError::DiscardUnsupported`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::disk::{Disk, DiskError};
use crate::image::{self, ImageFormat};
use crate::sys;

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Most images in a backing chain below an image.
pub const MAX_BACKING_DEPTH: usize = 16;
/// Default cluster size of [`create`]: 64 KiB, as `qemu-img create`.
pub const DEFAULT_CLUSTER_BITS: u32 = 16;

const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limits (`QCOW_MAX_L1_SIZE`, `QCOW_MAX_REFTABLE_SIZE`); they also
/// bound what an image can make us allocate.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Host offsets have 56 bits in L1 and L2 entries.
const MAX_HOST_OFFSET: u64 = 1 << 56;
/// The longest backing file name QEMU accepts.
const MAX_BACKING_NAME: usize = 1023;

const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const REFTABLE_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// Header field offsets that are rewritten in place.
const OFF_REFTABLE: u64 = 48;
const OFF_INCOMPAT: u64 = 72;
const OFF_AUTOCLEAR: u64 = 88;

/// Bytes of cached L2 tables and of cached refcount blocks per image.
const L2_CACHE_BYTES: usize = 32 << 20;
const REFBLOCK_CACHE_BYTES: usize = 4 << 20;
const MIN_CACHED_TABLES: usize = 16;

/// Why a qcow2 image cannot be opened, created or served.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// A read, write or sync of the image file failed.
    #[error("{op} at byte {offset} of {path} failed: {source}")]
    Io {
        /// The image file.
        path: PathBuf,
        /// `"read"`, `"write"` or `"sync"`.
        op: &'static str,
        /// Byte offset in the image file.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the qcow2 magic.
    #[error("{0} is not a qcow2 image (no QFI\\xfb magic)")]
    NotQcow2(PathBuf),
    /// The header is malformed or inconsistent.
    #[error("{path} has an invalid qcow2 header: {what}")]
    BadHeader {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The image uses a feature this implementation does not have.
    #[error("{path} uses {what}, which rblkback does not support; convert it with `qemu-img convert -O qcow2`")]
    Unsupported {
        /// The image file.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// The image cannot be opened for writing as it is.
    #[error("{path} cannot be opened for writing: {why}")]
    NotWritable {
        /// The image file.
        path: PathBuf,
        /// Why, and what to do.
        why: &'static str,
    },
    /// The metadata is inconsistent; a writable image is marked corrupt.
    #[error("{path} is corrupt: {what}; check it with `qemu-img check`")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The backing file could not be opened.
    #[error("cannot open {backing}, the backing file of {path}: {source}")]
    Backing {
        /// The image file.
        path: PathBuf,
        /// The backing file, resolved.
        backing: PathBuf,
        /// Why.
        #[source]
        source: Box<DiskError>,
    },
    /// The backing chain is deeper than [`MAX_BACKING_DEPTH`] (or loops).
    #[error("the backing chain of {0} is deeper than {MAX_BACKING_DEPTH} images or loops")]
    BackingChainTooDeep(PathBuf),
    /// [`create`] was asked for something impossible.
    #[error("cannot create {path}: {what}")]
    Create {
        /// The image file.
        path: PathBuf,
        /// Why.
        what: String,
    },
    /// O_DIRECT was asked for a qcow2 image.
    #[error("{0} is a qcow2 image: direct I/O (--direct) is only supported for raw images")]
    DirectIo(PathBuf),
    /// The image file would grow beyond what qcow2 can address.
    #[error("{0} is full: its host file cannot grow further")]
    Full(PathBuf),
}

/// How to open a [`Qcow2Disk`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Qcow2Options {
    /// Open read-only and refuse writes.
    pub read_only: bool,
    /// Logical sector size to advertise: 512 (default) or 4096.
    pub sector_size: Option<u32>,
}

/// The backing file of a new image.
#[derive(Debug, Clone)]
pub struct BackingFile {
    /// The name stored in the image: an absolute path, or a path relative
    /// to the directory of the new image (as QEMU resolves it).
    pub name: String,
    /// Its format, stored in the image (QEMU's `-F`).
    pub format: ImageFormat,
}

/// What [`create`] makes.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes.
    pub size: u64,
    /// log2 of the cluster size, 9 to 21; [`DEFAULT_CLUSTER_BITS`] by default.
    pub cluster_bits: u32,
    /// The backing file, if any.
    pub backing: Option<BackingFile>,
}

impl CreateOptions {
    /// An image of `size` bytes with 64 KiB clusters and no backing file.
    pub fn new(size: u64) -> Self {
        CreateOptions { size, cluster_bits: DEFAULT_CLUSTER_BITS, backing: None }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut v = [0; 2];
    v.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(v)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a / b + u64::from(a % b != 0)
}

/// The parsed image header and header extensions.
#[derive(Debug, Clone)]
struct Header {
    version: u32,
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    nb_snapshots: u32,
    incompatible_features: u64,
    autoclear_features: u64,
    refcount_order: u32,
    backing_file: Option<String>,
    backing_format: Option<String>,
}

impl Header {
    /// Parses and checks the header in the image's first cluster (or as
    /// much of it as the file has).
    fn parse(path: &Path, buf: &[u8]) -> Result<Header, Qcow2Error> {
        let bad = |what: String| Qcow2Error::BadHeader { path: path.to_owned(), what };
        let unsupported = |what: String| Qcow2Error::Unsupported { path: path.to_owned(), what };
        if buf.len() < 4 || buf[..4] != QCOW2_MAGIC {
            return Err(Qcow2Error::NotQcow2(path.to_owned()));
        }
        if buf.len() < V2_HEADER_LEN {
            return Err(bad("the file is shorter than the header".into()));
        }
        let version = be32(buf, 4);
        if !matches!(version, 2 | 3) {
            return Err(unsupported(format!("qcow2 version {version} (only 2 and 3 are)")));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits} is outside 9..=21")));
        }
        let cluster_size = 1u64 << cluster_bits;
        if be32(buf, 32) != 0 {
            return Err(unsupported("encryption".into()));
        }
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            incompatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            backing_file: None,
            backing_format: None,
        };
        let mut header_len = V2_HEADER_LEN;
        if version == 3 {
            if buf.len() < V3_HEADER_LEN {
                return Err(bad("the file is shorter than the version 3 header".into()));
            }
            h.incompatible_features = be64(buf, 72);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            header_len = be32(buf, 100) as usize;
            if header_len < V3_HEADER_LEN || header_len % 8 != 0 || header_len as u64 > cluster_size {
                return Err(bad(format!("header_length {header_len} is invalid")));
            }
            let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
            if unknown != 0 {
                return Err(unsupported(format!("unknown incompatible features {unknown:#x}")));
            }
            if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
                return Err(unsupported("an external data file".into()));
            }
            if h.incompatible_features & INCOMPAT_EXTL2 != 0 {
                return Err(unsupported("extended L2 entries (subclusters)".into()));
            }
            if h.incompatible_features & INCOMPAT_COMPRESSION != 0 {
                let kind = buf.get(104).copied().filter(|_| header_len > V3_HEADER_LEN);
                if kind != Some(0) {
                    return Err(unsupported("a compression type other than zlib".into()));
                }
            }
            if !(3..=6).contains(&h.refcount_order) {
                return Err(unsupported(format!("{}-bit refcounts", 1u64 << h.refcount_order.min(63))));
            }
        }
        if h.size >= MAX_HOST_OFFSET {
            return Err(bad(format!("virtual size {} is too large", h.size)));
        }
        let l2_entries = cluster_size / 8;
        let needed_l1 = div_ceil(div_ceil(h.size, cluster_size), l2_entries);
        if u64::from(h.l1_size) < needed_l1 || u64::from(h.l1_size) * 8 > MAX_L1_BYTES {
            return Err(bad(format!("l1_size {} does not fit virtual size {}", h.l1_size, h.size)));
        }
        if h.l1_table_offset % cluster_size != 0 || (h.l1_size > 0 && h.l1_table_offset == 0) {
            return Err(bad(format!("L1 table offset {:#x} is not cluster-aligned", h.l1_table_offset)));
        }
        if h.refcount_table_offset % cluster_size != 0
            || h.refcount_table_offset == 0
            || u64::from(h.refcount_table_clusters) * cluster_size > MAX_REFTABLE_BYTES
        {
            return Err(bad("the refcount table's offset or size is invalid".into()));
        }
        // Header extensions follow the header, up to the end of cluster 0.
        let ext_area = &buf[..buf.len().min(cluster_size as usize)];
        let mut at = header_len;
        loop {
            if at + 8 > ext_area.len() {
                return Err(bad("the header extensions run past the first cluster".into()));
            }
            let kind = be32(ext_area, at);
            let len = be32(ext_area, at + 4) as usize;
            at += 8;
            if kind == EXT_END {
                break;
            }
            if len > ext_area.len() - at {
                return Err(bad(format!("header extension {kind:#x} runs past the first cluster")));
            }
            if kind == EXT_BACKING_FORMAT {
                let name = String::from_utf8_lossy(&ext_area[at..at + len]).into_owned();
                h.backing_format = Some(name);
            }
            at += len.next_multiple_of(8);
        }
        let backing_off = be64(buf, 8);
        let backing_len = be32(buf, 16) as usize;
        if backing_off != 0 {
            let start = usize::try_from(backing_off).unwrap_or(usize::MAX);
            if backing_len > MAX_BACKING_NAME || start > ext_area.len() || backing_len > ext_area.len() - start {
                return Err(bad("the backing file name lies outside the first cluster".into()));
            }
            let name = String::from_utf8_lossy(&ext_area[start..start + backing_len]).into_owned();
            if !name.is_empty() {
                h.backing_file = Some(name);
            }
        }
        Ok(h)
    }
}

/// Where the data of one guest cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Not in this image: the backing file's, or zeroes.
    Unallocated,
    /// All zeroes, without a host cluster.
    Zero,
    /// All zeroes, in a preallocated host cluster.
    ZeroAlloc { host: u64, copied: bool },
    /// A host cluster; `copied` means its refcount is 1 (QCOW_OFLAG_COPIED).
    Data { host: u64, copied: bool },
    /// Compressed data of `len` bytes at `host`.
    Compressed { host: u64, len: u64 },
}

/// A cached metadata cluster (an L2 table or a refcount block).
#[derive(Debug)]
struct Table {
    data: Vec<u8>,
    dirty: bool,
    used: u64,
}

/// Metadata clusters by host offset, at most `capacity` of them; only
/// clean ones are evicted, least recently used first.
#[derive(Debug)]
struct TableCache {
    tables: HashMap<u64, Table>,
    capacity: usize,
    tick: u64,
}

impl TableCache {
    fn new(capacity: usize) -> Self {
        TableCache { tables: HashMap::new(), capacity: capacity.max(MIN_CACHED_TABLES), tick: 0 }
    }

    fn needs_room(&self, off: u64) -> bool {
        !self.tables.contains_key(&off) && self.tables.len() >= self.capacity
    }

    /// Evicts the least recently used clean table; false if all are dirty.
    fn evict_clean(&mut self) -> bool {
        let victim = self.tables.iter().filter(|(_, t)| !t.dirty).min_by_key(|(_, t)| t.used).map(|(&off, _)| off);
        victim.is_some_and(|off| self.tables.remove(&off).is_some())
    }

    fn get_or_load(
        &mut self,
        off: u64,
        load: impl FnOnce() -> Result<Vec<u8>, DiskError>,
    ) -> Result<&mut Table, DiskError> {
        self.tick += 1;
        let tick = self.tick;
        let table = match self.tables.entry(off) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(Table { data: load()?, dirty: false, used: tick }),
        };
        table.used = tick;
        Ok(table)
    }

    fn insert_new(&mut self, off: u64, data: Vec<u8>) {
        self.tick += 1;
        self.tables.insert(off, Table { data, dirty: true, used: self.tick });
    }

    fn dirty(&self) -> Vec<u64> {
        let mut offs: Vec<u64> = self.tables.iter().filter(|(_, t)| t.dirty).map(|(&off, _)| off).collect();
        offs.sort_unstable();
        offs
    }
}

/// The image file and what never changes after opening.
#[derive(Debug)]
struct Image {
    file: File,
    path: PathBuf,
    version: u32,
    cluster_bits: u32,
    /// log2 of the refcount width in bits.
    refcount_order: u32,
    l1_table_offset: u64,
    /// The incompatible features in the header when opened.
    incompatible_features: u64,
    writable: bool,
}

impl Image {
    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn l2_bits(&self) -> u32 {
        self.cluster_bits - 3
    }

    /// log2 of the number of refcounts in a refcount block.
    fn refblock_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }

    fn io_err(&self, op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> DiskError + '_ {
        move |source| Qcow2Error::Io { path: self.path.clone(), op, offset, source }.into()
    }

    /// Reads `buf.len()` bytes at `offset`, zeroes past the end of the file.
    fn read_or_zero(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("read", offset)(e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.file.write_all_at(buf, offset).map_err(self.io_err("write", offset))
    }

    fn sync(&self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(self.io_err("sync", 0))
    }

    fn read_cluster(&self, offset: u64) -> Result<Vec<u8>, DiskError> {
        let mut data = vec![0; self.cluster_size() as usize];
        self.read_or_zero(offset, &mut data)?;
        Ok(data)
    }

    fn corrupt(&self, what: String) -> DiskError {
        Qcow2Error::Corrupt { path: self.path.clone(), what }.into()
    }

    /// Checks that a host offset from the metadata is a cluster in the file's range.
    fn check_host(&self, host: u64, what: &str) -> Result<(), DiskError> {
        if host % self.cluster_size() != 0 || host == 0 || host >= MAX_HOST_OFFSET {
            return Err(self.corrupt(format!("{what} at {host:#x} is not a valid cluster offset")));
        }
        Ok(())
    }
}

/// The mutable metadata: L1 and refcount tables, caches, allocation.
#[derive(Debug)]
struct State {
    l1: Vec<u64>,
    l1_dirty: BTreeSet<usize>,
    reftable: Vec<u64>,
    reftable_offset: u64,
    reftable_dirty: BTreeSet<usize>,
    l2: TableCache,
    refblocks: TableCache,
    /// No free cluster lies below this cluster index.
    free_hint: u64,
    /// Host clusters to free once the L2 tables that dropped them are durable.
    pending_free: Vec<u64>,
    /// Set when corruption was found: writes are refused from then on.
    corrupt: bool,
}

impl State {
    // --- refcounts ---

    fn refblock<'a>(&'a mut self, img: &Image, off: u64) -> Result<&'a mut Table, DiskError> {
        if self.refblocks.needs_room(off) && !self.refblocks.evict_clean() {
            self.flush_meta(img)?;
            self.refblocks.evict_clean();
        }
        img.check_host(off, "a refcount block")?;
        self.refblocks.get_or_load(off, || img.read_cluster(off))
    }

    /// The host offset of the refcount block for cluster `index`, 0 if none.
    fn refblock_offset(&self, img: &Image, index: u64) -> u64 {
        let block = index >> img.refblock_bits();
        usize::try_from(block).ok().and_then(|b| self.reftable.get(b)).map_or(0, |e| e & REFTABLE_OFFSET_MASK)
    }

    fn refcount(&mut self, img: &Image, index: u64) -> Result<u64, DiskError> {
        let off = self.refblock_offset(img, index);
        if off == 0 {
            return Ok(0);
        }
        let within = (index & ((1 << img.refblock_bits()) - 1)) as usize;
        let order = img.refcount_order;
        let table = self.refblock(img, off)?;
        Ok(read_refcount(&table.data, order, within))
    }

    fn set_refcount(&mut self, img: &Image, index: u64, value: u64) -> Result<(), DiskError> {
        let off = self.refblock_offset(img, index);
        if off == 0 {
            return Err(img.corrupt(format!("cluster {index} has no refcount block")));
        }
        let within = (index & ((1 << img.refblock_bits()) - 1)) as usize;
        let order = img.refcount_order;
        let table = self.refblock(img, off)?;
        write_refcount(&mut table.data, order, within, value);
        table.dirty = true;
        Ok(())
    }

    /// Lowers the refcount of host cluster `index`; a cluster that drops to
    /// zero is free again and its space goes back to the file system.
    fn release(&mut self, img: &Image, index: u64) -> Result<(), DiskError> {
        let count = self.refcount(img, index)?;
        if count == 0 {
            return Err(img.corrupt(format!("cluster {index} is freed but has refcount 0")));
        }
        self.set_refcount(img, index, count - 1)?;
        if count == 1 {
            self.free_hint = self.free_hint.min(index);
            let cs = img.cluster_size();
            if let Err(e) = sys::punch_hole(&img.file, index * cs, cs) {
                log::debug!("{}: cannot punch a hole for freed cluster {index}: {e}", img.path.display());
            }
        }
        Ok(())
    }

    /// Allocates one host cluster (refcount 1) and returns its offset.
    fn alloc_cluster(&mut self, img: &Image) -> Result<u64, DiskError> {
        let entries = 1u64 << img.refblock_bits();
        loop {
            let index = self.free_hint;
            if index.checked_mul(img.cluster_size()).map_or(true, |off| off >= MAX_HOST_OFFSET) {
                return Err(Qcow2Error::Full(img.path.clone()).into());
            }
            let block = index >> img.refblock_bits();
            if block >= self.reftable.len() as u64 {
                self.grow_reftable(img)?;
                continue;
            }
            if self.reftable[block as usize] & REFTABLE_OFFSET_MASK == 0 {
                // No refcount block covers this free cluster yet: make it
                // the block, counting itself.
                let off = index << img.cluster_bits;
                let mut data = vec![0; img.cluster_size() as usize];
                write_refcount(&mut data, img.refcount_order, (index % entries) as usize, 1);
                self.refblocks.insert_new(off, data);
                self.reftable[block as usize] = off;
                self.reftable_dirty.insert(block as usize);
                self.free_hint = index + 1;
                continue;
            }
            if self.refcount(img, index)? == 0 {
                self.set_refcount(img, index, 1)?;
                self.free_hint = index + 1;
                return Ok(index << img.cluster_bits);
            }
            self.free_hint = index + 1;
        }
    }

    /// Replaces the refcount table with a larger one when allocation
    /// reaches clusters that it cannot cover. The new table and the
    /// refcount blocks for the clusters they occupy go to the first
    /// uncovered cluster (all clusters from there on are free); the header
    /// switches to the new table once both are durable.
    fn grow_reftable(&mut self, img: &Image) -> Result<(), DiskError> {
        self.flush_meta(img)?;
        let cs = img.cluster_size();
        let entries = 1u64 << img.refblock_bits();
        let old_len = self.reftable.len() as u64;
        let start = old_len * entries;
        let (mut blocks, mut table_clusters) = (1u64, 1u64);
        loop {
            let end = start + blocks + table_clusters;
            let new_blocks = div_ceil(end, entries) - old_len;
            let new_len = (old_len + new_blocks).max(old_len * 2);
            let new_table_clusters = div_ceil(new_len * 8, cs);
            if (new_blocks, new_table_clusters) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (new_blocks, new_table_clusters);
        }
        if table_clusters * cs > MAX_REFTABLE_BYTES {
            return Err(Qcow2Error::Full(img.path.clone()).into());
        }
        let end = start + blocks + table_clusters;
        if end.checked_mul(cs).map_or(true, |e| e >= MAX_HOST_OFFSET) {
            return Err(Qcow2Error::Full(img.path.clone()).into());
        }
        // The new refcount blocks, each counting the new clusters it covers.
        for b in 0..blocks {
            let mut data = vec![0; cs as usize];
            let first = start + b * entries;
            for index in first..(first + entries).min(end) {
                write_refcount(&mut data, img.refcount_order, (index - first) as usize, 1);
            }
            img.write((start + b) * cs, &data)?;
        }
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        for (i, e) in self.reftable.iter().enumerate() {
            put64(&mut table, i * 8, *e);
        }
        for b in 0..blocks {
            put64(&mut table, ((old_len + b) * 8) as usize, (start + b) * cs);
        }
        let table_off = (start + blocks) * cs;
        img.write(table_off, &table)?;
        img.sync()?;
        let mut field = [0u8; 12];
        put64(&mut field, 0, table_off);
        put32(&mut field, 8, table_clusters as u32);
        img.write(OFF_REFTABLE, &field)?;
        img.sync()?;

        let old_off = self.reftable_offset;
        let old_clusters = div_ceil(old_len * 8, cs);
        self.reftable = (0..table_clusters * cs / 8).map(|i| be64(&table, (i * 8) as usize)).collect();
        self.reftable_offset = table_off;
        self.reftable_dirty.clear();
        self.free_hint = end;
        for c in 0..old_clusters {
            self.release(img, (old_off >> img.cluster_bits) + c)?;
        }
        log::debug!("{}: refcount table grown to {table_clusters} clusters at {table_off:#x}", img.path.display());
        Ok(())
    }

    // --- L1 and L2 ---

    fn l2_table<'a>(&'a mut self, img: &Image, off: u64) -> Result<&'a mut Table, DiskError> {
        if self.l2.needs_room(off) && !self.l2.evict_clean() {
            self.flush_meta(img)?;
            self.l2.evict_clean();
        }
        self.l2.get_or_load(off, || img.read_cluster(off))
    }

    fn l1_index(&self, img: &Image, vcluster: u64) -> Result<usize, DiskError> {
        let i = vcluster >> img.l2_bits();
        usize::try_from(i)
            .ok()
            .filter(|&i| i < self.l1.len())
            .ok_or_else(|| img.corrupt(format!("guest cluster {vcluster} lies beyond the L1 table")))
    }

    /// The L2 entry of guest cluster `vcluster` (0 if it has no L2 table).
    fn l2_entry(&mut self, img: &Image, vcluster: u64) -> Result<u64, DiskError> {
        let l1i = self.l1_index(img, vcluster)?;
        let l2_off = self.l1[l1i] & L1_OFFSET_MASK;
        if l2_off == 0 {
            return Ok(0);
        }
        img.check_host(l2_off, "an L2 table")?;
        let at = ((vcluster & ((1 << img.l2_bits()) - 1)) * 8) as usize;
        Ok(be64(&self.l2_table(img, l2_off)?.data, at))
    }

    fn map(&mut self, img: &Image, vcluster: u64) -> Result<Mapping, DiskError> {
        let e = self.l2_entry(img, vcluster)?;
        if e & OFLAG_COMPRESSED != 0 {
            let x = 62 - (img.cluster_bits - 8);
            let host = e & ((1 << x) - 1);
            let sectors = ((e >> x) & ((1 << (img.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (host & 511);
            if host == 0 || host >= MAX_HOST_OFFSET {
                return Err(img.corrupt(format!("compressed cluster at {host:#x} is invalid")));
            }
            return Ok(Mapping::Compressed { host, len });
        }
        let host = e & L2_OFFSET_MASK;
        let copied = e & OFLAG_COPIED != 0;
        if host != 0 {
            img.check_host(host, "a data cluster")?;
        }
        Ok(match (img.version >= 3 && e & OFLAG_ZERO != 0, host) {
            (true, 0) => Mapping::Zero,
            (true, host) => Mapping::ZeroAlloc { host, copied },
            (false, 0) => Mapping::Unallocated,
            (false, host) => Mapping::Data { host, copied },
        })
    }

    /// The L2 table of `vcluster`, allocated if it has none.
    fn ensure_l2(&mut self, img: &Image, vcluster: u64) -> Result<u64, DiskError> {
        let l1i = self.l1_index(img, vcluster)?;
        let e = self.l1[l1i];
        let off = e & L1_OFFSET_MASK;
        if off != 0 {
            if e & OFLAG_COPIED == 0 {
                return Err(Qcow2Error::Unsupported {
                    path: img.path.clone(),
                    what: "L2 tables shared with a snapshot".into(),
                }
                .into());
            }
            return Ok(off);
        }
        let new = self.alloc_cluster(img)?;
        if self.l2.needs_room(new) && !self.l2.evict_clean() {
            self.flush_meta(img)?;
            self.l2.evict_clean();
        }
        self.l2.insert_new(new, vec![0; img.cluster_size() as usize]);
        self.l1[l1i] = new | OFLAG_COPIED;
        self.l1_dirty.insert(l1i);
        Ok(new)
    }

    fn set_l2_entry(&mut self, img: &Image, vcluster: u64, entry: u64) -> Result<(), DiskError> {
        let l2_off = self.ensure_l2(img, vcluster)?;
        let at = ((vcluster & ((1 << img.l2_bits()) - 1)) * 8) as usize;
        let table = self.l2_table(img, l2_off)?;
        put64(&mut table.data, at, entry);
        table.dirty = true;
        Ok(())
    }

    /// Host clusters that hold the data of a mapping.
    fn host_clusters(img: &Image, m: Mapping) -> std::ops::Range<u64> {
        match m {
            Mapping::Data { host, .. } | Mapping::ZeroAlloc { host, .. } => {
                let c = host >> img.cluster_bits;
                c..c + 1
            }
            Mapping::Compressed { host, len } => (host >> img.cluster_bits)..((host + len - 1) >> img.cluster_bits) + 1,
            Mapping::Unallocated | Mapping::Zero => 0..0,
        }
    }

    // --- write-back ---

    /// Writes all dirty metadata back in dependency order, syncing
    /// between steps, then frees the clusters discards released. Ends
    /// with the data and metadata durable.
    fn flush_meta(&mut self, img: &Image) -> Result<(), DiskError> {
        // Data and refcount blocks: nothing on disk points at a cluster
        // before both its contents and its refcount are durable.
        let dirty = self.refblocks.dirty();
        self.write_tables(img, &dirty, true)?;
        img.sync()?;
        if !self.reftable_dirty.is_empty() {
            for &i in &self.reftable_dirty {
                img.write(self.reftable_offset + 8 * i as u64, &self.reftable[i].to_be_bytes())?;
            }
            img.sync()?;
            self.reftable_dirty.clear();
        }
        let dirty = self.l2.dirty();
        if !dirty.is_empty() {
            self.write_tables(img, &dirty, false)?;
            img.sync()?;
        }
        if !self.l1_dirty.is_empty() {
            for &i in &self.l1_dirty {
                img.write(img.l1_table_offset + 8 * i as u64, &self.l1[i].to_be_bytes())?;
            }
            img.sync()?;
            self.l1_dirty.clear();
        }
        // Nothing durable references the released clusters any more.
        if !self.pending_free.is_empty() {
            for index in std::mem::take(&mut self.pending_free) {
                self.release(img, index)?;
            }
            let dirty = self.refblocks.dirty();
            self.write_tables(img, &dirty, true)?;
            img.sync()?;
        }
        Ok(())
    }

    fn write_tables(&mut self, img: &Image, offs: &[u64], refblocks: bool) -> Result<(), DiskError> {
        let cache = if refblocks { &mut self.refblocks } else { &mut self.l2 };
        for off in offs {
            if let Some(t) = cache.tables.get_mut(off) {
                img.write(*off, &t.data)?;
                t.dirty = false;
            }
        }
        Ok(())
    }
}

fn read_refcount(data: &[u8], order: u32, i: usize) -> u64 {
    match order {
        3 => u64::from(data[i]),
        4 => u64::from(be16(data, i * 2)),
        5 => u64::from(be32(data, i * 4)),
        _ => be64(data, i * 8),
    }
}

fn write_refcount(data: &mut [u8], order: u32, i: usize, v: u64) {
    match order {
        3 => data[i] = v as u8,
        4 => data[i * 2..i * 2 + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => data[i * 4..i * 4 + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => data[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

/// Inflates a compressed cluster (raw deflate, as QEMU's zlib type).
fn inflate(img: &Image, compressed: &[u8], out: &mut [u8]) -> Result<(), DiskError> {
    use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
    use miniz_oxide::inflate::TINFLStatus;
    let mut state = DecompressorOxide::new();
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _, written) = decompress(&mut state, compressed, out, 0, flags);
    match status {
        TINFLStatus::Failed | TINFLStatus::BadParam | TINFLStatus::Adler32Mismatch => {
            Err(img.corrupt(format!("a compressed cluster does not inflate ({status:?})")))
        }
        // The stream may end with the cluster or go on (QEMU reads whole
        // sectors): a full cluster is what counts.
        _ if written == out.len() => Ok(()),
        _ => Err(img.corrupt(format!("a compressed cluster inflates to {written} bytes only"))),
    }
}

/// A piece of a guest request that lies in one cluster.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Guest cluster number.
    vcluster: u64,
    /// Offset within the cluster.
    within: usize,
    /// Offset within the request's buffer.
    at: usize,
    len: usize,
}

fn chunks(cluster_bits: u32, offset: u64, len: usize) -> impl Iterator<Item = Chunk> {
    let cs = 1u64 << cluster_bits;
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let pos = offset + at as u64;
        let within = (pos % cs) as usize;
        let n = (cs as usize - within).min(len - at);
        let chunk = Chunk { vcluster: pos >> cluster_bits, within, at, len: n };
        at += n;
        Some(chunk)
    })
}

/// A qcow2 image served as a disk.
pub struct Qcow2Disk {
    img: Image,
    size: u64,
    sector_size: u32,
    backing: Option<Box<dyn Disk>>,
    backing_path: Option<PathBuf>,
    state: Mutex<State>,
}

impl Qcow2Disk {
    /// Opens the qcow2 image at `path` and its backing chain (read-only).
    pub fn open(path: &Path, options: Qcow2Options) -> Result<Self, DiskError> {
        Self::open_at_depth(path, options, 0)
    }

    pub(crate) fn open_at_depth(path: &Path, options: Qcow2Options, depth: usize) -> Result<Self, DiskError> {
        if depth > MAX_BACKING_DEPTH {
            return Err(Qcow2Error::BackingChainTooDeep(path.to_owned()).into());
        }
        let open_err = |source| DiskError::Open { path: path.to_owned(), source };
        let file = OpenOptions::new().read(true).write(!options.read_only).open(path).map_err(open_err)?;
        if !file.metadata().map_err(open_err)?.is_file() {
            return Err(DiskError::NotADisk(path.to_owned()));
        }
        let mut first = vec![0u8; 1 << MAX_CLUSTER_BITS];
        let n = read_up_to(&file, &mut first).map_err(open_err)?;
        first.truncate(n);
        let h = Header::parse(path, &first)?;
        let not_writable = |why| -> DiskError { Qcow2Error::NotWritable { path: path.to_owned(), why }.into() };
        if !options.read_only {
            if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
                return Err(not_writable("it is marked corrupt; repair it with `qemu-img check -r all`"));
            }
            if h.incompatible_features & INCOMPAT_DIRTY != 0 {
                return Err(not_writable(
                    "it is marked dirty (lazy refcounts after an unclean shutdown); repair it with `qemu-img check -r all`",
                ));
            }
            if h.nb_snapshots != 0 {
                return Err(not_writable(
                    "it has internal snapshots, which rblkback does not update; open it read-only or delete them",
                ));
            }
        }
        let img = Image {
            file,
            path: path.to_owned(),
            version: h.version,
            cluster_bits: h.cluster_bits,
            refcount_order: h.refcount_order,
            l1_table_offset: h.l1_table_offset,
            incompatible_features: h.incompatible_features,
            writable: !options.read_only,
        };
        let cs = img.cluster_size();
        let mut raw = vec![0u8; h.l1_size as usize * 8];
        img.read_or_zero(h.l1_table_offset, &mut raw)?;
        let l1 = raw.chunks_exact(8).map(|e| be64(e, 0)).collect();
        let mut raw = vec![0u8; (u64::from(h.refcount_table_clusters) * cs) as usize];
        img.read_or_zero(h.refcount_table_offset, &mut raw)?;
        let reftable = raw.chunks_exact(8).map(|e| be64(e, 0)).collect();

        if img.writable && h.version >= 3 && h.autoclear_features != 0 {
            // Autoclear features (bitmaps) describe data this code does not
            // keep up to date: clear them before the first write.
            img.write(OFF_AUTOCLEAR, &0u64.to_be_bytes())?;
            img.sync()?;
        }

        let (backing, backing_path) = match &h.backing_file {
            None => (None, None),
            Some(name) => {
                let resolved = resolve_backing(path, name);
                let format = match h.backing_format.as_deref() {
                    None => None,
                    Some("raw") => Some(ImageFormat::Raw),
                    Some("qcow2") => Some(ImageFormat::Qcow2),
                    Some(other) => {
                        return Err(Qcow2Error::Unsupported {
                            path: path.to_owned(),
                            what: format!("a backing file in format {other:?}"),
                        }
                        .into())
                    }
                };
                let disk = image::open_backing(&resolved, format, depth + 1).map_err(|e| match e {
                    DiskError::Qcow2(Qcow2Error::BackingChainTooDeep(_)) => e,
                    other => Qcow2Error::Backing {
                        path: path.to_owned(),
                        backing: resolved.clone(),
                        source: Box::new(other),
                    }
                    .into(),
                })?;
                (Some(disk), Some(resolved))
            }
        };

        let sector_size = options.sector_size.unwrap_or(512);
        if !matches!(sector_size, 512 | 4096) {
            return Err(DiskError::Geometry(format!(
                "logical sector size {sector_size} is not supported; use 512 or 4096"
            )));
        }
        let tables = |bytes: usize| bytes / cs as usize;
        let state = State {
            l1,
            l1_dirty: BTreeSet::new(),
            reftable,
            reftable_offset: h.refcount_table_offset,
            reftable_dirty: BTreeSet::new(),
            l2: TableCache::new(tables(L2_CACHE_BYTES)),
            refblocks: TableCache::new(tables(REFBLOCK_CACHE_BYTES)),
            free_hint: 0,
            pending_free: Vec::new(),
            corrupt: false,
        };
        Ok(Qcow2Disk {
            img,
            size: h.size - h.size % u64::from(sector_size),
            sector_size,
            backing,
            backing_path,
            state: Mutex::new(state),
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.img.path
    }

    /// The backing file, resolved, if the image has one.
    pub fn backing_path(&self) -> Option<&Path> {
        self.backing_path.as_deref()
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.img.cluster_size()
    }

    /// The qcow2 version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.img.version
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DiskError::OutOfRange { offset, len, size: self.size }),
        }
    }

    /// Marks a writable version 3 image corrupt (as QEMU does) and refuses
    /// further writes; returns the error to report.
    fn fail_corrupt(&self, st: &mut State, err: DiskError) -> DiskError {
        if matches!(err, DiskError::Qcow2(Qcow2Error::Corrupt { .. })) && self.img.writable && !st.corrupt {
            st.corrupt = true;
            log::error!("{err}; marking the image corrupt");
            if self.img.version >= 3 {
                let features = self.img.incompatible_features | INCOMPAT_CORRUPT;
                let marked = self.img.write(OFF_INCOMPAT, &features.to_be_bytes()).and_then(|()| self.img.sync());
                if let Err(e) = marked {
                    log::error!("cannot mark {} corrupt: {e}", self.img.path.display());
                }
            }
        }
        err
    }

    /// Reads guest bytes that this image does not hold: the backing
    /// file's, zeroes beyond it or without one.
    fn read_unallocated(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let Some(backing) = &self.backing else {
            buf.fill(0);
            return Ok(());
        };
        let from_backing = backing.size().saturating_sub(offset).min(buf.len() as u64) as usize;
        if from_backing > 0 {
            backing.read_at(offset, &mut buf[..from_backing])?;
        }
        buf[from_backing..].fill(0);
        Ok(())
    }

    fn read_compressed(&self, host: u64, len: u64, out: &mut [u8]) -> Result<(), DiskError> {
        let mut compressed = vec![0u8; len as usize];
        self.img.read_or_zero(host, &mut compressed)?;
        inflate(&self.img, &compressed, out)
    }

    /// The guest contents of a whole cluster as currently mapped by `m`.
    fn cluster_contents(&self, vcluster: u64, m: Mapping) -> Result<Vec<u8>, DiskError> {
        let cs = self.img.cluster_size();
        let mut data = vec![0u8; cs as usize];
        match m {
            Mapping::Zero | Mapping::ZeroAlloc { .. } => {}
            Mapping::Unallocated => self.read_unallocated(vcluster * cs, &mut data)?,
            Mapping::Data { host, .. } => self.img.read_or_zero(host, &mut data)?,
            Mapping::Compressed { host, len } => self.read_compressed(host, len, &mut data)?,
        }
        Ok(data)
    }

    /// Writes `chunk` into a cluster the image must (re)allocate first,
    /// copying the rest of the cluster from what it read as before.
    fn write_allocating(&self, st: &mut State, c: Chunk, m: Mapping, src: &[u8]) -> Result<(), DiskError> {
        let img = &self.img;
        let cs = img.cluster_size() as usize;
        let (host, old) = match m {
            Mapping::ZeroAlloc { host, copied: true } => (host, None),
            Mapping::Unallocated | Mapping::Zero => (st.alloc_cluster(img)?, None),
            Mapping::Compressed { .. } | Mapping::Data { copied: false, .. } | Mapping::ZeroAlloc { .. } => {
                (st.alloc_cluster(img)?, Some(m))
            }
            Mapping::Data { host, copied: true } => return img.write(host + c.within as u64, src),
        };
        if c.len == cs {
            img.write(host, src)?;
        } else {
            let mut data = self.cluster_contents(c.vcluster, m)?;
            data[c.within..c.within + c.len].copy_from_slice(src);
            img.write(host, &data)?;
        }
        st.set_l2_entry(img, c.vcluster, host | OFLAG_COPIED)?;
        if let Some(old) = old {
            st.pending_free.extend(State::host_clusters(img, old));
        }
        Ok(())
    }

    fn write_locked(&self, st: &mut State, offset: u64, buf: &[u8]) -> Result<Vec<(u64, Chunk)>, DiskError> {
        let mut in_place = Vec::new();
        for c in chunks(self.img.cluster_bits, offset, buf.len()) {
            match st.map(&self.img, c.vcluster)? {
                Mapping::Data { host, copied: true } => in_place.push((host + c.within as u64, c)),
                m => self.write_allocating(st, c, m, &buf[c.at..c.at + c.len])?,
            }
        }
        Ok(in_place)
    }

    fn discard_locked(&self, st: &mut State, first: u64, count: u64) -> Result<(), DiskError> {
        for vcluster in first..first + count {
            let m = st.map(&self.img, vcluster)?;
            match m {
                Mapping::Zero => {}
                Mapping::Unallocated if self.backing.is_none() => {}
                _ => {
                    st.set_l2_entry(&self.img, vcluster, OFLAG_ZERO)?;
                    st.pending_free.extend(State::host_clusters(&self.img, m));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Qcow2Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Disk")
            .field("path", &self.img.path)
            .field("size", &self.size)
            .field("writable", &self.img.writable)
            .field("backing", &self.backing_path)
            .finish_non_exhaustive()
    }
}

impl Drop for Qcow2Disk {
    fn drop(&mut self) {
        if self.img.writable {
            let img = &self.img;
            let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
            if !st.corrupt {
                if let Err(e) = st.flush_meta(img) {
                    log::error!("cannot write back the metadata of {}: {e}", img.path.display());
                }
            }
        }
    }
}

impl Disk for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn read_only(&self) -> bool {
        !self.img.writable
    }

    fn supports_discard(&self) -> bool {
        self.img.writable && self.img.version >= 3
    }

    fn discard_granularity(&self) -> u32 {
        self.img.cluster_size() as u32
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check(offset, buf.len() as u64)?;
        let plan = {
            let mut st = self.lock();
            let mut plan = Vec::new();
            for c in chunks(self.img.cluster_bits, offset, buf.len()) {
                match st.map(&self.img, c.vcluster) {
                    Ok(m) => plan.push((c, m)),
                    Err(e) => return Err(self.fail_corrupt(&mut st, e)),
                }
            }
            plan
        };
        let cs = self.img.cluster_size();
        for (c, m) in plan {
            let out = &mut buf[c.at..c.at + c.len];
            match m {
                Mapping::Data { host, .. } => self.img.read_or_zero(host + c.within as u64, out)?,
                Mapping::Zero | Mapping::ZeroAlloc { .. } => out.fill(0),
                Mapping::Unallocated => self.read_unallocated(c.vcluster * cs + c.within as u64, out)?,
                Mapping::Compressed { host, len } => {
                    let mut data = vec![0u8; cs as usize];
                    self.read_compressed(host, len, &mut data)?;
                    out.copy_from_slice(&data[c.within..c.within + c.len]);
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        if !self.img.writable {
            return Err(DiskError::ReadOnly);
        }
        self.check(offset, buf.len() as u64)?;
        let in_place = {
            let mut st = self.lock();
            if st.corrupt {
                return Err(self.img.corrupt("an earlier error marked it corrupt".into()));
            }
            match self.write_locked(&mut st, offset, buf) {
                Ok(in_place) => in_place,
                Err(e) => return Err(self.fail_corrupt(&mut st, e)),
            }
        };
        // Clusters the image already owns are written outside the lock.
        for (host, c) in in_place {
            self.img.write(host, &buf[c.at..c.at + c.len])?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), DiskError> {
        if !self.img.writable {
            return Err(DiskError::ReadOnly);
        }
        let mut st = self.lock();
        if st.corrupt {
            return Err(self.img.corrupt("an earlier error marked it corrupt".into()));
        }
        st.flush_meta(&self.img).map_err(|e| self.fail_corrupt(&mut st, e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if !self.img.writable {
            return Err(DiskError::ReadOnly);
        }
        self.check(offset, len)?;
        if self.img.version < 3 {
            return Err(DiskError::DiscardUnsupported);
        }
        let cs = self.img.cluster_size();
        let end = offset + len;
        let first_full = offset.next_multiple_of(cs);
        let end_full = end - end % cs;
        if first_full >= end_full {
            return self.write_zeroes(offset, len);
        }
        self.write_zeroes(offset, first_full - offset)?;
        self.write_zeroes(end_full, end - end_full)?;
        let mut st = self.lock();
        if st.corrupt {
            return Err(self.img.corrupt("an earlier error marked it corrupt".into()));
        }
        self.discard_locked(&mut st, first_full / cs, (end_full - first_full) / cs)
            .map_err(|e| self.fail_corrupt(&mut st, e))
    }
}

impl Qcow2Disk {
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        if len == 0 {
            return Ok(());
        }
        // Less than a cluster.
        self.write_at(offset, &vec![0u8; len as usize])
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Where a backing file name stored in the image at `image` points:
/// relative names are relative to the image's directory.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let name = Path::new(name);
    if name.is_absolute() {
        return name.to_owned();
    }
    image.parent().map_or_else(|| name.to_owned(), |dir| dir.join(name))
}

/// Makes a new qcow2 version 3 image at `path` (which must not exist),
/// laid out as `qemu-img create -f qcow2` does: header, refcount table,
/// refcount blocks, L1 table; 16-bit refcounts, no data clusters.
pub fn create(path: &Path, options: &CreateOptions) -> Result<(), DiskError> {
    let fail = |what: String| -> DiskError { Qcow2Error::Create { path: path.to_owned(), what }.into() };
    let cb = options.cluster_bits;
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cb) {
        return Err(fail(format!("the cluster size must be 2^9 to 2^21 bytes, not 2^{cb}")));
    }
    let cs = 1u64 << cb;
    if options.size >= MAX_HOST_OFFSET {
        return Err(fail(format!("{} bytes is too large for qcow2", options.size)));
    }
    let l1_size = div_ceil(div_ceil(options.size, cs), cs / 8);
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(fail(format!("{} bytes needs too large an L1 table with {cs}-byte clusters", options.size)));
    }
    let l1_clusters = div_ceil(l1_size * 8, cs).max(1);

    // Cluster 0: header, extensions, backing file name.
    let mut head = vec![0u8; cs as usize];
    head[..4].copy_from_slice(&QCOW2_MAGIC);
    put32(&mut head, 4, 3);
    put32(&mut head, 20, cb);
    put64(&mut head, 24, options.size);
    put32(&mut head, 36, l1_size as u32);
    put32(&mut head, 96, 4);
    put32(&mut head, 100, V3_HEADER_LEN as u32);
    let mut at = V3_HEADER_LEN;
    let mut ext = |head: &mut Vec<u8>, kind: u32, data: &[u8]| -> Result<(), DiskError> {
        let padded = data.len().next_multiple_of(8);
        if at + 8 + padded > head.len() {
            return Err(fail("the backing file name does not fit in the first cluster".into()));
        }
        put32(head, at, kind);
        put32(head, at + 4, data.len() as u32);
        head[at + 8..at + 8 + data.len()].copy_from_slice(data);
        at += 8 + padded;
        Ok(())
    };
    if let Some(b) = &options.backing {
        let format = match b.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        };
        ext(&mut head, EXT_BACKING_FORMAT, format.as_bytes())?;
    }
    ext(&mut head, EXT_END, &[])?;
    if let Some(b) = &options.backing {
        let name = b.name.as_bytes();
        if name.is_empty() || name.len() > MAX_BACKING_NAME || at + name.len() > head.len() {
            return Err(fail(format!("the backing file name must be 1 to {MAX_BACKING_NAME} bytes")));
        }
        put64(&mut head, 8, at as u64);
        put32(&mut head, 16, name.len() as u32);
        head[at..at + name.len()].copy_from_slice(name);
    }

    // Metadata clusters: 1 header, `rt` table, `rb` blocks, the L1 table.
    let entries = cs * 8 / 16;
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = 1 + rt + rb + l1_clusters;
        let (new_rb, new_rt) = (div_ceil(total, entries), div_ceil(div_ceil(total, entries) * 8, cs));
        if (new_rb, new_rt) == (rb, rt) {
            break;
        }
        (rb, rt) = (new_rb, new_rt);
    }
    if rt * cs > MAX_REFTABLE_BYTES {
        return Err(fail("the refcount table would be too large".into()));
    }
    let total = 1 + rt + rb + l1_clusters;
    let l1_offset = (1 + rt + rb) * cs;
    put64(&mut head, 40, l1_offset);
    put64(&mut head, 48, cs);
    put32(&mut head, 56, rt as u32);

    let mut reftable = vec![0u8; (rt * cs) as usize];
    let mut blocks = vec![0u8; (rb * cs) as usize];
    for b in 0..rb {
        put64(&mut reftable, (b * 8) as usize, (1 + rt + b) * cs);
    }
    for c in 0..total {
        write_refcount(&mut blocks, 4, c as usize, 1);
    }

    let open_err = |source| DiskError::Open { path: path.to_owned(), source };
    let file = OpenOptions::new().write(true).create_new(true).open(path).map_err(open_err)?;
    let io = |offset: u64| {
        move |source| -> DiskError { Qcow2Error::Io { path: path.to_owned(), op: "write", offset, source }.into() }
    };
    file.write_all_at(&reftable, cs).map_err(io(cs))?;
    file.write_all_at(&blocks, (1 + rt) * cs).map_err(io((1 + rt) * cs))?;
    file.set_len(total * cs).map_err(io(0))?;
    file.write_all_at(&head, 0).map_err(io(0))?;
    file.sync_all().map_err(io(0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{RawDisk, RawDiskOptions};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("rblkback-qcow2-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn rw() -> Qcow2Options {
        Qcow2Options::default()
    }

    #[test]
    fn new_image_reads_zeroes_and_keeps_writes_across_reopen() {
        let dir = TempDir::new("rw");
        let path = dir.path("a.qcow2");
        create(&path, &CreateOptions::new(4 << 20)).unwrap();

        let disk = Qcow2Disk::open(&path, rw()).unwrap();
        let mut zeroes = vec![1u8; 8192];
        disk.read_at(65536 - 4096, &mut zeroes).unwrap();
        disk.write_at(1000, &pattern(70000, 1)).unwrap();
        disk.write_at(3 << 20, &pattern(512, 2)).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let disk = Qcow2Disk::open(&path, Qcow2Options { read_only: true, ..Default::default() }).unwrap();
        let mut a = vec![0u8; 70000];
        let mut b = vec![0u8; 512];
        disk.read_at(1000, &mut a).unwrap();
        disk.read_at(3 << 20, &mut b).unwrap();
        let mut before = vec![1u8; 1000];
        disk.read_at(0, &mut before).unwrap();

        assert!(zeroes.iter().all(|&x| x == 0));
        assert_eq!(a, pattern(70000, 1));
        assert_eq!(b, pattern(512, 2));
        assert!(before.iter().all(|&x| x == 0), "the rest of a copied-on-write cluster stays zero");
        assert_eq!((disk.size(), disk.cluster_size(), disk.version()), (4 << 20, 65536, 3));
        assert!(matches!(disk.write_at(0, b"x"), Err(DiskError::ReadOnly)));
    }

    #[test]
    fn partial_cluster_writes_copy_the_rest_from_the_backing_file() {
        let dir = TempDir::new("cow");
        let base = dir.path("base.raw");
        let base_data = pattern(1 << 20, 7);
        std::fs::write(&base, &base_data).unwrap();
        let overlay = dir.path("overlay.qcow2");
        let options = CreateOptions {
            size: 1 << 20,
            cluster_bits: 12,
            backing: Some(BackingFile { name: "base.raw".into(), format: ImageFormat::Raw }),
        };
        create(&overlay, &options).unwrap();

        let disk = Qcow2Disk::open(&overlay, rw()).unwrap();
        disk.write_at(4096 + 100, b"overlay").unwrap();
        let mut got = vec![0u8; 1 << 20];
        disk.read_at(0, &mut got).unwrap();

        let mut expected = base_data.clone();
        expected[4196..4203].copy_from_slice(b"overlay");
        assert_eq!(got, expected);
        assert_eq!(std::fs::read(&base).unwrap(), base_data, "the base is untouched");
        assert_eq!(disk.backing_path(), Some(base.as_path()));
    }

    #[test]
    fn refcount_table_grows_when_the_file_outgrows_it() {
        // 512-byte clusters: a refcount block covers 128 KiB and a table
        // cluster 64 blocks (8 MiB); 9 MiB of data needs a larger table.
        let dir = TempDir::new("grow");
        let path = dir.path("g.qcow2");
        create(&path, &CreateOptions { size: 12 << 20, cluster_bits: 9, backing: None }).unwrap();
        let data = pattern(9 << 20, 3);

        let disk = Qcow2Disk::open(&path, rw()).unwrap();
        for (i, piece) in data.chunks(1 << 20).enumerate() {
            disk.write_at((i as u64) << 20, piece).unwrap();
        }
        disk.flush().unwrap();
        drop(disk);
        let disk = Qcow2Disk::open(&path, rw()).unwrap();
        let mut got = vec![0u8; data.len()];
        disk.read_at(0, &mut got).unwrap();

        assert!(got == data, "data written across the growth reads back");
        let st = disk.lock();
        assert!(st.reftable.len() > 64, "the refcount table grew: {} entries", st.reftable.len());
    }

    #[test]
    fn discard_reads_zeroes_over_a_backing_file_and_frees_clusters() {
        let dir = TempDir::new("discard");
        let base = dir.path("base.raw");
        std::fs::write(&base, vec![0xeeu8; 256 << 10]).unwrap();
        let overlay = dir.path("o.qcow2");
        let backing = Some(BackingFile { name: base.to_string_lossy().into_owned(), format: ImageFormat::Raw });
        create(&overlay, &CreateOptions { size: 256 << 10, cluster_bits: 12, backing }).unwrap();

        let disk = Qcow2Disk::open(&overlay, rw()).unwrap();
        disk.write_at(0, &vec![0x11u8; 64 << 10]).unwrap();
        disk.flush().unwrap();
        disk.discard(1000, 20000).unwrap();
        disk.flush().unwrap();
        let mut got = vec![0u8; 64 << 10];
        disk.read_at(0, &mut got).unwrap();
        let mut tail = vec![0u8; 4096];
        disk.read_at(128 << 10, &mut tail).unwrap();
        disk.discard(128 << 10, 4096).unwrap();
        let mut discarded_base = vec![1u8; 4096];
        disk.read_at(128 << 10, &mut discarded_base).unwrap();

        assert!(got[..1000].iter().all(|&b| b == 0x11));
        assert!(got[1000..21000].iter().all(|&b| b == 0));
        assert!(got[21000..].iter().all(|&b| b == 0x11));
        assert!(tail.iter().all(|&b| b == 0xee));
        assert!(discarded_base.iter().all(|&b| b == 0), "a discarded cluster hides the backing file");
        let mut st = disk.lock();
        assert!(st.free_hint < 16, "freed clusters are reused: hint {}", st.free_hint);
        let free = (0..16).filter(|&c| st.refcount(&disk.img, c).unwrap() == 0).count();
        assert!(free >= 3, "clusters 4096..20480 of the guest were freed");
    }

    #[test]
    fn version_2_images_refuse_discard() {
        let dir = TempDir::new("v2");
        let path = dir.path("v2.qcow2");
        create(&path, &CreateOptions::new(1 << 20)).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&2u32.to_be_bytes(), 4).unwrap();
        drop(f);

        let disk = Qcow2Disk::open(&path, rw()).unwrap();

        assert!(!disk.supports_discard());
        assert!(matches!(disk.discard(0, 65536), Err(DiskError::DiscardUnsupported)));
    }

    #[test]
    fn unsupported_and_unsafe_images_are_refused() {
        let dir = TempDir::new("refuse");
        let path = dir.path("x.qcow2");
        create(&path, &CreateOptions::new(1 << 20)).unwrap();
        let set = |at: u64, bytes: &[u8]| {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.write_all_at(bytes, at).unwrap();
        };
        let open_rw = || Qcow2Disk::open(&path, rw());
        let open_ro = || Qcow2Disk::open(&path, Qcow2Options { read_only: true, ..Default::default() });

        set(72, &INCOMPAT_DIRTY.to_be_bytes());
        assert!(matches!(open_rw(), Err(DiskError::Qcow2(Qcow2Error::NotWritable { .. }))));
        assert!(open_ro().is_ok(), "a dirty image can still be read");
        set(72, &INCOMPAT_CORRUPT.to_be_bytes());
        assert!(matches!(open_rw(), Err(DiskError::Qcow2(Qcow2Error::NotWritable { .. }))));
        set(72, &INCOMPAT_EXTL2.to_be_bytes());
        assert!(matches!(open_ro(), Err(DiskError::Qcow2(Qcow2Error::Unsupported { .. }))));
        set(72, &(1u64 << 20).to_be_bytes());
        assert!(matches!(open_ro(), Err(DiskError::Qcow2(Qcow2Error::Unsupported { .. }))));
        set(72, &0u64.to_be_bytes());
        set(32, &1u32.to_be_bytes());
        assert!(matches!(open_ro(), Err(DiskError::Qcow2(Qcow2Error::Unsupported { .. }))));
        set(32, &0u32.to_be_bytes());
        set(20, &30u32.to_be_bytes());
        assert!(matches!(open_ro(), Err(DiskError::Qcow2(Qcow2Error::BadHeader { .. }))));
        set(0, b"QFI\0");
        assert!(matches!(open_ro(), Err(DiskError::Qcow2(Qcow2Error::NotQcow2(_)))));
    }

    #[test]
    fn corrupt_l2_offsets_mark_the_image_corrupt() {
        let dir = TempDir::new("corrupt");
        let path = dir.path("c.qcow2");
        create(&path, &CreateOptions { size: 1 << 20, cluster_bits: 12, backing: None }).unwrap();
        let disk = Qcow2Disk::open(&path, rw()).unwrap();
        disk.write_at(0, b"data").unwrap();
        disk.flush().unwrap();
        drop(disk);
        // Point L1 entry 0 at an unaligned offset.
        let f = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let mut h = [0u8; 48];
        f.read_exact_at(&mut h, 0).unwrap();
        f.write_all_at(&(OFLAG_COPIED | 0x1200).to_be_bytes(), be64(&h, 40)).unwrap();
        drop(f);

        let disk = Qcow2Disk::open(&path, rw()).unwrap();
        let mut buf = [0u8; 4];
        let read = disk.read_at(0, &mut buf);
        let write = disk.write_at(8192, b"more");
        drop(disk);

        assert!(matches!(read, Err(DiskError::Qcow2(Qcow2Error::Corrupt { .. }))));
        assert!(matches!(write, Err(DiskError::Qcow2(Qcow2Error::Corrupt { .. }))));
        assert!(matches!(Qcow2Disk::open(&path, rw()), Err(DiskError::Qcow2(Qcow2Error::NotWritable { .. }))));
    }

    #[test]
    fn a_qcow2_backing_chain_reads_through_every_level() {
        let dir = TempDir::new("chain");
        let base = dir.path("base.raw");
        std::fs::write(&base, pattern(1 << 20, 9)).unwrap();
        let mid = dir.path("mid.qcow2");
        let top = dir.path("top.qcow2");
        let raw_backing = Some(BackingFile { name: "base.raw".into(), format: ImageFormat::Raw });
        create(&mid, &CreateOptions { size: 1 << 20, cluster_bits: 16, backing: raw_backing }).unwrap();
        Qcow2Disk::open(&mid, rw()).unwrap().write_at(65536, &[5u8; 100]).unwrap();
        let qcow2_backing = Some(BackingFile { name: "mid.qcow2".into(), format: ImageFormat::Qcow2 });
        create(&top, &CreateOptions { size: 1 << 20, cluster_bits: 12, backing: qcow2_backing }).unwrap();

        let disk = Qcow2Disk::open(&top, rw()).unwrap();
        disk.write_at(0, &[6u8; 10]).unwrap();
        let mut got = vec![0u8; 1 << 20];
        disk.read_at(0, &mut got).unwrap();

        let mut expected = pattern(1 << 20, 9);
        expected[65536..65636].fill(5);
        expected[..10].fill(6);
        assert!(got == expected);
        let raw = RawDisk::open(&base, RawDiskOptions { read_only: true, ..Default::default() }).unwrap();
        let mut base_now = vec![0u8; 1 << 20];
        raw.read_at(0, &mut base_now).unwrap();
        assert!(base_now == pattern(1 << 20, 9));
    }

    #[test]
    fn chunks_split_requests_at_cluster_boundaries() {
        let got: Vec<(u64, usize, usize, usize)> =
            chunks(12, 4000, 5000).map(|c| (c.vcluster, c.within, c.at, c.len)).collect();
        assert_eq!(got, vec![(0, 4000, 0, 96), (1, 0, 96, 4096), (2, 0, 4192, 808)]);
    }

    #[test]
    fn refcounts_of_every_width_round_trip() {
        for order in 3..=6 {
            let mut block = vec![0u8; 512];
            write_refcount(&mut block, order, 3, 1);
            write_refcount(&mut block, order, 4, 0xff);
            assert_eq!((read_refcount(&block, order, 3), read_refcount(&block, order, 4)), (1, 0xff));
            assert_eq!(read_refcount(&block, order, 2), 0);
        }
    }
}
