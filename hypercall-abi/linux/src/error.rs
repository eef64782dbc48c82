//! Opening the devices.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;

/// Why a `/dev/xen` device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The device node does not exist.
    #[error(
        "{path} does not exist: this is not a Xen domain, or the {driver} driver is not loaded \
         (try `modprobe {driver}`)"
    )]
    NotFound {
        /// The device path.
        path: &'static str,
        /// The kernel module providing it.
        driver: &'static str,
    },
    /// The device exists but we may not open it.
    #[error("permission denied opening {path}: run as root or give this user access to the device")]
    PermissionDenied {
        /// The device path.
        path: &'static str,
    },
    /// Opening failed otherwise.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The device path.
        path: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Opens a device read-write (and close-on-exec, as std always does),
/// classifying the failure.
pub(crate) fn open_device(path: &'static str, driver: &'static str, flags: i32) -> Result<File, OpenError> {
    OpenOptions::new().read(true).write(true).custom_flags(flags).open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => OpenError::NotFound { path, driver },
        io::ErrorKind::PermissionDenied => OpenError::PermissionDenied { path },
        _ => OpenError::Io { path, source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_reported_as_not_xen() {
        let err = open_device("/nonexistent/xen/evtchn", "xen-evtchn", 0).unwrap_err();

        assert!(matches!(err, OpenError::NotFound { path: "/nonexistent/xen/evtchn", driver: "xen-evtchn" }));
        assert!(err.to_string().contains("modprobe xen-evtchn"), "{err}");
    }

    #[test]
    fn other_failures_keep_the_os_error() {
        // A directory cannot be opened for writing.
        let err = open_device("/", "none", 0).unwrap_err();

        assert!(matches!(err, OpenError::Io { path: "/", .. } | OpenError::PermissionDenied { .. }), "{err:?}");
    }
}
