//! The xenstore wire-protocol client, shared by every platform.
//!
//! [`XsClient`] implements [`Xenstore`] over any [`XsTransport`]: xenstored's
//! Unix socket, Linux's `/dev/xen/xenbus`, or the loopback platform's
//! stream. It is `libxenstore`'s `xs_handle`, with one difference: requests
//! from several threads may be in flight at once.
//!
//! One reader thread per client owns the receiving side. It cuts the stream
//! into messages, hands each reply to the request with the same `req_id`,
//! and queues `XS_WATCH_EVENT`s, which may arrive between any two replies,
//! for [`Xenstore::read_watch`]. Everything the daemon sends is validated
//! (in the guest case it is another domain's code): a message that breaks
//! the protocol -- an oversized payload, a reply to no request, a reply of
//! the wrong type, a string without its NUL -- closes the connection, fails
//! the requests in flight with [`XsError::Protocol`], and every later
//! request with [`XsError::Closed`], as `libxenstore` closes its fd.

mod transport;
mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use transport::{
    daemon_socket_path, domain_device_path, XsStream, XsTransport, DEFAULT_RUNDIR, XENBUS_DEVICE, XENBUS_PROC,
};

use crate::platform::{Transaction, WatchEvent, Xenstore, XsError, XsPerm};
use crate::xen::xs_wire::{errno_for_name, XsType, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE};
use crate::xen::DomId;

/// Most `XS_DIRECTORY_PART` round trips one [`Xenstore::directory`] call
/// makes (restarts included) before giving up on a listing that keeps
/// changing or never ends. At up to 4 KiB per chunk this allows listings of
/// several MiB.
const MAX_DIRECTORY_PARTS: usize = 4096;

/// A xenstore connection: `libxenstore`'s `xs_handle`.
///
/// Dropping it stops the reader thread and closes the transport, which
/// removes the connection's watches and aborts its open transactions in
/// the daemon.
pub struct XsClient<T: XsTransport> {
    inner: Arc<Inner<T>>,
    /// Written to on drop to wake the reader thread out of `poll`.
    stop: UnixStream,
    reader: Option<JoinHandle<()>>,
}

impl<T: XsTransport> std::fmt::Debug for XsClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("XsClient")
            .field("in_flight", &state.pending.len())
            .field("queued_watch_events", &state.watch_queue.len())
            .field("closed", &state.closed.is_some())
            .finish()
    }
}

/// What the client and its reader thread share.
struct Inner<T> {
    transport: T,
    /// Held while writing one message, so that messages do not interleave.
    send_lock: Mutex<()>,
    state: Mutex<State>,
    /// Signalled when a reply arrives or the connection closes.
    replied: Condvar,
    /// Signalled when a watch event is queued or the connection closes.
    watch_fired: Condvar,
}

#[derive(Default)]
struct State {
    next_req_id: u32,
    /// Requests in flight, by `req_id`.
    pending: HashMap<u32, Pending>,
    /// Watch events not yet read, oldest first, without duplicates.
    watch_queue: VecDeque<WatchEvent>,
    /// `(path, token)` of every event in `watch_queue`.
    queued: HashSet<(String, String)>,
    /// Why the connection closed, once it has.
    closed: Option<Closed>,
}

struct Pending {
    /// The type of the request; the reply must have it (or be `XS_ERROR`).
    ty: XsType,
    reply: Option<Reply>,
}

struct Reply {
    error: bool,
    payload: Vec<u8>,
}

/// Why the connection closed. Kept as data (`XsError` is not `Clone`) and
/// turned into an error for each request it fails.
#[derive(Debug, Clone)]
enum Closed {
    /// The daemon closed the stream.
    Eof,
    /// Reading or writing failed.
    Io(io::ErrorKind, String),
    /// The daemon broke the protocol.
    Protocol(String),
    /// The client is being dropped.
    Dropped,
}

impl Closed {
    fn to_error(&self) -> XsError {
        match self {
            Closed::Eof | Closed::Dropped => XsError::Closed,
            Closed::Io(kind, msg) => XsError::Io(io::Error::new(*kind, msg.clone())),
            Closed::Protocol(msg) => XsError::Protocol(msg.clone()),
        }
    }
}

