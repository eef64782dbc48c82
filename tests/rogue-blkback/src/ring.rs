//! The rogue's end of the shared ring.
//!
//! Requests are taken off the ring with the project's [`BackRing`], which
//! copies each one out once and refuses a `req_prod` that claims more
//! requests than the ring holds. Responses cannot go through it: a
//! `BackRing` writes exactly one response per request taken and publishes
//! `rsp_prod` exactly at them, which is what the rogue must not do. They
//! are written with the ring memory API it is built on
//! ([`SharedRingMem::write_bytes`] at `RING_GET_RESPONSE`'s slot, and the
//! raw [`SharedRingMem::store_index`] of `rsp_prod`), with the rogue's own
//! producer index.
//!
//! The two indices are therefore apart: `req_cons` counts requests taken,
//! `rsp_prod_pvt` responses written, which in [`Mode::BadIdAndStatus`]
//! runs ahead (two per request) and in [`Mode::Overrun`] behind.
//!
//! [`Mode::BadIdAndStatus`]: crate::Mode::BadIdAndStatus
//! [`Mode::Overrun`]: crate::Mode::Overrun

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use hypercall_abi::ring::{slot_size, BackRing, RingError, RingIdx, SharedRingMem, SringIndex, SRING_HEADER_SIZE};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifResponse};
use zerocopy::IntoBytes;

use crate::answer::Answer;

/// The size of one slot of a blkif ring (the request, 112 bytes).
const SLOT: usize = slot_size::<BlkifRequest, BlkifResponse>();

/// The back end of one blkif ring, as the rogue drives it.
#[derive(Debug)]
pub struct RogueRing<'a> {
    mem: SharedRingMem<'a>,
    /// `RING_SIZE`.
    size: u32,
    /// The next request to take.
    req_cons: RingIdx,
    /// The index the next response is written at.
    rsp_prod_pvt: RingIdx,
}

impl<'a> RogueRing<'a> {
    /// Attaches to the ring in `mem` at its published `rsp_prod` (0 on the
    /// fresh ring of a frontend that just initialised it).
    pub fn attach(mem: SharedRingMem<'a>) -> Result<Self, RingError> {
        let start = mem.load_index(SringIndex::RspProd);
        let size = BackRing::<BlkifRequest, BlkifResponse>::attach(mem, start)?.size();
        Ok(RogueRing { mem, size, req_cons: start, rsp_prod_pvt: start })
    }

