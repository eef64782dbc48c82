//! What the frontend reads from and writes to the backend: the xenstore
//! nodes of the handshake, parsed and checked, and the blkif limits.
//!
//! The wire structures themselves (`xen/io/blkif.h`) are
//! [`hypercall_abi::xen::blkif`]'s; this module holds the frontend's view
//! of the device the backend describes. Every value comes from the
//! backend's directory, which the backend writes: each is parsed strictly
//! and bounded before it sizes anything.

use hypercall_abi::xen::blkif::{VdiskInfo, BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST};

/// Largest `ring-page-order` used (`XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Largest number of queues used.
pub const MAX_QUEUES: u32 = 64;
/// Linux blkfront's default `max_indirect_segments` (`xen_blkif_max_segments`).
pub const DEFAULT_MAX_INDIRECT_SEGMENTS: u32 = 32;
/// Linux blkfront's default `max_queues` (`xen_blkif_max_queues`).
pub const DEFAULT_MAX_QUEUES: u32 = 4;
/// Linux blkfront's default `max_ring_page_order` (`xen_blkif_max_ring_order`).
pub const DEFAULT_MAX_RING_PAGE_ORDER: u32 = 0;

/// What the backend announces before the rings are set up (read in
/// InitWait, as blkfront's `talk_to_blkback` and `negotiate_mq` do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingOffer {
    /// `max-ring-page-order` (0 if absent).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues` (1 if absent).
    pub max_queues: u32,
}

/// Discard parameters (`feature-discard` and its companions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    /// `discard-granularity` in bytes (0 if absent).
    pub granularity: u32,
    /// `discard-alignment` in bytes (0 if absent).
    pub alignment: u32,
    /// `discard-secure`.
    pub secure: bool,
}

