//! An in-memory [`Host`] for tests: domains, devices and host facts are
//! plain data the test sets up, operations change that data and are
//! recorded in [`FakeHost::calls`], and events for `-w` come from a queue
//! the test fills.

use std::collections::{BTreeMap, VecDeque};

use super::{
    BlockDevice, ConsoleKind, CpuMap, CpuTopology, CreateOutcome, CreateRequest, DiskSpec, DomId,
    DomainEvent, DomainInfo, DomainState, Host, HostError, NetworkDevice, NicSpec, NodeInfo,
    NumaNode, PciTopology, PhysInfo, ShutdownReason, Trigger, Uuid, VcpuInfo, VersionInfo,
    WallClock,
};

/// One domain of a [`FakeHost`].
#[derive(Debug, Clone, Default)]
pub struct FakeDomain {
    /// What `list` reports.
    pub info: DomainInfo,
    /// The stored configuration (`list -l`).
    pub config: Option<serde_json::Value>,
    /// The vCPUs.
    pub vcpus: Vec<VcpuInfo>,
    /// Block devices.
    pub disks: Vec<BlockDevice>,
    /// Network interfaces.
    pub nics: Vec<NetworkDevice>,
    /// `/vm/<uuid>/start_time`.
    pub start_time: Option<u64>,
    /// Whether the guest has PV drivers (answers `control/shutdown`).
    pub pv_control: bool,
    /// NUMA node affinity.
    pub node_affinity: CpuMap,
}

impl FakeDomain {
    /// A running PV-capable domain with `vcpus` online vCPUs on host CPU 0
    /// and `mem_mib` MiB of memory.
    pub fn new(domid: DomId, name: &str, mem_mib: u64, vcpus: u32) -> Self {
        let mut uuid = [0u8; 16];
        uuid[12..].copy_from_slice(&domid.to_be_bytes());
        FakeDomain {
            info: DomainInfo {
                domid,
                name: Some(name.to_owned()),
                uuid: Uuid(uuid),
                state: DomainState {
                    blocked: true,
                    ..DomainState::default()
                },
                current_memkb: mem_mib * 1024,
                max_memkb: mem_mib * 1024,
                vcpu_online: vcpus,
                vcpu_max_id: vcpus.saturating_sub(1),
                ..DomainInfo::default()
            },
            vcpus: (0..vcpus)
                .map(|v| VcpuInfo {
                    vcpuid: v,
                    online: true,
                    blocked: true,
                    hard_affinity: CpuMap::first(64),
                    soft_affinity: CpuMap::first(64),
                    ..VcpuInfo::default()
                })
                .collect(),
            pv_control: true,
            ..FakeDomain::default()
        }
    }
}

/// An in-memory host.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// The domains, by id.
    pub domains: BTreeMap<DomId, FakeDomain>,
    /// `physinfo`.
    pub physinfo: PhysInfo,
    /// `version_info`; `None` makes it fail.
    pub version: Option<VersionInfo>,
    /// The scheduler's name.
    pub scheduler: String,
    /// `uname`.
    pub node: NodeInfo,
    /// CPUs in no pool.
    pub free_cpus: u32,
    /// CPU topology.
    pub cpu_topology: Vec<Option<CpuTopology>>,
    /// PCI topology.
    pub pci_topology: Vec<PciTopology>,
    /// NUMA nodes.
    pub numa: Vec<Option<NumaNode>>,
    /// Cpupool names by id.
    pub cpupools: BTreeMap<u32, String>,
    /// The hypervisor console ring.
    pub console_ring: String,
    /// dom0's uptime in seconds.
    pub dom0_uptime: u64,
    /// The clock.
    pub clock: WallClock,
    /// Events handed out by `wait_domain_event`, in order.
    pub events: VecDeque<DomainEvent>,
    /// What `create` returns for a dry run.
    pub dry_run_config: serde_json::Value,
    /// Whether `console` succeeds.
    pub console_works: bool,
    /// Every operation that changes state, as `"op domid args"`.
    pub calls: Vec<String>,
}

impl FakeHost {
    /// A host with 4 CPUs, 16 GiB, Xen 4.17.0 and dom0 (`Domain-0`,
    /// 2048 MiB, 4 vCPUs).
    pub fn new() -> Self {
        let mut host = FakeHost {
            physinfo: PhysInfo {
                nr_cpus: 4,
                max_cpu_id: 3,
                nr_nodes: 1,
                cores_per_socket: 4,
                threads_per_core: 1,
                cpu_khz: 2_400_000,
                total_pages: 4 * 1024 * 1024,
                free_pages: 2 * 1024 * 1024,
                ..PhysInfo::default()
            },
            version: Some(VersionInfo {
                major: 4,
                minor: 17,
                extra: ".0".into(),
                pagesize: 4096,
                ..VersionInfo::default()
            }),
            scheduler: "credit2".into(),
            dry_run_config: serde_json::Value::Null,
            ..FakeHost::default()
        };
        let mut dom0 = FakeDomain::new(0, "Domain-0", 2048, 4);
        dom0.info.state.running = true;
        dom0.info.state.blocked = false;
        host.add(dom0);
        host
    }

