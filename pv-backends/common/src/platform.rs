//! The platforms the backends run on: real Xen through Linux's `/dev/xen`
//! devices, or the loopback hypervisor. The backend is generic over
//! [`Platform`]; `main` picks one.

use std::os::unix::net::UnixStream;
use std::path::Path;

use hypercall_abi::platform::{CopyMemory, EventChannels, GrantMap, Xenstore};
use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::{XsClient, XsStream};
use xen_linux::{LinuxEvtchn, LinuxGntalloc, LinuxGntdev};
use xen_loopback::{LoopbackDomain, LoopbackEventChannels, LoopbackGrantMap};

/// Why a platform handle could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the {what}: {source}")]
pub struct PlatformError {
    /// What was being opened, e.g. `"grant device"`.
    pub what: &'static str,
    /// The platform's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl PlatformError {
    fn new(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        PlatformError { what, source: Box::new(source) }
    }
}

/// What the backend needs from a platform: a grant mapper shared by all
/// queues, an event channel handle per queue, and a xenstore connection.
pub trait Platform: Send + Sync + 'static {
    /// The grant mapper.
    type Grants: GrantMap + 'static;
    /// An event channel handle.
    type Evtchn: EventChannels + 'static;
    /// A xenstore client.
    type Store: Xenstore + 'static;

    /// Opens the grant mapper.
    fn grant_map(&self) -> Result<Self::Grants, PlatformError>;
    /// Opens a new event channel handle.
    fn event_channels(&self) -> Result<Self::Evtchn, PlatformError>;
    /// Connects to xenstore.
    fn xenstore(&self) -> Result<Self::Store, PlatformError>;

    /// Zeroed memory of `bytes` (rounded up to whole pages) for grant
    /// copies to and from frontends: pages granted to the own domain `own`
    /// where the platform can, so that copies name them by reference
    /// ([`CopyMemory`]); plain memory otherwise.
    fn copy_memory(&self, own: DomId, bytes: usize) -> Box<dyn CopyMemory> {
        let _ = own;
        Box::new(vec![0u8; bytes])
    }
}

/// Xen, through `/dev/xen/gntdev`, `/dev/xen/evtchn` and xenstored's socket
/// (or `/dev/xen/xenbus`).
#[derive(Debug, Default)]
pub struct XenPlatform;

impl Platform for XenPlatform {
    type Grants = LinuxGntdev;
    type Evtchn = LinuxEvtchn;
    type Store = XsClient<XsStream>;

    fn grant_map(&self) -> Result<LinuxGntdev, PlatformError> {
        LinuxGntdev::open().map_err(|e| PlatformError::new("grant device /dev/xen/gntdev", e))
    }

    fn event_channels(&self) -> Result<LinuxEvtchn, PlatformError> {
        LinuxEvtchn::open().map_err(|e| PlatformError::new("event channel device /dev/xen/evtchn", e))
    }

    fn xenstore(&self) -> Result<Self::Store, PlatformError> {
        xen_linux::xenstore::open().map_err(|e| PlatformError::new("xenstore connection", e))
    }

    /// Pages from `/dev/xen/gntalloc` granted to `own` itself; plain memory
    /// if that fails (no gntalloc, or its limit on grants reached), which
    /// works the same at a higher cost per copy.
    fn copy_memory(&self, own: DomId, bytes: usize) -> Box<dyn CopyMemory> {
        let pages = bytes.div_ceil(hypercall_abi::xen::PAGE_SIZE);
        match LinuxGntalloc::open().map_err(|e| e.to_string()).and_then(|alloc| alloc.self_granted(own, pages).map_err(|e| e.to_string())) {
            Ok(buffer) => Box::new(buffer),
            Err(e) => {
                log::info!("copy buffer of {pages} pages: cannot grant them to domain {own} ({e}); using plain memory (each copy then pins its pages)");
                Box::new(vec![0u8; pages * hypercall_abi::xen::PAGE_SIZE])
            }
        }
    }
}

/// A domain of the loopback hypervisor.
#[derive(Debug, Clone)]
pub struct LoopbackPlatform {
    domain: LoopbackDomain,
}

impl LoopbackPlatform {
    /// Connects to the hypervisor serving `dir` as domain `domid`.
    pub fn connect(dir: &Path, domid: DomId) -> Result<Self, PlatformError> {
        let domain = LoopbackDomain::connect(dir, domid).map_err(|e| PlatformError::new("loopback domain", e))?;
        Ok(LoopbackPlatform { domain })
    }

    /// Uses a domain already connected (e.g. shared with a test's
    /// toolstack).
    pub fn from_domain(domain: LoopbackDomain) -> Self {
        LoopbackPlatform { domain }
    }
}

impl Platform for LoopbackPlatform {
    type Grants = LoopbackGrantMap;
    type Evtchn = LoopbackEventChannels;
    type Store = XsClient<UnixStream>;

    fn grant_map(&self) -> Result<LoopbackGrantMap, PlatformError> {
        Ok(self.domain.grant_map())
    }

    fn event_channels(&self) -> Result<LoopbackEventChannels, PlatformError> {
        self.domain.event_channels().map_err(|e| PlatformError::new("loopback event channels", e))
    }

    fn xenstore(&self) -> Result<Self::Store, PlatformError> {
        self.domain.xenstore().map_err(|e| PlatformError::new("loopback xenstore", e))
    }
}
