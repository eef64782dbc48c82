//! System control (`xen/sysctl.h`): the `struct xen_sysctl` argument of
//! `__HYPERVISOR_sysctl` and the host-wide queries `xl` needs: the
//! hypervisor's console ring (`xl dmesg`), the host's resources (`xl info`),
//! the list of domains (`xl list`), per-CPU idle time and the scheduler.
//!
//! Like domctls, sysctls are for the toolstack only, and Xen refuses one
//! whose `interface_version` is not its own [`XEN_SYSCTL_INTERFACE_VERSION`]
//! (`EACCES`).
//!
//! Layouts: each asserted offset was derived from the C header by the
//! x86_64 System V rules (`uint64_aligned_t` and guest handles are 8-byte
//! aligned 8-byte values) and checked against a C program that includes
//! Debian's `libxen-dev` 4.17 headers and prints `offsetof`/`sizeof`.

use core::mem::{offset_of, size_of};

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::domctl::{Scheduler, XenDomctlGetdomaininfo};
use super::hypercall::{GuestHandle, UnknownValue};
use super::DomId;

/// `XEN_SYSCTL_INTERFACE_VERSION`: the sysctl interface of Xen 4.17.
pub const XEN_SYSCTL_INTERFACE_VERSION: u32 = 0x0000_0015;

/// Bytes of the union `u` of [`XenSysctl`] (its `uint8_t pad[128]` member).
pub const XEN_SYSCTL_UNION_SIZE: usize = 128;

/// `XEN_SYSCTL_readconsole`: read the hypervisor's console ring; see
/// [`XenSysctlReadconsole`].
pub const XEN_SYSCTL_READCONSOLE: u32 = 1;
/// `XEN_SYSCTL_tbuf_op`: trace buffer control.
pub const XEN_SYSCTL_TBUF_OP: u32 = 2;
/// `XEN_SYSCTL_physinfo`: the host's CPUs, memory and capabilities; see
/// [`XenSysctlPhysinfo`].
pub const XEN_SYSCTL_PHYSINFO: u32 = 3;
/// `XEN_SYSCTL_sched_id`: the default scheduler; see [`XenSysctlSchedId`].
pub const XEN_SYSCTL_SCHED_ID: u32 = 4;
/// `XEN_SYSCTL_perfc_op`: software performance counters.
pub const XEN_SYSCTL_PERFC_OP: u32 = 5;
/// `XEN_SYSCTL_getdomaininfolist`: the state of several domains; see
/// [`XenSysctlGetdomaininfolist`].
pub const XEN_SYSCTL_GETDOMAININFOLIST: u32 = 6;
/// `XEN_SYSCTL_debug_keys`: inject debug keys (`xl debug-keys`).
pub const XEN_SYSCTL_DEBUG_KEYS: u32 = 7;
/// `XEN_SYSCTL_getcpuinfo`: per-CPU idle time; see
/// [`XenSysctlGetcpuinfo`].
pub const XEN_SYSCTL_GETCPUINFO: u32 = 8;
/// `XEN_SYSCTL_availheap`: free heap memory by node and address width.
pub const XEN_SYSCTL_AVAILHEAP: u32 = 9;
/// `XEN_SYSCTL_get_pmstat`: power management statistics.
pub const XEN_SYSCTL_GET_PMSTAT: u32 = 10;
/// `XEN_SYSCTL_cpu_hotplug`: bring CPUs on- or offline.
pub const XEN_SYSCTL_CPU_HOTPLUG: u32 = 11;
/// `XEN_SYSCTL_pm_op`: power management control.
pub const XEN_SYSCTL_PM_OP: u32 = 12;
/// `XEN_SYSCTL_page_offline_op`: offline memory pages.
pub const XEN_SYSCTL_PAGE_OFFLINE_OP: u32 = 14;
/// `XEN_SYSCTL_lockprof_op`: lock profiling.
pub const XEN_SYSCTL_LOCKPROF_OP: u32 = 15;
/// `XEN_SYSCTL_cputopoinfo`: CPU topology.
pub const XEN_SYSCTL_CPUTOPOINFO: u32 = 16;
/// `XEN_SYSCTL_numainfo`: NUMA nodes' memory and distances.
pub const XEN_SYSCTL_NUMAINFO: u32 = 17;
/// `XEN_SYSCTL_cpupool_op`: CPU pools.
pub const XEN_SYSCTL_CPUPOOL_OP: u32 = 18;
/// `XEN_SYSCTL_scheduler_op`: scheduler-wide parameters.
pub const XEN_SYSCTL_SCHEDULER_OP: u32 = 19;
/// `XEN_SYSCTL_coverage_op`: gcov data.
pub const XEN_SYSCTL_COVERAGE_OP: u32 = 20;
/// `XEN_SYSCTL_psr_cmt_op`: cache monitoring.
pub const XEN_SYSCTL_PSR_CMT_OP: u32 = 21;
/// `XEN_SYSCTL_pcitopoinfo`: PCI device to NUMA node.
pub const XEN_SYSCTL_PCITOPOINFO: u32 = 22;
/// `XEN_SYSCTL_psr_alloc`: cache allocation.
pub const XEN_SYSCTL_PSR_ALLOC: u32 = 23;
/// `XEN_SYSCTL_get_cpu_levelling_caps`: CPUID levelling capabilities.
pub const XEN_SYSCTL_GET_CPU_LEVELLING_CAPS: u32 = 25;
/// `XEN_SYSCTL_get_cpu_featureset`: CPU feature sets.
pub const XEN_SYSCTL_GET_CPU_FEATURESET: u32 = 26;
/// `XEN_SYSCTL_livepatch_op`: live patching.
pub const XEN_SYSCTL_LIVEPATCH_OP: u32 = 27;
/// `XEN_SYSCTL_get_cpu_policy`: CPUID/MSR policies.
pub const XEN_SYSCTL_GET_CPU_POLICY: u32 = 29;

