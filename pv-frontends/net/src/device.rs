//! The network device: connecting, and frames sent and received over the
//! netif rings.
//!
//! [`NetFrontend::send`] queues one frame, waiting for room if the rings
//! are full; [`NetFrontend::try_send`] and [`NetFrontend::send_batch`]
//! never wait, so that a caller can apply back-pressure (a TAP bridge
//! leaves frames in the kernel until the backend catches up).
//! [`NetFrontend::recv`] waits for one frame; [`NetFrontend::recv_batch`]
//! takes what has arrived. Transmit responses are collected on every
//! call, as netfront's `xennet_tx_buf_gc` does on every transmit.
//!
//! Frames go out on the queue their flow hashes to, so that one TCP flow
//! stays in order. Every response is checked ([`crate::tx`], [`crate::rx`]);
//! a backend that breaks the protocol marks the device broken, and every
//! later call fails with [`Error::Broken`] until it is reconnected.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, GrantShare, SharedGrants, Transaction, Xenstore};
use hypercall_abi::xen::netif::XEN_NETIF_MAX_TX_SIZE;
use hypercall_abi::xen::xenbus::XenbusState;
use hypercall_abi::xen::PAGE_SIZE;

use crate::error::Error;
use crate::offload::{flow_hash, is_ipv6};
use crate::protocol::{
    parse_features, BackendFeatures, Checksum, GsoKind, Mac, Offload, DEFAULT_MAX_QUEUES, ETH_HLEN,
    MAX_QUEUES,
};
use crate::queue::{slots_for, Queue};
use crate::rx::RxFrame;
use crate::stats::Stats;
use crate::xenbus::Bus;

/// How long a wait sleeps on the event channel before it looks at the
/// backend's state again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Back-off when the event channel is readable without a pending port (a
/// peer that went away), so that a wait does not spin.
const SPURIOUS_WAKEUP_BACKOFF: Duration = Duration::from_millis(10);

/// What the frontend asks for; the defaults are Linux netfront's, but
/// for the number of queues.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// The frontend directory: `device/vif/<devid>` relative to the
    /// domain's home, or an absolute path.
    pub path: String,
    /// Most queues used; fewer if the backend offers fewer
    /// (`multi-queue-max-queues`). See [`DEFAULT_MAX_QUEUES`].
    pub max_queues: u32,
    /// Use separate tx and rx event channels when the backend offers
    /// `feature-split-event-channels` (netfront does).
    pub split_event_channels: bool,
    /// Accept received frames spanning several slots (`feature-sg`).
    pub rx_sg: bool,
    /// Accept received TCP frames unsegmented (`feature-gso-tcpv4`,
    /// `feature-gso-tcpv6`); needs `rx_sg`.
    pub rx_gso: bool,
    /// Accept received IPv6 frames with a blank checksum
    /// (`feature-ipv6-csum-offload`).
    pub rx_ipv6_csum_offload: bool,
    /// How long to wait for each step of the handshake, and for room on
    /// the rings in [`NetFrontend::send`].
    pub timeout: Duration,
}

