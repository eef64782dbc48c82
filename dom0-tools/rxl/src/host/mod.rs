//! What `rxl`'s commands need from the hypervisor, the store and dom0.
//!
//! [`Host`] is the one seam between the commands and Xen: the commands
//! only ever talk to a `dyn Host`, in rxl's own types (no raw ABI structs),
//! so that they run against `fake::FakeHost` in tests (built for the
//! crate's own tests and with the `testing` feature). The real
//! implementation (hypercalls through `/dev/xen`, xenstore) is chosen at the
//! edge by [`connect`].
//!
//! The types mirror what libxl reports to xl (`libxl_dominfo`,
//! `libxl_physinfo`, `libxl_version_info`, `libxl_vcpuinfo`,
//! `libxl_diskinfo`, `libxl_nicinfo`), reduced to the fields xl prints.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod xen;

/// A domain id (`domid_t` widened as libxl does).
pub type DomId = u32;

/// libxl's error codes (`libxl_error` in `libxl_types.idl`) that xl prints
/// as `rc=N` and that `xl create` turns into its exit status.
pub mod rc {
    /// `ERROR_FAIL`.
    pub const FAIL: i32 = -3;
    /// `ERROR_NI`: not implemented.
    pub const NI: i32 = -4;
    /// `ERROR_NOMEM`.
    pub const NOMEM: i32 = -5;
    /// `ERROR_INVAL`.
    pub const INVAL: i32 = -6;
    /// `ERROR_NOPARAVIRT`.
    pub const NOPARAVIRT: i32 = -10;
    /// `ERROR_DEVICE_EXISTS`.
    pub const DEVICE_EXISTS: i32 = -17;
    /// `ERROR_DOMAIN_NOTFOUND`.
    pub const DOMAIN_NOTFOUND: i32 = -21;
    /// `ERROR_NOTFOUND`.
    pub const NOTFOUND: i32 = -23;
}

/// Why a [`Host`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No domain has this id.
    #[error("domain {0} does not exist")]
    DomainNotFound(DomId),
    /// The guest has no PV control interface (no `control/shutdown`
    /// watch), so it cannot be asked to shut down or reboot; an ACPI
    /// trigger is the fallback.
    #[error("domain {0} has no PV control interface")]
    NoParavirt(DomId),
    /// The domain has no device with this id.
    #[error("domain {domid} has no {kind} device {devid}")]
    DeviceNotFound {
        /// The frontend domain.
        domid: DomId,
        /// `vbd` or `vif`.
        kind: &'static str,
        /// The device id.
        devid: u32,
    },
    /// A device with this id is already attached.
    #[error("domain {domid} already has a {kind} device {devid}")]
    DeviceExists {
        /// The frontend domain.
        domid: DomId,
        /// `vbd` or `vif`.
        kind: &'static str,
        /// The device id.
        devid: u32,
    },
    /// A request carried a value the host rejects.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// This host implementation cannot do this (yet).
    #[error("{0} is not supported by this host")]
    Unsupported(&'static str),
    /// A system call or device file failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, described.
    #[error("{0}")]
    Failed(String),
}

impl HostError {
    /// The libxl error code xl would have printed for this failure.
    pub fn rc(&self) -> i32 {
        match self {
            HostError::DomainNotFound(_) => rc::DOMAIN_NOTFOUND,
            HostError::NoParavirt(_) => rc::NOPARAVIRT,
            HostError::DeviceNotFound { .. } => rc::NOTFOUND,
            HostError::DeviceExists { .. } => rc::DEVICE_EXISTS,
            HostError::Invalid(_) => rc::INVAL,
            HostError::Unsupported(_) => rc::NI,
            HostError::Os { .. } | HostError::Failed(_) => rc::FAIL,
        }
    }
}

/// A domain's UUID (`xen_domain_handle_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Uuid(pub [u8; 16]);

impl fmt::Display for Uuid {
    /// `LIBXL_UUID_FMT`: 8-4-4-4-12 lower-case hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a domain shut down (`SHUTDOWN_*` in `xen/include/public/sched.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_suspend`.
    Suspend,
    /// `SHUTDOWN_crash`.
    Crash,
    /// `SHUTDOWN_watchdog`.
    Watchdog,
    /// `SHUTDOWN_soft_reset`.
    SoftReset,
    /// A code this version does not know.
    Other(u8),
}

