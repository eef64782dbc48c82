//! Frame headers as far as offloads need them, and the translation
//! between netif's offload metadata and the `virtio_net_hdr` a TAP device
//! with `IFF_VNET_HDR` puts before each frame ([`rxen_tap::VirtioNetHdr`],
//! `include/uapi/linux/virtio_net.h`).
//!
//! Netif says only *that* a checksum is blank; virtio says *where* it is
//! (`csum_start`, `csum_offset`). Going to the TAP, the location is found
//! from the headers, as netfront's `checksum_setup` does
//! (`skb_checksum_setup`): Ethernet (one VLAN tag), IPv4 or IPv6 (with
//! hop-by-hop, routing and destination options headers), then TCP or
//! UDP. A frame whose headers cannot be followed cannot have its
//! checksum completed by the kernel and is dropped, as netfront drops it.
//!
//! All parsing reads only the caller's copy of a frame, with bounds checks.

pub use rxen_tap::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP, VNET_HDR_LEN,
};

use crate::protocol::{Checksum, Gso, GsoKind, Offload};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers followed: hop-by-hop, routing, destination options.
const IPV6_EXT_HEADERS: [u8; 3] = [0, 43, 60];
/// Most IPv6 extension headers followed before giving up.
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The network protocol of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where a frame's headers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// The network protocol.
    pub l3: L3,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// The transport protocol (`IPPROTO_*`).
    pub l4_proto: u8,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// Length of the transport header (TCP's data offset; 8 for UDP).
    pub l4_len: usize,
}

impl Headers {
    /// Offset of the transport checksum within the transport header, for
    /// TCP and UDP.
    pub fn csum_offset(&self) -> Option<usize> {
        match self.l4_proto {
            IPPROTO_TCP => Some(16),
            IPPROTO_UDP => Some(6),
            _ => None,
        }
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// The ethertype and the offset of the network header, past one VLAN tag.
fn ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    match be16(frame, 12)? {
        ETH_P_8021Q | ETH_P_8021AD => Some((be16(frame, 16)?, 18)),
        ethertype => Some((ethertype, 14)),
    }
}

/// Whether the frame is IPv6.
pub fn is_ipv6(frame: &[u8]) -> bool {
    ethertype(frame).is_some_and(|(t, _)| t == ETH_P_IPV6)
}

/// Finds the IP and transport headers of a TCP or UDP frame; `None` for
/// anything else, a fragment, or headers cut short.
pub fn parse(frame: &[u8]) -> Option<Headers> {
    let (ethertype, l3_offset) = ethertype(frame)?;
    let (l3, l4_proto, l4_offset) = match ethertype {
        ETH_P_IPV4 => {
            let ihl = usize::from(*frame.get(l3_offset)? & 0x0f) * 4;
            let fragment = be16(frame, l3_offset + 6)? & 0x3fff;
            if ihl < 20 || fragment != 0 {
                return None;
            }
            (L3::V4, *frame.get(l3_offset + 9)?, l3_offset + ihl)
        }
        ETH_P_IPV6 => {
            let mut next = *frame.get(l3_offset + 6)?;
            let mut offset = l3_offset + 40;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                if !IPV6_EXT_HEADERS.contains(&next) {
                    break;
                }
                let len = (usize::from(*frame.get(offset + 1)?) + 1) * 8;
                next = *frame.get(offset)?;
                offset += len;
            }
            (L3::V6, next, offset)
        }
        _ => return None,
    };
    let l4_len = match l4_proto {
        IPPROTO_TCP => usize::from(*frame.get(l4_offset + 12)? >> 4) * 4,
        IPPROTO_UDP => 8,
        _ => return None,
    };
    if l4_len < 8 || frame.len() < l4_offset + l4_len {
        return None;
    }
    Some(Headers {
        l3,
        l3_offset,
        l4_proto,
        l4_offset,
        l4_len,
    })
}

/// A hash of the frame's flow (addresses and ports), to keep a flow on
/// one queue; 0 for frames that are not TCP or UDP over IP.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let Some(h) = parse(frame) else {
        return 0;
    };
    let addresses = match h.l3 {
        L3::V4 => frame.get(h.l3_offset + 12..h.l3_offset + 20),
        L3::V6 => frame.get(h.l3_offset + 8..h.l3_offset + 40),
    };
    let ports = frame.get(h.l4_offset..h.l4_offset + 4);
    // FNV-1a.
    let mut hash: u32 = 0x811c_9dc5;
    for &byte in addresses
        .into_iter()
        .chain(ports)
        .flatten()
        .chain(&[h.l4_proto])
    {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash
}