impl<T: XsTransport> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every
        // update is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection closed (first reason wins) and wakes everyone.
    fn close(&self, why: Closed) {
        let mut state = self.lock();
        if state.closed.is_none() {
            match &why {
                Closed::Eof => log::warn!("xenstore daemon closed the connection"),
                Closed::Dropped => log::debug!("xenstore connection closed by its owner"),
                Closed::Io(_, msg) => log::error!("xenstore connection failed: {msg}"),
                Closed::Protocol(msg) => log::error!("closing xenstore connection: protocol error: {msg}"),
            }
            state.closed = Some(why);
            self.transport.shutdown();
        }
        drop(state);
        self.replied.notify_all();
        self.watch_fired.notify_all();
    }

    fn send_all(&self, mut msg: &[u8]) -> io::Result<()> {
        let _guard = self.send_lock.lock().unwrap_or_else(|e| e.into_inner());
        while !msg.is_empty() {
            match self.transport.send(msg) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "xenstore transport accepted no bytes")),
                Ok(n) => msg = &msg[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Routes one message from the daemon; an error closes the connection.
    fn dispatch(&self, msg: wire::Message) -> Result<(), String> {
        let ty = msg.header.type_;
        if ty == XsType::WatchEvent as u32 {
            let event = wire::watch_event(&msg.payload).map_err(|e| e.to_string())?;
            let mut state = self.lock();
            // A watch says "something changed here"; a second identical
            // event still unread adds nothing, and dropping it bounds the
            // queue by the number of distinct watched paths.
            if state.queued.insert((event.path.clone(), event.token.clone())) {
                state.watch_queue.push_back(event);
                drop(state);
                self.watch_fired.notify_one();
            }
            return Ok(());
        }
        let mut state = self.lock();
        let req_id = msg.header.req_id;
        let Some(pending) = state.pending.get_mut(&req_id) else {
            return Err(format!("reply of type {ty} to request {req_id}, which is not in flight"));
        };
        if pending.reply.is_some() {
            return Err(format!("second reply to request {req_id}"));
        }
        let error = ty == XsType::Error as u32;
        if !error && ty != pending.ty as u32 {
            return Err(format!("reply of type {ty} to {} request {req_id}", pending.ty.name()));
        }
        pending.reply = Some(Reply { error, payload: msg.payload });
        drop(state);
        self.replied.notify_all();
        Ok(())
    }

    /// The reader thread: polls the transport (and the stop socket), reads
    /// what is there, and dispatches every complete message.
    fn read_loop(&self, stop: &UnixStream) {
        let mut stream = Vec::with_capacity(2 * (XSD_SOCKMSG_SIZE + XENSTORE_PAYLOAD_MAX));
        let mut chunk = vec![0u8; XSD_SOCKMSG_SIZE + XENSTORE_PAYLOAD_MAX];
        loop {
            let ready = match transport::poll_two(self.transport.as_fd(), stop.as_fd()) {
                Ok(ready) => ready,
                Err(e) => return self.close(Closed::Io(e.kind(), format!("poll: {e}"))),
            };
            if ready.second {
                return;
            }
            if !ready.first {
                continue;
            }
            match self.transport.recv(&mut chunk) {
                Ok(0) => return self.close(Closed::Eof),
                Ok(n) => stream.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => continue,
                Err(e) => return self.close(Closed::Io(e.kind(), format!("read: {e}"))),
            }
            let mut used = 0;
            loop {
                match wire::split_message(&stream[used..]) {
                    Ok(None) => break,
                    Ok(Some((msg, len))) => {
                        used += len;
                        if let Err(why) = self.dispatch(msg) {
                            return self.close(Closed::Protocol(why));
                        }
                    }
                    Err(e) => return self.close(Closed::Protocol(e.to_string())),
                }
            }
            stream.drain(..used);
        }
    }
}

/// Runs the client's decoding of daemon messages over arbitrary bytes, for
/// fuzz targets (the reader thread does the same on the live stream).
#[doc(hidden)]
pub fn fuzz_decode_daemon_stream(data: &[u8]) {
    wire::decode_stream(data);
}

impl<T: XsTransport> XsClient<T> {
    /// Starts a client over `transport`, with its reader thread.
    pub fn new(transport: T) -> Result<Self, XsError> {
        let inner = Arc::new(Inner {
            transport,
            send_lock: Mutex::new(()),
            state: Mutex::new(State { next_req_id: 1, ..State::default() }),
            replied: Condvar::new(),
            watch_fired: Condvar::new(),
        });
        let (stop, stop_rx) = UnixStream::pair()?;
        let reader_inner = Arc::clone(&inner);
        let reader = std::thread::Builder::new()
            .name("xenstore-reader".into())
            .spawn(move || reader_inner.read_loop(&stop_rx))?;
        Ok(Self { inner, stop, reader: Some(reader) })
    }

