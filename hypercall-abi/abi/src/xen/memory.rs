//! Memory operations (`xen/memory.h`): the `XENMEM_*` sub-operations of
//! `__HYPERVISOR_memory_op` a toolstack and PV drivers use, and their
//! argument structures.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, GuestHandle, XenPfn, XenUlong};
use super::DomId;

/// `XENMEM_increase_reservation`: give a domain more memory extents.
pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
/// `XENMEM_decrease_reservation`: take memory extents from a domain.
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
/// `XENMEM_maximum_ram_page`: the highest machine frame with RAM.
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
/// `XENMEM_current_reservation`: pages a domain holds (argument: a [`DomId`]).
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
/// `XENMEM_maximum_reservation`: pages a domain may hold (argument: a [`DomId`]).
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
/// `XENMEM_machphys_mfn_list`: frames of the machine-to-phys table.
pub const XENMEM_MACHPHYS_MFN_LIST: u32 = 5;
/// `XENMEM_populate_physmap`: back guest frames with memory.
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
/// `XENMEM_add_to_physmap`: map a Xen-owned page into a guest's physmap.
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// `XENMEM_memory_map`: the caller's pseudo-physical e820 map.
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// `XENMEM_machine_memory_map`: the host's e820 map (dom0).
pub const XENMEM_MACHINE_MEMORY_MAP: u32 = 10;
/// `XENMEM_exchange`: exchange extents for others.
pub const XENMEM_EXCHANGE: u32 = 11;
/// `XENMEM_machphys_mapping`: where the machine-to-phys table is mapped.
pub const XENMEM_MACHPHYS_MAPPING: u32 = 12;
/// `XENMEM_set_memory_map`: set a domain's e820 map (toolstack).
pub const XENMEM_SET_MEMORY_MAP: u32 = 13;
/// `XENMEM_maximum_gpfn`: a domain's highest guest frame (argument: a [`DomId`]).
pub const XENMEM_MAXIMUM_GPFN: u32 = 14;
/// `XENMEM_remove_from_physmap`: unmap a page from a guest's physmap.
pub const XENMEM_REMOVE_FROM_PHYSMAP: u32 = 15;
/// `XENMEM_set_pod_target`: set a populate-on-demand target.
pub const XENMEM_SET_POD_TARGET: u32 = 16;
/// `XENMEM_get_pod_target`: query populate-on-demand state.
pub const XENMEM_GET_POD_TARGET: u32 = 17;
/// `XENMEM_add_to_physmap_batch`: map several pages at once.
pub const XENMEM_ADD_TO_PHYSMAP_BATCH: u32 = 23;
/// `XENMEM_claim_pages`: reserve pages for a domain being built (toolstack only).
pub const XENMEM_CLAIM_PAGES: u32 = 24;
/// `XENMEM_get_vnumainfo`: a guest's virtual NUMA topology.
pub const XENMEM_GET_VNUMAINFO: u32 = 26;
/// `XENMEM_reserved_device_memory_map`: reserved device memory regions
/// (toolstack only).
pub const XENMEM_RESERVED_DEVICE_MEMORY_MAP: u32 = 27;
/// `XENMEM_acquire_resource`: map a domain's resource (grant table, ioreq
/// pages, trace buffers) into the caller.
pub const XENMEM_ACQUIRE_RESOURCE: u32 = 28;

