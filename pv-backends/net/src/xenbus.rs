//! The backend half of the xenbus handshake, as Linux's xen-netfront
//! expects it (the node names and order of Linux's xen-netback).
//!
//! The toolstack creates the backend directory
//! `/local/domain/<backend>/backend/vif/<frontend>/<devid>` with a
//! `frontend` node naming the frontend's directory (and normally `mac`,
//! and the frontend's own `mac`, which netfront reads). Then:
//!
//! 1. *Probe*: the backend creates the TAP `vif<domid>.<devid>` (MAC
//!    `fe:ff:ff:ff:ff:ff` as netback's vifs, the MTU, link up, bridge
//!    port: what the `vif-bridge` hotplug script does for netback, after
//!    which it writes `hotplug-status` = `connected`), writes the features
//!    netfront reads (`feature-sg`, `feature-gso-tcpv4`,
//!    `feature-gso-tcpv6`, `feature-ipv6-csum-offload`, `feature-rx-copy`,
//!    `feature-rx-flip`, `feature-multicast-control`,
//!    `feature-split-event-channels`, `multi-queue-max-queues`) and moves
//!    to InitWait.
//! 2. *Connect*: when the frontend is Initialised or Connected (netfront
//!    goes straight to Connected), the backend reads `request-rx-copy`
//!    (required), `feature-rx-notify`, `feature-sg`, `feature-gso-tcpv4`,
//!    `feature-gso-tcpv6`, `feature-no-csum-offload`,
//!    `feature-ipv6-csum-offload`, `multi-queue-num-queues` and per queue
//!    (`<frontend>` or `<frontend>/queue-N`) `tx-ring-ref`, `rx-ring-ref`
//!    and `event-channel-tx` with `event-channel-rx`, or `event-channel`;
//!    maps the rings, binds the channels, sets the TAP's offloads to what
//!    the frontend takes, starts each queue's thread(s) (two with split
//!    event channels), and moves to Connected.
//! 3. *Close*: when the frontend moves to Closing or Closed, the queues
//!    stop and every grant is unmapped before the backend follows. A
//!    frontend that comes back (Initialising after Closed) finds the
//!    backend in InitWait again. If the toolstack set `online` to 0, or
//!    the frontend's directory disappears, the backend exits after Closed.
//!
//! A frontend that sends bad configuration gets its device failed: an
//! `error` node, and the backend moves to Closing. A frontend that sends
//! malformed packets gets its interface disabled ([`crate::queue`]).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hypercall_abi::platform::{Transaction, Xenstore, XsError};
pub use hypercall_abi::xen::xenbus::XenbusState;
use hypercall_abi::xen::DomId;
use rxen_tap::{Delivery, Tap, TapError};

use crate::offload::RxFeatures;
use crate::platform::{Platform, PlatformError};
use crate::queue::{self, Queue, QueueBuffers, QueueError, QueueIo, QueueRings};
use crate::stats::Stats;
use pv_backend_common::StopSignal;

/// Largest number of queues offered (netback's default is the number of
/// CPUs; this bound is arbitrary but generous).
pub const MAX_QUEUES: u32 = 64;
/// The MAC address of the backend's interface, as Linux netback gives its
/// vifs: never used by anyone, and above any guest's in a bridge's choice
/// of its own address.
pub const TAP_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];
/// The bytes of frames each TAP queue may have written and not yet taken
/// by dom0's stack, with NAPI delivery ([`Tap::set_sndbuf`]): dozens of the
/// largest packets.
pub const TAP_SNDBUF: i32 = 4 << 20;

/// The MTU when neither `--mtu` nor the backend's `mtu` node gives one.
pub const DEFAULT_MTU: u32 = 1500;

