//! Hypercall numbers, interface versions and virtual IRQs (`xen/xen.h`,
//! `xen/xen-compat.h`).
//!
//! This module also holds what every other ABI module shares: the integer
//! types Xen uses for frame numbers and guest handles, and
//! [`UnknownValue`], the error returned when a number read from the wire
//! names none of an ABI enum's values.

use core::fmt;

/// The newest interface version these headers describe
/// (`__XEN_LATEST_INTERFACE_VERSION__`, Xen 4.14 and later, including 4.17).
pub const XEN_LATEST_INTERFACE_VERSION: u32 = 0x0004_0e00;

/// The interface version this crate implements (`__XEN_INTERFACE_VERSION__`
/// as Xen and its tools are built).
pub const XEN_INTERFACE_VERSION: u32 = XEN_LATEST_INTERFACE_VERSION;

/// A machine or guest frame number (`xen_pfn_t`, `unsigned long` on x86_64).
pub type XenPfn = u64;

/// Xen's native unsigned word (`xen_ulong_t`, `unsigned long` on x86_64).
pub type XenUlong = u64;

/// A guest virtual address passed to Xen in place of a pointer
/// (`XEN_GUEST_HANDLE(...)`, a plain pointer on x86_64).
pub type GuestHandle = u64;

/// A number that names none of the values an ABI enum accepts.
///
/// Returned by the `TryFrom` conversions of every enum in [`crate::xen`], so
/// that a value read from a ring or a hypercall result is rejected rather
/// than transmuted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnknownValue<T> {
    /// What the number should have been, e.g. `"blkif operation"`.
    pub kind: &'static str,
    /// The number as it was found.
    pub value: T,
}

impl<T: fmt::Display> fmt::Display for UnknownValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a known {}", self.value, self.kind)
    }
}

#[cfg(feature = "std")]
impl<T: fmt::Debug + fmt::Display> std::error::Error for UnknownValue<T> {}

/// Declares a fieldless enum over a set of ABI constants, with `TryFrom`
/// (rejecting unknown numbers with [`UnknownValue`]), `From` back to the
/// integer, the C constant's name, and the list of all values.
macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $value:path => $cname:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($repr)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )+
        }

        impl $name {
            /// Every value, in the order the C header lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name of the C constant for this value.
            pub const fn c_name(self) -> &'static str {
                match self {
                    $(Self::$variant => $cname,)+
                }
            }

            /// The number on the wire.
            pub const fn raw(self) -> $repr {
                self as $repr
            }
        }

        impl TryFrom<$repr> for $name {
            type Error = $crate::xen::hypercall::UnknownValue<$repr>;

            fn try_from(value: $repr) -> Result<Self, $crate::xen::hypercall::UnknownValue<$repr>> {
                match value {
                    $( $value => Ok(Self::$variant), )+
                    _ => Err($crate::xen::hypercall::UnknownValue { kind: $kind, value }),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> $repr {
                value as $repr
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.c_name())
            }
        }
    };
}
pub(crate) use abi_enum;

