//! The hypervisor's grant tables.
//!
//! Each domain has a table of grant entries, ref → (pages of a share,
//! grantee, read-only, map count). A *share* is one sealed memfd holding
//! the pages of one `share()` call; all its pages go to the same grantee
//! with the same access, so handing the grantee the memfd (read-only
//! reopened for read-only grants) gives it nothing it was not granted. A
//! share's memory is never reused for anything else: once its grants end,
//! the owner unmaps it and the memfd dies with the last mapping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use hypercall_abi::xen::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

use crate::proto::{HvError, Invalid, MappedPage, MAX_REFS};
use crate::sys::mem::{file_size, reopen_read_only, seals, REQUIRED_SEALS};
use crate::sys::seqpacket::MAX_FDS;

/// Most grant entries one domain may have (64 MiB of pages).
pub(crate) const MAX_GRANTS_PER_DOMAIN: usize = 16 * 1024;

#[derive(Debug)]
struct Entry {
    /// The memory of the share: the descriptor handed to mappers, the
    /// owner's memfd for writable grants, a read-only reopen of it for
    /// read-only grants.
    share: Arc<OwnedFd>,
    page: u32,
    grantee: DomId,
    readonly: bool,
    /// Live mappings of this entry.
    maps: u32,
    /// The owner gave the entry back; it goes at its last unmap.
    released: bool,
}

#[derive(Debug, Default)]
struct DomainGrants {
    entries: BTreeMap<GrantRef, Entry>,
    /// Where the search for a free reference starts.
    next: GrantRef,
}

#[derive(Debug)]
struct MapRecord {
    mapper: DomId,
    owner: DomId,
    refs: Vec<GrantRef>,
}

/// Every domain's grant table and every live mapping.
#[derive(Debug, Default)]
pub(crate) struct GrantTables {
    tables: HashMap<DomId, DomainGrants>,
    mappings: HashMap<u64, MapRecord>,
    next_handle: u64,
}

/// What a successful map hands back: the reply and the descriptors it names.
pub(crate) struct MapResult {
    pub(crate) handle: u64,
    pub(crate) pages: Vec<MappedPage>,
    pub(crate) fds: Vec<Arc<OwnedFd>>,
}

impl GrantTables {
    /// Grants the `count` pages of `memfd` from `owner` to `grantee`.
    pub(crate) fn share(
        &mut self,
        owner: DomId,
        grantee: DomId,
        count: u32,
        readonly: bool,
        memfd: OwnedFd,
    ) -> Result<Vec<GrantRef>, HvError> {
        let n = usize::try_from(count).map_err(|_| HvError::Invalid(Invalid::TooManyRefs))?;
        if n == 0 {
            return Err(HvError::Invalid(Invalid::NoPages));
        }
        if n > MAX_REFS {
            return Err(HvError::Invalid(Invalid::TooManyRefs));
        }
        // The memory must be a memfd that can never shrink under a mapper,
        // and hold every page granted.
        let sealed = seals(memfd.as_fd())
            .map(|s| s & REQUIRED_SEALS == REQUIRED_SEALS)
            .unwrap_or(false);
        let big_enough = file_size(memfd.as_fd())
            .map(|len| len >= (n * PAGE_SIZE) as u64)
            .unwrap_or(false);
        if !sealed || !big_enough {
            return Err(HvError::Invalid(Invalid::BadMemory));
        }
        let fd = if readonly {
            reopen_read_only(memfd.as_fd()).map_err(|e| {
                log::error!("cannot reopen a shared memfd read-only: {e}");
                HvError::Internal
            })?
        } else {
            memfd
        };
        let table = self.tables.entry(owner).or_default();
        if table.entries.len() + n > MAX_GRANTS_PER_DOMAIN {
            return Err(HvError::NoSpace);
        }
        let share = Arc::new(fd);
        let mut refs = Vec::with_capacity(n);
        for page in 0..count {
            let gref = table.free_ref();
            table.entries.insert(
                gref,
                Entry {
                    share: Arc::clone(&share),
                    page,
                    grantee,
                    readonly,
                    maps: 0,
                    released: false,
                },
            );
            refs.push(gref);
        }
        log::debug!("domain {owner} granted {n} pages to domain {grantee}: refs {refs:?}");
        Ok(refs)
    }

