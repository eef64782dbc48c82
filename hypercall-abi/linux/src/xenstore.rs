//! The xenstore client over Linux's transports.
//!
//! In dom0 (or wherever xenstored runs) the client talks to xenstored's
//! Unix socket; in any other domain, to `/dev/xen/xenbus`, which the kernel
//! forwards over the domain's xenstore ring. Both carry the same messages;
//! the client itself is [`hypercall_abi::xenstore::XsClient`].

use std::path::Path;

use hypercall_abi::platform::XsError;
pub use hypercall_abi::xenstore::{XsClient, XsStream, XENBUS_DEVICE};

/// Connects as `libxenstore`'s `xs_open(0)` does: xenstored's socket
/// (`$XENSTORED_PATH`, `/var/run/xenstored/socket`) if reachable, otherwise
/// `/dev/xen/xenbus`. The error names both paths when neither works.
pub fn open() -> Result<XsClient<XsStream>, XsError> {
    XsClient::open_default()
}

/// Connects through `/dev/xen/xenbus` only, even where xenstored's socket
/// exists (e.g. to test the path a guest uses).
pub fn open_xenbus() -> Result<XsClient<XsStream>, XsError> {
    XsClient::open_path(Path::new(XENBUS_DEVICE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_xenbus_without_xen_says_so() {
        if Path::new(XENBUS_DEVICE).exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = open_xenbus().unwrap_err();

        assert!(matches!(&err, XsError::Io(e) if e.kind() == std::io::ErrorKind::NotFound), "{err:?}");
    }

    #[test]
    fn open_without_xen_names_both_paths() {
        if Path::new(XENBUS_DEVICE).exists() || hypercall_abi::xenstore::daemon_socket_path().exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = open().unwrap_err().to_string();

        assert!(err.contains("xenstored/socket") && err.contains("xenbus"), "{err}");
    }
}
