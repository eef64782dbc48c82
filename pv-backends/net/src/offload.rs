//! Checksum and segmentation offload metadata, between the netif flags
//! and GSO extra info of the rings and the [`VirtioNetHdr`] of the TAP.
//!
//! netif carries less than virtio: a transmit request says only that the
//! checksum is blank (`NETTXF_csum_blank`, Linux's `CHECKSUM_PARTIAL`) or
//! validated (`NETTXF_data_validated`), not where it is. Like Linux's
//! netback (`skb_checksum_setup`), the backend finds the TCP or UDP header
//! behind an IPv4 or IPv6 header itself ([`parse_l4`]) and fills in
//! `csum_start`/`csum_offset`; a GSO packet sent without a blank checksum
//! (buggy frontends do) gets its pseudo-header checksum recomputed. The
//! other way, a frame the TAP hands out with `VIRTIO_NET_HDR_F_NEEDS_CSUM`
//! goes to the frontend as `NETRXF_csum_blank` only where netfront can find
//! the checksum the same way; any other partial checksum is completed here.

use hypercall_abi::xen::netif::{
    NetifExtraGso, NetifGsoType, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
};
use rxen_tap::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// `ETH_HLEN`.
pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers walked before giving up (a bound on guest data).
const MAX_IPV6_EXTENSIONS: usize = 8;

/// Why offload metadata could not be set up; the frame is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// A blank checksum or GSO on a frame whose TCP or UDP header was not
    /// found (not IPv4/IPv6, a fragment, truncated headers, another protocol).
    #[error("no TCP or UDP header found for a partial checksum or segmentation offload")]
    NoTransportHeader,
    /// A GSO type that does not match the frame (TCPv4 on IPv6, or UDP).
    #[error("GSO type {0} does not match the frame's headers")]
    GsoMismatch(u8),
    /// The TAP handed out a GSO frame of a type the frontend cannot take.
    #[error("GSO type {0} cannot be passed to the frontend")]
    GsoUnsupported(u8),
}

/// Where a frame's transport header and its checksum are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Info {
    /// Offset of the IP header.
    pub l3: usize,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// Offset of the TCP or UDP header (`csum_start`).
    pub l4: usize,
    /// Offset of the checksum within it (`csum_offset`): 16 for TCP, 6 for UDP.
    pub csum_offset: usize,
    /// Length of the TCP or UDP header.
    pub l4_len: usize,
}

