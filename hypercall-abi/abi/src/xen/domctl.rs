//! Domain control (`xen/domctl.h`): the `struct xen_domctl` argument of
//! `__HYPERVISOR_domctl` and the `XEN_DOMCTL_getdomaininfo` sub-operation.
//!
//! Domctls are for the toolstack only: C code must define `__XEN_TOOLS__`
//! to include the header, and Xen refuses a call whose
//! `interface_version` is not its own [`XEN_DOMCTL_INTERFACE_VERSION`]
//! (`EACCES`), so this module describes exactly Xen 4.17's interface.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::DomId;

/// `XEN_DOMCTL_INTERFACE_VERSION`: the domctl interface of Xen 4.17.
pub const XEN_DOMCTL_INTERFACE_VERSION: u32 = 0x0000_0015;

/// `XEN_DOMCTL_getdomaininfo`: the state of a domain; see
/// [`XenDomctlGetdomaininfo`].
pub const XEN_DOMCTL_GETDOMAININFO: u32 = 5;

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

    /// `XEN_DOMCTL_getdomaininfo` for `domain`.
    pub const fn getdomaininfo(domain: DomId) -> Self {
        Self::new(XEN_DOMCTL_GETDOMAININFO, domain)
    }

    /// The union read as `u.getdomaininfo`.
    pub fn getdomaininfo_result(&self) -> XenDomctlGetdomaininfo {
        let (info, _) =
            XenDomctlGetdomaininfo::read_from_prefix(self.u.as_bytes()).unwrap_or_default();
        info
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
}
