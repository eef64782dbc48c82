//! One queue of an interface: its transmit and receive rings, their event
//! channel(s), one queue of the TAP, and the thread(s) that move packets
//! between them: one thread per ring with split event channels (each
//! channel on an event channel handle of its own), as netback serves
//! transmit in NAPI and receive in a guest-rx thread; one thread for both
//! rings on a shared channel.
//!
//! The loop follows `ring.h`. Transmit: take every packet published (at
//! most a ring's worth per round), copy them out with one batch of grant
//! copies per [`BATCH_BYTES`] of packets, answer their slots, write each
//! to the TAP, and push the responses with one notify decision
//! (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`). By default a TAP writer
//! thread per queue writes each batch to the TAP while the transmit
//! thread copies the next into a second buffer: a TAP write carries the
//! packet through dom0's network stack (bridge, IP, TCP up to the
//! receiving socket) and takes about as long as the copies and the
//! notify together, so the two overlap on two CPUs. With a bulk TAP queue
//! ([`QueueIo::bulk`]), packets other than pure TCP acknowledgements are
//! written there, and its NAPI thread carries them through the stack
//! instead of the write. Receive: read frames from the
//! TAP while the frontend has posted enough requests for them (at most
//! [`BATCH_BYTES`] of them), copy them in with one batch, and push those
//! responses the same way. The buffers copied through are pages granted to
//! the backend's own domain where the platform can ([`QueueBuffers`]). A
//! frame that does not fit the posted requests is held (the TAP is not read
//! meanwhile, so the kernel queues or drops behind it) until the frontend
//! posts more, with `req_event` set past the current `req_prod` as
//! netback's `xenvif_rx_ring_slots_available` does. A thread sleeps on its
//! event channel, the stop signal (and the TAP when it receives) only after
//! `RING_FINAL_CHECK_FOR_REQUESTS` found nothing new on its transmit ring.
//!
//! A malicious frontend ([`tx::TxError::is_fatal`], or a ring whose
//! producer index claims more than the ring holds) disables the whole
//! interface, as `xenvif_fatal_tx_err` does: every queue stops serving,
//! no more responses are sent, the device stays Connected in xenstore,
//! and only a reconnect of the frontend brings it back.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hypercall_abi::platform::{CopyMemory, EventChannels, EvtchnError, GrantError, GrantMap, MappedGrants, WaitFor, Wake};
use hypercall_abi::ring::{RingError, SringIndex};
use hypercall_abi::xen::netif::{NETIF_RSP_ERROR, NETIF_RSP_OKAY};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};
use rxen_tap::{Tap, VirtioNetHdr, VNET_HDR_LEN};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{is_pure_tcp_ack, tx_vnet_hdr, RxFeatures, TxOffload};
use crate::rx::{self, RxError, RxPlan, RxRing};
use crate::stats::Stats;
use crate::tx::{self, TxPacket, TxRing, TxVerdict};
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
/// Bytes of frames read from the TAP and copied to the frontend together
/// (room for 7 of the largest), and of packets copied out of the
/// frontend's pages together: 128 pages each, or fewer (down to
/// [`MIN_BATCH_BYTES`]) where gntalloc cannot grant that many more.
pub const BATCH_BYTES: usize = 128 * PAGE_SIZE;
/// The least a copy buffer may hold: the largest frame after the page the
/// receive buffer's first frame starts in.
pub const MIN_BATCH_BYTES: usize = 32 * PAGE_SIZE;
const _: () = assert!(PAGE_SIZE + MAX_FRAME <= MIN_BATCH_BYTES && VNET_HDR_LEN + MAX_FRAME <= MIN_BATCH_BYTES);

