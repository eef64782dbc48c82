//! Frame counters of a frontend, as netfront's `netfront_stats` and
//! `dev->stats` account them.

/// What a frontend sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames the backend accepted (`NETIF_RSP_OKAY`).
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames the backend failed (`NETIF_RSP_ERROR`).
    pub tx_errors: u64,
    /// Frames the backend dropped (`NETIF_RSP_DROPPED`).
    pub tx_dropped: u64,
    /// Frames sent with segmentation offload.
    pub tx_gso: u64,
    /// Times a frame had to wait for room on a full transmit ring.
    pub tx_ring_full: u64,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames received with segmentation offload.
    pub rx_gso: u64,
    /// Connections made.
    pub connects: u64,
    /// Pages left granted at teardown because the backend still mapped
    /// them.
    pub leaked_pages: u64,
}
