//! The daemon without Xen: socket clients (Xen's wire client and raw
//! bytes) and domain rings on in-memory pages, driven from the test.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::xs_wire::{
    XsType, XsdSockmsg, XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_ERROR_PROTO,
    XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE,
};
use hypercall_abi::xen::{DomId, EvtchnPort};
use hypercall_abi::xenstore::XsClient;
use xenstore_engine::{message, FrameReader, Quotas};

use crate::platform::{NoXen, Platform, PlatformError};
use crate::ring::test_page::TestPage;
use crate::ring::{self, RingPage};
use crate::Daemon;

fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rxenstored-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("socket")
}

/// Pages and ports handed out, so the test can play the domains.
#[derive(Debug, Default)]
struct TestXen {
    pages: Vec<(DomId, TestPage)>,
    notified: std::cell::RefCell<Vec<EvtchnPort>>,
    /// Domains whose event channels Xen has closed (dying).
    dead: Vec<DomId>,
    /// Domains Xen has, introduced or not (dom0 need not be listed).
    existing: Vec<DomId>,
}

impl Platform for TestXen {
    fn map_ring(&mut self, domid: DomId, _gfn: u64) -> Result<Box<dyn RingPage>, PlatformError> {
        let page = TestPage::new();
        self.pages.push((domid, page.clone()));
        Ok(Box::new(page))
    }
    fn bind(&mut self, domid: DomId, port: EvtchnPort) -> Result<EvtchnPort, PlatformError> {
        Ok(1000 + u32::from(domid) * 10 + port)
    }
    fn notify(&self, port: EvtchnPort) {
        self.notified.borrow_mut().push(port);
    }
    fn close(&self, _: EvtchnPort) {}
    fn pending(&self) -> Option<EvtchnPort> {
        None
    }
    fn unmask(&self, _: EvtchnPort) {}
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    fn connected(&self, _: EvtchnPort, domid: DomId) -> bool {
        !self.dead.contains(&domid)
    }
    fn domain_exists(&self, domid: DomId) -> bool {
        self.existing.contains(&domid)
    }
}

/// A raw socket client, driven together with the daemon in one thread.
struct Raw {
    s: UnixStream,
    frames: FrameReader,
}

