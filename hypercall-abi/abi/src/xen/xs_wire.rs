//! The xenstore wire protocol (`xen/io/xs_wire.h`): message header, message
//! types, the error-name table and the shared ring page a domain uses to
//! talk to the store.
//!
//! A message is a [`XsdSockmsg`] header followed by `len` bytes of payload,
//! usually NUL-terminated strings. The same framing is used over the Unix
//! socket of `xenstored`, over Linux's `/dev/xen/xenbus` and over a
//! domain's ring page.

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The header of every xenstore message (`struct xsd_sockmsg`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XsdSockmsg {
    /// Message type, an [`XsType`] value.
    pub type_: u32,
    /// Request identifier, echoed in the daemon's response.
    pub req_id: u32,
    /// Transaction id, 0 when not in a transaction.
    pub tx_id: u32,
    /// Length of the payload following the header.
    pub len: u32,
}

const _: () = assert!(core::mem::size_of::<XsdSockmsg>() == 16);
const _: () = assert!(core::mem::offset_of!(XsdSockmsg, type_) == 0);
const _: () = assert!(core::mem::offset_of!(XsdSockmsg, req_id) == 4);
const _: () = assert!(core::mem::offset_of!(XsdSockmsg, tx_id) == 8);
const _: () = assert!(core::mem::offset_of!(XsdSockmsg, len) == 12);

/// Size of [`XsdSockmsg`] on the wire.
pub const XSD_SOCKMSG_SIZE: usize = 16;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum XsType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`: list the children of a node.
    Directory = 1,
    /// `XS_READ`: read a node's value.
    Read = 2,
    /// `XS_GET_PERMS`: read a node's permissions.
    GetPerms = 3,
    /// `XS_WATCH`: register a watch on a path with a token.
    Watch = 4,
    /// `XS_UNWATCH`: remove a watch.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`: start a transaction, returns its id.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`: commit ("T") or abort ("F") a transaction.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: tell the store about a new domain's ring.
    Introduce = 8,
    /// `XS_RELEASE`: forget a domain.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`: `/local/domain/<domid>`.
    GetDomainPath = 10,
    /// `XS_WRITE`: write a node's value.
    Write = 11,
    /// `XS_MKDIR`: create a node.
    Mkdir = 12,
    /// `XS_RM`: remove a node and its children.
    Rm = 13,
    /// `XS_SET_PERMS`: set a node's permissions.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: a watch fired (daemon to client only).
    WatchEvent = 15,
    /// `XS_ERROR`: the reply carries an error name.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`: a domain resumed after suspend.
    Resume = 18,
    /// `XS_SET_TARGET`: let one domain manage another.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`: drop all of a connection's watches (20 was `XS_RESTRICT`, removed).
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`: a directory listing in parts.
    DirectoryPart = 22,
}

/// Number of message types (`XS_TYPE_COUNT`).
pub const XS_TYPE_COUNT: u32 = 23;
/// A type guaranteed to stay invalid (`XS_INVALID`).
pub const XS_INVALID: u32 = 0xffff;

/// A message type value that is not a known [`XsType`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownXsType(pub u32);

impl fmt::Display for UnknownXsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown xenstore message type {}", self.0)
    }
}

impl TryFrom<u32> for XsType {
    type Error = UnknownXsType;

    fn try_from(v: u32) -> Result<Self, UnknownXsType> {
        use XsType::*;
        Ok(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            other => return Err(UnknownXsType(other)),
        })
    }
}

impl XsType {
    /// The C name of the type, e.g. `"XS_READ"`.
    pub const fn name(self) -> &'static str {
        use XsType::*;
        match self {
            Control => "XS_CONTROL",
            Directory => "XS_DIRECTORY",
            Read => "XS_READ",
            GetPerms => "XS_GET_PERMS",
            Watch => "XS_WATCH",
            Unwatch => "XS_UNWATCH",
            TransactionStart => "XS_TRANSACTION_START",
            TransactionEnd => "XS_TRANSACTION_END",
            Introduce => "XS_INTRODUCE",
            Release => "XS_RELEASE",
            GetDomainPath => "XS_GET_DOMAIN_PATH",
            Write => "XS_WRITE",
            Mkdir => "XS_MKDIR",
            Rm => "XS_RM",
            SetPerms => "XS_SET_PERMS",
            WatchEvent => "XS_WATCH_EVENT",
            Error => "XS_ERROR",
            IsDomainIntroduced => "XS_IS_DOMAIN_INTRODUCED",
            Resume => "XS_RESUME",
            SetTarget => "XS_SET_TARGET",
            ResetWatches => "XS_RESET_WATCHES",
            DirectoryPart => "XS_DIRECTORY_PART",
        }
    }
}

/// Index of the path within an `XS_WATCH_EVENT` payload (`XS_WATCH_PATH`).
pub const XS_WATCH_PATH: usize = 0;
/// Index of the token within an `XS_WATCH_EVENT` payload (`XS_WATCH_TOKEN`).
pub const XS_WATCH_TOKEN: usize = 1;

/// Legacy write-mode strings (`XS_WRITE_NONE` ...).
pub const XS_WRITE_NONE: &str = "NONE";
/// Legacy write mode: create.
pub const XS_WRITE_CREATE: &str = "CREATE";
/// Legacy write mode: create, fail if it exists.
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// The errors xenstore sends, by name, in `XS_ERROR` replies (`xsd_errors[]`),
/// in the header's order, with their Linux errno values.
pub const XSD_ERRORS: [(i32, &str); 16] = [
    (22, "EINVAL"),
    (13, "EACCES"),
    (17, "EEXIST"),
    (21, "EISDIR"),
    (2, "ENOENT"),
    (12, "ENOMEM"),
    (28, "ENOSPC"),
    (5, "EIO"),
    (39, "ENOTEMPTY"),
    (38, "ENOSYS"),
    (30, "EROFS"),
    (16, "EBUSY"),
    (11, "EAGAIN"),
    (106, "EISCONN"),
    (7, "E2BIG"),
    (1, "EPERM"),
];

/// The errno for an error name from an `XS_ERROR` reply; unknown names map
/// to `EINVAL` as Xen's own clients do.
pub fn errno_for_name(name: &str) -> i32 {
    XSD_ERRORS
        .iter()
        .find(|(_, n)| *n == name)
        .map_or(22, |(e, _)| *e)
}

/// The error name for an errno, if xenstore has one.
pub fn name_for_errno(errno: i32) -> Option<&'static str> {
    XSD_ERRORS.iter().find(|(e, _)| *e == errno).map(|(_, n)| *n)
}

/// Bytes in each direction of the domain ring (`XENSTORE_RING_SIZE`).
pub const XENSTORE_RING_SIZE: usize = 1024;
/// Largest payload of one message (`XENSTORE_PAYLOAD_MAX`).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest relative path (`XENSTORE_REL_PATH_MAX`).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;
/// Server feature: the ring can be reconnected.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// Server feature: the ring page has an `error` field.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `connection` field: steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection` field: reconnect in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error` field: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error` field: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error` field: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error` field: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Masks a free-running ring index into the 1024-byte ring (`MASK_XENSTORE_IDX`).
pub const fn mask_xenstore_idx(idx: u32) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// The shared page a domain uses to talk to xenstore
/// (`struct xenstore_domain_interface`).
///
/// Only ever accessed through volatile/atomic accessors when it lives in
/// shared memory; this type gives the layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenstoreDomainInterface {
    /// Requests to the daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Daemon's consumer index into `req`.
    pub req_cons: u32,
    /// Domain's producer index into `req`.
    pub req_prod: u32,
    /// Domain's consumer index into `rsp`.
    pub rsp_cons: u32,
    /// Daemon's producer index into `rsp`.
    pub rsp_prod: u32,
    /// Bitmap of `XENSTORE_SERVER_FEATURE_*`.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// One of `XENSTORE_ERROR_*`.
    pub error: u32,
}

const _: () = assert!(core::mem::size_of::<XenstoreDomainInterface>() == 2076);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp) == 1024);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, req_cons) == 2048);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, req_prod) == 2052);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp_cons) == 2056);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, rsp_prod) == 2060);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, server_features) == 2064);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, connection) == 2068);
const _: () = assert!(core::mem::offset_of!(XenstoreDomainInterface, error) == 2072);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_and_gaps_are_rejected() {
        for v in 0..XS_TYPE_COUNT {
            match XsType::try_from(v) {
                Ok(t) => assert_eq!(t as u32, v),
                Err(e) => assert_eq!(v, 20, "only XS_RESTRICT's slot is empty, got {e}"),
            }
        }
        assert!(XsType::try_from(XS_INVALID).is_err());
        assert!(XsType::try_from(XS_TYPE_COUNT).is_err());
    }

    #[test]
    fn error_names_map_both_ways() {
        assert_eq!(errno_for_name("ENOENT"), 2);
        assert_eq!(errno_for_name("EWHATEVER"), 22);
        assert_eq!(name_for_errno(13), Some("EACCES"));
        assert_eq!(name_for_errno(9999), None);
    }
}
