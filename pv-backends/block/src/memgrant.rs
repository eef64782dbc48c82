//! An in-process grant table: a [`GrantMap`] over pages this process owns,
//! for unit tests and fuzzing of the request handler without a platform.
//!
//! The "frontend" grants pages with [`MemGrantTable::grant`] and fills or
//! inspects them with [`MemGrantTable::write_page`] and
//! [`MemGrantTable::read_page`]. Mapping one reference aliases the granted
//! page itself, as a real mapping does (persistent grants see the
//! frontend's later writes). Mapping several references at once cannot be
//! contiguous here, so the pages are copied into a fresh area when mapped,
//! and copied back when a writable mapping is dropped: the same result for
//! a mapping used by one request and dropped before the frontend looks.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use hypercall_abi::platform::{GrantCopyOp, GrantCopyPtr, GrantError, GrantMap, MappedGrants, SharedMemory};
use hypercall_abi::xen::grant_table::{GNTST_BAD_COPY_ARG, GNTST_BAD_GNTREF, GNTST_PERMISSION_DENIED};
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE]);

/// `count` zeroed pages owned through a raw pointer, so that
/// [`SharedMemory`] accessors may alias them.
struct Pages {
    /// From `Box::<[Page]>::into_raw`; freed in `Drop`.
    base: NonNull<Page>,
    count: usize,
}

// SAFETY: `Pages` owns its allocation like a `Box`; its bytes are only
// reached through `SharedMemory`, which does volatile accesses.
unsafe impl Send for Pages {}
// SAFETY: `&Pages` only hands out `SharedMemory`, which is `Sync`.
unsafe impl Sync for Pages {}

impl Pages {
    fn new(count: usize) -> Self {
        let boxed: Box<[Page]> = vec![Page([0; PAGE_SIZE]); count].into_boxed_slice();
        let base = NonNull::from(Box::leak(boxed)).cast::<Page>();
        Pages { base, count }
    }

    fn memory(&self, writable: bool) -> SharedMemory<'_> {
        // SAFETY: the pages stay allocated while `self` is borrowed (they
        // are freed only in `Drop`); no Rust reference to their bytes is
        // ever created, every access goes through `SharedMemory`; the base
        // is 4096-aligned.
        unsafe { SharedMemory::new(self.base.cast::<u8>(), self.count * PAGE_SIZE, writable) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.count);
        // SAFETY: `base`/`count` come from `Box::leak` of a `Box<[Page]>` in
        // `new`; every `SharedMemory` borrowing `self` is gone (`&mut self`).
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// One granted page.
struct Grant {
    page: Arc<Pages>,
    writable: bool,
}

/// A grant table of one granting domain, in this process.
pub struct MemGrantTable {
    domid: DomId,
    grants: Mutex<HashMap<GrantRef, Grant>>,
    next: Mutex<GrantRef>,
}

impl std::fmt::Debug for MemGrantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemGrantTable").field("domid", &self.domid).field("grants", &grants.len()).finish()
    }
}

impl MemGrantTable {
    /// An empty table of grants made by `domid`.
    pub fn new(domid: DomId) -> Self {
        MemGrantTable { domid, grants: Mutex::new(HashMap::new()), next: Mutex::new(8) }
    }

    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Grants a new zeroed page, writable by the mapper or read-only.
    pub fn grant(&self, writable: bool) -> GrantRef {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let gref = *next;
        *next = next.wrapping_add(1);
        self.grants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(gref, Grant { page: Arc::new(Pages::new(1)), writable });
        gref
    }

    /// Ends the grant; existing mappings keep the page.
    pub fn revoke(&self, gref: GrantRef) {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner).remove(&gref);
    }

    /// Writes into a granted page, as the frontend.
    pub fn write_page(&self, gref: GrantRef, offset: usize, data: &[u8]) -> bool {
        let page = self.page(gref);
        page.is_some_and(|p| p.memory(true).write(offset, data).is_ok())
    }

    /// Reads from a granted page, as the frontend.
    pub fn read_page(&self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> bool {
        let page = self.page(gref);
        page.is_some_and(|p| p.memory(false).read(offset, buf).is_ok())
    }

    fn page(&self, gref: GrantRef) -> Option<Arc<Pages>> {
        self.grants.lock().unwrap_or_else(PoisonError::into_inner).get(&gref).map(|g| Arc::clone(&g.page))
    }

    fn lookup(&self, domid: DomId, gref: GrantRef, writable: bool) -> Result<Arc<Pages>, GrantError> {
        let grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        match grants.get(&gref) {
            Some(grant) if domid == self.domid => {
                if writable && !grant.writable {
                    Err(GrantError::ReadOnly { domid, gref })
                } else {
                    Ok(Arc::clone(&grant.page))
                }
            }
            _ => Err(GrantError::NotGranted { domid, gref }),
        }
    }
}

/// Pages mapped from a [`MemGrantTable`].
pub struct MemMappedGrants {
    refs: Vec<GrantRef>,
    writable: bool,
    /// The granted pages, in order.
    sources: Vec<Arc<Pages>>,
    /// What the mapping shows: the granted page itself when there is one,
    /// else a copy of the pages, written back on drop.
    area: Arc<Pages>,
}

