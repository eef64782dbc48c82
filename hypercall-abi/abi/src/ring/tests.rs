#![allow(clippy::unwrap_used, clippy::expect_used)]

extern crate std;

use std::vec::Vec;

use core::num::{NonZeroUsize, Wrapping};

use proptest::prelude::*;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::*;

/// A request: 16 bytes, 8-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Req {
    id: u64,
    payload: u32,
    pad: u32,
}

/// A response: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Rsp {
    id: u32,
    status: i32,
}

type Front<'a> = FrontRing<'a, Req, Rsp>;
type Back<'a> = BackRing<'a, Req, Rsp>;

fn page() -> OwnedRingMem {
    OwnedRingMem::new(NonZeroUsize::MIN)
}

fn req(id: u64) -> Req {
    Req {
        id,
        payload: id as u32 ^ 0xa5a5_a5a5,
        pad: 0,
    }
}

/// A front and back on `mem`, every index at `start` and both ends asking
/// for an event on the next message (as if after `SHARED_RING_INIT` and
/// `start` messages each way).
fn pair_at<'a>(mem: SharedRingMem<'a>, start: u32) -> (Front<'a>, Back<'a>) {
    let start = Wrapping(start);
    mem.init_shared();
    mem.store_index(SringIndex::ReqProd, start);
    mem.store_index(SringIndex::RspProd, start);
    mem.store_index(SringIndex::ReqEvent, start + Wrapping(1));
    mem.store_index(SringIndex::RspEvent, start + Wrapping(1));
    let front = Front::attach(mem, start).unwrap();
    let back = Back::attach(mem, start).unwrap();
    (front, back)
}

/// ring.h's `__RD32`, transcribed literally, as the reference for
/// `round_down_pow2`.
fn rd32_reference(x: u32) -> u32 {
    fn rd2(x: u32) -> u32 {
        if x & 0x2 != 0 {
            0x2
        } else {
            x & 0x1
        }
    }
    fn rd4(x: u32) -> u32 {
        if x & 0xc != 0 {
            rd2(x >> 2) << 2
        } else {
            rd2(x)
        }
    }
    fn rd8(x: u32) -> u32 {
        if x & 0xf0 != 0 {
            rd4(x >> 4) << 4
        } else {
            rd4(x)
        }
    }
    fn rd16(x: u32) -> u32 {
        if x & 0xff00 != 0 {
            rd8(x >> 8) << 8
        } else {
            rd8(x)
        }
    }
    if x & 0xffff_0000 != 0 {
        rd16(x >> 16) << 16
    } else {
        rd16(x)
    }
}

#[test]
fn ring_size_matches_xen_rings() {
    // blkif: 112-byte requests; blkfront/blkback ring-page-order 0..=4.
    let blkif: Vec<u32> = (0..=4)
        .map(|order| ring_size(112, XEN_PAGE_SIZE << order))
        .collect();
    assert_eq!(blkif, [32, 64, 128, 256, 512]);
    // netif: NET_TX_RING_SIZE and NET_RX_RING_SIZE are 256.
    assert_eq!(
        ring_size(slot_size::<[u32; 3], [u16; 2]>(), XEN_PAGE_SIZE),
        256
    );
    assert_eq!(
        ring_size(slot_size::<[u16; 4], [u16; 4]>(), XEN_PAGE_SIZE),
        256
    );
    // Degenerate geometries give 0 rather than underflowing.
    assert_eq!(ring_size(0, XEN_PAGE_SIZE), 0);
    assert_eq!(ring_size(16, 64), 0);
    assert_eq!(ring_size(16, 79), 0);
    assert_eq!(ring_size(16, 80), 1);
}

#[test]
fn slot_size_is_the_c_union_size() {
    assert_eq!(slot_size::<[u8; 3], u16>(), 4);
    assert_eq!(slot_size::<[u8; 5], u16>(), 6);
    assert_eq!(slot_size::<Req, Rsp>(), 16);
    assert_eq!(slot_size::<Rsp, Req>(), 16);
    assert_eq!(slot_size::<(), ()>(), 0);
}