    /// Ends access to `refs` of `owner`: all of them, or none if one is
    /// unknown or still mapped.
    pub(crate) fn end(&mut self, owner: DomId, refs: &[GrantRef]) -> Result<(), HvError> {
        let table = self.tables.get_mut(&owner).ok_or(HvError::NotGranted {
            domid: owner,
            gref: first(refs),
        })?;
        for gref in refs {
            match table.entries.get(gref) {
                Some(e) if e.released => {
                    return Err(HvError::NotGranted {
                        domid: owner,
                        gref: *gref,
                    })
                }
                Some(e) if e.maps > 0 => return Err(HvError::InUse(*gref)),
                Some(_) => {}
                None => {
                    return Err(HvError::NotGranted {
                        domid: owner,
                        gref: *gref,
                    })
                }
            }
        }
        for gref in refs {
            table.entries.remove(gref);
        }
        Ok(())
    }

    /// Gives `refs` back: each unmapped one ends now, each mapped one at
    /// its last unmap. Unknown refs are ignored.
    pub(crate) fn release(&mut self, owner: DomId, refs: &[GrantRef]) {
        let Some(table) = self.tables.get_mut(&owner) else {
            return;
        };
        for gref in refs {
            match table.entries.get_mut(gref) {
                Some(e) if e.maps > 0 => e.released = true,
                Some(_) => {
                    table.entries.remove(gref);
                }
                None => {}
            }
        }
    }

