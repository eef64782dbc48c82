//! One queue of the device: a transmit ring and a receive ring, each in
//! one granted page, their event channel(s), and the buffer pages the
//! frames travel in.
//!
//! The rings follow `ring.h` through [`FrontRing`]: requests are put and
//! pushed with one notify decision (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`),
//! responses are taken off one by one (each a copy), and before sleeping
//! `RING_FINAL_CHECK_FOR_RESPONSES` re-arms `rsp_event`. A `rsp_prod` that
//! claims more responses than requests pushed breaks the ring.
//!
//! Buffers are granted once per connection and kept, one 4 KiB page per
//! ring slot: transmit pages read-only to the backend (netfront grants
//! `GNTMAP_readonly`), receive pages writable. A frame is copied into the
//! transmit pages of the slots it takes, a page per slot at offset 0
//! (netback copies or maps each slot's `offset..offset+size`, which must
//! stay in the page), and copied out of the receive pages as each checked
//! response is taken, so that a page is free to be posted again at once.
//! Netfront instead grants and ends access per frame; keeping the grants
//! spares a grant-table update per page, at the cost that the backend can
//! read (tx) or write (rx) these pages at any time: they never hold
//! anything but frame data.

use hypercall_abi::platform::{EventChannels, GrantError, GrantShare, SharedGrants};
use hypercall_abi::ring::{FrontRing, FrontRingState, RingEntry, RingError};
use hypercall_abi::xen::netif::{
    NetTxFlags, NetifExtraFlags, NetifExtraGso, NetifExtraInfo, NetifRspStatus, NetifRxRequest,
    NetifRxResponse, NetifTxRequest, NetifTxResponse,
};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Error, ProtocolError};
use crate::protocol::Offload;
use crate::rx::{RxAssembler, RxFrame};
use crate::stats::Stats;
use crate::tx::TxShadow;

type TxRing<'a> = FrontRing<'a, NetifTxRequest, NetifTxResponse>;
type RxRing<'a> = FrontRing<'a, NetifRxRequest, NetifRxResponse>;

/// Ring slots a frame of `len` bytes takes: a page per data slot, and one
/// for the GSO extra-info slot.
pub fn slots_for(len: usize, offload: &Offload) -> (usize, usize) {
    let data = len.div_ceil(PAGE_SIZE).max(1);
    (data, data + usize::from(offload.gso.is_some()))
}

/// One connected queue.
pub struct Queue<Sh: SharedGrants> {
    index: u32,
    tx_page: Sh,
    tx: FrontRingState,
    tx_size: u32,
    rx_page: Sh,
    rx: FrontRingState,
    rx_size: u32,
    tx_buffers: Sh,
    rx_buffers: Sh,
    shadow: TxShadow,
    assembler: RxAssembler,
    tx_port: EvtchnPort,
    rx_port: EvtchnPort,
    tx_unpushed: bool,
    rx_unpushed: bool,
}

impl<Sh: SharedGrants> std::fmt::Debug for Queue<Sh> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("tx_port", &self.tx_port)
            .field("rx_port", &self.rx_port)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .field("tx_in_flight", &self.shadow.in_flight())
            .finish_non_exhaustive()
    }
}

/// Pages granted so far while a queue is built, released if building fails.
struct Granted<'g, G: GrantShare> {
    grants: &'g G,
    pages: Vec<G::Shared>,
}

impl<G: GrantShare> Granted<'_, G> {
    fn share(
        &mut self,
        backend: DomId,
        count: usize,
        writable: bool,
        op: &'static str,
    ) -> Result<usize, Error> {
        let shared = self
            .grants
            .share(backend, count, writable)
            .map_err(Error::grant(op))?;
        self.pages.push(shared);
        Ok(self.pages.len() - 1)
    }

    fn release(self) {
        for shared in self.pages {
            end_access(self.grants, shared);
        }
    }
}

impl<Sh: SharedGrants> Queue<Sh> {
    /// Grants the two ring pages and the buffer pages to `backend`,
    /// initialises the shared rings (`XEN_FRONT_RING_INIT`) and allocates
    /// one event channel, or one per ring if `split` (netfront's
    /// `setup_netfront`).
    pub fn new<G, E>(
        index: u32,
        grants: &G,
        evtchn: &E,
        backend: DomId,
        split: bool,
    ) -> Result<Self, Error>
    where
        G: GrantShare<Shared = Sh>,
        E: EventChannels,
    {
        let mut granted = Granted {
            grants,
            pages: Vec::new(),
        };
        match Self::build(index, &mut granted, evtchn, backend, split) {
            Ok(queue) => Ok(queue),
            Err(e) => {
                granted.release();
                Err(e)
            }
        }
    }

