//! HVM and PVH domains from the toolstack's side: the parameters of
//! `__HYPERVISOR_hvm_op` (`xen/hvm/hvm_op.h`, `xen/hvm/params.h`) and the
//! save records of `XEN_DOMCTL_{get,set}hvmcontext` (`xen/hvm/save.h`,
//! `xen/arch-x86/hvm/save.h`) a domain builder uses to start vCPU 0.
//!
//! Layouts: sizes and offsets asserted below were checked against a C
//! program including Debian's `libxen-dev` 4.17 headers (`sizeof`,
//! `offsetof`, `HVM_SAVE_CODE` and `HVM_SAVE_LENGTH` of each record).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::DomId;

/// `HVMOP_set_param`: set a parameter of an HVM domain ([`XenHvmParam`]).
pub const HVMOP_SET_PARAM: u32 = 0;
/// `HVMOP_get_param`: read a parameter of an HVM domain ([`XenHvmParam`]).
pub const HVMOP_GET_PARAM: u32 = 1;

/// `HVMOP_{set,get}_param`'s argument (`struct xen_hvm_param`).
#[doc(alias = "xen_hvm_param")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenHvmParam {
    /// IN: the domain.
    pub domid: DomId,
    /// Padding.
    pub pad: u16,
    /// IN: `HVM_PARAM_*`.
    pub index: u32,
    /// IN for set, OUT for get.
    pub value: u64,
}
const _: () = assert!(core::mem::size_of::<XenHvmParam>() == 16);
const _: () = assert!(core::mem::offset_of!(XenHvmParam, domid) == 0);
const _: () = assert!(core::mem::offset_of!(XenHvmParam, index) == 4);
const _: () = assert!(core::mem::offset_of!(XenHvmParam, value) == 8);

/// `HVM_PARAM_CALLBACK_IRQ`: how the guest's event channel upcall arrives.
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_STORE_PFN`: the gfn of the xenstore ring.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`: the guest's port of the xenstore channel.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_IOREQ_PFN`: the gfn of the default ioreq server's page.
pub const HVM_PARAM_IOREQ_PFN: u32 = 5;
/// `HVM_PARAM_BUFIOREQ_PFN`: the gfn of the buffered ioreq page.
pub const HVM_PARAM_BUFIOREQ_PFN: u32 = 6;
/// `HVM_PARAM_VIRIDIAN`: Hyper-V enlightenments.
pub const HVM_PARAM_VIRIDIAN: u32 = 9;
/// `HVM_PARAM_TIMER_MODE`: one of the `HVMPTM_*` modes.
pub const HVM_PARAM_TIMER_MODE: u32 = 10;
/// `HVM_PARAM_HPET_ENABLED`.
pub const HVM_PARAM_HPET_ENABLED: u32 = 11;
/// `HVM_PARAM_IDENT_PT`: the address of the identity-map page table used
/// while the guest runs with paging off under Intel EPT.
pub const HVM_PARAM_IDENT_PT: u32 = 12;
/// `HVM_PARAM_ACPI_S_STATE`.
pub const HVM_PARAM_ACPI_S_STATE: u32 = 14;
/// `HVM_PARAM_VM86_TSS`.
pub const HVM_PARAM_VM86_TSS: u32 = 15;
/// `HVM_PARAM_VPT_ALIGN`.
pub const HVM_PARAM_VPT_ALIGN: u32 = 16;
/// `HVM_PARAM_CONSOLE_PFN`: the gfn of the PV console ring.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`: the guest's port of the console channel.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// `HVM_PARAM_PAGING_RING_PFN`: the gfn of the memory paging ring.
pub const HVM_PARAM_PAGING_RING_PFN: u32 = 27;
/// `HVM_PARAM_MONITOR_RING_PFN`: the gfn of the monitor (vm_event) ring.
pub const HVM_PARAM_MONITOR_RING_PFN: u32 = 28;
/// `HVM_PARAM_SHARING_RING_PFN`: the gfn of the memory sharing ring.
pub const HVM_PARAM_SHARING_RING_PFN: u32 = 29;
/// `HVM_PARAM_TRIPLE_FAULT_REASON`.
pub const HVM_PARAM_TRIPLE_FAULT_REASON: u32 = 31;
/// `HVM_PARAM_IOREQ_SERVER_PFN`.
pub const HVM_PARAM_IOREQ_SERVER_PFN: u32 = 32;
/// `HVM_PARAM_NR_IOREQ_SERVER_PAGES`.
pub const HVM_PARAM_NR_IOREQ_SERVER_PAGES: u32 = 33;
/// `HVM_PARAM_ALTP2M`: one of the `XEN_ALTP2M_*` modes.
pub const HVM_PARAM_ALTP2M: u32 = 35;
/// `HVM_PARAM_MCA_CAP`.
pub const HVM_PARAM_MCA_CAP: u32 = 38;
/// `HVM_NR_PARAMS`: parameters are numbered below this.
pub const HVM_NR_PARAMS: u32 = 39;

