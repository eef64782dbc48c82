//! The frontend's data pages, mapped by grant reference.
//!
//! Without persistent grants every request maps all its pages in one batch
//! and unmaps them before it is answered (blkfront checks, on each
//! response, that the backend no longer maps them). With
//! `feature-persistent` negotiated, pages stay mapped across requests in a
//! cache keyed by grant reference, bounded like Linux blkback's
//! (`max_persistent_grants`, 1056 per ring by default): when it is full the
//! least recently used page not needed by the current request is unmapped
//! to make room, and if every cached page is in use the rest of the request
//! is mapped for that request only.
//!
//! All access to the pages goes through [`SharedMemory`], never through
//! references: the frontend may change them at any time.

use std::collections::HashMap;
use std::sync::Arc;

use hypercall_abi::platform::{GrantError, GrantMap, MappedGrants, SharedMemory, SharedMemoryError};
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

/// Linux blkback's default `max_persistent_grants`.
pub const DEFAULT_MAX_PERSISTENT_GRANTS: usize = 1056;

/// Most references mapped by one [`GrantMap::map`] call: a request's pages
/// are mapped in batches of at most this many. (The loopback platform
/// passes a descriptor per page in one message, and Linux caps those at
/// 253.)
pub const MAX_BATCH: usize = 128;

/// Why a page of a request could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Mapping the grants failed.
    #[error("mapping the request's grants failed: {0}")]
    Map(#[from] GrantError),
    /// An access to a mapped page failed (out of the page, or a write to a
    /// page mapped read-only).
    #[error("accessing a granted page failed: {0}")]
    Access(#[from] SharedMemoryError),
    /// The page index is not one of the request's.
    #[error("page {0} is not part of the request")]
    NoSuchPage(usize),
}

struct CacheEntry<M> {
    mapping: M,
    last_used: u64,
}

/// The persistent grants of one ring.
struct PersistentCache<M> {
    /// Keyed by the guest's references: the hasher is seeded at random
    /// per cache (and the cache is bounded), so a guest cannot aim for
    /// collisions.
    entries: HashMap<GrantRef, CacheEntry<M>, foldhash::fast::RandomState>,
    max: usize,
    /// Incremented per request; an entry with `last_used == clock` is in
    /// use by the current request.
    clock: u64,
}

/// Where one page of a request is mapped.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// In the persistent cache, under this reference.
    Cached(GrantRef),
    /// At this page index of the request's own mapping.
    Batch(usize),
}

/// The pages of one request, in request order. Dropping it unmaps the
/// pages that were mapped for this request only.
pub struct RequestPages<M> {
    /// Mappings of [`MAX_BATCH`] pages each (the last one fewer).
    batches: Vec<M>,
    slots: Vec<Slot>,
}

impl<M> std::fmt::Debug for RequestPages<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestPages").field("slots", &self.slots).field("batches", &self.batches.len()).finish()
    }
}

impl<M> RequestPages<M> {
    /// Number of pages.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the request has no page.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Maps the frontend's pages for the requests of one ring.
pub struct GrantPages<G: GrantMap> {
    map: Arc<G>,
    domid: DomId,
    cache: Option<PersistentCache<G::Mapped>>,
    /// Between [`GrantPages::begin_batch`] and [`GrantPages::end_batch`]:
    /// every request mapped counts as the current one, so that no page of
    /// the batch is evicted while the batch's I/O may still use it.
    in_batch: bool,
}

impl<G: GrantMap> std::fmt::Debug for GrantPages<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantPages")
            .field("domid", &self.domid)
            .field("persistent", &self.cache.as_ref().map(|c| (c.entries.len(), c.max)))
            .finish()
    }
}

impl<G: GrantMap> GrantPages<G> {
    /// Pages of domain `domid`, kept mapped across requests (up to
    /// `persistent` of them) when `persistent` is `Some`.
    pub fn new(map: Arc<G>, domid: DomId, persistent: Option<usize>) -> Self {
        let cache = persistent.map(|max| PersistentCache { entries: HashMap::default(), max, clock: 0 });
        GrantPages { map, domid, cache, in_batch: false }
    }

    /// Whether pages persist across requests.
    pub fn is_persistent(&self) -> bool {
        self.cache.is_some()
    }

