//! Building a PVH domain on Xen from an `xl.cfg`: what `libxl__build_hvm`
//! and libxenguest's `xc_dom_*` do for an HVM container without device
//! model (Xen 4.17's `libxl_dom.c`, `libxl_x86.c`, `libxl_x86_acpi.c`,
//! `xg_dom_x86.c` and `xg_dom_boot.c`), with the project's domain builder
//! ([`rxen_builder::pvh`]) for the boot memory.
//!
//! In order ([`create_pvh`]): create the domain (HVM with hardware-assisted
//! paging, only the local APIC emulated), set its vCPU and memory limits,
//! allocate the store and console event channels, set the timer mode and
//! altp2m parameters, size the paging pool, populate the RAM (1 GiB and
//! 2 MiB extents where they fit), give Xen the memory map, populate and
//! clear the special pages and point the HVM parameters at them, write the
//! kernel, initrd and start info, write the ACPI tables where libxl puts
//! them, give the guest its event channels, set vCPU 0's registers through
//! its HVM save records (32-bit protected mode at the kernel's PVH entry,
//! `%ebx` at the start info), seed the grant table's console and xenstore
//! entries, write the store directories and introduce the domain to
//! xenstored. The domain is left paused; any failure destroys it.
//!
//! A PVH guest is translated: its frame numbers are guest frames (gfns),
//! which is what privcmd maps and what `store/ring-ref` holds.

use std::ops::Range;
use std::time::Instant;

use hypercall_abi::platform::{Transaction, Xenstore, XsError};
use hypercall_abi::xen::domctl::XenDomctlCreatedomain;
use hypercall_abi::xen::grant_table::{
    GrantEntryV1, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE, GTF_PERMIT_ACCESS,
};
use hypercall_abi::xen::hvm::{
    HvmHwCpu, HvmHwMtrr, HvmSaveDescriptor, HvmSaveHeader, HVMPTM_NO_DELAY_FOR_MISSED_TICKS,
    HVM_FILE_MAGIC, HVM_PARAM_ALTP2M, HVM_PARAM_BUFIOREQ_PFN, HVM_PARAM_CONSOLE_EVTCHN,
    HVM_PARAM_CONSOLE_PFN, HVM_PARAM_IDENT_PT, HVM_PARAM_IOREQ_PFN, HVM_PARAM_MONITOR_RING_PFN,
    HVM_PARAM_PAGING_RING_PFN, HVM_PARAM_SHARING_RING_PFN, HVM_PARAM_STORE_EVTCHN,
    HVM_PARAM_STORE_PFN, HVM_PARAM_TIMER_MODE, HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_END,
    HVM_SAVE_CODE_HEADER, HVM_SAVE_CODE_MTRR, HVM_SAVE_LENGTH_END, HVM_SAVE_LENGTH_HEADER,
    HVM_SAVE_LENGTH_MTRR, XEN_ALTP2M_DISABLED,
};
use hypercall_abi::xen::hvm_start_info::{HvmMemmapTableEntry, XEN_HVM_MEMMAP_TYPE_ACPI};
use hypercall_abi::xen::memory::{
    E820Entry, XENMEM_RESOURCE_GRANT_TABLE, XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED,
};
use hypercall_abi::xen::PAGE_SIZE;
use rxen_builder::elf::ElfKernel;
use rxen_builder::mem::GuestMemory;
use rxen_builder::pvh::{
    identity_page_table, special_pfn, PvhConfig, PvhLayout, PvhLayoutError, SPECIALPAGE_ACCESS,
    SPECIALPAGE_BUFIOREQ, SPECIALPAGE_CONSOLE, SPECIALPAGE_IDENT_PT, SPECIALPAGE_IOREQ,
    SPECIALPAGE_PAGING, SPECIALPAGE_SHARING, SPECIALPAGE_XENSTORE, X86_HVM_NR_SPECIAL_PAGES,
};
use xen_linux::privcmd::{Privcmd, PrivcmdError};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::{
    destroy_partial, kernel_elf, random_uuid, store, write_store, xen, Built, CreateError,
    MAXMEM_SLACK_KIB,
};
use crate::config::{DomainConfig, DomainType};

/// `HVM_MAX_VCPUS`: the MADT gives vCPU `n` the 8-bit xAPIC id `2n`.
pub const HVM_MAX_VCPUS: u32 = 128;

/// `XENFEAT_linux_rsdp_unrestricted` (`xen/features.h`): the Linux kernel
/// takes the RSDP from `hvm_start_info` wherever it is; older ones only
/// find it by the BIOS area scan, below 1 MiB.
const XENFEAT_LINUX_RSDP_UNRESTRICTED: u32 = 15;

/// Extent order of a 1 GiB superpage.
const ORDER_1G: u32 = 18;
/// Extent order of a 2 MiB superpage.
const ORDER_2M: u32 = 9;

const PAGE: u64 = PAGE_SIZE as u64;
const PAGE_SHIFT: u32 = hypercall_abi::xen::PAGE_SHIFT;

