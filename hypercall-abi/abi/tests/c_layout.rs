//! Differential test of `hypercall_abi::xen` against Xen's own C headers
//! (Debian's `libxen-dev`, Xen 4.17).
//!
//! Generates a C program that includes the real headers and prints the
//! size and alignment of every mirrored struct, the offset and size of every
//! field (including the members of C unions that Rust keeps as raw words),
//! and the value of every constant; compiles it with `cc` (or `$CC`), runs
//! it and compares each number with the Rust side. A missing compiler or
//! missing headers fail the test: run `make deps`.
//!
//! The layouts are x86_64's, so the test only exists there.
#![cfg(target_arch = "x86_64")]

use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use hypercall_abi::xen::blkif::*;
use hypercall_abi::xen::console::*;
use hypercall_abi::xen::domctl::*;
use hypercall_abi::xen::event_channel::*;
use hypercall_abi::xen::grant_table::*;
use hypercall_abi::xen::hvm_start_info::*;
use hypercall_abi::xen::hypercall::*;
use hypercall_abi::xen::memory::*;
use hypercall_abi::xen::netif::*;
use hypercall_abi::xen::sched::*;
use hypercall_abi::xen::start_info::*;
use hypercall_abi::xen::{
    DomId, EvtchnPort, GrantRef, DOMID_FIRST_RESERVED, DOMID_SELF, PAGE_SHIFT, PAGE_SIZE,
};

/// The C headers the program includes, in an order that satisfies their
/// own (undeclared) dependencies.
const HEADERS: &[&str] = &[
    "stdint.h",
    "stddef.h",
    "stdio.h",
    "xen/xen.h",
    "xen/arch-x86/xen-mca.h",
    "xen/event_channel.h",
    "xen/grant_table.h",
    "xen/memory.h",
    "xen/sched.h",
    "xen/domctl.h",
    "xen/arch-x86/hvm/start_info.h",
    "xen/io/ring.h",
    "xen/io/console.h",
    "xen/io/blkif.h",
    "xen/io/netif.h",
];

/// One number computed on both sides.
struct Check {
    /// A C expression of integer type.
    c_expr: String,
    /// The Rust value it must equal.
    rust: i128,
}

/// Every check, and how many structs, fields and constants they cover.
#[derive(Default)]
struct Checks {
    items: Vec<Check>,
    structs: usize,
    fields: usize,
    constants: usize,
}

impl Checks {
    fn push(&mut self, c_expr: String, rust: impl TryInto<i128>) {
        let rust = rust
            .try_into()
            .unwrap_or_else(|_| panic!("{c_expr}: Rust value out of range"));
        self.items.push(Check { c_expr, rust });
    }

    /// `sizeof` and `_Alignof` of a C type.
    fn ty(&mut self, c_type: &str, size: usize, align: usize) {
        self.push(format!("sizeof({c_type})"), size);
        self.push(format!("_Alignof({c_type})"), align);
        self.structs += 1;
    }

    /// `offsetof` and `sizeof` of a (possibly nested) member of a C type.
    fn field(&mut self, c_type: &str, c_member: &str, offset: usize, size: usize) {
        self.push(format!("offsetof({c_type}, {c_member})"), offset);
        self.push(format!("sizeof((({c_type} *)0)->{c_member})"), size);
        self.fields += 1;
    }

    /// The value of a C constant expression.
    fn constant(&mut self, c_expr: &str, rust: impl TryInto<i128>) {
        self.push(c_expr.to_owned(), rust);
        self.constants += 1;
    }
}

/// The size of the field a projection closure points at.
fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// `layout!(checks, RustType => "struct c_type" { field, rust_field => "c_field", ... })`
macro_rules! layout {
    ($checks:ident, $rust:ty => $c:literal { $($field:ident $(=> $cfield:literal)?),* $(,)? }) => {{
        $checks.ty($c, size_of::<$rust>(), align_of::<$rust>());
        $(
            $checks.field(
                $c,
                layout!(@name $field $(, $cfield)?),
                offset_of!($rust, $field),
                field_size(|v: &$rust| &v.$field),
            );
        )*
    }};
    (@name $field:ident) => { stringify!($field) };
    (@name $field:ident, $cfield:literal) => { $cfield };
}

/// `union_member!(checks, Outer.raw_field => Inner { field => "c.path", ... } in "struct c_type")`:
/// members of a C union that Rust keeps as raw words and reads through `Inner`.
macro_rules! union_member {
    ($checks:ident, $outer:ty, $raw:ident => $inner:ty { $($field:ident => $cpath:literal),* $(,)? } in $c:literal) => {{
        $(
            $checks.field(
                $c,
                $cpath,
                offset_of!($outer, $raw) + offset_of!($inner, $field),
                field_size(|v: &$inner| &v.$field),
            );
        )*
    }};
}

/// `consts!(checks, NAME, RUST_NAME => "c_name", ...)`
macro_rules! consts {
    ($checks:ident, $($rust:ident $(=> $c:literal)?),* $(,)?) => {{
        $( $checks.constant(consts!(@name $rust $(, $c)?), $rust); )*
    }};
    (@name $rust:ident) => { stringify!($rust) };
    (@name $rust:ident, $c:literal) => { $c };
}

/// Every value of an `abi_enum!` type against the C constant it names.
macro_rules! enum_values {
    ($checks:ident, $($enum:ty),* $(,)?) => {{
        $( for value in <$enum>::ALL { $checks.constant(value.c_name(), value.raw()); } )*
    }};
}

