//! Grant tables (`xen/grant_table.h`): version 1 grant entries, the
//! `GNTTABOP_*` sub-operations of `__HYPERVISOR_grant_table_op` and their
//! argument structures, and the `GNTST_*` status codes.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, GuestHandle, XenPfn};
use super::{DomId, GrantRef};

/// A handle for a grant mapping, returned by `GNTTABOP_map_grant_ref`
/// (`grant_handle_t`).
pub type GrantHandle = u32;

/// `GNTTAB_NR_RESERVED_ENTRIES`: grant references below this are reserved
/// for the toolstack.
pub const GNTTAB_NR_RESERVED_ENTRIES: GrantRef = 8;
/// `GNTTAB_RESERVED_CONSOLE`: the grant the toolstack sets up for the PV
/// console ring page.
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// `GNTTAB_RESERVED_XENSTORE`: the grant the toolstack sets up for the
/// xenstore ring page.
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

/// `GTF_invalid`: the entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_accept_transfer`: `domid` may transfer a page into `frame`.
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
/// `GTF_transitive`: the entry forwards another domain's grant (v2 only).
pub const GTF_TRANSITIVE: u16 = 3;
/// `GTF_type_mask`: the bits of `flags` that hold the entry type.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: set by Xen while the grantee has the frame mapped or is
/// copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: set by Xen while the grantee has the frame mapped
/// writable or is copying to it.
pub const GTF_WRITING: u16 = 1 << 4;
/// `GTF_PWT`: map with write-through caching.
pub const GTF_PWT: u16 = 1 << 5;
/// `GTF_PCD`: map with caching disabled.
pub const GTF_PCD: u16 = 1 << 6;
/// `GTF_PAT`: map with the PAT bit set.
pub const GTF_PAT: u16 = 1 << 7;
/// `GTF_sub_page`: only part of the frame is granted (v2 only).
pub const GTF_SUB_PAGE: u16 = 1 << 8;
/// `GTF_transfer_committed`: Xen has committed to a transfer into this
/// entry (only for [`GrantEntryType::AcceptTransfer`]).
pub const GTF_TRANSFER_COMMITTED: u16 = 1 << 2;
/// `GTF_transfer_completed`: a transfer into this entry finished and
/// `frame` holds the new frame (only for [`GrantEntryType::AcceptTransfer`]).
pub const GTF_TRANSFER_COMPLETED: u16 = 1 << 3;

/// The type held in the low two bits of a grant entry's `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum GrantEntryType {
    /// `GTF_invalid`.
    Invalid = GTF_INVALID,
    /// `GTF_permit_access`.
    PermitAccess = GTF_PERMIT_ACCESS,
    /// `GTF_accept_transfer`.
    AcceptTransfer = GTF_ACCEPT_TRANSFER,
    /// `GTF_transitive`.
    Transitive = GTF_TRANSITIVE,
}

impl GrantEntryType {
    /// The type encoded in `flags`; every two-bit value is a type.
    pub const fn from_flags(flags: u16) -> Self {
        match flags & GTF_TYPE_MASK {
            GTF_INVALID => Self::Invalid,
            GTF_PERMIT_ACCESS => Self::PermitAccess,
            GTF_ACCEPT_TRANSFER => Self::AcceptTransfer,
            _ => Self::Transitive,
        }
    }
}

bitflags! {
    /// The flag bits of an access grant's `flags` (everything above the
    /// [`GrantEntryType`] bits).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GrantFlags: u16 {
        /// `GTF_readonly`.
        const READONLY = GTF_READONLY;
        /// `GTF_reading` (written by Xen).
        const READING = GTF_READING;
        /// `GTF_writing` (written by Xen).
        const WRITING = GTF_WRITING;
        /// `GTF_PWT`.
        const PWT = GTF_PWT;
        /// `GTF_PCD`.
        const PCD = GTF_PCD;
        /// `GTF_PAT`.
        const PAT = GTF_PAT;
        /// `GTF_sub_page`.
        const SUB_PAGE = GTF_SUB_PAGE;
    }
}