/// Builds a PVH domain from `cfg`, paused, with its store directories
/// written and introduced to xenstored (`introduce(domid, store gfn,
/// store port)`); the same contract as [`super::create_pv`]. On failure
/// everything built is torn down again before the error is returned.
pub fn create_pvh<X: Xenstore + ?Sized>(
    privcmd: &Privcmd,
    xs: &X,
    introduce: &dyn Fn(u32, u64, u32) -> Result<(), XsError>,
    cfg: &DomainConfig,
) -> Result<Built, CreateError> {
    check_config(cfg)?;
    let kernel_path = cfg.kernel.clone().ok_or_else(|| {
        CreateError::Config("no kernel given (kernel=\"...\" in the config)".into())
    })?;
    // Files first: a missing kernel leaves nothing behind.
    let t = Instant::now();
    let kernel_elf = kernel_elf(&kernel_path)?;
    let ramdisk = match &cfg.ramdisk {
        Some(path) => Some(std::fs::read(path).map_err(|source| CreateError::File {
            what: "ramdisk",
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    let elf = ElfKernel::parse(&kernel_elf).map_err(|e| CreateError::Kernel {
        path: kernel_path.clone(),
        message: e.to_string(),
    })?;
    let mut pvh = PvhConfig::new(
        cfg.memory_mib,
        cfg.maxvcpus,
        cfg.cmdline.clone().unwrap_or_default(),
    );
    if let Some(r) = &ramdisk {
        pvh = pvh.with_ramdisk(r.len() as u64);
    }
    let mut layout = PvhLayout::new(&elf, &pvh).map_err(|e| match e {
        PvhLayoutError::Kernel(e) => CreateError::Kernel {
            path: kernel_path.clone(),
            message: e.to_string(),
        },
        other => CreateError::Build(other.to_string()),
    })?;
    let acpi = AcpiTables::build(cfg.maxvcpus, cfg.vcpus, rsdp_below_1mib(&elf));
    layout.e820 = e820_with_acpi(&layout.e820, &acpi);
    let start_info_len = layout.start_info_area(acpi.rsdp_paddr).len() as u64;
    if start_info_len > layout.start_info.pages * PAGE {
        return Err(CreateError::Build(format!(
            "the start info area ({start_info_len} bytes with the ACPI memory map entries) \
             does not fit its {} pages",
            layout.start_info.pages
        )));
    }
    log::info!(
        "{}: kernel and ramdisk read and laid out in {:?} (entry {:#x}, RSDP at {:#x})",
        cfg.name,
        t.elapsed(),
        layout.entry,
        acpi.rsdp_paddr
    );

    let uuid = match &cfg.uuid {
        Some(u) => u.0,
        None => random_uuid()?,
    };
    let mut create = XenDomctlCreatedomain::pvh(cfg.maxvcpus);
    create.handle = uuid;
    let domid = privcmd
        .create_domain(None, &create)
        .map_err(xen("creating the PVH domain (HVM container with HAP)"))?;
    log::info!("{}: PVH domain {domid} created", cfg.name);
    let image = BootImage {
        layout: &layout,
        acpi: &acpi,
        elf: &elf,
        ramdisk: ramdisk.as_deref(),
    };
    let built = build(privcmd, xs, introduce, cfg, &image, domid, uuid);
    if let Err(e) = &built {
        log::error!(
            "{}: creating domain {domid} failed ({e}); destroying it",
            cfg.name
        );
        destroy_partial(privcmd, xs, u32::from(domid), &uuid);
    }
    built
}

/// Refuses what this builder cannot make of `cfg`.
fn check_config(cfg: &DomainConfig) -> Result<(), CreateError> {
    if cfg.domain_type != DomainType::Pvh {
        return Err(CreateError::Config(format!(
            "create_pvh builds PVH domains; {} asks for {:?}",
            cfg.name, cfg.domain_type
        )));
    }
    if cfg.maxvcpus > HVM_MAX_VCPUS {
        return Err(CreateError::Config(format!(
            "{}: a PVH domain has at most {HVM_MAX_VCPUS} vCPUs, not {} (maxvcpus)",
            cfg.name, cfg.maxvcpus
        )));
    }
    if cfg.maxmem_mib != cfg.memory_mib {
        return Err(CreateError::Config(format!(
            "{}: maxmem ({} MiB) differs from memory ({} MiB); xl would start this PVH guest in \
             populate-on-demand mode, which rxl does not support: set maxmem = memory",
            cfg.name, cfg.maxmem_mib, cfg.memory_mib
        )));
    }
    Ok(())
}

/// What goes into the guest's memory, laid out before the domain exists.
struct BootImage<'a> {
    layout: &'a PvhLayout,
    acpi: &'a AcpiTables,
    elf: &'a ElfKernel<'a>,
    ramdisk: Option<&'a [u8]>,
}

/// Whether the kernel needs its RSDP below 1 MiB, where the BIOS area scan
/// finds it: a Linux kernel without `XENFEAT_linux_rsdp_unrestricted`
/// (`libxl__dom_load_acpi`).
fn rsdp_below_1mib(elf: &ElfKernel<'_>) -> bool {
    let notes = elf.notes();
    notes.guest_os.as_deref() == Some("linux")
        && !notes.features.supports(XENFEAT_LINUX_RSDP_UNRESTRICTED)
}

/// libxl's default paging pool for an HVM or PVH guest with HAP
/// (`libxl__get_required_paging_memory`): 1 MiB per vCPU plus one page
/// per MiB of memory for the p2m, in bytes.
pub fn paging_mempool_bytes(maxmem_mib: u64, max_vcpus: u32) -> u64 {
    let kib = 4 * (256 * u64::from(max_vcpus) + maxmem_mib);
    kib * 1024
}

/// Runs `f`, logging at info level what it did and how long it took.
fn timed<T>(
    name: &str,
    what: impl FnOnce(&T) -> String,
    f: impl FnOnce() -> Result<T, CreateError>,
) -> Result<T, CreateError> {
    let t = Instant::now();
    let done = f()?;
    log::info!("{name}: {} in {:?}", what(&done), t.elapsed());
    Ok(done)
}

/// Sets HVM parameter `index` to `value`; a failure names `step`.
fn set_param(
    privcmd: &Privcmd,
    domid: u16,
    index: u32,
    step: &'static str,
    value: u64,
) -> Result<(), CreateError> {
    privcmd
        .set_hvm_param(domid, index, value)
        .map_err(xen(step))
}

/// Sets an HVM parameter libxenguest sets without checking the result
/// (`alloc_magic_pages_hvm`): a failure is only logged.
fn set_optional_param(privcmd: &Privcmd, domid: u16, index: u32, param: &str, value: u64) {
    if let Err(e) = privcmd.set_hvm_param(domid, index, value) {
        log::warn!("domain {domid}: setting {param} to {value:#x}: {e}");
    }
}

fn build<X: Xenstore + ?Sized>(
    privcmd: &Privcmd,
    xs: &X,
    introduce: &dyn Fn(u32, u64, u32) -> Result<(), XsError>,
    cfg: &DomainConfig,
    image: &BootImage<'_>,
    domid: u16,
    uuid: [u8; 16],
) -> Result<Built, CreateError> {
    let name = cfg.name.as_str();
    let layout = image.layout;
    let acpi = image.acpi;

    // libxl__build_pre and libxl__arch_domain_create.
    let (store_port, console_port) = timed(
        name,
        |_| "vCPU and memory limits, event channels, timer mode and paging pool set".into(),
        || {
            privcmd
                .set_max_vcpus(domid, cfg.maxvcpus)
                .map_err(xen("setting the vCPU limit"))?;
            privcmd
                .set_max_mem(domid, cfg.maxmem_mib * 1024 + MAXMEM_SLACK_KIB)
                .map_err(xen("setting the memory limit"))?;
            // As libxl (`libxl__arch_domain_create`), also for the default mode.
            privcmd
                .set_tsc_mode(domid, cfg.tsc_mode.xen_mode())
                .map_err(xen("setting the TSC mode"))?;
            let store_port = privcmd
                .evtchn_alloc_unbound(domid, 0)
                .map_err(xen("allocating the store event channel"))?;
            let console_port = privcmd
                .evtchn_alloc_unbound(domid, 0)
                .map_err(xen("allocating the console event channel"))?;
            set_param(
                privcmd,
                domid,
                HVM_PARAM_TIMER_MODE,
                "setting HVM_PARAM_TIMER_MODE",
                HVMPTM_NO_DELAY_FOR_MISSED_TICKS,
            )?;
            set_param(
                privcmd,
                domid,
                HVM_PARAM_ALTP2M,
                "setting HVM_PARAM_ALTP2M",
                XEN_ALTP2M_DISABLED,
            )?;
            privcmd
                .set_paging_mempool_size(domid, paging_mempool_bytes(cfg.maxmem_mib, cfg.maxvcpus))
                .map_err(xen("setting the paging memory pool size"))?;
            Ok((store_port, console_port))
        },
    )?;

    // meminit_hvm and domain_construct_memmap.
    timed(
        name,
        |pages: &u64| format!("{pages} pages of RAM populated and the memory map set"),
        || {
            let mut pages = 0;
            for range in ram_pfn_ranges(layout.lowmem_end, layout.highmem_end) {
                pages += populate_ram(privcmd, domid, range)?;
            }
            let map: Vec<E820Entry> = layout.e820.iter().map(e820_entry).collect();
            privcmd
                .set_memory_map(domid, &map)
                .map_err(xen("setting the memory map"))?;
            Ok(pages)
        },
    )?;

    // alloc_magic_pages_hvm.
    let mut memory = super::ForeignMemory::translated(privcmd, domid);
    timed(
        name,
        |_| "special pages populated and cleared, HVM parameters set".into(),
        || {
            let mut special: Vec<u64> = (0..X86_HVM_NR_SPECIAL_PAGES).map(special_pfn).collect();
            privcmd
                .populate_physmap(domid, 0, 0, &mut special)
                .map_err(xen("populating the special pages"))?;
            memory
                .zero(special_pfn(0), X86_HVM_NR_SPECIAL_PAGES)
                .map_err(xen("clearing the special pages"))?;
            set_param(
                privcmd,
                domid,
                HVM_PARAM_STORE_PFN,
                "setting HVM_PARAM_STORE_PFN",
                special_pfn(SPECIALPAGE_XENSTORE),
            )?;
            set_param(
                privcmd,
                domid,
                HVM_PARAM_CONSOLE_PFN,
                "setting HVM_PARAM_CONSOLE_PFN",
                special_pfn(SPECIALPAGE_CONSOLE),
            )?;
            for (index, param, page) in [
                (
                    HVM_PARAM_BUFIOREQ_PFN,
                    "HVM_PARAM_BUFIOREQ_PFN",
                    SPECIALPAGE_BUFIOREQ,
                ),
                (
                    HVM_PARAM_IOREQ_PFN,
                    "HVM_PARAM_IOREQ_PFN",
                    SPECIALPAGE_IOREQ,
                ),
                (
                    HVM_PARAM_PAGING_RING_PFN,
                    "HVM_PARAM_PAGING_RING_PFN",
                    SPECIALPAGE_PAGING,
                ),
                (
                    HVM_PARAM_MONITOR_RING_PFN,
                    "HVM_PARAM_MONITOR_RING_PFN",
                    SPECIALPAGE_ACCESS,
                ),
                (
                    HVM_PARAM_SHARING_RING_PFN,
                    "HVM_PARAM_SHARING_RING_PFN",
                    SPECIALPAGE_SHARING,
                ),
            ] {
                set_optional_param(privcmd, domid, index, param, special_pfn(page));
            }
            memory
                .write(special_pfn(SPECIALPAGE_IDENT_PT), 0, &identity_page_table())
                .map_err(xen("writing the identity-map page table"))?;
            set_optional_param(
                privcmd,
                domid,
                HVM_PARAM_IDENT_PT,
                "HVM_PARAM_IDENT_PT",
                special_pfn(SPECIALPAGE_IDENT_PT) << PAGE_SHIFT,
            );
            Ok(())
        },
    )?;

    // xc_dom_build_image, xc_dom_load_acpi and bootlate_hvm.
    let boot = timed(
        name,
        |_| "kernel, initrd, start info and ACPI tables written".into(),
        || {
            let boot = layout
                .build(image.elf, image.ramdisk, acpi.rsdp_paddr, &mut memory)
                .map_err(|e| CreateError::Build(with_sources(&e)))?;
            let mut acpi_pages = acpi.pfns_to_populate();
            privcmd
                .populate_physmap(domid, 0, 0, &mut acpi_pages)
                .map_err(xen("populating the ACPI table pages"))?;
            memory
                .write(acpi.tables_pfn(), 0, &acpi.tables)
                .map_err(xen("writing the ACPI tables"))?;
            memory
                .write(
                    acpi.rsdp_paddr >> PAGE_SHIFT,
                    acpi.rsdp_paddr % PAGE,
                    &acpi.rsdp_module(),
                )
                .map_err(xen("writing the ACPI RSDP"))?;
            set_param(
                privcmd,
                domid,
                HVM_PARAM_CONSOLE_EVTCHN,
                "setting HVM_PARAM_CONSOLE_EVTCHN",
                u64::from(console_port),
            )?;
            set_param(
                privcmd,
                domid,
                HVM_PARAM_STORE_EVTCHN,
                "setting HVM_PARAM_STORE_EVTCHN",
                u64::from(store_port),
            )?;
            Ok(boot)
        },
    )?;

    // vcpu_hvm: MTRRs of every vCPU, then vCPU 0's registers last (each
    // load puts the vCPUs down).
    timed(
        name,
        |_| {
            format!(
                "vCPU 0 set to start at {:#x} with the start info at {:#x}",
                boot.entry, boot.start_info_paddr
            )
        },
        || {
            let full = privcmd
                .hvm_context(domid)
                .map_err(xen("reading the domain's HVM context"))?;
            let context_error = |e: HvmContextError| {
                CreateError::Build(format!(
                    "making vCPU records from the domain's HVM context: {e}"
                ))
            };
            for vcpu in 0..cfg.maxvcpus {
                let vcpu = u16::try_from(vcpu)
                    .map_err(|_| CreateError::Config(format!("vCPU number {vcpu} out of range")))?;
                let records = mtrr_context(&full, vcpu).map_err(context_error)?;
                privcmd
                    .set_hvm_context(domid, &records)
                    .map_err(xen("loading a vCPU's MTRRs (XEN_DOMCTL_sethvmcontext)"))?;
            }
            let records = boot_cpu_context(&full, boot.entry, boot.start_info_paddr)
                .map_err(context_error)?;
            privcmd
                .set_hvm_context(domid, &records)
                .map_err(xen("loading vCPU 0's registers (XEN_DOMCTL_sethvmcontext)"))?;
            Ok(())
        },
    )?;

    // xc_dom_gnttab_init: xenstored and the console daemon may map the
    // rings by grant; both fall back to mapping the gfns.
    if let Err(e) = seed_grant_table(privcmd, domid, boot.console_pfn, boot.xenstore_pfn) {
        log::warn!(
            "{name}: cannot seed domain {domid}'s grant table with the console and xenstore \
             entries ({e}); the daemons will map the rings by frame number"
        );
    }

    let built = Built {
        domid: u32::from(domid),
        uuid,
        store: (boot.xenstore_pfn, store_port),
        console: (boot.console_pfn, console_port),
    };
    timed(
        name,
        |_| "store directories written and domain introduced".into(),
        || {
            write_store(xs, cfg, &built)?;
            xs.write(
                Transaction::NONE,
                &format!("/libxl/{}/type", built.domid),
                b"pvh",
            )
            .map_err(store("writing the domain's type (/libxl/DOMID/type)"))?;
            introduce(built.domid, built.store.0, built.store.1)
                .map_err(store("introducing the domain to xenstored"))
        },
    )?;
    Ok(built)
}

/// `e` and its sources, `: `-separated.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Ends: error chains are finite (each source is a distinct object).
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The guest's RAM as pfn ranges: below the MMIO hole, and above 4 GiB
/// when the memory does not fit below it.
fn ram_pfn_ranges(lowmem_end: u64, highmem_end: u64) -> Vec<Range<u64>> {
    let four_gib = (1u64 << 32) >> PAGE_SHIFT;
    [
        0..lowmem_end >> PAGE_SHIFT,
        four_gib..highmem_end >> PAGE_SHIFT,
    ]
    .into_iter()
    .filter(|r| !r.is_empty())
    .collect()
}

/// Consecutive extents of one order, `count` of them from gfn `first`:
/// one `XENMEM_populate_physmap` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ExtentRun {
    /// log2 of the pages per extent.
    order: u32,
    /// The first extent's first gfn.
    first: u64,
    /// Extents.
    count: u64,
}

impl ExtentRun {
    /// The gfn after the run.
    fn end(&self) -> u64 {
        self.first + (self.count << self.order)
    }

    /// Each extent's first gfn.
    fn extents(&self) -> Vec<u64> {
        (0..self.count)
            .map(|i| self.first + (i << self.order))
            .collect()
    }
}

/// How libxenguest's `meminit_hvm` populates pfns `range`: 1 GiB extents
/// where a whole aligned gigabyte fits, else 2 MiB extents where an aligned
/// 2 MiB fits, else single pages; no extent larger than `max_order`.
fn populate_plan(range: Range<u64>, max_order: u32) -> Vec<ExtentRun> {
    let mut runs: Vec<ExtentRun> = Vec::new();
    let mut pfn = range.start;
    // Ends: every round adds an extent of at least one page.
    while pfn < range.end {
        let order = [ORDER_1G, ORDER_2M]
            .into_iter()
            .filter(|&o| o <= max_order)
            .find(|&o| pfn % (1 << o) == 0 && pfn + (1 << o) <= range.end)
            .unwrap_or(0);
        match runs.last_mut() {
            Some(run) if run.order == order && run.end() == pfn => run.count += 1,
            _ => runs.push(ExtentRun {
                order,
                first: pfn,
                count: 1,
            }),
        }
        pfn += 1 << order;
    }
    runs
}

/// The next smaller extent order to try after `order` failed.
fn smaller_order(order: u32) -> Option<u32> {
    match order {
        ORDER_1G => Some(ORDER_2M),
        ORDER_2M => Some(0),
        _ => None,
    }
}

/// Populates pfns `range` with superpages where Xen has them, falling back
/// to smaller extents where it does not (as `meminit_hvm`); returns the
/// pages populated.
fn populate_ram(privcmd: &Privcmd, domid: u16, range: Range<u64>) -> Result<u64, CreateError> {
    let mut max_order = ORDER_1G;
    let mut next = range.start;
    // Ends: each round either finishes the range or lowers `max_order`,
    // which fails for good at order 0.
    'plan: while next < range.end {
        for run in populate_plan(next..range.end, max_order) {
            let mut extents = run.extents();
            match privcmd.populate_physmap(domid, run.order, 0, &mut extents) {
                Ok(()) => next = run.end(),
                Err(e) => {
                    if let PrivcmdError::Incomplete { done, .. } = &e {
                        next = run.first + ((*done as u64) << run.order);
                    }
                    let Some(smaller) = smaller_order(run.order) else {
                        return Err(CreateError::Xen {
                            step: "populating the domain's RAM",
                            source: e,
                        });
                    };
                    log::info!(
                        "domain {domid}: no more order-{} extents from pfn {next:#x} ({e}); \
                         trying order {smaller}",
                        run.order
                    );
                    max_order = smaller;
                    continue 'plan;
                }
            }
        }
    }
    Ok(range.end - range.start)
}

/// The memory map entry as Xen's `XENMEM_set_memory_map` takes it.
fn e820_entry(entry: &HvmMemmapTableEntry) -> E820Entry {
    E820Entry {
        addr: entry.addr,
        size: entry.size,
        kind: entry.type_,
    }
}

/// `e820` with the ACPI entries libxl's `domain_construct_memmap` adds
/// after the special pages and before the memory above 4 GiB.
fn e820_with_acpi(e820: &[HvmMemmapTableEntry], acpi: &AcpiTables) -> Vec<HvmMemmapTableEntry> {
    let high = e820
        .iter()
        .position(|e| e.addr >= 1 << 32)
        .unwrap_or(e820.len());
    let mut map = e820[..high].to_vec();
    map.extend(acpi.e820());
    map.extend_from_slice(&e820[high..]);
    map
}

/// Gives the console and xenstore daemons (in dom0) grant access to the
/// rings through the reserved grant entries (`xc_dom_gnttab_seed`).
fn seed_grant_table(
    privcmd: &Privcmd,
    domid: u16,
    console_gfn: u64,
    xenstore_gfn: u64,
) -> Result<(), PrivcmdError> {
    let map = privcmd.map_resource(
        domid,
        u32::from(XENMEM_RESOURCE_GRANT_TABLE),
        XENMEM_RESOURCE_GRANT_TABLE_ID_SHARED,
        0,
        1,
        true,
    )?;
    let entry = |gfn: u64| -> Result<GrantEntryV1, PrivcmdError> {
        Ok(GrantEntryV1 {
            flags: GTF_PERMIT_ACCESS,
            domid: 0,
            frame: u32::try_from(gfn)
                .map_err(|_| PrivcmdError::Invalid("ring gfn above 32 bits"))?,
        })
    };
    let size = std::mem::size_of::<GrantEntryV1>();
    for (gref, gfn) in [
        (GNTTAB_RESERVED_CONSOLE, console_gfn),
        (GNTTAB_RESERVED_XENSTORE, xenstore_gfn),
    ] {
        map.memory()
            .write_obj(gref as usize * size, &entry(gfn)?)
            .map_err(|e| PrivcmdError::Unexpected(e.to_string()))?;
    }
    Ok(())
}

// ACPI tables (libxl_x86_acpi.c with libacpi's build.c and static_tables.c
// as libxl configures them for PVH: no IOAPIC, HPET, PM timer, buttons,
// VGA, 8042 or CMOS RTC; ACPI revision 5).

/// `ACPI_INFO_PHYSICAL_ADDRESS`: libxl's ACPI info page; the tables follow
/// it.
const ACPI_INFO_PHYSICAL_ADDRESS: u64 = 0xfc00_0000;
/// Where the tables start.
const ACPI_TABLES_ADDRESS: u64 = ACPI_INFO_PHYSICAL_ADDRESS + PAGE;
/// The RSDP of a kernel that only finds it by the BIOS area scan: the last
/// 64 bytes below 1 MiB.
const ACPI_LOW_RSDP_ADDRESS: u64 = 0x10_0000 - 64;
/// Bytes libxl reserves for the RSDP (its ACPI module 0).
const ACPI_RSDP_MODULE_LEN: usize = 64;
/// `LAPIC_BASE_ADDRESS`.
const LAPIC_BASE_ADDRESS: u32 = 0xfee0_0000;
/// Bytes of an ACPI table header.
const ACPI_HEADER_LEN: usize = 36;
/// Bytes of an ACPI 2.0 RSDP.
const ACPI_RSDP_LEN: usize = 36;
/// Bytes of a revision 5 FADT.
const ACPI_FADT_LEN: usize = 268;
/// Bytes of a FACS.
const ACPI_FACS_LEN: usize = 64;
/// Bytes of the MADT before its entries.
const ACPI_MADT_HEADER_LEN: usize = 44;
/// Bytes of a MADT processor local APIC entry.
const ACPI_MADT_LAPIC_LEN: usize = 8;

/// `acpi_config.acpi_revision` for PVH, which is also the FADT's.
const ACPI_REVISION: u8 = 5;
/// FADT `flags`: `ACPI_PROC_C1 | ACPI_WBINVD | ACPI_FIX_RTC |
/// ACPI_TMR_VAL_EXT | ACPI_USE_PLATFORM_CLOCK` with `ACPI_PWR_BUTTON |
/// ACPI_SLP_BUTTON` (no buttons).
const FADT_FLAGS: u32 = (1 << 2) | (1 << 0) | (1 << 6) | (1 << 8) | (1 << 15) | (1 << 4) | (1 << 5);
/// FADT `iapc_boot_arch`: `ACPI_FADT_NO_VGA | ACPI_FADT_NO_CMOS_RTC`.
const FADT_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);
/// `ACPI_PM1A_EVT_BLK_ADDRESS_V1` (`xen/hvm/ioreq.h`).
const PM1A_EVT_BLK: u32 = 0xb000;
/// `ACPI_PM1A_CNT_BLK_ADDRESS_V1`.
const PM1A_CNT_BLK: u32 = 0xb004;
/// `ACPI_GPE0_BLK_ADDRESS_V1`.
const GPE0_BLK: u32 = 0xafe0;
/// `ACPI_SYSTEM_IO`: a generic address's space.
const ACPI_SYSTEM_IO: u8 = 1;