#[test]
fn zero_sized_or_oversized_entries_are_rejected() {
    let owned = page();
    assert_eq!(
        FrontRing::<(), ()>::new(owned.mem()).unwrap_err(),
        RingError::TooSmall {
            len: 4096,
            entry_size: 0
        }
    );
    assert!(matches!(
        BackRing::<[u8; 4033], u8>::new(owned.mem()),
        Err(RingError::TooSmall { .. })
    ));
    assert!(BackRing::<[u8; 4032], u8>::new(owned.mem()).is_ok());
}

#[test]
fn shared_ring_mem_rejects_bad_memory() {
    let mut buf = [0u64; 16];
    let base = core::ptr::NonNull::from(&mut buf).cast::<u8>();
    // SAFETY: `buf` is 128 bytes, valid until the end of the test, and not
    // referenced again while the accessors exist.
    let misaligned = unsafe { SharedRingMem::new(base.add(1), 64) };
    assert!(matches!(misaligned, Err(RingError::Misaligned { .. })));
    // SAFETY: as above.
    let small = unsafe { SharedRingMem::new(base, 63) };
    assert_eq!(
        small.unwrap_err(),
        RingError::TooSmall {
            len: 63,
            entry_size: 0
        }
    );
    // SAFETY: as above.
    let mem = unsafe { SharedRingMem::new(base, 72) }.unwrap();
    assert_eq!(
        Front::new(mem).unwrap_err(),
        RingError::TooSmall {
            len: 72,
            entry_size: 16
        }
    );
    assert_eq!(FrontRing::<Rsp, Rsp>::new(mem).unwrap().size(), 1);

    let owned = OwnedRingMem::with_order(1).unwrap();
    let mem = owned.mem();
    assert_eq!(mem.len(), 8192);
    let mut bytes = [0u8; 8];
    assert!(mem.read_bytes(8190, &mut bytes).is_err());
    assert!(mem.read_bytes(usize::MAX, &mut bytes).is_err());
    assert!(mem.write_bytes(8184, &bytes).is_ok());
    assert_eq!(
        mem.write_bytes(8185, &bytes),
        Err(RingError::OutOfBounds {
            offset: 8185,
            len: 8,
            mem_len: 8192
        })
    );
}

#[test]
fn need_notify_is_the_ring_h_rule() {
    let w = Wrapping;
    // One request pushed (0 -> 1): notify iff req_event == 1.
    assert!(need_notify(w(0), w(1), w(1)));
    assert!(!need_notify(w(0), w(1), w(2)));
    assert!(!need_notify(w(0), w(1), w(0)));
    // Batch 10 -> 15: notify iff event in 11..=15.
    let hits: Vec<u32> = (0..20)
        .filter(|&e| need_notify(w(10), w(15), w(e)))
        .collect();
    assert_eq!(hits, [11, 12, 13, 14, 15]);
    // Across the wrap: MAX-1 -> 2 covers MAX, 0, 1, 2.
    let old = w(u32::MAX - 1);
    let hits: Vec<u32> = [u32::MAX - 1, u32::MAX, 0, 1, 2, 3]
        .into_iter()
        .filter(|&e| need_notify(old, w(2), w(e)))
        .collect();
    assert_eq!(hits, [u32::MAX, 0, 1, 2]);
    // Nothing pushed: never notify.
    assert!(!need_notify(w(7), w(7), w(7)));
}

#[test]
fn init_shared_resets_header_and_leaves_entries() {
    let owned = page();
    let mem = owned.mem();
    mem.write_bytes(0, &[0xff; 128]).unwrap();
    let _front = Front::init_shared(mem).unwrap();
    let mut header = [0u8; 64];
    mem.read_bytes(0, &mut header).unwrap();
    let mut expected = [0u8; 64];
    expected[4] = 1;
    expected[12] = 1;
    assert_eq!(header, expected);
    let mut entry = [0u8; 64];
    mem.read_bytes(64, &mut entry).unwrap();
    assert_eq!(entry, [0xff; 64]);
}