fn scalar_types(checks: &mut Checks) {
    checks.ty("domid_t", size_of::<DomId>(), align_of::<DomId>());
    checks.ty("grant_ref_t", size_of::<GrantRef>(), align_of::<GrantRef>());
    checks.ty(
        "grant_handle_t",
        size_of::<GrantHandle>(),
        align_of::<GrantHandle>(),
    );
    checks.ty(
        "evtchn_port_t",
        size_of::<EvtchnPort>(),
        align_of::<EvtchnPort>(),
    );
    checks.ty("xen_pfn_t", size_of::<XenPfn>(), align_of::<XenPfn>());
    checks.ty("xen_ulong_t", size_of::<XenUlong>(), align_of::<XenUlong>());
    checks.ty(
        "XEN_GUEST_HANDLE(xen_pfn_t)",
        size_of::<GuestHandle>(),
        align_of::<GuestHandle>(),
    );
    checks.ty(
        "XEN_GUEST_HANDLE(void)",
        size_of::<GuestHandle>(),
        align_of::<GuestHandle>(),
    );
    checks.ty(
        "XENCONS_RING_IDX",
        size_of::<XenconsRingIdx>(),
        align_of::<XenconsRingIdx>(),
    );
    checks.ty(
        "blkif_vdev_t",
        size_of::<BlkifVdev>(),
        align_of::<BlkifVdev>(),
    );
    checks.ty(
        "blkif_sector_t",
        size_of::<BlkifSector>(),
        align_of::<BlkifSector>(),
    );
}

fn hypercall(checks: &mut Checks) {
    checks.constant(
        "__XEN_LATEST_INTERFACE_VERSION__",
        XEN_LATEST_INTERFACE_VERSION,
    );
    checks.constant("__XEN_INTERFACE_VERSION__", XEN_INTERFACE_VERSION);
    checks.constant("DOMID_SELF", DOMID_SELF);
    checks.constant("DOMID_FIRST_RESERVED", DOMID_FIRST_RESERVED);
    checks.constant("XEN_PAGE_SHIFT", PAGE_SHIFT);
    checks.constant("(1 << XEN_PAGE_SHIFT)", PAGE_SIZE);
    consts!(checks,
        HYPERVISOR_SET_TRAP_TABLE => "__HYPERVISOR_set_trap_table",
        HYPERVISOR_MMU_UPDATE => "__HYPERVISOR_mmu_update",
        HYPERVISOR_SET_GDT => "__HYPERVISOR_set_gdt",
        HYPERVISOR_STACK_SWITCH => "__HYPERVISOR_stack_switch",
        HYPERVISOR_SET_CALLBACKS => "__HYPERVISOR_set_callbacks",
        HYPERVISOR_FPU_TASKSWITCH => "__HYPERVISOR_fpu_taskswitch",
        HYPERVISOR_SCHED_OP_COMPAT => "__HYPERVISOR_sched_op_compat",
        HYPERVISOR_PLATFORM_OP => "__HYPERVISOR_platform_op",
        HYPERVISOR_SET_DEBUGREG => "__HYPERVISOR_set_debugreg",
        HYPERVISOR_GET_DEBUGREG => "__HYPERVISOR_get_debugreg",
        HYPERVISOR_UPDATE_DESCRIPTOR => "__HYPERVISOR_update_descriptor",
        HYPERVISOR_MEMORY_OP => "__HYPERVISOR_memory_op",
        HYPERVISOR_MULTICALL => "__HYPERVISOR_multicall",
        HYPERVISOR_UPDATE_VA_MAPPING => "__HYPERVISOR_update_va_mapping",
        HYPERVISOR_SET_TIMER_OP => "__HYPERVISOR_set_timer_op",
        HYPERVISOR_EVENT_CHANNEL_OP_COMPAT => "__HYPERVISOR_event_channel_op_compat",
        HYPERVISOR_XEN_VERSION => "__HYPERVISOR_xen_version",
        HYPERVISOR_CONSOLE_IO => "__HYPERVISOR_console_io",
        HYPERVISOR_PHYSDEV_OP_COMPAT => "__HYPERVISOR_physdev_op_compat",
        HYPERVISOR_GRANT_TABLE_OP => "__HYPERVISOR_grant_table_op",
        HYPERVISOR_VM_ASSIST => "__HYPERVISOR_vm_assist",
        HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN => "__HYPERVISOR_update_va_mapping_otherdomain",
        HYPERVISOR_IRET => "__HYPERVISOR_iret",
        HYPERVISOR_VCPU_OP => "__HYPERVISOR_vcpu_op",
        HYPERVISOR_SET_SEGMENT_BASE => "__HYPERVISOR_set_segment_base",
        HYPERVISOR_MMUEXT_OP => "__HYPERVISOR_mmuext_op",
        HYPERVISOR_XSM_OP => "__HYPERVISOR_xsm_op",
        HYPERVISOR_NMI_OP => "__HYPERVISOR_nmi_op",
        HYPERVISOR_SCHED_OP => "__HYPERVISOR_sched_op",
        HYPERVISOR_CALLBACK_OP => "__HYPERVISOR_callback_op",
        HYPERVISOR_XENOPROF_OP => "__HYPERVISOR_xenoprof_op",
        HYPERVISOR_EVENT_CHANNEL_OP => "__HYPERVISOR_event_channel_op",
        HYPERVISOR_PHYSDEV_OP => "__HYPERVISOR_physdev_op",
        HYPERVISOR_HVM_OP => "__HYPERVISOR_hvm_op",
        HYPERVISOR_SYSCTL => "__HYPERVISOR_sysctl",
        HYPERVISOR_DOMCTL => "__HYPERVISOR_domctl",
        HYPERVISOR_KEXEC_OP => "__HYPERVISOR_kexec_op",
        HYPERVISOR_TMEM_OP => "__HYPERVISOR_tmem_op",
        HYPERVISOR_ARGO_OP => "__HYPERVISOR_argo_op",
        HYPERVISOR_XENPMU_OP => "__HYPERVISOR_xenpmu_op",
        HYPERVISOR_DM_OP => "__HYPERVISOR_dm_op",
        HYPERVISOR_HYPFS_OP => "__HYPERVISOR_hypfs_op",
        HYPERVISOR_ARCH_0 => "__HYPERVISOR_arch_0",
        HYPERVISOR_ARCH_1 => "__HYPERVISOR_arch_1",
        HYPERVISOR_ARCH_2 => "__HYPERVISOR_arch_2",
        HYPERVISOR_ARCH_3 => "__HYPERVISOR_arch_3",
        HYPERVISOR_ARCH_4 => "__HYPERVISOR_arch_4",
        HYPERVISOR_ARCH_5 => "__HYPERVISOR_arch_5",
        HYPERVISOR_ARCH_6 => "__HYPERVISOR_arch_6",
        HYPERVISOR_ARCH_7 => "__HYPERVISOR_arch_7",
        VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_DOM_EXC, VIRQ_TBUF, VIRQ_DEBUGGER,
        VIRQ_XENOPROF, VIRQ_CON_RING, VIRQ_PCPU_STATE, VIRQ_MEM_EVENT, VIRQ_ARGO,
        VIRQ_ENOMEM, VIRQ_XENPMU, VIRQ_ARCH_0, VIRQ_ARCH_1, VIRQ_ARCH_2, VIRQ_ARCH_3,
        VIRQ_ARCH_4, VIRQ_ARCH_5, VIRQ_ARCH_6, VIRQ_ARCH_7, VIRQ_MCA, NR_VIRQS,
    );
    enum_values!(checks, Hypercall, Virq);
}

