//! The boot memory of a PVH domain, laid out and written as libxenguest
//! does for an HVM container without device model (`xc_dom_build_image`,
//! `alloc_magic_pages_hvm` and `bootlate_hvm` in `xg_dom_x86.c`) and libxl
//! sets its memory map (`domain_construct_memmap` in `libxl_x86.c`).
//!
//! Guest physical memory, from 0: padding up to the kernel's lowest ELF
//! physical address, the kernel, then the initrd and the start info area
//! (in that order, or the other way round when the kernel has
//! `MOD_START_PFN`). The start info area holds the `hvm_start_info`, the
//! command line, the module list, the modules' command lines and the memory
//! map. The kernel starts in 32-bit protected mode, paging off, at
//! `PHYS32_ENTRY` with `%ebx` pointing to the `hvm_start_info`.

use hypercall_abi::xen::hvm_start_info::{
    HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo, HVM_START_INFO_VERSION_1,
    XEN_HVM_MEMMAP_TYPE_RAM, XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use hypercall_abi::xen::start_info::MAX_GUEST_CMDLINE;
use thiserror::Error;
use zerocopy::IntoBytes;

use crate::elf::{ElfError, ElfKernel, KernelParams};
use crate::mem::GuestMemory;
use crate::pv::Segment;
use crate::{PAGE_SHIFT, PAGE_SIZE};

// From tools/include/xenguest.h and xg_dom_x86.c (not in hypercall-abi).
/// `X86_HVM_NR_SPECIAL_PAGES`.
pub const X86_HVM_NR_SPECIAL_PAGES: u64 = 8;
/// `X86_HVM_END_SPECIAL_REGION` (a pfn).
pub const X86_HVM_END_SPECIAL_REGION: u64 = 0xff000;
/// `SPECIALPAGE_PAGING`.
pub const SPECIALPAGE_PAGING: u64 = 0;
/// `SPECIALPAGE_ACCESS`.
pub const SPECIALPAGE_ACCESS: u64 = 1;
/// `SPECIALPAGE_SHARING`.
pub const SPECIALPAGE_SHARING: u64 = 2;
/// `SPECIALPAGE_BUFIOREQ`.
pub const SPECIALPAGE_BUFIOREQ: u64 = 3;
/// `SPECIALPAGE_XENSTORE`.
pub const SPECIALPAGE_XENSTORE: u64 = 4;
/// `SPECIALPAGE_IOREQ`.
pub const SPECIALPAGE_IOREQ: u64 = 5;
/// `SPECIALPAGE_IDENT_PT`.
pub const SPECIALPAGE_IDENT_PT: u64 = 6;
/// `SPECIALPAGE_CONSOLE`.
pub const SPECIALPAGE_CONSOLE: u64 = 7;
/// Local APIC base (`LAPIC_BASE_ADDRESS` of hvmloader's `config.h`).
const LAPIC_BASE_ADDRESS: u64 = 0xfee0_0000;
/// Where libxl puts the ACPI tables (`ACPI_INFO_PHYSICAL_ADDRESS`).
const ACPI_INFO_PHYSICAL_ADDRESS: u64 = 0xfc00_0000;
/// Module slots of the start info area (`HVMLOADER_MODULE_MAX_COUNT`).
const MODULE_MAX_COUNT: u64 = 2;
/// Bytes for each module's command line (`HVMLOADER_MODULE_CMDLINE_SIZE`).
const MODULE_CMDLINE_SIZE: u64 = MAX_GUEST_CMDLINE as u64;
const START_INFO_SIZE: u64 = core::mem::size_of::<HvmStartInfo>() as u64;
const MODLIST_ENTRY_SIZE: u64 = core::mem::size_of::<HvmModlistEntry>() as u64;
const MEMMAP_ENTRY_SIZE: u64 = core::mem::size_of::<HvmMemmapTableEntry>() as u64;
const FOUR_GIB: u64 = 1 << 32;

/// The pfn of special page `index` (`special_pfn` of `xg_dom_x86.c`); these
/// sit in the MMIO hole below 4 GiB, and the caller populates them.
pub const fn special_pfn(index: u64) -> u64 {
    X86_HVM_END_SPECIAL_REGION - X86_HVM_NR_SPECIAL_PAGES + index
}

/// What the domain is built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhConfig {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Kernel command line (at most 1023 bytes, no NUL); empty for none.
    pub cmdline: String,
    /// Size in bytes of the initrd, if any.
    pub ramdisk_len: Option<u64>,
}

