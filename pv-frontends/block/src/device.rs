//! The block device: connecting, and reads, writes, flushes and discards
//! carried as blkif requests.
//!
//! [`BlockFrontend::read`] and [`BlockFrontend::write`] carry one transfer
//! and return when it is done; [`BlockFrontend::read_many`] and
//! [`BlockFrontend::write_many`] carry a batch of independent transfers
//! (e.g. 32 random 4 KiB reads) with as many in flight at once as the
//! rings hold, as a queue of depth N would.
//! [`BlockFrontend::read_in_place`] and [`BlockFrontend::write_in_place`]
//! carry a batch the same way without copying: the caller reads a read's
//! data, and writes a write's, in the frontend's granted pages themselves.
//!
//! A read or write is split into requests of at most
//! [`BlockFrontend::max_request_bytes`] (one page per segment, 11 segments
//! direct or, when the backend offers `feature-max-indirect-segments`, an
//! indirect request), spread over the queues, and as many as the rings hold
//! are in flight at once. Data is copied into granted pages before a write
//! and out of them after a read, through
//! [`SharedMemory`] only. With
//! persistent grants each ring slot keeps its pages granted; without, each
//! request grants pages (read-only for writes) and ends access when it
//! completes, and a backend that still maps them then is caught, as
//! blkfront's `blkif_completion` does.
//!
//! Every response is checked ([`crate::shadow`]); a backend that breaks the
//! protocol marks the device broken, and every later call fails with
//! [`Error::Broken`] until it is reconnected.

use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, GrantError, GrantShare, SharedGrants, SharedMemory, Transaction, Xenstore,
};
use hypercall_abi::xen::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment, BlkifStatus, BlkifVdev,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_SECTOR_SIZE,
    BLKIF_SEGS_PER_INDIRECT_FRAME,
};
use hypercall_abi::xen::xenbus::{XenbusState, XEN_IO_PROTO_ABI_X86_64};
use hypercall_abi::xen::{GrantRef, PAGE_SIZE};
use zerocopy::IntoBytes;

use crate::error::{Error, ProtocolError};
use crate::protocol::{
    parse_disk, parse_ring_offer, segments_per_request, DiskInfo, DEFAULT_MAX_INDIRECT_SEGMENTS, DEFAULT_MAX_QUEUES,
    DEFAULT_MAX_RING_PAGE_ORDER, MAX_QUEUES, MAX_RING_PAGE_ORDER,
};
use crate::queue::{end_access, InFlight, Kind, Pages, Queue};
use crate::shadow::Completion;
use crate::stats::Stats;
use crate::xenbus::Bus;

/// How long a wait for responses sleeps on the event channel before it
/// looks at the backend's state again.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Back-off when the event channel is readable without a pending port (a
/// peer that went away), so that the wait does not spin.
const SPURIOUS_WAKEUP_BACKOFF: Duration = Duration::from_millis(10);
/// Bytes of requests put on the rings between two pushes within one call,
/// while the backend is awake: a batch of large requests is published as
/// it is built, one of small requests in a few pushes.
const PUSH_BYTES: usize = 16 << 10;

/// What the frontend asks for; the defaults are Linux blkfront's module
/// parameters.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// The frontend directory: `device/vbd/<devid>` relative to the
    /// domain's home, or an absolute path.
    pub path: String,
    /// Most queues used (`max_queues`, 4); fewer if the backend offers
    /// fewer.
    pub max_queues: u32,
    /// Most ring pages used, as a power of two (`max_ring_page_order`, 0).
    pub max_ring_page_order: u32,
    /// Most segments per indirect request (`max_indirect_segments`, 32).
    pub max_indirect_segments: u32,
    /// Ask for persistent grants (`feature_persistent`, on).
    pub persistent: bool,
    /// Refuse writes and discards locally when the backend says the disk
    /// is read-only, as the block layer does for blkfront. Off only to
    /// test that a backend refuses them itself.
    pub honour_read_only: bool,
    /// How long to wait for each step of the handshake, and for the next
    /// response while requests are in flight.
    pub timeout: Duration,
    /// How long to busy-poll the rings for responses before sleeping on
    /// the event channel (`poll`, zero: sleep at once). `rsp_event` is
    /// not re-armed while polling, so the backend sends no event for
    /// responses that come within it.
    pub poll: Duration,
}

impl FrontendConfig {
    /// Linux blkfront's defaults for the virtual block device `devid`
    /// (`device/vbd/<devid>`).
    pub fn new(devid: u32) -> Self {
        FrontendConfig {
            path: format!("device/vbd/{devid}"),
            max_queues: DEFAULT_MAX_QUEUES,
            max_ring_page_order: DEFAULT_MAX_RING_PAGE_ORDER,
            max_indirect_segments: DEFAULT_MAX_INDIRECT_SEGMENTS,
            persistent: true,
            honour_read_only: true,
            timeout: Duration::from_secs(30),
            poll: Duration::ZERO,
        }
    }

    /// The virtual device number, the last component of the path
    /// (blkfront's `info->handle`); 0 if it is not a number.
    fn handle(&self) -> BlkifVdev {
        let devid = self.path.rsplit('/').next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
        // `blkif_vdev_t` is 16 bits: extended device numbers are truncated,
        // as blkfront's assignment to `handle` does.
        devid as BlkifVdev
    }
}

/// What was negotiated for one connection.
struct Connection<Sh: SharedGrants> {
    queues: Vec<Queue<Sh>>,
    /// Ring pages per queue, as a power of two.
    ring_page_order: u32,
    disk: DiskInfo,
    persistent: bool,
    /// Segments per request: 11, or more with indirect requests.
    max_segments: usize,
    /// Pages of a persistent slot buffer: data, then indirect pages.
    pages_per_slot: usize,
    flush_op: Option<u8>,
    discard: bool,
    next_queue: usize,
}