    fn build<G, E>(
        index: u32,
        granted: &mut Granted<'_, G>,
        evtchn: &E,
        backend: DomId,
        split: bool,
    ) -> Result<Self, Error>
    where
        G: GrantShare<Shared = Sh>,
        E: EventChannels,
    {
        granted.share(backend, 1, true, "share the tx ring page")?;
        granted.share(backend, 1, true, "share the rx ring page")?;
        let (tx, tx_size, rx, rx_size) = {
            let [tx_page, rx_page] = &granted.pages[..] else {
                return Err(Error::Bug("ring pages missing"));
            };
            let (tx_mem, rx_mem) = (tx_page.memory(), rx_page.memory());
            let tx = TxRing::init_shared(tx_mem.ring_mem().map_err(Error::RingSetup)?)
                .map_err(Error::RingSetup)?;
            let rx = RxRing::init_shared(rx_mem.ring_mem().map_err(Error::RingSetup)?)
                .map_err(Error::RingSetup)?;
            (tx.state(), tx.size(), rx.state(), rx.size())
        };
        let tx_slots =
            u16::try_from(tx_size).map_err(|_| Error::Bug("a tx ring of more than 65535 slots"))?;
        granted.share(
            backend,
            tx_size as usize,
            false,
            "share the tx buffer pages",
        )?;
        granted.share(backend, rx_size as usize, true, "share the rx buffer pages")?;
        let tx_port = evtchn.alloc_unbound(backend)?;
        let rx_port = if split {
            match evtchn.alloc_unbound(backend) {
                Ok(port) => port,
                Err(e) => {
                    close_port(evtchn, tx_port);
                    return Err(e.into());
                }
            }
        } else {
            tx_port
        };
        let mut pages = std::mem::take(&mut granted.pages).into_iter();
        let (Some(tx_page), Some(rx_page), Some(tx_buffers), Some(rx_buffers)) =
            (pages.next(), pages.next(), pages.next(), pages.next())
        else {
            return Err(Error::Bug("queue pages missing"));
        };
        log::debug!(
            "queue {index}: tx ring of {tx_size} slots (ref {:?}), rx ring of {rx_size} slots (ref {:?}), ports {tx_port}/{rx_port}",
            tx_page.refs(),
            rx_page.refs()
        );
        Ok(Queue {
            index,
            tx_page,
            tx,
            tx_size,
            rx_page,
            rx,
            rx_size,
            tx_buffers,
            rx_buffers,
            shadow: TxShadow::new(index, tx_slots),
            assembler: RxAssembler::new(index),
            tx_port,
            rx_port,
            tx_unpushed: false,
            rx_unpushed: false,
        })
    }

    /// The queue index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The tx ring's grant reference.
    pub fn tx_ring_ref(&self) -> GrantRef {
        self.tx_page.refs().first().copied().unwrap_or_default()
    }

    /// The rx ring's grant reference.
    pub fn rx_ring_ref(&self) -> GrantRef {
        self.rx_page.refs().first().copied().unwrap_or_default()
    }

    /// The tx event channel port (also the rx one unless split).
    pub fn tx_port(&self) -> EvtchnPort {
        self.tx_port
    }

    /// The rx event channel port.
    pub fn rx_port(&self) -> EvtchnPort {
        self.rx_port
    }

    /// Whether the queue has separate tx and rx ports.
    pub fn split(&self) -> bool {
        self.tx_port != self.rx_port
    }

    /// Slots of the tx ring.
    pub fn tx_size(&self) -> u32 {
        self.tx_size
    }

    /// Slots of the rx ring.
    pub fn rx_size(&self) -> u32 {
        self.rx_size
    }

    /// Transmit slots (data and extra-info) not yet answered.
    pub fn tx_in_flight(&self) -> usize {
        self.shadow.in_flight() + self.shadow.nulls_owed()
    }