/// `HVMPTM_delay_for_missed_ticks`.
pub const HVMPTM_DELAY_FOR_MISSED_TICKS: u64 = 0;
/// `HVMPTM_no_delay_for_missed_ticks`: what libxl sets for HVM and PVH
/// guests by default.
pub const HVMPTM_NO_DELAY_FOR_MISSED_TICKS: u64 = 1;
/// `HVMPTM_no_missed_ticks_pending`.
pub const HVMPTM_NO_MISSED_TICKS_PENDING: u64 = 2;
/// `HVMPTM_one_missed_tick_pending`.
pub const HVMPTM_ONE_MISSED_TICK_PENDING: u64 = 3;

/// `XEN_ALTP2M_disabled`.
pub const XEN_ALTP2M_DISABLED: u64 = 0;

/// `HVM_FILE_MAGIC`: [`HvmSaveHeader::magic`].
pub const HVM_FILE_MAGIC: u32 = 0x5438_1286;
/// `HVM_FILE_VERSION`: [`HvmSaveHeader::version`].
pub const HVM_FILE_VERSION: u32 = 1;

/// `HVM_SAVE_CODE(END)`: the record that ends a context.
pub const HVM_SAVE_CODE_END: u16 = 0;
/// `HVM_SAVE_CODE(HEADER)`: [`HvmSaveHeader`], always first.
pub const HVM_SAVE_CODE_HEADER: u16 = 1;
/// `HVM_SAVE_CODE(CPU)`: [`HvmHwCpu`], one per vCPU.
pub const HVM_SAVE_CODE_CPU: u16 = 2;
/// `HVM_SAVE_CODE(LAPIC)`.
pub const HVM_SAVE_CODE_LAPIC: u16 = 5;
/// `HVM_SAVE_CODE(LAPIC_REGS)`.
pub const HVM_SAVE_CODE_LAPIC_REGS: u16 = 6;
/// `HVM_SAVE_CODE(MTRR)`: [`HvmHwMtrr`], one per vCPU.
pub const HVM_SAVE_CODE_MTRR: u16 = 14;
/// `HVM_SAVE_CODE_MAX`: the highest record type of Xen 4.17.
pub const HVM_SAVE_CODE_MAX: u16 = 20;

/// `XEN_X86_FPU_INITIALISED`: [`HvmHwCpu::flags`] bit saying `fpu_regs`
/// holds a state (without it Xen gives the vCPU a fresh FPU).
pub const XEN_X86_FPU_INITIALISED: u32 = 1 << 0;

/// `MTRR_VCNT`: variable MTRR pairs in [`HvmHwMtrr`].
pub const MTRR_VCNT: usize = 8;
/// `NUM_FIXED_MSR`: fixed-range MTRRs in [`HvmHwMtrr`].
pub const NUM_FIXED_MSR: usize = 11;

/// The descriptor before every record of an HVM context
/// (`struct hvm_save_descriptor`); records follow each other unpadded.
#[doc(alias = "hvm_save_descriptor")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmSaveDescriptor {
    /// `HVM_SAVE_CODE_*`: the record's type.
    pub typecode: u16,
    /// Which one of its type (the vCPU for per-vCPU records).
    pub instance: u16,
    /// Bytes of the record, not counting this descriptor.
    pub length: u32,
}
const _: () = assert!(core::mem::size_of::<HvmSaveDescriptor>() == 8);
const _: () = assert!(core::mem::offset_of!(HvmSaveDescriptor, typecode) == 0);
const _: () = assert!(core::mem::offset_of!(HvmSaveDescriptor, instance) == 2);
const _: () = assert!(core::mem::offset_of!(HvmSaveDescriptor, length) == 4);

/// `HVM_SAVE_TYPE(HEADER)` (`struct hvm_save_header`): Xen checks the
/// magic and version on load and takes the guest's TSC frequency from it,
/// so a builder reuses the one `XEN_DOMCTL_gethvmcontext` returned.
#[doc(alias = "hvm_save_header")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmSaveHeader {
    /// [`HVM_FILE_MAGIC`].
    pub magic: u32,
    /// [`HVM_FILE_VERSION`].
    pub version: u32,
    /// The Xen changeset that saved it.
    pub changeset: u64,
    /// `CPUID[1].EAX` of the saving host.
    pub cpuid: u32,
    /// The guest's TSC frequency in kHz.
    pub gtsc_khz: u32,
}
const _: () = assert!(core::mem::size_of::<HvmSaveHeader>() == 24);
const _: () = assert!(core::mem::offset_of!(HvmSaveHeader, magic) == 0);
const _: () = assert!(core::mem::offset_of!(HvmSaveHeader, version) == 4);
const _: () = assert!(core::mem::offset_of!(HvmSaveHeader, changeset) == 8);
const _: () = assert!(core::mem::offset_of!(HvmSaveHeader, cpuid) == 16);
const _: () = assert!(core::mem::offset_of!(HvmSaveHeader, gtsc_khz) == 20);

