//! Domain control (`xen/domctl.h`): the `struct xen_domctl` argument of
//! `__HYPERVISOR_domctl` and the sub-operations a toolstack needs to create,
//! build, run and destroy a domain.
//!
//! Domctls are for the toolstack only: C code must define `__XEN_TOOLS__`
//! to include the header, and Xen refuses a call whose
//! `interface_version` is not its own [`XEN_DOMCTL_INTERFACE_VERSION`]
//! (`EACCES`), so this module describes exactly Xen 4.17's interface.
//!
//! Each sub-operation's structure is a member of the 128-byte union
//! [`XenDomctl::u`]: build a request with [`XenDomctl::with_payload`] (or
//! one of the named constructors) and read a reply with
//! [`XenDomctl::payload`].
//!
//! Layouts: every offset asserted below was derived from the C header by
//! the x86_64 System V rules (`uint64_aligned_t` and guest handles are
//! 8-byte aligned 8-byte values, `xen_domain_handle_t` is `uint8_t[16]`)
//! and checked against a C program that includes Debian's `libxen-dev`
//! 4.17 headers and prints `offsetof`/`sizeof` of each member.

use core::mem::size_of;

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, GuestHandle, UnknownValue};
use super::sched::ShutdownReason;
use super::DomId;

/// `XEN_DOMCTL_INTERFACE_VERSION`: the domctl interface of Xen 4.17.
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x0000_0015;

/// `XEN_DOMCTL_createdomain`: create an empty domain; see
/// [`XenDomctlCreatedomain`]. [`XenDomctl::domain`] is IN/OUT: 0 or a
/// reserved id asks Xen to pick one, and the reply holds the new id.
pub const XEN_DOMCTL_CREATEDOMAIN: u32 = 1;
/// `XEN_DOMCTL_destroydomain`: kill a domain and free its resources (no
/// payload). Xen may answer `EAGAIN` while it still frees memory: retry.
pub const XEN_DOMCTL_DESTROYDOMAIN: u32 = 2;
/// `XEN_DOMCTL_pausedomain`: pause all of a domain's vCPUs (no payload).
pub const XEN_DOMCTL_PAUSEDOMAIN: u32 = 3;
/// `XEN_DOMCTL_unpausedomain`: undo one `XEN_DOMCTL_pausedomain` (no
/// payload); a new domain starts paused and runs after its first unpause.
pub const XEN_DOMCTL_UNPAUSEDOMAIN: u32 = 4;
/// `XEN_DOMCTL_getdomaininfo`: the state of a domain; see
/// [`XenDomctlGetdomaininfo`].
pub const XEN_DOMCTL_GETDOMAININFO: u32 = 5;
/// `XEN_DOMCTL_setvcpuaffinity`: pin a vCPU; see [`XenDomctlVcpuaffinity`].
pub const XEN_DOMCTL_SETVCPUAFFINITY: u32 = 9;
/// `XEN_DOMCTL_shadow_op`: shadow paging and log-dirty control (not
/// mirrored here: a PV or PVH domain does not need it to boot).
pub const XEN_DOMCTL_SHADOW_OP: u32 = 10;
/// `XEN_DOMCTL_max_mem`: the most memory a domain may hold; see
/// [`XenDomctlMaxMem`].
pub const XEN_DOMCTL_MAX_MEM: u32 = 11;
/// `XEN_DOMCTL_setvcpucontext`: load a vCPU's register state; see
/// [`XenDomctlVcpucontext`].
pub const XEN_DOMCTL_SETVCPUCONTEXT: u32 = 12;
/// `XEN_DOMCTL_getvcpucontext`: read a vCPU's register state; see
/// [`XenDomctlVcpucontext`].
pub const XEN_DOMCTL_GETVCPUCONTEXT: u32 = 13;
/// `XEN_DOMCTL_getvcpuinfo`: a vCPU's run state; see
/// [`XenDomctlGetvcpuinfo`].
pub const XEN_DOMCTL_GETVCPUINFO: u32 = 14;
/// `XEN_DOMCTL_max_vcpus`: allocate a domain's vCPUs; see
/// [`XenDomctlMaxVcpus`]. Still required in 4.17 after
/// `XEN_DOMCTL_createdomain`, with the same count.
pub const XEN_DOMCTL_MAX_VCPUS: u32 = 15;
/// `XEN_DOMCTL_scheduler_op`: per-domain scheduler parameters (not
/// mirrored here).
pub const XEN_DOMCTL_SCHEDULER_OP: u32 = 16;
/// `XEN_DOMCTL_setdomainhandle`: change a domain's UUID (`uint8_t[16]`).
pub const XEN_DOMCTL_SETDOMAINHANDLE: u32 = 17;
/// `XEN_DOMCTL_hypercall_init`: fill a PV guest's hypercall page; see
/// [`XenDomctlHypercallInit`].
pub const XEN_DOMCTL_HYPERCALL_INIT: u32 = 22;
/// `XEN_DOMCTL_settimeoffset`: shift a domain's wallclock; see
/// [`XenDomctlSettimeoffset`].
pub const XEN_DOMCTL_SETTIMEOFFSET: u32 = 24;
/// `XEN_DOMCTL_getvcpuaffinity`: read a vCPU's pinning; see
/// [`XenDomctlVcpuaffinity`].
pub const XEN_DOMCTL_GETVCPUAFFINITY: u32 = 25;
/// `XEN_DOMCTL_resumedomain`: resume a suspended domain (no payload).
pub const XEN_DOMCTL_RESUMEDOMAIN: u32 = 27;
/// `XEN_DOMCTL_gettscinfo`: a domain's TSC mode and frequency; see
/// [`XenDomctlTscInfo`].
pub const XEN_DOMCTL_GETTSCINFO: u32 = 59;
/// `XEN_DOMCTL_settscinfo`: set a domain's TSC mode (`tsc_mode` in
/// `xl.cfg`); see [`XenDomctlTscInfo`].
pub const XEN_DOMCTL_SETTSCINFO: u32 = 60;
/// `XEN_DOMCTL_gethvmcontext`: an HVM domain's saved state (header,
/// per-vCPU registers, interrupt controllers, ...) as save records
/// ([`XenDomctlHvmcontext`]).
pub const XEN_DOMCTL_GETHVMCONTEXT: u32 = 33;
/// `XEN_DOMCTL_sethvmcontext`: load save records into an HVM domain
/// ([`XenDomctlHvmcontext`]).
pub const XEN_DOMCTL_SETHVMCONTEXT: u32 = 34;
/// `XEN_DOMCTL_set_address_size`: switch a PV domain to 32-bit; see
/// [`XenDomctlAddressSize`] (64-bit guests never need it).
pub const XEN_DOMCTL_SET_ADDRESS_SIZE: u32 = 35;
/// `XEN_DOMCTL_get_address_size`: a PV domain's width; see
/// [`XenDomctlAddressSize`].
pub const XEN_DOMCTL_GET_ADDRESS_SIZE: u32 = 36;
/// `XEN_DOMCTL_get_paging_mempool_size`: the HAP/shadow pool of an HVM or
/// PVH domain; see [`XenDomctlPagingMempool`].
pub const XEN_DOMCTL_GET_PAGING_MEMPOOL_SIZE: u32 = 85;
/// `XEN_DOMCTL_set_paging_mempool_size`: size the HAP/shadow pool of an
/// HVM or PVH domain; see [`XenDomctlPagingMempool`].
pub const XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE: u32 = 86;