    /// Whether a frame taking `slots` ring slots, `data` of them with a
    /// buffer page, fits now.
    pub fn tx_room(&mut self, data: usize, slots: usize) -> Result<bool, Error> {
        let free = self.with_tx(|r| Ok(r.free_requests()))? as usize;
        Ok(free >= slots && self.shadow.free() >= data)
    }

    /// Puts `frame` on the tx ring (netfront's `xennet_start_xmit`): its
    /// first request with the whole length and the checksum flags, the
    /// GSO extra-info slot if any, then a request per further page, each
    /// but the last with `NETTXF_more_data`. Returns `false`, having put
    /// nothing, if the ring has no room. The frame is sent at the next
    /// [`push`](Self::push).
    pub fn put_frame(&mut self, frame: &[u8], offload: &Offload) -> Result<bool, Error> {
        let len = frame.len();
        let size =
            u16::try_from(len).map_err(|_| Error::Bug("a frame longer than a netif packet"))?;
        let (data, slots) = slots_for(len, offload);
        if !self.tx_room(data, slots)? {
            return Ok(false);
        }
        let mut requests = Vec::with_capacity(slots);
        let memory = self.tx_buffers.memory();
        for (k, chunk) in frame
            .chunks(PAGE_SIZE)
            .chain(frame.is_empty().then_some(&[][..]))
            .enumerate()
        {
            let (slot, id) = self
                .shadow
                .take((k == 0).then_some(len))
                .ok_or(Error::Bug("no free tx entry after the room check"))?;
            memory.write(usize::from(slot) * PAGE_SIZE, chunk)?;
            let gref = *self
                .tx_buffers
                .refs()
                .get(usize::from(slot))
                .ok_or(Error::Bug("tx slot without its page"))?;
            let mut flags = if k == 0 {
                offload.tx_flags()
            } else {
                NetTxFlags::empty()
            };
            if k + 1 < data {
                flags |= NetTxFlags::MORE_DATA;
            }
            if k == 0 && offload.gso.is_some() {
                flags |= NetTxFlags::EXTRA_INFO;
            }
            // `chunk` is at most a page.
            let slot_size = if k == 0 { size } else { chunk.len() as u16 };
            requests.push(NetifTxRequest {
                gref,
                offset: 0,
                flags: flags.bits(),
                id,
                size: slot_size,
            });
        }
        let extra = offload.gso.map(|gso| {
            let info = NetifExtraInfo::from_gso(
                NetifExtraGso {
                    size: gso.size,
                    type_: gso.kind.raw(),
                    pad: 0,
                    features: 0,
                },
                NetifExtraFlags::empty(),
            );
            tx_slot_from_extra(&info)
        });
        let queue = self.index;
        let (tx_page, state) = (&self.tx_page, &mut self.tx);
        with_ring::<NetifTxRequest, NetifTxResponse, _, _>(queue, "tx", tx_page, state, |ring| {
            let mut rest = requests.iter();
            if let Some(first) = rest.next() {
                ring.put_request(first)?;
            }
            if let Some(extra) = &extra {
                ring.put_request(extra)?;
            }
            rest.try_for_each(|request| ring.put_request(request))
        })?;
        if extra.is_some() {
            self.shadow.extra_sent();
        }
        self.tx_unpushed = true;
        Ok(true)
    }

    /// Posts a receive request for every free rx slot (netfront's
    /// `xennet_alloc_rx_buffers`): the request at ring index `i` carries
    /// id `i % size` and the page of that slot. Sent at the next
    /// [`push`](Self::push).
    pub fn refill_rx(&mut self) -> Result<usize, Error> {
        let mask = self.rx_size - 1;
        let refs = self.rx_buffers.refs();
        let posted = with_ring::<NetifRxRequest, NetifRxResponse, _, _>(
            self.index,
            "rx",
            &self.rx_page,
            &mut self.rx,
            |ring| {
                let mut posted = 0;
                while !ring.is_full() {
                    let slot = ring.req_prod_pvt().0 & mask;
                    let gref = refs.get(slot as usize).copied().unwrap_or_default();
                    // `slot` < rx ring size <= 65536.
                    ring.put_request(&NetifRxRequest {
                        id: slot as u16,
                        pad: 0,
                        gref,
                    })?;
                    posted += 1;
                }
                Ok(posted)
            },
        )?;
        if posted > 0 {
            self.rx_unpushed = true;
        }
        Ok(posted)
    }

