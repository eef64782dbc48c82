//! A shared mapping of a raw image file, for reads (and, on tmpfs,
//! writes) with no system call: a request's data is copied from the
//! file's page cache, through the mapping, straight into the frontend's
//! granted pages, or the other way.
//!
//! A `preadv` costs a system call per request; in a PV dom0 each system
//! call enters Xen on the way in and on the way out. The copy itself is
//! the same one the kernel would make.
//!
//! The one danger of a file mapping is `SIGBUS`: touching a page beyond
//! the file's end (another program truncated the image), or a page the
//! file system cannot supply (an I/O error, a full tmpfs), kills the
//! process. A handler for `SIGBUS` ([`install_handler`]) recognises faults
//! inside a registered mapping, marks that mapping broken, and puts a
//! zero-filled anonymous page over the page that faulted (so that the copy
//! completes). A copy that ends after the mapping broke, in any thread,
//! reports it ([`FileMap::read_into`] returns `Ok(false)`), and the caller
//! serves that read and every later one with `preadv`, which reports such
//! conditions as errors or short reads. Faults elsewhere go to the handler that was
//! there before (Rust's stack overflow handler), or kill the process as
//! they would have.
//!
//! On tmpfs, a read fault on a hole allocates a zeroed page for it (a
//! `preadv` of a hole does not: it copies from the shared zero page), so
//! a guest reading its sparse disk would fill dom0's memory and slow each
//! first read with an allocation. There the mapping tracks which pages of
//! the file exist ([`FileMap::new`] with `track_holes`): those present
//! when it was made (`mincore`), and those written since
//! ([`FileMap::mark_present`]); [`FileMap::is_present`] says whether a
//! range can be read from the mapping, and other reads go to `preadv`.
//!
//! Every `unsafe` of this module is a system call (`mmap`, `munmap`,
//! `mincore`, `sigaction`) or the signal handler's access to the fault's
//! `siginfo`.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};

/// Most mappings registered at once (one process serves one device: its
/// image, and the read-only files of a backing chain).
const SLOTS: usize = 16;

/// Whether each slot is claimed by a [`FileMap`].
static TAKEN: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
/// Start address of each registered mapping (0: none yet, or unmapped).
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Length of each registered mapping; written before its start.
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
/// Whether each registered mapping saw a fault (set before the zero page
/// goes in, so that any copy that could read it sees the flag after).
static BROKEN: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
/// The `SIGBUS` action before ours, for faults that are not ours.
static PREVIOUS: OnceLock<Previous> = OnceLock::new();

/// A copy of the previous `sigaction` (it holds a function pointer and a
/// signal mask only).
struct Previous(libc::sigaction);

// SAFETY: `sigaction` is plain data (a handler address, a mask, flags),
// read only, from any thread.
unsafe impl Sync for Previous {}
// SAFETY: as above.
unsafe impl Send for Previous {}

/// The system's page size (the handler replaces a page at a time).
fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// The registered mapping `addr` lies in.
fn slot_of(addr: usize) -> Option<usize> {
    (0..SLOTS).find(|&i| {
        let start = STARTS[i].load(Ordering::Acquire);
        start != 0 && addr >= start && addr - start < LENS[i].load(Ordering::Acquire)
    })
}

/// The `SIGBUS` handler. Only async-signal-safe work: atomics, `mmap`,
/// `sigaction`, and the previous handler.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // si_addr is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(slot) = slot_of(addr) {
        BROKEN[slot].store(true, Ordering::SeqCst);
        let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
        // SAFETY: MAP_FIXED over one page of a mapping this module made
        // and still owns (registered): it replaces the file's page with a
        // zero-filled anonymous one, no other memory is affected. The
        // faulting copy then completes (reading zeroes, or writing to a
        // page that is not the file's); `read_into` or `write_from` sees
        // the mapping broken and the caller does the copy again another
        // way.
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                PAGE_SIZE.load(Ordering::Relaxed),
                // Writable too: the faulting access may be a write.
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            return;
        }
    }
    // Not ours (or the page could not be replaced): what would have
    // happened without this handler.
    match PREVIOUS.get() {
        Some(Previous(old)) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
            if old.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed as an
                // SA_SIGINFO handler, so it has this signature; we pass it
                // the arguments the kernel gave us.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(old.sa_sigaction) };
                handler(signal, info, context);
            } else {
                // SAFETY: as above, for a plain handler.
                let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(old.sa_sigaction) };
                handler(signal);
            }
        }
        _ => {
            // Default action: returning re-runs the faulting access, which
            // then kills the process as SIGBUS does.
            // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
            let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
            default.sa_sigaction = libc::SIG_DFL;
            // SAFETY: `default` is a valid sigaction; no old action asked.
            unsafe { libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut()) };
        }
    }
}

