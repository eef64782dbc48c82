//! Split devices in xenstore, as libxl lays them out (`libxl_device.c`,
//! `libxl_disk.c`, `libxl_nic.c`): where a device's frontend, backend and
//! libxl directories are, what a new disk or network interface writes
//! there, how a device is listed, and the xenstore half of removing one.
//!
//! A device is one frontend directory in the guest's tree
//! (`/local/domain/D/device/vbd/51712`), one backend directory in the
//! backend domain's (`/local/domain/0/backend/KIND/D/51712`) and libxl's
//! copy (`/libxl/D/device/vbd/51712`). The backend `KIND` picks the driver
//! that serves it: Linux's in-kernel `vbd` and `vif`, or the project's
//! user-space rblkback (`rvbd`) and rnetback (`rvif`), which use kinds of
//! their own so that the kernel drivers never claim their devices.

use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::xenbus::XenbusState;

use super::store;
use crate::config::disk::{Access, BackendType, DiskFormat, Specification};
use crate::config::vif::{NicType, Rate, VifBackendType};
use crate::config::{DiskSpec, MacAddr, VifSpec};
use crate::host::{BlockDevice, DomId, HostError, NetworkDevice};

/// The backend kind Linux's blkback serves.
pub(crate) const KERNEL_BLOCK_KIND: &str = "vbd";
/// The backend kind rblkback serves.
pub(crate) const RBLKBACK_KIND: &str = "rvbd";
/// The backend kind Linux's netback serves.
pub(crate) const KERNEL_NET_KIND: &str = "vif";
/// The backend kind rnetback serves.
pub(crate) const RNETBACK_KIND: &str = "rvif";

/// Where Xen's hotplug scripts live (`XEN_SCRIPT_DIR`).
pub(crate) const XEN_SCRIPT_DIR: &str = "/etc/xen/scripts";

/// libxl's `LIBXL_DEVICE_NIC_MTU_DEFAULT`.
const DEFAULT_MTU: u32 = 1500;

/// The bridge a vif joins when its specification names none.
const DEFAULT_BRIDGE: &str = "xenbr0";

/// `/local/domain/<domid>`.
pub(crate) fn dom_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// Where one device lives in xenstore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DevicePaths {
    /// The frontend domain.
    pub domid: DomId,
    /// The frontend's kind (`vbd`, `vif`, `console`, ...).
    pub kind: String,
    /// The device id.
    pub devid: u32,
    /// The backend domain.
    pub backend_domid: DomId,
    /// The backend's kind (`vbd`, `rvbd`, `vif`, `rvif`, ...).
    pub backend_kind: String,
    /// The frontend directory.
    pub frontend: String,
    /// The backend directory.
    pub backend: String,
    /// libxl's directory for the device.
    pub libxl: String,
}

impl DevicePaths {
    /// The paths of device `devid` of kind `kind` of domain `domid`,
    /// served by a `backend_kind` backend in `backend_domid`
    /// (`libxl__device_{frontend,backend,libxl}_path`).
    pub(crate) fn new(
        domid: DomId,
        kind: &str,
        devid: u32,
        backend_domid: DomId,
        backend_kind: &str,
    ) -> Self {
        DevicePaths {
            domid,
            kind: kind.to_owned(),
            devid,
            backend_domid,
            backend_kind: backend_kind.to_owned(),
            frontend: frontend_path(domid, kind, devid),
            backend: format!(
                "{}/backend/{backend_kind}/{domid}/{devid}",
                dom_path(backend_domid)
            ),
            libxl: format!("/libxl/{domid}/device/{kind}/{devid}"),
        }
    }

    /// The paths of the device whose backend directory is `backend`, as
    /// the frontend (or libxl) names it; `None` if that is no backend
    /// path of domain `domid`'s device `kind`/`devid`.
    fn from_backend(domid: DomId, kind: &str, devid: u32, backend: &str) -> Option<Self> {
        let (backend_domid, backend_kind, fe_domid, be_devid) = parse_backend_path(backend)?;
        if fe_domid != domid || be_devid != devid {
            return None;
        }
        let mut paths = DevicePaths::new(domid, kind, devid, backend_domid, backend_kind);
        paths.backend = backend.to_owned();
        Some(paths)
    }

    /// Whether the device needs no backend handshake to go: console
    /// devices are removed by deleting their nodes (as libxl does).
    pub(crate) fn is_console(&self) -> bool {
        matches!(self.backend_kind.as_str(), "console" | "vuart")
    }

    /// The backend's `state` node.
    pub(crate) fn state_path(&self) -> String {
        format!("{}/state", self.backend)
    }
}

/// The frontend directory of device `kind`/`devid` of `domid`; console 0
/// is the domain's `console` directory.
fn frontend_path(domid: DomId, kind: &str, devid: u32) -> String {
    if kind == "console" && devid == 0 {
        format!("{}/console", dom_path(domid))
    } else {
        format!("{}/device/{kind}/{devid}", dom_path(domid))
    }
}

/// Splits `/local/domain/B/backend/KIND/D/DEVID` into `(B, KIND, D,
/// DEVID)` (`libxl__parse_backend_path`).
pub(crate) fn parse_backend_path(path: &str) -> Option<(DomId, &str, DomId, u32)> {
    let rest = path.strip_prefix("/local/domain/")?;
    let mut parts = rest.split('/');
    let backend_domid = parts.next()?.parse().ok()?;
    if parts.next()? != "backend" {
        return None;
    }
    let kind = parts.next().filter(|k| !k.is_empty())?;
    let domid = parts.next()?.parse().ok()?;
    let devid = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((backend_domid, kind, domid, devid))
}

/// The frontend kind a backend kind serves, for backend directories
/// found without their frontend.
pub(crate) fn frontend_kind(backend_kind: &str) -> &str {
    match backend_kind {
        RBLKBACK_KIND | "qdisk" => "vbd",
        RNETBACK_KIND => "vif",
        other => other,
    }
}

