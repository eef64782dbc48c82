//! The client against a scripted fake daemon on the other end of a
//! `UnixStream::pair()`: exact bytes on the wire, and what the client does
//! with replies out of order, watch events between replies, errors,
//! oversized or malformed messages and end of stream.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::platform::XsPermAccess;
use crate::xen::xs_wire::XsdSockmsg;

/// The daemon's end: reads requests, writes whatever the test scripts.
struct FakeDaemon {
    sock: UnixStream,
}

impl FakeDaemon {
    /// Reads one request: header and payload.
    fn recv(&mut self) -> (XsdSockmsg, Vec<u8>) {
        let mut header = [0u8; 16];
        self.sock.read_exact(&mut header).unwrap();
        let header = XsdSockmsg::read_from_bytes(&header).unwrap();
        let mut payload = vec![0u8; header.len as usize];
        self.sock.read_exact(&mut payload).unwrap();
        (header, payload)
    }

    /// Reads one request and checks its exact bytes.
    fn expect(&mut self, ty: XsType, tx_id: u32, payload: &[u8]) -> u32 {
        let (header, got) = self.recv();
        assert_eq!(
            (header.type_, header.tx_id, header.len as usize),
            (ty as u32, tx_id, payload.len()),
            "header of {}",
            ty.name()
        );
        assert_eq!(got, payload, "payload of {}", ty.name());
        header.req_id
    }

    fn send(&mut self, ty: XsType, req_id: u32, payload: &[u8]) {
        self.send_raw(ty as u32, req_id, payload.len() as u32, payload);
    }

    fn send_raw(&mut self, type_: u32, req_id: u32, len: u32, payload: &[u8]) {
        let header = XsdSockmsg { type_, req_id, tx_id: 0, len };
        self.sock.write_all(header.as_bytes()).unwrap();
        self.sock.write_all(payload).unwrap();
    }

    /// Whether the client closed its end (read sees end of stream).
    fn sees_eof(&mut self) -> bool {
        self.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        matches!(self.sock.read(&mut byte), Ok(0))
    }
}

fn connect() -> (XsClient<UnixStream>, FakeDaemon) {
    let (client, daemon) = UnixStream::pair().unwrap();
    (XsClient::new(client).unwrap(), FakeDaemon { sock: daemon })
}

fn header_bytes(type_: u32, req_id: u32, tx_id: u32, len: u32) -> Vec<u8> {
    XsdSockmsg { type_, req_id, tx_id, len }.as_bytes().to_vec()
}

#[test]
fn read_sends_exact_bytes_and_returns_the_value() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/local/domain/0/name"));
        let mut raw = [0u8; 16 + 21];
        daemon.sock.read_exact(&mut raw).unwrap();
        assert_eq!(raw[..16], header_bytes(2, 1, 0, 21)[..]);
        assert_eq!(&raw[16..], b"/local/domain/0/name\0");
        daemon.send(XsType::Read, 1, b"Domain-0");

        assert_eq!(call.join().unwrap().unwrap(), b"Domain-0");
    });
}