/// `__HYPERVISOR_set_trap_table`.
pub const HYPERVISOR_SET_TRAP_TABLE: u32 = 0;
/// `__HYPERVISOR_mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: u32 = 1;
/// `__HYPERVISOR_set_gdt`.
pub const HYPERVISOR_SET_GDT: u32 = 2;
/// `__HYPERVISOR_stack_switch`.
pub const HYPERVISOR_STACK_SWITCH: u32 = 3;
/// `__HYPERVISOR_set_callbacks`.
pub const HYPERVISOR_SET_CALLBACKS: u32 = 4;
/// `__HYPERVISOR_fpu_taskswitch`.
pub const HYPERVISOR_FPU_TASKSWITCH: u32 = 5;
/// `__HYPERVISOR_sched_op_compat`: the pre-3.0.1 scheduler call.
pub const HYPERVISOR_SCHED_OP_COMPAT: u32 = 6;
/// `__HYPERVISOR_platform_op`.
pub const HYPERVISOR_PLATFORM_OP: u32 = 7;
/// `__HYPERVISOR_set_debugreg`.
pub const HYPERVISOR_SET_DEBUGREG: u32 = 8;
/// `__HYPERVISOR_get_debugreg`.
pub const HYPERVISOR_GET_DEBUGREG: u32 = 9;
/// `__HYPERVISOR_update_descriptor`.
pub const HYPERVISOR_UPDATE_DESCRIPTOR: u32 = 10;
/// `__HYPERVISOR_memory_op`: see [`crate::xen::memory`].
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// `__HYPERVISOR_multicall`.
pub const HYPERVISOR_MULTICALL: u32 = 13;
/// `__HYPERVISOR_update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
/// `__HYPERVISOR_set_timer_op`.
pub const HYPERVISOR_SET_TIMER_OP: u32 = 15;
/// `__HYPERVISOR_event_channel_op_compat`: the pre-3.2.2 event channel call.
pub const HYPERVISOR_EVENT_CHANNEL_OP_COMPAT: u32 = 16;
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
/// `__HYPERVISOR_console_io`: see [`crate::xen::console`].
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
/// `__HYPERVISOR_physdev_op_compat`: the pre-3.2.2 physdev call.
pub const HYPERVISOR_PHYSDEV_OP_COMPAT: u32 = 19;
/// `__HYPERVISOR_grant_table_op`: see [`crate::xen::grant_table`].
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// `__HYPERVISOR_vm_assist`.
pub const HYPERVISOR_VM_ASSIST: u32 = 21;
/// `__HYPERVISOR_update_va_mapping_otherdomain`.
pub const HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN: u32 = 22;
/// `__HYPERVISOR_iret` (x86 only).
pub const HYPERVISOR_IRET: u32 = 23;
/// `__HYPERVISOR_vcpu_op`.
pub const HYPERVISOR_VCPU_OP: u32 = 24;
/// `__HYPERVISOR_set_segment_base` (x86_64 only).
pub const HYPERVISOR_SET_SEGMENT_BASE: u32 = 25;
/// `__HYPERVISOR_mmuext_op`.
pub const HYPERVISOR_MMUEXT_OP: u32 = 26;
/// `__HYPERVISOR_xsm_op`.
pub const HYPERVISOR_XSM_OP: u32 = 27;
/// `__HYPERVISOR_nmi_op`.
pub const HYPERVISOR_NMI_OP: u32 = 28;
/// `__HYPERVISOR_sched_op`: see [`crate::xen::sched`].
pub const HYPERVISOR_SCHED_OP: u32 = 29;
/// `__HYPERVISOR_callback_op`.
pub const HYPERVISOR_CALLBACK_OP: u32 = 30;
/// `__HYPERVISOR_xenoprof_op`.
pub const HYPERVISOR_XENOPROF_OP: u32 = 31;
/// `__HYPERVISOR_event_channel_op`: see [`crate::xen::event_channel`].
pub const HYPERVISOR_EVENT_CHANNEL_OP: u32 = 32;
/// `__HYPERVISOR_physdev_op`.
pub const HYPERVISOR_PHYSDEV_OP: u32 = 33;
/// `__HYPERVISOR_hvm_op`.
pub const HYPERVISOR_HVM_OP: u32 = 34;
/// `__HYPERVISOR_sysctl`.
pub const HYPERVISOR_SYSCTL: u32 = 35;
/// `__HYPERVISOR_domctl`.
pub const HYPERVISOR_DOMCTL: u32 = 36;
/// `__HYPERVISOR_kexec_op`.
pub const HYPERVISOR_KEXEC_OP: u32 = 37;
/// `__HYPERVISOR_tmem_op` (tmem was removed; the number stays reserved).
pub const HYPERVISOR_TMEM_OP: u32 = 38;
/// `__HYPERVISOR_argo_op`.
pub const HYPERVISOR_ARGO_OP: u32 = 39;
/// `__HYPERVISOR_xenpmu_op`.
pub const HYPERVISOR_XENPMU_OP: u32 = 40;
/// `__HYPERVISOR_dm_op`.
pub const HYPERVISOR_DM_OP: u32 = 41;
/// `__HYPERVISOR_hypfs_op`.
pub const HYPERVISOR_HYPFS_OP: u32 = 42;
/// `__HYPERVISOR_arch_0`: first architecture-specific hypercall
/// (on x86, `__HYPERVISOR_mca`).
pub const HYPERVISOR_ARCH_0: u32 = 48;
/// `__HYPERVISOR_arch_1` (on x86, `__HYPERVISOR_paging_domctl_cont`).
pub const HYPERVISOR_ARCH_1: u32 = 49;
/// `__HYPERVISOR_arch_2`.
pub const HYPERVISOR_ARCH_2: u32 = 50;
/// `__HYPERVISOR_arch_3`.
pub const HYPERVISOR_ARCH_3: u32 = 51;
/// `__HYPERVISOR_arch_4`.
pub const HYPERVISOR_ARCH_4: u32 = 52;
/// `__HYPERVISOR_arch_5`.
pub const HYPERVISOR_ARCH_5: u32 = 53;
/// `__HYPERVISOR_arch_6`.
pub const HYPERVISOR_ARCH_6: u32 = 54;
/// `__HYPERVISOR_arch_7`.
pub const HYPERVISOR_ARCH_7: u32 = 55;

