//! Why a frontend operation failed.

use hypercall_abi::platform::{EvtchnError, GrantError, SharedMemoryError, XsError};
use hypercall_abi::ring::RingError;
use hypercall_abi::xen::xenbus::XenbusState;

use crate::protocol::BadValue;

/// A way the backend broke the netif protocol. Any of these marks the
/// device broken (netfront's `info->broken`): nothing the backend sends
/// afterwards is believed, and the device must be disconnected and
/// connected again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A ring's indices are impossible (e.g. `rsp_prod` claims responses
    /// to requests never pushed).
    #[error("queue {queue} {ring}: {source}")]
    Ring {
        /// The queue.
        queue: u32,
        /// `"tx"` or `"rx"`.
        ring: &'static str,
        /// What the ring found.
        #[source]
        source: RingError,
    },
    /// A transmit response names no request in flight.
    #[error(
        "queue {queue}: the backend answered transmit request id {id:#x}, which is not in flight"
    )]
    TxUnknownId {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u16,
    },
    /// A second transmit response to a request already answered.
    #[error("queue {queue}: the backend answered transmit request id {id:#x} twice")]
    TxDuplicateResponse {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u16,
    },
    /// A transmit response's status is no `NETIF_RSP_*` value.
    #[error("queue {queue}: the response to transmit request id {id:#x} has status {status}, which is no NETIF_RSP_* value")]
    TxBadStatus {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u16,
        /// The status.
        status: i16,
    },
    /// A `NETIF_RSP_NULL` response with no extra-info slot left to answer.
    #[error("queue {queue}: the backend sent a NETIF_RSP_NULL response for an extra-info slot that was never sent")]
    TxUnexpectedNull {
        /// The queue.
        queue: u32,
    },
    /// A receive response does not carry the id of the request posted in
    /// its ring slot (the backend answers receive requests in order).
    #[error("queue {queue}: receive response {index} has id {got:#x}, but the request in that slot had id {expected:#x}")]
    RxWrongId {
        /// The queue.
        queue: u32,
        /// The response's ring index.
        index: u32,
        /// The id posted in that slot.
        expected: u16,
        /// The response's id.
        got: u16,
    },
    /// A receive response's status is negative: a copying backend never
    /// fails a slot.
    #[error("queue {queue}: receive response id {id:#x} has status {status}, not a byte count")]
    RxBadStatus {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u16,
        /// The status.
        status: i16,
    },
    /// A receive response's data reaches beyond its 4096-byte page.
    #[error("queue {queue}: receive response id {id:#x} has {size} bytes at offset {offset}, beyond its 4096-byte page")]
    RxBeyondPage {
        /// The queue.
        queue: u32,
        /// The response's id.
        id: u16,
        /// The data's offset in the page.
        offset: u16,
        /// The data's size.
        size: u16,
    },
    /// A received frame takes more slots than netfront allows.
    #[error("queue {queue}: a received frame takes more than {max} data slots")]
    RxTooManySlots {
        /// The queue.
        queue: u32,
        /// The limit.
        max: usize,
    },
    /// A received frame carries more extra-info slots than there are
    /// extra types.
    #[error("queue {queue}: a received frame carries more than {max} extra-info slots")]
    RxTooManyExtras {
        /// The queue.
        queue: u32,
        /// The limit.
        max: usize,
    },
    /// An extra-info slot of a type that is unknown (or
    /// `XEN_NETIF_EXTRA_TYPE_NONE`).
    #[error(
        "queue {queue}: a received frame carries an extra-info slot of unknown type {extra_type}"
    )]
    RxBadExtra {
        /// The queue.
        queue: u32,
        /// The type.
        extra_type: u8,
    },
    /// A GSO extra with segment size 0 or an unknown GSO type.
    #[error("queue {queue}: a received frame has GSO type {gso_type} size {size}; a TCPv4/TCPv6 type and a non-zero size are required")]
    RxBadGso {
        /// The queue.
        queue: u32,
        /// The GSO type.
        gso_type: u8,
        /// The segment size.
        size: u16,
    },
    /// A response with `NETRXF_gso_prefix`, which the frontend never asks
    /// for (it does not write `feature-gso-tcpv4-prefix`).
    #[error("queue {queue}: a receive response has NETRXF_gso_prefix, which was not negotiated")]
    RxGsoPrefix {
        /// The queue.
        queue: u32,
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
    #[error(
        "{0}/backend does not exist: the toolstack has not created this device (xl network-attach)"
    )]
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
    /// The backend does not copy received frames into our pages
    /// (`feature-rx-copy`), the only receive mode netfront speaks.
    #[error(
        "the backend {0} does not offer feature-rx-copy; page-flipping backends are not supported"
    )]
    NoRxCopy(String),
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
    #[error(
        "the backend broke the netif protocol: {0}; the device is broken, disconnect and reconnect"
    )]
    Protocol(#[from] ProtocolError),
    /// The device was marked broken by an earlier failure.
    #[error("the device is broken ({0}); disconnect and reconnect")]
    Broken(String),
    /// The device is not connected.
    #[error("the device is not connected; connect it first")]
    NotConnected,
    /// The transmit rings have no room for the frame now: wait for the
    /// backend to answer earlier frames (back-pressure), then retry.
    #[error("the transmit ring is full; retry once the backend has answered earlier frames")]
    RingFull,
    /// The frame is larger than a netif packet can be.
    #[error("a {len}-byte frame is larger than the {max} bytes a netif packet can carry")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The largest length allowed now.
        max: usize,
    },
    /// The frame is shorter than an Ethernet header; netback would drop it.
    #[error("a {0}-byte frame is shorter than an Ethernet header")]
    FrameTooShort(usize),
    /// The backend does not offer what the frame needs.
    #[error("the backend does not offer {0}")]
    Unsupported(&'static str),
    /// The frame's offload metadata is invalid.
    #[error("invalid offload metadata: {0}")]
    InvalidOffload(&'static str),
    /// An internal inconsistency of this crate; please report it.
    #[error("internal error: {0}")]
    Bug(&'static str),
}

impl Error {
    pub(crate) fn xs<'a>(op: &'static str, path: &'a str) -> impl FnOnce(XsError) -> Error + 'a {
        move |source| Error::Xenstore {
            op,
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn grant(op: &'static str) -> impl FnOnce(GrantError) -> Error {
        move |source| Error::Grant { op, source }
    }

    /// Whether the error leaves the device unusable until it reconnects
    /// (as opposed to refusing one frame).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::RingFull
                | Error::FrameTooLarge { .. }
                | Error::FrameTooShort(_)
                | Error::Unsupported(_)
                | Error::InvalidOffload(_)
        )
    }
}