impl FrontendConfig {
    /// Netfront's settings for the virtual interface `devid`
    /// (`device/vif/<devid>`).
    pub fn new(devid: u32) -> Self {
        FrontendConfig {
            path: format!("device/vif/{devid}"),
            max_queues: DEFAULT_MAX_QUEUES,
            split_event_channels: true,
            rx_sg: true,
            rx_gso: true,
            rx_ipv6_csum_offload: true,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A frame to send.
#[derive(Debug, Clone, Copy)]
pub struct TxFrame<'a> {
    /// The bytes, from the Ethernet header on.
    pub data: &'a [u8],
    /// Checksum state and segmentation offload.
    pub offload: Offload,
}

/// What was negotiated for one connection.
struct Connection<Sh: SharedGrants> {
    queues: Vec<Queue<Sh>>,
    features: BackendFeatures,
    mac: Mac,
    /// The queue `recv_batch` looks at first.
    next_rx: usize,
}

impl<Sh: SharedGrants> std::fmt::Debug for Connection<Sh> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("queues", &self.queues)
            .field("features", &self.features)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

/// A Xen virtual network interface, seen from the guest: Linux
/// xen-netfront's handshake and ring protocol, over a platform's grants,
/// event channels and xenstore.
pub struct NetFrontend<G: GrantShare, E: EventChannels, S: Xenstore> {
    grants: G,
    evtchn: E,
    bus: Bus<S>,
    cfg: FrontendConfig,
    conn: Option<Connection<G::Shared>>,
    broken: Option<String>,
    stats: Stats,
}

impl<G: GrantShare, E: EventChannels, S: Xenstore> std::fmt::Debug for NetFrontend<G, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetFrontend")
            .field("bus", &self.bus)
            .field("connection", &self.conn)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<G: GrantShare, E: EventChannels, S: Xenstore> NetFrontend<G, E, S> {
    /// Finds the interface the toolstack created at `cfg.path` and its
    /// backend; does not connect yet.
    pub fn new(grants: G, evtchn: E, store: S, cfg: FrontendConfig) -> Result<Self, Error> {
        let bus = Bus::attach(store, cfg.path.clone())?;
        Ok(NetFrontend {
            grants,
            evtchn,
            bus,
            cfg,
            conn: None,
            broken: None,
            stats: Stats::default(),
        })
    }

    /// Finds the interface and connects to its backend.
    pub fn open(grants: G, evtchn: E, store: S, cfg: FrontendConfig) -> Result<Self, Error> {
        let mut dev = Self::new(grants, evtchn, store, cfg)?;
        dev.connect()?;
        Ok(dev)
    }

    /// The xenbus handshake up to Connected (netfront's `xennet_connect`
    /// and `talk_to_netback`), then the receive rings filled.
    pub fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.broken = None;
        let timeout = self.cfg.timeout;
        let backend_state = self.bus.backend_state()?;
        let stale = !matches!(
            self.bus.state(),
            XenbusState::Unknown | XenbusState::Initialising | XenbusState::Closed
        );
        if stale || backend_state == XenbusState::Closing {
            log::info!(
                "{}: closing a stale session (backend {backend_state:?})",
                self.bus.frontend_path()
            );
            self.bus.close(timeout)?;
        }
        self.bus.switch(XenbusState::Initialising)?;
        self.bus
            .wait_backend("offer the interface (InitWait)", timeout, |s| {
                matches!(s, XenbusState::InitWait | XenbusState::Connected)
            })?;
        let features = parse_features(&self.bus)?;
        if !features.rx_copy {
            return Err(Error::NoRxCopy(self.bus.backend_path().to_owned()));
        }
        let mac = self.read_mac()?;
        let nr_queues = self
            .cfg
            .max_queues
            .clamp(1, MAX_QUEUES)
            .min(features.max_queues.unwrap_or(1));
        let split = self.cfg.split_event_channels && features.split_event_channels;
        let backend = self.bus.backend_domid();

        let mut queues = Vec::new();
        for index in 0..nr_queues {
            match Queue::new(index, &self.grants, &self.evtchn, backend, split) {
                Ok(queue) => queues.push(queue),
                Err(e) => {
                    self.teardown(queues);
                    return Err(e);
                }
            }
        }
        // Netfront goes from Initialising straight to Connected once its
        // nodes are written; netback connects when it sees that.
        if let Err(e) = self
            .publish(&queues, &features)
            .and_then(|()| self.bus.switch(XenbusState::Connected))
        {
            return Err(self.abort(queues, e));
        }
        for queue in &mut queues {
            let filled = queue.refill_rx().and_then(|_| queue.push(&self.evtchn));
            if let Err(e) = filled {
                return Err(self.abort(queues, e));
            }
        }
        let state = match self.bus.wait_backend("connect", timeout, |s| {
            matches!(
                s,
                XenbusState::Connected
                    | XenbusState::Closing
                    | XenbusState::Closed
                    | XenbusState::Unknown
            )
        }) {
            Ok(state) => state,
            Err(e) => return Err(self.abort(queues, e)),
        };
        if state != XenbusState::Connected {
            return Err(self.abort(queues, Error::BackendClosed(state)));
        }
        for queue in &queues {
            if let Err(e) = queue.kick(&self.evtchn) {
                return Err(self.abort(queues, e));
            }
        }
        log::info!(
            "{}: connected to {}: mac {mac}, {} queue(s){}, backend offers{}{}{}{}",
            self.bus.frontend_path(),
            self.bus.backend_path(),
            queues.len(),
            if split {
                " with split event channels"
            } else {
                ""
            },
            if features.sg { " sg" } else { "" },
            if features.gso_tcpv4 { " gso-tcpv4" } else { "" },
            if features.gso_tcpv6 { " gso-tcpv6" } else { "" },
            if features.ipv6_csum_offload {
                " ipv6-csum"
            } else {
                ""
            },
        );
        self.stats.connects += 1;
        self.conn = Some(Connection {
            queues,
            features,
            mac,
            next_rx: 0,
        });
        Ok(())
    }

    /// Reads `mac` from the frontend directory (`xen_net_read_mac`).
    fn read_mac(&self) -> Result<Mac, Error> {
        let path = format!("{}/mac", self.bus.frontend_path());
        let value = self.bus.own_node("mac")?.ok_or_else(|| Error::BadNode {
            path: path.clone(),
            value: String::new(),
            expected: "a MAC address (the toolstack writes it)",
        })?;
        value.parse().map_err(|_| Error::BadNode {
            path,
            value,
            expected: "a MAC address like 00:16:3e:12:34:56",
        })
    }

    /// Writes the ring and feature nodes in one transaction
    /// (`talk_to_netback`), after removing any an earlier connection left.
    fn publish(
        &self,
        queues: &[Queue<G::Shared>],
        features: &BackendFeatures,
    ) -> Result<(), Error> {
        let bus = &self.bus;
        let cfg = &self.cfg;
        let flag = |on: bool| if on { "1" } else { "0" };
        bus.transaction(|tx| {
            for child in bus.children(tx)? {
                let stale = child.starts_with("queue-")
                    || child.starts_with("event-channel")
                    || matches!(
                        child.as_str(),
                        "tx-ring-ref" | "rx-ring-ref" | "multi-queue-num-queues"
                    );
                if stale {
                    bus.remove(tx, &child)?;
                }
            }
            if features.max_queues.is_some() {
                bus.write(tx, "multi-queue-num-queues", &queues.len().to_string())?;
            }
            if let [queue] = queues {
                write_queue(bus, tx, "", queue)?;
            } else {
                for queue in queues {
                    write_queue(bus, tx, &format!("queue-{}/", queue.index()), queue)?;
                }
            }
            bus.write(tx, "request-rx-copy", "1")?;
            bus.write(tx, "feature-rx-notify", "1")?;
            bus.write(tx, "feature-sg", flag(cfg.rx_sg))?;
            bus.write(tx, "feature-gso-tcpv4", flag(cfg.rx_sg && cfg.rx_gso))?;
            bus.write(tx, "feature-gso-tcpv6", flag(cfg.rx_sg && cfg.rx_gso))?;
            bus.write(
                tx,
                "feature-ipv6-csum-offload",
                flag(cfg.rx_ipv6_csum_offload),
            )
        })
    }

    /// Closes the half-made connection after `error`, and returns it.
    fn abort(&mut self, queues: Vec<Queue<G::Shared>>, error: Error) -> Error {
        log::warn!("{}: connecting failed: {error}", self.bus.frontend_path());
        if let Err(e) = self.bus.close(self.cfg.timeout) {
            log::warn!(
                "{}: closing after the failure: {e}",
                self.bus.frontend_path()
            );
        }
        self.teardown(queues);
        error
    }

    fn teardown(&mut self, queues: Vec<Queue<G::Shared>>) {
        let leaked: usize = queues
            .into_iter()
            .map(|q| q.teardown(&self.grants, &self.evtchn))
            .sum();
        self.stats.leaked_pages += leaked as u64;
        if leaked > 0 {
            log::warn!(
                "{}: {leaked} page(s) stay granted: the backend still maps them",
                self.bus.frontend_path()
            );
        }
    }

    /// Closes the interface cleanly: Closing, then Closed as the backend
    /// follows; then ends access to every page and closes the event
    /// channels. The interface can be connected again afterwards.
    pub fn disconnect(&mut self) -> Result<(), Error> {
        let Some(conn) = self.conn.take() else {
            return Ok(());
        };
        let closed = self.bus.close(self.cfg.timeout);
        self.teardown(conn.queues);
        log::info!("{}: disconnected", self.bus.frontend_path());
        closed
    }

    /// Disconnects (if connected) and connects again.
    pub fn reconnect(&mut self) -> Result<(), Error> {
        self.disconnect()?;
        self.connect()
    }

    /// Whether the interface is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Why the interface is broken, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The MAC address the toolstack gave the interface (`mac`), while
    /// connected.
    pub fn mac(&self) -> Option<Mac> {
        self.conn.as_ref().map(|c| c.mac)
    }

    /// What the backend offers, while connected.
    pub fn features(&self) -> Option<BackendFeatures> {
        self.conn.as_ref().map(|c| c.features)
    }

    /// Queues in use.
    pub fn queues(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.queues.len())
    }

