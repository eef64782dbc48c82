//! The PV start-of-day page (`struct start_info` in `xen/xen.h`), x86_64
//! layout: what the domain builder tells a PV kernel when it starts.

use core::fmt;

use bitflags::bitflags;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::hypercall::XenPfn;
use super::EvtchnPort;

/// The prefix of [`StartInfo::magic`] for a 64-bit x86 PV guest; Xen writes
/// exactly this string, NUL-padded.
pub const START_INFO_MAGIC_X86_64: &[u8] = b"xen-3.0-x86_64";

/// `MAX_GUEST_CMDLINE`: size of [`StartInfo::cmd_line`], including the NUL.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `SIF_PRIVILEGED`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN`: the domain is the initial domain (dom0).
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `SIF_MULTIBOOT_MOD`: `mod_start` is a multiboot module package.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `SIF_MOD_START_PFN`: `mod_start` is a frame number, not an address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `SIF_VIRT_P2M_4TOOLS`: the tools understand a virtually mapped p2m list.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `SIF_PM_MASK`: bits reserved for power management options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;

bitflags! {
    /// The `flags` of [`StartInfo`] (`SIF_*`); also used by
    /// [`crate::xen::hvm_start_info::HvmStartInfo::flags`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SifFlags: u32 {
        /// `SIF_PRIVILEGED`.
        const PRIVILEGED = SIF_PRIVILEGED;
        /// `SIF_INITDOMAIN`.
        const INITDOMAIN = SIF_INITDOMAIN;
        /// `SIF_MULTIBOOT_MOD`.
        const MULTIBOOT_MOD = SIF_MULTIBOOT_MOD;
        /// `SIF_MOD_START_PFN`.
        const MOD_START_PFN = SIF_MOD_START_PFN;
        /// `SIF_VIRT_P2M_4TOOLS`.
        const VIRT_P2M_4TOOLS = SIF_VIRT_P2M_4TOOLS;
        /// `SIF_PM_MASK`.
        const PM_MASK = SIF_PM_MASK;
    }
}

/// The PV start info page (`struct start_info`).
///
/// The first group of fields is rewritten on resume after save/restore; the
/// rest is valid only at first boot.
#[doc(alias = "start_info")]
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL-padded; see [`START_INFO_MAGIC_X86_64`].
    pub magic: [u8; 32],
    /// Pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    /// `SIF_*`, see [`SifFlags`].
    pub flags: u32,
    /// Padding (implicit in C).
    pub _pad0: [u8; 4],
    /// Machine frame of the xenstore ring page.
    pub store_mfn: XenPfn,
    /// Event channel of the xenstore ring.
    pub store_evtchn: EvtchnPort,
    /// Padding (implicit in C).
    pub _pad1: [u8; 4],
    /// The C union `console`: [`StartInfoConsoleDomU`] for a domU,
    /// [`StartInfoConsoleDom0`] for dom0.
    pub console: [u64; 2],
    /// Virtual address of the bootstrap page tables.
    pub pt_base: u64,
    /// Number of bootstrap page table frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn-to-mfn list.
    pub mfn_list: u64,
    /// Virtual address (or pfn, with `SIF_MOD_START_PFN`) of the initial
    /// module (ramdisk).
    pub mod_start: u64,
    /// Size of the initial module in bytes.
    pub mod_len: u64,
    /// Kernel command line, NUL-terminated (`int8_t` in C).
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First pfn of the initial p2m table.
    pub first_p2m_pfn: u64,
    /// Number of pfns of the initial p2m table.
    pub nr_p2m_frames: u64,
}
const _: () = assert!(core::mem::size_of::<StartInfo>() == 1168);
const _: () = assert!(core::mem::size_of::<StartInfo>() <= super::PAGE_SIZE);
const _: () = assert!(core::mem::offset_of!(StartInfo, magic) == 0);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_pages) == 32);
const _: () = assert!(core::mem::offset_of!(StartInfo, shared_info) == 40);
const _: () = assert!(core::mem::offset_of!(StartInfo, flags) == 48);
const _: () = assert!(core::mem::offset_of!(StartInfo, store_mfn) == 56);
const _: () = assert!(core::mem::offset_of!(StartInfo, store_evtchn) == 64);
const _: () = assert!(core::mem::offset_of!(StartInfo, console) == 72);
const _: () = assert!(core::mem::offset_of!(StartInfo, pt_base) == 88);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_pt_frames) == 96);
const _: () = assert!(core::mem::offset_of!(StartInfo, mfn_list) == 104);
const _: () = assert!(core::mem::offset_of!(StartInfo, mod_start) == 112);
const _: () = assert!(core::mem::offset_of!(StartInfo, mod_len) == 120);
const _: () = assert!(core::mem::offset_of!(StartInfo, cmd_line) == 128);
const _: () = assert!(core::mem::offset_of!(StartInfo, first_p2m_pfn) == 1152);
const _: () = assert!(core::mem::offset_of!(StartInfo, nr_p2m_frames) == 1160);