#[test]
fn full_and_empty_boundaries() {
    let owned = page();
    let mem = owned.mem();
    let mut front = Front::init_shared(mem).unwrap();
    let mut back = Back::new(mem).unwrap();
    let size = front.size();
    assert_eq!(size, 128); // (4096 - 64) / 16 = 252 -> 128

    assert_eq!(front.free_requests(), size);
    assert_eq!(back.consume_request().unwrap(), None);
    assert_eq!(front.consume_response().unwrap(), None);
    assert_eq!(
        back.put_response(&Rsp { id: 0, status: 0 }),
        Err(RingError::NoRequestToAnswer)
    );

    for id in 0..u64::from(size) {
        front.put_request(&req(id)).unwrap();
    }
    assert!(front.is_full());
    assert_eq!(front.put_request(&req(999)), Err(RingError::Full));
    // Put but not pushed: invisible to the back end.
    assert_eq!(back.unconsumed_requests().unwrap(), 0);
    assert!(front.push_requests_and_check_notify().unwrap());
    assert_eq!(back.unconsumed_requests().unwrap(), size);

    for id in 0..u64::from(size) {
        assert_eq!(back.consume_request().unwrap(), Some(req(id)));
    }
    assert_eq!(back.consume_request().unwrap(), None);
    assert!(back.request_cons_overflow(back.req_cons()));
    // Still full: consuming requests frees nothing, responses do.
    assert!(front.is_full());
    back.put_response(&Rsp { id: 0, status: 0 }).unwrap();
    assert!(!back.request_cons_overflow(back.req_cons()));
    assert!(front.is_full());
    back.push_responses().unwrap();
    assert_eq!(
        front.consume_response().unwrap(),
        Some(Rsp { id: 0, status: 0 })
    );
    assert_eq!(front.free_requests(), 1);
}

#[test]
fn final_check_arms_the_event_index() {
    let owned = page();
    let mem = owned.mem();
    let mut front = Front::init_shared(mem).unwrap();
    let mut back = Back::new(mem).unwrap();

    // Idle back end goes to sleep asking for request 1 (req_cons + 1).
    assert!(!back.final_check_for_requests().unwrap());
    assert_eq!(mem.load_index(SringIndex::ReqEvent), Wrapping(1));
    front.put_request(&req(0)).unwrap();
    assert!(front.push_requests_and_check_notify().unwrap());
    // The back end was notified; without a new final check further
    // requests are not notified (it is known to be awake).
    front.put_request(&req(1)).unwrap();
    assert!(!front.push_requests_and_check_notify().unwrap());
    // A final check with work pending does not touch req_event.
    assert!(back.final_check_for_requests().unwrap());
    assert_eq!(mem.load_index(SringIndex::ReqEvent), Wrapping(1));
}

#[test]
fn final_check_after_count_asks_for_an_event_on_the_nth_request() {
    let owned = page();
    let mem = owned.mem();
    let mut front = Front::init_shared(mem).unwrap();
    let mut back = Back::new(mem).unwrap();

    // Asks for an event once 3 more requests are there: the first two
    // are published without one, the third sends it.
    assert!(!back.final_check_for_requests_after(3).unwrap());
    assert_eq!(mem.load_index(SringIndex::ReqEvent), Wrapping(3));
    for i in 0..2 {
        front.put_request(&req(i)).unwrap();
        assert!(!front.push_requests_and_check_notify().unwrap());
    }
    front.put_request(&req(2)).unwrap();
    assert!(front.push_requests_and_check_notify().unwrap());
    // With requests waiting it does not sleep and leaves req_event alone.
    assert!(back.final_check_for_requests_after(5).unwrap());
    assert_eq!(mem.load_index(SringIndex::ReqEvent), Wrapping(3));
    for _ in 0..3 {
        assert!(back.consume_request().unwrap().is_some());
    }
    // A count of 0 is taken as 1.
    assert!(!back.final_check_for_requests_after(0).unwrap());
    assert_eq!(mem.load_index(SringIndex::ReqEvent), Wrapping(4));
}