impl ShutdownReason {
    /// The reason from its `SHUTDOWN_*` code.
    pub fn from_code(code: u8) -> Self {
        match code {
            0 => ShutdownReason::Poweroff,
            1 => ShutdownReason::Reboot,
            2 => ShutdownReason::Suspend,
            3 => ShutdownReason::Crash,
            4 => ShutdownReason::Watchdog,
            5 => ShutdownReason::SoftReset,
            other => ShutdownReason::Other(other),
        }
    }

    /// The `SHUTDOWN_*` code.
    pub fn code(self) -> u8 {
        match self {
            ShutdownReason::Poweroff => 0,
            ShutdownReason::Reboot => 1,
            ShutdownReason::Suspend => 2,
            ShutdownReason::Crash => 3,
            ShutdownReason::Watchdog => 4,
            ShutdownReason::SoftReset => 5,
            ShutdownReason::Other(code) => code,
        }
    }
}

/// The scheduling state flags of a domain (`XEN_DOMINF_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DomainState {
    /// A vCPU is running on a physical CPU.
    pub running: bool,
    /// All vCPUs are blocked.
    pub blocked: bool,
    /// Paused by the toolstack.
    pub paused: bool,
    /// Shut down, and why; `None` while not shut down.
    pub shutdown: Option<ShutdownReason>,
    /// Being destroyed.
    pub dying: bool,
}

/// What xl knows of one domain (`libxl_dominfo`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DomainInfo {
    /// The domain id.
    pub domid: DomId,
    /// `/local/domain/<domid>/name`; `None` when the node is missing.
    pub name: Option<String>,
    /// The domain's UUID.
    pub uuid: Uuid,
    /// The state flags.
    pub state: DomainState,
    /// Pages the domain owns, in KiB (`tot_pages`).
    pub current_memkb: u64,
    /// Pages claimed but not yet allocated, in KiB.
    pub outstanding_memkb: u64,
    /// The maximum reservation, in KiB (`max_pages`).
    pub max_memkb: u64,
    /// Online vCPUs.
    pub vcpu_online: u32,
    /// The highest vCPU id.
    pub vcpu_max_id: u32,
    /// CPU time used, in nanoseconds.
    pub cpu_time_ns: u64,
    /// The XSM security id.
    pub ssidref: u32,
    /// The FLASK label of `ssidref`, when XSM/FLASK is on.
    pub ssid_label: Option<String>,
    /// The cpupool id.
    pub cpupool: u32,
    /// `XEN_DOMINF_xs_domain`: the xenstore domain, never shut down by
    /// `shutdown -a`.
    pub xenstore_domain: bool,
    /// A device-model stub domain (libxl's `libxl_is_stubdom`); left out
    /// of `vm-list` and `uptime`.
    pub stubdom: bool,
}

/// A set of physical CPUs (or NUMA nodes), as libxl's `libxl_bitmap`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuMap {
    bits: Vec<u8>,
}

impl CpuMap {
    /// An empty map.
    pub fn new() -> Self {
        CpuMap::default()
    }

    /// A map from libxl's byte layout (bit `i % 8` of byte `i / 8`).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        CpuMap { bits: bytes }
    }

    /// A map with the given CPUs set.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> Self {
        let mut map = CpuMap::new();
        for cpu in cpus {
            map.set(cpu);
        }
        map
    }

    /// A map with CPUs `0..n` set.
    pub fn first(n: u32) -> Self {
        CpuMap::from_cpus(0..n)
    }

    /// Adds `cpu`.
    pub fn set(&mut self, cpu: u32) {
        let byte = (cpu / 8) as usize;
        if self.bits.len() <= byte {
            self.bits.resize(byte + 1, 0);
        }
        self.bits[byte] |= 1 << (cpu % 8);
    }

    /// Whether `cpu` is in the map.
    pub fn is_set(&self, cpu: u32) -> bool {
        self.bits
            .get((cpu / 8) as usize)
            .is_some_and(|b| b & (1 << (cpu % 8)) != 0)
    }

    /// The map in libxl's byte layout.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }
}

/// One vCPU of a domain (`libxl_vcpuinfo`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VcpuInfo {
    /// The vCPU id.
    pub vcpuid: u32,
    /// The physical CPU it last ran on.
    pub cpu: u32,
    /// Online (not hot-unplugged).
    pub online: bool,
    /// Running now.
    pub running: bool,
    /// Blocked.
    pub blocked: bool,
    /// CPU time used, in nanoseconds.
    pub time_ns: u64,
    /// Hard affinity.
    pub hard_affinity: CpuMap,
    /// Soft affinity.
    pub soft_affinity: CpuMap,
}