abi_enum! {
    /// A hypercall number, as loaded into `rax` (or the index into the
    /// hypercall page, whose entries are 32 bytes apart).
    pub enum Hypercall: u32, "hypercall number" {
        /// Install the trap table of a PV guest.
        SetTrapTable = HYPERVISOR_SET_TRAP_TABLE => "__HYPERVISOR_set_trap_table",
        /// Update page table entries.
        MmuUpdate = HYPERVISOR_MMU_UPDATE => "__HYPERVISOR_mmu_update",
        /// Install a PV guest's GDT.
        SetGdt = HYPERVISOR_SET_GDT => "__HYPERVISOR_set_gdt",
        /// Switch the kernel stack of a PV guest.
        StackSwitch = HYPERVISOR_STACK_SWITCH => "__HYPERVISOR_stack_switch",
        /// Register event and failsafe callbacks (32-bit PV).
        SetCallbacks = HYPERVISOR_SET_CALLBACKS => "__HYPERVISOR_set_callbacks",
        /// Set or clear the lazy FPU state switch flag.
        FpuTaskswitch = HYPERVISOR_FPU_TASKSWITCH => "__HYPERVISOR_fpu_taskswitch",
        /// Scheduler operations, old argument format.
        SchedOpCompat = HYPERVISOR_SCHED_OP_COMPAT => "__HYPERVISOR_sched_op_compat",
        /// Platform-wide operations (dom0 only).
        PlatformOp = HYPERVISOR_PLATFORM_OP => "__HYPERVISOR_platform_op",
        /// Write a debug register.
        SetDebugreg = HYPERVISOR_SET_DEBUGREG => "__HYPERVISOR_set_debugreg",
        /// Read a debug register.
        GetDebugreg = HYPERVISOR_GET_DEBUGREG => "__HYPERVISOR_get_debugreg",
        /// Update a GDT or LDT descriptor.
        UpdateDescriptor = HYPERVISOR_UPDATE_DESCRIPTOR => "__HYPERVISOR_update_descriptor",
        /// Memory reservation and physmap operations.
        MemoryOp = HYPERVISOR_MEMORY_OP => "__HYPERVISOR_memory_op",
        /// Issue a batch of hypercalls.
        Multicall = HYPERVISOR_MULTICALL => "__HYPERVISOR_multicall",
        /// Update one page table entry by virtual address.
        UpdateVaMapping = HYPERVISOR_UPDATE_VA_MAPPING => "__HYPERVISOR_update_va_mapping",
        /// Arm the one-shot timer.
        SetTimerOp = HYPERVISOR_SET_TIMER_OP => "__HYPERVISOR_set_timer_op",
        /// Event channel operations, old argument format.
        EventChannelOpCompat = HYPERVISOR_EVENT_CHANNEL_OP_COMPAT
            => "__HYPERVISOR_event_channel_op_compat",
        /// Query Xen's version and features.
        XenVersion = HYPERVISOR_XEN_VERSION => "__HYPERVISOR_xen_version",
        /// Read or write Xen's own console.
        ConsoleIo = HYPERVISOR_CONSOLE_IO => "__HYPERVISOR_console_io",
        /// Physical device operations, old argument format.
        PhysdevOpCompat = HYPERVISOR_PHYSDEV_OP_COMPAT => "__HYPERVISOR_physdev_op_compat",
        /// Grant table operations.
        GrantTableOp = HYPERVISOR_GRANT_TABLE_OP => "__HYPERVISOR_grant_table_op",
        /// Enable or disable a VM assist.
        VmAssist = HYPERVISOR_VM_ASSIST => "__HYPERVISOR_vm_assist",
        /// Update a page table entry of another domain.
        UpdateVaMappingOtherdomain = HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN
            => "__HYPERVISOR_update_va_mapping_otherdomain",
        /// Return from an exception (x86 PV).
        Iret = HYPERVISOR_IRET => "__HYPERVISOR_iret",
        /// Per-vCPU operations.
        VcpuOp = HYPERVISOR_VCPU_OP => "__HYPERVISOR_vcpu_op",
        /// Set the FS or GS base (x86_64 PV).
        SetSegmentBase = HYPERVISOR_SET_SEGMENT_BASE => "__HYPERVISOR_set_segment_base",
        /// Extended MMU operations (pinning, TLB flushes, ...).
        MmuextOp = HYPERVISOR_MMUEXT_OP => "__HYPERVISOR_mmuext_op",
        /// Security module (XSM/FLASK) operations.
        XsmOp = HYPERVISOR_XSM_OP => "__HYPERVISOR_xsm_op",
        /// NMI callback registration.
        NmiOp = HYPERVISOR_NMI_OP => "__HYPERVISOR_nmi_op",
        /// Scheduler operations: yield, block, shutdown, poll.
        SchedOp = HYPERVISOR_SCHED_OP => "__HYPERVISOR_sched_op",
        /// Callback registration.
        CallbackOp = HYPERVISOR_CALLBACK_OP => "__HYPERVISOR_callback_op",
        /// Xenoprof profiling.
        XenoprofOp = HYPERVISOR_XENOPROF_OP => "__HYPERVISOR_xenoprof_op",
        /// Event channel operations.
        EventChannelOp = HYPERVISOR_EVENT_CHANNEL_OP => "__HYPERVISOR_event_channel_op",
        /// Physical device operations.
        PhysdevOp = HYPERVISOR_PHYSDEV_OP => "__HYPERVISOR_physdev_op",
        /// HVM operations.
        HvmOp = HYPERVISOR_HVM_OP => "__HYPERVISOR_hvm_op",
        /// System-wide control (toolstack).
        Sysctl = HYPERVISOR_SYSCTL => "__HYPERVISOR_sysctl",
        /// Per-domain control (toolstack).
        Domctl = HYPERVISOR_DOMCTL => "__HYPERVISOR_domctl",
        /// Kexec and crash kernel operations.
        KexecOp = HYPERVISOR_KEXEC_OP => "__HYPERVISOR_kexec_op",
        /// Transcendent memory (removed; reserved number).
        TmemOp = HYPERVISOR_TMEM_OP => "__HYPERVISOR_tmem_op",
        /// Argo inter-domain messaging.
        ArgoOp = HYPERVISOR_ARGO_OP => "__HYPERVISOR_argo_op",
        /// Performance monitoring unit.
        XenpmuOp = HYPERVISOR_XENPMU_OP => "__HYPERVISOR_xenpmu_op",
        /// Device model operations.
        DmOp = HYPERVISOR_DM_OP => "__HYPERVISOR_dm_op",
        /// Hypervisor file system.
        HypfsOp = HYPERVISOR_HYPFS_OP => "__HYPERVISOR_hypfs_op",
        /// Architecture-specific hypercall 0.
        Arch0 = HYPERVISOR_ARCH_0 => "__HYPERVISOR_arch_0",
        /// Architecture-specific hypercall 1.
        Arch1 = HYPERVISOR_ARCH_1 => "__HYPERVISOR_arch_1",
        /// Architecture-specific hypercall 2.
        Arch2 = HYPERVISOR_ARCH_2 => "__HYPERVISOR_arch_2",
        /// Architecture-specific hypercall 3.
        Arch3 = HYPERVISOR_ARCH_3 => "__HYPERVISOR_arch_3",
        /// Architecture-specific hypercall 4.
        Arch4 = HYPERVISOR_ARCH_4 => "__HYPERVISOR_arch_4",
        /// Architecture-specific hypercall 5.
        Arch5 = HYPERVISOR_ARCH_5 => "__HYPERVISOR_arch_5",
        /// Architecture-specific hypercall 6.
        Arch6 = HYPERVISOR_ARCH_6 => "__HYPERVISOR_arch_6",
        /// Architecture-specific hypercall 7.
        Arch7 = HYPERVISOR_ARCH_7 => "__HYPERVISOR_arch_7",
    }
}

