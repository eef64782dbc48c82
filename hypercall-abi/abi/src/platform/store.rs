//! The xenstore client interface.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::xen::DomId;

/// Why a xenstore request failed.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// The daemon answered with an error (`XS_ERROR`), e.g. `ENOENT`.
    #[error("xenstore {op} {path:?} failed: {name}")]
    Daemon {
        /// The request type, e.g. `"XS_READ"`.
        op: &'static str,
        /// The path the request named, if any.
        path: String,
        /// The error name the daemon sent.
        name: String,
        /// Its errno.
        errno: i32,
    },
    /// The connection to the daemon failed.
    #[error("xenstore connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon sent something that breaks the wire protocol.
    #[error("xenstore protocol error: {0}")]
    Protocol(String),
    /// A request we would send is invalid (path too long, embedded NUL ...).
    #[error("invalid xenstore request: {0}")]
    Invalid(String),
    /// The connection was closed.
    #[error("xenstore connection closed")]
    Closed,
}

impl XsError {
    /// The errno of a daemon error (`ENOENT` = 2, `EAGAIN` = 11 ...).
    pub fn errno(&self) -> Option<i32> {
        match self {
            XsError::Daemon { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the node did not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(2)
    }

    /// Whether a transaction must be retried.
    pub fn is_again(&self) -> bool {
        self.errno() == Some(11)
    }
}

/// A transaction id; [`Transaction::NONE`] for requests outside one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Transaction(pub u32);

impl Transaction {
    /// No transaction.
    pub const NONE: Transaction = Transaction(0);
}

/// What a domain may do with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsPermAccess {
    /// `n`: nothing.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

/// One permission entry, as on the wire: `r5`, `b0`, `n3`. The first entry
/// of a node names its owner and the access of every domain not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XsPerm {
    /// The domain.
    pub domid: DomId,
    /// Its access.
    pub access: XsPermAccess,
}

impl fmt::Display for XsPerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self.access {
            XsPermAccess::None => 'n',
            XsPermAccess::Read => 'r',
            XsPermAccess::Write => 'w',
            XsPermAccess::Both => 'b',
        };
        write!(f, "{c}{}", self.domid)
    }
}

impl FromStr for XsPerm {
    type Err = XsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || XsError::Invalid(format!("bad permission {s:?}: expected n|r|w|b followed by a domain id"));
        let mut chars = s.chars();
        let access = match chars.next() {
            Some('n') => XsPermAccess::None,
            Some('r') => XsPermAccess::Read,
            Some('w') => XsPermAccess::Write,
            Some('b') => XsPermAccess::Both,
            _ => return Err(bad()),
        };
        let domid = chars.as_str().parse::<DomId>().map_err(|_| bad())?;
        Ok(XsPerm { domid, access })
    }
}

/// A fired watch: the path that changed and the token it was registered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (or the watched path itself, on registration).
    pub path: String,
    /// The token given to [`Xenstore::watch`].
    pub token: String,
}

/// A xenstore client (`libxenstore`'s `xs_handle`).
///
/// Paths are absolute (`/local/domain/0/...`) or relative to the caller's
/// home (`/local/domain/<self>`); values are bytes.
pub trait Xenstore: Send + Sync {
    /// Reads a node's value (`XS_READ`).
    fn read(&self, tx: Transaction, path: &str) -> Result<Vec<u8>, XsError>;
    /// Writes a node's value, creating it and missing parents (`XS_WRITE`).
    fn write(&self, tx: Transaction, path: &str, value: &[u8]) -> Result<(), XsError>;
    /// Creates a node with an empty value if it does not exist (`XS_MKDIR`).
    fn mkdir(&self, tx: Transaction, path: &str) -> Result<(), XsError>;
    /// Removes a node and everything below it (`XS_RM`).
    fn rm(&self, tx: Transaction, path: &str) -> Result<(), XsError>;
    /// Lists a node's children by name (`XS_DIRECTORY`).
    fn directory(&self, tx: Transaction, path: &str) -> Result<Vec<String>, XsError>;
    /// Reads a node's permissions (`XS_GET_PERMS`).
    fn get_perms(&self, tx: Transaction, path: &str) -> Result<Vec<XsPerm>, XsError>;
    /// Sets a node's permissions (`XS_SET_PERMS`).
    fn set_perms(&self, tx: Transaction, path: &str, perms: &[XsPerm]) -> Result<(), XsError>;
    /// Starts a transaction (`XS_TRANSACTION_START`).
    fn transaction_start(&self) -> Result<Transaction, XsError>;
    /// Commits (`commit = true`) or aborts a transaction
    /// (`XS_TRANSACTION_END`). A commit that conflicted fails with an
    /// error for which [`XsError::is_again`] holds: retry the transaction.
    fn transaction_end(&self, tx: Transaction, commit: bool) -> Result<(), XsError>;
    /// Registers a watch on `path` and below (`XS_WATCH`). The daemon fires
    /// it once at once, then on every change.
    fn watch(&self, path: &str, token: &str) -> Result<(), XsError>;
    /// Removes a watch (`XS_UNWATCH`).
    fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError>;
    /// Waits up to `timeout` (forever with `None`) for a watch event.
    fn read_watch(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>, XsError>;
    /// The home path of a domain (`XS_GET_DOMAIN_PATH`).
    fn get_domain_path(&self, domid: DomId) -> Result<String, XsError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perms_parse_and_print() {
        let p: XsPerm = "b12".parse().unwrap();
        assert_eq!(p, XsPerm { domid: 12, access: XsPermAccess::Both });
        assert_eq!(p.to_string(), "b12");
        assert!("x1".parse::<XsPerm>().is_err());
        assert!("r".parse::<XsPerm>().is_err());
        assert!("r70000".parse::<XsPerm>().is_err());
    }
}