/// A version 1 grant table entry (`grant_entry_v1`): the granting domain
/// writes `domid` and `frame`, then `flags` last.
///
/// Xen updates `flags` concurrently (the `GTF_reading`/`GTF_writing` bits),
/// so a live entry must be accessed through the platform's grant table
/// accessor, not through this struct by reference.
#[doc(alias = "grant_entry_v1")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flag bits.
    pub flags: u16,
    /// The domain being granted access.
    pub domid: DomId,
    /// The granted frame (GFN), or the transferred frame.
    pub frame: u32,
}
const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == 8);
const _: () = assert!(core::mem::offset_of!(GrantEntryV1, flags) == 0);
const _: () = assert!(core::mem::offset_of!(GrantEntryV1, domid) == 2);
const _: () = assert!(core::mem::offset_of!(GrantEntryV1, frame) == 4);

/// Version 1 grant entries in one grant table frame.
pub const GRANT_ENTRIES_V1_PER_FRAME: usize =
    super::PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();

impl GrantEntryV1 {
    /// An entry that lets `domid` access `frame`, read-only if `readonly`.
    pub const fn permit_access(domid: DomId, frame: u32, readonly: bool) -> Self {
        let flags = if readonly {
            GTF_PERMIT_ACCESS | GTF_READONLY
        } else {
            GTF_PERMIT_ACCESS
        };
        Self {
            flags,
            domid,
            frame,
        }
    }

    /// The entry type in `flags`.
    pub const fn entry_type(&self) -> GrantEntryType {
        GrantEntryType::from_flags(self.flags)
    }

    /// The flag bits of `flags`, including any this crate does not name.
    pub const fn access_flags(&self) -> GrantFlags {
        GrantFlags::from_bits_retain(self.flags & !GTF_TYPE_MASK)
    }
}

/// `GNTTABOP_map_grant_ref`: map a foreign grant.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`: unmap a foreign grant.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`: get the frames of a grant table (PV).
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_dump_table`: dump a grant table to Xen's console.
pub const GNTTABOP_DUMP_TABLE: u32 = 3;
/// `GNTTABOP_transfer`: transfer page ownership to another domain.
pub const GNTTABOP_TRANSFER: u32 = 4;
/// `GNTTABOP_copy`: copy between grants and local frames.
pub const GNTTABOP_COPY: u32 = 5;
/// `GNTTABOP_query_size`: current and maximum grant table size.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_unmap_and_replace`: unmap a grant, moving another mapping in.
pub const GNTTABOP_UNMAP_AND_REPLACE: u32 = 7;
/// `GNTTABOP_set_version`: select the grant table version.
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// `GNTTABOP_get_status_frames`: get the v2 status frames.
pub const GNTTABOP_GET_STATUS_FRAMES: u32 = 9;
/// `GNTTABOP_get_version`: query the grant table version.
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// `GNTTABOP_swap_grant_ref`: swap two grant entries.
pub const GNTTABOP_SWAP_GRANT_REF: u32 = 11;
/// `GNTTABOP_cache_flush`: clean or invalidate caches for a grant (Arm).
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

