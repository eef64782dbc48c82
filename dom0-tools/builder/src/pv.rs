//! The boot memory of a 64-bit PV domain, laid out and written as
//! libxenguest does for `xen-3.0-x86_64` guests (`xc_dom_build_image` in
//! `xg_dom_core.c`, the x86_64 hooks of `xg_dom_x86.c`, `xc_dom_boot_image`
//! in `xg_dom_boot.c`).
//!
//! From pfn 0 at the kernel's `virt_base`, in this order:
//!
//! 1. padding up to the kernel, then the kernel (`[kstart, kend)`);
//! 2. the initrd, unless the kernel takes it unmapped (`MOD_START_PFN`);
//! 3. the p2m list, unless the kernel wants it mapped apart (`INIT_P2M`);
//! 4. the start info, xenstore and console pages;
//! 5. the boot page tables (L4, L3s, L2s, L1s), enough to map everything
//!    from `virt_base` to a 4 MiB boundary at least 512 KiB past the boot
//!    stack, counted again until the count is stable;
//! 6. the boot stack page, then padding up to that 4 MiB boundary;
//! 7. an unmapped initrd, passed by pfn (`SIF_MOD_START_PFN`);
//! 8. a p2m list mapped apart at `INIT_P2M`, followed by its own page tables.

use std::collections::BTreeMap;
use std::ops::Range;

use hypercall_abi::xen::start_info::{StartInfo, MAX_GUEST_CMDLINE, SIF_MOD_START_PFN};
use thiserror::Error;
use zerocopy::IntoBytes;

use crate::elf::{ElfError, ElfKernel, KernelParams};
use crate::mem::GuestMemory;
use crate::pagetable::{PageTables, PlanError, PTE_ADDR_MASK};
use crate::{PAGE_SHIFT, PAGE_SIZE};