/// How the frontend's packets, written to the TAP, reach dom0's network
/// stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapDelivery {
    /// The pure TCP acknowledgements in the write, as `Inline`; the other
    /// packets through a second TAP queue per queue whose NAPI instance
    /// runs in a kernel thread ([`Delivery::NapiThread`]) and takes a
    /// batch at a time. The TAP is then multi-queue, and steers frames for
    /// the frontend to the first queues.
    Split,
    /// Every packet in the write ([`Delivery::Inline`]).
    Inline,
    /// Every packet through the TAP queue's NAPI instance, in the write's
    /// softirq ([`Delivery::Napi`]).
    Napi,
    /// Every packet through the TAP queue's NAPI instance, in its kernel
    /// thread ([`Delivery::NapiThread`]).
    NapiThread,
}

impl TapDelivery {
    /// How the first queues (those also read) deliver.
    pub fn first_queues(self) -> Delivery {
        match self {
            TapDelivery::Split | TapDelivery::Inline => Delivery::Inline,
            TapDelivery::Napi => Delivery::Napi,
            TapDelivery::NapiThread => Delivery::NapiThread,
        }
    }

    /// Whether each queue has a second TAP queue for the bulk of the
    /// frontend's packets.
    pub fn bulk_queue(self) -> bool {
        self == TapDelivery::Split
    }
}

/// What the backend offers and where it lives.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The backend's domain (normally 0).
    pub backend_domid: DomId,
    /// The frontend's domain.
    pub frontend_domid: DomId,
    /// The device index (`devid`, 0 for the first vif).
    pub devid: u32,
    /// The backend kind in the device's path (`backend/KIND/...`): `vif`
    /// is Xen's, which Linux's in-kernel netback also serves; another kind
    /// keeps the two apart on one dom0.
    pub kind: String,
    /// The TAP's name; `vif<domid>.<devid>` by default.
    pub ifname: Option<String>,
    /// The guest's MAC address; by default the backend's `mac` node.
    pub mac: Option<[u8; 6]>,
    /// A Linux bridge to make the TAP a port of.
    pub bridge: Option<String>,
    /// The TAP's MTU; by default the backend's `mtu` node, else 1500.
    pub mtu: Option<u32>,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// Offer `feature-split-event-channels`.
    pub split_event_channels: bool,
    /// Write packets from the frontend to the TAP on a thread of their
    /// own per queue (see [`crate::queue`]), so that the next batch is
    /// copied out while the TAP takes the last; else on the transmit
    /// thread.
    pub tap_writer_thread: bool,
    /// How the packets written to the TAP reach dom0's network stack.
    pub tap_delivery: TapDelivery,
    /// Write `hotplug-status` = `connected` once the TAP is set up, as the
    /// hotplug script does for in-kernel netback (libxl waits for it).
    pub hotplug_status: bool,
    /// How long the control loop waits for a xenstore event before it
    /// checks the stop signal and the queues again.
    pub poll_interval: Duration,
}

impl BackendConfig {
    /// Linux netback's defaults for device `devid` of `frontend_domid`,
    /// served from `backend_domid`.
    pub fn new(backend_domid: DomId, frontend_domid: DomId, devid: u32) -> Self {
        BackendConfig {
            backend_domid,
            frontend_domid,
            devid,
            kind: "vif".to_owned(),
            ifname: None,
            mac: None,
            bridge: None,
            mtu: None,
            max_queues: std::thread::available_parallelism()
                .map_or(1, |n| n.get() as u32)
                .min(MAX_QUEUES),
            split_event_channels: true,
            tap_writer_thread: true,
            tap_delivery: TapDelivery::Split,
            hotplug_status: true,
            poll_interval: Duration::from_millis(200),
        }
    }

    /// The backend directory.
    pub fn backend_path(&self) -> String {
        format!(
            "/local/domain/{}/backend/{}/{}/{}",
            self.backend_domid, self.kind, self.frontend_domid, self.devid
        )
    }