/// `XEN_SYSCTL_readconsole`: copy bytes of the hypervisor's console ring
/// to `buffer`.
///
/// Without `incremental`, reading starts at the oldest byte not cleared;
/// with it, at `index` if that lies within the ring's live data. Either
/// way the reply's `index` is where reading stopped, to pass back with
/// `incremental` for the next chunk; a reply with `count == 0` means the
/// ring is drained.
#[doc(alias = "xen_sysctl_readconsole")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenSysctlReadconsole {
    /// IN: non-zero to discard what was read (`xl dmesg -c`).
    pub clear: u8,
    /// IN: non-zero to start at `index`.
    pub incremental: u8,
    /// Padding.
    pub pad0: u8,
    /// Padding.
    pub pad1: u8,
    /// IN: where to start if `incremental`; OUT: where reading stopped.
    pub index: u32,
    /// IN: the caller's buffer (`XEN_GUEST_HANDLE_64(char)`).
    pub buffer: GuestHandle,
    /// IN: size of `buffer`; OUT: bytes written to it.
    pub count: u32,
    /// Padding (implicit in C).
    pub _pad: u32,
}
const _: () = assert!(size_of::<XenSysctlReadconsole>() == 24);
const _: () = assert!(offset_of!(XenSysctlReadconsole, clear) == 0);
const _: () = assert!(offset_of!(XenSysctlReadconsole, incremental) == 1);
const _: () = assert!(offset_of!(XenSysctlReadconsole, index) == 4);
const _: () = assert!(offset_of!(XenSysctlReadconsole, buffer) == 8);
const _: () = assert!(offset_of!(XenSysctlReadconsole, count) == 16);