/// Bytes of the union `u` of [`XenDomctl`] (its `uint8_t pad[128]` member).
pub const XEN_DOMCTL_UNION_SIZE: usize = 128;

/// `XEN_DOMINF_dying`: the domain is scheduled to die.
pub const XEN_DOMINF_DYING: u32 = 1 << 0;
/// `XEN_DOMINF_hvm_guest`: an HVM (or PVH) guest, not a PV one.
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
/// `XEN_DOMINF_shutdown`: the guest has shut down; the reason is in
/// the shutdown code bits.
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
/// `XEN_DOMINF_paused`: paused by the toolstack.
pub const XEN_DOMINF_PAUSED: u32 = 1 << 3;
/// `XEN_DOMINF_blocked`: every vCPU waits for an event.
pub const XEN_DOMINF_BLOCKED: u32 = 1 << 4;
/// `XEN_DOMINF_running`: a vCPU is running.
pub const XEN_DOMINF_RUNNING: u32 = 1 << 5;
/// `XEN_DOMINF_debugged`: being debugged.
pub const XEN_DOMINF_DEBUGGED: u32 = 1 << 6;
/// `XEN_DOMINF_xs_domain`: the domain runs xenstore.
pub const XEN_DOMINF_XS_DOMAIN: u32 = 1 << 7;
/// `XEN_DOMINF_hap`: the domain uses hardware-assisted paging.
pub const XEN_DOMINF_HAP: u32 = 1 << 8;
/// `XEN_DOMINF_shutdownshift`: where the guest's shutdown code
/// (`SHUTDOWN_*`) sits in `flags`.
pub const XEN_DOMINF_SHUTDOWNSHIFT: u32 = 16;
/// `XEN_DOMINF_shutdownmask`: the width of the shutdown code, once shifted.
pub const XEN_DOMINF_SHUTDOWNMASK: u32 = 255;

/// `XEN_INVALID_MAX_VCPU_ID`: `max_vcpu_id` of a domain without vCPUs.
pub const XEN_INVALID_MAX_VCPU_ID: u32 = !0;

bitflags! {
    /// The state bits of [`XenDomctlGetdomaininfo::flags`] (everything
    /// but the shutdown code, see [`XenDomctlGetdomaininfo::shutdown_code`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DomInfoFlags: u32 {
        /// `XEN_DOMINF_dying`.
        const DYING = XEN_DOMINF_DYING;
        /// `XEN_DOMINF_hvm_guest`.
        const HVM_GUEST = XEN_DOMINF_HVM_GUEST;
        /// `XEN_DOMINF_shutdown`.
        const SHUTDOWN = XEN_DOMINF_SHUTDOWN;
        /// `XEN_DOMINF_paused`.
        const PAUSED = XEN_DOMINF_PAUSED;
        /// `XEN_DOMINF_blocked`.
        const BLOCKED = XEN_DOMINF_BLOCKED;
        /// `XEN_DOMINF_running`.
        const RUNNING = XEN_DOMINF_RUNNING;
        /// `XEN_DOMINF_debugged`.
        const DEBUGGED = XEN_DOMINF_DEBUGGED;
        /// `XEN_DOMINF_xs_domain`.
        const XS_DOMAIN = XEN_DOMINF_XS_DOMAIN;
        /// `XEN_DOMINF_hap`.
        const HAP = XEN_DOMINF_HAP;
    }
}

/// `XEN_X86_EMU_LAPIC`: emulate the local APIC (HVM, and PVH's only device).
pub const XEN_X86_EMU_LAPIC: u32 = 1 << 0;
/// `XEN_X86_EMU_HPET`: emulate the HPET.
pub const XEN_X86_EMU_HPET: u32 = 1 << 1;
/// `XEN_X86_EMU_PM`: emulate the ACPI PM timer and registers.
pub const XEN_X86_EMU_PM: u32 = 1 << 2;
/// `XEN_X86_EMU_RTC`: emulate the RTC.
pub const XEN_X86_EMU_RTC: u32 = 1 << 3;
/// `XEN_X86_EMU_IOAPIC`: emulate the IO-APIC.
pub const XEN_X86_EMU_IOAPIC: u32 = 1 << 4;
/// `XEN_X86_EMU_PIC`: emulate the 8259 PIC.
pub const XEN_X86_EMU_PIC: u32 = 1 << 5;
/// `XEN_X86_EMU_VGA`: emulate standard VGA.
pub const XEN_X86_EMU_VGA: u32 = 1 << 6;
/// `XEN_X86_EMU_IOMMU`: emulate an IOMMU.
pub const XEN_X86_EMU_IOMMU: u32 = 1 << 7;
/// `XEN_X86_EMU_PIT`: emulate the 8254 PIT.
pub const XEN_X86_EMU_PIT: u32 = 1 << 8;
/// `XEN_X86_EMU_USE_PIRQ`: route interrupts through event channels (PIRQs).
pub const XEN_X86_EMU_USE_PIRQ: u32 = 1 << 9;
/// `XEN_X86_EMU_VPCI`: emulate PCI config space (vPCI).
pub const XEN_X86_EMU_VPCI: u32 = 1 << 10;
/// `XEN_X86_EMU_ALL`: every device above (a full HVM guest without vPCI
/// is `XEN_X86_EMU_ALL & !XEN_X86_EMU_VPCI`).
pub const XEN_X86_EMU_ALL: u32 = (1 << 11) - 1;
/// `XEN_X86_MSR_RELAXED`: [`XenArchDomainconfig::misc_flags`] bit letting
/// the guest read unhandled MSRs as zero and ignore writes to them
/// (`msr_relaxed=1` in `xl.cfg`).
pub const XEN_X86_MSR_RELAXED: u32 = 1 << 0;