#[test]
fn requests_encode_as_libxenstore_does() {
    let (xs, mut daemon) = connect();
    let owner = XsPerm { domid: 0, access: XsPermAccess::None };
    let reader = XsPerm { domid: 5, access: XsPermAccess::Read };

    thread::scope(|s| {
        let calls = s.spawn(|| {
            xs.write(Transaction(9), "/a", b"v\0x").unwrap();
            xs.mkdir(Transaction::NONE, "/b").unwrap();
            xs.rm(Transaction::NONE, "/c").unwrap();
            xs.set_perms(Transaction::NONE, "/d", &[owner, reader]).unwrap();
            xs.watch("/e", "tok").unwrap();
            xs.unwatch("/e", "tok").unwrap();
            assert_eq!(xs.get_domain_path(7).unwrap(), "/local/domain/7");
            assert_eq!(xs.get_perms(Transaction::NONE, "/d").unwrap(), [owner, reader]);
            xs.introduce_domain(3, 0x1000, 1).unwrap();
            assert!(xs.is_domain_introduced(3).unwrap());
        });

        // The value is raw bytes after the path's NUL, not NUL-terminated.
        let id = daemon.expect(XsType::Write, 9, b"/a\0v\0x");
        daemon.send(XsType::Write, id, b"OK\0");
        let id = daemon.expect(XsType::Mkdir, 0, b"/b\0");
        daemon.send(XsType::Mkdir, id, b"OK\0");
        let id = daemon.expect(XsType::Rm, 0, b"/c\0");
        daemon.send(XsType::Rm, id, b"OK\0");
        let id = daemon.expect(XsType::SetPerms, 0, b"/d\0n0\0r5\0");
        daemon.send(XsType::SetPerms, id, b"OK\0");
        let id = daemon.expect(XsType::Watch, 0, b"/e\0tok\0");
        daemon.send(XsType::Watch, id, b"OK\0");
        let id = daemon.expect(XsType::Unwatch, 0, b"/e\0tok\0");
        daemon.send(XsType::Unwatch, id, b"OK\0");
        let id = daemon.expect(XsType::GetDomainPath, 0, b"7\0");
        daemon.send(XsType::GetDomainPath, id, b"/local/domain/7\0");
        let id = daemon.expect(XsType::GetPerms, 0, b"/d\0");
        daemon.send(XsType::GetPerms, id, b"n0\0r5\0");
        let id = daemon.expect(XsType::Introduce, 0, b"3\x004096\x001\0");
        daemon.send(XsType::Introduce, id, b"OK\0");
        let id = daemon.expect(XsType::IsDomainIntroduced, 0, b"3\0");
        daemon.send(XsType::IsDomainIntroduced, id, b"T\0");

        calls.join().unwrap();
    });
}

#[test]
fn transactions_carry_their_id_and_report_conflicts() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let calls = s.spawn(|| {
            let tx = xs.transaction_start().unwrap();
            assert_eq!(tx, Transaction(42));
            xs.write(tx, "/x", b"1").unwrap();
            xs.transaction_end(tx, true)
        });

        let id = daemon.expect(XsType::TransactionStart, 0, b"\0");
        daemon.send(XsType::TransactionStart, id, b"42\0");
        let id = daemon.expect(XsType::Write, 42, b"/x\x001");
        daemon.send(XsType::Write, id, b"OK\0");
        let id = daemon.expect(XsType::TransactionEnd, 42, b"T\0");
        daemon.send(XsType::Error, id, b"EAGAIN\0");

        let err = calls.join().unwrap().unwrap_err();
        assert!(err.is_again(), "{err}");
    });
    assert!(matches!(xs.transaction_end(Transaction::NONE, false), Err(XsError::Invalid(_))));
}

#[test]
fn replies_out_of_order_and_watch_events_between_them_reach_the_right_caller() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let first = s.spawn(|| xs.read(Transaction::NONE, "/first"));
        let (h1, _) = daemon.recv();
        let second = s.spawn(|| xs.read(Transaction::NONE, "/second"));
        let (h2, _) = daemon.recv();
        assert_ne!(h1.req_id, h2.req_id);

        daemon.send(XsType::WatchEvent, 0, b"/watched/a\0tok\0");
        daemon.send(XsType::Read, h2.req_id, b"two");
        daemon.send(XsType::WatchEvent, 0, b"/watched/b\0tok\0");
        daemon.send(XsType::Read, h1.req_id, b"one");

        assert_eq!(first.join().unwrap().unwrap(), b"one");
        assert_eq!(second.join().unwrap().unwrap(), b"two");
    });
    let ev = |p: &str| WatchEvent { path: p.into(), token: "tok".into() };
    assert_eq!(xs.read_watch(Some(Duration::ZERO)).unwrap(), Some(ev("/watched/a")));
    assert_eq!(xs.read_watch(None).unwrap(), Some(ev("/watched/b")));
    assert_eq!(xs.read_watch(Some(Duration::from_millis(10))).unwrap(), None);
}