impl<Sh: SharedGrants> std::fmt::Debug for Connection<Sh> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("queues", &self.queues)
            .field("disk", &self.disk)
            .field("persistent", &self.persistent)
            .field("max_segments", &self.max_segments)
            .finish_non_exhaustive()
    }
}

impl<Sh: SharedGrants> Connection<Sh> {
    fn in_flight(&self) -> usize {
        self.queues.iter().map(Queue::in_flight).sum()
    }
}

/// Where the data of one read or write call comes from and goes to: the
/// call's requests, and what is done with the granted pages of each part
/// of one (a blkif request carries at most
/// [`BlockFrontend::max_request_bytes`] of it).
trait CallData {
    /// Whether the call writes (else it reads).
    fn writes(&self) -> bool;
    /// Requests in the call.
    fn count(&self) -> usize;
    /// The first sector and length in bytes of request `index`.
    fn request(&self, index: usize) -> Option<(u64, usize)>;
    /// A write: puts the bytes of request `index` from `offset` into
    /// `pages` (as many as it holds) before the part is sent.
    fn fill(&mut self, index: usize, offset: usize, pages: &SharedMemory<'_>) -> Result<(), Error>;
    /// A read: takes the bytes of request `index` from `offset`, which
    /// the backend read into `pages` (as many as it holds).
    fn take(&mut self, index: usize, offset: usize, pages: &SharedMemory<'_>) -> Result<(), Error>;
}

/// The caller's buffers of one read or write call: a `(sector, bytes)`
/// pair per request, one for [`BlockFrontend::read`] and
/// [`BlockFrontend::write`], any number for a batch; the data is copied.
enum Buffers<'a, 'b> {
    Read(&'a mut [(u64, &'b mut [u8])]),
    Write(&'a [(u64, &'b [u8])]),
}

impl CallData for Buffers<'_, '_> {
    fn writes(&self) -> bool {
        matches!(self, Buffers::Write(_))
    }

    fn count(&self) -> usize {
        match self {
            Buffers::Read(r) => r.len(),
            Buffers::Write(w) => w.len(),
        }
    }

    fn request(&self, index: usize) -> Option<(u64, usize)> {
        match self {
            Buffers::Read(r) => r.get(index).map(|(sector, buf)| (*sector, buf.len())),
            Buffers::Write(w) => w.get(index).map(|(sector, buf)| (*sector, buf.len())),
        }
    }

    fn fill(&mut self, index: usize, offset: usize, pages: &SharedMemory<'_>) -> Result<(), Error> {
        let chunk = match self {
            Buffers::Write(w) => w.get(index).and_then(|(_, buf)| buf.get(offset..offset + pages.len())),
            Buffers::Read(_) => None,
        };
        pages.write(0, chunk.ok_or(Error::Bug("write chunk outside the buffer"))?)?;
        Ok(())
    }

    fn take(&mut self, index: usize, offset: usize, pages: &SharedMemory<'_>) -> Result<(), Error> {
        let chunk = match self {
            Buffers::Read(r) => r.get_mut(index).and_then(|(_, buf)| buf.get_mut(offset..offset + pages.len())),
            Buffers::Write(_) => None,
        };
        pages.read(0, chunk.ok_or(Error::Bug("a read without its buffer"))?)?;
        Ok(())
    }
}

/// The requests of an in-place call, `(sector, length)` each, and the
/// caller's function that fills or takes each part's pages.
struct InPlace<'a, F> {
    writes: bool,
    requests: &'a [(u64, usize)],
    data: F,
}