/// The ACPI tables of a PVH guest: RSDP, XSDT and RSDT listing the FADT
/// and MADT, the FADT pointing to the FACS and a DSDT without AML, and a
/// MADT with a local APIC per possible vCPU (enabled for those online at
/// boot; APIC id `2n` as Xen's vLAPIC has it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct AcpiTables {
    /// The tables, at [`ACPI_TABLES_ADDRESS`], padded to whole pages.
    tables: Vec<u8>,
    /// The RSDP.
    rsdp: [u8; ACPI_RSDP_LEN],
    /// Where the RSDP goes: the page after the tables, or below 1 MiB.
    rsdp_paddr: u64,
}

/// Bytes placed one after the other from a base address, each aligned.
struct TableArea {
    base: u64,
    bytes: Vec<u8>,
}

impl TableArea {
    /// Appends `table` aligned to `align` (at least 16 bytes, as libacpi's
    /// allocator) and returns its address.
    fn place(&mut self, table: &[u8], align: usize) -> u64 {
        let at = self.bytes.len().next_multiple_of(align.max(16));
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(table);
        self.base + at as u64
    }
}

/// Sets byte `at` of `bytes` so that they sum to zero (mod 256).
fn set_checksum(bytes: &mut [u8], at: usize) {
    bytes[at] = 0;
    let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    bytes[at] = sum.wrapping_neg();
}