impl Hypercall {
    /// The hypercall's name without the `__HYPERVISOR_` prefix, as Xen's
    /// traces and `xl dmesg` spell it (e.g. `"memory_op"`).
    pub fn name(self) -> &'static str {
        let c_name = self.c_name();
        c_name.strip_prefix("__HYPERVISOR_").unwrap_or(c_name)
    }
}

/// `VIRQ_TIMER`: per-vCPU timer.
pub const VIRQ_TIMER: u32 = 0;
/// `VIRQ_DEBUG`: per-vCPU request to dump debug state.
pub const VIRQ_DEBUG: u32 = 1;
/// `VIRQ_CONSOLE`: input on Xen's emergency console (dom0).
pub const VIRQ_CONSOLE: u32 = 2;
/// `VIRQ_DOM_EXC`: a domain died, crashed or shut down (dom0).
pub const VIRQ_DOM_EXC: u32 = 3;
/// `VIRQ_TBUF`: trace buffer records available (dom0).
pub const VIRQ_TBUF: u32 = 4;
/// `VIRQ_DEBUGGER`: a domain paused for the debugger (dom0).
pub const VIRQ_DEBUGGER: u32 = 6;
/// `VIRQ_XENOPROF`: per-vCPU profiling sample available.
pub const VIRQ_XENOPROF: u32 = 7;
/// `VIRQ_CON_RING`: new bytes in Xen's console ring (dom0).
pub const VIRQ_CON_RING: u32 = 8;
/// `VIRQ_PCPU_STATE`: a physical CPU changed state (dom0).
pub const VIRQ_PCPU_STATE: u32 = 9;
/// `VIRQ_MEM_EVENT`: a memory event happened (dom0).
pub const VIRQ_MEM_EVENT: u32 = 10;
/// `VIRQ_ARGO`: Argo message notification.
pub const VIRQ_ARGO: u32 = 11;
/// `VIRQ_ENOMEM`: Xen's heap runs low (dom0).
pub const VIRQ_ENOMEM: u32 = 12;
/// `VIRQ_XENPMU`: per-vCPU performance counter interrupt.
pub const VIRQ_XENPMU: u32 = 13;
/// `VIRQ_ARCH_0`: first architecture-specific VIRQ.
pub const VIRQ_ARCH_0: u32 = 16;
/// `VIRQ_ARCH_1`.
pub const VIRQ_ARCH_1: u32 = 17;
/// `VIRQ_ARCH_2`.
pub const VIRQ_ARCH_2: u32 = 18;
/// `VIRQ_ARCH_3`.
pub const VIRQ_ARCH_3: u32 = 19;
/// `VIRQ_ARCH_4`.
pub const VIRQ_ARCH_4: u32 = 20;
/// `VIRQ_ARCH_5`.
pub const VIRQ_ARCH_5: u32 = 21;
/// `VIRQ_ARCH_6`.
pub const VIRQ_ARCH_6: u32 = 22;
/// `VIRQ_ARCH_7`.
pub const VIRQ_ARCH_7: u32 = 23;
/// `VIRQ_MCA`: machine check error reported (x86, dom0); the same number as
/// [`VIRQ_ARCH_0`].
pub const VIRQ_MCA: u32 = VIRQ_ARCH_0;
/// `NR_VIRQS`: VIRQ numbers are below this.
pub const NR_VIRQS: u32 = 24;