/// Domain `domid`'s devices of frontend kind `kind`, by device id, as
/// their frontend directories name them (devices whose frontend has no
/// `backend` node fall back to libxl's record of it).
pub(crate) fn frontends(
    xs: &dyn Xenstore,
    domid: DomId,
    kind: &str,
) -> Result<Vec<DevicePaths>, HostError> {
    let none = Transaction::NONE;
    let dir = format!("{}/device/{kind}", dom_path(domid));
    let mut devids: Vec<u32> = store::directory(xs, none, &dir)?
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    devids.sort_unstable();
    devids.dedup();
    let mut devices = Vec::new();
    for devid in devids {
        let fe = frontend_path(domid, kind, devid);
        let libxl = format!("/libxl/{domid}/device/{kind}/{devid}");
        let backend = match store::read(xs, none, &format!("{fe}/backend"))? {
            Some(backend) => Some(backend),
            None => store::read(xs, none, &format!("{libxl}/backend"))?,
        };
        match backend
            .as_deref()
            .and_then(|b| DevicePaths::from_backend(domid, kind, devid, b))
        {
            Some(paths) => devices.push(paths),
            None => log::debug!("{fe}: no usable backend path ({backend:?}); not listed"),
        }
    }
    Ok(devices)
}

/// Domain `domid`'s virtual block devices (`libxl_device_disk_list` and
/// `libxl_device_disk_getinfo`; unreadable numbers are `None`, printed
/// as -1).
pub(crate) fn block_devices(
    xs: &dyn Xenstore,
    domid: DomId,
) -> Result<Vec<BlockDevice>, HostError> {
    let none = Transaction::NONE;
    frontends(xs, domid, "vbd")?
        .into_iter()
        .map(|d| {
            let fe = |node: &str| store::read_u32(xs, none, &format!("{}/{node}", d.frontend));
            Ok(BlockDevice {
                devid: d.devid,
                vdev: store::read(xs, none, &format!("{}/dev", d.backend))?,
                backend_id: d.backend_domid,
                frontend_id: domid,
                state: fe("state")?,
                evtch: fe("event-channel")?,
                ring_ref: fe("ring-ref")?,
                backend_path: d.backend,
            })
        })
        .collect()
}

/// Domain `domid`'s virtual network interfaces (`libxl_device_nic_list`
/// and `libxl_device_nic_getinfo`). The MAC address is the frontend's
/// `mac` (else the backend's, else zeros, as libxl reads a missing one).
pub(crate) fn network_devices(
    xs: &dyn Xenstore,
    domid: DomId,
) -> Result<Vec<NetworkDevice>, HostError> {
    let none = Transaction::NONE;
    frontends(xs, domid, "vif")?
        .into_iter()
        .map(|d| {
            let fe = |node: &str| store::read_u32(xs, none, &format!("{}/{node}", d.frontend));
            let mac = match store::read(xs, none, &format!("{}/mac", d.frontend))? {
                Some(mac) => Some(mac),
                None => store::read(xs, none, &format!("{}/mac", d.backend))?,
            };
            let mac = match mac.as_deref().map(str::parse::<crate::host::MacAddr>) {
                Some(Ok(mac)) => mac,
                Some(Err(e)) => {
                    log::warn!("{}: {e}", d.frontend);
                    crate::host::MacAddr::default()
                }
                None => crate::host::MacAddr::default(),
            };
            Ok(NetworkDevice {
                devid: d.devid,
                backend_id: d.backend_domid,
                mac,
                state: fe("state")?,
                evtch: fe("event-channel")?,
                tx_ring_ref: fe("tx-ring-ref")?,
                rx_ring_ref: fe("rx-ring-ref")?,
                backend_path: d.backend,
            })
        })
        .collect()
}

/// Every device of domain `domid` that xenstore knows of, whichever
/// record names it: libxl's directory, the frontend's `backend` node, or
/// a backend directory in `backend_domid` (`libxl__devices_destroy` reads
/// only libxl's; the others catch devices attached by hand).
pub(crate) fn all_devices(
    xs: &dyn Xenstore,
    domid: DomId,
    backend_domid: DomId,
) -> Result<Vec<DevicePaths>, HostError> {
    let none = Transaction::NONE;
    let mut devices: Vec<DevicePaths> = Vec::new();
    let mut add = |paths: DevicePaths| {
        if !devices.iter().any(|d| d.backend == paths.backend) {
            devices.push(paths);
        }
    };
    for root in [
        format!("/libxl/{domid}/device"),
        format!("{}/device", dom_path(domid)),
    ] {
        for kind in store::directory(xs, none, &root)? {
            for name in store::directory(xs, none, &format!("{root}/{kind}"))? {
                let Ok(devid) = name.parse::<u32>() else {
                    continue;
                };
                let Some(backend) =
                    store::read(xs, none, &format!("{root}/{kind}/{devid}/backend"))?
                else {
                    continue;
                };
                if let Some(paths) = DevicePaths::from_backend(domid, &kind, devid, &backend) {
                    add(paths);
                }
            }
        }
    }
    let backends = format!("{}/backend", dom_path(backend_domid));
    for backend_kind in store::directory(xs, none, &backends)? {
        for name in store::directory(xs, none, &format!("{backends}/{backend_kind}/{domid}"))? {
            let Ok(devid) = name.parse::<u32>() else {
                continue;
            };
            let kind = frontend_kind(&backend_kind);
            let mut paths = DevicePaths::new(domid, kind, devid, backend_domid, &backend_kind);
            if let Some(frontend) = store::read(xs, none, &format!("{}/frontend", paths.backend))? {
                // Only the guest's own tree: a backend must not make us
                // remove anything else.
                if frontend.starts_with(&format!("{}/", dom_path(domid))) {
                    paths.frontend = frontend;
                }
            }
            add(paths);
        }
    }
    Ok(devices)
}