/// `HVM_SAVE_TYPE(CPU)` (`struct hvm_hw_cpu`): one vCPU's registers.
/// Segment attributes (`*_arbytes`) use Xen's packed form: bits 0-7 are
/// the descriptor's type, S, DPL and P, bits 8-11 its AVL, L, D/B and G.
#[doc(alias = "hvm_hw_cpu")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmHwCpu {
    /// The FXSAVE image (used if [`XEN_X86_FPU_INITIALISED`] is set).
    pub fpu_regs: [u8; 512],
    /// `rax`.
    pub rax: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `rbp`.
    pub rbp: u64,
    /// `rsi`.
    pub rsi: u64,
    /// `rdi`.
    pub rdi: u64,
    /// `rsp`.
    pub rsp: u64,
    /// `r8`.
    pub r8: u64,
    /// `r9`.
    pub r9: u64,
    /// `r10`.
    pub r10: u64,
    /// `r11`.
    pub r11: u64,
    /// `r12`.
    pub r12: u64,
    /// `r13`.
    pub r13: u64,
    /// `r14`.
    pub r14: u64,
    /// `r15`.
    pub r15: u64,
    /// `rip`.
    pub rip: u64,
    /// `rflags`.
    pub rflags: u64,
    /// `cr0`.
    pub cr0: u64,
    /// `cr2`.
    pub cr2: u64,
    /// `cr3`.
    pub cr3: u64,
    /// `cr4`.
    pub cr4: u64,
    /// `dr0`.
    pub dr0: u64,
    /// `dr1`.
    pub dr1: u64,
    /// `dr2`.
    pub dr2: u64,
    /// `dr3`.
    pub dr3: u64,
    /// `dr6`.
    pub dr6: u64,
    /// `dr7`.
    pub dr7: u64,
    /// `cs_sel`.
    pub cs_sel: u32,
    /// `ds_sel`.
    pub ds_sel: u32,
    /// `es_sel`.
    pub es_sel: u32,
    /// `fs_sel`.
    pub fs_sel: u32,
    /// `gs_sel`.
    pub gs_sel: u32,
    /// `ss_sel`.
    pub ss_sel: u32,
    /// `tr_sel`.
    pub tr_sel: u32,
    /// `ldtr_sel`.
    pub ldtr_sel: u32,
    /// `cs_limit`.
    pub cs_limit: u32,
    /// `ds_limit`.
    pub ds_limit: u32,
    /// `es_limit`.
    pub es_limit: u32,
    /// `fs_limit`.
    pub fs_limit: u32,
    /// `gs_limit`.
    pub gs_limit: u32,
    /// `ss_limit`.
    pub ss_limit: u32,
    /// `tr_limit`.
    pub tr_limit: u32,
    /// `ldtr_limit`.
    pub ldtr_limit: u32,
    /// `idtr_limit`.
    pub idtr_limit: u32,
    /// `gdtr_limit`.
    pub gdtr_limit: u32,
    /// `cs_base`.
    pub cs_base: u64,
    /// `ds_base`.
    pub ds_base: u64,
    /// `es_base`.
    pub es_base: u64,
    /// `fs_base`.
    pub fs_base: u64,
    /// `gs_base`.
    pub gs_base: u64,
    /// `ss_base`.
    pub ss_base: u64,
    /// `tr_base`.
    pub tr_base: u64,
    /// `ldtr_base`.
    pub ldtr_base: u64,
    /// `idtr_base`.
    pub idtr_base: u64,
    /// `gdtr_base`.
    pub gdtr_base: u64,
    /// `cs_arbytes`.
    pub cs_arbytes: u32,
    /// `ds_arbytes`.
    pub ds_arbytes: u32,
    /// `es_arbytes`.
    pub es_arbytes: u32,
    /// `fs_arbytes`.
    pub fs_arbytes: u32,
    /// `gs_arbytes`.
    pub gs_arbytes: u32,
    /// `ss_arbytes`.
    pub ss_arbytes: u32,
    /// `tr_arbytes`.
    pub tr_arbytes: u32,
    /// `ldtr_arbytes`.
    pub ldtr_arbytes: u32,
    /// `sysenter_cs`.
    pub sysenter_cs: u64,
    /// `sysenter_esp`.
    pub sysenter_esp: u64,
    /// `sysenter_eip`.
    pub sysenter_eip: u64,
    /// `MSR_SHADOW_GS_BASE`.
    pub shadow_gs: u64,
    /// Obsolete, ignored.
    pub msr_flags: u64,
    /// `msr_lstar`.
    pub msr_lstar: u64,
    /// `msr_star`.
    pub msr_star: u64,
    /// `msr_cstar`.
    pub msr_cstar: u64,
    /// `msr_syscall_mask`.
    pub msr_syscall_mask: u64,
    /// `msr_efer`.
    pub msr_efer: u64,
    /// `msr_tsc_aux`.
    pub msr_tsc_aux: u64,
    /// The guest's TSC.
    pub tsc: u64,
    /// A pending event (the C union of `pending_event` and its bit fields).
    pub pending_event: u32,
    /// The pending event's error code.
    pub error_code: u32,
    /// [`XEN_X86_FPU_INITIALISED`].
    pub flags: u32,
    /// Must be zero.
    pub pad0: u32,
}
const _: () = assert!(core::mem::size_of::<HvmHwCpu>() == 1032);
const _: () = assert!(core::mem::align_of::<HvmHwCpu>() == 8);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, rax) == 512);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, rbx) == 520);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, rip) == 640);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, cr0) == 656);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, dr6) == 720);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, cs_sel) == 736);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, cs_limit) == 768);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, cs_base) == 808);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, cs_arbytes) == 888);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, sysenter_cs) == 920);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, tsc) == 1008);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, pending_event) == 1016);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, error_code) == 1020);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, flags) == 1024);
const _: () = assert!(core::mem::offset_of!(HvmHwCpu, pad0) == 1028);