abi_enum! {
    /// A virtual IRQ, bound to an event channel with `EVTCHNOP_bind_virq`.
    pub enum Virq: u32, "virtual IRQ" {
        /// Timer tick or requested timeout (per vCPU).
        Timer = VIRQ_TIMER => "VIRQ_TIMER",
        /// Debug dump request (per vCPU).
        Debug = VIRQ_DEBUG => "VIRQ_DEBUG",
        /// Emergency console input (dom0).
        Console = VIRQ_CONSOLE => "VIRQ_CONSOLE",
        /// A domain changed state (dom0): the toolstack's cue to reap it.
        DomExc = VIRQ_DOM_EXC => "VIRQ_DOM_EXC",
        /// Trace buffer records (dom0).
        Tbuf = VIRQ_TBUF => "VIRQ_TBUF",
        /// A domain paused for debugging (dom0).
        Debugger = VIRQ_DEBUGGER => "VIRQ_DEBUGGER",
        /// Profiling sample (per vCPU).
        Xenoprof = VIRQ_XENOPROF => "VIRQ_XENOPROF",
        /// Xen console ring data (dom0).
        ConRing = VIRQ_CON_RING => "VIRQ_CON_RING",
        /// Physical CPU state change (dom0).
        PcpuState = VIRQ_PCPU_STATE => "VIRQ_PCPU_STATE",
        /// Memory event (dom0).
        MemEvent = VIRQ_MEM_EVENT => "VIRQ_MEM_EVENT",
        /// Argo notification.
        Argo = VIRQ_ARGO => "VIRQ_ARGO",
        /// Low heap memory (dom0).
        Enomem = VIRQ_ENOMEM => "VIRQ_ENOMEM",
        /// PMU interrupt (per vCPU).
        Xenpmu = VIRQ_XENPMU => "VIRQ_XENPMU",
        /// Machine check (x86's `VIRQ_ARCH_0`).
        Mca = VIRQ_MCA => "VIRQ_MCA",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hypercall_round_trips_through_its_number() {
        for &call in Hypercall::ALL {
            assert_eq!(Hypercall::try_from(call.raw()), Ok(call));
        }
    }

    #[test]
    fn unassigned_hypercall_numbers_are_rejected() {
        assert_eq!(
            Hypercall::try_from(11),
            Err(UnknownValue {
                kind: "hypercall number",
                value: 11
            })
        );
        assert!(Hypercall::try_from(56).is_err());
    }

    #[test]
    fn hypercall_name_drops_the_c_prefix() {
        assert_eq!(Hypercall::MemoryOp.name(), "memory_op");
        assert_eq!(
            Hypercall::GrantTableOp.c_name(),
            "__HYPERVISOR_grant_table_op"
        );
    }

    #[test]
    fn virq_mca_is_the_first_arch_virq() {
        assert_eq!(Virq::try_from(16), Ok(Virq::Mca));
        assert!(Virq::try_from(5).is_err());
    }
}
