//! The hypervisor's event channel table.
//!
//! Each domain has ports 1..[`MAX_PORTS`], each unbound (offered to one
//! remote domain) or interdomain (connected to a remote port). A port owns
//! the *bell* of its doorbell; whoever is connected to the port gets a
//! duplicate of it and rings it directly.
//!
//! Each domain also gets a read-only *status page* (like Xen's
//! `shared_info`): one `u32` per port, `generation << 1 | connected`,
//! rewritten by the hypervisor at every change of the port's state. A
//! notifier caches the bell together with the status word it got it with,
//! and uses the cache only while the word is unchanged: one atomic load
//! tells it that the connection it knows is still the one in place.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hypercall_abi::xen::{DomId, EvtchnPort};

use crate::proto::HvError;
use crate::sys::doorbell::{ring, Rung};
use crate::sys::mem::{reopen_read_only, sealed_memfd, Mapping};

/// Ports per domain, port 0 included (it is never allocated, as in Xen).
pub(crate) const MAX_PORTS: u32 = 4096;
/// Bit of a status word set while the port is connected.
pub(crate) const STATUS_CONNECTED: u32 = 1;
/// Size of the status page.
pub(crate) const STATUS_PAGE_BYTES: usize = MAX_PORTS as usize * 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Unbound {
        remote: DomId,
    },
    Interdomain {
        remote: DomId,
        remote_port: EvtchnPort,
    },
}

#[derive(Debug)]
struct Port {
    state: PortState,
    bell: Arc<OwnedFd>,
    word: u32,
}

#[derive(Debug)]
struct DomainPorts {
    ports: BTreeMap<EvtchnPort, Port>,
    status: Mapping,
}

/// Every domain's ports.
#[derive(Debug, Default)]
pub(crate) struct EventChannelTable {
    domains: HashMap<DomId, DomainPorts>,
}

/// A new port's number, status word and the bell of its peer, if bound.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) port: EvtchnPort,
    pub(crate) status: u32,
    pub(crate) peer_bell: Option<Arc<OwnedFd>>,
}

impl DomainPorts {
    /// Sets a port's state and publishes its new status word.
    fn set_state(&mut self, port: EvtchnPort, state: PortState) -> u32 {
        let Some(p) = self.ports.get_mut(&port) else {
            return 0;
        };
        p.state = state;
        let connected = matches!(state, PortState::Interdomain { .. });
        p.word = (p.word.wrapping_add(2) & !STATUS_CONNECTED) | u32::from(connected);
        let word = p.word;
        self.publish(port, word);
        word
    }

    fn publish(&self, port: EvtchnPort, word: u32) {
        // Port numbers are below MAX_PORTS, so the word is in the page.
        if let Err(e) = self
            .status
            .memory()
            .store_u32(port as usize * 4, word, Ordering::Release)
        {
            log::error!("cannot publish the status of port {port}: {e}");
        }
    }

    /// Creates `port`, continuing the generation its word had before, so
    /// that no cache of an earlier incarnation can match the new word.
    fn insert(&mut self, port: EvtchnPort, state: PortState, bell: OwnedFd) -> u32 {
        let word = self
            .status
            .memory()
            .load_u32(port as usize * 4, Ordering::Relaxed)
            .unwrap_or(0);
        self.ports.insert(
            port,
            Port {
                state,
                bell: Arc::new(bell),
                word,
            },
        );
        self.set_state(port, state)
    }

    fn free_port(&self) -> Option<EvtchnPort> {
        (1..MAX_PORTS).find(|p| !self.ports.contains_key(p))
    }
}

impl EventChannelTable {
    /// Registers a domain; returns its status page, read-only.
    pub(crate) fn add_domain(&mut self, domid: DomId) -> Result<OwnedFd, HvError> {
        let internal = |e: std::io::Error| {
            log::error!("cannot create the event channel status page of domain {domid}: {e}");
            HvError::Internal
        };
        let fd =
            sealed_memfd(c"xen-loopback-evtchn-status", STATUS_PAGE_BYTES).map_err(internal)?;
        let status = Mapping::shared(fd.as_fd(), 0, STATUS_PAGE_BYTES, true).map_err(internal)?;
        let ro = reopen_read_only(fd.as_fd()).map_err(internal)?;
        self.domains.insert(
            domid,
            DomainPorts {
                ports: BTreeMap::new(),
                status,
            },
        );
        Ok(ro)
    }

    fn domain(&mut self, domid: DomId) -> Result<&mut DomainPorts, HvError> {
        self.domains.get_mut(&domid).ok_or(HvError::Protocol)
    }

    /// `EVTCHNOP_alloc_unbound`.
    pub(crate) fn alloc_unbound(
        &mut self,
        domid: DomId,
        remote: DomId,
        bell: OwnedFd,
    ) -> Result<Bound, HvError> {
        let d = self.domain(domid)?;
        let port = d.free_port().ok_or(HvError::NoFreePorts)?;
        let status = d.insert(port, PortState::Unbound { remote }, bell);
        Ok(Bound {
            port,
            status,
            peer_bell: None,
        })
    }

