//! The rogue's half of the xenbus handshake, and the loop that answers the
//! frontend's requests.
//!
//! The toolstack (the test) creates the backend directory
//! `/local/domain/0/backend/KIND/DOMID/DEVID` with a `frontend` node, as
//! for rblkback. The rogue then:
//!
//! 1. writes the disk's nodes (`sectors` 2048, `info` 0, `sector-size` and
//!    `physical-sector-size` 512, no flush, no discard) and nothing that
//!    offers more than one one-page ring, no persistent grants and no
//!    indirect requests; then InitWait;
//! 2. waits up to [`Config::connect_timeout`] for the frontend to be
//!    Initialised, reads its `ring-ref` and `event-channel`, maps the ring
//!    page, binds the event channel, and moves to Connected;
//! 3. answers requests as its [`Mode`] says, logging each, without ever
//!    mapping the frontend's data pages;
//! 4. stops when the frontend moves to Closing or Closed, or its `state`
//!    node disappears (the guest is gone), when the backend directory is
//!    removed, or on the stop signal; then writes Closed if the backend
//!    directory still exists.

use std::num::Wrapping;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, EvtchnError, GrantError, GrantMap, MappedGrants, Transaction, Xenstore, XsError,
};
use hypercall_abi::ring::{RingError, RingIdx};
use hypercall_abi::xen::blkif::BlkifRequest;
use hypercall_abi::xen::xenbus::{XenbusState, XEN_IO_PROTO_ABI_X86_64};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};
use pv_backend_common::platform::{Platform, PlatformError};
use pv_backend_common::StopSignal;

use crate::answer::{Answer, Mode};
use crate::ring::RogueRing;

/// How long the frontend may take to become Initialised.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the loop sleeps at most before it looks at xenstore again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Watch events handled per look at xenstore: any number of them only
/// means "look again", so a flood cannot hold the loop.
const MAX_WATCH_EVENTS: usize = 64;

/// How long to back off after a wake-up with no pending port (the peer's
/// end went away), so that the loop does not spin.
const SPURIOUS_WAKEUP_BACKOFF: Duration = Duration::from_millis(10);

/// The disk the rogue advertises: 1 MiB of 512-byte sectors, writable,
/// with none of the features that would change the ring's shape.
const DEVICE_NODES: [(&str, &str); 6] = [
    ("sectors", "2048"),
    ("info", "0"),
    ("sector-size", "512"),
    ("physical-sector-size", "512"),
    ("feature-flush-cache", "0"),
    ("feature-discard", "0"),
];

/// Which device the rogue serves and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The backend kind in the device's path (`backend/KIND/...`).
    pub kind: String,
    /// The frontend's domain.
    pub frontend_domid: DomId,
    /// The virtual device number.
    pub devid: u32,
    /// How to misbehave.
    pub mode: Mode,
    /// How long the frontend may take to become Initialised.
    pub connect_timeout: Duration,
}

impl Config {
    /// Device `devid` of domain `frontend_domid` under `backend/KIND`,
    /// answered as `mode` says.
    pub fn new(kind: &str, frontend_domid: DomId, devid: u32, mode: Mode) -> Self {
        Config { kind: kind.to_owned(), frontend_domid, devid, mode, connect_timeout: CONNECT_TIMEOUT }
    }

    /// The backend directory, in dom0's tree.
    pub fn backend_path(&self) -> String {
        format!("/local/domain/0/backend/{}/{}/{}", self.kind, self.frontend_domid, self.devid)
    }
}