impl PvhConfig {
    /// A configuration without initrd.
    pub fn new(memory_mib: u64, vcpus: u32, cmdline: impl Into<String>) -> Self {
        Self {
            memory_mib,
            vcpus,
            cmdline: cmdline.into(),
            ramdisk_len: None,
        }
    }

    /// The same with an initrd of `len` bytes.
    pub fn with_ramdisk(self, len: u64) -> Self {
        Self {
            ramdisk_len: Some(len),
            ..self
        }
    }
}

/// Why a PVH layout cannot be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PvhLayoutError {
    /// The kernel cannot boot as PVH.
    #[error(transparent)]
    Kernel(#[from] ElfError),
    /// No memory, or an impossible amount.
    #[error("{0} MiB is not a usable memory size for a PVH domain")]
    BadMemorySize(u64),
    /// No vCPU.
    #[error("a domain needs at least one vCPU")]
    NoVcpus,
    /// The command line is too long or holds a NUL.
    #[error("the kernel command line must be shorter than 1024 bytes and hold no NUL")]
    BadCmdLine,
    /// The kernel's start is not page aligned.
    #[error("the kernel starts at {0:#x}, which is not page aligned")]
    MisalignedKernel(u64),
    /// What must be placed does not fit below the MMIO hole.
    #[error("the {what} ends at {end:#x}, past the {low_end:#x} bytes of RAM below 4 GiB; give the domain more memory")]
    OutOfMemory {
        /// What was being placed.
        what: &'static str,
        /// Where it would end.
        end: u64,
        /// End of the low RAM.
        low_end: u64,
    },
}

/// The layout of a PVH domain's boot memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhLayout {
    /// What the kernel's notes say (physical addresses).
    pub kernel_params: KernelParams,
    /// Pages of RAM.
    pub total_pages: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Kernel command line.
    pub cmdline: String,
    /// End of the RAM below the MMIO hole, in bytes.
    pub lowmem_end: u64,
    /// End of the RAM above 4 GiB, in bytes; 0 if there is none.
    pub highmem_end: u64,
    /// Start of the MMIO hole below 4 GiB.
    pub mmio_start: u64,
    /// The kernel; `vaddr` is its physical address.
    pub kernel: Segment,
    /// The initrd; `vaddr` is its physical address.
    pub ramdisk: Option<Segment>,
    /// The start info area.
    pub start_info: Segment,
    /// Bytes the command line takes in the start info area (its length
    /// with the NUL, rounded up to 8); 0 without command line.
    pub cmdline_size: u64,
    /// The memory map, which the caller also gives Xen
    /// (`XENMEM_set_memory_map`).
    pub e820: Vec<HvmMemmapTableEntry>,
    /// The 32-bit entry point.
    pub entry: u32,
}