fn event_channel(checks: &mut Checks) {
    consts!(checks,
        EVTCHNOP_BIND_INTERDOMAIN => "EVTCHNOP_bind_interdomain",
        EVTCHNOP_BIND_VIRQ => "EVTCHNOP_bind_virq",
        EVTCHNOP_BIND_PIRQ => "EVTCHNOP_bind_pirq",
        EVTCHNOP_CLOSE => "EVTCHNOP_close",
        EVTCHNOP_SEND => "EVTCHNOP_send",
        EVTCHNOP_STATUS => "EVTCHNOP_status",
        EVTCHNOP_ALLOC_UNBOUND => "EVTCHNOP_alloc_unbound",
        EVTCHNOP_BIND_IPI => "EVTCHNOP_bind_ipi",
        EVTCHNOP_BIND_VCPU => "EVTCHNOP_bind_vcpu",
        EVTCHNOP_UNMASK => "EVTCHNOP_unmask",
        EVTCHNOP_RESET => "EVTCHNOP_reset",
        EVTCHNOP_INIT_CONTROL => "EVTCHNOP_init_control",
        EVTCHNOP_EXPAND_ARRAY => "EVTCHNOP_expand_array",
        EVTCHNOP_SET_PRIORITY => "EVTCHNOP_set_priority",
        EVTCHNSTAT_CLOSED => "EVTCHNSTAT_closed",
        EVTCHNSTAT_UNBOUND => "EVTCHNSTAT_unbound",
        EVTCHNSTAT_INTERDOMAIN => "EVTCHNSTAT_interdomain",
        EVTCHNSTAT_PIRQ => "EVTCHNSTAT_pirq",
        EVTCHNSTAT_VIRQ => "EVTCHNSTAT_virq",
        EVTCHNSTAT_IPI => "EVTCHNSTAT_ipi",
    );
    enum_values!(checks, EvtchnOp, EvtchnStatusKind);

    layout!(checks, EvtchnAllocUnbound => "struct evtchn_alloc_unbound" { dom, remote_dom, port });
    layout!(checks, EvtchnBindInterdomain => "struct evtchn_bind_interdomain" {
        remote_dom, remote_port, local_port,
    });
    layout!(checks, EvtchnBindVirq => "struct evtchn_bind_virq" { virq, vcpu, port });
    layout!(checks, EvtchnBindIpi => "struct evtchn_bind_ipi" { vcpu, port });
    layout!(checks, EvtchnClose => "struct evtchn_close" { port });
    layout!(checks, EvtchnSend => "struct evtchn_send" { port });
    layout!(checks, EvtchnUnmask => "struct evtchn_unmask" { port });
    layout!(checks, EvtchnBindVcpu => "struct evtchn_bind_vcpu" { port, vcpu });
    layout!(checks, EvtchnReset => "struct evtchn_reset" { dom });
    layout!(checks, EvtchnStatus => "struct evtchn_status" { dom, port, status, vcpu, u });
    union_member!(checks, EvtchnStatus, u => EvtchnStatusInterdomain {
        dom => "u.interdomain.dom",
        port => "u.interdomain.port",
    } in "struct evtchn_status");
    // The other members: `u.unbound.dom` is the first u16, `u.pirq` and
    // `u.virq` the first u32 of the raw words.
    checks.field(
        "struct evtchn_status",
        "u.unbound.dom",
        offset_of!(EvtchnStatus, u),
        size_of::<DomId>(),
    );
    checks.field(
        "struct evtchn_status",
        "u.pirq",
        offset_of!(EvtchnStatus, u),
        size_of::<u32>(),
    );
    checks.field(
        "struct evtchn_status",
        "u.virq",
        offset_of!(EvtchnStatus, u),
        size_of::<u32>(),
    );
}