/// The nodes a new device gets: the backend's (also copied to libxl's
/// directory), the frontend's (the guest may write them), and the
/// frontend's read-only ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceNodes {
    /// Where.
    pub paths: DevicePaths,
    /// The device kind for errors (`vbd` or `vif`).
    pub kind: &'static str,
    /// Backend nodes.
    pub back: Vec<(String, String)>,
    /// Frontend nodes, owned by the guest.
    pub front: Vec<(String, String)>,
    /// Frontend nodes the guest may only read.
    pub ro_front: Vec<(String, String)>,
}

#[cfg(test)]
impl DeviceNodes {
    /// The value of backend node `key`, if the device has one.
    pub(crate) fn back(&self, key: &str) -> Option<&str> {
        self.back
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of frontend node `key`, if the device has one.
    pub(crate) fn front(&self, key: &str) -> Option<&str> {
        self.front
            .iter()
            .chain(&self.ro_front)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes a new device (`libxl__device_generic_add`) in one transaction,
/// so that the guest sees its frontend whole: libxl's directory, the
/// frontend (owned by the guest, readable by the backend domain) and the
/// backend (owned by the backend domain, readable by the guest).
/// [`HostError::DeviceExists`] if any of the three directories is there.
pub(crate) fn add_device(xs: &dyn Xenstore, nodes: &DeviceNodes) -> Result<(), HostError> {
    let p = &nodes.paths;
    let front_perms = store::owned_by(p.domid, p.backend_domid)?;
    let back_perms = store::owned_by(p.backend_domid, p.domid)?;
    store::transaction(xs, |tx| {
        for dir in [&p.libxl, &p.frontend, &p.backend] {
            if store::exists(xs, tx, dir)? {
                log::error!("{dir} already exists in xenstore");
                return Err(HostError::DeviceExists {
                    domid: p.domid,
                    kind: nodes.kind,
                    devid: p.devid,
                });
            }
        }
        store::write(xs, tx, &format!("{}/frontend", p.libxl), &p.frontend)?;
        store::write(xs, tx, &format!("{}/backend", p.libxl), &p.backend)?;

        mkdir(xs, tx, &p.frontend)?;
        store::set_perms(xs, tx, &p.frontend, &front_perms)?;
        store::write(xs, tx, &format!("{}/backend", p.frontend), &p.backend)?;
        for (entries, perms) in [(&nodes.front, &front_perms), (&nodes.ro_front, &back_perms)] {
            for (key, value) in entries {
                let path = format!("{}/{key}", p.frontend);
                store::write(xs, tx, &path, value)?;
                store::set_perms(xs, tx, &path, perms)?;
            }
        }

        mkdir(xs, tx, &p.backend)?;
        store::set_perms(xs, tx, &p.backend, &back_perms)?;
        store::write(xs, tx, &format!("{}/frontend", p.backend), &p.frontend)?;
        for (key, value) in &nodes.back {
            store::write(xs, tx, &format!("{}/{key}", p.backend), value)?;
            // libxl keeps a copy it need not trust the backend for.
            store::write(xs, tx, &format!("{}/{key}", p.libxl), value)?;
        }
        Ok(())
    })
}

fn mkdir(xs: &dyn Xenstore, tx: Transaction, path: &str) -> Result<(), HostError> {
    xs.mkdir(tx, path)
        .map_err(|e| store::failed("create", path, e))
}

/// The backend's state; `None` if its node is missing or unreadable.
pub(crate) fn backend_state(
    xs: &dyn Xenstore,
    device: &DevicePaths,
) -> Result<Option<XenbusState>, HostError> {
    Ok(store::read(xs, Transaction::NONE, &device.state_path())?
        .and_then(|s| XenbusState::parse(s.as_bytes())))
}

/// What [`begin_remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The backend was asked to close.
    Closing,
    /// The backend directory has no `state`: the backend is gone, only
    /// the rest is left to clean up.
    BackendGone,
}

/// Asks the backend to let the device go
/// (`libxl__initiate_device_generic_remove`): `online` 0 and, unless it
/// is Closed already, state Closing. With `force` the frontend directory
/// is removed first, so that the backend does not wait for the guest.
pub(crate) fn begin_remove(
    xs: &dyn Xenstore,
    device: &DevicePaths,
    force: bool,
) -> Result<Removal, HostError> {
    store::transaction(xs, |tx| {
        if force {
            store::path_cleanup(xs, tx, &device.frontend)?;
        }
        let Some(state) = store::read(xs, tx, &device.state_path())? else {
            log::info!(
                "backend {} already removed, cleanup frontend only",
                device.backend
            );
            return Ok(Removal::BackendGone);
        };
        store::write(xs, tx, &format!("{}/online", device.backend), "0")?;
        if XenbusState::parse(state.as_bytes()) != Some(XenbusState::Closed) {
            store::write(xs, tx, &device.state_path(), XenbusState::Closing.as_str())?;
        }
        Ok(Removal::Closing)
    })
}

/// Removes the device's directories and the parents they leave empty
/// (`libxl__device_destroy`).
pub(crate) fn finish_remove(xs: &dyn Xenstore, device: &DevicePaths) -> Result<(), HostError> {
    store::transaction(xs, |tx| {
        store::path_cleanup(xs, tx, &device.frontend)?;
        store::path_cleanup(xs, tx, &device.libxl)?;
        store::path_cleanup(xs, tx, &device.backend)
    })
}

/// Which driver serves a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskBackend {
    /// Linux's blkback (`backendtype=phy`), kind `vbd`, set up by Xen's
    /// `block` hotplug script as libxl does.
    Kernel,
    /// The project's rblkback (the default), kind `rvbd`.
    Rblkback,
}

/// A disk to attach, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskPlan {
    /// The device id (the virtual device's number).
    pub devid: u32,
    /// The guest's name for it (`xvdb`).
    pub vdev: String,
    /// The image file or block device.
    pub target: String,
    /// Who serves it.
    pub backend: DiskBackend,
    /// Read-only.
    pub read_only: bool,
    /// The image format.
    pub format: DiskFormat,
    /// A CD-ROM drive.
    pub cdrom: bool,
    /// `discard-enable`.
    pub discard: bool,
    /// `direct-io-safe`.
    pub direct_io_safe: bool,
    /// `trusted`.
    pub trusted: bool,
    /// The hotplug script (absolute), for the kernel backend.
    pub script: Option<String>,
}