impl L4Info {
    /// Offset of the first payload byte (`hdr_len` of a GSO frame).
    pub fn header_len(&self) -> usize {
        self.l4 + self.l4_len
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Finds the TCP or UDP header of an Ethernet frame carrying unfragmented
/// IPv4 or IPv6, as Linux's `skb_checksum_setup` does; `None` otherwise.
pub fn parse_l4(frame: &[u8]) -> Option<L4Info> {
    let l3 = ETH_HLEN;
    let (ipv6, protocol, l4) = match be16(frame, 12)? {
        ETH_P_IP => {
            let ver_ihl = *frame.get(l3)?;
            let ihl = usize::from(ver_ihl & 0xf) * 4;
            if ver_ihl >> 4 != 4 || ihl < 20 {
                return None;
            }
            // More fragments, or a non-zero fragment offset.
            if be16(frame, l3 + 6)? & 0x3fff != 0 {
                return None;
            }
            (false, *frame.get(l3 + 9)?, l3 + ihl)
        }
        ETH_P_IPV6 => {
            if *frame.get(l3)? >> 4 != 6 {
                return None;
            }
            let mut next = *frame.get(l3 + 6)?;
            let mut at = l3 + 40;
            let mut walked = 0;
            loop {
                match next {
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => {
                        let len = (usize::from(*frame.get(at + 1)?) + 1) * 8;
                        next = *frame.get(at)?;
                        at += len;
                    }
                    // Authentication header.
                    51 => {
                        let len = (usize::from(*frame.get(at + 1)?) + 2) * 4;
                        next = *frame.get(at)?;
                        at += len;
                    }
                    // A fragment: no checksum offload (as Linux).
                    _ => break,
                }
                walked += 1;
                if walked > MAX_IPV6_EXTENSIONS {
                    return None;
                }
            }
            (true, next, at)
        }
        _ => return None,
    };
    let (csum_offset, l4_len) = match protocol {
        IPPROTO_TCP => {
            let doff = usize::from(*frame.get(l4 + 12)? >> 4) * 4;
            if doff < 20 {
                return None;
            }
            (16, doff)
        }
        IPPROTO_UDP => (6, 8),
        _ => return None,
    };
    if l4 + l4_len > frame.len() {
        return None;
    }
    Some(L4Info {
        l3,
        ipv6,
        protocol,
        l4,
        csum_offset,
        l4_len,
    })
}

/// Whether `frame` is a TCP segment that only acknowledges: the ACK flag,
/// no SYN, FIN, RST or URG, and no payload (by the IP header's length, so
/// that Ethernet padding does not count), and no GSO.
pub fn is_pure_tcp_ack(frame: &[u8], offload: &TxOffload) -> bool {
    const FIN_SYN_RST_URG: u8 = 0x01 | 0x02 | 0x04 | 0x20;
    const ACK: u8 = 0x10;
    if offload.gso.is_some() {
        return false;
    }
    let Some(info) = parse_l4(frame).filter(|i| i.protocol == IPPROTO_TCP) else {
        return false;
    };
    let ip_end = if info.ipv6 {
        be16(frame, info.l3 + 4).map(|len| info.l3 + 40 + usize::from(len))
    } else {
        be16(frame, info.l3 + 2).map(|len| info.l3 + usize::from(len))
    };
    let flags = frame.get(info.l4 + 13).copied().unwrap_or(0);
    ip_end == Some(info.header_len()) && flags & ACK != 0 && flags & FIN_SYN_RST_URG == 0
}

/// Adds `data` as big-endian 16-bit words to a ones' complement sum.
fn sum_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Writes the pseudo-header sum (not complemented, what a partial checksum
/// holds) into the checksum field of the transport header `info` found.
pub fn set_pseudo_header_checksum(frame: &mut [u8], info: &L4Info) {
    let l4_len = frame.len() - info.l4;
    let mut sum = 0u64;
    if info.ipv6 {
        sum = sum_words(sum, &frame[info.l3 + 8..info.l3 + 40]);
        sum += (l4_len as u64 >> 16) + (l4_len as u64 & 0xffff);
    } else {
        sum = sum_words(sum, &frame[info.l3 + 12..info.l3 + 20]);
        sum += l4_len as u64 & 0xffff;
    }
    sum += u64::from(info.protocol);
    let at = info.l4 + info.csum_offset;
    frame[at..at + 2].copy_from_slice(&fold(sum).to_be_bytes());
}

/// Completes a partial checksum: the ones' complement sum of
/// `frame[start..]` (whose checksum field holds the pseudo-header sum),
/// complemented, stored at `start + offset`; as Linux's
/// `skb_checksum_help`, a result of 0 is stored as 0xffff. Returns false,
/// touching nothing, if the field lies outside the frame.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start.saturating_add(offset);
    if start > frame.len() || at.saturating_add(2) > frame.len() {
        return false;
    }
    let sum = !fold(sum_words(0, &frame[start..]));
    let sum = if sum == 0 { 0xffff } else { sum };
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// What a transmit request says about its packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// `NETTXF_csum_blank`.
    pub csum_blank: bool,
    /// `NETTXF_data_validated`.
    pub data_validated: bool,
    /// The GSO extra info, checked (non-zero size, TCPv4 or TCPv6).
    pub gso: Option<NetifExtraGso>,
}

/// The [`VirtioNetHdr`] for a packet from the frontend, fixing the frame's
/// pseudo-header checksum where Linux's netback would.
pub fn tx_vnet_hdr(frame: &mut [u8], offload: &TxOffload) -> Result<VirtioNetHdr, OffloadError> {
    let mut hdr = VirtioNetHdr::default();
    if !offload.csum_blank && offload.gso.is_none() {
        if offload.data_validated {
            hdr.flags = VIRTIO_NET_HDR_F_DATA_VALID;
        }
        return Ok(hdr);
    }
    let info = parse_l4(frame).ok_or(OffloadError::NoTransportHeader)?;
    hdr.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr.csum_start = info.l4 as u16;
    hdr.csum_offset = info.csum_offset as u16;
    if let Some(gso) = offload.gso {
        let (gso_type, ipv6) = match NetifGsoType::try_from(gso.type_) {
            Ok(NetifGsoType::TcpV4) => (VIRTIO_NET_HDR_GSO_TCPV4, false),
            Ok(NetifGsoType::TcpV6) => (VIRTIO_NET_HDR_GSO_TCPV6, true),
            _ => return Err(OffloadError::GsoMismatch(gso.type_)),
        };
        if info.ipv6 != ipv6 || info.protocol != IPPROTO_TCP {
            return Err(OffloadError::GsoMismatch(gso.type_));
        }
        hdr.gso_type = gso_type;
        hdr.gso_size = gso.size;
        hdr.hdr_len = info.header_len() as u16;
        if !offload.csum_blank {
            // A GSO packet must be CHECKSUM_PARTIAL: netback's
            // `rx_gso_checksum_fixup`.
            set_pseudo_header_checksum(frame, &info);
        }
    }
    Ok(hdr)
}

/// What the frontend announced it can receive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxFeatures {
    /// `feature-sg`: packets across several slots.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_tcpv6: bool,
    /// Not `feature-no-csum-offload`: IPv4 partial checksums.
    pub ip_csum: bool,
    /// `feature-ipv6-csum-offload`.
    pub ipv6_csum: bool,
}

impl RxFeatures {
    /// The offloads the TAP may leave to us for this frontend.
    pub fn tap_offload(&self) -> rxen_tap::Offload {
        use rxen_tap::Offload;
        let mut offload = Offload::empty();
        if self.ip_csum || self.ipv6_csum {
            // Partial checksums the frontend cannot take are completed
            // here ([`rx_offload`]).
            offload |= Offload::CSUM;
            if self.sg && self.gso_tcpv4 && self.ip_csum {
                offload |= Offload::TSO4;
            }
            if self.sg && self.gso_tcpv6 && self.ipv6_csum {
                offload |= Offload::TSO6;
            }
        }
        offload
    }
}

/// What a receive response says about a frame from the TAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxOffload {
    /// `NETRXF_*` for the first slot (checksum flags only).
    pub flags: u16,
    /// The GSO extra info to send after the first slot.
    pub gso: Option<NetifExtraGso>,
}

