//! The daemon: one thread, one `poll` loop over the socket listener, the
//! socket clients and the event channel device, serving the
//! [`xenstore_engine`] store to dom0's tools and to every domain's ring.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use hypercall_abi::platform::XsPerm;
use hypercall_abi::xen::xs_wire::{
    XsType, XsdSockmsg, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX, XENSTORE_RECONNECT,
};
use hypercall_abi::xen::{DomId, EvtchnPort};
use xenstore_engine::{
    error_message, handle, message, watch_event, Caller, ConnId, Errno, FrameError, FrameReader,
    Quotas, Store,
};

use crate::platform::{Platform, PlatformError};
use crate::ring::{self, RingPage};
use crate::sys::{poll, PollFd};

/// Bytes a connection may have waiting to be sent before the daemon stops
/// reading its requests (and drops watch events for it).
const OUT_LIMIT: usize = 256 * 1024;
/// `DOMID_FIRST_RESERVED`: ids from here on name no real domain.
const DOMID_FIRST_RESERVED: DomId = 0x7ff0;
/// Ring rounds served for one event before others get a turn.
const ROUNDS_PER_EVENT: usize = 16;

/// Why the daemon cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `poll` failed.
    #[error("waiting for clients failed: {0}")]
    Poll(#[source] io::Error),
    /// dom0's ring could not be set up.
    #[error("cannot connect dom0's own ring: {0}")]
    Dom0(#[source] PlatformError),
}

/// A domain connection's ring and event channel.
#[derive(Debug)]
struct Link {
    page: Box<dyn RingPage>,
    /// Our end of the event channel.
    port: EvtchnPort,
    /// The domain broke the protocol; its requests are ignored until
    /// it is released.
    dead: bool,
}

#[derive(Debug)]
enum Transport {
    Socket(UnixStream),
    Domain(Link),
}

#[derive(Debug)]
struct Conn {
    domid: DomId,
    transport: Transport,
    frames: FrameReader,
    out: VecDeque<u8>,
}

/// The xenstore daemon.
#[derive(Debug)]
pub struct Daemon<P: Platform> {
    store: Store,
    platform: P,
    listener: UnixListener,
    socket_path: PathBuf,
    conns: BTreeMap<ConnId, Conn>,
    /// Local event channel port → domain connection.
    ports: HashMap<EvtchnPort, ConnId>,
    /// Our port of `VIRQ_DOM_EXC`, if bound.
    dom_exc: Option<EvtchnPort>,
    next_conn: ConnId,
}

impl<P: Platform> Drop for Daemon<P> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

fn einval() -> Errno {
    Errno(libc::EINVAL)
}

/// The NUL-terminated strings of a payload.
fn args(payload: &[u8]) -> Result<Vec<&str>, Errno> {
    let body = payload.strip_suffix(&[0]).ok_or_else(einval)?;
    body.split(|b| *b == 0)
        .map(|s| std::str::from_utf8(s).map_err(|_| einval()))
        .collect()
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, Errno> {
    s.parse().map_err(|_| einval())
}

impl<P: Platform> Daemon<P> {
    /// Listens on `socket_path` (replacing a stale socket) with an empty
    /// store enforcing `quotas`.
    pub fn new(socket_path: &Path, quotas: Quotas, platform: P) -> Result<Self, DaemonError> {
        let listen_err = |source| DaemonError::Listen {
            path: socket_path.to_owned(),
            source,
        };
        match std::fs::remove_file(socket_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(socket_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Daemon {
            store: Store::with_quotas(quotas),
            platform,
            listener,
            socket_path: socket_path.to_owned(),
            conns: BTreeMap::new(),
            ports: HashMap::new(),
            dom_exc: None,
            next_conn: 1,
        })
    }

    /// The platform, e.g. to bind `VIRQ_DOM_EXC` on it.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The platform, mutably.
    pub fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// Fires `@releaseDomain` whenever an event arrives on `port` (the
    /// local port of `VIRQ_DOM_EXC`), as C xenstored does.
    pub fn watch_dom_exc(&mut self, port: EvtchnPort) {
        self.dom_exc = Some(port);
    }

    /// Serves dom0's own ring (its kernel's xenbus): `page` and dom0's
    /// unbound `port`.
    pub fn connect_dom0(
        &mut self,
        page: Box<dyn RingPage>,
        port: EvtchnPort,
    ) -> Result<(), DaemonError> {
        self.add_domain(0, page, port).map_err(DaemonError::Dom0)?;
        self.store.mark_introduced(0);
        self.deliver();
        Ok(())
    }

    fn add_domain(
        &mut self,
        domid: DomId,
        page: Box<dyn RingPage>,
        remote_port: EvtchnPort,
    ) -> Result<ConnId, PlatformError> {
        let port = self.platform.bind(domid, remote_port)?;
        if let Err(e) = ring::announce(page.as_ref()) {
            log::warn!("domain {domid}: cannot announce features on its ring: {e}");
        }
        let id = self.new_conn(
            domid,
            Transport::Domain(Link {
                page,
                port,
                dead: false,
            }),
        );
        self.ports.insert(port, id);
        log::info!("domain {domid} connected on port {remote_port} (local {port})");
        // Requests may be waiting already, and the domain may wait for us.
        self.service_domain(id);
        self.platform.notify(port);
        Ok(id)
    }

    fn new_conn(&mut self, domid: DomId, transport: Transport) -> ConnId {
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                transport,
                frames: FrameReader::new(),
                out: VecDeque::new(),
            },
        );
        id
    }

    /// Runs until `stop` is set (checked at least every `tick_ms`).
    pub fn run(&mut self, stop: &AtomicBool, tick_ms: i32) -> Result<(), DaemonError> {
        while !stop.load(Ordering::Relaxed) {
            self.run_once(tick_ms)?;
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` for something to do, and does it.
    pub fn run_once(&mut self, timeout_ms: i32) -> Result<(), DaemonError> {
        // Order: listener, event channels, then sockets in `ids` order.
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.transport, Transport::Socket(_)))
            .map(|(id, _)| *id)
            .collect();
        let (ready_listener, ready_evtchn, ready) = {
            let mut fds = vec![PollFd::new(self.listener.as_fd(), true, false)];
            let evtchn = self.platform.fd();
            fds.push(match evtchn {
                Some(fd) => PollFd::new(fd, true, false),
                None => PollFd::none(),
            });
            for id in &ids {
                if let Some(Conn {
                    transport: Transport::Socket(s),
                    out,
                    ..
                }) = self.conns.get(id)
                {
                    fds.push(PollFd::new(
                        s.as_fd(),
                        out.len() < OUT_LIMIT,
                        !out.is_empty(),
                    ));
                }
            }
            poll(&mut fds, timeout_ms).map_err(DaemonError::Poll)?;
            (
                fds[0].ready(),
                fds[1].ready(),
                fds[2..].iter().map(PollFd::ready).collect::<Vec<_>>(),
            )
        };
        if ready_listener {
            self.accept();
        }
        if ready_evtchn {
            self.events();
        }
        for (id, ready) in ids.iter().zip(ready) {
            if ready {
                self.service_socket(*id);
            }
        }
        self.flush();
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("dropping a new client: {e}");
                        continue;
                    }
                    let id = self.new_conn(0, Transport::Socket(stream));
                    log::debug!("socket client {id} connected");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accepting a client failed: {e}");
                    return;
                }
            }
        }
    }

    /// Handles pending event channel ports.
    pub fn events(&mut self) {
        // Bounded: the device buffers at most a page of ports.
        for _ in 0..1024 {
            let Some(port) = self.platform.pending() else {
                break;
            };
            self.on_port(port);
            self.platform.unmask(port);
        }
    }

    /// Serves an event on local `port`.
    pub fn on_port(&mut self, port: EvtchnPort) {
        if Some(port) == self.dom_exc {
            self.domains_changed();
        } else if let Some(id) = self.ports.get(&port).copied() {
            self.service_domain(id);
        } else {
            log::debug!("event on unknown port {port}");
        }
    }

    /// `VIRQ_DOM_EXC`: a domain shut down or is dying. Dying domains'
    /// connections go (their event channels are closed), which unmaps
    /// their rings so that Xen can finish destroying them; watchers of
    /// `@releaseDomain` are told in any case, as C xenstored does.
    fn domains_changed(&mut self) {
        let gone: Vec<(ConnId, DomId)> = self
            .conns
            .iter()
            .filter_map(|(id, c)| match &c.transport {
                Transport::Domain(link)
                    if c.domid != 0 && !self.platform.connected(link.port, c.domid) =>
                {
                    Some((*id, c.domid))
                }
                _ => None,
            })
            .collect();
        if gone.is_empty() {
            log::debug!("VIRQ_DOM_EXC: firing @releaseDomain");
            self.store.fire_release();
        }
        for (id, domid) in gone {
            log::info!("domain {domid} is gone; dropping its connection");
            self.close(id);
            self.store.clear_target(domid);
            self.store.mark_released(domid);
        }
        self.deliver();
    }

    fn close(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            if let Transport::Domain(link) = &c.transport {
                self.ports.remove(&link.port);
                self.platform.close(link.port);
            }
            log::debug!("connection {id} of domain {} closed", c.domid);
        }
        self.store.drop_connection(id);
    }

    fn service_socket(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Transport::Socket(stream) = &mut conn.transport else {
            return;
        };
        let mut buf = [0u8; 8192];
        let mut eof = false;
        // Bounded: at most OUT_LIMIT-worth of requests per round.
        for _ in 0..64 {
            match stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.frames.push(&buf[..n]);
                    // A short read drained the socket: save the read that
                    // would only say EAGAIN (poll reports any more).
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("socket client {id}: {e}");
                    eof = true;
                    break;
                }
            }
        }
        let fatal = self.run_requests(id);
        if eof || fatal {
            if fatal {
                // Send the error reply before hanging up.
                self.flush_one(id);
            }
            self.close(id);
        }
    }

    /// Runs the complete requests a connection has sent; `true` if it
    /// broke the framing and must go.
    fn run_requests(&mut self, id: ConnId) -> bool {
        // Bounded by the bytes read in one round.
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return false;
            };
            if conn.out.len() >= OUT_LIMIT {
                return false;
            }
            let caller = Caller {
                conn: id,
                domid: conn.domid,
            };
            let (h, payload) = match conn.frames.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return false,
                Err(FrameError::Oversized(h)) => {
                    log::warn!("connection {id} of domain {} sent an oversized message ({} bytes); dropping it", conn.domid, h.len);
                    conn.out.extend(error_message(&h, Errno(libc::E2BIG)));
                    return true;
                }
            };
            let reply = self.request(caller, &h, &payload);
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.out.extend(reply);
            }
            self.deliver();
        }
    }

    /// One request: domain management here, everything else in the engine.
    fn request(&mut self, caller: Caller, h: &XsdSockmsg, payload: &[u8]) -> Vec<u8> {
        let ty = XsType::try_from(h.type_).ok();
        let managed = matches!(
            ty,
            Some(
                XsType::Introduce
                    | XsType::Release
                    | XsType::Resume
                    | XsType::SetTarget
                    | XsType::Control
            )
        );
        if !managed {
            if ty == Some(XsType::SetPerms) {
                if let Err(e) = self.check_new_owner(caller, payload) {
                    return error_message(h, e);
                }
            }
            return handle(&mut self.store, caller, h, payload);
        }
        let result = if caller.domid != 0 {
            Err(Errno(libc::EACCES))
        } else {
            match ty {
                Some(XsType::Introduce) => self.introduce(payload),
                Some(XsType::Release) => self.release(payload),
                Some(XsType::Resume) => self.resume(payload),
                Some(XsType::SetTarget) => self.set_target(payload),
                _ => self.control(payload),
            }
        };
        match result {
            Ok(body) => message(h.type_, h.req_id, h.tx_id, &body),
            Err(e) => error_message(h, e),
        }
    }

    /// `XS_SET_PERMS`, before the engine runs it: as C xenstored, refuses
    /// with `ENOENT` a new owner (the first permission) that is neither
    /// dom0 nor an introduced domain and that Xen says does not exist.
    /// Other entries may name missing domains (C xenstored keeps them and
    /// ignores them when checking access).
    fn check_new_owner(&self, caller: Caller, payload: &[u8]) -> Result<(), Errno> {
        let Some(owner) = self.new_owner(caller, payload) else {
            return Ok(());
        };
        if owner == 0 || self.store.is_introduced(owner) || self.platform.domain_exists(owner) {
            return Ok(());
        }
        log::debug!(
            "XS_SET_PERMS from domain {}: new owner {owner} does not exist",
            caller.domid
        );
        Err(Errno(libc::ENOENT))
    }

    /// The owner an `XS_SET_PERMS` payload names, or `None` if the engine
    /// refuses the request before looking at domains, as C xenstored does:
    /// no permissions or a malformed one (`EINVAL`), or more than a guest
    /// may set.
    fn new_owner(&self, caller: Caller, payload: &[u8]) -> Option<DomId> {
        let strings = args(payload).ok()?;
        let (_path, perms) = strings.split_first()?;
        if caller.domid != 0 && perms.len() > self.store.quotas().perms_per_node {
            return None;
        }
        let perms = perms
            .iter()
            .map(|p| p.parse::<XsPerm>().ok())
            .collect::<Option<Vec<_>>>()?;
        perms.first().map(|owner| owner.domid)
    }

    fn introduce(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let [domid, gfn, port] = args(payload)?[..] else {
            return Err(einval());
        };
        let domid: DomId = parse(domid)?;
        let gfn: u64 = parse(gfn)?;
        let port: EvtchnPort = parse(port)?;
        if domid == 0 || domid >= DOMID_FIRST_RESERVED {
            return Err(einval());
        }
        if self.domain_conn(domid).is_some() {
            // C xenstored: introducing a live domain again is a no-op.
            return Ok(b"OK\0".to_vec());
        }
        let page = self.platform.map_ring(domid, gfn).map_err(|e| {
            log::error!("XS_INTRODUCE of domain {domid}: {e}");
            Errno(libc::EINVAL)
        })?;
        self.add_domain(domid, page, port).map_err(|e| {
            log::error!("XS_INTRODUCE of domain {domid}: {e}");
            Errno(libc::EINVAL)
        })?;
        self.store.mark_introduced(domid);
        Ok(b"OK\0".to_vec())
    }

    fn domain_conn(&self, domid: DomId) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|(_, c)| c.domid == domid && matches!(c.transport, Transport::Domain(_)))
            .map(|(id, _)| *id)
    }

    fn one_domid(payload: &[u8]) -> Result<DomId, Errno> {
        match args(payload)?[..] {
            [d] => parse(d),
            _ => Err(einval()),
        }
    }

    fn release(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let domid = Self::one_domid(payload)?;
        if domid == 0 {
            return Err(einval());
        }
        let Some(id) = self.domain_conn(domid) else {
            return Err(Errno(libc::ENOENT));
        };
        self.close(id);
        self.store.clear_target(domid);
        self.store.mark_released(domid);
        log::info!("domain {domid} released");
        Ok(b"OK\0".to_vec())
    }

    fn resume(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let domid = Self::one_domid(payload)?;
        if self.domain_conn(domid).is_none() {
            return Err(Errno(libc::ENOENT));
        }
        Ok(b"OK\0".to_vec())
    }

    fn set_target(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let [domid, target] = args(payload)?[..] else {
            return Err(einval());
        };
        let (domid, target): (DomId, DomId) = (parse(domid)?, parse(target)?);
        if self.domain_conn(domid).is_none() || self.domain_conn(target).is_none() {
            return Err(Errno(libc::ENOENT));
        }
        self.store.set_target(domid, target);
        Ok(b"OK\0".to_vec())
    }

    /// `XS_CONTROL`: `log on|off`, `quota [NAME VALUE]`.
    fn control(&mut self, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let a = args(payload)?;
        let text = match a[..] {
            ["log", "on"] => {
                log::set_max_level(log::LevelFilter::Trace);
                "OK".to_owned()
            }
            ["log", "off"] => {
                log::set_max_level(log::LevelFilter::Warn);
                "OK".to_owned()
            }
            ["log"] => format!("log level: {}\n", log::max_level()),
            ["quota"] => self
                .store
                .quotas()
                .list()
                .iter()
                .map(|(n, v)| format!("{n:<16}{v}\n"))
                .collect(),
            ["quota", name, value] => {
                let mut q = self.store.quotas();
                if !q.set(name, parse(value)?) {
                    return Err(einval());
                }
                self.store.set_quotas(q);
                "OK".to_owned()
            }
            ["help"] | [] => "log on|off\nquota [NAME VALUE]\n".to_owned(),
            _ => return Err(einval()),
        };
        let mut body = text.into_bytes();
        body.push(0);
        Ok(body)
    }

    /// Queues the store's watch events on their connections.
    fn deliver(&mut self) {
        for fire in self.store.take_fires() {
            let Some(conn) = self.conns.get_mut(&fire.conn) else {
                continue;
            };
            if conn.out.len() >= OUT_LIMIT {
                log::warn!(
                    "connection {} of domain {} is not reading; dropping a watch event for {}",
                    fire.conn,
                    conn.domid,
                    fire.path
                );
                continue;
            }
            if let Some(m) = watch_event(&fire) {
                conn.out.extend(m);
            }
        }
    }

    /// Serves a domain's ring: replies out, requests in, until neither
    /// moves or its turn is over.
    fn service_domain(&mut self, id: ConnId) {
        let mut moved = false;
        for _ in 0..ROUNDS_PER_EVENT {
            let Some(Conn {
                transport: Transport::Domain(link),
                frames,
                out,
                domid,
            }) = self.conns.get_mut(&id)
            else {
                return;
            };
            if link.dead {
                return;
            }
            let domid = *domid;
            let page = link.page.as_ref();
            let step = (|| -> Result<usize, ring::RingError> {
                if ring::connection(page)? == XENSTORE_RECONNECT {
                    log::info!("domain {domid} asked to reconnect");
                    ring::reset(page)?;
                    *frames = FrameReader::new();
                    out.clear();
                    return Ok(usize::MAX);
                }
                let mut n = ring::write_replies(page, out)?;
                if out.len() < OUT_LIMIT {
                    let mut bytes = Vec::new();
                    n += ring::read_requests(page, &mut bytes)?;
                    frames.push(&bytes);
                }
                Ok(n)
            })();
            match step {
                Ok(usize::MAX) => {
                    self.store.drop_connection(id);
                    moved = true;
                    continue;
                }
                Ok(0) => break,
                Ok(_) => moved = true,
                Err(e) => {
                    log::warn!("domain {domid}: {e}; ignoring it until it is released");
                    let error = match e {
                        ring::RingError::BadIndex { .. } => XENSTORE_ERROR_RINGIDX,
                        ring::RingError::Memory(_) => XENSTORE_ERROR_PROTO,
                    };
                    self.kill_domain(id, error);
                    return;
                }
            }
            if self.run_requests(id) {
                self.flush_one(id);
                self.kill_domain(id, XENSTORE_ERROR_PROTO);
                return;
            }
        }
        if moved {
            if let Some(Conn {
                transport: Transport::Domain(link),
                ..
            }) = self.conns.get(&id)
            {
                self.platform.notify(link.port);
            }
        }
    }

    fn kill_domain(&mut self, id: ConnId, error: u32) {
        if let Some(Conn {
            transport: Transport::Domain(link),
            out,
            ..
        }) = self.conns.get_mut(&id)
        {
            link.dead = true;
            out.clear();
            let _ = ring::set_error(link.page.as_ref(), error);
            self.platform.notify(link.port);
        }
        self.store.drop_connection(id);
    }

    /// Sends what can be sent on every connection.
    fn flush(&mut self) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.out.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush_one(id);
        }
    }

    fn flush_one(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match &mut conn.transport {
            Transport::Socket(s) => {
                let mut broken = false;
                while !conn.out.is_empty() {
                    // One write for all queued replies and events.
                    match s.write(conn.out.make_contiguous()) {
                        Ok(0) => {
                            broken = true;
                            break;
                        }
                        Ok(n) => {
                            conn.out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            broken = true;
                            break;
                        }
                    }
                }
                if broken {
                    self.close(id);
                }
            }
            Transport::Domain(link) if !link.dead => {
                match ring::write_replies(link.page.as_ref(), &mut conn.out) {
                    Ok(0) => {}
                    Ok(_) => self.platform.notify(link.port),
                    Err(e) => {
                        log::warn!(
                            "domain {}: {e}; ignoring it until it is released",
                            conn.domid
                        );
                        self.kill_domain(id, XENSTORE_ERROR_RINGIDX);
                    }
                }
            }
            Transport::Domain(_) => {}
        }
    }
}
