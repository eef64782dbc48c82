//! `/dev/xen/gntalloc`: include/uapi/xen/gntalloc.h.
//!
//! Allocating grants returns an mmap offset (`index`); the pages are then
//! mapped with `mmap(fd, index)`. Deallocating the references only drops
//! them from the fd: the pages and grants live until they are unmapped.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::BorrowedFd;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{ioc, ioctl, IOC_NONE};

/// Mirrors `struct ioctl_gntalloc_alloc_gref` of include/uapi/xen/gntalloc.h:
/// `{ __u16 domid; __u16 flags; __u32 count; __u64 index; __u32 gref_ids[1]; }`.
///
/// The C structure is variable-length: `gref_ids` really has `count`
/// entries. This is its fixed part (with the one declared entry and the
/// tail padding), which is what the ioctl number's size encodes; see
/// [`alloc_gref`] for the whole buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntallocAllocGref {
    /// IN: the domain to grant the pages to.
    pub domid: u16,
    /// IN: `GNTALLOC_FLAG_*`.
    pub flags: u16,
    /// IN: how many pages.
    pub count: u32,
    /// OUT: the mmap offset of the pages.
    pub index: u64,
    /// OUT: the first grant reference; the others follow.
    pub gref_ids: [u32; 1],
    /// Tail padding (implicit in C).
    pub _pad: u32,
}
const _: () = assert!(size_of::<IoctlGntallocAllocGref>() == 24);
const _: () = assert!(offset_of!(IoctlGntallocAllocGref, flags) == 2);
const _: () = assert!(offset_of!(IoctlGntallocAllocGref, count) == 4);
const _: () = assert!(offset_of!(IoctlGntallocAllocGref, index) == 8);
const _: () = assert!(offset_of!(IoctlGntallocAllocGref, gref_ids) == 16);

/// Mirrors `struct ioctl_gntalloc_dealloc_gref { __u64 index; __u32 count; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntallocDeallocGref {
    /// The offset returned by the allocation.
    pub index: u64,
    /// How many references.
    pub count: u32,
    /// Tail padding (implicit in C).
    pub _pad: u32,
}
const _: () = assert!(size_of::<IoctlGntallocDeallocGref>() == 16);
const _: () = assert!(offset_of!(IoctlGntallocDeallocGref, count) == 8);

/// Mirrors `struct ioctl_gntalloc_unmap_notify { __u64 index; __u32 action; __u32 event_channel_port; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IoctlGntallocUnmapNotify {
    /// The mmap offset of the byte to clear (or of any byte of the page).
    pub index: u64,
    /// `UNMAP_NOTIFY_*`.
    pub action: u32,
    /// The port to notify, with `UNMAP_NOTIFY_SEND_EVENT`.
    pub event_channel_port: u32,
}
const _: () = assert!(size_of::<IoctlGntallocUnmapNotify>() == 16);
const _: () = assert!(offset_of!(IoctlGntallocUnmapNotify, action) == 8);
const _: () = assert!(offset_of!(IoctlGntallocUnmapNotify, event_channel_port) == 12);

/// `GNTALLOC_FLAG_WRITABLE`: the grantee may write the pages.
pub const GNTALLOC_FLAG_WRITABLE: u16 = 1;
/// `UNMAP_NOTIFY_CLEAR_BYTE`: on unmap, zero the byte at `index`.
pub const UNMAP_NOTIFY_CLEAR_BYTE: u32 = 0x1;
/// `UNMAP_NOTIFY_SEND_EVENT`: on unmap, notify `event_channel_port`.
pub const UNMAP_NOTIFY_SEND_EVENT: u32 = 0x2;