/// A table of `len` bytes starting with libacpi's header (OEM `Xen`,
/// table `HVM`, creator `HVML`), checksum still zero.
fn acpi_table(signature: &[u8; 4], len: usize, revision: u8) -> Vec<u8> {
    let mut t = vec![0u8; len];
    t[0..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    t[8] = revision;
    t[10..13].copy_from_slice(b"Xen");
    t[16..19].copy_from_slice(b"HVM");
    t[28..32].copy_from_slice(b"HVML");
    t
}

/// A generic address structure in the system I/O space.
fn io_address(width_bits: u8, port: u32) -> [u8; 12] {
    let mut gas = [0u8; 12];
    gas[0] = ACPI_SYSTEM_IO;
    gas[1] = width_bits;
    gas[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    gas
}

fn put_u16(t: &mut [u8], at: usize, v: u16) {
    t[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(t: &mut [u8], at: usize, v: u32) {
    t[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(t: &mut [u8], at: usize, v: u64) {
    t[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

impl AcpiTables {
    /// The tables for `max_vcpus` vCPUs of which the first `online` run
    /// at boot; the RSDP below 1 MiB if `rsdp_low`.
    fn build(max_vcpus: u32, online: u32, rsdp_low: bool) -> Self {
        let mut area = TableArea {
            base: ACPI_TABLES_ADDRESS,
            bytes: Vec::new(),
        };
        // The addresses all lie in the 4 KiB..64 KiB above
        // ACPI_TABLES_ADDRESS, below 4 GiB: the u32 fields cannot truncate.
        let mut facs = vec![0u8; ACPI_FACS_LEN];
        facs[0..4].copy_from_slice(b"FACS");
        put_u32(&mut facs, 4, ACPI_FACS_LEN as u32);
        facs[32] = 1; // version
        let facs = area.place(&facs, 64);

        let mut dsdt = acpi_table(b"DSDT", ACPI_HEADER_LEN, 2);
        set_checksum(&mut dsdt, 9);
        let dsdt = area.place(&dsdt, 16);

        let mut fadt = acpi_table(b"FACP", ACPI_FADT_LEN, ACPI_REVISION);
        put_u32(&mut fadt, 36, facs as u32); // firmware_ctrl
        put_u32(&mut fadt, 40, dsdt as u32);
        put_u16(&mut fadt, 46, 9); // sci_int
        put_u32(&mut fadt, 56, PM1A_EVT_BLK);
        put_u32(&mut fadt, 64, PM1A_CNT_BLK);
        put_u32(&mut fadt, 80, GPE0_BLK);
        fadt[88] = 4; // pm1_evt_len
        fadt[89] = 2; // pm1_cnt_len
        fadt[92] = 4; // gpe0_blk_len
        put_u16(&mut fadt, 96, 0x0fff); // p_lvl2_lat: no C2
        put_u16(&mut fadt, 98, 0x0fff); // p_lvl3_lat: no C3
        put_u16(&mut fadt, 109, FADT_BOOT_ARCH);
        put_u32(&mut fadt, 112, FADT_FLAGS);
        fadt[116..128].copy_from_slice(&io_address(8, 0xcf9)); // reset_reg
        fadt[128] = 6; // reset_value
        put_u64(&mut fadt, 132, facs); // x_firmware_ctrl
        put_u64(&mut fadt, 140, dsdt); // x_dsdt
        fadt[148..160].copy_from_slice(&io_address(32, PM1A_EVT_BLK));
        fadt[172..184].copy_from_slice(&io_address(16, PM1A_CNT_BLK));
        set_checksum(&mut fadt, 9);
        let fadt = area.place(&fadt, 16);

        let cpus = max_vcpus as usize;
        let mut madt = acpi_table(
            b"APIC",
            ACPI_MADT_HEADER_LEN + cpus * ACPI_MADT_LAPIC_LEN,
            2,
        );
        put_u32(&mut madt, 36, LAPIC_BASE_ADDRESS);
        put_u32(&mut madt, 40, 1); // ACPI_PCAT_COMPAT
        for cpu in 0..cpus {
            let at = ACPI_MADT_HEADER_LEN + cpu * ACPI_MADT_LAPIC_LEN;
            madt[at] = 0; // ACPI_PROCESSOR_LOCAL_APIC
            madt[at + 1] = ACPI_MADT_LAPIC_LEN as u8;
            madt[at + 2] = cpu as u8; // processor id (< HVM_MAX_VCPUS)
            madt[at + 3] = (2 * cpu) as u8; // APIC id
            put_u32(&mut madt, at + 4, u32::from((cpu as u32) < online)); // enabled
        }
        set_checksum(&mut madt, 9);
        let madt = area.place(&madt, 16);

        let mut xsdt = acpi_table(b"XSDT", ACPI_HEADER_LEN + 2 * 8, 1);
        put_u64(&mut xsdt, 36, fadt);
        put_u64(&mut xsdt, 44, madt);
        set_checksum(&mut xsdt, 9);
        let xsdt = area.place(&xsdt, 16);

        let mut rsdt = acpi_table(b"RSDT", ACPI_HEADER_LEN + 2 * 4, 1);
        put_u32(&mut rsdt, 36, fadt as u32);
        put_u32(&mut rsdt, 40, madt as u32);
        set_checksum(&mut rsdt, 9);
        let rsdt = area.place(&rsdt, 16);

        let mut tables = area.bytes;
        tables.resize(tables.len().next_multiple_of(PAGE_SIZE), 0);
        let rsdp_paddr = if rsdp_low {
            ACPI_LOW_RSDP_ADDRESS
        } else {
            ACPI_TABLES_ADDRESS + tables.len() as u64
        };

        let mut rsdp = [0u8; ACPI_RSDP_LEN];
        rsdp[0..8].copy_from_slice(b"RSD PTR ");
        rsdp[9..12].copy_from_slice(b"Xen");
        rsdp[15] = 2; // revision
        put_u32(&mut rsdp, 16, rsdt as u32);
        put_u32(&mut rsdp, 20, ACPI_RSDP_LEN as u32);
        put_u64(&mut rsdp, 24, xsdt);
        set_checksum(&mut rsdp[..20], 8);
        set_checksum(&mut rsdp, 32);
        Self {
            tables,
            rsdp,
            rsdp_paddr,
        }
    }

    /// The first page of the tables.
    fn tables_pfn(&self) -> u64 {
        ACPI_TABLES_ADDRESS >> PAGE_SHIFT
    }

    /// The RSDP as libxl's ACPI module 0: the table and zeroes, 64 bytes.
    fn rsdp_module(&self) -> [u8; ACPI_RSDP_MODULE_LEN] {
        let mut module = [0u8; ACPI_RSDP_MODULE_LEN];
        module[..ACPI_RSDP_LEN].copy_from_slice(&self.rsdp);
        module
    }

    /// The pages to populate: the tables' and, above the RAM, the RSDP's
    /// (below 1 MiB it is in RAM already).
    fn pfns_to_populate(&self) -> Vec<u64> {
        let first = self.tables_pfn();
        let mut pfns: Vec<u64> = (first..first + (self.tables.len() / PAGE_SIZE) as u64).collect();
        if self.rsdp_paddr != ACPI_LOW_RSDP_ADDRESS {
            pfns.push(self.rsdp_paddr >> PAGE_SHIFT);
        }
        pfns
    }

    /// The memory map entries libxl gives its ACPI modules 0 (the RSDP)
    /// and 2 (the tables); module 1, the info page only libxl's DSDT
    /// reads, is not built.
    fn e820(&self) -> [HvmMemmapTableEntry; 2] {
        let rsdp_page = self.rsdp_paddr & !(PAGE - 1);
        [
            HvmMemmapTableEntry {
                addr: rsdp_page,
                size: ACPI_RSDP_MODULE_LEN as u64 + (self.rsdp_paddr - rsdp_page),
                type_: XEN_HVM_MEMMAP_TYPE_ACPI,
                reserved: 0,
            },
            HvmMemmapTableEntry {
                addr: ACPI_TABLES_ADDRESS,
                size: self.tables.len() as u64,
                type_: XEN_HVM_MEMMAP_TYPE_ACPI,
                reserved: 0,
            },
        ]
    }
}

// vCPU state through HVM save records (vcpu_hvm of xg_dom_x86.c).

/// `X86_CR0_PE | X86_CR0_ET`: protected mode, paging off.
const BOOT_CR0: u64 = 0x01 | 0x10;
/// `X86_DR6_DEFAULT`.
const X86_DR6_DEFAULT: u64 = 0xffff_0ff0;
/// `X86_DR7_DEFAULT`.
const X86_DR7_DEFAULT: u64 = 0x0000_0400;
/// `MTRR_TYPE_WRBACK`.
const MTRR_TYPE_WRBACK: u64 = 6;
/// `MTRR_DEF_TYPE_ENABLE`.
const MTRR_DEF_TYPE_ENABLE: u64 = 1 << 11;
/// Bytes of a save record descriptor.
const DESCRIPTOR_LEN: usize = std::mem::size_of::<HvmSaveDescriptor>();

/// Why save records could not be made from a domain's HVM context.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum HvmContextError {
    /// A record runs past the end of the context.
    #[error("the record at byte {offset} runs past the end of the {len}-byte context")]
    Truncated {
        /// Where its descriptor starts.
        offset: usize,
        /// The context's length.
        len: usize,
    },
    /// The context does not start with a save header of Xen 4.17's form.
    #[error("the context does not start with an HVM save header (magic {HVM_FILE_MAGIC:#x})")]
    NoHeader,
    /// A record the builder needs is missing.
    #[error("the context has no record of type {typecode} for instance {instance}")]
    Missing {
        /// `HVM_SAVE_CODE_*`.
        typecode: u16,
        /// The instance (vCPU).
        instance: u16,
    },
    /// A record has another length than its type has.
    #[error("the record of type {typecode} is {length} bytes, not {expected}")]
    BadLength {
        /// `HVM_SAVE_CODE_*`.
        typecode: u16,
        /// Its length.
        length: u32,
        /// The length of the type.
        expected: u32,
    },
}

/// One record of an HVM context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SaveRecord<'a> {
    typecode: u16,
    instance: u16,
    data: &'a [u8],
}

/// The records of `context`, up to (without) the end record or the end of
/// the bytes.
fn save_records(context: &[u8]) -> Result<Vec<SaveRecord<'_>>, HvmContextError> {
    let mut records = Vec::new();
    let mut offset = 0;
    // Ends: `offset` grows by at least a descriptor's 8 bytes a round.
    while offset < context.len() {
        let truncated = HvmContextError::Truncated {
            offset,
            len: context.len(),
        };
        let (desc, _) = HvmSaveDescriptor::read_from_prefix(&context[offset..])
            .map_err(|_| truncated.clone())?;
        if desc.typecode == HVM_SAVE_CODE_END {
            break;
        }
        let start = offset + DESCRIPTOR_LEN;
        let end = start
            .checked_add(desc.length as usize)
            .filter(|&end| end <= context.len())
            .ok_or(truncated)?;
        records.push(SaveRecord {
            typecode: desc.typecode,
            instance: desc.instance,
            data: &context[start..end],
        });
        offset = end;
    }
    Ok(records)
}

/// The record of type `typecode` for `instance`, checked to be `length`
/// bytes.
fn find_record<'a>(
    records: &[SaveRecord<'a>],
    typecode: u16,
    instance: u16,
    length: u32,
) -> Result<&'a [u8], HvmContextError> {
    let record = records
        .iter()
        .find(|r| r.typecode == typecode && r.instance == instance)
        .ok_or(HvmContextError::Missing { typecode, instance })?;
    if record.data.len() != length as usize {
        return Err(HvmContextError::BadLength {
            typecode,
            length: u32::try_from(record.data.len()).unwrap_or(u32::MAX),
            expected: length,
        });
    }
    Ok(record.data)
}

/// The context's header record (Xen checks its magic and version and takes
/// the guest's TSC frequency from it).
fn save_header(records: &[SaveRecord<'_>]) -> Result<HvmSaveHeader, HvmContextError> {
    let first = records.first().ok_or(HvmContextError::NoHeader)?;
    if first.typecode != HVM_SAVE_CODE_HEADER {
        return Err(HvmContextError::NoHeader);
    }
    let data = find_record(
        records,
        HVM_SAVE_CODE_HEADER,
        first.instance,
        HVM_SAVE_LENGTH_HEADER,
    )?;
    let header = HvmSaveHeader::read_from_bytes(data).map_err(|_| HvmContextError::NoHeader)?;
    if header.magic != HVM_FILE_MAGIC {
        return Err(HvmContextError::NoHeader);
    }
    Ok(header)
}

/// Save records: `header`, one record, the end record.
fn records_with(header: &HvmSaveHeader, typecode: u16, instance: u16, data: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(3 * DESCRIPTOR_LEN + HVM_SAVE_LENGTH_HEADER as usize + data.len());
    let descriptor = |typecode, instance, length| HvmSaveDescriptor {
        typecode,
        instance,
        length,
    };
    out.extend_from_slice(descriptor(HVM_SAVE_CODE_HEADER, 0, HVM_SAVE_LENGTH_HEADER).as_bytes());
    out.extend_from_slice(header.as_bytes());
    // Cannot truncate: records are a CPU's or an MTRR's, about 1 KiB.
    out.extend_from_slice(descriptor(typecode, instance, data.len() as u32).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(descriptor(HVM_SAVE_CODE_END, 0, HVM_SAVE_LENGTH_END).as_bytes());
    out
}

/// vCPU 0's registers at a PVH kernel's entry (`vcpu_hvm`): 32-bit
/// protected mode with paging off, flat 4 GiB code and data segments, a
/// minimal TSS, `rip` at the entry and `rbx` at the start info.
fn boot_cpu(entry: u32, start_info_paddr: u64) -> HvmHwCpu {
    let mut cpu = HvmHwCpu::new_zeroed();
    cpu.cs_limit = !0;
    cpu.ds_limit = !0;
    cpu.es_limit = !0;
    cpu.ss_limit = !0;
    cpu.tr_limit = 0x67;
    cpu.cs_arbytes = 0xc9b;
    cpu.ds_arbytes = 0xc93;
    cpu.es_arbytes = 0xc93;
    cpu.ss_arbytes = 0xc93;
    cpu.tr_arbytes = 0x8b;
    cpu.cr0 = BOOT_CR0;
    cpu.rip = u64::from(entry);
    cpu.dr6 = X86_DR6_DEFAULT;
    cpu.dr7 = X86_DR7_DEFAULT;
    cpu.rbx = start_info_paddr;
    cpu
}

/// The records that start vCPU 0 at `entry` with `%ebx` at the start
/// info: the header of the domain's own `context`, a CPU record, the end.
fn boot_cpu_context(
    context: &[u8],
    entry: u32,
    start_info_paddr: u64,
) -> Result<Vec<u8>, HvmContextError> {
    let records = save_records(context)?;
    let header = save_header(&records)?;
    let cpu = boot_cpu(entry, start_info_paddr);
    Ok(records_with(&header, HVM_SAVE_CODE_CPU, 0, cpu.as_bytes()))
}

/// The records that give `vcpu` vCPU 0's MTRRs of `context` with the
/// MTRRs enabled and write-back as default type (`vcpu_hvm` without
/// device model).
fn mtrr_context(context: &[u8], vcpu: u16) -> Result<Vec<u8>, HvmContextError> {
    let records = save_records(context)?;
    let header = save_header(&records)?;
    let data = find_record(&records, HVM_SAVE_CODE_MTRR, 0, HVM_SAVE_LENGTH_MTRR)?;
    let mut mtrr = HvmHwMtrr::read_from_bytes(data).map_err(|_| HvmContextError::BadLength {
        typecode: HVM_SAVE_CODE_MTRR,
        length: u32::try_from(data.len()).unwrap_or(u32::MAX),
        expected: HVM_SAVE_LENGTH_MTRR,
    })?;
    mtrr.msr_mtrr_def_type = MTRR_TYPE_WRBACK | MTRR_DEF_TYPE_ENABLE;
    Ok(records_with(
        &header,
        HVM_SAVE_CODE_MTRR,
        vcpu,
        mtrr.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- HVM context surgery -------------------------------------------

    fn descriptor(typecode: u16, instance: u16, length: usize) -> Vec<u8> {
        HvmSaveDescriptor {
            typecode,
            instance,
            length: length as u32,
        }
        .as_bytes()
        .to_vec()
    }

    fn recorded_header() -> HvmSaveHeader {
        HvmSaveHeader {
            magic: HVM_FILE_MAGIC,
            version: 1,
            changeset: 0x1234_5678,
            cpuid: 0x00a2_0f12,
            gtsc_khz: 2_894_563,
        }
    }

    /// An HVM context as Xen 4.17 saves a fresh two-vCPU PVH domain: the
    /// header, then each handler's records in type order, one per vCPU
    /// (CPU, LAPIC, LAPIC_REGS, MTRR, an XSAVE record of odd length), then
    /// the end record.
    fn recorded_context() -> Vec<u8> {
        let mut blob = descriptor(HVM_SAVE_CODE_HEADER, 0, 24);
        blob.extend_from_slice(recorded_header().as_bytes());
        for vcpu in 0..2u16 {
            let mut cpu = HvmHwCpu::new_zeroed();
            cpu.rip = 0xfff0;
            cpu.cs_sel = 0xf000;
            cpu.flags = 1;
            blob.extend(descriptor(HVM_SAVE_CODE_CPU, vcpu, 1032));
            blob.extend_from_slice(cpu.as_bytes());
        }
        for vcpu in 0..2u16 {
            blob.extend(descriptor(5, vcpu, 24));
            blob.extend_from_slice(&[0xa5; 24]);
        }
        for vcpu in 0..2u16 {
            blob.extend(descriptor(6, vcpu, 1024));
            blob.extend_from_slice(&[0x5a; 1024]);
        }
        for vcpu in 0..2u16 {
            let mut mtrr = HvmHwMtrr::new_zeroed();
            mtrr.msr_pat_cr = 0x0007_0406_0007_0406;
            mtrr.msr_mtrr_cap = 0x508;
            mtrr.msr_mtrr_var[0] = u64::from(vcpu) + 1;
            blob.extend(descriptor(HVM_SAVE_CODE_MTRR, vcpu, 240));
            blob.extend_from_slice(mtrr.as_bytes());
        }
        blob.extend(descriptor(16, 0, 837));
        blob.extend_from_slice(&[0x33; 837]);
        blob.extend(descriptor(HVM_SAVE_CODE_END, 0, 0));
        blob
    }

    #[test]
    fn the_boot_cpu_record_starts_vcpu_0_at_the_pvh_entry() {
        let context = recorded_context();

        let records = boot_cpu_context(&context, 0x0100_0080, 0x0100_7000).unwrap();

        // Header (kept from the domain), CPU, end: 8+24 + 8+1032 + 8 bytes.
        assert_eq!(records.len(), 8 + 24 + 8 + 1032 + 8);
        assert_eq!(&records[..32], &context[..32], "the domain's own header");
        let parsed = save_records(&records).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (parsed[1].typecode, parsed[1].instance),
            (HVM_SAVE_CODE_CPU, 0)
        );
        let cpu = HvmHwCpu::read_from_bytes(parsed[1].data).unwrap();
        assert_eq!(cpu.rip, 0x0100_0080);
        assert_eq!(cpu.rbx, 0x0100_7000);
        assert_eq!(cpu.cr0, 0x11, "PE and ET: protected mode, paging off");
        assert_eq!(
            (
                cpu.cs_arbytes,
                cpu.ds_arbytes,
                cpu.ss_arbytes,
                cpu.tr_arbytes
            ),
            (0xc9b, 0xc93, 0xc93, 0x8b)
        );
        assert_eq!((cpu.cs_limit, cpu.es_limit, cpu.tr_limit), (!0, !0, 0x67));
        assert_eq!(
            (cpu.cs_base, cpu.cs_sel),
            (0, 0),
            "nothing of the reset state is kept"
        );
        assert_eq!((cpu.dr6, cpu.dr7), (0xffff_0ff0, 0x400));
        assert_eq!(
            (cpu.flags, cpu.pad0, cpu.msr_efer),
            (0, 0, 0),
            "a fresh FPU, no long mode"
        );
        assert_eq!(
            &records[records.len() - 8..],
            &descriptor(HVM_SAVE_CODE_END, 0, 0)[..]
        );
    }

    #[test]
    fn mtrr_records_copy_vcpu_0s_with_write_back_enabled_for_each_vcpu() {
        let context = recorded_context();

        let records = mtrr_context(&context, 1).unwrap();

        let parsed = save_records(&records).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].typecode, HVM_SAVE_CODE_HEADER);
        assert_eq!(
            (parsed[1].typecode, parsed[1].instance),
            (HVM_SAVE_CODE_MTRR, 1)
        );
        let mtrr = HvmHwMtrr::read_from_bytes(parsed[1].data).unwrap();
        assert_eq!(mtrr.msr_mtrr_def_type, 0x806, "WB default, MTRRs enabled");
        assert_eq!(mtrr.msr_mtrr_var[0], 1, "vCPU 0's ranges");
        assert_eq!(
            (mtrr.msr_pat_cr, mtrr.msr_mtrr_cap),
            (0x0007_0406_0007_0406, 0x508)
        );
    }

    #[test]
    fn contexts_without_header_or_mtrr_or_cut_short_are_refused() {
        let context = recorded_context();
        let cut = &context[..40];
        let headless = &context[32..];
        let mut without_mtrr = descriptor(HVM_SAVE_CODE_HEADER, 0, 24);
        without_mtrr.extend_from_slice(recorded_header().as_bytes());
        without_mtrr.extend(descriptor(HVM_SAVE_CODE_END, 0, 0));
        let mut bad_magic = context.clone();
        bad_magic[8] ^= 0xff;

        assert!(matches!(
            boot_cpu_context(cut, 1, 2),
            Err(HvmContextError::Truncated { offset: 32, .. })
        ));
        assert_eq!(
            boot_cpu_context(headless, 1, 2),
            Err(HvmContextError::NoHeader)
        );
        assert_eq!(
            boot_cpu_context(&bad_magic, 1, 2),
            Err(HvmContextError::NoHeader)
        );
        assert_eq!(
            mtrr_context(&without_mtrr, 0),
            Err(HvmContextError::Missing {
                typecode: HVM_SAVE_CODE_MTRR,
                instance: 0
            })
        );
    }

    #[test]
    fn records_stop_at_the_end_record() {
        let mut context = recorded_context();
        context.extend_from_slice(&[0xff; 5]); // Trailing bytes after END.

        let records = save_records(&context).unwrap();

        assert_eq!(records.len(), 1 + 2 * 4 + 1);
        assert_eq!(records.last().map(|r| r.data.len()), Some(837));
    }

    // --- ACPI tables ----------------------------------------------------

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The table at guest address `addr`, by its header's length.
    fn table(acpi: &AcpiTables, addr: u64) -> &[u8] {
        let at = (addr - ACPI_TABLES_ADDRESS) as usize;
        let len = u32_at(&acpi.tables, at + 4) as usize;
        &acpi.tables[at..at + len]
    }

    #[test]
    fn the_rsdp_leads_through_the_xsdt_to_a_madt_with_a_lapic_per_vcpu() {
        let acpi = AcpiTables::build(4, 3, false);

        let rsdp = &acpi.rsdp;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(rsdp), 0, "extended checksum");
        assert_eq!((rsdp[15], u32_at(rsdp, 20)), (2, 36));
        let xsdt = table(&acpi, u64_at(rsdp, 24));
        let rsdt = table(&acpi, u64::from(u32_at(rsdp, 16)));
        assert_eq!((&xsdt[..4], xsdt.len()), (&b"XSDT"[..], 36 + 16));
        assert_eq!((&rsdt[..4], rsdt.len()), (&b"RSDT"[..], 36 + 8));
        let fadt = table(&acpi, u64_at(xsdt, 36));
        let madt = table(&acpi, u64_at(xsdt, 44));
        assert_eq!(
            u64::from(u32_at(rsdt, 36)),
            u64_at(xsdt, 36),
            "RSDT lists the same tables"
        );
        assert_eq!(u64::from(u32_at(rsdt, 40)), u64_at(xsdt, 44));
        for t in [xsdt, rsdt, fadt, madt] {
            assert_eq!(sum(t), 0, "checksum of {:?}", std::str::from_utf8(&t[..4]));
            assert_eq!(
                (&t[10..16], &t[16..24], &t[28..32]),
                (&b"Xen\0\0\0"[..], &b"HVM\0\0\0\0\0"[..], &b"HVML"[..])
            );
        }
        // MADT: local APIC base, PC-AT compatible, four LAPICs, ids 2n,
        // the first three enabled.
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(
            (u32_at(madt, 36), u32_at(madt, 40), madt.len()),
            (0xfee0_0000, 1, 44 + 4 * 8)
        );
        for cpu in 0..4 {
            let e = &madt[44 + 8 * cpu..52 + 8 * cpu];
            assert_eq!((e[0], e[1], e[2], e[3]), (0, 8, cpu as u8, 2 * cpu as u8));
            assert_eq!(u32_at(e, 4), u32::from(cpu < 3), "vCPU {cpu} enabled");
        }
    }

    #[test]
    fn the_fadt_is_libxls_for_pvh_and_points_at_facs_and_dsdt() {
        let acpi = AcpiTables::build(1, 1, false);
        let xsdt = table(&acpi, u64_at(&acpi.rsdp, 24));
        let fadt = table(&acpi, u64_at(xsdt, 36));

        assert_eq!((&fadt[..4], fadt.len(), fadt[8]), (&b"FACP"[..], 268, 5));
        let facs_at = u64_at(fadt, 132);
        let dsdt_at = u64_at(fadt, 140);
        assert_eq!(u64::from(u32_at(fadt, 36)), facs_at);
        assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_at);
        assert_eq!(facs_at % 64, 0, "FACS 64-byte aligned");
        let facs = &acpi.tables[(facs_at - ACPI_TABLES_ADDRESS) as usize..][..64];
        assert_eq!(
            (&facs[..4], u32_at(facs, 4), facs[32]),
            (&b"FACS"[..], 64, 1)
        );
        let dsdt = table(&acpi, dsdt_at);
        assert_eq!((&dsdt[..4], dsdt.len(), sum(dsdt)), (&b"DSDT"[..], 36, 0));
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI");
        assert_eq!(
            (u32_at(fadt, 56), u32_at(fadt, 64), u32_at(fadt, 76)),
            (0xb000, 0xb004, 0),
            "no PM timer"
        );
        assert_eq!(
            u32_at(fadt, 112),
            0x8175,
            "C1, WBINVD, RTC, 32-bit timer, platform clock, no buttons"
        );
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]),
            0x24,
            "no VGA, no CMOS RTC"
        );
        assert_eq!(
            (fadt[116], fadt[117], u64_at(fadt, 120), fadt[128]),
            (1, 8, 0xcf9, 6),
            "reset register"
        );
    }

    #[test]
    fn the_rsdp_follows_the_tables_unless_the_kernel_needs_it_below_1mib() {
        let high = AcpiTables::build(2, 2, false);
        let low = AcpiTables::build(2, 2, true);

        assert_eq!(high.tables.len(), 4096, "one page of tables");
        assert_eq!(high.rsdp_paddr, 0xfc00_2000, "the page after the tables");
        assert_eq!(high.pfns_to_populate(), vec![0xfc001, 0xfc002]);
        assert_eq!(low.rsdp_paddr, 0xf_ffc0);
        assert_eq!(
            low.pfns_to_populate(),
            vec![0xfc001],
            "the low RSDP is in RAM"
        );
        assert_eq!(high.rsdp_module()[..36], high.rsdp[..]);
        assert_eq!(
            low.e820(),
            [
                HvmMemmapTableEntry {
                    addr: 0xf_f000,
                    size: 0x1000,
                    type_: 3,
                    reserved: 0
                },
                HvmMemmapTableEntry {
                    addr: 0xfc00_1000,
                    size: 0x1000,
                    type_: 3,
                    reserved: 0
                },
            ]
        );
    }

    #[test]
    fn many_vcpus_take_more_table_pages() {
        let acpi = AcpiTables::build(HVM_MAX_VCPUS, 1, false);

        // 64 + 36 + 268 + 44 + 128 * 8 + ... bytes: still one page.
        assert_eq!(acpi.tables.len(), 4096);
        let xsdt = table(&acpi, u64_at(&acpi.rsdp, 24));
        let madt = table(&acpi, u64_at(xsdt, 44));
        assert_eq!(madt[44 + 8 * 127 + 3], 254, "the last APIC id");
        assert_eq!(sum(madt), 0);
    }

    // --- Memory map and population --------------------------------------

    fn entry(addr: u64, size: u64, type_: u32) -> HvmMemmapTableEntry {
        HvmMemmapTableEntry {
            addr,
            size,
            type_,
            reserved: 0,
        }
    }

    #[test]
    fn acpi_entries_go_after_the_special_pages_and_before_high_memory() {
        let acpi = AcpiTables::build(1, 1, false);
        let e820 = [
            entry(0, 0xfc00_0000, 1),
            entry(0xfeff_8000, 0x8000, 2),
            entry(1 << 32, 0x4000_0000, 1),
        ];

        let map = e820_with_acpi(&e820, &acpi);

        assert_eq!(
            map,
            vec![
                entry(0, 0xfc00_0000, 1),
                entry(0xfeff_8000, 0x8000, 2),
                entry(0xfc00_2000, 64, 3),
                entry(0xfc00_1000, 0x1000, 3),
                entry(1 << 32, 0x4000_0000, 1),
            ]
        );
        let small = e820_with_acpi(&e820[..2], &acpi);
        assert_eq!(small.len(), 4);
        assert_eq!(
            e820_entry(&small[2]),
            E820Entry {
                addr: 0xfc00_2000,
                size: 64,
                kind: 3
            }
        );
    }

    #[test]
    fn ram_below_the_hole_and_above_4gib() {
        assert_eq!(ram_pfn_ranges(256 << 20, 0), vec![0..0x10000]);
        assert_eq!(
            ram_pfn_ranges(0xfc00_0000, (1 << 32) + (2 << 30)),
            vec![0..0xfc000, 0x10_0000..0x18_0000]
        );
    }

    #[test]
    fn populate_plan_uses_gigabytes_then_2mib_then_pages() {
        // 0..0xfc000 pages (4032 MiB) then 5 odd pages.
        let plan = populate_plan(0..0xfc005, ORDER_1G);

        assert_eq!(
            plan,
            vec![
                ExtentRun {
                    order: 18,
                    first: 0,
                    count: 3
                },
                ExtentRun {
                    order: 9,
                    first: 0xc0000,
                    count: 480
                },
                ExtentRun {
                    order: 0,
                    first: 0xfc000,
                    count: 5
                },
            ]
        );
        assert_eq!(
            plan.iter().map(|r| r.count << r.order).sum::<u64>(),
            0xfc005
        );
        assert_eq!(plan[1].extents()[..2], [0xc0000, 0xc0200]);
    }

    #[test]
    fn populate_plan_aligns_an_unaligned_start_with_pages_and_honours_max_order() {
        let plan = populate_plan(0x1fe..0x600, ORDER_2M);
        let small = populate_plan(0..0x400, 0);

        assert_eq!(
            plan,
            vec![
                ExtentRun {
                    order: 0,
                    first: 0x1fe,
                    count: 2
                },
                ExtentRun {
                    order: 9,
                    first: 0x200,
                    count: 2
                },
            ]
        );
        assert_eq!(
            small,
            vec![ExtentRun {
                order: 0,
                first: 0,
                count: 0x400
            }]
        );
        assert_eq!(smaller_order(ORDER_1G), Some(ORDER_2M));
        assert_eq!(smaller_order(ORDER_2M), Some(0));
        assert_eq!(smaller_order(0), None);
    }

    #[test]
    fn the_paging_pool_is_libxls_for_hap() {
        // 4 KiB * (256 per vCPU + 1 per MiB): 2 vCPUs, 1 GiB.
        assert_eq!(paging_mempool_bytes(1024, 2), 4 * (512 + 1024) * 1024);
    }

    // --- Configuration checks -------------------------------------------

    fn config(text: &str) -> DomainConfig {
        DomainConfig::parse(
            crate::config::Source::file("test.cfg"),
            text,
            &[] as &[&str],
        )
        .unwrap()
    }

    #[test]
    fn pvh_configs_this_builder_cannot_make_are_refused_before_anything_is_built() {
        let ok = config("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nmemory=256\nvcpus=2\n");
        let pv = config("name=\"g\"\nkernel=\"/k\"\nmemory=256\n");
        let pod = config("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nmemory=256\nmaxmem=512\n");
        let many = config("name=\"g\"\ntype=\"pvh\"\nkernel=\"/k\"\nmemory=256\nmaxvcpus=129\n");

        assert!(check_config(&ok).is_ok());
        assert!(
            matches!(check_config(&pv), Err(CreateError::Config(m)) if m.contains("PVH domains"))
        );
        assert!(
            matches!(check_config(&pod), Err(CreateError::Config(m)) if m.contains("set maxmem = memory"))
        );
        assert!(
            matches!(check_config(&many), Err(CreateError::Config(m)) if m.contains("at most 128"))
        );
    }
}