/// How long a packet whose first slots are published may wait for the
/// rest before the frontend is treated as malicious
/// ([`tx::TxError::MissingSlots`]); netfront publishes whole packets, so
/// this only ever waits out a slow publication.
const INCOMPLETE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a queue waiting for the rest of a packet looks again.
const INCOMPLETE_POLL: Duration = Duration::from_millis(1);
/// How long a TAP write waits for room while the queue's bounded send
/// buffer ([`crate::xenbus::TAP_SNDBUF`]) is full, before the packet is
/// dropped.
const TAP_WRITE_WAIT: Duration = Duration::from_secs(1);
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
    /// The handle the receive port is bound on, with split event
    /// channels: the receive ring then has a thread of its own, as
    /// netback's guest-rx thread beside its transmit NAPI.
    rx_evtchn: Option<E>,
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
    /// A second TAP queue for the frontend's packets other than pure TCP
    /// acknowledgements, which reach dom0's stack through its NAPI thread;
    /// nothing is read from it (the TAP's steering keeps frames for the
    /// frontend on the first queues). `None`: all go through `tap`.
    pub bulk: Option<Tap>,
    /// What the frontend can receive.
    pub features: RxFeatures,
    /// The frontend notifies new receive requests (`feature-rx-notify`).
    pub rx_notify: bool,
    /// The interface's counters.
    pub stats: Arc<Stats>,
    /// Set when the frontend was found malicious; shared by all queues.
    pub disabled: Arc<AtomicBool>,
}

impl<G> QueueIo<G> {
    /// The same, with a TAP fd of its own, for a second thread.
    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(QueueIo {
            grants: Arc::clone(&self.grants),
            frontend: self.frontend,
            tap: self.tap.try_clone().map_err(std::io::Error::other)?,
            bulk: self.bulk.as_ref().map(Tap::try_clone).transpose().map_err(std::io::Error::other)?,
            features: self.features,
            rx_notify: self.rx_notify,
            stats: Arc::clone(&self.stats),
            disabled: Arc::clone(&self.disabled),
        })
    }
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
    /// through `evtchn`, a handle of this queue's own, and the receive
    /// channel of split event channels through `rx_evtchn` if given (then
    /// each ring is served by a thread of its own). Refuses rings whose
    /// indices already claim more requests than they hold.
    pub fn connect(
        index: u32,
        grants: &G,
        evtchn: E,
        rx_evtchn: Option<E>,
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
            let tx_error = ring_error(index, "tx");
            let rx_error = ring_error(index, "rx");
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
        let bind = |handle: &E, port| {
            handle
                .bind_interdomain(frontend, port)
                .map_err(|source| QueueError::Evtchn {
                    queue: index,
                    source,
                })
        };
        let tx_port = bind(&evtchn, rings.tx_evtchn)?;
        let (rx_port, rx_evtchn) = match (rings.rx_evtchn, rx_evtchn) {
            (Some(port), Some(handle)) => (bind(&handle, port)?, Some(handle)),
            (Some(port), None) => (bind(&evtchn, port)?, None),
            (None, _) => (tx_port, None),
        };
        Ok(Queue {
            index,
            tx_map,
            rx_map,
            evtchn,
            rx_evtchn,
            tx_port,
            rx_port,
        })
    }

    /// The local ports: transmit, receive (the same without split event
    /// channels).
    pub fn ports(&self) -> (EvtchnPort, EvtchnPort) {
        (self.tx_port, self.rx_port)
    }

}

/// The transmit ring as one thread serves it.
struct TxSide<'a> {
    ring: TxRing<'a>,
    port: EvtchnPort,
    batch: TxBatch,
    /// Since when the packet at the head of the ring has been incomplete,
    /// and at which ring index.
    incomplete: Option<(Instant, u32)>,
}

/// The receive ring as one thread serves it.
struct RxSide<'a> {
    ring: RxRing<'a>,
    port: EvtchnPort,
    /// Frames read from the TAP, one after another (each frame's data
    /// page-aligned, see [`rx_frame_start`]), until copied.
    buf: Box<dyn CopyMemory>,
    /// A frame (length with its header, plan) at the first frame start of
    /// `buf` that waits for receive requests.
    pending: Option<(usize, RxPlan)>,
}

/// Where a frame read after `used` bytes of the receive buffer starts:
/// so that its data (after the header) starts a page, and each page of
/// it is one segment of the copy to the frontend.
fn rx_frame_start(used: usize) -> usize {
    (used + VNET_HDR_LEN).next_multiple_of(PAGE_SIZE) - VNET_HDR_LEN
}

