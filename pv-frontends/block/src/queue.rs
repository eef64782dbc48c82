//! One ring (queue) of the device: its granted pages, its event channel,
//! the requests in flight on it, and with persistent grants the data pages
//! each ring slot keeps granted across requests.
//!
//! The ring follows `ring.h` through [`FrontRing`]: requests are put and
//! pushed with one notify decision (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`),
//! responses are taken off one by one (each a copy), and before sleeping
//! `RING_FINAL_CHECK_FOR_RESPONSES` re-arms `rsp_event`. A `rsp_prod` that
//! claims more responses than requests pushed breaks the ring.

use hypercall_abi::platform::{EventChannels, GrantError, GrantShare, SharedGrants, SharedMemory};
use hypercall_abi::ring::{FrontRing, FrontRingState, RingError};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifResponse};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};

use crate::error::{Error, ProtocolError};
use crate::shadow::{Completion, Reservation, Shadow};

type Ring<'a> = FrontRing<'a, BlkifRequest, BlkifResponse>;

/// Where the data of a request in flight lives.
#[derive(Debug)]
pub enum Pages<Sh> {
    /// No data (flush, discard).
    None,
    /// The persistent buffer of the request's ring slot.
    Persistent,
    /// Pages granted for this request only; access ends on completion.
    Fresh(Sh),
}

/// What a request in flight is, for its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read of `len` bytes into the caller's buffer at `offset`.
    Read {
        /// Offset in the caller's buffer (of the request the read is part of).
        offset: usize,
        /// Bytes.
        len: usize,
    },
    /// A write.
    Write,
    /// A flush or barrier.
    Flush,
    /// A discard.
    Discard,
}

/// A request in flight.
#[derive(Debug)]
pub struct InFlight<Sh> {
    /// What it is.
    pub kind: Kind,
    /// The caller's request it carries (part of): its index in a batch,
    /// 0 for a single read or write, a flush or a discard.
    pub request: usize,
    /// First 512-byte sector.
    pub sector: u64,
    /// Length in 512-byte sectors.
    pub nr_sectors: u64,
    /// Its data pages.
    pub pages: Pages<Sh>,
}

/// One connected ring.
pub struct Queue<Sh: SharedGrants> {
    index: u32,
    ring_pages: Sh,
    ring: FrontRingState,
    size: u32,
    port: EvtchnPort,
    shadow: Shadow<InFlight<Sh>>,
    /// With persistent grants: one buffer per ring slot, granted on first
    /// use and kept until the queue is torn down.
    buffers: Vec<Option<Sh>>,
    unpushed: bool,
}

impl<Sh: SharedGrants> std::fmt::Debug for Queue<Sh> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("size", &self.size)
            .field("port", &self.port)
            .field("ring", &self.ring)
            .field("in_flight", &self.shadow.in_flight())
            .finish_non_exhaustive()
    }
}

impl<Sh: SharedGrants> Queue<Sh> {
    /// Grants `1 << order` ring pages to `backend`, initialises the shared
    /// ring (`SHARED_RING_INIT`, `FRONT_RING_INIT`) and allocates an event
    /// channel for it (`setup_blkring`).
    pub fn new<G, E>(index: u32, grants: &G, evtchn: &E, backend: DomId, order: u32) -> Result<Self, Error>
    where
        G: GrantShare<Shared = Sh>,
        E: EventChannels,
    {
        let ring_pages = grants.share(backend, 1 << order, true).map_err(Error::grant("share ring pages"))?;
        let (ring, size) = {
            let memory = ring_pages.memory();
            let mem = memory.ring_mem().map_err(Error::RingSetup)?;
            let ring = Ring::init_shared(mem).map_err(Error::RingSetup)?;
            (ring.state(), ring.size())
        };
        let slots = u16::try_from(size).map_err(|_| Error::RingSetup(RingError::TooSmall { len: 0, entry_size: 0 }))?;
        let port = match evtchn.alloc_unbound(backend) {
            Ok(port) => port,
            Err(e) => {
                end_access(grants, ring_pages);
                return Err(e.into());
            }
        };
        log::debug!("queue {index}: {size}-slot ring in {} page(s), port {port}", 1u32 << order);
        Ok(Queue {
            index,
            ring_pages,
            ring,
            size,
            port,
            shadow: Shadow::new(index, slots),
            buffers: (0..size).map(|_| None).collect(),
            unpushed: false,
        })
    }

    /// The queue index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The ring's grant references, in order.
    pub fn ring_refs(&self) -> &[GrantRef] {
        self.ring_pages.refs()
    }