    /// Adds (or replaces) a domain.
    pub fn add(&mut self, domain: FakeDomain) {
        self.domains.insert(domain.info.domid, domain);
    }

    /// Adds a running domain; see [`FakeDomain::new`].
    pub fn add_domain(&mut self, domid: DomId, name: &str, mem_mib: u64, vcpus: u32) {
        self.add(FakeDomain::new(domid, name, mem_mib, vcpus));
    }

    /// The domain `domid`, for a test to inspect or change.
    pub fn domain_mut(&mut self, domid: DomId) -> Option<&mut FakeDomain> {
        self.domains.get_mut(&domid)
    }

    fn get(&self, domid: DomId) -> Result<&FakeDomain, HostError> {
        self.domains
            .get(&domid)
            .ok_or(HostError::DomainNotFound(domid))
    }

    fn get_mut(&mut self, domid: DomId) -> Result<&mut FakeDomain, HostError> {
        self.domains
            .get_mut(&domid)
            .ok_or(HostError::DomainNotFound(domid))
    }

    fn record(&mut self, call: String) {
        self.calls.push(call);
    }
}

impl Host for FakeHost {
    fn list_domains(&self) -> Result<Vec<DomainInfo>, HostError> {
        Ok(self.domains.values().map(|d| d.info.clone()).collect())
    }

    fn domain_info(&self, domid: DomId) -> Result<DomainInfo, HostError> {
        Ok(self.get(domid)?.info.clone())
    }

    fn domain_config(&self, domid: DomId) -> Result<Option<serde_json::Value>, HostError> {
        Ok(self.get(domid)?.config.clone())
    }

    fn node_affinity(&self, domid: DomId) -> Result<CpuMap, HostError> {
        Ok(self.get(domid)?.node_affinity.clone())
    }

    fn cpupool_name(&self, poolid: u32) -> Result<Option<String>, HostError> {
        Ok(self.cpupools.get(&poolid).cloned())
    }

    fn domain_start_time(&self, domid: DomId) -> Result<Option<u64>, HostError> {
        Ok(self.get(domid)?.start_time)
    }

    fn create(&mut self, request: &CreateRequest) -> Result<CreateOutcome, HostError> {
        self.record(format!("create {}", request.config_file.display()));
        if request.dry_run {
            return Ok(CreateOutcome::DryRun(self.dry_run_config.clone()));
        }
        let name = request
            .extra_config
            .iter()
            .find_map(|line| line.strip_prefix("name="))
            .map_or("guest", |n| n.trim_matches('"'));
        let domid = self.domains.keys().next_back().map_or(1, |last| last + 1);
        let mut domain = FakeDomain::new(domid, name, 512, 1);
        domain.info.state.paused = request.paused;
        self.add(domain);
        Ok(CreateOutcome::Created(domid))
    }

    fn pause(&mut self, domid: DomId) -> Result<(), HostError> {
        self.record(format!("pause {domid}"));
        self.get_mut(domid)?.info.state.paused = true;
        Ok(())
    }

    fn unpause(&mut self, domid: DomId) -> Result<(), HostError> {
        self.record(format!("unpause {domid}"));
        self.get_mut(domid)?.info.state.paused = false;
        Ok(())
    }

    fn destroy(&mut self, domid: DomId) -> Result<(), HostError> {
        self.record(format!("destroy {domid}"));
        self.get(domid)?;
        self.domains.remove(&domid);
        Ok(())
    }

    fn shutdown(&mut self, domid: DomId) -> Result<(), HostError> {
        self.record(format!("shutdown {domid}"));
        let domain = self.get_mut(domid)?;
        if !domain.pv_control {
            return Err(HostError::NoParavirt(domid));
        }
        domain.info.state.shutdown = Some(ShutdownReason::Poweroff);
        Ok(())
    }

    fn reboot(&mut self, domid: DomId) -> Result<(), HostError> {
        self.record(format!("reboot {domid}"));
        let domain = self.get_mut(domid)?;
        if !domain.pv_control {
            return Err(HostError::NoParavirt(domid));
        }
        domain.info.state.shutdown = Some(ShutdownReason::Reboot);
        Ok(())
    }

    fn send_trigger(&mut self, domid: DomId, trigger: Trigger, vcpu: u32) -> Result<(), HostError> {
        self.record(format!("trigger {domid} {trigger:?} {vcpu}"));
        self.get(domid)?;
        Ok(())
    }

    fn wait_domain_event(&mut self, domids: &[DomId]) -> Result<DomainEvent, HostError> {
        self.record(format!("wait {domids:?}"));
        self.events
            .pop_front()
            .ok_or_else(|| HostError::Failed("no more events in the fake host".into()))
    }