/// `console.domU` of [`StartInfo`]: the PV console ring of a domU.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct StartInfoConsoleDomU {
    /// Machine frame of the console ring page.
    pub mfn: XenPfn,
    /// Event channel of the console ring.
    pub evtchn: EvtchnPort,
    /// Padding (implicit in C).
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<StartInfoConsoleDomU>() == 16);
const _: () = assert!(core::mem::offset_of!(StartInfoConsoleDomU, mfn) == 0);
const _: () = assert!(core::mem::offset_of!(StartInfoConsoleDomU, evtchn) == 8);

/// `console.dom0` of [`StartInfo`]: where dom0 finds its VGA console info
/// (`dom0_vga_console_info`) within the start info page.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct StartInfoConsoleDom0 {
    /// Offset of the console info from the start of the page.
    pub info_off: u32,
    /// Size of the console info.
    pub info_size: u32,
}
const _: () = assert!(core::mem::size_of::<StartInfoConsoleDom0>() == 8);
const _: () = assert!(core::mem::offset_of!(StartInfoConsoleDom0, info_off) == 0);
const _: () = assert!(core::mem::offset_of!(StartInfoConsoleDom0, info_size) == 4);

/// A command line that does not fit [`StartInfo::cmd_line`] with its NUL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmdLineTooLong {
    /// Length of the rejected command line in bytes.
    pub len: usize,
}

impl fmt::Display for CmdLineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the kernel command line is {} bytes but a PV guest takes at most {}; shorten `cmdline`",
            self.len,
            MAX_GUEST_CMDLINE - 1
        )
    }
}

#[cfg(feature = "std")]
impl std::error::Error for CmdLineTooLong {}

impl Default for StartInfo {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl StartInfo {
    /// A zeroed start info page carrying the x86_64 magic.
    pub fn new_x86_64() -> Self {
        let mut info = Self::new_zeroed();
        info.magic[..START_INFO_MAGIC_X86_64.len()].copy_from_slice(START_INFO_MAGIC_X86_64);
        info
    }

    /// Whether `magic` names a 64-bit x86 PV guest.
    pub fn has_x86_64_magic(&self) -> bool {
        self.magic.starts_with(START_INFO_MAGIC_X86_64)
    }

    /// The magic up to its first NUL.
    pub fn magic_bytes(&self) -> &[u8] {
        until_nul(&self.magic)
    }

    /// `flags`, including bits this crate does not name.
    pub const fn sif_flags(&self) -> SifFlags {
        SifFlags::from_bits_retain(self.flags)
    }

    /// The console union read as `console.domU`.
    pub fn console_domu(&self) -> StartInfoConsoleDomU {
        zerocopy::transmute!(self.console)
    }

