//! A domain's side of the loopback: its control connection to the
//! hypervisor, and the platform objects built on it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use hypercall_abi::xen::{DomId, EvtchnPort};
use hypercall_abi::xenstore::XsClient;

use crate::evtchn::LoopbackEventChannels;
use crate::grant::{LoopbackGrantMap, LoopbackGrantShare};
use crate::hv::{MAX_PORTS, SOCKET_NAME, STATUS_PAGE_BYTES};
use crate::proto::{HvError, Reply, Request, MAX_MESSAGE};
use crate::sys::mem::Mapping;
use crate::sys::seqpacket::SeqPacket;
use crate::LoopbackError;

/// Why a call to the hypervisor failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The control connection failed.
    Io(io::Error),
    /// The hypervisor refused.
    Hv(HvError),
    /// The reply broke the protocol.
    Protocol(&'static str),
}

impl CallError {
    /// As an `io::Error`, for trait errors that carry one.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            CallError::Io(e) => e,
            CallError::Hv(e) => io::Error::other(e.to_string()),
            CallError::Protocol(m) => io::Error::new(io::ErrorKind::InvalidData, m),
        }
    }
}

/// The control connection, shared by every handle of the domain.
#[derive(Debug)]
pub(crate) struct HvLink {
    domid: DomId,
    sock: Mutex<SeqPacket>,
    /// The event channel status page, read-only.
    status: Mapping,
}

impl HvLink {
    /// Sends a request with `fds` attached and waits for the reply.
    pub(crate) fn call(
        &self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), CallError> {
        // One request in flight at a time: the protocol has no request ids.
        let sock = self.sock.lock().unwrap_or_else(PoisonError::into_inner);
        sock.send(&req.encode(), fds).map_err(CallError::Io)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let got = sock.recv(&mut buf).map_err(CallError::Io)?;
        drop(sock);
        if got.len == 0 {
            return Err(CallError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the hypervisor closed the connection",
            )));
        }
        match Reply::decode(&buf[..got.len]) {
            Ok(Reply::Error(e)) => Err(CallError::Hv(e)),
            Ok(r) => Ok((r, got.fds)),
            Err(_) => Err(CallError::Protocol("undecodable reply")),
        }
    }

    /// The domain id this link claimed.
    pub(crate) fn domid(&self) -> DomId {
        self.domid
    }

    /// The hypervisor's status word for `port` (0 for ports out of range).
    pub(crate) fn status_word(&self, port: EvtchnPort) -> u32 {
        if port >= MAX_PORTS {
            return 0;
        }
        // Acquire: pairs with the hypervisor's Release store of the word.
        self.status
            .memory()
            .load_u32(port as usize * 4, Ordering::Acquire)
            .unwrap_or(0)
    }
}

/// A process's presence on the loopback as one domain.
///
/// Cloning is cheap and shares the connection; the domain is destroyed
/// (ports closed, grants released) when the last clone and every handle
/// made from it are dropped, or the process dies.
#[derive(Debug, Clone)]
pub struct LoopbackDomain {
    link: Arc<HvLink>,
}

impl LoopbackDomain {
    /// Connects to the hypervisor serving `dir` as domain `domid`.
    ///
    /// Fails if no hypervisor serves `dir` or another process holds `domid`.
    pub fn connect(dir: &Path, domid: DomId) -> Result<Self, LoopbackError> {
        let path = dir.join(SOCKET_NAME);
        let sock = SeqPacket::connect(&path).map_err(|source| LoopbackError::Connect {
            path: path.clone(),
            source,
        })?;
        sock.send(&Request::Hello { domid }.encode(), &[])
            .map_err(|source| LoopbackError::Io {
                op: "hello",
                source,
            })?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        let got = sock.recv(&mut buf).map_err(|source| LoopbackError::Io {
            op: "hello",
            source,
        })?;
        if got.len == 0 {
            return Err(LoopbackError::Protocol(
                "the hypervisor closed the connection during hello",
            ));
        }
        let status_fd = match Reply::decode(&buf[..got.len]) {
            Ok(Reply::Hello { max_ports }) if max_ports == MAX_PORTS => {
                match <[OwnedFd; 1]>::try_from(got.fds) {
                    Ok([fd]) => fd,
                    Err(_) => {
                        return Err(LoopbackError::Protocol(
                            "hello reply without the status page",
                        ))
                    }
                }
            }
            Ok(Reply::Hello { .. }) => {
                return Err(LoopbackError::Protocol(
                    "hypervisor with another port count",
                ))
            }
            Ok(Reply::Error(e)) => return Err(LoopbackError::Refused(e.to_string())),
            _ => return Err(LoopbackError::Protocol("unexpected reply to hello")),
        };
        let status =
            Mapping::shared(status_fd.as_fd(), 0, STATUS_PAGE_BYTES, false).map_err(|source| {
                LoopbackError::Io {
                    op: "map the event channel status page",
                    source,
                }
            })?;
        log::debug!("connected to {} as domain {domid}", path.display());
        Ok(LoopbackDomain {
            link: Arc::new(HvLink {
                domid,
                sock: Mutex::new(sock),
                status,
            }),
        })
    }

    /// This domain's id.
    pub fn domid(&self) -> DomId {
        self.link.domid
    }

    /// A new event channel handle (`xenevtchn_open`).
    pub fn event_channels(&self) -> Result<LoopbackEventChannels, LoopbackError> {
        LoopbackEventChannels::new(Arc::clone(&self.link)).map_err(|source| LoopbackError::Io {
            op: "epoll_create",
            source,
        })
    }

    /// The grant-sharing side (`xengntshr_open`).
    pub fn grant_share(&self) -> LoopbackGrantShare {
        LoopbackGrantShare::new(Arc::clone(&self.link))
    }

    /// The grant-mapping side (`xengnttab_open`).
    pub fn grant_map(&self) -> LoopbackGrantMap {
        LoopbackGrantMap::new(Arc::clone(&self.link))
    }

    /// A raw xenstore wire-protocol connection as this domain.
    pub fn xenstore_stream(&self) -> Result<UnixStream, LoopbackError> {
        let (reply, fds) = self
            .link
            .call(&Request::XenstoreConnect, &[])
            .map_err(|e| match e {
                CallError::Hv(e) => LoopbackError::Refused(e.to_string()),
                e => LoopbackError::Io {
                    op: "xenstore connect",
                    source: e.into_io(),
                },
            })?;
        match (reply, <[OwnedFd; 1]>::try_from(fds)) {
            (Reply::Xenstore, Ok([fd])) => Ok(UnixStream::from(fd)),
            _ => Err(LoopbackError::Protocol(
                "xenstore connect reply without its socket",
            )),
        }
    }

    /// A xenstore client as this domain (`xs_open`).
    pub fn xenstore(&self) -> Result<XsClient<UnixStream>, LoopbackError> {
        Ok(XsClient::new(self.xenstore_stream()?)?)
    }
}