    fn set_memory_target(&mut self, domid: DomId, target_kib: u64) -> Result<(), HostError> {
        self.record(format!("mem-set {domid} {target_kib}"));
        let domain = self.get_mut(domid)?;
        domain.info.current_memkb = target_kib;
        domain.info.max_memkb = domain.info.max_memkb.max(target_kib);
        Ok(())
    }

    fn set_vcpus_online(&mut self, domid: DomId, count: u32) -> Result<(), HostError> {
        self.record(format!("vcpu-set {domid} {count}"));
        let domain = self.get_mut(domid)?;
        if count > domain.info.vcpu_max_id + 1 {
            return Err(HostError::Invalid(format!(
                "domain {domid} has only {} vCPUs",
                domain.info.vcpu_max_id + 1
            )));
        }
        domain.info.vcpu_online = count;
        for vcpu in &mut domain.vcpus {
            vcpu.online = vcpu.vcpuid < count;
        }
        Ok(())
    }

    fn vcpu_info(&self, domid: DomId) -> Result<Vec<VcpuInfo>, HostError> {
        Ok(self.get(domid)?.vcpus.clone())
    }

    fn block_devices(&self, domid: DomId) -> Result<Vec<BlockDevice>, HostError> {
        Ok(self.get(domid)?.disks.clone())
    }

    fn block_attach(&mut self, domid: DomId, disk: &DiskSpec) -> Result<(), HostError> {
        self.record(format!(
            "block-attach {domid} {}",
            disk.components.join(" ")
        ));
        self.get(domid)?;
        Ok(())
    }

    fn block_detach(&mut self, domid: DomId, devid: u32, force: bool) -> Result<(), HostError> {
        self.record(format!("block-detach {domid} {devid} force={force}"));
        let domain = self.get_mut(domid)?;
        let before = domain.disks.len();
        domain.disks.retain(|d| d.devid != devid);
        if domain.disks.len() == before {
            return Err(HostError::DeviceNotFound {
                domid,
                kind: "vbd",
                devid,
            });
        }
        Ok(())
    }

    fn network_devices(&self, domid: DomId) -> Result<Vec<NetworkDevice>, HostError> {
        Ok(self.get(domid)?.nics.clone())
    }

    fn network_attach(&mut self, domid: DomId, nic: &NicSpec) -> Result<(), HostError> {
        self.record(format!("network-attach {domid} {}", nic.settings.join(" ")));
        self.get(domid)?;
        Ok(())
    }

    fn network_detach(&mut self, domid: DomId, devid: u32) -> Result<(), HostError> {
        self.record(format!("network-detach {domid} {devid}"));
        let domain = self.get_mut(domid)?;
        let before = domain.nics.len();
        domain.nics.retain(|n| n.devid != devid);
        if domain.nics.len() == before {
            return Err(HostError::DeviceNotFound {
                domid,
                kind: "vif",
                devid,
            });
        }
        Ok(())
    }

    fn console(
        &mut self,
        domid: DomId,
        kind: Option<ConsoleKind>,
        num: u32,
    ) -> Result<(), HostError> {
        self.record(format!("console {domid} {kind:?} {num}"));
        self.get(domid)?;
        if self.console_works {
            Ok(())
        } else {
            Err(HostError::Unsupported("the console"))
        }
    }

    fn physinfo(&self) -> Result<PhysInfo, HostError> {
        Ok(self.physinfo.clone())
    }

    fn version_info(&self) -> Result<VersionInfo, HostError> {
        self.version
            .clone()
            .ok_or_else(|| HostError::Failed("no version in the fake host".into()))
    }

    fn scheduler(&self) -> Result<String, HostError> {
        Ok(self.scheduler.clone())
    }

    fn node_info(&self) -> Result<NodeInfo, HostError> {
        Ok(self.node.clone())
    }

    fn free_cpus(&self) -> Result<u32, HostError> {
        Ok(self.free_cpus)
    }

    fn cpu_topology(&self) -> Result<Vec<Option<CpuTopology>>, HostError> {
        Ok(self.cpu_topology.clone())
    }

    fn pci_topology(&self) -> Result<Vec<PciTopology>, HostError> {
        Ok(self.pci_topology.clone())
    }

    fn numa_info(&self) -> Result<Vec<Option<NumaNode>>, HostError> {
        Ok(self.numa.clone())
    }

    fn read_console_ring(&mut self, clear: bool) -> Result<String, HostError> {
        self.record(format!("dmesg clear={clear}"));
        let ring = self.console_ring.clone();
        if clear {
            self.console_ring.clear();
        }
        Ok(ring)
    }

    fn dom0_uptime(&self) -> Result<u64, HostError> {
        Ok(self.dom0_uptime)
    }

    fn wallclock(&self) -> Result<WallClock, HostError> {
        Ok(self.clock)
    }
}
