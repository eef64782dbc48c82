//! The backend half of the xenbus handshake, as Linux's xen-blkfront
//! expects it (the node names and order of Linux's xen-blkback).
//!
//! The toolstack creates the backend directory
//! `/local/domain/<backend>/backend/vbd/<frontend>/<devid>` with a
//! `frontend` node naming the frontend's directory. Then:
//!
//! 1. *Probe*: the backend writes what the frontend reads before it sets up
//!    its rings (`max-ring-page-order`, `multi-queue-max-queues`,
//!    `feature-max-indirect-segments`) and what it reads once connected
//!    (`feature-flush-cache`, `feature-barrier`, `feature-discard` with
//!    `discard-granularity`, `discard-alignment`, `discard-secure`,
//!    `feature-persistent`, `sectors`, `info`, `sector-size`,
//!    `physical-sector-size`), and moves to InitWait.
//! 2. *Connect*: when the frontend is Initialised (or Connected), the
//!    backend reads `protocol`, `feature-persistent`,
//!    `multi-queue-num-queues`, `ring-page-order`, and per queue
//!    (`<frontend>` or `<frontend>/queue-N`) `ring-ref` (or `ring-ref0..`)
//!    and `event-channel`; maps the rings, binds the channels, starts one
//!    thread per queue, rewrites the device nodes in a transaction and
//!    moves to Connected.
//! 3. *Close*: when the frontend moves to Closing or Closed, the queues
//!    stop and every grant is unmapped before the backend follows to
//!    Closing or Closed. A frontend that comes back (Initialising after
//!    Closed, as blkfront does when reloaded) finds the backend in InitWait
//!    again. If the toolstack set `online` to 0, or the frontend's
//!    directory disappears, the backend exits after Closed.
//!
//! A frontend that sends bad configuration, or breaks a ring, gets its
//! device failed: an `error` node, and the backend moves to Closing.
//!
//! *Take-over*: Linux's blkfront does not reconnect on its own once its
//! backend leaves Connected while the disk is in use, so a backend process
//! that is restarted (after a crash, a kill, or an upgrade that stopped the
//! old one with [`BackendConfig::keep_connected`]) must pick up the running
//! connection without the frontend noticing. When both `state` nodes read
//! Connected at start-up, the backend skips the handshake: it reads the
//! frontend's ring nodes as in *Connect*, maps the rings, binds the
//! frontend's event channels again (the old process's ports closed when it
//! died, which left the frontend's ends unbound and offered to us), and
//! serves again every request without a response (see [`queue`]). Nothing
//! in xenstore changes but a `sectors` that no longer matches the disk,
//! which is rewritten as blkback does on a resize. In any other pair of
//! states the backend starts the handshake afresh.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hypercall_abi::platform::{Transaction, Xenstore, XsError};
use hypercall_abi::xen::blkif::{VdiskInfo, BLKIF_MAX_INDIRECT_SEGMENTS};
pub use hypercall_abi::xen::xenbus::XenbusState;
use hypercall_abi::xen::xenbus::XEN_IO_PROTO_ABI_X86_64;
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};

use crate::device::BlockDevice;
use crate::disk::Disk;
use crate::grants::{GrantPages, DEFAULT_MAX_PERSISTENT_GRANTS};
use crate::platform::{Platform, PlatformError};
use crate::queue::{self, Coalesce, Queue, QueueError};
use crate::request::Limits;
use crate::stats::Stats;
use pv_backend_common::StopSignal;

/// `XEN_IO_PROTO_ABI_X86_64`, the only ring layout served.
pub const PROTOCOL_X86_64: &str = XEN_IO_PROTO_ABI_X86_64;
/// Largest `ring-page-order` the ring code supports (`XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Largest number of queues offered (an arbitrary but generous bound).
pub const MAX_QUEUES: u32 = 64;