#[test]
fn push_would_notify_tells_whether_the_peer_waits() {
    let owned = page();
    let mem = owned.mem();
    let mut front = Front::init_shared(mem).unwrap();
    let mut back = Back::new(mem).unwrap();

    // Nothing put: no push would notify.
    assert!(!front.push_would_notify());
    // The back end sleeps (asks for request 1): a push of request 0 would
    // notify, and the push agrees.
    assert!(!back.final_check_for_requests().unwrap());
    front.put_request(&req(0)).unwrap();
    assert!(front.push_would_notify());
    assert!(front.push_requests_and_check_notify().unwrap());
    // Awake now: the next push would not notify.
    front.put_request(&req(1)).unwrap();
    assert!(!front.push_would_notify());
    assert!(!front.push_requests_and_check_notify().unwrap());

    // The front end sleeps after response 1 (rsp_event = 1): a response
    // would notify, whether already put or still to come.
    back.consume_request().unwrap().unwrap();
    back.consume_request().unwrap().unwrap();
    mem.store_index(SringIndex::RspEvent, Wrapping(1));
    assert!(!back.push_would_notify(0));
    assert!(back.push_would_notify(1));
    back.put_response(&Rsp { id: 0, status: 0 }).unwrap();
    assert!(back.push_would_notify(0));
    assert!(back.push_responses_and_check_notify().unwrap());
    // The front end is awake (rsp_event still 1): more would not notify.
    assert!(!back.push_would_notify(1));
    back.put_response(&Rsp { id: 1, status: 0 }).unwrap();
    assert!(!back.push_would_notify(0));
    assert!(!back.push_responses_and_check_notify().unwrap());
}

#[test]
fn backend_detects_request_producer_overrun() {
    let owned = page();
    let mem = owned.mem();
    let (_front, mut back) = pair_at(mem, 10);
    let size = back.size();

    mem.store_index(SringIndex::ReqProd, Wrapping(10 + size + 1));
    assert_eq!(
        back.consume_request(),
        Err(RingError::RequestProducerOverrun {
            req_prod: 10 + size + 1,
            req_cons: 10,
            rsp_prod_pvt: 10,
            size
        })
    );
    assert!(back.is_broken());
    // Repairing the page does not unbreak the ring.
    mem.store_index(SringIndex::ReqProd, Wrapping(11));
    assert_eq!(back.consume_request(), Err(RingError::Broken));
    assert_eq!(back.unconsumed_requests(), Err(RingError::Broken));
    assert_eq!(back.final_check_for_requests(), Err(RingError::Broken));
    assert_eq!(
        back.push_responses_and_check_notify(),
        Err(RingError::Broken)
    );
    assert_eq!(back.push_responses(), Err(RingError::Broken));
    assert_eq!(
        back.get_request(Wrapping(0)).map(|_| ()),
        Err(RingError::Broken)
    );
    assert_eq!(
        back.put_response(&Rsp { id: 0, status: 0 }),
        Err(RingError::Broken)
    );
}

#[test]
fn backend_detects_requests_beyond_unanswered_space() {
    let owned = page();
    let mem = owned.mem();
    let (mut front, mut back) = pair_at(mem, u32::MAX - 3);
    let size = back.size();
    for id in 0..3 {
        front.put_request(&req(id)).unwrap();
    }
    front.push_requests().unwrap();
    for _ in 0..3 {
        back.consume_request().unwrap().unwrap();
    }
    // Three requests in flight: the front end may publish at most
    // size - 3 more. Exactly that is fine, one more is an overrun.
    let cons = back.req_cons();
    mem.store_index(SringIndex::ReqProd, cons + Wrapping(size - 3));
    assert_eq!(back.unconsumed_requests(), Ok(size - 3));
    mem.store_index(SringIndex::ReqProd, cons + Wrapping(size - 2));
    assert!(matches!(
        back.unconsumed_requests(),
        Err(RingError::RequestProducerOverrun { .. })
    ));
}

