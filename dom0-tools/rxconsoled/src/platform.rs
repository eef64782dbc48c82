//! What the daemon needs from Xen: the list of domains, a domain's
//! console page, event channels, and the hypervisor's own console ring.
//! [`LinuxXen`] does it through `/dev/xen/*`; tests supply their own.

use std::os::fd::BorrowedFd;

use hypercall_abi::platform::{EventChannels, EvtchnError, GrantError, GrantMap};
use hypercall_abi::xen::domctl::XEN_DOMINF_DYING;
use hypercall_abi::xen::event_channel::EvtchnBinding;
use hypercall_abi::xen::grant_table::GNTTAB_RESERVED_CONSOLE;
use hypercall_abi::xen::hypercall::VIRQ_CON_RING;
use hypercall_abi::xen::{DomId, EvtchnPort};
use xen_linux::{LinuxEvtchn, LinuxGntdev, OpenError, Privcmd, PrivcmdError};

use crate::ring::ConsolePage;

/// `DOMID_SELF`.
const DOMID_SELF: DomId = 0x7ff0;

/// A failed platform operation.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A Xen device could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Mapping the grant failed, and so did the foreign mapping fallback.
    #[error("cannot map the console page of domain {domid}: grant {GNTTAB_RESERVED_CONSOLE}: {grant}; foreign map of frame {mfn:#x}: {foreign}")]
    Map {
        /// The domain.
        domid: DomId,
        /// The frame its `ring-ref` named.
        mfn: u64,
        /// Why the grant mapping failed.
        grant: GrantError,
        /// Why the foreign mapping failed.
        foreign: String,
    },
    /// An event channel operation failed.
    #[error(transparent)]
    Evtchn(#[from] EvtchnError),
    /// A hypercall failed.
    #[error(transparent)]
    Privcmd(#[from] PrivcmdError),
    /// The platform cannot do this.
    #[error("{0} is not available on this platform")]
    Unsupported(&'static str),
}

/// How a console page was mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// Through the domain's reserved console grant: stays valid however
    /// `ring-ref` changes.
    Grant,
    /// By frame number, the `ring-ref` given: remapped if it changes.
    Frame(u64),
}

/// A domain, as the hypervisor lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainStatus {
    /// Its id.
    pub domid: DomId,
    /// Being destroyed: its console must be let go.
    pub dying: bool,
}

/// Xen as the daemon uses it.
pub trait Platform {
    /// Every domain (dom0 included or not), in any order.
    fn domains(&self) -> Result<Vec<DomainStatus>, PlatformError>;
    /// Whether `domid` exists.
    fn domain_exists(&self, domid: DomId) -> bool;
    /// Maps the console page of `domid`: its reserved console grant
    /// (`GNTTAB_RESERVED_CONSOLE`) if possible, else frame `mfn`.
    fn map_console(
        &mut self,
        domid: DomId,
        mfn: u64,
    ) -> Result<(Box<dyn ConsolePage>, Mapped), PlatformError>;
    /// Binds to `port` of `domid`; returns the local port.
    fn bind(&mut self, domid: DomId, port: EvtchnPort) -> Result<EvtchnPort, PlatformError>;
    /// Whether local `port` is still connected to `domid`.
    fn bound(&self, port: EvtchnPort, domid: DomId) -> bool;
    /// Signals the other end of a local port.
    fn notify(&self, port: EvtchnPort);
    /// Closes a local port.
    fn close(&self, port: EvtchnPort);
    /// Takes a pending local port, if any; it stays masked until
    /// [`unmask`](Platform::unmask)ed.
    fn pending(&self) -> Option<EvtchnPort>;
    /// Lets the next event on `port` through.
    fn unmask(&self, port: EvtchnPort);
    /// An fd readable when [`pending`](Platform::pending) has something.
    fn fd(&self) -> Option<BorrowedFd<'_>>;
    /// Binds `VIRQ_CON_RING` (new bytes in the hypervisor's console
    /// ring); returns the local port.
    fn bind_hv_console(&mut self) -> Result<EvtchnPort, PlatformError>;
    /// The hypervisor's console bytes from `index` on (or from the oldest
    /// kept, if `index` is no longer in the ring), and where to go on
    /// from; no bytes once drained.
    fn read_hv_console(&self, index: u32) -> Result<(Vec<u8>, u32), PlatformError>;
}

/// Xen through Linux's `/dev/xen` devices.
#[derive(Debug)]
pub struct LinuxXen {
    evtchn: LinuxEvtchn,
    gntdev: Option<LinuxGntdev>,
    privcmd: Privcmd,
}

impl LinuxXen {
    /// Opens the event channel and privcmd devices (required) and gntdev
    /// (optional: consoles are then mapped by frame number).
    pub fn open() -> Result<Self, PlatformError> {
        let evtchn = LinuxEvtchn::open()?;
        let privcmd = Privcmd::open()?;
        let gntdev = LinuxGntdev::open()
            .map_err(|e| log::warn!("{e}; mapping consoles by frame number instead"))
            .ok();
        Ok(Self {
            evtchn,
            gntdev,
            privcmd,
        })
    }
}

impl Platform for LinuxXen {
    fn domains(&self) -> Result<Vec<DomainStatus>, PlatformError> {
        Ok(self
            .privcmd
            .list_domains()?
            .iter()
            .map(|d| DomainStatus {
                domid: d.domain,
                dying: d.flags & XEN_DOMINF_DYING != 0,
            })
            .collect())
    }

    fn domain_exists(&self, domid: DomId) -> bool {
        match self.privcmd.domain_info(domid) {
            Ok(info) => info.is_some(),
            Err(e) => {
                log::warn!(
                    "cannot ask Xen whether domain {domid} exists: {e}; taking it as present"
                );
                true
            }
        }
    }

    fn map_console(
        &mut self,
        domid: DomId,
        mfn: u64,
    ) -> Result<(Box<dyn ConsolePage>, Mapped), PlatformError> {
        let grant = match &self.gntdev {
            Some(g) => match g.map(domid, &[GNTTAB_RESERVED_CONSOLE], true) {
                Ok(m) => return Ok((Box::new(m), Mapped::Grant)),
                Err(e) => e,
            },
            None => GrantError::Invalid("gntdev is not available"),
        };
        match self.privcmd.map_foreign(domid, &[mfn], true) {
            Ok(m) => {
                log::debug!("domain {domid}: grant map failed ({grant}); mapped frame {mfn:#x}");
                Ok((Box::new(m), Mapped::Frame(mfn)))
            }
            Err(e) => Err(PlatformError::Map {
                domid,
                mfn,
                grant,
                foreign: e.to_string(),
            }),
        }
    }

    fn bind(&mut self, domid: DomId, port: EvtchnPort) -> Result<EvtchnPort, PlatformError> {
        Ok(self.evtchn.bind_interdomain(domid, port)?)
    }

    fn bound(&self, port: EvtchnPort, domid: DomId) -> bool {
        matches!(
            self.privcmd.evtchn_status(DOMID_SELF, port),
            Ok(EvtchnBinding::Interdomain { remote_dom, .. }) if remote_dom == domid
        )
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

    fn bind_hv_console(&mut self) -> Result<EvtchnPort, PlatformError> {
        Ok(self.evtchn.bind_virq(VIRQ_CON_RING)?)
    }

    fn read_hv_console(&self, index: u32) -> Result<(Vec<u8>, u32), PlatformError> {
        let chunk = self.privcmd.read_console(false, Some(index))?;
        Ok((chunk.data, chunk.index))
    }
}