impl PvhLayout {
    /// Lays out the boot memory of `kernel` booted as PVH with `config`.
    pub fn new(kernel: &ElfKernel<'_>, config: &PvhConfig) -> Result<Self, PvhLayoutError> {
        let params = kernel.pvh_params()?;
        if config.vcpus == 0 {
            return Err(PvhLayoutError::NoVcpus);
        }
        if config.cmdline.len() >= MAX_GUEST_CMDLINE || config.cmdline.contains('\0') {
            return Err(PvhLayoutError::BadCmdLine);
        }
        let mem = config
            .memory_mib
            .checked_mul(1 << 20)
            .filter(|&bytes| bytes > 0 && bytes < 1 << 52)
            .ok_or(PvhLayoutError::BadMemorySize(config.memory_mib))?;
        let total_pages = mem >> PAGE_SHIFT;

        // libxl without device model: the hole below 4 GiB starts low enough
        // for the special pages, the local APIC and the ACPI tables.
        let mmio_start = (special_pfn(0) << PAGE_SHIFT)
            .min(LAPIC_BASE_ADDRESS)
            .min(ACPI_INFO_PHYSICAL_ADDRESS);
        let (lowmem_end, highmem_end) = if mem > mmio_start {
            (mmio_start, FOUR_GIB + (mem - mmio_start))
        } else {
            (mem, 0)
        };
        let mut e820 = vec![HvmMemmapTableEntry {
            addr: 0,
            size: lowmem_end,
            type_: XEN_HVM_MEMMAP_TYPE_RAM,
            reserved: 0,
        }];
        e820.push(HvmMemmapTableEntry {
            addr: special_pfn(0) << PAGE_SHIFT,
            size: X86_HVM_NR_SPECIAL_PAGES << PAGE_SHIFT,
            type_: XEN_HVM_MEMMAP_TYPE_RESERVED,
            reserved: 0,
        });
        if highmem_end != 0 {
            e820.push(HvmMemmapTableEntry {
                addr: FOUR_GIB,
                size: highmem_end - FOUR_GIB,
                type_: XEN_HVM_MEMMAP_TYPE_RAM,
                reserved: 0,
            });
        }

        let cmdline_size = if config.cmdline.is_empty() {
            0
        } else {
            (config.cmdline.len() as u64 + 1).next_multiple_of(8)
        };
        let start_info_len = START_INFO_SIZE
            + MODULE_MAX_COUNT * (MODLIST_ENTRY_SIZE + MODULE_CMDLINE_SIZE)
            + e820.len() as u64 * MEMMAP_ENTRY_SIZE
            + cmdline_size;

        if params.kstart % PAGE_SIZE != 0 {
            return Err(PvhLayoutError::MisalignedKernel(params.kstart));
        }
        let mut end = params.kstart;
        let mut place = |what: &'static str, len: u64| -> Result<Segment, PvhLayoutError> {
            let start = end;
            let pages = len.div_ceil(PAGE_SIZE);
            end = start
                .checked_add(pages * PAGE_SIZE)
                .filter(|&e| e <= lowmem_end)
                .ok_or(PvhLayoutError::OutOfMemory {
                    what,
                    end: start.saturating_add(pages * PAGE_SIZE),
                    low_end: lowmem_end,
                })?;
            Ok(Segment {
                pfn: start >> PAGE_SHIFT,
                pages,
                len,
                vaddr: Some(start),
            })
        };
        let kernel_seg = place("kernel", params.kend - params.kstart)?;
        let ramdisk_len = config.ramdisk_len.filter(|&len| len > 0);
        // libxenguest loads an initrd the kernel takes by pfn after the
        // special allocations, for PVH as for PV.
        let (ramdisk, start_info) = match ramdisk_len {
            Some(len) if params.unmapped_initrd => {
                let start_info = place("start info", start_info_len)?;
                (Some(place("initrd", len)?), start_info)
            }
            Some(len) => {
                let ramdisk = place("initrd", len)?;
                (Some(ramdisk), place("start info", start_info_len)?)
            }
            None => (None, place("start info", start_info_len)?),
        };
        let entry =
            u32::try_from(params.entry).map_err(|_| ElfError::Phys32EntryTooLarge(params.entry))?;