/// `XEN_SYSCTL_PHYSCAP_hvm`: the host can run HVM guests.
pub const XEN_SYSCTL_PHYSCAP_HVM: u32 = 1 << 0;
/// `XEN_SYSCTL_PHYSCAP_pv`: the host can run PV guests.
pub const XEN_SYSCTL_PHYSCAP_PV: u32 = 1 << 1;
/// `XEN_SYSCTL_PHYSCAP_directio`: device passthrough with an IOMMU.
pub const XEN_SYSCTL_PHYSCAP_DIRECTIO: u32 = 1 << 2;
/// `XEN_SYSCTL_PHYSCAP_hap`: hardware-assisted paging.
pub const XEN_SYSCTL_PHYSCAP_HAP: u32 = 1 << 3;
/// `XEN_SYSCTL_PHYSCAP_shadow`: shadow paging.
pub const XEN_SYSCTL_PHYSCAP_SHADOW: u32 = 1 << 4;
/// `XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share`: the IOMMU can share HAP tables.
pub const XEN_SYSCTL_PHYSCAP_IOMMU_HAP_PT_SHARE: u32 = 1 << 5;
/// `XEN_SYSCTL_PHYSCAP_vmtrace`: processor trace for guests.
pub const XEN_SYSCTL_PHYSCAP_VMTRACE: u32 = 1 << 6;
/// `XEN_SYSCTL_PHYSCAP_vpmu`: a virtual PMU for guests.
pub const XEN_SYSCTL_PHYSCAP_VPMU: u32 = 1 << 7;
/// `XEN_SYSCTL_PHYSCAP_gnttab_v1`: grant tables v1.
pub const XEN_SYSCTL_PHYSCAP_GNTTAB_V1: u32 = 1 << 8;
/// `XEN_SYSCTL_PHYSCAP_gnttab_v2`: grant tables v2.
pub const XEN_SYSCTL_PHYSCAP_GNTTAB_V2: u32 = 1 << 9;

bitflags! {
    /// [`XenSysctlPhysinfo::capabilities`] (`XEN_SYSCTL_PHYSCAP_*`): what
    /// `xl info` prints as `virt_caps`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PhysCaps: u32 {
        /// `XEN_SYSCTL_PHYSCAP_hvm`.
        const HVM = XEN_SYSCTL_PHYSCAP_HVM;
        /// `XEN_SYSCTL_PHYSCAP_pv`.
        const PV = XEN_SYSCTL_PHYSCAP_PV;
        /// `XEN_SYSCTL_PHYSCAP_directio`.
        const DIRECTIO = XEN_SYSCTL_PHYSCAP_DIRECTIO;
        /// `XEN_SYSCTL_PHYSCAP_hap`.
        const HAP = XEN_SYSCTL_PHYSCAP_HAP;
        /// `XEN_SYSCTL_PHYSCAP_shadow`.
        const SHADOW = XEN_SYSCTL_PHYSCAP_SHADOW;
        /// `XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share`.
        const IOMMU_HAP_PT_SHARE = XEN_SYSCTL_PHYSCAP_IOMMU_HAP_PT_SHARE;
        /// `XEN_SYSCTL_PHYSCAP_vmtrace`.
        const VMTRACE = XEN_SYSCTL_PHYSCAP_VMTRACE;
        /// `XEN_SYSCTL_PHYSCAP_vpmu`.
        const VPMU = XEN_SYSCTL_PHYSCAP_VPMU;
        /// `XEN_SYSCTL_PHYSCAP_gnttab_v1`.
        const GNTTAB_V1 = XEN_SYSCTL_PHYSCAP_GNTTAB_V1;
        /// `XEN_SYSCTL_PHYSCAP_gnttab_v2`.
        const GNTTAB_V2 = XEN_SYSCTL_PHYSCAP_GNTTAB_V2;
    }
}

/// `XEN_SYSCTL_physinfo`'s result: the host's topology, memory and
/// capabilities (all OUT). Memory counts are in pages of
/// [`PAGE_SIZE`](super::PAGE_SIZE).
#[doc(alias = "xen_sysctl_physinfo")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenSysctlPhysinfo {
    /// Hardware threads per core.
    pub threads_per_core: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// CPUs currently online.
    pub nr_cpus: u32,
    /// The largest possible CPU id.
    pub max_cpu_id: u32,
    /// NUMA nodes currently online.
    pub nr_nodes: u32,
    /// The largest possible node id.
    pub max_node_id: u32,
    /// CPU frequency in kHz (`xl info` prints `cpu_mhz` = this / 1000).
    pub cpu_khz: u32,
    /// `XEN_SYSCTL_PHYSCAP_*`, see [`PhysCaps`].
    pub capabilities: u32,
    /// Architecture-specific capabilities (none defined for x86 in 4.17).
    pub arch_capabilities: u32,
    /// Padding.
    pub pad: u32,
    /// Pages of RAM.
    pub total_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// Free pages still to be scrubbed.
    pub scrub_pages: u64,
    /// Pages claimed by domains and not yet allocated.
    pub outstanding_pages: u64,
    /// The largest possible machine frame.
    pub max_mfn: u64,
    /// CPUID feature words (`xl info`'s `hw_caps`).
    pub hw_cap: [u32; 8],
}
const _: () = assert!(size_of::<XenSysctlPhysinfo>() == 112);
const _: () = assert!(core::mem::align_of::<XenSysctlPhysinfo>() == 8);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, threads_per_core) == 0);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, nr_cpus) == 8);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, nr_nodes) == 16);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, cpu_khz) == 24);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, capabilities) == 28);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, arch_capabilities) == 32);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, total_pages) == 40);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, free_pages) == 48);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, scrub_pages) == 56);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, outstanding_pages) == 64);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, max_mfn) == 72);
const _: () = assert!(offset_of!(XenSysctlPhysinfo, hw_cap) == 80);