#[test]
fn unconsumed_requests_come_back_but_answered_ones_do_not() {
    let owned = page();
    let mem = owned.mem();
    let (mut front, mut back) = pair_at(mem, u32::MAX - 1);
    for id in 0..4 {
        front.put_request(&req(id)).unwrap();
    }
    front.push_requests().unwrap();
    let start = back.req_cons();
    assert_eq!(back.consume_request().unwrap(), Some(req(0)));
    back.put_response(&Rsp { id: 0, status: 0 }).unwrap();
    let unanswered = back.req_cons();
    assert_eq!(back.consume_request().unwrap(), Some(req(1)));
    assert_eq!(back.consume_request().unwrap(), Some(req(2)));

    // Back to the first unanswered request: it and the next come again.
    back.unconsume_requests(unanswered).unwrap();
    assert_eq!(back.unconsumed_requests(), Ok(3));
    assert_eq!(back.consume_request().unwrap(), Some(req(1)));
    // Not behind an answered one, nor ahead of req_cons.
    assert!(matches!(
        back.unconsume_requests(start),
        Err(RingError::RewindPastResponses { .. })
    ));
    assert!(matches!(
        back.unconsume_requests(back.req_cons() + Wrapping(1)),
        Err(RingError::RewindPastResponses { .. })
    ));
    assert_eq!(back.consume_request().unwrap(), Some(req(2)));
    assert_eq!(back.consume_request().unwrap(), Some(req(3)));
    assert_eq!(back.consume_request().unwrap(), None);
}

#[test]
fn backend_detects_request_producer_going_backwards() {
    let owned = page();
    let mem = owned.mem();
    let (mut front, mut back) = pair_at(mem, 0);
    for id in 0..4 {
        front.put_request(&req(id)).unwrap();
    }
    front.push_requests().unwrap();
    back.consume_request().unwrap().unwrap();
    back.consume_request().unwrap().unwrap();
    mem.store_index(SringIndex::ReqProd, Wrapping(1));
    assert!(matches!(
        back.consume_request(),
        Err(RingError::RequestProducerOverrun {
            req_prod: 1,
            req_cons: 2,
            ..
        })
    ));
}

#[test]
fn frontend_detects_responses_to_unpushed_requests() {
    let owned = page();
    let mem = owned.mem();
    let (mut front, _back) = pair_at(mem, u32::MAX);
    front.put_request(&req(0)).unwrap();
    front.put_request(&req(1)).unwrap();
    front.push_requests().unwrap();
    front.put_request(&req(2)).unwrap(); // put, not pushed

    // Two responses for two pushed requests: fine.
    mem.store_index(SringIndex::RspProd, Wrapping(1));
    assert_eq!(front.unconsumed_responses(), Ok(2));
    // A response to the unpushed request: misbehaviour.
    mem.store_index(SringIndex::RspProd, Wrapping(2));
    assert_eq!(
        front.unconsumed_responses(),
        Err(RingError::ResponseProducerOverrun {
            rsp_prod: 2,
            rsp_cons: u32::MAX,
            req_prod: 1
        })
    );
    assert_eq!(front.put_request(&req(3)), Err(RingError::Broken));
    assert_eq!(
        front.push_requests_and_check_notify(),
        Err(RingError::Broken)
    );
    assert_eq!(front.final_check_for_responses(), Err(RingError::Broken));
    assert_eq!(front.consume_response(), Err(RingError::Broken));
}