impl Raw {
    fn connect<P: Platform>(d: &mut Daemon<P>, path: &PathBuf) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_nonblocking(true).unwrap();
        d.run_once(0).unwrap();
        Raw {
            s,
            frames: FrameReader::new(),
        }
    }

    fn send(&mut self, ty: XsType, tx: u32, body: &[u8]) {
        self.s.write_all(&message(ty as u32, 7, tx, body)).unwrap();
    }

    /// The next message, running the daemon until it comes.
    fn next<P: Platform>(&mut self, d: &mut Daemon<P>) -> (XsdSockmsg, Vec<u8>) {
        for _ in 0..200 {
            if let Some(m) = self.frames.next_message().unwrap() {
                return m;
            }
            d.run_once(5).unwrap();
            let mut buf = [0u8; 4096];
            match self.s.read(&mut buf) {
                Ok(0) => panic!("daemon hung up"),
                Ok(n) => self.frames.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no reply from the daemon");
    }

    fn call<P: Platform>(&mut self, d: &mut Daemon<P>, ty: XsType, body: &[u8]) -> Vec<u8> {
        self.send(ty, 0, body);
        let (h, b) = self.next(d);
        assert!(
            h.type_ == ty as u32 || h.type_ == XsType::Error as u32,
            "reply type {}",
            h.type_
        );
        b
    }
}

/// The domain's side of a ring page.
struct Guest {
    page: TestPage,
}

impl Guest {
    fn load(&self, off: usize) -> u32 {
        self.page.load_u32(off, Ordering::Acquire).unwrap()
    }
    fn store(&self, off: usize, v: u32) {
        self.page.store_u32(off, v, Ordering::Release).unwrap();
    }
    /// Puts bytes on the request ring (all must fit).
    fn produce(&self, bytes: &[u8]) {
        let prod = self.load(2052);
        for (i, b) in bytes.iter().enumerate() {
            let at = (prod as usize + i) % XENSTORE_RING_SIZE;
            self.page.write(at, std::slice::from_ref(b)).unwrap();
        }
        self.store(2052, prod.wrapping_add(bytes.len() as u32));
    }
    /// Takes everything on the reply ring.
    fn consume(&self) -> Vec<u8> {
        let (cons, prod) = (self.load(2056), self.load(2060));
        let mut out = Vec::new();
        for i in 0..prod.wrapping_sub(cons) {
            let mut b = [0u8];
            self.page
                .read(
                    1024 + (cons.wrapping_add(i) as usize % XENSTORE_RING_SIZE),
                    &mut b,
                )
                .unwrap();
            out.push(b[0]);
        }
        self.store(2056, prod);
        out
    }
}

fn daemon_with_guest(name: &str, domid: DomId) -> (Daemon<TestXen>, Raw, Guest, EvtchnPort) {
    let path = socket_path(name);
    let mut d = Daemon::new(&path, Quotas::default(), TestXen::default()).unwrap();
    let mut dom0 = Raw::connect(&mut d, &path);
    let intro = format!("{domid}\0{}\0{}\0", 0x1234, 3);
    assert_eq!(
        dom0.call(&mut d, XsType::Introduce, intro.as_bytes()),
        b"OK\0"
    );
    let page = d.platform().pages.last().unwrap().1.clone();
    let guest = Guest { page };
    assert_eq!(guest.load(2068), XENSTORE_CONNECTED);
    let port = 1000 + u32::from(domid) * 10 + 3;
    (d, dom0, guest, port)
}

#[test]
fn domain_ring_serves_requests_split_across_events() {
    let (mut d, _dom0, guest, port) = daemon_with_guest("split", 5);
    let req = message(XsType::GetDomainPath as u32, 9, 0, b"5\0");
    guest.produce(&req[..10]);
    d.on_port(port);
    assert!(guest.consume().is_empty(), "half a header gets no reply");
    guest.produce(&req[10..]);
    d.on_port(port);
    let reply = guest.consume();
    let mut f = FrameReader::new();
    f.push(&reply);
    let (h, body) = f.next_message().unwrap().unwrap();
    assert_eq!(
        (h.type_, h.req_id, body.as_slice()),
        (XsType::GetDomainPath as u32, 9, &b"/local/domain/5\0"[..])
    );
    assert!(
        d.platform().notified.borrow().contains(&port),
        "the domain was signalled"
    );
}

#[test]
fn many_requests_flow_through_the_ring_in_order() {
    let (mut d, _dom0, guest, port) = daemon_with_guest("flow", 6);
    let mut replies = FrameReader::new();
    let mut next_id = 0u32;
    let mut got = 0u32;
    // 500 requests: several rings' worth each way.
    while got < 500 {
        while next_id < 500 {
            let m = message(XsType::GetDomainPath as u32, next_id, 0, b"6\0");
            let used = guest.load(2052).wrapping_sub(guest.load(2048)) as usize;
            if used + m.len() > XENSTORE_RING_SIZE {
                break;
            }
            guest.produce(&m);
            next_id += 1;
        }
        d.on_port(port);
        replies.push(&guest.consume());
        while let Some((h, _)) = replies.next_message().unwrap() {
            assert_eq!(h.req_id, got, "replies come in request order");
            got += 1;
        }
    }
    assert_eq!(guest.load(2072), XENSTORE_ERROR_NONE);
}

#[test]
fn bad_ring_indices_drop_only_that_domain() {
    let (mut d, mut dom0, guest, port) = daemon_with_guest("indices", 7);
    guest.store(
        2052,
        guest.load(2048).wrapping_add(XENSTORE_RING_SIZE as u32 + 1),
    );
    d.on_port(port);
    assert_eq!(guest.load(2072), XENSTORE_ERROR_RINGIDX);
    assert!(guest.consume().is_empty());
    assert_eq!(dom0.call(&mut d, XsType::Write, b"/still\0works"), b"OK\0");
    assert_eq!(dom0.call(&mut d, XsType::Release, b"7\0"), b"OK\0");
}

#[test]
fn oversized_payload_from_a_domain_is_a_protocol_error() {
    let (mut d, mut dom0, guest, port) = daemon_with_guest("oversized", 8);
    let mut m = message(XsType::Write as u32, 1, 0, b"");
    m[12..16].copy_from_slice(&5000u32.to_le_bytes());
    guest.produce(&m);
    d.on_port(port);
    assert_eq!(guest.load(2072), XENSTORE_ERROR_PROTO);
    assert_eq!(
        dom0.call(&mut d, XsType::IsDomainIntroduced, b"8\0"),
        b"T\0"
    );
}

#[test]
fn reconnect_request_resets_the_ring() {
    let (mut d, _dom0, guest, port) = daemon_with_guest("reconnect", 9);
    guest.produce(&message(XsType::GetDomainPath as u32, 1, 0, b"9\0"));
    guest.store(2068, hypercall_abi::xen::xs_wire::XENSTORE_RECONNECT);
    d.on_port(port);
    assert_eq!(guest.load(2068), XENSTORE_CONNECTED);
    assert_eq!(
        (guest.load(2048), guest.load(2052)),
        (0, 0),
        "indices start over"
    );
}

#[test]
fn domain_management_and_special_watches() {
    let path = socket_path("manage");
    let mut d = Daemon::new(&path, Quotas::default(), TestXen::default()).unwrap();
    let mut dom0 = Raw::connect(&mut d, &path);
    assert_eq!(
        dom0.call(&mut d, XsType::Watch, b"@introduceDomain\0in\0"),
        b"OK\0"
    );
    assert_eq!(
        dom0.next(&mut d).1,
        b"@introduceDomain\0in\0",
        "first firing"
    );
    assert_eq!(
        dom0.call(&mut d, XsType::Watch, b"@releaseDomain\0out\0"),
        b"OK\0"
    );
    dom0.next(&mut d);
    assert_eq!(
        dom0.call(&mut d, XsType::IsDomainIntroduced, b"4\0"),
        b"F\0"
    );
    assert_eq!(
        dom0.call(&mut d, XsType::Introduce, b"4\x00100\x005\0"),
        b"OK\0"
    );
    assert_eq!(dom0.next(&mut d).1, b"@introduceDomain\0in\0");
    assert_eq!(
        dom0.call(&mut d, XsType::IsDomainIntroduced, b"4\0"),
        b"T\0"
    );
    assert_eq!(dom0.call(&mut d, XsType::Resume, b"4\0"), b"OK\0");
    assert_eq!(
        dom0.call(&mut d, XsType::Introduce, b"0\x00100\x005\0"),
        b"EINVAL\0"
    );
    assert_eq!(dom0.call(&mut d, XsType::Introduce, b"4\0x\0"), b"EINVAL\0");
    assert_eq!(dom0.call(&mut d, XsType::Release, b"4\0"), b"OK\0");
    assert_eq!(dom0.next(&mut d).1, b"@releaseDomain\0out\0");
    assert_eq!(dom0.call(&mut d, XsType::Release, b"4\0"), b"ENOENT\0");
    assert_eq!(
        dom0.call(&mut d, XsType::IsDomainIntroduced, b"4\0"),
        b"F\0"
    );
}

#[test]
fn dying_domains_are_dropped_on_dom_exc() {
    let (mut d, mut dom0, _guest, _port) = daemon_with_guest("dying", 13);
    const VIRQ_PORT: EvtchnPort = 999;
    d.watch_dom_exc(VIRQ_PORT);
    assert_eq!(
        dom0.call(&mut d, XsType::Watch, b"@releaseDomain\0r\0"),
        b"OK\0"
    );
    dom0.next(&mut d);
    d.on_port(VIRQ_PORT);
    assert_eq!(
        dom0.next(&mut d).1,
        b"@releaseDomain\0r\0",
        "fired on every VIRQ_DOM_EXC"
    );
    assert_eq!(
        dom0.call(&mut d, XsType::IsDomainIntroduced, b"13\0"),
        b"T\0",
        "still alive"
    );
    d.platform_mut().dead.push(13);
    d.on_port(VIRQ_PORT);
    assert_eq!(dom0.next(&mut d).1, b"@releaseDomain\0r\0");
    assert_eq!(
        dom0.call(&mut d, XsType::IsDomainIntroduced, b"13\0"),
        b"F\0",
        "its connection went"
    );
}

#[test]
fn guests_cannot_manage_domains_or_control_the_daemon() {
    let (mut d, _dom0, guest, port) = daemon_with_guest("guestctl", 11);
    let mut replies = FrameReader::new();
    for ty in [XsType::Introduce, XsType::Release, XsType::Control] {
        guest.produce(&message(ty as u32, 1, 0, b"11\0"));
        d.on_port(port);
        replies.push(&guest.consume());
        assert_eq!(replies.next_message().unwrap().unwrap().1, b"EACCES\0");
    }
}

#[test]
fn control_lists_and_sets_quotas() {
    let path = socket_path("control");
    let mut d = Daemon::new(&path, Quotas::default(), NoXen).unwrap();
    let mut dom0 = Raw::connect(&mut d, &path);
    let list = dom0.call(&mut d, XsType::Control, b"quota\0");
    assert!(String::from_utf8_lossy(&list).contains("nodes"), "{list:?}");
    assert_eq!(
        dom0.call(&mut d, XsType::Control, b"quota\0watches\x007\0"),
        b"OK\0"
    );
    let list = String::from_utf8(dom0.call(&mut d, XsType::Control, b"quota\0")).unwrap();
    assert!(
        list.lines()
            .any(|l| l.starts_with("watches") && l.trim_end_matches('\0').ends_with(" 7")),
        "{list}"
    );
    assert_eq!(
        dom0.call(&mut d, XsType::Control, b"quota\0bogus\x001\0"),
        b"EINVAL\0"
    );
    assert_eq!(dom0.call(&mut d, XsType::Control, b"log\0on\0"), b"OK\0");
    assert_eq!(
        dom0.call(&mut d, XsType::Introduce, b"3\x001\x001\0"),
        b"EINVAL\0",
        "no Xen, no rings"
    );
}

#[test]
fn oversized_socket_message_closes_only_that_client() {
    let path = socket_path("sockbig");
    let mut d = Daemon::new(&path, Quotas::default(), NoXen).unwrap();
    let mut bad = Raw::connect(&mut d, &path);
    let mut good = Raw::connect(&mut d, &path);
    let mut m = message(XsType::Read as u32, 1, 0, b"");
    m[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    bad.s.write_all(&m).unwrap();
    assert_eq!(bad.next(&mut d).1, b"E2BIG\0");
    assert_eq!(good.call(&mut d, XsType::Write, b"/x\0y"), b"OK\0");
    let mut rest = [0u8; 16];
    for _ in 0..50 {
        d.run_once(5).unwrap();
        match bad.s.read(&mut rest) {
            Ok(0) => return,
            Ok(_) => panic!("unexpected bytes after E2BIG"),
            Err(_) => {}
        }
    }
    panic!("the offender was not disconnected");
}

/// Xen's wire client against the daemon in another thread.
#[test]
fn xen_wire_client_works_against_the_socket() {
    let path = socket_path("client");
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let (path, stop) = (path.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut d = Daemon::new(&path, Quotas::default(), NoXen).unwrap();
            ready_tx.send(()).unwrap();
            d.run(&stop, 20).unwrap();
        })
    };
    ready_rx.recv().unwrap();
    let xs = XsClient::open_path(&path).unwrap();
    let none = Transaction::NONE;
    xs.write(none, "/vm/a", b"1").unwrap();
    assert_eq!(xs.read(none, "/vm/a").unwrap(), b"1");
    assert_eq!(xs.directory(none, "/vm").unwrap(), vec!["a".to_owned()]);
    xs.watch("/vm", "tok").unwrap();
    let ev = xs
        .read_watch(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!((ev.path.as_str(), ev.token.as_str()), ("/vm", "tok"));
    let tx = xs.transaction_start().unwrap();
    assert_eq!(xs.read(tx, "/vm/a").unwrap(), b"1");
    xs.write(tx, "/vm/b", b"2").unwrap();
    let other = XsClient::open_path(&path).unwrap();
    other.write(none, "/vm/a", b"changed").unwrap();
    let err = xs.transaction_end(tx, true).unwrap_err();
    assert!(err.is_again(), "a conflicting commit gets EAGAIN: {err}");
    assert!(xs.read(none, "/vm/b").unwrap_err().is_not_found());
    assert_eq!(xs.get_domain_path(3).unwrap(), "/local/domain/3");
    drop((xs, other));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}

#[test]
fn ring_functions_refuse_inconsistent_reply_indices() {
    let page = TestPage::new();
    page.store_u32(2060, 5000, Ordering::Relaxed).unwrap();
    let mut out: VecDeque<u8> = vec![1, 2, 3].into();
    assert!(matches!(
        ring::write_replies(&page, &mut out),
        Err(ring::RingError::BadIndex { ring: "rsp", .. })
    ));
    assert_eq!(out.len(), 3, "nothing was sent");
}

/// Random bytes on a domain ring: the daemon never panics, and it either
/// answers or marks the ring broken; dom0 keeps working.
#[test]
fn random_ring_traffic_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let (mut d, mut dom0, guest, port) = daemon_with_guest("random", 12);
    for _ in 0..3000 {
        if guest.load(2072) != XENSTORE_ERROR_NONE {
            break;
        }
        let used = guest.load(2052).wrapping_sub(guest.load(2048)) as usize;
        let n = rng.gen_range(0..64).min(XENSTORE_RING_SIZE - used);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        if rng.gen_bool(0.5) && n >= 16 {
            // A plausible header: known type, small length.
            bytes[..16].copy_from_slice(&message(rng.gen_range(0..24), 1, 0, &[])[..16]);
            let len = u32::try_from(n - 16).unwrap();
            bytes[12..16].copy_from_slice(&len.to_le_bytes());
        }
        guest.produce(&bytes);
        d.on_port(port);
        guest.consume();
    }
    assert_eq!(dom0.call(&mut d, XsType::Write, b"/ok\0yes"), b"OK\0");
}