// Not in hypercall-abi yet; values from xen/include/public/arch-x86/xen.h,
// xen-x86_64.h and libxenguest's xg_dom_x86.c.
/// `VGCF_in_kernel`: the vCPU starts in kernel mode.
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_online`: the vCPU is brought up.
pub const VGCF_ONLINE: u64 = 1 << 5;
/// `FLAT_KERNEL_CS64` (`FLAT_RING3_CS64`, GDT entry 262).
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
/// `FLAT_KERNEL_SS64` (`FLAT_RING3_SS64`, GDT entry 261).
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
/// `FLAT_KERNEL_DS64` (`FLAT_RING3_DS64`: the NULL selector).
pub const FLAT_KERNEL_DS64: u16 = 0;
/// `rflags` at entry: interrupts enabled (`X86_EFLAGS_IF`).
pub const INITIAL_RFLAGS: u64 = 1 << 9;
/// `X86_DR6_DEFAULT`.
pub const X86_DR6_DEFAULT: u64 = 0xffff_0ff0;
/// `X86_DR7_DEFAULT`.
pub const X86_DR7_DEFAULT: u64 = 0x0000_0400;
/// `XEN_LEGACY_MAX_VCPUS` on x86: the `vcpu_info` slots in the shared info.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// Size of an x86_64 `struct vcpu_info` in the shared info page.
const VCPU_INFO_SIZE: usize = 64;
/// Offset of `evtchn_upcall_mask` in `struct vcpu_info`.
const EVTCHN_UPCALL_MASK_OFFSET: usize = 1;

/// The guest type of a 64-bit PV domain: its start info magic, and what
/// `XEN_DOMCTL_set_address_size` (64) is for.
pub const GUEST_TYPE_X86_64: &str = "xen-3.0-x86_64";
/// Address size to set with `XEN_DOMCTL_set_address_size`.
pub const ADDRESS_SIZE_X86_64: u32 = 64;

/// Mapped past the boot stack, besides the page tables: 512 KiB of room for
/// the kernel's early allocations.
const BOOT_PADDING_PAGES: u64 = (512 * 1024) / PAGE_SIZE;
/// The initial mapping ends on a 4 MiB boundary.
const INITIAL_MAPPING_ALIGN_MASK: u64 = (4 << 20) - 1;
/// Rounds of page-table counting before giving up (two or three suffice).
const MAX_PAGE_TABLE_ROUNDS: usize = 32;
/// Machine frame numbers a page table entry can hold (bits 12-51).
const MAX_MFN: u64 = PTE_ADDR_MASK >> PAGE_SHIFT;

/// What the domain is built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvConfig {
    /// Memory in MiB: the domain gets `memory_mib * 256` pages.
    pub memory_mib: u64,
    /// vCPUs (only vCPU 0 is started by the builder; the guest brings up
    /// the others).
    pub vcpus: u32,
    /// Kernel command line; at most 1023 bytes, no NUL.
    pub cmdline: String,
    /// Size in bytes of the initrd, if any.
    pub ramdisk_len: Option<u64>,
    /// `SIF_*` flags for the start info besides `SIF_MOD_START_PFN`, which
    /// the builder sets itself. libxl passes 0 for a domU.
    pub flags: u32,
}

impl PvConfig {
    /// A configuration without initrd.
    pub fn new(memory_mib: u64, vcpus: u32, cmdline: impl Into<String>) -> Self {
        Self {
            memory_mib,
            vcpus,
            cmdline: cmdline.into(),
            ramdisk_len: None,
            flags: 0,
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

/// Pages the builder allocated for one purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// First pfn.
    pub pfn: u64,
    /// Number of pages.
    pub pages: u64,
    /// Bytes of content (at most `pages * PAGE_SIZE`).
    pub len: u64,
    /// Virtual address of the first byte in the guest, if mapped.
    pub vaddr: Option<u64>,
}

impl Segment {
    /// The pfns.
    pub fn pfns(&self) -> Range<u64> {
        self.pfn..self.pfn + self.pages
    }
}

/// Why a layout cannot be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The kernel cannot boot as a PV domU.
    #[error(transparent)]
    Kernel(#[from] ElfError),
    /// No memory, or more than fits the address arithmetic.
    #[error("{0} MiB is not a usable memory size for a PV domain")]
    BadMemorySize(u64),
    /// No vCPU.
    #[error("a domain needs at least one vCPU")]
    NoVcpus,
    /// The command line does not fit the start info page.
    #[error("the kernel command line is {0} bytes but a PV guest takes at most 1023; shorten it")]
    CmdLineTooLong(usize),
    /// The command line contains a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdLineHasNul,
    /// A segment does not fit the domain's memory.
    #[error("the {what} needs {pages} pages but only {free} of the domain's {total} are left; give the domain more memory")]
    OutOfMemory {
        /// What was being placed.
        what: &'static str,
        /// Pages it needs.
        pages: u64,
        /// Pages left.
        free: u64,
        /// Pages of the domain.
        total: u64,
    },
    /// A segment must start at a virtual address that is not page aligned
    /// or lies below what is already placed.
    #[error("the {what} must start at {vaddr:#x}, which is not page aligned or lies below {alloc_end:#x}, the end of what is already placed")]
    BadSegmentStart {
        /// What was being placed.
        what: &'static str,
        /// Where it must start.
        vaddr: u64,
        /// Where the free virtual space starts.
        alloc_end: u64,
    },
    /// The initial mapping reaches past the domain's memory.
    #[error("the initial mapping of the {what} reaches pfn {last_pfn:#x}, past the domain's {total} pages; give the domain more memory")]
    MappingPastMemory {
        /// Which mapping.
        what: &'static str,
        /// Last pfn it maps.
        last_pfn: u64,
        /// Pages of the domain.
        total: u64,
    },
    /// The boot area runs past the top of the virtual address space.
    #[error("the kernel's boot area does not fit below the top of the virtual address space")]
    VirtualSpaceExhausted,
    /// The p2m list's mapping collides with the initial mapping.
    #[error("the p2m list mapping at {0:#x} collides with the initial mapping")]
    MappingOverlap(u64),
    /// The page-table count did not settle.
    #[error("the boot page table count did not settle")]
    PageTablesUnstable,
}

/// The layout of a PV domain's boot memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvLayout {
    /// What the kernel's notes say.
    pub kernel_params: KernelParams,
    /// Pages of the domain (`nr_pages`, and the p2m list's length).
    pub total_pages: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Kernel command line.
    pub cmdline: String,
    /// The kernel image (pfn of `kstart`).
    pub kernel: Segment,
    /// The initrd, if any; `vaddr` is `None` when it is passed by pfn.
    pub ramdisk: Option<Segment>,
    /// The p2m list, and with `p2m_separate` its page tables after it.
    pub p2m: Segment,
    /// Whether the p2m list is mapped apart, at the kernel's `INIT_P2M`.
    pub p2m_separate: bool,
    /// The start info page.
    pub start_info_pfn: u64,
    /// The xenstore ring page.
    pub xenstore_pfn: u64,
    /// The console ring page.
    pub console_pfn: u64,
    /// The initial page tables (L4 first); `nr_pt_frames` of the start info.
    pub page_tables: Segment,
    /// The boot stack page.
    pub bootstack_pfn: u64,
    /// First virtual address past the initial mapping.
    pub virt_pgtab_end: u64,
    /// First pfn past everything the builder placed.
    pub alloc_end_pfn: u64,
    /// The hypercall page, if the kernel has one.
    pub hypercall_page_pfn: Option<u64>,
    /// `flags` of the start info.
    pub sif_flags: u32,
    tables: PageTables,
}

/// The placement cursor of `xc_dom_alloc_segment` and friends: pfns and
/// virtual addresses advance together from pfn 0 at `virt_base`.
struct Allocator {
    total: u64,
    pfn_end: u64,
    virt_end: u64,
}

impl Allocator {
    fn take(&mut self, what: &'static str, pages: u64) -> Result<u64, LayoutError> {
        let free = self.total - self.pfn_end;
        if pages > free {
            return Err(LayoutError::OutOfMemory {
                what,
                pages,
                free,
                total: self.total,
            });
        }
        let pfn = self.pfn_end;
        self.pfn_end += pages;
        // Past the initial mapping the virtual cursor means nothing (an
        // unmapped initrd may be larger than what is left above virt_base).
        self.virt_end = self.virt_end.wrapping_add(pages * PAGE_SIZE);
        Ok(pfn)
    }

    fn pad_to(&mut self, what: &'static str, vaddr: u64) -> Result<(), LayoutError> {
        if vaddr % PAGE_SIZE != 0 || vaddr < self.virt_end {
            return Err(LayoutError::BadSegmentStart {
                what,
                vaddr,
                alloc_end: self.virt_end,
            });
        }
        self.take("padding", (vaddr - self.virt_end) / PAGE_SIZE)?;
        Ok(())
    }

    fn segment(
        &mut self,
        what: &'static str,
        len: u64,
        mapped: bool,
    ) -> Result<Segment, LayoutError> {
        let vaddr = self.virt_end;
        let pages = len.div_ceil(PAGE_SIZE);
        let pfn = self.take(what, pages)?;
        Ok(Segment {
            pfn,
            pages,
            len,
            vaddr: mapped.then_some(vaddr),
        })
    }
}

fn plan_error(what: &'static str, total: u64, vaddr: u64) -> impl Fn(PlanError) -> LayoutError {
    move |e| match e {
        PlanError::NotEnoughMemory { last_pfn } => LayoutError::MappingPastMemory {
            what,
            last_pfn,
            total,
        },
        PlanError::Overlap | PlanError::TooMany => LayoutError::MappingOverlap(vaddr),
    }
}

impl PvLayout {
    /// Lays out the boot memory of `kernel` booted with `config`.
    pub fn new(kernel: &ElfKernel<'_>, config: &PvConfig) -> Result<Self, LayoutError> {
        let params = kernel.pv_params()?;
        if config.vcpus == 0 {
            return Err(LayoutError::NoVcpus);
        }
        if config.cmdline.len() >= MAX_GUEST_CMDLINE {
            return Err(LayoutError::CmdLineTooLong(config.cmdline.len()));
        }
        if config.cmdline.contains('\0') {
            return Err(LayoutError::CmdLineHasNul);
        }
        let total = config
            .memory_mib
            .checked_mul((1 << 20) / PAGE_SIZE)
            .filter(|&pages| pages > 0 && pages < 1 << 40)
            .ok_or(LayoutError::BadMemorySize(config.memory_mib))?;
        let ramdisk_len = config.ramdisk_len.filter(|&len| len > 0);
        let mut sif_flags = config.flags & !SIF_MOD_START_PFN;

        let mut alloc = Allocator {
            total,
            pfn_end: 0,
            virt_end: params.virt_base,
        };
        alloc.pad_to("kernel", params.kstart)?;
        let kernel_seg = alloc.segment("kernel", params.kend - params.kstart, true)?;

        let mut ramdisk = match ramdisk_len {
            Some(len) if !params.unmapped_initrd => Some(alloc.segment("initrd", len, true)?),
            _ => None,
        };

        let p2m_len = (total * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut p2m = match params.p2m_base {
            None => Some(alloc.segment("p2m list", p2m_len, true)?),
            Some(_) => None,
        };

        let start_info_pfn = alloc.take("start info page", 1)?;
        let xenstore_pfn = alloc.take("xenstore page", 1)?;
        let console_pfn = alloc.take("console page", 1)?;

        // The boot stack and 512 KiB of padding follow the page tables; map
        // up to a 4 MiB boundary past all of it, counting the tables that
        // takes until the count no longer grows.
        let mut tables = PageTables::default();
        let extra = 1 + BOOT_PADDING_PAGES;
        let mut pages = extra;
        let mut rounds = 0;
        let (initial, map_end) = loop {
            rounds += 1;
            if rounds > MAX_PAGE_TABLE_ROUNDS {
                return Err(LayoutError::PageTablesUnstable);
            }
            let wanted_end = alloc
                .virt_end
                .checked_add(pages * PAGE_SIZE)
                .ok_or(LayoutError::VirtualSpaceExhausted)?;
            let map_end = wanted_end | INITIAL_MAPPING_ALIGN_MASK;
            let map = tables
                .plan(params.virt_base, map_end, 0, alloc.pfn_end, total)
                .map_err(plan_error("kernel", total, params.virt_base))?;
            pages = map.nr_tables() + extra;
            let needed_end = alloc
                .virt_end
                .checked_add(pages * PAGE_SIZE)
                .ok_or(LayoutError::VirtualSpaceExhausted)?;
            if needed_end <= map_end.saturating_add(1) {
                break (map, map_end);
            }
        };
        let virt_pgtab_end = map_end
            .checked_add(1)
            .ok_or(LayoutError::VirtualSpaceExhausted)?;
        tables.push(initial);
        let page_tables = alloc.segment("page tables", initial.nr_tables() * PAGE_SIZE, true)?;
        let bootstack_pfn = alloc.take("boot stack", 1)?;
        alloc.pad_to("end of the initial mapping", virt_pgtab_end)?;

        if let Some(len) = ramdisk_len.filter(|_| params.unmapped_initrd) {
            ramdisk = Some(alloc.segment("initrd", len, false)?);
            sif_flags |= SIF_MOD_START_PFN;
        }

        let p2m = match (p2m.take(), params.p2m_base) {
            (Some(p2m), _) => p2m,
            (None, Some(base)) => {
                let pfn = alloc.pfn_end;
                let last = base
                    .checked_add(p2m_len - 1)
                    .ok_or(LayoutError::VirtualSpaceExhausted)?;
                let map = tables
                    .plan(base, last, pfn, pfn + p2m_len / PAGE_SIZE, total)
                    .map_err(plan_error("p2m list", total, base))?;
                tables.push(map);
                let mut segment =
                    alloc.segment("p2m list", p2m_len + map.nr_tables() * PAGE_SIZE, false)?;
                segment.vaddr = Some(base);
                segment
            }
            // pv_params() gives a p2m_base whenever no p2m segment was made.
            (None, None) => return Err(LayoutError::VirtualSpaceExhausted),
        };

        let hypercall_page_pfn = params
            .hypercall_page
            .map(|vaddr| (vaddr - params.virt_base) >> PAGE_SHIFT);

        Ok(Self {
            kernel_params: params,
            total_pages: total,
            vcpus: config.vcpus,
            cmdline: config.cmdline.clone(),
            kernel: kernel_seg,
            ramdisk,
            p2m,
            p2m_separate: params.p2m_base.is_some(),
            start_info_pfn,
            xenstore_pfn,
            console_pfn,
            page_tables,
            bootstack_pfn,
            virt_pgtab_end,
            alloc_end_pfn: alloc.pfn_end,
            hypercall_page_pfn,
            sif_flags,
            tables,
        })
    }

    /// Virtual address of a pfn in the initial mapping.
    pub fn vaddr_of(&self, pfn: u64) -> u64 {
        self.kernel_params
            .virt_base
            .wrapping_add(pfn.wrapping_mul(PAGE_SIZE))
    }

    /// All page-table pages, of the initial mapping and of a separate p2m
    /// mapping.
    pub fn page_table_pfns(&self) -> Vec<u64> {
        self.tables
            .mappings()
            .iter()
            .flat_map(|m| m.table_pfns())
            .collect()
    }

    /// The page-table entries the build writes: `(table pfn, index, entry
    /// value)` for each present entry, given the pfn-to-mfn list.
    fn page_table_pages(&self, mfns: &[u64]) -> Result<BTreeMap<u64, Vec<u64>>, BuildError> {
        let mut pages: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        self.tables
            .for_each_entry(|table, slot, pfn, flags| -> Result<(), BuildError> {
                let mfn = mfn_of(mfns, pfn)?;
                let page = pages.entry(table).or_insert_with(|| vec![0; 512]);
                page[slot] = (mfn << PAGE_SHIFT) | flags;
                Ok(())
            })?;
        Ok(pages)
    }

    /// Writes the boot memory into `mem` and returns what the caller passes
    /// to Xen to start the domain.
    ///
    /// `mfns[pfn]` is the machine frame of every pfn (`total_pages` of
    /// them), as `populate_physmap` returned them. `ramdisk` must have the
    /// length the layout was made with.
    pub fn build<M: GuestMemory>(
        &self,
        kernel: &ElfKernel<'_>,
        ramdisk: Option<&[u8]>,
        mfns: &[u64],
        start: &StartInfoParams,
        mem: &mut M,
    ) -> Result<PvBootState, BuildError> {
        if kernel.pv_params()? != self.kernel_params {
            return Err(BuildError::KernelMismatch);
        }
        let ramdisk = ramdisk.filter(|r| !r.is_empty());
        let ramdisk_len = ramdisk.map(|r| r.len() as u64);
        if ramdisk_len != self.ramdisk.map(|r| r.len) {
            return Err(BuildError::RamdiskMismatch {
                expected: self.ramdisk.map(|r| r.len),
                actual: ramdisk_len,
            });
        }
        if mfns.len() as u64 != self.total_pages {
            return Err(BuildError::MfnListLength {
                expected: self.total_pages,
                actual: mfns.len(),
            });
        }
        if let Some((pfn, &mfn)) = mfns.iter().enumerate().find(|(_, &mfn)| mfn > MAX_MFN) {
            return Err(BuildError::MfnTooLarge {
                pfn: pfn as u64,
                mfn,
            });
        }
        let io = |what: &'static str| {
            move |e: M::Error| BuildError::Memory {
                what,
                source: Box::new(e),
            }
        };

        // The kernel: its segments at their offsets from pstart.
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

        mem.zero(self.p2m.pfn, self.p2m.pages)
            .map_err(io("p2m list"))?;
        mem.write(self.p2m.pfn, 0, mfns.as_bytes())
            .map_err(io("p2m list"))?;

        for pfn in [
            self.start_info_pfn,
            self.xenstore_pfn,
            self.console_pfn,
            self.bootstack_pfn,
        ] {
            mem.zero(pfn, 1).map_err(io("special pages"))?;
        }

        mem.zero(self.page_tables.pfn, self.page_tables.pages)
            .map_err(io("page tables"))?;
        for (pfn, entries) in self.page_table_pages(mfns)? {
            mem.write(pfn, 0, entries.as_bytes())
                .map_err(io("page tables"))?;
        }

        let info = self.start_info(mfns, start)?;
        mem.write(self.start_info_pfn, 0, info.as_bytes())
            .map_err(io("start info page"))?;

        let frame = |pfn: u64| -> Result<GuestFrame, BuildError> {
            Ok(GuestFrame {
                pfn,
                mfn: mfn_of(mfns, pfn)?,
            })
        };
        let l4 = frame(self.page_tables.pfn)?;
        let stack_top = self.vaddr_of(self.bootstack_pfn + 1);
        Ok(PvBootState {
            vcpu: PvVcpuContext {
                rip: self.kernel_params.entry,
                rsp: stack_top,
                rsi: self.vaddr_of(self.start_info_pfn),
                rflags: INITIAL_RFLAGS,
                cs: FLAT_KERNEL_CS64,
                ss: FLAT_KERNEL_SS64,
                ds: FLAT_KERNEL_DS64,
                es: FLAT_KERNEL_DS64,
                fs: FLAT_KERNEL_DS64,
                gs: FLAT_KERNEL_DS64,
                kernel_ss: FLAT_KERNEL_SS64,
                kernel_sp: stack_top,
                flags: VGCF_IN_KERNEL | VGCF_ONLINE,
                cr3: l4.mfn << PAGE_SHIFT,
                debugreg6: X86_DR6_DEFAULT,
                debugreg7: X86_DR7_DEFAULT,
            },
            pin_l4_mfn: l4.mfn,
            l4,
            page_table_pfns: self.page_table_pfns(),
            hypercall_page: self.hypercall_page_pfn.map(frame).transpose()?,
            start_info: frame(self.start_info_pfn)?,
            xenstore: frame(self.xenstore_pfn)?,
            console: frame(self.console_pfn)?,
            nr_pages: self.total_pages,
            guest_type: GUEST_TYPE_X86_64,
            address_size: ADDRESS_SIZE_X86_64,
        })
    }

    /// The start info page's content (`start_info_x86_64`).
    pub fn start_info(
        &self,
        mfns: &[u64],
        start: &StartInfoParams,
    ) -> Result<StartInfo, BuildError> {
        let mut info = StartInfo::new_x86_64();
        info.nr_pages = self.total_pages;
        info.shared_info = start.shared_info_mfn << PAGE_SHIFT;
        info.flags = self.sif_flags;
        info.store_mfn = mfn_of(mfns, self.xenstore_pfn)?;
        info.store_evtchn = start.store_evtchn;
        info.set_console_domu(mfn_of(mfns, self.console_pfn)?, start.console_evtchn);
        info.pt_base = self.page_tables.vaddr.unwrap_or_default();
        info.nr_pt_frames = self.page_tables.pages;
        info.mfn_list = self.p2m.vaddr.unwrap_or_default();
        if self.p2m_separate {
            info.first_p2m_pfn = self.p2m.pfn;
            info.nr_p2m_frames = self.p2m.pages;
        }
        if let Some(ramdisk) = self.ramdisk {
            match ramdisk.vaddr {
                Some(vaddr) => {
                    info.mod_start = vaddr;
                    info.mod_len = ramdisk.len;
                }
                // Passed by pfn: libxenguest gives whole pages' length.
                None => {
                    info.mod_start = ramdisk.pfn;
                    info.mod_len = ramdisk.pages * PAGE_SIZE;
                }
            }
        }
        info.set_cmd_line(self.cmdline.as_bytes())
            .map_err(|e| BuildError::CmdLineTooLong(e.len))?;
        Ok(info)
    }
}