#[test]
fn identical_unread_watch_events_are_coalesced_and_unwatch_drops_queued_ones() {
    let (xs, mut daemon) = connect();
    for _ in 0..3 {
        daemon.send(XsType::WatchEvent, 0, b"/a/x\0t1\0");
    }
    daemon.send(XsType::WatchEvent, 0, b"/b\0t2\0");
    daemon.send(XsType::WatchEvent, 0, b"/a/y\0t1\0");

    thread::scope(|s| {
        let call = s.spawn(|| xs.unwatch("/a", "t1"));
        let id = daemon.expect(XsType::Unwatch, 0, b"/a\0t1\0");
        daemon.send(XsType::Unwatch, id, b"OK\0");
        call.join().unwrap().unwrap();
    });

    let event = xs.read_watch(Some(Duration::from_secs(5))).unwrap().unwrap();
    assert_eq!(event, WatchEvent { path: "/b".into(), token: "t2".into() });
    assert_eq!(xs.read_watch(Some(Duration::ZERO)).unwrap(), None);
}

#[test]
fn xs_error_maps_to_errno_and_keeps_the_connection() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/missing"));
        let (h, _) = daemon.recv();
        daemon.send(XsType::Error, h.req_id, b"ENOENT\0");
        let err = call.join().unwrap().unwrap_err();
        assert!(err.is_not_found());
        assert!(
            matches!(&err, XsError::Daemon { op: "XS_READ", path, name, errno: 2 } if path == "/missing" && name == "ENOENT")
        );

        let call = s.spawn(|| xs.read(Transaction::NONE, "/present"));
        let (h, _) = daemon.recv();
        daemon.send(XsType::Read, h.req_id, b"yes");
        assert_eq!(call.join().unwrap().unwrap(), b"yes");
    });
}

#[test]
fn oversized_payload_closes_the_connection() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/big"));
        let (h, _) = daemon.recv();
        daemon.send_raw(XsType::Read as u32, h.req_id, XENSTORE_PAYLOAD_MAX as u32 + 1, b"");
        assert!(matches!(call.join().unwrap(), Err(XsError::Protocol(_))));
    });
    assert!(daemon.sees_eof());
    assert!(matches!(xs.read(Transaction::NONE, "/after"), Err(XsError::Closed)));
    assert!(matches!(xs.read_watch(None), Err(XsError::Closed)));
}

#[test]
fn reply_without_nul_closes_the_connection() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.get_domain_path(1));
        let (h, _) = daemon.recv();
        daemon.send(XsType::GetDomainPath, h.req_id, b"/local/domain/1");
        assert!(matches!(call.join().unwrap(), Err(XsError::Protocol(_))));
    });
    assert!(daemon.sees_eof());
    assert!(matches!(xs.get_domain_path(1), Err(XsError::Closed)));
}

#[test]
fn malformed_watch_event_fails_requests_in_flight() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/x"));
        daemon.recv();
        daemon.send(XsType::WatchEvent, 0, b"/x\0token-without-nul");
        assert!(matches!(call.join().unwrap(), Err(XsError::Protocol(_))));
    });
}

#[test]
fn replies_to_no_request_or_of_the_wrong_type_are_protocol_errors() {
    let (xs, mut daemon) = connect();
    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/x"));
        let (h, _) = daemon.recv();
        daemon.send(XsType::Read, h.req_id + 100, b"stray");
        assert!(matches!(call.join().unwrap(), Err(XsError::Protocol(_))));
    });

    let (xs, mut daemon) = connect();
    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/x"));
        let (h, _) = daemon.recv();
        daemon.send(XsType::Directory, h.req_id, b"a\0");
        assert!(matches!(call.join().unwrap(), Err(XsError::Protocol(_))));
    });
}

#[test]
fn end_of_stream_fails_requests_in_flight_and_later_ones() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/x"));
        let watcher = s.spawn(|| xs.read_watch(None));
        daemon.recv();
        drop(daemon);
        assert!(matches!(call.join().unwrap(), Err(XsError::Closed)));
        assert!(matches!(watcher.join().unwrap(), Err(XsError::Closed)));
    });
    assert!(matches!(xs.read(Transaction::NONE, "/y"), Err(XsError::Closed)));
}