impl XenSysctlPhysinfo {
    /// [`XenSysctlPhysinfo::capabilities`] as [`PhysCaps`], keeping
    /// unknown bits.
    pub const fn caps(&self) -> PhysCaps {
        PhysCaps::from_bits_retain(self.capabilities)
    }
}

/// `XEN_SYSCTL_sched_id`'s result.
#[doc(alias = "xen_sysctl_sched_id")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenSysctlSchedId {
    /// OUT: `XEN_SCHEDULER_*` of the default CPU pool.
    pub sched_id: u32,
}
const _: () = assert!(size_of::<XenSysctlSchedId>() == 4);

impl XenSysctlSchedId {
    /// The scheduler, or the unknown number.
    pub fn scheduler(&self) -> Result<Scheduler, UnknownValue<u32>> {
        Scheduler::try_from(self.sched_id)
    }
}

/// `XEN_SYSCTL_getdomaininfolist`: the state of up to `max_domains`
/// domains with ids from `first_domain` up, in id order, as
/// [`XenDomctlGetdomaininfo`] records in `buffer`.
#[doc(alias = "xen_sysctl_getdomaininfolist")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenSysctlGetdomaininfolist {
    /// IN: the lowest domain id to report.
    pub first_domain: DomId,
    /// Padding (implicit in C).
    pub _pad: u16,
    /// IN: capacity of `buffer`, in records.
    pub max_domains: u32,
    /// IN: an array of [`XenDomctlGetdomaininfo`].
    pub buffer: GuestHandle,
    /// OUT: records written.
    pub num_domains: u32,
    /// Padding (implicit in C).
    pub _pad2: u32,
}
const _: () = assert!(size_of::<XenSysctlGetdomaininfolist>() == 24);
const _: () = assert!(offset_of!(XenSysctlGetdomaininfolist, first_domain) == 0);
const _: () = assert!(offset_of!(XenSysctlGetdomaininfolist, max_domains) == 4);
const _: () = assert!(offset_of!(XenSysctlGetdomaininfolist, buffer) == 8);
const _: () = assert!(offset_of!(XenSysctlGetdomaininfolist, num_domains) == 16);

/// One CPU's record of `XEN_SYSCTL_getcpuinfo`.
#[doc(alias = "xen_sysctl_cpuinfo")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenSysctlCpuinfo {
    /// Time the CPU spent idle, in nanoseconds.
    pub idletime: u64,
}
const _: () = assert!(size_of::<XenSysctlCpuinfo>() == 8);

/// `XEN_SYSCTL_getcpuinfo`: the idle time of CPUs 0 to `max_cpus - 1`
/// into `info`, an array of [`XenSysctlCpuinfo`].
#[doc(alias = "xen_sysctl_getcpuinfo")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenSysctlGetcpuinfo {
    /// IN: capacity of `info`, in records.
    pub max_cpus: u32,
    /// Padding (implicit in C).
    pub _pad: u32,
    /// IN: the array.
    pub info: GuestHandle,
    /// OUT: records written (the CPUs that exist, at most `max_cpus`).
    pub nr_cpus: u32,
    /// Padding (implicit in C).
    pub _pad2: u32,
}
const _: () = assert!(size_of::<XenSysctlGetcpuinfo>() == 24);
const _: () = assert!(offset_of!(XenSysctlGetcpuinfo, max_cpus) == 0);
const _: () = assert!(offset_of!(XenSysctlGetcpuinfo, info) == 8);
const _: () = assert!(offset_of!(XenSysctlGetcpuinfo, nr_cpus) == 16);

