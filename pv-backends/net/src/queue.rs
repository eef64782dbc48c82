//! One queue of an interface: its transmit and receive rings, their event
//! channel(s), one queue of the TAP, and the thread that moves packets
//! between them.
//!
//! The loop follows `ring.h`. Transmit: take every packet published (at
//! most a ring's worth per round), copy each out with grant copies, write
//! it to the TAP, answer its slots, and push the responses with one
//! notify decision (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`). Receive: read
//! frames from the TAP while the frontend has posted enough requests for
//! them, and push those responses the same way. A frame that does not fit
//! the posted requests is held (the TAP is not read meanwhile, so the
//! kernel queues or drops behind it) until the frontend posts more, with
//! `req_event` set past the current `req_prod` as netback's
//! `xenvif_rx_ring_slots_available` does. The thread sleeps on the event
//! channel, the TAP and the stop signal only after
//! `RING_FINAL_CHECK_FOR_REQUESTS` found nothing new on the transmit ring.
//!
//! A malicious frontend ([`tx::TxError::is_fatal`], or a ring whose
//! producer index claims more than the ring holds) disables the whole
//! interface, as `xenvif_fatal_tx_err` does: every queue stops serving,
//! no more responses are sent, the device stays Connected in xenstore,
//! and only a reconnect of the frontend brings it back.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, EvtchnError, GrantError, GrantMap, MappedGrants};
use hypercall_abi::ring::{RingError, SringIndex};
use hypercall_abi::xen::netif::{NETIF_RSP_ERROR, NETIF_RSP_OKAY};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};
use rxen_tap::{Tap, VirtioNetHdr, VNET_HDR_LEN};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{tx_vnet_hdr, RxFeatures};
use crate::rx::{self, RxError, RxPlan, RxRing};
use crate::stats::Stats;
use crate::tx::{self, TxRing, TxVerdict};
use pv_backend_common::StopSignal;

/// How long a queue sleeps after its event channel woke it with nothing
/// pending.
const SPURIOUS_WAKEUP_BACKOFF: Duration = Duration::from_millis(10);
/// How often a frame waiting for receive requests is retried when the
/// frontend did not announce `feature-rx-notify` (netback's 30 ms drain
/// timeout for such frontends is coarser).
const RX_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Frames moved from the TAP per round, so that transmit is not starved.
const RX_BATCH: usize = 64;

/// How long a packet whose first slots are published may wait for the
/// rest before the frontend is treated as malicious
/// ([`tx::TxError::MissingSlots`]); netfront publishes whole packets, so
/// this only ever waits out a slow publication.
const INCOMPLETE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a queue waiting for the rest of a packet looks again.
const INCOMPLETE_POLL: Duration = Duration::from_millis(1);
/// Largest frame the TAP hands out: 64 KiB of GSO frame plus headers.
const MAX_FRAME: usize = 65536 + 64;

/// Why a queue could not be set up or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A ring page could not be mapped.
    #[error("queue {queue}: mapping the {ring} ring page {gref} failed: {source}")]
    MapRing {
        /// Queue index.
        queue: u32,
        /// `"tx"` or `"rx"`.
        ring: &'static str,
        /// The ring reference.
        gref: GrantRef,
        /// The grant error.
        #[source]
        source: GrantError,
    },
    /// An event channel could not be bound or used.
    #[error("queue {queue}: event channel: {source}")]
    Evtchn {
        /// Queue index.
        queue: u32,
        /// The event channel error.
        #[source]
        source: EvtchnError,
    },
    /// A ring is unusable from the start.
    #[error("queue {queue}: {ring} ring: {source}")]
    Ring {
        /// Queue index.
        queue: u32,
        /// `"tx"` or `"rx"`.
        ring: &'static str,
        /// The ring error.
        #[source]
        source: RingError,
    },
    /// A batch of grant copies could not be submitted.
    #[error("queue {queue}: grant copy failed: {source}")]
    Copy {
        /// Queue index.
        queue: u32,
        /// The grant error.
        #[source]
        source: GrantError,
    },
    /// Reading the TAP failed.
    #[error("queue {queue}: reading the TAP failed: {source}")]
    Tap {
        /// Queue index.
        queue: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for events failed.
    #[error("queue {queue}: waiting for events failed: {source}")]
    Wait {
        /// Queue index.
        queue: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What the frontend published for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRings {
    /// `tx-ring-ref`.
    pub tx_ref: GrantRef,
    /// `rx-ring-ref`.
    pub rx_ref: GrantRef,
    /// `event-channel-tx`, or `event-channel` for both rings.
    pub tx_evtchn: EvtchnPort,
    /// `event-channel-rx` with split event channels.
    pub rx_evtchn: Option<EvtchnPort>,
}

/// A connected queue: ring pages mapped, event channel(s) bound.
pub struct Queue<G: GrantMap, E: EventChannels> {
    index: u32,
    tx_map: G::Mapped,
    rx_map: G::Mapped,
    evtchn: E,
    tx_port: EvtchnPort,
    rx_port: EvtchnPort,
}

impl<G: GrantMap, E: EventChannels> std::fmt::Debug for Queue<G, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("tx_port", &self.tx_port)
            .field("rx_port", &self.rx_port)
            .finish_non_exhaustive()
    }
}

