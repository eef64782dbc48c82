//! The loopback's xenstored: the shared [`xenstore_engine`] served over
//! Unix stream sockets, one per domain connection.
//!
//! A domain gets a connection by asking the hypervisor (which knows who it
//! is), so a connection's domain id cannot be forged. Each connection has a
//! reader thread, which parses and checks each request and runs it on the
//! [`Store`], and a writer thread fed by a bounded queue. A client that
//! sends a malformed header or a payload over `XENSTORE_PAYLOAD_MAX` is
//! answered with an error and disconnected; one that stops reading until
//! its queue fills is disconnected. Neither affects other connections.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hypercall_abi::xen::xs_wire::{XsdSockmsg, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE};
use hypercall_abi::xen::DomId;
use xenstore_engine::{error_message, handle, watch_event, Caller, ConnId, Errno, Fire, Store};
use zerocopy::FromBytes;

/// Messages queued for one client before it counts as not reading.
const OUT_QUEUE: usize = 1024;

struct ConnHandle {
    domid: DomId,
    out: SyncSender<Vec<u8>>,
    stream: UnixStream,
}

struct Inner {
    store: Mutex<Store>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_conn: AtomicU64,
}

/// The xenstore daemon of one loopback hypervisor.
#[derive(Clone)]
pub(crate) struct Xenstored {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Xenstored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xenstored").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data behind (every
    // store operation either completes or returns an error first).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Xenstored {
    /// A daemon with an empty store.
    pub(crate) fn new() -> Self {
        Xenstored {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new()),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Opens a connection for `domid`; returns the client's end.
    pub(crate) fn connect(&self, domid: DomId) -> io::Result<UnixStream> {
        let (client, server) = UnixStream::pair()?;
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let (out, queue) = sync_channel::<Vec<u8>>(OUT_QUEUE);
        let mut writer = server.try_clone()?;
        let kill = server.try_clone()?;
        lock(&self.inner.conns).insert(
            conn,
            ConnHandle {
                domid,
                out: out.clone(),
                stream: kill,
            },
        );
        let spawned = std::thread::Builder::new()
            .name(format!("xs-write-{conn}"))
            .spawn(move || {
                for msg in queue {
                    if writer.write_all(&msg).is_err() {
                        break;
                    }
                }
                let _ = writer.shutdown(Shutdown::Both);
            });
        let inner = Arc::clone(&self.inner);
        let spawned = spawned.and_then(|_| {
            std::thread::Builder::new()
                .name(format!("xs-read-{conn}"))
                .spawn(move || {
                    let caller = Caller { conn, domid };
                    if let Err(e) = serve_connection(&inner, caller, server, &out) {
                        log::debug!("xenstore connection {conn} of domain {domid} ended: {e}");
                    }
                    lock(&inner.conns).remove(&conn);
                    lock(&inner.store).drop_connection(conn);
                })
        });
        if let Err(e) = spawned {
            lock(&self.inner.conns).remove(&conn);
            return Err(e);
        }
        Ok(client)
    }

    /// A domain appeared: create its home and fire `@introduceDomain`.
    pub(crate) fn introduce_domain(&self, domid: DomId) {
        let mut store = lock(&self.inner.store);
        store.introduce_domain(domid);
        deliver(&self.inner, store.take_fires());
    }

    /// A domain went away: close its connections, remove its home and fire
    /// `@releaseDomain`.
    pub(crate) fn release_domain(&self, domid: DomId) {
        for c in lock(&self.inner.conns)
            .values()
            .filter(|c| c.domid == domid)
        {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        let mut store = lock(&self.inner.store);
        store.release_domain(domid);
        deliver(&self.inner, store.take_fires());
    }
}

/// Reads, runs and answers requests until the client goes or misbehaves.
fn serve_connection(
    inner: &Inner,
    caller: Caller,
    mut stream: UnixStream,
    out: &SyncSender<Vec<u8>>,
) -> io::Result<()> {
    let mut header = [0u8; XSD_SOCKMSG_SIZE];
    loop {
        stream.read_exact(&mut header)?;
        let h = XsdSockmsg::read_from_bytes(&header[..])
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let len = h.len as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            let _ = out.try_send(error_message(&h, Errno(libc::E2BIG)));
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("payload of {len} bytes is over the limit"),
            ));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;

        let mut store = lock(&inner.store);
        let reply = handle(&mut store, caller, &h, &payload);
        if out.try_send(reply).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "client does not read its replies",
            ));
        }
        // Still under the store lock, so that events leave in change order.
        deliver(inner, store.take_fires());
    }
}