abi_enum! {
    /// A memory sub-operation (`cmd` of `__HYPERVISOR_memory_op`).
    pub enum MemoryOp: u32, "memory operation" {
        /// See [`XenMemoryReservation`].
        IncreaseReservation = XENMEM_INCREASE_RESERVATION => "XENMEM_increase_reservation",
        /// See [`XenMemoryReservation`].
        DecreaseReservation = XENMEM_DECREASE_RESERVATION => "XENMEM_decrease_reservation",
        /// Highest machine frame with RAM.
        MaximumRamPage = XENMEM_MAXIMUM_RAM_PAGE => "XENMEM_maximum_ram_page",
        /// A domain's current page count.
        CurrentReservation = XENMEM_CURRENT_RESERVATION => "XENMEM_current_reservation",
        /// A domain's maximum page count.
        MaximumReservation = XENMEM_MAXIMUM_RESERVATION => "XENMEM_maximum_reservation",
        /// Machine-to-phys table frames.
        MachphysMfnList = XENMEM_MACHPHYS_MFN_LIST => "XENMEM_machphys_mfn_list",
        /// See [`XenMemoryReservation`].
        PopulatePhysmap = XENMEM_POPULATE_PHYSMAP => "XENMEM_populate_physmap",
        /// See [`XenAddToPhysmap`].
        AddToPhysmap = XENMEM_ADD_TO_PHYSMAP => "XENMEM_add_to_physmap",
        /// See [`XenMemoryMap`].
        MemoryMap = XENMEM_MEMORY_MAP => "XENMEM_memory_map",
        /// See [`XenMemoryMap`].
        MachineMemoryMap = XENMEM_MACHINE_MEMORY_MAP => "XENMEM_machine_memory_map",
        /// Exchange extents.
        Exchange = XENMEM_EXCHANGE => "XENMEM_exchange",
        /// Machine-to-phys mapping address.
        MachphysMapping = XENMEM_MACHPHYS_MAPPING => "XENMEM_machphys_mapping",
        /// See [`XenForeignMemoryMap`].
        SetMemoryMap = XENMEM_SET_MEMORY_MAP => "XENMEM_set_memory_map",
        /// A domain's highest guest frame.
        MaximumGpfn = XENMEM_MAXIMUM_GPFN => "XENMEM_maximum_gpfn",
        /// See [`XenRemoveFromPhysmap`].
        RemoveFromPhysmap = XENMEM_REMOVE_FROM_PHYSMAP => "XENMEM_remove_from_physmap",
        /// Set a PoD target.
        SetPodTarget = XENMEM_SET_POD_TARGET => "XENMEM_set_pod_target",
        /// Get a PoD target.
        GetPodTarget = XENMEM_GET_POD_TARGET => "XENMEM_get_pod_target",
        /// Batched add-to-physmap.
        AddToPhysmapBatch = XENMEM_ADD_TO_PHYSMAP_BATCH => "XENMEM_add_to_physmap_batch",
        /// Claim pages.
        ClaimPages = XENMEM_CLAIM_PAGES => "XENMEM_claim_pages",
        /// Virtual NUMA information.
        GetVnumainfo = XENMEM_GET_VNUMAINFO => "XENMEM_get_vnumainfo",
        /// Reserved device memory.
        ReservedDeviceMemoryMap = XENMEM_RESERVED_DEVICE_MEMORY_MAP
            => "XENMEM_reserved_device_memory_map",
        /// See [`XenMemAcquireResource`].
        AcquireResource = XENMEM_ACQUIRE_RESOURCE => "XENMEM_acquire_resource",
    }
}

/// `XENMEMF_populate_on_demand`: populate lazily (`mem_flags`).
pub const XENMEMF_POPULATE_ON_DEMAND: u32 = 1 << 16;
/// `XENMEMF_exact_node_request`: fail rather than fall back to another node.
pub const XENMEMF_EXACT_NODE_REQUEST: u32 = 1 << 17;
/// `XENMEMF_vnode`: the node in `mem_flags` is a virtual node.
pub const XENMEMF_VNODE: u32 = 1 << 18;

/// `XENMEMF_address_bits(bits)`: restrict allocations below `2^bits`.
pub const fn xenmemf_address_bits(bits: u8) -> u32 {
    bits as u32
}

/// `XENMEMF_node(node)`: prefer allocating from NUMA `node`.
pub const fn xenmemf_node(node: u8) -> u32 {
    (node as u32 + 1) << 8
}

/// `XENMEMF_exact_node(node)`: allocate only from NUMA `node`.
pub const fn xenmemf_exact_node(node: u8) -> u32 {
    xenmemf_node(node) | XENMEMF_EXACT_NODE_REQUEST
}

/// The argument of `XENMEM_increase_reservation`,
/// `XENMEM_decrease_reservation` and `XENMEM_populate_physmap`.
#[doc(alias = "xen_memory_reservation")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenMemoryReservation {
    /// IN/OUT: an array of `nr_extents` [`XenPfn`]s (frames to free, or to
    /// populate; allocated frames on return).
    pub extent_start: GuestHandle,
    /// IN: number of extents.
    pub nr_extents: XenUlong,
    /// IN: each extent is `2^extent_order` pages.
    pub extent_order: u32,
    /// IN: `XENMEMF_*` flags.
    pub mem_flags: u32,
    /// IN: the domain (unprivileged callers: only `DOMID_SELF`).
    pub domid: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<XenMemoryReservation>() == 32);