fn daemon_with_dom0(name: &str) -> (Daemon<TestXen>, Raw) {
    let path = socket_path(name);
    let mut d = Daemon::new(&path, Quotas::default(), TestXen::default()).unwrap();
    let mut dom0 = Raw::connect(&mut d, &path);
    assert_eq!(dom0.call(&mut d, XsType::Write, b"/node\0v"), b"OK\0");
    (d, dom0)
}

#[test]
fn set_perms_refuses_an_owner_that_does_not_exist() {
    let (mut d, mut dom0) = daemon_with_dom0("perms-missing");

    let reply = dom0.call(&mut d, XsType::SetPerms, b"/node\0b42\0");

    assert_eq!(reply, b"ENOENT\0");
    assert_eq!(
        dom0.call(&mut d, XsType::GetPerms, b"/node\0"),
        b"n0\0",
        "the node keeps its permissions"
    );
}

#[test]
fn set_perms_accepts_an_owner_xen_has_but_xenstore_does_not_know() {
    let (mut d, mut dom0) = daemon_with_dom0("perms-existing");
    // A domain being built: the toolstack writes its nodes before
    // introducing it.
    d.platform_mut().existing.push(42);

    let reply = dom0.call(&mut d, XsType::SetPerms, b"/node\0n42\0r0\0");

    assert_eq!(reply, b"OK\0");
    assert_eq!(
        dom0.call(&mut d, XsType::GetPerms, b"/node\0"),
        b"n42\0r0\0"
    );
}

