//! The PVH start-of-day structure (`xen/arch-x86/hvm/start_info.h`): what a
//! PVH kernel entered through `XEN_ELFNOTE_PHYS32_ENTRY` finds in `ebx`.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::abi_enum;

/// `XEN_HVM_START_MAGIC_VALUE`: `"xEn3"` with the top bit of the `E` set.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The first version of [`HvmStartInfo`] (no memory map).
pub const HVM_START_INFO_VERSION_0: u32 = 0;
/// The version that added `memmap_paddr` and `memmap_entries`.
pub const HVM_START_INFO_VERSION_1: u32 = 1;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_HVM_MEMMAP_TYPE_ACPI`.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// `XEN_HVM_MEMMAP_TYPE_NVS`.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// `XEN_HVM_MEMMAP_TYPE_UNUSABLE`.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// `XEN_HVM_MEMMAP_TYPE_DISABLED`.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// `XEN_HVM_MEMMAP_TYPE_PMEM`.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

abi_enum! {
    /// The `type` of a [`HvmMemmapTableEntry`] (the ACPI address range types).
    pub enum HvmMemmapType: u32, "PVH memory map type" {
        /// Usable RAM.
        Ram = XEN_HVM_MEMMAP_TYPE_RAM => "XEN_HVM_MEMMAP_TYPE_RAM",
        /// Reserved.
        Reserved = XEN_HVM_MEMMAP_TYPE_RESERVED => "XEN_HVM_MEMMAP_TYPE_RESERVED",
        /// ACPI tables, reclaimable.
        Acpi = XEN_HVM_MEMMAP_TYPE_ACPI => "XEN_HVM_MEMMAP_TYPE_ACPI",
        /// ACPI non-volatile storage.
        Nvs = XEN_HVM_MEMMAP_TYPE_NVS => "XEN_HVM_MEMMAP_TYPE_NVS",
        /// Unusable.
        Unusable = XEN_HVM_MEMMAP_TYPE_UNUSABLE => "XEN_HVM_MEMMAP_TYPE_UNUSABLE",
        /// Disabled.
        Disabled = XEN_HVM_MEMMAP_TYPE_DISABLED => "XEN_HVM_MEMMAP_TYPE_DISABLED",
        /// Persistent memory.
        Pmem = XEN_HVM_MEMMAP_TYPE_PMEM => "XEN_HVM_MEMMAP_TYPE_PMEM",
    }
}

/// `struct hvm_start_info`. All addresses are guest physical.
#[doc(alias = "hvm_start_info")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmStartInfo {
    /// [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Structure version; fields after `rsdp_paddr` need version 1.
    pub version: u32,
    /// `SIF_*`, see [`crate::xen::start_info::SifFlags`].
    pub flags: u32,
    /// Entries in the module list.
    pub nr_modules: u32,
    /// Address of an array of [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// Address of the NUL-terminated kernel command line.
    pub cmdline_paddr: u64,
    /// Address of the ACPI RSDP.
    pub rsdp_paddr: u64,
    /// Address of an array of [`HvmMemmapTableEntry`] (version 1).
    pub memmap_paddr: u64,
    /// Entries in the memory map, 0 if none (version 1).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, magic) == 0);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, version) == 4);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, flags) == 8);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, nr_modules) == 12);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, modlist_paddr) == 16);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, rsdp_paddr) == 32);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_paddr) == 40);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, memmap_entries) == 48);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, reserved) == 52);

impl HvmStartInfo {
    /// Whether `magic` is [`XEN_HVM_START_MAGIC_VALUE`].
    pub const fn has_valid_magic(&self) -> bool {
        self.magic == XEN_HVM_START_MAGIC_VALUE
    }

    /// Whether the memory map fields are meaningful (version 1 or later).
    pub const fn has_memmap(&self) -> bool {
        self.version >= HVM_START_INFO_VERSION_1
    }
}

/// One boot module (`struct hvm_modlist_entry`).
#[doc(alias = "hvm_modlist_entry")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmModlistEntry {
    /// Address of the module.
    pub paddr: u64,
    /// Size of the module in bytes.
    pub size: u64,
    /// Address of the module's command line, or 0.
    pub cmdline_paddr: u64,
    /// Must be zero.
    pub reserved: u64,
}
const _: () = assert!(core::mem::size_of::<HvmModlistEntry>() == 32);
const _: () = assert!(core::mem::offset_of!(HvmModlistEntry, paddr) == 0);
const _: () = assert!(core::mem::offset_of!(HvmModlistEntry, size) == 8);
const _: () = assert!(core::mem::offset_of!(HvmModlistEntry, cmdline_paddr) == 16);
const _: () = assert!(core::mem::offset_of!(HvmModlistEntry, reserved) == 24);

/// One memory map entry (`struct hvm_memmap_table_entry`).
#[doc(alias = "hvm_memmap_table_entry")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvmMemmapTableEntry {
    /// Base address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*`, see [`HvmMemmapType`] (`type` in C).
    pub type_: u32,
    /// Must be zero.
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<HvmMemmapTableEntry>() == 24);
const _: () = assert!(core::mem::offset_of!(HvmMemmapTableEntry, addr) == 0);
const _: () = assert!(core::mem::offset_of!(HvmMemmapTableEntry, size) == 8);
const _: () = assert!(core::mem::offset_of!(HvmMemmapTableEntry, type_) == 16);
const _: () = assert!(core::mem::offset_of!(HvmMemmapTableEntry, reserved) == 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_spells_xen3_with_high_bit_on_the_e() {
        assert_eq!(
            XEN_HVM_START_MAGIC_VALUE.to_le_bytes(),
            [b'x', b'E' | 0x80, b'n', b'3']
        );
    }

    #[test]
    fn memmap_is_present_from_version_one() {
        let mut info = HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            ..Default::default()
        };
        assert!(info.has_valid_magic());
        assert!(!info.has_memmap());
        info.version = HVM_START_INFO_VERSION_1;
        assert!(info.has_memmap());
    }
}