impl<F> CallData for InPlace<'_, F>
where
    F: FnMut(usize, usize, &SharedMemory<'_>) -> std::io::Result<()>,
{
    fn writes(&self) -> bool {
        self.writes
    }

    fn count(&self) -> usize {
        self.requests.len()
    }

    fn request(&self, index: usize) -> Option<(u64, usize)> {
        self.requests.get(index).copied()
    }

    fn fill(&mut self, index: usize, offset: usize, pages: &SharedMemory<'_>) -> Result<(), Error> {
        (self.data)(index, offset, pages).map_err(Error::Data)
    }

    fn take(&mut self, index: usize, offset: usize, pages: &SharedMemory<'_>) -> Result<(), Error> {
        (self.data)(index, offset, pages).map_err(Error::Data)
    }
}

/// The requests of a call that failed, by the lowest-numbered one.
#[derive(Debug, Default)]
struct Failures {
    /// The lowest-numbered request that failed, and its first error.
    first: Option<(usize, Error)>,
    /// How many failures were recorded.
    count: usize,
}

impl Failures {
    fn record(&mut self, request: usize, error: Error) {
        self.count += 1;
        match &self.first {
            Some((first, _)) if *first <= request => {}
            _ => self.first = Some((request, error)),
        }
    }

    fn any(&self) -> bool {
        self.first.is_some()
    }

    /// The error of a single read or write: the first one, as it is.
    fn into_single(self) -> Result<(), Error> {
        self.first.map_or(Ok(()), |(_, e)| Err(e))
    }

    /// The error of a batch: the lowest-numbered request that failed.
    fn into_batch(self) -> Result<(), Error> {
        let failed = self.count;
        self.first.map_or(Ok(()), |(index, e)| Err(Error::Batch { index, failed, source: Box::new(e) }))
    }
}

/// A Xen virtual block device, seen from the guest: Linux xen-blkfront's
/// handshake and ring protocol, over a platform's grants, event channels
/// and xenstore.
///
/// Sectors are 512-byte units, as in blkif, whatever the logical sector
/// size; offsets and lengths must be multiples of [`sector_size`](Self::sector_size).
pub struct BlockFrontend<G: GrantShare, E: EventChannels, S: Xenstore> {
    grants: G,
    evtchn: E,
    bus: Bus<S>,
    cfg: FrontendConfig,
    conn: Option<Connection<G::Shared>>,
    broken: Option<String>,
    stats: Stats,
}

impl<G: GrantShare, E: EventChannels, S: Xenstore> std::fmt::Debug for BlockFrontend<G, E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockFrontend")
            .field("bus", &self.bus)
            .field("connection", &self.conn)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<G: GrantShare, E: EventChannels, S: Xenstore> BlockFrontend<G, E, S> {
    /// Finds the device the toolstack created at `cfg.path` and its
    /// backend; does not connect yet.
    pub fn new(grants: G, evtchn: E, store: S, cfg: FrontendConfig) -> Result<Self, Error> {
        let bus = Bus::attach(store, cfg.path.clone())?;
        Ok(BlockFrontend { grants, evtchn, bus, cfg, conn: None, broken: None, stats: Stats::default() })
    }

    /// Finds the device and connects to its backend.
    pub fn open(grants: G, evtchn: E, store: S, cfg: FrontendConfig) -> Result<Self, Error> {
        let mut dev = Self::new(grants, evtchn, store, cfg)?;
        dev.connect()?;
        Ok(dev)
    }

    /// The xenbus handshake up to Connected (blkfront's
    /// `talk_to_blkback` and `blkfront_connect`).
    pub fn connect(&mut self) -> Result<(), Error> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.broken = None;
        let timeout = self.cfg.timeout;
        let backend_state = self.bus.backend_state()?;
        let stale = !matches!(self.bus.state(), XenbusState::Unknown | XenbusState::Initialising | XenbusState::Closed);
        if stale || backend_state == XenbusState::Closing {
            // A session of an earlier frontend (or one the backend ended):
            // close it first, so that the backend starts afresh.
            log::info!("{}: closing a stale session (backend {backend_state:?})", self.bus.frontend_path());
            self.bus.close(timeout)?;
        }
        self.bus.switch(XenbusState::Initialising)?;
        self.bus.wait_backend("offer its rings (InitWait)", timeout, |s| {
            matches!(s, XenbusState::InitWait | XenbusState::Connected)
        })?;
        let offer = parse_ring_offer(&self.bus)?;
        let order = self.cfg.max_ring_page_order.min(offer.max_ring_page_order).min(MAX_RING_PAGE_ORDER);
        let nr_queues = self.cfg.max_queues.clamp(1, MAX_QUEUES).min(offer.max_queues);
        let backend = self.bus.backend_domid();

        let mut queues = Vec::new();
        for index in 0..nr_queues {
            match Queue::new(index, &self.grants, &self.evtchn, backend, order) {
                Ok(queue) => queues.push(queue),
                Err(e) => {
                    self.teardown(queues);
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.publish(&queues, order).and_then(|()| self.bus.switch(XenbusState::Initialised)) {
            return Err(self.abort(queues, e));
        }
        let state = match self.bus.wait_backend("connect", timeout, |s| {
            matches!(s, XenbusState::Connected | XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown)
        }) {
            Ok(state) => state,
            Err(e) => return Err(self.abort(queues, e)),
        };
        if state != XenbusState::Connected {
            return Err(self.abort(queues, Error::BackendClosed(state)));
        }
        let disk = match parse_disk(&self.bus) {
            Ok(disk) => disk,
            Err(e) => return Err(self.abort(queues, e)),
        };
        let persistent = self.cfg.persistent && disk.persistent;
        let max_segments = segments_per_request(disk.max_indirect_segments, self.cfg.max_indirect_segments);
        let indirect_pages = if max_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST {
            BlkifRequestIndirect::nr_indirect_pages(max_segments)
        } else {
            0
        };
        let flush_op = if disk.flush_cache {
            Some(BLKIF_OP_FLUSH_DISKCACHE)
        } else if disk.barrier {
            Some(BLKIF_OP_WRITE_BARRIER)
        } else {
            None
        };
        if let Err(e) = self.bus.switch(XenbusState::Connected) {
            return Err(self.abort(queues, e));
        }
        log::info!(
            "{}: connected to {}: {} bytes in {}-byte sectors{}, {} queue(s) of {} page(s), {} segments per request{}",
            self.bus.frontend_path(),
            self.bus.backend_path(),
            disk.size(),
            disk.sector_size,
            if disk.read_only() { ", read-only" } else { "" },
            queues.len(),
            1u32 << order,
            max_segments,
            if persistent { ", persistent grants" } else { "" },
        );
        self.stats.connects += 1;
        self.conn = Some(Connection {
            queues,
            ring_page_order: order,
            discard: disk.discard.is_some(),
            disk,
            persistent,
            max_segments,
            pages_per_slot: max_segments + indirect_pages,
            flush_op,
            next_queue: 0,
        });
        Ok(())
    }

    /// Writes the ring nodes in one transaction, after removing any an
    /// earlier connection left.
    fn publish(&self, queues: &[Queue<G::Shared>], order: u32) -> Result<(), Error> {
        let bus = &self.bus;
        let persistent = if self.cfg.persistent { "1" } else { "0" };
        bus.transaction(|tx| {
            for child in bus.children(tx)? {
                let stale = child.starts_with("ring-ref")
                    || child.starts_with("queue-")
                    || matches!(child.as_str(), "ring-page-order" | "multi-queue-num-queues" | "event-channel");
                if stale {
                    bus.remove(tx, &child)?;
                }
            }
            if order > 0 {
                bus.write(tx, "ring-page-order", &order.to_string())?;
            }
            if let [queue] = queues {
                write_ring(bus, tx, "", queue, order)?;
            } else {
                bus.write(tx, "multi-queue-num-queues", &queues.len().to_string())?;
                for queue in queues {
                    write_ring(bus, tx, &format!("queue-{}/", queue.index()), queue, order)?;
                }
            }
            bus.write(tx, "protocol", XEN_IO_PROTO_ABI_X86_64)?;
            bus.write(tx, "feature-persistent", persistent)
        })
    }

    /// Closes the half-made connection after `error`, and returns it.
    fn abort(&mut self, queues: Vec<Queue<G::Shared>>, error: Error) -> Error {
        log::warn!("{}: connecting failed: {error}", self.bus.frontend_path());
        if let Err(e) = self.bus.close(self.cfg.timeout) {
            log::warn!("{}: closing after the failure: {e}", self.bus.frontend_path());
        }
        self.teardown(queues);
        error
    }

    fn teardown(&mut self, queues: Vec<Queue<G::Shared>>) {
        let leaked: usize = queues.into_iter().map(|q| q.teardown(&self.grants, &self.evtchn)).sum();
        self.stats.leaked_pages += leaked as u64;
        if leaked > 0 {
            log::warn!("{}: {leaked} page(s) stay granted: the backend still maps them", self.bus.frontend_path());
        }
    }

    /// Closes the device cleanly: Closing, then Closed as the backend
    /// follows; then ends access to every page and closes the event
    /// channels. The device can be connected again afterwards.
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

    /// Whether the device is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Why the device is broken, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The device as the backend described it, while connected.
    pub fn info(&self) -> Option<&DiskInfo> {
        self.conn.as_ref().map(|c| &c.disk)
    }

    /// Size in bytes (0 when not connected).
    pub fn size(&self) -> u64 {
        self.info().map_or(0, DiskInfo::size)
    }

    /// Size in 512-byte sectors (0 when not connected).
    pub fn sectors(&self) -> u64 {
        self.info().map_or(0, |d| d.sectors)
    }

    /// The logical sector size (512 when not connected).
    pub fn sector_size(&self) -> u32 {
        self.info().map_or(512, |d| d.sector_size)
    }

    /// Whether the backend serves the disk read-only.
    pub fn read_only(&self) -> bool {
        self.info().is_some_and(DiskInfo::read_only)
    }

    /// Whether persistent grants were negotiated.
    pub fn persistent(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.persistent)
    }

    /// Queues in use.
    pub fn queues(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.queues.len())
    }

    /// Ring pages per queue, as a power of two (`ring-page-order`; 0 when
    /// not connected).
    pub fn ring_page_order(&self) -> u32 {
        self.conn.as_ref().map_or(0, |c| c.ring_page_order)
    }

    /// Requests one queue's ring holds (0 when not connected).
    pub fn ring_slots(&self) -> usize {
        self.conn.as_ref().and_then(|c| c.queues.first()).map_or(0, Queue::size)
    }

    /// Most bytes one request carries: 11 pages, or more with indirect
    /// requests.
    pub fn max_request_bytes(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.max_segments * PAGE_SIZE)
    }

    /// Whether [`flush`](Self::flush) reaches the backend (it offers
    /// `feature-flush-cache` or `feature-barrier`).
    pub fn can_flush(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.flush_op.is_some())
    }

    /// Whether the backend offers discard.
    pub fn can_discard(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.discard)
    }

    /// The request counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The xenbus path of the frontend directory.
    pub fn frontend_path(&self) -> &str {
        self.bus.frontend_path()
    }

    /// Looks for a change of the backend's state while idle, and follows
    /// a backend that closes the device (blkfront's `blkback_changed`).
    pub fn poll(&mut self) -> Result<(), Error> {
        if self.conn.is_none() {
            return Ok(());
        }
        match self.bus.backend_changed() {
            Ok(Some(state @ (XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown))) => {
                Err(self.backend_closed(state))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The backend closed the device: follow it to Closed and release
    /// everything (`blkfront_closing`).
    fn backend_closed(&mut self, state: XenbusState) -> Error {
        log::warn!("{}: the backend moved to {state:?}", self.bus.frontend_path());
        if let Some(conn) = self.conn.take() {
            if let Err(e) = self.bus.close(self.cfg.timeout) {
                log::warn!("{}: closing after the backend: {e}", self.bus.frontend_path());
            }
            self.teardown(conn.queues);
        }
        Error::BackendClosed(state)
    }

    /// Reads `buf.len()` bytes at 512-byte sector `sector`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_usable()?;
        self.check_range(sector, buf.len() as u64, false)?;
        self.run(&mut Buffers::Read(&mut [(sector, buf)]))?.into_single()
    }

    /// Writes `buf` at 512-byte sector `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        self.check_usable()?;
        self.check_range(sector, buf.len() as u64, true)?;
        self.run(&mut Buffers::Write(&[(sector, buf)]))?.into_single()
    }

    /// Reads a batch of independent requests, each `(sector, buffer)`
    /// as for [`read`](Self::read), with as many in flight at once as the
    /// rings hold: the requests are put on the rings in order, spread
    /// over the queues, and each one answered makes room for the next, so
    /// that the backend always has work while requests remain. Returns
    /// when every request sent has been answered.
    ///
    /// Every range is checked before anything is sent; a bad one fails
    /// the whole batch with [`Error::Batch`] naming it, and nothing is
    /// read. Once a request fails (the backend reports an error, or a
    /// local resource runs out) nothing more is sent, those in flight
    /// complete, and the call returns [`Error::Batch`] with the
    /// lowest-numbered request that failed; the buffers of the other
    /// requests then hold unspecified data. A backend that breaks the
    /// protocol, closes or stops answering ends the call with that error
    /// itself, as for [`read`](Self::read).
    ///
    /// Requests may overlap; a read carries no ordering against the
    /// others of the batch.
    pub fn read_many(&mut self, requests: &mut [(u64, &mut [u8])]) -> Result<(), Error> {
        self.check_batch(requests.iter().map(|(sector, buf)| (*sector, buf.len())), false)?;
        self.run(&mut Buffers::Read(requests))?.into_batch()
    }

    /// Writes a batch of independent requests, each `(sector, data)` as
    /// for [`write`](Self::write), with as many in flight at once as the
    /// rings hold; returns when every request sent has been answered.
    /// Errors are reported as for [`read_many`](Self::read_many); after a
    /// failure, the sectors of the other requests may or may not have
    /// been written.
    ///
    /// The backend may carry out the requests in any order (blkif gives
    /// none): a batch must not write the same sectors twice if the result
    /// matters. A write is durable after [`flush`](Self::flush).
    pub fn write_many(&mut self, requests: &[(u64, &[u8])]) -> Result<(), Error> {
        self.check_batch(requests.iter().map(|(sector, buf)| (*sector, buf.len())), true)?;
        self.run(&mut Buffers::Write(requests))?.into_batch()
    }

    /// Reads a batch of independent requests, each `(sector, length)`,
    /// as [`read_many`](Self::read_many) does, but without copying: the
    /// data stays in the frontend's granted pages, and
    /// `data(index, offset, pages)` is called with them once per part of
    /// request `index` as it completes, `pages` holding the request's
    /// bytes from `offset` on (a request longer than
    /// [`max_request_bytes`](Self::max_request_bytes) comes in several
    /// parts, in any order). The pages are the frontend's again when
    /// `data` returns: it reads what it needs through [`SharedMemory`]
    /// (or hands the memory to a system call) meanwhile.
    ///
    /// An error returned by `data` fails that request with
    /// [`Error::Data`]; errors are otherwise reported as for
    /// [`read_many`](Self::read_many). `data` is not called for a part
    /// the backend failed.
    pub fn read_in_place<F>(&mut self, requests: &[(u64, usize)], data: F) -> Result<(), Error>
    where
        F: FnMut(usize, usize, &SharedMemory<'_>) -> std::io::Result<()>,
    {
        self.in_place(false, requests, data)
    }

    /// Writes a batch of independent requests, each `(sector, length)`,
    /// as [`write_many`](Self::write_many) does, but without copying:
    /// `data(index, offset, pages)` writes the bytes of request `index`
    /// from `offset` on into the frontend's granted `pages` (all of
    /// them), just before that part is sent. Parts of one request are
    /// filled in order of their offsets; a request longer than
    /// [`max_request_bytes`](Self::max_request_bytes) comes in several.
    ///
    /// An error returned by `data` fails that request with
    /// [`Error::Data`] (the part is not sent) and nothing more is sent;
    /// errors are otherwise reported as for
    /// [`write_many`](Self::write_many).
    pub fn write_in_place<F>(&mut self, requests: &[(u64, usize)], data: F) -> Result<(), Error>
    where
        F: FnMut(usize, usize, &SharedMemory<'_>) -> std::io::Result<()>,
    {
        self.in_place(true, requests, data)
    }

    fn in_place<F>(&mut self, writes: bool, requests: &[(u64, usize)], data: F) -> Result<(), Error>
    where
        F: FnMut(usize, usize, &SharedMemory<'_>) -> std::io::Result<()>,
    {
        self.check_batch(requests.iter().copied(), writes)?;
        self.run(&mut InPlace { writes, requests, data })?.into_batch()
    }

    /// Makes completed writes durable: `BLKIF_OP_FLUSH_DISKCACHE`, or
    /// `BLKIF_OP_WRITE_BARRIER` if that is all the backend offers; nothing
    /// if it offers neither (it has no volatile cache), as blkfront.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.check_usable()?;
        let Some(op) = self.conn.as_ref().and_then(|c| c.flush_op) else {
            return Ok(());
        };
        let handle = self.cfg.handle();
        let request = |id| BlkifRequest { operation: op, id, handle, ..Default::default() };
        let what = InFlight { kind: Kind::Flush, request: 0, sector: 0, nr_sectors: 0, pages: Pages::None };
        self.stats.f_req += 1;
        self.single(op, request, what)
    }

    /// Discards `nr_sectors` 512-byte sectors at `sector`.
    pub fn discard(&mut self, sector: u64, nr_sectors: u64) -> Result<(), Error> {
        self.check_usable()?;
        let (discard, read_only) = match &self.conn {
            Some(c) => (c.discard, c.disk.read_only()),
            None => return Err(Error::NotConnected),
        };
        if !discard {
            return Err(Error::Unsupported("discard"));
        }
        if read_only && self.cfg.honour_read_only {
            return Err(Error::ReadOnly);
        }
        self.check_range(sector, nr_sectors.saturating_mul(512), true)?;
        if nr_sectors == 0 {
            return Ok(());
        }
        let handle = self.cfg.handle();
        let request = |id| {
            BlkifRequest::from_discard(BlkifRequestDiscard {
                operation: BLKIF_OP_DISCARD,
                flag: 0,
                handle,
                id,
                sector_number: sector,
                nr_sectors,
                ..Default::default()
            })
        };
        let what = InFlight { kind: Kind::Discard, request: 0, sector, nr_sectors, pages: Pages::None };
        self.stats.ds_req += 1;
        self.single(BLKIF_OP_DISCARD, request, what)
    }

    /// Sends one request without data on the first queue and waits for it.
    fn single(
        &mut self,
        op: u8,
        request: impl FnOnce(u64) -> BlkifRequest,
        what: InFlight<G::Shared>,
    ) -> Result<(), Error> {
        let mut failures = Failures::default();
        let result = (|| {
            let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
            let queue = conn.queues.first_mut().ok_or(Error::NotConnected)?;
            // Nothing else is in flight between calls, so a slot is free.
            let reservation = queue.reserve().ok_or(Error::Bug("no free slot on an idle ring"))?;
            queue.put(reservation, op, &request(reservation.id), what)?;
            queue.push(&self.evtchn)?;
            self.drain(&mut Buffers::Write(&[]), &mut failures)
        })();
        self.settle(result)?;
        failures.into_single()
    }

    /// Checks a batch before anything of it is sent: the device, then
    /// each `(sector, length)`; a bad range fails the batch naming it.
    fn check_batch(&mut self, ranges: impl Iterator<Item = (u64, usize)>, write: bool) -> Result<(), Error> {
        self.check_usable()?;
        for (index, (sector, len)) in ranges.enumerate() {
            self.check_range(sector, len as u64, write).map_err(|e| Error::batch(index, e))?;
        }
        Ok(())
    }

    fn check_usable(&mut self) -> Result<(), Error> {
        if let Some(why) = &self.broken {
            return Err(Error::Broken(why.clone()));
        }
        if self.conn.is_none() {
            return Err(Error::NotConnected);
        }
        self.poll()
    }

    /// Checks that `len` bytes at `sector` lie on the disk and on logical
    /// sector boundaries.
    fn check_range(&self, sector: u64, len: u64, write: bool) -> Result<(), Error> {
        let disk = self.info().ok_or(Error::NotConnected)?;
        if write && disk.read_only() && self.cfg.honour_read_only {
            return Err(Error::ReadOnly);
        }
        let nr_sectors = len.div_ceil(512);
        let end = sector.checked_add(nr_sectors);
        if !end.is_some_and(|end| end <= disk.sectors) {
            return Err(Error::OutOfRange { sector, nr_sectors, disk_sectors: disk.sectors });
        }
        let sector_size = u64::from(disk.sector_size);
        let offset = sector * 512;
        if offset % sector_size != 0 || len % sector_size != 0 {
            return Err(Error::Misaligned { offset, len: len as usize, sector_size: disk.sector_size });
        }
        Ok(())
    }

    /// Carries out the requests of a read or write call, whose ranges
    /// were checked: submits them in order while the rings have room, and
    /// waits for responses until all are answered. Fails with an error
    /// of the device; the failures of requests are handed back.
    fn run(&mut self, bufs: &mut impl CallData) -> Result<Failures, Error> {
        let count = bufs.count();
        // The next bytes to send: request, and offset in it.
        let (mut next, mut offset) = (0, 0);
        let mut failures = Failures::default();
        let mut unpushed = 0;
        let result = (|| {
            loop {
                while next < count && !failures.any() {
                    let Some((sector, len)) = bufs.request(next) else { break };
                    if offset >= len {
                        (next, offset) = (next + 1, 0);
                        continue;
                    }
                    match self.submit(sector, bufs, next, offset) {
                        Ok(Some(sent)) => {
                            offset += sent;
                            // Publish every PUSH_BYTES or so while the
                            // backend is awake (polling or busy), so that
                            // it starts on the first requests while the
                            // data of the next is copied in; a backend
                            // waiting for an event gets one, at the end.
                            unpushed += sent;
                            if unpushed >= PUSH_BYTES {
                                unpushed = 0;
                                if let Some(conn) = self.conn.as_mut() {
                                    for queue in &mut conn.queues {
                                        queue.push_if_awake(&self.evtchn)?;
                                    }
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e @ Error::Protocol(_)) => return Err(e),
                        // A local failure (e.g. no memory to grant): send
                        // nothing more, let what is in flight finish.
                        Err(e) => failures.record(next, e),
                    }
                }
                unpushed = 0;
                if let Some(conn) = self.conn.as_mut() {
                    for queue in &mut conn.queues {
                        queue.push(&self.evtchn)?;
                    }
                }
                let idle = !self.conn.as_ref().is_some_and(|c| c.in_flight() > 0);
                if idle && (next >= count || failures.any()) {
                    return Ok(());
                }
                self.wait(bufs, &mut failures)?;
            }
        })();
        self.settle(result)?;
        Ok(failures)
    }

    /// Marks the device broken after a failure that leaves the rings in
    /// doubt; follows a backend that closed.
    fn settle(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        match result {
            Ok(()) => Ok(()),
            Err(Error::BackendClosed(state)) => Err(self.backend_closed(state)),
            Err(e @ (Error::Protocol(_) | Error::Timeout(_) | Error::Evtchn(_))) => {
                log::error!("{}: {e}", self.bus.frontend_path());
                self.broken = Some(e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Puts the blkif request for the bytes of request `index` of `bufs`
    /// (at `sector`) from `offset` on a queue with room; returns how many
    /// bytes it carries, or `None` if every ring is full.
    fn submit(
        &mut self,
        sector: u64,
        bufs: &mut impl CallData,
        index: usize,
        offset: usize,
    ) -> Result<Option<usize>, Error> {
        let handle = self.cfg.handle();
        let backend = self.bus.backend_domid();
        let conn = self.conn.as_mut().ok_or(Error::NotConnected)?;
        let nr_queues = conn.queues.len();
        let Some(q) = (0..nr_queues)
            .map(|i| (conn.next_queue + i) % nr_queues)
            .find(|&q| conn.queues.get(q).is_some_and(|queue| queue.reserve().is_some()))
        else {
            return Ok(None);
        };
        conn.next_queue = (q + 1) % nr_queues;
        let (persistent, max_segments, pages_per_slot) = (conn.persistent, conn.max_segments, conn.pages_per_slot);
        let queue = conn.queues.get_mut(q).ok_or(Error::Bug("queue index out of range"))?;
        let reservation = queue.reserve().ok_or(Error::Bug("the queue chosen has no free slot"))?;

        let (_, total) = bufs.request(index).ok_or(Error::Bug("request index outside the call"))?;
        let len = total.saturating_sub(offset).min(max_segments * PAGE_SIZE);
        let nr_segments = len.div_ceil(PAGE_SIZE);
        let indirect = nr_segments > BLKIF_MAX_SEGMENTS_PER_REQUEST;
        let nr_indirect = if indirect { BlkifRequestIndirect::nr_indirect_pages(nr_segments) } else { 0 };
        let (op, kind) = if bufs.writes() {
            (BLKIF_OP_WRITE, Kind::Write)
        } else {
            (BLKIF_OP_READ, Kind::Read { offset, len })
        };
        // Data pages first, then the indirect pages: in the slot's
        // persistent buffer, or granted for this request (read-only to the
        // backend for a write, which it only reads).
        let (pages, indirect_base) = if persistent {
            queue.buffer(&self.grants, backend, reservation.slot, pages_per_slot)?;
            (Pages::Persistent, max_segments)
        } else {
            let writable = op == BLKIF_OP_READ;
            let shared = self
                .grants
                .share(backend, nr_segments + nr_indirect, writable)
                .map_err(Error::grant("share data pages"))?;
            (Pages::Fresh(shared), nr_segments)
        };
        let first_sector = sector + (offset / BLKIF_SECTOR_SIZE) as u64;
        let nr_sectors = (len / BLKIF_SECTOR_SIZE) as u64;
        let layout = Layout { id: reservation.id, op, handle, sector: first_sector, len, indirect_base };
        let built = match queue.data_pages(reservation.slot, &pages) {
            Some((memory, refs)) => (|| {
                if op == BLKIF_OP_WRITE {
                    bufs.fill(index, offset, &memory.subregion(0, len)?)?;
                }
                build_request(&memory, refs, &layout)
            })(),
            None => Err(Error::Bug("a request without its data pages")),
        };
        let request = match built {
            Ok(request) => request,
            Err(e) => {
                if let Pages::Fresh(shared) = pages {
                    end_access(&self.grants, shared);
                }
                return Err(e);
            }
        };
        queue.put(
            reservation,
            op,
            &request,
            InFlight { kind, request: index, sector: first_sector, nr_sectors, pages },
        )?;

        let in_flight = conn.in_flight() as u64;
        let stats = &mut self.stats;
        stats.max_in_flight = stats.max_in_flight.max(in_flight);
        stats.indirect_req += u64::from(indirect);
        match op {
            BLKIF_OP_READ => (stats.rd_req, stats.rd_sect) = (stats.rd_req + 1, stats.rd_sect + nr_sectors),
            _ => (stats.wr_req, stats.wr_sect) = (stats.wr_req + 1, stats.wr_sect + nr_sectors),
        }
        Ok(Some(len))
    }

    /// Waits until every request in flight is answered.
    fn drain(&mut self, bufs: &mut impl CallData, failures: &mut Failures) -> Result<(), Error> {
        while self.conn.as_ref().is_some_and(|c| c.in_flight() > 0) {
            self.wait(bufs, failures)?;
        }
        Ok(())
    }

    /// Completes every response waiting; if there was none, sleeps until
    /// the backend sends an event (or changes state, or times out).
    fn wait(&mut self, bufs: &mut impl CallData, failures: &mut Failures) -> Result<(), Error> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Err(Error::NotConnected);
            };
            let mut progress = false;
            for queue in &mut conn.queues {
                while let Some(done) = queue.next_completion()? {
                    progress = true;
                    let request = done.payload.request;
                    if let Err(e) = complete(
                        &self.grants,
                        queue,
                        done,
                        bufs,
                        &mut self.stats,
                        &mut conn.flush_op,
                        &mut conn.discard,
                    ) {
                        match e {
                            Error::Protocol(_) => return Err(e),
                            e => failures.record(request, e),
                        }
                    }
                }
            }
            if progress {
                return Ok(());
            }
            if !self.cfg.poll.is_zero() && poll_responses(&mut conn.queues, self.cfg.poll)? {
                continue;
            }
            let mut more = false;
            for queue in &mut conn.queues {
                if queue.in_flight() > 0 && queue.final_check()? {
                    more = true;
                }
            }
            if more {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!("responses from the backend {}", self.bus.backend_path())));
            }
            let slept = Instant::now();
            if let Some(port) = self.evtchn.wait(Some(left.min(POLL_INTERVAL)))? {
                self.evtchn.unmask(port)?;
                while let Some(port) = self.evtchn.pending()? {
                    self.evtchn.unmask(port)?;
                }
                continue;
            }
            // No event for a while, or a peer that went away: look at the
            // backend's state only now, not before every sleep, which
            // would cost a xenstore round of system calls per response.
            // A backend that closes the device stops answering, so it is
            // seen within POLL_INTERVAL.
            if let Some(state @ (XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown)) =
                self.bus.backend_changed()?
            {
                return Err(Error::BackendClosed(state));
            }
            if slept.elapsed() < POLL_INTERVAL / 2 {
                std::thread::sleep(SPURIOUS_WAKEUP_BACKOFF);
            }
        }
    }
}

impl<G: GrantShare, E: EventChannels, S: Xenstore> Drop for BlockFrontend<G, E, S> {
    fn drop(&mut self) {
        if let Err(e) = self.disconnect() {
            log::warn!("{}: disconnecting: {e}", self.bus.frontend_path());
        }
    }
}

/// Writes one queue's `ring-ref`s and `event-channel` under `prefix`.
fn write_ring<S: Xenstore, Sh: SharedGrants>(
    bus: &Bus<S>,
    tx: Transaction,
    prefix: &str,
    queue: &Queue<Sh>,
    order: u32,
) -> Result<(), Error> {
    if order == 0 {
        if let Some(gref) = queue.ring_refs().first() {
            bus.write(tx, &format!("{prefix}ring-ref"), &gref.to_string())?;
        }
    } else {
        for (i, gref) in queue.ring_refs().iter().enumerate() {
            bus.write(tx, &format!("{prefix}ring-ref{i}"), &gref.to_string())?;
        }
    }
    bus.write(tx, &format!("{prefix}event-channel"), &queue.port().to_string())
}

/// Where a data request goes and what it carries.
struct Layout {
    id: u64,
    op: u8,
    handle: BlkifVdev,
    sector: u64,
    /// Bytes.
    len: usize,
    /// Page, in the request's pages, of the first indirect page.
    indirect_base: usize,
}

/// Builds the request for the data in the request's pages (`memory`,
/// granted as `refs`): one full page per segment, the last one partial;
/// direct with up to 11 segments, else indirect with the segments in the
/// indirect pages.
fn build_request(memory: &SharedMemory<'_>, refs: &[GrantRef], layout: &Layout) -> Result<BlkifRequest, Error> {
    let &Layout { id, op, handle, sector, len, indirect_base } = layout;
    let nr_segments = len.div_ceil(PAGE_SIZE);
    if refs.len() < nr_segments {
        return Err(Error::Bug("fewer data pages than segments"));
    }
    let segments: Vec<BlkifRequestSegment> = (0..nr_segments)
        .zip(refs)
        .map(|(i, &gref)| {
            let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
            // `bytes` is a multiple of 512 from 512 to 4096: last_sect <= 7.
            BlkifRequestSegment::new(gref, 0, (bytes / BLKIF_SECTOR_SIZE - 1) as u8)
        })
        .collect();
    if nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
        let mut request = BlkifRequest {
            operation: op,
            nr_segments: nr_segments as u8,
            handle,
            id,
            sector_number: sector,
            ..Default::default()
        };
        request.seg[..nr_segments].copy_from_slice(&segments);
        return Ok(request);
    }
    let mut indirect_grefs = [0; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
    for ((i, chunk), slot) in segments.chunks(BLKIF_SEGS_PER_INDIRECT_FRAME).enumerate().zip(&mut indirect_grefs) {
        let page = indirect_base + i;
        memory.write(page * PAGE_SIZE, chunk.as_bytes())?;
        *slot = *refs.get(page).ok_or(Error::Bug("no page for the indirect segments"))?;
    }
    Ok(BlkifRequest::from_indirect(BlkifRequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        // At most BLKIF_MAX_INDIRECT_SEGMENTS (4096) segments.
        nr_segments: nr_segments as u16,
        id,
        sector_number: sector,
        handle,
        indirect_grefs,
        ..Default::default()
    }))
}

/// Busy-polls the rings of `queues` with requests in flight for up to
/// `poll`: true as soon as one has a response. Unlike the final check
/// before sleeping it leaves `rsp_event` alone, so the backend does not
/// send an event for what comes meanwhile.
fn poll_responses<Sh: SharedGrants>(queues: &mut [Queue<Sh>], poll: Duration) -> Result<bool, Error> {
    let start = Instant::now();
    loop {
        // The clock is read every few rounds: it costs more than a look
        // at the rings.
        for _ in 0..64 {
            for queue in queues.iter_mut() {
                if queue.in_flight() > 0 && queue.has_responses()? {
                    return Ok(true);
                }
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= poll {
            return Ok(false);
        }
    }
}

/// Finishes one answered request: hands a read's data to `bufs`, releases
/// non-persistent pages (which the backend must have unmapped), and turns
/// a failure status into an error.
fn complete<G: GrantShare>(
    grants: &G,
    queue: &Queue<G::Shared>,
    done: Completion<InFlight<G::Shared>>,
    bufs: &mut impl CallData,
    stats: &mut Stats,
    flush_op: &mut Option<u8>,
    discard: &mut bool,
) -> Result<(), Error> {
    let Completion { slot, id, status, payload } = done;
    let InFlight { kind, request, sector, nr_sectors, pages } = payload;
    let mut copied = Ok(());
    if let (Kind::Read { offset, len }, BlkifStatus::Okay) = (kind, status) {
        copied = match queue.data_pages(slot, &pages) {
            Some((memory, _)) => {
                memory.subregion(0, len).map_err(Error::from).and_then(|part| bufs.take(request, offset, &part))
            }
            None => Err(Error::Bug("a read without its data pages")),
        };
    }
    if let Pages::Fresh(shared) = pages {
        let first = shared.refs().first().copied().unwrap_or_default();
        match grants.end_access(shared) {
            Ok(()) => {}
            Err(GrantError::InUse(gref)) => {
                return Err(ProtocolError::GrantStillMapped { queue: queue.index(), id, gref }.into())
            }
            Err(source) => {
                log::warn!("ending access to grant {first} failed: {source}");
                return Err(Error::Grant { op: "end access to data pages", source });
            }
        }
    }
    copied?;
    if status == BlkifStatus::Okay {
        return Ok(());
    }
    stats.errors += 1;
    let op = match kind {
        Kind::Read { .. } => "read",
        Kind::Write => "write",
        Kind::Flush => "flush",
        Kind::Discard => "discard",
    };
    // As blkfront: a backend that does not support flush or discard after
    // all stops being asked.
    if status == BlkifStatus::Eopnotsupp {
        match kind {
            Kind::Flush => *flush_op = None,
            Kind::Discard => *discard = false,
            _ => {}
        }
    }
    log::warn!("queue {}: the backend failed a {op} of sectors {sector}+{nr_sectors}: {status:?}", queue.index());
    Err(Error::Io { op, sector, nr_sectors, status })
}