/// An absolute script path: `script` as is if absolute, else in Xen's
/// script directory (`libxl__abs_path`).
fn script_path(script: &str) -> String {
    if script.starts_with('/') {
        script.to_owned()
    } else {
        format!("{XEN_SCRIPT_DIR}/{script}")
    }
}

impl DiskPlan {
    /// Checks `spec` for what rxl can attach, with libxl's defaults
    /// (`libxl__device_disk_setdefault`). The backend domain must have
    /// been resolved to dom0 by the caller.
    pub(crate) fn new(spec: &DiskSpec) -> Result<Self, HostError> {
        let vdev = &spec.vdev.name;
        let invalid = |why: String| Err(HostError::Invalid(format!("disk {vdev}: {why}")));
        if spec.specification == Some(Specification::Virtio) {
            return invalid("specification=virtio is not supported by rxl".into());
        }
        let backend =
            match spec.backend_type {
                None => DiskBackend::Rblkback,
                Some(BackendType::Phy) => DiskBackend::Kernel,
                Some(BackendType::Tap) => return invalid("blktap is not supported".into()),
                Some(BackendType::Qdisk) => return invalid(
                    "backendtype=qdisk needs QEMU, which rxl does not run; leave backendtype out \
                     (rblkback) or use backendtype=phy (the kernel's blkback)"
                        .into(),
                ),
                Some(BackendType::Standalone) => {
                    return invalid("backendtype=standalone is not supported by rxl".into())
                }
            };
        let Some(target) = spec.target.clone().filter(|t| !t.is_empty()) else {
            return invalid("an empty CD-ROM drive needs QEMU, which rxl does not run".into());
        };
        match (backend, spec.format) {
            (DiskBackend::Kernel, DiskFormat::Raw) | (DiskBackend::Rblkback, DiskFormat::Raw | DiskFormat::Qcow2) => {}
            (DiskBackend::Kernel, format) => {
                return invalid(format!(
                    "backendtype=phy serves raw images only, not format={format}; leave backendtype out \
                     for rblkback, which also serves qcow2"
                ))
            }
            (DiskBackend::Rblkback, format) => {
                return invalid(format!("rblkback serves raw and qcow2 images, not format={format}"))
            }
        }
        let script = match (backend, &spec.script) {
            (DiskBackend::Kernel, script) => Some(script_path(script.as_deref().unwrap_or("block"))),
            (DiskBackend::Rblkback, None) => None,
            (DiskBackend::Rblkback, Some(_)) => {
                return invalid(
                    "script= needs backendtype=phy: rblkback opens the target itself, without a hotplug script".into(),
                )
            }
        };
        let read_only = spec.access == Access::ReadOnly || spec.is_cdrom;
        Ok(DiskPlan {
            devid: spec.vdev.devid,
            vdev: vdev.clone(),
            target,
            backend,
            read_only,
            format: spec.format,
            cdrom: spec.is_cdrom,
            discard: spec.discard.unwrap_or(!read_only),
            direct_io_safe: spec.direct_io_safe,
            trusted: spec.trusted.unwrap_or(true),
            script,
        })
    }

    /// The backend kind.
    pub(crate) fn backend_kind(&self) -> &'static str {
        match self.backend {
            DiskBackend::Kernel => KERNEL_BLOCK_KIND,
            DiskBackend::Rblkback => RBLKBACK_KIND,
        }
    }

    /// The nodes of the disk for guest `domid`, as libxl's
    /// `device_disk_add` writes them; `protocol` is the frontend's ring
    /// ABI, which libxl writes for PV guests (old blkfronts need it).
    pub(crate) fn nodes(&self, domid: DomId, protocol: Option<&str>) -> DeviceNodes {
        let flag = |on: bool| if on { "1" } else { "0" }.to_owned();
        let device_type = if self.cdrom { "cdrom" } else { "disk" };
        let mut back = vec![
            ("params".to_owned(), self.target.clone()),
            ("frontend-id".to_owned(), domid.to_string()),
            ("online".to_owned(), "1".to_owned()),
            ("removable".to_owned(), flag(self.cdrom)),
            ("bootable".to_owned(), "1".to_owned()),
            (
                "state".to_owned(),
                XenbusState::Initialising.as_str().to_owned(),
            ),
            ("dev".to_owned(), self.vdev.clone()),
            (
                "type".to_owned(),
                match self.backend {
                    DiskBackend::Kernel => "phy",
                    DiskBackend::Rblkback => RBLKBACK_KIND,
                }
                .to_owned(),
            ),
            (
                "mode".to_owned(),
                if self.read_only { "r" } else { "w" }.to_owned(),
            ),
            ("device-type".to_owned(), device_type.to_owned()),
            ("discard-enable".to_owned(), flag(self.discard)),
            ("specification".to_owned(), "xen".to_owned()),
        ];
        if let Some(script) = &self.script {
            back.push(("script".to_owned(), script.clone()));
        }
        if self.direct_io_safe {
            back.push(("direct-io-safe".to_owned(), "1".to_owned()));
        }
        let mut front = vec![
            ("backend-id".to_owned(), "0".to_owned()),
            (
                "state".to_owned(),
                XenbusState::Initialising.as_str().to_owned(),
            ),
            ("virtual-device".to_owned(), self.devid.to_string()),
            ("device-type".to_owned(), device_type.to_owned()),
            ("trusted".to_owned(), flag(self.trusted)),
        ];
        if let Some(protocol) = protocol {
            front.push(("protocol".to_owned(), protocol.to_owned()));
        }
        DeviceNodes {
            paths: DevicePaths::new(domid, "vbd", self.devid, 0, self.backend_kind()),
            kind: "vbd",
            back,
            front,
            ro_front: Vec::new(),
        }
    }

    /// rblkback's arguments for this disk of guest `domid`.
    pub(crate) fn rblkback_args(&self, domid: DomId) -> Vec<String> {
        let mut args = vec![
            "--kind".to_owned(),
            RBLKBACK_KIND.to_owned(),
            "--domid".to_owned(),
            domid.to_string(),
            "--devid".to_owned(),
            self.devid.to_string(),
            "--path".to_owned(),
            self.target.clone(),
        ];
        if self.read_only {
            args.push("--read-only".to_owned());
        }
        if self.format == DiskFormat::Qcow2 {
            args.extend(["--format".to_owned(), "qcow2".to_owned()]);
        }
        args
    }
}