#[test]
fn a_detached_front_ring_resumes_with_requests_in_flight() {
    let owned = page();
    let mem = owned.mem();
    let (mut front, mut back) = pair_at(mem, u32::MAX - 1);
    front.put_request(&req(0)).unwrap();
    front.put_request(&req(1)).unwrap();
    front.push_requests().unwrap();
    front.put_request(&req(2)).unwrap(); // put, not pushed
    let state = front.state();

    let mut front = Front::resume(mem, state).unwrap();
    assert_eq!(front.state(), state);
    assert_eq!(back.consume_request().unwrap(), Some(req(0)));
    back.put_response(&Rsp { id: 0, status: 0 }).unwrap();
    back.push_responses().unwrap();
    assert_eq!(
        front.consume_response().unwrap(),
        Some(Rsp { id: 0, status: 0 })
    );
    // The pushed bound survived the detach: a response to the unpushed
    // request is still caught.
    mem.store_index(SringIndex::RspProd, Wrapping(2));
    assert!(matches!(
        front.consume_response(),
        Err(RingError::ResponseProducerOverrun { .. })
    ));
    let broken = front.state();
    assert_eq!(
        Front::resume(mem, broken).unwrap().put_request(&req(3)),
        Err(RingError::Broken)
    );
}

#[test]
fn frontend_detects_response_producer_going_backwards() {
    let owned = page();
    let mem = owned.mem();
    let (mut front, _back) = pair_at(mem, 5);
    front.put_request(&req(0)).unwrap();
    front.push_requests().unwrap();
    mem.store_index(SringIndex::RspProd, Wrapping(4));
    assert!(matches!(
        front.consume_response(),
        Err(RingError::ResponseProducerOverrun { rsp_prod: 4, .. })
    ));
}

#[test]
fn front_and_back_on_two_threads() {
    const MESSAGES: u64 = 20_000;
    let owned = page();
    let mem = owned.mem();
    let mut front = Front::init_shared(mem).unwrap();
    let mut back = Back::new(mem).unwrap();

    std::thread::scope(|s| {
        s.spawn(move || {
            let mut answered = 0;
            while answered < MESSAGES {
                while let Some(r) = back.consume_request().unwrap() {
                    assert_eq!(r, req(u64::from(back.req_cons().0) - 1));
                    back.put_response(&Rsp {
                        id: r.id as u32,
                        status: r.payload as i32,
                    })
                    .unwrap();
                }
                answered = u64::from(back.rsp_prod_pvt().0);
                back.push_responses_and_check_notify().unwrap();
                std::thread::yield_now();
            }
        });
        let mut sent = 0;
        let mut received = 0;
        while received < MESSAGES {
            while sent < MESSAGES && !front.is_full() {
                front.put_request(&req(sent)).unwrap();
                sent += 1;
            }
            front.push_requests_and_check_notify().unwrap();
            while let Some(r) = front.consume_response().unwrap() {
                let expected = req(received);
                assert_eq!(
                    r,
                    Rsp {
                        id: expected.id as u32,
                        status: expected.payload as i32
                    }
                );
                received += 1;
            }
            std::thread::yield_now();
        }
    });
}

/// One step of a front end and back end sharing a ring, for the property
/// tests. Counts are capped by what the ring allows.
#[derive(Debug, Clone)]
enum Step {
    FrontPut(u8),
    FrontPush,
    FrontPushNotify,
    FrontConsume(u8),
    FrontSleep,
    BackConsume(u8),
    BackRespond(u8),
    BackPush,
    BackPushNotify,
    BackSleep,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1u8..40).prop_map(Step::FrontPut),
        Just(Step::FrontPush),
        Just(Step::FrontPushNotify),
        (1u8..40).prop_map(Step::FrontConsume),
        Just(Step::FrontSleep),
        (1u8..40).prop_map(Step::BackConsume),
        (1u8..40).prop_map(Step::BackRespond),
        Just(Step::BackPush),
        Just(Step::BackPushNotify),
        Just(Step::BackSleep),
    ]
}

/// A ring end that may sleep: `asleep` after a final check found nothing,
/// until the peer notifies it.
#[derive(Debug, Default)]
struct Sleeper {
    asleep: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_down_pow2_matches_rd32(x in any::<u32>()) {
        prop_assert_eq!(round_down_pow2(x), rd32_reference(x));
    }

