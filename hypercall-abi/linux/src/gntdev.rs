//! Mapping and copying other domains' grants over `/dev/xen/gntdev` (what
//! `libxengnttab` does on Linux).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use hypercall_abi::platform::{GrantCopyOp, GrantCopyPtr, GrantError, GrantMap, MappedGrants, SharedMemory};
use hypercall_abi::xen::grant_table::{GNTCOPY_DEST_GREF, GNTCOPY_SOURCE_GREF, GNTST_OKAY};
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

use crate::error::{open_device, OpenError};
use crate::gntalloc::UnmapNotify;
use crate::mapping::DeviceMapping;
use crate::sys::gntdev::{self as sys, GntdevGrantCopyForeign, GntdevGrantCopyPtr, GntdevGrantCopySegment};
use crate::MAX_PAGES;

/// A handle on `/dev/xen/gntdev`: `xengnttab_handle`.
#[derive(Debug)]
pub struct LinuxGntdev {
    /// Shared with every mapping, which needs it to release its offset.
    file: Arc<File>,
}

impl LinuxGntdev {
    /// The device.
    pub const PATH: &'static str = "/dev/xen/gntdev";

    /// Opens the device.
    pub fn open() -> Result<Self, OpenError> {
        Ok(Self { file: Arc::new(open_device(Self::PATH, "xen-gntdev", 0)?) })
    }
}

impl GrantMap for LinuxGntdev {
    type Mapped = LinuxMappedGrants;

    fn map(&self, domid: DomId, refs: &[GrantRef], writable: bool) -> Result<LinuxMappedGrants, GrantError> {
        if refs.is_empty() {
            return Err(GrantError::Invalid("mapping zero grant references"));
        }
        if refs.len() > MAX_PAGES {
            return Err(GrantError::Invalid("too many grant references in one mapping"));
        }
        // SAFETY: `file` is /dev/xen/gntdev, opened by `open`.
        let index = unsafe { sys::map_grant_ref(self.file.as_fd(), domid, refs) }
            .map_err(|source| GrantError::Io { op: "map", source })?;
        // Cannot truncate: refs.len() <= MAX_PAGES.
        let release = ReleaseOffset { file: Arc::clone(&self.file), index, count: refs.len() as u32 };
        // Xen maps the grants now, all or nothing. On failure, dropping
        // `release` gives the offset back.
        let map = DeviceMapping::new(&self.file, index, refs.len() * PAGE_SIZE, writable)
            .map_err(|source| map_error(domid, refs, writable, source))?;
        Ok(LinuxMappedGrants { map, release, refs: refs.to_vec(), domid })
    }

    fn copy(&self, ops: &mut [GrantCopyOp<'_>]) -> Result<(), GrantError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut segments = ops.iter_mut().map(segment).collect::<Result<Vec<_>, _>>()?;
        // SAFETY: `file` is /dev/xen/gntdev, opened by `open`. Each local
        // address in `segments` comes from a slice of `ops` that `segment`
        // checked holds `len` bytes: a `&[u8]` (read as a source) or a
        // `&mut [u8]` (written as a destination, exclusively borrowed
        // through `ops` for this call). Grant members carry no address.
        unsafe { sys::grant_copy(self.file.as_fd(), &mut segments) }
            .map_err(|source| GrantError::Io { op: "copy", source })?;
        for (op, seg) in ops.iter_mut().zip(&segments) {
            op.status = if seg.status == GNTST_OKAY { Ok(()) } else { Err(seg.status) };
        }
        Ok(())
    }
}

/// Explains a failed `mmap` of grants: Linux says `EINVAL` when Xen
/// refused a reference; with one reference we know which.
fn map_error(domid: DomId, refs: &[GrantRef], writable: bool, source: io::Error) -> GrantError {
    match (refs, source.raw_os_error()) {
        ([gref], Some(libc::EINVAL)) => {
            log::debug!("gntdev: mapping gref {gref} of domain {domid} (writable: {writable}) failed: {source}");
            GrantError::NotGranted { domid, gref: *gref }
        }
        _ => GrantError::Io { op: "map (mmap)", source },
    }
}

/// Encodes one copy for the kernel, checking that it stays within its
/// page and its buffers.
fn segment(op: &mut GrantCopyOp<'_>) -> Result<GntdevGrantCopySegment, GrantError> {
    let len = op.len;
    let (source, source_gref) = end(&mut op.source, len, false)?;
    let (dest, dest_gref) = end(&mut op.dest, len, true)?;
    if !source_gref && !dest_gref {
        return Err(GrantError::Invalid("a grant copy needs a grant on at least one side"));
    }
    let mut flags = 0;
    if source_gref {
        flags |= GNTCOPY_SOURCE_GREF;
    }
    if dest_gref {
        flags |= GNTCOPY_DEST_GREF;
    }
    Ok(GntdevGrantCopySegment { source, dest, len, flags, status: 0 })
}

/// One end of a copy; returns the union and whether it is a grant.
fn end(ptr: &mut GrantCopyPtr<'_>, len: u16, dest: bool) -> Result<(GntdevGrantCopyPtr, bool), GrantError> {
    let fits = |size: usize| usize::from(len) <= size;
    match ptr {
        GrantCopyPtr::Grant { domid, gref, offset } => {
            if usize::from(*offset) + usize::from(len) > PAGE_SIZE {
                return Err(GrantError::BadCopy { offset: *offset, len });
            }
            let foreign = GntdevGrantCopyForeign { ref_: *gref, offset: *offset, domid: *domid };
            Ok((GntdevGrantCopyPtr { foreign }, true))
        }
        GrantCopyPtr::LocalMut(buf) if fits(buf.len()) => {
            Ok((GntdevGrantCopyPtr { virt: buf.as_mut_ptr().cast() }, false))
        }
        GrantCopyPtr::Local(_) if dest => Err(GrantError::Invalid("a grant copy cannot write into a read-only buffer")),
        GrantCopyPtr::Local(buf) if fits(buf.len()) => {
            Ok((GntdevGrantCopyPtr { virt: buf.as_ptr().cast_mut().cast() }, false))
        }
        GrantCopyPtr::LocalMut(_) | GrantCopyPtr::Local(_) => Err(GrantError::BadCopy { offset: 0, len }),
    }
}

/// Grants of another domain mapped through [`LinuxGntdev`]. Dropping them
/// unmaps them.
#[derive(Debug)]
pub struct LinuxMappedGrants {
    // Field order is drop order: munmap first, then release the offset,
    // as libxengnttab does.
    map: DeviceMapping,
    release: ReleaseOffset,
    refs: Vec<GrantRef>,
    domid: DomId,
}

/// Gives a reserved mmap offset back to gntdev when dropped
/// (`IOCTL_GNTDEV_UNMAP_GRANT_REF`).
#[derive(Debug)]
struct ReleaseOffset {
    file: Arc<File>,
    index: u64,
    count: u32,
}

impl Drop for ReleaseOffset {
    fn drop(&mut self) {
        // SAFETY: `file` is /dev/xen/gntdev, opened by `LinuxGntdev::open`.
        if let Err(e) = unsafe { sys::unmap_grant_ref(self.file.as_fd(), self.index, self.count) } {
            log::warn!("gntdev: releasing offset {:#x} of {} grants failed: {e}", self.index, self.count);
        }
    }
}

impl LinuxMappedGrants {
    /// The granting domain.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// Asks the kernel to act when this mapping goes away, even if this
    /// process dies: the usual way for a backend to tell its frontend.
    pub fn set_unmap_notify(&self, notify: UnmapNotify) -> Result<(), GrantError> {
        if notify.offset >= self.map.len() {
            return Err(GrantError::Invalid("unmap notification offset is outside the mapping"));
        }
        let index = self.release.index + notify.offset as u64;
        let port = notify.port.unwrap_or(0);
        // SAFETY: `file` is /dev/xen/gntdev, opened by `LinuxGntdev::open`.
        unsafe { sys::set_unmap_notify(self.release.file.as_fd(), index, notify.action(), port) }
            .map_err(|source| GrantError::Io { op: "set_unmap_notify", source })
    }
}

impl MappedGrants for LinuxMappedGrants {
    fn refs(&self) -> &[GrantRef] {
        &self.refs
    }