/// The ones'-complement sum of `bytes` (RFC 1071), unfolded.
fn sum16(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = chunks
        .by_ref()
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Completes a partial checksum in software: sums `frame[start..]` (whose
/// checksum field at `start + offset` holds the pseudo-header sum) and
/// stores the result, as `skb_checksum_help` does.
pub fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) -> Option<()> {
    let field = start.checked_add(offset)?;
    if field + 2 > frame.len() {
        return None;
    }
    let mut csum = !fold(sum16(frame.get(start..)?));
    if csum == 0 && offset == 6 {
        // UDP sends a zero checksum as all ones.
        csum = 0xffff;
    }
    frame
        .get_mut(field..field + 2)?
        .copy_from_slice(&csum.to_be_bytes());
    Some(())
}

/// Stores the pseudo-header sum in the transport checksum field, as
/// `skb_checksum_setup` does with `recalculate` set: what a partial
/// checksum must hold for the kernel to complete it.
pub fn set_pseudo_header_checksum(frame: &mut [u8], h: &Headers) -> Option<()> {
    let l4_len = frame.len().checked_sub(h.l4_offset)?;
    let sum = match h.l3 {
        L3::V4 => {
            sum16(frame.get(h.l3_offset + 12..h.l3_offset + 20)?)
                + u32::from(h.l4_proto)
                + l4_len as u32
        }
        L3::V6 => {
            sum16(frame.get(h.l3_offset + 8..h.l3_offset + 40)?)
                + u32::from(h.l4_proto)
                + (l4_len as u32 & 0xffff)
                + (l4_len as u32 >> 16)
        }
    };
    let field = h.l4_offset + h.csum_offset()?;
    frame
        .get_mut(field..field + 2)?
        .copy_from_slice(&fold(sum).to_be_bytes());
    Some(())
}

/// Why a frame read from the TAP cannot go to the backend as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    /// A GSO type netif cannot carry (UDP fragmentation offload).
    #[error("virtio GSO type {0:#x} has no netif equivalent")]
    GsoType(u8),
    /// The checksum location lies outside the frame.
    #[error("the checksum at {start}+{offset} lies outside the {len}-byte frame")]
    ChecksumOutside {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// The frame's length.
        len: usize,
    },
}

/// The netif metadata of a frame read from the TAP. When the backend
/// cannot take a blank IPv6 checksum (`ipv6_csum`), or `finish_csum` asks
/// for it, a partial checksum is completed here instead.
pub fn from_vnet(
    hdr: &VirtioNetHdr,
    frame: &mut [u8],
    ipv6_csum: bool,
) -> Result<Offload, VnetError> {
    let gso = match hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => None,
        VIRTIO_NET_HDR_GSO_TCPV4 => Some(Gso {
            kind: GsoKind::TcpV4,
            size: hdr.gso_size,
        }),
        VIRTIO_NET_HDR_GSO_TCPV6 => Some(Gso {
            kind: GsoKind::TcpV6,
            size: hdr.gso_size,
        }),
        other => return Err(VnetError::GsoType(other)),
    };
    let checksum = if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        if gso.is_none() && !ipv6_csum && is_ipv6(frame) {
            let (start, offset) = (usize::from(hdr.csum_start), usize::from(hdr.csum_offset));
            complete_checksum(frame, start, offset).ok_or(VnetError::ChecksumOutside {
                start: hdr.csum_start,
                offset: hdr.csum_offset,
                len: frame.len(),
            })?;
            Checksum::Validated
        } else {
            Checksum::Partial
        }
    } else if hdr.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
        Checksum::Validated
    } else {
        Checksum::None
    };
    Ok(Offload { checksum, gso })
}

