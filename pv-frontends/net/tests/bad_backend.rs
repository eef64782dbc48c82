//! A mock netback that breaks the netif protocol in one way per test: the
//! frontend must reject every bad response with a typed error, mark the
//! interface broken, refuse further I/O, and still disconnect cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{config, Delivery, Misbehaviour, MockConfig, MockNetback, Toolstack};
use hypercall_abi::ring::RingError;
use hypercall_abi::xen::netif::{NetifExtraGso, XEN_NETIF_GSO_TYPE_TCPV4};
use rnetfront::{Error, Offload, ProtocolError};

fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x5a; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f
}

/// Connects to a mock misbehaving as `mode`, runs `io` and returns its
/// error; then checks the interface is broken and disconnects.
fn fails_with(
    mode: Misbehaviour,
    io: impl FnOnce(&mut common::Front, &MockNetback) -> Result<(), Error>,
) -> Error {
    let ts = Toolstack::start("bad");
    let backend = MockNetback::start(
        &ts,
        MockConfig {
            misbehaviour: mode,
            ..MockConfig::default()
        },
    );
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();

    let err = io(&mut nic, &backend).expect_err("the bad response was accepted");

    assert!(
        nic.broken().is_some(),
        "a protocol error breaks the interface"
    );
    assert!(matches!(
        nic.send(&frame(60), &Offload::default()),
        Err(Error::Broken(_))
    ));
    assert!(matches!(
        nic.recv_batch(&mut Vec::new(), 8),
        Err(Error::Broken(_))
    ));
    nic.disconnect().unwrap();
    assert_eq!(ts.frontend_node("state").as_deref(), Some("6"));
    drop(backend);
    err
}

fn send_two(nic: &mut common::Front, _: &MockNetback) -> Result<(), Error> {
    nic.send(&frame(60), &Offload::default())?;
    nic.flush()?;
    nic.send(&frame(5000), &Offload::default())?;
    nic.flush()
}

fn receive_one(nic: &mut common::Front, backend: &MockNetback) -> Result<(), Error> {
    let gso = NetifExtraGso {
        size: 1448,
        type_: XEN_NETIF_GSO_TYPE_TCPV4,
        pad: 0,
        features: 0,
    };
    backend
        .deliver
        .send(Delivery {
            data: frame(3000),
            flags: 0,
            gso: Some(gso),
        })
        .unwrap();
    nic.recv(Some(common::TIMEOUT))?
        .map(|_| ())
        .ok_or(Error::Timeout("a frame".into()))
}

#[test]
fn a_well_behaved_mock_is_accepted() {
    let ts = Toolstack::start("good");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();

    send_two(&mut nic, &backend).unwrap();
    receive_one(&mut nic, &backend).unwrap();

    assert!(nic.broken().is_none());
}

#[test]
fn a_transmit_response_with_an_unknown_id_breaks_the_interface() {
    let err = fails_with(Misbehaviour::TxUnknownId, send_two);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::TxUnknownId { queue: 0, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_second_response_to_one_transmit_request_breaks_the_interface() {
    let err = fails_with(Misbehaviour::TxDuplicate, send_two);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::TxDuplicateResponse { queue: 0, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_transmit_status_that_is_no_netif_status_breaks_the_interface() {
    let err = fails_with(Misbehaviour::TxBadStatus, send_two);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::TxBadStatus { status: 7, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_null_response_for_a_data_slot_breaks_the_interface() {
    let err = fails_with(Misbehaviour::TxNullForData, send_two);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::TxUnexpectedNull { queue: 0 })
        ),
        "{err}"
    );
}

#[test]
fn transmit_responses_beyond_the_requests_pushed_break_the_interface() {
    let err = fails_with(Misbehaviour::TxOverrun, send_two);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::Ring {
                ring: "tx",
                source: RingError::ResponseProducerOverrun { .. },
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_receive_response_with_another_id_breaks_the_interface() {
    let err = fails_with(Misbehaviour::RxWrongId, receive_one);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::RxWrongId { queue: 0, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_receive_response_beyond_its_page_breaks_the_interface() {
    let err = fails_with(Misbehaviour::RxBeyondPage, receive_one);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::RxBeyondPage {
                offset: 4000,
                size: 200,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_negative_receive_status_breaks_the_interface() {
    let err = fails_with(Misbehaviour::RxNegativeStatus, receive_one);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::RxBadStatus { status: -1, .. })
        ),
        "{err}"
    );
}

#[test]
fn a_received_frame_that_never_ends_breaks_the_interface() {
    let err = fails_with(Misbehaviour::RxEndless, receive_one);

    assert!(
        matches!(err, Error::Protocol(ProtocolError::RxTooManySlots { .. })),
        "{err}"
    );
}

#[test]
fn a_gso_extra_of_size_zero_breaks_the_interface() {
    let err = fails_with(Misbehaviour::RxBadGso, receive_one);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::RxBadGso { size: 0, .. })
        ),
        "{err}"
    );
}