/// The buffers a queue copies through: [`BATCH_BYTES`] each, from
/// [`crate::platform::Platform::copy_memory`].
pub struct QueueBuffers {
    /// For packets from the frontend.
    pub tx: Box<dyn CopyMemory>,
    /// For frames to the frontend.
    pub rx: Box<dyn CopyMemory>,
    /// A second buffer for packets from the frontend: given, the queue
    /// has a TAP writer thread ([`serve`]).
    pub tx_spare: Option<Box<dyn CopyMemory>>,
}

impl std::fmt::Debug for QueueBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBuffers")
            .field("tx_granted", &self.tx.own_grants().is_some())
            .field("rx_granted", &self.rx.own_grants().is_some())
            .field("tx_spare", &self.tx_spare.is_some())
            .finish()
    }
}

/// What one round over a ring did.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// Something was taken or answered.
    busy: bool,
    /// The transmit ring's head packet is published in part.
    tx_waiting: bool,
    /// The receive round read the TAP until it had nothing more: another
    /// round right away would only read nothing again, while the wait's
    /// poll of the TAP ends at once if a frame came meanwhile.
    rx_drained: bool,
}

/// Packets taken off the transmit ring whose data is copied out with one
/// batch of grant copies, into `buf` one after another.
struct TxBatch {
    /// Zeroed once: each packet's copies overwrite the bytes it uses.
    buf: Box<dyn CopyMemory>,
    /// The packets and where each starts in `buf`.
    packets: Vec<(TxPacket, usize)>,
    used: usize,
    /// The queue's TAP writer thread, if it has one.
    writer: Option<WriterLink>,
    /// The second buffer, while the writer is not writing from it.
    spare: Option<Box<dyn CopyMemory>>,
}

/// A batch of at most this many bytes (acknowledgements, pings) is
/// written by the transmit thread itself when the writer is idle: waking
/// the writer would cost more than the write.
const SMALL_BATCH_BYTES: usize = 4096;

/// A batch of packets copied out, on its way to the TAP: each packet's
/// offload, and where it lies in `buf` (with room for its header before).
struct Filled {
    buf: Box<dyn CopyMemory>,
    frames: Vec<(TxOffload, std::ops::Range<usize>)>,
}

/// The transmit thread's end of its TAP writer: filled buffers go out,
/// written ones come back. Two buffers circulate, so the transmit thread
/// copies one batch out while the writer writes the last.
struct WriterLink {
    filled: mpsc::SyncSender<Filled>,
    spare: mpsc::Receiver<Box<dyn CopyMemory>>,
}

impl TxBatch {
    fn new(buf: Box<dyn CopyMemory>, writer: Option<WriterLink>) -> Self {
        TxBatch {
            buf,
            packets: Vec::new(),
            used: 0,
            writer,
            spare: None,
        }
    }

    fn fits(&self, packet: &TxPacket) -> bool {
        self.used + VNET_HDR_LEN + packet.len() <= self.buf.bytes().len()
    }

    fn push(&mut self, packet: TxPacket) {
        let start = self.used;
        self.used += VNET_HDR_LEN + packet.len();
        self.packets.push((packet, start));
    }