    /// `EVTCHNOP_bind_interdomain`.
    pub(crate) fn bind_interdomain(
        &mut self,
        domid: DomId,
        remote: DomId,
        remote_port: EvtchnPort,
        bell: OwnedFd,
    ) -> Result<Bound, HvError> {
        let bad = HvError::BadRemote {
            domid: remote,
            port: remote_port,
        };
        let peer_bell = {
            let r = self.domains.get(&remote).ok_or(bad)?;
            match r.ports.get(&remote_port) {
                Some(p) if p.state == PortState::Unbound { remote: domid } => Arc::clone(&p.bell),
                _ => return Err(bad),
            }
        };
        let d = self.domain(domid)?;
        let port = d.free_port().ok_or(HvError::NoFreePorts)?;
        let state = PortState::Interdomain {
            remote,
            remote_port,
        };
        let status = d.insert(port, state, bell);
        if let Some(r) = self.domains.get_mut(&remote) {
            r.set_state(
                remote_port,
                PortState::Interdomain {
                    remote: domid,
                    remote_port: port,
                },
            );
        }
        Ok(Bound {
            port,
            status,
            peer_bell: Some(peer_bell),
        })
    }

    /// `EVTCHNOP_send`: rings the peer and returns the port's status word
    /// and, if connected, the peer's bell for the caller to cache. A send
    /// on an unbound port is dropped, as in Xen.
    pub(crate) fn send(
        &mut self,
        domid: DomId,
        port: EvtchnPort,
    ) -> Result<(u32, Option<Arc<OwnedFd>>), HvError> {
        let d = self.domain(domid)?;
        let p = d.ports.get(&port).ok_or(HvError::NotBound(port))?;
        let (word, state) = (p.word, p.state);
        let PortState::Interdomain {
            remote,
            remote_port,
        } = state
        else {
            return Ok((word, None));
        };
        let bell = self
            .domains
            .get(&remote)
            .and_then(|r| r.ports.get(&remote_port))
            .map(|p| Arc::clone(&p.bell))
            .ok_or(HvError::Internal)?;
        ring_logged(&bell, remote, remote_port);
        Ok((word, Some(bell)))
    }

    /// `EVTCHNOP_close`: the peer's port becomes unbound (offered to us
    /// again) and is rung, so that it notices.
    pub(crate) fn close(&mut self, domid: DomId, port: EvtchnPort) -> Result<(), HvError> {
        let d = self.domain(domid)?;
        let p = d.ports.remove(&port).ok_or(HvError::NotBound(port))?;
        // Clear the word so that a stale cache can never match it again.
        d.publish(port, p.word.wrapping_add(2) & !STATUS_CONNECTED);
        if let PortState::Interdomain {
            remote,
            remote_port,
        } = p.state
        {
            if let Some(r) = self.domains.get_mut(&remote) {
                r.set_state(remote_port, PortState::Unbound { remote: domid });
                if let Some(rp) = r.ports.get(&remote_port) {
                    ring_logged(&rp.bell, remote, remote_port);
                }
            }
        }
        Ok(())
    }

    /// Closes every port of a domain that went away.
    pub(crate) fn destroy_domain(&mut self, domid: DomId) {
        let ports: Vec<EvtchnPort> = self
            .domains
            .get(&domid)
            .map(|d| d.ports.keys().copied().collect())
            .unwrap_or_default();
        for port in ports {
            let _ = self.close(domid, port);
        }
        self.domains.remove(&domid);
    }
}

fn ring_logged(bell: &OwnedFd, domid: DomId, port: EvtchnPort) {
    match ring(bell.as_fd()) {
        Ok(Rung::Delivered) => {}
        Ok(Rung::Gone) => log::debug!("port {port} of domain {domid} no longer listens"),
        Err(e) => log::warn!("cannot ring port {port} of domain {domid}: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sys::doorbell::{doorbell, Epoll};

    #[test]
    fn bind_send_and_close_follow_xen() {
        let mut t = EventChannelTable::default();
        t.add_domain(1).unwrap();
        t.add_domain(2).unwrap();
        let (rx1, bell1) = doorbell().unwrap();
        let (_rx2, bell2) = doorbell().unwrap();
        let unbound = t.alloc_unbound(1, 2, bell1).unwrap();
        assert_eq!(unbound.status & STATUS_CONNECTED, 0);
        let (_, b3) = doorbell().unwrap();
        assert!(matches!(
            t.bind_interdomain(3, 1, unbound.port, b3),
            Err(HvError::BadRemote { .. })
        ));
        let bound = t.bind_interdomain(2, 1, unbound.port, bell2).unwrap();
        assert_eq!(bound.status & STATUS_CONNECTED, STATUS_CONNECTED);
        let (_, b4) = doorbell().unwrap();
        assert!(
            t.bind_interdomain(2, 1, unbound.port, b4).is_err(),
            "a connected port cannot be bound twice"
        );

        let ep = Epoll::new().unwrap();
        ep.add(rx1.as_fd(), 1).unwrap();
        let (word, bell) = t.send(2, bound.port).unwrap();
        assert_eq!(word, bound.status);
        assert!(bell.is_some());
        assert_eq!(
            ep.wait_one(0).unwrap(),
            Some(1),
            "send rang domain 1's port"
        );

        rx1.drain().unwrap();
        ep.rearm(rx1.as_fd(), 1).unwrap();
        t.close(2, bound.port).unwrap();
        assert_eq!(ep.wait_one(0).unwrap(), Some(1), "closing rings the peer");
        let (word, bell) = t.send(1, unbound.port).unwrap();
        assert_eq!(
            word & STATUS_CONNECTED,
            0,
            "the peer's port is unbound again"
        );
        assert!(bell.is_none());
        assert!(matches!(t.send(2, bound.port), Err(HvError::NotBound(_))));
    }
}
