//! The [`Host`] of a real Xen 4.17 dom0: hypercalls through
//! `/dev/xen/privcmd`, xenstore (xenstored's socket, or the xenbus device
//! where there is none), and dom0's own processes and files.
//!
//! Every operation does what the libxl function named in its
//! documentation does, reduced to PV and PVH guests without a device
//! model. Devices are served by the project's user-space backends by
//! default (rblkback for disks, rnetback for vifs, one detached process
//! per device, recorded under `/var/run/rxl/DOMID/`), or by Linux's
//! in-kernel backends with Xen's hotplug scripts, as libxl sets them up,
//! when the specification asks for `backendtype=phy` (disks) or
//! `backendtype=netback` (vifs, an rxl extension).
//!
//! The submodules: `store` (xenstore reads, transactions, waits),
//! `devices` (device directories, their nodes, listing and removal),
//! `backends` (the backend processes and the hotplug scripts),
//! `hypercalls` (hypercalls beyond [`Privcmd`]'s typed ones) and
//! `system` (`uname`, uptime, clock, libxl's files, sysfs).

mod backends;
mod console;
mod devices;
mod hypercalls;
mod libxl_config;
mod store;
mod system;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::domctl::{
    XenDomctlGetdomaininfo, XEN_DOMINF_BLOCKED, XEN_DOMINF_DYING, XEN_DOMINF_HVM_GUEST,
    XEN_DOMINF_PAUSED, XEN_DOMINF_RUNNING, XEN_DOMINF_SHUTDOWN, XEN_DOMINF_XS_DOMAIN,
    XEN_INVALID_MAX_VCPU_ID,
};
use hypercall_abi::xen::sysctl::PhysCaps;
use hypercall_abi::xen::xenbus::{XenbusState, XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64};
use hypercall_abi::xenstore::{XsClient, XsStream};
use xen_linux::{Privcmd, PrivcmdError};

use self::backends::{HotplugAction, PidFiles, Program};
pub use self::devices::NicBackend;
use self::devices::{DevicePaths, DiskBackend, DiskPlan, NicPlan, Removal};
use super::{
    BlockDevice, ConnectError, ConsoleKind, CpuMap, CpuTopology, CreateOutcome, CreateRequest,
    DiskSpec, DomId, DomainEvent, DomainInfo, DomainState, Host, HostError, NetworkDevice, NicSpec,
    NodeInfo, NumaNode, PciTopology, PhysInfo, ShutdownReason, Trigger, Uuid, VcpuInfo,
    VersionInfo, VirtCaps, WallClock,
};
use crate::config;

/// How long a backend has to come up (`LIBXL_INIT_TIMEOUT`).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a backend has to close its device (`LIBXL_DESTROY_TIMEOUT`).
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a guest has to acknowledge a shutdown request (libxl's
/// `pvcontrol` wait).
const PVCONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one of our backends has to exit by itself once its device
/// is closed and offline, before it is signalled.
const BACKEND_EXIT_GRACE: Duration = Duration::from_secs(2);

/// How often [`XenHost::wait_domain_event`] looks at the domains even
/// without a `@releaseDomain` event.
const DEATH_POLL: Duration = Duration::from_secs(1);

/// The watch token of the domain death watch.
const DEATH_TOKEN: &str = "rxl-domain-death";

/// KiB Xen lets a domain hold above its target (`LIBXL_MAXMEM_CONSTANT`).
const MAXMEM_CONSTANT_KIB: u64 = 1024;

/// The least memory dom0 may be set to (`LIBXL_MIN_DOM0_MEM`).
const MIN_DOM0_MEM_KIB: u64 = 128 * 1024;

/// KiB per page.
const KIB_PER_PAGE: u64 = hypercall_abi::xen::PAGE_SIZE as u64 / 1024;

const NONE: Transaction = Transaction::NONE;

/// The kind of guest (`libxl__domain_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DomainType {
    /// Paravirtualized.
    Pv,
    /// PVH: an HVM container without a device model.
    Pvh,
    /// Fully virtualized.
    Hvm,
}

/// The hypervisor's id for `domid`, or [`HostError::DomainNotFound`] if
/// it names no possible domain.
fn xen_domid(domid: DomId) -> Result<hypercall_abi::xen::DomId, HostError> {
    hypercall_abi::xen::DomId::try_from(domid)
        .ok()
        .filter(|&d| d < hypercall_abi::xen::DOMID_FIRST_RESERVED)
        .ok_or(HostError::DomainNotFound(domid))
}

/// A failed hypercall about `domid`: a missing domain is
/// [`HostError::DomainNotFound`].
fn xen_failed(domid: DomId) -> impl FnOnce(PrivcmdError) -> HostError {
    move |e| {
        if e.is_no_such_domain() {
            HostError::DomainNotFound(domid)
        } else {
            HostError::Failed(e.to_string())
        }
    }
}

/// A failed host-wide hypercall.
fn host_failed(e: PrivcmdError) -> HostError {
    HostError::Failed(e.to_string())
}

/// The state flags of a domain (`libxl__xcinfo2xlinfo`).
fn domain_state(raw: &XenDomctlGetdomaininfo) -> DomainState {
    let flag = |bit: u32| raw.flags & bit != 0;
    DomainState {
        running: flag(XEN_DOMINF_RUNNING),
        blocked: flag(XEN_DOMINF_BLOCKED),
        paused: flag(XEN_DOMINF_PAUSED),
        shutdown: flag(XEN_DOMINF_SHUTDOWN)
            .then(|| ShutdownReason::from_code(raw.shutdown_code() as u8)),
        dying: flag(XEN_DOMINF_DYING),
    }
}

/// What [`DomainInfo`] holds of the hypervisor's record; the name and
/// stub-domain flag come from xenstore.
fn domain_info_from(
    raw: &XenDomctlGetdomaininfo,
    name: Option<String>,
    stubdom: bool,
) -> DomainInfo {
    let domid = DomId::from(raw.domain);
    DomainInfo {
        domid,
        name: name.or_else(|| (domid == 0).then(|| "Domain-0".to_owned())),
        uuid: Uuid(raw.handle),
        state: domain_state(raw),
        current_memkb: raw.tot_pages * KIB_PER_PAGE,
        outstanding_memkb: raw.outstanding_pages * KIB_PER_PAGE,
        max_memkb: raw.max_pages * KIB_PER_PAGE,
        vcpu_online: raw.nr_online_vcpus,
        vcpu_max_id: raw.max_vcpu_id,
        cpu_time_ns: raw.cpu_time,
        ssidref: raw.ssidref,
        ssid_label: None,
        cpupool: raw.cpupool,
        xenstore_domain: raw.flags & XEN_DOMINF_XS_DOMAIN != 0,
        stubdom,
    }
}

/// The host's capabilities (`libxl_get_physinfo`).
fn virt_caps(caps: PhysCaps) -> VirtCaps {
    VirtCaps {
        pv: caps.contains(PhysCaps::PV),
        hvm: caps.contains(PhysCaps::HVM),
        directio: caps.contains(PhysCaps::DIRECTIO),
        hap: caps.contains(PhysCaps::HAP),
        shadow: caps.contains(PhysCaps::SHADOW),
        iommu_hap_pt_share: caps.contains(PhysCaps::IOMMU_HAP_PT_SHARE),
        vmtrace: caps.contains(PhysCaps::VMTRACE),
        vpmu: caps.contains(PhysCaps::VPMU),
        gnttab_v1: caps.contains(PhysCaps::GNTTAB_V1),
        gnttab_v2: caps.contains(PhysCaps::GNTTAB_V2),
    }
}