/// What a queue thread serves with, besides its rings.
pub struct QueueIo<G> {
    /// The grant table, for copies.
    pub grants: Arc<G>,
    /// The frontend's domain.
    pub frontend: DomId,
    /// This queue's TAP queue.
    pub tap: Tap,
    /// What the frontend can receive.
    pub features: RxFeatures,
    /// The frontend notifies new receive requests (`feature-rx-notify`).
    pub rx_notify: bool,
    /// The interface's counters.
    pub stats: Arc<Stats>,
    /// Set when the frontend was found malicious; shared by all queues.
    pub disabled: Arc<AtomicBool>,
}

impl<G> std::fmt::Debug for QueueIo<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueIo")
            .field("frontend", &self.frontend)
            .field("tap", &self.tap.name())
            .finish_non_exhaustive()
    }
}

impl<G: GrantMap, E: EventChannels> Queue<G, E> {
    /// Maps the rings of domain `frontend` and binds its event channel(s)
    /// through `evtchn`, a handle of this queue's own. Refuses rings whose
    /// indices already claim more requests than they hold.
    pub fn connect(
        index: u32,
        grants: &G,
        evtchn: E,
        frontend: DomId,
        rings: &QueueRings,
    ) -> Result<Self, QueueError> {
        let map = |ring: &'static str, gref: GrantRef| {
            grants
                .map(frontend, &[gref], true)
                .map_err(|source| QueueError::MapRing {
                    queue: index,
                    ring,
                    gref,
                    source,
                })
        };
        let tx_map = map("tx", rings.tx_ref)?;
        let rx_map = map("rx", rings.rx_ref)?;
        {
            let tx_error = |source| QueueError::Ring {
                queue: index,
                ring: "tx",
                source,
            };
            let rx_error = |source| QueueError::Ring {
                queue: index,
                ring: "rx",
                source,
            };
            let tx_mem = tx_map.memory();
            TxRing::new(tx_mem.ring_mem().map_err(tx_error)?)
                .map_err(tx_error)?
                .unconsumed_requests()
                .map_err(tx_error)?;
            let rx_mem = rx_map.memory();
            RxRing::new(rx_mem.ring_mem().map_err(rx_error)?)
                .map_err(rx_error)?
                .unconsumed_requests()
                .map_err(rx_error)?;
        }
        let bind = |port| {
            evtchn
                .bind_interdomain(frontend, port)
                .map_err(|source| QueueError::Evtchn {
                    queue: index,
                    source,
                })
        };
        let tx_port = bind(rings.tx_evtchn)?;
        let rx_port = match rings.rx_evtchn {
            Some(port) => bind(port)?,
            None => tx_port,
        };
        Ok(Queue {
            index,
            tx_map,
            rx_map,
            evtchn,
            tx_port,
            rx_port,
        })
    }

    /// The local ports: transmit, receive (the same without split event
    /// channels).
    pub fn ports(&self) -> (EvtchnPort, EvtchnPort) {
        (self.tx_port, self.rx_port)
    }

    /// Serves the queue until `stop`.
    pub fn run(self, io: QueueIo<G>, stop: &StopSignal) -> Result<(), QueueError> {
        let queue = self.index;
        let evtchn_error = |source| QueueError::Evtchn { queue, source };
        let tx_mem = self.tx_map.memory();
        let rx_mem = self.rx_map.memory();
        let tx_ring = tx_mem.ring_mem().and_then(TxRing::new);
        let mut tx = tx_ring.map_err(|source| QueueError::Ring {
            queue,
            ring: "tx",
            source,
        })?;
        let rx_ring = rx_mem.ring_mem().and_then(RxRing::new);
        let mut rx = rx_ring.map_err(|source| QueueError::Ring {
            queue,
            ring: "rx",
            source,
        })?;
        log::debug!(
            "queue {queue}: serving {}-slot rings on ports {}/{} with TAP {}",
            tx.size(),
            self.tx_port,
            self.rx_port,
            io.tap.name()
        );
        // Zeroed once: each packet's copies overwrite the bytes it uses.
        let mut tx_buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
        let mut rx_buf = vec![0u8; MAX_FRAME];
        let mut pending: Option<(usize, RxPlan)> = None;
        // Since when the packet at the head of the tx ring has been
        // incomplete, and at which ring index.
        let mut incomplete: Option<(Instant, u32)> = None;
        loop {
            if stop.is_stopped() {
                return Ok(());
            }
            if io.disabled.load(Ordering::Acquire) {
                park(queue, stop);
                return Ok(());
            }
            let mut busy = false;

            // Transmit: at most a ring's worth of packets per round.
            let mut responded = false;
            let mut tx_waiting = false;
            for _ in 0..tx.size() {
                let verdict = match tx::next_packet(&mut tx) {
                    Ok(Some(verdict)) => verdict,
                    Ok(None) => break,
                    Err(e) => {
                        disable(queue, &io, stop, &e);
                        return Ok(());
                    }
                };
                if let TxVerdict::Incomplete(part) = &verdict {
                    match incomplete {
                        Some((since, start)) if start == part.start => {
                            if since.elapsed() >= INCOMPLETE_TIMEOUT {
                                let error = tx::TxError::MissingSlots(1);
                                log::error!("queue {queue}: tx: {part}");
                                disable(queue, &io, stop, &error);
                                return Ok(());
                            }
                        }
                        _ => {
                            log::warn!("queue {queue}: tx: waiting for the rest: {part}");
                            incomplete = Some((Instant::now(), part.start));
                        }
                    }
                    tx_waiting = true;
                    break;
                }
                if let Some((since, start)) = incomplete.take() {
                    log::warn!(
                        "queue {queue}: tx: the packet at ring index {start} was complete after {} us",
                        since.elapsed().as_micros()
                    );
                }
                busy = true;
                let responses = match verdict {
                    TxVerdict::Packet(packet) => {
                        let status =
                            tx::copy_packet_into(&*io.grants, io.frontend, &packet, &mut tx_buf)
                                .map_err(|source| QueueError::Copy { queue, source })?;
                        if status.iter().all(Result::is_ok) {
                            let len = VNET_HDR_LEN + packet.len();
                            send_to_tap(queue, &io, &packet.offload, &mut tx_buf[..len]);
                        } else {
                            log::debug!(
                                "queue {queue}: tx: a grant of packet {} could not be copied",
                                packet.first.id
                            );
                            Stats::add(&io.stats.tx_errors, 1);
                        }
                        packet.responses(|i| {
                            if status[i].is_ok() {
                                NETIF_RSP_OKAY
                            } else {
                                NETIF_RSP_ERROR
                            }
                        })
                    }
                    TxVerdict::Dropped { reason, responses } => {
                        log::debug!("queue {queue}: tx: dropping a packet: {reason}");
                        Stats::add(&io.stats.tx_errors, 1);
                        responses
                    }
                    TxVerdict::Control {
                        add,
                        addr,
                        responses,
                    } => {
                        log::debug!(
                            "queue {queue}: tx: multicast {} {addr:02x?} (multicast control is not offered; ignored)",
                            if add { "add" } else { "del" }
                        );
                        responses
                    }
                    TxVerdict::Fatal(error) => {
                        disable(queue, &io, stop, &error);
                        return Ok(());
                    }
                    // Put back on the ring; handled before the match.
                    TxVerdict::Incomplete(_) => break,
                };
                for rsp in &responses {
                    if let Err(e) = tx.put_response(rsp) {
                        // Only a miscount of ours could cause this.
                        log::error!("queue {queue}: tx: cannot respond: {e}");
                    }
                }
                responded = true;
            }
            if responded && push_and_check_notify(&mut tx) {
                self.evtchn.notify(self.tx_port).map_err(evtchn_error)?;
                Stats::add(&io.stats.notifies, 1);
            }

            // Receive: frames from the TAP while requests are posted.
            let mut responded = false;
            for _ in 0..RX_BATCH {
                if pending.is_none() {
                    pending = match read_frame(queue, &io, &mut rx_buf)? {
                        Frame::None => break,
                        Frame::Dropped => continue,
                        Frame::Ready(len, plan) => Some((len, plan)),
                    };
                }
                let Some((len, plan)) = pending else { break };
                match rx::deliver(
                    &mut rx,
                    &*io.grants,
                    io.frontend,
                    &rx_buf[VNET_HDR_LEN..len],
                    &plan,
                ) {
                    Ok(None) => break,
                    Ok(Some(copied)) => {
                        pending = None;
                        responded = true;
                        busy = true;
                        if copied {
                            Stats::add(&io.stats.rx_packets, 1);
                            Stats::add(&io.stats.rx_bytes, (len - VNET_HDR_LEN) as u64);
                        } else {
                            Stats::add(&io.stats.rx_dropped, 1);
                        }
                    }
                    Err(RxError::Ring(e)) => {
                        disable(queue, &io, stop, &e);
                        return Ok(());
                    }
                    Err(RxError::Copy(source)) => return Err(QueueError::Copy { queue, source }),
                }
            }
            if responded && push_and_check_notify(&mut rx) {
                self.evtchn.notify(self.rx_port).map_err(evtchn_error)?;
                Stats::add(&io.stats.notifies, 1);
            }
            if busy {
                continue;
            }

            // Nothing moved: re-arm the events, check once more, sleep
            // (briefly while a packet waits for its last slots, which are
            // on the ring already as far as the final check is concerned).
            if !tx_waiting {
                match tx.final_check_for_requests() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    // Broken: the next round's next_packet reports it.
                    Err(_) => continue,
                }
            }
            if let Some((_, plan)) = pending {
                if rx_slots_available(&mut rx, plan.slots()) {
                    continue;
                }
            }
            let mut fds = vec![self.evtchn.fd(), stop.fd()];
            if pending.is_none() {
                fds.push(io.tap.fd());
            }
            let timeout = if tx_waiting {
                Some(INCOMPLETE_POLL)
            } else {
                (pending.is_some() && !io.rx_notify).then_some(RX_POLL_INTERVAL)
            };
            Stats::add(&io.stats.sleeps, 1);
            let ready = pv_backend_common::poll_readable_slice(&fds, timeout)
                .map_err(|source| QueueError::Wait { queue, source })?;
            if ready.get(1).copied().unwrap_or(false) {
                return Ok(());
            }
            if ready.first().copied().unwrap_or(false) {
                // Take the pending ports (masking them) and unmask them at
                // once: the final checks re-armed the events, so an event
                // from now on means new work.
                let mut woken = false;
                while let Some(port) = self.evtchn.pending().map_err(evtchn_error)? {
                    self.evtchn.unmask(port).map_err(evtchn_error)?;
                    woken = true;
                }
                if !woken {
                    // Readable without a pending port: the peer's end went
                    // away. Do not spin while the control thread notices.
                    std::thread::sleep(SPURIOUS_WAKEUP_BACKOFF);
                }
            }
        }
    }
}