    /// The TAP's name.
    pub fn tap_name(&self) -> String {
        self.ifname
            .clone()
            .unwrap_or_else(|| format!("vif{}.{}", self.frontend_domid, self.devid))
    }
}

/// Parses a MAC address written as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why the backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A xenstore request failed.
    #[error("xenstore {op} of {path} failed: {source}")]
    Xenstore {
        /// The request, e.g. `"read"`.
        op: &'static str,
        /// The node.
        path: String,
        /// The error.
        #[source]
        source: XsError,
    },
    /// A platform handle could not be opened.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The TAP could not be created or configured.
    #[error("the TAP interface: {0}")]
    Tap(#[from] TapError),
    /// The backend directory has no `frontend` node.
    #[error("{0}/frontend does not exist: the toolstack has not created this device (xl network-attach)")]
    NoDevice(String),
    /// A node holds something unusable.
    #[error("{path} holds {value:?}, which is not {expected}")]
    BadNode {
        /// The node.
        path: String,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// The frontend did not ask for the copying receive path.
    #[error("the frontend did not set request-rx-copy; only the copying receive path (feature-rx-copy) is supported")]
    NoRxCopy,
    /// The frontend asked for more than was offered.
    #[error("the frontend asked for {requested} {what}, more than the {max} offered")]
    TooMuch {
        /// What, e.g. `"queues"`.
        what: &'static str,
        /// Requested.
        requested: u32,
        /// Offered.
        max: u32,
    },
    /// A queue could not be connected or broke.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A queue thread could not be started.
    #[error("cannot start a queue thread: {0}")]
    Spawn(std::io::Error),
}

/// The running queues of a connected device.
struct Connection {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<Result<(), QueueError>>>,
    disabled: Arc<AtomicBool>,
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Exit,
}

/// One network device served to one frontend.
pub struct Backend<P: Platform> {
    platform: P,
    store: P::Store,
    grants: Arc<P::Grants>,
    cfg: BackendConfig,
    be_path: String,
    fe_path: String,
    tap: Tap,
    mac: Option<[u8; 6]>,
    frontend_seen: bool,
    state: XenbusState,
    connection: Option<Connection>,
    stats: Arc<Stats>,
}

impl<P: Platform> std::fmt::Debug for Backend<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("backend", &self.be_path)
            .field("frontend", &self.fe_path)
            .field("tap", &self.tap.name())
            .field("state", &self.state)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl<P: Platform> Backend<P> {
    /// Opens the platform handles, finds the frontend of the device the
    /// toolstack created, and creates the TAP.
    pub fn new(platform: P, mut cfg: BackendConfig) -> Result<Self, BackendError> {
        cfg.max_queues = cfg.max_queues.clamp(1, MAX_QUEUES);
        let store = platform.xenstore()?;
        let grants = Arc::new(platform.grant_map()?);
        let be_path = cfg.backend_path();
        let read = |node: &str| -> Result<Option<String>, BackendError> {
            let path = format!("{be_path}/{node}");
            match store.read(Transaction::NONE, &path) {
                Ok(value) => Ok(Some(
                    String::from_utf8_lossy(&value)
                        .trim_end_matches('\0')
                        .trim()
                        .to_owned(),
                )),
                Err(e) if e.is_not_found() => Ok(None),
                Err(source) => Err(BackendError::Xenstore {
                    op: "read",
                    path,
                    source,
                }),
            }
        };
        let fe_path = read("frontend")?.ok_or_else(|| BackendError::NoDevice(be_path.clone()))?;
        if !fe_path.starts_with('/') {
            let path = format!("{be_path}/frontend");
            return Err(BackendError::BadNode {
                path,
                value: fe_path,
                expected: "an absolute path",
            });
        }
        let mac = match (cfg.mac, read("mac")?) {
            (Some(mac), _) => Some(mac),
            (None, Some(text)) => Some(parse_mac(&text).ok_or_else(|| BackendError::BadNode {
                path: format!("{be_path}/mac"),
                value: text,
                expected: "a MAC address (aa:bb:cc:dd:ee:ff)",
            })?),
            (None, None) => None,
        };
        let mtu = match (cfg.mtu, read("mtu")?) {
            (Some(mtu), _) => mtu,
            (None, Some(text)) => text.parse().map_err(|_| BackendError::BadNode {
                path: format!("{be_path}/mtu"),
                value: text,
                expected: "an MTU in bytes",
            })?,
            (None, None) => DEFAULT_MTU,
        };
        let tap = Tap::create_with(
            &cfg.tap_name(),
            cfg.max_queues > 1 || cfg.tap_delivery.bulk_queue(),
            cfg.tap_delivery.first_queues(),
        )?;
        tap.set_carrier(false)?;
        tap.set_mac(TAP_MAC)?;
        tap.set_mtu(mtu)?;
        tap.set_up(true)?;
        if let Some(bridge) = &cfg.bridge {
            tap.add_to_bridge(bridge)?;
        }
        Ok(Backend {
            platform,
            store,
            grants,
            cfg,
            be_path,
            fe_path,
            tap,
            mac,
            frontend_seen: false,
            state: XenbusState::Unknown,
            connection: None,
            stats: Arc::default(),
        })
    }

    /// The packet counters of all queues.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The backend directory.
    pub fn backend_path(&self) -> &str {
        &self.be_path
    }

    /// The frontend directory.
    pub fn frontend_path(&self) -> &str {
        &self.fe_path
    }

    /// The TAP's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Serves the device until `stop`, or until the toolstack removes it;
    /// then disconnects and leaves the backend Closed.
    pub fn run(&mut self, stop: &StopSignal) -> Result<(), BackendError> {
        self.probe()?;
        let state_path = format!("{}/state", self.fe_path);
        let token = format!("rnetback:{}", self.be_path);
        self.store
            .watch(&state_path, &token)
            .map_err(|source| BackendError::Xenstore {
                op: "watch",
                path: state_path.clone(),
                source,
            })?;
        let result = self.serve(stop);
        self.disconnect();
        let closed = self.switch(XenbusState::Closed);
        if let Err(e) = self.store.unwatch(&state_path, &token) {
            log::debug!("unwatching {state_path}: {e}");
        }
        let s = self.stats.snapshot();
        log::info!(
            "{}: stopped; tx {} packets ({} bytes, {} errors, {} dropped), rx {} packets ({} bytes, {} dropped), {} fatal, {} sleeps, {} events sent",
            self.be_path,
            s.tx_packets,
            s.tx_bytes,
            s.tx_errors,
            s.tx_dropped,
            s.rx_packets,
            s.rx_bytes,
            s.rx_dropped,
            s.fatal_errors,
            s.sleeps,
            s.notifies
        );
        result.and(closed)
    }

    fn serve(&mut self, stop: &StopSignal) -> Result<(), BackendError> {
        loop {
            if stop.is_stopped() {
                log::info!("{}: asked to stop", self.be_path);
                return Ok(());
            }
            self.check_queues()?;
            let event = self
                .store
                .read_watch(Some(self.cfg.poll_interval))
                .map_err(|source| BackendError::Xenstore {
                    op: "read watch",
                    path: self.fe_path.clone(),
                    source,
                })?;
            if event.is_some() && self.frontend_changed()? == Next::Exit {
                return Ok(());
            }
        }
    }

    /// Writes what netfront reads before it sets up its rings, and moves to
    /// InitWait.
    fn probe(&mut self) -> Result<(), BackendError> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let mut nodes = vec![
            ("feature-sg", flag(true)),
            ("feature-gso-tcpv4", flag(true)),
            ("feature-gso-tcpv6", flag(true)),
            ("feature-ipv6-csum-offload", flag(true)),
            ("feature-rx-copy", flag(true)),
            ("feature-rx-flip", flag(false)),
            ("feature-multicast-control", flag(false)),
            (
                "feature-split-event-channels",
                flag(self.cfg.split_event_channels),
            ),
            ("multi-queue-max-queues", self.cfg.max_queues.to_string()),
        ];
        if self.cfg.mac.is_some() {
            nodes.extend(self.mac.map(|mac| ("mac", format_mac(&mac))));
        }
        if self.cfg.mtu.is_some() {
            nodes.push(("mtu", self.tap.mtu()?.to_string()));
        }
        if self.cfg.hotplug_status {
            nodes.push(("hotplug-status", "connected".to_owned()));
        }
        for (node, value) in nodes {
            self.write(node, &value)?;
        }
        log::info!(
            "{}: TAP {}{}, guest MAC {}, frontend {}",
            self.be_path,
            self.tap.name(),
            self.cfg
                .bridge
                .as_deref()
                .map(|b| format!(" on bridge {b}"))
                .unwrap_or_default(),
            self.mac
                .map_or_else(|| "unknown".to_owned(), |m| format_mac(&m)),
            self.fe_path
        );
        self.switch(XenbusState::InitWait)
    }

    fn write(&self, node: &str, value: &str) -> Result<(), BackendError> {
        let path = format!("{}/{node}", self.be_path);
        self.store
            .write(Transaction::NONE, &path, value.as_bytes())
            .map_err(|source| BackendError::Xenstore {
                op: "write",
                path,
                source,
            })
    }

    fn switch(&mut self, state: XenbusState) -> Result<(), BackendError> {
        if self.state != state {
            log::info!("{}: {:?} -> {:?}", self.be_path, self.state, state);
        }
        self.write("state", state.as_str())?;
        self.state = state;
        Ok(())
    }

    /// Reads a node; `None` if it does not exist.
    fn read_node(&self, path: &str) -> Result<Option<String>, BackendError> {
        match self.store.read(Transaction::NONE, path) {
            Ok(value) => Ok(Some(
                String::from_utf8_lossy(&value)
                    .trim_end_matches('\0')
                    .trim()
                    .to_owned(),
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(BackendError::Xenstore {
                op: "read",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads a `state` node; Unknown if it is missing or unreadable.
    fn read_state(&self, path: &str) -> Result<XenbusState, BackendError> {
        Ok(match self.read_node(path)? {
            None => XenbusState::Unknown,
            Some(value) => XenbusState::parse(value.as_bytes()).unwrap_or(XenbusState::Unknown),
        })
    }

    /// Reads an unsigned node, `default` if it does not exist.
    fn read_unsigned(&self, path: &str, default: Option<u32>) -> Result<u32, BackendError> {
        match (self.read_node(path)?, default) {
            (Some(value), _) => value.parse().map_err(|_| BackendError::BadNode {
                path: path.to_owned(),
                value,
                expected: "an unsigned decimal number",
            }),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(BackendError::BadNode {
                path: path.to_owned(),
                value: String::new(),
                expected: "present (the frontend must publish it)",
            }),
        }
    }

    /// Reads a frontend feature flag (`xenbus_read_unsigned(..., 0) != 0`).
    fn feature(&self, node: &str) -> Result<bool, BackendError> {
        Ok(self.read_unsigned(&format!("{}/{node}", self.fe_path), Some(0))? != 0)
    }

    fn frontend_changed(&mut self) -> Result<Next, BackendError> {
        let state = self.read_state(&format!("{}/state", self.fe_path))?;
        log::debug!(
            "{}: frontend is {state:?}, backend {:?}",
            self.be_path,
            self.state
        );
        if state != XenbusState::Unknown {
            self.frontend_seen = true;
        }
        match state {
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed {
                    log::info!(
                        "{}: frontend is back, waiting for it to reconnect",
                        self.be_path
                    );
                    self.switch(XenbusState::InitWait)?;
                }
            }
            XenbusState::Initialised | XenbusState::Connected => {
                if matches!(self.state, XenbusState::InitWait | XenbusState::Closed) {
                    self.connect()?;
                }
            }
            XenbusState::Closing => {
                self.disconnect();
                self.switch(XenbusState::Closing)?;
            }
            XenbusState::Closed => {
                self.disconnect();
                self.switch(XenbusState::Closed)?;
                let online = format!("{}/online", self.be_path);
                if self.read_node(&online)?.as_deref() == Some("0") {
                    log::info!("{}: the toolstack took the device offline", self.be_path);
                    return Ok(Next::Exit);
                }
            }
            XenbusState::Unknown if !self.frontend_seen => {
                log::debug!("{}: waiting for the frontend to appear", self.be_path);
            }
            XenbusState::Unknown => {
                log::info!("{}: the frontend is gone", self.be_path);
                return Ok(Next::Exit);
            }
            XenbusState::InitWait | XenbusState::Reconfiguring | XenbusState::Reconfigured => {
                log::warn!("{}: ignoring frontend state {state:?}", self.be_path);
            }
        }
        Ok(Next::Continue)
    }

    /// Connects to the frontend's rings; a failure the frontend caused
    /// fails the device instead of the backend.
    fn connect(&mut self) -> Result<(), BackendError> {
        self.disconnect();
        match self.connect_rings() {
            Ok(connection) => self.connection = Some(connection),
            Err(
                e @ (BackendError::Xenstore { .. }
                | BackendError::Platform(_)
                | BackendError::Spawn(_)
                | BackendError::Tap(_)),
            ) => return Err(e),
            Err(e) => return self.fail(&e),
        }
        self.tap.set_carrier(true)?;
        self.switch(XenbusState::Connected)
    }

    /// Reads the frontend's nodes, maps its rings, binds its event
    /// channels and starts the queues' threads.
    fn connect_rings(&mut self) -> Result<Connection, BackendError> {
        let fe = self.fe_path.clone();
        if !self.feature("request-rx-copy")? {
            return Err(BackendError::NoRxCopy);
        }
        let rx_notify = self.feature("feature-rx-notify")?;
        let features = RxFeatures {
            sg: self.feature("feature-sg")?,
            gso_tcpv4: self.feature("feature-gso-tcpv4")?,
            gso_tcpv6: self.feature("feature-gso-tcpv6")?,
            ip_csum: !self.feature("feature-no-csum-offload")?,
            ipv6_csum: self.feature("feature-ipv6-csum-offload")?,
        };
        let queues = self.read_unsigned(&format!("{fe}/multi-queue-num-queues"), Some(1))?;
        if queues == 0 || queues > self.cfg.max_queues {
            return Err(BackendError::TooMuch {
                what: "queues",
                requested: queues,
                max: self.cfg.max_queues,
            });
        }
        let mut rings = Vec::new();
        for q in 0..queues {
            let dir = if queues == 1 {
                fe.clone()
            } else {
                format!("{fe}/queue-{q}")
            };
            let tx_ref = self.read_unsigned(&format!("{dir}/tx-ring-ref"), None)?;
            let rx_ref = self.read_unsigned(&format!("{dir}/rx-ring-ref"), None)?;
            let split = match self.read_node(&format!("{dir}/event-channel-tx"))? {
                Some(_) => {
                    let tx = self.read_unsigned(&format!("{dir}/event-channel-tx"), None)?;
                    let rx = self.read_unsigned(&format!("{dir}/event-channel-rx"), None)?;
                    Some((tx, rx))
                }
                None => None,
            };
            let (tx_evtchn, rx_evtchn) = match split {
                Some((tx, rx)) => (tx, Some(rx)),
                None => (
                    self.read_unsigned(&format!("{dir}/event-channel"), None)?,
                    None,
                ),
            };
            rings.push(QueueRings {
                tx_ref,
                rx_ref,
                tx_evtchn,
                rx_evtchn,
            });
        }
        // The TAP: queue 0 is the backend's own fd (dup'd), the others are
        // opened for this connection and detached when it ends.
        self.tap.set_offload(features.tap_offload())?;
        drain(&self.tap);
        let mut taps = vec![self.tap.try_clone()?];
        for _ in 1..queues {
            taps.push(self.tap.open_queue()?);
        }
        // The bulk queues come after all of those, and frames for the
        // frontend are steered to those only.
        let bulk = if self.cfg.tap_delivery.bulk_queue() {
            self.open_bulk_queues(queues).unwrap_or_else(|e| {
                log::warn!("{}: no bulk TAP queues ({e}); every packet goes through the first queues", self.be_path);
                Vec::new()
            })
        } else {
            Vec::new()
        };
        // Frames written for a NAPI instance wait in the kernel until its
        // poll, charged to their queue's send buffer, which the kernel
        // leaves unbounded: bound it, so that a frontend sending faster
        // than dom0's stack takes its packets is held back on its ring
        // (the TAP writes wait for room) instead of growing dom0's memory.
        if !bulk.is_empty() || self.cfg.tap_delivery.first_queues() != Delivery::Inline {
            if let Err(e) = self.tap.set_sndbuf(TAP_SNDBUF) {
                log::warn!("{}: the TAP's queues stay unbounded: {e}", self.be_path);
            }
        }
        let mut bulk = bulk.into_iter();
        let mut connected = Vec::new();
        for (q, ring) in (0..).zip(&rings) {
            let evtchn = self.platform.event_channels()?;
            let rx_evtchn = match ring.rx_evtchn {
                Some(_) => Some(self.platform.event_channels()?),
                None => None,
            };
            connected.push(Queue::connect(
                q,
                &*self.grants,
                evtchn,
                rx_evtchn,
                self.cfg.frontend_domid,
                ring,
            )?);
        }
        let stop = Arc::new(StopSignal::new().map_err(BackendError::Spawn)?);
        let disabled = Arc::new(AtomicBool::new(false));
        let mut connection = Connection {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
            disabled: Arc::clone(&disabled),
        };
        for (queue, tap) in connected.into_iter().zip(taps) {
            let io = QueueIo {
                grants: Arc::clone(&self.grants),
                frontend: self.cfg.frontend_domid,
                tap,
                bulk: bulk.next(),
                features,
                rx_notify,
                stats: Arc::clone(&self.stats),
                disabled: Arc::clone(&disabled),
            };
            let own = self.cfg.backend_domid;
            let buffers = QueueBuffers {
                tx: self.platform.copy_memory(own, queue::BATCH_BYTES, queue::MIN_BATCH_BYTES),
                rx: self.platform.copy_memory(own, queue::BATCH_BYTES, queue::MIN_BATCH_BYTES),
                tx_spare: self
                    .cfg
                    .tap_writer_thread
                    .then(|| self.platform.copy_memory(own, queue::BATCH_BYTES, queue::MIN_BATCH_BYTES)),
            };
            match queue::spawn(queue, io, buffers, Arc::clone(&stop)) {
                Ok(threads) => connection.threads.extend(threads),
                Err(e) => {
                    stop_connection(connection);
                    return Err(BackendError::Spawn(e));
                }
            }
        }
        log::info!(
            "{}: connected {queues} queue(s){}; frontend features: {features:?}, rx-notify {rx_notify}",
            self.be_path,
            if rings.iter().any(|r| r.rx_evtchn.is_some()) { " with split event channels" } else { "" },
        );
        Ok(connection)
    }

    /// Stops the queues and unmaps everything of the frontend's.
    /// Opens a bulk TAP queue for each of `queues` (after the first
    /// queues, all open) and steers frames for the frontend to the first
    /// ones. On an error the bulk queues opened so far close again, so no
    /// frame is steered to a queue nothing reads.
    fn open_bulk_queues(&self, queues: u32) -> Result<Vec<Tap>, TapError> {
        let bulk = (0..queues)
            .map(|_| self.tap.open_queue_with(Delivery::NapiThread))
            .collect::<Result<Vec<_>, _>>()?;
        self.tap.steer_to_first(queues)?;
        Ok(bulk)
    }

    fn disconnect(&mut self) {
        if let Some(connection) = self.connection.take() {
            if let Err(e) = self.tap.set_carrier(false) {
                log::warn!("{}: {e}", self.be_path);
            }
            if connection
                .disabled
                .load(std::sync::atomic::Ordering::Acquire)
            {
                log::info!(
                    "{}: the disabled interface is reset by the frontend's reconnect",
                    self.be_path
                );
            }
            stop_connection(connection);
            log::info!("{}: disconnected", self.be_path);
        }
    }

    /// A queue thread that ended on its own broke: fail the device.
    fn check_queues(&mut self) -> Result<(), BackendError> {
        let finished = self
            .connection
            .as_ref()
            .is_some_and(|c| c.threads.iter().any(JoinHandle::is_finished));
        if !finished {
            return Ok(());
        }
        let mut failure = None;
        if let Some(connection) = self.connection.take() {
            connection.stop.stop();
            for thread in connection.threads {
                match thread.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(BackendError::Queue(e)),
                    Err(_) => log::error!("{}: a queue thread panicked", self.be_path),
                }
            }
        }
        match failure {
            Some(e) => self.fail(&e),
            None => self.fail(&BackendError::Spawn(std::io::Error::other(
                "a queue stopped unexpectedly",
            ))),
        }
    }

    /// Fails the device as `xenbus_dev_fatal` does: records the error
    /// where the toolstack looks, disconnects, and moves to Closing.
    fn fail(&mut self, error: &BackendError) -> Result<(), BackendError> {
        log::error!("{}: {error}", self.be_path);
        self.disconnect();
        let relative = self
            .be_path
            .trim_start_matches(&format!("/local/domain/{}/", self.cfg.backend_domid));
        let path = format!(
            "/local/domain/{}/error/{relative}/error",
            self.cfg.backend_domid
        );
        if let Err(e) = self
            .store
            .write(Transaction::NONE, &path, error.to_string().as_bytes())
        {
            log::warn!("cannot record the error in {path}: {e}");
        }
        self.switch(XenbusState::Closing)
    }
}

/// Discards frames queued on the TAP while no frontend was connected.
fn drain(tap: &Tap) {
    let mut buf = vec![0u8; 65536 + 64];
    for _ in 0..4096 {
        if tap.recv(&mut buf).is_err() {
            break;
        }
    }
}

/// Stops a connection's queues and waits for them; their mappings and
/// event channels are released as the threads end.
fn stop_connection(connection: Connection) {
    connection.stop.stop();
    for thread in connection.threads {
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("{e}"),
            Err(_) => log::error!("a queue thread panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names_follow_xl_and_netback() {
        let cfg = BackendConfig::new(0, 5, 1);
        assert_eq!(cfg.backend_path(), "/local/domain/0/backend/vif/5/1");
        assert_eq!(cfg.tap_name(), "vif5.1");
        assert!(cfg.max_queues >= 1);
    }

    #[test]
    fn macs_parse_and_print() {
        let mac = parse_mac("00:16:3e:0a:Bc:1").unwrap();
        assert_eq!(mac, [0x00, 0x16, 0x3e, 0x0a, 0xbc, 0x01]);
        assert_eq!(format_mac(&mac), "00:16:3e:0a:bc:01");
        for bad in [
            "",
            "00:16:3e:0a:bc",
            "00:16:3e:0a:bc:01:02",
            "00:16:3e:0a:bc:100",
            "zz:16:3e:0a:bc:01",
            "::::::",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
