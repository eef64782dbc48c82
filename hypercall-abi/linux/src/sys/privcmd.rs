//! `/dev/xen/privcmd`: include/uapi/xen/privcmd.h.
//!
//! Hypercalls from user space, and mappings of other domains' memory into
//! a range first `mmap`ped from the privcmd fd.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::BorrowedFd;

use super::{ioc, ioctl, IOC_NONE};

/// Mirrors `struct privcmd_hypercall { __u64 op; __u64 arg[5]; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivcmdHypercall {
    /// The hypercall number (`__HYPERVISOR_*`).
    pub op: u64,
    /// Its arguments.
    pub arg: [u64; 5],
}
const _: () = assert!(size_of::<PrivcmdHypercall>() == 48);
const _: () = assert!(offset_of!(PrivcmdHypercall, arg) == 8);

/// Mirrors `struct privcmd_mmap_entry { __u64 va; __u64 mfn; __u64 npages; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivcmdMmapEntry {
    /// Virtual address in the privcmd mapping.
    pub va: u64,
    /// First frame (a GFN, despite the name).
    pub mfn: u64,
    /// Number of pages.
    pub npages: u64,
}
const _: () = assert!(size_of::<PrivcmdMmapEntry>() == 24);

/// Mirrors `struct privcmd_mmap { int num; domid_t dom; struct privcmd_mmap_entry *entry; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdMmap {
    /// Number of entries.
    pub num: libc::c_int,
    /// The target domain.
    pub dom: u16,
    /// The entries.
    pub entry: *mut PrivcmdMmapEntry,
}
const _: () = assert!(size_of::<PrivcmdMmap>() == 16);
const _: () = assert!(offset_of!(PrivcmdMmap, dom) == 4);
const _: () = assert!(offset_of!(PrivcmdMmap, entry) == 8);

/// Mirrors `struct privcmd_mmapbatch { int num; domid_t dom; __u64 addr; xen_pfn_t *arr; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdMmapbatch {
    /// Number of pages.
    pub num: libc::c_int,
    /// The target domain.
    pub dom: u16,
    /// Start of the privcmd mapping.
    pub addr: u64,
    /// Frames; failed ones are or'ed with `PRIVCMD_MMAPBATCH_*_ERROR`.
    pub arr: *mut u64,
}
const _: () = assert!(size_of::<PrivcmdMmapbatch>() == 24);
const _: () = assert!(offset_of!(PrivcmdMmapbatch, addr) == 8);
const _: () = assert!(offset_of!(PrivcmdMmapbatch, arr) == 16);

/// Mirrors `struct privcmd_mmapbatch_v2 { unsigned int num; domid_t dom;
/// __u64 addr; const xen_pfn_t *arr; int *err; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdMmapbatchV2 {
    /// Number of pages.
    pub num: u32,
    /// The target domain.
    pub dom: u16,
    /// Start of the privcmd mapping.
    pub addr: u64,
    /// Frames to map, one per page.
    pub arr: *const u64,
    /// OUT: per page, 0 or a negative errno.
    pub err: *mut libc::c_int,
}
const _: () = assert!(size_of::<PrivcmdMmapbatchV2>() == 32);
const _: () = assert!(offset_of!(PrivcmdMmapbatchV2, dom) == 4);
const _: () = assert!(offset_of!(PrivcmdMmapbatchV2, addr) == 8);
const _: () = assert!(offset_of!(PrivcmdMmapbatchV2, arr) == 16);
const _: () = assert!(offset_of!(PrivcmdMmapbatchV2, err) == 24);

/// Mirrors `struct privcmd_dm_op_buf { void *uptr; size_t size; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdDmOpBuf {
    /// The buffer.
    pub uptr: *mut libc::c_void,
    /// Its size.
    pub size: usize,
}
const _: () = assert!(size_of::<PrivcmdDmOpBuf>() == 16);

/// Mirrors `struct privcmd_dm_op { domid_t dom; __u16 num; const struct privcmd_dm_op_buf *ubufs; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdDmOp {
    /// The target domain.
    pub dom: u16,
    /// Number of buffers.
    pub num: u16,
    /// The buffers.
    pub ubufs: *const PrivcmdDmOpBuf,
}
const _: () = assert!(size_of::<PrivcmdDmOp>() == 16);
const _: () = assert!(offset_of!(PrivcmdDmOp, ubufs) == 8);

/// Mirrors `struct privcmd_mmap_resource { domid_t dom; __u32 type;
/// __u32 id; __u32 idx; __u64 num; __u64 addr; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivcmdMmapResource {
    /// The domain owning the resource.
    pub dom: u16,
    /// `XENMEM_resource_*`.
    pub type_: u32,
    /// Resource id (e.g. the ioreq server).
    pub id: u32,
    /// First frame of the resource to map.
    pub idx: u32,
    /// Frames to map (IN), or the resource's size when `addr` is 0 (OUT).
    pub num: u64,
    /// Start of the privcmd mapping, or 0 to query the size.
    pub addr: u64,
}
const _: () = assert!(size_of::<PrivcmdMmapResource>() == 32);
const _: () = assert!(offset_of!(PrivcmdMmapResource, type_) == 4);
const _: () = assert!(offset_of!(PrivcmdMmapResource, id) == 8);
const _: () = assert!(offset_of!(PrivcmdMmapResource, idx) == 12);
const _: () = assert!(offset_of!(PrivcmdMmapResource, num) == 16);
const _: () = assert!(offset_of!(PrivcmdMmapResource, addr) == 24);