/// Why the rogue failed.
#[derive(Debug, thiserror::Error)]
pub enum RogueError {
    /// A platform handle could not be opened.
    #[error(transparent)]
    Platform(#[from] PlatformError),
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
    /// The backend directory has no `frontend` node.
    #[error("{0}/frontend does not exist: create the device's backend directory first, as for rblkback")]
    NoDevice(String),
    /// A node holds something unusable, or is missing.
    #[error("{path} holds {value:?}, which is not {expected}")]
    BadNode {
        /// The node.
        path: String,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// The frontend set up more than the one one-page ring the rogue
    /// serves, though nothing offered it.
    #[error("{path} is {value}: the frontend set up more than one one-page ring, which rogue-blkback does not serve (it offers neither multi-queue-max-queues nor max-ring-page-order)")]
    RingShape {
        /// The node.
        path: String,
        /// Its value.
        value: u32,
    },
    /// The frontend did not become Initialised in time.
    #[error("{path} did not become Initialised (3) within {} s; it is {state:?}", waited.as_secs())]
    Timeout {
        /// The frontend's state node.
        path: String,
        /// How long the rogue waited.
        waited: Duration,
        /// The state last read.
        state: XenbusState,
    },
    /// The ring page could not be mapped.
    #[error("mapping ring page {gref} of domain {domid} failed: {source}")]
    MapRing {
        /// The frontend's domain.
        domid: DomId,
        /// The ring reference.
        gref: GrantRef,
        /// The grant error.
        #[source]
        source: GrantError,
    },
    /// The event channel could not be bound or used.
    #[error("event channel {op} failed: {source}")]
    Evtchn {
        /// The operation, e.g. `"bind"`.
        op: &'static str,
        /// The event channel error.
        #[source]
        source: EvtchnError,
    },
    /// The ring cannot be used (the frontend's `req_prod` is impossible,
    /// or the page is unusable).
    #[error("the ring: {0}")]
    Ring(#[from] RingError),
    /// Waiting for events failed.
    #[error("waiting for events failed: {0}")]
    Wait(std::io::Error),
}

/// Why the rogue stopped, all of them clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The stop signal (SIGTERM).
    Stopped,
    /// The frontend moved to Closing or Closed.
    FrontendClosed(XenbusState),
    /// The frontend's `state` node disappeared after it had been seen.
    FrontendGone,
    /// The backend directory was removed.
    BackendRemoved,
}

/// The two directories of the device, through one xenstore connection.
struct Bus<S: Xenstore> {
    store: S,
    be: String,
    fe: String,
    /// The frontend's `state` node has been seen.
    frontend_seen: bool,
}

/// Wraps a failed xenstore request `op` on `path`.
fn xs_error(op: &'static str, path: &str) -> impl FnOnce(XsError) -> RogueError {
    let path = path.to_owned();
    move |source| RogueError::Xenstore { op, path, source }
}

impl<S: Xenstore> Bus<S> {
    /// A node's value, trimmed; `None` if it does not exist.
    fn read(&self, path: &str) -> Result<Option<String>, RogueError> {
        match self.store.read(Transaction::NONE, path) {
            Ok(value) => Ok(Some(String::from_utf8_lossy(&value).trim_end_matches('\0').trim().to_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(source) => Err(RogueError::Xenstore { op: "read", path: path.to_owned(), source }),
        }
    }

    /// An unsigned frontend node; `None` if it does not exist.
    fn read_frontend_u32(&self, node: &str) -> Result<Option<u32>, RogueError> {
        let path = format!("{}/{node}", self.fe);
        match self.read(&path)? {
            None => Ok(None),
            Some(value) => match value.parse() {
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(RogueError::BadNode { path, value, expected: "an unsigned decimal number" }),
            },
        }
    }

    /// A frontend node the ring cannot do without.
    fn require_frontend_u32(&self, node: &str) -> Result<u32, RogueError> {
        self.read_frontend_u32(node)?.ok_or_else(|| RogueError::BadNode {
            path: format!("{}/{node}", self.fe),
            value: String::new(),
            expected: "present (the frontend must publish it before Initialised)",
        })
    }

    fn write(&self, node: &str, value: &str) -> Result<(), RogueError> {
        let path = format!("{}/{node}", self.be);
        self.store.write(Transaction::NONE, &path, value.as_bytes()).map_err(xs_error("write", &path))
    }

    fn switch(&self, state: XenbusState) -> Result<(), RogueError> {
        log::info!("{}: backend state {} ({state:?})", self.be, state.as_str());
        self.write("state", state.as_str())
    }

    fn backend_exists(&self) -> Result<bool, RogueError> {
        Ok(self.read(&self.be)?.is_some())
    }

    fn frontend_state(&mut self) -> Result<XenbusState, RogueError> {
        let state = match self.read(&format!("{}/state", self.fe))? {
            None => XenbusState::Unknown,
            Some(value) => XenbusState::parse(value.as_bytes()).unwrap_or(XenbusState::Unknown),
        };
        self.frontend_seen |= state != XenbusState::Unknown;
        Ok(state)
    }

    /// Whether the device is over, from the nodes as they are now.
    fn ended(&mut self) -> Result<Option<Ended>, RogueError> {
        if !self.backend_exists()? {
            log::info!("{}: the backend directory was removed", self.be);
            return Ok(Some(Ended::BackendRemoved));
        }
        Ok(match self.frontend_state()? {
            state @ (XenbusState::Closing | XenbusState::Closed) => {
                log::info!("{}: the frontend is {} ({state:?})", self.be, state.as_str());
                Some(Ended::FrontendClosed(state))
            }
            XenbusState::Unknown if self.frontend_seen => {
                log::info!("{}: the frontend's state node is gone", self.be);
                Some(Ended::FrontendGone)
            }
            _ => None,
        })
    }

    /// Takes the watch events that fired (without waiting); returns
    /// whether any did.
    fn watch_fired(&self) -> Result<bool, RogueError> {
        let mut fired = false;
        for _ in 0..MAX_WATCH_EVENTS {
            match self.store.read_watch(Some(Duration::ZERO)).map_err(xs_error("read watch", &self.be))? {
                Some(_) => fired = true,
                None => break,
            }
        }
        Ok(fired)
    }
}

/// Runs the rogue for the device of `cfg` until the frontend closes, the
/// backend directory is removed, or `stop`; then leaves the backend
/// Closed if its directory still exists.
pub fn run<P: Platform>(platform: &P, cfg: &Config, stop: &StopSignal) -> Result<Ended, RogueError> {
    let store = platform.xenstore()?;
    let be = cfg.backend_path();
    let frontend = format!("{be}/frontend");
    let fe = match store.read(Transaction::NONE, &frontend) {
        Ok(value) => String::from_utf8_lossy(&value).trim_end_matches('\0').to_owned(),
        Err(e) if e.is_not_found() => return Err(RogueError::NoDevice(be)),
        Err(source) => return Err(RogueError::Xenstore { op: "read", path: frontend, source }),
    };
    if !fe.starts_with('/') {
        return Err(RogueError::BadNode { path: frontend, value: fe, expected: "an absolute path" });
    }
    log::info!("{be}: mode {}, frontend {fe}", cfg.mode);
    let mut bus = Bus { store, be, fe, frontend_seen: false };
    let token = format!("rogue-blkback:{}", bus.be);
    let watched = [format!("{}/state", bus.fe), bus.be.clone()];
    for path in &watched {
        bus.store.watch(path, &token).map_err(xs_error("watch", path))?;
    }
    let result = serve(platform, cfg, &mut bus, stop);
    let closed = match bus.backend_exists() {
        Ok(true) => bus.switch(XenbusState::Closed),
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    for path in &watched {
        if let Err(e) = bus.store.unwatch(path, &token) {
            log::debug!("unwatching {path}: {e}");
        }
    }
    let ended = result?;
    closed?;
    Ok(ended)
}

/// Steps 1 to 3: advertise, connect, answer.
fn serve<P: Platform>(
    platform: &P,
    cfg: &Config,
    bus: &mut Bus<P::Store>,
    stop: &StopSignal,
) -> Result<Ended, RogueError> {
    for (node, value) in DEVICE_NODES {
        bus.write(node, value)?;
    }
    bus.switch(XenbusState::InitWait)?;
    if let Some(ended) = wait_initialised(bus, cfg.connect_timeout, stop)? {
        return Ok(ended);
    }
    let (gref, remote_port) = ring_nodes(bus)?;
    let domid = cfg.frontend_domid;
    let grants = platform.grant_map()?;
    let mapped = grants.map(domid, &[gref], true).map_err(|source| RogueError::MapRing { domid, gref, source })?;
    let memory = mapped.memory();
    let mut ring = RogueRing::attach(memory.ring_mem()?)?;
    let evtchn = platform.event_channels()?;
    let port =
        evtchn.bind_interdomain(domid, remote_port).map_err(|source| RogueError::Evtchn { op: "bind", source })?;
    log::info!(
        "{}: ring page {gref} mapped ({} slots), event channel {remote_port} of domain {domid} bound to port {port}",
        bus.be,
        ring.size()
    );
    bus.switch(XenbusState::Connected)?;
    answer_requests(bus, cfg.mode, &mut ring, &evtchn, port, stop)
}

/// Waits for the frontend to be Initialised: `None` once it is, or why
/// the device ended first.
fn wait_initialised<S: Xenstore>(
    bus: &mut Bus<S>,
    timeout: Duration,
    stop: &StopSignal,
) -> Result<Option<Ended>, RogueError> {
    let start = Instant::now();
    loop {
        if stop.is_stopped() {
            return Ok(Some(Ended::Stopped));
        }
        if let Some(ended) = bus.ended()? {
            return Ok(Some(ended));
        }
        let state = bus.frontend_state()?;
        if state == XenbusState::Initialised {
            return Ok(None);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(RogueError::Timeout { path: format!("{}/state", bus.fe), waited, state });
        }
        // Any watch event, or none within the interval, means look again.
        let wait = POLL_INTERVAL.min(timeout - waited);
        bus.store.read_watch(Some(wait)).map_err(xs_error("read watch", &bus.be))?;
    }
}

/// Reads the frontend's ring nodes: the one ring's reference and event
/// channel, after checking that the frontend set up nothing else.
fn ring_nodes<S: Xenstore>(bus: &Bus<S>) -> Result<(GrantRef, EvtchnPort), RogueError> {
    let protocol = format!("{}/protocol", bus.fe);
    if let Some(value) = bus.read(&protocol)?.filter(|p| p != XEN_IO_PROTO_ABI_X86_64) {
        return Err(RogueError::BadNode { path: protocol, value, expected: XEN_IO_PROTO_ABI_X86_64 });
    }
    for (node, most) in [("multi-queue-num-queues", 1), ("ring-page-order", 0)] {
        if let Some(value) = bus.read_frontend_u32(node)?.filter(|&v| v > most) {
            return Err(RogueError::RingShape { path: format!("{}/{node}", bus.fe), value });
        }
    }
    Ok((bus.require_frontend_u32("ring-ref")?, bus.require_frontend_u32("event-channel")?))
}

/// Step 3: answers every request as `mode` says until the device ends.
fn answer_requests<S: Xenstore, E: EventChannels>(
    bus: &mut Bus<S>,
    mode: Mode,
    ring: &mut RogueRing<'_>,
    evtchn: &E,
    port: EvtchnPort,
    stop: &StopSignal,
) -> Result<Ended, RogueError> {
    let evtchn_error = |op| move |source| RogueError::Evtchn { op, source };
    let mut batch: Vec<BlkifRequest> = Vec::with_capacity(ring.size() as usize);
    let mut taken: u64 = 0;
    loop {
        if stop.is_stopped() {
            return Ok(Ended::Stopped);
        }
        if bus.watch_fired()? {
            if let Some(ended) = bus.ended()? {
                return Ok(ended);
            }
        }
        // Take every request published before answering any: the
        // responses may run ahead of the requests, into slots of requests
        // not taken yet.
        batch.clear();
        ring.take_requests(&mut batch)?;
        for request in &batch {
            let first = ring.rsp_prod_pvt();
            let answer = mode.answer(request, taken);
            let published = ring.put_answer(&answer)?;
            if published.is_some() {
                evtchn.notify(port).map_err(evtchn_error("notify"))?;
            }
            log::info!(
                "request {taken}: {}: {}",
                describe_request(request),
                describe_answer(&answer, first, published)
            );
            taken += 1;
        }
        if !batch.is_empty() || ring.final_check_for_requests()? {
            continue;
        }
        let [event, _stopped] = pv_backend_common::poll_readable([evtchn.fd(), stop.fd()], Some(POLL_INTERVAL))
            .map_err(RogueError::Wait)?;
        if event {
            match evtchn.pending().map_err(evtchn_error("read pending"))? {
                Some(pending) => evtchn.unmask(pending).map_err(evtchn_error("unmask"))?,
                None => std::thread::sleep(SPURIOUS_WAKEUP_BACKOFF),
            }
        }
    }
}

/// A request, for the log.
fn describe_request(request: &BlkifRequest) -> String {
    format!(
        "id {:#x} operation {} sector {} segments {}",
        request.id, request.operation, request.sector_number, request.nr_segments
    )
}

/// What was done with an answer whose first response went at index
/// `first`, for the log.
fn describe_answer(answer: &Answer, first: RingIdx, published: Option<RingIdx>) -> String {
    let Some(published) = published else {
        return "left unanswered".to_owned();
    };
    let responses: Vec<String> = (0..)
        .zip(&answer.responses)
        .map(|(i, r)| {
            let index = first + Wrapping(i);
            format!("[{index}] id {:#x} operation {} status {}", r.id, r.operation, r.status)
        })
        .collect();
    let overrun =
        if answer.overrun > 0 { format!(", {} beyond the responses written", answer.overrun) } else { String::new() };
    format!("answered {}; rsp_prod published {}{overrun}; notified", responses.join(", "), published.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::xen::blkif::BLKIF_OP_READ;

    #[test]
    fn the_backend_path_is_dom0s() {
        let cfg = Config::new("rvbd", 5, 51712, Mode::Overrun);

        assert_eq!(cfg.backend_path(), "/local/domain/0/backend/rvbd/5/51712");
    }

    #[test]
    fn the_log_says_what_was_answered_and_published() {
        // Arrange
        let request = BlkifRequest { operation: BLKIF_OP_READ, nr_segments: 1, id: 2, ..BlkifRequest::default() };
        let overrun = Mode::Overrun.answer(&request, 0);
        let wrapping = Mode::BadIdAndStatus.answer(&request, 0);

        // Act
        let overrun = describe_answer(&overrun, Wrapping(0), Some(Wrapping(65)));
        let wrapping = describe_answer(&wrapping, Wrapping(u32::MAX), Some(Wrapping(1)));
        let unanswered = describe_answer(&Answer::default(), Wrapping(1), None);

        // Assert
        assert_eq!(
            overrun,
            "answered [0] id 0x2 operation 0 status 0; rsp_prod published 65, 64 beyond the responses written; notified"
        );
        assert_eq!(
            wrapping,
            "answered [4294967295] id 0xdead00000002 operation 0 status 0, [0] id 0x2 operation 0 status 7; \
             rsp_prod published 1; notified"
        );
        assert_eq!(unanswered, "left unanswered");
    }
}
