//! `/dev/xen/gntdev`: include/uapi/xen/gntdev.h.
//!
//! Mapping grants is two steps: `IOCTL_GNTDEV_MAP_GRANT_REF` reserves an
//! mmap offset (`index`) for a list of references, and `mmap(fd, index)`
//! maps them (this is when Xen is asked, and when a bad reference fails).
//! Unmapping is `munmap` then `IOCTL_GNTDEV_UNMAP_GRANT_REF`.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::BorrowedFd;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{ioc, ioctl, IOC_NONE};

/// Mirrors `struct ioctl_gntdev_grant_ref { __u32 domid; __u32 ref; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevGrantRef {
    /// The granting domain.
    pub domid: u32,
    /// The grant reference.
    pub ref_: u32,
}
const _: () = assert!(size_of::<IoctlGntdevGrantRef>() == 8);
const _: () = assert!(offset_of!(IoctlGntdevGrantRef, ref_) == 4);

/// Mirrors `struct ioctl_gntdev_map_grant_ref { __u32 count; __u32 pad;
/// __u64 index; struct ioctl_gntdev_grant_ref refs[1]; }`.
///
/// Variable-length: `refs` really has `count` entries; see [`map_grant_ref`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevMapGrantRef {
    /// IN: how many references.
    pub count: u32,
    /// Padding.
    pub pad: u32,
    /// OUT: the mmap offset reserved for them.
    pub index: u64,
    /// IN: the first reference; the others follow.
    pub refs: [IoctlGntdevGrantRef; 1],
}
const _: () = assert!(size_of::<IoctlGntdevMapGrantRef>() == 24);
const _: () = assert!(offset_of!(IoctlGntdevMapGrantRef, index) == 8);
const _: () = assert!(offset_of!(IoctlGntdevMapGrantRef, refs) == 16);

/// Mirrors `struct ioctl_gntdev_unmap_grant_ref { __u64 index; __u32 count; __u32 pad; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevUnmapGrantRef {
    /// The offset returned by the map operation.
    pub index: u64,
    /// How many pages.
    pub count: u32,
    /// Padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<IoctlGntdevUnmapGrantRef>() == 16);
const _: () = assert!(offset_of!(IoctlGntdevUnmapGrantRef, count) == 8);

/// Mirrors `struct ioctl_gntdev_get_offset_for_vaddr { __u64 vaddr;
/// __u64 offset; __u32 count; __u32 pad; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevGetOffsetForVaddr {
    /// IN: the address of the first mapped page.
    pub vaddr: u64,
    /// OUT: the offset used to map it.
    pub offset: u64,
    /// OUT: how many pages that mapping has.
    pub count: u32,
    /// Padding.
    pub pad: u32,
}
const _: () = assert!(size_of::<IoctlGntdevGetOffsetForVaddr>() == 24);
const _: () = assert!(offset_of!(IoctlGntdevGetOffsetForVaddr, offset) == 8);
const _: () = assert!(offset_of!(IoctlGntdevGetOffsetForVaddr, count) == 16);

/// Mirrors `struct ioctl_gntdev_set_max_grants { __u32 count; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevSetMaxGrants {
    /// The most grants this fd may map at once.
    pub count: u32,
}
const _: () = assert!(size_of::<IoctlGntdevSetMaxGrants>() == 4);

/// Mirrors `struct ioctl_gntdev_unmap_notify { __u64 index; __u32 action; __u32 event_channel_port; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntdevUnmapNotify {
    /// The mmap offset of the byte to clear (or of any byte of the page).
    pub index: u64,
    /// `UNMAP_NOTIFY_*`.
    pub action: u32,
    /// The port to notify, with `UNMAP_NOTIFY_SEND_EVENT`.
    pub event_channel_port: u32,
}
const _: () = assert!(size_of::<IoctlGntdevUnmapNotify>() == 16);
const _: () = assert!(offset_of!(IoctlGntdevUnmapNotify, action) == 8);
const _: () = assert!(offset_of!(IoctlGntdevUnmapNotify, event_channel_port) == 12);