/// Installs the `SIGBUS` handler, once per process.
fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        PAGE_SIZE.store(page_size(), Ordering::Relaxed);
        // SAFETY: zeroed sigaction is a valid value to be overwritten.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: query only: `old` is a live local the kernel fills.
        if unsafe { libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
        }
        let _ = PREVIOUS.set(Previous(old));
        // SAFETY: as above.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: `action` is a valid sigaction naming a handler of the
        // SA_SIGINFO signature that only does async-signal-safe work.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// A shared mapping of the first `len` bytes of a file (read-only, or
/// read-write for writes through it).
#[derive(Debug)]
pub(crate) struct FileMap {
    base: NonNull<u8>,
    len: usize,
    /// Our entry in `STARTS`, `LENS` and `BROKEN`.
    slot: usize,
    /// Mapped for writing too.
    writable: bool,
    /// One bit per page of the file known to exist (not a hole), when
    /// holes are tracked (tmpfs).
    present: Option<Box<[AtomicU64]>>,
}

// SAFETY: the mapping is only accessed through `SharedMemory` (volatile
// copies), from any thread; it lives until drop.
unsafe impl Send for FileMap {}
// SAFETY: as above.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Maps the first `len` bytes of `file` (open for reading, and for
    /// writing if `writable`). `None` when there is nothing to map or
    /// every slot is taken. With `track_holes`, only pages known to exist
    /// are read from the mapping (see the module documentation).
    pub(crate) fn new(file: &File, len: u64, writable: bool, track_holes: bool) -> io::Result<Option<Self>> {
        let Ok(len) = usize::try_from(len) else { return Ok(None) };
        if len == 0 {
            return Ok(None);
        }
        install_handler()?;
        // SAFETY: a new mapping chosen by the kernel (no MAP_FIXED), of an
        // open file; it touches no existing memory.
        let addr = unsafe {
            let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
            libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let Some(base) = NonNull::new(addr.cast::<u8>()) else { return Ok(None) };
        let free = (0..SLOTS)
            .find(|&i| TAKEN[i].compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok());
        if let Some(i) = free {
            LENS[i].store(len, Ordering::Release);
            BROKEN[i].store(false, Ordering::SeqCst);
            STARTS[i].store(addr as usize, Ordering::Release);
        }
        let Some(slot) = free else {
            // SAFETY: unmaps the mapping made above, which nothing uses.
            unsafe { libc::munmap(addr, len) };
            return Ok(None);
        };
        let mut map = FileMap { base, len, slot, writable, present: None };
        if track_holes {
            map.present = Some(map.resident_pages()?);
        }
        Ok(Some(map))
    }

    /// A bitmap of the pages of the mapping that are in the page cache
    /// now (`mincore`, which allocates nothing).
    fn resident_pages(&self) -> io::Result<Box<[AtomicU64]>> {
        const CHUNK: usize = 1 << 30;
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        let pages = self.len.div_ceil(page);
        let bits: Box<[AtomicU64]> = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let mut vec = vec![0u8; CHUNK.min(self.len).div_ceil(page)];
        let mut at = 0;
        while at < self.len {
            let len = CHUNK.min(self.len - at);
            let vec = &mut vec[..len.div_ceil(page)];
            // SAFETY: `base + at .. + len` lies in our mapping (page
            // aligned: `at` is a multiple of CHUNK); `vec` has a byte for
            // each of its pages, as mincore writes.
            let rc = unsafe { libc::mincore(self.base.as_ptr().add(at).cast(), len, vec.as_mut_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            for (i, &flags) in vec.iter().enumerate() {
                if flags & 1 != 0 {
                    let p = at / page + i;
                    bits[p / 64].fetch_or(1 << (p % 64), Ordering::Relaxed);
                }
            }
            at += len;
        }
        Ok(bits)
    }

    /// The pages `offset..offset + len` touch (`len > 0`), as page
    /// indices, clamped to the mapping.
    fn pages(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let page = PAGE_SIZE.load(Ordering::Relaxed) as u64;
        let end = offset.saturating_add(len).min(self.len as u64);
        // Both below `len: usize`.
        (offset.min(end) / page) as usize..end.div_ceil(page) as usize
    }

    /// Whether `offset..offset + len` can be read from the mapping: holes
    /// are not tracked, or every page it touches is known to exist.
    pub(crate) fn is_present(&self, offset: u64, len: u64) -> bool {
        let Some(bits) = &self.present else { return true };
        self.pages(offset, len)
            .all(|p| bits.get(p / 64).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (p % 64)) != 0))
    }

    /// Records that `offset..offset + len` was written: its pages exist.
    pub(crate) fn mark_present(&self, offset: u64, len: u64) {
        let Some(bits) = &self.present else { return };
        for p in self.pages(offset, len) {
            if let Some(w) = bits.get(p / 64) {
                w.fetch_or(1 << (p % 64), Ordering::Relaxed);
            }
        }
    }

    /// Records that `offset..offset + len` is about to become a hole (a
    /// discard): the pages it covers whole are read with `preadv` from now
    /// on (pages it covers in part keep their data and stay).
    pub(crate) fn mark_hole(&self, offset: u64, len: u64) {
        let Some(bits) = &self.present else { return };
        let page = PAGE_SIZE.load(Ordering::Relaxed) as u64;
        let first = offset.div_ceil(page);
        let end = offset.saturating_add(len) / page;
        for p in first..end {
            let Ok(p) = usize::try_from(p) else { break };
            if let Some(w) = bits.get(p / 64) {
                w.fetch_and(!(1 << (p % 64)), Ordering::Relaxed);
            }
        }
    }

    /// Whether a fault was seen: the mapping may hold zero pages in place
    /// of the file's, and reads must go elsewhere.
    pub(crate) fn is_broken(&self) -> bool {
        BROKEN[self.slot].load(Ordering::SeqCst)
    }

    /// Copies the file's bytes from `offset` into `buf`; as
    /// [`read_into`](Self::read_into).
    pub(crate) fn read_to_slice(&self, offset: u64, buf: &mut [u8]) -> Result<bool, SharedMemoryError> {
        if self.is_broken() {
            return Ok(false);
        }
        self.file().read(self.at(offset, buf.len())?, buf)?;
        // As in read_into.
        Ok(!self.is_broken())
    }

    /// The mapping, as shared memory: the file may change under us.
    fn file(&self) -> SharedMemory<'_> {
        // SAFETY: base..base+len is our mapping, readable (and writable if
        // `writable`) until drop, and only ever accessed through this
        // accessor's volatile copies.
        unsafe { SharedMemory::new(self.base, self.len, self.writable) }
    }

    /// Whether the mapping takes writes.
    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// Copies `buf` into the file at `offset`; as
    /// [`write_from`](Self::write_from).
    pub(crate) fn write_from_slice(&self, offset: u64, buf: &[u8]) -> Result<bool, SharedMemoryError> {
        if self.is_broken() {
            return Ok(false);
        }
        self.file().write(self.at(offset, buf.len())?, buf)?;
        Ok(!self.is_broken())
    }

    /// Copies `regions`, in order, into the file from `offset`.
    /// `Ok(true)`: done, as a `pwritev` would have (the data is in the page
    /// cache, dirty); `Ok(false)`: the mapping is broken (a fault, now or
    /// before; some of the data may have gone to replaced pages, not the
    /// file): write again another way. Refused if the mapping is not
    /// writable.
    pub(crate) fn write_from(&self, offset: u64, regions: &[SharedMemory<'_>]) -> Result<bool, SharedMemoryError> {
        if self.is_broken() {
            return Ok(false);
        }
        let file = self.file();
        let mut at = self.at(offset, 0)?;
        for region in regions {
            file.copy_from(at, region, 0, region.len())?;
            at += region.len();
        }
        // As in read_into.
        Ok(!self.is_broken())
    }

    /// `offset` as an offset into the mapping.
    fn at(&self, offset: u64, len: usize) -> Result<usize, SharedMemoryError> {
        usize::try_from(offset).map_err(|_| SharedMemoryError::OutOfBounds { offset: usize::MAX, len, size: self.len })
    }

    /// Copies the file's bytes from `offset` into `regions`, in order.
    /// `Ok(true)`: done; `Ok(false)`: the mapping is broken (a fault,
    /// now or before; the regions may hold zeroes in place of data): read
    /// again another way. The range must lie inside the mapping (the
    /// caller checked it against the disk's size).
    pub(crate) fn read_into(&self, offset: u64, regions: &[SharedMemory<'_>]) -> Result<bool, SharedMemoryError> {
        if self.is_broken() {
            return Ok(false);
        }
        let file = self.file();
        let mut at = self.at(offset, 0)?;
        for region in regions {
            region.copy_from(0, &file, at, region.len())?;
            at += region.len();
        }
        // The handler marks the mapping broken before it replaces a page
        // (in this thread: SIGBUS is synchronous; or in another), so a
        // copy that read a replaced page sees the mark here.
        Ok(!self.is_broken())
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        STARTS[self.slot].store(0, Ordering::Release);
        // SAFETY: our own mapping, of `len` bytes; `&mut self` means no
        // copy from it is running.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        TAKEN[self.slot].store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn region(buf: &mut [u64]) -> SharedMemory<'_> {
        // SAFETY: `buf` outlives the accessor and is not touched through
        // references meanwhile.
        unsafe { SharedMemory::new(NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap(), buf.len() * 8, true) }
    }

    fn read(map: &FileMap, offset: u64, len: usize) -> (bool, Vec<u8>) {
        let mut buf = vec![0u64; len.div_ceil(8)];
        let ok = map.read_into(offset, &[region(&mut buf).subregion(0, len).unwrap()]).unwrap();
        (ok, buf.iter().flat_map(|w| w.to_ne_bytes()).take(len).collect())
    }

    #[test]
    fn reads_the_file_and_sees_later_writes() {
        let mut file = tempfile();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 31 + 7) as u8).collect();
        file.write_all(&data).unwrap();
        let map = FileMap::new(&file, data.len() as u64, false, false).unwrap().unwrap();
        assert_eq!(read(&map, 100, 5000), (true, data[100..5100].to_vec()));
        std::os::unix::fs::FileExt::write_all_at(&file, b"changed", 4090).unwrap();
        let (ok, bytes) = read(&map, 4090, 7);
        assert!(ok);
        assert_eq!(bytes, b"changed");
        let mut buf = [0u8; 9];
        assert!(map.read_to_slice(4089, &mut buf).unwrap());
        assert_eq!(&buf, &[data[4089], b'c', b'h', b'a', b'n', b'g', b'e', b'd', data[4097]]);
        let mut buf = vec![0u64; 8];
        assert!(map.read_into(3 * 4096 - 8, &[region(&mut buf)]).is_err(), "past the mapping");
        assert!(!map.is_broken());
    }

    #[test]
    fn truncation_is_a_fault_not_a_crash() {
        let mut file = tempfile();
        file.write_all(&vec![0xa5u8; 4 * 4096]).unwrap();
        let map = FileMap::new(&file, 4 * 4096, false, false).unwrap().unwrap();
        assert_eq!(read(&map, 8192, 16), (true, vec![0xa5; 16]));
        file.set_len(4096).unwrap();
        // The second page is now past the end of the file: SIGBUS, which
        // the handler turns into a reported fault.
        let (ok, _) = read(&map, 4096, 4096);
        assert!(!ok);
        assert!(map.is_broken());
        // From now on every read is refused, even of pages still there.
        assert!(!read(&map, 0, 16).0);
        // Another fault in the same mapping is handled too.
        let map = std::mem::ManuallyDrop::new(map);
        let again = FileMap::new(&file, 4 * 4096, false, false).unwrap().unwrap();
        assert!(read(&again, 0, 16).0, "a new mapping of the same file is not broken");
        assert!(!read(&again, 3 * 4096, 8).0);
        drop(std::mem::ManuallyDrop::into_inner(map));
    }

    #[test]
    fn mappings_are_released() {
        let mut file = tempfile();
        file.write_all(&[1u8; 4096]).unwrap();
        // More than the slots, one after the other: each drop frees its slot.
        for _ in 0..3 * SLOTS {
            let map = FileMap::new(&file, 4096, false, false).unwrap().unwrap();
            assert_eq!(read(&map, 0, 4), (true, vec![1; 4]));
        }
        assert!(FileMap::new(&file, 0, false, false).unwrap().is_none());
    }

    #[test]
    fn writes_reach_the_file_and_a_fault_is_reported() {
        let file = tempfile();
        file.set_len(4 * 4096).unwrap();
        let map = FileMap::new(&file, 4 * 4096, true, false).unwrap().unwrap();
        assert!(map.is_writable());
        assert!(map.write_from_slice(4090, b"through the map").unwrap());
        let mut page = vec![0u64; 512];
        region(&mut page).write(0, &[0x5a; 4096]).unwrap();
        assert!(map.write_from(2 * 4096, &[region(&mut page).subregion(0, 1000).unwrap()]).unwrap());
        let mut out = [0u8; 15];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut out, 4090).unwrap();
        assert_eq!(&out, b"through the map");
        let mut out = vec![0u8; 1001];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut out, 2 * 4096).unwrap();
        assert!(out[..1000].iter().all(|&b| b == 0x5a) && out[1000] == 0);
        // Past the mapping: refused, nothing written.
        assert!(map.write_from_slice(4 * 4096 - 2, b"abc").is_err());
        // A read-only mapping refuses writes.
        let read_only = FileMap::new(&file, 4 * 4096, false, false).unwrap().unwrap();
        assert!(read_only.write_from_slice(0, b"x").is_err());
        // Truncated under us: the write faults, is reported, no crash.
        file.set_len(4096).unwrap();
        assert!(!map.write_from_slice(3 * 4096, b"lost").unwrap());
        assert!(map.is_broken());
        assert_eq!(file.metadata().unwrap().len(), 4096, "nothing reached the file");
    }

    #[test]
    fn tracked_holes_are_not_read_through_the_mapping() {
        let file = tempfile();
        file.set_len(8 * 4096).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[9u8; 4096], 2 * 4096).unwrap();
        let map = FileMap::new(&file, 8 * 4096, false, true).unwrap().unwrap();
        assert!(map.is_present(2 * 4096 + 10, 100), "a page written before the mapping was made");
        assert!(!map.is_present(0, 4096), "a hole");
        assert!(!map.is_present(2 * 4096, 4097), "a range that reaches into a hole");
        map.mark_present(5 * 4096 + 100, 10);
        assert!(map.is_present(5 * 4096, 4096));
        assert!(!map.is_present(5 * 4096, 4096 + 1));
        // A discard forgets the pages it covers whole, and only those.
        map.mark_hole(2 * 4096 + 1, 4096);
        assert!(map.is_present(2 * 4096, 4096));
        map.mark_hole(5 * 4096 - 1, 4096 + 2);
        assert!(!map.is_present(5 * 4096, 1));
        // Without tracking every range is read through the mapping.
        let untracked = FileMap::new(&file, 8 * 4096, false, false).unwrap().unwrap();
        assert!(untracked.is_present(0, 8 * 4096));
    }

    /// A SIGBUS outside our mappings still kills the process, as it would
    /// without the handler (run in a child: this test binary again).
    #[test]
    fn other_faults_still_kill() {
        if std::env::var_os("RBLKBACK_FILEMAP_CHILD").is_some() {
            let mut file = tempfile();
            file.write_all(&[1u8; 8192]).unwrap();
            let _ours = FileMap::new(&file, 8192, false, false).unwrap().unwrap();
            // A mapping of our own, not registered, beyond the file's end.
            // SAFETY: a new mapping of an open file, chosen by the kernel.
            let addr = unsafe { libc::mmap(std::ptr::null_mut(), 8192, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
            assert_ne!(addr, libc::MAP_FAILED);
            file.set_len(0).unwrap();
            // SAFETY: the page is mapped; reading it raises SIGBUS, which
            // is what this child is for.
            let byte = unsafe { addr.cast::<u8>().read_volatile() };
            println!("survived, read {byte}");
            std::process::exit(0);
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "filemap::tests::other_faults_still_kill", "--nocapture", "--test-threads=1"])
            .env("RBLKBACK_FILEMAP_CHILD", "1")
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGBUS), "{out:?}");
    }

    fn tempfile() -> File {
        let dir = std::env::temp_dir();
        for i in 0.. {
            let path = dir.join(format!("rblkback-filemap-{}-{i}", std::process::id()));
            if let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                let _ = std::fs::remove_file(&path);
                return file;
            }
        }
        unreachable!()
    }
}