bitflags! {
    /// The devices Xen emulates for a domain
    /// ([`XenArchDomainconfig::emulation_flags`], `XEN_X86_EMU_*`).
    ///
    /// Xen 4.17 accepts only a few combinations: none for a PV domU
    /// ([`X86Emu::PIT`] alone for a PV dom0), [`X86Emu::LAPIC`] for PVH,
    /// and (nearly) everything but [`X86Emu::VPCI`] for HVM.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct X86Emu: u32 {
        /// `XEN_X86_EMU_LAPIC`.
        const LAPIC = XEN_X86_EMU_LAPIC;
        /// `XEN_X86_EMU_HPET`.
        const HPET = XEN_X86_EMU_HPET;
        /// `XEN_X86_EMU_PM`.
        const PM = XEN_X86_EMU_PM;
        /// `XEN_X86_EMU_RTC`.
        const RTC = XEN_X86_EMU_RTC;
        /// `XEN_X86_EMU_IOAPIC`.
        const IOAPIC = XEN_X86_EMU_IOAPIC;
        /// `XEN_X86_EMU_PIC`.
        const PIC = XEN_X86_EMU_PIC;
        /// `XEN_X86_EMU_VGA`.
        const VGA = XEN_X86_EMU_VGA;
        /// `XEN_X86_EMU_IOMMU`.
        const IOMMU = XEN_X86_EMU_IOMMU;
        /// `XEN_X86_EMU_PIT`.
        const PIT = XEN_X86_EMU_PIT;
        /// `XEN_X86_EMU_USE_PIRQ`.
        const USE_PIRQ = XEN_X86_EMU_USE_PIRQ;
        /// `XEN_X86_EMU_VPCI`.
        const VPCI = XEN_X86_EMU_VPCI;
    }
}

/// `struct xen_arch_domainconfig` of x86 (`arch-x86/xen.h`): which devices
/// Xen emulates for the domain and other architecture options.
#[doc(alias = "xen_arch_domainconfig")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenArchDomainconfig {
    /// `XEN_X86_EMU_*`: the emulated devices.
    pub emulation_flags: u32,
    /// `XEN_X86_*` miscellaneous options.
    pub misc_flags: u32,
}
const _: () = assert!(core::mem::size_of::<XenArchDomainconfig>() == 8);
const _: () = assert!(core::mem::offset_of!(XenArchDomainconfig, emulation_flags) == 0);
const _: () = assert!(core::mem::offset_of!(XenArchDomainconfig, misc_flags) == 4);

/// `XEN_DOMCTL_getdomaininfo`'s result: a domain's state, memory and
/// vCPUs (all OUT).
///
/// Xen 4.17 answers for the first existing domain whose id is at least
/// the one asked for, so `domain` must be compared with the request; 4.18
/// and later fail with `ESRCH` instead.
#[doc(alias = "xen_domctl_getdomaininfo")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlGetdomaininfo {
    /// The domain described (also echoed in [`XenDomctl::domain`]).
    pub domain: DomId,
    /// Padding.
    pub pad1: u16,
    /// `XEN_DOMINF_*` state bits and the shutdown code; see
    /// [`XenDomctlGetdomaininfo::state`] and
    /// [`XenDomctlGetdomaininfo::shutdown_code`].
    pub flags: u32,
    /// Pages the domain holds.
    pub tot_pages: u64,
    /// Pages it may hold.
    pub max_pages: u64,
    /// Pages claimed for it and not yet allocated.
    pub outstanding_pages: u64,
    /// Pages it shares with other domains (memory sharing).
    pub shr_pages: u64,
    /// Pages paged out.
    pub paged_pages: u64,
    /// GMFN of its `shared_info` page.
    pub shared_info_frame: u64,
    /// CPU time used, in nanoseconds.
    pub cpu_time: u64,
    /// vCPUs currently online.
    pub nr_online_vcpus: u32,
    /// The highest vCPU id in use, or [`XEN_INVALID_MAX_VCPU_ID`].
    pub max_vcpu_id: u32,
    /// Its XSM security label.
    pub ssidref: u32,
    /// The toolstack's handle for it (`xen_domain_handle_t`, a UUID).
    pub handle: [u8; 16],
    /// The CPU pool it runs in.
    pub cpupool: u32,
    /// Width of its guest physical address space, in bits.
    pub gpaddr_bits: u8,
    /// Padding.
    pub pad2: [u8; 7],
    /// Architecture-specific configuration.
    pub arch_config: XenArchDomainconfig,
}
const _: () = assert!(core::mem::size_of::<XenDomctlGetdomaininfo>() == 112);
const _: () = assert!(core::mem::align_of::<XenDomctlGetdomaininfo>() == 8);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, domain) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, pad1) == 2);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, flags) == 4);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, tot_pages) == 8);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, max_pages) == 16);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, outstanding_pages) == 24);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, shr_pages) == 32);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, paged_pages) == 40);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, shared_info_frame) == 48);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, cpu_time) == 56);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, nr_online_vcpus) == 64);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, max_vcpu_id) == 68);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, ssidref) == 72);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, handle) == 76);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, cpupool) == 92);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, gpaddr_bits) == 96);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, pad2) == 97);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetdomaininfo, arch_config) == 104);
const _: () = assert!(core::mem::size_of::<XenDomctlGetdomaininfo>() <= XEN_DOMCTL_UNION_SIZE);

impl XenDomctlGetdomaininfo {
    /// The `XEN_DOMINF_*` state bits, including any this crate does not name.
    pub const fn state(&self) -> DomInfoFlags {
        DomInfoFlags::from_bits_retain(
            self.flags & !(XEN_DOMINF_SHUTDOWNMASK << XEN_DOMINF_SHUTDOWNSHIFT),
        )
    }

    /// The guest's shutdown code (`SHUTDOWN_*`, see
    /// [`crate::xen::sched::ShutdownReason`]); meaningful when
    /// [`DomInfoFlags::SHUTDOWN`] is set.
    pub const fn shutdown_code(&self) -> u32 {
        (self.flags >> XEN_DOMINF_SHUTDOWNSHIFT) & XEN_DOMINF_SHUTDOWNMASK
    }

    /// Why the domain shut down: `None` while it has not
    /// ([`DomInfoFlags::SHUTDOWN`] clear), otherwise its shutdown code,
    /// or the unknown number if it names no [`ShutdownReason`].
    pub fn shutdown_reason(&self) -> Option<Result<ShutdownReason, UnknownValue<u32>>> {
        self.state()
            .contains(DomInfoFlags::SHUTDOWN)
            .then(|| ShutdownReason::try_from(self.shutdown_code()))
    }

    /// Whether this is an HVM or PVH domain rather than a PV one.
    pub const fn is_hvm(&self) -> bool {
        self.flags & XEN_DOMINF_HVM_GUEST != 0
    }

    /// Whether the domain is dying (destroyed, resources not yet freed).
    pub const fn is_dying(&self) -> bool {
        self.flags & XEN_DOMINF_DYING != 0
    }
}

