//! An in-process grant table that only copies: a [`GrantMap`] over pages
//! this process owns, for unit tests and fuzzing of the data path without
//! a platform. (The data path copies; only the rings are mapped, which
//! this table refuses.)

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use hypercall_abi::platform::{
    GrantCopyOp, GrantCopyPtr, GrantError, GrantMap, MappedGrants, SharedMemory,
};
use hypercall_abi::xen::grant_table::{
    GNTST_BAD_COPY_ARG, GNTST_BAD_GNTREF, GNTST_PERMISSION_DENIED,
};
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

/// A mapping [`MemGrantTable`] never makes.
#[derive(Debug)]
pub enum NoMapping {}

impl MappedGrants for NoMapping {
    fn refs(&self) -> &[GrantRef] {
        match *self {}
    }

    fn memory(&self) -> SharedMemory<'_> {
        match *self {}
    }
}

struct Page {
    bytes: Vec<u8>,
    writable: bool,
}

/// The grant table of one granting domain, in this process.
pub struct MemGrantTable {
    domid: DomId,
    pages: Mutex<HashMap<GrantRef, Page>>,
    /// Calls of [`GrantMap::copy`] (batches, as a platform submits them).
    batches: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for MemGrantTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemGrantTable")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

impl MemGrantTable {
    /// An empty table of domain `domid`.
    pub fn new(domid: DomId) -> Self {
        MemGrantTable {
            domid,
            pages: Mutex::new(HashMap::new()),
            batches: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many batches of copies were submitted.
    pub fn copy_batches(&self) -> usize {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn pages(&self) -> std::sync::MutexGuard<'_, HashMap<GrantRef, Page>> {
        self.pages.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Grants a new zeroed page, writable by the backend or not.
    pub fn grant(&self, writable: bool) -> GrantRef {
        let mut pages = self.pages();
        let gref = pages.len() as GrantRef + 8;
        pages.insert(
            gref,
            Page {
                bytes: vec![0; PAGE_SIZE],
                writable,
            },
        );
        gref
    }

    /// Writes into a granted page; false if `gref` is not granted or the
    /// range leaves the page.
    pub fn write_page(&self, gref: GrantRef, offset: usize, data: &[u8]) -> bool {
        let mut pages = self.pages();
        match pages
            .get_mut(&gref)
            .and_then(|p| p.bytes.get_mut(offset..offset.checked_add(data.len())?))
        {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    /// Reads from a granted page; false if `gref` is not granted or the
    /// range leaves the page.
    pub fn read_page(&self, gref: GrantRef, offset: usize, out: &mut [u8]) -> bool {
        let pages = self.pages();
        match pages
            .get(&gref)
            .and_then(|p| p.bytes.get(offset..offset.checked_add(out.len())?))
        {
            Some(src) => {
                out.copy_from_slice(src);
                true
            }
            None => false,
        }
    }

    fn copy_one(
        &self,
        pages: &mut HashMap<GrantRef, Page>,
        op: &mut GrantCopyOp<'_>,
    ) -> Result<(), i16> {
        let len = usize::from(op.len);
        let mut data = vec![0u8; len];
        match &op.source {
            GrantCopyPtr::Grant {
                domid,
                gref,
                offset,
            } => {
                let page = pages
                    .get(gref)
                    .filter(|_| *domid == self.domid)
                    .ok_or(GNTST_BAD_GNTREF)?;
                let start = usize::from(*offset);
                data.copy_from_slice(
                    page.bytes
                        .get(start..start + len)
                        .ok_or(GNTST_BAD_COPY_ARG)?,
                );
            }
            GrantCopyPtr::Local(src) => {
                data.copy_from_slice(src.get(..len).ok_or(GNTST_BAD_COPY_ARG)?)
            }
            GrantCopyPtr::LocalMut(src) => {
                data.copy_from_slice(src.get(..len).ok_or(GNTST_BAD_COPY_ARG)?)
            }
        }
        match &mut op.dest {
            GrantCopyPtr::Grant {
                domid,
                gref,
                offset,
            } => {
                let page = pages
                    .get_mut(gref)
                    .filter(|_| *domid == self.domid)
                    .ok_or(GNTST_BAD_GNTREF)?;
                if !page.writable {
                    return Err(GNTST_PERMISSION_DENIED);
                }
                let start = usize::from(*offset);
                page.bytes
                    .get_mut(start..start + len)
                    .ok_or(GNTST_BAD_COPY_ARG)?
                    .copy_from_slice(&data);
            }
            GrantCopyPtr::LocalMut(dst) => dst
                .get_mut(..len)
                .ok_or(GNTST_BAD_COPY_ARG)?
                .copy_from_slice(&data),
            GrantCopyPtr::Local(_) => return Err(GNTST_BAD_COPY_ARG),
        }
        Ok(())
    }
}

impl GrantMap for MemGrantTable {
    type Mapped = NoMapping;

    fn map(
        &self,
        _domid: DomId,
        _refs: &[GrantRef],
        _writable: bool,
    ) -> Result<NoMapping, GrantError> {
        Err(GrantError::Invalid(
            "the in-process grant table only copies",
        ))
    }

    fn copy(&self, ops: &mut [GrantCopyOp<'_>]) -> Result<(), GrantError> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut pages = self.pages();
        for op in ops.iter_mut() {
            op.status = self.copy_one(&mut pages, op);
        }
        Ok(())
    }
}
