//! rnetfront's response paths against a backend that writes anything into
//! the shared rings: any `rsp_prod` and any response slots, on the
//! transmit ring and on the receive ring.
//!
//! The input is cut in two halves, one per ring. In each, the first byte
//! says how many requests the frontend put and pushed (up to the ring
//! size), the next four bytes are the `rsp_prod` the backend publishes,
//! and the rest fill the ring's slots. The frontend consumes responses as
//! `rnetfront`'s queues do: transmit responses through
//! `FrontRing` -> `TxShadow::complete`, receive responses through
//! `FrontRing` -> `RxAssembler::push`. Properties:
//!
//! - nothing panics;
//! - every accepted transmit response completes a data slot that was
//!   sent, once; `NETIF_RSP_NULL` is accepted only for an extra-info slot;
//! - no receive page is read outside its 4096 bytes, and no frame takes
//!   more than `MAX_RX_SLOTS` pages;
//! - the first rejected response (or an impossible `rsp_prod`) stops the
//!   processing.
#![no_main]

use std::collections::HashSet;
use std::num::{NonZeroUsize, Wrapping};

use hypercall_abi::ring::{FrontRing, OwnedRingMem, SharedRingMem, SringIndex, SRING_HEADER_SIZE};
use hypercall_abi::xen::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use libfuzzer_sys::fuzz_target;
use rnetfront::protocol::MAX_RX_SLOTS;
use rnetfront::rx::RxAssembler;
use rnetfront::tx::TxShadow;

/// The backend's doing: response slots, then `rsp_prod`.
fn backend_writes(mem: SharedRingMem<'_>, input: &[u8]) {
    let (prod, slots) = input.split_at(input.len().min(4));
    let mut word = [0u8; 4];
    word[..prod.len()].copy_from_slice(prod);
    let room = mem.len() - SRING_HEADER_SIZE;
    mem.write_bytes(SRING_HEADER_SIZE, &slots[..slots.len().min(room)]).unwrap();
    mem.store_index(SringIndex::RspProd, Wrapping(u32::from_le_bytes(word)));
}

fn tx(input: &[u8]) {
    let Some((&count, rest)) = input.split_first() else {
        return;
    };
    let page = OwnedRingMem::new(NonZeroUsize::MIN);
    let mem = page.mem();
    let mut front = FrontRing::<NetifTxRequest, NetifTxResponse>::init_shared(mem).unwrap();
    let size = front.size() as usize;
    let mut shadow = TxShadow::new(0, size as u16);
    let count = usize::from(count) % (size + 1);
    let mut sent = HashSet::new();
    let mut extras = 0;
    let mut slots = 0;
    while slots < count {
        let (_, id) = shadow.take(Some(60)).unwrap();
        front.put_request(&NetifTxRequest { id, size: 60, ..Default::default() }).unwrap();
        sent.insert(id);
        slots += 1;
        // Every third frame carries an extra-info slot.
        if id % 3 == 0 && slots < count {
            front.put_request(&NetifTxRequest::default()).unwrap();
            shadow.extra_sent();
            extras += 1;
            slots += 1;
        }
    }
    front.push_requests().unwrap();
    backend_writes(mem, rest);

    let mut done = HashSet::new();
    let mut nulls = 0;
    loop {
        match front.consume_response() {
            Ok(Some(rsp)) => match shadow.complete(&rsp) {
                Ok(Some(completion)) => {
                    assert!(sent.contains(&completion.id), "completed a request never sent");
                    assert!(done.insert(completion.id), "completed a request twice");
                }
                Ok(None) => {
                    nulls += 1;
                    assert!(nulls <= extras, "more NULL responses than extra-info slots");
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
    assert_eq!(shadow.in_flight(), sent.len() - done.len());
}

fn rx(input: &[u8]) {
    let Some((&count, rest)) = input.split_first() else {
        return;
    };
    let page = OwnedRingMem::new(NonZeroUsize::MIN);
    let mem = page.mem();
    let mut front = FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(mem).unwrap();
    let size = front.size();
    let count = u32::from(count) % (size + 1);
    for i in 0..count {
        front.put_request(&NetifRxRequest { id: i as u16, pad: 0, gref: i }).unwrap();
    }
    front.push_requests().unwrap();
    backend_writes(mem, rest);

    let mut assembler = RxAssembler::new(0);
    loop {
        let index = front.rsp_cons();
        let rsp = match front.consume_response() {
            Ok(Some(rsp)) => rsp,
            Ok(None) => break,
            Err(_) => {
                assert!(front.is_broken());
                break;
            }
        };
        let slot = index.0 & (size - 1);
        let read = |offset: usize, len: usize, buf: &mut Vec<u8>| {
            assert!(offset + len <= 4096, "read {len} bytes at {offset}, beyond the page");
            buf.resize(buf.len() + len, slot as u8);
            Ok(())
        };
        match assembler.push(index.0, slot as u16, rsp, read) {
            Ok(Some(frame)) => assert!(frame.data.len() <= MAX_RX_SLOTS * 4096),
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (tx_input, rx_input) = data.split_at(data.len() / 2);
    tx(tx_input);
    rx(rx_input);
});