/// Which driver serves a network interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicBackend {
    /// The project's rnetback (the default), kind `rvif`: a TAP interface
    /// it adds to the bridge itself.
    Rnetback,
    /// Linux's netback (`backendtype=netback`, an rxl extension), kind
    /// `vif`, bridged by Xen's `vif-bridge` hotplug script as libxl does.
    Kernel,
}

impl NicBackend {
    /// The backend `backendtype=` asks for, rnetback if none.
    pub(crate) fn of(spec: &VifSpec) -> Self {
        match spec.backend_type {
            Some(VifBackendType::Netback) => NicBackend::Kernel,
            Some(VifBackendType::Rnetback) | None => NicBackend::Rnetback,
        }
    }
}

/// A network interface to attach, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NicPlan {
    /// The device id.
    pub devid: u32,
    /// Who serves it.
    pub backend: NicBackend,
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// The bridge.
    pub bridge: String,
    /// The backend interface's name (`vifD.N` unless `vifname=`).
    pub ifname: String,
    /// `vifname=` as given.
    pub vifname: Option<String>,
    /// The hotplug script (absolute), for the kernel backend.
    pub script: Option<String>,
    /// `ip=`.
    pub ip: Option<String>,
    /// `gatewaydev=`.
    pub gatewaydev: Option<String>,
    /// `rate=`.
    pub rate: Option<Rate>,
    /// The MTU.
    pub mtu: u32,
    /// `trusted`.
    pub trusted: bool,
}

impl NicPlan {
    /// Checks `spec` for guest `domid` with libxl's defaults
    /// (`libxl__device_nic_setdefault`): device `devid`, and `mac` unless
    /// the specification gives one. The backend domain must have been
    /// resolved to dom0 by the caller.
    pub(crate) fn new(
        spec: &VifSpec,
        domid: DomId,
        devid: u32,
        mac: MacAddr,
    ) -> Result<Self, HostError> {
        if spec.nic_type == Some(NicType::Ioemu) {
            return Err(HostError::Invalid(
                "trying to create PV or PVH guest with an emulated interface (type=ioemu)".into(),
            ));
        }
        if let Some(model) = &spec.model {
            log::warn!("vif {devid}: model={model} is for emulated cards of HVM guests; ignored");
        }
        let backend = NicBackend::of(spec);
        let script = match backend {
            NicBackend::Kernel => Some(script_path(spec.script.as_deref().unwrap_or("vif-bridge"))),
            NicBackend::Rnetback => {
                if let Some(script) = &spec.script {
                    log::warn!(
                        "vif {devid}: rnetback joins the bridge itself; script={script} ignored"
                    );
                }
                if spec.rate.is_some() {
                    log::warn!(
                        "vif {devid}: rnetback does not limit the transmit rate; rate= ignored"
                    );
                }
                None
            }
        };
        Ok(NicPlan {
            devid,
            backend,
            mac: spec.mac.unwrap_or(mac),
            bridge: spec
                .bridge
                .clone()
                .unwrap_or_else(|| DEFAULT_BRIDGE.to_owned()),
            ifname: spec
                .vifname
                .clone()
                .unwrap_or_else(|| format!("vif{domid}.{devid}")),
            vifname: spec.vifname.clone(),
            script,
            ip: spec.ip.clone(),
            gatewaydev: spec.gatewaydev.clone(),
            rate: spec.rate,
            mtu: spec.mtu.unwrap_or(DEFAULT_MTU),
            trusted: spec.trusted.unwrap_or(true),
        })
    }