/// What the backend offers and where it lives.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The backend's domain (normally 0).
    pub backend_domid: DomId,
    /// The frontend's domain.
    pub frontend_domid: DomId,
    /// The virtual device number (`devid`, e.g. 51712 for xvda).
    pub devid: u32,
    /// The backend kind in the device's path (`backend/KIND/...`): `vbd`
    /// is Xen's, which Linux's in-kernel blkback also serves; another kind
    /// keeps the two apart on one dom0.
    pub kind: String,
    /// `multi-queue-max-queues`.
    pub max_queues: u32,
    /// `max-ring-page-order`.
    pub max_ring_page_order: u32,
    /// `feature-max-indirect-segments`.
    pub max_indirect_segments: u32,
    /// Offer `feature-persistent`.
    pub persistent: bool,
    /// Persistent grants kept per queue.
    pub max_persistent_grants: usize,
    /// How long the control loop waits for a xenstore event before it
    /// checks the stop signal and the queues again.
    pub poll_interval: Duration,
    /// On a stop request (SIGTERM), leave a connected device Connected in
    /// xenstore instead of moving it to Closed, so that the next backend
    /// process started for it takes the connection over (an upgrade). The
    /// queues still stop cleanly: every request taken off a ring is
    /// answered, and every grant and event channel is released.
    pub keep_connected: bool,
    /// How long each queue busy-polls its ring before sleeping on its
    /// event channel ([`crate::queue::Queue::polling`]); zero (the
    /// default) sleeps at once.
    pub poll: Duration,
    /// Interrupt moderation ([`crate::queue::Queue::coalescing`]); on by
    /// default ([`Coalesce::DEFAULT`]).
    pub coalesce: Option<Coalesce>,
}

impl BackendConfig {
    /// Linux blkback's defaults for device `devid` of `frontend_domid`,
    /// served from `backend_domid`.
    pub fn new(backend_domid: DomId, frontend_domid: DomId, devid: u32) -> Self {
        BackendConfig {
            backend_domid,
            frontend_domid,
            devid,
            max_queues: std::thread::available_parallelism().map_or(1, |n| n.get() as u32).min(MAX_QUEUES),
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            max_indirect_segments: 256,
            persistent: true,
            max_persistent_grants: DEFAULT_MAX_PERSISTENT_GRANTS,
            poll_interval: Duration::from_millis(200),
            kind: "vbd".to_owned(),
            keep_connected: false,
            poll: Duration::ZERO,
            coalesce: Some(Coalesce::DEFAULT),
        }
    }

    /// The backend directory.
    pub fn backend_path(&self) -> String {
        format!("/local/domain/{}/backend/{}/{}/{}", self.backend_domid, self.kind, self.frontend_domid, self.devid)
    }
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
    /// The backend directory has no `frontend` node.
    #[error("{0}/frontend does not exist: the toolstack has not created this device (xl block-attach)")]
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
    /// The frontend asked for a ring layout other than x86_64's.
    #[error("the frontend uses ring protocol {0:?}; only {PROTOCOL_X86_64:?} is supported")]
    Protocol(String),
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
    /// A transaction kept conflicting.
    #[error("a xenstore transaction on {0} kept conflicting")]
    TransactionConflict(String),
    /// Taking over a connected frontend failed to bind its event channel:
    /// another backend process most likely still serves the device.
    #[error(
        "{path}: cannot take over the connected frontend: {source}; \
         stop the backend process still serving the device, then start this one again"
    )]
    TakeOver {
        /// The backend directory.
        path: String,
        /// The queue's error.
        #[source]
        source: QueueError,
    },
}

/// The running queues of a connected device.
struct Connection {
    stop: Arc<StopSignal>,
    threads: Vec<JoinHandle<Result<(), QueueError>>>,
}

/// How rings are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    /// A handshake: the frontend set up fresh rings.
    Connect,
    /// A take-over of rings a previous backend process served.
    Resume,
}

/// Why the backend stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The stop signal.
    Stopped,
    /// The toolstack took the device offline, or the frontend is gone.
    Removed,
}

/// What to do after a frontend state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Exit,
}

/// One block device served to one frontend.
pub struct Backend<P: Platform, D: Disk> {
    platform: P,
    store: P::Store,
    grants: Arc<P::Grants>,
    disk: Arc<D>,
    cfg: BackendConfig,
    be_path: String,
    fe_path: String,
    /// The frontend's `state` node has been seen: its disappearing
    /// afterwards means the frontend (its domain) is gone.
    frontend_seen: bool,
    state: XenbusState,
    connection: Option<Connection>,
    stats: Arc<Stats>,
}