/// The new balloon target and maximum reservation (KiB) of
/// `libxl_set_memory_target(domid, target, relative = 0, enforce = 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MemoryPlan {
    /// `memory/target`.
    target_kib: u64,
    /// What `XEN_DOMCTL_max_mem` is set to.
    max_kib: u64,
}

/// libxl's arithmetic and checks for a new target of `target_kib`, with
/// `memory/static-max` and `memory/videoram` (negative is none) as read.
fn memory_plan(
    domid: DomId,
    target_kib: u64,
    static_max_kib: u64,
    videoram_kib: i64,
) -> Result<MemoryPlan, HostError> {
    let videoram = u64::try_from(videoram_kib).unwrap_or(0);
    let target = target_kib.saturating_sub(videoram);
    if target > static_max_kib {
        return Err(HostError::Invalid(format!(
            "memory_dynamic_max must be less than or equal to memory_static_max ({target} KiB > {static_max_kib} KiB)"
        )));
    }
    if domid == 0 && target < MIN_DOM0_MEM_KIB {
        return Err(HostError::Invalid(format!(
            "New target {target} for dom0 is below the minimum threshold ({MIN_DOM0_MEM_KIB} KiB)"
        )));
    }
    Ok(MemoryPlan {
        target_kib: target,
        max_kib: target + videoram + MAXMEM_CONSTANT_KIB,
    })
}

/// C's `atoi`: optional blanks and sign, then leading digits; 0 if none.
fn atoi(text: &str) -> i64 {
    let text = text.trim_start();
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'-') => (-1, &text[1..]),
        Some(b'+') => (1, &text[1..]),
        _ => (1, text),
    };
    let end = digits.bytes().take_while(u8::is_ascii_digit).count();
    digits[..end].parse::<i64>().map_or(0, |n| sign * n)
}

/// The first event of `domids` to report (libxl's
/// `domain_death_xswatch_callback`): a domain missing or dying is dead;
/// one shut down is reported once (`reported` remembers it).
fn next_domain_event(
    domids: &[DomId],
    mut lookup: impl FnMut(DomId) -> Result<Option<XenDomctlGetdomaininfo>, HostError>,
    reported: &mut BTreeSet<DomId>,
) -> Result<Option<DomainEvent>, HostError> {
    for &domid in domids {
        let Some(raw) = lookup(domid)? else {
            reported.remove(&domid);
            return Ok(Some(DomainEvent::Death { domid }));
        };
        let state = domain_state(&raw);
        if state.dying {
            reported.remove(&domid);
            return Ok(Some(DomainEvent::Death { domid }));
        }
        if let Some(reason) = state.shutdown {
            if reported.insert(domid) {
                return Ok(Some(DomainEvent::Shutdown { domid, reason }));
            }
        }
    }
    Ok(None)
}

/// Random bytes for MAC addresses (`/dev/urandom`; the clock if that
/// fails, which only risks a clash the frontend reports).
fn random_bytes(buf: &mut [u8]) {
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf));
    if let Err(e) = read {
        log::warn!("cannot read /dev/urandom ({e}); using the clock for a MAC address");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> (8 * (i % 16))) as u8;
        }
    }
}

/// The Xen host rxl runs in: dom0 of a Xen 4.17 host.
#[derive(Debug)]
pub struct XenHost {
    privcmd: Privcmd,
    xs: XsClient<XsStream>,
    pids: PidFiles,
    /// Domains whose shutdown [`Host::wait_domain_event`] reported.
    shutdown_reported: BTreeSet<DomId>,
    /// Whether the `@releaseDomain` watch is registered.
    death_watch: bool,
}

impl XenHost {
    /// Opens `/dev/xen/privcmd` and connects to xenstore (xenstored's
    /// socket, else the xenbus device, as `xs_open(0)` does).
    pub fn open() -> Result<Self, ConnectError> {
        let privcmd = Privcmd::open().map_err(ConnectError::Privcmd)?;
        let xs = xen_linux::xenstore::open().map_err(ConnectError::Xenstore)?;
        Ok(XenHost {
            privcmd,
            xs,
            pids: PidFiles::new(backends::RUN_DIR),
            shutdown_reported: BTreeSet::new(),
            death_watch: false,
        })
    }

    /// The hypercall handle, for the domain builder.
    pub fn privcmd(&self) -> &Privcmd {
        &self.privcmd
    }

    /// The xenstore connection, for the domain builder.
    pub fn xenstore(&self) -> &XsClient<XsStream> {
        &self.xs
    }

    fn store(&self) -> &dyn Xenstore {
        &self.xs
    }

    /// The hypervisor's record of `domid`.
    fn raw_info(&self, domid: DomId) -> Result<XenDomctlGetdomaininfo, HostError> {
        let d = xen_domid(domid)?;
        self.privcmd
            .domain_info(d)
            .map_err(xen_failed(domid))?
            .ok_or(HostError::DomainNotFound(domid))
    }

    /// [`DomainInfo`] of a hypervisor record, with its xenstore name.
    fn info_of(&self, raw: &XenDomctlGetdomaininfo) -> Result<DomainInfo, HostError> {
        let dom = devices::dom_path(DomId::from(raw.domain));
        let name = store::read(self.store(), NONE, &format!("{dom}/name"))?;
        // libxl_is_stubdom: a domain with a target serves another.
        let stubdom = store::exists(self.store(), NONE, &format!("{dom}/target"))?;
        Ok(domain_info_from(raw, name, stubdom))
    }

    /// `libxl__domain_type`: PV unless the hypervisor says HVM; then
    /// libxl's `/libxl/DOMID/type` tells PVH from HVM.
    fn domain_type(&self, domid: DomId, raw: &XenDomctlGetdomaininfo) -> DomainType {
        if raw.flags & XEN_DOMINF_HVM_GUEST == 0 {
            return DomainType::Pv;
        }
        match store::read(self.store(), NONE, &format!("/libxl/{domid}/type")) {
            Ok(Some(t)) if t == "pvh" => DomainType::Pvh,
            Ok(Some(t)) if t == "hvm" => DomainType::Hvm,
            other => {
                log::warn!("unable to get domain type for domid={domid} ({other:?}), assuming HVM");
                DomainType::Hvm
            }
        }
    }

    /// The vCPU count and CPU map width libxl uses (`libxl_get_max_cpus`).
    fn max_cpus(&self) -> Result<u32, HostError> {
        Ok(self.privcmd.physinfo().map_err(host_failed)?.max_cpu_id + 1)
    }

