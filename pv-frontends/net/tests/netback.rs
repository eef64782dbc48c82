//! The frontend against a mock of Linux's netback on the loopback
//! platform: the handshake's nodes, frames both ways (one slot, many
//! slots, GSO), back-pressure from a full ring, and both ends closing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{config, Delivery, MockConfig, MockNetback, Toolstack, MAC};
use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::netif::{
    NetifExtraGso, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, NETTXF_CSUM_BLANK,
    NETTXF_DATA_VALIDATED, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6,
};
use rnetfront::{Checksum, Error, Gso, GsoKind, Offload, TxFrame};

/// A frame of `len` bytes: broadcast, from `MAC`, a made-up ethertype,
/// and a pattern after the header.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    if len >= 14 {
        f[..6].copy_from_slice(&[0xff; 6]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
    }
    f
}

#[test]
fn the_handshake_writes_netfronts_nodes_and_connects() {
    let ts = Toolstack::start("handshake");
    let _backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());

    nic.connect().unwrap();

    assert_eq!(nic.mac().unwrap().to_string(), MAC);
    assert_eq!(nic.queues(), 1);
    assert!(!nic.split_event_channels());
    assert_eq!(ts.frontend_node("state").as_deref(), Some("4"));
    assert_eq!(ts.backend_node("state").as_deref(), Some("4"));
    for (node, value) in [
        ("request-rx-copy", "1"),
        ("feature-rx-notify", "1"),
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
    ] {
        assert_eq!(ts.frontend_node(node).as_deref(), Some(value), "{node}");
    }
    for node in ["tx-ring-ref", "rx-ring-ref", "event-channel"] {
        assert!(
            ts.frontend_node(node).unwrap().parse::<u32>().is_ok(),
            "{node}"
        );
    }
    assert_eq!(
        ts.frontend_node("multi-queue-num-queues"),
        None,
        "the backend offers no multi-queue"
    );
    assert_eq!(ts.frontend_node("event-channel-tx"), None);

    nic.disconnect().unwrap();

    assert_eq!(ts.frontend_node("state").as_deref(), Some("6"));
    assert_eq!(ts.backend_node("state").as_deref(), Some("6"));
}

#[test]
fn multi_queue_and_split_event_channels_use_queue_directories() {
    let ts = Toolstack::start("mq");
    let mock = MockConfig {
        split_event_channels: true,
        max_queues: Some(4),
        ..MockConfig::default()
    };
    let backend = MockNetback::start(&ts, mock);
    let mut cfg = config();
    cfg.max_queues = 2;
    let mut nic = ts.frontend(cfg);

    nic.connect().unwrap();

    assert_eq!((nic.queues(), nic.split_event_channels()), (2, true));
    assert_eq!(
        ts.frontend_node("multi-queue-num-queues").as_deref(),
        Some("2")
    );
    for q in 0..2 {
        for node in [
            "tx-ring-ref",
            "rx-ring-ref",
            "event-channel-tx",
            "event-channel-rx",
        ] {
            assert!(
                ts.frontend_node(&format!("queue-{q}/{node}")).is_some(),
                "queue-{q}/{node}"
            );
        }
    }
    assert_eq!(ts.frontend_node("tx-ring-ref"), None);
    // Frames of one flow stay on one queue; both queues carry frames.
    let data = frame(200, 1);
    nic.send(&data, &Offload::default()).unwrap();
    assert_eq!(backend.next_sent().data, data);
    backend
        .deliver
        .send(Delivery {
            data: frame(300, 2),
            ..Delivery::default()
        })
        .unwrap();
    assert_eq!(
        nic.recv(Some(common::TIMEOUT)).unwrap().unwrap().data,
        frame(300, 2)
    );
    nic.disconnect().unwrap();
}

