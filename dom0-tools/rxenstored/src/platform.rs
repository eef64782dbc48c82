//! What the daemon needs from Xen: map a domain's ring page, bind and
//! signal event channels, ask whether a domain exists. [`LinuxXen`] does
//! it through `/dev/xen/*`; tests supply their own.

use std::os::fd::BorrowedFd;

use hypercall_abi::platform::{EventChannels, EvtchnError, GrantError, GrantMap};
use hypercall_abi::xen::event_channel::EvtchnBinding;
use hypercall_abi::xen::grant_table::GNTTAB_RESERVED_XENSTORE;
use hypercall_abi::xen::{DomId, EvtchnPort};
use xen_linux::{
    LinuxEvtchn, LinuxGntdev, LocalStoreRing, OpenError, Privcmd, PrivcmdError, XenfsError,
};

use crate::ring::RingPage;

/// `DOMID_SELF`.
const DOMID_SELF: DomId = 0x7ff0;

/// `VIRQ_DOM_EXC`: a domain died or shut down.
pub const VIRQ_DOM_EXC: u32 = 3;

/// A failed platform operation.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A Xen device could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Mapping the grant failed, and so did the foreign mapping fallback.
    #[error("cannot map the xenstore page of domain {domid}: {grant}; foreign map of gfn {gfn:#x}: {foreign}")]
    Map {
        /// The domain.
        domid: DomId,
        /// The frame it named.
        gfn: u64,
        /// Why the grant mapping failed.
        grant: GrantError,
        /// Why the foreign mapping failed.
        foreign: String,
    },
    /// An event channel operation failed.
    #[error(transparent)]
    Evtchn(#[from] EvtchnError),
    /// dom0's local ring is not available.
    #[error(transparent)]
    Xenfs(#[from] XenfsError),
}

/// Xen as the daemon uses it.
pub trait Platform {
    /// Maps the xenstore ring page of `domid` (grant
    /// `GNTTAB_RESERVED_XENSTORE`, or frame `gfn`).
    fn map_ring(&mut self, domid: DomId, gfn: u64) -> Result<Box<dyn RingPage>, PlatformError>;
    /// Binds to `port` of `domid`; returns the local port.
    fn bind(&mut self, domid: DomId, port: EvtchnPort) -> Result<EvtchnPort, PlatformError>;
    /// Signals the other end of a local port.
    fn notify(&self, port: EvtchnPort);
    /// Closes a local port.
    fn close(&self, port: EvtchnPort);
    /// Takes a pending local port, if any.
    fn pending(&self) -> Option<EvtchnPort>;
    /// Lets the next event on `port` through.
    fn unmask(&self, port: EvtchnPort);
    /// An fd readable when [`pending`](Platform::pending) has something.
    fn fd(&self) -> Option<BorrowedFd<'_>>;
    /// Whether local `port` is still connected to `domid` (a dying
    /// domain's event channels are closed by Xen; its ring mapping must
    /// then go, or the domain stays a zombie).
    fn connected(&self, _port: EvtchnPort, _domid: DomId) -> bool {
        true
    }
    /// Whether domain `domid` exists, introduced or not (C xenstored asks
    /// Xen with `xc_domain_getinfo` before accepting a domain as the new
    /// owner of a node in `XS_SET_PERMS`).
    ///
    /// If asking Xen fails, the answer is `false`, as C xenstored's: an
    /// owner id that names no domain could later be given to a new
    /// domain, which would then own the node. A platform with no
    /// hypervisor to ask answers `true`.
    fn domain_exists(&self, domid: DomId) -> bool;
}

/// Xen through Linux's `/dev/xen` devices.
#[derive(Debug)]
pub struct LinuxXen {
    evtchn: LinuxEvtchn,
    gntdev: Option<LinuxGntdev>,
    privcmd: Option<Privcmd>,
}

impl LinuxXen {
    /// Opens the event channel device (required) and gntdev and privcmd
    /// (either one is enough to map rings).
    pub fn open() -> Result<Self, PlatformError> {
        let evtchn = LinuxEvtchn::open()?;
        let gntdev = LinuxGntdev::open()
            .map_err(|e| log::warn!("{e}; mapping rings by frame number instead"))
            .ok();
        let privcmd = Privcmd::open()
            .map_err(|e| {
                log::warn!(
                    "{e}; mapping rings by grant only, and accepting any domain as a node owner"
                )
            })
            .ok();
        Ok(Self {
            evtchn,
            gntdev,
            privcmd,
        })
    }

    /// Binds `VIRQ_DOM_EXC`; returns the local port.
    pub fn bind_dom_exc(&self) -> Result<EvtchnPort, PlatformError> {
        Ok(self.evtchn.bind_virq(VIRQ_DOM_EXC)?)
    }

    /// dom0's own ring page and the port of its kernel's xenbus.
    pub fn local_ring() -> Result<(Box<dyn RingPage>, EvtchnPort), PlatformError> {
        let ring = LocalStoreRing::open()?;
        let port = ring.port();
        Ok((Box::new(ring), port))
    }
}

impl Platform for LinuxXen {
    fn map_ring(&mut self, domid: DomId, gfn: u64) -> Result<Box<dyn RingPage>, PlatformError> {
        let grant = match &self.gntdev {
            Some(g) => match g.map(domid, &[GNTTAB_RESERVED_XENSTORE], true) {
                Ok(m) => return Ok(Box::new(m)),
                Err(e) => e,
            },
            None => GrantError::Invalid("gntdev is not available"),
        };
        let foreign = match &self.privcmd {
            Some(p) => {
                match p.map_foreign(domid, &[gfn], true) {
                    Ok(m) => {
                        log::info!("domain {domid}: grant map failed ({grant}); mapped gfn {gfn:#x} instead");
                        return Ok(Box::new(m));
                    }
                    Err(e) => e.to_string(),
                }
            }
            None => PrivcmdError::Invalid("privcmd is not available").to_string(),
        };
        Err(PlatformError::Map {
            domid,
            gfn,
            grant,
            foreign,
        })
    }

    fn bind(&mut self, domid: DomId, port: EvtchnPort) -> Result<EvtchnPort, PlatformError> {
        Ok(self.evtchn.bind_interdomain(domid, port)?)
    }

    fn notify(&self, port: EvtchnPort) {
        if let Err(e) = self.evtchn.notify(port) {
            log::warn!("notifying port {port}: {e}");
        }
    }

    fn close(&self, port: EvtchnPort) {
        if let Err(e) = self.evtchn.close(port) {
            log::warn!("closing port {port}: {e}");
        }
    }

    fn pending(&self) -> Option<EvtchnPort> {
        match self.evtchn.pending() {
            Ok(p) => p,
            Err(e) => {
                log::error!("reading pending event channels: {e}");
                if let Err(e) = self.evtchn.reset() {
                    log::error!("resetting the event channel buffer: {e}");
                }
                None
            }
        }
    }

    fn unmask(&self, port: EvtchnPort) {
        if let Err(e) = self.evtchn.unmask(port) {
            log::warn!("unmasking port {port}: {e}");
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.evtchn.fd())
    }

    fn connected(&self, port: EvtchnPort, domid: DomId) -> bool {
        let Some(privcmd) = &self.privcmd else {
            return true;
        };
        match privcmd.evtchn_status(DOMID_SELF, port) {
            Ok(EvtchnBinding::Interdomain { remote_dom, .. }) => remote_dom == domid,
            Ok(other) => {
                log::debug!("port {port} of domain {domid} is now {other:?}");
                false
            }
            Err(e) => {
                log::warn!("cannot query port {port} of domain {domid}: {e}");
                true
            }
        }
    }

    fn domain_exists(&self, domid: DomId) -> bool {
        let Some(privcmd) = &self.privcmd else {
            // Nothing to ask (warned at start-up): accept, as without
            // this check.
            return true;
        };
        match privcmd.domain_info(domid) {
            Ok(info) => info.is_some(),
            Err(e) => {
                log::warn!(
                    "cannot ask Xen whether domain {domid} exists: {e}; taking it as absent"
                );
                false
            }
        }
    }
}

/// No Xen: socket clients only (for tests and development).
///
/// With no hypervisor to ask, every domain id is taken to exist, so that
/// tools may make any domain a node's owner, as they could before
/// [`Platform::domain_exists`].
#[derive(Debug, Default)]
pub struct NoXen;

impl Platform for NoXen {
    fn map_ring(&mut self, domid: DomId, gfn: u64) -> Result<Box<dyn RingPage>, PlatformError> {
        Err(PlatformError::Map {
            domid,
            gfn,
            grant: GrantError::Invalid("running without Xen"),
            foreign: "running without Xen".to_owned(),
        })
    }
    fn bind(&mut self, _: DomId, _: EvtchnPort) -> Result<EvtchnPort, PlatformError> {
        Err(PlatformError::Evtchn(EvtchnError::NoFreePorts))
    }
    fn notify(&self, _: EvtchnPort) {}
    fn close(&self, _: EvtchnPort) {}
    fn pending(&self) -> Option<EvtchnPort> {
        None
    }
    fn unmask(&self, _: EvtchnPort) {}
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn domain_exists(&self, _: DomId) -> bool {
        true
    }
}