    /// The console union read as `console.dom0`.
    pub fn console_dom0(&self) -> StartInfoConsoleDom0 {
        let [first, _] = self.console;
        zerocopy::transmute!(first)
    }

    /// Fills the console union as `console.domU`.
    pub fn set_console_domu(&mut self, mfn: XenPfn, evtchn: EvtchnPort) {
        self.console = zerocopy::transmute!(StartInfoConsoleDomU {
            mfn,
            evtchn,
            _pad: [0; 4]
        });
    }

    /// Fills the console union as `console.dom0`.
    pub fn set_console_dom0(&mut self, info_off: u32, info_size: u32) {
        self.console = [
            zerocopy::transmute!(StartInfoConsoleDom0 {
                info_off,
                info_size
            }),
            0,
        ];
    }

    /// The command line up to its first NUL (or all 1024 bytes if a guest
    /// left it unterminated).
    pub fn cmd_line_bytes(&self) -> &[u8] {
        until_nul(&self.cmd_line)
    }

    /// Stores `cmd_line`, NUL-terminated and NUL-padded.
    pub fn set_cmd_line(&mut self, cmd_line: &[u8]) -> Result<(), CmdLineTooLong> {
        if cmd_line.len() >= MAX_GUEST_CMDLINE {
            return Err(CmdLineTooLong {
                len: cmd_line.len(),
            });
        }
        self.cmd_line = [0; MAX_GUEST_CMDLINE];
        self.cmd_line[..cmd_line.len()].copy_from_slice(cmd_line);
        Ok(())
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// One module of a `SIF_MULTIBOOT_MOD` package (`struct xen_multiboot_mod_list`);
/// addresses are relative to the package start, and an entry with
/// `mod_start == 0` ends the list.
#[doc(alias = "xen_multiboot_mod_list")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenMultibootModList {
    /// First byte of the module.
    pub mod_start: u32,
    /// Last byte of the module (inclusive).
    pub mod_end: u32,
    /// The module's NUL-terminated command line.
    pub cmdline: u32,
    /// Must be zero.
    pub pad: u32,
}
const _: () = assert!(core::mem::size_of::<XenMultibootModList>() == 16);
const _: () = assert!(core::mem::offset_of!(XenMultibootModList, mod_start) == 0);
const _: () = assert!(core::mem::offset_of!(XenMultibootModList, mod_end) == 4);
const _: () = assert!(core::mem::offset_of!(XenMultibootModList, cmdline) == 8);
const _: () = assert!(core::mem::offset_of!(XenMultibootModList, pad) == 12);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_page_carries_the_x86_64_magic() {
        let info = StartInfo::new_x86_64();

        assert!(info.has_x86_64_magic());
        assert_eq!(info.magic_bytes(), b"xen-3.0-x86_64");
    }

    #[test]
    fn console_union_round_trips_both_members() {
        let mut info = StartInfo::new_x86_64();

        info.set_console_domu(0x12_3456_789a, 3);
        assert_eq!(info.console_domu().mfn, 0x12_3456_789a);
        assert_eq!(info.console_domu().evtchn, 3);

        info.set_console_dom0(0x800, 0x40);
        assert_eq!(
            info.console_dom0(),
            StartInfoConsoleDom0 {
                info_off: 0x800,
                info_size: 0x40
            }
        );
    }

    #[test]
    fn cmd_line_must_leave_room_for_the_nul() {
        let mut info = StartInfo::new_x86_64();

        assert_eq!(info.set_cmd_line(b"console=hvc0 root=/dev/xvda1"), Ok(()));
        assert_eq!(info.cmd_line_bytes(), b"console=hvc0 root=/dev/xvda1");
        assert_eq!(
            info.set_cmd_line(&[b'x'; 1024]),
            Err(CmdLineTooLong { len: 1024 })
        );
        assert_eq!(info.set_cmd_line(&[b'x'; 1023]), Ok(()));
        assert_eq!(info.cmd_line[1023], 0);
    }
}
