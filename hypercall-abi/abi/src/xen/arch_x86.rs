//! The x86_64 PV vCPU state (`arch-x86/xen.h`, `arch-x86/xen-x86_64.h`):
//! `struct vcpu_guest_context` and its parts, as a toolstack passes them to
//! `XEN_DOMCTL_setvcpucontext` to start a PV guest, and the selectors,
//! flags and VM assists a domain builder puts in them.
//!
//! Layouts are those C gives the headers with `__XEN_TOOLS__` on x86_64:
//! `unsigned long` is 8 bytes, and each register of `struct cpu_user_regs`
//! is a union whose widest member is a `uint64_t`, so one 8-byte word per
//! register. The offsets asserted below follow from that by the System V
//! rules and were checked against a C program built on Debian's
//! `libxen-dev` 4.17 headers.

use core::mem::{offset_of, size_of};

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::XenPfn;

/// `FLAT_KERNEL_CS64` (= `FLAT_RING3_CS64`): the flat 64-bit code selector
/// Xen provides for PV guests (GDT entry 262, RPL 3).
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
/// `FLAT_KERNEL_DS64` (= `FLAT_RING3_DS64`): the null selector, as 64-bit
/// mode needs no data segment.
pub const FLAT_KERNEL_DS64: u16 = 0x0000;
/// `FLAT_KERNEL_SS64` (= `FLAT_RING3_SS64`): the flat stack selector (GDT
/// entry 261, RPL 3).
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
/// `FLAT_KERNEL_CS`: the kernel code selector of a 64-bit PV guest.
pub const FLAT_KERNEL_CS: u16 = FLAT_KERNEL_CS64;
/// `FLAT_KERNEL_DS`: the kernel data selector of a 64-bit PV guest.
pub const FLAT_KERNEL_DS: u16 = FLAT_KERNEL_DS64;
/// `FLAT_KERNEL_SS`: the kernel stack selector of a 64-bit PV guest.
pub const FLAT_KERNEL_SS: u16 = FLAT_KERNEL_SS64;

/// `xen_pfn_to_cr3(pfn)`: the `ctrlreg[3]` value of a PV guest whose top
/// page table is frame `pfn` (x86_64: the frame shifted by 12).
pub const fn xen_pfn_to_cr3(pfn: XenPfn) -> u64 {
    pfn << 12
}

/// `xen_cr3_to_pfn(cr3)`: the frame of a PV `cr3` value.
pub const fn xen_cr3_to_pfn(cr3: u64) -> XenPfn {
    cr3 >> 12
}

/// `VGCF_i387_valid`: `fpu_ctxt` holds valid FPU state.
pub const VGCF_I387_VALID: u64 = 1 << 0;
/// `VGCF_in_kernel`: the vCPU is in guest kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_failsafe_disables_events`: entering the failsafe callback masks
/// events.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `VGCF_syscall_disables_events`: entering the syscall callback masks
/// events.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;
/// `VGCF_online`: the vCPU is up (set on the boot vCPU by the builder).
pub const VGCF_ONLINE: u64 = 1 << 5;
/// `VGCF_in_syscall` (x86_64): the vCPU is inside a syscall.
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;

bitflags! {
    /// [`VcpuGuestContext::flags`] (`VGCF_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VgcfFlags: u64 {
        /// `VGCF_i387_valid`.
        const I387_VALID = VGCF_I387_VALID;
        /// `VGCF_in_kernel`.
        const IN_KERNEL = VGCF_IN_KERNEL;
        /// `VGCF_failsafe_disables_events`.
        const FAILSAFE_DISABLES_EVENTS = VGCF_FAILSAFE_DISABLES_EVENTS;
        /// `VGCF_syscall_disables_events`.
        const SYSCALL_DISABLES_EVENTS = VGCF_SYSCALL_DISABLES_EVENTS;
        /// `VGCF_online`.
        const ONLINE = VGCF_ONLINE;
        /// `VGCF_in_syscall`.
        const IN_SYSCALL = VGCF_IN_SYSCALL;
    }
}

