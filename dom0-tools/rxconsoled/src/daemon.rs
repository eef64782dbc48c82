//! The daemon: one thread, one `poll` loop over the event channel device,
//! the xenstore watch thread's wake-up, the signal pipe and every
//! console's pty, serving the primary PV console of every domain but
//! dom0, as xenconsoled does.
//!
//! Domains are found as xenconsoled finds them: `@introduceDomain` and
//! `@releaseDomain` make the daemon list the hypervisor's domains; a new
//! one gets a watch on its console directory, and whenever that fires the
//! console is (re)connected: page mapped, event channel bound, pty opened
//! and its path written to `tty`, log file opened. A domain that is
//! dying or gone is let go of (its page unmapped, so that Xen can finish
//! destroying it); one that breaks the ring protocol is no longer served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Xenstore, XsError};
use hypercall_abi::xen::{DomId, EvtchnPort, DOMID_FIRST_RESERVED};

use crate::buffer::{OutputBuffer, Overflow};
use crate::logfile::{LogFile, LogStyle};
use crate::platform::{Mapped, Platform, PlatformError};
use crate::pty::Pty;
use crate::ring::{ConsoleRing, RingError};
use crate::store::{self, Watcher};
use crate::sys::{self, PollFd, Signals};

/// Where logs go unless told otherwise (`XEN_LOG_DIR/console`).
pub const DEFAULT_LOG_DIR: &str = "/var/log/xen/console";

/// Events a console may take per [`RATE_LIMIT_PERIOD`] before its port
/// stays masked until the period ends (xenconsoled's
/// `RATE_LIMIT_ALLOWANCE`).
const RATE_LIMIT_ALLOWANCE: u32 = 30;
/// xenconsoled's `RATE_LIMIT_PERIOD`.
const RATE_LIMIT_PERIOD: Duration = Duration::from_millis(200);
/// Slack when deciding whether a period is over (poll may wake early).
const RATE_LIMIT_FUZZ: Duration = Duration::from_millis(5);
/// Most pending ports taken per round (the device buffers a page of
/// them).
const MAX_EVENTS_PER_ROUND: usize = 1024;
/// Most watch events handled per round.
const MAX_WATCH_EVENTS_PER_ROUND: usize = 1024;
/// Most chunks of the hypervisor's console read per event (32 KiB each).
const MAX_HV_CHUNKS: usize = 1024;
/// The watch token for domain arrivals and departures.
const DOMLIST_TOKEN: &str = "domlist";

/// How the daemon logs and buffers (xenconsoled's options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Log each guest's output to `guest-NAME.log` (`--log=guest|all`).
    pub log_guest: bool,
    /// Log the hypervisor's console to `hypervisor.log` (`--log=hv|all`).
    pub log_hv: bool,
    /// Where the log files go (`--log-dir`).
    pub log_dir: PathBuf,
    /// How guest logs are written (`--timestamp=guest|all`,
    /// `--replace-escape`).
    pub guest_style: LogStyle,
    /// How the hypervisor log is written (`--timestamp=hv|all`,
    /// `--replace-escape`).
    pub hv_style: LogStyle,
    /// What to do with output no one reads (`--overflow-data`).
    pub overflow: Overflow,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            log_guest: false,
            log_hv: false,
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            guest_style: LogStyle::default(),
            hv_style: LogStyle::default(),
            overflow: Overflow::Discard,
        }
    }
}