    /// Publishes the requests put on either ring, and kicks the backend
    /// where it asked (the rx ring's kick is `feature-rx-notify`).
    pub fn push<E: EventChannels>(&mut self, evtchn: &E) -> Result<(), Error> {
        let mut kick_tx = false;
        let mut kick_rx = false;
        if std::mem::take(&mut self.tx_unpushed) {
            kick_tx = self.with_tx(|r| r.push_requests_and_check_notify())?;
        }
        if std::mem::take(&mut self.rx_unpushed) {
            kick_rx = self.with_rx(|r| r.push_requests_and_check_notify())?;
        }
        if kick_tx {
            evtchn.notify(self.tx_port)?;
        }
        if kick_rx && (self.rx_port != self.tx_port || !kick_tx) {
            evtchn.notify(self.rx_port)?;
        }
        Ok(())
    }

    /// Kicks the backend on every port unconditionally (netfront's
    /// `xennet_connect` does, once connected).
    pub fn kick<E: EventChannels>(&self, evtchn: &E) -> Result<(), Error> {
        evtchn.notify(self.tx_port)?;
        if self.rx_port != self.tx_port {
            evtchn.notify(self.rx_port)?;
        }
        Ok(())
    }

    /// Takes every transmit response off the ring and checks it
    /// (netfront's `xennet_tx_buf_gc`); counts the frames answered.
    pub fn collect_tx(&mut self, stats: &mut Stats) -> Result<usize, Error> {
        let mut answered = 0;
        for _ in 0..=self.tx_size {
            let Some(rsp) = self.with_tx(|r| r.consume_response())? else {
                break;
            };
            let Some(done) = self.shadow.complete(&rsp)? else {
                continue;
            };
            let Some(len) = done.frame_len else {
                continue;
            };
            answered += 1;
            match done.status {
                NetifRspStatus::Okay => {
                    stats.tx_packets += 1;
                    stats.tx_bytes += len as u64;
                }
                NetifRspStatus::Dropped => stats.tx_dropped += 1,
                NetifRspStatus::Error | NetifRspStatus::Null => stats.tx_errors += 1,
            }
        }
        Ok(answered)
    }