    /// Maps `refs` of `owner` for `mapper`, all or none.
    pub(crate) fn map(
        &mut self,
        mapper: DomId,
        owner: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<MapResult, HvError> {
        if refs.is_empty() {
            return Err(HvError::Invalid(Invalid::NoPages));
        }
        if refs.len() > MAX_REFS {
            return Err(HvError::Invalid(Invalid::TooManyRefs));
        }
        let mut seen = HashSet::with_capacity(refs.len());
        if !refs.iter().all(|r| seen.insert(*r)) {
            return Err(HvError::Invalid(Invalid::DuplicateRef));
        }
        let table = self.tables.get_mut(&owner).ok_or(HvError::NotGranted {
            domid: owner,
            gref: refs[0],
        })?;
        // Check every reference before touching any (all or nothing).
        let mut fds: Vec<Arc<OwnedFd>> = Vec::new();
        let mut pages = Vec::with_capacity(refs.len());
        for gref in refs {
            let e = match table.entries.get(gref) {
                Some(e) if !e.released && e.grantee == mapper => e,
                _ => {
                    return Err(HvError::NotGranted {
                        domid: owner,
                        gref: *gref,
                    })
                }
            };
            if writable && e.readonly {
                return Err(HvError::ReadOnly {
                    domid: owner,
                    gref: *gref,
                });
            }
            let fd = match fds.iter().position(|s| Arc::ptr_eq(s, &e.share)) {
                Some(i) => i,
                None => {
                    if fds.len() == MAX_FDS {
                        return Err(HvError::Invalid(Invalid::TooManyShares));
                    }
                    fds.push(Arc::clone(&e.share));
                    fds.len() - 1
                }
            };
            // fd < MAX_FDS, so it fits in u32.
            pages.push(MappedPage {
                fd: fd as u32,
                page: e.page,
            });
        }
        for gref in refs {
            if let Some(e) = table.entries.get_mut(gref) {
                e.maps += 1;
            }
        }
        self.next_handle += 1;
        let handle = self.next_handle;
        self.mappings.insert(
            handle,
            MapRecord {
                mapper,
                owner,
                refs: refs.to_vec(),
            },
        );
        Ok(MapResult { handle, pages, fds })
    }

    /// Undoes mapping `handle` of `mapper`.
    pub(crate) fn unmap(&mut self, mapper: DomId, handle: u64) -> Result<(), HvError> {
        match self.mappings.get(&handle) {
            Some(m) if m.mapper == mapper => {}
            _ => return Err(HvError::Protocol),
        }
        if let Some(m) = self.mappings.remove(&handle) {
            self.drop_maps(m);
        }
        Ok(())
    }

    fn drop_maps(&mut self, m: MapRecord) {
        let Some(table) = self.tables.get_mut(&m.owner) else {
            return;
        };
        for gref in m.refs {
            if let Some(e) = table.entries.get_mut(&gref) {
                e.maps = e.maps.saturating_sub(1);
                if e.maps == 0 && e.released {
                    table.entries.remove(&gref);
                }
            }
        }
    }

    /// Forgets a domain that went away: its mappings of others' grants are
    /// undone, and its own grants are released (the pages stay valid for
    /// whoever still maps them).
    pub(crate) fn destroy_domain(&mut self, domid: DomId) {
        let handles: Vec<u64> = self
            .mappings
            .iter()
            .filter(|(_, m)| m.mapper == domid)
            .map(|(h, _)| *h)
            .collect();
        for h in handles {
            if let Some(m) = self.mappings.remove(&h) {
                self.drop_maps(m);
            }
        }
        if let Some(table) = self.tables.get_mut(&domid) {
            table.entries.retain(|_, e| {
                e.released = true;
                e.maps > 0
            });
            if table.entries.is_empty() {
                self.tables.remove(&domid);
            }
        }
    }

    /// Live entries of `owner` (for tests and logs).
    #[cfg(test)]
    pub(crate) fn entries(&self, owner: DomId) -> usize {
        self.tables.get(&owner).map_or(0, |t| t.entries.len())
    }
}

fn first(refs: &[GrantRef]) -> GrantRef {
    refs.first().copied().unwrap_or(0)
}

impl DomainGrants {
    /// A free reference at or after `next`, skipping the reserved ones.
    /// The caller checked the table has room, so one exists.
    fn free_ref(&mut self) -> GrantRef {
        let lo = GNTTAB_NR_RESERVED_ENTRIES;
        let span = MAX_GRANTS_PER_DOMAIN as GrantRef;
        let mut r = self.next.max(lo);
        for _ in 0..=span {
            if r >= lo + span {
                r = lo;
            }
            if !self.entries.contains_key(&r) {
                break;
            }
            r += 1;
        }
        self.next = r + 1;
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sys::mem::sealed_memfd;

    fn memfd(pages: usize) -> OwnedFd {
        sealed_memfd(c"t", pages * PAGE_SIZE).unwrap()
    }

    #[test]
    fn maps_only_what_was_granted_to_the_mapper() {
        let mut gt = GrantTables::default();
        let refs = gt.share(1, 2, 2, false, memfd(2)).unwrap();
        assert!(refs.iter().all(|r| *r >= GNTTAB_NR_RESERVED_ENTRIES));
        assert!(
            matches!(gt.map(3, 1, &refs, false), Err(HvError::NotGranted { .. })),
            "wrong grantee"
        );
        assert!(matches!(
            gt.map(2, 1, &[refs[0], 999], false),
            Err(HvError::NotGranted { gref: 999, .. })
        ));
        assert!(matches!(
            gt.map(2, 1, &[refs[0], refs[0]], false),
            Err(HvError::Invalid(Invalid::DuplicateRef))
        ));
        let m = gt.map(2, 1, &refs, true).unwrap();
        assert_eq!(m.fds.len(), 1, "both pages come from one share");
        assert_eq!(m.pages.iter().map(|p| p.page).collect::<Vec<_>>(), [0, 1]);
        assert!(matches!(gt.end(1, &refs), Err(HvError::InUse(_))));
        gt.unmap(2, m.handle).unwrap();
        gt.end(1, &refs).unwrap();
        assert!(
            matches!(gt.map(2, 1, &refs, false), Err(HvError::NotGranted { .. })),
            "ended grants are gone"
        );
    }

    #[test]
    fn read_only_grants_refuse_writable_maps() {
        let mut gt = GrantTables::default();
        let refs = gt.share(1, 2, 1, true, memfd(1)).unwrap();
        assert!(matches!(
            gt.map(2, 1, &refs, true),
            Err(HvError::ReadOnly { .. })
        ));
        assert!(gt.map(2, 1, &refs, false).is_ok());
    }

    #[test]
    fn memory_must_be_sealed_and_big_enough() {
        let mut gt = GrantTables::default();
        assert!(matches!(
            gt.share(1, 2, 3, false, memfd(2)),
            Err(HvError::Invalid(Invalid::BadMemory))
        ));
        let unsealed: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        assert!(matches!(
            gt.share(1, 2, 1, false, unsealed),
            Err(HvError::Invalid(Invalid::BadMemory))
        ));
        assert!(matches!(
            gt.share(1, 2, 0, false, memfd(1)),
            Err(HvError::Invalid(Invalid::NoPages))
        ));
    }

    #[test]
    fn released_and_dead_domains_keep_mapped_pages_until_unmapped() {
        let mut gt = GrantTables::default();
        let refs = gt.share(1, 2, 2, false, memfd(2)).unwrap();
        let m = gt.map(2, 1, &refs[..1], false).unwrap();
        gt.destroy_domain(1);
        assert_eq!(gt.entries(1), 1, "the mapped entry survives its owner");
        assert!(
            gt.map(2, 1, &refs[..1], false).is_err(),
            "but cannot be mapped again"
        );
        gt.unmap(2, m.handle).unwrap();
        assert_eq!(gt.entries(1), 0);

        let refs = gt.share(1, 2, 1, false, memfd(1)).unwrap();
        let _m = gt.map(2, 1, &refs, false).unwrap();
        gt.destroy_domain(2);
        gt.end(1, &refs).unwrap();
    }
}