        Ok(Self {
            kernel_params: params,
            total_pages,
            vcpus: config.vcpus,
            cmdline: config.cmdline.clone(),
            lowmem_end,
            highmem_end,
            mmio_start,
            kernel: kernel_seg,
            ramdisk,
            start_info,
            cmdline_size,
            e820,
            entry,
        })
    }

    /// Physical address of the `hvm_start_info` (`%ebx` at entry).
    pub fn start_info_paddr(&self) -> u64 {
        self.start_info.pfn << PAGE_SHIFT
    }

    /// The start info area's bytes: `hvm_start_info`, command line, module
    /// list, module command lines, memory map.
    pub fn start_info_area(&self, rsdp_paddr: u64) -> Vec<u8> {
        let base = self.start_info_paddr();
        let cmdline_at = START_INFO_SIZE;
        let modlist_at = cmdline_at + self.cmdline_size;
        let memmap_at = modlist_at + MODULE_MAX_COUNT * (MODLIST_ENTRY_SIZE + MODULE_CMDLINE_SIZE);
        let mut area = vec![0u8; (memmap_at + self.e820.len() as u64 * MEMMAP_ENTRY_SIZE) as usize];

        let mut info = HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: HVM_START_INFO_VERSION_1,
            rsdp_paddr,
            memmap_paddr: base + memmap_at,
            memmap_entries: self.e820.len() as u32,
            ..Default::default()
        };
        if !self.cmdline.is_empty() {
            let at = cmdline_at as usize;
            area[at..at + self.cmdline.len()].copy_from_slice(self.cmdline.as_bytes());
            info.cmdline_paddr = base + cmdline_at;
        }
        if let Some(ramdisk) = self.ramdisk {
            let module = HvmModlistEntry {
                paddr: ramdisk.pfn << PAGE_SHIFT,
                size: ramdisk.len,
                cmdline_paddr: 0,
                reserved: 0,
            };
            let at = modlist_at as usize;
            area[at..at + MODLIST_ENTRY_SIZE as usize].copy_from_slice(module.as_bytes());
            info.nr_modules = 1;
            info.modlist_paddr = base + modlist_at;
        }
        for (i, entry) in self.e820.iter().enumerate() {
            let at = (memmap_at + i as u64 * MEMMAP_ENTRY_SIZE) as usize;
            area[at..at + MEMMAP_ENTRY_SIZE as usize].copy_from_slice(entry.as_bytes());
        }
        area[..START_INFO_SIZE as usize].copy_from_slice(info.as_bytes());
        area
    }

    /// Writes the kernel, the initrd and the start info area into `mem`
    /// (addressed by guest frame number) and returns how to start vCPU 0.
    ///
    /// `rsdp_paddr` is the ACPI RSDP's address if the caller built ACPI
    /// tables, else 0.
    pub fn build<M: GuestMemory>(
        &self,
        kernel: &ElfKernel<'_>,
        ramdisk: Option<&[u8]>,
        rsdp_paddr: u64,
        mem: &mut M,
    ) -> Result<PvhBootState, PvhBuildError> {
        if kernel.pvh_params()? != self.kernel_params {
            return Err(PvhBuildError::KernelMismatch);
        }
        let ramdisk = ramdisk.filter(|r| !r.is_empty());
        if ramdisk.map(|r| r.len() as u64) != self.ramdisk.map(|r| r.len) {
            return Err(PvhBuildError::RamdiskMismatch);
        }
        let io = |what: &'static str| {
            move |e: M::Error| PvhBuildError::Memory {
                what,
                source: Box::new(e),
            }
        };
        mem.zero(self.kernel.pfn, self.kernel.pages)
            .map_err(io("kernel"))?;
        let base = self.kernel.pfn;
        kernel
            .load(|offset, bytes| mem.write(base + offset / PAGE_SIZE, offset % PAGE_SIZE, bytes))
            .map_err(io("kernel"))?;
        if let (Some(segment), Some(data)) = (self.ramdisk, ramdisk) {
            mem.zero(segment.pfn, segment.pages).map_err(io("initrd"))?;
            mem.write(segment.pfn, 0, data).map_err(io("initrd"))?;
        }
        mem.zero(self.start_info.pfn, self.start_info.pages)
            .map_err(io("start info"))?;
        mem.write(self.start_info.pfn, 0, &self.start_info_area(rsdp_paddr))
            .map_err(io("start info"))?;

        Ok(PvhBootState {
            entry: self.entry,
            start_info_paddr: self.start_info_paddr(),
            xenstore_pfn: special_pfn(SPECIALPAGE_XENSTORE),
            console_pfn: special_pfn(SPECIALPAGE_CONSOLE),
            ident_pt_pfn: special_pfn(SPECIALPAGE_IDENT_PT),
            special_pfns: special_pfn(0)..special_pfn(X86_HVM_NR_SPECIAL_PAGES),
        })
    }
}