abi_enum! {
    /// A grant table sub-operation (`cmd` of `__HYPERVISOR_grant_table_op`).
    pub enum GnttabOp: u32, "grant table operation" {
        /// See [`GnttabMapGrantRef`].
        MapGrantRef = GNTTABOP_MAP_GRANT_REF => "GNTTABOP_map_grant_ref",
        /// See [`GnttabUnmapGrantRef`].
        UnmapGrantRef = GNTTABOP_UNMAP_GRANT_REF => "GNTTABOP_unmap_grant_ref",
        /// See [`GnttabSetupTable`].
        SetupTable = GNTTABOP_SETUP_TABLE => "GNTTABOP_setup_table",
        /// Dump a table.
        DumpTable = GNTTABOP_DUMP_TABLE => "GNTTABOP_dump_table",
        /// Transfer pages.
        Transfer = GNTTABOP_TRANSFER => "GNTTABOP_transfer",
        /// See [`GnttabCopy`].
        Copy = GNTTABOP_COPY => "GNTTABOP_copy",
        /// See [`GnttabQuerySize`].
        QuerySize = GNTTABOP_QUERY_SIZE => "GNTTABOP_query_size",
        /// Unmap and replace.
        UnmapAndReplace = GNTTABOP_UNMAP_AND_REPLACE => "GNTTABOP_unmap_and_replace",
        /// Set the table version.
        SetVersion = GNTTABOP_SET_VERSION => "GNTTABOP_set_version",
        /// Get v2 status frames.
        GetStatusFrames = GNTTABOP_GET_STATUS_FRAMES => "GNTTABOP_get_status_frames",
        /// Get the table version.
        GetVersion = GNTTABOP_GET_VERSION => "GNTTABOP_get_version",
        /// Swap two entries.
        SwapGrantRef = GNTTABOP_SWAP_GRANT_REF => "GNTTABOP_swap_grant_ref",
        /// Cache maintenance.
        CacheFlush = GNTTABOP_CACHE_FLUSH => "GNTTABOP_cache_flush",
    }
}

/// `GNTMAP_device_map`: map for device (IOMMU) access.
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_host_map`: map for CPU access.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`: map read-only.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTMAP_application_map`: the host mapping is also usable by user space.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `GNTMAP_contains_pte`: `host_addr` is the machine address of a PTE.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;
/// `GNTMAP_guest_avail_mask`: bits left for the guest's own use.
pub const GNTMAP_GUEST_AVAIL_MASK: u32 = !0 << 16;

bitflags! {
    /// The `flags` of [`GnttabMapGrantRef`] (`GNTMAP_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GntMapFlags: u32 {
        /// `GNTMAP_device_map`.
        const DEVICE_MAP = GNTMAP_DEVICE_MAP;
        /// `GNTMAP_host_map`.
        const HOST_MAP = GNTMAP_HOST_MAP;
        /// `GNTMAP_readonly`.
        const READONLY = GNTMAP_READONLY;
        /// `GNTMAP_application_map`.
        const APPLICATION_MAP = GNTMAP_APPLICATION_MAP;
        /// `GNTMAP_contains_pte`.
        const CONTAINS_PTE = GNTMAP_CONTAINS_PTE;
        /// `GNTMAP_guest_avail_mask`: guest-defined bits, passed through.
        const GUEST_AVAIL = GNTMAP_GUEST_AVAIL_MASK;
    }
}

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_bad_handle`.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// `GNTST_bad_virt_addr`.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// `GNTST_bad_dev_addr`.
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// `GNTST_no_device_space`.
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// `GNTST_permission_denied`.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_page`.
pub const GNTST_BAD_PAGE: i16 = -9;
/// `GNTST_bad_copy_arg`.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// `GNTST_address_too_big`.
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// `GNTST_eagain`.
pub const GNTST_EAGAIN: i16 = -12;
/// `GNTST_no_space`.
pub const GNTST_NO_SPACE: i16 = -13;