    /// The domain with id or name `name` (`backend=`), which must be dom0.
    fn check_backend_domain(&self, name: Option<&str>) -> Result<(), HostError> {
        let Some(name) = name else {
            return Ok(());
        };
        let domid = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
            name.parse::<DomId>().map_err(|_| {
                HostError::Invalid(format!("backend domain {name} is not a domain id"))
            })?
        } else {
            self.domain_by_name(name)?.ok_or_else(|| {
                HostError::Invalid(format!("backend domain {name} does not exist"))
            })?
        };
        if domid != 0 {
            return Err(HostError::Invalid(format!(
                "backend={name} names domain {domid}, but rxl runs backends in dom0 only"
            )));
        }
        Ok(())
    }

    /// Attaches disk `spec` to `domid` (`libxl_device_disk_add`): its
    /// xenstore directories, then its backend: rblkback started for it,
    /// or, with `backendtype=phy`, Linux's blkback and Xen's `block`
    /// hotplug script. On failure what was done is undone.
    pub fn attach_disk(&self, domid: DomId, spec: &config::DiskSpec) -> Result<(), HostError> {
        let raw = self.raw_info(domid)?;
        self.check_backend_domain(spec.backend_domain.as_deref())?;
        let mut plan = DiskPlan::new(spec)?;
        // The backend outlives this process and runs from `/`.
        if let Ok(target) = std::path::absolute(&plan.target) {
            plan.target = target.to_string_lossy().into_owned();
        }
        let meta = std::fs::metadata(&plan.target).map_err(|e| {
            HostError::Invalid(format!(
                "disk {}: cannot use {}: {e}",
                plan.vdev, plan.target
            ))
        })?;
        if plan.backend == DiskBackend::Kernel {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_block_device() && !meta.is_file() {
                return Err(HostError::Invalid(format!(
                    "disk {}: backendtype=phy needs a block device or an image file, and {} is neither",
                    plan.vdev, plan.target
                )));
            }
        }
        let protocol = match self.domain_type(domid, &raw) {
            // Old blkfronts need it; libxl writes it for PV guests.
            DomainType::Pv => match hypercalls::address_size(&self.privcmd, raw.domain) {
                Ok(32) => Some(XEN_IO_PROTO_ABI_X86_32),
                Ok(_) => Some(XEN_IO_PROTO_ABI_X86_64),
                Err(e) => {
                    log::warn!(
                        "domain {domid}: cannot read its address size ({e}); no protocol node"
                    );
                    None
                }
            },
            DomainType::Pvh | DomainType::Hvm => None,
        };
        let nodes = plan.nodes(domid, protocol);
        devices::add_device(self.store(), &nodes)?;
        let started = match (&plan.backend, &plan.script) {
            (DiskBackend::Kernel, Some(script)) => {
                self.kernel_backend_up(&nodes.paths, script, None, "xen-blkback")
            }
            _ => self.start_backend(Program::Rblkback, &nodes.paths, &plan.rblkback_args(domid)),
        };
        started.inspect_err(|_| self.undo_attach(&nodes.paths))
    }

    /// Attaches network interface `spec` to `domid`, served by the backend
    /// its `backendtype=` names (`libxl_device_nic_add`): its xenstore directories, then rnetback
    /// started for it, or Linux's netback and Xen's vif hotplug script.
    /// Returns what was attached (device id, MAC, ...). On failure what
    /// was done is undone.
    pub(crate) fn attach_nic(&self, domid: DomId, spec: &config::VifSpec) -> Result<NicPlan, HostError> {
        self.raw_info(domid)?;
        self.check_backend_domain(spec.backend_domain.as_deref())?;
        let devid = match spec.devid {
            Some(devid) => devid,
            None => devices::next_nic_devid(self.store(), domid)?,
        };
        let mac = config::MacAddr::random_xen(random_bytes);
        let plan = NicPlan::new(spec, domid, devid, mac)?;
        let nodes = plan.nodes(domid);
        devices::add_device(self.store(), &nodes)?;
        let started = match &plan.script {
            Some(script) if plan.backend == NicBackend::Kernel => self.kernel_backend_up(
                &nodes.paths,
                script,
                plan.gatewaydev.as_deref(),
                "xen-netback",
            ),
            _ => self.start_backend(Program::Rnetback, &nodes.paths, &plan.rnetback_args(domid)),
        };
        started.inspect_err(|_| self.undo_attach(&nodes.paths))?;
        Ok(plan)
    }

    /// Starts `program` for `device` and waits until it serves the device
    /// (backend state InitWait or later).
    fn start_backend(
        &self,
        program: Program,
        device: &DevicePaths,
        args: &[String],
    ) -> Result<(), HostError> {
        let binary = backends::find_program(program)?;
        let log = program.log_path(device.domid, device.devid);
        log::info!("starting {} {}", binary.display(), args.join(" "));
        let mut child = backends::spawn_detached(&binary, args, &log)?;
        if let Err(e) =
            self.pids
                .record(device.domid, &device.backend_kind, device.devid, child.id())
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        let xs = self.store();
        let state_path = device.state_path();
        let outcome = store::wait_for(xs, &[&state_path], Instant::now() + INIT_TIMEOUT, || {
            if let Some(status) = child.try_wait().map_err(|source| HostError::Os {
                what: format!("waiting for {}", program.name()),
                source,
            })? {
                return Ok(Some(Err(status)));
            }
            let up = devices::backend_state(xs, device)?.is_some_and(|s| {
                matches!(
                    s,
                    XenbusState::InitWait | XenbusState::Initialised | XenbusState::Connected
                )
            });
            Ok(up.then_some(Ok(())))
        })?;
        match outcome {
            Some(Ok(())) => {
                backends::detach(child);
                Ok(())
            }
            Some(Err(status)) => Err(HostError::Failed(format!(
                "{} for {} exited ({status}) before serving the device; the end of {}:\n{}",
                program.name(),
                device.backend,
                log.display(),
                backends::log_tail(&log, 2048)
            ))),
            None => {
                backends::detach(child);
                Err(HostError::Failed(format!(
                    "{} did not take {} within {} s; see {}",
                    program.name(),
                    device.backend,
                    INIT_TIMEOUT.as_secs(),
                    log.display()
                )))
            }
        }
    }

    /// Waits for the kernel's backend to take `device` (InitWait), then
    /// runs its hotplug script to add it, as libxl does.
    fn kernel_backend_up(
        &self,
        device: &DevicePaths,
        script: &str,
        gatewaydev: Option<&str>,
        module: &str,
    ) -> Result<(), HostError> {
        let xs = self.store();
        let up = store::wait_for(
            xs,
            &[&device.state_path()],
            Instant::now() + INIT_TIMEOUT,
            || {
                Ok(devices::backend_state(xs, device)?.filter(|s| {
                    matches!(
                        s,
                        XenbusState::InitWait | XenbusState::Initialised | XenbusState::Connected
                    )
                }))
            },
        )?;
        if up.is_none() {
            return Err(HostError::Failed(format!(
                "the kernel's backend did not take {} within {} s: is the {module} module loaded in dom0?",
                device.backend,
                INIT_TIMEOUT.as_secs()
            )));
        }
        backends::run_hotplug(script, HotplugAction::Add, device, gatewaydev, || {
            self.hotplug_error(device)
        })
    }

    /// The backend's `hotplug-error`, which Xen's scripts set on failure.
    fn hotplug_error(&self, device: &DevicePaths) -> Option<String> {
        store::read(
            self.store(),
            NONE,
            &format!("{}/hotplug-error", device.backend),
        )
        .ok()
        .flatten()
    }

    /// Takes back a device whose attachment failed.
    fn undo_attach(&self, device: &DevicePaths) {
        log::info!("removing {} again", device.backend);
        if let Err(e) = devices::begin_remove(self.store(), device, true) {
            log::warn!("{e}");
        }
        self.release(device, Duration::ZERO);
    }

    /// Whether the backend of `device` let it go: Closed, gone, or (ours)
    /// no longer running.
    fn backend_closed(&self, device: &DevicePaths) -> Result<bool, HostError> {
        Ok(match devices::backend_state(self.store(), device)? {
            None | Some(XenbusState::Closed) => true,
            Some(_) => backends::backend_exited(&self.pids, device),
        })
    }

    /// Waits up to `timeout` until every backend of `devices` let its
    /// device go; returns those that did not.
    fn wait_closed<'a>(
        &self,
        devices: &'a [DevicePaths],
        timeout: Duration,
    ) -> Result<Vec<&'a DevicePaths>, HostError> {
        let paths: Vec<String> = devices.iter().map(DevicePaths::state_path).collect();
        let watched: Vec<&str> = paths.iter().map(String::as_str).collect();
        let all_closed = store::wait_for(self.store(), &watched, Instant::now() + timeout, || {
            for device in devices {
                if !self.backend_closed(device)? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        if all_closed.is_some() {
            return Ok(Vec::new());
        }
        let mut open = Vec::new();
        for device in devices {
            if !self.backend_closed(device)? {
                open.push(device);
            }
        }
        Ok(open)
    }

    /// The last steps of removing a device whose backend closed (or was
    /// given up on): our backend process stopped, the kernel backend's
    /// hotplug script run, the directories removed. Errors are logged:
    /// there is nothing left to undo.
    fn release(&self, device: &DevicePaths, grace: Duration) {
        let xs = self.store();
        let node = |name: &str| {
            store::read(xs, NONE, &format!("{}/{name}", device.backend))
                .ok()
                .flatten()
        };
        let script = node("script");
        let gatewaydev = node("gatewaydev");
        backends::stop_backend(&self.pids, device, grace);
        let kernel = matches!(
            device.backend_kind.as_str(),
            devices::KERNEL_BLOCK_KIND | devices::KERNEL_NET_KIND
        );
        if kernel && device.backend_domid == 0 {
            if let Some(script) = script {
                if let Err(e) = backends::run_hotplug(
                    &script,
                    HotplugAction::Remove,
                    device,
                    gatewaydev.as_deref(),
                    || self.hotplug_error(device),
                ) {
                    log::warn!("{e}");
                }
            }
        }
        if let Err(e) = devices::finish_remove(xs, device) {
            log::warn!("{e}");
        }
    }

    /// How a detach treats a backend that does not let go.
    fn detach(
        &mut self,
        domid: DomId,
        kind: &'static str,
        devid: u32,
        mode: DetachMode,
    ) -> Result<(), HostError> {
        self.raw_info(domid)?;
        let xs = self.store();
        let device = devices::frontends(xs, domid, kind)?
            .into_iter()
            .chain(devices::all_devices(xs, domid, 0)?)
            .find(|d| d.kind == kind && d.devid == devid)
            .ok_or(HostError::DeviceNotFound { domid, kind, devid })?;
        let force = mode == DetachMode::Force;
        if devices::begin_remove(xs, &device, force)? == Removal::Closing {
            let still_open = !self
                .wait_closed(std::slice::from_ref(&device), DESTROY_TIMEOUT)?
                .is_empty();
            if still_open {
                let what = format!(
                    "the backend {} did not close the device within {} s",
                    device.backend,
                    DESTROY_TIMEOUT.as_secs()
                );
                match mode {
                    DetachMode::Safe => {
                        return Err(HostError::Failed(format!(
                        "{what}: the guest may still be using it (unmount it, or detach with -f)"
                    )))
                    }
                    DetachMode::Auto => {
                        log::info!("{what}; removing it by force");
                        devices::begin_remove(xs, &device, true)?;
                        if !self
                            .wait_closed(std::slice::from_ref(&device), DESTROY_TIMEOUT)?
                            .is_empty()
                        {
                            log::warn!("{what}, even without its frontend; removing it anyway");
                        }
                    }
                    DetachMode::Force => log::warn!("{what}; removing it anyway"),
                }
            }
        }
        self.release(&device, BACKEND_EXIT_GRACE);
        Ok(())
    }

    /// `libxl__devices_destroy` with force: every device of `domid`
    /// loses its frontend and is asked to close; after at most
    /// [`DESTROY_TIMEOUT`] all are released. Errors are logged.
    fn destroy_devices(&self, domid: DomId) {
        let xs = self.store();
        let all = match devices::all_devices(xs, domid, 0) {
            Ok(all) => all,
            Err(e) => {
                log::error!("cannot list the devices of domain {domid}: {e}");
                return;
            }
        };
        let mut closing = Vec::new();
        for device in all {
            if device.is_console() {
                // Consoles need no handshake (libxl__device_destroy).
                if let Err(e) = devices::finish_remove(xs, &device) {
                    log::warn!("{e}");
                }
                continue;
            }
            match devices::begin_remove(xs, &device, true) {
                Ok(Removal::Closing) => closing.push(device),
                Ok(Removal::BackendGone) => self.release(&device, Duration::ZERO),
                Err(e) => {
                    log::warn!("{e}");
                    closing.push(device);
                }
            }
        }
        match self.wait_closed(&closing, DESTROY_TIMEOUT) {
            Ok(open) => {
                for device in open {
                    log::warn!(
                        "backend {} did not close within {} s; removing it anyway",
                        device.backend,
                        DESTROY_TIMEOUT.as_secs()
                    );
                }
            }
            Err(e) => log::warn!("{e}"),
        }
        for device in &closing {
            self.release(device, BACKEND_EXIT_GRACE);
        }
    }

    /// Writes `cmd` to the guest's `control/shutdown` and waits for it to
    /// acknowledge (`libxl__domain_pvcontrol`).
    fn pvcontrol(&mut self, domid: DomId, cmd: &str) -> Result<(), HostError> {
        let d = xen_domid(domid)?;
        let raw = self.raw_info(domid)?;
        // libxl__domain_pvcontrol_available: PV and PVH guests always have
        // PV control; an HVM guest when its PV drivers set a callback.
        if self.domain_type(domid, &raw) == DomainType::Hvm
            && hypercalls::hvm_param(&self.privcmd, d, hypercalls::HVM_PARAM_CALLBACK_IRQ)? == 0
        {
            return Err(HostError::NoParavirt(domid));
        }
        let xs = self.store();
        let path = format!("{}/control/shutdown", devices::dom_path(domid));
        store::write(xs, NONE, &path, cmd)?;
        let acked = store::wait_for(xs, &[&path], Instant::now() + PVCONTROL_TIMEOUT, || {
            // The guest empties the node to acknowledge.
            if store::read(xs, NONE, &path)?
                .as_deref()
                .map_or(true, str::is_empty)
            {
                return Ok(Some(()));
            }
            // A guest that already went down will not answer.
            let gone = match self.privcmd.domain_info(d).map_err(xen_failed(domid))? {
                None => true,
                Some(raw) => raw.flags & (XEN_DOMINF_SHUTDOWN | XEN_DOMINF_DYING) != 0,
            };
            Ok(gone.then_some(()))
        })?;
        acked.ok_or_else(|| {
            HostError::Failed(format!(
                "domain {domid} did not acknowledge the {cmd} request within {} s (are its PV drivers running?)",
                PVCONTROL_TIMEOUT.as_secs()
            ))
        })
    }

    /// Makes sure dom0 has `memory/target` and `memory/static-max`
    /// (`libxl__fill_dom0_memory_info`): what it holds and may hold now.
    fn fill_dom0_memory_info(&self, raw: &XenDomctlGetdomaininfo) -> Result<(), HostError> {
        let xs = self.store();
        let info = domain_info_from(raw, None, false);
        store::transaction(xs, |tx| {
            for (node, kib) in [
                ("target", info.current_memkb),
                ("static-max", info.max_memkb),
            ] {
                let path = format!("/local/domain/0/memory/{node}");
                if store::read(xs, tx, &path)?.is_none() {
                    store::write(xs, tx, &path, &kib.to_string())?;
                }
            }
            Ok(())
        })
    }
}

/// How [`XenHost::detach`] treats a backend that does not close in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DetachMode {
    /// Fail, leaving the device (`libxl_device_*_safe_remove`).
    Safe,
    /// Remove the frontend and try again, then remove anyway
    /// (`libxl_device_*_remove`).
    Auto,
    /// Remove the frontend first, and remove anyway
    /// (`libxl_device_*_destroy`).
    Force,
}