fn mfn_of(mfns: &[u64], pfn: u64) -> Result<u64, BuildError> {
    usize::try_from(pfn)
        .ok()
        .and_then(|i| mfns.get(i).copied())
        .ok_or(BuildError::MfnListLength {
            expected: pfn + 1,
            actual: mfns.len(),
        })
}

/// What the start info needs from the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfoParams {
    /// Machine frame of the shared info page (`shared_info_frame` of
    /// `XEN_DOMCTL_getdomaininfo`).
    pub shared_info_mfn: u64,
    /// Event channel of the xenstore ring (unbound, for the xenstore domain).
    pub store_evtchn: u32,
    /// Event channel of the console ring (unbound, for the console backend).
    pub console_evtchn: u32,
}

/// Why a build failed.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The kernel cannot boot as a PV domU.
    #[error(transparent)]
    Kernel(#[from] ElfError),
    /// The kernel is not the one the layout was made for.
    #[error("the kernel differs from the one the layout was made for")]
    KernelMismatch,
    /// The initrd is not the size the layout was made for.
    #[error("the layout was made for an initrd of {expected:?} bytes, not {actual:?}")]
    RamdiskMismatch {
        /// Length the layout holds.
        expected: Option<u64>,
        /// Length given.
        actual: Option<u64>,
    },
    /// The pfn-to-mfn list does not cover the domain.
    #[error("the pfn-to-mfn list has {actual} entries but the domain has {expected} pages")]
    MfnListLength {
        /// Entries needed.
        expected: u64,
        /// Entries given.
        actual: usize,
    },
    /// An mfn does not fit a page-table entry.
    #[error("pfn {pfn:#x} has mfn {mfn:#x}, which no page table entry can hold")]
    MfnTooLarge {
        /// The pfn.
        pfn: u64,
        /// Its mfn.
        mfn: u64,
    },
    /// The command line does not fit the start info page.
    #[error("the kernel command line is {0} bytes but a PV guest takes at most 1023")]
    CmdLineTooLong(usize),
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

/// A guest page and the machine frame behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFrame {
    /// Pseudo-physical frame number.
    pub pfn: u64,
    /// Machine frame number.
    pub mfn: u64,
}

