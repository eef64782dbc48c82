//! Event channels on the loopback: [`EventChannels`].
//!
//! Each port bound through a handle is a doorbell whose receiving end sits
//! in the handle's `epoll` set as a one-shot entry: when it fires, the port
//! is reported by [`pending`](EventChannels::pending) and stays masked
//! (disarmed) until [`unmask`](EventChannels::unmask) re-arms it; events
//! rung meanwhile stay in the doorbell and fire at once on re-arming.
//!
//! [`notify`](EventChannels::notify) rings the peer's bell directly. The
//! bell is cached with the port's status word from the hypervisor's status
//! page; while the word is unchanged the connection it was obtained for is
//! still in place, so the fast path is one atomic load and one `send`.
//! Otherwise the notification goes through the hypervisor, which delivers
//! it (or drops it, for an unbound port, as Xen does) and refreshes the cache.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hypercall_abi::platform::{EventChannels, EvtchnError};
use hypercall_abi::xen::{DomId, EvtchnPort};

use crate::domain::{CallError, HvLink};
use crate::hv::STATUS_CONNECTED;
use crate::proto::{HvError, Reply, Request};
use crate::sys::doorbell::{doorbell, ring, Doorbell, Epoll, Rung};

#[derive(Debug)]
struct PeerBell {
    /// The status word the bell was obtained with.
    word: u32,
    bell: OwnedFd,
}

#[derive(Debug)]
struct LocalPort {
    doorbell: Doorbell,
    peer: Option<PeerBell>,
}

/// An event channel handle (`xenevtchn_handle`) of a loopback domain.
#[derive(Debug)]
pub struct LoopbackEventChannels {
    link: Arc<HvLink>,
    epoll: Epoll,
    ports: Mutex<HashMap<EvtchnPort, LocalPort>>,
}

fn evtchn_error(op: &'static str, e: CallError) -> EvtchnError {
    match e {
        CallError::Hv(HvError::NotBound(p)) => EvtchnError::NotBound(p),
        CallError::Hv(HvError::BadRemote { domid, port }) => EvtchnError::BadRemote { domid, port },
        CallError::Hv(HvError::NoFreePorts) => EvtchnError::NoFreePorts,
        e => EvtchnError::Io {
            op,
            source: e.into_io(),
        },
    }
}

fn protocol(op: &'static str) -> EvtchnError {
    EvtchnError::Io {
        op,
        source: CallError::Protocol("unexpected reply").into_io(),
    }
}

impl LoopbackEventChannels {
    pub(crate) fn new(link: Arc<HvLink>) -> std::io::Result<Self> {
        Ok(LoopbackEventChannels {
            link,
            epoll: Epoll::new()?,
            ports: Mutex::new(HashMap::new()),
        })
    }

    fn ports(&self) -> MutexGuard<'_, HashMap<EvtchnPort, LocalPort>> {
        // Every update of the map is a single insert or remove.
        self.ports.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `port` is connected to a remote port right now. A port whose
    /// peer closed it, or died, reads as not connected.
    pub fn is_connected(&self, port: EvtchnPort) -> Result<bool, EvtchnError> {
        if !self.ports().contains_key(&port) {
            return Err(EvtchnError::NotBound(port));
        }
        Ok(self.link.status_word(port) & STATUS_CONNECTED != 0)
    }

    /// Registers a port the hypervisor just created.
    fn add_port(
        &self,
        op: &'static str,
        port: EvtchnPort,
        doorbell: Doorbell,
        peer: Option<PeerBell>,
    ) -> Result<(), EvtchnError> {
        let mut ports = self.ports();
        if let Err(source) = self.epoll.add(doorbell.as_fd(), u64::from(port)) {
            drop(ports);
            let _ = self.link.call(&Request::EvtchnClose { port }, &[]);
            return Err(EvtchnError::Io { op, source });
        }
        ports.insert(port, LocalPort { doorbell, peer });
        Ok(())
    }
}