    /// Copies the packets out, writes the responses of all their slots
    /// (not yet pushed), and writes the packets to the TAP, or hands them
    /// to the writer thread. A response only says that the frontend's
    /// pages are free again, which they are once the copies are done.
    fn flush<G: GrantMap>(
        &mut self,
        queue: u32,
        io: &QueueIo<G>,
        ring: &mut TxRing<'_>,
    ) -> Result<(), QueueError> {
        if self.packets.is_empty() {
            return Ok(());
        }
        let status = {
            // Only a lone packet larger than the whole buffer does not
            // fit; it fails its slots.
            let items: Vec<_> = self.packets.iter().map(|(p, start)| (p, *start)).collect();
            tx::copy_packets_into(&*io.grants, io.frontend, &items, &mut *self.buf)
                .map_err(|source| QueueError::Copy { queue, source })?
        };
        let mut frames = Vec::with_capacity(self.packets.len());
        for ((packet, start), status) in self.packets.drain(..).zip(status) {
            if status.iter().all(Result::is_ok) {
                frames.push((packet.offload, start..start + VNET_HDR_LEN + packet.len()));
            } else {
                log::debug!(
                    "queue {queue}: tx: a grant of packet {} could not be copied",
                    packet.first.id
                );
                Stats::add(&io.stats.tx_errors, 1);
            }
            let responses = packet.responses(|i| match status.get(i) {
                Some(Ok(())) => NETIF_RSP_OKAY,
                _ => NETIF_RSP_ERROR,
            });
            for rsp in &responses {
                if let Err(e) = ring.put_response(rsp) {
                    // Only a miscount of ours could cause this.
                    log::error!("queue {queue}: tx: cannot respond: {e}");
                }
            }
        }
        self.used = 0;
        let Some(link) = &self.writer else {
            self.write(queue, io, frames);
            return Ok(());
        };
        if self.spare.is_none() {
            self.spare = link.spare.try_recv().ok();
        }
        // With the writer idle (both buffers here), a small batch is
        // written here; otherwise it goes to the writer, after the batch
        // it has, so that the TAP gets every packet in ring order.
        let bytes: usize = frames.iter().map(|(_, range)| range.len()).sum();
        if self.spare.is_some() && bytes <= SMALL_BATCH_BYTES {
            self.write(queue, io, frames);
            return Ok(());
        }
        let writer_gone = || QueueError::Tap {
            queue,
            source: std::io::Error::other("the TAP writer thread ended"),
        };
        let next = match self.spare.take() {
            Some(spare) => spare,
            // Waits while the writer still writes the batch before.
            None => link.spare.recv().map_err(|_| writer_gone())?,
        };
        let buf = std::mem::replace(&mut self.buf, next);
        link.filled.send(Filled { buf, frames }).map_err(|_| writer_gone())?;
        Ok(())
    }

    /// Writes copied-out packets to the TAP on this thread.
    fn write<G>(&mut self, queue: u32, io: &QueueIo<G>, frames: Vec<(TxOffload, std::ops::Range<usize>)>) {
        write_frames(queue, &io.tap, io.bulk.as_ref(), &io.stats, &mut *self.buf, frames);
    }
}

/// Writes each packet of `frames`, copied out into `buf`, to the TAP: to
/// `bulk` if given, except pure TCP acknowledgements. An acknowledgement
/// may then reach the stack before packets written before it that the
/// bulk queue's NAPI thread has not handed over yet: TCP takes an
/// acknowledgement apart from the data of its own direction, and every
/// packet with data keeps its order.
fn write_frames(
    queue: u32,
    tap: &Tap,
    bulk: Option<&Tap>,
    stats: &Stats,
    buf: &mut dyn CopyMemory,
    frames: Vec<(TxOffload, std::ops::Range<usize>)>,
) {
    for (offload, range) in frames {
        if let Some(bytes) = buf.bytes_mut().get_mut(range) {
            let to = match bulk {
                Some(bulk) if !bytes.get(VNET_HDR_LEN..).is_some_and(|f| is_pure_tcp_ack(f, &offload)) => bulk,
                _ => tap,
            };
            send_to_tap(queue, to, stats, &offload, bytes);
        }
    }
}

/// A queue's TAP writer: writes each batch it is given, in order, and
/// hands its buffer back; ends when the transmit thread drops its end.
fn write_batches(
    queue: u32,
    tap: &Tap,
    bulk: Option<&Tap>,
    stats: &Stats,
    filled: &mpsc::Receiver<Filled>,
    spare: &mpsc::SyncSender<Box<dyn CopyMemory>>,
) {
    while let Ok(Filled { mut buf, frames }) = filled.recv() {
        write_frames(queue, tap, bulk, stats, &mut *buf, frames);
        if spare.send(buf).is_err() {
            return;
        }
    }
}

