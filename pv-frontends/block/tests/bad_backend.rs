//! A fake backend that breaks the blkif protocol in one way per test: the
//! frontend must reject every bad response with a typed error, mark the
//! device broken, refuse further I/O, and still disconnect cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::Wrapping;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{config, Toolstack, FE, TIMEOUT};
use hypercall_abi::platform::{EventChannels, GrantMap, MappedGrants, Transaction, Xenstore};
use hypercall_abi::ring::{BackRing, RingError, SringIndex};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifResponse, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_RSP_OKAY};
use rblkfront::{Error, ProtocolError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Misbehaviour {
    None,
    UnknownId,
    Duplicate,
    BadStatus,
    WrongOperation,
    Overrun,
    KeepsGrantMapped,
}

/// The fake backend, as domain 0, in a thread.
struct FakeBackend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    fn start(ts: &Toolstack, mode: Misbehaviour) -> FakeBackend {
        let stop = Arc::new(AtomicBool::new(false));
        let (d0, be, fe, flag) = (ts.d0.clone(), ts.be_path.clone(), ts.fe_path.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let xs = d0.xenstore().unwrap();
            let none = Transaction::NONE;
            let write = |node: &str, value: &str| xs.write(none, &format!("{be}/{node}"), value.as_bytes()).unwrap();
            let read = |node: &str| xs.read(none, &format!("{fe}/{node}")).ok().map(|v| String::from_utf8(v).unwrap());
            for (node, value) in [
                ("sectors", "2048"),
                ("info", "0"),
                ("sector-size", "512"),
                ("feature-flush-cache", "1"),
                ("feature-persistent", "0"),
                ("state", "2"),
            ] {
                write(node, value);
            }
            let deadline = Instant::now() + TIMEOUT;
            while read("state").as_deref() != Some("3") {
                assert!(Instant::now() < deadline, "the frontend never became Initialised");
                std::thread::sleep(Duration::from_millis(5));
            }
            let gref: u32 = read("ring-ref").unwrap().parse().unwrap();
            let remote: u32 = read("event-channel").unwrap().parse().unwrap();
            let gm = d0.grant_map();
            let ring_pages = gm.map(FE, &[gref], true).unwrap();
            let ev = d0.event_channels().unwrap();
            let port = ev.bind_interdomain(FE, remote).unwrap();
            let memory = ring_pages.memory();
            let mem = memory.ring_mem().unwrap();
            let mut ring = BackRing::<BlkifRequest, BlkifResponse>::new(mem).unwrap();
            write("state", "4");

            let mut kept = Vec::new();
            let mut state = "4";
            while !flag.load(Ordering::Relaxed) {
                match read("state").as_deref() {
                    Some("5") if state == "4" => {
                        state = "5";
                        write("state", state);
                    }
                    Some("6") => {
                        write("state", "6");
                        break;
                    }
                    _ => {}
                }
                let mut batch = Vec::new();
                while let Ok(Some(request)) = ring.consume_request() {
                    batch.push(request);
                }
                if batch.is_empty() {
                    if !matches!(ring.final_check_for_requests(), Ok(true)) {
                        if let Ok(Some(p)) = ev.wait(Some(Duration::from_millis(20))) {
                            ev.unmask(p).unwrap();
                        }
                    }
                    continue;
                }
                for (i, request) in batch.iter().enumerate() {
                    let op = if request.operation == BLKIF_OP_INDIRECT {
                        request.as_indirect().indirect_op
                    } else {
                        request.operation
                    };
                    let mut rsp =
                        BlkifResponse { id: request.id, operation: op, status: BLKIF_RSP_OKAY, ..Default::default() };
                    match mode {
                        Misbehaviour::UnknownId => rsp.id ^= 1 << 40,
                        Misbehaviour::Duplicate => rsp.id = batch[0].id,
                        Misbehaviour::BadStatus if i == 0 => rsp.status = 3,
                        Misbehaviour::WrongOperation => rsp.operation ^= 1,
                        Misbehaviour::KeepsGrantMapped if request.nr_segments > 0 => {
                            kept.push(gm.map(FE, &[request.seg[0].gref], false).unwrap());
                        }
                        _ => {}
                    }
                    ring.put_response(&rsp).unwrap();
                }
                let notify = ring.push_responses_and_check_notify().unwrap();
                if mode == Misbehaviour::Overrun {
                    mem.store_index(SringIndex::RspProd, ring.rsp_prod_pvt() + Wrapping(3));
                }
                if notify || mode == Misbehaviour::Overrun {
                    ev.notify(port).unwrap();
                }
            }
            drop(kept);
        });
        FakeBackend { stop, thread: Some(thread) }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Connects to a fake backend misbehaving as `mode`, reads 12 pages (two
/// requests in flight: the fake offers no indirect requests) and returns
/// the read's result; then checks the device is broken and disconnects.
fn read_from(mode: Misbehaviour) -> Result<(), Error> {
    let ts = Toolstack::start("bad");
    let backend = FakeBackend::start(&ts, mode);
    let mut dev = ts.frontend(config());
    dev.connect().unwrap();
    assert_eq!(dev.max_request_bytes(), 11 * 4096);

    let mut buf = vec![0u8; 12 * 4096];
    let result = dev.read(0, &mut buf);

    if result.is_err() {
        assert!(dev.broken().is_some(), "a protocol error breaks the device");
        assert!(matches!(dev.read(0, &mut buf[..512]), Err(Error::Broken(_))));
        assert!(matches!(dev.write(0, &buf[..512]), Err(Error::Broken(_))));
        assert!(matches!(dev.flush(), Err(Error::Broken(_))));
    }
    dev.disconnect().unwrap();
    assert_eq!(ts.frontend_node("state").as_deref(), Some("6"));
    drop(backend);
    result
}

#[test]
fn a_well_behaved_fake_backend_is_accepted() {
    read_from(Misbehaviour::None).unwrap();
}

#[test]
fn a_response_with_an_unknown_id_breaks_the_device() {
    let err = read_from(Misbehaviour::UnknownId).unwrap_err();

    assert!(matches!(err, Error::Protocol(ProtocolError::UnknownId { queue: 0, .. })), "{err}");
}

#[test]
fn a_second_response_to_one_request_breaks_the_device() {
    let err = read_from(Misbehaviour::Duplicate).unwrap_err();

    assert!(matches!(err, Error::Protocol(ProtocolError::DuplicateResponse { queue: 0, .. })), "{err}");
}

#[test]
fn a_status_that_is_no_blkif_status_breaks_the_device() {
    let err = read_from(Misbehaviour::BadStatus).unwrap_err();

    assert!(matches!(err, Error::Protocol(ProtocolError::BadStatus { status: 3, .. })), "{err}");
}

#[test]
fn a_response_with_another_operation_breaks_the_device() {
    let err = read_from(Misbehaviour::WrongOperation).unwrap_err();

    assert!(
        matches!(err, Error::Protocol(ProtocolError::WrongOperation { expected: BLKIF_OP_READ, got: 1, .. })),
        "{err}"
    );
}

#[test]
fn responses_beyond_the_requests_pushed_break_the_device() {
    let err = read_from(Misbehaviour::Overrun).unwrap_err();

    assert!(
        matches!(err, Error::Protocol(ProtocolError::Ring { source: RingError::ResponseProducerOverrun { .. }, .. })),
        "{err}"
    );
}

#[test]
fn a_backend_that_answers_but_keeps_the_pages_mapped_breaks_the_device() {
    let err = read_from(Misbehaviour::KeepsGrantMapped).unwrap_err();

    assert!(matches!(err, Error::Protocol(ProtocolError::GrantStillMapped { .. })), "{err}");
}