impl EventChannels for LoopbackEventChannels {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, EvtchnError> {
        let op = "alloc_unbound";
        let (rx, bell) = doorbell().map_err(|source| EvtchnError::Io { op, source })?;
        let (reply, _) = self
            .link
            .call(&Request::EvtchnAllocUnbound { remote }, &[bell.as_fd()])
            .map_err(|e| evtchn_error(op, e))?;
        let Reply::Port { port, .. } = reply else {
            return Err(protocol(op));
        };
        self.add_port(op, port, rx, None)?;
        Ok(port)
    }

    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, EvtchnError> {
        let op = "bind_interdomain";
        let (rx, bell) = doorbell().map_err(|source| EvtchnError::Io { op, source })?;
        let req = Request::EvtchnBindInterdomain {
            remote,
            remote_port,
        };
        let (reply, fds) = self
            .link
            .call(&req, &[bell.as_fd()])
            .map_err(|e| evtchn_error(op, e))?;
        let (Reply::Port { port, status }, Ok([peer])) = (reply, <[OwnedFd; 1]>::try_from(fds))
        else {
            return Err(protocol(op));
        };
        self.add_port(
            op,
            port,
            rx,
            Some(PeerBell {
                word: status,
                bell: peer,
            }),
        )?;
        Ok(port)
    }

    fn notify(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let op = "notify";
        let mut ports = self.ports();
        let p = ports.get_mut(&port).ok_or(EvtchnError::NotBound(port))?;
        if let Some(peer) = &p.peer {
            let word = self.link.status_word(port);
            if word == peer.word && word & STATUS_CONNECTED != 0 {
                match ring(peer.bell.as_fd()) {
                    Ok(Rung::Delivered) => return Ok(()),
                    // The peer went away: the hypervisor knows what happened.
                    Ok(Rung::Gone) => {}
                    Err(source) => return Err(EvtchnError::Io { op, source }),
                }
            }
        }
        // Slow path: the hypervisor delivers (or drops) and refreshes the cache.
        let (reply, fds) = self
            .link
            .call(&Request::EvtchnSend { port }, &[])
            .map_err(|e| evtchn_error(op, e))?;
        let Reply::Sent { status } = reply else {
            return Err(protocol(op));
        };
        p.peer = fds
            .into_iter()
            .next()
            .map(|bell| PeerBell { word: status, bell });
        Ok(())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    fn pending(&self) -> Result<Option<EvtchnPort>, EvtchnError> {
        let op = "pending";
        // Bounded: each round consumes one epoll entry, which stays
        // disarmed; a port closed meanwhile is skipped.
        for _ in 0..64 {
            let Some(data) = self
                .epoll
                .wait_one(0)
                .map_err(|source| EvtchnError::Io { op, source })?
            else {
                return Ok(None);
            };
            let Ok(port) = EvtchnPort::try_from(data) else {
                continue;
            };
            if let Some(p) = self.ports().get(&port) {
                p.doorbell
                    .drain()
                    .map_err(|source| EvtchnError::Io { op, source })?;
                return Ok(Some(port));
            }
        }
        Ok(None)
    }

    fn unmask(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let ports = self.ports();
        let p = ports.get(&port).ok_or(EvtchnError::NotBound(port))?;
        self.epoll
            .rearm(p.doorbell.as_fd(), u64::from(port))
            .map_err(|source| EvtchnError::Io {
                op: "unmask",
                source,
            })
    }

    fn close(&self, port: EvtchnPort) -> Result<(), EvtchnError> {
        let p = self
            .ports()
            .remove(&port)
            .ok_or(EvtchnError::NotBound(port))?;
        let _ = self.epoll.remove(p.doorbell.as_fd());
        self.link
            .call(&Request::EvtchnClose { port }, &[])
            .map_err(|e| evtchn_error("close", e))?;
        Ok(())
    }
}

impl Drop for LoopbackEventChannels {
    fn drop(&mut self) {
        let ports: Vec<EvtchnPort> = self.ports().keys().copied().collect();
        for port in ports {
            if let Err(e) = self.close(port) {
                log::debug!(
                    "closing port {port} of domain {} on drop failed: {e}",
                    self.link.domid()
                );
            }
        }
    }
}