    /// The event channel port.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// Requests the ring holds.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.shadow.in_flight()
    }

    /// The slot and id the next request will take, if the ring has room.
    pub fn reserve(&self) -> Option<Reservation> {
        self.shadow.reserve()
    }

    /// The persistent buffer of `slot`, granting `pages` pages for it on
    /// first use.
    pub fn buffer<G>(&mut self, grants: &G, backend: DomId, slot: u16, pages: usize) -> Result<&Sh, Error>
    where
        G: GrantShare<Shared = Sh>,
    {
        let entry = self.buffers.get_mut(usize::from(slot)).ok_or(Error::Bug("ring slot out of range"))?;
        if entry.is_none() {
            *entry = Some(grants.share(backend, pages, true).map_err(Error::grant("share persistent pages"))?);
        }
        entry.as_ref().ok_or(Error::Bug("persistent buffer missing"))
    }

    /// The memory and grant references of a request's data pages.
    pub fn data_pages<'a>(&'a self, slot: u16, pages: &'a Pages<Sh>) -> Option<(SharedMemory<'a>, &'a [GrantRef])> {
        let shared = match pages {
            Pages::None => return None,
            Pages::Fresh(sh) => sh,
            Pages::Persistent => self.buffers.get(usize::from(slot))?.as_ref()?,
        };
        Some((shared.memory(), shared.refs()))
    }

    /// Puts `request`, reserved as `reservation`, on the ring; it is sent
    /// at the next [`push`](Self::push).
    pub fn put(
        &mut self,
        reservation: Reservation,
        op: u8,
        request: &BlkifRequest,
        what: InFlight<Sh>,
    ) -> Result<(), Error> {
        self.with_ring(|ring| ring.put_request(request))?;
        self.shadow.insert(reservation, op, what);
        self.unpushed = true;
        Ok(())
    }

    /// Publishes the requests put, and kicks the backend if it asked.
    pub fn push<E: EventChannels>(&mut self, evtchn: &E) -> Result<(), Error> {
        if !self.unpushed {
            return Ok(());
        }
        self.unpushed = false;
        if self.with_ring(|r| r.push_requests_and_check_notify())? {
            evtchn.notify(self.port)?;
        }
        Ok(())
    }

    /// Publishes the requests put if that sends the backend no event (it
    /// is awake); else leaves them for [`push`](Self::push). (Should the
    /// backend go to sleep just after the look, the push notifies it.)
    pub fn push_if_awake<E: EventChannels>(&mut self, evtchn: &E) -> Result<(), Error> {
        if !self.unpushed || self.with_ring(|r| Ok(r.push_would_notify()))? {
            return Ok(());
        }
        self.push(evtchn)
    }

    /// Takes the next response off the ring, and checks it against the
    /// requests in flight.
    pub fn next_completion(&mut self) -> Result<Option<Completion<InFlight<Sh>>>, Error> {
        if self.shadow.in_flight() == 0 {
            // Nothing is owed: a response now would answer nothing, and
            // the ring's bound on rsp_prod says so.
            self.with_ring(|r| r.unconsumed_responses())?;
            return Ok(None);
        }
        match self.with_ring(|r| r.consume_response())? {
            None => Ok(None),
            Some(rsp) => Ok(Some(self.shadow.complete(&rsp)?)),
        }
    }

    /// Whether responses are waiting, without asking for an event.
    pub fn has_responses(&mut self) -> Result<bool, Error> {
        self.with_ring(|r| r.has_unconsumed_responses())
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: true if responses arrived and
    /// the caller must not sleep.
    pub fn final_check(&mut self) -> Result<bool, Error> {
        self.with_ring(|r| r.final_check_for_responses())
    }

    /// Re-attaches the ring to its pages for one operation.
    fn with_ring<R>(&mut self, op: impl FnOnce(&mut Ring<'_>) -> Result<R, RingError>) -> Result<R, Error> {
        let queue = self.index;
        let memory = self.ring_pages.memory();
        let mem = memory.ring_mem().map_err(Error::RingSetup)?;
        let mut ring = Ring::resume(mem, self.ring).map_err(Error::RingSetup)?;
        let result = op(&mut ring);
        self.ring = ring.state();
        result.map_err(|source| Error::Protocol(ProtocolError::Ring { queue, source }))
    }

    /// Closes the event channel and ends access to every page: the ring,
    /// the persistent buffers and the pages of requests still in flight.
    /// Pages the backend still maps cannot be reclaimed; they are counted
    /// and left to the grant table, as Xen does.
    pub fn teardown<G, E>(mut self, grants: &G, evtchn: &E) -> usize
    where
        G: GrantShare<Shared = Sh>,
        E: EventChannels,
    {
        if let Err(e) = evtchn.close(self.port) {
            log::warn!("queue {}: closing port {} failed: {e}", self.index, self.port);
        }
        let mut leaked = 0;
        for what in self.shadow.drain() {
            if let Pages::Fresh(sh) = what.pages {
                leaked += end_access(grants, sh);
            }
        }
        for buffer in self.buffers.drain(..).flatten() {
            leaked += end_access(grants, buffer);
        }
        leaked + end_access(grants, self.ring_pages)
    }
}

/// Ends access to `shared`; returns how many pages could not be reclaimed.
pub fn end_access<G: GrantShare>(grants: &G, shared: G::Shared) -> usize {
    let pages = shared.refs().len();
    match grants.end_access(shared) {
        Ok(()) => 0,
        Err(GrantError::InUse(gref)) => {
            log::warn!("the backend still maps grant {gref}: {pages} page(s) left to the grant table");
            pages
        }
        Err(e) => {
            log::warn!("ending access to {pages} page(s) failed: {e}");
            pages
        }
    }
}