fn grant_table(checks: &mut Checks) {
    consts!(checks,
        GNTTAB_NR_RESERVED_ENTRIES, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE,
        GTF_INVALID => "GTF_invalid",
        GTF_PERMIT_ACCESS => "GTF_permit_access",
        GTF_ACCEPT_TRANSFER => "GTF_accept_transfer",
        GTF_TRANSITIVE => "GTF_transitive",
        GTF_TYPE_MASK => "GTF_type_mask",
        GTF_READONLY => "GTF_readonly",
        GTF_READING => "GTF_reading",
        GTF_WRITING => "GTF_writing",
        GTF_PWT, GTF_PCD, GTF_PAT,
        GTF_SUB_PAGE => "GTF_sub_page",
        GTF_TRANSFER_COMMITTED => "GTF_transfer_committed",
        GTF_TRANSFER_COMPLETED => "GTF_transfer_completed",
        GNTTABOP_MAP_GRANT_REF => "GNTTABOP_map_grant_ref",
        GNTTABOP_UNMAP_GRANT_REF => "GNTTABOP_unmap_grant_ref",
        GNTTABOP_SETUP_TABLE => "GNTTABOP_setup_table",
        GNTTABOP_DUMP_TABLE => "GNTTABOP_dump_table",
        GNTTABOP_TRANSFER => "GNTTABOP_transfer",
        GNTTABOP_COPY => "GNTTABOP_copy",
        GNTTABOP_QUERY_SIZE => "GNTTABOP_query_size",
        GNTTABOP_UNMAP_AND_REPLACE => "GNTTABOP_unmap_and_replace",
        GNTTABOP_SET_VERSION => "GNTTABOP_set_version",
        GNTTABOP_GET_STATUS_FRAMES => "GNTTABOP_get_status_frames",
        GNTTABOP_GET_VERSION => "GNTTABOP_get_version",
        GNTTABOP_SWAP_GRANT_REF => "GNTTABOP_swap_grant_ref",
        GNTTABOP_CACHE_FLUSH => "GNTTABOP_cache_flush",
        GNTMAP_DEVICE_MAP => "GNTMAP_device_map",
        GNTMAP_HOST_MAP => "GNTMAP_host_map",
        GNTMAP_READONLY => "GNTMAP_readonly",
        GNTMAP_APPLICATION_MAP => "GNTMAP_application_map",
        GNTMAP_CONTAINS_PTE => "GNTMAP_contains_pte",
        GNTMAP_GUEST_AVAIL_MASK => "GNTMAP_guest_avail_mask",
        GNTCOPY_SOURCE_GREF => "GNTCOPY_source_gref",
        GNTCOPY_DEST_GREF => "GNTCOPY_dest_gref",
        GNTST_OKAY => "GNTST_okay",
        GNTST_GENERAL_ERROR => "GNTST_general_error",
        GNTST_BAD_DOMAIN => "GNTST_bad_domain",
        GNTST_BAD_GNTREF => "GNTST_bad_gntref",
        GNTST_BAD_HANDLE => "GNTST_bad_handle",
        GNTST_BAD_VIRT_ADDR => "GNTST_bad_virt_addr",
        GNTST_BAD_DEV_ADDR => "GNTST_bad_dev_addr",
        GNTST_NO_DEVICE_SPACE => "GNTST_no_device_space",
        GNTST_PERMISSION_DENIED => "GNTST_permission_denied",
        GNTST_BAD_PAGE => "GNTST_bad_page",
        GNTST_BAD_COPY_ARG => "GNTST_bad_copy_arg",
        GNTST_ADDRESS_TOO_BIG => "GNTST_address_too_big",
        GNTST_EAGAIN => "GNTST_eagain",
        GNTST_NO_SPACE => "GNTST_no_space",
    );
    enum_values!(checks, GnttabOp, GrantStatus);
    for ty in [
        GrantEntryType::Invalid,
        GrantEntryType::PermitAccess,
        GrantEntryType::AcceptTransfer,
        GrantEntryType::Transitive,
    ] {
        let c_name = match ty {
            GrantEntryType::Invalid => "GTF_invalid",
            GrantEntryType::PermitAccess => "GTF_permit_access",
            GrantEntryType::AcceptTransfer => "GTF_accept_transfer",
            GrantEntryType::Transitive => "GTF_transitive",
        };
        checks.constant(c_name, ty as u16);
    }
    checks.constant(
        "(4096 / sizeof(struct grant_entry_v1))",
        GRANT_ENTRIES_V1_PER_FRAME,
    );

    layout!(checks, GrantEntryV1 => "struct grant_entry_v1" { flags, domid, frame });
    layout!(checks, GnttabMapGrantRef => "struct gnttab_map_grant_ref" {
        host_addr, flags, ref_ => "ref", dom, status, handle, dev_bus_addr,
    });
    layout!(checks, GnttabUnmapGrantRef => "struct gnttab_unmap_grant_ref" {
        host_addr, dev_bus_addr, handle, status,
    });
    layout!(checks, GnttabSetupTable => "struct gnttab_setup_table" {
        dom, nr_frames, status, frame_list,
    });
    layout!(checks, GnttabQuerySize => "struct gnttab_query_size" {
        dom, nr_frames, max_nr_frames, status,
    });
    layout!(checks, GnttabCopyPtr => "struct gnttab_copy_ptr" { u, domid, offset });
    checks.field(
        "struct gnttab_copy_ptr",
        "u.ref",
        offset_of!(GnttabCopyPtr, u),
        size_of::<GrantRef>(),
    );
    checks.field(
        "struct gnttab_copy_ptr",
        "u.gmfn",
        offset_of!(GnttabCopyPtr, u),
        size_of::<XenPfn>(),
    );
    layout!(checks, GnttabCopy => "struct gnttab_copy" { source, dest, len, flags, status });
    union_member!(checks, GnttabCopy, dest => GnttabCopyPtr {
        u => "dest.u",
        domid => "dest.domid",
        offset => "dest.offset",
    } in "struct gnttab_copy");
}