    /// Pages currently held in the persistent cache.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.entries.len())
    }

    /// Maps `refs` for one request. `writable` is whether the backend
    /// writes the pages (reads from the disk); persistent pages are always
    /// mapped writable, as blkback does, since they serve reads later, but
    /// a page granted read-only still serves a request that only reads it.
    pub fn map_request(&mut self, refs: &[GrantRef], writable: bool) -> Result<RequestPages<G::Mapped>, PageError> {
        let mut slots = Vec::with_capacity(refs.len());
        let mut uncached = Vec::new();
        match &mut self.cache {
            None => {
                slots.extend((0..refs.len()).map(Slot::Batch));
                uncached.extend_from_slice(refs);
            }
            Some(cache) => {
                if !self.in_batch {
                    cache.clock += 1;
                }
                let now = cache.clock;
                for &gref in refs {
                    if let Some(entry) = cache.entries.get_mut(&gref) {
                        entry.last_used = now;
                        slots.push(Slot::Cached(gref));
                        continue;
                    }
                    if cache.entries.len() >= cache.max && !cache.evict_one(now) {
                        slots.push(Slot::Batch(uncached.len()));
                        uncached.push(gref);
                        continue;
                    }
                    match self.map.map(self.domid, &[gref], true) {
                        Ok(mapping) => {
                            cache.entries.insert(gref, CacheEntry { mapping, last_used: now });
                            slots.push(Slot::Cached(gref));
                        }
                        // A page granted read-only cannot persist (reads
                        // would need it writable), but it can serve this
                        // request if the request only reads it.
                        Err(GrantError::ReadOnly { .. }) if !writable => {
                            slots.push(Slot::Batch(uncached.len()));
                            uncached.push(gref);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let batches = uncached
            .chunks(MAX_BATCH)
            .map(|refs| self.map.map(self.domid, refs, writable))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RequestPages { batches, slots })
    }

    /// Starts a batch: until [`end_batch`](GrantPages::end_batch), the
    /// persistent pages of every request mapped stay in the cache (an
    /// eviction picks only pages not used since the batch began; a request
    /// that finds none to evict maps its pages for itself). The requests'
    /// I/O may then run together, after all of them are mapped.
    pub fn begin_batch(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clock += 1;
        }
        self.in_batch = true;
    }

    /// Ends a batch: its I/O is complete.
    pub fn end_batch(&mut self) {
        self.in_batch = false;
    }

    /// Copies `buf.len()` bytes at `offset` of page `index` of a request.
    pub fn read(
        &self,
        pages: &RequestPages<G::Mapped>,
        index: usize,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), PageError> {
        check_in_page(offset, buf.len())?;
        match pages.slots.get(index) {
            Some(Slot::Cached(gref)) => self.cached_page(*gref)?.memory().read(offset, buf)?,
            Some(Slot::Batch(i)) => batch(pages, *i)?.memory().read((i % MAX_BATCH) * PAGE_SIZE + offset, buf)?,
            None => return Err(PageError::NoSuchPage(index)),
        }
        Ok(())
    }

    /// Copies `data` to `offset` of page `index` of a request.
    pub fn write(
        &self,
        pages: &RequestPages<G::Mapped>,
        index: usize,
        offset: usize,
        data: &[u8],
    ) -> Result<(), PageError> {
        check_in_page(offset, data.len())?;
        match pages.slots.get(index) {
            Some(Slot::Cached(gref)) => self.cached_page(*gref)?.memory().write(offset, data)?,
            Some(Slot::Batch(i)) => batch(pages, *i)?.memory().write((i % MAX_BATCH) * PAGE_SIZE + offset, data)?,
            None => return Err(PageError::NoSuchPage(index)),
        }
        Ok(())
    }

    /// The `len` bytes at `offset` of page `index` of a request, as a
    /// region to hand to the disk (and from there to the kernel).
    /// `writable`: the backend will write them, so the page must be mapped
    /// writable. `offset` is a multiple of 8 (segments start on sectors).
    pub fn region<'p>(
        &'p self,
        pages: &'p RequestPages<G::Mapped>,
        index: usize,
        offset: usize,
        len: usize,
        writable: bool,
    ) -> Result<SharedMemory<'p>, PageError> {
        check_in_page(offset, len)?;
        let region = match pages.slots.get(index) {
            Some(Slot::Cached(gref)) => self.cached_page(*gref)?.memory().subregion(offset, len)?,
            Some(Slot::Batch(i)) => batch(pages, *i)?.memory().subregion((i % MAX_BATCH) * PAGE_SIZE + offset, len)?,
            None => return Err(PageError::NoSuchPage(index)),
        };
        if writable && !region.is_writable() {
            return Err(PageError::Access(SharedMemoryError::ReadOnly));
        }
        Ok(region)
    }

    fn cached_page(&self, gref: GrantRef) -> Result<&G::Mapped, PageError> {
        self.cache
            .as_ref()
            .and_then(|c| c.entries.get(&gref))
            .map(|e| &e.mapping)
            .ok_or(PageError::NoSuchPage(gref as usize))
    }
}