/// Mirrors the anonymous `foreign` member of `gntdev_grant_copy_segment`'s
/// unions: `struct { grant_ref_t ref; __u16 offset; domid_t domid; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GntdevGrantCopyForeign {
    /// The grant reference.
    pub ref_: u32,
    /// Byte offset within the granted page.
    pub offset: u16,
    /// The granting domain.
    pub domid: u16,
}
const _: () = assert!(size_of::<GntdevGrantCopyForeign>() == 8);
const _: () = assert!(offset_of!(GntdevGrantCopyForeign, offset) == 4);
const _: () = assert!(offset_of!(GntdevGrantCopyForeign, domid) == 6);

/// Mirrors the unions `source` and `dest` of `struct gntdev_grant_copy_segment`:
/// `union { void *virt; struct { ... } foreign; }`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union GntdevGrantCopyPtr {
    /// A local address (without `GNTCOPY_*_gref`).
    pub virt: *mut libc::c_void,
    /// A grant (with `GNTCOPY_source_gref` / `GNTCOPY_dest_gref`).
    pub foreign: GntdevGrantCopyForeign,
}
const _: () = assert!(size_of::<GntdevGrantCopyPtr>() == 8);

impl std::fmt::Debug for GntdevGrantCopyPtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which member is live depends on the segment's flags.
        f.write_str("GntdevGrantCopyPtr { .. }")
    }
}

/// Mirrors `struct gntdev_grant_copy_segment { union {...} source, dest;
/// __u16 len; __u16 flags; __s16 status; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GntdevGrantCopySegment {
    /// Where the bytes come from.
    pub source: GntdevGrantCopyPtr,
    /// Where they go.
    pub dest: GntdevGrantCopyPtr,
    /// How many bytes.
    pub len: u16,
    /// `GNTCOPY_*`: which of `source`/`dest` are grants.
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
}
const _: () = assert!(size_of::<GntdevGrantCopySegment>() == 24);
const _: () = assert!(offset_of!(GntdevGrantCopySegment, dest) == 8);
const _: () = assert!(offset_of!(GntdevGrantCopySegment, len) == 16);
const _: () = assert!(offset_of!(GntdevGrantCopySegment, flags) == 18);
const _: () = assert!(offset_of!(GntdevGrantCopySegment, status) == 20);

/// Mirrors `struct ioctl_gntdev_grant_copy { unsigned int count;
/// struct gntdev_grant_copy_segment *segments; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IoctlGntdevGrantCopy {
    /// How many segments.
    pub count: u32,
    /// The segments; their `status` is written back.
    pub segments: *mut GntdevGrantCopySegment,
}
const _: () = assert!(size_of::<IoctlGntdevGrantCopy>() == 16);
const _: () = assert!(offset_of!(IoctlGntdevGrantCopy, segments) == 8);

/// `UNMAP_NOTIFY_CLEAR_BYTE`: on unmap, zero the byte at `index`.
pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// `UNMAP_NOTIFY_SEND_EVENT`: on unmap, notify `event_channel_port`.
pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

