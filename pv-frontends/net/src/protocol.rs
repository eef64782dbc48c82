//! What the frontend reads from and writes to xenstore, parsed and
//! checked, and the offload metadata a frame carries.
//!
//! The wire structures themselves (`xen/io/netif.h`) are
//! [`hypercall_abi::xen::netif`]'s. Every value read here comes from a
//! directory the backend or the toolstack writes: each is parsed strictly
//! before it sizes anything.

use std::fmt;
use std::str::FromStr;

use hypercall_abi::xen::netif::{
    NetRxFlags, NetTxFlags, NetifGsoType, XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6,
    XEN_NETIF_NR_SLOTS_MIN,
};

/// Largest number of queues used.
pub const MAX_QUEUES: u32 = 16;
/// The default number of queues: one, so that a guest stays within
/// gntalloc's default limit of 1024 granted pages (each queue grants
/// 2 ring pages and 256 + 256 buffer pages). Linux netfront's default
/// (`max_queues`) is the number of CPUs, at most 8.
pub const DEFAULT_MAX_QUEUES: u32 = 1;
/// `ETH_HLEN`: netback drops a frame whose first slot is shorter.
pub const ETH_HLEN: usize = 14;
/// Most data slots one received frame may take: Linux netfront's
/// `XEN_NETIF_NR_SLOTS_MIN`, plus one as it allows for a short first slot.
pub const MAX_RX_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN + 1;
/// Most extra-info slots one received frame may carry: one per extra
/// type (`XEN_NETIF_EXTRA_TYPE_MAX - 1`).
pub const MAX_RX_EXTRAS: usize = 4;

/// What the backend announces in its directory before the rings are set
/// up (netback's `netback_probe`), as netfront reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendFeatures {
    /// `feature-rx-copy`: the backend copies received frames into our
    /// pages. Netfront refuses a backend without it.
    pub rx_copy: bool,
    /// `feature-sg`: a transmitted frame may span several slots.
    pub sg: bool,
    /// `feature-gso-tcpv4`: TCP/IPv4 frames may be transmitted unsegmented.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`: TCP/IPv6 frames may be transmitted unsegmented.
    pub gso_tcpv6: bool,
    /// `feature-ipv6-csum-offload`: IPv6 frames may be transmitted with
    /// the checksum blank.
    pub ipv6_csum_offload: bool,
    /// `feature-split-event-channels`: separate ports for tx and rx.
    pub split_event_channels: bool,
    /// `multi-queue-max-queues`, if the node exists (then netfront writes
    /// `multi-queue-num-queues`, even for one queue).
    pub max_queues: Option<u32>,
}

/// A backend node whose value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backend node {node} holds {value:?}, which is not {expected}")]
pub struct BadValue {
    /// The node, relative to the backend's directory.
    pub node: &'static str,
    /// What it holds.
    pub value: String,
    /// What it should hold.
    pub expected: &'static str,
}

/// Reads backend nodes: `Ok(None)` for a missing node.
pub trait NodeSource {
    /// The value of `node` in the backend's directory, if it exists.
    fn node(&self, node: &'static str) -> Result<Option<String>, crate::Error>;
}

fn unsigned(src: &impl NodeSource, node: &'static str) -> Result<Option<u32>, crate::Error> {
    match src.node(node)? {
        None => Ok(None),
        Some(value) => match value.parse() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(BadValue {
                node,
                value,
                expected: "an unsigned decimal number",
            }
            .into()),
        },
    }
}

fn flag(src: &impl NodeSource, node: &'static str) -> Result<bool, crate::Error> {
    Ok(unsigned(src, node)?.unwrap_or(0) != 0)
}