const _: () = assert!(core::mem::offset_of!(XenMemoryReservation, extent_start) == 0);
const _: () = assert!(core::mem::offset_of!(XenMemoryReservation, nr_extents) == 8);
const _: () = assert!(core::mem::offset_of!(XenMemoryReservation, extent_order) == 16);
const _: () = assert!(core::mem::offset_of!(XenMemoryReservation, mem_flags) == 20);
const _: () = assert!(core::mem::offset_of!(XenMemoryReservation, domid) == 24);

impl XenMemoryReservation {
    /// A reservation request for `domid`: `nr_extents` extents of
    /// `2^extent_order` pages each, listed (as [`XenPfn`]s) at
    /// `extent_start`, with `XENMEMF_*` `mem_flags`.
    ///
    /// For `XENMEM_populate_physmap` the list holds the first guest frame
    /// of each extent; Xen backs them with memory and, for a PV domain,
    /// writes back the machine frame it chose for each (what a PV builder
    /// keeps as the guest's p2m). Xen returns the number of extents it
    /// completed, which may be fewer than asked.
    pub const fn new(
        domid: DomId,
        extent_start: GuestHandle,
        nr_extents: XenUlong,
        extent_order: u32,
        mem_flags: u32,
    ) -> Self {
        Self {
            extent_start,
            nr_extents,
            extent_order,
            mem_flags,
            domid,
            _pad: [0; 6],
        }
    }
}

/// The argument of `XENMEM_current_reservation`,
/// `XENMEM_maximum_reservation` and `XENMEM_maximum_gpfn`: the domain
/// asked about (may be [`DOMID_SELF`](super::DOMID_SELF)). Xen returns the
/// answer, in pages or a frame number, as the hypercall's result.
#[doc(alias = "xen_memory_domain")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenMemoryDomain {
    /// IN: the domain.
    pub domid: DomId,
}
const _: () = assert!(core::mem::size_of::<XenMemoryDomain>() == 2);
const _: () = assert!(core::mem::offset_of!(XenMemoryDomain, domid) == 0);

/// `XENMAPSPACE_shared_info`: the shared info page.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`: a grant table frame.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// `XENMAPSPACE_gmfn`: another guest frame of the same domain.
pub const XENMAPSPACE_GMFN: u32 = 2;
/// `XENMAPSPACE_gmfn_range`: a range of guest frames (`add_to_physmap` only).
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
/// `XENMAPSPACE_gmfn_foreign`: a frame of another domain (batch only).
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// `XENMAPSPACE_dev_mmio`: device MMIO (Arm only).
pub const XENMAPSPACE_DEV_MMIO: u32 = 5;
/// `XENMAPIDX_grant_table_status`: OR into `idx` to map a v2 status frame.
pub const XENMAPIDX_GRANT_TABLE_STATUS: XenUlong = 0x8000_0000;

abi_enum! {
    /// The `space` of [`XenAddToPhysmap`]: what `idx` indexes.
    pub enum MapSpace: u32, "physmap space" {
        /// The shared info page.
        SharedInfo = XENMAPSPACE_SHARED_INFO => "XENMAPSPACE_shared_info",
        /// A grant table frame.
        GrantTable = XENMAPSPACE_GRANT_TABLE => "XENMAPSPACE_grant_table",
        /// A guest frame.
        Gmfn = XENMAPSPACE_GMFN => "XENMAPSPACE_gmfn",
        /// A range of guest frames.
        GmfnRange = XENMAPSPACE_GMFN_RANGE => "XENMAPSPACE_gmfn_range",
        /// A foreign frame.
        GmfnForeign = XENMAPSPACE_GMFN_FOREIGN => "XENMAPSPACE_gmfn_foreign",
        /// Device MMIO.
        DevMmio = XENMAPSPACE_DEV_MMIO => "XENMAPSPACE_dev_mmio",
    }
}

/// `XENMEM_add_to_physmap`: make page `idx` of `space` appear at `gpfn`.
#[doc(alias = "xen_add_to_physmap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenAddToPhysmap {
    /// The domain whose physmap changes.
    pub domid: DomId,
    /// Number of pages, for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*`, see [`MapSpace`].
    pub space: u32,
    /// Index into `space`.
    pub idx: XenUlong,
    /// Where the page should appear.
    pub gpfn: XenPfn,
}
const _: () = assert!(core::mem::size_of::<XenAddToPhysmap>() == 24);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, domid) == 0);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, size) == 2);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, space) == 4);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, idx) == 8);
const _: () = assert!(core::mem::offset_of!(XenAddToPhysmap, gpfn) == 16);

