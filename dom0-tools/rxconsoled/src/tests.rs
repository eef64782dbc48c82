//! The daemon against a real xenstore (rxenstored's daemon on a socket
//! in a fresh directory, with in-memory xenstore rings so that
//! `XS_INTRODUCE` and `XS_RELEASE` work and fire `@introduceDomain` and
//! `@releaseDomain`), a fake Xen with in-memory console pages, and real
//! ptys. The test plays the toolstack, the guests and the console
//! client.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{SharedMemoryError, Transaction, Xenstore};
use hypercall_abi::xen::{DomId, EvtchnPort};
use hypercall_abi::xenstore::XsClient;
use xenstore_engine::Quotas;

use crate::platform::{DomainStatus, Mapped, Platform, PlatformError};
use crate::ring::testing::{offsets, TestPage};
use crate::ring::ConsolePage;
use crate::{Daemon, LogStyle, Options, Overflow};

const NONE: Transaction = Transaction::NONE;

// ------------------------------------------------------------ the store

/// rxenstored's platform for the test store: domain rings are plain
/// memory nobody reads, so that domains can be introduced and released.
#[derive(Debug, Default)]
struct StoreXen;

#[derive(Debug)]
struct NullRing(RefCell<Vec<u8>>);

impl rxenstored::ring::RingPage for NullRing {
    fn load_u32(&self, offset: usize, _: Ordering) -> Result<u32, SharedMemoryError> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn store_u32(&self, offset: usize, v: u32, _: Ordering) -> Result<(), SharedMemoryError> {
        self.write(offset, &v.to_le_bytes())
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SharedMemoryError> {
        let page = self.0.borrow();
        buf.copy_from_slice(&page[offset..offset + buf.len()]);
        Ok(())
    }
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), SharedMemoryError> {
        self.0.borrow_mut()[offset..offset + buf.len()].copy_from_slice(buf);
        Ok(())
    }
}

impl rxenstored::Platform for StoreXen {
    fn map_ring(
        &mut self,
        _: DomId,
        _: u64,
    ) -> Result<Box<dyn rxenstored::ring::RingPage>, rxenstored::PlatformError> {
        Ok(Box::new(NullRing(RefCell::new(vec![0; 4096]))))
    }
    fn bind(
        &mut self,
        domid: DomId,
        port: EvtchnPort,
    ) -> Result<EvtchnPort, rxenstored::PlatformError> {
        Ok(1000 + u32::from(domid) * 10 + port)
    }
    fn notify(&self, _: EvtchnPort) {}
    fn close(&self, _: EvtchnPort) {}
    fn pending(&self) -> Option<EvtchnPort> {
        None
    }
    fn unmask(&self, _: EvtchnPort) {}
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn domain_exists(&self, _: DomId) -> bool {
        true
    }
}