/// Disables the interface for a malicious frontend (`xenvif_fatal_tx_err`)
/// and waits to be stopped.
fn disable<G>(queue: u32, io: &QueueIo<G>, stop: &StopSignal, error: &dyn std::fmt::Display) {
    log::error!("queue {queue}: the frontend broke the protocol ({error}); disabling the interface until it reconnects");
    Stats::add(&io.stats.fatal_errors, 1);
    io.disabled.store(true, Ordering::Release);
    park(queue, stop);
}

/// Waits for the stop signal, serving nothing: a disabled interface.
fn park(queue: u32, stop: &StopSignal) {
    log::debug!("queue {queue}: disabled, waiting to be stopped");
    while !stop.wait(Duration::from_secs(3600)) {}
}

/// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`; a broken ring notifies nothing
/// (the next round reports it).
fn push_and_check_notify<
    Req: hypercall_abi::ring::RingEntry,
    Rsp: hypercall_abi::ring::RingEntry,
>(
    ring: &mut hypercall_abi::ring::BackRing<'_, Req, Rsp>,
) -> bool {
    ring.push_responses_and_check_notify().unwrap_or(false)
}

/// Whether `needed` receive requests are posted; if not, asks the frontend
/// for an event on its next push (`req_event = req_prod + 1`, netback's
/// `xenvif_rx_ring_slots_available`), and checks again.
fn rx_slots_available(rx: &mut RxRing<'_>, needed: usize) -> bool {
    let mem = rx.mem();
    loop {
        let prod = mem.load_index(SringIndex::ReqProd);
        match rx.unconsumed_requests() {
            Ok(n) if n as usize >= needed => return true,
            Ok(_) => {}
            Err(_) => return true,
        }
        mem.store_index(SringIndex::ReqEvent, prod + std::num::Wrapping(1));
        // xen_mb: req_event must be visible before req_prod is re-read;
        // pairs with the frontend's mb between storing req_prod and loading
        // req_event in RING_PUSH_REQUESTS_AND_CHECK_NOTIFY, so requests
        // pushed meanwhile are either seen here or notified there.
        fence(Ordering::SeqCst);
        if mem.load_index(SringIndex::ReqProd) == prod {
            return false;
        }
    }
}