    /// Takes receive responses off the ring until a frame is complete;
    /// `None` if the responses published so far complete none.
    pub fn next_rx(&mut self) -> Result<Option<RxFrame>, Error> {
        let mask = self.rx_size - 1;
        for _ in 0..=self.rx_size {
            let next = self.with_rx(|r| {
                let index = r.rsp_cons();
                Ok(r.consume_response()?.map(|rsp| (index, rsp)))
            })?;
            let Some((index, rsp)) = next else {
                return Ok(None);
            };
            let slot = (index.0 & mask) as usize;
            let memory = self.rx_buffers.memory();
            // `slot` < rx ring size <= 65536.
            let frame = self
                .assembler
                .push(index.0, slot as u16, rsp, |offset, len, buf| {
                    let start = buf.len();
                    buf.resize(start + len, 0);
                    memory.read(slot * PAGE_SIZE + offset, &mut buf[start..])
                })?;
            if frame.is_some() {
                return Ok(frame);
            }
        }
        Ok(None)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES` on both rings: true if responses
    /// arrived and the caller must not sleep. The tx ring is armed only
    /// while frames are in flight.
    pub fn final_check(&mut self) -> Result<bool, Error> {
        let rx = self.with_rx(|r| r.final_check_for_responses())?;
        let tx = if self.tx_in_flight() > 0 {
            self.with_tx(|r| r.final_check_for_responses())?
        } else {
            false
        };
        Ok(rx || tx)
    }

    fn with_tx<R>(
        &mut self,
        op: impl FnOnce(&mut TxRing<'_>) -> Result<R, RingError>,
    ) -> Result<R, Error> {
        with_ring(self.index, "tx", &self.tx_page, &mut self.tx, op)
    }

    fn with_rx<R>(
        &mut self,
        op: impl FnOnce(&mut RxRing<'_>) -> Result<R, RingError>,
    ) -> Result<R, Error> {
        with_ring(self.index, "rx", &self.rx_page, &mut self.rx, op)
    }

    /// Closes the event channel(s) and ends access to every page. Pages
    /// the backend still maps cannot be reclaimed; they are counted and
    /// left to the grant table, as Xen does.
    pub fn teardown<G, E>(mut self, grants: &G, evtchn: &E) -> usize
    where
        G: GrantShare<Shared = Sh>,
        E: EventChannels,
    {
        close_port(evtchn, self.tx_port);
        if self.rx_port != self.tx_port {
            close_port(evtchn, self.rx_port);
        }
        let unanswered = self.shadow.drain();
        if unanswered > 0 {
            log::debug!(
                "queue {}: {unanswered} tx slot(s) unanswered at teardown",
                self.index
            );
        }
        self.assembler.reset();
        [self.tx_page, self.rx_page, self.tx_buffers, self.rx_buffers]
            .into_iter()
            .map(|shared| end_access(grants, shared))
            .sum()
    }
}

/// Re-attaches a ring to its page for one operation.
fn with_ring<Req: RingEntry, Rsp: RingEntry, Sh: SharedGrants, R>(
    queue: u32,
    name: &'static str,
    page: &Sh,
    state: &mut FrontRingState,
    op: impl FnOnce(&mut FrontRing<'_, Req, Rsp>) -> Result<R, RingError>,
) -> Result<R, Error> {
    let memory = page.memory();
    let mem = memory.ring_mem().map_err(Error::RingSetup)?;
    let mut ring = FrontRing::<Req, Rsp>::resume(mem, *state).map_err(Error::RingSetup)?;
    let result = op(&mut ring);
    *state = ring.state();
    result.map_err(|source| match source {
        RingError::Full | RingError::OutOfBounds { .. } => {
            Error::Bug("a ring operation outside the ring's room")
        }
        source => Error::Protocol(ProtocolError::Ring {
            queue,
            ring: name,
            source,
        }),
    })
}

/// A tx ring slot holding an extra-info slot: the 8 bytes of
/// `netif_extra_info`, then the slot's remaining bytes zeroed.
fn tx_slot_from_extra(extra: &NetifExtraInfo) -> NetifTxRequest {
    let mut bytes = [0u8; core::mem::size_of::<NetifTxRequest>()];
    bytes[..core::mem::size_of::<NetifExtraInfo>()].copy_from_slice(extra.as_bytes());
    NetifTxRequest::read_from_bytes(&bytes).unwrap_or_default()
}

fn close_port<E: EventChannels>(evtchn: &E, port: EvtchnPort) {
    if let Err(e) = evtchn.close(port) {
        log::warn!("closing port {port} failed: {e}");
    }
}

/// Ends access to `shared`; returns how many pages could not be reclaimed.
pub fn end_access<G: GrantShare>(grants: &G, shared: G::Shared) -> usize {
    let pages = shared.refs().len();
    match grants.end_access(shared) {
        Ok(()) => 0,
        Err(GrantError::InUse(gref)) => {
            log::warn!(
                "the backend still maps grant {gref}: {pages} page(s) left to the grant table"
            );
            pages
        }
        Err(e) => {
            log::warn!("ending access to {pages} page(s) failed: {e}");
            pages
        }
    }
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::netif::XEN_NETIF_EXTRA_TYPE_GSO;

    use super::*;
    use crate::protocol::{Gso, GsoKind};

    #[test]
    fn frames_take_a_page_per_slot_and_one_for_gso() {
        let gso = Offload {
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                size: 1448,
            }),
            ..Offload::default()
        };

        assert_eq!(slots_for(60, &Offload::default()), (1, 1));
        assert_eq!(slots_for(4096, &Offload::default()), (1, 1));
        assert_eq!(slots_for(4097, &Offload::default()), (2, 2));
        assert_eq!(slots_for(65535, &gso), (16, 17));
    }

    #[test]
    fn an_extra_slot_fills_the_front_of_a_tx_slot() {
        let gso = NetifExtraGso {
            size: 1448,
            type_: 1,
            pad: 0,
            features: 0,
        };
        let slot = tx_slot_from_extra(&NetifExtraInfo::from_gso(gso, NetifExtraFlags::empty()));

        let bytes = slot.as_bytes();
        assert_eq!(bytes[0], XEN_NETIF_EXTRA_TYPE_GSO);
        assert_eq!(bytes[2..4], 1448u16.to_ne_bytes());
        assert_eq!(bytes[8..], [0; 4]);
    }
}