    #[test]
    fn ring_size_matches_ring_size_macro(entry in 1usize..5000, bytes in 65usize..(1 << 20)) {
        let expected = if bytes - 64 < entry { 0 } else { rd32_reference(((bytes - 64) / entry) as u32) };
        let size = ring_size(entry, bytes);
        prop_assert_eq!(size, expected);
        prop_assert!(size == 0 || (size.is_power_of_two() && 64 + size as usize * entry <= bytes));
    }

    /// Random interleavings of both ends, starting with every index near
    /// the u32 wrap: requests and responses arrive complete and in order,
    /// counts agree with a model, and no wake-up is ever lost.
    #[test]
    fn random_sequences_keep_fifo_and_wakeups(
        start_back in 0u32..600,
        order in 0u32..2,
        steps in proptest::collection::vec(step(), 1..300),
    ) {
        let owned = OwnedRingMem::with_order(order).unwrap();
        let mem = owned.mem();
        let (mut front, mut back) = pair_at(mem, u32::MAX - start_back);
        let start = front.req_prod_pvt();
        let size = front.size();
        let (mut sent, mut pushed, mut consumed, mut answered, mut published, mut received) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut fs, mut bs) = (Sleeper::default(), Sleeper::default());

        for step in steps {
            match step {
                Step::FrontPut(n) if !fs.asleep => {
                    for _ in 0..n {
                        let r = front.put_request(&req(sent));
                        if sent - received == u64::from(size) {
                            prop_assert_eq!(r, Err(RingError::Full));
                            break;
                        }
                        prop_assert_eq!(r, Ok(()));
                        sent += 1;
                    }
                }
                Step::FrontPush if !fs.asleep => {
                    front.push_requests().unwrap();
                    pushed = sent;
                    // A plain push never notifies: the model says a
                    // sleeping back end now has work it was not told of,
                    // unless it had asked for no event. Wake it explicitly
                    // to keep the liveness check about the notify path.
                    bs.asleep = false;
                }
                Step::FrontPushNotify if !fs.asleep => {
                    let had = pushed;
                    let notify = front.push_requests_and_check_notify().unwrap();
                    pushed = sent;
                    if notify {
                        prop_assert!(pushed > had, "notified without new requests");
                        bs.asleep = false;
                    }
                }
                Step::FrontConsume(n) if !fs.asleep => {
                    prop_assert_eq!(front.unconsumed_responses().unwrap() as u64, published - received);
                    for _ in 0..n {
                        match front.consume_response().unwrap() {
                            Some(r) => {
                                let expected = req(received);
                                prop_assert_eq!(r, Rsp { id: expected.id as u32, status: expected.payload as i32 });
                                received += 1;
                            }
                            None => {
                                prop_assert_eq!(received, published);
                                break;
                            }
                        }
                    }
                }
                Step::FrontSleep if !fs.asleep => {
                    let work = front.final_check_for_responses().unwrap();
                    prop_assert_eq!(work, published > received);
                    fs.asleep = !work;
                }
                Step::BackConsume(n) if !bs.asleep => {
                    prop_assert_eq!(back.unconsumed_requests().unwrap() as u64, pushed - consumed);
                    for _ in 0..n {
                        match back.consume_request().unwrap() {
                            Some(r) => {
                                prop_assert_eq!(r, req(consumed));
                                consumed += 1;
                            }
                            None => {
                                prop_assert_eq!(consumed, pushed);
                                break;
                            }
                        }
                    }
                }
                Step::BackRespond(n) if !bs.asleep => {
                    for _ in 0..n {
                        let expected = req(answered);
                        let r = back.put_response(&Rsp { id: expected.id as u32, status: expected.payload as i32 });
                        if answered == consumed {
                            prop_assert_eq!(r, Err(RingError::NoRequestToAnswer));
                            break;
                        }
                        prop_assert_eq!(r, Ok(()));
                        answered += 1;
                    }
                }
                Step::BackPush if !bs.asleep => {
                    back.push_responses().unwrap();
                    published = answered;
                    fs.asleep = false;
                }
                Step::BackPushNotify if !bs.asleep => {
                    let had = published;
                    let notify = back.push_responses_and_check_notify().unwrap();
                    published = answered;
                    if notify {
                        prop_assert!(published > had, "notified without new responses");
                        fs.asleep = false;
                    }
                }
                Step::BackSleep if !bs.asleep => {
                    let work = back.final_check_for_requests().unwrap();
                    prop_assert_eq!(work, pushed > consumed);
                    bs.asleep = !work;
                }
                _ => {} // the end that would act is asleep
            }
            // No lost wake-ups: a sleeping end has nothing waiting for it.
            prop_assert!(!bs.asleep || pushed == consumed, "back end sleeps on requests");
            prop_assert!(!fs.asleep || published == received, "front end sleeps on responses");
            // Private indices match the model.
            prop_assert_eq!(front.req_prod_pvt(), start + Wrapping(sent as u32));
            prop_assert_eq!(front.rsp_cons(), start + Wrapping(received as u32));
            prop_assert_eq!(back.req_cons(), start + Wrapping(consumed as u32));
            prop_assert_eq!(back.rsp_prod_pvt(), start + Wrapping(answered as u32));
            prop_assert_eq!(front.free_requests() as u64, u64::from(size) - (sent - received));
            prop_assert!(!front.is_broken() && !back.is_broken());
        }
    }

    /// Whatever the peer writes into the page, at any time, the back end
    /// neither panics nor hands out more requests than the ring holds.
    #[test]
    fn backend_survives_arbitrary_page_contents(
        header in proptest::collection::vec(any::<u8>(), 64),
        start in any::<u32>(),
        ops in proptest::collection::vec((0u8..6, any::<u32>()), 1..200),
    ) {
        let owned = page();
        let mem = owned.mem();
        mem.write_bytes(0, &header).unwrap();
        let mut back = Back::attach(mem, Wrapping(start)).unwrap();
        let mut taken = 0u32;
        for (op, arg) in ops {
            let result = match op {
                0 => back.consume_request().map(|r| if r.is_some() { taken += 1 }),
                1 => back.put_response(&Rsp { id: arg, status: 0 }),
                2 => back.push_responses_and_check_notify().map(drop),
                3 => back.final_check_for_requests().map(drop),
                4 => mem.write_bytes(((arg as usize) % 64) & !3, &arg.to_ne_bytes()),
                _ => back.get_request(Wrapping(arg)).map(drop),
            };
            match result {
                Err(RingError::RequestProducerOverrun { .. }) | Err(RingError::Broken) => {
                    prop_assert!(back.is_broken());
                }
                Err(RingError::NoRequestToAnswer) => prop_assert_eq!(back.requests_in_flight(), 0),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
                Ok(()) => {}
            }
            prop_assert!(back.requests_in_flight() <= back.size());
        }
        prop_assert_eq!(back.req_cons(), Wrapping(start) + Wrapping(taken));
    }

    /// The same for the front end and whatever the back end writes.
    #[test]
    fn frontend_survives_arbitrary_page_contents(
        header in proptest::collection::vec(any::<u8>(), 64),
        ops in proptest::collection::vec((0u8..6, any::<u32>()), 1..200),
    ) {
        let owned = page();
        let mem = owned.mem();
        let mut front = Front::init_shared(mem).unwrap();
        mem.write_bytes(0, &header).unwrap();
        for (op, arg) in ops {
            let result = match op {
                0 => front.consume_response().map(drop),
                1 => front.put_request(&req(u64::from(arg))),
                2 => front.push_requests_and_check_notify().map(drop),
                3 => front.final_check_for_responses().map(drop),
                4 => mem.write_bytes(((arg as usize) % 64) & !3, &arg.to_ne_bytes()),
                _ => front.get_response(Wrapping(arg)).map(drop),
            };
            match result {
                Err(RingError::ResponseProducerOverrun { .. }) | Err(RingError::Broken) => {
                    prop_assert!(front.is_broken());
                }
                Err(RingError::Full) => prop_assert!(front.is_full()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
                Ok(()) => {}
            }
            prop_assert!(front.free_requests() <= front.size());
        }
    }
}