#[test]
fn frames_are_sent_a_page_per_slot_with_their_offloads() {
    let ts = Toolstack::start("tx");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();

    let small = frame(60, 1);
    nic.send(
        &small,
        &Offload {
            checksum: Checksum::Validated,
            gso: None,
        },
    )
    .unwrap();
    let sent = backend.next_sent();
    assert_eq!(
        (sent.data, sent.slots, sent.flags),
        (small, 1, NETTXF_DATA_VALIDATED)
    );

    let jumbo = frame(9000, 2);
    nic.send(
        &jumbo,
        &Offload {
            checksum: Checksum::Partial,
            gso: None,
        },
    )
    .unwrap();
    let sent = backend.next_sent();
    assert_eq!(sent.data, jumbo);
    assert_eq!(sent.slots, 3);
    assert_eq!(
        sent.flags,
        NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED | NETTXF_MORE_DATA
    );

    let tso = frame(65535, 3);
    let gso = Gso {
        kind: GsoKind::TcpV6,
        size: 1440,
    };
    nic.send(
        &tso,
        &Offload {
            checksum: Checksum::Partial,
            gso: Some(gso),
        },
    )
    .unwrap();
    let sent = backend.next_sent();
    assert_eq!(sent.data, tso);
    assert_eq!(sent.slots, 16);
    assert_eq!(sent.gso, Some((XEN_NETIF_GSO_TYPE_TCPV6, 1440)));
    assert_ne!(sent.flags & NETTXF_EXTRA_INFO, 0);

    nic.flush().unwrap();
    let stats = nic.stats();
    assert_eq!(
        (stats.tx_packets, stats.tx_bytes, stats.tx_gso),
        (3, 60 + 9000 + 65535, 1)
    );
    assert_eq!(nic.tx_in_flight(), 0);
    nic.disconnect().unwrap();
}

#[test]
fn a_batch_is_sent_in_order() {
    let ts = Toolstack::start("batch");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();
    let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(60 + i * 200, i as u8)).collect();
    let batch: Vec<TxFrame<'_>> = frames
        .iter()
        .map(|f| TxFrame {
            data: f,
            offload: Offload::default(),
        })
        .collect();

    let sent = nic.send_batch(&batch).unwrap();

    assert_eq!(sent, 40);
    for expected in &frames {
        assert_eq!(&backend.next_sent().data, expected);
    }
    nic.flush().unwrap();
    assert_eq!(nic.stats().tx_packets, 40);
}

#[test]
fn frames_that_the_backend_cannot_take_are_refused_before_sending() {
    let ts = Toolstack::start("refuse");
    let _backend = MockNetback::start(
        &ts,
        MockConfig {
            gso: false,
            ipv6_csum: false,
            ..MockConfig::default()
        },
    );
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();
    let gso = Offload {
        checksum: Checksum::Partial,
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            size: 1448,
        }),
    };
    let mut ipv6 = frame(100, 0);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);

    assert!(matches!(
        nic.send(&frame(10, 0), &Offload::default()),
        Err(Error::FrameTooShort(10))
    ));
    assert!(matches!(
        nic.send(&frame(65536, 0), &Offload::default()),
        Err(Error::FrameTooLarge { .. })
    ));
    assert!(matches!(
        nic.send(&frame(3000, 0), &gso),
        Err(Error::Unsupported("feature-gso-tcpv4"))
    ));
    let partial = Offload {
        checksum: Checksum::Partial,
        gso: None,
    };
    assert!(matches!(
        nic.send(&ipv6, &partial),
        Err(Error::Unsupported("feature-ipv6-csum-offload"))
    ));
    let zero = Offload {
        gso: Some(Gso {
            kind: GsoKind::TcpV4,
            size: 0,
        }),
        ..gso
    };
    assert!(matches!(
        nic.send(&frame(3000, 0), &zero),
        Err(Error::InvalidOffload(_))
    ));

    assert!(
        nic.broken().is_none(),
        "a refused frame does not break the interface"
    );
    nic.send(&ipv6, &Offload::default()).unwrap();
    nic.disconnect().unwrap();
}

#[test]
fn frames_are_received_whole_with_their_offloads() {
    let ts = Toolstack::start("rx");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();

    let small = frame(64, 4);
    backend
        .deliver
        .send(Delivery {
            data: small.clone(),
            flags: NETRXF_DATA_VALIDATED,
            gso: None,
        })
        .unwrap();
    let got = nic.recv(Some(common::TIMEOUT)).unwrap().unwrap();
    assert_eq!(got.data, small);
    assert_eq!(
        got.offload,
        Offload {
            checksum: Checksum::Validated,
            gso: None
        }
    );

    let big = frame(20_000, 5);
    let gso = NetifExtraGso {
        size: 1448,
        type_: XEN_NETIF_GSO_TYPE_TCPV4,
        pad: 0,
        features: 0,
    };
    let flags = NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
    backend
        .deliver
        .send(Delivery {
            data: big.clone(),
            flags,
            gso: Some(gso),
        })
        .unwrap();
    let got = nic.recv(Some(common::TIMEOUT)).unwrap().unwrap();
    assert_eq!(got.data, big);
    assert_eq!(
        got.offload.gso,
        Some(Gso {
            kind: GsoKind::TcpV4,
            size: 1448
        })
    );
    assert_eq!(got.offload.checksum, Checksum::Partial);

    assert_eq!(nic.recv(Some(Duration::from_millis(50))).unwrap(), None);
    let stats = nic.stats();
    assert_eq!(
        (stats.rx_packets, stats.rx_bytes, stats.rx_gso),
        (2, 64 + 20_000, 1)
    );
    nic.disconnect().unwrap();
}