/// `VMASST_TYPE_4gb_segments` (`xen.h`): emulate 4 GiB segments (32-bit).
pub const VMASST_TYPE_4GB_SEGMENTS: u32 = 0;
/// `VMASST_TYPE_4gb_segments_notify`: notify on 4 GiB segment emulation.
pub const VMASST_TYPE_4GB_SEGMENTS_NOTIFY: u32 = 1;
/// `VMASST_TYPE_writable_pagetables`: trap and emulate writes to page
/// tables (every Linux PV guest asks for it).
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u32 = 2;
/// `VMASST_TYPE_pae_extended_cr3`: `cr3` may hold a frame above 4 GiB
/// (32-bit PAE guests).
pub const VMASST_TYPE_PAE_EXTENDED_CR3: u32 = 3;
/// `VMASST_TYPE_architectural_iopl`: IOPL behaves as on hardware.
pub const VMASST_TYPE_ARCHITECTURAL_IOPL: u32 = 4;
/// `VMASST_TYPE_runstate_update_flag`: Xen flags runstate area updates.
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
/// `VMASST_TYPE_m2p_strict`: the guest's kernel page tables do not map the
/// read-only M2P table into user space (x86_64).
pub const VMASST_TYPE_M2P_STRICT: u32 = 32;

/// The [`VcpuGuestContext::vm_assist`] bit for assist `ty`
/// (`VMASST_TYPE_*`); a bitmap of these is what the guest's ELF notes ask
/// for and what the builder passes.
pub const fn vmasst_bit(ty: u32) -> u64 {
    1 << ty
}

/// `TI_GET_DPL`'s mask in [`TrapInfo::flags`]: the privilege level allowed
/// to raise the trap with `int`.
pub const TI_DPL_MASK: u8 = 3;
/// `TI_SET_IF`'s bit in [`TrapInfo::flags`]: entering the handler masks
/// events (an interrupt gate).
pub const TI_IF: u8 = 4;

/// `struct trap_info`: one entry of a PV guest's virtual IDT.
#[doc(alias = "trap_info")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: privilege level ([`TI_DPL_MASK`]); bit 2: mask events
    /// ([`TI_IF`]).
    pub flags: u8,
    /// Code selector of the handler.
    pub cs: u16,
    /// Padding (implicit in C).
    pub _pad: u32,
    /// Handler address (`unsigned long`).
    pub address: u64,
}
const _: () = assert!(size_of::<TrapInfo>() == 16);
const _: () = assert!(offset_of!(TrapInfo, vector) == 0);
const _: () = assert!(offset_of!(TrapInfo, flags) == 1);
const _: () = assert!(offset_of!(TrapInfo, cs) == 2);
const _: () = assert!(offset_of!(TrapInfo, address) == 8);