    /// The transport, e.g. to check which one [`XsStream::open_default`] chose.
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// Sends one request and waits for its reply. `path` only labels errors.
    fn call(&self, ty: XsType, tx: Transaction, payload: &[u8], path: &str) -> Result<Vec<u8>, XsError> {
        // Refuse what cannot be encoded before taking a request id.
        wire::payload_len(ty, payload.len())?;
        let req_id = {
            let mut state = self.inner.lock();
            if state.closed.is_some() {
                return Err(XsError::Closed);
            }
            let mut id = state.next_req_id;
            while state.pending.contains_key(&id) {
                id = id.wrapping_add(1);
            }
            state.next_req_id = id.wrapping_add(1);
            state.pending.insert(id, Pending { ty, reply: None });
            id
        };
        let msg = match wire::encode(ty, req_id, tx.0, payload) {
            Ok(msg) => msg,
            Err(e) => {
                self.inner.lock().pending.remove(&req_id);
                return Err(e);
            }
        };
        if let Err(e) = self.inner.send_all(&msg) {
            self.inner.lock().pending.remove(&req_id);
            self.inner.close(Closed::Io(e.kind(), format!("write: {e}")));
            return Err(XsError::Io(e));
        }

        let mut state = self.inner.lock();
        let reply = loop {
            if let Some(pending) = state.pending.get_mut(&req_id) {
                if let Some(reply) = pending.reply.take() {
                    state.pending.remove(&req_id);
                    break reply;
                }
            }
            if let Some(closed) = &state.closed {
                let err = closed.to_error();
                state.pending.remove(&req_id);
                return Err(err);
            }
            state = self.inner.replied.wait(state).unwrap_or_else(|e| e.into_inner());
        };
        drop(state);

        if reply.error {
            let name = wire::error_name(&reply.payload).inspect_err(|e| self.protocol_error(e))?;
            let errno = errno_for_name(&name);
            return Err(XsError::Daemon { op: ty.name(), path: path.to_owned(), name, errno });
        }
        Ok(reply.payload)
    }

    /// A reply failed validation after it was routed: close like the
    /// reader does for framing errors.
    fn protocol_error(&self, e: &XsError) {
        self.inner.close(Closed::Protocol(e.to_string()));
    }

    /// Sends a request whose reply is `"OK"`.
    fn call_ack(&self, ty: XsType, tx: Transaction, payload: &[u8], path: &str) -> Result<(), XsError> {
        let reply = self.call(ty, tx, payload, path)?;
        wire::ack(&reply, ty).inspect_err(|e| self.protocol_error(e))
    }

    /// Sends a request made of NUL-terminated strings.
    fn call_strings(&self, ty: XsType, tx: Transaction, strings: &[&str]) -> Result<Vec<u8>, XsError> {
        let mut payload = Vec::new();
        for s in strings {
            wire::push_str(&mut payload, "argument", s)?;
        }
        self.call(ty, tx, &payload, strings.first().copied().unwrap_or(""))
    }

    /// Checks a reply with `decode`, closing the connection if it is bad.
    fn decode<R>(&self, reply: &[u8], decode: impl FnOnce(&[u8]) -> Result<R, XsError>) -> Result<R, XsError> {
        decode(reply).inspect_err(|e| self.protocol_error(e))
    }

    fn path_request(&self, ty: XsType, tx: Transaction, path: &str) -> Result<Vec<u8>, XsError> {
        let mut payload = Vec::with_capacity(path.len() + 1);
        wire::push_path(&mut payload, path)?;
        self.call(ty, tx, &payload, path)
    }