    /// The backend kind.
    pub(crate) fn backend_kind(&self) -> &'static str {
        match self.backend {
            NicBackend::Kernel => KERNEL_NET_KIND,
            NicBackend::Rnetback => RNETBACK_KIND,
        }
    }

    /// The nodes of the interface for guest `domid`, as libxl's
    /// `libxl__device_add_async` and `libxl__set_xenstore_nic` write them.
    pub(crate) fn nodes(&self, domid: DomId) -> DeviceNodes {
        let pair = |k: &str, v: String| (k.to_owned(), v);
        let mac = self.mac.to_string();
        let mut back = vec![
            pair("frontend-id", domid.to_string()),
            pair("online", "1".into()),
            pair("state", XenbusState::Initialising.as_str().into()),
        ];
        if let Some(script) = &self.script {
            back.push(pair("script", script.clone()));
        }
        if let Some(vifname) = &self.vifname {
            back.push(pair("vifname", vifname.clone()));
        }
        back.push(pair("mac", mac.clone()));
        if let Some(ip) = &self.ip {
            back.push(pair("ip", ip.clone()));
        }
        if let Some(gatewaydev) = &self.gatewaydev {
            back.push(pair("gatewaydev", gatewaydev.clone()));
        }
        if let Some(rate) = self.rate {
            back.push(pair(
                "rate",
                format!("{},{}", rate.bytes_per_interval, rate.interval_usecs),
            ));
        }
        if self.mtu != DEFAULT_MTU {
            back.push(pair("mtu", self.mtu.to_string()));
        }
        back.push(pair("bridge", self.bridge.clone()));
        back.push(pair("handle", self.devid.to_string()));
        back.push(pair("type", "vif".into()));
        if self.backend == NicBackend::Kernel {
            // netback waits for the hotplug script to set it.
            back.push(pair("hotplug-status", String::new()));
        }
        let front = vec![
            pair("backend-id", "0".into()),
            pair("state", XenbusState::Initialising.as_str().into()),
            pair("handle", self.devid.to_string()),
            pair("mac", mac),
            pair("trusted", if self.trusted { "1" } else { "0" }.into()),
        ];
        DeviceNodes {
            paths: DevicePaths::new(domid, "vif", self.devid, 0, self.backend_kind()),
            kind: "vif",
            back,
            front,
            ro_front: vec![pair("mtu", self.mtu.to_string())],
        }
    }

    /// rnetback's arguments for this interface of guest `domid`.
    pub(crate) fn rnetback_args(&self, domid: DomId) -> Vec<String> {
        vec![
            "--kind".to_owned(),
            RNETBACK_KIND.to_owned(),
            "--domid".to_owned(),
            domid.to_string(),
            "--devid".to_owned(),
            self.devid.to_string(),
            "--bridge".to_owned(),
            self.bridge.clone(),
            "--ifname".to_owned(),
            self.ifname.clone(),
            "--mac".to_owned(),
            self.mac.to_string(),
            "--mtu".to_owned(),
            self.mtu.to_string(),
        ]
    }
}