/// What a thread needs to serve one ring: its mapped page, its local
/// port, and the buffer its grant copies go through.
struct RingParts<'a, G: GrantMap> {
    map: &'a G::Mapped,
    port: EvtchnPort,
    buf: Box<dyn CopyMemory>,
    /// A second transmit buffer: given, a TAP writer thread writes each
    /// batch while the next is copied into the other buffer.
    spare: Option<Box<dyn CopyMemory>>,
}

/// Serves the rings of queue `index` that are given (one or both) until
/// `stop`, sleeping on `evtchn` (and the TAP when receiving).
fn serve<G: GrantMap, E: EventChannels>(
    index: u32,
    evtchn: &E,
    mut tx_parts: Option<RingParts<'_, G>>,
    rx_parts: Option<RingParts<'_, G>>,
    io: &QueueIo<G>,
    stop: &StopSignal,
) -> Result<(), QueueError> {
    let Some(spare) = tx_parts.as_mut().and_then(|p| p.spare.take()) else {
        return serve_rings(index, evtchn, tx_parts, rx_parts, io, stop, None);
    };
    // One batch in the writer, one being filled: the writer never waits
    // to hand a buffer back.
    let (filled_tx, filled_rx) = mpsc::sync_channel(1);
    let (spare_tx, spare_rx) = mpsc::sync_channel(2);
    let _ = spare_tx.send(spare);
    let (tap, bulk, stats) = (&io.tap, io.bulk.as_ref(), &*io.stats);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name(format!("rnetback-q{index}-tap"))
            .spawn_scoped(scope, move || write_batches(index, tap, bulk, stats, &filled_rx, &spare_tx));
        let link = match writer {
            Ok(_) => Some(WriterLink {
                filled: filled_tx,
                spare: spare_rx,
            }),
            Err(e) => {
                log::warn!("queue {index}: no TAP writer thread ({e}); the transmit thread writes");
                None
            }
        };
        // Returning drops the link, which ends the writer after the
        // batches it has; the scope waits for it.
        serve_rings(index, evtchn, tx_parts, rx_parts, io, stop, link)
    })
}