impl<P: Platform, D: Disk> std::fmt::Debug for Backend<P, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("backend", &self.be_path)
            .field("frontend", &self.fe_path)
            .field("state", &self.state)
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl<P: Platform, D: Disk + 'static> Backend<P, D> {
    /// Opens the platform handles and finds the frontend of the device the
    /// toolstack created.
    pub fn new(platform: P, disk: Arc<D>, mut cfg: BackendConfig) -> Result<Self, BackendError> {
        cfg.max_queues = cfg.max_queues.clamp(1, MAX_QUEUES);
        cfg.max_ring_page_order = cfg.max_ring_page_order.min(MAX_RING_PAGE_ORDER);
        cfg.max_indirect_segments = cfg.max_indirect_segments.min(BLKIF_MAX_INDIRECT_SEGMENTS as u32);
        let store = platform.xenstore()?;
        let grants = Arc::new(platform.grant_map()?);
        let be_path = cfg.backend_path();
        let frontend = format!("{be_path}/frontend");
        let fe_path = match store.read(Transaction::NONE, &frontend) {
            Ok(value) => String::from_utf8_lossy(&value).trim_end_matches('\0').to_owned(),
            Err(e) if e.is_not_found() => return Err(BackendError::NoDevice(be_path)),
            Err(source) => return Err(BackendError::Xenstore { op: "read", path: frontend, source }),
        };
        if !fe_path.starts_with('/') {
            return Err(BackendError::BadNode { path: frontend, value: fe_path, expected: "an absolute path" });
        }
        Ok(Backend {
            platform,
            store,
            grants,
            disk,
            cfg,
            be_path,
            fe_path,
            frontend_seen: false,
            state: XenbusState::Unknown,
            connection: None,
            stats: Arc::default(),
        })
    }

    /// The request counters of all queues.
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

    /// Serves the device until `stop`, or until the toolstack removes it;
    /// then disconnects and leaves the backend Closed (or, with
    /// [`BackendConfig::keep_connected`] and a device connected when
    /// `stop` came, Connected for the next backend process to take over).
    ///
    /// A device found connected on both ends, as a previous backend
    /// process left it, is taken over without a handshake.
    pub fn run(&mut self, stop: &StopSignal) -> Result<(), BackendError> {
        if !self.resume()? {
            self.probe()?;
        }
        let state_path = format!("{}/state", self.fe_path);
        let token = format!("rblkback:{}", self.be_path);
        if let Err(source) = self.store.watch(&state_path, &token) {
            self.disconnect();
            return Err(BackendError::Xenstore { op: "watch", path: state_path, source });
        }
        let result = self.serve(stop);
        let hand_over = self.cfg.keep_connected
            && matches!(result, Ok(Ended::Stopped))
            && self.state == XenbusState::Connected
            && self.connection.is_some();
        let result = result.map(drop);
        self.disconnect();
        let closed = if hand_over {
            log::info!("{}: left Connected for the next backend process to take over", self.be_path);
            Ok(())
        } else {
            self.switch(XenbusState::Closed)
        };
        if let Err(e) = self.store.unwatch(&state_path, &token) {
            log::debug!("unwatching {state_path}: {e}");
        }
        let stats = self.stats.snapshot();
        log::info!(
            "{}: stopped; served {} reads ({} sectors), {} writes ({} sectors), {} flushes, {} discards, {} errors; {} rounds, {} events received, {} sent",
            self.be_path,
            stats.rd_req,
            stats.rd_sect,
            stats.wr_req,
            stats.wr_sect,
            stats.f_req,
            stats.ds_req,
            stats.errors,
            stats.batches,
            stats.events_received,
            stats.events_sent
        );
        result.and(closed)
    }

    fn serve(&mut self, stop: &StopSignal) -> Result<Ended, BackendError> {
        loop {
            if stop.is_stopped() {
                log::info!("{}: asked to stop", self.be_path);
                return Ok(Ended::Stopped);
            }
            self.check_queues()?;
            let event = self.store.read_watch(Some(self.cfg.poll_interval)).map_err(|source| {
                BackendError::Xenstore { op: "read watch", path: self.fe_path.clone(), source }
            })?;
            if event.is_some() && self.frontend_changed()? == Next::Exit {
                return Ok(Ended::Removed);
            }
        }
    }

    /// Takes over the connection of a previous backend process if both
    /// ends read Connected; returns whether it did (or failed the device
    /// trying), false to go through the handshake instead.
    fn resume(&mut self) -> Result<bool, BackendError> {
        let backend = self.read_state(&format!("{}/state", self.be_path))?;
        let frontend = self.read_state(&format!("{}/state", self.fe_path))?;
        if backend != XenbusState::Connected {
            return Ok(false);
        }
        if frontend != XenbusState::Connected {
            log::info!(
                "{}: a previous backend left the device Connected but the frontend is {frontend:?}; starting over",
                self.be_path
            );
            return Ok(false);
        }
        log::info!("{}: the frontend is connected to a previous backend process; taking over", self.be_path);
        self.frontend_seen = true;
        self.state = XenbusState::Connected;
        match self.connect_rings(Attach::Resume) {
            Ok(connection) => self.connection = Some(connection),
            Err(e @ (BackendError::Xenstore { .. } | BackendError::Platform(_) | BackendError::Spawn(_))) => {
                return Err(e)
            }
            // The frontend's port is still bound: most likely to the old
            // process. Failing the device would break its connection.
            Err(BackendError::Queue(source @ QueueError::Evtchn { .. })) => {
                return Err(BackendError::TakeOver { path: self.be_path.clone(), source })
            }
            Err(e) => {
                self.fail(&e)?;
                return Ok(true);
            }
        }
        let sectors = (self.disk.size() / 512).to_string();
        let published = self.read_frontend(&format!("{}/sectors", self.be_path))?;
        if published.as_deref() != Some(sectors.as_str()) {
            // As blkback's xen_vbd_resize: the new size, then the state
            // again so that blkfront's watch fires and it reads the size.
            log::warn!(
                "{}: the disk has {sectors} sectors, the frontend was told {}; announcing the new size",
                self.be_path,
                published.as_deref().unwrap_or("nothing")
            );
            self.commit(|tx| {
                self.write(tx, "sectors", &sectors)?;
                self.write(tx, "state", XenbusState::Connected.as_str())
            })?;
        }
        Ok(true)
    }

    /// Writes what the frontend reads before and after connecting, and
    /// moves to InitWait.
    fn probe(&mut self) -> Result<(), BackendError> {
        let cfg = &self.cfg;
        for (node, value) in [
            ("feature-max-indirect-segments", cfg.max_indirect_segments.to_string()),
            ("multi-queue-max-queues", cfg.max_queues.to_string()),
            ("max-ring-page-order", cfg.max_ring_page_order.to_string()),
        ] {
            self.write(Transaction::NONE, node, &value)?;
        }
        self.write_device_nodes(Transaction::NONE)?;
        log::info!(
            "{}: {} bytes in {}-byte sectors{}, frontend {}",
            self.be_path,
            self.disk.size(),
            self.disk.sector_size(),
            if self.disk.read_only() { ", read-only" } else { "" },
            self.fe_path
        );
        self.switch(XenbusState::InitWait)
    }

    /// The device nodes blkback writes when connecting.
    fn write_device_nodes(&self, tx: Transaction) -> Result<(), BackendError> {
        let writable = !self.disk.read_only();
        let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
        let discard = self.disk.supports_discard();
        let mut nodes = vec![
            ("feature-flush-cache", flag(writable)),
            ("feature-barrier", flag(writable)),
            ("feature-discard", flag(discard)),
        ];
        if discard {
            nodes.push(("discard-granularity", self.disk.discard_granularity().to_string()));
            nodes.push(("discard-alignment", "0".to_owned()));
            nodes.push(("discard-secure", "0".to_owned()));
        }
        let info = if writable { VdiskInfo::empty() } else { VdiskInfo::READONLY };
        nodes.extend([
            ("feature-persistent", flag(self.cfg.persistent)),
            ("sectors", (self.disk.size() / 512).to_string()),
            ("info", info.bits().to_string()),
            ("sector-size", self.disk.sector_size().to_string()),
            ("physical-sector-size", self.disk.physical_sector_size().to_string()),
        ]);
        for (node, value) in nodes {
            self.write(tx, node, &value)?;
        }
        Ok(())
    }

    fn write(&self, tx: Transaction, node: &str, value: &str) -> Result<(), BackendError> {
        let path = format!("{}/{node}", self.be_path);
        self.store.write(tx, &path, value.as_bytes()).map_err(|source| BackendError::Xenstore { op: "write", path, source })
    }

    fn switch(&mut self, state: XenbusState) -> Result<(), BackendError> {
        if self.state != state {
            log::info!("{}: {:?} -> {:?}", self.be_path, self.state, state);
        }
        self.write(Transaction::NONE, "state", state.as_str())?;
        self.state = state;
        Ok(())
    }

    /// Reads a frontend node; `None` if it does not exist.
    fn read_frontend(&self, path: &str) -> Result<Option<String>, BackendError> {
        match self.store.read(Transaction::NONE, path) {
            Ok(value) => Ok(Some(String::from_utf8_lossy(&value).trim_end_matches('\0').trim().to_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(BackendError::Xenstore { op: "read", path: path.to_owned(), source }),
        }
    }

    /// Reads a `state` node; Unknown if it is missing or unreadable.
    fn read_state(&self, path: &str) -> Result<XenbusState, BackendError> {
        Ok(match self.read_frontend(path)? {
            None => XenbusState::Unknown,
            Some(value) => XenbusState::parse(value.as_bytes()).unwrap_or(XenbusState::Unknown),
        })
    }

    /// Reads an unsigned frontend node, `default` if it does not exist.
    fn read_unsigned(&self, path: &str, default: Option<u32>) -> Result<u32, BackendError> {
        match (self.read_frontend(path)?, default) {
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

    fn frontend_changed(&mut self) -> Result<Next, BackendError> {
        let state = self.read_state(&format!("{}/state", self.fe_path))?;
        log::debug!("{}: frontend is {state:?}, backend {:?}", self.be_path, self.state);
        if state != XenbusState::Unknown {
            self.frontend_seen = true;
        }
        match state {
            XenbusState::Initialising => {
                if self.state == XenbusState::Closed {
                    log::info!("{}: frontend is back, waiting for it to reconnect", self.be_path);
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
                if self.read_frontend(&online)?.as_deref() == Some("0") {
                    log::info!("{}: the toolstack took the device offline", self.be_path);
                    return Ok(Next::Exit);
                }
            }
            // The toolstack may write the frontend's directory after
            // starting the backend: wait for it to appear.
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
        match self.connect_rings(Attach::Connect) {
            Ok(connection) => self.connection = Some(connection),
            Err(e @ (BackendError::Xenstore { .. } | BackendError::Platform(_) | BackendError::Spawn(_))) => {
                return Err(e)
            }
            Err(e) => return self.fail(&e),
        }
        self.commit(|tx| self.write_device_nodes(tx))?;
        self.switch(XenbusState::Connected)
    }

    /// Runs `writes` in a transaction on the backend directory, again
    /// while it conflicts.
    fn commit(&self, writes: impl Fn(Transaction) -> Result<(), BackendError>) -> Result<(), BackendError> {
        for _ in 0..64 {
            let tx = self.store.transaction_start().map_err(|source| BackendError::Xenstore {
                op: "start a transaction on",
                path: self.be_path.clone(),
                source,
            })?;
            if let Err(e) = writes(tx) {
                let _ = self.store.transaction_end(tx, false);
                return Err(e);
            }
            match self.store.transaction_end(tx, true) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_again() => continue,
                Err(source) => {
                    return Err(BackendError::Xenstore { op: "commit a transaction on", path: self.be_path.clone(), source })
                }
            }
        }
        Err(BackendError::TransactionConflict(self.be_path.clone()))
    }

    /// Reads the frontend's ring nodes, maps its rings, binds its event
    /// channels and starts a thread per queue.
    fn connect_rings(&mut self, attach: Attach) -> Result<Connection, BackendError> {
        let fe = self.fe_path.clone();
        match self.read_frontend(&format!("{fe}/protocol"))? {
            None => {}
            Some(p) if p == PROTOCOL_X86_64 => {}
            Some(p) => return Err(BackendError::Protocol(p)),
        }
        let mut persistent =
            self.cfg.persistent && self.read_unsigned(&format!("{fe}/feature-persistent"), Some(0))? != 0;
        if attach == Attach::Resume {
            // The frontend keeps what it agreed with the previous backend:
            // persistent grants only if that one offered them too (a
            // frontend without them ends each grant after its response).
            let offered = format!("{}/feature-persistent", self.be_path);
            persistent &= self.read_unsigned(&offered, Some(0))? != 0;
        }
        let queues = self.read_unsigned(&format!("{fe}/multi-queue-num-queues"), Some(1))?;
        if queues == 0 || queues > self.cfg.max_queues {
            return Err(BackendError::TooMuch { what: "queues", requested: queues, max: self.cfg.max_queues });
        }
        let order = match self.read_frontend(&format!("{fe}/ring-page-order"))? {
            None => None,
            Some(_) => Some(self.read_unsigned(&format!("{fe}/ring-page-order"), None)?),
        };
        if let Some(order) = order.filter(|&o| o > self.cfg.max_ring_page_order) {
            return Err(BackendError::TooMuch {
                what: "ring page order",
                requested: order,
                max: self.cfg.max_ring_page_order,
            });
        }
        let mut rings: Vec<(Vec<GrantRef>, EvtchnPort)> = Vec::new();
        for q in 0..queues {
            let dir = if queues == 1 { fe.clone() } else { format!("{fe}/queue-{q}") };
            let port = self.read_unsigned(&format!("{dir}/event-channel"), None)?;
            let refs = match order {
                None => vec![self.read_unsigned(&format!("{dir}/ring-ref"), None)?],
                Some(order) => (0..1u32 << order)
                    .map(|i| self.read_unsigned(&format!("{dir}/ring-ref{i}"), None))
                    .collect::<Result<_, _>>()?,
            };
            rings.push((refs, port));
        }
        let mut connected = Vec::new();
        for (q, (refs, port)) in (0..).zip(&rings) {
            let evtchn = self.platform.event_channels()?;
            let queue = Queue::connect(q, &*self.grants, evtchn, self.cfg.frontend_domid, refs, *port)?
                .polling(self.cfg.poll)
                .coalescing(self.cfg.coalesce);
            connected.push(match attach {
                Attach::Connect => queue,
                Attach::Resume => queue.resuming(),
            });
        }
        let limits = Limits {
            sectors: self.disk.size() / 512,
            sector_size: self.disk.sector_size(),
            read_only: self.disk.read_only(),
            discard: self.disk.supports_discard(),
            max_indirect_segments: self.cfg.max_indirect_segments as usize,
        };
        let stop = Arc::new(StopSignal::new().map_err(BackendError::Spawn)?);
        let mut connection = Connection { stop: Arc::clone(&stop), threads: Vec::new() };
        for queue in connected {
            let pages = GrantPages::new(
                Arc::clone(&self.grants),
                self.cfg.frontend_domid,
                persistent.then_some(self.cfg.max_persistent_grants),
            );
            let device = BlockDevice::new(pages, Arc::clone(&self.disk), limits, Arc::clone(&self.stats)).batched();
            match queue::spawn(queue, device, Arc::clone(&stop)) {
                Ok(thread) => connection.threads.push(thread),
                Err(e) => {
                    stop_connection(connection);
                    return Err(BackendError::Spawn(e));
                }
            }
        }
        log::info!(
            "{}: {} {queues} queue(s) of {} ring page(s){}",
            self.be_path,
            match attach {
                Attach::Connect => "connected",
                Attach::Resume => "took over",
            },
            1u32 << order.unwrap_or(0),
            if persistent { " with persistent grants" } else { "" }
        );
        Ok(connection)
    }

    /// Stops the queues and unmaps everything of the frontend's.
    fn disconnect(&mut self) {
        if let Some(connection) = self.connection.take() {
            stop_connection(connection);
            log::info!("{}: disconnected", self.be_path);
        }
    }

    /// A queue thread that ended on its own broke: fail the device.
    fn check_queues(&mut self) -> Result<(), BackendError> {
        let finished = self.connection.as_ref().is_some_and(|c| c.threads.iter().any(JoinHandle::is_finished));
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
            None => self.fail(&BackendError::Spawn(std::io::Error::other("a queue stopped unexpectedly"))),
        }
    }

    /// Fails the device as `xenbus_dev_fatal` does: records the error
    /// where the toolstack looks, disconnects, and moves to Closing.
    fn fail(&mut self, error: &BackendError) -> Result<(), BackendError> {
        log::error!("{}: {error}", self.be_path);
        self.disconnect();
        let relative = self.be_path.trim_start_matches(&format!("/local/domain/{}/", self.cfg.backend_domid));
        let path = format!("/local/domain/{}/error/{relative}/error", self.cfg.backend_domid);
        if let Err(e) = self.store.write(Transaction::NONE, &path, error.to_string().as_bytes()) {
            log::warn!("cannot record the error in {path}: {e}");
        }
        self.switch(XenbusState::Closing)
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
    fn backend_path_follows_xl() {
        let cfg = BackendConfig::new(0, 5, 51712);
        assert_eq!(cfg.backend_path(), "/local/domain/0/backend/vbd/5/51712");
        assert!(cfg.max_queues >= 1);
    }
}
