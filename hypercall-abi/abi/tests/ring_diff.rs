//! Differential test of `hypercall_abi::ring` against Xen's own
//! `xen/io/ring.h` (Debian's libxen-dev).
//!
//! `tests/c/ring_driver.c` runs a script of ring operations through the C
//! macros on the real blkif and netif ring types (and a small custom type
//! whose union is larger than either member). The same operations, drawn
//! from a seeded generator, run through `FrontRing`/`BackRing` on an
//! `OwnedRingMem`. After every operation both sides report the result
//! (notify and has-work decisions, counts, entries copied out) and the
//! 64-byte shared header; every 32 operations, and at the end, a hash of
//! the whole ring memory. Any difference fails the test.
// The owned ring memory the Rust side runs on needs an allocator.
#![cfg(feature = "std")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::num::Wrapping;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use hypercall_abi::ring::{
    BackRing, FrontRing, OwnedRingMem, RingEntry, SharedRingMem, SRING_HEADER_SIZE, XEN_PAGE_SIZE,
};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifRequestSegment, BlkifResponse};
use hypercall_abi::xen::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use rand::distributions::{Distribution, WeightedIndex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Operations per run.
const OPS: usize = 4000;
/// Seeds per ring geometry; seed 0 starts from `XEN_FRONT_RING_INIT`, the
/// others attach with every index just below the u32 wrap.
const SEEDS: u64 = 3;

// ---- Wire types ----------------------------------------------------------
//
// blkif and netif entries are the crate's own (`hypercall_abi::xen`), so the
// test also checks their layout against the C structures in the ring.

/// `struct small_req` of ring_driver.c: 5 bytes, alignment 1.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct SmallReq {
    b: [u8; 5],
}

/// `struct small_rsp` of ring_driver.c: 2 bytes, alignment 2; the union
/// with `SmallReq` is 6 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct SmallRsp {
    id: u16,
}

const _: () = assert!(hypercall_abi::ring::slot_size::<SmallReq, SmallRsp>() == 6);

/// A wire type with random contents. Padding stays zero: C's struct copy
/// in `RING_COPY_*` need not copy padding bytes.
trait Random: RingEntry {
    fn random(rng: &mut StdRng) -> Self;
}

impl Random for BlkifRequest {
    fn random(rng: &mut StdRng) -> Self {
        let mut req = BlkifRequest {
            operation: rng.gen(),
            nr_segments: rng.gen(),
            handle: rng.gen(),
            id: rng.gen(),
            sector_number: rng.gen(),
            ..BlkifRequest::default()
        };
        for seg in &mut req.seg {
            *seg = BlkifRequestSegment {
                gref: rng.gen(),
                first_sect: rng.gen(),
                last_sect: rng.gen(),
                ..BlkifRequestSegment::default()
            };
        }
        req
    }
}

impl Random for BlkifResponse {
    fn random(rng: &mut StdRng) -> Self {
        BlkifResponse {
            id: rng.gen(),
            operation: rng.gen(),
            status: rng.gen(),
            ..BlkifResponse::default()
        }
    }
}

/// Types without padding: any bytes.
macro_rules! random_bytes {
    ($($t:ty),*) => {$(
        impl Random for $t {
            fn random(rng: &mut StdRng) -> Self {
                let mut v = <$t>::new_zeroed();
                rng.fill(v.as_mut_bytes());
                v
            }
        }
    )*};
}
random_bytes!(
    NetifTxRequest,
    NetifTxResponse,
    NetifRxRequest,
    NetifRxResponse,
    SmallReq,
    SmallRsp
);

// ---- The C driver -------------------------------------------------------

const MAKE_DEPS: &str = "install them with `make deps` (Debian: libxen-dev and gcc)";