/// The argument of `__HYPERVISOR_sysctl` (`struct xen_sysctl`): the
/// operation and a 128-byte union of per-operation structures, kept as raw
/// words (it is 8-byte aligned in C). Xen copies the whole structure back.
#[doc(alias = "xen_sysctl")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenSysctl {
    /// `XEN_SYSCTL_*`: the operation.
    pub cmd: u32,
    /// Must be [`XEN_SYSCTL_INTERFACE_VERSION`].
    pub interface_version: u32,
    /// The C union `u`, whose meaning depends on `cmd`.
    pub u: [u64; XEN_SYSCTL_UNION_SIZE / 8],
}
const _: () = assert!(size_of::<XenSysctl>() == 136);
const _: () = assert!(core::mem::align_of::<XenSysctl>() == 8);
const _: () = assert!(offset_of!(XenSysctl, cmd) == 0);
const _: () = assert!(offset_of!(XenSysctl, interface_version) == 4);
const _: () = assert!(offset_of!(XenSysctl, u) == 8);
const _: () = assert!(size_of::<XenSysctlPhysinfo>() <= XEN_SYSCTL_UNION_SIZE);

impl XenSysctl {
    /// Operation `cmd` at this crate's interface version, with a zeroed
    /// union.
    pub const fn new(cmd: u32) -> Self {
        Self {
            cmd,
            interface_version: XEN_SYSCTL_INTERFACE_VERSION,
            u: [0; XEN_SYSCTL_UNION_SIZE / 8],
        }
    }

    /// Operation `cmd` with `payload` at the start of the union (the rest
    /// zeroed). A payload larger than the union does not compile.
    pub fn with_payload<T: IntoBytes + Immutable>(cmd: u32, payload: &T) -> Self {
        const { assert!(size_of::<T>() <= XEN_SYSCTL_UNION_SIZE) };
        let mut sysctl = Self::new(cmd);
        sysctl.u.as_mut_bytes()[..size_of::<T>()].copy_from_slice(payload.as_bytes());
        sysctl
    }

    /// The start of the union read as `T` (the member of `u` for this
    /// operation's reply). A `T` larger than the union does not compile.
    pub fn payload<T: FromBytes>(&self) -> T {
        const { assert!(size_of::<T>() <= XEN_SYSCTL_UNION_SIZE) };
        T::read_from_prefix(self.u.as_bytes()).map_or_else(|_| T::new_zeroed(), |(v, _)| v)
    }

    /// `XEN_SYSCTL_readconsole` into `count` bytes at `buffer`, starting at
    /// `index` if given (incremental), else at the oldest byte; `clear`
    /// discards what is read.
    pub fn readconsole(clear: bool, index: Option<u32>, buffer: GuestHandle, count: u32) -> Self {
        let arg = XenSysctlReadconsole {
            clear: u8::from(clear),
            incremental: u8::from(index.is_some()),
            index: index.unwrap_or(0),
            buffer,
            count,
            ..Default::default()
        };
        Self::with_payload(XEN_SYSCTL_READCONSOLE, &arg)
    }

    /// `XEN_SYSCTL_physinfo`.
    pub const fn physinfo() -> Self {
        Self::new(XEN_SYSCTL_PHYSINFO)
    }

    /// `XEN_SYSCTL_sched_id`.
    pub const fn sched_id() -> Self {
        Self::new(XEN_SYSCTL_SCHED_ID)
    }

    /// `XEN_SYSCTL_getdomaininfolist` of up to `max_domains` domains from
    /// `first_domain` up, into the array at `buffer`.
    pub fn getdomaininfolist(first_domain: DomId, max_domains: u32, buffer: GuestHandle) -> Self {
        let arg = XenSysctlGetdomaininfolist {
            first_domain,
            max_domains,
            buffer,
            ..Default::default()
        };
        Self::with_payload(XEN_SYSCTL_GETDOMAININFOLIST, &arg)
    }

    /// `XEN_SYSCTL_getcpuinfo` of up to `max_cpus` CPUs into the array at
    /// `info`.
    pub fn getcpuinfo(max_cpus: u32, info: GuestHandle) -> Self {
        let arg = XenSysctlGetcpuinfo {
            max_cpus,
            info,
            ..Default::default()
        };
        Self::with_payload(XEN_SYSCTL_GETCPUINFO, &arg)
    }
}

