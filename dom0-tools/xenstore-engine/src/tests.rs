//! Request handling as a client sees it: framing, replies, and random input.

use hypercall_abi::xen::xs_wire::{XsType, XsdSockmsg, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE};
use rand::{Rng, SeedableRng};
use zerocopy::FromBytes;

use super::*;

const DOM0: Caller = Caller { conn: 1, domid: 0 };

fn run(store: &mut Store, caller: Caller, ty: u32, tx: u32, body: &[u8]) -> (XsdSockmsg, Vec<u8>) {
    let h = XsdSockmsg {
        type_: ty,
        req_id: 42,
        tx_id: tx,
        len: u32::try_from(body.len()).unwrap(),
    };
    let reply = handle(store, caller, &h, body);
    let rh = XsdSockmsg::read_from_bytes(&reply[..XSD_SOCKMSG_SIZE]).unwrap();
    assert_eq!(
        rh.len as usize,
        reply.len() - XSD_SOCKMSG_SIZE,
        "reply length is framed"
    );
    assert_eq!(rh.req_id, 42, "reply carries the request id");
    (rh, reply[XSD_SOCKMSG_SIZE..].to_vec())
}

#[test]
fn frame_reader_cuts_partial_and_joined_messages() {
    let a = message(XsType::Read as u32, 1, 0, b"a\0");
    let b = message(XsType::Write as u32, 2, 0, b"b\0v");
    let mut stream = a.clone();
    stream.extend_from_slice(&b);
    let mut r = FrameReader::new();
    for byte in &stream[..5] {
        r.push(std::slice::from_ref(byte));
    }
    assert_eq!(
        r.next_message().unwrap(),
        None,
        "a partial header is no message"
    );
    r.push(&stream[5..]);
    let (h1, p1) = r.next_message().unwrap().unwrap();
    let (h2, p2) = r.next_message().unwrap().unwrap();
    assert_eq!((h1.req_id, p1.as_slice()), (1, &b"a\0"[..]));
    assert_eq!((h2.req_id, p2.as_slice()), (2, &b"b\0v"[..]));
    assert_eq!(r.next_message().unwrap(), None);
    assert_eq!(r.wanted(), XSD_SOCKMSG_SIZE);
}

#[test]
fn frame_reader_refuses_oversized_payloads() {
    let mut m = message(XsType::Read as u32, 9, 0, b"");
    m[12..16].copy_from_slice(
        &u32::try_from(XENSTORE_PAYLOAD_MAX + 1)
            .unwrap()
            .to_le_bytes(),
    );
    let mut r = FrameReader::new();
    r.push(&m);
    assert!(matches!(r.next_message(), Err(FrameError::Oversized(h)) if h.req_id == 9));
}

#[test]
fn replies_use_xen_error_names() {
    let mut s = Store::new();
    let (h, body) = run(&mut s, DOM0, XsType::Read as u32, 0, b"/nope\0");
    assert_eq!(
        (h.type_, body.as_slice()),
        (XsType::Error as u32, &b"ENOENT\0"[..])
    );
    let (_, body) = run(&mut s, DOM0, 999, 0, b"");
    assert_eq!(body, b"EINVAL\0", "unknown types get EINVAL");
    let (_, body) = run(&mut s, DOM0, XsType::Write as u32, 0, b"/a\0value");
    assert_eq!(body, b"OK\0");
    let (_, body) = run(&mut s, DOM0, XsType::Read as u32, 0, b"/a\0");
    assert_eq!(body, b"value");
    let (_, body) = run(&mut s, DOM0, XsType::TransactionEnd as u32, 77, b"T\0");
    assert_eq!(body, b"ENOENT\0", "ending an unknown transaction fails");
}

#[test]
fn quotas_bind_guests_but_not_dom0() {
    let mut q = Quotas::default();
    assert!(q.set("node-size", 4));
    assert!(!q.set("no-such-quota", 1));
    let mut s = Store::with_quotas(q);
    s.introduce_domain(3);
    let guest = Caller { conn: 2, domid: 3 };
    let (_, body) = run(&mut s, guest, XsType::Write as u32, 0, b"k\x0012345");
    assert_eq!(body, b"ENOSPC\0");
    let (_, body) = run(&mut s, guest, XsType::Write as u32, 0, b"k\x001234");
    assert_eq!(body, b"OK\0");
    let (_, body) = run(&mut s, DOM0, XsType::Write as u32, 0, b"/big\x0012345678");
    assert_eq!(body, b"OK\0");
}

/// Random requests, some well-formed and most not, never panic and always
/// get a framed reply; the store keeps working afterwards.
#[test]
fn random_requests_get_replies_and_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut s = Store::new();
    s.introduce_domain(1);
    let words: [&[u8]; 8] = [
        b"/",
        b"a",
        b"/local/domain/1/x",
        b"@introduceDomain",
        b"T",
        b"F",
        b"1",
        b"b0",
    ];
    for i in 0..20_000u32 {
        let caller = Caller {
            conn: u64::from(i % 3),
            domid: u16::try_from(i % 3).unwrap(),
        };
        let ty = if rng.gen_bool(0.9) {
            rng.gen_range(0..24)
        } else {
            rng.gen()
        };
        let mut body = Vec::new();
        for _ in 0..rng.gen_range(0..4) {
            if rng.gen_bool(0.7) {
                body.extend_from_slice(words[rng.gen_range(0..words.len())]);
            } else {
                let n = rng.gen_range(0..16);
                body.extend((0..n).map(|_| rng.gen::<u8>()));
            }
            if rng.gen_bool(0.8) {
                body.push(0);
            }
        }
        let tx = if rng.gen_bool(0.8) {
            0
        } else {
            rng.gen_range(0..4)
        };
        run(&mut s, caller, ty, tx, &body);
        for f in s.take_fires() {
            let _ = watch_event(&f);
        }
    }
    let (_, body) = run(&mut s, DOM0, XsType::Write as u32, 0, b"/after\0ok");
    assert_eq!(body, b"OK\0");
}
