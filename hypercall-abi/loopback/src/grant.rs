//! Grant tables on the loopback: [`GrantShare`] and [`GrantMap`].

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use hypercall_abi::platform::{
    GrantCopyOp, GrantCopyPtr, GrantError, GrantMap, GrantShare, MappedGrants, SharedGrants,
    SharedMemory,
};
use hypercall_abi::xen::grant_table::{
    GNTST_BAD_COPY_ARG, GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTST_PERMISSION_DENIED,
};
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

use crate::domain::{CallError, HvLink};
use crate::proto::{HvError, Reply, Request, MAX_REFS};
use crate::sys::mem::{sealed_memfd, Mapping};

fn grant_error(op: &'static str, e: CallError) -> GrantError {
    match e {
        CallError::Hv(HvError::NotGranted { domid, gref }) => {
            GrantError::NotGranted { domid, gref }
        }
        CallError::Hv(HvError::ReadOnly { domid, gref }) => GrantError::ReadOnly { domid, gref },
        CallError::Hv(HvError::InUse(gref)) => GrantError::InUse(gref),
        CallError::Hv(HvError::Invalid(i)) => GrantError::Invalid(i.as_str()),
        CallError::Hv(HvError::NoSpace) => {
            GrantError::Invalid("the grant table is full; end access to unused grants")
        }
        e => GrantError::Io {
            op,
            source: e.into_io(),
        },
    }
}

fn check_count(count: usize) -> Result<(), GrantError> {
    if count == 0 {
        return Err(GrantError::Invalid(
            "a grant request must name at least one page",
        ));
    }
    if count > MAX_REFS {
        return Err(GrantError::Invalid(
            "at most 1024 grant references fit in one request; split it",
        ));
    }
    Ok(())
}

/// The sharing side of this domain's grant table (`libxengntshr`).
#[derive(Debug, Clone)]
pub struct LoopbackGrantShare {
    link: Arc<HvLink>,
}

impl LoopbackGrantShare {
    pub(crate) fn new(link: Arc<HvLink>) -> Self {
        LoopbackGrantShare { link }
    }
}

/// Pages this domain granted: a sealed memfd mapped here, and its refs.
///
/// Dropping it gives the grants back to the hypervisor, which ends them at
/// once, or at the grantee's last unmap if it still maps them.
#[derive(Debug)]
pub struct LoopbackSharedGrants {
    link: Arc<HvLink>,
    refs: Vec<GrantRef>,
    mapping: Mapping,
    /// Whether the grants still exist in the hypervisor.
    live: bool,
}

impl SharedGrants for LoopbackSharedGrants {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn memory(&self) -> SharedMemory<'_> {
        self.mapping.memory()
    }
}

impl Drop for LoopbackSharedGrants {
    fn drop(&mut self) {
        if self.live {
            if let Err(e) = self.link.call(
                &Request::GrantRelease {
                    refs: self.refs.clone(),
                },
                &[],
            ) {
                log::debug!(
                    "releasing grants {:?} failed (the hypervisor cleans up on disconnect): {e:?}",
                    self.refs
                );
            }
        }
    }
}

impl GrantShare for LoopbackGrantShare {
    type Shared = LoopbackSharedGrants;

    fn share(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
    ) -> Result<Self::Shared, GrantError> {
        check_count(count)?;
        let len = count * PAGE_SIZE;
        let io = |source| GrantError::Io {
            op: "share",
            source,
        };
        let memfd = sealed_memfd(c"xen-loopback-grant", len).map_err(io)?;
        let mapping = Mapping::shared(memfd.as_fd(), 0, len, true).map_err(io)?;
        // count <= MAX_REFS, so it fits in u32.
        let req = Request::GrantShare {
            grantee: domid,
            count: count as u32,
            readonly: !writable,
        };
        let (reply, _) = self
            .link
            .call(&req, &[memfd.as_fd()])
            .map_err(|e| grant_error("share", e))?;
        match reply {
            Reply::Refs(refs) if refs.len() == count => Ok(LoopbackSharedGrants {
                link: Arc::clone(&self.link),
                refs,
                mapping,
                live: true,
            }),
            _ => Err(GrantError::Io {
                op: "share",
                source: CallError::Protocol("unexpected reply to share").into_io(),
            }),
        }
    }

    fn end_access(&self, mut shared: Self::Shared) -> Result<(), GrantError> {
        let req = Request::GrantEnd {
            refs: shared.refs.clone(),
        };
        self.link
            .call(&req, &[])
            .map_err(|e| grant_error("end_access", e))?;
        shared.live = false;
        Ok(())
    }
}

