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

    /// Zeroed memory for grant copies to and from frontends, of `bytes`
    /// (rounded up to whole pages): pages granted to the own domain `own`
    /// where the platform can, so that copies name them by reference
    /// ([`CopyMemory`]), possibly fewer of them (halving down to
    /// `min_bytes`) when not that many can be granted; plain memory of
    /// `bytes` otherwise.
    fn copy_memory(&self, own: DomId, bytes: usize, min_bytes: usize) -> Box<dyn CopyMemory> {
        let _ = (own, min_bytes);
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

    /// Pages from `/dev/xen/gntalloc` granted to `own` itself, as many as
    /// it grants (its `limit` parameter caps the grants of all its users
    /// together, 1024 pages by default); plain memory if not even
    /// `min_bytes` can be granted (or there is no gntalloc), which works the
    /// same at a higher cost per copy.
    fn copy_memory(&self, own: DomId, bytes: usize, min_bytes: usize) -> Box<dyn CopyMemory> {
        use hypercall_abi::xen::PAGE_SIZE;
        let pages = bytes.div_ceil(PAGE_SIZE);
        let min_pages = min_bytes.div_ceil(PAGE_SIZE).clamp(1, pages.max(1));
        let error = match LinuxGntalloc::open() {
            Ok(alloc) => {
                let mut count = pages;
                loop {
                    match alloc.self_granted(own, count) {
                        Ok(buffer) => {
                            if count < pages {
                                log::info!("copy buffer: {count} of {pages} pages granted to domain {own} (gntalloc's limit)");
                            }
                            return Box::new(buffer);
                        }
                        Err(e) if count / 2 < min_pages => break e.to_string(),
                        Err(_) => count /= 2,
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        log::info!("copy buffer of {pages} pages: cannot grant {min_pages} to domain {own} ({error}); using plain memory (each copy then pins its pages)");
        Box::new(vec![0u8; pages * PAGE_SIZE])
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
