//! rnetback end to end on the loopback platform and a real TAP: a
//! hypervisor thread, the backend as domain 0, the test as the toolstack,
//! as a small netfront in domain 1 (see `common`), and as the host on the
//! other side of the TAP (a packet socket with virtio-net headers).
//!
//! These tests create TAP interfaces: they need root (CAP_NET_ADMIN and
//! CAP_NET_RAW) and /dev/net/tun, and fail, rather than skip, without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{NetFront, Rig, GUEST_MAC, TIMEOUT};
use rnetback::TapDelivery;
use hypercall_abi::xen::netif::{
    NetifExtraFlags, NetifExtraGso, NetifExtraInfo, NetifExtraType, NetifTxRequest,
    NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED,
    NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO,
    XEN_NETIF_GSO_TYPE_TCPV4,
};
use rxen_tap::{
    PacketSocket, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN,
};
use zerocopy::{FromBytes, IntoBytes};

const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

/// An Ethernet frame of a local experimental EtherType, `len` payload bytes.
fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, len: usize, seed: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// An Ethernet + IPv4 + TCP frame with `payload` bytes.
fn tcp4_frame(dst: [u8; 6], src: [u8; 6], payload: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = ((20 + 20 + payload) as u16).to_be_bytes();
    f.extend_from_slice(&[
        0x45, 0, total[0], total[1], 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 1, 198, 51, 100, 2,
    ]);
    f.extend_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.extend((0..payload).map(|i| (i % 251) as u8));
    f
}

fn ethertype(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[12], frame[13]])
}

/// Waits for a frame on the host side that `wanted` accepts.
fn host_recv(host: &PacketSocket, wanted: impl Fn(&[u8]) -> bool) -> (VirtioNetHdr, Vec<u8>) {
    let mut buf = vec![0u8; 70000];
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let n = host
            .recv(&mut buf, left)
            .unwrap()
            .expect("no frame reached the host side of the TAP");
        let frame = &buf[VNET_HDR_LEN..n];
        if frame.len() >= 14 && wanted(frame) {
            return (
                VirtioNetHdr::read_from_bytes(&buf[..VNET_HDR_LEN]).unwrap(),
                frame.to_vec(),
            );
        }
    }
}

fn host_send(host: &PacketSocket, hdr: VirtioNetHdr, frame: &[u8]) {
    let mut out = hdr.as_bytes().to_vec();
    out.extend_from_slice(frame);
    assert_eq!(host.send(&out).unwrap(), out.len());
}

fn extra_slot(extra: NetifExtraInfo) -> NetifTxRequest {
    let mut slot = NetifTxRequest::default();
    slot.as_mut_bytes()[..8].copy_from_slice(extra.as_bytes());
    slot
}

#[test]
fn handshake_then_packets_cross_both_ways_across_several_slots() {
    let rig = Rig::start(1);
    let mut front = NetFront::connect(&rig, 1, true, 64);
    let host = rig.host();

    for (node, value) in [
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-split-event-channels", "1"),
        ("multi-queue-max-queues", "1"),
        ("hotplug-status", "connected"),
        ("mac", "00:16:3e:12:34:56"),
    ] {
        assert_eq!(rig.backend_node(node).as_deref(), Some(value), "{node}");
    }

    // Guest to host: one slot, then three (scatter-gather).
    let small = eth_frame(HOST_MAC, GUEST_MAC, 0x88b5, 86, 1);
    let (slots, _pages) = front.tx_slots(&small, &[small.len()], 64, 0, 1);
    front.push_tx(0, &slots);
    let big = eth_frame(HOST_MAC, GUEST_MAC, 0x88b6, 1486, 2);
    let (sg, _sg_pages) = front.tx_slots(&big, &[100, 1000, 400], 3996, 0, 2);
    front.push_tx(0, &sg);

    let responses = front.tx_responses(0, 4, TIMEOUT);
    let (hdr1, got1) = host_recv(&host, |f| ethertype(f) == 0x88b5);
    let (_, got2) = host_recv(&host, |f| ethertype(f) == 0x88b6);

    assert_eq!(
        responses
            .iter()
            .map(|r| (r.id, r.status))
            .collect::<Vec<_>>(),
        [(1, 0), (2, 0), (3, 0), (4, 0)]
    );
    assert_eq!(hdr1, VirtioNetHdr::default());
    assert_eq!(got1, small);
    assert_eq!(got2, big);

    // Host to guest.
    let down = eth_frame(GUEST_MAC, HOST_MAC, 0x88b7, 1000, 3);
    host_send(&host, VirtioNetHdr::default(), &down);
    let packet = front
        .recv(0, TIMEOUT, |d| ethertype(d) == 0x88b7)
        .expect("the frame never reached the guest");

    assert_eq!(packet.data, down);
    assert_eq!(packet.responses.len(), 1);
    assert_eq!(
        (packet.responses[0].offset, packet.responses[0].flags),
        (0, 0)
    );
    let stats = rig.stats.snapshot();
    assert_eq!(
        (stats.tx_packets, stats.tx_errors, stats.fatal_errors),
        (2, 0, 0)
    );
    assert!(stats.rx_packets >= 1);
    rig.stop();
}