/// `XENMEM_remove_from_physmap`: unmap whatever is at `gpfn`.
#[doc(alias = "xen_remove_from_physmap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenRemoveFromPhysmap {
    /// The domain whose physmap changes.
    pub domid: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 6],
    /// The frame to unmap.
    pub gpfn: XenPfn,
}
const _: () = assert!(core::mem::size_of::<XenRemoveFromPhysmap>() == 16);
const _: () = assert!(core::mem::offset_of!(XenRemoveFromPhysmap, domid) == 0);
const _: () = assert!(core::mem::offset_of!(XenRemoveFromPhysmap, gpfn) == 8);

/// `XENMEM_memory_map` / `XENMEM_machine_memory_map`: read an e820 map into
/// `buffer`, an array of [`E820Entry`].
#[doc(alias = "xen_memory_map")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenMemoryMap {
    /// IN: capacity of `buffer` in entries; OUT: entries written.
    pub nr_entries: u32,
    /// Padding (implicit in C).
    pub _pad: [u8; 4],
    /// The buffer.
    pub buffer: GuestHandle,
}
const _: () = assert!(core::mem::size_of::<XenMemoryMap>() == 16);
const _: () = assert!(core::mem::offset_of!(XenMemoryMap, nr_entries) == 0);
const _: () = assert!(core::mem::offset_of!(XenMemoryMap, buffer) == 8);

/// `XENMEM_set_memory_map`: set `domid`'s e820 map.
#[doc(alias = "xen_foreign_memory_map")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenForeignMemoryMap {
    /// The domain.
    pub domid: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 6],
    /// The map.
    pub map: XenMemoryMap,
}
const _: () = assert!(core::mem::size_of::<XenForeignMemoryMap>() == 24);
const _: () = assert!(core::mem::offset_of!(XenForeignMemoryMap, domid) == 0);
const _: () = assert!(core::mem::offset_of!(XenForeignMemoryMap, map) == 8);

impl XenForeignMemoryMap {
    /// `XENMEM_set_memory_map`'s argument: `domid`'s e820 map is the
    /// `nr_entries` [`E820Entry`]s at `buffer` (a PVH guest reads it with
    /// `XENMEM_memory_map`; Xen refuses more than its `E820MAX` entries).
    pub const fn new(domid: DomId, buffer: GuestHandle, nr_entries: u32) -> Self {
        Self {
            domid,
            _pad: [0; 6],
            map: XenMemoryMap {
                nr_entries,
                _pad: [0; 4],
                buffer,
            },
        }
    }
}

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// e820 type: ACPI tables, reclaimable.
pub const E820_ACPI: u32 = 3;
/// e820 type: ACPI non-volatile storage.
pub const E820_NVS: u32 = 4;
/// e820 type: unusable.
pub const E820_UNUSABLE: u32 = 5;

/// One entry of an e820 map, as BIOS `INT 15h, AX=E820h` returns it: 20
/// bytes, packed (Xen's `struct e820entry`; not in the public headers).
#[doc(alias = "e820entry")]
#[repr(C, packed)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_*` type.
    pub kind: u32,
}
const _: () = assert!(core::mem::size_of::<E820Entry>() == 20);
const _: () = assert!(core::mem::offset_of!(E820Entry, addr) == 0);
const _: () = assert!(core::mem::offset_of!(E820Entry, size) == 8);
const _: () = assert!(core::mem::offset_of!(E820Entry, kind) == 16);

/// `XENMEM_resource_ioreq_server`: an ioreq server's pages.
pub const XENMEM_RESOURCE_IOREQ_SERVER: u16 = 0;
/// `XENMEM_resource_grant_table`: a domain's grant table frames.
pub const XENMEM_RESOURCE_GRANT_TABLE: u16 = 1;
/// `XENMEM_resource_vmtrace_buf`: a vCPU's processor trace buffer.
pub const XENMEM_RESOURCE_VMTRACE_BUF: u16 = 2;
/// `XENMEM_resource_grant_table_id_shared`: the shared (entry) frames.
pub const XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED: u32 = 0;
/// `XENMEM_resource_grant_table_id_status`: the v2 status frames.
pub const XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS: u32 = 1;
/// `XENMEM_resource_ioreq_server_frame_bufioreq`: the buffered ioreq page.
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ: u64 = 0;

