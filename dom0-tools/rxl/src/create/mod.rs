//! Building a PV domain on Xen from an `xl.cfg`: what `libxl_domain_create_new`
//! and libxenguest's `xc_dom_*` do for a PV guest, with the project's
//! domain builder ([`rxen_builder`]) for the memory image.
//!
//! In order ([`create_pv`]): create the domain (`XEN_DOMCTL_createdomain`
//! with the configuration's UUID), set its vCPU and memory limits,
//! populate its memory, allocate the store and console event channels
//! (their other ends belong to dom0, where xenstored and the console
//! daemon run), load the kernel and ramdisk and lay out the boot memory
//! through foreign mappings, let Xen fill the hypercall page, pin the boot
//! page tables (after every mapping of them is gone), mask events in the
//! shared info page, set vCPU 0's registers, write the domain's xenstore
//! directories and introduce it to xenstored. The domain is left paused:
//! the caller attaches its devices (starting their backends) and unpauses
//! it. Any failure here destroys what was built: the domain and its store
//! directories.

use std::fmt::Write as _;

use hypercall_abi::platform::{Transaction, Xenstore, XsError, XsPerm, XsPermAccess};
use hypercall_abi::xen::arch_x86::{MmuextOp, VcpuGuestContext, MMUEXT_PIN_L4_TABLE};
use hypercall_abi::xen::domctl::XenDomctlCreatedomain;
use hypercall_abi::xen::PAGE_SIZE;
use rxen_builder::elf::ElfKernel;
use rxen_builder::mem::GuestMemory;
use rxen_builder::pv::{init_shared_info, PvBootState, PvConfig, PvLayout, StartInfoParams};
use xen_linux::privcmd::{Privcmd, PrivcmdError};
use zerocopy::FromZeros;

use crate::config::DomainConfig;

pub mod pvh;

/// libxl's `LIBXL_MAXMEM_CONSTANT`: KiB of slack Xen allows above a
/// domain's memory (for the grant and ring pages it maps).
pub const MAXMEM_SLACK_KIB: u64 = 1024;

/// The console ring's size limit libxl writes (`console/limit`).
const CONSOLE_LIMIT: u64 = 1_048_576;

/// Pages mapped at a time while writing the boot image.
const MAP_CHUNK_PAGES: u64 = 1024;

/// Why building a domain failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The configuration cannot be built (no kernel, not PV, ...).
    #[error("{0}")]
    Config(String),
    /// A kernel or ramdisk file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        /// "kernel" or "ramdisk".
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel image is not one the builder can load.
    #[error("kernel {path}: {message}")]
    Kernel {
        /// Its path.
        path: String,
        /// What the builder said.
        message: String,
    },
    /// A hypercall failed.
    #[error("{step}: {source}")]
    Xen {
        /// The build step.
        step: &'static str,
        /// The error.
        source: PrivcmdError,
    },
    /// A xenstore request failed.
    #[error("{step}: {source}")]
    Store {
        /// The build step.
        step: &'static str,
        /// The error.
        source: XsError,
    },
    /// Laying out or writing the boot memory failed.
    #[error("building the boot image: {0}")]
    Build(String),
}

pub(crate) fn xen(step: &'static str) -> impl FnOnce(PrivcmdError) -> CreateError {
    move |source| CreateError::Xen { step, source }
}

pub(crate) fn store(step: &'static str) -> impl FnOnce(XsError) -> CreateError {
    move |source| CreateError::Store { step, source }
}

/// What a built domain is made of, for the caller's records and cleanup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The new domain.
    pub domid: u32,
    /// Its UUID, as written under `/vm`.
    pub uuid: [u8; 16],
    /// Its store ring's machine frame and event channel.
    pub store: (u64, u32),
    /// Its console ring's machine frame and event channel.
    pub console: (u64, u32),
}

/// The guest's memory through privcmd foreign mappings, one chunk at a
/// time, each unmapped before the next: a PV guest's page tables must have
/// no mapping left in dom0 when Xen validates them at the pin.
pub(crate) struct ForeignMemory<'a> {
    privcmd: &'a Privcmd,
    domid: u16,
    /// The machine frame of each pfn (a PV guest); `None` for a translated
    /// (PVH) guest, whose pfns are the frames privcmd maps.
    mfns: Option<&'a [u64]>,
}