impl Host for XenHost {
    /// `libxl_list_domain`.
    fn list_domains(&self) -> Result<Vec<DomainInfo>, HostError> {
        self.privcmd
            .list_domains()
            .map_err(host_failed)?
            .iter()
            .map(|raw| self.info_of(raw))
            .collect()
    }

    /// `libxl_domain_info`.
    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, HostError> {
        let raw = self.raw_info(domid)?;
        self.info_of(&raw)
    }

    /// `libxl_retrieve_domain_configuration`, as far as libxl stores it:
    /// `/var/lib/xen/userdata-d.DOMID.UUID.libxl-json`.
    fn domain_config(&self, domid: DomId) -> Result<Option<serde_json::Value>, HostError> {
        let raw = self.raw_info(domid)?;
        system::domain_config(Path::new(system::XEN_LIB_DIR), domid, &Uuid(raw.handle))
    }

    /// `libxl_domain_get_nodeaffinity`.
    fn node_affinity(&self, domid: DomId) -> Result<CpuMap, HostError> {
        let d = xen_domid(domid)?;
        let phys = self.privcmd.physinfo().map_err(host_failed)?;
        hypercalls::node_affinity(&self.privcmd, d, phys.max_node_id + 1)
    }

    /// `libxl_cpupoolid_to_name`: `/local/pool/ID/name`.
    fn cpupool_name(&self, poolid: u32) -> Result<Option<String>, HostError> {
        store::read(self.store(), NONE, &format!("/local/pool/{poolid}/name"))
    }