fn memory(checks: &mut Checks) {
    consts!(checks,
        XENMEM_INCREASE_RESERVATION => "XENMEM_increase_reservation",
        XENMEM_DECREASE_RESERVATION => "XENMEM_decrease_reservation",
        XENMEM_MAXIMUM_RAM_PAGE => "XENMEM_maximum_ram_page",
        XENMEM_CURRENT_RESERVATION => "XENMEM_current_reservation",
        XENMEM_MAXIMUM_RESERVATION => "XENMEM_maximum_reservation",
        XENMEM_MACHPHYS_MFN_LIST => "XENMEM_machphys_mfn_list",
        XENMEM_POPULATE_PHYSMAP => "XENMEM_populate_physmap",
        XENMEM_ADD_TO_PHYSMAP => "XENMEM_add_to_physmap",
        XENMEM_MEMORY_MAP => "XENMEM_memory_map",
        XENMEM_MACHINE_MEMORY_MAP => "XENMEM_machine_memory_map",
        XENMEM_EXCHANGE => "XENMEM_exchange",
        XENMEM_MACHPHYS_MAPPING => "XENMEM_machphys_mapping",
        XENMEM_SET_MEMORY_MAP => "XENMEM_set_memory_map",
        XENMEM_MAXIMUM_GPFN => "XENMEM_maximum_gpfn",
        XENMEM_REMOVE_FROM_PHYSMAP => "XENMEM_remove_from_physmap",
        XENMEM_SET_POD_TARGET => "XENMEM_set_pod_target",
        XENMEM_GET_POD_TARGET => "XENMEM_get_pod_target",
        XENMEM_ADD_TO_PHYSMAP_BATCH => "XENMEM_add_to_physmap_batch",
        XENMEM_CLAIM_PAGES => "XENMEM_claim_pages",
        XENMEM_GET_VNUMAINFO => "XENMEM_get_vnumainfo",
        XENMEM_RESERVED_DEVICE_MEMORY_MAP => "XENMEM_reserved_device_memory_map",
        XENMEM_ACQUIRE_RESOURCE => "XENMEM_acquire_resource",
        XENMEMF_POPULATE_ON_DEMAND => "XENMEMF_populate_on_demand",
        XENMEMF_EXACT_NODE_REQUEST => "XENMEMF_exact_node_request",
        XENMEMF_VNODE => "XENMEMF_vnode",
        XENMAPSPACE_SHARED_INFO => "XENMAPSPACE_shared_info",
        XENMAPSPACE_GRANT_TABLE => "XENMAPSPACE_grant_table",
        XENMAPSPACE_GMFN => "XENMAPSPACE_gmfn",
        XENMAPSPACE_GMFN_RANGE => "XENMAPSPACE_gmfn_range",
        XENMAPSPACE_GMFN_FOREIGN => "XENMAPSPACE_gmfn_foreign",
        XENMAPSPACE_DEV_MMIO => "XENMAPSPACE_dev_mmio",
        XENMAPIDX_GRANT_TABLE_STATUS => "XENMAPIDX_grant_table_status",
        XENMEM_RESOURCE_IOREQ_SERVER => "XENMEM_resource_ioreq_server",
        XENMEM_RESOURCE_GRANT_TABLE => "XENMEM_resource_grant_table",
        XENMEM_RESOURCE_VMTRACE_BUF => "XENMEM_resource_vmtrace_buf",
        XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED => "XENMEM_resource_grant_table_id_shared",
        XENMEM_RESOURCE_GRANT_TABLE_ID_STATUS => "XENMEM_resource_grant_table_id_status",
        XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ => "XENMEM_resource_ioreq_server_frame_bufioreq",
    );
    enum_values!(checks, MemoryOp, MapSpace, ResourceType);
    checks.constant("XENMEMF_address_bits(39)", xenmemf_address_bits(39));
    checks.constant("XENMEMF_node(3)", xenmemf_node(3));
    checks.constant("XENMEMF_exact_node(3)", xenmemf_exact_node(3));
    checks.constant(
        "XENMEM_resource_ioreq_server_frame_ioreq(2)",
        xenmem_resource_ioreq_server_frame_ioreq(2),
    );

    layout!(checks, XenMemoryReservation => "struct xen_memory_reservation" {
        extent_start, nr_extents, extent_order, mem_flags, domid,
    });
    layout!(checks, XenAddToPhysmap => "struct xen_add_to_physmap" { domid, size, space, idx, gpfn });
    layout!(checks, XenRemoveFromPhysmap => "struct xen_remove_from_physmap" { domid, gpfn });
    layout!(checks, XenMemoryMap => "struct xen_memory_map" { nr_entries, buffer });
    layout!(checks, XenForeignMemoryMap => "struct xen_foreign_memory_map" { domid, map });
    layout!(checks, XenMemAcquireResource => "struct xen_mem_acquire_resource" {
        domid, type_ => "type", id, nr_frames, pad, frame, frame_list,
    });
}