/// The device as the backend describes it once Connected (blkfront's
/// `blkfront_connect` and `blkfront_gather_backend_features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    /// `sectors`: the size in 512-byte units.
    pub sectors: u64,
    /// `sector-size`: the logical sector size, 512 to 4096.
    pub sector_size: u32,
    /// `physical-sector-size` (the logical size if absent).
    pub physical_sector_size: u32,
    /// `info`: `VDISK_*` flags; unknown bits are dropped.
    pub info: VdiskInfo,
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard`, with its parameters.
    pub discard: Option<Discard>,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `feature-max-indirect-segments` (0 if absent).
    pub max_indirect_segments: u32,
}

impl DiskInfo {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        // `parse_disk` bounds `sectors` so that this cannot overflow.
        self.sectors * 512
    }

    /// Whether the backend serves the disk read-only (`VDISK_READONLY`).
    pub fn read_only(&self) -> bool {
        self.info.contains(VdiskInfo::READONLY)
    }
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

fn unsigned<T: std::str::FromStr>(
    src: &impl NodeSource,
    node: &'static str,
    default: Option<T>,
) -> Result<T, crate::Error> {
    match (src.node(node)?, default) {
        (Some(value), _) => {
            value.parse().map_err(|_| BadValue { node, value, expected: "an unsigned decimal number" }.into())
        }
        (None, Some(default)) => Ok(default),
        (None, None) => Err(BadValue { node, value: String::new(), expected: "present" }.into()),
    }
}

fn flag(src: &impl NodeSource, node: &'static str) -> Result<bool, crate::Error> {
    Ok(unsigned::<u64>(src, node, Some(0))? != 0)
}

/// Reads what the backend offers for the rings.
pub fn parse_ring_offer(src: &impl NodeSource) -> Result<RingOffer, crate::Error> {
    Ok(RingOffer {
        max_ring_page_order: unsigned(src, "max-ring-page-order", Some(0))?,
        max_queues: unsigned::<u32>(src, "multi-queue-max-queues", Some(1))?.max(1),
    })
}

/// Reads the device description; refuses sizes that cannot be right.
pub fn parse_disk(src: &impl NodeSource) -> Result<DiskInfo, crate::Error> {
    let sectors: u64 = unsigned(src, "sectors", None)?;
    if sectors > u64::MAX / 512 {
        return Err(
            BadValue { node: "sectors", value: sectors.to_string(), expected: "a size below 2^64 bytes" }.into()
        );
    }
    let sector_size: u32 = unsigned(src, "sector-size", Some(512))?;
    if !sector_size.is_power_of_two() || !(512..=4096).contains(&sector_size) {
        return Err(BadValue {
            node: "sector-size",
            value: sector_size.to_string(),
            expected: "a power of two from 512 to 4096",
        }
        .into());
    }
    let physical_sector_size: u32 = unsigned(src, "physical-sector-size", Some(sector_size))?;
    let info: u32 = unsigned(src, "info", Some(0))?;
    let discard = if flag(src, "feature-discard")? {
        Some(Discard {
            granularity: unsigned(src, "discard-granularity", Some(0))?,
            alignment: unsigned(src, "discard-alignment", Some(0))?,
            secure: flag(src, "discard-secure")?,
        })
    } else {
        None
    };
    Ok(DiskInfo {
        sectors,
        sector_size,
        physical_sector_size,
        info: VdiskInfo::from_bits_truncate(info),
        flush_cache: flag(src, "feature-flush-cache")?,
        barrier: flag(src, "feature-barrier")?,
        discard,
        persistent: flag(src, "feature-persistent")?,
        max_indirect_segments: unsigned(src, "feature-max-indirect-segments", Some(0))?,
    })
}

/// Segments per request once both sides' limits are known: blkfront's
/// `blkfront_setup_indirect` uses indirect requests only when the backend
/// offers more segments than a direct request carries.
pub fn segments_per_request(backend_max_indirect: u32, frontend_max_indirect: u32) -> usize {
    let indirect = backend_max_indirect.min(frontend_max_indirect) as usize;
    if indirect > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        indirect.min(BLKIF_MAX_INDIRECT_SEGMENTS)
    } else {
        BLKIF_MAX_SEGMENTS_PER_REQUEST
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
    fn a_minimal_backend_gets_linux_defaults() {
        let src = nodes(&[("sectors", "2048")]);

        let offer = parse_ring_offer(&src).unwrap();
        let disk = parse_disk(&src).unwrap();

        assert_eq!(offer, RingOffer { max_ring_page_order: 0, max_queues: 1 });
        assert_eq!(disk.size(), 1 << 20);
        assert_eq!((disk.sector_size, disk.physical_sector_size), (512, 512));
        assert!(!disk.read_only() && !disk.flush_cache && !disk.persistent && disk.discard.is_none());
    }

    #[test]
    fn every_feature_is_read() {
        let src = nodes(&[
            ("sectors", "16"),
            ("sector-size", "4096"),
            ("info", "4"),
            ("feature-flush-cache", "1"),
            ("feature-barrier", "1"),
            ("feature-discard", "1"),
            ("discard-granularity", "4096"),
            ("feature-persistent", "1"),
            ("feature-max-indirect-segments", "256"),
            ("multi-queue-max-queues", "8"),
            ("max-ring-page-order", "4"),
        ]);

        let disk = parse_disk(&src).unwrap();

        assert!(disk.read_only() && disk.flush_cache && disk.barrier && disk.persistent);
        assert_eq!(disk.discard, Some(Discard { granularity: 4096, alignment: 0, secure: false }));
        assert_eq!(disk.max_indirect_segments, 256);
        assert_eq!(parse_ring_offer(&src).unwrap(), RingOffer { max_ring_page_order: 4, max_queues: 8 });
    }

    #[test]
    fn junk_and_impossible_sizes_are_refused() {
        for bad in [
            nodes(&[]),
            nodes(&[("sectors", "-1")]),
            nodes(&[("sectors", "0x10")]),
            nodes(&[("sectors", "36028797018963968")]),
            nodes(&[("sectors", "8"), ("sector-size", "1000")]),
            nodes(&[("sectors", "8"), ("sector-size", "8192")]),
            nodes(&[("sectors", "8"), ("feature-discard", "yes")]),
        ] {
            assert!(matches!(parse_disk(&bad), Err(crate::Error::BadValue(_))));
        }
    }

    #[test]
    fn indirect_requests_need_more_than_eleven_segments() {
        assert_eq!(segments_per_request(0, 32), 11);
        assert_eq!(segments_per_request(11, 32), 11);
        assert_eq!(segments_per_request(256, 32), 32);
        assert_eq!(segments_per_request(20, 32), 20);
        assert_eq!(segments_per_request(100_000, 100_000), BLKIF_MAX_INDIRECT_SEGMENTS);
    }
}