/// The `virtio_net_hdr` for a received frame, or `None` if its checksum
/// is partial but its headers cannot be followed (the frame is to be
/// dropped). The pseudo-header sum is (re)written into a partial
/// checksum, which also repairs a backend that sent a GSO frame without
/// `NETRXF_csum_blank`.
pub fn to_vnet(offload: &Offload, frame: &mut [u8]) -> Option<VirtioNetHdr> {
    match offload.checksum {
        Checksum::None => return Some(VirtioNetHdr::default()),
        Checksum::Validated if offload.gso.is_none() => {
            return Some(VirtioNetHdr {
                flags: VIRTIO_NET_HDR_F_DATA_VALID,
                ..VirtioNetHdr::default()
            })
        }
        _ => {}
    }
    let h = parse(frame)?;
    set_pseudo_header_checksum(frame, &h)?;
    let mut hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: u16::try_from(h.l4_offset).ok()?,
        csum_offset: u16::try_from(h.csum_offset()?).ok()?,
        ..VirtioNetHdr::default()
    };
    if let Some(gso) = offload.gso {
        let matches = matches!(
            (gso.kind, h.l3, h.l4_proto),
            (GsoKind::TcpV4, L3::V4, IPPROTO_TCP) | (GsoKind::TcpV6, L3::V6, IPPROTO_TCP)
        );
        if !matches {
            return None;
        }
        hdr.gso_type = match gso.kind {
            GsoKind::TcpV4 => VIRTIO_NET_HDR_GSO_TCPV4,
            GsoKind::TcpV6 => VIRTIO_NET_HDR_GSO_TCPV6,
        };
        hdr.gso_size = gso.size;
        hdr.hdr_len = u16::try_from(h.l4_offset + h.l4_len).ok()?;
    }
    Some(hdr)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP frame with `payload` bytes of data and the
    /// TCP checksum left as the pseudo-header sum.
    pub fn tcp4(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[46] = 5 << 4;
        for (i, b) in f[54..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    /// An Ethernet + IPv6 + hop-by-hop + UDP frame.
    pub fn udp6(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 40 + 8 + 8 + payload];
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&((8 + 8 + payload) as u16).to_be_bytes());
        f[20] = 0; // hop-by-hop
        f[22..38].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f[38..54].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f[54] = IPPROTO_UDP;
        f[55] = 0;
        f[62..64].copy_from_slice(&5353u16.to_be_bytes());
        f[66..68].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f
    }

    #[test]
    fn headers_are_found_through_vlan_tags_and_ipv6_options() {
        let tcp = parse(&tcp4(100)).unwrap();
        assert_eq!(
            (tcp.l3, tcp.l4_offset, tcp.l4_len, tcp.csum_offset()),
            (L3::V4, 34, 20, Some(16))
        );

        let udp = parse(&udp6(10)).unwrap();
        assert_eq!(
            (udp.l3, udp.l4_proto, udp.l4_offset, udp.csum_offset()),
            (L3::V6, IPPROTO_UDP, 62, Some(6))
        );

        let mut tagged = tcp4(10);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert_eq!(parse(&tagged).unwrap().l4_offset, 38);

        assert!(is_ipv6(&udp6(0)) && !is_ipv6(&tcp4(0)));
        assert_eq!(parse(&tcp4(0)[..40]), None, "headers cut short");
        let mut fragment = tcp4(10);
        fragment[20] = 0x20;
        assert_eq!(parse(&fragment), None);
        assert_eq!(parse(&[0u8; 64]), None);
    }

    #[test]
    fn a_partial_checksum_completes_to_a_valid_one() {
        let mut frame = tcp4(333);
        let h = parse(&frame).unwrap();
        set_pseudo_header_checksum(&mut frame, &h).unwrap();

        complete_checksum(&mut frame, h.l4_offset, 16).unwrap();

        // A valid checksum sums, with the pseudo-header, to all ones.
        let pseudo = sum16(&frame[26..34]) + u32::from(IPPROTO_TCP) + (frame.len() - 34) as u32;
        assert_eq!(fold(pseudo + sum16(&frame[34..])), 0xffff);
    }

    #[test]
    fn vnet_headers_round_trip_through_netif_metadata() {
        let mut frame = tcp4(3000);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };

        let offload = from_vnet(&hdr, &mut frame, true).unwrap();
        assert_eq!(
            offload,
            Offload {
                checksum: Checksum::Partial,
                gso: Some(Gso {
                    kind: GsoKind::TcpV4,
                    size: 1448
                })
            }
        );
        assert_eq!(to_vnet(&offload, &mut frame), Some(hdr));

        let udp = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_UDP,
            ..hdr
        };
        assert_eq!(
            from_vnet(&udp, &mut frame, true),
            Err(VnetError::GsoType(VIRTIO_NET_HDR_GSO_UDP))
        );
        let valid = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            ..VirtioNetHdr::default()
        };
        assert_eq!(
            from_vnet(&valid, &mut frame, true).unwrap().checksum,
            Checksum::Validated
        );
        assert_eq!(
            to_vnet(
                &Offload {
                    checksum: Checksum::Validated,
                    gso: None
                },
                &mut frame
            ),
            Some(valid)
        );
    }

    #[test]
    fn ipv6_checksums_are_completed_for_a_backend_without_ipv6_offload() {
        let mut frame = udp6(21);
        let h = parse(&frame).unwrap();
        set_pseudo_header_checksum(&mut frame, &h).unwrap();
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 62,
            csum_offset: 6,
            ..Default::default()
        };

        let offload = from_vnet(&hdr, &mut frame, false).unwrap();

        assert_eq!(offload.checksum, Checksum::Validated);
        let pseudo = sum16(&frame[22..54]) + u32::from(IPPROTO_UDP) + (frame.len() - 62) as u32;
        assert_eq!(fold(pseudo + sum16(&frame[62..])), 0xffff);
        let outside = VirtioNetHdr {
            csum_start: 9000,
            ..hdr
        };
        assert!(matches!(
            from_vnet(&outside, &mut frame, false),
            Err(VnetError::ChecksumOutside { .. })
        ));
    }

    #[test]
    fn flows_hash_by_addresses_and_ports() {
        let a = tcp4(10);
        let mut b = tcp4(500);
        assert_eq!(flow_hash(&a), flow_hash(&b), "same flow, other length");
        b[35] ^= 1;
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_eq!(flow_hash(&[0u8; 60]), 0);
    }
}