/// Compiles tests/c/ring_driver.c once per test process.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let header = Path::new("/usr/include/xen/io/ring.h");
        assert!(
            header.exists(),
            "Xen's C headers are missing ({} not found); {MAKE_DEPS}",
            header.display()
        );
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/ring_driver.c");
        // Built under a private name, then renamed into place atomically, so
        // concurrent test processes never run a half-written binary.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let tmp = dir.join(format!("ring_driver.{}", std::process::id()));
        let out = dir.join("ring_driver");
        let status = Command::new("cc")
            .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `cc`: {e}; {MAKE_DEPS}"));
        assert!(
            status.success(),
            "cc failed to build {} against Xen's headers ({status}); {MAKE_DEPS}",
            src.display()
        );
        std::fs::rename(&tmp, &out).expect("move the C ring driver into place");
        out
    })
}

fn run_driver(c_type: &str, ring_bytes: usize, script: &str) -> String {
    let mut child = Command::new(driver())
        .arg(c_type)
        .arg(ring_bytes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the C ring driver");
    let mut stdin = child.stdin.take().expect("driver stdin");
    let script = script.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
    let output = child
        .wait_with_output()
        .expect("wait for the C ring driver");
    writer
        .join()
        .expect("stdin writer")
        .expect("write the script");
    assert!(
        output.status.success(),
        "C ring driver failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("driver output is ASCII")
}

// ---- The Rust side ------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn snapshot(mem: SharedRingMem<'_>, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_bytes(0, &mut v).unwrap();
    v
}

/// One operation of the script; `ring_driver_body.h` implements each.
#[derive(Debug, Clone, Copy)]
enum Op {
    PutReq,
    PushReq,
    BackConsume,
    PutRsp,
    PushRsp,
    FrontConsume,
    FinalReq,
    FinalRsp,
    BackUnconsumed,
    FrontUnconsumed,
    Free,
    ConsOverflow,
    GetReq,
    GetRsp,
    Hash,
}

/// The operations drawn at random, in the order of the weight tables.
const OPERATIONS: [Op; 14] = [
    Op::PutReq,
    Op::PushReq,
    Op::BackConsume,
    Op::PutRsp,
    Op::PushRsp,
    Op::FrontConsume,
    Op::FinalReq,
    Op::FinalRsp,
    Op::BackUnconsumed,
    Op::FrontUnconsumed,
    Op::Free,
    Op::ConsOverflow,
    Op::GetReq,
    Op::GetRsp,
];

// Phases with these weights alternate: both ends busy; the back end stalled
// while the front end fills the ring; the front end producing nothing while
// the ring drains. Either end idles and sleeps at times.
const BALANCED: [u32; 14] = [25, 15, 15, 12, 8, 10, 3, 3, 3, 2, 2, 1, 1, 1];
const FRONT_BUSY: [u32; 14] = [40, 20, 0, 0, 0, 5, 3, 3, 5, 2, 5, 3, 1, 1];
const BACK_BUSY: [u32; 14] = [0, 0, 30, 25, 12, 15, 3, 3, 5, 2, 2, 3, 1, 1];

/// What the model knows about the ring, to generate only operations that
/// a well-behaved front end and back end would perform (ring.h does no
/// flow control; the Rust ring refuses the rest, as tested in its unit
/// tests).
#[derive(Default)]
struct Model {
    sent: u32,
    pushed: u32,
    consumed: u32,
    answered: u32,
    published: u32,
    received: u32,
}

/// Generates `OPS` random operations, applies them to the Rust rings, and
/// returns the script and the output ring_driver.c must print for it.
fn generate<Req: Random, Rsp: Random>(ring_bytes: usize, seed: u64) -> (String, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let owned = OwnedRingMem::new(std::num::NonZeroUsize::new(ring_bytes / XEN_PAGE_SIZE).unwrap());
    let mem = owned.mem();
    let mut script = String::new();
    let mut expected = String::new();

    let (mut front, mut back) = if seed == 0 {
        script.push_str("init\n");
        let front = FrontRing::<Req, Rsp>::init_shared(mem).unwrap();
        let back = BackRing::<Req, Rsp>::new(mem).unwrap();
        (front, back)
    } else {
        let start = u32::MAX
            - rng.gen_range(
                0..3 * hypercall_abi::ring::ring_size(
                    hypercall_abi::ring::slot_size::<Req, Rsp>(),
                    ring_bytes,
                ),
            );
        let _ = writeln!(script, "attach {start}");
        let start = Wrapping(start);
        mem.init_shared();
        use hypercall_abi::ring::SringIndex::*;
        mem.store_index(ReqProd, start);
        mem.store_index(RspProd, start);
        mem.store_index(ReqEvent, start + Wrapping(1));
        mem.store_index(RspEvent, start + Wrapping(1));
        let front = FrontRing::<Req, Rsp>::attach(mem, start).unwrap();
        let back = BackRing::<Req, Rsp>::attach(mem, start).unwrap();
        (front, back)
    };
    let size = front.size();
    let header = |out: &mut String, result: &str| {
        let mut h = [0u8; SRING_HEADER_SIZE];
        mem.read_bytes(0, &mut h).unwrap();
        let _ = writeln!(out, "{result} | {}", hex(&h));
    };
    header(&mut expected, &format!("size={size}"));

    let mut m = Model::default();
    let phases = [
        WeightedIndex::new(BALANCED).unwrap(),
        WeightedIndex::new(FRONT_BUSY).unwrap(),
        WeightedIndex::new(BACK_BUSY).unwrap(),
    ];
    let mut phase = &phases[0];
    let mut phase_left = 0;
    for i in 0..OPS {
        if phase_left == 0 {
            phase = &phases[rng.gen_range(0..phases.len())];
            phase_left = rng.gen_range(20..400);
        }
        phase_left -= 1;
        let mut op = OPERATIONS[phase.sample(&mut rng)];
        if i % 32 == 31 {
            op = Op::Hash;
        }
        // An operation the state does not allow becomes what a driver with
        // nothing to do does: its final check before sleeping.
        op = match op {
            Op::PutReq if m.sent - m.received == size => Op::FinalRsp,
            Op::BackConsume if m.pushed == m.consumed => Op::FinalReq,
            Op::PutRsp if m.consumed == m.answered => Op::FinalReq,
            Op::FrontConsume if m.published == m.received => Op::FinalRsp,
            op => op,
        };
        let result = match op {
            Op::Hash => {
                script.push_str("hash\n");
                format!("hash={:016x}", fnv1a(&snapshot(mem, ring_bytes)))
            }
            Op::PutReq => {
                let req = Req::random(&mut rng);
                let _ = writeln!(script, "put_req {}", hex(req.as_bytes()));
                front.put_request(&req).unwrap();
                m.sent += 1;
                "ok".to_owned()
            }
            Op::PushReq => {
                m.pushed = m.sent;
                if rng.gen_bool(0.3) {
                    script.push_str("push_req\n");
                    front.push_requests().unwrap();
                    "ok".to_owned()
                } else {
                    script.push_str("push_req_notify\n");
                    let notify = front.push_requests_and_check_notify().unwrap();
                    format!("notify={}", u8::from(notify))
                }
            }
            Op::BackConsume => {
                script.push_str("back_consume\n");
                let req: Req = back.consume_request().unwrap().expect("a request");
                m.consumed += 1;
                hex(req.as_bytes())
            }
            Op::PutRsp => {
                let rsp = Rsp::random(&mut rng);
                let _ = writeln!(script, "put_rsp {}", hex(rsp.as_bytes()));
                back.put_response(&rsp).unwrap();
                m.answered += 1;
                "ok".to_owned()
            }
            Op::PushRsp => {
                m.published = m.answered;
                if rng.gen_bool(0.3) {
                    script.push_str("push_rsp\n");
                    back.push_responses().unwrap();
                    "ok".to_owned()
                } else {
                    script.push_str("push_rsp_notify\n");
                    let notify = back.push_responses_and_check_notify().unwrap();
                    format!("notify={}", u8::from(notify))
                }
            }
            Op::FrontConsume => {
                script.push_str("front_consume\n");
                let rsp: Rsp = front.consume_response().unwrap().expect("a response");
                m.received += 1;
                hex(rsp.as_bytes())
            }
            Op::FinalReq => {
                script.push_str("final_req\n");
                format!(
                    "work={}",
                    u8::from(back.final_check_for_requests().unwrap())
                )
            }
            Op::FinalRsp => {
                script.push_str("final_rsp\n");
                format!(
                    "work={}",
                    u8::from(front.final_check_for_responses().unwrap())
                )
            }
            Op::BackUnconsumed => {
                script.push_str("back_unconsumed\n");
                format!("unconsumed={}", back.unconsumed_requests().unwrap())
            }
            Op::FrontUnconsumed => {
                script.push_str("front_unconsumed\n");
                format!("unconsumed={}", front.unconsumed_responses().unwrap())
            }
            Op::Free => {
                script.push_str("free\n");
                format!(
                    "free={} full={}",
                    front.free_requests(),
                    u8::from(front.is_full())
                )
            }
            Op::ConsOverflow => {
                let cons = back.req_cons() + Wrapping(rng.gen_range(0..size + 3)) - Wrapping(2);
                let _ = writeln!(script, "cons_overflow {}", cons.0);
                format!("overflow={}", u8::from(back.request_cons_overflow(cons)))
            }
            Op::GetReq => {
                let idx: u32 = rng.gen();
                let _ = writeln!(script, "get_req {idx}");
                hex(back.get_request(Wrapping(idx)).unwrap().as_bytes())
            }
            Op::GetRsp => {
                let idx: u32 = rng.gen();
                let _ = writeln!(script, "get_rsp {idx}");
                hex(front.get_response(Wrapping(idx)).unwrap().as_bytes())
            }
        };
        header(&mut expected, &result);
    }
    script.push_str("hash\n");
    let result = format!("hash={:016x}", fnv1a(&snapshot(mem, ring_bytes)));
    header(&mut expected, &result);
    assert!(!front.is_broken() && !back.is_broken());
    (script, expected)
}

fn compare<Req: Random, Rsp: Random>(c_type: &str, ring_page_order: u32) {
    let ring_bytes = XEN_PAGE_SIZE << ring_page_order;
    for seed in 0..SEEDS {
        let (script, expected) = generate::<Req, Rsp>(ring_bytes, seed);
        let actual = run_driver(c_type, ring_bytes, &script);
        let ops: Vec<&str> = script.lines().collect();
        let mut got = actual.lines();
        for (n, (want, op)) in expected.lines().zip(&ops).enumerate() {
            let have = got.next().unwrap_or("<no output>");
            assert_eq!(
                have,
                want,
                "{c_type}, ring-page-order {ring_page_order}, seed {seed}: operation {n} \
                 `{op}` differs from ring.h (left: C, right: Rust); preceding operations: {:?}",
                &ops[n.saturating_sub(8)..n]
            );
        }
        assert_eq!(got.next(), None, "C driver printed extra lines");
        assert_eq!(expected.lines().count(), ops.len());
    }
}

#[test]
fn blkif_ring_page_orders_0_to_4_match_ring_h() {
    for order in 0..=4 {
        compare::<BlkifRequest, BlkifResponse>("blkif", order);
    }
}

#[test]
fn netif_tx_ring_matches_ring_h() {
    compare::<NetifTxRequest, NetifTxResponse>("netif_tx", 0);
}

#[test]
fn netif_rx_ring_matches_ring_h() {
    for order in 0..=1 {
        compare::<NetifRxRequest, NetifRxResponse>("netif_rx", order);
    }
}

#[test]
fn odd_sized_union_matches_ring_h() {
    for order in [0, 2] {
        compare::<SmallReq, SmallRsp>("small", order);
    }
}