/// `XEN_DOMCTL_CDF_hvm`: an HVM (or PVH) domain rather than a PV one.
pub const XEN_DOMCTL_CDF_HVM: u32 = 1 << 0;
/// `XEN_DOMCTL_CDF_hap`: use hardware-assisted paging (HVM only).
pub const XEN_DOMCTL_CDF_HAP: u32 = 1 << 1;
/// `XEN_DOMCTL_CDF_s3_integrity`: tboot verifies memory across S3.
pub const XEN_DOMCTL_CDF_S3_INTEGRITY: u32 = 1 << 2;
/// `XEN_DOMCTL_CDF_oos_off`: no out-of-sync shadow page tables.
pub const XEN_DOMCTL_CDF_OOS_OFF: u32 = 1 << 3;
/// `XEN_DOMCTL_CDF_xs_domain`: the domain will run xenstore.
pub const XEN_DOMCTL_CDF_XS_DOMAIN: u32 = 1 << 4;
/// `XEN_DOMCTL_CDF_iommu`: the domain may use the IOMMU (passthrough).
pub const XEN_DOMCTL_CDF_IOMMU: u32 = 1 << 5;
/// `XEN_DOMCTL_CDF_nested_virt`: expose nested virtualisation.
pub const XEN_DOMCTL_CDF_NESTED_VIRT: u32 = 1 << 6;
/// `XEN_DOMCTL_CDF_vpmu`: expose the virtual PMU.
pub const XEN_DOMCTL_CDF_VPMU: u32 = 1 << 7;

bitflags! {
    /// [`XenDomctlCreatedomain::flags`] (`XEN_DOMCTL_CDF_*`); Xen 4.17
    /// rejects any other bit with `EINVAL`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CreateDomainFlags: u32 {
        /// `XEN_DOMCTL_CDF_hvm`.
        const HVM = XEN_DOMCTL_CDF_HVM;
        /// `XEN_DOMCTL_CDF_hap`.
        const HAP = XEN_DOMCTL_CDF_HAP;
        /// `XEN_DOMCTL_CDF_s3_integrity`.
        const S3_INTEGRITY = XEN_DOMCTL_CDF_S3_INTEGRITY;
        /// `XEN_DOMCTL_CDF_oos_off`.
        const OOS_OFF = XEN_DOMCTL_CDF_OOS_OFF;
        /// `XEN_DOMCTL_CDF_xs_domain`.
        const XS_DOMAIN = XEN_DOMCTL_CDF_XS_DOMAIN;
        /// `XEN_DOMCTL_CDF_iommu`.
        const IOMMU = XEN_DOMCTL_CDF_IOMMU;
        /// `XEN_DOMCTL_CDF_nested_virt`.
        const NESTED_VIRT = XEN_DOMCTL_CDF_NESTED_VIRT;
        /// `XEN_DOMCTL_CDF_vpmu`.
        const VPMU = XEN_DOMCTL_CDF_VPMU;
    }
}

/// `XEN_DOMCTL_IOMMU_no_sharept`: do not share the HAP page tables with
/// the IOMMU ([`XenDomctlCreatedomain::iommu_opts`]).
pub const XEN_DOMCTL_IOMMU_NO_SHAREPT: u32 = 1 << 0;

/// `XEN_DOMCTL_GRANT_version_mask`: the bits of
/// [`XenDomctlCreatedomain::grant_opts`] holding the highest grant table
/// version the guest may select.
pub const XEN_DOMCTL_GRANT_VERSION_MASK: u32 = 0xf;

/// `XEN_DOMCTL_GRANT_version(v)`: `grant_opts` allowing grant table
/// versions up to `v`. Xen 4.17 requires `1 <= v <=` its
/// `gnttab_max_version` (2 unless limited on its command line; see
/// [`crate::xen::sysctl::PhysCaps::GNTTAB_V2`]).
pub const fn xen_domctl_grant_version(v: u32) -> u32 {
    v & XEN_DOMCTL_GRANT_VERSION_MASK
}

/// `xl`'s default `max_event_channels` ([`XenDomctlCreatedomain::max_evtchn_port`]).
pub const DEFAULT_MAX_EVTCHN_PORT: u32 = 1023;

/// `XEN_DOMCTL_createdomain`: the immutable configuration of a new domain
/// (all IN). Xen creates it paused, without memory or vCPUs.
#[doc(alias = "xen_domctl_createdomain")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlCreatedomain {
    /// XSM security label (0 without Flask).
    pub ssidref: u32,
    /// The toolstack's UUID for the domain (`xen_domain_handle_t`).
    pub handle: [u8; 16],
    /// `XEN_DOMCTL_CDF_*`, see [`CreateDomainFlags`].
    pub flags: u32,
    /// `XEN_DOMCTL_IOMMU_*`.
    pub iommu_opts: u32,
    /// Number of vCPUs (`max_vcpus` in `xl.cfg`); must also be passed to
    /// `XEN_DOMCTL_max_vcpus`.
    pub max_vcpus: u32,
    /// Highest event channel port the domain may use.
    pub max_evtchn_port: u32,
    /// Grant table frames; negative for Xen's default.
    pub max_grant_frames: i32,
    /// Maptrack frames (grants it may map); negative for Xen's default.
    pub max_maptrack_frames: i32,
    /// Grant options: [`xen_domctl_grant_version`].
    pub grant_opts: u32,
    /// Per-vCPU processor trace buffer, in bytes; 0 for none.
    pub vmtrace_size: u32,
    /// The CPU pool to create it in (0: the default pool).
    pub cpupool_id: u32,
    /// x86 configuration: emulated devices and MSR policy.
    pub arch: XenArchDomainconfig,
}
const _: () = assert!(size_of::<XenDomctlCreatedomain>() == 64);
const _: () = assert!(core::mem::align_of::<XenDomctlCreatedomain>() == 4);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, ssidref) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, handle) == 4);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, flags) == 20);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, iommu_opts) == 24);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, max_vcpus) == 28);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, max_evtchn_port) == 32);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, max_grant_frames) == 36);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, max_maptrack_frames) == 40);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, grant_opts) == 44);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, vmtrace_size) == 48);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, cpupool_id) == 52);
const _: () = assert!(core::mem::offset_of!(XenDomctlCreatedomain, arch) == 56);

impl XenDomctlCreatedomain {
    /// A PV domain with `max_vcpus` vCPUs and `xl`'s defaults otherwise:
    /// 1023 event channels, Xen's default grant and maptrack frames,
    /// grant table v1 at most, no emulated devices.
    pub const fn pv(max_vcpus: u32) -> Self {
        Self {
            ssidref: 0,
            handle: [0; 16],
            flags: 0,
            iommu_opts: 0,
            max_vcpus,
            max_evtchn_port: DEFAULT_MAX_EVTCHN_PORT,
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            grant_opts: xen_domctl_grant_version(1),
            vmtrace_size: 0,
            cpupool_id: 0,
            arch: XenArchDomainconfig {
                emulation_flags: 0,
                misc_flags: 0,
            },
        }
    }

    /// A PVH domain (HVM container with hardware-assisted paging and only
    /// an emulated local APIC), otherwise as [`XenDomctlCreatedomain::pv`].
    pub const fn pvh(max_vcpus: u32) -> Self {
        let mut config = Self::pv(max_vcpus);
        config.flags = XEN_DOMCTL_CDF_HVM | XEN_DOMCTL_CDF_HAP;
        config.arch.emulation_flags = XEN_X86_EMU_LAPIC;
        config
    }

