//! Granting our pages to another domain over `/dev/xen/gntalloc` (what
//! `libxengntshr` does on Linux).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use hypercall_abi::platform::{CopyMemory, GrantError, GrantShare, SharedGrants, SharedMemory};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};

use crate::error::{open_device, OpenError};
use crate::mapping::DeviceMapping;
use crate::sys::gntalloc as sys;
use crate::MAX_PAGES;

/// What the kernel does when the other side's mapping of a page goes away
/// (its process dies, or it unmaps): the usual way for a frontend to learn
/// that its backend crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapNotify {
    /// Byte offset, within the shared region, of the byte to clear, or of
    /// any byte of the page whose unmap should send the event.
    pub offset: usize,
    /// Zero the byte at `offset` (`UNMAP_NOTIFY_CLEAR_BYTE`).
    pub clear_byte: bool,
    /// Notify this event channel port (`UNMAP_NOTIFY_SEND_EVENT`).
    pub port: Option<EvtchnPort>,
}

impl UnmapNotify {
    /// The `UNMAP_NOTIFY_*` bits (the same in gntalloc.h and gntdev.h).
    pub(crate) fn action(&self) -> u32 {
        let mut action = 0;
        if self.clear_byte {
            action |= sys::UNMAP_NOTIFY_CLEAR_BYTE;
        }
        if self.port.is_some() {
            action |= sys::UNMAP_NOTIFY_SEND_EVENT;
        }
        action
    }
}

/// A handle on `/dev/xen/gntalloc`: `xengntshr_handle`.
#[derive(Debug)]
pub struct LinuxGntalloc {
    file: File,
}

impl LinuxGntalloc {
    /// The device.
    pub const PATH: &'static str = "/dev/xen/gntalloc";

    /// Opens the device.
    pub fn open() -> Result<Self, OpenError> {
        Ok(Self { file: open_device(Self::PATH, "xen-gntalloc", 0)? })
    }

    /// Like [`GrantShare::share`], and asks the kernel to act when `domid`
    /// unmaps the pages (`xengntshr_share_page_notify`).
    pub fn share_with_notify(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
        notify: Option<UnmapNotify>,
    ) -> Result<LinuxSharedGrants, GrantError> {
        if count == 0 {
            return Err(GrantError::Invalid("sharing zero pages"));
        }
        if count > MAX_PAGES {
            return Err(GrantError::Invalid("too many pages in one grant request"));
        }
        let len = count * PAGE_SIZE;
        if notify.is_some_and(|n| n.offset >= len) {
            return Err(GrantError::Invalid("unmap notification offset is outside the shared pages"));
        }
        let flags = if writable { sys::GNTALLOC_FLAG_WRITABLE } else { 0 };
        let fd = self.file.as_fd();
        let io = |op: &'static str| move |source: io::Error| GrantError::Io { op, source };

        // Cannot truncate: count <= MAX_PAGES.
        let count32 = count as u32;
        // SAFETY: `file` is /dev/xen/gntalloc, opened by `open`.
        let (index, refs) = unsafe { sys::alloc_gref(fd, domid, flags, count32) }.map_err(io("share"))?;
        let result = DeviceMapping::new(&self.file, index, len, true).map_err(io("share (mmap)")).and_then(|map| {
            if let Some(n) = notify {
                let port = n.port.unwrap_or(0);
                // SAFETY: `file` is /dev/xen/gntalloc, opened by `open`.
                unsafe { sys::set_unmap_notify(fd, index + n.offset as u64, n.action(), port) }
                    .map_err(io("share (unmap notify)"))?;
            }
            Ok(map)
        });
        // The references are now held by the mapping (or must go, on
        // failure): drop them from the fd, as libxengntshr does. The pages
        // and grants are released when the mapping is unmapped.
        // SAFETY: `file` is /dev/xen/gntalloc, opened by `open`.
        if let Err(e) = unsafe { sys::dealloc_gref(fd, index, count32) } {
            log::warn!("gntalloc: releasing offset {index:#x} from the fd failed: {e}; grants stay until it closes");
        }
        Ok(LinuxSharedGrants { map: result?, refs, domid })
    }
}