/// `XENMEM_resource_ioreq_server_frame_ioreq(n)`: the `n`th synchronous
/// ioreq page.
pub const fn xenmem_resource_ioreq_server_frame_ioreq(n: u64) -> u64 {
    1 + n
}

abi_enum! {
    /// The `type` of [`XenMemAcquireResource`].
    pub enum ResourceType: u16, "acquirable resource type" {
        /// An ioreq server.
        IoreqServer = XENMEM_RESOURCE_IOREQ_SERVER => "XENMEM_resource_ioreq_server",
        /// A grant table.
        GrantTable = XENMEM_RESOURCE_GRANT_TABLE => "XENMEM_resource_grant_table",
        /// A trace buffer.
        VmtraceBuf = XENMEM_RESOURCE_VMTRACE_BUF => "XENMEM_resource_vmtrace_buf",
    }
}

/// `XENMEM_acquire_resource`: map `nr_frames` frames of a resource of
/// `domid`, starting at `frame`.
///
/// With `nr_frames == 0` and a null `frame_list`, Xen returns the
/// resource's size in `nr_frames` instead.
#[doc(alias = "xen_mem_acquire_resource")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenMemAcquireResource {
    /// IN: the domain owning the resource.
    pub domid: DomId,
    /// IN: `XENMEM_resource_*`, see [`ResourceType`] (`type` in C).
    pub type_: u16,
    /// IN: type-specific id (ioreq server id, `XENMEM_resource_grant_table_id_*`).
    pub id: u32,
    /// IN/OUT: frames to map, or the resource size when querying.
    pub nr_frames: u32,
    /// Must be zero.
    pub pad: u32,
    /// IN: the first frame of the resource to map.
    pub frame: u64,
    /// IN/OUT: an array of `nr_frames` [`XenPfn`]s.
    pub frame_list: GuestHandle,
}
const _: () = assert!(core::mem::size_of::<XenMemAcquireResource>() == 32);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, domid) == 0);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, type_) == 2);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, id) == 4);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, nr_frames) == 8);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, pad) == 12);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, frame) == 16);
const _: () = assert!(core::mem::offset_of!(XenMemAcquireResource, frame_list) == 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_flags_encode_node_plus_one() {
        assert_eq!(xenmemf_node(0), 0x100);
        assert_eq!(xenmemf_exact_node(2), 0x300 | XENMEMF_EXACT_NODE_REQUEST);
        assert_eq!(xenmemf_address_bits(32), 32);
    }

    #[test]
    fn e820_entry_is_twenty_packed_bytes() {
        let entry = E820Entry {
            addr: 0x1000,
            size: 0x2000,
            kind: E820_RAM,
        };
        let bytes = entry.as_bytes();

        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[16..], &1u32.to_ne_bytes());
    }

    #[test]
    fn populate_physmap_request_is_the_c_header_layout() {
        let reservation = XenMemoryReservation::new(7, 0x7f00_0000_2000, 512, 9, xenmemf_node(1));

        let bytes = reservation.as_bytes();

        assert_eq!(
            &bytes[0..8],
            &0x7f00_0000_2000u64.to_le_bytes(),
            "extent_start"
        );
        assert_eq!(&bytes[8..16], &512u64.to_le_bytes(), "nr_extents");
        assert_eq!(&bytes[16..20], &9u32.to_le_bytes(), "extent_order");
        assert_eq!(&bytes[20..24], &0x200u32.to_le_bytes(), "mem_flags");
        assert_eq!(&bytes[24..26], &7u16.to_le_bytes(), "domid");
    }

    #[test]
    fn set_memory_map_request_is_the_c_header_layout() {
        let map = XenForeignMemoryMap::new(3, 0x5000, 4);

        let bytes = map.as_bytes();

        assert_eq!(&bytes[0..2], &3u16.to_le_bytes(), "domid");
        assert_eq!(&bytes[8..12], &4u32.to_le_bytes(), "map.nr_entries");
        assert_eq!(&bytes[16..24], &0x5000u64.to_le_bytes(), "map.buffer");
        assert_eq!(XenMemoryDomain { domid: 3 }.as_bytes(), &[3, 0]);
    }
}