/// The virtualization capabilities of the host (`XEN_SYSCTL_PHYSCAP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtCaps {
    /// PV guests.
    pub pv: bool,
    /// HVM guests.
    pub hvm: bool,
    /// Device pass-through (IOMMU).
    pub directio: bool,
    /// Hardware assisted paging.
    pub hap: bool,
    /// Shadow paging.
    pub shadow: bool,
    /// IOMMU shares the HAP page tables.
    pub iommu_hap_pt_share: bool,
    /// Processor trace for guests.
    pub vmtrace: bool,
    /// Virtual PMU.
    pub vpmu: bool,
    /// Grant table v1.
    pub gnttab_v1: bool,
    /// Grant table v2.
    pub gnttab_v2: bool,
}

/// The physical host (`libxl_physinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PhysInfo {
    /// Online physical CPUs.
    pub nr_cpus: u32,
    /// The highest physical CPU id.
    pub max_cpu_id: u32,
    /// NUMA nodes.
    pub nr_nodes: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// Threads per core.
    pub threads_per_core: u32,
    /// CPU frequency in kHz.
    pub cpu_khz: u32,
    /// The x86 feature words (`hw_cap`).
    pub hw_caps: [u32; 8],
    /// What guests the host can run.
    pub virt_caps: VirtCaps,
    /// All memory, in pages.
    pub total_pages: u64,
    /// Free memory, in pages (claims included).
    pub free_pages: u64,
    /// Claimed, not yet allocated, in pages.
    pub outstanding_pages: u64,
    /// Pages freed by page sharing.
    pub sharing_freed_pages: u64,
    /// Frames used by page sharing.
    pub sharing_used_frames: u64,
}

/// The hypervisor's version and build (`libxl_version_info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionInfo {
    /// `XENVER_version` high half.
    pub major: u32,
    /// `XENVER_version` low half.
    pub minor: u32,
    /// `XENVER_extraversion`, e.g. `.0`.
    pub extra: String,
    /// `XENVER_capabilities`, e.g. `xen-3.0-x86_64 hvm-3.0-x86_32 ...`.
    pub capabilities: String,
    /// `XENVER_changeset`.
    pub changeset: String,
    /// `XENVER_commandline`.
    pub commandline: String,
    /// `XENVER_compile_info`: compiler.
    pub compiler: String,
    /// Who built it.
    pub compile_by: String,
    /// Where it was built.
    pub compile_domain: String,
    /// When it was built.
    pub compile_date: String,
    /// `XENVER_build_id`, hex.
    pub build_id: String,
    /// `XENVER_pagesize`.
    pub pagesize: u32,
    /// `XENVER_platform_parameters`: `virt_start`.
    pub virt_start: u64,
}

/// dom0's `uname(2)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Host name.
    pub nodename: String,
    /// Kernel release.
    pub release: String,
    /// Kernel version.
    pub version: String,
    /// Machine.
    pub machine: String,
}

/// Where one physical CPU sits (`libxl_cputopology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTopology {
    /// Core id.
    pub core: u32,
    /// Socket id.
    pub socket: u32,
    /// NUMA node.
    pub node: u32,
}

/// The NUMA node of one PCI device (`libxl_pcitopology`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciTopology {
    /// PCI segment.
    pub seg: u16,
    /// Bus.
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
    /// Node; `None` when unknown.
    pub node: Option<u32>,
}

/// One NUMA node (`libxl_numainfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NumaNode {
    /// Memory, in bytes.
    pub size: u64,
    /// Free memory, in bytes.
    pub free: u64,
    /// Distance to each node.
    pub distances: Vec<u32>,
}

/// A virtual block device as xenstore shows it (what `libxl_diskinfo`
/// reads from the frontend and libxl nodes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockDevice {
    /// The device id (`vbd/<devid>`).
    pub devid: u32,
    /// The guest device name (`xvda`), from the backend's `dev` node.
    pub vdev: Option<String>,
    /// The backend domain.
    pub backend_id: DomId,
    /// The frontend domain.
    pub frontend_id: DomId,
    /// Frontend `state`; `None` when missing.
    pub state: Option<u32>,
    /// Frontend `event-channel`.
    pub evtch: Option<u32>,
    /// Frontend `ring-ref`.
    pub ring_ref: Option<u32>,
    /// The backend's xenstore path.
    pub backend_path: String,
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    /// `LIBXL_MAC_FMT`: lower-case, colon separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (xx:xx:xx:xx:xx:xx)")]
pub struct BadMacAddr(pub String);