    /// [`XenDomctlCreatedomain::flags`] as [`CreateDomainFlags`], keeping
    /// unknown bits.
    pub const fn create_flags(&self) -> CreateDomainFlags {
        CreateDomainFlags::from_bits_retain(self.flags)
    }
}

/// `struct xenctl_bitmap` (`xen.h`, tools only): a bitmap of CPUs or NUMA
/// nodes in caller memory, bit `n` of byte `n / 8` for item `n`.
#[doc(alias = "xenctl_bitmap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenctlBitmap {
    /// The bytes (`XEN_GUEST_HANDLE_64(uint8)`).
    pub bitmap: GuestHandle,
    /// Number of bits in `bitmap`.
    pub nr_bits: u32,
    /// Padding (implicit in C).
    pub _pad: u32,
}
const _: () = assert!(size_of::<XenctlBitmap>() == 16);
const _: () = assert!(core::mem::offset_of!(XenctlBitmap, bitmap) == 0);
const _: () = assert!(core::mem::offset_of!(XenctlBitmap, nr_bits) == 8);

/// `XEN_DOMCTL_max_mem`: the most memory the domain may hold (IN).
#[doc(alias = "xen_domctl_max_mem")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlMaxMem {
    /// The limit, in KiB.
    pub max_memkb: u64,
}
const _: () = assert!(size_of::<XenDomctlMaxMem>() == 8);

/// `XEN_DOMCTL_setvcpucontext` / `XEN_DOMCTL_getvcpucontext`: which vCPU,
/// and where its [`VcpuGuestContext`](super::arch_x86::VcpuGuestContext) is.
#[doc(alias = "xen_domctl_vcpucontext")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlVcpucontext {
    /// IN: the vCPU.
    pub vcpu: u32,
    /// Padding (implicit in C).
    pub _pad: u32,
    /// IN/OUT: a `vcpu_guest_context_t` (read for set, written for get).
    /// A null handle with `setvcpucontext` resets the vCPU.
    pub ctxt: GuestHandle,
}
const _: () = assert!(size_of::<XenDomctlVcpucontext>() == 16);
const _: () = assert!(core::mem::offset_of!(XenDomctlVcpucontext, vcpu) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctlVcpucontext, ctxt) == 8);

/// `XEN_DOMCTL_getvcpuinfo`: a vCPU's run state.
#[doc(alias = "xen_domctl_getvcpuinfo")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlGetvcpuinfo {
    /// IN: the vCPU.
    pub vcpu: u32,
    /// OUT: non-zero if online (not hot-unplugged).
    pub online: u8,
    /// OUT: non-zero if blocked waiting for an event.
    pub blocked: u8,
    /// OUT: non-zero if currently scheduled on a physical CPU.
    pub running: u8,
    /// Padding (implicit in C).
    pub _pad: u8,
    /// OUT: CPU time used, in nanoseconds.
    pub cpu_time: u64,
    /// OUT: the physical CPU it runs, or last ran, on.
    pub cpu: u32,
    /// Padding (implicit in C).
    pub _pad2: u32,
}
const _: () = assert!(size_of::<XenDomctlGetvcpuinfo>() == 24);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetvcpuinfo, vcpu) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetvcpuinfo, online) == 4);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetvcpuinfo, blocked) == 5);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetvcpuinfo, running) == 6);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetvcpuinfo, cpu_time) == 8);
const _: () = assert!(core::mem::offset_of!(XenDomctlGetvcpuinfo, cpu) == 16);

impl XenDomctlGetvcpuinfo {
    /// Whether the vCPU is online.
    pub const fn is_online(&self) -> bool {
        self.online != 0
    }

    /// Whether the vCPU is blocked waiting for an event.
    pub const fn is_blocked(&self) -> bool {
        self.blocked != 0
    }

    /// Whether the vCPU is running now.
    pub const fn is_running(&self) -> bool {
        self.running != 0
    }
}

/// `XEN_VCPUAFFINITY_HARD`: the hard affinity (where the vCPU may run).
pub const XEN_VCPUAFFINITY_HARD: u32 = 1 << 0;
/// `XEN_VCPUAFFINITY_SOFT`: the soft affinity (where it prefers to run).
pub const XEN_VCPUAFFINITY_SOFT: u32 = 1 << 1;
/// `XEN_VCPUAFFINITY_FORCE`: undo a guest's `SCHEDOP_pin_override`.
pub const XEN_VCPUAFFINITY_FORCE: u32 = 1 << 2;

bitflags! {
    /// [`XenDomctlVcpuaffinity::flags`] (`XEN_VCPUAFFINITY_*`): which
    /// maps to set or get.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VcpuAffinityFlags: u32 {
        /// `XEN_VCPUAFFINITY_HARD`.
        const HARD = XEN_VCPUAFFINITY_HARD;
        /// `XEN_VCPUAFFINITY_SOFT`.
        const SOFT = XEN_VCPUAFFINITY_SOFT;
        /// `XEN_VCPUAFFINITY_FORCE`.
        const FORCE = XEN_VCPUAFFINITY_FORCE;
    }
}

/// `XEN_DOMCTL_setvcpuaffinity` / `XEN_DOMCTL_getvcpuaffinity`: the
/// physical CPUs a vCPU may (hard) and prefers to (soft) run on.
///
/// For set, both maps are IN/OUT: Xen writes back the effective affinity
/// (intersected with the CPU pool's online CPUs). For get, both are OUT.
#[doc(alias = "xen_domctl_vcpuaffinity")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlVcpuaffinity {
    /// IN: the vCPU.
    pub vcpu: u32,
    /// IN: `XEN_VCPUAFFINITY_*`, see [`VcpuAffinityFlags`].
    pub flags: u32,
    /// The hard affinity map, used if `flags` has `HARD`.
    pub cpumap_hard: XenctlBitmap,
    /// The soft affinity map, used if `flags` has `SOFT`.
    pub cpumap_soft: XenctlBitmap,
}
const _: () = assert!(size_of::<XenDomctlVcpuaffinity>() == 40);
const _: () = assert!(core::mem::offset_of!(XenDomctlVcpuaffinity, vcpu) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctlVcpuaffinity, flags) == 4);
const _: () = assert!(core::mem::offset_of!(XenDomctlVcpuaffinity, cpumap_hard) == 8);
const _: () = assert!(core::mem::offset_of!(XenDomctlVcpuaffinity, cpumap_soft) == 24);

/// `XEN_DOMCTL_max_vcpus`: allocate the domain's vCPUs (IN).
#[doc(alias = "xen_domctl_max_vcpus")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlMaxVcpus {
    /// Number of vCPUs: must equal [`XenDomctlCreatedomain::max_vcpus`].
    pub max: u32,
}
const _: () = assert!(size_of::<XenDomctlMaxVcpus>() == 4);