fn sched(checks: &mut Checks) {
    consts!(checks,
        SCHEDOP_YIELD => "SCHEDOP_yield",
        SCHEDOP_BLOCK => "SCHEDOP_block",
        SCHEDOP_SHUTDOWN => "SCHEDOP_shutdown",
        SCHEDOP_POLL => "SCHEDOP_poll",
        SCHEDOP_REMOTE_SHUTDOWN => "SCHEDOP_remote_shutdown",
        SCHEDOP_SHUTDOWN_CODE => "SCHEDOP_shutdown_code",
        SCHEDOP_WATCHDOG => "SCHEDOP_watchdog",
        SCHEDOP_PIN_OVERRIDE => "SCHEDOP_pin_override",
        SHUTDOWN_POWEROFF => "SHUTDOWN_poweroff",
        SHUTDOWN_REBOOT => "SHUTDOWN_reboot",
        SHUTDOWN_SUSPEND => "SHUTDOWN_suspend",
        SHUTDOWN_CRASH => "SHUTDOWN_crash",
        SHUTDOWN_WATCHDOG => "SHUTDOWN_watchdog",
        SHUTDOWN_SOFT_RESET => "SHUTDOWN_soft_reset",
        SHUTDOWN_MAX,
    );
    enum_values!(checks, SchedOp, ShutdownReason);

    layout!(checks, SchedShutdown => "struct sched_shutdown" { reason });
    layout!(checks, SchedPoll => "struct sched_poll" { ports, nr_ports, timeout });
    layout!(checks, SchedRemoteShutdown => "struct sched_remote_shutdown" { domain_id, reason });
    layout!(checks, SchedWatchdog => "struct sched_watchdog" { id, timeout });
}

fn domctl(checks: &mut Checks) {
    consts!(checks,
        XEN_DOMCTL_INTERFACE_VERSION,
        XEN_DOMCTL_GETDOMAININFO => "XEN_DOMCTL_getdomaininfo",
        XEN_DOMINF_DYING => "XEN_DOMINF_dying",
        XEN_DOMINF_HVM_GUEST => "XEN_DOMINF_hvm_guest",
        XEN_DOMINF_SHUTDOWN => "XEN_DOMINF_shutdown",
        XEN_DOMINF_PAUSED => "XEN_DOMINF_paused",
        XEN_DOMINF_BLOCKED => "XEN_DOMINF_blocked",
        XEN_DOMINF_RUNNING => "XEN_DOMINF_running",
        XEN_DOMINF_DEBUGGED => "XEN_DOMINF_debugged",
        XEN_DOMINF_XS_DOMAIN => "XEN_DOMINF_xs_domain",
        XEN_DOMINF_HAP => "XEN_DOMINF_hap",
        XEN_DOMINF_SHUTDOWNSHIFT => "XEN_DOMINF_shutdownshift",
        XEN_DOMINF_SHUTDOWNMASK => "XEN_DOMINF_shutdownmask",
        XEN_INVALID_MAX_VCPU_ID,
    );
    for (flag, c_name) in [
        (DomInfoFlags::DYING, "XEN_DOMINF_dying"),
        (DomInfoFlags::HVM_GUEST, "XEN_DOMINF_hvm_guest"),
        (DomInfoFlags::SHUTDOWN, "XEN_DOMINF_shutdown"),
        (DomInfoFlags::PAUSED, "XEN_DOMINF_paused"),
        (DomInfoFlags::BLOCKED, "XEN_DOMINF_blocked"),
        (DomInfoFlags::RUNNING, "XEN_DOMINF_running"),
        (DomInfoFlags::DEBUGGED, "XEN_DOMINF_debugged"),
        (DomInfoFlags::XS_DOMAIN, "XEN_DOMINF_xs_domain"),
        (DomInfoFlags::HAP, "XEN_DOMINF_hap"),
    ] {
        checks.constant(c_name, flag.bits());
    }
    checks.constant(
        "sizeof(((struct xen_domctl *)0)->u.pad)",
        XEN_DOMCTL_UNION_SIZE,
    );
    checks.ty(
        "xen_domain_handle_t",
        field_size(|v: &XenDomctlGetdomaininfo| &v.handle),
        align_of::<u8>(),
    );

    layout!(checks, XenArchDomainconfig => "struct xen_arch_domainconfig" {
        emulation_flags, misc_flags,
    });
    layout!(checks, XenDomctlGetdomaininfo => "struct xen_domctl_getdomaininfo" {
        domain, pad1, flags, tot_pages, max_pages, outstanding_pages, shr_pages, paged_pages,
        shared_info_frame, cpu_time, nr_online_vcpus, max_vcpu_id, ssidref, handle, cpupool,
        gpaddr_bits, pad2, arch_config,
    });
    layout!(checks, XenDomctl => "struct xen_domctl" {
        cmd, interface_version, domain, _pad, u,
    });
    union_member!(checks, XenDomctl, u => XenDomctlGetdomaininfo {
        domain => "u.getdomaininfo.domain",
        flags => "u.getdomaininfo.flags",
        tot_pages => "u.getdomaininfo.tot_pages",
        cpu_time => "u.getdomaininfo.cpu_time",
        handle => "u.getdomaininfo.handle",
        arch_config => "u.getdomaininfo.arch_config",
    } in "struct xen_domctl");
    checks.constant(
        "sizeof(((struct xen_domctl *)0)->u.getdomaininfo)",
        size_of::<XenDomctlGetdomaininfo>(),
    );
}

fn console(checks: &mut Checks) {
    consts!(checks, CONSOLEIO_WRITE => "CONSOLEIO_write", CONSOLEIO_READ => "CONSOLEIO_read");
    enum_values!(checks, ConsoleIoOp);

    layout!(checks, XenconsInterface => "struct xencons_interface" {
        in_ => "in", out, in_cons, in_prod, out_cons, out_prod,
    });
    checks.constant(
        "sizeof(((struct xencons_interface *)0)->in)",
        XENCONS_IN_SIZE,
    );
    checks.constant(
        "sizeof(((struct xencons_interface *)0)->out)",
        XENCONS_OUT_SIZE,
    );
    for idx in [0u32, 1023, 1024, 2047, 2048, 5000, u32::MAX] {
        checks.constant(
            &format!("MASK_XENCONS_IDX({idx}u, ((struct xencons_interface *)0)->in)"),
            XenconsInterface::mask_in(idx),
        );
        checks.constant(
            &format!("MASK_XENCONS_IDX({idx}u, ((struct xencons_interface *)0)->out)"),
            XenconsInterface::mask_out(idx),
        );
    }
}

