//! Why a frontend operation failed.

use hypercall_abi::platform::{EvtchnError, GrantError, SharedMemoryError, XsError};
use hypercall_abi::ring::RingError;
use hypercall_abi::xen::blkif::BlkifStatus;
use hypercall_abi::xen::xenbus::XenbusState;
use hypercall_abi::xen::GrantRef;

use crate::protocol::BadValue;

/// A way the backend broke the protocol. Any of these marks the device
/// broken: nothing the backend sends afterwards is believed, and the
/// device must be disconnected and connected again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The shared ring's indices are impossible (e.g. `rsp_prod` claims
    /// responses to requests never pushed).
    #[error("queue {queue}: {source}")]
    Ring {
        /// The queue.
        queue: u32,
        /// What the ring found.
        #[source]
        source: RingError,
    },
    /// A response names no request that was sent.
    #[error("queue {queue}: the backend answered request id {id:#x}, which is not in flight")]
    UnknownId {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u64,
    },
    /// A second response to a request already answered.
    #[error("queue {queue}: the backend answered request id {id:#x} twice")]
    DuplicateResponse {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u64,
    },
    /// The response's operation is not the request's.
    #[error("queue {queue}: the response to request id {id:#x} has operation {got}, not {expected}")]
    WrongOperation {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u64,
        /// The operation the request carried (`indirect_op` for an
        /// indirect request).
        expected: u8,
        /// The operation in the response.
        got: u8,
    },
    /// The status is not a `BLKIF_RSP_*` value.
    #[error("queue {queue}: the response to request id {id:#x} has status {status}, which is no BLKIF_RSP_* value")]
    BadStatus {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u64,
        /// The status.
        status: i16,
    },
    /// The backend answered a request but still maps one of its
    /// (non-persistent) pages, as blkfront's `blkif_completion` checks.
    #[error("queue {queue}: the backend answered request id {id:#x} but still maps its grant {gref}")]
    GrantStillMapped {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u64,
        /// The first reference still mapped.
        gref: GrantRef,
    },
}

/// Why a frontend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A xenstore request failed.
    #[error("xenstore {op} of {path} failed: {source}")]
    Xenstore {
        /// The request, e.g. `"read"`.
        op: &'static str,
        /// The node.
        path: String,
        /// The error.
        #[source]
        source: XsError,
    },
    /// A xenstore transaction kept conflicting.
    #[error("a xenstore transaction on {0} kept conflicting; retry later")]
    TransactionConflict(String),
    /// The frontend directory has no `backend` node: no such device.
    #[error("{0}/backend does not exist: the toolstack has not created this device (xl block-attach)")]
    NoDevice(String),
    /// A node of our own directory holds something unusable.
    #[error("{path} holds {value:?}, which is not {expected}")]
    BadNode {
        /// The node.
        path: String,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A backend node holds something unusable.
    #[error(transparent)]
    BadValue(#[from] BadValue),
    /// Granting or ending access to pages failed.
    #[error("grant {op} failed: {source}")]
    Grant {
        /// What was being done, e.g. `"share ring pages"`.
        op: &'static str,
        /// The platform's error.
        #[source]
        source: GrantError,
    },
    /// An event channel operation failed.
    #[error("event channel: {0}")]
    Evtchn(#[from] EvtchnError),
    /// Copying to or from a granted page failed.
    #[error("accessing a granted page failed: {0}")]
    Memory(#[from] SharedMemoryError),
    /// Setting up a ring failed.
    #[error("setting up a ring failed: {0}")]
    RingSetup(RingError),
    /// The backend did not do its part in time.
    #[error("timed out waiting for {0}; is the backend running?")]
    Timeout(String),
    /// The backend closed the device (or disappeared).
    #[error("the backend moved to {0:?}: the device is disconnected; reconnect to use it again")]
    BackendClosed(XenbusState),
    /// The backend broke the protocol; the device is now broken.
    #[error("the backend broke the blkif protocol: {0}; the device is broken, disconnect and reconnect")]
    Protocol(#[from] ProtocolError),
    /// The device was marked broken by an earlier failure.
    #[error("the device is broken ({0}); disconnect and reconnect")]
    Broken(String),
    /// The device is not connected.
    #[error("the device is not connected; connect it first")]
    NotConnected,
    /// A write or discard to a disk the backend serves read-only.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The backend does not offer the operation.
    #[error("the backend does not support {0}")]
    Unsupported(&'static str),
    /// The range lies outside the disk.
    #[error("sectors {sector}+{nr_sectors} lie beyond the end of the {disk_sectors}-sector disk")]
    OutOfRange {
        /// First 512-byte sector.
        sector: u64,
        /// Number of 512-byte sectors.
        nr_sectors: u64,
        /// Disk size in 512-byte sectors.
        disk_sectors: u64,
    },
    /// The range is not aligned to the logical sector size.
    #[error("offset {offset} length {len} is not aligned to the {sector_size}-byte logical sector")]
    Misaligned {
        /// Byte offset on the disk.
        offset: u64,
        /// Length in bytes.
        len: usize,
        /// Logical sector size.
        sector_size: u32,
    },
    /// The caller's function of an in-place call
    /// ([`read_in_place`](crate::BlockFrontend::read_in_place),
    /// [`write_in_place`](crate::BlockFrontend::write_in_place)) failed.
    #[error("the caller's data function failed: {0}")]
    Data(#[source] std::io::Error),
    /// An internal inconsistency of this crate; please report it.
    #[error("internal error: {0}")]
    Bug(&'static str),
    /// The backend failed the request.
    #[error("the backend failed a {op} of sectors {sector}+{nr_sectors} with {status:?}")]
    Io {
        /// `"read"`, `"write"`, `"flush"` or `"discard"`.
        op: &'static str,
        /// First 512-byte sector of the failed request.
        sector: u64,
        /// Its length in 512-byte sectors.
        nr_sectors: u64,
        /// The status it returned.
        status: BlkifStatus,
    },
    /// A request of a batch ([`read_many`](crate::BlockFrontend::read_many),
    /// [`write_many`](crate::BlockFrontend::write_many)) failed: the
    /// lowest-numbered one that did.
    #[error("request {index} of the batch failed ({failed} failure(s) in all): {source}")]
    Batch {
        /// Its index in the batch.
        index: usize,
        /// How many failures the batch saw (1 when a range was refused
        /// before anything was sent).
        failed: usize,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Request `index` of a batch failed with `source`, alone.
    pub(crate) fn batch(index: usize, source: Error) -> Error {
        Error::Batch { index, failed: 1, source: Box::new(source) }
    }

    pub(crate) fn xs<'a>(op: &'static str, path: &'a str) -> impl FnOnce(XsError) -> Error + 'a {
        move |source| Error::Xenstore { op, path: path.to_owned(), source }
    }

    pub(crate) fn grant(op: &'static str) -> impl FnOnce(GrantError) -> Error {
        move |source| Error::Grant { op, source }
    }
}