/// vCPU 0's initial state, for `XEN_DOMCTL_setvcpucontext` with a
/// `vcpu_guest_context_x86_64` (as libxenguest's `vcpu_x86_64`); every
/// other field is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvVcpuContext {
    /// `user_regs.rip`: the kernel's entry point.
    pub rip: u64,
    /// `user_regs.rsp`: the top of the boot stack.
    pub rsp: u64,
    /// `user_regs.rsi`: virtual address of the start info page.
    pub rsi: u64,
    /// `user_regs.rflags`: [`INITIAL_RFLAGS`].
    pub rflags: u64,
    /// `user_regs.cs`: [`FLAT_KERNEL_CS64`].
    pub cs: u16,
    /// `user_regs.ss`: [`FLAT_KERNEL_SS64`].
    pub ss: u16,
    /// `user_regs.ds`: [`FLAT_KERNEL_DS64`].
    pub ds: u16,
    /// `user_regs.es`: [`FLAT_KERNEL_DS64`].
    pub es: u16,
    /// `user_regs.fs`: [`FLAT_KERNEL_DS64`].
    pub fs: u16,
    /// `user_regs.gs`: [`FLAT_KERNEL_DS64`].
    pub gs: u16,
    /// `kernel_ss`: [`FLAT_KERNEL_SS64`].
    pub kernel_ss: u16,
    /// `kernel_sp`: the top of the boot stack.
    pub kernel_sp: u64,
    /// `flags`: `VGCF_in_kernel | VGCF_online`.
    pub flags: u64,
    /// `ctrlreg[3]`: the L4's mfn, `xen_pfn_to_cr3` (shifted by 12).
    pub cr3: u64,
    /// `debugreg[6]`.
    pub debugreg6: u64,
    /// `debugreg[7]`.
    pub debugreg7: u64,
}