fn start_info(checks: &mut Checks) {
    consts!(
        checks,
        SIF_PRIVILEGED,
        SIF_INITDOMAIN,
        SIF_MULTIBOOT_MOD,
        SIF_MOD_START_PFN,
        SIF_VIRT_P2M_4TOOLS,
        SIF_PM_MASK,
        MAX_GUEST_CMDLINE,
    );

    layout!(checks, StartInfo => "struct start_info" {
        magic, nr_pages, shared_info, flags, store_mfn, store_evtchn, console,
        pt_base, nr_pt_frames, mfn_list, mod_start, mod_len, cmd_line,
        first_p2m_pfn, nr_p2m_frames,
    });
    union_member!(checks, StartInfo, console => StartInfoConsoleDomU {
        mfn => "console.domU.mfn",
        evtchn => "console.domU.evtchn",
    } in "struct start_info");
    union_member!(checks, StartInfo, console => StartInfoConsoleDom0 {
        info_off => "console.dom0.info_off",
        info_size => "console.dom0.info_size",
    } in "struct start_info");
    checks.ty(
        "__typeof__(((struct start_info *)0)->console.domU)",
        size_of::<StartInfoConsoleDomU>(),
        align_of::<StartInfoConsoleDomU>(),
    );
    layout!(checks, XenMultibootModList => "struct xen_multiboot_mod_list" {
        mod_start, mod_end, cmdline, pad,
    });
}

fn hvm_start_info(checks: &mut Checks) {
    consts!(
        checks,
        XEN_HVM_START_MAGIC_VALUE,
        XEN_HVM_MEMMAP_TYPE_RAM,
        XEN_HVM_MEMMAP_TYPE_RESERVED,
        XEN_HVM_MEMMAP_TYPE_ACPI,
        XEN_HVM_MEMMAP_TYPE_NVS,
        XEN_HVM_MEMMAP_TYPE_UNUSABLE,
        XEN_HVM_MEMMAP_TYPE_DISABLED,
        XEN_HVM_MEMMAP_TYPE_PMEM,
    );
    enum_values!(checks, HvmMemmapType);

    layout!(checks, HvmStartInfo => "struct hvm_start_info" {
        magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr, rsdp_paddr,
        memmap_paddr, memmap_entries, reserved,
    });
    layout!(checks, HvmModlistEntry => "struct hvm_modlist_entry" {
        paddr, size, cmdline_paddr, reserved,
    });
    layout!(checks, HvmMemmapTableEntry => "struct hvm_memmap_table_entry" {
        addr, size, type_ => "type", reserved,
    });
}

fn blkif(checks: &mut Checks) {
    consts!(
        checks,
        BLKIF_OP_READ,
        BLKIF_OP_WRITE,
        BLKIF_OP_WRITE_BARRIER,
        BLKIF_OP_FLUSH_DISKCACHE,
        BLKIF_OP_RESERVED_1,
        BLKIF_OP_DISCARD,
        BLKIF_OP_INDIRECT,
        BLKIF_MAX_SEGMENTS_PER_REQUEST,
        BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
        BLKIF_DISCARD_SECURE,
        BLKIF_RSP_EOPNOTSUPP,
        BLKIF_RSP_ERROR,
        BLKIF_RSP_OKAY,
        VDISK_CDROM,
        VDISK_REMOVABLE,
        VDISK_READONLY,
    );
    enum_values!(checks, BlkifOp, BlkifStatus);
    checks.constant(
        "((1 << XEN_PAGE_SHIFT) / sizeof(struct blkif_request_segment))",
        BLKIF_SEGS_PER_INDIRECT_FRAME,
    );

    layout!(checks, BlkifRequestSegment => "struct blkif_request_segment" {
        gref, first_sect, last_sect,
    });
    layout!(checks, BlkifRequest => "struct blkif_request" {
        operation, nr_segments, handle, id, sector_number, seg,
    });
    layout!(checks, BlkifRequestDiscard => "struct blkif_request_discard" {
        operation, flag, handle, id, sector_number, nr_sectors,
    });
    layout!(checks, BlkifRequestIndirect => "struct blkif_request_indirect" {
        operation, indirect_op, nr_segments, id, sector_number, handle, indirect_grefs,
    });
    layout!(checks, BlkifResponse => "struct blkif_response" { id, operation, status });
    // The ring slot is the union of every request kind.
    checks.constant(
        "sizeof(union blkif_sring_entry)",
        size_of::<BlkifRequest>().max(size_of::<BlkifResponse>()),
    );
}