    /// `libxl_vm_get_start_time`: `start_time` in the domain's `/vm`
    /// directory (whole seconds).
    fn domain_start_time(&self, domid: DomId) -> Result<Option<u64>, HostError> {
        let raw = self.raw_info(domid)?;
        let xs = self.store();
        let vm = match store::read(xs, NONE, &format!("{}/vm", devices::dom_path(domid)))? {
            Some(vm) => vm,
            None => format!("/vm/{}", Uuid(raw.handle)),
        };
        Ok(store::read(xs, NONE, &format!("{vm}/start_time"))?
            .as_deref()
            .and_then(store::leading_u64))
    }

    /// `libxl_domain_create_new` for PV guests: parses the configuration,
    /// builds the domain with the project's builder ([`crate::create`]),
    /// attaches its disks and vifs (starting their backends), unpauses it
    /// unless asked not to, and leaves a monitor behind that applies the
    /// `on_poweroff`/`on_reboot`/`on_crash` actions, as xl's daemonized
    /// child does. A failure destroys everything built so far.
    fn create(&mut self, request: &CreateRequest) -> Result<CreateOutcome, HostError> {
        let cfg = read_domain_config(&request.config_file, &request.extra_config)?;
        if request.dry_run {
            // As xl, a fresh uuid unless the file gives one.
            let uuid = match &cfg.uuid {
                Some(u) => u.0,
                None => crate::create::random_uuid().map_err(|e| HostError::Failed(e.to_string()))?,
            };
            return Ok(CreateOutcome::DryRun(libxl_config::parsed(&cfg, &Uuid(uuid))));
        }
        if self.domain_by_name(&cfg.name)?.is_some() {
            return Err(HostError::Invalid(format!(
                "domain with name {} already exists",
                cfg.name
            )));
        }
        let xs = &self.xs;
        let introduce = |domid: u32, mfn: u64, port: u32| -> Result<(), hypercall_abi::platform::XsError> {
            let d = hypercall_abi::xen::DomId::try_from(domid)
                .map_err(|_| hypercall_abi::platform::XsError::Invalid(format!("domain id {domid}")))?;
            xs.introduce_domain(d, mfn, port)
        };
        let built = match cfg.domain_type {
            crate::config::DomainType::Pv => crate::create::create_pv(&self.privcmd, &self.xs, &introduce, &cfg),
            crate::config::DomainType::Pvh => crate::create::pvh::create_pvh(&self.privcmd, &self.xs, &introduce, &cfg),
        }
        .map_err(|e| HostError::Failed(e.to_string()))?;
        let domid = built.domid;
        let devices = (|| -> Result<(), HostError> {
            for disk in &cfg.disks {
                self.attach_disk(domid, disk)?;
            }
            let mut nics = Vec::new();
            for vif in &cfg.vifs {
                nics.push(self.attach_nic(domid, vif)?);
            }
            // Where libxl keeps xl's domains' configurations, for `list -l`.
            let stored = libxl_config::created(&cfg, &Uuid(built.uuid), &nics);
            system::store_userdata(
                Path::new(system::XEN_LIB_DIR),
                domid,
                &Uuid(built.uuid),
                "libxl-json",
                &crate::commands::format::libxl_json(&stored),
            )?;
            if !request.paused {
                self.privcmd
                    .unpause_domain(xen_domid(domid)?)
                    .map_err(xen_failed(domid))?;
            }
            Ok(())
        })();
        if let Err(e) = devices {
            log::error!("{}: domain {domid} failed to start ({e}); destroying it", cfg.name);
            if let Err(d) = self.destroy(domid) {
                log::error!("destroying domain {domid}: {d}");
            }
            return Err(e);
        }
        if request.monitor {
            if let Err(e) = spawn_monitor(domid, &cfg.name, request) {
                log::warn!("{}: no monitor for domain {domid}: {e}", cfg.name);
            }
        }
        Ok(CreateOutcome::Created(domid))
    }

    /// `libxl_domain_pause`.
    fn pause(&mut self, domid: DomId) -> Result<(), HostError> {
        let d = xen_domid(domid)?;
        self.privcmd.pause_domain(d).map_err(xen_failed(domid))
    }

    /// `libxl_domain_unpause`.
    fn unpause(&mut self, domid: DomId) -> Result<(), HostError> {
        let d = xen_domid(domid)?;
        self.privcmd.unpause_domain(d).map_err(xen_failed(domid))
    }