/// Reads what the backend offers (netfront's `xennet_connect`,
/// `talk_to_netback` and `xennet_fix_features`).
pub fn parse_features(src: &impl NodeSource) -> Result<BackendFeatures, crate::Error> {
    Ok(BackendFeatures {
        rx_copy: flag(src, "feature-rx-copy")?,
        sg: flag(src, "feature-sg")?,
        gso_tcpv4: flag(src, "feature-gso-tcpv4")?,
        gso_tcpv6: flag(src, "feature-gso-tcpv6")?,
        ipv6_csum_offload: flag(src, "feature-ipv6-csum-offload")?,
        split_event_channels: flag(src, "feature-split-event-channels")?,
        max_queues: unsigned(src, "multi-queue-max-queues")?.map(|n| n.max(1)),
    })
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A `mac` node that is not six colon-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address like 00:16:3e:12:34:56")]
pub struct BadMac(pub String);

impl FromStr for Mac {
    type Err = BadMac;

    /// Parses `xx:xx:xx:xx:xx:xx` (one or two hex digits per byte), as
    /// netfront's `xen_net_read_mac`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMac(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl Mac {
    /// Whether the address is a unicast one (the group bit is clear) and
    /// not all zeroes: the only kind an interface may own.
    pub fn is_valid_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

/// The checksum state of a frame (Linux's `ip_summed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// Nothing is known: the receiver checks it (`CHECKSUM_NONE`).
    #[default]
    None,
    /// The checksum is known to be good (`CHECKSUM_UNNECESSARY`):
    /// `NETTXF_data_validated` / `NETRXF_data_validated`.
    Validated,
    /// The transport checksum is not filled in yet: the frame comes from
    /// this host and whoever delivers it fills it (`CHECKSUM_PARTIAL`):
    /// `NETTXF_csum_blank` / `NETRXF_csum_blank`.
    Partial,
}

/// The protocol of a segmentation-offload frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GsoKind {
    /// TCP over IPv4 (`XEN_NETIF_GSO_TYPE_TCPV4`).
    TcpV4,
    /// TCP over IPv6 (`XEN_NETIF_GSO_TYPE_TCPV6`).
    TcpV6,
}

impl GsoKind {
    /// The netif value.
    pub fn raw(self) -> u8 {
        match self {
            GsoKind::TcpV4 => XEN_NETIF_GSO_TYPE_TCPV4,
            GsoKind::TcpV6 => XEN_NETIF_GSO_TYPE_TCPV6,
        }
    }

    /// From a netif value; `None` for `XEN_NETIF_GSO_TYPE_NONE` and
    /// unknown values.
    pub fn from_raw(raw: u8) -> Option<Self> {
        match NetifGsoType::try_from(raw).ok()? {
            NetifGsoType::TcpV4 => Some(GsoKind::TcpV4),
            NetifGsoType::TcpV6 => Some(GsoKind::TcpV6),
            NetifGsoType::None => None,
        }
    }
}

/// A frame larger than one segment, to be cut into `size`-byte TCP
/// segments by whoever puts it on a wire (`XEN_NETIF_EXTRA_TYPE_GSO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gso {
    /// The protocol.
    pub kind: GsoKind,
    /// The segment size (MSS); never 0.
    pub size: u16,
}

/// What a frame carries besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offload {
    /// The checksum state.
    pub checksum: Checksum,
    /// Segmentation offload, for a TCP frame larger than one segment. A
    /// GSO frame always has a partial checksum.
    pub gso: Option<Gso>,
}

impl Offload {
    /// The `NETTXF_*` checksum flags of a transmitted frame, as
    /// netfront's `xennet_start_xmit` sets them.
    pub fn tx_flags(&self) -> NetTxFlags {
        match (self.checksum, self.gso) {
            (Checksum::Partial, _) | (_, Some(_)) => {
                NetTxFlags::CSUM_BLANK | NetTxFlags::DATA_VALIDATED
            }
            (Checksum::Validated, None) => NetTxFlags::DATA_VALIDATED,
            (Checksum::None, None) => NetTxFlags::empty(),
        }
    }