    /// Whether the queues have separate tx and rx event channels.
    pub fn split_event_channels(&self) -> bool {
        self.conn
            .as_ref()
            .and_then(|c| c.queues.first())
            .is_some_and(Queue::split)
    }

    /// The largest frame [`send`](Self::send) takes: 65535 bytes with
    /// `feature-sg`, else one page.
    pub fn max_frame(&self) -> usize {
        match self.conn.as_ref() {
            Some(c) if c.features.sg => usize::from(XEN_NETIF_MAX_TX_SIZE as u16),
            _ => PAGE_SIZE,
        }
    }

    /// Transmit slots not yet answered, over all queues.
    pub fn tx_in_flight(&self) -> usize {
        self.conn
            .as_ref()
            .map_or(0, |c| c.queues.iter().map(Queue::tx_in_flight).sum())
    }

    /// The frame counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The xenbus path of the frontend directory.
    pub fn frontend_path(&self) -> &str {
        self.bus.frontend_path()
    }

    /// An fd that is readable when the backend sent an event; after it
    /// is, call [`process_events`](Self::process_events).
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.evtchn.fd()
    }

    fn check_usable(&self) -> Result<(), Error> {
        if let Some(why) = &self.broken {
            return Err(Error::Broken(why.clone()));
        }
        if self.conn.is_none() {
            return Err(Error::NotConnected);
        }
        Ok(())
    }

    /// Marks the interface broken after a failure that leaves the rings in
    /// doubt; follows a backend that closed.
    fn settle<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        match result {
            Ok(v) => Ok(v),
            Err(Error::BackendClosed(state)) => Err(self.backend_closed(state)),
            Err(e @ (Error::Protocol(_) | Error::Evtchn(_) | Error::Memory(_) | Error::Bug(_))) => {
                log::error!("{}: {e}", self.bus.frontend_path());
                self.broken = Some(e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The backend closed the interface: follow it to Closed and release
    /// everything (netfront's `netback_changed`).
    fn backend_closed(&mut self, state: XenbusState) -> Error {
        log::warn!(
            "{}: the backend moved to {state:?}",
            self.bus.frontend_path()
        );
        if let Some(conn) = self.conn.take() {
            if let Err(e) = self.bus.close(self.cfg.timeout) {
                log::warn!(
                    "{}: closing after the backend: {e}",
                    self.bus.frontend_path()
                );
            }
            self.teardown(conn.queues);
        }
        Error::BackendClosed(state)
    }

    /// Looks for a change of the backend's state without blocking, and
    /// follows a backend that closes the interface.
    pub fn poll_backend(&mut self) -> Result<(), Error> {
        if self.conn.is_none() {
            return Ok(());
        }
        match self.bus.backend_changed()? {
            Some(state @ (XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown)) => {
                Err(self.backend_closed(state))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a frame the backend cannot take (too short or long, an
    /// offload it does not offer), as [`send`](Self::send) would.
    pub fn check_frame(&self, frame: &TxFrame<'_>) -> Result<(), Error> {
        let features = self
            .conn
            .as_ref()
            .map(|c| c.features)
            .ok_or(Error::NotConnected)?;
        let len = frame.data.len();
        if len < ETH_HLEN {
            return Err(Error::FrameTooShort(len));
        }
        if len > self.max_frame() {
            return Err(Error::FrameTooLarge {
                len,
                max: self.max_frame(),
            });
        }
        let partial = frame.offload.checksum == Checksum::Partial || frame.offload.gso.is_some();
        if let Some(gso) = frame.offload.gso {
            if gso.size == 0 {
                return Err(Error::InvalidOffload("a GSO segment size of 0"));
            }
            match gso.kind {
                GsoKind::TcpV4 if !features.gso_tcpv4 => {
                    return Err(Error::Unsupported("feature-gso-tcpv4"))
                }
                GsoKind::TcpV6 if !features.gso_tcpv6 => {
                    return Err(Error::Unsupported("feature-gso-tcpv6"))
                }
                _ => {}
            }
        }
        if partial && !features.ipv6_csum_offload && is_ipv6(frame.data) {
            return Err(Error::Unsupported("feature-ipv6-csum-offload"));
        }
        Ok(())
    }

    /// Sends one frame, waiting (up to the configured timeout) for room
    /// on the rings if they are full.
    pub fn send(&mut self, data: &[u8], offload: &Offload) -> Result<(), Error> {
        let frame = TxFrame {
            data,
            offload: *offload,
        };
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            match self.try_send_frame(&frame) {
                Err(Error::RingFull) => {}
                other => return other,
            }
            if Instant::now() >= deadline {
                let e = Error::Timeout("room on the transmit ring".to_owned());
                return self.settle(Err(e));
            }
            self.wait(deadline.saturating_duration_since(Instant::now()))?;
        }
    }

    /// Sends one frame if the rings have room now; else fails with
    /// [`Error::RingFull`], having sent nothing.
    pub fn try_send(&mut self, data: &[u8], offload: &Offload) -> Result<(), Error> {
        self.try_send_frame(&TxFrame {
            data,
            offload: *offload,
        })
    }

    fn try_send_frame(&mut self, frame: &TxFrame<'_>) -> Result<(), Error> {
        match self.send_batch(std::slice::from_ref(frame))? {
            0 => Err(Error::RingFull),
            _ => Ok(()),
        }
    }

    /// Sends as many of `frames`, in order, as the rings have room for
    /// now, with one notification per queue; returns how many were sent.
    /// Every frame is checked first: a frame the backend cannot take fails
    /// the whole batch before anything is sent.
    pub fn send_batch(&mut self, frames: &[TxFrame<'_>]) -> Result<usize, Error> {
        self.check_usable()?;
        for frame in frames {
            self.check_frame(frame)?;
        }
        let result = self.send_checked(frames);
        self.settle(result)
    }

    fn send_checked(&mut self, frames: &[TxFrame<'_>]) -> Result<usize, Error> {
        let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
        for queue in &mut conn.queues {
            queue.collect_tx(&mut self.stats)?;
        }
        let nr_queues = conn.queues.len().max(1);
        let mut sent = 0;
        for frame in frames {
            let q = if nr_queues == 1 {
                0
            } else {
                flow_hash(frame.data) as usize % nr_queues
            };
            let queue = conn
                .queues
                .get_mut(q)
                .ok_or(Error::Bug("queue index out of range"))?;
            if !queue.put_frame(frame.data, &frame.offload)? {
                // Later frames must not overtake this one.
                self.stats.tx_ring_full += 1;
                break;
            }
            sent += 1;
            self.stats.tx_gso += u64::from(frame.offload.gso.is_some());
        }
        for queue in &mut conn.queues {
            queue.push(&self.evtchn)?;
        }
        Ok(sent)
    }

    /// Waits up to `timeout` (forever with `None`) for a frame.
    pub fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<RxFrame>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut frames = Vec::with_capacity(1);
        loop {
            if self.recv_batch(&mut frames, 1)? > 0 {
                return Ok(frames.pop());
            }
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => POLL_INTERVAL,
            };
            if left.is_zero() {
                return Ok(None);
            }
            self.wait(left)?;
        }
    }

    /// Appends up to `max` frames that have arrived to `out`, without
    /// waiting; returns how many. The receive rings are refilled and
    /// transmit responses collected on the way.
    pub fn recv_batch(&mut self, out: &mut Vec<RxFrame>, max: usize) -> Result<usize, Error> {
        self.check_usable()?;
        let result = self.recv_ready(out, max);
        self.settle(result)
    }

    fn recv_ready(&mut self, out: &mut Vec<RxFrame>, max: usize) -> Result<usize, Error> {
        let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
        let nr_queues = conn.queues.len();
        let mut got = 0;
        let mut idle = 0;
        // Round robin over the queues, a frame at a time, until `max` or
        // every queue is drained.
        while got < max && idle < nr_queues {
            let q = conn.next_rx % nr_queues.max(1);
            conn.next_rx = (q + 1) % nr_queues.max(1);
            let queue = conn
                .queues
                .get_mut(q)
                .ok_or(Error::Bug("queue index out of range"))?;
            match queue.next_rx()? {
                Some(frame) => {
                    idle = 0;
                    got += 1;
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += frame.data.len() as u64;
                    self.stats.rx_gso += u64::from(frame.offload.gso.is_some());
                    out.push(frame);
                }
                None => idle += 1,
            }
        }
        for queue in &mut conn.queues {
            queue.collect_tx(&mut self.stats)?;
            queue.refill_rx()?;
            queue.push(&self.evtchn)?;
        }
        Ok(got)
    }

    /// Takes the pending events off the event channel handle without
    /// blocking, collects transmit responses, and looks at the backend's
    /// state. Call it when [`event_fd`](Self::event_fd) is readable or
    /// periodically; then [`recv_batch`](Self::recv_batch).
    pub fn process_events(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        let result = self.drain_ports().and_then(|()| self.collect_all());
        self.settle(result)?;
        self.poll_backend()
    }

    fn drain_ports(&mut self) -> Result<(), Error> {
        while let Some(port) = self.evtchn.pending()? {
            self.evtchn.unmask(port)?;
        }
        Ok(())
    }

    fn collect_all(&mut self) -> Result<(), Error> {
        let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
        for queue in &mut conn.queues {
            queue.collect_tx(&mut self.stats)?;
        }
        Ok(())
    }

    /// Re-arms the rings' events before the caller sleeps on
    /// [`event_fd`](Self::event_fd) (`RING_FINAL_CHECK_FOR_RESPONSES`);
    /// true if responses are already waiting and it must not sleep.
    pub fn prepare_wait(&mut self) -> Result<bool, Error> {
        self.check_usable()?;
        let result = (|| {
            let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
            let mut ready = false;
            for queue in &mut conn.queues {
                ready |= queue.final_check()?;
            }
            Ok(ready)
        })();
        self.settle(result)
    }

    /// Re-arms the rings' events and, unless responses are already
    /// waiting, sleeps until the backend sends an event, `timeout` passes
    /// or (checked every 100 ms) the backend closes. Returns whether
    /// anything may have arrived.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, Error> {
        self.check_usable()?;
        let result = self.wait_inner(timeout);
        self.settle(result)
    }

    fn wait_inner(&mut self, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
            let mut ready = false;
            for queue in &mut conn.queues {
                ready |= queue.final_check()?;
            }
            if ready {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let slept = Instant::now();
            if let Some(port) = self.evtchn.wait(Some(left.min(POLL_INTERVAL)))? {
                self.evtchn.unmask(port)?;
                self.drain_ports()?;
                return Ok(true);
            }
            if let Some(
                state @ (XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown),
            ) = self.bus.backend_changed()?
            {
                return Err(Error::BackendClosed(state));
            }
            if slept.elapsed() < POLL_INTERVAL / 2 && left > POLL_INTERVAL / 2 {
                std::thread::sleep(SPURIOUS_WAKEUP_BACKOFF);
            }
        }
    }

    /// Waits (up to the configured timeout) until the backend has
    /// answered every frame sent.
    pub fn flush(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            self.check_usable()?;
            let result = self.collect_all();
            self.settle(result)?;
            if self.tx_in_flight() == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let e = Error::Timeout("the backend to answer every frame sent".to_owned());
                return self.settle(Err(e));
            }
            self.wait(left)?;
        }
    }
}

impl<G: GrantShare, E: EventChannels, S: Xenstore> Drop for NetFrontend<G, E, S> {
    fn drop(&mut self) {
        if let Err(e) = self.disconnect() {
            log::warn!("{}: disconnecting: {e}", self.bus.frontend_path());
        }
    }
}

/// Writes one queue's ring references and event channel(s) under
/// `prefix` (`write_queue_xenstore_keys`).
fn write_queue<S: Xenstore, Sh: SharedGrants>(
    bus: &Bus<S>,
    tx: Transaction,
    prefix: &str,
    queue: &Queue<Sh>,
) -> Result<(), Error> {
    bus.write(
        tx,
        &format!("{prefix}tx-ring-ref"),
        &queue.tx_ring_ref().to_string(),
    )?;
    bus.write(
        tx,
        &format!("{prefix}rx-ring-ref"),
        &queue.rx_ring_ref().to_string(),
    )?;
    if queue.split() {
        bus.write(
            tx,
            &format!("{prefix}event-channel-tx"),
            &queue.tx_port().to_string(),
        )?;
        bus.write(
            tx,
            &format!("{prefix}event-channel-rx"),
            &queue.rx_port().to_string(),
        )
    } else {
        bus.write(
            tx,
            &format!("{prefix}event-channel"),
            &queue.tx_port().to_string(),
        )
    }
}

/// The frames of `frames` that are still to send after `sent` of them
/// went out: for a caller that retries the rest.
pub fn unsent<'a, 'b>(frames: &'a [TxFrame<'b>], sent: usize) -> &'a [TxFrame<'b>] {
    frames.get(sent..).unwrap_or_default()
}

/// Ring slots a frame takes: for callers sizing batches.
pub fn frame_slots(frame: &TxFrame<'_>) -> usize {
    slots_for(frame.data.len(), &frame.offload).1
}
