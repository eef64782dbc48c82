//! Request counters of a frontend, as blkfront would account them.

/// What a frontend sent and how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Read requests sent.
    pub rd_req: u64,
    /// 512-byte sectors read.
    pub rd_sect: u64,
    /// Write requests sent.
    pub wr_req: u64,
    /// 512-byte sectors written.
    pub wr_sect: u64,
    /// Flush or barrier requests sent.
    pub f_req: u64,
    /// Discard requests sent.
    pub ds_req: u64,
    /// Requests sent as indirect requests.
    pub indirect_req: u64,
    /// Requests the backend failed.
    pub errors: u64,
    /// Most requests in flight at once, over all queues.
    pub max_in_flight: u64,
    /// Connections made.
    pub connects: u64,
    /// Pages left granted at teardown because the backend still mapped
    /// them.
    pub leaked_pages: u64,
}