/// The netif metadata for a frame the TAP handed out with `hdr`,
/// completing in `frame` any partial checksum the frontend cannot.
pub fn rx_offload(
    hdr: &VirtioNetHdr,
    frame: &mut [u8],
    features: &RxFeatures,
) -> Result<RxOffload, OffloadError> {
    let mut out = RxOffload::default();
    let gso_kind = hdr.gso_kind();
    if gso_kind != VIRTIO_NET_HDR_GSO_NONE {
        let type_ = match gso_kind {
            VIRTIO_NET_HDR_GSO_TCPV4 if features.sg && features.gso_tcpv4 => {
                XEN_NETIF_GSO_TYPE_TCPV4
            }
            VIRTIO_NET_HDR_GSO_TCPV6 if features.sg && features.gso_tcpv6 => {
                XEN_NETIF_GSO_TYPE_TCPV6
            }
            other => return Err(OffloadError::GsoUnsupported(other)),
        };
        let info = parse_l4(frame).ok_or(OffloadError::NoTransportHeader)?;
        if info.protocol != IPPROTO_TCP || info.ipv6 != (type_ == XEN_NETIF_GSO_TYPE_TCPV6) {
            return Err(OffloadError::GsoMismatch(gso_kind));
        }
        if !hdr.needs_csum() {
            set_pseudo_header_checksum(frame, &info);
        }
        out.gso = Some(NetifExtraGso {
            size: hdr.gso_size,
            type_,
            pad: 0,
            features: 0,
        });
        out.flags = NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
        return Ok(out);
    }
    if hdr.needs_csum() {
        let start = usize::from(hdr.csum_start);
        let offset = usize::from(hdr.csum_offset);
        let passable = parse_l4(frame).is_some_and(|info| {
            info.l4 == start
                && info.csum_offset == offset
                && if info.ipv6 {
                    features.ipv6_csum
                } else {
                    features.ip_csum
                }
        });
        if passable {
            out.flags = NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED;
        } else if complete_checksum(frame, start, offset) {
            out.flags = NETRXF_DATA_VALIDATED;
        } else {
            return Err(OffloadError::NoTransportHeader);
        }
    } else if hdr.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
        out.flags = NETRXF_DATA_VALIDATED;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload` bytes, checksum zero.
    pub(crate) fn tcp4_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = (20 + 20 + payload) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            total.to_be_bytes()[0],
            total.to_be_bytes()[1],
            0,
            1,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[
            0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
        ]);
        f.extend((0..payload).map(|i| i as u8));
        f
    }

    /// An Ethernet + IPv6 (with a hop-by-hop header) + UDP frame.
    pub(crate) fn udp6_frame(payload: usize) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        let plen = (8 + 8 + payload) as u16;
        f.extend_from_slice(&[
            0x60,
            0,
            0,
            0,
            plen.to_be_bytes()[0],
            plen.to_be_bytes()[1],
            0,
            64,
        ]);
        f.extend((0..32).map(|i| i as u8));
        f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        let ulen = (8 + payload) as u16;
        f.extend_from_slice(&[
            0x13,
            0x88,
            0x13,
            0x89,
            ulen.to_be_bytes()[0],
            ulen.to_be_bytes()[1],
            0,
            0,
        ]);
        f.extend((0..payload).map(|i| (i * 7) as u8));
        f
    }

    /// Verifies a full transport checksum the way a receiver does.
    pub(crate) fn checksum_ok(frame: &[u8]) -> bool {
        let info = parse_l4(frame).unwrap();
        let mut copy = frame.to_vec();
        let at = info.l4 + info.csum_offset;
        let stored = [copy[at], copy[at + 1]];
        set_pseudo_header_checksum(&mut copy, &info);
        complete_checksum(&mut copy, info.l4, info.csum_offset);
        copy[at..at + 2] == stored
    }

    #[test]
    fn pure_tcp_acks_are_told_from_segments_with_data_or_other_flags() {
        let plain = TxOffload::default();
        // tcp4_frame's flags are ACK|PSH.
        let mut ack = tcp4_frame(0);
        assert!(is_pure_tcp_ack(&ack, &plain));
        // Ethernet padding is not payload.
        ack.extend([0u8; 6]);
        assert!(is_pure_tcp_ack(&ack, &plain));
        assert!(!is_pure_tcp_ack(&tcp4_frame(1), &plain));
        let gso = TxOffload {
            gso: Some(NetifExtraGso { size: 1448, type_: XEN_NETIF_GSO_TYPE_TCPV4, pad: 0, features: 0 }),
            ..plain
        };
        assert!(!is_pure_tcp_ack(&tcp4_frame(0), &gso));
        for (flag, name) in [(0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x20, "URG")] {
            let mut f = tcp4_frame(0);
            f[ETH_HLEN + 20 + 13] |= flag;
            assert!(!is_pure_tcp_ack(&f, &plain), "{name}");
        }
        let mut no_ack = tcp4_frame(0);
        no_ack[ETH_HLEN + 20 + 13] = 0x08;
        assert!(!is_pure_tcp_ack(&no_ack, &plain));
        assert!(!is_pure_tcp_ack(&udp6_frame(0), &plain));
        assert!(!is_pure_tcp_ack(&ack[..30], &plain));
    }

    #[test]
    fn finds_tcp_over_ipv4_and_udp_over_ipv6_extensions() {
        let tcp = parse_l4(&tcp4_frame(10)).unwrap();
        assert_eq!(
            (tcp.l4, tcp.csum_offset, tcp.header_len(), tcp.ipv6),
            (34, 16, 54, false)
        );
        let udp = parse_l4(&udp6_frame(10)).unwrap();
        assert_eq!(
            (udp.l4, udp.csum_offset, udp.protocol, udp.ipv6),
            (62, 6, 17, true)
        );

        let mut fragment = tcp4_frame(10);
        fragment[14 + 6] = 0x20; // more fragments
        assert_eq!(parse_l4(&fragment), None);
        assert_eq!(
            parse_l4(&tcp4_frame(10)[..40]),
            None,
            "truncated TCP header"
        );
        let mut arp = tcp4_frame(0);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse_l4(&arp), None);
    }

    #[test]
    fn blank_checksums_become_needs_csum_and_complete_correctly() {
        let mut frame = tcp4_frame(100);
        let info = parse_l4(&frame).unwrap();
        set_pseudo_header_checksum(&mut frame, &info);
        let offload = TxOffload {
            csum_blank: true,
            ..Default::default()
        };

        let hdr = tx_vnet_hdr(&mut frame, &offload).unwrap();

        assert_eq!(hdr.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(
            (hdr.csum_start, hdr.csum_offset, hdr.gso_type),
            (34, 16, VIRTIO_NET_HDR_GSO_NONE)
        );
        assert!(complete_checksum(&mut frame, 34, 16));
        assert!(checksum_ok(&frame));
    }

    #[test]
    fn gso_extra_info_maps_to_virtio_gso_and_back() {
        let mut frame = tcp4_frame(3000);
        let gso = NetifExtraGso {
            size: 1448,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };
        let offload = TxOffload {
            csum_blank: false,
            data_validated: true,
            gso: Some(gso),
        };

        let hdr = tx_vnet_hdr(&mut frame, &offload).unwrap();

        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!((hdr.gso_size, hdr.hdr_len), (1448, 54));
        assert!(hdr.needs_csum(), "a GSO frame is always partial");
        let features = RxFeatures {
            sg: true,
            gso_tcpv4: true,
            gso_tcpv6: true,
            ip_csum: true,
            ipv6_csum: true,
        };
        let back = rx_offload(&hdr, &mut frame, &features).unwrap();
        assert_eq!(back.gso, Some(gso));
        assert_eq!(back.flags, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);

        let v6 = NetifExtraGso {
            type_: XEN_NETIF_GSO_TYPE_TCPV6,
            ..gso
        };
        let mismatch = TxOffload {
            gso: Some(v6),
            ..offload
        };
        assert_eq!(
            tx_vnet_hdr(&mut frame, &mismatch),
            Err(OffloadError::GsoMismatch(2))
        );
        let no_gso = RxFeatures {
            gso_tcpv4: false,
            ..features
        };
        assert_eq!(
            rx_offload(&hdr, &mut frame, &no_gso),
            Err(OffloadError::GsoUnsupported(1))
        );
    }

    #[test]
    fn partial_checksums_the_frontend_cannot_take_are_completed() {
        let mut frame = udp6_frame(33);
        let info = parse_l4(&frame).unwrap();
        set_pseudo_header_checksum(&mut frame, &info);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 62,
            csum_offset: 6,
            ..Default::default()
        };
        let no_v6 = RxFeatures {
            sg: true,
            ip_csum: true,
            ..Default::default()
        };
        let v6 = RxFeatures {
            ipv6_csum: true,
            ..no_v6
        };

        let passed = rx_offload(&hdr, &mut frame.clone(), &v6).unwrap();
        let completed = rx_offload(&hdr, &mut frame, &no_v6).unwrap();

        assert_eq!(passed.flags, NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED);
        assert_eq!(completed.flags, NETRXF_DATA_VALIDATED);
        assert!(checksum_ok(&frame));
        let valid = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..Default::default()
        };
        assert_eq!(
            rx_offload(&valid, &mut frame, &no_v6).unwrap().flags,
            NETRXF_DATA_VALIDATED
        );
    }
}