/// The bytes of one [`XenDomctlGetdomaininfo`] record in a
/// `XEN_SYSCTL_getdomaininfolist` buffer.
pub const GETDOMAININFO_RECORD_SIZE: usize = size_of::<XenDomctlGetdomaininfo>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readconsole_request_is_the_c_header_layout() {
        let sysctl = XenSysctl::readconsole(true, Some(0x40), 0x7f00_0000_1000, 16384);

        let bytes = sysctl.as_bytes();

        assert_eq!(bytes.len(), 136);
        assert_eq!(&bytes[0..4], &1u32.to_le_bytes(), "cmd");
        assert_eq!(&bytes[4..8], &0x15u32.to_le_bytes(), "interface_version");
        assert_eq!(bytes[8], 1, "clear");
        assert_eq!(bytes[9], 1, "incremental");
        assert_eq!(&bytes[12..16], &0x40u32.to_le_bytes(), "index");
        assert_eq!(&bytes[16..24], &0x7f00_0000_1000u64.to_le_bytes(), "buffer");
        assert_eq!(&bytes[24..28], &16384u32.to_le_bytes(), "count");
        assert!(bytes[28..].iter().all(|b| *b == 0), "rest of the union");
    }

    #[test]
    fn readconsole_without_index_is_not_incremental() {
        let sysctl = XenSysctl::readconsole(false, None, 0x1000, 10);

        let arg: XenSysctlReadconsole = sysctl.payload();

        assert_eq!((arg.clear, arg.incremental, arg.index), (0, 0, 0));
    }

    #[test]
    fn physinfo_reply_is_read_from_the_union() {
        let mut sysctl = XenSysctl::physinfo();
        let info = XenSysctlPhysinfo {
            nr_cpus: 8,
            cpu_khz: 2_400_000,
            capabilities: XEN_SYSCTL_PHYSCAP_PV | XEN_SYSCTL_PHYSCAP_HVM | (1 << 31),
            total_pages: 0x40_0000,
            free_pages: 0x10_0000,
            hw_cap: [1, 2, 3, 4, 5, 6, 7, 8],
            ..Default::default()
        };
        sysctl.u.as_mut_bytes()[..112].copy_from_slice(info.as_bytes());

        let read: XenSysctlPhysinfo = sysctl.payload();

        assert_eq!(read, info);
        assert_eq!(
            &sysctl.as_bytes()[8 + 40..8 + 48],
            &0x40_0000u64.to_le_bytes()
        );
        assert!(read.caps().contains(PhysCaps::PV | PhysCaps::HVM));
        assert_eq!(read.caps().bits() & (1 << 31), 1 << 31, "unknown bits kept");
    }

    #[test]
    fn getdomaininfolist_request_is_the_c_header_layout() {
        let sysctl = XenSysctl::getdomaininfolist(5, 64, 0xabc000);

        let bytes = sysctl.as_bytes();

        assert_eq!(&bytes[0..4], &6u32.to_le_bytes(), "cmd");
        assert_eq!(&bytes[8..10], &5u16.to_le_bytes(), "first_domain");
        assert_eq!(&bytes[12..16], &64u32.to_le_bytes(), "max_domains");
        assert_eq!(&bytes[16..24], &0xabc000u64.to_le_bytes(), "buffer");
        assert_eq!(GETDOMAININFO_RECORD_SIZE, 112);
    }

    #[test]
    fn sched_id_names_the_scheduler() {
        let credit2 = XenSysctlSchedId { sched_id: 6 };
        let unknown = XenSysctlSchedId { sched_id: 4 };

        assert_eq!(credit2.scheduler().map(Scheduler::name), Ok("credit2"));
        assert!(unknown.scheduler().is_err(), "SEDF (4) was removed");
    }

    #[test]
    fn getcpuinfo_request_is_the_c_header_layout() {
        let sysctl = XenSysctl::getcpuinfo(4, 0x5000);

        let arg: XenSysctlGetcpuinfo = sysctl.payload();

        assert_eq!(sysctl.cmd, XEN_SYSCTL_GETCPUINFO);
        assert_eq!((arg.max_cpus, arg.info, arg.nr_cpus), (4, 0x5000, 0));
        assert_eq!(&sysctl.as_bytes()[16..24], &0x5000u64.to_le_bytes());
    }
}