abi_enum! {
    /// The `status` a grant table operation reports per entry.
    pub enum GrantStatus: i16, "grant table status" {
        /// The operation succeeded.
        Okay = GNTST_OKAY => "GNTST_okay",
        /// An unspecified error.
        GeneralError = GNTST_GENERAL_ERROR => "GNTST_general_error",
        /// The domain id is not recognised.
        BadDomain = GNTST_BAD_DOMAIN => "GNTST_bad_domain",
        /// The grant reference is out of range or not usable for this.
        BadGntref = GNTST_BAD_GNTREF => "GNTST_bad_gntref",
        /// The map handle is not recognised.
        BadHandle = GNTST_BAD_HANDLE => "GNTST_bad_handle",
        /// The virtual address cannot be mapped.
        BadVirtAddr = GNTST_BAD_VIRT_ADDR => "GNTST_bad_virt_addr",
        /// The device address cannot be unmapped.
        BadDevAddr = GNTST_BAD_DEV_ADDR => "GNTST_bad_dev_addr",
        /// The I/O MMU has no free slot.
        NoDeviceSpace = GNTST_NO_DEVICE_SPACE => "GNTST_no_device_space",
        /// The caller lacks the privilege (e.g. read-only grant mapped writable).
        PermissionDenied = GNTST_PERMISSION_DENIED => "GNTST_permission_denied",
        /// The page is not valid for this operation.
        BadPage = GNTST_BAD_PAGE => "GNTST_bad_page",
        /// A copy would cross a page boundary.
        BadCopyArg = GNTST_BAD_COPY_ARG => "GNTST_bad_copy_arg",
        /// A transferred page's address is too large for the receiver.
        AddressTooBig = GNTST_ADDRESS_TOO_BIG => "GNTST_address_too_big",
        /// Not done this time; retry.
        Eagain = GNTST_EAGAIN => "GNTST_eagain",
        /// Out of space for handles or similar.
        NoSpace = GNTST_NO_SPACE => "GNTST_no_space",
    }
}

impl GrantStatus {
    /// A short, human-readable description, for log messages.
    pub const fn description(self) -> &'static str {
        match self {
            Self::Okay => "success",
            Self::GeneralError => "unspecified grant table error",
            Self::BadDomain => "unknown domain id",
            Self::BadGntref => "bad grant reference",
            Self::BadHandle => "bad grant mapping handle",
            Self::BadVirtAddr => "virtual address cannot be used for a grant mapping",
            Self::BadDevAddr => "device address cannot be unmapped",
            Self::NoDeviceSpace => "no free I/O MMU slot",
            Self::PermissionDenied => "grant permission denied",
            Self::BadPage => "page not valid for this grant operation",
            Self::BadCopyArg => "grant copy crosses a page boundary",
            Self::AddressTooBig => "transferred page address too large",
            Self::Eagain => "grant operation not done, try again",
            Self::NoSpace => "out of grant handles or similar space",
        }
    }

    /// `Ok(())` for [`GrantStatus::Okay`], the raw status as a typed error
    /// otherwise (an unknown negative status becomes [`GrantStatus::GeneralError`]).
    pub fn check(raw: i16) -> Result<(), GrantStatus> {
        match Self::try_from(raw) {
            Ok(Self::Okay) => Ok(()),
            Ok(status) => Err(status),
            Err(_) => Err(Self::GeneralError),
        }
    }
}

/// `GNTTABOP_map_grant_ref`: map `dom`'s grant `ref_` at `host_addr`.
#[doc(alias = "gnttab_map_grant_ref")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (a virtual address, or a PTE's machine address with
    /// `GNTMAP_contains_pte`).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`, see [`GntMapFlags`].
    pub flags: u32,
    /// IN: the grant reference (`ref` in C).
    pub ref_: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: `GNTST_*`, see [`GrantStatus`].
    pub status: i16,
    /// OUT: the handle to unmap with.
    pub handle: GrantHandle,
    /// OUT: the bus address, with `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}
const _: () = assert!(core::mem::size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, host_addr) == 0);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, flags) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, ref_) == 12);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, dom) == 16);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, status) == 18);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, handle) == 20);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, dev_bus_addr) == 24);

impl GnttabMapGrantRef {
    /// A request to map `dom`'s grant `gref` at `host_addr`.
    pub const fn new(host_addr: u64, flags: GntMapFlags, gref: GrantRef, dom: DomId) -> Self {
        Self {
            host_addr,
            flags: flags.bits(),
            ref_: gref,
            dom,
            status: 0,
            handle: 0,
            dev_bus_addr: 0,
        }
    }
}

