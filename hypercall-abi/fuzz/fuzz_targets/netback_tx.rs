//! rnetback's transmit path against a frontend that puts anything on the
//! transmit ring and in its granted pages.
//!
//! The input gives up to 64 ring slots of 12 bytes (requests or extra
//! info, as the frontend likes), whose grant references are mostly folded
//! onto a few granted pages filled from the input's tail. The slots go
//! through a real shared ring (`FrontRing` -> `BackRing`) into
//! `tx::next_packet`, each accepted packet through `tx::copy_packet` over
//! an in-memory grant table and `offload::tx_vnet_hdr`. Properties:
//!
//! - nothing panics, and the loop ends (each verdict consumes a slot);
//! - a non-fatal verdict answers exactly the slots it consumed, in order,
//!   with the ids netfront expects, `NETIF_RSP_NULL` for extra info;
//! - an accepted packet has every slot within its page, a first fragment
//!   of at least an Ethernet header, at most `XEN_NETIF_NR_SLOTS_MIN`
//!   fragments, and is copied to exactly its length;
//! - a fatal verdict is one netback also treats as fatal.
#![no_main]

use hypercall_abi::ring::{FrontRing, OwnedRingMem};
use hypercall_abi::xen::netif::{NetifTxRequest, NetifTxResponse, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY};
use hypercall_abi::xen::{GrantRef, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;
use rnetback::memgrant::MemGrantTable;
use rnetback::offload::{tx_vnet_hdr, ETH_HLEN};
use rnetback::tx::{self, TxRing, TxVerdict, XEN_NETIF_NR_SLOTS_MIN};
use rxen_tap::VNET_HDR_LEN;
use zerocopy::FromBytes;

const DOMID: u16 = 4;
const PAGES: usize = 6;
const SLOT: usize = std::mem::size_of::<NetifTxRequest>();

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let nr_slots = usize::from(control % 65);
    let (slots, fill) = rest.split_at((nr_slots * SLOT).min(rest.len()));

    let table = MemGrantTable::new(DOMID);
    let refs: Vec<GrantRef> = (0..PAGES).map(|_| table.grant(false)).collect();
    for (i, &gref) in refs.iter().enumerate() {
        if !fill.is_empty() {
            let page: Vec<u8> = fill.iter().cycle().skip(i * 13 % fill.len()).take(PAGE_SIZE).copied().collect();
            table.write_page(gref, 0, &page);
        }
    }
    let fold = |raw: GrantRef| if control & 0x80 == 0 || raw % 5 != 0 { refs[raw as usize % PAGES] } else { raw };

    let mem = OwnedRingMem::with_order(0).unwrap();
    let mut front = FrontRing::<NetifTxRequest, NetifTxResponse>::init_shared(mem.mem()).unwrap();
    let mut back = TxRing::new(mem.mem()).unwrap();
    let mut sent = Vec::new();
    for bytes in slots.chunks_exact(SLOT) {
        let Ok(mut slot) = NetifTxRequest::read_from_bytes(bytes) else { break };
        slot.gref = fold(slot.gref);
        front.put_request(&slot).unwrap();
        sent.push(slot);
    }
    front.push_requests().unwrap();

    let mut buf = Vec::new();
    let mut consumed = 0usize;
    loop {
        let before = back.req_cons();
        let verdict = match tx::next_packet(&mut back).unwrap() {
            None => break,
            Some(verdict) => verdict,
        };
        let taken = (back.req_cons() - before).0 as usize;
        if let TxVerdict::Incomplete(part) = &verdict {
            // Put back whole; every slot of ours was published at once,
            // so the packet runs past the slots the fuzzer gave.
            assert_eq!(taken, 0, "an incomplete packet stays on the ring");
            assert_eq!(part.start, before.0);
            assert_eq!(part.published as usize, sent.len() - consumed);
            break;
        }
        assert!(taken >= 1, "a verdict consumed no slot");
        let mine = &sent[consumed..consumed + taken];
        consumed += taken;
        let responses = match verdict {
            TxVerdict::Fatal(e) => {
                assert!(e.is_fatal());
                break;
            }
            TxVerdict::Dropped { reason, responses } => {
                assert!(!reason.is_fatal());
                assert!(responses.iter().all(|r| r.status == NETIF_RSP_ERROR || r.status == NETIF_RSP_NULL));
                responses
            }
            TxVerdict::Control { responses, .. } => responses,
            TxVerdict::Incomplete(_) => unreachable!("handled above"),
            TxVerdict::Packet(packet) => {
                assert!(usize::from(packet.first.size) >= ETH_HLEN);
                assert!(packet.frags.len() <= XEN_NETIF_NR_SLOTS_MIN);
                assert!(packet.slots().all(|s| usize::from(s.offset) + usize::from(s.size) <= PAGE_SIZE));
                let status = tx::copy_packet(&table, DOMID, &packet, &mut buf).unwrap();
                assert_eq!(buf.len(), VNET_HDR_LEN + packet.len());
                if status.iter().all(Result::is_ok) {
                    let _ = tx_vnet_hdr(&mut buf[VNET_HDR_LEN..], &packet.offload);
                }
                packet.responses(|i| if status[i].is_ok() { NETIF_RSP_OKAY } else { NETIF_RSP_ERROR })
            }
        };
        assert_eq!(responses.len(), taken, "every slot consumed gets one response");
        for (rsp, slot) in responses.iter().zip(mine) {
            if rsp.status != NETIF_RSP_NULL {
                assert_eq!(rsp.id, slot.id);
            }
            back.put_response(rsp).unwrap();
        }
        back.push_responses().unwrap();
    }
    assert!(consumed <= sent.len());
});