/// What the caller does with Xen to start a built PV domain, in order:
///
/// 1. (before the build) `XEN_DOMCTL_set_address_size` with
///    [`Self::address_size`], populate the memory;
/// 2. `XEN_DOMCTL_hypercall_init` with [`Self::hypercall_page`]'s mfn;
/// 3. drop every mapping of the page tables ([`Self::page_table_pfns`]),
///    then `MMUEXT_PIN_L4_TABLE` on [`Self::pin_l4_mfn`];
/// 4. fill the shared info page ([`init_shared_info`]);
/// 5. `XEN_DOMCTL_setvcpucontext` for vCPU 0 with [`Self::vcpu`];
/// 6. seed the grant table with the console and xenstore frames, and tell
///    xenstored and the console backend about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvBootState {
    /// vCPU 0's context.
    pub vcpu: PvVcpuContext,
    /// The L4 to pin with `MMUEXT_PIN_L4_TABLE` (also `cr3`).
    pub pin_l4_mfn: u64,
    /// The L4 table.
    pub l4: GuestFrame,
    /// Every page-table page the builder wrote (read-only in the guest).
    pub page_table_pfns: Vec<u64>,
    /// The hypercall page Xen must fill (`XEN_DOMCTL_hypercall_init`).
    pub hypercall_page: Option<GuestFrame>,
    /// The start info page.
    pub start_info: GuestFrame,
    /// The xenstore ring page (`store/ring-ref` and grant entry 1).
    pub xenstore: GuestFrame,
    /// The console ring page (`console/ring-ref` and grant entry 0).
    pub console: GuestFrame,
    /// Pages of the domain.
    pub nr_pages: u64,
    /// [`GUEST_TYPE_X86_64`].
    pub guest_type: &'static str,
    /// [`ADDRESS_SIZE_X86_64`].
    pub address_size: u32,
}

/// Fills a PV domain's shared info page as libxenguest's
/// `shared_info_x86_64` does: all zero, with event delivery masked in
/// every legacy `vcpu_info` slot.
pub fn init_shared_info(page: &mut [u8; PAGE_SIZE as usize]) {
    page.fill(0);
    for vcpu in 0..XEN_LEGACY_MAX_VCPUS {
        page[vcpu * VCPU_INFO_SIZE + EVTCHN_UPCALL_MASK_OFFSET] = 1;
    }
}

#[cfg(test)]
pub(crate) mod tests;
