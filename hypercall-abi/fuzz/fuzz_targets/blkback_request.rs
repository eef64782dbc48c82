//! rblkback's request path against a frontend that puts anything on the
//! ring and in its granted pages.
//!
//! The input chooses the device (sector size, read-only, discard, indirect
//! segment limit, persistent grants and cache size), the contents of a few
//! granted pages (some read-only; indirect pages are among them; filled
//! from the input's tail), and up to 8 ring slots of 112 bytes, whose grant references are mostly
//! folded onto the granted ones so that requests get past the mapping.
//! The slots go through a real shared ring (`FrontRing` -> `BackRing`)
//! into `BlockDevice::handle` over an in-memory disk and grant table.
//! Properties:
//!
//! - nothing panics; every request gets exactly one response, with its id,
//!   the operation blkfront expects, and a `BLKIF_RSP_*` status;
//! - a request the validator refuses gets the validator's status and does
//!   not change the disk; a read-only disk never changes;
//! - a successful write of direct segments leaves exactly the segments'
//!   bytes on the disk.
#![no_main]

use std::sync::Arc;

use hypercall_abi::ring::{BackRing, FrontRing, OwnedRingMem};
use hypercall_abi::xen::blkif::{
    BlkifRequest, BlkifResponse, BLKIF_OP_INDIRECT, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
};
use hypercall_abi::xen::{GrantRef, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;
use rblkback::device::BlockDevice;
use rblkback::grants::GrantPages;
use rblkback::memgrant::MemGrantTable;
use rblkback::request::{self, IoOp, Limits, Parsed};
use rblkback::{Disk, MemDisk};
use zerocopy::FromBytes;

const DOMID: u16 = 3;
const PAGES: usize = 12;
const DISK_BYTES: usize = 256 * 1024;
const SLOT: usize = std::mem::size_of::<BlkifRequest>();

struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let flags = input.byte();
    let sector_size = if flags & 1 != 0 { 4096 } else { 512 };
    let read_only = flags & 2 != 0;
    let discard = flags & 4 != 0 && !read_only;
    let persistent = (flags & 8 != 0).then_some(usize::from(input.byte() % 6));
    let max_indirect_segments = usize::from(input.byte()) * 3;
    let fold = input.byte();

    let nr_slots = usize::from(input.byte() % 9);
    let slots = input.bytes(nr_slots * SLOT).to_vec();
    // The rest of the input, repeated, fills the granted pages (each from
    // its own starting point), so indirect pages carry input-chosen
    // segments.
    let fill = input.data;
    let table = Arc::new(MemGrantTable::new(DOMID));
    let mut refs: Vec<GrantRef> = Vec::new();
    for i in 0..PAGES {
        let gref = table.grant(i % 4 != 3);
        if !fill.is_empty() {
            let start = i * 8 % fill.len();
            let page: Vec<u8> = fill.iter().cycle().skip(start).take(PAGE_SIZE).copied().collect();
            table.write_page(gref, 0, &page);
        }
        refs.push(gref);
    }
    let fold_ref = |raw: GrantRef| if fold & 1 == 0 || raw % 7 != 0 { refs[raw as usize % PAGES] } else { raw };

    let disk = Arc::new(MemDisk::new(DISK_BYTES, sector_size, read_only));
    let limits = Limits { sectors: disk.size() / 512, sector_size, read_only, discard, max_indirect_segments };
    let pages = GrantPages::new(Arc::clone(&table), DOMID, persistent);
    let mut device = BlockDevice::new(pages, Arc::clone(&disk), limits, Arc::default());

    let ring_mem = OwnedRingMem::with_order(u32::from(fold >> 6) % 2).unwrap();
    let mut front = FrontRing::<BlkifRequest, BlkifResponse>::init_shared(ring_mem.mem()).unwrap();
    let mut back = BackRing::<BlkifRequest, BlkifResponse>::new(ring_mem.mem()).unwrap();

    let mut sent = Vec::new();
    for bytes in slots.chunks_exact(SLOT) {
        let Ok(mut slot) = BlkifRequest::read_from_bytes(bytes) else { break };
        if slot.operation == BLKIF_OP_INDIRECT {
            let mut indirect = slot.as_indirect();
            for gref in &mut indirect.indirect_grefs {
                *gref = fold_ref(*gref);
            }
            slot = BlkifRequest::from_indirect(indirect);
        } else {
            for seg in &mut slot.seg {
                seg.gref = fold_ref(seg.gref);
            }
        }
        slot.id = sent.len() as u64;
        if front.is_full() {
            break;
        }
        front.put_request(&slot).unwrap();
        sent.push(slot);
    }
    front.push_requests().unwrap();

    let mut answered = 0;
    while let Some(raw) = back.consume_request().unwrap() {
        let before = disk.contents(0, DISK_BYTES);
        let verdict = request::parse(&raw, &limits);
        let rsp = device.handle(&raw);
        back.put_response(&rsp).unwrap();
        answered += 1;

        assert_eq!(rsp.id, raw.id);
        assert_eq!(rsp.operation, request::response_operation(&raw));
        assert!(matches!(rsp.status, BLKIF_RSP_OKAY | BLKIF_RSP_ERROR | BLKIF_RSP_EOPNOTSUPP));
        let after = disk.contents(0, DISK_BYTES);
        if read_only {
            assert!(before == after, "a read-only disk changed");
        }
        match verdict {
            Err(e) => {
                assert_eq!(rsp.status, e.status().raw());
                assert!(before == after, "a refused request changed the disk");
            }
            Ok(Parsed::Data(data)) if data.op == IoOp::Write && rsp.status == BLKIF_RSP_OKAY => {
                let mut at = data.byte_offset() as usize;
                for seg in &data.segments {
                    let mut page = vec![0u8; PAGE_SIZE];
                    assert!(table.read_page(seg.gref, 0, &mut page));
                    let bytes = &page[seg.byte_offset()..seg.byte_offset() + seg.byte_len()];
                    assert!(&after[at..at + bytes.len()] == bytes, "a write left other bytes than its pages'");
                    at += bytes.len();
                }
            }
            Ok(_) => {}
        }
    }
    assert_eq!(answered, sent.len());
    back.push_responses().unwrap();
    for expected in &sent {
        let rsp = front.consume_response().unwrap().unwrap();
        assert_eq!(rsp.id, expected.id);
    }
    assert!(front.consume_response().unwrap().is_none());
});