    /// `libxl_domain_destroy` of a guest without device model: pause it,
    /// remove its devices (by force), its xenstore directories and libxl
    /// files, destroy it, and have xenstored forget it.
    fn destroy(&mut self, domid: DomId) -> Result<(), HostError> {
        let d = xen_domid(domid)?;
        let raw = self.raw_info(domid)?;
        let uuid = Uuid(raw.handle);
        if let Err(e) = self.privcmd.pause_domain(d) {
            log::warn!("pausing domain {domid} before destroying it: {e}");
        }
        self.destroy_devices(domid);
        let xs = self.store();
        let dom = devices::dom_path(domid);
        let vm = store::read(xs, NONE, &format!("{dom}/vm"))
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("/vm/{uuid}"));
        for path in [vm, dom.clone(), format!("/libxl/{domid}")] {
            if let Err(e) = store::rm(xs, NONE, &path) {
                log::error!("{e}");
            }
        }
        system::remove_userdata(Path::new(system::XEN_LIB_DIR), domid, &uuid);
        // Backends whose device was gone from xenstore already.
        for (kind, devid) in self.pids.recorded_devices(domid) {
            let device = DevicePaths::new(domid, devices::frontend_kind(&kind), devid, 0, &kind);
            backends::stop_backend(&self.pids, &device, Duration::ZERO);
        }
        self.pids.forget_domain(domid);
        self.privcmd.destroy_domain(d).map_err(xen_failed(domid))?;
        // Anything that wrote below the domain's directory between its
        // removal and the domain's end (a toolstack still finishing the
        // domain, a daemon publishing a node) created it again: remove it
        // once more, now that nothing of the domain runs.
        if let Err(e) = store::rm(xs, NONE, &dom) {
            log::debug!("{e}");
        }
        // xenstored notices the death by itself (VIRQ_DOM_EXC); telling it
        // spares it the wait.
        match self.xs.is_domain_introduced(d) {
            Ok(true) => {
                if let Err(e) = self.xs.release_domain(d) {
                    log::debug!("releasing domain {domid} in xenstore: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::debug!("asking xenstore about domain {domid}: {e}"),
        }
        self.shutdown_reported.remove(&domid);
        Ok(())
    }

    /// `libxl_domain_shutdown`: `poweroff` to `control/shutdown`.
    fn shutdown(&mut self, domid: DomId) -> Result<(), HostError> {
        self.pvcontrol(domid, "poweroff")
    }

    /// `libxl_domain_reboot`: `reboot` to `control/shutdown`.
    fn reboot(&mut self, domid: DomId) -> Result<(), HostError> {
        self.pvcontrol(domid, "reboot")
    }

    /// `libxl_send_trigger`: HVM guests only; a PV guest has no ACPI.
    fn send_trigger(&mut self, domid: DomId, trigger: Trigger, vcpu: u32) -> Result<(), HostError> {
        let d = xen_domid(domid)?;
        let raw = self.raw_info(domid)?;
        if raw.flags & XEN_DOMINF_HVM_GUEST == 0 {
            return Err(HostError::Unsupported(
                "ACPI triggers for PV domains (they have no ACPI)",
            ));
        }
        hypercalls::send_trigger(&self.privcmd, d, trigger, vcpu)
    }

    /// libxl's domain death watch: `@releaseDomain`, which xenstored
    /// fires when a domain shuts down or dies, and the domains' state
    /// looked at on each event (and every second).
    fn wait_domain_event(&mut self, domids: &[DomId]) -> Result<DomainEvent, HostError> {
        if domids.is_empty() {
            return Err(HostError::Invalid("waiting for no domain".into()));
        }
        if !self.death_watch {
            match self.xs.watch("@releaseDomain", DEATH_TOKEN) {
                Ok(()) => self.death_watch = true,
                Err(e) => {
                    log::warn!("cannot watch @releaseDomain ({e}); polling the domains instead")
                }
            }
        }
        // Ends: when a domain shuts down or dies; waits forever otherwise,
        // as xl does.
        loop {
            let privcmd = &self.privcmd;
            let lookup = |domid: DomId| match xen_domid(domid) {
                Ok(d) => privcmd.domain_info(d).map_err(xen_failed(domid)),
                Err(_) => Ok(None),
            };
            if let Some(event) = next_domain_event(domids, lookup, &mut self.shutdown_reported)? {
                return Ok(event);
            }
            self.xs
                .read_watch(Some(DEATH_POLL))
                .map_err(|e| store::failed("wait on", "@releaseDomain", e))?;
        }
    }

    /// `libxl_set_memory_target(domid, target, relative = 0, enforce =
    /// 1)`: the maximum reservation to the target plus
    /// `LIBXL_MAXMEM_CONSTANT`, a PoD target for HVM and PVH guests, and
    /// `memory/target` (and `/vm/UUID/memory`) in xenstore. The target may
    /// not exceed `memory/static-max`.
    fn set_memory_target(&mut self, domid: DomId, target_kib: u64) -> Result<(), HostError> {
        let d = xen_domid(domid)?;
        let raw = self.raw_info(domid)?;
        if domid == 0 {
            self.fill_dom0_memory_info(&raw)?;
        }
        let pv = self.domain_type(domid, &raw) == DomainType::Pv;
        let xs = self.store();
        let dom = devices::dom_path(domid);
        let uuid = Uuid(raw.handle);
        store::transaction(xs, |tx| {
            let read_kib = |node: &str| -> Result<u64, HostError> {
                let path = format!("{dom}/memory/{node}");
                store::read(xs, tx, &path)?
                    .as_deref()
                    .and_then(store::leading_u64)
                    .ok_or_else(|| {
                        HostError::Failed(format!("cannot get the memory information from {path}"))
                    })
            };
            read_kib("target")?;
            let static_max = read_kib("static-max")?;
            let videoram = store::read(xs, tx, &format!("{dom}/memory/videoram"))?
                .as_deref()
                .map_or(0, atoi);
            let plan = memory_plan(domid, target_kib, static_max, videoram)?;
            self.privcmd
                .set_max_mem(d, plan.max_kib)
                .map_err(xen_failed(domid))?;
            if !pv {
                hypercalls::set_pod_target(
                    &self.privcmd,
                    d,
                    (plan.target_kib + MAXMEM_CONSTANT_KIB) / KIB_PER_PAGE,
                )?;
            }
            store::write(
                xs,
                tx,
                &format!("{dom}/memory/target"),
                &plan.target_kib.to_string(),
            )?;
            store::write(
                xs,
                tx,
                &format!("/vm/{uuid}/memory"),
                &(plan.target_kib / 1024).to_string(),
            )
        })
    }

    /// `libxl_set_vcpuonline` for PV and PVH guests:
    /// `cpu/N/availability` for every vCPU.
    fn set_vcpus_online(&mut self, domid: DomId, count: u32) -> Result<(), HostError> {
        let raw = self.raw_info(domid)?;
        if count == 0 {
            return Err(HostError::Invalid("Requested 0 VCPUs!".into()));
        }
        if raw.max_vcpu_id == XEN_INVALID_MAX_VCPU_ID || count > raw.max_vcpu_id + 1 {
            return Err(HostError::Invalid(format!(
                "Requested {count} VCPUs, however maxcpus is {}!",
                raw.max_vcpu_id.wrapping_add(1)
            )));
        }
        if self.domain_type(domid, &raw) == DomainType::Hvm {
            return Err(HostError::Unsupported(
                "vCPU hot-plug of HVM guests (it goes through QEMU)",
            ));
        }
        let xs = self.store();
        let dom = devices::dom_path(domid);
        store::transaction(xs, |tx| {
            for vcpu in 0..=raw.max_vcpu_id {
                let state = if vcpu < count { "online" } else { "offline" };
                store::write(xs, tx, &format!("{dom}/cpu/{vcpu}/availability"), state)?;
            }
            Ok(())
        })
    }

    /// `libxl_list_vcpu`: each vCPU's state and hard and soft affinity.
    fn vcpu_info(&self, domid: DomId) -> Result<Vec<VcpuInfo>, HostError> {
        let d = xen_domid(domid)?;
        let raw = self.raw_info(domid)?;
        if raw.max_vcpu_id == XEN_INVALID_MAX_VCPU_ID {
            return Ok(Vec::new());
        }
        let nr_cpus = self.max_cpus()?;
        (0..=raw.max_vcpu_id)
            .map(|vcpu| {
                let info = self.privcmd.vcpu_info(d, vcpu).map_err(xen_failed(domid))?;
                let affinity = self
                    .privcmd
                    .vcpu_affinity(d, vcpu, nr_cpus)
                    .map_err(xen_failed(domid))?;
                Ok(VcpuInfo {
                    vcpuid: vcpu,
                    cpu: info.cpu,
                    online: info.is_online(),
                    running: info.is_running(),
                    blocked: info.is_blocked(),
                    time_ns: info.cpu_time,
                    hard_affinity: CpuMap::from_bytes(affinity.hard),
                    soft_affinity: CpuMap::from_bytes(affinity.soft),
                })
            })
            .collect()
    }

    /// The guest's `device/vbd` directories and their backends.
    fn block_devices(&self, domid: DomId) -> Result<Vec<BlockDevice>, HostError> {
        self.raw_info(domid)?;
        devices::block_devices(self.store(), domid)
    }

    /// `xl block-attach`: the spec parsed as `parse_disk_config_multistring`
    /// does, then [`XenHost::attach_disk`].
    fn block_attach(&mut self, domid: DomId, disk: &DiskSpec) -> Result<(), HostError> {
        let spec = config::DiskSpec::parse_parts(&disk.components)
            .map_err(|e| HostError::Invalid(e.to_string()))?;
        self.attach_disk(domid, &spec)
    }

    /// `libxl_device_disk_safe_remove` (wait for the guest, fail if it
    /// holds on) or, with `force`, `libxl_device_disk_destroy`.
    fn block_detach(&mut self, domid: DomId, devid: u32, force: bool) -> Result<(), HostError> {
        let mode = if force {
            DetachMode::Force
        } else {
            DetachMode::Safe
        };
        self.detach(domid, "vbd", devid, mode)
    }

    /// The guest's `device/vif` directories and their backends.
    fn network_devices(&self, domid: DomId) -> Result<Vec<NetworkDevice>, HostError> {
        self.raw_info(domid)?;
        devices::network_devices(self.store(), domid)
    }

    /// `xl network-attach`: the settings parsed as one specification,
    /// then [`XenHost::attach_nic`].
    fn network_attach(&mut self, domid: DomId, nic: &NicSpec) -> Result<(), HostError> {
        let (spec, warnings) =
            config::VifSpec::parse(&nic.settings.join(",")).map_err(|e| HostError::Invalid(e.to_string()))?;
        for warning in warnings {
            log::warn!("{warning}");
        }
        self.attach_nic(domid, &spec).map(drop)
    }

    /// `libxl_device_nic_remove`: wait for the guest, and remove by force
    /// if it does not let go.
    fn network_detach(&mut self, domid: DomId, devid: u32) -> Result<(), HostError> {
        self.detach(domid, "vif", devid, DetachMode::Auto)
    }

    /// `libxl_console_exec` / `libxl_primary_console_exec`: what
    /// `xenconsole` does, in this process (see the `console` module).
    fn console(
        &mut self,
        domid: DomId,
        kind: Option<ConsoleKind>,
        num: u32,
    ) -> Result<(), HostError> {
        console::attach(self, domid, kind, num)
    }

    /// `libxl_get_physinfo`.
    fn physinfo(&self) -> Result<PhysInfo, HostError> {
        let p = self.privcmd.physinfo().map_err(host_failed)?;
        let (sharing_freed_pages, sharing_used_frames) = hypercalls::sharing_pages(&self.privcmd);
        Ok(PhysInfo {
            nr_cpus: p.nr_cpus,
            max_cpu_id: p.max_cpu_id,
            nr_nodes: p.nr_nodes,
            cores_per_socket: p.cores_per_socket,
            threads_per_core: p.threads_per_core,
            cpu_khz: p.cpu_khz,
            hw_caps: p.hw_cap,
            virt_caps: virt_caps(p.caps()),
            total_pages: p.total_pages,
            free_pages: p.free_pages,
            outstanding_pages: p.outstanding_pages,
            sharing_freed_pages,
            sharing_used_frames,
        })
    }

    /// `libxl_get_version_info`: the `XENVER_*` queries.
    fn version_info(&self) -> Result<VersionInfo, HostError> {
        hypercalls::version_info(&self.privcmd)
    }

    /// `libxl_get_scheduler`: the default pool's scheduler.
    fn scheduler(&self) -> Result<String, HostError> {
        let id = self.privcmd.sched_id().map_err(host_failed)?;
        id.scheduler()
            .map(|s| s.name().to_owned())
            .map_err(|e| HostError::Failed(format!("unknown scheduler: {e}")))
    }

    /// `uname(2)`.
    fn node_info(&self) -> Result<NodeInfo, HostError> {
        system::node_info()
    }

    /// `libxl_get_freecpus`, counted.
    fn free_cpus(&self) -> Result<u32, HostError> {
        let map = hypercalls::free_cpus(&self.privcmd, self.max_cpus()?)?;
        Ok(map.as_bytes().iter().map(|b| b.count_ones()).sum())
    }

    /// `libxl_get_cpu_topology`.
    fn cpu_topology(&self) -> Result<Vec<Option<CpuTopology>>, HostError> {
        hypercalls::cpu_topology(&self.privcmd)
    }

    /// `libxl_get_pci_topology`: dom0's PCI devices and Xen's node for
    /// each.
    fn pci_topology(&self) -> Result<Vec<PciTopology>, HostError> {
        let devs = system::pci_devices();
        let nodes = hypercalls::pci_nodes(&self.privcmd, &devs)?;
        Ok(devs
            .iter()
            .zip(nodes)
            .map(|(dev, node)| PciTopology {
                seg: dev.seg,
                bus: dev.bus,
                devfn: dev.devfn,
                node,
            })
            .collect())
    }

    /// `libxl_get_numainfo`.
    fn numa_info(&self) -> Result<Vec<Option<NumaNode>>, HostError> {
        hypercalls::numa_info(&self.privcmd)
    }

    /// `XEN_SYSCTL_readconsole`, the whole ring.
    fn read_console_ring(&mut self, clear: bool) -> Result<String, HostError> {
        let bytes = self.privcmd.read_console_all(clear).map_err(host_failed)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `/proc/uptime`.
    fn dom0_uptime(&self) -> Result<u64, HostError> {
        system::dom0_uptime()
    }

    /// `time(2)` and `localtime_r(3)`.
    fn wallclock(&self) -> Result<WallClock, HostError> {
        system::wallclock()
    }
}

/// Reads and parses a domain configuration file (`/dev/null` or an empty
/// file gives only the `KEY=VALUE` overrides), logging its warnings and the
/// settings rxl does not use.
pub fn read_domain_config(
    path: &Path,
    overrides: &[String],
) -> Result<config::DomainConfig, HostError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostError::Os {
        what: format!("reading {}", path.display()),
        source,
    })?;
    let cfg = config::DomainConfig::parse(config::Source::file(path), &text, overrides)
        .map_err(|e| HostError::Failed(e.to_string()))?;
    for warning in &cfg.warnings {
        log::warn!("{warning}");
    }
    for ignored in cfg.ignored_settings() {
        log::warn!("{}: ignoring {:?}", path.display(), ignored.setting.key);
    }
    Ok(cfg)
}

/// Leaves a monitor for a new domain: `rxl __monitor DOMID CONFIG
/// [KEY=VALUE...]`, detached, logging to `/var/log/xen/rxl-NAME.log`.
fn spawn_monitor(domid: DomId, name: &str, request: &CreateRequest) -> Result<(), HostError> {
    let me = std::env::current_exe().map_err(|source| HostError::Os {
        what: "finding rxl's own executable".into(),
        source,
    })?;
    let mut args = vec![
        "__monitor".to_owned(),
        domid.to_string(),
        request.config_file.to_string_lossy().into_owned(),
    ];
    args.extend(request.extra_config.iter().cloned());
    let log = std::path::PathBuf::from(format!("/var/log/xen/rxl-{name}.log"));
    let child = backends::spawn_detached(&me, &args, &log)?;
    backends::detach(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::xen::domctl::XEN_DOMINF_SHUTDOWNSHIFT;

    fn raw(domain: u16, flags: u32) -> XenDomctlGetdomaininfo {
        XenDomctlGetdomaininfo {
            domain,
            flags,
            tot_pages: 262_144,
            max_pages: 262_400,
            outstanding_pages: 2,
            nr_online_vcpus: 2,
            max_vcpu_id: 3,
            cpu_time: 5_000_000_000,
            handle: [7; 16],
            cpupool: 1,
            ..Default::default()
        }
    }

    #[test]
    fn domain_records_convert_as_libxl_does() {
        let flags = XEN_DOMINF_SHUTDOWN
            | XEN_DOMINF_PAUSED
            | (3 << XEN_DOMINF_SHUTDOWNSHIFT)
            | XEN_DOMINF_XS_DOMAIN;

        let info = domain_info_from(&raw(4, flags), Some("web".into()), false);

        assert_eq!(info.domid, 4);
        assert_eq!(info.name.as_deref(), Some("web"));
        assert_eq!(info.current_memkb, 1_048_576);
        assert_eq!(info.max_memkb, 1_049_600);
        assert_eq!(info.outstanding_memkb, 8);
        assert_eq!(
            (info.vcpu_online, info.vcpu_max_id, info.cpupool),
            (2, 3, 1)
        );
        assert_eq!(info.state.shutdown, Some(ShutdownReason::Crash));
        assert!(info.state.paused && !info.state.running && !info.state.dying);
        assert!(info.xenstore_domain);
        assert_eq!(info.uuid, Uuid([7; 16]));
    }

    #[test]
    fn dom0_without_a_name_node_is_domain_0() {
        assert_eq!(
            domain_info_from(&raw(0, 0), None, false).name.as_deref(),
            Some("Domain-0")
        );
        assert_eq!(domain_info_from(&raw(5, 0), None, false).name, None);
    }

    #[test]
    fn domain_ids_beyond_xen_s_are_no_domain() {
        assert_eq!(xen_domid(5).unwrap(), 5);
        assert!(matches!(
            xen_domid(0x7ff0),
            Err(HostError::DomainNotFound(0x7ff0))
        ));
        assert!(matches!(
            xen_domid(70_000),
            Err(HostError::DomainNotFound(70_000))
        ));
    }

    #[test]
    fn memory_targets_follow_libxl() {
        let plan = memory_plan(3, 512 * 1024, 1024 * 1024, 0).unwrap();
        assert_eq!(
            plan,
            MemoryPlan {
                target_kib: 512 * 1024,
                max_kib: 512 * 1024 + 1024
            }
        );

        // videoram is held back from the target but not from the maximum.
        let plan = memory_plan(3, 512 * 1024, 1024 * 1024, 8 * 1024).unwrap();
        assert_eq!((plan.target_kib, plan.max_kib), (504 * 1024, 513 * 1024));
        // "-1" (no video memory) counts as none.
        assert_eq!(memory_plan(3, 1000, 2000, -1).unwrap().target_kib, 1000);

        assert!(matches!(
            memory_plan(3, 2048 * 1024, 1024 * 1024, 0),
            Err(HostError::Invalid(_))
        ));
        assert!(matches!(
            memory_plan(0, 64 * 1024, 1024 * 1024, 0),
            Err(HostError::Invalid(_))
        ));
        assert!(memory_plan(5, 64 * 1024, 1024 * 1024, 0).is_ok());
    }

    #[test]
    fn atoi_is_c_s() {
        assert_eq!(atoi("-1"), -1);
        assert_eq!(atoi(" 8192kb"), 8192);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi(""), 0);
    }

    #[test]
    fn domain_events_report_death_and_shutdown_once() {
        let mut reported = BTreeSet::new();
        let shut = XEN_DOMINF_SHUTDOWN | (1 << XEN_DOMINF_SHUTDOWNSHIFT);
        let table = |flags4: Option<u32>| {
            move |domid: DomId| -> Result<Option<XenDomctlGetdomaininfo>, HostError> {
                Ok(match (domid, flags4) {
                    (4, Some(flags)) => Some(raw(4, flags)),
                    (5, _) => Some(raw(5, 0)),
                    _ => None,
                })
            }
        };

        assert_eq!(
            next_domain_event(&[5, 4], table(Some(0)), &mut reported).unwrap(),
            None
        );
        assert_eq!(
            next_domain_event(&[5, 4], table(Some(shut)), &mut reported).unwrap(),
            Some(DomainEvent::Shutdown {
                domid: 4,
                reason: ShutdownReason::Reboot
            })
        );
        assert_eq!(
            next_domain_event(&[5, 4], table(Some(shut)), &mut reported).unwrap(),
            None
        );
        assert_eq!(
            next_domain_event(&[5, 4], table(Some(shut | XEN_DOMINF_DYING)), &mut reported)
                .unwrap(),
            Some(DomainEvent::Death { domid: 4 })
        );
        assert_eq!(
            next_domain_event(&[5, 4], table(None), &mut reported).unwrap(),
            Some(DomainEvent::Death { domid: 4 })
        );
        assert!(reported.is_empty());
    }

    #[test]
    fn capabilities_map_one_to_one() {
        let caps = virt_caps(PhysCaps::PV | PhysCaps::HAP | PhysCaps::GNTTAB_V1);

        assert!(caps.pv && caps.hap && caps.gnttab_v1);
        assert!(!caps.hvm && !caps.shadow && !caps.gnttab_v2 && !caps.directio);
    }

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        random_bytes(&mut a);
        random_bytes(&mut b);
        assert_ne!(a, b);
    }
}