/// [`serve`], with the TAP writer's link if the queue has one.
fn serve_rings<G: GrantMap, E: EventChannels>(
    index: u32,
    evtchn: &E,
    tx_parts: Option<RingParts<'_, G>>,
    rx_parts: Option<RingParts<'_, G>>,
    io: &QueueIo<G>,
    stop: &StopSignal,
    writer: Option<WriterLink>,
) -> Result<(), QueueError> {
    let queue = index;
    let tx_mem = tx_parts.as_ref().map(|p| p.map.memory());
    let rx_mem = rx_parts.as_ref().map(|p| p.map.memory());
    let mut tx = match (&tx_mem, tx_parts) {
        (Some(mem), Some(parts)) => Some(TxSide {
            ring: mem.ring_mem().and_then(TxRing::new).map_err(ring_error(queue, "tx"))?,
            port: parts.port,
            batch: TxBatch::new(parts.buf, writer),
            incomplete: None,
        }),
        _ => None,
    };
    let mut rx = match (&rx_mem, rx_parts) {
        (Some(mem), Some(parts)) => Some(RxSide {
            ring: mem.ring_mem().and_then(RxRing::new).map_err(ring_error(queue, "rx"))?,
            port: parts.port,
            buf: parts.buf,
            pending: None,
        }),
        _ => None,
    };
    log::debug!(
        "queue {queue}: serving{}{} with TAP {}",
        tx.as_ref().map(|t| format!(" tx on port {}", t.port)).unwrap_or_default(),
        rx.as_ref().map(|r| format!(" rx on port {}", r.port)).unwrap_or_default(),
        io.tap.name()
    );
    let evtchn_error = |source| QueueError::Evtchn { queue, source };
    // The port that woke this thread, masked until the next wait.
    let mut masked = None;
    loop {
        if stop.is_stopped() {
            return Ok(());
        }
        if io.disabled.load(Ordering::Acquire) {
            park(queue, stop);
            return Ok(());
        }
        let mut progress = Progress::default();
        if let Some(tx) = tx.as_mut() {
            let Some(round) = tx_round(queue, tx, io, stop)? else {
                return Ok(());
            };
            if round.busy {
                push_and_notify(&mut tx.ring, evtchn, tx.port, &io.stats).map_err(evtchn_error)?;
            }
            progress = round;
        }
        let mut rx_more = false;
        if let Some(rx) = rx.as_mut() {
            let Some(round) = rx_round(queue, rx, io, stop)? else {
                return Ok(());
            };
            if round.busy {
                push_and_notify(&mut rx.ring, evtchn, rx.port, &io.stats).map_err(evtchn_error)?;
            }
            rx_more = round.busy && !round.rx_drained;
        }
        // Another round at once while transmit moved something, or
        // receive stopped before the TAP was empty; otherwise the final
        // checks and the wait.
        if progress.busy || rx_more {
            continue;
        }

        // Nothing moved: re-arm the events, check once more, sleep
        // (briefly while a packet waits for its last slots, which are
        // on the ring already as far as the final check is concerned).
        if let Some(tx) = tx.as_mut().filter(|_| !progress.tx_waiting) {
            match tx.ring.final_check_for_requests() {
                Ok(true) => continue,
                Ok(false) => {}
                // Broken: the next round's next_packet reports it.
                Err(_) => continue,
            }
        }
        let rx_pending = rx.as_ref().and_then(|rx| rx.pending);
        if let (Some(rx), Some((_, plan))) = (rx.as_mut(), rx_pending) {
            if rx_slots_available(&mut rx.ring, plan.slots()) {
                continue;
            }
        }
        let timeout = if progress.tx_waiting {
            Some(INCOMPLETE_POLL)
        } else {
            (rx_pending.is_some() && !io.rx_notify).then_some(RX_POLL_INTERVAL)
        };
        Stats::add(&io.stats.sleeps, 1);
        // Sleep until the next event, frame or timeout. The port that
        // woke this thread stayed masked through the round and is
        // unmasked by this wait, in the same system call where the
        // platform can: an event that came meanwhile was held by the mask
        // and wakes it at once. The final checks re-armed the events, so
        // an event from now on means new work. This handle has one port.
        let wait = WaitFor {
            unmask: masked.take(),
            stop: stop.fd(),
            also: (rx.is_some() && rx_pending.is_none()).then(|| io.tap.fd()),
            timeout,
        };
        match evtchn.unmask_and_wait(wait).map_err(evtchn_error)? {
            Wake::Stopped => return Ok(()),
            Wake::Port(port) => masked = Some(port),
            Wake::Also | Wake::TimedOut => {}
            // Readable without a pending port: the peer's end went away.
            // Do not spin while the control thread notices.
            Wake::Spurious => std::thread::sleep(SPURIOUS_WAKEUP_BACKOFF),
        }
    }
}

/// One round over the transmit ring: at most a ring's worth of packets,
/// copied out in batches. `None` if the frontend was found malicious (the
/// interface is disabled and the thread has waited for `stop`).
fn tx_round<G: GrantMap>(
    queue: u32,
    tx: &mut TxSide<'_>,
    io: &QueueIo<G>,
    stop: &StopSignal,
) -> Result<Option<Progress>, QueueError> {
    let mut progress = Progress::default();
    for _ in 0..tx.ring.size() {
        let verdict = match tx::next_packet(&mut tx.ring) {
            Ok(Some(verdict)) => verdict,
            Ok(None) => break,
            Err(e) => {
                disable(queue, io, stop, &e);
                return Ok(None);
            }
        };
        if let TxVerdict::Incomplete(part) = &verdict {
            match tx.incomplete {
                Some((since, start)) if start == part.start => {
                    if since.elapsed() >= INCOMPLETE_TIMEOUT {
                        let error = tx::TxError::MissingSlots(1);
                        log::error!("queue {queue}: tx: {part}");
                        disable(queue, io, stop, &error);
                        return Ok(None);
                    }
                }
                _ => {
                    log::warn!("queue {queue}: tx: waiting for the rest: {part}");
                    tx.incomplete = Some((Instant::now(), part.start));
                }
            }
            progress.tx_waiting = true;
            break;
        }
        if let Some((since, start)) = tx.incomplete.take() {
            log::warn!(
                "queue {queue}: tx: the packet at ring index {start} was complete after {} us",
                since.elapsed().as_micros()
            );
        }
        progress.busy = true;
        let responses = match verdict {
            TxVerdict::Packet(packet) => {
                if !tx.batch.fits(&packet) {
                    tx.batch.flush(queue, io, &mut tx.ring)?;
                }
                tx.batch.push(packet);
                continue;
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
                disable(queue, io, stop, &error);
                return Ok(None);
            }
            // Put back on the ring; handled before the match.
            TxVerdict::Incomplete(_) => break,
        };
        for rsp in &responses {
            if let Err(e) = tx.ring.put_response(rsp) {
                // Only a miscount of ours could cause this.
                log::error!("queue {queue}: tx: cannot respond: {e}");
            }
        }
    }
    tx.batch.flush(queue, io, &mut tx.ring)?;
    Ok(Some(progress))
}