#[test]
fn gso_and_checksum_offloads_map_to_and_from_virtio_headers() {
    let rig = Rig::start(1);
    let mut front = NetFront::connect(&rig, 1, false, 64);
    let host = rig.host();

    // Guest to host: a 6054-byte TCPv4 GSO packet with a blank checksum,
    // in three data slots with the GSO extra info after the first.
    let frame = tcp4_frame(HOST_MAC, GUEST_MAC, 6000);
    let (mut slots, _pages) = front.tx_slots(
        &frame,
        &[54, 4096, 1904],
        0,
        NETTXF_CSUM_BLANK | NETTXF_EXTRA_INFO,
        10,
    );
    let gso = NetifExtraGso {
        size: 1448,
        type_: XEN_NETIF_GSO_TYPE_TCPV4,
        pad: 0,
        features: 0,
    };
    slots.insert(
        1,
        extra_slot(NetifExtraInfo::from_gso(gso, NetifExtraFlags::empty())),
    );
    front.push_tx(0, &slots);

    let responses = front.tx_responses(0, 4, TIMEOUT);
    let (hdr, got) = host_recv(&host, |f| ethertype(f) == 0x0800 && f[6..12] == GUEST_MAC);

    assert_eq!(
        responses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [
            NETIF_RSP_OKAY,
            NETIF_RSP_NULL,
            NETIF_RSP_OKAY,
            NETIF_RSP_OKAY
        ]
    );
    assert_eq!(got, frame);
    assert_eq!(hdr.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(hdr.gso_size, 1448);
    assert!(hdr.needs_csum());
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));

    // Host to guest: a TCPv4 GSO frame of 5054 bytes with a partial
    // checksum arrives in two pages with the GSO extra info between.
    let down = tcp4_frame(GUEST_MAC, HOST_MAC, 5000);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
    };
    host_send(&host, hdr, &down);
    let packet = front
        .recv(0, TIMEOUT, |d| ethertype(d) == 0x0800)
        .expect("the GSO frame never reached the guest");

    assert_eq!(packet.data, down);
    assert_eq!(packet.responses.len(), 3);
    let first = packet.responses[0];
    assert_eq!(
        first.flags,
        NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO | NETRXF_MORE_DATA
    );
    assert_eq!(first.status, 4096);
    let extra: NetifExtraInfo = zerocopy::transmute!(packet.responses[1]);
    assert_eq!(extra.extra_type(), Ok(NetifExtraType::Gso));
    assert_eq!(
        (extra.gso().size, extra.gso().type_),
        (1000, XEN_NETIF_GSO_TYPE_TCPV4)
    );
    assert_eq!(
        (packet.responses[2].status, packet.responses[2].flags),
        (958, 0)
    );

    // A partial checksum without GSO: csum_blank and data_validated.
    let small = tcp4_frame(GUEST_MAC, HOST_MAC, 100);
    host_send(
        &host,
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        },
        &small,
    );
    let packet = front
        .recv(0, TIMEOUT, |d| ethertype(d) == 0x0800)
        .expect("the small frame never reached the guest");
    assert_eq!(packet.data, small);
    assert_eq!(
        packet.responses[0].flags,
        NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED
    );
    rig.stop();
}

#[test]
fn malformed_packets_get_errors_and_a_malicious_frontend_is_disabled_until_it_reconnects() {
    let rig = Rig::start(1);
    let mut front = NetFront::connect(&rig, 1, true, 16);
    let host = rig.host();
    let frame = eth_frame(HOST_MAC, GUEST_MAC, 0x88b5, 50, 4);
    let (good, _pages) = front.tx_slots(&frame, &[frame.len()], 0, 0, 1);

    // Recoverable: too short for an Ethernet header; a fragment larger than the packet.
    let short = NetifTxRequest {
        size: 10,
        id: 2,
        ..good[0]
    };
    let oversized = [
        NetifTxRequest {
            size: 100,
            id: 3,
            flags: 1 << 2,
            ..good[0]
        },
        NetifTxRequest {
            size: 200,
            id: 4,
            flags: 0,
            ..good[0]
        },
    ];
    front.push_tx(0, &[short]);
    front.push_tx(0, &oversized);
    front.push_tx(0, &good);
    let responses = front.tx_responses(0, 4, TIMEOUT);

    assert_eq!(
        responses
            .iter()
            .map(|r| (r.id, r.status))
            .collect::<Vec<_>>(),
        [
            (2, NETIF_RSP_ERROR),
            (3, NETIF_RSP_ERROR),
            (4, NETIF_RSP_ERROR),
            (1, NETIF_RSP_OKAY)
        ]
    );
    assert_eq!(host_recv(&host, |f| ethertype(f) == 0x88b5).1, frame);

    // Fatal: a slot crossing its page. No response, the interface stops
    // serving, the device stays Connected.
    front.push_tx(
        0,
        &[NetifTxRequest {
            offset: 4000,
            size: 200,
            id: 5,
            ..good[0]
        }],
    );
    assert!(front
        .tx_responses(0, 1, Duration::from_millis(500))
        .is_empty());
    front.push_tx(0, &good);
    assert!(
        front
            .tx_responses(0, 1, Duration::from_millis(500))
            .is_empty(),
        "a disabled interface answers nothing"
    );
    let stats = rig.stats.snapshot();
    assert_eq!(
        (stats.tx_errors, stats.fatal_errors, stats.tx_packets),
        (2, 1, 1)
    );
    assert_eq!(rig.backend_node("state").as_deref(), Some("4"));

    // Netfront reloaded: Closing, Closed, Initialising, then a new connection.
    front.set_state("5");
    rig.wait_backend_state("5");
    front.set_state("6");
    rig.wait_backend_state("6");
    front.set_state("1");
    rig.wait_backend_state("2");
    drop(front);
    let mut front = NetFront::connect(&rig, 1, true, 16);
    let again = eth_frame(HOST_MAC, GUEST_MAC, 0x88b6, 60, 5);
    let (slots, _pages) = front.tx_slots(&again, &[again.len()], 0, 0, 7);
    front.push_tx(0, &slots);

    assert_eq!(front.tx_responses(0, 1, TIMEOUT)[0].status, NETIF_RSP_OKAY);
    assert_eq!(host_recv(&host, |f| ethertype(f) == 0x88b6).1, again);
    rig.stop();
}