fn deliver(inner: &Inner, fires: Vec<Fire>) {
    if fires.is_empty() {
        return;
    }
    let conns = lock(&inner.conns);
    for f in fires {
        let Some(c) = conns.get(&f.conn) else {
            continue;
        };
        let Some(event) = watch_event(&f) else {
            continue;
        };
        if c.out.try_send(event).is_err() {
            log::warn!(
                "xenstore connection {} of domain {} is not reading its watch events; closing it",
                f.conn,
                c.domid
            );
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use hypercall_abi::xen::xs_wire::XsType;
    use xenstore_engine::message;

    const OK: &[u8] = b"OK\0";

    fn request(s: &mut UnixStream, ty: XsType, req_id: u32, tx_id: u32, body: &[u8]) {
        s.write_all(&message(ty as u32, req_id, tx_id, body))
            .unwrap();
    }

    fn response(s: &mut UnixStream) -> (XsdSockmsg, Vec<u8>) {
        let mut h = [0u8; XSD_SOCKMSG_SIZE];
        s.read_exact(&mut h).unwrap();
        let h = XsdSockmsg::read_from_bytes(&h[..]).unwrap();
        let mut body = vec![0u8; h.len as usize];
        s.read_exact(&mut body).unwrap();
        (h, body)
    }

    #[test]
    fn wire_requests_get_framed_replies() {
        let xsd = Xenstored::new();
        xsd.introduce_domain(1);
        let mut s = xsd.connect(1).unwrap();
        request(&mut s, XsType::Write, 7, 0, b"name\0vm1");
        let (h, body) = response(&mut s);
        assert_eq!(
            (h.type_, h.req_id, body.as_slice()),
            (XsType::Write as u32, 7, OK)
        );
        request(&mut s, XsType::Read, 8, 0, b"name\0");
        assert_eq!(response(&mut s).1, b"vm1");
        request(&mut s, XsType::Read, 9, 0, b"missing\0");
        let (h, body) = response(&mut s);
        assert_eq!(
            (h.type_, body.as_slice()),
            (XsType::Error as u32, &b"ENOENT\0"[..])
        );
        request(&mut s, XsType::Read, 10, 0, b"no-nul");
        assert_eq!(response(&mut s).1, b"EINVAL\0");
        s.write_all(&message(99, 11, 0, b"")).unwrap();
        assert_eq!(
            response(&mut s).1,
            b"EINVAL\0",
            "unknown types are refused, not fatal"
        );
        request(&mut s, XsType::GetDomainPath, 12, 0, b"5\0");
        assert_eq!(response(&mut s).1, b"/local/domain/5\0");
        request(&mut s, XsType::Watch, 13, 0, b"name\0tok\0");
        assert_eq!(response(&mut s).1, OK);
        let (h, body) = response(&mut s);
        assert_eq!(
            (h.type_, body.as_slice()),
            (XsType::WatchEvent as u32, &b"name\0tok\0"[..])
        );
    }

    #[test]
    fn oversized_payload_closes_only_that_connection() {
        let xsd = Xenstored::new();
        xsd.introduce_domain(1);
        let mut bad = xsd.connect(1).unwrap();
        let mut good = xsd.connect(1).unwrap();
        let mut h = message(XsType::Read as u32, 1, 0, b"");
        h[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        bad.write_all(&h).unwrap();
        assert_eq!(response(&mut bad).1, b"E2BIG\0");
        let mut rest = Vec::new();
        assert_eq!(
            bad.read_to_end(&mut rest).unwrap(),
            0,
            "the offender is disconnected"
        );
        request(&mut good, XsType::Write, 2, 0, b"still\0alive");
        assert_eq!(response(&mut good).1, OK);
    }
}