    /// Lists a directory too large for one reply, chunk by chunk
    /// (`XS_DIRECTORY_PART`), restarting if the node changes meanwhile.
    fn directory_parts(&self, tx: Transaction, path: &str) -> Result<Vec<String>, XsError> {
        let mut names = Vec::new();
        let mut generation: Option<String> = None;
        let mut offset = 0usize;
        for _ in 0..MAX_DIRECTORY_PARTS {
            let mut payload = Vec::new();
            wire::push_path(&mut payload, path)?;
            wire::push_str(&mut payload, "offset", &offset.to_string())?;
            let reply = self.call(XsType::DirectoryPart, tx, &payload, path)?;
            let part = self.decode(&reply, wire::directory_part)?;
            if generation.as_ref().is_some_and(|g| *g != part.generation) {
                log::debug!("xenstore directory {path} changed while listed in parts; restarting");
                names.clear();
                offset = 0;
                generation = None;
                continue;
            }
            generation = Some(part.generation);
            if part.consumed == 0 && !part.last {
                let e = XsError::Protocol(format!("XS_DIRECTORY_PART reply for {path} makes no progress"));
                self.protocol_error(&e);
                return Err(e);
            }
            offset += part.consumed;
            names.extend(part.names);
            if part.last {
                return Ok(names);
            }
        }
        Err(XsError::Protocol(format!(
            "listing {path} did not finish within {MAX_DIRECTORY_PARTS} XS_DIRECTORY_PART requests"
        )))
    }

    /// Tells the daemon about a new domain's ring page and event channel
    /// (`XS_INTRODUCE`).
    pub fn introduce_domain(&self, domid: DomId, gfn: u64, port: u32) -> Result<(), XsError> {
        let (d, g, p) = (domid.to_string(), gfn.to_string(), port.to_string());
        let reply = self.call_strings(XsType::Introduce, Transaction::NONE, &[&d, &g, &p])?;
        self.decode(&reply, |r| wire::ack(r, XsType::Introduce))
    }

    /// Makes the daemon forget a domain (`XS_RELEASE`).
    pub fn release_domain(&self, domid: DomId) -> Result<(), XsError> {
        let reply = self.call_strings(XsType::Release, Transaction::NONE, &[&domid.to_string()])?;
        self.decode(&reply, |r| wire::ack(r, XsType::Release))
    }

    /// Tells the daemon a domain resumed after suspend (`XS_RESUME`).
    pub fn resume_domain(&self, domid: DomId) -> Result<(), XsError> {
        let reply = self.call_strings(XsType::Resume, Transaction::NONE, &[&domid.to_string()])?;
        self.decode(&reply, |r| wire::ack(r, XsType::Resume))
    }

    /// Whether the daemon knows `domid` (`XS_IS_DOMAIN_INTRODUCED`).
    pub fn is_domain_introduced(&self, domid: DomId) -> Result<bool, XsError> {
        let reply = self.call_strings(XsType::IsDomainIntroduced, Transaction::NONE, &[&domid.to_string()])?;
        self.decode(&reply, |r| wire::boolean(r, XsType::IsDomainIntroduced))
    }

    /// Lets `domid` manage `target`'s nodes, as a device model does
    /// (`XS_SET_TARGET`).
    pub fn set_target(&self, domid: DomId, target: DomId) -> Result<(), XsError> {
        let (d, t) = (domid.to_string(), target.to_string());
        let reply = self.call_strings(XsType::SetTarget, Transaction::NONE, &[&d, &t])?;
        self.decode(&reply, |r| wire::ack(r, XsType::SetTarget))
    }
}

impl XsClient<XsStream> {
    /// Connects as `libxenstore`'s `xs_open(0)` does: xenstored's socket if
    /// it is reachable, otherwise the xenbus device
    /// (see [`XsStream::open_default`]).
    pub fn open_default() -> Result<Self, XsError> {
        Self::new(XsStream::open_default()?)
    }

    /// Connects to the socket or device at `path`.
    pub fn open_path(path: &Path) -> Result<Self, XsError> {
        Self::new(XsStream::open(path)?)
    }
}

impl<T: XsTransport> Drop for XsClient<T> {
    fn drop(&mut self) {
        self.inner.close(Closed::Dropped);
        // The reader may have exited already (closed stream); then the
        // write fails or is never read, which is fine.
        let _ = self.stop.write_all(b"x");
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                log::error!("xenstore reader thread panicked");
            }
        }
    }
}

impl<T: XsTransport> Xenstore for XsClient<T> {
    fn read(&self, tx: Transaction, path: &str) -> Result<Vec<u8>, XsError> {
        self.path_request(XsType::Read, tx, path)
    }