/// `XEN_DOMCTL_hypercall_init`: have Xen write its hypercall stubs into a
/// page of a PV guest (the one its ELF notes name as `HYPERCALL_PAGE`).
#[doc(alias = "xen_domctl_hypercall_init")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlHypercallInit {
    /// IN: the guest frame to fill.
    pub gmfn: u64,
}
const _: () = assert!(size_of::<XenDomctlHypercallInit>() == 8);

/// `XEN_DOMCTL_settimeoffset`: shift the domain's wallclock (IN).
#[doc(alias = "xen_domctl_settimeoffset")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlSettimeoffset {
    /// Seconds added to the domain's wallclock (`rtc_timeoffset`).
    pub time_offset_seconds: i64,
}
const _: () = assert!(size_of::<XenDomctlSettimeoffset>() == 8);

/// TSC modes of [`XenDomctlTscInfo::tsc_mode`] (`arch-x86/cpuid.h`, leaf
/// 4 of Xen's CPUID range): emulate `rdtsc` only when the TSC is not
/// reliable (the default).
pub const XEN_TSC_MODE_DEFAULT: u32 = 0;
/// Always emulate `rdtsc`.
pub const XEN_TSC_MODE_ALWAYS_EMULATE: u32 = 1;
/// Never emulate `rdtsc` (`tsc_mode="native"`).
pub const XEN_TSC_MODE_NEVER_EMULATE: u32 = 2;

/// `XEN_DOMCTL_{get,set}tscinfo`: a domain's TSC mode (IN/OUT). With
/// `gtsc_khz`, `incarnation` and `elapsed_nsec` zero, set keeps the
/// host's frequency and a new domain's defaults, as libxl does.
#[doc(alias = "xen_domctl_tsc_info")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlTscInfo {
    /// `XEN_TSC_MODE_*`.
    pub tsc_mode: u32,
    /// The guest's TSC frequency in kHz (0: the host's).
    pub gtsc_khz: u32,
    /// Times the domain was migrated or restored.
    pub incarnation: u32,
    /// Padding.
    pub pad: u32,
    /// Nanoseconds the domain has run (restore only).
    pub elapsed_nsec: u64,
}
const _: () = assert!(size_of::<XenDomctlTscInfo>() == 24);
const _: () = assert!(core::mem::offset_of!(XenDomctlTscInfo, elapsed_nsec) == 16);

/// `XEN_DOMCTL_{get,set}hvmcontext`: a buffer of HVM save records
/// (`xen/hvm/save.h`).
#[doc(alias = "xen_domctl_hvmcontext")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlHvmcontext {
    /// IN: the buffer's size; OUT (get): the bytes Xen filled, or with a
    /// null `buffer` the size a buffer needs.
    pub size: u32,
    /// Padding (implicit in C).
    pub _pad: u32,
    /// IN: the records (`XEN_GUEST_HANDLE_64(uint8)`); null to query the size.
    pub buffer: GuestHandle,
}
const _: () = assert!(size_of::<XenDomctlHvmcontext>() == 16);
const _: () = assert!(core::mem::offset_of!(XenDomctlHvmcontext, size) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctlHvmcontext, buffer) == 8);

/// `XEN_DOMCTL_set_address_size` / `XEN_DOMCTL_get_address_size`: a PV
/// domain's width.
#[doc(alias = "xen_domctl_address_size")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlAddressSize {
    /// 32 or 64 (bits).
    pub size: u32,
}
const _: () = assert!(size_of::<XenDomctlAddressSize>() == 4);

/// `XEN_DOMCTL_{get,set}_paging_mempool_size`: the memory Xen sets aside
/// for an HVM or PVH domain's HAP or shadow page tables.
#[doc(alias = "xen_domctl_paging_mempool")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenDomctlPagingMempool {
    /// Size in bytes (IN for set, OUT for get).
    pub size: u64,
}
const _: () = assert!(size_of::<XenDomctlPagingMempool>() == 8);

/// `XEN_SCHEDULER_CREDIT`.
pub const XEN_SCHEDULER_CREDIT: u32 = 5;
/// `XEN_SCHEDULER_CREDIT2`.
pub const XEN_SCHEDULER_CREDIT2: u32 = 6;
/// `XEN_SCHEDULER_ARINC653`.
pub const XEN_SCHEDULER_ARINC653: u32 = 7;
/// `XEN_SCHEDULER_RTDS`.
pub const XEN_SCHEDULER_RTDS: u32 = 8;
/// `XEN_SCHEDULER_NULL`.
pub const XEN_SCHEDULER_NULL: u32 = 9;

abi_enum! {
    /// A scheduler (`XEN_SCHEDULER_*`), as `XEN_SYSCTL_sched_id` reports
    /// the default one.
    pub enum Scheduler: u32, "scheduler" {
        /// Credit.
        Credit = XEN_SCHEDULER_CREDIT => "XEN_SCHEDULER_CREDIT",
        /// Credit2 (the default since Xen 4.12).
        Credit2 = XEN_SCHEDULER_CREDIT2 => "XEN_SCHEDULER_CREDIT2",
        /// ARINC 653.
        Arinc653 = XEN_SCHEDULER_ARINC653 => "XEN_SCHEDULER_ARINC653",
        /// Real-time deferrable server.
        Rtds = XEN_SCHEDULER_RTDS => "XEN_SCHEDULER_RTDS",
        /// Null (one vCPU per CPU).
        Null = XEN_SCHEDULER_NULL => "XEN_SCHEDULER_NULL",
    }
}

impl Scheduler {
    /// The name `xl info` prints as `xen_scheduler` (`"credit2"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Credit => "credit",
            Scheduler::Credit2 => "credit2",
            Scheduler::Arinc653 => "arinc653",
            Scheduler::Rtds => "rtds",
            Scheduler::Null => "null",
        }
    }
}

/// The argument of `__HYPERVISOR_domctl` (`struct xen_domctl`): a header
/// naming the operation and the target domain, and a 128-byte union of
/// per-operation structures, kept as raw words (they are 8-byte aligned
/// in C).
///
/// Xen reads the whole structure and, for operations with results,
/// copies it back.
#[doc(alias = "xen_domctl")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenDomctl {
    /// `XEN_DOMCTL_*`: the operation.
    pub cmd: u32,
    /// Must be [`XEN_DOMCTL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// The target domain (IN/OUT for some operations).
    pub domain: DomId,
    /// Padding.
    pub _pad: [u16; 3],
    /// The C union `u`, whose meaning depends on `cmd`.
    pub u: [u64; XEN_DOMCTL_UNION_SIZE / 8],
}
const _: () = assert!(core::mem::size_of::<XenDomctl>() == 144);
const _: () = assert!(core::mem::align_of::<XenDomctl>() == 8);
const _: () = assert!(core::mem::offset_of!(XenDomctl, cmd) == 0);
const _: () = assert!(core::mem::offset_of!(XenDomctl, interface_version) == 4);
const _: () = assert!(core::mem::offset_of!(XenDomctl, domain) == 8);
const _: () = assert!(core::mem::offset_of!(XenDomctl, _pad) == 10);
const _: () = assert!(core::mem::offset_of!(XenDomctl, u) == 16);

