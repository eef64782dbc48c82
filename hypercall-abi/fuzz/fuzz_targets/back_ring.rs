//! A back end ring (and the front end beside it) against a peer that may
//! write anything into the shared page at any time.
//!
//! The input chooses the entry geometry (blkif-, netif-, odd- and
//! byte-sized), one or two ring pages, the starting indices and either an
//! honest start or arbitrary header contents, then drives a sequence of
//! ring operations interleaved with scribbles on the page. Properties:
//!
//! - nothing panics or touches memory outside the ring (ASan);
//! - errors are only the documented ones, and a peer error breaks the ring
//!   for good;
//! - the back end never holds more requests than the ring has slots;
//! - while nobody scribbles, both ends are never broken and requests and
//!   responses arrive complete and in order.
#![no_main]

use std::collections::VecDeque;
use std::num::Wrapping;

use hypercall_abi::ring::{
    BackRing, FrontRing, OwnedRingMem, RingEntry, RingError, SringIndex, SRING_HEADER_SIZE,
};
use libfuzzer_sys::fuzz_target;

/// Upper bound on operations per input (inputs are short anyway).
const MAX_OPS: usize = 4096;

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut v = [0u8; 4];
        for b in &mut v {
            *b = self.byte()?;
        }
        Some(u32::from_le_bytes(v))
    }
}

/// xorshift64*: cheap filler for entry contents.
struct Filler(u64);