#[test]
fn the_rx_ring_is_refilled_as_frames_are_taken() {
    let ts = Toolstack::start("refill");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();

    // Three times the ring's 256 slots, in frames of 3 slots.
    let mut got = Vec::new();
    for i in 0..256u32 {
        backend
            .deliver
            .send(Delivery {
                data: frame(10_000, i as u8),
                ..Delivery::default()
            })
            .unwrap();
    }
    while got.len() < 256 {
        let before = got.len();
        nic.recv_batch(&mut got, 64).unwrap();
        if got.len() == before {
            nic.wait(common::TIMEOUT).unwrap();
        }
    }

    assert!(got
        .iter()
        .enumerate()
        .all(|(i, f)| f.data == frame(10_000, i as u8)));
    nic.disconnect().unwrap();
}

#[test]
fn a_full_ring_pushes_back_until_the_backend_answers() {
    let ts = Toolstack::start("full");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();
    backend.paused.store(true, Ordering::Relaxed);

    let mut queued = 0;
    let full = loop {
        match nic.try_send(&frame(100, queued as u8), &Offload::default()) {
            Ok(()) => queued += 1,
            Err(e) => break e,
        }
        assert!(queued <= 256, "more frames queued than the ring holds");
    };
    assert!(matches!(full, Error::RingFull), "{full}");
    assert!(!full.is_fatal());
    assert_eq!(queued, 256);
    assert_eq!(nic.tx_in_flight(), 256);
    let batch = [TxFrame {
        data: &frame(100, 0),
        offload: Offload::default(),
    }];
    assert_eq!(nic.send_batch(&batch).unwrap(), 0);

    backend.paused.store(false, Ordering::Relaxed);
    nic.send(&frame(100, 99), &Offload::default()).unwrap();
    nic.flush().unwrap();

    assert_eq!(nic.stats().tx_packets, 257);
    assert!(nic.stats().tx_ring_full >= 2);
    let mut seen = 0;
    while backend
        .sent
        .recv_timeout(Duration::from_millis(200))
        .is_ok()
    {
        seen += 1;
    }
    assert_eq!(seen, 257);
    nic.disconnect().unwrap();
}

#[test]
fn a_backend_that_closes_disconnects_the_interface_and_a_reconnect_works() {
    let ts = Toolstack::start("close");
    let backend = MockNetback::start(&ts, MockConfig::default());
    let mut nic = ts.frontend(config());
    nic.connect().unwrap();

    drop(backend);
    ts.set_backend_node("state", "5");
    let err = nic.recv(Some(common::TIMEOUT)).unwrap_err();

    assert!(matches!(err, Error::BackendClosed(_)), "{err}");
    assert!(!nic.is_connected());
    assert!(matches!(
        nic.send(&frame(60, 0), &Offload::default()),
        Err(Error::NotConnected)
    ));
    assert_eq!(ts.frontend_node("state").as_deref(), Some("6"));

    // The toolstack brings the backend back; the frontend connects again.
    ts.set_backend_node("state", "1");
    let backend = MockNetback::start(&ts, MockConfig::default());
    nic.connect().unwrap();
    nic.send(&frame(60, 7), &Offload::default()).unwrap();
    assert_eq!(backend.next_sent().data, frame(60, 7));
    nic.disconnect().unwrap();
}

#[test]
fn a_missing_or_bad_mac_is_refused() {
    let ts = Toolstack::start("mac");
    let _backend = MockNetback::start(&ts, MockConfig::default());
    ts.xs0
        .write(
            Transaction::NONE,
            &format!("{}/mac", ts.fe_path),
            b"00:16:3e",
        )
        .unwrap();
    let mut nic = ts.frontend(config());

    let err = nic.connect().unwrap_err();

    assert!(
        matches!(&err, Error::BadNode { path, .. } if path.ends_with("/mac")),
        "{err}"
    );
}