impl XenDomctl {
    /// Operation `cmd` on `domain`, at this crate's interface version, with
    /// a zeroed union.
    pub const fn new(cmd: u32, domain: DomId) -> Self {
        Self {
            cmd,
            interface_version: XEN_DOMCTL_INTERFACE_VERSION,
            domain,
            _pad: [0; 3],
            u: [0; XEN_DOMCTL_UNION_SIZE / 8],
        }
    }

    /// Operation `cmd` on `domain` with `payload` at the start of the
    /// union (the rest zeroed). A payload larger than the union does not
    /// compile.
    pub fn with_payload<T: IntoBytes + Immutable>(cmd: u32, domain: DomId, payload: &T) -> Self {
        const { assert!(size_of::<T>() <= XEN_DOMCTL_UNION_SIZE) };
        let mut domctl = Self::new(cmd, domain);
        domctl.u.as_mut_bytes()[..size_of::<T>()].copy_from_slice(payload.as_bytes());
        domctl
    }

    /// The start of the union read as `T` (the member of `u` for this
    /// operation's reply). A `T` larger than the union does not compile.
    pub fn payload<T: FromBytes>(&self) -> T {
        const { assert!(size_of::<T>() <= XEN_DOMCTL_UNION_SIZE) };
        T::read_from_prefix(self.u.as_bytes()).map_or_else(|_| T::new_zeroed(), |(v, _)| v)
    }

    /// `XEN_DOMCTL_getdomaininfo` for `domain`.
    pub const fn getdomaininfo(domain: DomId) -> Self {
        Self::new(XEN_DOMCTL_GETDOMAININFO, domain)
    }

    /// The union read as `u.getdomaininfo`.
    pub fn getdomaininfo_result(&self) -> XenDomctlGetdomaininfo {
        self.payload()
    }

    /// `XEN_DOMCTL_createdomain` with `config`; `domain` 0 lets Xen pick
    /// the id, which the reply's [`XenDomctl::domain`] holds.
    pub fn createdomain(domain: DomId, config: &XenDomctlCreatedomain) -> Self {
        Self::with_payload(XEN_DOMCTL_CREATEDOMAIN, domain, config)
    }

    /// `XEN_DOMCTL_destroydomain` of `domain`.
    pub const fn destroydomain(domain: DomId) -> Self {
        Self::new(XEN_DOMCTL_DESTROYDOMAIN, domain)
    }

    /// `XEN_DOMCTL_pausedomain` of `domain`.
    pub const fn pausedomain(domain: DomId) -> Self {
        Self::new(XEN_DOMCTL_PAUSEDOMAIN, domain)
    }

    /// `XEN_DOMCTL_unpausedomain` of `domain`.
    pub const fn unpausedomain(domain: DomId) -> Self {
        Self::new(XEN_DOMCTL_UNPAUSEDOMAIN, domain)
    }

    /// `XEN_DOMCTL_max_mem`: limit `domain` to `max_memkb` KiB.
    pub fn max_mem(domain: DomId, max_memkb: u64) -> Self {
        Self::with_payload(XEN_DOMCTL_MAX_MEM, domain, &XenDomctlMaxMem { max_memkb })
    }

    /// `XEN_DOMCTL_max_vcpus`: allocate `max` vCPUs for `domain`.
    pub fn max_vcpus(domain: DomId, max: u32) -> Self {
        Self::with_payload(XEN_DOMCTL_MAX_VCPUS, domain, &XenDomctlMaxVcpus { max })
    }

    /// `XEN_DOMCTL_getvcpuinfo` for `vcpu` of `domain`.
    pub fn getvcpuinfo(domain: DomId, vcpu: u32) -> Self {
        let query = XenDomctlGetvcpuinfo {
            vcpu,
            ..Default::default()
        };
        Self::with_payload(XEN_DOMCTL_GETVCPUINFO, domain, &query)
    }

    /// `XEN_DOMCTL_setvcpucontext` of `vcpu` of `domain`, from the
    /// context at `ctxt` (0 resets the vCPU).
    pub fn setvcpucontext(domain: DomId, vcpu: u32, ctxt: GuestHandle) -> Self {
        let arg = XenDomctlVcpucontext {
            vcpu,
            _pad: 0,
            ctxt,
        };
        Self::with_payload(XEN_DOMCTL_SETVCPUCONTEXT, domain, &arg)
    }

    /// `XEN_DOMCTL_getvcpucontext` of `vcpu` of `domain`, into `ctxt`.
    pub fn getvcpucontext(domain: DomId, vcpu: u32, ctxt: GuestHandle) -> Self {
        let arg = XenDomctlVcpucontext {
            vcpu,
            _pad: 0,
            ctxt,
        };
        Self::with_payload(XEN_DOMCTL_GETVCPUCONTEXT, domain, &arg)
    }

    /// `XEN_DOMCTL_hypercall_init`: fill frame `gmfn` of `domain` with
    /// hypercall stubs.
    pub fn hypercall_init(domain: DomId, gmfn: u64) -> Self {
        Self::with_payload(
            XEN_DOMCTL_HYPERCALL_INIT,
            domain,
            &XenDomctlHypercallInit { gmfn },
        )
    }

    /// `XEN_DOMCTL_settimeoffset`: shift `domain`'s wallclock by
    /// `seconds`.
    pub fn settimeoffset(domain: DomId, seconds: i64) -> Self {
        let arg = XenDomctlSettimeoffset {
            time_offset_seconds: seconds,
        };
        Self::with_payload(XEN_DOMCTL_SETTIMEOFFSET, domain, &arg)
    }

    /// `XEN_DOMCTL_settscinfo`: put `domain` in TSC mode `tsc_mode`
    /// (`XEN_TSC_MODE_*`), with the host's frequency.
    pub fn settscinfo(domain: DomId, tsc_mode: u32) -> Self {
        let arg = XenDomctlTscInfo {
            tsc_mode,
            ..Default::default()
        };
        Self::with_payload(XEN_DOMCTL_SETTSCINFO, domain, &arg)
    }