/// Why a PVH build failed.
#[derive(Debug, Error)]
pub enum PvhBuildError {
    /// The kernel cannot boot as PVH.
    #[error(transparent)]
    Kernel(#[from] ElfError),
    /// The kernel is not the one the layout was made for.
    #[error("the kernel differs from the one the layout was made for")]
    KernelMismatch,
    /// The initrd is not the size the layout was made for.
    #[error("the initrd is not the size the layout was made for")]
    RamdiskMismatch,
    /// Writing the guest's memory failed.
    #[error("writing the {what} into the guest's memory failed")]
    Memory {
        /// What was being written.
        what: &'static str,
        /// The memory's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How to start a built PVH domain. vCPU 0 gets, through
/// `XEN_DOMCTL_sethvmcontext` (as libxenguest's `vcpu_hvm`): `rip` =
/// [`Self::entry`], `rbx` = [`Self::start_info_paddr`], `cr0` = PE|ET,
/// flat 4 GiB `cs` (attributes `0xc9b`), `ds`/`es`/`ss` (`0xc93`), a `tr` of
/// limit `0x67` (`0x8b`), DR6/DR7 at their defaults, and MTRRs enabled with
/// write-back as default type on every vCPU.
///
/// The caller also populates the special pages ([`Self::special_pfns`]),
/// clears them, writes [`identity_page_table`] into [`Self::ident_pt_pfn`],
/// and sets the HVM params: `STORE_PFN`, `CONSOLE_PFN`, the event channels,
/// `IDENT_PT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhBootState {
    /// `PHYS32_ENTRY`.
    pub entry: u32,
    /// Physical address of the `hvm_start_info`.
    pub start_info_paddr: u64,
    /// The xenstore ring's gfn (`HVM_PARAM_STORE_PFN`).
    pub xenstore_pfn: u64,
    /// The console ring's gfn (`HVM_PARAM_CONSOLE_PFN`).
    pub console_pfn: u64,
    /// The identity page table's gfn (`HVM_PARAM_IDENT_PT`, as an address).
    pub ident_pt_pfn: u64,
    /// All special pages.
    pub special_pfns: std::ops::Range<u64>,
}

/// The identity-map page table for running with `CR0.PG=0` under Intel
/// EPT: a 32-bit non-PAE page directory of 4 MiB superpages.
pub fn identity_page_table() -> Vec<u8> {
    const FLAGS: u32 = 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80; // P RW U A D PSE
    (0..1024u32)
        .flat_map(|i| ((i << 22) | FLAGS).to_le_bytes())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use zerocopy::FromBytes;

    use super::*;
    use crate::elf::tests::{ElfBuilder, KERNEL_PADDR};
    use crate::elf::XEN_ELFNOTE_MOD_START_PFN;
    use crate::VecGuestMemory;

    fn start_info(mem: &VecGuestMemory, paddr: u64) -> HvmStartInfo {
        let bytes = mem
            .read(paddr >> 12, paddr & 0xfff, START_INFO_SIZE)
            .unwrap();
        HvmStartInfo::read_from_bytes(bytes).unwrap()
    }

    pub(crate) fn check_pvh_build(
        layout: &PvhLayout,
        boot: &PvhBootState,
        mem: &VecGuestMemory,
        ramdisk: Option<&[u8]>,
    ) {
        let info = start_info(mem, boot.start_info_paddr);
        assert!(info.has_valid_magic());
        assert_eq!(info.version, 1);
        assert_eq!(boot.entry as u64, layout.kernel_params.entry);
        // The command line, NUL-terminated.
        if layout.cmdline.is_empty() {
            assert_eq!(info.cmdline_paddr, 0);
        } else {
            let len = layout.cmdline.len() as u64 + 1;
            let cmdline = mem
                .read(info.cmdline_paddr >> 12, info.cmdline_paddr & 0xfff, len)
                .unwrap();
            assert_eq!(&cmdline[..cmdline.len() - 1], layout.cmdline.as_bytes());
            assert_eq!(cmdline[cmdline.len() - 1], 0);
        }
        // The memory map.
        let map = mem
            .read(
                info.memmap_paddr >> 12,
                info.memmap_paddr & 0xfff,
                u64::from(info.memmap_entries) * 24,
            )
            .unwrap();
        let entries = <[HvmMemmapTableEntry]>::ref_from_bytes(map).unwrap();
        assert_eq!(entries, &layout.e820[..]);
        // The module.
        match ramdisk {
            Some(data) => {
                assert_eq!(info.nr_modules, 1);
                let entry = mem
                    .read(info.modlist_paddr >> 12, info.modlist_paddr & 0xfff, 32)
                    .unwrap();
                let module = HvmModlistEntry::read_from_bytes(entry).unwrap();
                assert_eq!(module.size, data.len() as u64);
                assert_eq!(
                    mem.read(module.paddr >> 12, module.paddr & 0xfff, module.size)
                        .unwrap(),
                    data
                );
            }
            None => assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0)),
        }
    }