#[test]
fn messages_split_across_reads_are_reassembled() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.read(Transaction::NONE, "/x"));
        let (h, _) = daemon.recv();
        let mut bytes = header_bytes(XsType::Read as u32, h.req_id, 0, 5);
        bytes.extend_from_slice(b"hello");
        for b in bytes {
            daemon.sock.write_all(&[b]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(call.join().unwrap().unwrap(), b"hello");
    });
}

#[test]
fn large_directories_are_listed_in_parts() {
    let (xs, mut daemon) = connect();

    thread::scope(|s| {
        let call = s.spawn(|| xs.directory(Transaction::NONE, "/big"));
        let id = daemon.expect(XsType::Directory, 0, b"/big\0");
        daemon.send(XsType::Error, id, b"E2BIG\0");
        let id = daemon.expect(XsType::DirectoryPart, 0, b"/big\x000\0");
        daemon.send(XsType::DirectoryPart, id, b"8\0aa\0b\0");
        // The node changed (generation 9): the listing restarts at offset 0.
        let id = daemon.expect(XsType::DirectoryPart, 0, b"/big\x005\0");
        daemon.send(XsType::DirectoryPart, id, b"9\0c\0\0");
        let id = daemon.expect(XsType::DirectoryPart, 0, b"/big\x000\0");
        daemon.send(XsType::DirectoryPart, id, b"9\0aa\0");
        let id = daemon.expect(XsType::DirectoryPart, 0, b"/big\x003\0");
        daemon.send(XsType::DirectoryPart, id, b"9\0c\0\0");

        assert_eq!(call.join().unwrap().unwrap(), ["aa", "c"]);
    });
}

#[test]
fn invalid_requests_are_refused_before_sending() {
    let (xs, mut daemon) = connect();

    assert!(matches!(xs.read(Transaction::NONE, "/a\0b"), Err(XsError::Invalid(_))));
    assert!(matches!(xs.watch("/a", "t\0"), Err(XsError::Invalid(_))));
    assert!(matches!(xs.write(Transaction::NONE, "/a", &[0; XENSTORE_PAYLOAD_MAX]), Err(XsError::Invalid(_))));
    assert!(matches!(xs.set_perms(Transaction::NONE, "/a", &[]), Err(XsError::Invalid(_))));

    // Nothing reached the daemon, and the connection still works.
    thread::scope(|s| {
        let call = s.spawn(|| xs.mkdir(Transaction::NONE, "/ok"));
        let id = daemon.expect(XsType::Mkdir, 0, b"/ok\0");
        assert_eq!(id, 1, "refused requests used no request id");
        daemon.send(XsType::Mkdir, id, b"OK\0");
        call.join().unwrap().unwrap();
    });
}

#[test]
fn dropping_the_client_closes_the_stream() {
    let (xs, mut daemon) = connect();

    drop(xs);

    assert!(daemon.sees_eof());
}

#[test]
fn many_threads_share_one_client() {
    let (xs, mut daemon) = connect();
    const N: usize = 16;

    thread::scope(|s| {
        let calls: Vec<_> = (0..N)
            .map(|i| {
                (
                    i,
                    s.spawn({
                        let xs = &xs;
                        move || xs.read(Transaction::NONE, &format!("/n/{i}"))
                    }),
                )
            })
            .collect();
        let mut requests: Vec<_> = (0..N).map(|_| daemon.recv()).collect();
        requests.reverse();
        for (h, payload) in requests {
            let path = std::str::from_utf8(&payload[..payload.len() - 1]).unwrap().to_owned();
            daemon.send(XsType::WatchEvent, 0, format!("{path}\0t\0").as_bytes());
            daemon.send(XsType::Read, h.req_id, path.as_bytes());
        }
        for (i, call) in calls {
            assert_eq!(call.join().unwrap().unwrap(), format!("/n/{i}").as_bytes());
        }
    });
    let mut events = 0;
    while xs.read_watch(Some(Duration::ZERO)).unwrap().is_some() {
        events += 1;
    }
    assert_eq!(events, N);
}