impl FromStr for MacAddr {
    type Err = BadMacAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMacAddr(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

/// A virtual network interface as xenstore shows it (`libxl_nicinfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkDevice {
    /// The device id (`vif/<devid>`).
    pub devid: u32,
    /// The backend domain.
    pub backend_id: DomId,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// Frontend `state`.
    pub state: Option<u32>,
    /// Frontend `event-channel`.
    pub evtch: Option<u32>,
    /// Frontend `tx-ring-ref`.
    pub tx_ring_ref: Option<u32>,
    /// Frontend `rx-ring-ref`.
    pub rx_ring_ref: Option<u32>,
    /// The backend's xenstore path.
    pub backend_path: String,
}

/// A disk to attach: the `xl-disk-configuration(5)` components as given
/// on the command line (`block-attach DOMAIN COMPONENT...`).
///
/// Deliberately opaque here: the host parses it with the `xl.cfg` disk
/// parser (the [`crate::config`] module), as xl's
/// `parse_disk_config_multistring` does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskSpec {
    /// The spec's components, e.g. `["/dev/vg/guest", "xvdb", "w"]` or
    /// `["format=raw,vdev=xvdb,target=/img"]`.
    pub components: Vec<String>,
}

/// A network interface to attach: the `xl-network-configuration(5)`
/// `key=value` settings given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NicSpec {
    /// The settings, e.g. `["bridge=xenbr0", "mac=00:16:3e:00:00:01"]`.
    pub settings: Vec<String>,
}

/// Which console of a domain to attach to (`libxl_console_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleKind {
    /// The PV console(s).
    Pv,
    /// The emulated serial port.
    Serial,
    /// The Arm virtual UART.
    Vuart,
}

/// An event injected into a domain (`libxl_trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// ACPI power button.
    Power,
    /// ACPI sleep button.
    Sleep,
    /// NMI.
    Nmi,
    /// INIT IPI.
    Init,
    /// Reset.
    Reset,
    /// Resume from S3.
    S3Resume,
}

/// What [`Host::wait_domain_event`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainEvent {
    /// The domain shut down (it still exists).
    Shutdown {
        /// Which domain.
        domid: DomId,
        /// Why.
        reason: ShutdownReason,
    },
    /// The domain is gone.
    Death {
        /// Which domain.
        domid: DomId,
    },
}

/// `xl create`'s request: where the configuration comes from and how to
/// run the domain. The host parses the configuration, builds the domain
/// and, unless asked otherwise, monitors it (xl's daemonized child).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateRequest {
    /// The `xl.cfg` file; `/dev/null` means "only `extra_config`".
    pub config_file: PathBuf,
    /// `key=value` lines from the command line, appended to the file.
    pub extra_config: Vec<String>,
    /// `-n`/`-N`: parse only, and return the resulting configuration.
    pub dry_run: bool,
    /// `-p`: leave the domain paused.
    pub paused: bool,
    /// `-c`: attach to the console once created (before unpausing).
    pub console_autoconnect: bool,
    /// `-V`/`-A`: start a VNC viewer.
    pub vnc: bool,
    /// `-A`: pass the VNC password to the viewer.
    pub vnc_autopass: bool,
    /// `-d`: print the parsed configuration to stderr.
    pub debug: bool,
    /// Fork a monitor into the background (unset by `-F` and `-e`).
    pub daemonize: bool,
    /// Monitor the domain for reboot/crash actions (unset by `-e`).
    pub monitor: bool,
    /// `-i`: ignore `xl.conf`'s global affinity masks.
    pub ignore_global_affinity_masks: bool,
}

/// What [`Host::create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// The domain exists with this id.
    Created(DomId),
    /// Dry run: the configuration as libxl JSON (`libxl_domain_config`).
    DryRun(serde_json::Value),
}

/// The current time, for `uptime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WallClock {
    /// Seconds since the Unix epoch.
    pub epoch_secs: u64,
    /// Local time of day: hour.
    pub hour: u8,
    /// Local time of day: minute.
    pub minute: u8,
    /// Local time of day: second.
    pub second: u8,
}