impl<'a> ForeignMemory<'a> {
    /// A PV guest's memory: pfn `n` is machine frame `mfns[n]`.
    pub(crate) fn pv(privcmd: &'a Privcmd, domid: u16, mfns: &'a [u64]) -> Self {
        ForeignMemory {
            privcmd,
            domid,
            mfns: Some(mfns),
        }
    }

    /// A translated guest's memory, mapped by gfn.
    pub(crate) fn translated(privcmd: &'a Privcmd, domid: u16) -> Self {
        ForeignMemory {
            privcmd,
            domid,
            mfns: None,
        }
    }

    /// Maps pfns `first..first + count` writable and hands the mapping to
    /// `f`.
    fn with_pages(
        &self,
        first: u64,
        count: u64,
        f: impl FnOnce(&xen_linux::privcmd::ForeignMapping) -> Result<(), PrivcmdError>,
    ) -> Result<(), PrivcmdError> {
        let end = first
            .checked_add(count)
            .ok_or(PrivcmdError::Invalid("pfn out of range"))?;
        let map = match self.mfns {
            Some(mfns) => {
                let start = usize::try_from(first).map_err(|_| PrivcmdError::Invalid("pfn out of range"))?;
                let end = usize::try_from(end).map_err(|_| PrivcmdError::Invalid("pfn out of range"))?;
                let frames = mfns
                    .get(start..end)
                    .ok_or(PrivcmdError::Invalid("pfn beyond the domain's memory"))?;
                self.privcmd.map_foreign(self.domid, frames, true)?
            }
            None => {
                let gfns: Vec<u64> = (first..end).collect();
                self.privcmd.map_foreign(self.domid, &gfns, true)?
            }
        };
        f(&map)
    }
}

impl GuestMemory for ForeignMemory<'_> {
    type Error = PrivcmdError;

    fn write(&mut self, pfn: u64, offset: u64, data: &[u8]) -> Result<(), PrivcmdError> {
        let page = PAGE_SIZE as u64;
        let mut done = 0usize;
        let mut pfn = pfn + offset / page;
        let mut offset = offset % page;
        // Ends: each round writes at least one byte (the chunk has room).
        while done < data.len() {
            let left = (data.len() - done) as u64;
            let pages = (offset + left).div_ceil(page).min(MAP_CHUNK_PAGES);
            let room = pages * page - offset;
            let n = usize::try_from(left.min(room)).map_err(|_| PrivcmdError::Invalid("write too large"))?;
            let chunk = &data[done..done + n];
            let at = usize::try_from(offset).map_err(|_| PrivcmdError::Invalid("offset out of range"))?;
            self.with_pages(pfn, pages, |map| {
                map.memory()
                    .write(at, chunk)
                    .map_err(|e| PrivcmdError::Unexpected(e.to_string()))
            })?;
            done += n;
            pfn += pages;
            offset = 0;
        }
        Ok(())
    }

    fn zero(&mut self, pfn: u64, count: u64) -> Result<(), PrivcmdError> {
        let zeros = vec![0u8; (MAP_CHUNK_PAGES as usize) * PAGE_SIZE];
        let mut at = pfn;
        let end = pfn
            .checked_add(count)
            .ok_or(PrivcmdError::Invalid("pfn out of range"))?;
        // Ends: `at` grows by at least one page a round.
        while at < end {
            let pages = (end - at).min(MAP_CHUNK_PAGES);
            let len = pages as usize * PAGE_SIZE;
            self.with_pages(at, pages, |map| {
                map.memory()
                    .write(0, &zeros[..len])
                    .map_err(|e| PrivcmdError::Unexpected(e.to_string()))
            })?;
            at += pages;
        }
        Ok(())
    }
}

/// Where unwrapped kernels are kept: a compressed bzImage costs seconds to
/// unwrap, and a suite's kernel is started again and again.
pub const KERNEL_CACHE_DIR: &str = "/var/cache/rxl/kernels";