/// One round over the receive ring: frames from the TAP while requests
/// are posted (at most [`RX_BATCH`], as many as `buf` holds), copied in
/// with one batch of grant copies. `None` if the frontend broke the ring
/// (the interface is disabled and the thread has waited for `stop`).
fn rx_round<G: GrantMap>(
    queue: u32,
    rx: &mut RxSide<'_>,
    io: &QueueIo<G>,
    stop: &StopSignal,
) -> Result<Option<Progress>, QueueError> {
    let mut progress = Progress::default();
    let mut staged = Vec::new();
    let mut used = 0;
    // A frame read but not staged: (start in buf, length, plan).
    let mut left = None;
    for _ in 0..RX_BATCH {
        let (start, len, plan) = match rx.pending.take() {
            // Only ever in the first iteration, at the first frame start.
            Some((len, plan)) => (rx_frame_start(0), len, plan),
            None => {
                let start = rx_frame_start(used);
                let Some(room) = rx.buf.bytes_mut().get_mut(start..).filter(|r| r.len() >= MAX_FRAME) else {
                    break;
                };
                match read_frame(queue, io, room)? {
                    Frame::None => {
                        progress.rx_drained = true;
                        break;
                    }
                    Frame::Dropped => continue,
                    Frame::Ready(len, plan) => (start, len, plan),
                }
            }
        };
        match rx::stage(&mut rx.ring, &plan, start + VNET_HDR_LEN..start + len) {
            Ok(Some(frame)) => {
                staged.push(frame);
                used = start + len;
            }
            Ok(None) => {
                left = Some((start, len, plan));
                break;
            }
            Err(RxError::Ring(e)) => {
                disable(queue, io, stop, &e);
                return Ok(None);
            }
            Err(RxError::Copy(source)) => return Err(QueueError::Copy { queue, source }),
        }
    }
    if !staged.is_empty() {
        let copied = match rx::deliver_staged(&mut rx.ring, &*io.grants, io.frontend, &mut *rx.buf, &staged)
        {
            Ok(copied) => copied,
            Err(RxError::Ring(e)) => {
                disable(queue, io, stop, &e);
                return Ok(None);
            }
            Err(RxError::Copy(source)) => return Err(QueueError::Copy { queue, source }),
        };
        for (frame, copied) in staged.iter().zip(copied) {
            if copied {
                Stats::add(&io.stats.rx_packets, 1);
                Stats::add(&io.stats.rx_bytes, frame.frame().len() as u64);
            } else {
                Stats::add(&io.stats.rx_dropped, 1);
            }
        }
        progress.busy = true;
    }
    // The frame that waits for requests goes to the first frame start,
    // now that the staged frames before it are copied.
    if let Some((start, len, plan)) = left {
        rx.buf.bytes_mut().copy_within(start..start + len, rx_frame_start(0));
        rx.pending = Some((len, plan));
    }
    Ok(Some(progress))
}

