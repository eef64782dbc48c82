//! The xenstore engine's message parser and request handler against a
//! client that sends anything: the input is a byte stream cut into
//! `xsd_sockmsg` messages, each run for dom0 or a guest (by its first byte)
//! on one store.
//!
//! Properties: nothing panics; every complete message gets exactly one
//! framed reply whose request id is the request's; an oversized length
//! ends the stream, as it ends the connection.
#![no_main]

use hypercall_abi::xen::xs_wire::{XsdSockmsg, XSD_SOCKMSG_SIZE};
use libfuzzer_sys::fuzz_target;
use xenstore_engine::{handle, watch_event, Caller, FrameReader, Store};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Some((who, stream)) = data.split_first() else {
        return;
    };
    let mut store = Store::new();
    store.introduce_domain(1);
    store.introduce_domain(2);
    let mut frames = FrameReader::new();
    frames.push(stream);
    // Bounded: each message consumes at least a header of the input.
    while let Ok(Some((h, payload))) = frames.next_message() {
        let domid = u16::from(*who % 3);
        let caller = Caller { conn: u64::from(domid), domid };
        let reply = handle(&mut store, caller, &h, &payload);
        let rh = XsdSockmsg::read_from_bytes(&reply[..XSD_SOCKMSG_SIZE]).expect("a framed reply");
        assert_eq!(rh.req_id, h.req_id);
        assert_eq!(rh.len as usize, reply.len() - XSD_SOCKMSG_SIZE);
        for fire in store.take_fires() {
            let _ = watch_event(&fire);
        }
    }
});
