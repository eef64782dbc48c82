//! Per-device request counters, as Linux blkback's sysfs `statistics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the queues of a device.
#[derive(Debug, Default)]
pub struct Stats {
    /// Read requests served (`rd_req`).
    pub rd_req: AtomicU64,
    /// Write requests served (`wr_req`).
    pub wr_req: AtomicU64,
    /// Flush and barrier requests served (`f_req`).
    pub f_req: AtomicU64,
    /// Discard requests served (`ds_req`).
    pub ds_req: AtomicU64,
    /// 512-byte sectors read (`rd_sect`).
    pub rd_sect: AtomicU64,
    /// 512-byte sectors written (`wr_sect`).
    pub wr_sect: AtomicU64,
    /// Requests answered with an error status.
    pub errors: AtomicU64,
    /// Rounds that took requests off a ring (each is answered with at
    /// most one event, fewer when responses are held for the next).
    pub batches: AtomicU64,
    /// Events sent to the frontend.
    pub events_sent: AtomicU64,
    /// Events from the frontend that woke a queue.
    pub events_received: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Read requests.
    pub rd_req: u64,
    /// Write requests.
    pub wr_req: u64,
    /// Flush and barrier requests.
    pub f_req: u64,
    /// Discard requests.
    pub ds_req: u64,
    /// Sectors read.
    pub rd_sect: u64,
    /// Sectors written.
    pub wr_sect: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Rounds with requests.
    pub batches: u64,
    /// Events sent.
    pub events_sent: u64,
    /// Events received.
    pub events_received: u64,
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
            rd_req: get(&self.rd_req),
            wr_req: get(&self.wr_req),
            f_req: get(&self.f_req),
            ds_req: get(&self.ds_req),
            rd_sect: get(&self.rd_sect),
            wr_sect: get(&self.wr_sect),
            errors: get(&self.errors),
            batches: get(&self.batches),
            events_sent: get(&self.events_sent),
            events_received: get(&self.events_received),
        }
    }
}