/// A unique fresh directory.
fn temp_dir(what: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rxconsoled-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running xenstore daemon; dropping it stops it.
struct TestStore {
    dir: PathBuf,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestStore {
    fn start() -> Self {
        let dir = temp_dir("xs");
        let socket = dir.join("socket");
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (socket, stop) = (socket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut d = rxenstored::Daemon::new(&socket, Quotas::default(), StoreXen).unwrap();
                ready_tx.send(()).unwrap();
                d.run(&stop, 10).unwrap();
            })
        };
        ready_rx.recv().unwrap();
        TestStore {
            dir,
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn client(&self) -> XsClient<UnixStream> {
        XsClient::new(UnixStream::connect(&self.socket).unwrap()).unwrap()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------- fake Xen

#[derive(Debug, Default)]
struct XenState {
    domains: BTreeMap<DomId, bool>,
    pages: BTreeMap<DomId, TestPage>,
    /// `(domid, mfn)` of each mapping made.
    maps: Vec<(DomId, u64)>,
    /// Local port to `(domid, remote port)`.
    bound: BTreeMap<EvtchnPort, (DomId, EvtchnPort)>,
    closed: Vec<EvtchnPort>,
    notified: Vec<EvtchnPort>,
    unmasked: Vec<EvtchnPort>,
    pending: VecDeque<EvtchnPort>,
    next_port: EvtchnPort,
    hv_console: Vec<u8>,
    hv_port: Option<EvtchnPort>,
}

/// Xen for the console daemon: domains the test lists, in-memory console
/// pages, event channels the test fires.
#[derive(Debug, Clone)]
struct FakeXen {
    state: Rc<RefCell<XenState>>,
    kick_rx: Rc<UnixStream>,
    kick_tx: Rc<UnixStream>,
}

impl FakeXen {
    fn new() -> Self {
        let (rx, tx) = UnixStream::pair().unwrap();
        rx.set_nonblocking(true).unwrap();
        FakeXen {
            state: Rc::new(RefCell::new(XenState {
                next_port: 50,
                ..XenState::default()
            })),
            kick_rx: Rc::new(rx),
            kick_tx: Rc::new(tx),
        }
    }

    fn add_domain(&self, domid: DomId) -> TestPage {
        let page = TestPage::new();
        let mut s = self.state.borrow_mut();
        s.domains.insert(domid, false);
        s.pages.insert(domid, page.clone());
        page
    }

    fn remove_domain(&self, domid: DomId) {
        self.state.borrow_mut().domains.remove(&domid);
    }

    /// Our local port bound to `domid`'s console, if any.
    fn local_port(&self, domid: DomId) -> Option<EvtchnPort> {
        let s = self.state.borrow();
        s.bound
            .iter()
            .find(|(_, (d, _))| *d == domid)
            .map(|(l, _)| *l)
    }

    /// The guest (or Xen) signals local port `port`.
    fn kick(&self, port: EvtchnPort) {
        self.state.borrow_mut().pending.push_back(port);
        (&*self.kick_tx).write_all(&[1]).unwrap();
    }
}

impl Platform for FakeXen {
    fn domains(&self) -> Result<Vec<DomainStatus>, PlatformError> {
        Ok(self
            .state
            .borrow()
            .domains
            .iter()
            .map(|(&domid, &dying)| DomainStatus { domid, dying })
            .collect())
    }
    fn domain_exists(&self, domid: DomId) -> bool {
        self.state.borrow().domains.contains_key(&domid)
    }
    fn map_console(
        &mut self,
        domid: DomId,
        mfn: u64,
    ) -> Result<(Box<dyn ConsolePage>, Mapped), PlatformError> {
        let mut s = self.state.borrow_mut();
        s.maps.push((domid, mfn));
        let page = s
            .pages
            .get(&domid)
            .cloned()
            .ok_or(PlatformError::Unsupported("mapping a missing domain"))?;
        Ok((Box::new(page), Mapped::Frame(mfn)))
    }
    fn bind(&mut self, domid: DomId, port: EvtchnPort) -> Result<EvtchnPort, PlatformError> {
        let mut s = self.state.borrow_mut();
        let local = s.next_port;
        s.next_port += 1;
        s.bound.insert(local, (domid, port));
        Ok(local)
    }
    fn bound(&self, port: EvtchnPort, domid: DomId) -> bool {
        self.state
            .borrow()
            .bound
            .get(&port)
            .is_some_and(|(d, _)| *d == domid)
    }
    fn notify(&self, port: EvtchnPort) {
        self.state.borrow_mut().notified.push(port);
    }
    fn close(&self, port: EvtchnPort) {
        let mut s = self.state.borrow_mut();
        s.bound.remove(&port);
        s.closed.push(port);
    }
    fn pending(&self) -> Option<EvtchnPort> {
        let port = self.state.borrow_mut().pending.pop_front();
        if port.is_none() {
            let mut buf = [0u8; 64];
            while matches!((&*self.kick_rx).read(&mut buf), Ok(n) if n > 0) {}
        }
        port
    }
    fn unmask(&self, port: EvtchnPort) {
        self.state.borrow_mut().unmasked.push(port);
    }
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.kick_rx.as_fd())
    }
    fn bind_hv_console(&mut self) -> Result<EvtchnPort, PlatformError> {
        let mut s = self.state.borrow_mut();
        s.hv_port = Some(999);
        Ok(999)
    }
    fn read_hv_console(&self, index: u32) -> Result<(Vec<u8>, u32), PlatformError> {
        let s = self.state.borrow();
        let from = (index as usize).min(s.hv_console.len());
        let to = (from + 4).min(s.hv_console.len());
        Ok((s.hv_console[from..to].to_vec(), to as u32))
    }
}

/// Whether the daemon no longer maps `page`: only the test and the fake
/// Xen hold it.
fn unmapped(page: &TestPage) -> bool {
    page.views() == 2
}

// -------------------------------------------------------------- harness

struct Harness {
    xen: FakeXen,
    xs: XsClient<UnixStream>,
    daemon: Daemon<FakeXen>,
    log_dir: PathBuf,
    // Last: the daemon's connection must close before the store stops.
    _store: TestStore,
}

impl Harness {
    /// A store, a fake Xen with `domains` (console nodes written), and a
    /// daemon logging guests to a fresh directory.
    fn start(domains: &[DomId], options: impl FnOnce(&mut Options)) -> (Harness, Vec<TestPage>) {
        let store = TestStore::start();
        let xs = store.client();
        let xen = FakeXen::new();
        let pages = domains
            .iter()
            .map(|&d| {
                let page = xen.add_domain(d);
                write_console_nodes(&xs, d);
                page
            })
            .collect();
        let log_dir = temp_dir("logs");
        let mut opts = Options {
            log_guest: true,
            log_dir: log_dir.clone(),
            ..Options::default()
        };
        options(&mut opts);
        let daemon_xs: Arc<dyn Xenstore> = Arc::new(store.client());
        let daemon = Daemon::new(daemon_xs, xen.clone(), opts).unwrap();
        (
            Harness {
                xen,
                xs,
                daemon,
                log_dir,
                _store: store,
            },
            pages,
        )
    }

    /// Runs the daemon until `done` holds (or fails the test after 5 s).
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            self.daemon
                .run_once(Some(Duration::from_millis(20)))
                .unwrap();
        }
    }

    fn read(&self, path: &str) -> Option<String> {
        match self.xs.read(NONE, path) {
            Ok(v) => Some(String::from_utf8(v).unwrap()),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("{e}"),
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("guest-{name}.log"))).unwrap_or_default()
    }

    /// The guest of `domid` writes `text` and signals.
    fn guest_says(&self, domid: DomId, page: &TestPage, text: &[u8]) {
        assert_eq!(page.guest().write(text), text.len());
        self.xen.kick(self.xen.local_port(domid).unwrap());
    }

    /// Opens the console's pty as a client does.
    fn attach(&mut self, domid: DomId) -> File {
        let tty = self
            .read(&format!("/local/domain/{domid}/console/tty"))
            .unwrap();
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(tty)
            .unwrap()
    }

    /// Reads from a client until `expected` has arrived.
    fn client_reads(&mut self, client: &mut File, expected: &[u8]) {
        let mut got = Vec::new();
        self.until("the client reads the output", |_| {
            let mut buf = [0u8; 4096];
            if let Ok(n) = client.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got.len() >= expected.len()
        });
        assert_eq!(got, expected);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.log_dir);
    }
}