/// The mapping side of this domain's grant table (`libxengnttab`).
#[derive(Debug, Clone)]
pub struct LoopbackGrantMap {
    pub(crate) link: Arc<HvLink>,
}

impl LoopbackGrantMap {
    pub(crate) fn new(link: Arc<HvLink>) -> Self {
        LoopbackGrantMap { link }
    }
}

/// Tells the hypervisor a mapping is gone. Declared after the mapping in
/// [`LoopbackMappedGrants`], so that it runs after the pages are unmapped.
#[derive(Debug)]
pub(crate) struct UnmapOnDrop {
    link: Arc<HvLink>,
    handle: u64,
}

impl Drop for UnmapOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.link.call(
            &Request::GrantUnmap {
                handle: self.handle,
            },
            &[],
        ) {
            log::debug!(
                "telling the hypervisor of unmap {} failed: {e:?}",
                self.handle
            );
        }
    }
}

/// Pages of another domain mapped here, contiguously. Dropping it unmaps
/// them, then tells the hypervisor.
#[derive(Debug)]
pub struct LoopbackMappedGrants {
    area: Mapping,
    refs: Vec<GrantRef>,
    _unmap: UnmapOnDrop,
}

impl MappedGrants for LoopbackMappedGrants {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn memory(&self) -> SharedMemory<'_> {
        self.area.memory()
    }
}

/// A page's source in a map reply: descriptor index and byte offset.
type PageSource = (usize, u64);

/// Asks the hypervisor to map `refs`. Returns the guard that undoes the
/// mapping in the hypervisor when dropped, each page's source and the
/// descriptors.
pub(crate) fn map_request(
    link: &Arc<HvLink>,
    domid: DomId,
    refs: &[GrantRef],
    writable: bool,
) -> Result<(UnmapOnDrop, Vec<PageSource>, Vec<OwnedFd>), GrantError> {
    check_count(refs.len())?;
    let req = Request::GrantMap {
        owner: domid,
        writable,
        refs: refs.to_vec(),
    };
    let (reply, fds) = link.call(&req, &[]).map_err(|e| grant_error("map", e))?;
    let bad = || GrantError::Io {
        op: "map",
        source: CallError::Protocol("malformed map reply").into_io(),
    };
    let Reply::Mapped { handle, pages } = reply else {
        return Err(bad());
    };
    let unmap = UnmapOnDrop {
        link: Arc::clone(link),
        handle,
    };
    if pages.len() != refs.len() || pages.iter().any(|p| p.fd as usize >= fds.len()) {
        return Err(bad());
    }
    let pages = pages
        .iter()
        .map(|p| (p.fd as usize, u64::from(p.page) * PAGE_SIZE as u64))
        .collect();
    Ok((unmap, pages, fds))
}

impl GrantMap for LoopbackGrantMap {
    type Mapped = LoopbackMappedGrants;