impl LinuxGntalloc {
    /// `count` zeroed pages granted, writable, to this domain itself
    /// (`own`), for grant copies that name them by reference on the local
    /// side: see [`SelfGrantedBuffer`]. Fails as [`GrantShare::share`]
    /// does, e.g. past gntalloc's limit on grants (its `limit` parameter,
    /// 1024 pages by default, for all its users together).
    pub fn self_granted(&self, own: DomId, count: usize) -> Result<SelfGrantedBuffer, GrantError> {
        let shared = self.share_with_notify(own, count, true, None)?;
        Ok(SelfGrantedBuffer { map: shared.map, refs: shared.refs, own })
    }
}

/// Pages this domain granted to itself, mapped once in this process.
///
/// A grant copy that names its local end by one of these references
/// (`GNTCOPY_*_gref` on both ends, with the own domain) leaves Linux's
/// gntdev nothing to pin: a local end given by address costs a
/// `get_user_pages_fast` per segment, 2.5 times the whole copy of 16
/// pages under emulation. No other domain holds a grant of them, so unlike
/// [`LinuxSharedGrants`] they are this process's plain memory, seen as a
/// slice; Xen writes them only inside a copy this process asks for, while
/// [`CopyMemory::bytes_mut`]'s borrow rules out any other reference.
#[derive(Debug)]
pub struct SelfGrantedBuffer {
    map: DeviceMapping,
    refs: Vec<GrantRef>,
    own: DomId,
}

impl CopyMemory for SelfGrantedBuffer {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `map` is a live, readable mapping of `len()` bytes owned
        // by `self` (page-aligned, non-null as non-empty: `share_with_notify`
        // refuses zero pages). Only this domain is granted the pages and
        // only this mapping maps them in this process; Xen writes them
        // only in a copy asked for through `bytes_mut`'s exclusive borrow,
        // which cannot overlap this shared one.
        unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr(), self.map.len()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        debug_assert!(self.map.is_writable());
        // SAFETY: as in `bytes`; the mapping is writable (PROT_WRITE, as
        // `self_granted` shares writable), and `&mut self` makes this the
        // only reference into it for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.map.len()) }
    }

    fn own_grants(&self) -> Option<(DomId, &[GrantRef])> {
        Some((self.own, &self.refs))
    }
}

impl GrantShare for LinuxGntalloc {
    type Shared = LinuxSharedGrants;

    fn share(&self, domid: DomId, count: usize, writable: bool) -> Result<LinuxSharedGrants, GrantError> {
        self.share_with_notify(domid, count, writable, None)
    }

    /// Unmaps the pages. Linux ends foreign access at once if the other
    /// side no longer maps them, and otherwise keeps the pages out of use
    /// until it does (`gnttab_end_foreign_access`'s deferred release), so
    /// this never reports [`GrantError::InUse`].
    fn end_access(&self, shared: LinuxSharedGrants) -> Result<(), GrantError> {
        drop(shared);
        Ok(())
    }
}

/// Pages granted through [`LinuxGntalloc`], mapped here. Dropping them
/// unmaps them and ends the grants (see [`GrantShare::end_access`]).
#[derive(Debug)]
pub struct LinuxSharedGrants {
    map: DeviceMapping,
    refs: Vec<GrantRef>,
    domid: DomId,
}

impl LinuxSharedGrants {
    /// The domain the pages are granted to.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

impl SharedGrants for LinuxSharedGrants {
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
        if std::path::Path::new(LinuxGntalloc::PATH).exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = LinuxGntalloc::open().unwrap_err();

        assert!(matches!(err, OpenError::NotFound { path: "/dev/xen/gntalloc", driver: "xen-gntalloc" }), "{err:?}");
    }

    #[test]
    fn notify_actions_match_the_header() {
        let n = UnmapNotify { offset: 0, clear_byte: true, port: Some(3) };
        assert_eq!(n.action(), 3);
        assert_eq!(UnmapNotify { port: None, ..n }.action(), 1);
    }
}