/// `GNTTABOP_unmap_grant_ref`: undo a [`GnttabMapGrantRef`].
#[doc(alias = "gnttab_unmap_grant_ref")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabUnmapGrantRef {
    /// IN: the host address mapped, or 0.
    pub host_addr: u64,
    /// IN: the device address mapped, or 0.
    pub dev_bus_addr: u64,
    /// IN: the handle returned by the map.
    pub handle: GrantHandle,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<GnttabUnmapGrantRef>() == 24);
const _: () = assert!(core::mem::offset_of!(GnttabUnmapGrantRef, host_addr) == 0);
const _: () = assert!(core::mem::offset_of!(GnttabUnmapGrantRef, dev_bus_addr) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabUnmapGrantRef, handle) == 16);
const _: () = assert!(core::mem::offset_of!(GnttabUnmapGrantRef, status) == 20);

/// `GNTTABOP_setup_table`: ask for the frames of `dom`'s grant table.
#[doc(alias = "gnttab_setup_table")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabSetupTable {
    /// IN: the domain (usually `DOMID_SELF`).
    pub dom: DomId,
    /// Padding (implicit in C).
    pub _pad0: [u8; 2],
    /// IN: how many frames to set up.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding (implicit in C).
    pub _pad1: [u8; 6],
    /// IN: where Xen writes `nr_frames` frame numbers ([`XenPfn`]).
    pub frame_list: GuestHandle,
}
const _: () = assert!(core::mem::size_of::<GnttabSetupTable>() == 24);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, dom) == 0);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, nr_frames) == 4);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, status) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabSetupTable, frame_list) == 16);

/// `GNTTABOP_query_size`: the current and maximum number of grant frames.
#[doc(alias = "gnttab_query_size")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabQuerySize {
    /// IN: the domain.
    pub dom: DomId,
    /// Padding (implicit in C).
    pub _pad0: [u8; 2],
    /// OUT: frames in use.
    pub nr_frames: u32,
    /// OUT: the most frames the table may grow to.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding (implicit in C).
    pub _pad1: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<GnttabQuerySize>() == 16);
const _: () = assert!(core::mem::offset_of!(GnttabQuerySize, dom) == 0);
const _: () = assert!(core::mem::offset_of!(GnttabQuerySize, nr_frames) == 4);
const _: () = assert!(core::mem::offset_of!(GnttabQuerySize, max_nr_frames) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabQuerySize, status) == 12);

/// `GNTCOPY_source_gref`: the copy's source is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: the copy's destination is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

bitflags! {
    /// The `flags` of [`GnttabCopy`] (`GNTCOPY_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GntCopyFlags: u16 {
        /// `GNTCOPY_source_gref`.
        const SOURCE_GREF = GNTCOPY_SOURCE_GREF;
        /// `GNTCOPY_dest_gref`.
        const DEST_GREF = GNTCOPY_DEST_GREF;
    }
}

/// One end of a [`GnttabCopy`] (`struct gnttab_copy_ptr`).
///
/// The C union `u` holds a grant reference (with the matching `GNTCOPY_*`
/// flag) or a local frame number (without it); use [`GnttabCopyPtr::gref`]
/// and [`GnttabCopyPtr::frame`] to build one.
#[doc(alias = "gnttab_copy_ptr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabCopyPtr {
    /// The C union of `ref` (a [`GrantRef`]) and `gmfn` (a [`XenPfn`]).
    pub u: u64,
    /// The domain owning the grant or frame.
    pub domid: DomId,
    /// Byte offset within the page.
    pub offset: u16,
    /// Padding (implicit in C).
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<GnttabCopyPtr>() == 16);
const _: () = assert!(core::mem::offset_of!(GnttabCopyPtr, u) == 0);
const _: () = assert!(core::mem::offset_of!(GnttabCopyPtr, domid) == 8);
const _: () = assert!(core::mem::offset_of!(GnttabCopyPtr, offset) == 10);