    /// The checksum state of a received frame, from its first response's
    /// `NETRXF_*` flags (netfront's `xennet_poll`).
    pub fn from_rx_flags(flags: NetRxFlags) -> Checksum {
        if flags.contains(NetRxFlags::CSUM_BLANK) {
            Checksum::Partial
        } else if flags.contains(NetRxFlags::DATA_VALIDATED) {
            Checksum::Validated
        } else {
            Checksum::None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Nodes(HashMap<&'static str, &'static str>);

    impl NodeSource for Nodes {
        fn node(&self, node: &'static str) -> Result<Option<String>, crate::Error> {
            Ok(self.0.get(node).map(|v| (*v).to_owned()))
        }
    }

    fn nodes(pairs: &[(&'static str, &'static str)]) -> Nodes {
        Nodes(pairs.iter().copied().collect())
    }

    #[test]
    fn linux_netback_features_are_read() {
        let src = nodes(&[
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-split-event-channels", "1"),
            ("multi-queue-max-queues", "4"),
        ]);

        let features = parse_features(&src).unwrap();

        assert!(features.rx_copy && features.sg && features.gso_tcpv4 && features.gso_tcpv6);
        assert!(features.ipv6_csum_offload && features.split_event_channels);
        assert_eq!(features.max_queues, Some(4));
    }

    #[test]
    fn a_bare_backend_offers_nothing_and_junk_is_refused() {
        assert_eq!(
            parse_features(&nodes(&[])).unwrap(),
            BackendFeatures::default()
        );
        assert!(matches!(
            parse_features(&nodes(&[("feature-sg", "yes")])),
            Err(crate::Error::BadValue(_))
        ));
        assert!(matches!(
            parse_features(&nodes(&[("multi-queue-max-queues", "-1")])),
            Err(crate::Error::BadValue(_))
        ));
    }

    #[test]
    fn macs_parse_as_netfront_reads_them() {
        let mac: Mac = "00:16:3e:0a:b:FF".parse().unwrap();

        assert_eq!(mac.0, [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0xff]);
        assert_eq!(mac.to_string(), "00:16:3e:0a:0b:ff");
        assert!(mac.is_valid_unicast());
        for bad in [
            "",
            "00:16:3e:0a:0b",
            "00:16:3e:0a:0b:ff:00",
            "00:16:3e:0a:0b:fff",
            "00:16:3e:0a:0b:gg",
            "0:1:2:3:4:",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
        assert!(!"01:00:5e:00:00:01"
            .parse::<Mac>()
            .unwrap()
            .is_valid_unicast());
    }

    #[test]
    fn offload_maps_to_netif_flags_both_ways() {
        let gso = Some(Gso {
            kind: GsoKind::TcpV6,
            size: 1440,
        });

        assert_eq!(Offload::default().tx_flags(), NetTxFlags::empty());
        assert_eq!(
            Offload {
                checksum: Checksum::Validated,
                gso: None
            }
            .tx_flags(),
            NetTxFlags::DATA_VALIDATED
        );
        assert_eq!(
            Offload {
                checksum: Checksum::None,
                gso
            }
            .tx_flags(),
            NetTxFlags::CSUM_BLANK | NetTxFlags::DATA_VALIDATED
        );
        assert_eq!(
            Offload::from_rx_flags(NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED),
            Checksum::Partial
        );
        assert_eq!(
            Offload::from_rx_flags(NetRxFlags::DATA_VALIDATED),
            Checksum::Validated
        );
        assert_eq!(
            Offload::from_rx_flags(NetRxFlags::MORE_DATA),
            Checksum::None
        );
        assert_eq!(
            GsoKind::from_raw(GsoKind::TcpV4.raw()),
            Some(GsoKind::TcpV4)
        );
        assert_eq!(GsoKind::from_raw(0), None);
        assert_eq!(GsoKind::from_raw(9), None);
    }
}