#[test]
fn set_perms_accepts_an_introduced_owner_until_it_is_released() {
    // Domain 5 is introduced but, to the platform, not there.
    let (mut d, mut dom0, _guest, _port) = daemon_with_guest("perms-introduced", 5);
    assert_eq!(dom0.call(&mut d, XsType::Write, b"/node\0v"), b"OK\0");

    let introduced = dom0.call(&mut d, XsType::SetPerms, b"/node\0b5\0");
    assert_eq!(dom0.call(&mut d, XsType::Release, b"5\0"), b"OK\0");
    let released = dom0.call(&mut d, XsType::SetPerms, b"/node\0b5\0");

    assert_eq!(introduced, b"OK\0");
    assert_eq!(released, b"ENOENT\0");
}

#[test]
fn set_perms_accepts_missing_domains_after_the_owner() {
    let (mut d, mut dom0) = daemon_with_dom0("perms-others");

    let reply = dom0.call(&mut d, XsType::SetPerms, b"/node\0n0\0r77\0w78\0");

    assert_eq!(reply, b"OK\0");
    assert_eq!(
        dom0.call(&mut d, XsType::GetPerms, b"/node\0"),
        b"n0\0r77\0w78\0"
    );
}

#[test]
fn set_perms_checks_permission_syntax_before_the_owner() {
    let (mut d, mut dom0) = daemon_with_dom0("perms-syntax");

    let reply = dom0.call(&mut d, XsType::SetPerms, b"/node\0b42\0x1\0");

    assert_eq!(
        reply, b"EINVAL\0",
        "a bad entry is reported, not the missing owner"
    );
}

#[test]
fn set_perms_without_xen_accepts_any_owner() {
    let path = socket_path("perms-noxen");
    let mut d = Daemon::new(&path, Quotas::default(), NoXen).unwrap();
    let mut dom0 = Raw::connect(&mut d, &path);
    assert_eq!(dom0.call(&mut d, XsType::Write, b"/node\0v"), b"OK\0");

    let reply = dom0.call(&mut d, XsType::SetPerms, b"/node\0b42\0");

    assert_eq!(reply, b"OK\0");
}