/// `HVM_SAVE_TYPE(MTRR)` (`struct hvm_hw_mtrr`): one vCPU's PAT and MTRRs.
#[doc(alias = "hvm_hw_mtrr")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvmHwMtrr {
    /// `MSR_IA32_CR_PAT`.
    pub msr_pat_cr: u64,
    /// The variable ranges: base and mask MSR of each pair.
    pub msr_mtrr_var: [u64; MTRR_VCNT * 2],
    /// The fixed ranges.
    pub msr_mtrr_fixed: [u64; NUM_FIXED_MSR],
    /// `MSR_MTRRcap`.
    pub msr_mtrr_cap: u64,
    /// `MSR_MTRRdefType`: default type and enable bits.
    pub msr_mtrr_def_type: u64,
}
const _: () = assert!(core::mem::size_of::<HvmHwMtrr>() == 240);
const _: () = assert!(core::mem::offset_of!(HvmHwMtrr, msr_pat_cr) == 0);
const _: () = assert!(core::mem::offset_of!(HvmHwMtrr, msr_mtrr_var) == 8);
const _: () = assert!(core::mem::offset_of!(HvmHwMtrr, msr_mtrr_fixed) == 136);
const _: () = assert!(core::mem::offset_of!(HvmHwMtrr, msr_mtrr_cap) == 224);
const _: () = assert!(core::mem::offset_of!(HvmHwMtrr, msr_mtrr_def_type) == 232);

/// `HVM_SAVE_LENGTH(HEADER)`.
pub const HVM_SAVE_LENGTH_HEADER: u32 = core::mem::size_of::<HvmSaveHeader>() as u32;
/// `HVM_SAVE_LENGTH(CPU)`.
pub const HVM_SAVE_LENGTH_CPU: u32 = core::mem::size_of::<HvmHwCpu>() as u32;
/// `HVM_SAVE_LENGTH(MTRR)`.
pub const HVM_SAVE_LENGTH_MTRR: u32 = core::mem::size_of::<HvmHwMtrr>() as u32;
/// `HVM_SAVE_LENGTH(END)`: the end record is a bare descriptor.
pub const HVM_SAVE_LENGTH_END: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_param_argument_is_the_c_layout() {
        let param = XenHvmParam {
            domid: 7,
            pad: 0,
            index: HVM_PARAM_STORE_PFN,
            value: 0xfeffc,
        };

        let bytes = param.as_bytes();

        assert_eq!(&bytes[0..2], &7u16.to_le_bytes());
        assert_eq!(&bytes[4..8], &1u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0xfeffcu64.to_le_bytes());
    }

    #[test]
    fn save_descriptor_reads_from_a_record_stream() {
        let stream = [2u8, 0, 1, 0, 0x08, 0x04, 0, 0];

        let desc = HvmSaveDescriptor::read_from_bytes(&stream).unwrap();

        assert_eq!(
            (desc.typecode, desc.instance, desc.length),
            (HVM_SAVE_CODE_CPU, 1, HVM_SAVE_LENGTH_CPU)
        );
    }
}