    fn write(&self, tx: Transaction, path: &str, value: &[u8]) -> Result<(), XsError> {
        let mut payload = Vec::with_capacity(path.len() + 1 + value.len());
        wire::push_path(&mut payload, path)?;
        payload.extend_from_slice(value);
        self.call_ack(XsType::Write, tx, &payload, path)
    }

    fn mkdir(&self, tx: Transaction, path: &str) -> Result<(), XsError> {
        let reply = self.path_request(XsType::Mkdir, tx, path)?;
        self.decode(&reply, |r| wire::ack(r, XsType::Mkdir))
    }

    fn rm(&self, tx: Transaction, path: &str) -> Result<(), XsError> {
        let reply = self.path_request(XsType::Rm, tx, path)?;
        self.decode(&reply, |r| wire::ack(r, XsType::Rm))
    }

    fn directory(&self, tx: Transaction, path: &str) -> Result<Vec<String>, XsError> {
        match self.path_request(XsType::Directory, tx, path) {
            Ok(reply) => self.decode(&reply, wire::directory),
            // The listing does not fit in one reply: ask for it in parts.
            Err(e) if e.errno() == Some(libc::E2BIG) => self.directory_parts(tx, path),
            Err(e) => Err(e),
        }
    }

    fn get_perms(&self, tx: Transaction, path: &str) -> Result<Vec<XsPerm>, XsError> {
        let reply = self.path_request(XsType::GetPerms, tx, path)?;
        self.decode(&reply, wire::perms)
    }

    fn set_perms(&self, tx: Transaction, path: &str, perms: &[XsPerm]) -> Result<(), XsError> {
        if perms.is_empty() {
            return Err(XsError::Invalid(format!("setting no permissions on {path}: the owner entry is required")));
        }
        let mut payload = Vec::new();
        wire::push_path(&mut payload, path)?;
        for perm in perms {
            wire::push_str(&mut payload, "permission", &perm.to_string())?;
        }
        self.call_ack(XsType::SetPerms, tx, &payload, path)
    }

    fn transaction_start(&self) -> Result<Transaction, XsError> {
        let reply = self.call(XsType::TransactionStart, Transaction::NONE, b"\0", "")?;
        self.decode(&reply, wire::transaction_id).map(Transaction)
    }

    fn transaction_end(&self, tx: Transaction, commit: bool) -> Result<(), XsError> {
        if tx == Transaction::NONE {
            return Err(XsError::Invalid("ending a transaction requires a transaction id".into()));
        }
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.call_ack(XsType::TransactionEnd, tx, arg, "")
    }

    fn watch(&self, path: &str, token: &str) -> Result<(), XsError> {
        let mut payload = Vec::new();
        wire::push_path(&mut payload, path)?;
        wire::push_str(&mut payload, "watch token", token)?;
        self.call_ack(XsType::Watch, Transaction::NONE, &payload, path)
    }

    /// Removes the watch, and drops its events still queued (as
    /// `libxenstore` does with `XS_UNWATCH_FILTER`).
    fn unwatch(&self, path: &str, token: &str) -> Result<(), XsError> {
        let mut payload = Vec::new();
        wire::push_path(&mut payload, path)?;
        wire::push_str(&mut payload, "watch token", token)?;
        self.call_ack(XsType::Unwatch, Transaction::NONE, &payload, path)?;
        let mut state = self.inner.lock();
        let State { watch_queue, queued, .. } = &mut *state;
        watch_queue.retain(|ev| {
            let keep = !(ev.token == token && wire::is_subpath(path, &ev.path));
            if !keep {
                queued.remove(&(ev.path.clone(), ev.token.clone()));
            }
            keep
        });
        Ok(())
    }

    fn read_watch(&self, timeout: Option<Duration>) -> Result<Option<WatchEvent>, XsError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.inner.lock();
        loop {
            if let Some(event) = state.watch_queue.pop_front() {
                state.queued.remove(&(event.path.clone(), event.token.clone()));
                return Ok(Some(event));
            }
            if state.closed.is_some() {
                return Err(XsError::Closed);
            }
            state = match deadline {
                None => self.inner.watch_fired.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    self.inner.watch_fired.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }

    fn get_domain_path(&self, domid: DomId) -> Result<String, XsError> {
        let reply = self.call_strings(XsType::GetDomainPath, Transaction::NONE, &[&domid.to_string()])?;
        self.decode(&reply, |r| wire::single_string(r, "XS_GET_DOMAIN_PATH reply"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