impl GnttabCopyPtr {
    /// `domid`'s grant `gref`, at byte `offset`.
    pub fn gref(gref: GrantRef, domid: DomId, offset: u16) -> Self {
        let u: u64 = zerocopy::transmute!([gref, 0u32]);
        Self {
            u,
            domid,
            offset,
            _pad: [0; 4],
        }
    }

    /// A frame of `domid` (usually `DOMID_SELF`), at byte `offset`.
    pub const fn frame(gmfn: XenPfn, domid: DomId, offset: u16) -> Self {
        Self {
            u: gmfn,
            domid,
            offset,
            _pad: [0; 4],
        }
    }

    /// The union read as `ref`.
    pub fn as_gref(&self) -> GrantRef {
        let [gref, _]: [u32; 2] = zerocopy::transmute!(self.u);
        gref
    }

    /// The union read as `gmfn`.
    pub const fn as_frame(&self) -> XenPfn {
        self.u
    }
}

/// `GNTTABOP_copy`: copy `len` bytes from `source` to `dest`, either of
/// which may be a grant.
#[doc(alias = "gnttab_copy")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GnttabCopy {
    /// IN: where to copy from.
    pub source: GnttabCopyPtr,
    /// IN: where to copy to.
    pub dest: GnttabCopyPtr,
    /// IN: bytes to copy; neither end may cross a page boundary.
    pub len: u16,
    /// IN: `GNTCOPY_*`, see [`GntCopyFlags`].
    pub flags: u16,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<GnttabCopy>() == 40);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, source) == 0);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, dest) == 16);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, len) == 32);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, flags) == 34);
const _: () = assert!(core::mem::offset_of!(GnttabCopy, status) == 36);

impl GnttabCopy {
    /// A copy of `len` bytes; the `GNTCOPY_*` flags are derived by the caller.
    pub const fn new(
        source: GnttabCopyPtr,
        dest: GnttabCopyPtr,
        len: u16,
        flags: GntCopyFlags,
    ) -> Self {
        Self {
            source,
            dest,
            len,
            flags: flags.bits(),
            status: 0,
            _pad: [0; 2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::UnknownValue;

    #[test]
    fn grant_entry_splits_type_and_flags() {
        let entry = GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS | GTF_READONLY | GTF_READING,
            domid: 1,
            frame: 9,
        };

        assert_eq!(entry.entry_type(), GrantEntryType::PermitAccess);
        assert_eq!(
            entry.access_flags(),
            GrantFlags::READONLY | GrantFlags::READING
        );
    }

    #[test]
    fn permit_access_sets_readonly_only_when_asked() {
        assert_eq!(GrantEntryV1::permit_access(2, 5, true).flags, 0b101);
        assert_eq!(GrantEntryV1::permit_access(2, 5, false).flags, 0b001);
    }

    #[test]
    fn copy_ptr_union_round_trips_both_members() {
        assert_eq!(GnttabCopyPtr::gref(77, 3, 12).as_gref(), 77);
        assert_eq!(
            GnttabCopyPtr::frame(0x1_0000_0001, 3, 0).as_frame(),
            0x1_0000_0001
        );
    }

    #[test]
    fn grant_status_check_maps_unknown_errors_to_general_error() {
        assert_eq!(GrantStatus::check(0), Ok(()));
        assert_eq!(GrantStatus::check(-12), Err(GrantStatus::Eagain));
        assert_eq!(GrantStatus::check(-99), Err(GrantStatus::GeneralError));
        assert_eq!(
            GrantStatus::try_from(1),
            Err(UnknownValue {
                kind: "grant table status",
                value: 1
            })
        );
    }
}