fn netif(checks: &mut Checks) {
    consts!(checks,
        XEN_NETIF_NR_SLOTS_MIN, XEN_NETIF_MAX_TX_SIZE,
        NETTXF_CSUM_BLANK => "NETTXF_csum_blank",
        NETTXF_DATA_VALIDATED => "NETTXF_data_validated",
        NETTXF_MORE_DATA => "NETTXF_more_data",
        NETTXF_EXTRA_INFO => "NETTXF_extra_info",
        NETRXF_DATA_VALIDATED => "NETRXF_data_validated",
        NETRXF_CSUM_BLANK => "NETRXF_csum_blank",
        NETRXF_MORE_DATA => "NETRXF_more_data",
        NETRXF_EXTRA_INFO => "NETRXF_extra_info",
        NETRXF_GSO_PREFIX => "NETRXF_gso_prefix",
        NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NETIF_RSP_NULL,
        XEN_NETIF_EXTRA_TYPE_NONE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MCAST_ADD,
        XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_EXTRA_TYPE_HASH, XEN_NETIF_EXTRA_TYPE_MAX,
        XEN_NETIF_EXTRA_FLAG_MORE,
        XEN_NETIF_GSO_TYPE_NONE, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
        XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT => "_XEN_NETIF_CTRL_HASH_TYPE_IPV4",
        XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT => "_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP",
        XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT => "_XEN_NETIF_CTRL_HASH_TYPE_IPV6",
        XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT => "_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP",
        XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
        XEN_NETIF_CTRL_HASH_TYPE_IPV6, XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP,
        XEN_NETIF_CTRL_HASH_ALGORITHM_NONE, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ,
        XEN_NETIF_CTRL_TYPE_INVALID, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
        XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
        XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
        XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
        XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING,
        XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING,
        XEN_NETIF_CTRL_STATUS_SUCCESS, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED,
        XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER, XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW,
        XEN_NETIF_CTRLF_GREF_READONLY => "XEN_NETIF_CTRLF_GREF_readonly",
    );
    enum_values!(
        checks,
        NetifRspStatus,
        NetifExtraType,
        NetifGsoType,
        NetifCtrlType
    );

    layout!(checks, NetifTxRequest => "struct netif_tx_request" { gref, offset, flags, id, size });
    layout!(checks, NetifTxResponse => "struct netif_tx_response" { id, status });
    layout!(checks, NetifRxRequest => "struct netif_rx_request" { id, pad, gref });
    layout!(checks, NetifRxResponse => "struct netif_rx_response" { id, offset, flags, status });
    layout!(checks, NetifExtraInfo => "struct netif_extra_info" { type_ => "type", flags, u });
    union_member!(checks, NetifExtraInfo, u => NetifExtraGso {
        size => "u.gso.size",
        type_ => "u.gso.type",
        pad => "u.gso.pad",
        features => "u.gso.features",
    } in "struct netif_extra_info");
    union_member!(checks, NetifExtraInfo, u => NetifExtraMcast {
        addr => "u.mcast.addr",
    } in "struct netif_extra_info");
    union_member!(checks, NetifExtraInfo, u => NetifExtraHash {
        type_ => "u.hash.type",
        algorithm => "u.hash.algorithm",
        value => "u.hash.value",
    } in "struct netif_extra_info");
    layout!(checks, XenNetifCtrlRequest => "struct xen_netif_ctrl_request" { id, type_ => "type", data });
    layout!(checks, XenNetifCtrlResponse => "struct xen_netif_ctrl_response" {
        id, type_ => "type", status, data,
    });
    layout!(checks, XenNetifGref => "struct xen_netif_gref" { ref_ => "ref", flags, status });
}

/// The C program: one `printf` per check, in order.
fn c_program(checks: &Checks) -> String {
    let mut src = String::new();
    // The view of a toolstack: the latest interface version, plus the
    // tools-only parts (e.g. XENMEM_claim_pages). A check below compares
    // the version with the crate's.
    src.push_str("#define __XEN_TOOLS__ 1\n");
    for header in HEADERS {
        let _ = writeln!(src, "#include <{header}>");
    }
    src.push_str("\nint main(void)\n{\n");
    for check in &checks.items {
        let _ = writeln!(
            src,
            "    printf(\"%lld\\n\", (long long)({}));",
            check.c_expr
        );
    }
    src.push_str("    return 0;\n}\n");
    src
}

fn scratch_dir() -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("c_layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Compiles and runs the program; returns its output lines.
fn run_c(source: &str) -> Vec<String> {
    let dir = scratch_dir();
    let c_file = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c_file, source)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", c_file.display()));

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut compile = Command::new(&cc);
    compile.arg("-std=gnu11").arg("-o").arg(&exe).arg(&c_file);
    if let Ok(include) = std::env::var("XEN_INCLUDE_DIR") {
        compile.arg("-I").arg(include);
    }
    let output = compile.output().unwrap_or_else(|e| {
        panic!("cannot run the C compiler `{cc}` ({e}): run `make deps` to install it")
    });
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("xen/") && stderr.contains("No such file") {
            panic!(
                "Xen's C headers (Debian's libxen-dev) are not installed: run `make deps`, \
                 or point XEN_INCLUDE_DIR at a directory holding xen/xen.h.\n{stderr}"
            );
        }
        panic!("`{cc}` failed to compile {}:\n{stderr}", c_file.display());
    }

    let run = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(
        run.status.success(),
        "{} failed: {:?}",
        exe.display(),
        run.status
    );
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn rust_abi_matches_xen_c_headers() {
    // Arrange
    let mut checks = Checks::default();
    scalar_types(&mut checks);
    hypercall(&mut checks);
    event_channel(&mut checks);
    grant_table(&mut checks);
    memory(&mut checks);
    sched(&mut checks);
    domctl(&mut checks);
    console(&mut checks);
    start_info(&mut checks);
    hvm_start_info(&mut checks);
    blkif(&mut checks);
    netif(&mut checks);

    // Act
    let c_values = run_c(&c_program(&checks));

    // Assert
    assert_eq!(
        c_values.len(),
        checks.items.len(),
        "the C program printed the wrong number of values"
    );
    let mismatches: Vec<String> = checks
        .items
        .iter()
        .zip(&c_values)
        .filter_map(|(check, c_value)| {
            let c_value: i128 = c_value
                .parse()
                .unwrap_or_else(|e| panic!("{}: bad C output {c_value:?}: {e}", check.c_expr));
            (c_value != check.rust).then(|| {
                format!(
                    "{}: C says {c_value}, Rust says {}",
                    check.c_expr, check.rust
                )
            })
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} values differ from Xen's headers:\n{}",
        mismatches.len(),
        checks.items.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "checked {} values against Xen's C headers: {} types (size, alignment), {} fields (offset, size), {} constants",
        checks.items.len(),
        checks.structs,
        checks.fields,
        checks.constants
    );
}