    #[test]
    fn linux_like_pvh_layout() {
        let file = ElfBuilder::linux_like().build();
        let kernel = ElfKernel::parse(&file).unwrap();
        let ramdisk = vec![0x77u8; 5000];
        let config = PvhConfig::new(256, 2, "console=hvc0").with_ramdisk(5000);

        let layout = PvhLayout::new(&kernel, &config).unwrap();
        let mut mem = VecGuestMemory::new(layout.total_pages);
        let boot = layout.build(&kernel, Some(&ramdisk), 0, &mut mem).unwrap();

        assert_eq!(layout.kernel.pfns(), 0x1000..0x1007);
        // MOD_START_PFN: the start info area first, then the initrd.
        assert_eq!(layout.start_info.pfns(), 0x1007..0x1008);
        assert_eq!(layout.ramdisk.unwrap().pfns(), 0x1008..0x100a);
        assert_eq!(boot.entry as u64, KERNEL_PADDR + 0x80);
        assert_eq!(boot.start_info_paddr, 0x1007 << 12);
        assert_eq!((boot.xenstore_pfn, boot.console_pfn), (0xfeffc, 0xfefff));
        assert_eq!(
            layout.e820,
            vec![
                HvmMemmapTableEntry {
                    addr: 0,
                    size: 256 << 20,
                    type_: 1,
                    reserved: 0
                },
                HvmMemmapTableEntry {
                    addr: 0xfeff8000,
                    size: 0x8000,
                    type_: 2,
                    reserved: 0
                },
            ]
        );
        check_pvh_build(&layout, &boot, &mem, Some(&ramdisk));
        // The kernel at its physical address.
        assert_eq!(mem.read(0x1000, 0, 3).unwrap(), &[1, 2, 3]);
    }

    #[test]
    fn without_mod_start_pfn_the_initrd_comes_first_and_memory_above_the_hole_is_mapped() {
        let file = ElfBuilder::linux_like()
            .without_note(XEN_ELFNOTE_MOD_START_PFN)
            .build();
        let kernel = ElfKernel::parse(&file).unwrap();

        let layout =
            PvhLayout::new(&kernel, &PvhConfig::new(6144, 1, "").with_ramdisk(5000)).unwrap();

        assert_eq!(layout.ramdisk.unwrap().pfns(), 0x1007..0x1009);
        assert_eq!(layout.start_info.pfn, 0x1009);
        assert_eq!(layout.cmdline_size, 0);
        assert_eq!(
            (layout.lowmem_end, layout.mmio_start),
            (0xfc00_0000, 0xfc00_0000)
        );
        assert_eq!(layout.highmem_end, (1 << 32) + (6144 << 20) - 0xfc00_0000);
        assert_eq!(layout.e820.len(), 3);
        assert_eq!(layout.e820[2].addr, 1 << 32);
    }

    #[test]
    fn kernels_without_pvh_entry_or_memory_are_refused() {
        let file = ElfBuilder::linux_like()
            .without_note(crate::elf::XEN_ELFNOTE_PHYS32_ENTRY)
            .build();
        let kernel = ElfKernel::parse(&file).unwrap();
        assert_eq!(
            PvhLayout::new(&kernel, &PvhConfig::new(256, 1, "")),
            Err(PvhLayoutError::Kernel(ElfError::NotPvhCapable))
        );

        let file = ElfBuilder::linux_like().build();
        let kernel = ElfKernel::parse(&file).unwrap();
        assert!(matches!(
            PvhLayout::new(&kernel, &PvhConfig::new(16, 1, "")),
            Err(PvhLayoutError::OutOfMemory { what: "kernel", .. })
        ));
    }

    #[test]
    fn the_identity_page_table_maps_4gib_with_superpages() {
        let table = identity_page_table();

        assert_eq!(table.len(), 4096);
        assert_eq!(&table[..4], &0xe7u32.to_le_bytes());
        assert_eq!(&table[4092..], &(0xffc0_0000u32 | 0xe7).to_le_bytes());
    }
}