/// `IOCTL_GNTALLOC_ALLOC_GREF`.
pub const IOCTL_GNTALLOC_ALLOC_GREF: u32 = ioc(IOC_NONE, b'G', 5, size_of::<IoctlGntallocAllocGref>());
/// `IOCTL_GNTALLOC_DEALLOC_GREF`.
pub const IOCTL_GNTALLOC_DEALLOC_GREF: u32 = ioc(IOC_NONE, b'G', 6, size_of::<IoctlGntallocDeallocGref>());
/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
pub const IOCTL_GNTALLOC_SET_UNMAP_NOTIFY: u32 = ioc(IOC_NONE, b'G', 7, size_of::<IoctlGntallocUnmapNotify>());

/// Bytes of the variable-length `ioctl_gntalloc_alloc_gref` for `count`
/// references; never less than the fixed part the kernel copies first.
pub fn alloc_gref_len(count: usize) -> Option<usize> {
    let refs = count.checked_mul(size_of::<u32>())?;
    Some(offset_of!(IoctlGntallocAllocGref, gref_ids).checked_add(refs)?.max(size_of::<IoctlGntallocAllocGref>()))
}

/// `IOCTL_GNTALLOC_ALLOC_GREF`: allocates `count` zeroed pages granted to
/// `domid`; returns their mmap offset and grant references.
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntalloc`.
pub unsafe fn alloc_gref(fd: BorrowedFd<'_>, domid: u16, flags: u16, count: u32) -> io::Result<(u64, Vec<u32>)> {
    let n = count as usize;
    let len = alloc_gref_len(n).ok_or_else(|| io::Error::from_raw_os_error(libc::E2BIG))?;
    // u64 words keep the buffer 8-byte aligned, as the structure is.
    let mut buf = vec![0u64; len.div_ceil(8)];
    let request = IoctlGntallocAllocGref { domid, flags, count, ..Default::default() };
    request
        .write_to_prefix(buf.as_mut_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "gntalloc request buffer too small"))?;
    // SAFETY: fd is the gntalloc device (caller). It reads the fixed part
    // and writes it back with `index`, then writes `count` u32s at
    // `gref_ids`: `buf` holds at least `alloc_gref_len(count)` bytes, is
    // aligned for the structure, and is exclusively ours for the call.
    unsafe { ioctl(fd, IOCTL_GNTALLOC_ALLOC_GREF, buf.as_mut_ptr()) }?;
    let bytes = buf.as_bytes();
    let (reply, _) = IoctlGntallocAllocGref::read_from_prefix(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "gntalloc reply buffer too small"))?;
    let start = offset_of!(IoctlGntallocAllocGref, gref_ids);
    let grefs = bytes[start..start + n * size_of::<u32>()]
        .chunks_exact(size_of::<u32>())
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((reply.index, grefs))
}

/// `IOCTL_GNTALLOC_DEALLOC_GREF`: drops `count` references at `index` from
/// the fd (they end when their pages are unmapped).
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntalloc`.
pub unsafe fn dealloc_gref(fd: BorrowedFd<'_>, index: u64, count: u32) -> io::Result<()> {
    let mut arg = IoctlGntallocDeallocGref { index, count, _pad: 0 };
    // SAFETY: fd is the gntalloc device (caller), which reads one
    // `ioctl_gntalloc_dealloc_gref` from `arg`.
    unsafe { ioctl(fd, IOCTL_GNTALLOC_DEALLOC_GREF, &mut arg) }.map(drop)
}

/// `IOCTL_GNTALLOC_SET_UNMAP_NOTIFY`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/gntalloc`.
pub unsafe fn set_unmap_notify(fd: BorrowedFd<'_>, index: u64, action: u32, port: u32) -> io::Result<()> {
    let mut arg = IoctlGntallocUnmapNotify { index, action, event_channel_port: port };
    // SAFETY: fd is the gntalloc device (caller), which reads one
    // `ioctl_gntalloc_unmap_notify` from `arg`.
    unsafe { ioctl(fd, IOCTL_GNTALLOC_SET_UNMAP_NOTIFY, &mut arg) }.map(drop)
}