/// A Xen host as the commands see it.
///
/// Reads take `&self`; operations that change a domain or the host take
/// `&mut self`. Every method maps to one libxl call xl makes (named in
/// its documentation), so the real implementation can follow libxl.
pub trait Host {
    /// All domains, by increasing domid (`libxl_list_domain`).
    fn list_domains(&self) -> Result<Vec<DomainInfo>, HostError>;

    /// One domain (`libxl_domain_info`); [`HostError::DomainNotFound`]
    /// when there is none.
    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, HostError>;

    /// The id of the domain called `name` (`libxl_name_to_domid`), if any.
    fn domain_by_name(&self, name: &str) -> Result<Option<DomId>, HostError> {
        Ok(self
            .list_domains()?
            .into_iter()
            .find(|d| d.name.as_deref() == Some(name))
            .map(|d| d.domid))
    }

    /// The configuration the domain was built from, as libxl JSON
    /// (`libxl_retrieve_domain_configuration`), or `None` when none is
    /// stored (dom0).
    fn domain_config(&self, domid: DomId) -> Result<Option<serde_json::Value>, HostError>;

    /// The domain's NUMA node affinity (`libxl_domain_get_nodeaffinity`).
    fn node_affinity(&self, domid: DomId) -> Result<CpuMap, HostError>;

    /// The name of a cpupool (`libxl_cpupoolid_to_name`).
    fn cpupool_name(&self, poolid: u32) -> Result<Option<String>, HostError>;

    /// When the domain was started, in seconds since the epoch
    /// (`/vm/<uuid>/start_time`, `libxl_vm_get_start_time`); `None` when
    /// not recorded.
    fn domain_start_time(&self, domid: DomId) -> Result<Option<u64>, HostError>;

    /// Builds a domain, or parses its configuration for a dry run.
    fn create(&mut self, request: &CreateRequest) -> Result<CreateOutcome, HostError>;

    /// Pauses a domain (`libxl_domain_pause`).
    fn pause(&mut self, domid: DomId) -> Result<(), HostError>;

    /// Unpauses a domain (`libxl_domain_unpause`).
    fn unpause(&mut self, domid: DomId) -> Result<(), HostError>;

    /// Destroys a domain at once (`libxl_domain_destroy`).
    fn destroy(&mut self, domid: DomId) -> Result<(), HostError>;

    /// Asks the guest to power off through `control/shutdown`
    /// (`libxl_domain_shutdown`); [`HostError::NoParavirt`] when it has
    /// no PV control interface.
    fn shutdown(&mut self, domid: DomId) -> Result<(), HostError>;

    /// Asks the guest to reboot (`libxl_domain_reboot`); as `shutdown`.
    fn reboot(&mut self, domid: DomId) -> Result<(), HostError>;

    /// Injects an event (`libxl_send_trigger`).
    fn send_trigger(&mut self, domid: DomId, trigger: Trigger, vcpu: u32) -> Result<(), HostError>;

    /// Blocks until one of `domids` shuts down or dies, and reports it
    /// (libxl's domain death watch and `libxl_event_wait`).
    fn wait_domain_event(&mut self, domids: &[DomId]) -> Result<DomainEvent, HostError>;

    /// Sets the balloon target, in KiB, raising the maximum reservation
    /// to match (`libxl_set_memory_target(.., relative=0, enforce=1)`).
    fn set_memory_target(&mut self, domid: DomId, target_kib: u64) -> Result<(), HostError>;

    /// Brings vCPUs `0..count` online and the others offline
    /// (`libxl_set_vcpuonline`).
    fn set_vcpus_online(&mut self, domid: DomId, count: u32) -> Result<(), HostError>;

    /// The domain's vCPUs (`libxl_list_vcpu`).
    fn vcpu_info(&self, domid: DomId) -> Result<Vec<VcpuInfo>, HostError>;

    /// The domain's virtual block devices (`libxl_device_disk_list` and
    /// `libxl_device_disk_getinfo`).
    fn block_devices(&self, domid: DomId) -> Result<Vec<BlockDevice>, HostError>;

    /// Hot-plugs a disk (`libxl_device_disk_add`).
    fn block_attach(&mut self, domid: DomId, disk: &DiskSpec) -> Result<(), HostError>;

    /// Unplugs a disk: gracefully, or at once when `force`
    /// (`libxl_device_disk_safe_remove` / `_destroy`).
    fn block_detach(&mut self, domid: DomId, devid: u32, force: bool) -> Result<(), HostError>;