/// `struct cpu_user_regs` of x86_64: the general purpose registers and the
/// interrupt frame, in the order Xen pushes them.
///
/// Each C register is a union of its 64/32/16/8-bit names
/// (`rax`/`eax`/`ax`/`al`); only the 64-bit name is kept here.
#[doc(alias = "cpu_user_regs")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct CpuUserRegs {
    /// `r15`.
    pub r15: u64,
    /// `r14`.
    pub r14: u64,
    /// `r13`.
    pub r13: u64,
    /// `r12`.
    pub r12: u64,
    /// `rbp`.
    pub rbp: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `r11`.
    pub r11: u64,
    /// `r10`.
    pub r10: u64,
    /// `r9`.
    pub r9: u64,
    /// `r8`.
    pub r8: u64,
    /// `rax`.
    pub rax: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `rsi`: a PV guest starts with the address of its `start_info` here.
    pub rsi: u64,
    /// `rdi`.
    pub rdi: u64,
    /// Xen private.
    pub error_code: u32,
    /// Xen private.
    pub entry_vector: u32,
    /// `rip`: where the vCPU starts.
    pub rip: u64,
    /// Code selector, e.g. [`FLAT_KERNEL_CS`].
    pub cs: u16,
    /// Padding.
    pub _pad0: u16,
    /// Xen private: the event mask saved on entry.
    pub saved_upcall_mask: u8,
    /// Padding.
    pub _pad1: [u8; 3],
    /// `rflags` (`rflags.IF == !saved_upcall_mask`; bit 9, IF, should be set).
    pub rflags: u64,
    /// `rsp`: the initial stack pointer.
    pub rsp: u64,
    /// Stack selector, e.g. [`FLAT_KERNEL_SS`].
    pub ss: u16,
    /// Padding.
    pub _pad2: [u16; 3],
    /// `es`.
    pub es: u16,
    /// Padding.
    pub _pad3: [u16; 3],
    /// `ds`.
    pub ds: u16,
    /// Padding.
    pub _pad4: [u16; 3],
    /// `fs`.
    pub fs: u16,
    /// Padding.
    pub _pad5: [u16; 3],
    /// `gs`.
    pub gs: u16,
    /// Padding.
    pub _pad6: [u16; 3],
}
const _: () = assert!(size_of::<CpuUserRegs>() == 200);
const _: () = assert!(core::mem::align_of::<CpuUserRegs>() == 8);
const _: () = assert!(offset_of!(CpuUserRegs, r15) == 0);
const _: () = assert!(offset_of!(CpuUserRegs, rbp) == 32);
const _: () = assert!(offset_of!(CpuUserRegs, rbx) == 40);
const _: () = assert!(offset_of!(CpuUserRegs, r8) == 72);
const _: () = assert!(offset_of!(CpuUserRegs, rax) == 80);
const _: () = assert!(offset_of!(CpuUserRegs, rsi) == 104);
const _: () = assert!(offset_of!(CpuUserRegs, rdi) == 112);
const _: () = assert!(offset_of!(CpuUserRegs, error_code) == 120);
const _: () = assert!(offset_of!(CpuUserRegs, entry_vector) == 124);
const _: () = assert!(offset_of!(CpuUserRegs, rip) == 128);
const _: () = assert!(offset_of!(CpuUserRegs, cs) == 136);
const _: () = assert!(offset_of!(CpuUserRegs, saved_upcall_mask) == 140);
const _: () = assert!(offset_of!(CpuUserRegs, rflags) == 144);
const _: () = assert!(offset_of!(CpuUserRegs, rsp) == 152);
const _: () = assert!(offset_of!(CpuUserRegs, ss) == 160);
const _: () = assert!(offset_of!(CpuUserRegs, es) == 168);
const _: () = assert!(offset_of!(CpuUserRegs, ds) == 176);
const _: () = assert!(offset_of!(CpuUserRegs, fs) == 184);
const _: () = assert!(offset_of!(CpuUserRegs, gs) == 192);

/// Entries of [`VcpuGuestContext::trap_ctxt`] (the virtual IDT).
pub const NR_TRAP_ENTRIES: usize = 256;
/// Entries of [`VcpuGuestContext::gdt_frames`]: a PV GDT spans at most 16
/// frames.
pub const NR_GDT_FRAMES: usize = 16;