    /// `RING_SIZE`: 32 for one page.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The next request to take.
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// The index the next response is written at.
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// A `BackRing` over the same memory with nothing in flight: what
    /// the rogue answers is no business of its request checks.
    fn requests(&self) -> Result<BackRing<'a, BlkifRequest, BlkifResponse>, RingError> {
        BackRing::attach(self.mem, self.req_cons)
    }

    /// Appends to `batch` every request published, at most a ring's worth,
    /// each copied out of its slot once.
    pub fn take_requests(&mut self, batch: &mut Vec<BlkifRequest>) -> Result<(), RingError> {
        let mut ring = self.requests()?;
        for _ in 0..self.size {
            match ring.consume_request()? {
                Some(request) => batch.push(request),
                None => break,
            }
        }
        self.req_cons = ring.req_cons();
        Ok(())
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: asks the frontend for an event on
    /// its next request (`req_event`) and returns whether one came
    /// meanwhile, in which case the caller must not sleep.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.requests()?.final_check_for_requests()
    }

    /// Writes `response` at the slot of index `rsp_prod_pvt`
    /// (`RING_GET_RESPONSE`), whatever that slot holds, and advances it.
    /// The frontend sees it only once [`push_responses`](Self::push_responses)
    /// covers it.
    pub fn put_response(&mut self, response: &BlkifResponse) -> Result<(), RingError> {
        let slot = (self.rsp_prod_pvt.0 & (self.size - 1)) as usize;
        self.mem.write_bytes(SRING_HEADER_SIZE + slot * SLOT, response.as_bytes())?;
        self.rsp_prod_pvt += 1;
        Ok(())
    }

    /// Publishes `rsp_prod` `beyond` entries past the responses written
    /// (`RING_PUSH_RESPONSES` when `beyond` is 0) and returns the value
    /// published. The caller notifies the frontend whatever its
    /// `rsp_event` asks: a rogue wants every answer looked at.
    pub fn push_responses(&mut self, beyond: u32) -> RingIdx {
        // xen_wmb: the response slots must be visible before the rsp_prod
        // that covers them (pairs with the frontend's read barrier after
        // it reads rsp_prod). The event channel notification that follows
        // is a full barrier of its own, so no xen_mb is needed to order
        // this store before it.
        fence(Ordering::Release);
        let published = self.rsp_prod_pvt + Wrapping(beyond);
        self.mem.store_index(SringIndex::RspProd, published);
        published
    }

    /// Puts `answer` on the ring: its responses, then `rsp_prod` published
    /// as it says. Returns the value published, or `None` for an empty
    /// answer (nothing written, nothing published).
    pub fn put_answer(&mut self, answer: &Answer) -> Result<Option<RingIdx>, RingError> {
        if answer.is_empty() {
            return Ok(None);
        }
        for response in &answer.responses {
            self.put_response(response)?;
        }
        Ok(Some(self.push_responses(answer.overrun)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::num::NonZeroUsize;
    use hypercall_abi::ring::{FrontRing, OwnedRingMem};
    use hypercall_abi::xen::blkif::BLKIF_OP_READ;

    use crate::answer::{Mode, BOGUS_ID_XOR, BOGUS_STATUS};

    type Front<'a> = FrontRing<'a, BlkifRequest, BlkifResponse>;

    fn read(id: u64) -> BlkifRequest {
        BlkifRequest { operation: BLKIF_OP_READ, nr_segments: 1, id, ..BlkifRequest::default() }
    }

    /// The frontend pushes `ids`; the rogue takes them and answers each as
    /// `mode` says.
    fn serve(front: &mut Front<'_>, rogue: &mut RogueRing<'_>, mode: Mode, ids: &[u64]) {
        for &id in ids {
            front.put_request(&read(id)).unwrap();
        }
        let _ = front.push_requests_and_check_notify().unwrap();
        let mut batch = Vec::new();
        rogue.take_requests(&mut batch).unwrap();
        assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
        for (nth, request) in (0..).zip(&batch) {
            rogue.put_answer(&mode.answer(request, nth)).unwrap();
        }
    }

    #[test]
    fn a_well_formed_answer_is_what_a_front_ring_reads() {
        // Arrange
        let page = OwnedRingMem::new(NonZeroUsize::MIN);
        let mut front = Front::init_shared(page.mem()).unwrap();
        let mut rogue = RogueRing::attach(page.mem()).unwrap();
        let mut batch = Vec::new();
        front.put_request(&read(4)).unwrap();
        let _ = front.push_requests_and_check_notify().unwrap();

        // Act
        rogue.take_requests(&mut batch).unwrap();
        rogue.put_response(&BlkifResponse { id: batch[0].id, ..BlkifResponse::default() }).unwrap();
        let published = rogue.push_responses(0);

        // Assert
        assert_eq!((rogue.size(), published.0), (32, 1));
        assert_eq!(front.consume_response().unwrap().map(|r| r.id), Some(4));
        assert!(!rogue.final_check_for_requests().unwrap());
        assert_eq!(page.mem().load_index(SringIndex::ReqEvent).0, 2, "req_event asks for the next request");
    }

    #[test]
    fn bad_id_and_status_puts_two_responses_per_request_on_the_ring() {
        // Arrange
        let page = OwnedRingMem::new(NonZeroUsize::MIN);
        let mut front = Front::init_shared(page.mem()).unwrap();
        let mut rogue = RogueRing::attach(page.mem()).unwrap();

        // Act
        serve(&mut front, &mut rogue, Mode::BadIdAndStatus, &[0, 1]);

        // Assert: four responses in slots 0..4, rsp_prod 4 for 2 requests,
        // which a front ring that checks rsp_prod refuses before any id.
        let slots: Vec<_> = (0..4).map(|i| front.get_response(Wrapping(i)).unwrap()).collect();
        assert_eq!(
            slots.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
            [(BOGUS_ID_XOR, 0), (0, BOGUS_STATUS), (1 ^ BOGUS_ID_XOR, 0), (1, BOGUS_STATUS)]
        );
        assert_eq!(page.mem().load_index(SringIndex::RspProd).0, 4);
        assert!(matches!(
            front.consume_response(),
            Err(RingError::ResponseProducerOverrun { rsp_prod: 4, rsp_cons: 0, req_prod: 2 })
        ));
    }

    #[test]
    fn bad_id_keeps_rsp_prod_in_step_with_the_requests() {
        // Arrange
        let page = OwnedRingMem::new(NonZeroUsize::MIN);
        let mut front = Front::init_shared(page.mem()).unwrap();
        let mut rogue = RogueRing::attach(page.mem()).unwrap();

        // Act
        serve(&mut front, &mut rogue, Mode::BadId, &[7]);

        // Assert
        assert_eq!(front.consume_response().unwrap().map(|r| r.id), Some(7 ^ BOGUS_ID_XOR));
        assert_eq!(front.consume_response().unwrap(), None);
    }

    #[test]
    fn overrun_publishes_rsp_prod_64_beyond_the_one_response_written() {
        // Arrange
        let page = OwnedRingMem::new(NonZeroUsize::MIN);
        let mut front = Front::init_shared(page.mem()).unwrap();
        let mut rogue = RogueRing::attach(page.mem()).unwrap();

        // Act
        serve(&mut front, &mut rogue, Mode::Overrun, &[2, 3]);

        // Assert
        assert_eq!(rogue.rsp_prod_pvt().0, 1, "only the first request is answered");
        assert_eq!(front.get_response(Wrapping(0)).unwrap().id, 2);
        assert_eq!(page.mem().load_index(SringIndex::RspProd).0, 65);
        assert!(matches!(front.consume_response(), Err(RingError::ResponseProducerOverrun { rsp_prod: 65, .. })));
    }

    #[test]
    fn a_req_prod_beyond_the_ring_is_refused_not_followed() {
        // Arrange
        let page = OwnedRingMem::new(NonZeroUsize::MIN);
        let _front = Front::init_shared(page.mem()).unwrap();
        let mut rogue = RogueRing::attach(page.mem()).unwrap();
        page.mem().store_index(SringIndex::ReqProd, Wrapping(1000));
        let mut batch = Vec::new();

        // Act
        let taken = rogue.take_requests(&mut batch);

        // Assert
        assert!(matches!(taken, Err(RingError::RequestProducerOverrun { req_prod: 1000, .. })), "{taken:?}");
        assert!(batch.is_empty());
    }

    #[test]
    fn indices_wrap_around_the_ring() {
        // Arrange: a ring whose indices start just below 2^32.
        let page = OwnedRingMem::new(NonZeroUsize::MIN);
        let start = Wrapping(u32::MAX - 1);
        for index in [SringIndex::ReqProd, SringIndex::RspProd] {
            page.mem().store_index(index, start);
        }
        let mut front = Front::attach(page.mem(), start).unwrap();
        let mut rogue = RogueRing::attach(page.mem()).unwrap();

        // Act
        serve(&mut front, &mut rogue, Mode::BadId, &[10, 11, 12]);

        // Assert
        let ids: Vec<_> = (0..3).map(|_| front.consume_response().unwrap().map(|r| r.id ^ BOGUS_ID_XOR)).collect();
        assert_eq!(ids, [Some(10), Some(11), Some(12)]);
        assert_eq!(rogue.req_cons().0, 1);
    }
}