/// A frame read from the TAP.
enum Frame {
    /// Nothing queued.
    None,
    /// A frame that cannot go to the frontend.
    Dropped,
    /// A frame of this length (with its header) and plan.
    Ready(usize, RxPlan),
}

fn read_frame<G>(queue: u32, io: &QueueIo<G>, buf: &mut [u8]) -> Result<Frame, QueueError> {
    let len = match io.tap.recv(buf) {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Frame::None),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(Frame::Dropped),
        Err(source) => return Err(QueueError::Tap { queue, source }),
    };
    let Some((head, frame)) = buf
        .get_mut(..len)
        .and_then(|b| b.split_at_mut_checked(VNET_HDR_LEN))
    else {
        Stats::add(&io.stats.rx_dropped, 1);
        return Ok(Frame::Dropped);
    };
    let hdr = VirtioNetHdr::read_from_bytes(head).unwrap_or_default();
    match rx::plan(&hdr, frame, &io.features) {
        Ok(plan) => Ok(Frame::Ready(len, plan)),
        Err(reason) => {
            log::debug!("queue {queue}: rx: dropping a frame: {reason}");
            Stats::add(&io.stats.rx_dropped, 1);
            Ok(Frame::Dropped)
        }
    }
}

/// Writes a packet copied into `buf` (after room for the header) to the TAP.
fn send_to_tap<G>(
    queue: u32,
    io: &QueueIo<G>,
    offload: &crate::offload::TxOffload,
    buf: &mut [u8],
) {
    let Some((head, frame)) = buf.split_at_mut_checked(VNET_HDR_LEN) else {
        return;
    };
    let hdr = match tx_vnet_hdr(frame, offload) {
        Ok(hdr) => hdr,
        Err(e) => {
            log::debug!("queue {queue}: tx: dropping a packet: {e}");
            Stats::add(&io.stats.tx_dropped, 1);
            return;
        }
    };
    head.copy_from_slice(hdr.as_bytes());
    let len = frame.len();
    match io.tap.send(buf) {
        Ok(_) => {
            Stats::add(&io.stats.tx_packets, 1);
            Stats::add(&io.stats.tx_bytes, len as u64);
        }
        Err(e) => {
            log::debug!("queue {queue}: tx: the TAP refused a {len}-byte packet: {e}");
            Stats::add(&io.stats.tx_dropped, 1);
        }
    }
}

/// Runs `queue` on a thread of its own.
pub(crate) fn spawn<G, E>(
    queue: Queue<G, E>,
    io: QueueIo<G>,
    stop: Arc<StopSignal>,
) -> std::io::Result<std::thread::JoinHandle<Result<(), QueueError>>>
where
    G: GrantMap + 'static,
    G::Mapped: 'static,
    E: EventChannels + 'static,
{
    std::thread::Builder::new()
        .name(format!("rnetback-q{}", queue.index))
        .spawn(move || queue.run(io, &stop))
}