#[test]
fn multi_queue_with_split_event_channels_serves_every_queue() {
    let rig = Rig::start(2);
    let mut front = NetFront::connect(&rig, 2, true, 16);
    let host = rig.host();

    for q in 0..2 {
        let frame = eth_frame(HOST_MAC, GUEST_MAC, 0x88b5 + q as u16, 70, q as u8);
        let (slots, _pages) = front.tx_slots(&frame, &[frame.len()], 0, 0, 1);
        front.push_tx(q, &slots);

        assert_eq!(
            front.tx_responses(q, 1, TIMEOUT)[0].status,
            NETIF_RSP_OKAY,
            "queue {q}"
        );
        assert_eq!(
            host_recv(&host, |f| ethertype(f) == 0x88b5 + q as u16).1,
            frame
        );
    }
    // The host's frames reach the guest on whichever queue the TAP picks.
    let down = eth_frame(GUEST_MAC, HOST_MAC, 0x88b8, 200, 9);
    host_send(&host, VirtioNetHdr::default(), &down);
    let got = (0..40).find_map(|i| {
        front.recv(i % 2, Duration::from_millis(250), |d| {
            ethertype(d) == 0x88b8
        })
    });
    assert_eq!(got.expect("the frame reached no queue").data, down);
    rig.stop();
}

/// With `TapDelivery::Split`, the guest's packets with data go through a
/// second TAP queue per queue (NAPI threads), its pure acknowledgements
/// and everything for the guest through the first.
#[test]
fn bulk_queues_carry_the_guests_data_and_frames_for_it_stay_on_the_first_queues() {
    let rig = Rig::start_with(2, |cfg| cfg.tap_delivery = TapDelivery::Split);
    let mut front = NetFront::connect(&rig, 2, true, 64);
    let host = rig.host();

    for q in 0..2 {
        // tcp4_frame's flags are ACK|PSH: without payload, a pure ACK.
        for payload in [0, 700] {
            let mut frame = tcp4_frame(HOST_MAC, GUEST_MAC, payload);
            frame[14 + 20 + 1] = q as u8; // source port, per queue
            let (slots, _pages) = front.tx_slots(&frame, &[frame.len()], 0, 0, 1);
            front.push_tx(q, &slots);
            assert_eq!(front.tx_responses(q, 1, TIMEOUT)[0].status, NETIF_RSP_OKAY);
            let (_, got) = host_recv(&host, |f| f.len() > 35 && f[14 + 9] == 6 && f[14 + 20 + 1] == q as u8 && f.len() == frame.len());
            assert_eq!(got, frame, "queue {q}, {payload} bytes");
        }
    }
    // Two NAPI threads: one per bulk queue.
    assert_eq!(rxen_tap::napi_threads(&rig.ifname).unwrap(), 2);
    // Frames of many flows for the guest all reach it: none is steered to
    // a bulk queue, which nothing reads.
    for flow in 0..16u16 {
        let mut down = tcp4_frame(GUEST_MAC, HOST_MAC, 100);
        down[14 + 20..14 + 22].copy_from_slice(&(2000 + flow).to_be_bytes());
        host_send(&host, VirtioNetHdr::default(), &down);
        let got = (0..40).find_map(|i| {
            front.recv(i % 2, Duration::from_millis(250), |d| d.len() > 36 && d[14 + 20..14 + 22] == (2000 + flow).to_be_bytes())
        });
        assert_eq!(got.unwrap_or_else(|| panic!("flow {flow} reached no queue")).data, down);
    }
    rig.stop();
}