    /// `XEN_DOMCTL_set_paging_mempool_size`: give `domain` `bytes` of
    /// HAP/shadow page table memory.
    pub fn set_paging_mempool_size(domain: DomId, bytes: u64) -> Self {
        let arg = XenDomctlPagingMempool { size: bytes };
        Self::with_payload(XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE, domain, &arg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getdomaininfo_request_is_the_c_header_layout() {
        let domctl = XenDomctl::getdomaininfo(7);

        let bytes = domctl.as_bytes();

        assert_eq!(bytes.len(), 144);
        assert_eq!(&bytes[0..4], &5u32.to_le_bytes(), "cmd");
        assert_eq!(&bytes[4..8], &0x15u32.to_le_bytes(), "interface_version");
        assert_eq!(&bytes[8..10], &7u16.to_le_bytes(), "domain");
        assert!(
            bytes[10..].iter().all(|b| *b == 0),
            "padding and union are zero"
        );
    }

    #[test]
    fn getdomaininfo_result_is_read_from_the_union() {
        let mut domctl = XenDomctl::getdomaininfo(3);
        let info = XenDomctlGetdomaininfo {
            domain: 3,
            flags: XEN_DOMINF_SHUTDOWN | XEN_DOMINF_PAUSED | (2 << XEN_DOMINF_SHUTDOWNSHIFT),
            tot_pages: 0x1234,
            gpaddr_bits: 52,
            arch_config: XenArchDomainconfig {
                emulation_flags: 1,
                misc_flags: 0,
            },
            ..Default::default()
        };
        domctl.u.as_mut_bytes()[..112].copy_from_slice(info.as_bytes());

        let read = domctl.getdomaininfo_result();

        assert_eq!(read, info);
        assert_eq!(read.state(), DomInfoFlags::SHUTDOWN | DomInfoFlags::PAUSED);
        assert_eq!(read.shutdown_code(), 2);
    }

    #[test]
    fn createdomain_request_is_the_c_header_layout() {
        let mut config = XenDomctlCreatedomain::pvh(4);
        config.handle = [0xaa; 16];
        config.max_maptrack_frames = 1024;

        let domctl = XenDomctl::createdomain(0, &config);
        let bytes = domctl.as_bytes();

        // Union at 16; offsets inside it from domctl.h (see the asserts).
        let u32_at =
            |off: usize| u32::from_le_bytes(bytes[16 + off..16 + off + 4].try_into().unwrap());
        assert_eq!(&bytes[0..4], &1u32.to_le_bytes(), "cmd");
        assert_eq!(&bytes[8..10], &0u16.to_le_bytes(), "domain 0: Xen picks");
        assert_eq!(&bytes[16 + 4..16 + 20], &[0xaa; 16], "handle");
        assert_eq!(u32_at(20), XEN_DOMCTL_CDF_HVM | XEN_DOMCTL_CDF_HAP, "flags");
        assert_eq!(u32_at(28), 4, "max_vcpus");
        assert_eq!(u32_at(32), 1023, "max_evtchn_port");
        assert_eq!(u32_at(36), u32::MAX, "max_grant_frames -1");
        assert_eq!(u32_at(40), 1024, "max_maptrack_frames");
        assert_eq!(u32_at(44), 1, "grant_opts: version 1");
        assert_eq!(u32_at(56), XEN_X86_EMU_LAPIC, "arch.emulation_flags");
        assert!(
            bytes[16 + 64..].iter().all(|b| *b == 0),
            "rest of the union"
        );
    }

    #[test]
    fn pv_domains_have_no_emulated_devices() {
        let config = XenDomctlCreatedomain::pv(2);

        assert_eq!(config.create_flags(), CreateDomainFlags::empty());
        assert_eq!(
            X86Emu::from_bits_retain(config.arch.emulation_flags),
            X86Emu::empty()
        );
        assert_eq!(xen_domctl_grant_version(2), 2);
        assert_eq!(X86Emu::all().bits(), XEN_X86_EMU_ALL);
    }

    #[test]
    fn shutdown_reason_is_decoded_only_after_shutdown() {
        let running = XenDomctlGetdomaininfo {
            flags: XEN_DOMINF_RUNNING,
            ..Default::default()
        };
        let rebooting = XenDomctlGetdomaininfo {
            flags: XEN_DOMINF_SHUTDOWN | (1 << XEN_DOMINF_SHUTDOWNSHIFT),
            ..Default::default()
        };
        let odd = XenDomctlGetdomaininfo {
            flags: XEN_DOMINF_SHUTDOWN | XEN_DOMINF_HVM_GUEST | (77 << XEN_DOMINF_SHUTDOWNSHIFT),
            ..Default::default()
        };

        assert_eq!(running.shutdown_reason(), None);
        assert_eq!(
            rebooting.shutdown_reason(),
            Some(Ok(ShutdownReason::Reboot))
        );
        assert_eq!(
            odd.shutdown_reason().map(|r| r.map_err(|e| e.value)),
            Some(Err(77))
        );
        assert!(odd.is_hvm() && !odd.is_dying());
    }

    #[test]
    fn getvcpuinfo_reply_is_read_from_the_union() {
        let mut domctl = XenDomctl::getvcpuinfo(5, 1);
        assert_eq!(&domctl.as_bytes()[16..20], &1u32.to_le_bytes(), "vcpu");
        // Xen's reply: online, running, on CPU 3, 1 s of CPU time.
        let bytes = domctl.u.as_mut_bytes();
        bytes[4] = 1;
        bytes[6] = 1;
        bytes[8..16].copy_from_slice(&1_000_000_000u64.to_le_bytes());
        bytes[16..20].copy_from_slice(&3u32.to_le_bytes());

        let info: XenDomctlGetvcpuinfo = domctl.payload();

        assert!(info.is_online() && info.is_running() && !info.is_blocked());
        assert_eq!((info.vcpu, info.cpu_time, info.cpu), (1, 1_000_000_000, 3));
    }

    #[test]
    fn handle_carrying_requests_put_the_handle_at_the_c_offset() {
        let set = XenDomctl::setvcpucontext(9, 0, 0x7f12_3456_7000);
        let init = XenDomctl::hypercall_init(9, 0x1234);
        let mem = XenDomctl::max_mem(9, 512 * 1024);

        assert_eq!(set.cmd, XEN_DOMCTL_SETVCPUCONTEXT);
        assert_eq!(&set.as_bytes()[16..20], &0u32.to_le_bytes(), "vcpu");
        assert_eq!(
            &set.as_bytes()[24..32],
            &0x7f12_3456_7000u64.to_le_bytes(),
            "ctxt"
        );
        assert_eq!(init.cmd, XEN_DOMCTL_HYPERCALL_INIT);
        assert_eq!(&init.as_bytes()[16..24], &0x1234u64.to_le_bytes(), "gmfn");
        assert_eq!(
            &mem.as_bytes()[16..24],
            &(512u64 * 1024).to_le_bytes(),
            "max_memkb"
        );
    }

    #[test]
    fn scheduler_names_are_xl_info_words() {
        assert_eq!(Scheduler::try_from(5).map(Scheduler::name), Ok("credit"));
        assert_eq!(Scheduler::try_from(9).map(Scheduler::name), Ok("null"));
        assert!(Scheduler::try_from(4).is_err());
    }
}