    fn map(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<Self::Mapped, GrantError> {
        // Should anything below fail, dropping `unmap` undoes the mapping
        // in the hypervisor.
        let (unmap, pages, fds) = map_request(&self.link, domid, refs, writable)?;
        let io = |source| GrantError::Io { op: "map", source };
        let mut area = Mapping::reserve(refs.len() * PAGE_SIZE, writable).map_err(io)?;
        for (i, (fd, offset)) in pages.iter().enumerate() {
            area.map_fixed(i * PAGE_SIZE, fds[*fd].as_fd(), *offset, PAGE_SIZE)
                .map_err(io)?;
        }
        // The descriptors close here; the mappings keep the memory.
        drop(fds);
        Ok(LoopbackMappedGrants {
            area,
            refs: refs.to_vec(),
            _unmap: unmap,
        })
    }

    fn copy(&self, ops: &mut [GrantCopyOp<'_>]) -> Result<(), GrantError> {
        // Map each page a segment names once, read-only for sources and
        // writable for destinations, so that the hypervisor's checks apply
        // to copies as to maps; then copy through the mappings. The pages
        // of one domain and direction are mapped in one request (one round
        // trip to the hypervisor); if that fails, page by page, so that
        // each segment gets its own status.
        let mut groups: HashMap<(DomId, bool), Vec<GrantRef>> = HashMap::new();
        for op in ops.iter() {
            for (ptr, write) in [(&op.source, false), (&op.dest, true)] {
                if let GrantCopyPtr::Grant { domid, gref, .. } = ptr {
                    let refs = groups.entry((*domid, write)).or_default();
                    if !refs.contains(gref) {
                        refs.push(*gref);
                    }
                }
            }
        }
        let status = |e: GrantError| match e {
            GrantError::NotGranted { .. } => GNTST_BAD_GNTREF,
            GrantError::ReadOnly { .. } => GNTST_PERMISSION_DENIED,
            _ => GNTST_GENERAL_ERROR,
        };
        let mut maps = CopyMaps::default();
        let chunks = groups
            .into_iter()
            .flat_map(|(key, refs)| refs.chunks(MAX_REFS).map(|c| (key, c.to_vec())).collect::<Vec<_>>());
        for ((domid, write), refs) in chunks {
            match self.map(domid, &refs, write) {
                Ok(mapped) => {
                    let batch = maps.batches.len();
                    maps.batches.push(mapped);
                    for (i, gref) in refs.iter().enumerate() {
                        maps.pages.insert((domid, *gref, write), Ok((batch, i)));
                    }
                }
                Err(_) => {
                    for gref in refs {
                        let page = self.map(domid, &[gref], write).map(|mapped| {
                            maps.batches.push(mapped);
                            (maps.batches.len() - 1, 0)
                        });
                        maps.pages.insert((domid, gref, write), page.map_err(status));
                    }
                }
            }
        }
        let mut buf = vec![0u8; PAGE_SIZE];
        for op in ops.iter_mut() {
            op.status = copy_one(&maps, &op.source, &mut op.dest, op.len, &mut buf);
        }
        Ok(())
    }
}

/// A page a grant copy names: its domain, reference, and whether it is
/// written.
type PageKey = (DomId, GrantRef, bool);

/// The pages a grant copy maps: batches of mapped pages, and where each
/// (domain, reference, writable) page is among them (or why it is not).
#[derive(Default)]
struct CopyMaps {
    batches: Vec<LoopbackMappedGrants>,
    pages: HashMap<PageKey, Result<(usize, usize), i16>>,
}

impl CopyMaps {
    fn page(&self, domid: DomId, gref: GrantRef, write: bool) -> Result<SharedMemory<'_>, i16> {
        let (batch, index) = match self.pages.get(&(domid, gref, write)) {
            Some(Ok(at)) => *at,
            Some(Err(st)) => return Err(*st),
            None => return Err(GNTST_GENERAL_ERROR),
        };
        self.batches
            .get(batch)
            .ok_or(GNTST_GENERAL_ERROR)?
            .memory()
            .subregion(index * PAGE_SIZE, PAGE_SIZE)
            .map_err(|_| GNTST_GENERAL_ERROR)
    }
}

/// Performs one copy segment through the mappings in `maps`.
fn copy_one(
    maps: &CopyMaps,
    source: &GrantCopyPtr<'_>,
    dest: &mut GrantCopyPtr<'_>,
    len: u16,
    buf: &mut [u8],
) -> Result<(), i16> {
    let len = usize::from(len);
    let data = &mut buf[..len.min(PAGE_SIZE)];
    if len > PAGE_SIZE {
        return Err(GNTST_BAD_COPY_ARG);
    }
    let page = |domid: DomId, gref: GrantRef, write: bool| maps.page(domid, gref, write);
    let in_page = |offset: u16| usize::from(offset) + len <= PAGE_SIZE;
    match source {
        GrantCopyPtr::Grant {
            domid,
            gref,
            offset,
        } => {
            if !in_page(*offset) {
                return Err(GNTST_BAD_COPY_ARG);
            }
            page(*domid, *gref, false)?
                .read(usize::from(*offset), data)
                .map_err(|_| GNTST_BAD_COPY_ARG)?;
        }
        GrantCopyPtr::Local(src) => data.copy_from_slice(src.get(..len).ok_or(GNTST_BAD_COPY_ARG)?),
        GrantCopyPtr::LocalMut(src) => {
            data.copy_from_slice(src.get(..len).ok_or(GNTST_BAD_COPY_ARG)?)
        }
    }
    match dest {
        GrantCopyPtr::Grant {
            domid,
            gref,
            offset,
        } => {
            if !in_page(*offset) {
                return Err(GNTST_BAD_COPY_ARG);
            }
            page(*domid, *gref, true)?
                .write(usize::from(*offset), data)
                .map_err(|_| GNTST_PERMISSION_DENIED)?;
        }
        GrantCopyPtr::LocalMut(dst) => dst
            .get_mut(..len)
            .ok_or(GNTST_BAD_COPY_ARG)?
            .copy_from_slice(data),
        GrantCopyPtr::Local(_) => return Err(GNTST_BAD_COPY_ARG),
    }
    Ok(())
}