impl Filler {
    fn fill(&mut self, bytes: &mut [u8]) {
        for b in bytes {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
    }

    fn entry<T: RingEntry>(&mut self) -> T {
        let mut v = T::new_zeroed();
        self.fill(v.as_mut_bytes());
        v
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let Some(config) = input.byte() else {
        return;
    };
    match config & 3 {
        0 => run::<[u64; 14], [u64; 2]>(config, &mut input), // blkif: 112 / 16
        1 => run::<[u32; 3], [u16; 2]>(config, &mut input),  // netif tx: 12 / 4
        2 => run::<[u8; 5], u16>(config, &mut input),        // 6-byte union
        _ => run::<u8, u8>(config, &mut input),              // 2048 slots
    }
});

fn run<Req: RingEntry, Rsp: RingEntry>(config: u8, input: &mut Input<'_>) {
    let Some(owned) = OwnedRingMem::with_order(u32::from((config >> 2) & 1)) else {
        return;
    };
    let mem = owned.mem();
    let honest_start = config & 0x10 == 0;
    let (Some(seed), Some(start)) = (input.u32(), input.u32()) else {
        return;
    };
    let mut filler = Filler(u64::from(seed) | 1 << 40);

    // Stale entries from whatever used the pages before.
    let mut stale = vec![0u8; mem.len() - SRING_HEADER_SIZE];
    filler.fill(&mut stale);
    mem.write_bytes(SRING_HEADER_SIZE, &stale).unwrap();

    let start = Wrapping(start);
    let (mut front, mut back, mut indices_tampered) = if honest_start {
        mem.init_shared();
        mem.store_index(SringIndex::ReqProd, start);
        mem.store_index(SringIndex::RspProd, start);
        mem.store_index(SringIndex::ReqEvent, start + Wrapping(1));
        mem.store_index(SringIndex::RspEvent, start + Wrapping(1));
        let front = FrontRing::<Req, Rsp>::attach(mem, start).unwrap();
        let back = BackRing::<Req, Rsp>::attach(mem, start).unwrap();
        (front, back, false)
    } else {
        let mut header = [0u8; SRING_HEADER_SIZE];
        for b in &mut header {
            *b = input.byte().unwrap_or(0);
        }
        mem.write_bytes(0, &header).unwrap();
        let back_start = Wrapping(input.u32().unwrap_or(0));
        let front = FrontRing::<Req, Rsp>::attach(mem, start).unwrap();
        let back = BackRing::<Req, Rsp>::attach(mem, back_start).unwrap();
        (front, back, true)
    };
    let mut entries_tampered = false;
    let size = back.size();

    // What an honest pair must observe: requests put, pushed (visible to
    // the back end), responses put, published (visible to the front end).
    let mut req_put: VecDeque<Req> = VecDeque::new();
    let mut req_pushed: VecDeque<Req> = VecDeque::new();
    let mut rsp_put: VecDeque<Rsp> = VecDeque::new();
    let mut rsp_published: VecDeque<Rsp> = VecDeque::new();

    for _ in 0..MAX_OPS {
        let Some(op) = input.byte() else {
            break;
        };
        let honest = !indices_tampered;
        let check_contents = honest && !entries_tampered;
        let back_result: Result<(), RingError> = match op % 14 {
            0 => back.consume_request().map(|req| {
                if let Some(req) = req {
                    let expected = req_pushed.pop_front();
                    if check_contents {
                        assert_eq!(
                            expected.map(|r| r.as_bytes().to_vec()),
                            Some(req.as_bytes().to_vec())
                        );
                    }
                }
            }),
            1 => {
                let rsp: Rsp = filler.entry();
                back.put_response(&rsp).map(|()| rsp_put.push_back(rsp))
            }
            2 => back
                .push_responses()
                .map(|()| rsp_published.extend(rsp_put.drain(..))),
            3 => back
                .push_responses_and_check_notify()
                .map(|_| rsp_published.extend(rsp_put.drain(..))),
            4 => back.final_check_for_requests().map(|work| {
                if honest {
                    assert_eq!(work, !req_pushed.is_empty());
                }
            }),
            5 => back.unconsumed_requests().map(|n| {
                // Exactly what the page says, never silently clamped.
                let req_prod = mem.load_index(SringIndex::ReqProd);
                assert_eq!(n, (req_prod - back.req_cons()).0);
                assert!(n <= size - back.requests_in_flight());
                if honest {
                    assert_eq!(n as usize, req_pushed.len());
                }
            }),
            6 => back
                .get_request(Wrapping(input.u32().unwrap_or(0)))
                .map(drop),
            7 => {
                let _ = back.request_cons_overflow(Wrapping(input.u32().unwrap_or(0)));
                Ok(())
            }
            8 => {
                // The peer rewrites an index (any of the four; both ends'
                // own fields included).
                let field = [
                    SringIndex::ReqProd,
                    SringIndex::ReqEvent,
                    SringIndex::RspProd,
                    SringIndex::RspEvent,
                ][usize::from(input.byte().unwrap_or(0) & 3)];
                mem.store_index(field, Wrapping(input.u32().unwrap_or(0)));
                indices_tampered = true;
                Ok(())
            }
            9 => {
                // The peer scribbles over some bytes, possibly the header.
                let offset = input.u32().unwrap_or(0) as usize % mem.len();
                let mut junk = vec![0u8; usize::from(input.byte().unwrap_or(0))];
                filler.fill(&mut junk);
                let end = (offset + junk.len()).min(mem.len());
                mem.write_bytes(offset, &junk[..end - offset]).unwrap();
                if offset < SRING_HEADER_SIZE {
                    indices_tampered = true;
                }
                entries_tampered = true;
                Ok(())
            }
            10..=13 => {
                let front_result = match op % 14 {
                    10 => {
                        let req: Req = filler.entry();
                        front.put_request(&req).map(|()| req_put.push_back(req))
                    }
                    11 => {
                        let r = if op & 0x80 != 0 {
                            front.push_requests_and_check_notify().map(drop)
                        } else {
                            front.push_requests()
                        };
                        r.map(|()| req_pushed.extend(req_put.drain(..)))
                    }
                    12 if op & 0x80 != 0 => front.unconsumed_responses().map(|n| {
                        let rsp_prod = mem.load_index(SringIndex::RspProd);
                        assert_eq!(n, (rsp_prod - front.rsp_cons()).0);
                        assert!(n <= (front.req_prod_pvt() - front.rsp_cons()).0);
                        if honest {
                            assert_eq!(n as usize, rsp_published.len());
                        }
                    }),
                    12 => front.consume_response().map(|rsp| {
                        if let Some(rsp) = rsp {
                            let expected = rsp_published.pop_front();
                            if check_contents {
                                assert_eq!(
                                    expected.map(|r| r.as_bytes().to_vec()),
                                    Some(rsp.as_bytes().to_vec())
                                );
                            }
                        }
                    }),
                    _ => front.final_check_for_responses().map(|work| {
                        if honest {
                            assert_eq!(work, !rsp_published.is_empty());
                        }
                    }),
                };
                match front_result {
                    Ok(()) => {}
                    Err(RingError::Full) => assert!(front.is_full()),
                    Err(RingError::ResponseProducerOverrun { .. }) | Err(RingError::Broken) => {
                        assert!(!honest, "honest back end flagged: {front_result:?}");
                        assert!(front.is_broken());
                    }
                    Err(e) => panic!("unexpected front error: {e}"),
                }
                Ok(())
            }
            _ => unreachable!(),
        };
        match back_result {
            Ok(()) => {}
            Err(RingError::NoRequestToAnswer) => assert_eq!(back.requests_in_flight(), 0),
            Err(RingError::RequestProducerOverrun { .. }) | Err(RingError::Broken) => {
                assert!(!honest, "honest front end flagged: {back_result:?}");
                assert!(back.is_broken());
            }
            Err(e) => panic!("unexpected back error: {e}"),
        }
        assert!(back.requests_in_flight() <= size);
        assert!(front.free_requests() <= size);
    }
}
