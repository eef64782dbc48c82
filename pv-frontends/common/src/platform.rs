//! The platforms the frontends run on: a Linux guest of Xen, or a domain
//! of the loopback hypervisor. The frontends are generic over the handles
//! these give; their programs pick a platform.

use std::os::unix::net::UnixStream;
use std::path::Path;

use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::{XsClient, XsStream};
use xen_linux::{LinuxEvtchn, LinuxGntalloc};
use xen_loopback::{LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};

/// Why a platform handle could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the {what}: {source}")]
pub struct PlatformError {
    /// What was being opened, e.g. `"grant device /dev/xen/gntalloc"`.
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

/// A Linux guest of Xen: `/dev/xen/gntalloc`, `/dev/xen/evtchn`, and
/// xenstore through `/dev/xen/xenbus` (or xenstored's socket where it
/// runs, as `xs_open` does).
#[derive(Debug, Default, Clone, Copy)]
pub struct XenGuest;

impl XenGuest {
    /// Opens the three handles.
    pub fn handles(&self) -> Result<(LinuxGntalloc, LinuxEvtchn, XsClient<XsStream>), PlatformError> {
        let grants = LinuxGntalloc::open().map_err(|e| PlatformError::new("grant device /dev/xen/gntalloc", e))?;
        let evtchn = LinuxEvtchn::open().map_err(|e| PlatformError::new("event channel device /dev/xen/evtchn", e))?;
        let store = xen_linux::xenstore::open().map_err(|e| PlatformError::new("xenstore connection", e))?;
        Ok((grants, evtchn, store))
    }
}

/// A domain of the loopback hypervisor.
#[derive(Debug, Clone)]
pub struct Loopback {
    domain: LoopbackDomain,
}

impl Loopback {
    /// Connects to the hypervisor serving `dir` as domain `domid`.
    pub fn connect(dir: &Path, domid: DomId) -> Result<Self, PlatformError> {
        let domain = LoopbackDomain::connect(dir, domid).map_err(|e| PlatformError::new("loopback domain", e))?;
        Ok(Loopback { domain })
    }

    /// Uses a domain already connected.
    pub fn from_domain(domain: LoopbackDomain) -> Self {
        Loopback { domain }
    }

    /// Opens the three handles.
    pub fn handles(&self) -> Result<(LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>), PlatformError> {
        let evtchn = self.domain.event_channels().map_err(|e| PlatformError::new("loopback event channels", e))?;
        let store = self.domain.xenstore().map_err(|e| PlatformError::new("loopback xenstore", e))?;
        Ok((self.domain.grant_share(), evtchn, store))
    }
}
