//! dom0's own xenstore ring, as Linux's xenfs offers it to the xenstore
//! daemon: `/proc/xen/xsd_kva` (the ring page, mmap-able) and
//! `/proc/xen/xsd_port` (the unbound event channel the kernel allocated
//! for it), as C xenstored's `xenbus_map` and `xenbus_evtchn` read them.

use std::fs::{self, File};
use std::io;

use hypercall_abi::platform::SharedMemory;
use hypercall_abi::xen::EvtchnPort;

use crate::error::open_device;
use crate::mapping::DeviceMapping;
use crate::OpenError;

/// Why dom0's local xenstore ring is not available.
#[derive(Debug, thiserror::Error)]
pub enum XenfsError {
    /// `/proc/xen/xsd_kva` could not be opened (xenfs not mounted, or this
    /// kernel does not run dom0's xenstore locally).
    #[error("cannot open dom0's xenstore ring page: {0}")]
    Open(#[from] OpenError),
    /// Reading `/proc/xen/xsd_port` failed.
    #[error("cannot read {path}: {source} (is xenfs mounted on /proc/xen?)")]
    Port {
        /// The file.
        path: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `/proc/xen/xsd_port` does not hold a port number.
    #[error("{path} holds {text:?}, not an event channel port")]
    BadPort {
        /// The file.
        path: &'static str,
        /// What it held.
        text: String,
    },
    /// mmap of the ring page failed.
    #[error("cannot map dom0's xenstore ring page: {0}")]
    Map(#[source] io::Error),
}

/// dom0's xenstore ring page, mapped from `/proc/xen/xsd_kva`.
#[derive(Debug)]
pub struct LocalStoreRing {
    map: DeviceMapping,
    port: EvtchnPort,
    _file: File,
}

impl LocalStoreRing {
    /// The ring page file.
    pub const KVA_PATH: &'static str = "/proc/xen/xsd_kva";
    /// The event channel file.
    pub const PORT_PATH: &'static str = "/proc/xen/xsd_port";

    /// Maps the page and reads the port.
    pub fn open() -> Result<Self, XenfsError> {
        let text = fs::read_to_string(Self::PORT_PATH).map_err(|source| XenfsError::Port {
            path: Self::PORT_PATH,
            source,
        })?;
        let port = text.trim().parse().map_err(|_| XenfsError::BadPort {
            path: Self::PORT_PATH,
            text: text.clone(),
        })?;
        let file = open_device(Self::KVA_PATH, "xenfs", 0)?;
        let map = DeviceMapping::new(&file, 0, 4096, true).map_err(XenfsError::Map)?;
        Ok(Self {
            map,
            port,
            _file: file,
        })
    }

    /// dom0's unbound port for the daemon to bind (interdomain, to dom0).
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// The page (`struct xenstore_domain_interface`).
    pub fn memory(&self) -> SharedMemory<'_> {
        self.map.memory()
    }
}
