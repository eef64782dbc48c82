//! The loopback hypervisor: grant tables, event channels and xenstored for
//! the domain processes that connect to it.
//!
//! Each domain process holds one control connection (a `SOCK_SEQPACKET`
//! socket in the hypervisor's directory), opened with a `Hello` that claims
//! its domain id. The connection *is* the domain: when it closes — the
//! process exited, was killed, or sent garbage and was cut off — the
//! domain is destroyed: its ports are closed (peers see them unbound), its
//! mappings of other domains' grants are undone, its own grants are
//! released (pages stay valid for whoever maps them), its xenstore
//! connections are closed and its home in the store removed.

mod evtchn;
mod grants;
pub(crate) mod xenstored;

pub(crate) use evtchn::{MAX_PORTS, STATUS_CONNECTED, STATUS_PAGE_BYTES};

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hypercall_abi::xen::DomId;

use crate::proto::{HvError, Reply, Request, DOMID_FIRST_RESERVED, MAX_MESSAGE};
use crate::sys::doorbell::is_bell;
use crate::sys::seqpacket::{SeqPacket, SeqPacketListener};
use crate::LoopbackError;
use evtchn::EventChannelTable;
use grants::GrantTables;
use xenstored::Xenstored;

/// Name of the hypervisor's control socket in its directory.
pub const SOCKET_NAME: &str = "hypervisor.sock";

#[derive(Debug, Default)]
struct State {
    /// Connected domains and their process ids.
    domains: HashMap<DomId, libc::pid_t>,
    grants: GrantTables,
    evtchn: EventChannelTable,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    xenstored: Xenstored,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every operation checks before it changes anything, so a panic
        // while holding the lock leaves the tables consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A loopback hypervisor, bound to its directory and ready to serve.
#[derive(Debug)]
pub struct Hypervisor {
    listener: SeqPacketListener,
    socket: PathBuf,
    shared: Arc<Shared>,
}

impl Hypervisor {
    /// Binds the control socket in `dir`, which must exist. A socket left
    /// behind by a hypervisor that is gone is replaced; one that still
    /// answers is not.
    pub fn bind(dir: &Path) -> Result<Self, LoopbackError> {
        let socket = dir.join(SOCKET_NAME);
        if socket.exists() {
            if SeqPacket::connect(&socket).is_ok() {
                return Err(LoopbackError::AlreadyServing(socket));
            }
            std::fs::remove_file(&socket).map_err(|source| LoopbackError::Bind {
                path: socket.clone(),
                source,
            })?;
        }
        let listener = SeqPacketListener::bind(&socket).map_err(|source| LoopbackError::Bind {
            path: socket.clone(),
            source,
        })?;
        match crate::sys::raise_fd_limit() {
            Ok(n) => log::debug!("up to {n} open descriptors"),
            Err(e) => log::warn!(
                "cannot raise the open descriptor limit, grants and ports may run short: {e}"
            ),
        }
        log::info!("loopback hypervisor listening on {}", socket.display());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            xenstored: Xenstored::new(),
        });
        Ok(Hypervisor {
            listener,
            socket,
            shared,
        })
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Serves domains until accepting fails; each domain gets a thread.
    pub fn serve(self) -> Result<(), LoopbackError> {
        loop {
            let conn = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if is_transient_accept_error(&e) => {
                    log::warn!("accepting a domain failed, continuing: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
                Err(source) => {
                    return Err(LoopbackError::Io {
                        op: "accept",
                        source,
                    })
                }
            };
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("hv-domain".into())
                .spawn(move || serve_domain(&shared, conn));
            if let Err(e) = spawned {
                log::error!("cannot start a thread for a new domain: {e}");
            }
        }
    }

    /// Serves in a background thread of this process.
    pub fn spawn(
        self,
    ) -> Result<std::thread::JoinHandle<Result<(), LoopbackError>>, LoopbackError> {
        std::thread::Builder::new()
            .name("hv-accept".into())
            .spawn(move || self.serve())
            .map_err(|source| LoopbackError::Io {
                op: "spawn",
                source,
            })
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EPROTO
        )
    )
}

/// Serves one domain's control connection, then destroys the domain.
fn serve_domain(shared: &Shared, conn: SeqPacket) {
    let pid = conn.peer_pid().unwrap_or(0);
    let mut buf = vec![0u8; MAX_MESSAGE];
    // The first message must claim a domain id.
    let domid = match hello(shared, &conn, &mut buf, pid) {
        Some(d) => d,
        None => return,
    };
    log::info!("domain {domid} connected (pid {pid})");
    loop {
        let msg = match conn.recv(&mut buf) {
            Ok(m) if m.len == 0 => break,
            Ok(m) => m,
            Err(e) => {
                log::warn!(
                    "domain {domid} (pid {pid}) sent an unreadable message, destroying it: {e}"
                );
                break;
            }
        };
        let req = match Request::decode(&buf[..msg.len]) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "domain {domid} (pid {pid}) sent a malformed request, destroying it: {e}"
                );
                let _ = conn.send(&Reply::Error(HvError::Protocol).encode(), &[]);
                break;
            }
        };
        log::trace!("domain {domid}: {req:?}");
        let (reply, fds) = handle(shared, domid, req, msg.fds);
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if let Err(e) = conn.send(&reply.encode(), &borrowed) {
            log::warn!("cannot answer domain {domid}, destroying it: {e}");
            break;
        }
    }
    destroy_domain(shared, domid);
    log::info!("domain {domid} (pid {pid}) destroyed");
}