/// The mapping holding uncached page `index` of a request.
fn batch<M>(pages: &RequestPages<M>, index: usize) -> Result<&M, PageError> {
    pages.batches.get(index / MAX_BATCH).ok_or(PageError::NoSuchPage(index))
}

fn check_in_page(offset: usize, len: usize) -> Result<(), PageError> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(()),
        _ => Err(PageError::Access(SharedMemoryError::OutOfBounds { offset, len, size: PAGE_SIZE })),
    }
}

impl<M> PersistentCache<M> {
    /// Unmaps the least recently used entry not in use by the current
    /// request; false if every entry is in use.
    fn evict_one(&mut self, now: u64) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.last_used != now)
            .min_by_key(|(_, e)| e.last_used)
            .map(|(gref, _)| *gref);
        match victim {
            Some(gref) => {
                self.entries.remove(&gref);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memgrant::MemGrantTable;

    #[test]
    fn per_request_pages_are_unmapped_with_the_request() {
        let table = Arc::new(MemGrantTable::new(1));
        let refs = [table.grant(true), table.grant(true)];
        table.write_page(refs[1], 100, b"guest data");
        let mut pages = GrantPages::new(Arc::clone(&table), 1, None);

        let request = pages.map_request(&refs, true).unwrap();
        let mut buf = [0u8; 10];
        pages.read(&request, 1, 100, &mut buf).unwrap();
        pages.write(&request, 0, 4000, b"disk data").unwrap();
        drop(request);
        let mut back = [0u8; 9];
        table.read_page(refs[0], 4000, &mut back);

        assert_eq!(&buf, b"guest data");
        assert_eq!(&back, b"disk data");
        assert_eq!(pages.cached(), 0);
    }

    #[test]
    fn regions_reach_the_same_bytes_as_reads_and_writes() {
        let table = Arc::new(MemGrantTable::new(1));
        let refs = [table.grant(true), table.grant(false)];
        table.write_page(refs[1], 1024, b"from the guest");
        for persistent in [None, Some(8)] {
            let mut pages = GrantPages::new(Arc::clone(&table), 1, persistent);

            let read = pages.map_request(&refs[..1], true).unwrap();
            pages.region(&read, 0, 512, 1024, true).unwrap().write(0, b"to the guest").unwrap();
            let past_the_page = pages.region(&read, 0, 3584, 1024, false).is_err();
            drop(read);
            let write = pages.map_request(&refs[1..], false).unwrap();
            let mut from = [0u8; 14];
            pages.region(&write, 0, 1024, 512, false).unwrap().read(0, &mut from).unwrap();
            let read_only = matches!(
                pages.region(&write, 0, 0, 512, true),
                Err(PageError::Access(SharedMemoryError::ReadOnly))
            );
            drop(write);
            let mut to = [0u8; 12];
            table.read_page(refs[0], 512, &mut to);

            assert_eq!((&from, &to), (b"from the guest", b"to the guest"));
            assert!(read_only, "a read-only page is no region to read into");
            assert!(past_the_page);
        }
    }

    #[test]
    fn large_requests_are_mapped_in_batches() {
        let table = Arc::new(MemGrantTable::new(1));
        let refs: Vec<_> = (0..MAX_BATCH * 2 + 3).map(|_| table.grant(true)).collect();
        let mut pages = GrantPages::new(Arc::clone(&table), 1, None);

        let request = pages.map_request(&refs, true).unwrap();
        for i in 0..refs.len() {
            pages.write(&request, i, 16, &(i as u32).to_le_bytes()).unwrap();
        }
        drop(request);

        for (i, &gref) in refs.iter().enumerate() {
            let mut b = [0u8; 4];
            table.read_page(gref, 16, &mut b);
            assert_eq!(u32::from_le_bytes(b), i as u32);
        }
    }

    #[test]
    fn writes_map_read_only_without_persistence() {
        let table = Arc::new(MemGrantTable::new(1));
        let ro = table.grant(false);
        let mut pages = GrantPages::new(Arc::clone(&table), 1, None);

        let request = pages.map_request(&[ro], false).unwrap();

        assert!(pages.read(&request, 0, 0, &mut [0u8; 8]).is_ok());
        assert!(matches!(pages.write(&request, 0, 0, b"x"), Err(PageError::Access(SharedMemoryError::ReadOnly))));
        assert!(matches!(pages.map_request(&[ro], true), Err(PageError::Map(GrantError::ReadOnly { .. }))));
        assert!(pages.read(&request, 1, 0, &mut [0u8; 8]).is_err(), "no such page");
        assert!(pages.read(&request, 0, 4090, &mut [0u8; 8]).is_err(), "past the page");
    }

    #[test]
    fn persistent_pages_are_reused_and_bounded() {
        let table = Arc::new(MemGrantTable::new(1));
        let refs: Vec<_> = (0..6).map(|_| table.grant(true)).collect();
        let mut pages = GrantPages::new(Arc::clone(&table), 1, Some(4));

        let first = pages.map_request(&refs[..3], false).unwrap();
        drop(first);
        table.write_page(refs[0], 0, b"new");
        let again = pages.map_request(&refs[..1], false).unwrap();
        let mut buf = [0u8; 3];
        pages.read(&again, 0, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"new", "the cached mapping shows the frontend's page");
        assert_eq!(pages.cached(), 3);

        // Three new refs on a cache of four: two older entries make room.
        let more = pages.map_request(&refs[3..6], true).unwrap();
        assert_eq!(pages.cached(), 4);
        pages.write(&more, 2, 0, b"end").unwrap();
        table.read_page(refs[5], 0, &mut buf);
        assert_eq!(&buf, b"end");

        // Six refs at once on a cache of four: two are mapped for the
        // request only, and everything still works.
        let all = pages.map_request(&refs, true).unwrap();
        for i in 0..refs.len() {
            pages.write(&all, i, 8, &[i as u8]).unwrap();
        }
        drop(all);
        for (i, gref) in refs.iter().enumerate() {
            let mut b = [0u8];
            table.read_page(*gref, 8, &mut b);
            assert_eq!(b, [i as u8]);
        }
        assert_eq!(pages.cached(), 4);
    }

    #[test]
    fn read_only_pages_serve_reads_of_them_without_persisting() {
        let table = Arc::new(MemGrantTable::new(1));
        let ro = table.grant(false);
        table.write_page(ro, 0, b"segments");
        let mut pages = GrantPages::new(Arc::clone(&table), 1, Some(8));

        let request = pages.map_request(&[ro], false).unwrap();
        let mut buf = [0u8; 8];
        pages.read(&request, 0, 0, &mut buf).unwrap();

        assert_eq!(&buf, b"segments");
        assert_eq!(pages.cached(), 0);
        assert!(matches!(pages.map_request(&[ro], true), Err(PageError::Map(GrantError::ReadOnly { .. }))));
    }

    #[test]
    fn a_bad_reference_fails_only_its_request() {
        let table = Arc::new(MemGrantTable::new(1));
        let good = table.grant(true);
        for persistent in [None, Some(8)] {
            let mut pages = GrantPages::new(Arc::clone(&table), 1, persistent);
            assert!(matches!(pages.map_request(&[good, 12345], true), Err(PageError::Map(GrantError::NotGranted { .. }))));
            assert!(pages.map_request(&[good], true).is_ok());
        }
    }
}