/// The kernel at `path` as an ELF image: the file itself if it is one,
/// else its unwrapped payload, from [`KERNEL_CACHE_DIR`] when the same
/// file (device, inode, size and modification time) was unwrapped before.
/// The cache is only an optimisation: a cache that cannot be read or
/// written is logged and bypassed, and what it holds is parsed and checked
/// like any kernel.
pub fn kernel_elf(path: &str) -> Result<Vec<u8>, CreateError> {
    kernel_elf_in(path, std::path::Path::new(KERNEL_CACHE_DIR))
}

/// [`kernel_elf`] with the cache in `cache_dir`.
pub fn kernel_elf_in(path: &str, cache_dir: &std::path::Path) -> Result<Vec<u8>, CreateError> {
    use std::os::unix::fs::MetadataExt;
    let file_error = |source| CreateError::File {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(file_error)?;
    let key = format!(
        "{:x}-{:x}-{:x}-{:x}.{:x}.elf",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let cached = cache_dir.join(key);
    if let Ok(elf) = std::fs::read(&cached) {
        if elf.starts_with(b"\x7fELF") {
            log::debug!("kernel {path}: unwrapped copy from {}", cached.display());
            return Ok(elf);
        }
    }
    let file = std::fs::read(path).map_err(file_error)?;
    let image = rxen_builder::image::load_kernel(&file).map_err(|e| CreateError::Kernel {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let unwrapped = matches!(image.elf, std::borrow::Cow::Owned(_));
    let elf = image.elf.into_owned();
    if unwrapped {
        let tmp = cached.with_extension(format!("tmp{}", std::process::id()));
        let stored = std::fs::create_dir_all(cache_dir)
            .and_then(|()| std::fs::write(&tmp, &elf))
            .and_then(|()| std::fs::rename(&tmp, &cached));
        if let Err(e) = stored {
            log::warn!("cannot keep the unwrapped kernel in {}: {e}", cached.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(elf)
}

/// Reads `/proc/sys/kernel/random/uuid` into a UUID (libxl's
/// `libxl_uuid_generate`).
pub fn random_uuid() -> Result<[u8; 16], CreateError> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/uuid").map_err(|source| CreateError::File {
        what: "random UUID",
        path: "/proc/sys/kernel/random/uuid".into(),
        source,
    })?;
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let mut uuid = [0u8; 16];
    for (i, byte) in uuid.iter_mut().enumerate() {
        *byte = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| CreateError::Config(format!("bad random UUID {text:?}")))?;
    }
    Ok(uuid)
}

/// The UUID in its printed form.
pub fn uuid_string(uuid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The vCPU context a [`PvBootState`] asks for.
pub fn vcpu_context(boot: &PvBootState) -> VcpuGuestContext {
    let v = &boot.vcpu;
    let mut ctxt = VcpuGuestContext::new_zeroed();
    ctxt.flags = v.flags;
    ctxt.user_regs.rip = v.rip;
    ctxt.user_regs.rsp = v.rsp;
    ctxt.user_regs.rsi = v.rsi;
    ctxt.user_regs.rflags = v.rflags;
    ctxt.user_regs.cs = v.cs;
    ctxt.user_regs.ss = v.ss;
    ctxt.user_regs.ds = v.ds;
    ctxt.user_regs.es = v.es;
    ctxt.user_regs.fs = v.fs;
    ctxt.user_regs.gs = v.gs;
    ctxt.kernel_ss = u64::from(v.kernel_ss);
    ctxt.kernel_sp = v.kernel_sp;
    ctxt.ctrlreg[3] = v.cr3;
    ctxt.debugreg[6] = v.debugreg6;
    ctxt.debugreg[7] = v.debugreg7;
    ctxt
}

/// Builds a PV domain from `cfg`, paused, with its store directories
/// written and introduced to xenstored (`introduce(domid, store mfn,
/// store port)`). On failure everything built is torn down again before
/// the error is returned.
pub fn create_pv<X: Xenstore + ?Sized>(
    privcmd: &Privcmd,
    xs: &X,
    introduce: &dyn Fn(u32, u64, u32) -> Result<(), XsError>,
    cfg: &DomainConfig,
) -> Result<Built, CreateError> {
    if cfg.domain_type != crate::config::DomainType::Pv {
        return Err(CreateError::Config(format!(
            "rxl builds PV domains only so far; {} asks for {:?}",
            cfg.name,
            cfg.domain_type
        )));
    }
    let kernel_path = cfg
        .kernel
        .clone()
        .ok_or_else(|| CreateError::Config("no kernel given (kernel=\"...\" in the config)".into()))?;
    let read = |what: &'static str, path: &str| {
        std::fs::read(path).map_err(|source| CreateError::File {
            what,
            path: path.to_owned(),
            source,
        })
    };
    // Files first: a missing kernel leaves nothing behind.
    let t = std::time::Instant::now();
    let kernel_elf = kernel_elf(&kernel_path)?;
    let ramdisk = match &cfg.ramdisk {
        Some(path) => Some(read("ramdisk", path)?),
        None => None,
    };
    let kernel_error = |message: String| CreateError::Kernel {
        path: kernel_path.clone(),
        message,
    };
    let elf = ElfKernel::parse(&kernel_elf).map_err(|e| kernel_error(e.to_string()))?;
    let mut pv = PvConfig::new(cfg.memory_mib, cfg.vcpus, cfg.cmdline.clone().unwrap_or_default());
    if let Some(r) = &ramdisk {
        pv = pv.with_ramdisk(r.len() as u64);
    }
    let layout = PvLayout::new(&elf, &pv).map_err(|e| CreateError::Build(e.to_string()))?;
    log::info!("{}: kernel and ramdisk read and laid out in {:?}", cfg.name, t.elapsed());

    let uuid = match &cfg.uuid {
        Some(u) => u.0,
        None => random_uuid()?,
    };
    let mut create = XenDomctlCreatedomain::pv(cfg.maxvcpus);
    create.handle = uuid;
    let domid = privcmd.create_domain(None, &create).map_err(xen("creating the domain"))?;
    log::info!("{}: domain {domid} created", cfg.name);
    let built = build(privcmd, xs, introduce, cfg, &layout, &elf, ramdisk.as_deref(), domid, uuid);
    if let Err(e) = &built {
        log::error!("{}: creating domain {domid} failed ({e}); destroying it", cfg.name);
        destroy_partial(privcmd, xs, u32::from(domid), &uuid);
    }
    built
}

/// Removes a half-built domain: the domain itself and its store
/// directories. Errors are logged; there is nothing more to undo.
pub fn destroy_partial<X: Xenstore + ?Sized>(privcmd: &Privcmd, xs: &X, domid: u32, uuid: &[u8; 16]) {
    if let Ok(d) = u16::try_from(domid) {
        if let Err(e) = privcmd.destroy_domain(d) {
            log::error!("destroying domain {domid}: {e}");
        }
    }
    for path in [
        format!("/local/domain/{domid}"),
        format!("/vm/{}", uuid_string(uuid)),
        format!("/libxl/{domid}"),
    ] {
        match xs.rm(Transaction::NONE, &path) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => log::error!("removing {path}: {e}"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build<X: Xenstore + ?Sized>(
    privcmd: &Privcmd,
    xs: &X,
    introduce: &dyn Fn(u32, u64, u32) -> Result<(), XsError>,
    cfg: &DomainConfig,
    layout: &PvLayout,
    elf: &ElfKernel<'_>,
    ramdisk: Option<&[u8]>,
    domid: u16,
    uuid: [u8; 16],
) -> Result<Built, CreateError> {
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

    // Memory: one 4 KiB extent per pfn; Xen writes back each machine frame.
    let t = std::time::Instant::now();
    let mut mfns: Vec<u64> = (0..layout.total_pages).collect();
    privcmd
        .populate_physmap(domid, 0, 0, &mut mfns)
        .map_err(xen("populating the domain's memory"))?;
    log::info!("{}: {} pages populated in {:?}", cfg.name, mfns.len(), t.elapsed());

    let store_port = privcmd
        .evtchn_alloc_unbound(domid, 0)
        .map_err(xen("allocating the store event channel"))?;
    let console_port = privcmd
        .evtchn_alloc_unbound(domid, 0)
        .map_err(xen("allocating the console event channel"))?;
    let info = privcmd
        .domain_info(domid)
        .map_err(xen("reading the domain's info"))?
        .ok_or_else(|| CreateError::Build(format!("domain {domid} vanished while being built")))?;

    let mut memory = ForeignMemory::pv(privcmd, domid, &mfns);
    let start = StartInfoParams {
        shared_info_mfn: info.shared_info_frame,
        store_evtchn: store_port,
        console_evtchn: console_port,
    };
    let t = std::time::Instant::now();
    let boot = layout
        .build(elf, ramdisk, &mfns, &start, &mut memory)
        .map_err(|e| CreateError::Build(e.to_string()))?;
    log::info!("{}: boot image written in {:?}", cfg.name, t.elapsed());
    if let Some(page) = boot.hypercall_page {
        privcmd
            .hypercall_init(domid, page.mfn)
            .map_err(xen("filling the hypercall page"))?;
    }
    // Every chunk mapping is gone by now (ForeignMemory unmaps as it goes).
    privcmd
        .mmuext_op(domid, &[MmuextOp::pin(MMUEXT_PIN_L4_TABLE, boot.pin_l4_mfn)])
        .map_err(xen("pinning the boot page tables"))?;
    {
        let map = privcmd
            .map_foreign(domid, &[info.shared_info_frame], true)
            .map_err(xen("mapping the shared info page"))?;
        let mut page = [0u8; PAGE_SIZE];
        init_shared_info(&mut page);
        map.memory()
            .write(0, &page)
            .map_err(|e| CreateError::Build(format!("writing the shared info page: {e}")))?;
    }
    privcmd
        .set_vcpu_context(domid, 0, &vcpu_context(&boot))
        .map_err(xen("setting vCPU 0's registers"))?;

    let built = Built {
        domid: u32::from(domid),
        uuid,
        store: (boot.xenstore.mfn, store_port),
        console: (boot.console.mfn, console_port),
    };
    write_store(xs, cfg, &built)?;
    introduce(built.domid, built.store.0, built.store.1).map_err(store("introducing the domain to xenstored"))?;
    Ok(built)
}

/// The domain's directories, as libxl writes them for a PV guest: dom0
/// owns `/local/domain/D` (the guest may read it), the guest owns the
/// subdirectories it writes (`device`, `control`, `data`, ...).
pub(crate) fn write_store<X: Xenstore + ?Sized>(xs: &X, cfg: &DomainConfig, built: &Built) -> Result<(), CreateError> {
    let d = built.domid;
    let guest = u16::try_from(d).map_err(|_| CreateError::Build(format!("domain id {d} out of range")))?;
    let dom = format!("/local/domain/{d}");
    let uuid = uuid_string(&built.uuid);
    let vm = format!("/vm/{uuid}");
    let guest_reads = [
        XsPerm {
            domid: 0,
            access: XsPermAccess::None,
        },
        XsPerm {
            domid: guest,
            access: XsPermAccess::Read,
        },
    ];
    let guest_owns = [
        XsPerm {
            domid: guest,
            access: XsPermAccess::None,
        },
        XsPerm {
            domid: 0,
            access: XsPermAccess::Read,
        },
    ];
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs_f64())
        .unwrap_or_default();
    let static_max = cfg.maxmem_mib * 1024;
    let target = cfg.memory_mib * 1024;
    let mut nodes: Vec<(String, String)> = vec![
        (format!("{vm}/uuid"), uuid.clone()),
        (format!("{vm}/name"), cfg.name.clone()),
        (format!("{vm}/start_time"), format!("{started:.2}")),
        (format!("{dom}/vm"), vm.clone()),
        (format!("{dom}/name"), cfg.name.clone()),
        (format!("{dom}/domid"), d.to_string()),
        (format!("{dom}/memory/static-max"), static_max.to_string()),
        (format!("{dom}/memory/target"), target.to_string()),
        (format!("{dom}/memory/videoram"), "-1".into()),
        (format!("{dom}/store/port"), built.store.1.to_string()),
        (format!("{dom}/store/ring-ref"), built.store.0.to_string()),
        (format!("{dom}/console/port"), built.console.1.to_string()),
        (format!("{dom}/console/ring-ref"), built.console.0.to_string()),
        (format!("{dom}/console/limit"), CONSOLE_LIMIT.to_string()),
        (format!("{dom}/console/type"), "xenconsoled".into()),
        (format!("{dom}/console/output"), "pty".into()),
        (format!("{dom}/console/tty"), String::new()),
        (format!("/libxl/{d}/type"), "pv".into()),
        (format!("/libxl/{d}/rxl"), "1".into()),
    ];
    for cpu in 0..cfg.maxvcpus {
        let state = if cpu < cfg.vcpus { "online" } else { "offline" };
        nodes.push((format!("{dom}/cpu/{cpu}/availability"), state.into()));
    }
    let tx = xs.transaction_start().map_err(store("starting a store transaction"))?;
    let result = (|| -> Result<(), XsError> {
        for path in [&vm, &dom] {
            xs.mkdir(tx, path)?;
            xs.set_perms(tx, path, &guest_reads)?;
        }
        for (path, value) in &nodes {
            xs.write(tx, path, value.as_bytes())?;
        }
        for sub in ["device", "control", "data", "drivers", "feature", "attr", "error"] {
            let path = format!("{dom}/{sub}");
            xs.mkdir(tx, &path)?;
            xs.set_perms(tx, &path, &guest_owns)?;
        }
        // The guest answers shutdown requests and may write its feature
        // flags there.
        for leaf in ["control/shutdown", "control/feature-poweroff", "control/feature-reboot"] {
            let path = format!("{dom}/{leaf}");
            xs.write(tx, &path, b"")?;
            xs.set_perms(tx, &path, &guest_owns)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => xs
            .transaction_end(tx, true)
            .map_err(store("writing the domain's store directories")),
        Err(e) => {
            let _ = xs.transaction_end(tx, false);
            Err(CreateError::Store {
                step: "writing the domain's store directories",
                source: e,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_in_the_usual_form() {
        let uuid = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
        ];
        assert_eq!(uuid_string(&uuid), "12345678-9abc-def0-0123-456789abcdef");
    }

    /// A gzip-compressed ELF kernel: unwrapped once, then served from the
    /// cache; a changed file is unwrapped afresh.
    #[test]
    fn unwrapped_kernels_are_cached_by_file_identity() {
        let dir = std::env::temp_dir().join(format!("rxl-kcache-{}", std::process::id()));
        let cache = dir.join("cache");
        std::fs::create_dir_all(&dir).unwrap();
        let elf_a = [b"\x7fELF".as_slice(), &[1u8; 300]].concat();
        let elf_b = [b"\x7fELF".as_slice(), &[2u8; 300]].concat();
        let gzip = |data: &[u8]| {
            // A stored-only gzip member (RFC 1952) around `data`.
            let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
            out.extend(miniz_oxide::deflate::compress_to_vec(data, 1));
            let crc = crc32(data);
            out.extend(crc.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out
        };
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, gzip(&elf_a)).unwrap();
        let path = kernel.to_str().unwrap();

        assert_eq!(kernel_elf_in(path, &cache).unwrap(), elf_a);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1, "one unwrapped copy kept");
        assert_eq!(kernel_elf_in(path, &cache).unwrap(), elf_a, "served from the cache");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&kernel, gzip(&elf_b)).unwrap();
        assert_eq!(kernel_elf_in(path, &cache).unwrap(), elf_b, "a new file is unwrapped afresh");
        // A plain ELF is used as it is and not copied.
        let plain = dir.join("vmlinux");
        std::fs::write(&plain, &elf_a).unwrap();
        assert_eq!(kernel_elf_in(plain.to_str().unwrap(), &cache).unwrap(), elf_a);
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn random_uuids_differ() {
        let (a, b) = (random_uuid().unwrap(), random_uuid().unwrap());
        assert_ne!(a, b);
        assert_eq!(uuid_string(&a).len(), 36);
    }
}