/// `PRIVCMD_MMAPBATCH_MFN_ERROR`: or'ed into a frame that failed (v1).
pub const PRIVCMD_MMAPBATCH_MFN_ERROR: u32 = 0xf000_0000;
/// `PRIVCMD_MMAPBATCH_PAGED_ERROR`: or'ed into a frame that is paged out (v1).
pub const PRIVCMD_MMAPBATCH_PAGED_ERROR: u32 = 0x8000_0000;

/// `IOCTL_PRIVCMD_HYPERCALL`.
pub const IOCTL_PRIVCMD_HYPERCALL: u32 = ioc(IOC_NONE, b'P', 0, size_of::<PrivcmdHypercall>());
/// `IOCTL_PRIVCMD_MMAP`.
pub const IOCTL_PRIVCMD_MMAP: u32 = ioc(IOC_NONE, b'P', 2, size_of::<PrivcmdMmap>());
/// `IOCTL_PRIVCMD_MMAPBATCH`.
pub const IOCTL_PRIVCMD_MMAPBATCH: u32 = ioc(IOC_NONE, b'P', 3, size_of::<PrivcmdMmapbatch>());
/// `IOCTL_PRIVCMD_MMAPBATCH_V2`.
pub const IOCTL_PRIVCMD_MMAPBATCH_V2: u32 = ioc(IOC_NONE, b'P', 4, size_of::<PrivcmdMmapbatchV2>());
/// `IOCTL_PRIVCMD_DM_OP`.
pub const IOCTL_PRIVCMD_DM_OP: u32 = ioc(IOC_NONE, b'P', 5, size_of::<PrivcmdDmOp>());
/// `IOCTL_PRIVCMD_RESTRICT`: its argument is a bare `domid_t`.
pub const IOCTL_PRIVCMD_RESTRICT: u32 = ioc(IOC_NONE, b'P', 6, size_of::<u16>());
/// `IOCTL_PRIVCMD_MMAP_RESOURCE`.
pub const IOCTL_PRIVCMD_MMAP_RESOURCE: u32 = ioc(IOC_NONE, b'P', 7, size_of::<PrivcmdMmapResource>());

/// `IOCTL_PRIVCMD_HYPERCALL`: returns the hypercall's non-negative result;
/// a negative one comes back as the error (`-errno`).
///
/// # Safety
/// `fd` must be an open `/dev/xen/privcmd`, and `args` must be what
/// hypercall `op` expects: Xen reads and writes the guest memory the
/// arguments point to, which must be valid, and should be hypercall-safe
/// (see [`crate::privcmd::HypercallBuffer`]).
pub unsafe fn hypercall(fd: BorrowedFd<'_>, op: u64, args: [u64; 5]) -> io::Result<libc::c_int> {
    let mut arg = PrivcmdHypercall { op, arg: args };
    // SAFETY: fd is the privcmd device (caller), which reads one
    // `privcmd_hypercall`; what Xen then does with the arguments is the
    // caller's contract.
    unsafe { ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &mut arg) }
}

/// `IOCTL_PRIVCMD_MMAPBATCH_V2`: maps frame `gfns[i]` of `dom` at page `i`
/// of the privcmd mapping at `addr`, writing 0 or `-errno` to `err[i]`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/privcmd` and `addr` the start of a
/// mapping of it, of at least `gfns.len()` pages, not yet populated and not
/// accessed through references during the call.
pub unsafe fn mmapbatch_v2(
    fd: BorrowedFd<'_>,
    dom: u16,
    addr: u64,
    gfns: &[u64],
    err: &mut [libc::c_int],
) -> io::Result<()> {
    if gfns.len() != err.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "one error slot per frame is needed"));
    }
    let num = u32::try_from(gfns.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut arg = PrivcmdMmapbatchV2 { num, dom, addr, arr: gfns.as_ptr(), err: err.as_mut_ptr() };
    // SAFETY: fd is the privcmd device and addr one of its mappings large
    // enough (caller); the kernel reads `num` frames from `gfns` and writes
    // `num` ints to `err`, both sized `num` (checked above).
    unsafe { ioctl(fd, IOCTL_PRIVCMD_MMAPBATCH_V2, &mut arg) }.map(drop)
}

/// `IOCTL_PRIVCMD_MMAP_RESOURCE`: maps `num` frames of a resource at
/// `addr`, or with `addr == 0` and `num == 0` returns the resource's size
/// in frames.
///
/// # Safety
/// `fd` must be an open `/dev/xen/privcmd`; a non-zero `addr` must be the
/// start of a mapping of it of at least `num` pages, not yet populated.
pub unsafe fn mmap_resource(
    fd: BorrowedFd<'_>,
    dom: u16,
    type_: u32,
    id: u32,
    idx: u32,
    num: u64,
    addr: u64,
) -> io::Result<u64> {
    let mut arg = PrivcmdMmapResource { dom, type_, id, idx, num, addr };
    // SAFETY: fd is the privcmd device and addr a suitable mapping or 0
    // (caller); the kernel reads and writes back one `privcmd_mmap_resource`.
    unsafe { ioctl(fd, IOCTL_PRIVCMD_MMAP_RESOURCE, &mut arg) }?;
    Ok(arg.num)
}

/// `IOCTL_PRIVCMD_RESTRICT`: limits this fd to hypercalls about `domid`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/privcmd`.
pub unsafe fn restrict(fd: BorrowedFd<'_>, domid: u16) -> io::Result<()> {
    let mut arg = domid;
    // SAFETY: fd is the privcmd device (caller), which reads one `domid_t`.
    unsafe { ioctl(fd, IOCTL_PRIVCMD_RESTRICT, &mut arg) }.map(drop)
}