/// `struct vcpu_guest_context` of x86_64 (`vcpu_guest_context_t`): the
/// whole register state of a PV vCPU, 5168 bytes.
///
/// A domain builder zeroes it (`FromZeros::new_zeroed`), then sets
/// `flags` ([`VGCF_IN_KERNEL`] and [`VGCF_ONLINE`] at least),
/// `user_regs` (`rip` = kernel entry, `rsp` = boot stack, `rsi` =
/// `start_info`, the `FLAT_KERNEL_*` selectors, `rflags` with IF),
/// `kernel_ss`/`kernel_sp`, `ctrlreg[3]` ([`xen_pfn_to_cr3`] of the top
/// page table) and `vm_assist`.
#[doc(alias = "vcpu_guest_context")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuGuestContext {
    /// FXSAVE image of the FPU/SSE state (`struct { char x[512]; }`).
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*`, see [`VgcfFlags`].
    pub flags: u64,
    /// General purpose registers and the interrupt frame.
    pub user_regs: CpuUserRegs,
    /// The virtual IDT.
    pub trap_ctxt: [TrapInfo; NR_TRAP_ENTRIES],
    /// LDT linear address.
    pub ldt_base: u64,
    /// LDT entries.
    pub ldt_ents: u64,
    /// GDT machine frames.
    pub gdt_frames: [u64; NR_GDT_FRAMES],
    /// GDT entries.
    pub gdt_ents: u64,
    /// Kernel stack selector of the virtual TSS (SS1; `FLAT_KERNEL_SS`).
    pub kernel_ss: u64,
    /// Kernel stack pointer of the virtual TSS (SP1).
    pub kernel_sp: u64,
    /// CR0-CR7; the user page table of x86_64 is in `ctrlreg[1]`, the
    /// kernel one in `ctrlreg[3]`.
    pub ctrlreg: [u64; 8],
    /// DR0-DR7.
    pub debugreg: [u64; 8],
    /// Event upcall entry point.
    pub event_callback_eip: u64,
    /// Failsafe callback (bad segment on return to guest).
    pub failsafe_callback_eip: u64,
    /// `syscall` entry point.
    pub syscall_callback_eip: u64,
    /// `VMASST_TYPE_*` bitmap, see [`vmasst_bit`].
    pub vm_assist: u64,
    /// FS base.
    pub fs_base: u64,
    /// Kernel GS base.
    pub gs_base_kernel: u64,
    /// User GS base.
    pub gs_base_user: u64,
}
const _: () = assert!(size_of::<VcpuGuestContext>() == 5168);
const _: () = assert!(core::mem::align_of::<VcpuGuestContext>() == 8);
const _: () = assert!(offset_of!(VcpuGuestContext, fpu_ctxt) == 0);
const _: () = assert!(offset_of!(VcpuGuestContext, flags) == 512);
const _: () = assert!(offset_of!(VcpuGuestContext, user_regs) == 520);
const _: () = assert!(offset_of!(VcpuGuestContext, trap_ctxt) == 720);
const _: () = assert!(offset_of!(VcpuGuestContext, ldt_base) == 4816);
const _: () = assert!(offset_of!(VcpuGuestContext, ldt_ents) == 4824);
const _: () = assert!(offset_of!(VcpuGuestContext, gdt_frames) == 4832);
const _: () = assert!(offset_of!(VcpuGuestContext, gdt_ents) == 4960);
const _: () = assert!(offset_of!(VcpuGuestContext, kernel_ss) == 4968);
const _: () = assert!(offset_of!(VcpuGuestContext, kernel_sp) == 4976);
const _: () = assert!(offset_of!(VcpuGuestContext, ctrlreg) == 4984);
const _: () = assert!(offset_of!(VcpuGuestContext, debugreg) == 5048);
const _: () = assert!(offset_of!(VcpuGuestContext, event_callback_eip) == 5112);
const _: () = assert!(offset_of!(VcpuGuestContext, failsafe_callback_eip) == 5120);
const _: () = assert!(offset_of!(VcpuGuestContext, syscall_callback_eip) == 5128);
const _: () = assert!(offset_of!(VcpuGuestContext, vm_assist) == 5136);
const _: () = assert!(offset_of!(VcpuGuestContext, fs_base) == 5144);
const _: () = assert!(offset_of!(VcpuGuestContext, gs_base_kernel) == 5152);
const _: () = assert!(offset_of!(VcpuGuestContext, gs_base_user) == 5160);

impl VcpuGuestContext {
    /// [`VcpuGuestContext::flags`] as [`VgcfFlags`], keeping unknown bits.
    pub const fn vgcf_flags(&self) -> VgcfFlags {
        VgcfFlags::from_bits_retain(self.flags)
    }
}

/// `MMUEXT_PIN_L1_TABLE`: pin a page as an L1 page table.
pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
/// `MMUEXT_PIN_L2_TABLE`.
pub const MMUEXT_PIN_L2_TABLE: u32 = 1;
/// `MMUEXT_PIN_L3_TABLE`.
pub const MMUEXT_PIN_L3_TABLE: u32 = 2;
/// `MMUEXT_PIN_L4_TABLE`: pin a page (and, validated recursively, the
/// tables it references) as a top-level page table; a PV domain builder
/// pins the boot L4 before the first vCPU runs on it.
pub const MMUEXT_PIN_L4_TABLE: u32 = 3;
/// `MMUEXT_UNPIN_TABLE`.
pub const MMUEXT_UNPIN_TABLE: u32 = 4;

/// `struct mmuext_op` (`xen.h`): one extended MMU operation of
/// `__HYPERVISOR_mmuext_op`. Only the pin/unpin forms are described: `arg1`
/// is then the machine frame (`mfn`), `arg2` unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MmuextOp {
    /// `cmd`: one of the `MMUEXT_*` constants.
    pub cmd: u32,
    /// Padding to the 8-byte aligned union.
    pub pad: u32,
    /// `arg1` (`mfn` or `linear_addr`).
    pub arg1: u64,
    /// `arg2` (`nr_ents`, `vcpumask` or `src_mfn`).
    pub arg2: u64,
}
const _: () = assert!(core::mem::size_of::<MmuextOp>() == 24);
const _: () = assert!(core::mem::offset_of!(MmuextOp, arg1) == 8);

impl MmuextOp {
    /// Pins machine frame `mfn` as a table of kind `cmd`
    /// (`MMUEXT_PIN_L*_TABLE`).
    pub fn pin(cmd: u32, mfn: u64) -> Self {
        MmuextOp {
            cmd,
            pad: 0,
            arg1: mfn,
            arg2: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::FromZeros;

    use super::*;

    #[test]
    fn context_fields_land_at_the_c_offsets() {
        // Arrange: a context as a builder fills it for a 64-bit PV kernel.
        let mut ctxt = VcpuGuestContext::new_zeroed();
        ctxt.flags = VGCF_IN_KERNEL | VGCF_ONLINE;
        ctxt.user_regs.rip = 0xffff_ffff_8100_0000;
        ctxt.user_regs.rsi = 0x1234_5000;
        ctxt.user_regs.cs = FLAT_KERNEL_CS;
        ctxt.user_regs.ss = FLAT_KERNEL_SS;
        ctxt.trap_ctxt[255].address = 0xdead_beef;
        ctxt.kernel_ss = u64::from(FLAT_KERNEL_SS);
        ctxt.ctrlreg[3] = xen_pfn_to_cr3(0x4321);
        ctxt.vm_assist = vmasst_bit(VMASST_TYPE_WRITABLE_PAGETABLES);
        ctxt.gs_base_user = 0x77;

        // Act
        let bytes = ctxt.as_bytes();

        // Assert: offsets from arch-x86/xen.h (see the const asserts).
        let word = |off: usize| u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
        assert_eq!(bytes.len(), 5168);
        assert_eq!(word(512), 0x24, "flags");
        assert_eq!(word(520 + 128), 0xffff_ffff_8100_0000, "user_regs.rip");
        assert_eq!(word(520 + 104), 0x1234_5000, "user_regs.rsi");
        assert_eq!(&bytes[520 + 136..520 + 138], &0xe033u16.to_le_bytes(), "cs");
        assert_eq!(&bytes[520 + 160..520 + 162], &0xe02bu16.to_le_bytes(), "ss");
        assert_eq!(word(720 + 255 * 16 + 8), 0xdead_beef, "trap_ctxt[255]");
        assert_eq!(word(4968), 0xe02b, "kernel_ss");
        assert_eq!(word(4984 + 3 * 8), 0x4321 << 12, "ctrlreg[3]");
        assert_eq!(word(5136), 1 << 2, "vm_assist");
        assert_eq!(word(5160), 0x77, "gs_base_user");
        assert_eq!(ctxt.vgcf_flags(), VgcfFlags::IN_KERNEL | VgcfFlags::ONLINE);
    }

    #[test]
    fn cr3_round_trips_a_frame() {
        assert_eq!(xen_cr3_to_pfn(xen_pfn_to_cr3(0xabcde)), 0xabcde);
    }
}