/// What libxl writes for a PV domain's console, and its name.
fn write_console_nodes(xs: &dyn Xenstore, domid: DomId) {
    let dom = format!("/local/domain/{domid}");
    for (node, value) in [
        ("name".to_owned(), format!("guest{domid}")),
        (
            "console/ring-ref".into(),
            format!("{}", 0x1000 + u32::from(domid)),
        ),
        ("console/port".into(), format!("{}", 2 + u32::from(domid))),
        ("console/limit".into(), "1048576".into()),
        ("console/type".into(), "xenconsoled".into()),
        ("console/output".into(), "pty".into()),
    ] {
        xs.write(NONE, &format!("{dom}/{node}"), value.as_bytes())
            .unwrap();
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn an_introduced_domain_gets_a_pty_a_log_and_both_rings() {
    let (mut h, _) = Harness::start(&[], |_| {});
    let page = h.xen.add_domain(5);
    write_console_nodes(&h.xs, 5);

    h.xs.introduce_domain(5, 1, 1).unwrap();
    h.until("domain 5 is served", |h| h.daemon.serving(5));

    let tty = h.read("/local/domain/5/console/tty").unwrap();
    assert_eq!(Some(Path::new(&tty)), h.daemon.tty(5));
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
    assert_eq!(h.xen.state.borrow().maps, [(5, 0x1005)]);
    let local = h.xen.local_port(5).unwrap();
    assert_eq!(h.xen.state.borrow().bound[&local], (5, 7));

    // Guest output reaches the log and the pty.
    h.guest_says(5, &page, b"Linux version 6.1\r\nlogin: ");
    h.until("the log has the output", |h| {
        h.log("guest5").ends_with("login: ")
    });
    let mut client = h.attach(5);
    h.client_reads(&mut client, b"Linux version 6.1\r\nlogin: ");
    assert_eq!(page.guest().get(offsets::OUT_CONS), 26, "output consumed");
    assert!(h.xen.state.borrow().notified.contains(&local));

    // Client input reaches the guest's ring.
    client.write_all(b"root\r").unwrap();
    let mut typed = Vec::new();
    h.until("the guest reads the input", |_| {
        typed.extend(page.guest().read());
        typed.len() >= 5
    });
    assert_eq!(typed, b"root\r");
}

#[test]
fn domains_existing_at_start_are_served_and_others_left_alone() {
    let store_types = [(7, Some("ioemu")), (8, None)];
    let (mut h, _) = Harness::start(&[6], |_| {});
    for (domid, ty) in store_types {
        h.xen.add_domain(domid);
        write_console_nodes(&h.xs, domid);
        match ty {
            Some(t) => {
                h.xs.write(
                    NONE,
                    &format!("/local/domain/{domid}/console/type"),
                    t.as_bytes(),
                )
                .unwrap()
            }
            // Not finished: no port yet.
            None => h.xs.rm(NONE, "/local/domain/8/console/port").unwrap(),
        }
    }
    h.xs.introduce_domain(7, 1, 1).unwrap();
    h.xs.introduce_domain(8, 1, 1).unwrap();

    h.until("domains 7 and 8 are known", |h| {
        h.daemon.domids() == [6, 7, 8]
    });
    for _ in 0..5 {
        h.daemon.run_once(Some(Duration::from_millis(10))).unwrap();
    }

    assert!(h.daemon.serving(6));
    assert!(!h.daemon.serving(7), "QEMU's console");
    assert!(!h.daemon.serving(8), "no port yet");
    assert_eq!(h.read("/local/domain/7/console/tty"), None);
    let mapped: Vec<DomId> = h.xen.state.borrow().maps.iter().map(|m| m.0).collect();
    assert!(!mapped.contains(&7));

    // The toolstack finishes: the watch on the console directory fires.
    h.xs.write(NONE, "/local/domain/8/console/port", b"10")
        .unwrap();
    h.until("domain 8 is served", |h| h.daemon.serving(8));
}

#[test]
fn a_guest_corrupting_its_indices_loses_only_its_own_console() {
    let (mut h, pages) = Harness::start(&[5, 6], |_| {});
    h.until("both are served", |h| {
        h.daemon.serving(5) && h.daemon.serving(6)
    });
    let port5 = h.xen.local_port(5).unwrap();

    // Guest 5 claims more output than its ring holds.
    let cons = pages[0].guest().get(offsets::OUT_CONS);
    pages[0]
        .guest()
        .set(offsets::OUT_PROD, cons.wrapping_add(5000));
    h.xen.kick(port5);
    h.until("domain 5 is no longer served", |h| !h.daemon.serving(5));

    assert!(h.xen.state.borrow().closed.contains(&port5));
    assert!(unmapped(&pages[0]), "its page is unmapped");
    assert_eq!(h.daemon.domids(), [5, 6], "the domain is still known");
    // A change of its nodes does not bring it back.
    h.xs.write(NONE, "/local/domain/5/console/limit", b"4096")
        .unwrap();
    for _ in 0..5 {
        h.daemon.run_once(Some(Duration::from_millis(10))).unwrap();
    }
    assert!(!h.daemon.serving(5));
    // The other domain carries on.
    h.guest_says(6, &pages[1], b"still here\n");
    h.until("domain 6's output is logged", |h| {
        h.log("guest6") == "still here\n"
    });

    // Same for a corrupt input consumer, found when input could be sent.
    pages[1].guest().set(offsets::IN_CONS, 77);
    h.until("domain 6 is no longer served", |h| !h.daemon.serving(6));
}

#[test]
fn released_domains_are_let_go_after_their_last_output() {
    let (mut h, pages) = Harness::start(&[5], |_| {});
    h.until("served", |h| h.daemon.serving(5));
    let port = h.xen.local_port(5).unwrap();
    let mut client = h.attach(5);
    // Written, but not signalled before the domain dies.
    pages[0].guest().write(b"reboot: Power down\n");

    h.xen.remove_domain(5);
    h.xs.introduce_domain(5, 1, 1).unwrap();
    h.xs.release_domain(5).unwrap();
    h.until("domain 5 is forgotten", |h| h.daemon.domids().is_empty());

    assert_eq!(h.log("guest5"), "reboot: Power down\n");
    assert!(h.xen.state.borrow().closed.contains(&port));
    assert!(unmapped(&pages[0]));
    // The client sees the pty hang up.
    let mut buf = [0u8; 16];
    let hung_up = match client.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.raw_os_error() == Some(libc::EIO),
        Ok(_) => false,
    };
    assert!(hung_up);
}

#[test]
fn dying_domains_are_let_go() {
    let (mut h, pages) = Harness::start(&[5], |_| {});
    h.until("served", |h| h.daemon.serving(5));

    h.xen.state.borrow_mut().domains.insert(5, true);
    h.xs.introduce_domain(9, 1, 1).unwrap();
    h.until("domain 5 is forgotten", |h| h.daemon.domids().is_empty());

    assert!(unmapped(&pages[0]));
}

#[test]
fn sighup_reopens_rotated_logs() {
    let (mut h, pages) = Harness::start(&[5], |o| {
        o.guest_style = LogStyle {
            timestamps: true,
            replace_escape: true,
        };
    });
    h.until("served", |h| h.daemon.serving(5));
    h.guest_says(5, &pages[0], b"one\n");
    h.until("logged", |h| h.log("guest5").ends_with("one\n"));
    std::fs::rename(
        h.log_dir.join("guest-guest5.log"),
        h.log_dir.join("old.log"),
    )
    .unwrap();

    h.daemon.reopen_logs();
    h.guest_says(5, &pages[0], b"\x1b[1mtwo\n");
    h.until("logged again", |h| h.log("guest5").ends_with("two\n"));

    let old = std::fs::read_to_string(h.log_dir.join("old.log")).unwrap();
    let new = h.log("guest5");
    let stamped = |line: &str| line.starts_with("[2") && line.contains("] ");
    assert!(old.lines().all(stamped), "{old}");
    assert!(
        old.contains("] Logfile Opened") && old.ends_with("] one\n"),
        "{old}"
    );
    assert!(
        new.lines().all(stamped) && new.ends_with("] .[1mtwo\n"),
        "{new}"
    );
}

#[test]
fn a_flood_of_events_is_rate_limited() {
    let (mut h, _) = Harness::start(&[5], |_| {});
    h.until("served", |h| h.daemon.serving(5));
    let port = h.xen.local_port(5).unwrap();
    h.xen.state.borrow_mut().unmasked.clear();

    for _ in 0..30 {
        h.xen.kick(port);
    }
    h.daemon.run_once(Some(Duration::ZERO)).unwrap();
    let held = h.xen.state.borrow().unmasked.len();
    h.until("the port is let through again", |h| {
        h.xen.state.borrow().unmasked.len() == 30
    });

    assert_eq!(held, 29, "the 30th event in a period keeps the port masked");
}

#[test]
fn keep_mode_leaves_output_in_the_ring_while_the_buffer_is_full() {
    let (mut h, _) = Harness::start(&[], |o| o.overflow = Overflow::Keep);
    let pages = [h.xen.add_domain(5)];
    write_console_nodes(&h.xs, 5);
    h.xs.write(NONE, "/local/domain/5/console/limit", b"16")
        .unwrap();
    h.xs.introduce_domain(5, 1, 1).unwrap();
    h.until("served", |h| h.daemon.serving(5));
    // Fill the pty's queue (no client reads), then the buffer.
    let chunk = [b'x'; 2048];
    let mut stalled_at = None;
    for _ in 0..200 {
        let before = pages[0].guest().get(offsets::OUT_CONS);
        h.guest_says(5, &pages[0], &chunk);
        for _ in 0..3 {
            h.daemon.run_once(Some(Duration::from_millis(5))).unwrap();
        }
        if pages[0].guest().get(offsets::OUT_CONS) == before {
            stalled_at = Some(before);
            break;
        }
    }
    let stalled_at = stalled_at.expect("the daemon never stopped reading the ring");

    // A client drains the pty: the guest's output flows again.
    let mut client = h.attach(5);
    h.until("the ring is read again", |_| {
        let mut buf = [0u8; 65536];
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
        pages[0].guest().get(offsets::OUT_CONS) != stalled_at
    });
}

#[test]
fn the_hypervisor_log_follows_xens_console() {
    let store = TestStore::start();
    let xen = FakeXen::new();
    xen.state.borrow_mut().hv_console = b"(XEN) Xen version 4.17\n".to_vec();
    let log_dir = temp_dir("hv");
    let options = Options {
        log_hv: true,
        log_dir: log_dir.clone(),
        ..Options::default()
    };
    let xs: Arc<dyn Xenstore> = Arc::new(store.client());
    let mut daemon = Daemon::new(xs, xen.clone(), options).unwrap();
    let log = || std::fs::read_to_string(log_dir.join("hypervisor.log")).unwrap();

    let at_start = log();
    xen.state
        .borrow_mut()
        .hv_console
        .extend_from_slice(b"(XEN) d5: created\n");
    xen.kick(999);
    daemon.run_once(Some(Duration::from_millis(100))).unwrap();

    assert_eq!(at_start, "(XEN) Xen version 4.17\n");
    assert_eq!(log(), "(XEN) Xen version 4.17\n(XEN) d5: created\n");
    assert_eq!(xen.state.borrow().unmasked, [999]);
    drop(daemon);
    std::fs::remove_dir_all(&log_dir).unwrap();
}

#[test]
fn a_log_waits_for_a_usable_name() {
    let (mut h, _) = Harness::start(&[], |_| {});
    let page = h.xen.add_domain(5);
    write_console_nodes(&h.xs, 5);
    h.xs.write(NONE, "/local/domain/5/name", b"../escape")
        .unwrap();
    h.xs.introduce_domain(5, 1, 1).unwrap();
    h.until("served", |h| h.daemon.serving(5));
    h.guest_says(5, &page, b"early\n");
    h.until("the output is consumed", |_| {
        page.guest().get(offsets::OUT_CONS) == 6
    });

    let entries = std::fs::read_dir(&h.log_dir).unwrap().count();
    assert_eq!(entries, 0, "no log for a name that is a path");
    assert!(!h.log_dir.parent().unwrap().join("escape.log").exists());

    // The toolstack renames the domain and touches its console.
    h.xs.write(NONE, "/local/domain/5/name", b"web").unwrap();
    h.xs.write(NONE, "/local/domain/5/console/output", b"pty")
        .unwrap();
    h.until("the log is opened", |h| {
        h.log_dir.join("guest-web.log").exists()
    });
    h.guest_says(5, &page, b"late\n");
    h.until("logged", |h| h.log("web") == "late\n");
}

#[test]
fn the_pty_path_is_written_only_while_the_console_directory_exists() {
    let store = TestStore::start();
    let xs = store.client();
    let dir = crate::store::console_path(7);
    xs.write(Transaction::NONE, &format!("{dir}/type"), b"xenconsoled").unwrap();

    let written = crate::store::write_in_existing(&xs, &dir, &format!("{dir}/tty"), b"/dev/pts/9").unwrap();
    xs.rm(Transaction::NONE, &crate::store::domain_path(7)).unwrap();
    let after_removal = crate::store::write_in_existing(&xs, &dir, &format!("{dir}/tty"), b"/dev/pts/9").unwrap();

    assert!(written);
    assert!(!after_removal);
    // The removed domain's directory was not created again.
    assert!(xs.read(Transaction::NONE, &crate::store::domain_path(7)).unwrap_err().is_not_found());
}