impl std::fmt::Debug for MemMappedGrants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemMappedGrants").field("refs", &self.refs).field("writable", &self.writable).finish()
    }
}

impl MappedGrants for MemMappedGrants {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn memory(&self) -> SharedMemory<'_> {
        self.area.memory(self.writable)
    }
}

impl Drop for MemMappedGrants {
    fn drop(&mut self) {
        if self.sources.len() < 2 || !self.writable {
            return;
        }
        let copy = &self.area;
        let mut buf = vec![0u8; PAGE_SIZE];
        for (i, page) in self.sources.iter().enumerate() {
            if copy.memory(false).read(i * PAGE_SIZE, &mut buf).is_ok() {
                let _ = page.memory(true).write(0, &buf);
            }
        }
    }
}

impl GrantMap for MemGrantTable {
    type Mapped = MemMappedGrants;

    fn map(&self, domid: DomId, refs: &[GrantRef], writable: bool) -> Result<MemMappedGrants, GrantError> {
        if refs.is_empty() {
            return Err(GrantError::Invalid("mapping zero grant references"));
        }
        let sources = refs.iter().map(|&gref| self.lookup(domid, gref, writable)).collect::<Result<Vec<_>, _>>()?;
        let area = match sources.as_slice() {
            [page] => Arc::clone(page),
            _ => {
            let copy = Pages::new(sources.len());
            let mut buf = vec![0u8; PAGE_SIZE];
            for (i, page) in sources.iter().enumerate() {
                page.memory(false).read(0, &mut buf).map_err(|_| GrantError::Invalid("page copy failed"))?;
                copy.memory(true).write(i * PAGE_SIZE, &buf).map_err(|_| GrantError::Invalid("page copy failed"))?;
            }
            Arc::new(copy)
            }
        };
        Ok(MemMappedGrants { refs: refs.to_vec(), writable, sources, area })
    }

    fn copy(&self, ops: &mut [GrantCopyOp<'_>]) -> Result<(), GrantError> {
        for op in ops.iter_mut() {
            op.status = self.copy_one(&op.source, &mut op.dest, usize::from(op.len));
        }
        Ok(())
    }
}

impl MemGrantTable {
    fn copy_one(&self, source: &GrantCopyPtr<'_>, dest: &mut GrantCopyPtr<'_>, len: usize) -> Result<(), i16> {
        let status = |e: GrantError| match e {
            GrantError::ReadOnly { .. } => GNTST_PERMISSION_DENIED,
            _ => GNTST_BAD_GNTREF,
        };
        let mut data = vec![0u8; len];
        match source {
            GrantCopyPtr::Grant { domid, gref, offset } => self
                .lookup(*domid, *gref, false)
                .map_err(status)?
                .memory(false)
                .read(usize::from(*offset), &mut data)
                .map_err(|_| GNTST_BAD_COPY_ARG)?,
            GrantCopyPtr::Local(src) => data.copy_from_slice(src.get(..len).ok_or(GNTST_BAD_COPY_ARG)?),
            GrantCopyPtr::LocalMut(src) => data.copy_from_slice(src.get(..len).ok_or(GNTST_BAD_COPY_ARG)?),
        }
        match dest {
            GrantCopyPtr::Grant { domid, gref, offset } => self
                .lookup(*domid, *gref, true)
                .map_err(status)?
                .memory(true)
                .write(usize::from(*offset), &data)
                .map_err(|_| GNTST_BAD_COPY_ARG),
            GrantCopyPtr::LocalMut(dst) => {
                dst.get_mut(..len).ok_or(GNTST_BAD_COPY_ARG)?.copy_from_slice(&data);
                Ok(())
            }
            GrantCopyPtr::Local(_) => Err(GNTST_BAD_COPY_ARG),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_maps_alias_and_multi_maps_write_back() {
        let table = MemGrantTable::new(3);
        let (a, b) = (table.grant(true), table.grant(true));
        let ro = table.grant(false);

        let single = table.map(3, &[a], true).unwrap();
        table.write_page(a, 10, b"later");
        let mut seen = [0u8; 5];
        single.memory().read(10, &mut seen).unwrap();
        let pair = table.map(3, &[a, b], true).unwrap();
        pair.memory().write(PAGE_SIZE + 1, b"back").unwrap();
        drop(pair);
        let mut back = [0u8; 4];
        table.read_page(b, 1, &mut back);

        assert_eq!(&seen, b"later", "a single mapping is the page itself");
        assert_eq!(&back, b"back", "a multi-page mapping is written back");
        assert!(matches!(table.map(3, &[ro], true), Err(GrantError::ReadOnly { .. })));
        assert!(matches!(table.map(4, &[a], false), Err(GrantError::NotGranted { .. })));
        assert!(matches!(table.map(3, &[999], false), Err(GrantError::NotGranted { .. })));
        assert!(table.map(3, &[ro], false).unwrap().memory().write(0, b"x").is_err());
    }
}