/// `IOCTL_GNTDEV_MAP_GRANT_REF`.
pub const IOCTL_GNTDEV_MAP_GRANT_REF: u32 = ioc(IOC_NONE, b'G', 0, size_of::<IoctlGntdevMapGrantRef>());
/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`.
pub const IOCTL_GNTDEV_UNMAP_GRANT_REF: u32 = ioc(IOC_NONE, b'G', 1, size_of::<IoctlGntdevUnmapGrantRef>());
/// `IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR`.
pub const IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR: u32 = ioc(IOC_NONE, b'G', 2, size_of::<IoctlGntdevGetOffsetForVaddr>());
/// `IOCTL_GNTDEV_SET_MAX_GRANTS` (a no-op since Linux 5.x).
pub const IOCTL_GNTDEV_SET_MAX_GRANTS: u32 = ioc(IOC_NONE, b'G', 3, size_of::<IoctlGntdevSetMaxGrants>());
/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTDEV_SET_UNMAP_NOTIFY: u32 = ioc(IOC_NONE, b'G', 7, size_of::<IoctlGntdevUnmapNotify>());
/// `IOCTL_GNTDEV_GRANT_COPY`.
pub const IOCTL_GNTDEV_GRANT_COPY: u32 = ioc(IOC_NONE, b'G', 8, size_of::<IoctlGntdevGrantCopy>());

/// Bytes of the variable-length `ioctl_gntdev_map_grant_ref` for `count`
/// references; never less than the fixed part the kernel copies first.
pub fn map_grant_ref_len(count: usize) -> Option<usize> {
    let refs = count.checked_mul(size_of::<IoctlGntdevGrantRef>())?;
    Some(offset_of!(IoctlGntdevMapGrantRef, refs).checked_add(refs)?.max(size_of::<IoctlGntdevMapGrantRef>()))
}

/// `IOCTL_GNTDEV_MAP_GRANT_REF`: reserves an mmap offset for `refs`, all
/// of domain `domid`, and returns it.
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntdev`.
pub unsafe fn map_grant_ref(fd: BorrowedFd<'_>, domid: u16, refs: &[u32]) -> io::Result<u64> {
    let count = u32::try_from(refs.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let len = map_grant_ref_len(refs.len()).ok_or_else(|| io::Error::from_raw_os_error(libc::E2BIG))?;
    // u64 words keep the buffer 8-byte aligned, as the structure is.
    let mut buf = vec![0u64; len.div_ceil(8)];
    let bytes = buf.as_mut_bytes();
    let too_small = || io::Error::new(io::ErrorKind::InvalidInput, "gntdev request buffer too small");
    IoctlGntdevMapGrantRef { count, ..Default::default() }.write_to_prefix(bytes).map_err(|_| too_small())?;
    let refs_at = offset_of!(IoctlGntdevMapGrantRef, refs);
    for (slot, &gref) in bytes[refs_at..].chunks_exact_mut(size_of::<IoctlGntdevGrantRef>()).zip(refs) {
        slot.copy_from_slice(IoctlGntdevGrantRef { domid: u32::from(domid), ref_: gref }.as_bytes());
    }
    // SAFETY: fd is the gntdev device (caller). It reads the fixed part and
    // `count` grant refs after it, and writes the fixed part back: `buf`
    // holds `map_grant_ref_len(count)` bytes, is aligned for the structure
    // and is exclusively ours for the call.
    unsafe { ioctl(fd, IOCTL_GNTDEV_MAP_GRANT_REF, buf.as_mut_ptr()) }?;
    let (reply, _) = IoctlGntdevMapGrantRef::read_from_prefix(buf.as_bytes()).map_err(|_| too_small())?;
    Ok(reply.index)
}

/// `IOCTL_GNTDEV_UNMAP_GRANT_REF`: releases the offset `index` of `count`
/// pages (after they were `munmap`ped).
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntdev`.
pub unsafe fn unmap_grant_ref(fd: BorrowedFd<'_>, index: u64, count: u32) -> io::Result<()> {
    let mut arg = IoctlGntdevUnmapGrantRef { index, count, pad: 0 };
    // SAFETY: fd is the gntdev device (caller), which reads one
    // `ioctl_gntdev_unmap_grant_ref` from `arg`.
    unsafe { ioctl(fd, IOCTL_GNTDEV_UNMAP_GRANT_REF, &mut arg) }.map(drop)
}

/// `IOCTL_GNTDEV_SET_UNMAP_NOTIFY`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntdev`.
pub unsafe fn set_unmap_notify(fd: BorrowedFd<'_>, index: u64, action: u32, port: u32) -> io::Result<()> {
    let mut arg = IoctlGntdevUnmapNotify { index, action, event_channel_port: port };
    // SAFETY: fd is the gntdev device (caller), which reads one
    // `ioctl_gntdev_unmap_notify` from `arg`.
    unsafe { ioctl(fd, IOCTL_GNTDEV_SET_UNMAP_NOTIFY, &mut arg) }.map(drop)
}

/// `IOCTL_GNTDEV_GRANT_COPY`: performs the copies; each segment's `status`
/// is written back.
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntdev`, and every `virt` address of a
/// segment (the member without its `GNTCOPY_*_gref` flag) must point to
/// `len` bytes valid for reads (source) or for writes and not otherwise
/// accessed during the call (destination).
pub unsafe fn grant_copy(fd: BorrowedFd<'_>, segments: &mut [GntdevGrantCopySegment]) -> io::Result<()> {
    let count = u32::try_from(segments.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut arg = IoctlGntdevGrantCopy { count, segments: segments.as_mut_ptr() };
    // SAFETY: fd is the gntdev device (caller). It reads `arg`, reads the
    // `count` segments and writes their `status` (the slice is exclusively
    // borrowed), and copies through the segments' local addresses, which
    // the caller guarantees.
    unsafe { ioctl(fd, IOCTL_GNTDEV_GRANT_COPY, &mut arg) }.map(drop)
}