    /// The domain's virtual network interfaces (`libxl_device_nic_list`
    /// and `libxl_device_nic_getinfo`).
    fn network_devices(&self, domid: DomId) -> Result<Vec<NetworkDevice>, HostError>;

    /// Hot-plugs a network interface (`libxl_device_nic_add`).
    fn network_attach(&mut self, domid: DomId, nic: &NicSpec) -> Result<(), HostError>;

    /// Unplugs a network interface (`libxl_device_nic_remove`).
    fn network_detach(&mut self, domid: DomId, devid: u32) -> Result<(), HostError>;

    /// Connects the terminal to a console of the domain until the user
    /// leaves it (`libxl_console_exec`); `kind` `None` is the primary
    /// console.
    fn console(
        &mut self,
        domid: DomId,
        kind: Option<ConsoleKind>,
        num: u32,
    ) -> Result<(), HostError>;

    /// The physical host (`libxl_get_physinfo`).
    fn physinfo(&self) -> Result<PhysInfo, HostError>;

    /// The hypervisor's version (`libxl_get_version_info`).
    fn version_info(&self) -> Result<VersionInfo, HostError>;

    /// The default scheduler's name, e.g. `credit2` (`libxl_get_scheduler`).
    fn scheduler(&self) -> Result<String, HostError>;

    /// dom0's `uname`.
    fn node_info(&self) -> Result<NodeInfo, HostError>;

    /// How many physical CPUs are in no cpupool (`libxl_get_freecpus`).
    fn free_cpus(&self) -> Result<u32, HostError>;

    /// Each physical CPU's place, `None` for absent ones
    /// (`libxl_get_cpu_topology`).
    fn cpu_topology(&self) -> Result<Vec<Option<CpuTopology>>, HostError>;

    /// The PCI devices' nodes (`libxl_get_pci_topology`).
    fn pci_topology(&self) -> Result<Vec<PciTopology>, HostError>;

    /// Each NUMA node, `None` for absent ones (`libxl_get_numainfo`).
    fn numa_info(&self) -> Result<Vec<Option<NumaNode>>, HostError>;

    /// The hypervisor's console ring, optionally cleared after reading
    /// (`XEN_SYSCTL_readconsole`).
    fn read_console_ring(&mut self, clear: bool) -> Result<String, HostError>;

    /// dom0's uptime in whole seconds (`/proc/uptime`).
    fn dom0_uptime(&self) -> Result<u64, HostError>;

    /// The current time.
    fn wallclock(&self) -> Result<WallClock, HostError>;
}

/// Why [`connect`] could not reach Xen.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The hypercall device cannot be opened.
    #[error("{0} (is this dom0 of a Xen host?)")]
    Privcmd(#[source] xen_linux::OpenError),
    /// Neither xenstored's socket nor the xenbus device answers.
    #[error("{0} (is xenstored running?)")]
    Xenstore(#[source] hypercall_abi::platform::XsError),
}

/// Connects to the Xen host rxl runs on: [`xen::XenHost`].
pub fn connect() -> Result<Box<dyn Host>, ConnectError> {
    Ok(Box::new(xen::XenHost::open()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_prints_as_libxl_does() {
        let uuid = Uuid([
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ]);

        assert_eq!(uuid.to_string(), "12345678-9abc-def0-0123-456789abcdef");
    }

    #[test]
    fn mac_round_trips() {
        let mac: MacAddr = "00:16:3E:0a:b:ff".parse().unwrap();

        assert_eq!(mac.to_string(), "00:16:3e:0a:0b:ff");
        assert!("00:16:3e:0a:0b".parse::<MacAddr>().is_err());
        assert!("00:16:3e:0a:0b:ff:00".parse::<MacAddr>().is_err());
        assert!("00:16:3e:0a:0b:xyz".parse::<MacAddr>().is_err());
    }

    #[test]
    fn cpumap_sets_and_tests_bits() {
        let map = CpuMap::from_cpus([0, 9]);

        assert!(map.is_set(0) && map.is_set(9));
        assert!(!map.is_set(1) && !map.is_set(100));
        assert_eq!(map.as_bytes(), &[0x01, 0x02]);
    }

    #[test]
    fn connect_without_xen_asks_whether_this_is_dom0() {
        if std::path::Path::new("/dev/xen/privcmd").exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = connect().err().unwrap();

        assert!(
            err.to_string().contains("is this dom0 of a Xen host?"),
            "{err}"
        );
    }
}