/// Why the daemon cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A watch could not be registered.
    #[error("cannot watch {path} in xenstore: {source}; is xenstored running?")]
    Watch {
        /// The watched path.
        path: String,
        /// Why.
        #[source]
        source: XsError,
    },
    /// The xenstore connection failed.
    #[error("the xenstore connection failed: {0}; restart the daemon once xenstored runs")]
    Xenstore(#[source] XsError),
    /// The watch thread or its wake-up socket could not be created.
    #[error("cannot start the xenstore watch thread: {0}")]
    Watcher(#[source] io::Error),
    /// `poll` failed.
    #[error("waiting for events failed: {0}")]
    Poll(#[source] io::Error),
    /// The hypervisor log could not be opened.
    #[error("cannot open the hypervisor log {path}: {source}")]
    HvLog {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `VIRQ_CON_RING` could not be bound.
    #[error("cannot follow the hypervisor's console: {0}")]
    HvConsole(#[source] PlatformError),
}

/// Why a console's pty could not be set up.
#[derive(Debug, thiserror::Error)]
enum TtyError {
    /// No pty could be opened.
    #[error("cannot open a pty: {0}")]
    Open(#[source] io::Error),
    /// Its path could not be written to xenstore.
    #[error("cannot write the pty's path to {path}: {source}")]
    Publish {
        /// The `tty` node.
        path: String,
        /// Why.
        #[source]
        source: XsError,
    },
}

/// A domain's primary console.
#[derive(Debug)]
struct Console {
    /// Its xenstore directory.
    dir: String,
    ring: Option<ConsoleRing>,
    /// How `ring` was mapped.
    mapped: Option<Mapped>,
    /// Our end of the event channel.
    local_port: Option<EvtchnPort>,
    /// The guest's end, as `port` said.
    remote_port: Option<EvtchnPort>,
    pty: Option<Pty>,
    log: Option<LogFile>,
    buffer: OutputBuffer,
    /// Events in the current rate-limit period.
    event_count: u32,
    /// When the current period ends.
    next_period: Instant,
    /// The port is masked: an event was taken and not yet let through.
    masked: bool,
    /// An event came while the buffer was full ([`Overflow::Keep`]): the
    /// ring is read, and the port unmasked, once there is room.
    stalled: bool,
}

impl Console {
    fn new(domid: DomId, overflow: Overflow) -> Self {
        Console {
            dir: store::console_path(domid),
            ring: None,
            mapped: None,
            local_port: None,
            remote_port: None,
            pty: None,
            log: None,
            buffer: OutputBuffer::new(None, overflow),
            event_count: 0,
            next_period: Instant::now() + RATE_LIMIT_PERIOD,
            masked: false,
            stalled: false,
        }
    }
}

/// A domain the daemon knows.
#[derive(Debug)]
struct Domain {
    console: Console,
    /// The enumeration that last listed it.
    last_seen: u64,
    /// Dying or gone: to be let go of.
    dead: bool,
    /// It broke the ring protocol: not served until it is gone.
    broken: bool,
}

/// The hypervisor's console log.
#[derive(Debug)]
struct HvLog {
    port: EvtchnPort,
    log: LogFile,
    /// Where reading goes on.
    index: u32,
}

/// The console daemon.
pub struct Daemon<P: Platform> {
    platform: P,
    xs: Arc<dyn Xenstore>,
    watcher: Watcher,
    options: Options,
    domains: BTreeMap<DomId, Domain>,
    /// Local port to domain.
    ports: HashMap<EvtchnPort, DomId>,
    enum_pass: u64,
    signals: Option<Signals>,
    hv: Option<HvLog>,
    terminate: bool,
}

impl<P: Platform + std::fmt::Debug> std::fmt::Debug for Daemon<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("platform", &self.platform)
            .field("options", &self.options)
            .field("domains", &self.domains)
            .field("hv", &self.hv)
            .finish_non_exhaustive()
    }
}

/// The watch token of domain `domid`'s console directory.
fn domain_token(domid: DomId) -> String {
    format!("dom{domid}")
}

/// The domain a watch token names, if it is a domain token.
fn token_domain(token: &str) -> Option<DomId> {
    token.strip_prefix("dom")?.parse().ok()
}

impl<P: Platform> Daemon<P> {
    /// Starts serving: watches domain arrivals and departures on `xs`,
    /// starts the hypervisor log if asked, and takes on the domains that
    /// exist.
    pub fn new(xs: Arc<dyn Xenstore>, platform: P, options: Options) -> Result<Self, DaemonError> {
        let watcher = Watcher::start(Arc::clone(&xs)).map_err(DaemonError::Watcher)?;
        if options.log_guest || options.log_hv {
            if let Err(e) = std::fs::create_dir_all(&options.log_dir) {
                log::error!(
                    "cannot create the log directory {}: {e}",
                    options.log_dir.display()
                );
            }
        }
        let mut daemon = Daemon {
            platform,
            xs,
            watcher,
            options,
            domains: BTreeMap::new(),
            ports: HashMap::new(),
            enum_pass: 0,
            signals: None,
            hv: None,
            terminate: false,
        };
        for path in ["@introduceDomain", "@releaseDomain"] {
            daemon
                .xs
                .watch(path, DOMLIST_TOKEN)
                .map_err(|source| DaemonError::Watch {
                    path: path.to_owned(),
                    source,
                })?;
        }
        if daemon.options.log_hv {
            daemon.start_hv_log()?;
        }
        daemon.enumerate();
        Ok(daemon)
    }

    /// Makes SIGHUP reopen the logs and SIGTERM or SIGINT end
    /// [`run`](Daemon::run).
    pub fn handle_signals(&mut self, signals: Signals) {
        self.signals = Some(signals);
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The domains the daemon knows, served or not.
    pub fn domids(&self) -> Vec<DomId> {
        self.domains.keys().copied().collect()
    }

    /// Whether the console of `domid` is connected: page mapped, event
    /// channel bound, pty open.
    pub fn serving(&self, domid: DomId) -> bool {
        self.domains.get(&domid).is_some_and(|d| {
            let c = &d.console;
            !d.dead && !d.broken && c.ring.is_some() && c.local_port.is_some() && c.pty.is_some()
        })
    }

    /// The pty path of `domid`'s console.
    pub fn tty(&self, domid: DomId) -> Option<&Path> {
        self.domains
            .get(&domid)?
            .console
            .pty
            .as_ref()
            .map(Pty::path)
    }

    /// Serves until SIGTERM or SIGINT (with [`handle_signals`](Daemon::handle_signals)).
    pub fn run(&mut self) -> Result<(), DaemonError> {
        while !self.terminate {
            self.run_once(None)?;
        }
        log::info!("stopping");
        Ok(())
    }

    /// Waits up to `timeout` (`None`: as long as it takes) for something
    /// to do, and does it.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> Result<(), DaemonError> {
        let next_refill = self.refill(Instant::now());
        let wanted = self.tty_interest();
        let now = Instant::now();
        let timeout = match (timeout, next_refill) {
            (Some(t), Some(r)) => Some(t.min(r.saturating_duration_since(now))),
            (t, None) => t,
            (None, Some(r)) => Some(r.saturating_duration_since(now)),
        };
        let timeout_ms = timeout.map_or(-1, |t| {
            // Round up, so that a period's end is not polled for in a
            // busy loop.
            i32::try_from(t.as_millis() + 1).unwrap_or(i32::MAX)
        });

        let (evtchn_ready, watch_ready, signal_ready, tty_ready) = {
            let mut fds = vec![PollFd::new(self.watcher.fd(), true, false)];
            let evtchn = self.platform.fd().map(|fd| {
                fds.push(PollFd::new(fd, true, false));
                fds.len() - 1
            });
            let signal = self.signals.as_ref().map(|s| {
                fds.push(PollFd::new(s.fd(), true, false));
                fds.len() - 1
            });
            let mut ttys = Vec::new();
            for &(domid, input, output) in &wanted {
                if let Some(pty) = self
                    .domains
                    .get(&domid)
                    .and_then(|d| d.console.pty.as_ref())
                {
                    fds.push(PollFd::new(pty.fd(), input, output));
                    ttys.push((domid, fds.len() - 1));
                }
            }
            sys::poll(&mut fds, timeout_ms).map_err(DaemonError::Poll)?;
            let ready = |i: Option<usize>| i.is_some_and(|i| fds[i].readable() || fds[i].failed());
            (
                ready(evtchn),
                fds[0].readable(),
                ready(signal),
                ttys.into_iter()
                    .map(|(domid, i)| {
                        (domid, fds[i].readable(), fds[i].writable(), fds[i].failed())
                    })
                    .collect::<Vec<_>>(),
            )
        };

        if signal_ready {
            self.signals_arrived();
        }
        if watch_ready {
            self.watch_events()?;
        }
        if evtchn_ready {
            self.events();
        }
        for (domid, readable, writable, failed) in tty_ready {
            self.tty_ready(domid, readable, writable, failed);
        }
        self.reap();
        Ok(())
    }

    /// Reopens every log file (after rotation; SIGHUP). Guest logs are
    /// looked up by the domain's name again, as it may have changed.
    pub fn reopen_logs(&mut self) {
        if self.options.log_guest {
            let domids: Vec<DomId> = self
                .domains
                .iter()
                .filter(|(_, d)| d.console.local_port.is_some())
                .map(|(id, _)| *id)
                .collect();
            for domid in domids {
                let log = self.open_guest_log(domid);
                if let Some(d) = self.domains.get_mut(&domid) {
                    d.console.log = log;
                }
            }
        }
        if let Some(hv) = &mut self.hv {
            if let Err(e) = hv.log.reopen() {
                log::error!(
                    "cannot reopen the hypervisor log {}: {e}",
                    hv.log.path().display()
                );
            }
        }
    }

    fn signals_arrived(&mut self) {
        let Some(signals) = &self.signals else {
            return;
        };
        let requests = signals.take();
        if requests.reopen_logs {
            log::info!("SIGHUP: reopening the log files");
            self.reopen_logs();
        }
        if requests.terminate {
            self.terminate = true;
        }
    }

    // ------------------------------------------------------- domains

    /// Lists the hypervisor's domains: takes on new ones, lets go of
    /// dying and vanished ones (xenconsoled's `enum_domains`).
    fn enumerate(&mut self) {
        let list = match self.platform.domains() {
            Ok(list) => list,
            Err(e) => {
                log::error!("cannot list the domains: {e}");
                return;
            }
        };
        self.enum_pass += 1;
        for d in list {
            if d.domid == 0 || d.domid >= DOMID_FIRST_RESERVED {
                continue;
            }
            if d.dying {
                if let Some(dom) = self.domains.get_mut(&d.domid) {
                    dom.dead = true;
                }
            } else if !self.domains.contains_key(&d.domid) {
                self.add_domain(d.domid);
            }
            if let Some(dom) = self.domains.get_mut(&d.domid) {
                dom.last_seen = self.enum_pass;
            }
        }
        for dom in self.domains.values_mut() {
            if dom.last_seen != self.enum_pass {
                dom.dead = true;
            }
        }
        self.reap();
    }

    /// Watches a new domain's console directory and connects its console
    /// if it is ready. If the watch fails the domain is not taken on; the
    /// next enumeration tries again.
    fn add_domain(&mut self, domid: DomId) {
        let dir = store::console_path(domid);
        if let Err(e) = self.xs.watch(&dir, &domain_token(domid)) {
            log::error!("domain {domid}: cannot watch {dir}: {e}");
            return;
        }
        log::debug!("new domain {domid}");
        self.domains.insert(
            domid,
            Domain {
                console: Console::new(domid, self.options.overflow),
                last_seen: self.enum_pass,
                dead: false,
                broken: false,
            },
        );
        self.connect(domid);
    }

    /// Lets go of every dead domain.
    fn reap(&mut self) {
        let dead: Vec<DomId> = self
            .domains
            .iter()
            .filter(|(_, d)| d.dead)
            .map(|(id, _)| *id)
            .collect();
        for domid in dead {
            self.remove_domain(domid);
        }
    }

    /// Lets go of a domain: its last output to the log, its watch, port,
    /// page, pty and log file.
    fn remove_domain(&mut self, domid: DomId) {
        let Some(mut dom) = self.domains.remove(&domid) else {
            return;
        };
        log::info!("domain {domid} is gone; releasing its console");
        if !dom.broken {
            let con = &mut dom.console;
            if let (Some(ring), Some(log)) = (&mut con.ring, &mut con.log) {
                let mut data = Vec::new();
                if ring.read_output(&mut data).is_ok() && !data.is_empty() {
                    if let Err(e) = log.write(&data) {
                        log::warn!(
                            "domain {domid}: writing its last output to {}: {e}",
                            log.path().display()
                        );
                    }
                }
            }
        }
        if let Err(e) = self.xs.unwatch(&dom.console.dir, &domain_token(domid)) {
            log::debug!("domain {domid}: cannot unwatch {}: {e}", dom.console.dir);
        }
        self.disconnect(&mut dom.console);
    }

    /// Closes a console's port and unmaps its page; closes its pty and
    /// log file.
    fn disconnect(&mut self, con: &mut Console) {
        if let Some(port) = con.local_port.take() {
            self.ports.remove(&port);
            self.platform.close(port);
        }
        con.remote_port = None;
        con.ring = None;
        con.mapped = None;
        con.pty = None;
        con.log = None;
        con.masked = false;
        con.stalled = false;
    }

    /// The guest broke the ring protocol: stop serving it.
    fn break_domain(&mut self, domid: DomId, error: &RingError) {
        let Some(mut dom) = self.domains.remove(&domid) else {
            return;
        };
        log::error!("domain {domid}: {error}; no longer serving its console");
        dom.broken = true;
        self.disconnect(&mut dom.console);
        self.domains.insert(domid, dom);
    }

    // ------------------------------------------------------- consoles

    /// Connects (or reconnects) `domid`'s console from its xenstore
    /// nodes, as far as they allow (xenconsoled's
    /// `console_create_ring`); does nothing while they are incomplete.
    fn connect(&mut self, domid: DomId) {
        let Some(dom) = self.domains.get(&domid) else {
            return;
        };
        if dom.dead || dom.broken {
            return;
        }
        let dir = dom.console.dir.clone();
        let nodes = match store::console_nodes(&*self.xs, &dir) {
            Ok(Some(nodes)) => nodes,
            Ok(None) => return,
            Err(e) => {
                log::warn!("domain {domid}: {e}");
                return;
            }
        };
        if !nodes.ours {
            log::debug!("domain {domid}: its console is served by another backend");
            return;
        }
        let Some(dom) = self.domains.get_mut(&domid) else {
            return;
        };
        let con = &mut dom.console;

        // A page mapped by frame number follows `ring-ref`.
        if matches!(con.mapped, Some(Mapped::Frame(mfn)) if mfn != nodes.ring_ref) {
            con.ring = None;
            con.mapped = None;
        }
        if con.ring.is_none() {
            let (page, how) = match self.platform.map_console(domid, nodes.ring_ref) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("domain {domid}: {e}");
                    return;
                }
            };
            match ConsoleRing::new(page) {
                Ok(ring) => {
                    con.ring = Some(ring);
                    con.mapped = Some(how);
                }
                Err(e) => {
                    log::warn!("domain {domid}: {e}");
                    return;
                }
            }
        }

        // Nothing more to do if the port is the same and still bound.
        if con.remote_port == Some(nodes.port)
            && con
                .local_port
                .is_some_and(|p| self.platform.bound(p, domid))
        {
            // But for a log that could not be opened before (no name yet).
            self.ensure_log(domid);
            return;
        }
        if let Some(old) = con.local_port.take() {
            self.ports.remove(&old);
            self.platform.close(old);
        }
        con.remote_port = None;
        con.masked = false;
        let local = match self.platform.bind(domid, nodes.port) {
            Ok(p) => p,
            Err(e) => {
                log::warn!(
                    "domain {domid}: cannot bind its console port {}: {e}",
                    nodes.port
                );
                return;
            }
        };
        con.local_port = Some(local);
        con.remote_port = Some(nodes.port);
        self.ports.insert(local, domid);

        if con.pty.is_none() {
            if let Err(e) = self.open_tty(domid) {
                log::error!("domain {domid}: {e}; its console is not served");
                if let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) {
                    if let Some(port) = con.local_port.take() {
                        self.ports.remove(&port);
                        self.platform.close(port);
                    }
                    con.remote_port = None;
                }
                return;
            }
        }
        self.ensure_log(domid);
        log::info!(
            "domain {domid}: console on {} (port {})",
            self.tty(domid)
                .map_or_else(|| "no pty".into(), |p| p.display().to_string()),
            nodes.port
        );
        // Output written before we were bound went unannounced.
        self.read_ring(domid);
    }

    /// Opens a pty for `domid`'s console, sizes its buffer from `limit`
    /// and writes the pty's path to `tty`.
    fn open_tty(&mut self, domid: DomId) -> Result<(), TtyError> {
        let Some(dom) = self.domains.get_mut(&domid) else {
            return Ok(());
        };
        let con = &mut dom.console;
        let pty = Pty::open().map_err(TtyError::Open)?;
        let limit = store::limit(&*self.xs, &con.dir).unwrap_or_else(|e| {
            log::warn!("domain {domid}: {e}");
            None
        });
        let path = format!("{}/tty", con.dir);
        let tty = pty.path().as_os_str().as_encoded_bytes().to_vec();
        let written = store::write_in_existing(&*self.xs, &con.dir, &path, &tty)
            .map_err(|source| TtyError::Publish { path, source })?;
        if !written {
            log::debug!("domain {domid}: {} is gone (the domain is going); no pty published", con.dir);
            return Ok(());
        }
        if con.buffer.is_empty() {
            con.buffer = OutputBuffer::new(limit, self.options.overflow);
        }
        con.pty = Some(pty);
        Ok(())
    }

    /// Opens the log of `domid`'s console if guests are logged and it is
    /// not open.
    fn ensure_log(&mut self, domid: DomId) {
        if self.options.log_guest
            && self
                .domains
                .get(&domid)
                .is_some_and(|d| d.console.log.is_none())
        {
            let log = self.open_guest_log(domid);
            if let Some(d) = self.domains.get_mut(&domid) {
                d.console.log = log;
            }
        }
    }

    /// Opens `guest-NAME.log` for `domid`; `None` (logged) if the name
    /// or the file is not available.
    fn open_guest_log(&self, domid: DomId) -> Option<LogFile> {
        let name = match store::name(&*self.xs, domid) {
            Ok(Some(name)) => name,
            Ok(None) => {
                log::warn!("domain {domid} has no name yet; not logging its console");
                return None;
            }
            Err(e) => {
                log::error!("domain {domid}: {e}; not logging its console");
                return None;
            }
        };
        let path = self.options.log_dir.join(format!("guest-{name}.log"));
        match LogFile::open(&path, self.options.guest_style) {
            Ok(log) => Some(log),
            Err(e) => {
                log::error!(
                    "domain {domid}: cannot open its log {}: {e}",
                    path.display()
                );
                None
            }
        }
    }

    /// Moves the guest's output from its ring to its log and buffer, and
    /// tells it the space is free (xenconsoled's `buffer_append`).
    fn read_ring(&mut self, domid: DomId) {
        let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) else {
            return;
        };
        let (Some(ring), Some(port)) = (&mut con.ring, con.local_port) else {
            return;
        };
        if !con.buffer.has_room() {
            con.stalled = true;
            return;
        }
        let mut data = Vec::new();
        match ring.read_output(&mut data) {
            Ok(0) => return,
            Ok(_) => self.platform.notify(port),
            Err(e) => {
                self.break_domain(domid, &e);
                return;
            }
        }
        // To the log first: the buffer may wait for a reader for long.
        if let Some(log) = &mut con.log {
            if let Err(e) = log.write(&data) {
                log::error!(
                    "domain {domid}: writing to {} failed: {e}",
                    log.path().display()
                );
            }
        }
        con.buffer.push(&data);
    }

    /// Lets the next event of `domid`'s console through, unless the rate
    /// limit or a full buffer holds it back.
    fn maybe_unmask(&mut self, domid: DomId) {
        let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) else {
            return;
        };
        if let Some(port) = con.local_port {
            if con.masked && !con.stalled && con.event_count < RATE_LIMIT_ALLOWANCE {
                con.masked = false;
                self.platform.unmask(port);
            }
        }
    }

    /// Starts new rate-limit periods where due and unmasks the ports they
    /// held back; returns when the next held-back period ends.
    fn refill(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut release = Vec::new();
        for (&domid, dom) in &mut self.domains {
            let con = &mut dom.console;
            if con.local_port.is_none() {
                continue;
            }
            if now + RATE_LIMIT_FUZZ > con.next_period {
                con.next_period = now + RATE_LIMIT_PERIOD;
                if con.event_count >= RATE_LIMIT_ALLOWANCE {
                    release.push(domid);
                }
                con.event_count = 0;
            }
            if con.event_count >= RATE_LIMIT_ALLOWANCE {
                next = Some(next.map_or(con.next_period, |n| n.min(con.next_period)));
            }
        }
        for domid in release {
            self.maybe_unmask(domid);
        }
        next
    }

    /// Handles pending event channel ports.
    fn events(&mut self) {
        for _ in 0..MAX_EVENTS_PER_ROUND {
            let Some(port) = self.platform.pending() else {
                break;
            };
            if self.hv.as_ref().is_some_and(|hv| hv.port == port) {
                self.read_hv_log();
                self.platform.unmask(port);
                continue;
            }
            let Some(&domid) = self.ports.get(&port) else {
                log::debug!("event on unknown port {port}");
                continue;
            };
            if let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) {
                con.masked = true;
                con.event_count += 1;
            }
            self.read_ring(domid);
            self.maybe_unmask(domid);
        }
    }

    /// For each served console: whether to wait for pty input (there is
    /// room in the guest's `in` ring) and output room (output waits).
    /// A domain with a broken `in` ring stops being served.
    fn tty_interest(&mut self) -> Vec<(DomId, bool, bool)> {
        let mut wanted = Vec::new();
        let mut broken = Vec::new();
        for (&domid, dom) in &self.domains {
            let con = &dom.console;
            if dom.dead || dom.broken || con.pty.is_none() {
                continue;
            }
            let input = match &con.ring {
                Some(ring) if con.local_port.is_some() => match ring.input_space() {
                    Ok(space) => space > 0,
                    Err(e) => {
                        broken.push((domid, e));
                        continue;
                    }
                },
                _ => false,
            };
            let output = !con.buffer.is_empty();
            if input || output {
                wanted.push((domid, input, output));
            }
        }
        for (domid, e) in broken {
            self.break_domain(domid, &e);
        }
        wanted
    }

    fn tty_ready(&mut self, domid: DomId, readable: bool, writable: bool, failed: bool) {
        if failed && !readable {
            self.tty_broken(domid);
            return;
        }
        if readable {
            self.tty_read(domid);
        }
        if writable {
            self.tty_write(domid);
        }
    }

    /// Client input to the guest's `in` ring.
    fn tty_read(&mut self, domid: DomId) {
        let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) else {
            return;
        };
        let (Some(ring), Some(pty), Some(port)) = (&mut con.ring, &con.pty, con.local_port) else {
            return;
        };
        let space = match ring.input_space() {
            Ok(space) => space,
            Err(e) => return self.break_domain(domid, &e),
        };
        if space == 0 {
            return;
        }
        let mut buf = vec![0u8; space];
        let n = match pty.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("domain {domid}: reading its pty: {e}");
                return self.tty_broken(domid);
            }
        };
        if n == 0 {
            return;
        }
        match ring.write_input(&buf[..n]) {
            Ok(_) => self.platform.notify(port),
            Err(e) => self.break_domain(domid, &e),
        }
    }

    /// Buffered output to the pty.
    fn tty_write(&mut self, domid: DomId) {
        let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) else {
            return;
        };
        let Some(pty) = &con.pty else {
            return;
        };
        match pty.write(con.buffer.front()) {
            Ok(n) => con.buffer.consume(n),
            Err(e) => {
                log::debug!("domain {domid}: writing to its pty: {e}");
                return self.tty_broken(domid);
            }
        }
        if con.stalled && con.buffer.has_room() {
            con.stalled = false;
            self.read_ring(domid);
            self.maybe_unmask(domid);
        }
    }

    /// The pty failed: open a new one if the domain lives, else let the
    /// domain go.
    fn tty_broken(&mut self, domid: DomId) {
        if let Some(con) = self.domains.get_mut(&domid).map(|d| &mut d.console) {
            con.pty = None;
        }
        if self.platform.domain_exists(domid) {
            if let Err(e) = self.open_tty(domid) {
                log::error!("domain {domid}: replacing its broken pty: {e}");
            }
        } else if let Some(dom) = self.domains.get_mut(&domid) {
            dom.dead = true;
        }
    }

    // ------------------------------------------------------- xenstore

    fn watch_events(&mut self) -> Result<(), DaemonError> {
        let mut domlist = false;
        let mut changed = BTreeSet::new();
        for event in self.watcher.take(MAX_WATCH_EVENTS_PER_ROUND) {
            let event = event.map_err(DaemonError::Xenstore)?;
            if event.token == DOMLIST_TOKEN {
                domlist = true;
            } else if let Some(domid) = token_domain(&event.token) {
                changed.insert(domid);
            } else {
                log::debug!("watch event with unknown token {:?}", event.token);
            }
        }
        if domlist {
            self.enumerate();
        }
        for domid in changed {
            // Watches may fire for domains just removed.
            self.connect(domid);
        }
        Ok(())
    }

    // --------------------------------------------------- hypervisor log

    fn start_hv_log(&mut self) -> Result<(), DaemonError> {
        let path = self.options.log_dir.join("hypervisor.log");
        let log = LogFile::open(&path, self.options.hv_style)
            .map_err(|source| DaemonError::HvLog { path, source })?;
        let port = self
            .platform
            .bind_hv_console()
            .map_err(DaemonError::HvConsole)?;
        self.hv = Some(HvLog {
            port,
            log,
            index: 0,
        });
        // What Xen logged before we started (its boot messages).
        self.read_hv_log();
        Ok(())
    }

    /// Copies the hypervisor's new console bytes to its log.
    fn read_hv_log(&mut self) {
        let Some(hv) = &mut self.hv else {
            return;
        };
        for _ in 0..MAX_HV_CHUNKS {
            match self.platform.read_hv_console(hv.index) {
                Ok((data, _)) if data.is_empty() => break,
                Ok((data, next)) => {
                    hv.index = next;
                    if let Err(e) = hv.log.write(&data) {
                        log::error!("writing to {} failed: {e}", hv.log.path().display());
                    }
                }
                Err(e) => {
                    log::error!("reading the hypervisor's console: {e}");
                    break;
                }
            }
        }
    }
}

impl<P: Platform> Drop for Daemon<P> {
    /// Lets go of every domain (ports closed, pages unmapped).
    fn drop(&mut self) {
        let domids: Vec<DomId> = self.domains.keys().copied().collect();
        for domid in domids {
            if let Some(mut dom) = self.domains.remove(&domid) {
                self.disconnect(&mut dom.console);
            }
        }
        if let Some(hv) = self.hv.take() {
            self.platform.close(hv.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_domains() {
        assert_eq!(token_domain(&domain_token(17)), Some(17));
        assert_eq!(token_domain(DOMLIST_TOKEN), None);
        assert_eq!(token_domain("dom"), None);
        assert_eq!(token_domain("dom70000"), None);
    }
}