    fn memory(&self) -> SharedMemory<'_> {
        self.map.memory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_xen_says_so() {
        if std::path::Path::new(LinuxGntdev::PATH).exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = LinuxGntdev::open().unwrap_err();

        assert!(matches!(err, OpenError::NotFound { path: "/dev/xen/gntdev", driver: "xen-gntdev" }), "{err:?}");
    }

    fn op<'a>(source: GrantCopyPtr<'a>, dest: GrantCopyPtr<'a>, len: u16) -> GrantCopyOp<'a> {
        GrantCopyOp { source, dest, len, status: Ok(()) }
    }

    #[test]
    fn copy_segments_encode_grants_and_buffers() {
        let mut buf = [0u8; 100];
        let addr = buf.as_mut_ptr() as usize;
        let mut copy_in =
            op(GrantCopyPtr::Grant { domid: 3, gref: 17, offset: 4000 }, GrantCopyPtr::LocalMut(&mut buf), 96);

        let seg = segment(&mut copy_in).unwrap();

        assert_eq!((seg.len, seg.flags, seg.status), (96, GNTCOPY_SOURCE_GREF, 0));
        // SAFETY: reading the union members this segment set.
        let (foreign, virt) = unsafe { (seg.source.foreign, seg.dest.virt) };
        assert_eq!(foreign, GntdevGrantCopyForeign { ref_: 17, offset: 4000, domid: 3 });
        assert_eq!(virt as usize, addr);
    }

    #[test]
    fn copy_segments_are_checked() {
        let data = [0u8; 8];
        let mut small = [0u8; 8];
        let grant = |offset| GrantCopyPtr::Grant { domid: 1, gref: 2, offset };

        let crossing = segment(&mut op(GrantCopyPtr::Local(&data), grant(4090), 8));
        assert!(matches!(crossing, Err(GrantError::BadCopy { offset: 4090, len: 8 })));
        let overrun = segment(&mut op(grant(0), GrantCopyPtr::LocalMut(&mut small), 9));
        assert!(matches!(overrun, Err(GrantError::BadCopy { .. })));
        let into_ro = segment(&mut op(grant(0), GrantCopyPtr::Local(&data), 8));
        assert!(matches!(into_ro, Err(GrantError::Invalid(_))));
        let local_only = segment(&mut op(GrantCopyPtr::Local(&data), GrantCopyPtr::LocalMut(&mut small), 8));
        assert!(matches!(local_only, Err(GrantError::Invalid(_))));
        let both = segment(&mut op(grant(0), grant(8), 8)).unwrap();
        assert_eq!(both.flags, GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF);
    }

    #[test]
    fn single_ref_einval_names_the_ref() {
        let err = map_error(4, &[9], true, io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(err, GrantError::NotGranted { domid: 4, gref: 9 }));
        let err = map_error(4, &[9, 10], true, io::Error::from_raw_os_error(libc::EINVAL));
        assert!(matches!(err, GrantError::Io { .. }));
    }
}
