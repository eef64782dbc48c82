//! rblkfront's response path against a backend that writes anything into
//! the shared ring: any `rsp_prod` and any response slots.
//!
//! The input's first byte says how many requests (up to the ring size) the
//! frontend put and pushed; the next four bytes are the `rsp_prod` the
//! backend publishes, and the rest fill the ring's slots. The frontend
//! consumes responses as `rblkfront`'s queues do (`FrontRing` ->
//! `Shadow::complete`). Properties:
//!
//! - nothing panics;
//! - every accepted response completes a request that was sent, once;
//! - the first rejected response (or an impossible `rsp_prod`) stops the
//!   processing, and the requests not completed stay in flight.
#![no_main]

use std::collections::HashSet;
use std::num::{NonZeroUsize, Wrapping};

use hypercall_abi::ring::{FrontRing, OwnedRingMem, SringIndex, SRING_HEADER_SIZE};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifResponse};
use libfuzzer_sys::fuzz_target;
use rblkfront::shadow::Shadow;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let page = OwnedRingMem::new(NonZeroUsize::MIN);
    let mem = page.mem();
    let mut front = FrontRing::<BlkifRequest, BlkifResponse>::init_shared(mem).unwrap();
    let size = front.size() as usize;
    let mut shadow = Shadow::new(0, size as u16);
    let count = usize::from(count) % (size + 1);
    let mut sent = HashSet::new();
    for i in 0..count {
        let reservation = shadow.reserve().unwrap();
        let op = (i % 2) as u8;
        let request = BlkifRequest { operation: op, id: reservation.id, ..Default::default() };
        front.put_request(&request).unwrap();
        shadow.insert(reservation, op, reservation.id);
        sent.insert(reservation.id);
    }
    front.push_requests().unwrap();

    // The backend's doing: response slots, then rsp_prod.
    let (prod, slots) = rest.split_at(rest.len().min(4));
    let mut word = [0u8; 4];
    word[..prod.len()].copy_from_slice(prod);
    let room = mem.len() - SRING_HEADER_SIZE;
    mem.write_bytes(SRING_HEADER_SIZE, &slots[..slots.len().min(room)]).unwrap();
    mem.store_index(SringIndex::RspProd, Wrapping(u32::from_le_bytes(word)));

    let mut done = HashSet::new();
    loop {
        match front.consume_response() {
            Ok(Some(rsp)) => match shadow.complete(&rsp) {
                Ok(completion) => {
                    assert!(sent.contains(&completion.id), "completed a request never sent");
                    assert_eq!(completion.payload, completion.id);
                    assert!(done.insert(completion.id), "completed a request twice");
                }
                Err(_) => break,
            },
            Ok(None) => break,
            Err(_) => {
                assert!(front.is_broken());
                break;
            }
        }
    }
    assert_eq!(shadow.in_flight(), count - done.len());
});