/// The lowest free device id for a new vif of `domid`: one above the
/// highest any record uses (libxl's `libxl__device_nextid`).
pub(crate) fn next_nic_devid(xs: &dyn Xenstore, domid: DomId) -> Result<u32, HostError> {
    let none = Transaction::NONE;
    let mut highest: Option<u32> = None;
    for dir in [
        format!("/libxl/{domid}/device/vif"),
        format!("{}/device/vif", dom_path(domid)),
        format!("{}/backend/{KERNEL_NET_KIND}/{domid}", dom_path(0)),
        format!("{}/backend/{RNETBACK_KIND}/{domid}", dom_path(0)),
    ] {
        for name in store::directory(xs, none, &dir)? {
            if let Ok(devid) = name.parse::<u32>() {
                highest = highest.max(Some(devid));
            }
        }
    }
    match highest {
        None => Ok(0),
        Some(n) => n
            .checked_add(1)
            .ok_or_else(|| HostError::Invalid(format!("domain {domid} has no free vif device id"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::testing::TestStore;
    use super::*;
    use hypercall_abi::platform::{XsPerm, XsPermAccess};

    const NONE: Transaction = Transaction::NONE;

    fn disk(spec: &str) -> DiskSpec {
        DiskSpec::parse(spec).unwrap()
    }

    fn vif(spec: &str) -> VifSpec {
        VifSpec::parse(spec).unwrap().0
    }

    const MAC: MacAddr = MacAddr([0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]);

    #[test]
    fn paths_are_libxl_s() {
        let d = DevicePaths::new(3, "vbd", 51712, 0, "rvbd");

        assert_eq!(d.frontend, "/local/domain/3/device/vbd/51712");
        assert_eq!(d.backend, "/local/domain/0/backend/rvbd/3/51712");
        assert_eq!(d.libxl, "/libxl/3/device/vbd/51712");
        assert_eq!(d.state_path(), "/local/domain/0/backend/rvbd/3/51712/state");
        assert_eq!(
            DevicePaths::new(3, "console", 0, 0, "console").frontend,
            "/local/domain/3/console"
        );
    }

    #[test]
    fn backend_paths_parse() {
        assert_eq!(
            parse_backend_path("/local/domain/0/backend/rvif/12/1"),
            Some((0, "rvif", 12, 1))
        );
        assert_eq!(parse_backend_path("/local/domain/0/backend/vbd/12"), None);
        assert_eq!(
            parse_backend_path("/local/domain/0/backend/vbd/12/1/x"),
            None
        );
        assert_eq!(parse_backend_path("/local/domain/0/device/vbd/12/1"), None);
        assert_eq!(parse_backend_path("/vm/0/backend/vbd/12/1"), None);
    }

    #[test]
    fn a_default_disk_goes_to_rblkback() {
        let plan = DiskPlan::new(&disk("/srv/a.qcow2,qcow2,xvdb,r")).unwrap();

        assert_eq!(plan.backend, DiskBackend::Rblkback);
        assert_eq!(plan.devid, 51728);
        assert!(plan.read_only && !plan.discard && plan.trusted);
        assert_eq!(
            plan.rblkback_args(7).join(" "),
            "--kind rvbd --domid 7 --devid 51728 --path /srv/a.qcow2 --read-only --format qcow2"
        );
        assert_eq!(
            plan.nodes(7, None).paths.backend,
            "/local/domain/0/backend/rvbd/7/51728"
        );
    }

    #[test]
    fn a_phy_disk_goes_to_the_kernel_with_the_block_script() {
        let plan = DiskPlan::new(&disk("phy:/dev/vg/a,xvda,w,backendtype=phy")).unwrap();
        let nodes = plan.nodes(7, Some("x86_64-abi"));

        assert_eq!(plan.backend, DiskBackend::Kernel);
        assert_eq!(nodes.paths.backend, "/local/domain/0/backend/vbd/7/51712");
        assert_eq!(nodes.back("script"), Some("/etc/xen/scripts/block"));
        assert_eq!(nodes.back("params"), Some("/dev/vg/a"));
        assert_eq!(nodes.back("type"), Some("phy"));
        assert_eq!(nodes.back("mode"), Some("w"));
        assert_eq!(nodes.back("discard-enable"), Some("1"));
        assert_eq!(nodes.back("state"), Some("1"));
        assert_eq!(nodes.front("virtual-device"), Some("51712"));
        assert_eq!(nodes.front("protocol"), Some("x86_64-abi"));
        assert_eq!(nodes.front("state"), Some("1"));
    }

    #[test]
    fn disks_rxl_cannot_serve_are_refused_with_a_reason() {
        let refused = |spec: &str| match DiskPlan::new(&disk(spec)) {
            Err(HostError::Invalid(why)) => why,
            other => panic!("{spec}: {other:?}"),
        };

        assert!(refused("/img,qcow2,xvda,backendtype=phy").contains("raw images only"));
        assert!(refused("/img,vhd,xvda").contains("not format=vhd"));
        assert!(refused("/img,raw,xvda,backendtype=qdisk").contains("QEMU"));
        assert!(refused("/img,raw,xvda,script=block-foo").contains("backendtype=phy"));
        assert!(refused(",,hdc:cdrom,r").contains("empty CD-ROM"));
        assert!(refused("/img,raw,xvda,specification=virtio").contains("virtio"));
    }

    #[test]
    fn a_default_vif_goes_to_rnetback_on_xenbr0() {
        let plan = NicPlan::new(&vif(""), 4, 0, MAC).unwrap();
        let nodes = plan.nodes(4);

        assert_eq!(plan.ifname, "vif4.0");
        assert_eq!(plan.bridge, "xenbr0");
        assert_eq!(nodes.paths.backend, "/local/domain/0/backend/rvif/4/0");
        assert_eq!(nodes.back("mac"), Some("00:16:3e:01:02:03"));
        assert_eq!(nodes.front("mac"), Some("00:16:3e:01:02:03"));
        assert_eq!(nodes.back("script"), None);
        assert_eq!(nodes.back("hotplug-status"), None);
        assert_eq!(nodes.ro_front, [("mtu".to_owned(), "1500".to_owned())]);
        assert_eq!(
            plan.rnetback_args(4).join(" "),
            "--kind rvif --domid 4 --devid 0 --bridge xenbr0 --ifname vif4.0 --mac 00:16:3e:01:02:03 --mtu 1500"
        );
    }

    #[test]
    fn a_netback_vif_is_written_as_libxl_writes_it() {
        let spec =
            vif("mac=00:16:3e:aa:bb:cc,bridge=br1,vifname=web0,ip=192.0.2.1,mtu=9000,rate=10Mb/s,backendtype=netback");
        let plan = NicPlan::new(&spec, 4, 2, MAC).unwrap();
        let nodes = plan.nodes(4);

        assert_eq!(nodes.paths.backend, "/local/domain/0/backend/vif/4/2");
        assert_eq!(nodes.back("script"), Some("/etc/xen/scripts/vif-bridge"));
        assert_eq!(nodes.back("hotplug-status"), Some(""));
        assert_eq!(nodes.back("vifname"), Some("web0"));
        assert_eq!(nodes.back("bridge"), Some("br1"));
        assert_eq!(nodes.back("mtu"), Some("9000"));
        assert_eq!(nodes.back("rate"), Some("62500,50000"));
        assert_eq!(nodes.back("handle"), Some("2"));
        assert_eq!(nodes.front("mac"), Some("00:16:3e:aa:bb:cc"));
        assert_eq!(plan.ifname, "web0");
    }

    #[test]
    fn an_emulated_vif_is_refused() {
        assert!(matches!(
            NicPlan::new(&vif("type=ioemu"), 4, 0, MAC),
            Err(HostError::Invalid(_))
        ));
    }

    #[test]
    fn backendtype_chooses_the_driver() {
        assert_eq!(NicBackend::of(&vif("bridge=br1,backendtype=netback")), NicBackend::Kernel);
        assert_eq!(NicBackend::of(&vif("backendtype=rnetback")), NicBackend::Rnetback);
        assert_eq!(NicBackend::of(&vif("")), NicBackend::Rnetback);
        let plan = NicPlan::new(&vif("backendtype=netback"), 4, 0, MAC).unwrap();
        assert_eq!(plan.backend_kind(), KERNEL_NET_KIND);
        assert!(plan.script.is_some());
    }

    #[test]
    fn an_added_disk_is_listed_with_its_frontend_s_numbers() {
        let store = TestStore::start();
        let xs = store.client();
        let nodes = DiskPlan::new(&disk("/srv/a.img,raw,xvdb,w"))
            .unwrap()
            .nodes(5, None);

        add_device(&xs, &nodes).unwrap();
        store::write(
            &xs,
            NONE,
            "/local/domain/5/device/vbd/51728/event-channel",
            "9",
        )
        .unwrap();
        store::write(&xs, NONE, "/local/domain/5/device/vbd/51728/ring-ref", "8").unwrap();
        let disks = block_devices(&xs, 5).unwrap();

        assert_eq!(
            disks,
            [BlockDevice {
                devid: 51728,
                vdev: Some("xvdb".into()),
                backend_id: 0,
                frontend_id: 5,
                state: Some(1),
                evtch: Some(9),
                ring_ref: Some(8),
                backend_path: "/local/domain/0/backend/rvbd/5/51728".into(),
            }]
        );
    }

    #[test]
    fn an_added_device_has_libxl_s_permissions() {
        let store = TestStore::start();
        let xs = store.client();
        let nodes = NicPlan::new(&vif(""), 5, 0, MAC)
            .unwrap()
            .nodes(5);

        add_device(&xs, &nodes).unwrap();

        let perms = |path: &str| xs.get_perms(NONE, path).unwrap();
        let p = |domid, access| XsPerm { domid, access };
        let guest_owns = [p(5, XsPermAccess::None), p(0, XsPermAccess::Read)];
        let dom0_owns = [p(0, XsPermAccess::None), p(5, XsPermAccess::Read)];
        assert_eq!(perms("/local/domain/5/device/vif/0"), guest_owns);
        assert_eq!(perms("/local/domain/5/device/vif/0/state"), guest_owns);
        assert_eq!(perms("/local/domain/5/device/vif/0/mtu"), dom0_owns);
        assert_eq!(perms("/local/domain/0/backend/rvif/5/0"), dom0_owns);
        assert_eq!(perms("/local/domain/0/backend/rvif/5/0/mac"), dom0_owns);
        assert_eq!(
            store::read(&xs, NONE, "/libxl/5/device/vif/0/backend")
                .unwrap()
                .as_deref(),
            Some("/local/domain/0/backend/rvif/5/0")
        );
        assert_eq!(
            store::read(&xs, NONE, "/libxl/5/device/vif/0/bridge")
                .unwrap()
                .as_deref(),
            Some("xenbr0")
        );
    }

    #[test]
    fn adding_a_device_twice_says_it_exists() {
        let store = TestStore::start();
        let xs = store.client();
        let nodes = DiskPlan::new(&disk("/srv/a.img,raw,xvdb,w"))
            .unwrap()
            .nodes(5, None);
        add_device(&xs, &nodes).unwrap();

        let again = add_device(&xs, &nodes);

        assert!(matches!(
            again,
            Err(HostError::DeviceExists {
                domid: 5,
                kind: "vbd",
                devid: 51728
            })
        ));
    }

    #[test]
    fn an_added_vif_is_listed_with_its_mac() {
        let store = TestStore::start();
        let xs = store.client();
        let nodes = NicPlan::new(&vif(""), 5, 0, MAC)
            .unwrap()
            .nodes(5);
        add_device(&xs, &nodes).unwrap();
        store::write(&xs, NONE, "/local/domain/5/device/vif/0/tx-ring-ref", "768").unwrap();

        let nics = network_devices(&xs, 5).unwrap();

        assert_eq!(nics.len(), 1);
        assert_eq!(nics[0].mac.to_string(), "00:16:3e:01:02:03");
        assert_eq!(
            (nics[0].tx_ring_ref, nics[0].rx_ring_ref, nics[0].state),
            (Some(768), None, Some(1))
        );
        assert_eq!(nics[0].backend_path, "/local/domain/0/backend/rvif/5/0");
        assert_eq!(next_nic_devid(&xs, 5).unwrap(), 1);
        assert_eq!(next_nic_devid(&xs, 6).unwrap(), 0);
    }

    #[test]
    fn devices_attached_by_hand_are_listed_too() {
        // As tests/xen-scenarios' attach_rblkback writes them: no libxl
        // directory, a kernel-style frontend pointing at an `rvbd` backend.
        let store = TestStore::start();
        let xs = store.client();
        for (path, value) in [
            (
                "/local/domain/0/backend/rvbd/2/51712/frontend",
                "/local/domain/2/device/vbd/51712",
            ),
            ("/local/domain/0/backend/rvbd/2/51712/state", "4"),
            ("/local/domain/0/backend/rvbd/2/51712/dev", "xvda"),
            (
                "/local/domain/2/device/vbd/51712/backend",
                "/local/domain/0/backend/rvbd/2/51712",
            ),
            ("/local/domain/2/device/vbd/51712/state", "4"),
            (
                "/local/domain/0/backend/console/2/0/frontend",
                "/local/domain/2/console",
            ),
        ] {
            store::write(&xs, NONE, path, value).unwrap();
        }

        let disks = block_devices(&xs, 2).unwrap();
        let all = all_devices(&xs, 2, 0).unwrap();

        assert_eq!(disks.len(), 1);
        assert_eq!(
            (disks[0].devid, disks[0].state, disks[0].vdev.as_deref()),
            (51712, Some(4), Some("xvda"))
        );
        let backends: Vec<&str> = all.iter().map(|d| d.backend.as_str()).collect();
        assert_eq!(
            backends,
            [
                "/local/domain/0/backend/rvbd/2/51712",
                "/local/domain/0/backend/console/2/0"
            ]
        );
        assert_eq!(all[1].frontend, "/local/domain/2/console");
        assert!(all[1].is_console() && !all[0].is_console());
    }

    #[test]
    fn removal_closes_the_backend_then_cleans_up() {
        let store = TestStore::start();
        let xs = store.client();
        let nodes = DiskPlan::new(&disk("/srv/a.img,raw,xvdb,w"))
            .unwrap()
            .nodes(5, None);
        add_device(&xs, &nodes).unwrap();
        let d = &nodes.paths;

        assert_eq!(begin_remove(&xs, d, false).unwrap(), Removal::Closing);
        assert_eq!(backend_state(&xs, d).unwrap(), Some(XenbusState::Closing));
        assert_eq!(
            store::read(&xs, NONE, &format!("{}/online", d.backend))
                .unwrap()
                .as_deref(),
            Some("0")
        );
        assert!(store::exists(&xs, NONE, &d.frontend).unwrap());

        finish_remove(&xs, d).unwrap();

        for path in [
            &d.frontend,
            &d.backend,
            &d.libxl,
            &"/local/domain/0/backend".to_owned(),
        ] {
            assert!(!store::exists(&xs, NONE, path).unwrap(), "{path}");
        }
    }

    #[test]
    fn forced_removal_drops_the_frontend_first_and_keeps_closed_backends_closed() {
        let store = TestStore::start();
        let xs = store.client();
        let nodes = DiskPlan::new(&disk("/srv/a.img,raw,xvdb,w"))
            .unwrap()
            .nodes(5, None);
        add_device(&xs, &nodes).unwrap();
        let d = &nodes.paths;
        store::write(&xs, NONE, &d.state_path(), "6").unwrap();

        assert_eq!(begin_remove(&xs, d, true).unwrap(), Removal::Closing);

        assert!(!store::exists(&xs, NONE, &d.frontend).unwrap());
        assert_eq!(backend_state(&xs, d).unwrap(), Some(XenbusState::Closed));
        store::rm(&xs, NONE, &d.backend).unwrap();
        assert_eq!(begin_remove(&xs, d, false).unwrap(), Removal::BackendGone);
    }
}