fn hello(shared: &Shared, conn: &SeqPacket, buf: &mut [u8], pid: libc::pid_t) -> Option<DomId> {
    let msg = conn.recv(buf).ok()?;
    let refuse = |e: HvError| {
        log::warn!("refusing a domain connection from pid {pid}: {e}");
        let _ = conn.send(&Reply::Error(e).encode(), &[]);
        None
    };
    let domid = match Request::decode(&buf[..msg.len]) {
        Ok(Request::Hello { domid }) if msg.fds.is_empty() => domid,
        _ => return refuse(HvError::Protocol),
    };
    if domid >= DOMID_FIRST_RESERVED {
        return refuse(HvError::BadDomid(domid));
    }
    let status = {
        let mut st = shared.state();
        if st.domains.contains_key(&domid) {
            return refuse(HvError::DomidInUse(domid));
        }
        match st.evtchn.add_domain(domid) {
            Ok(fd) => {
                st.domains.insert(domid, pid);
                fd
            }
            Err(e) => return refuse(e),
        }
    };
    shared.xenstored.introduce_domain(domid);
    if conn
        .send(
            &Reply::Hello {
                max_ports: MAX_PORTS,
            }
            .encode(),
            &[status.as_fd()],
        )
        .is_err()
    {
        destroy_domain(shared, domid);
        return None;
    }
    Some(domid)
}

fn destroy_domain(shared: &Shared, domid: DomId) {
    {
        let mut st = shared.state();
        st.evtchn.destroy_domain(domid);
        st.grants.destroy_domain(domid);
    }
    shared.xenstored.release_domain(domid);
    // Only now may a new domain claim the id: nothing of the old one is left.
    shared.state().domains.remove(&domid);
}

/// Takes exactly `n` descriptors from a request, or fails.
fn take_fds<const N: usize>(fds: Vec<OwnedFd>) -> Result<[OwnedFd; N], HvError> {
    fds.try_into().map_err(|_| HvError::Protocol)
}

/// Runs one request; returns the reply and the descriptors to attach.
fn handle(
    shared: &Shared,
    domid: DomId,
    req: Request,
    fds: Vec<OwnedFd>,
) -> (Reply, Vec<Arc<OwnedFd>>) {
    match run(shared, domid, req, fds) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("domain {domid}: request refused: {e}");
            (Reply::Error(e), Vec::new())
        }
    }
}

fn run(
    shared: &Shared,
    domid: DomId,
    req: Request,
    fds: Vec<OwnedFd>,
) -> Result<(Reply, Vec<Arc<OwnedFd>>), HvError> {
    let none = Vec::new();
    match req {
        Request::Hello { .. } => Err(HvError::Protocol),
        Request::GrantShare {
            grantee,
            count,
            readonly,
        } => {
            let [memfd] = take_fds(fds)?;
            let refs = shared
                .state()
                .grants
                .share(domid, grantee, count, readonly, memfd)?;
            Ok((Reply::Refs(refs), none))
        }
        Request::GrantEnd { refs } => {
            take_fds::<0>(fds)?;
            shared.state().grants.end(domid, &refs)?;
            Ok((Reply::Ok, none))
        }
        Request::GrantRelease { refs } => {
            take_fds::<0>(fds)?;
            shared.state().grants.release(domid, &refs);
            Ok((Reply::Ok, none))
        }
        Request::GrantMap {
            owner,
            writable,
            refs,
        } => {
            take_fds::<0>(fds)?;
            let m = shared.state().grants.map(domid, owner, &refs, writable)?;
            Ok((
                Reply::Mapped {
                    handle: m.handle,
                    pages: m.pages,
                },
                m.fds,
            ))
        }
        Request::GrantUnmap { handle } => {
            take_fds::<0>(fds)?;
            shared.state().grants.unmap(domid, handle)?;
            Ok((Reply::Ok, none))
        }
        Request::EvtchnAllocUnbound { remote } => {
            let [bell] = take_fds(fds)?;
            check_bell(&bell)?;
            let b = shared.state().evtchn.alloc_unbound(domid, remote, bell)?;
            Ok((
                Reply::Port {
                    port: b.port,
                    status: b.status,
                },
                none,
            ))
        }
        Request::EvtchnBindInterdomain {
            remote,
            remote_port,
        } => {
            let [bell] = take_fds(fds)?;
            check_bell(&bell)?;
            let b = shared
                .state()
                .evtchn
                .bind_interdomain(domid, remote, remote_port, bell)?;
            Ok((
                Reply::Port {
                    port: b.port,
                    status: b.status,
                },
                b.peer_bell.into_iter().collect(),
            ))
        }
        Request::EvtchnSend { port } => {
            take_fds::<0>(fds)?;
            let (status, bell) = shared.state().evtchn.send(domid, port)?;
            Ok((Reply::Sent { status }, bell.into_iter().collect()))
        }
        Request::EvtchnClose { port } => {
            take_fds::<0>(fds)?;
            shared.state().evtchn.close(domid, port)?;
            Ok((Reply::Ok, none))
        }
        Request::XenstoreConnect => {
            take_fds::<0>(fds)?;
            let stream = shared.xenstored.connect(domid).map_err(|e| {
                log::error!("cannot open a xenstore connection for domain {domid}: {e}");
                HvError::Internal
            })?;
            Ok((Reply::Xenstore, vec![Arc::new(OwnedFd::from(stream))]))
        }
    }
}

fn check_bell(fd: &OwnedFd) -> Result<(), HvError> {
    if is_bell(fd.as_fd()) {
        Ok(())
    } else {
        Err(HvError::Invalid(crate::proto::Invalid::BadDoorbell))
    }
}
