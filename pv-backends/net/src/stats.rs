//! Per-interface counters, as Linux netback's `ethtool -S` statistics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the queues of an interface. "tx" is the frontend's
/// transmit direction (guest to TAP), "rx" its receive direction.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets from the frontend written to the TAP.
    pub tx_packets: AtomicU64,
    /// Their bytes.
    pub tx_bytes: AtomicU64,
    /// Packets from the frontend answered with `NETIF_RSP_ERROR`.
    pub tx_errors: AtomicU64,
    /// Packets from the frontend accepted but not sent (bad offload
    /// metadata, TAP refused them).
    pub tx_dropped: AtomicU64,
    /// Frames from the TAP delivered to the frontend.
    pub rx_packets: AtomicU64,
    /// Their bytes.
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP dropped.
    pub rx_dropped: AtomicU64,
    /// Times the frontend was found malicious and the interface disabled.
    pub fatal_errors: AtomicU64,
    /// Times a queue went to sleep (nothing to do on either ring).
    pub sleeps: AtomicU64,
    /// Events sent to the frontend.
    pub notifies: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Packets sent to the TAP.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Packets answered with an error.
    pub tx_errors: u64,
    /// Packets accepted but dropped.
    pub tx_dropped: u64,
    /// Frames delivered to the frontend.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames dropped.
    pub rx_dropped: u64,
    /// Interface disabled for a malicious frontend.
    pub fatal_errors: u64,
    /// Queue sleeps.
    pub sleeps: u64,
    /// Events sent.
    pub notifies: u64,
}

impl Stats {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            tx_errors: get(&self.tx_errors),
            tx_dropped: get(&self.tx_dropped),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            fatal_errors: get(&self.fatal_errors),
            sleeps: get(&self.sleeps),
            notifies: get(&self.notifies),
        }
    }
}