/// The error for queue `queue`'s ring `ring` (`"tx"` or `"rx"`).
fn ring_error(queue: u32, ring: &'static str) -> impl Fn(RingError) -> QueueError + Copy {
    move |source| QueueError::Ring {
        queue,
        ring,
        source,
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

/// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`, and the notify on `port` if
/// the frontend asked for one; a broken ring notifies nothing (the next
/// round reports it).
fn push_and_notify<
    Req: hypercall_abi::ring::RingEntry,
    Rsp: hypercall_abi::ring::RingEntry,
    E: EventChannels,
>(
    ring: &mut hypercall_abi::ring::BackRing<'_, Req, Rsp>,
    evtchn: &E,
    port: EvtchnPort,
    stats: &Stats,
) -> Result<(), EvtchnError> {
    if ring.push_responses_and_check_notify().unwrap_or(false) {
        evtchn.notify(port)?;
        Stats::add(&stats.notifies, 1);
    }
    Ok(())
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
fn send_to_tap(queue: u32, tap: &Tap, stats: &Stats, offload: &TxOffload, buf: &mut [u8]) {
    let Some((head, frame)) = buf.split_at_mut_checked(VNET_HDR_LEN) else {
        return;
    };
    let hdr = match tx_vnet_hdr(frame, offload) {
        Ok(hdr) => hdr,
        Err(e) => {
            log::debug!("queue {queue}: tx: dropping a packet: {e}");
            Stats::add(&stats.tx_dropped, 1);
            return;
        }
    };
    head.copy_from_slice(hdr.as_bytes());
    let len = frame.len();
    match tap.send_wait(buf, TAP_WRITE_WAIT) {
        Ok(_) => {
            Stats::add(&stats.tx_packets, 1);
            Stats::add(&stats.tx_bytes, len as u64);
        }
        Err(e) => {
            log::debug!("queue {queue}: tx: the TAP refused a {len}-byte packet: {e}");
            Stats::add(&stats.tx_dropped, 1);
        }
    }
}

/// Runs `queue` on a thread of its own, or on two with split event
/// channels (one per ring, each on its own event channel handle).
pub(crate) fn spawn<G, E>(
    queue: Queue<G, E>,
    io: QueueIo<G>,
    buffers: QueueBuffers,
    stop: Arc<StopSignal>,
) -> std::io::Result<Vec<std::thread::JoinHandle<Result<(), QueueError>>>>
where
    G: GrantMap + 'static,
    G::Mapped: 'static,
    E: EventChannels + 'static,
{
    let Queue {
        index,
        tx_map,
        rx_map,
        evtchn,
        rx_evtchn,
        tx_port,
        rx_port,
    } = queue;
    let QueueBuffers { tx: tx_buf, rx: rx_buf, tx_spare } = buffers;
    let thread = |name: String| std::thread::Builder::new().name(name);
    let Some(rx_evtchn) = rx_evtchn else {
        let handle = thread(format!("rnetback-q{index}")).spawn(move || {
            let tx = RingParts::<G> { map: &tx_map, port: tx_port, buf: tx_buf, spare: tx_spare };
            let rx = RingParts::<G> { map: &rx_map, port: rx_port, buf: rx_buf, spare: None };
            serve(index, &evtchn, Some(tx), Some(rx), &io, &stop)
        })?;
        return Ok(vec![handle]);
    };
    let rx_io = io.try_clone()?;
    let tx_stop = Arc::clone(&stop);
    let tx = thread(format!("rnetback-q{index}-tx")).spawn(move || {
        let tx = RingParts::<G> { map: &tx_map, port: tx_port, buf: tx_buf, spare: tx_spare };
        serve(index, &evtchn, Some(tx), None, &io, &tx_stop)
    })?;
    let rx_stop = Arc::clone(&stop);
    let rx = thread(format!("rnetback-q{index}-rx")).spawn(move || {
        let rx = RingParts::<G> { map: &rx_map, port: rx_port, buf: rx_buf, spare: None };
        serve(index, &rx_evtchn, None, Some(rx), &rx_io, &rx_stop)
    });
    match rx {
        Ok(rx) => Ok(vec![tx, rx]),
        Err(e) => {
            // The transmit thread alone would serve half a queue.
            stop.stop();
            let _ = tx.join();
            Err(e)
        }
    }
}
