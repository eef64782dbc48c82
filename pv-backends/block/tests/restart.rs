//! rblkback restarted under a connected frontend, on the loopback platform.
//!
//! Linux's blkfront does not reconnect by itself while its disk is in use,
//! so a backend process that dies, or is stopped for an upgrade, must be
//! replaced by one that takes the connection over where it was. These
//! tests play the toolstack (domain 0) and a blkfront (domain 1) that keeps
//! its rings, grants and ports across the restart and waits for its
//! responses on events alone, as blkfront does; they check every response
//! and the image file.
//!
//! A backend "process" is a [`Backend`] on a thread of domain 0, whose
//! death is made as close to a process's as the loopback allows: its
//! xenstore connections are cut, so it changes nothing there any more, and
//! its disk panics, so a queue in the middle of a request unwinds without
//! answering it and drops its ring mapping and event channel as an exiting
//! process does. (A real process cannot be killed here: the loopback
//! hypervisor takes a process's connection for its domain, and the death
//! of domain 0 would remove its xenstore home, the device with it.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::Shutdown;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, GrantShare, SharedGrants, Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::ring::{BackRing, FrontRing, FrontRingState, SringIndex};
use hypercall_abi::xen::blkif::{
    BlkifRequest, BlkifRequestSegment, BlkifResponse, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_RSP_OKAY,
};
use hypercall_abi::xen::{DomId, EvtchnPort};
use hypercall_abi::xenstore::XsClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rblkback::{
    Backend, BackendConfig, BackendError, Disk, DiskError, Platform, PlatformError, RawDisk, RawDiskOptions, StopSignal,
};
use xen_loopback::{
    Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantMap, LoopbackGrantShare, LoopbackSharedGrants,
};

const FE: DomId = 1;
const DEVID: u32 = 51712;
const SIZE: usize = 8 << 20;
const PAGE: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(20);

fn seeded_rng() -> StdRng {
    let seed = std::env::var("RBLKBACK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("seed {seed} (set RBLKBACK_TEST_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

fn random_data(rng: &mut StdRng, pages: usize) -> Vec<u8> {
    (0..pages * PAGE).map(|_| rng.gen()).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A dying backend panics on purpose; its locks stay usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The hypervisor, the image file, the toolstack and the device's
/// directories; backends come and go.
struct Rig {
    dir: PathBuf,
    disk_path: PathBuf,
    d0: LoopbackDomain,
    d1: LoopbackDomain,
    xs0: XsClient<UnixStream>,
    be_path: String,
    fe_path: String,
}

impl Rig {
    fn new() -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rblkback-restart-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        let shm = Path::new("/dev/shm");
        let disk_dir = if shm.is_dir() { shm.to_owned() } else { dir.clone() };
        let disk_path = disk_dir.join(format!("rblkback-restart-{}-{n}.img", std::process::id()));
        let initial: Vec<u8> = (0..SIZE).map(|i| (i / 512) as u8 ^ 0xa5).collect();
        std::fs::write(&disk_path, initial).unwrap();

        let d0 = LoopbackDomain::connect(&dir, 0).unwrap();
        let d1 = LoopbackDomain::connect(&dir, FE).unwrap();
        let xs0 = d0.xenstore().unwrap();
        let be_path = BackendConfig::new(0, FE, DEVID).backend_path();
        let fe_path = format!("/local/domain/{FE}/device/vbd/{DEVID}");
        let none = Transaction::NONE;
        for (node, value) in
            [("frontend", fe_path.as_str()), ("frontend-id", &FE.to_string()), ("online", "1"), ("state", "1")]
        {
            xs0.write(none, &format!("{be_path}/{node}"), value.as_bytes()).unwrap();
        }
        for (node, value) in [("backend", be_path.as_str()), ("backend-id", "0"), ("state", "1")] {
            xs0.write(none, &format!("{fe_path}/{node}"), value.as_bytes()).unwrap();
        }
        let perms = |owner: DomId, reader: DomId| {
            [XsPerm { domid: owner, access: XsPermAccess::None }, XsPerm { domid: reader, access: XsPermAccess::Read }]
        };
        for node in ["", "/frontend", "/frontend-id", "/online", "/state"] {
            xs0.set_perms(none, &format!("{be_path}{node}"), &perms(0, FE)).unwrap();
        }
        for node in ["", "/backend", "/backend-id", "/state"] {
            xs0.set_perms(none, &format!("{fe_path}{node}"), &perms(FE, 0)).unwrap();
        }
        Rig { dir, disk_path, d0, d1, xs0, be_path, fe_path }
    }

    fn file(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.disk_path).unwrap().read_exact_at(&mut buf, offset as u64).unwrap();
        buf
    }

    fn read_node(&self, path: &str) -> Option<String> {
        self.xs0.read(Transaction::NONE, path).ok().map(|v| String::from_utf8(v).unwrap())
    }

    fn backend_node(&self, node: &str) -> Option<String> {
        self.read_node(&format!("{}/{node}", self.be_path))
    }

    fn states(&self) -> (Option<String>, Option<String>) {
        (self.backend_node("state"), self.read_node(&format!("{}/state", self.fe_path)))
    }

    fn wait_backend_state(&self, state: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.backend_node("state").as_deref() != Some(state) {
            assert!(Instant::now() < deadline, "backend stayed {:?}, expected {state}", self.backend_node("state"));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Watches the backend directory, as blkfront watches its backend's
    /// `state`: a take-over must not write there.
    fn watch_backend(&self) -> BackendWatch {
        let xs = self.d0.xenstore().unwrap();
        xs.watch(&self.be_path, "restart-test").unwrap();
        // The event every new watch fires.
        assert!(xs.read_watch(Some(TIMEOUT)).unwrap().is_some());
        BackendWatch { xs }
    }

    fn set_frontend_state(&self, state: &str) {
        self.xs0.write(Transaction::NONE, &format!("{}/state", self.fe_path), state.as_bytes()).unwrap();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.disk_path);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct BackendWatch {
    xs: XsClient<UnixStream>,
}

impl BackendWatch {
    fn assert_untouched(&self) {
        let event = self.xs.read_watch(Some(Duration::from_millis(300))).unwrap();
        assert!(event.is_none(), "the take-over wrote to the backend directory: {event:?}");
    }
}

/// Where a backend's disk I/O stands; a dead backend's disk panics.
#[derive(Debug, Default)]
struct GateState {
    /// Writes, once done, wait here until the backend dies (or they are
    /// released).
    hold_writes: bool,
    held: usize,
    dead: bool,
}

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl Gate {
    fn check_alive(&self) {
        let dead = lock(&self.state).dead;
        assert!(!dead, "the backend process was killed");
    }

    fn after_write(&self) {
        let mut state = lock(&self.state);
        if state.hold_writes {
            state.held += 1;
            self.changed.notify_all();
            while !state.dead && state.hold_writes {
                state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
        }
        let dead = state.dead;
        drop(state);
        assert!(!dead, "the backend process was killed");
    }

    fn hold_writes(&self) {
        lock(&self.state).hold_writes = true;
    }

    fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        let mut state = lock(&self.state);
        while state.held < n {
            assert!(Instant::now() < deadline, "the backend did not take the requests");
            state =
                self.changed.wait_timeout(state, Duration::from_millis(50)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Lets held writes (and later ones) go on.
    fn release(&self) {
        lock(&self.state).hold_writes = false;
        self.changed.notify_all();
    }

    fn kill(&self) {
        lock(&self.state).dead = true;
        self.changed.notify_all();
    }
}

/// The image file, through a gate.
#[derive(Debug)]
struct GatedDisk {
    inner: RawDisk,
    gate: Arc<Gate>,
}

impl Disk for GatedDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn supports_discard(&self) -> bool {
        self.inner.supports_discard()
    }
    fn discard_granularity(&self) -> u32 {
        self.inner.discard_granularity()
    }
    fn buffer_alignment(&self) -> usize {
        self.inner.buffer_alignment()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.gate.check_alive();
        self.inner.read_at(offset, buf)?;
        self.gate.check_alive();
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.gate.check_alive();
        self.inner.write_at(offset, buf)?;
        self.gate.after_write();
        Ok(())
    }
    fn flush(&self) -> Result<(), DiskError> {
        self.gate.check_alive();
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.gate.check_alive();
        self.inner.discard(offset, len)
    }
}

/// Domain 0 as one backend process sees it: its xenstore connections can
/// be cut.
#[derive(Debug, Clone)]
struct Dom0Process {
    domain: LoopbackDomain,
    stores: Arc<Mutex<Vec<UnixStream>>>,
}

fn platform_error(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> PlatformError {
    PlatformError { what, source: Box::new(e) }
}

impl Platform for Dom0Process {
    type Grants = LoopbackGrantMap;
    type Evtchn = LoopbackEventChannels;
    type Store = XsClient<UnixStream>;

    fn grant_map(&self) -> Result<LoopbackGrantMap, PlatformError> {
        Ok(self.domain.grant_map())
    }

    fn event_channels(&self) -> Result<LoopbackEventChannels, PlatformError> {
        self.domain.event_channels().map_err(|e| platform_error("loopback event channels", e))
    }

    fn xenstore(&self) -> Result<XsClient<UnixStream>, PlatformError> {
        let stream = self.domain.xenstore_stream().map_err(|e| platform_error("loopback xenstore", e))?;
        lock(&self.stores).push(stream.try_clone().map_err(|e| platform_error("loopback xenstore", e))?);
        XsClient::new(stream).map_err(|e| platform_error("xenstore client", e))
    }
}

#[derive(Debug, Clone, Copy)]
struct BackendOpts {
    persistent: bool,
    keep_connected: bool,
}

impl Default for BackendOpts {
    fn default() -> Self {
        BackendOpts { persistent: true, keep_connected: false }
    }
}

/// One backend process for the device.
struct BackendProcess {
    stop: Arc<StopSignal>,
    gate: Arc<Gate>,
    stores: Arc<Mutex<Vec<UnixStream>>>,
    thread: Option<JoinHandle<Result<(), BackendError>>>,
}

impl BackendProcess {
    fn start(rig: &Rig, opts: BackendOpts) -> BackendProcess {
        let stop = Arc::new(StopSignal::new().unwrap());
        let gate = Arc::new(Gate::default());
        let stores = Arc::new(Mutex::new(Vec::new()));
        let platform = Dom0Process { domain: rig.d0.clone(), stores: Arc::clone(&stores) };
        let mut cfg = BackendConfig::new(0, FE, DEVID);
        cfg.persistent = opts.persistent;
        cfg.keep_connected = opts.keep_connected;
        cfg.max_queues = 4;
        cfg.poll_interval = Duration::from_millis(50);
        let inner =
            RawDisk::open(&rig.disk_path, RawDiskOptions { sector_size: Some(512), ..Default::default() }).unwrap();
        let disk = Arc::new(GatedDisk { inner, gate: Arc::clone(&gate) });
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || Backend::new(platform, disk, cfg)?.run(&stop))
        };
        BackendProcess { stop, gate, stores, thread: Some(thread) }
    }

    fn join(&mut self) -> Result<(), BackendError> {
        let thread = self.thread.take().unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the backend did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().unwrap()
    }

    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// SIGKILL: the process vanishes, whatever it was doing.
    fn kill(mut self) {
        // Xenstore first, so that nothing the dying threads notice can
        // still be written there; then the disk, whose blocked and later
        // calls unwind their queue threads without a response.
        for store in lock(&self.stores).iter() {
            let _ = store.shutdown(Shutdown::Both);
        }
        self.gate.kill();
        // A dead process reports nothing; the thread only has to end.
        let _ = self.join();
    }

    /// SIGTERM.
    fn stop(mut self) -> Result<(), BackendError> {
        self.stop.stop();
        self.join()
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.stop.stop();
        self.gate.kill();
    }
}

#[derive(Clone, Copy)]
struct FrontSpec {
    queues: u32,
    ring_order: u32,
    persistent: bool,
}

impl Default for FrontSpec {
    fn default() -> Self {
        FrontSpec { queues: 1, ring_order: 0, persistent: true }
    }
}

struct FrontQueue {
    ring: LoopbackSharedGrants,
    port: EvtchnPort,
    state: FrontRingState,
}

/// A request on a ring: its pages, to read and release after the response.
struct InFlight {
    queue: usize,
    operation: u8,
    pages: Vec<LoopbackSharedGrants>,
}

#[derive(Debug)]
struct Done {
    status: i16,
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    /// Whole pages at a sector.
    Write(usize, Vec<u8>),
    /// `n` whole pages at a sector.
    Read(usize, usize),
    Flush,
}

/// A blkfront that keeps its rings across backend restarts and sleeps on
/// its event channel until the backend says there are responses.
struct Front<'r> {
    rig: &'r Rig,
    xs: XsClient<UnixStream>,
    gs: LoopbackGrantShare,
    ev: LoopbackEventChannels,
    queues: Vec<FrontQueue>,
    persistent: bool,
    /// Persistent data pages not in use.
    free: Vec<LoopbackSharedGrants>,
    in_flight: HashMap<u64, InFlight>,
    done: HashMap<u64, Done>,
    next_id: u64,
}

impl<'r> Front<'r> {
    /// Sets up the rings and moves to Initialised, without waiting for
    /// the backend.
    fn offer(rig: &'r Rig, spec: FrontSpec) -> Front<'r> {
        let xs = rig.d1.xenstore().unwrap();
        let gs = rig.d1.grant_share();
        let ev = rig.d1.event_channels().unwrap();
        let mut queues = Vec::new();
        for _ in 0..spec.queues {
            let ring = gs.share(0, 1 << spec.ring_order, true).unwrap();
            let front =
                FrontRing::<BlkifRequest, BlkifResponse>::init_shared(ring.memory().ring_mem().unwrap()).unwrap();
            let state = front.state();
            let port = ev.alloc_unbound(0).unwrap();
            queues.push(FrontQueue { ring, port, state });
        }
        let fe = &rig.fe_path;
        for node in ["ring-page-order", "multi-queue-num-queues", "ring-ref", "event-channel", "queue-0", "queue-1"] {
            let _ = xs.rm(Transaction::NONE, &format!("{fe}/{node}"));
        }
        let published: Vec<(&[hypercall_abi::xen::GrantRef], EvtchnPort)> = queues.iter().map(|q| (q.ring.refs(), q.port)).collect();
        common::publish_rings(&xs, fe, spec.ring_order, &published, spec.persistent);
        Front {
            rig,
            xs,
            gs,
            ev,
            queues,
            persistent: spec.persistent,
            free: Vec::new(),
            in_flight: HashMap::new(),
            done: HashMap::new(),
            next_id: 0,
        }
    }

    /// Reads what the backend offers and moves to Connected, once the
    /// backend is.
    fn finish(&mut self) {
        self.rig.wait_backend_state("4");
        self.persistent &= self.rig.backend_node("feature-persistent").as_deref() == Some("1");
        self.xs.write(Transaction::NONE, &format!("{}/state", self.rig.fe_path), b"4").unwrap();
    }

    /// The whole handshake with a backend in InitWait.
    fn connect(rig: &'r Rig, spec: FrontSpec) -> Front<'r> {
        rig.wait_backend_state("2");
        let mut front = Front::offer(rig, spec);
        front.finish();
        front
    }

    fn pages(&mut self, n: usize) -> Vec<LoopbackSharedGrants> {
        (0..n)
            .map(|_| match self.free.pop() {
                Some(page) if self.persistent => page,
                _ => self.gs.share(0, 1, true).unwrap(),
            })
            .collect()
    }

    /// Puts `ops` on ring `q` and pushes them with one notification (if
    /// the ring asks for one); returns their ids.
    fn publish(&mut self, q: usize, ops: &[Op]) -> Vec<u64> {
        let mut requests = Vec::new();
        for op in ops {
            self.next_id += 1;
            let id = self.next_id;
            let (operation, sector, pages) = match op {
                Op::Write(sector, data) => {
                    let pages = self.pages(data.len() / PAGE);
                    for (page, chunk) in pages.iter().zip(data.chunks(PAGE)) {
                        page.memory().write(0, chunk).unwrap();
                    }
                    (BLKIF_OP_WRITE, *sector, pages)
                }
                Op::Read(sector, n) => (BLKIF_OP_READ, *sector, self.pages(*n)),
                Op::Flush => (BLKIF_OP_FLUSH_DISKCACHE, 0, Vec::new()),
            };
            let mut request = BlkifRequest {
                operation,
                nr_segments: pages.len() as u8,
                id,
                sector_number: sector as u64,
                ..Default::default()
            };
            for (slot, page) in request.seg.iter_mut().zip(&pages) {
                *slot = BlkifRequestSegment::new(page.refs()[0], 0, 7);
            }
            requests.push(request);
            self.in_flight.insert(id, InFlight { queue: q, operation, pages });
        }
        let queue = &mut self.queues[q];
        let mut ring =
            FrontRing::<BlkifRequest, BlkifResponse>::resume(queue.ring.memory().ring_mem().unwrap(), queue.state)
                .unwrap();
        for request in &requests {
            ring.put_request(request).unwrap();
        }
        // Notifying a port whose backend died is dropped, as in Xen.
        if ring.push_requests_and_check_notify().unwrap() {
            self.ev.notify(queue.port).unwrap();
        }
        queue.state = ring.state();
        requests.iter().map(|r| r.id).collect()
    }

    /// Takes the responses on ring `q`.
    fn consume(&mut self, q: usize) {
        let queue = &mut self.queues[q];
        let mut ring =
            FrontRing::<BlkifRequest, BlkifResponse>::resume(queue.ring.memory().ring_mem().unwrap(), queue.state)
                .unwrap();
        let mut responses = Vec::new();
        loop {
            while let Some(rsp) = ring.consume_response().unwrap() {
                responses.push(rsp);
            }
            // Sets rsp_event: the next response must come with an event.
            if !ring.final_check_for_responses().unwrap() {
                break;
            }
        }
        queue.state = ring.state();
        for rsp in responses {
            let request = self.in_flight.remove(&rsp.id).unwrap_or_else(|| panic!("response to unknown id {}", rsp.id));
            assert_eq!(request.queue, q, "response {} on the wrong ring", rsp.id);
            assert_eq!(rsp.operation, request.operation, "blkfront checks the echoed operation");
            let mut data = vec![0u8; request.pages.len() * PAGE];
            for (page, chunk) in request.pages.iter().zip(data.chunks_mut(PAGE)) {
                page.memory().read(0, chunk).unwrap();
            }
            for page in request.pages {
                if self.persistent {
                    self.free.push(page);
                } else {
                    self.gs.end_access(page).expect("the backend unmapped the request's pages before answering");
                }
            }
            self.done.insert(rsp.id, Done { status: rsp.status, data });
        }
    }

    /// Sleeps until an event comes.
    fn wait_event(&self, deadline: Instant) {
        loop {
            assert!(Instant::now() < deadline, "no event from the backend");
            if let Some(port) = self.ev.wait(Some(Duration::from_millis(50))).unwrap() {
                self.ev.unmask(port).unwrap();
                return;
            }
        }
    }

    /// Forgets events already delivered.
    fn drain_events(&self) {
        for _ in 0..16 {
            match self.ev.pending().unwrap() {
                Some(port) => self.ev.unmask(port).unwrap(),
                None => return,
            }
        }
    }

    /// Sleeps on the event channel until `ids` (of ring `q`) are answered:
    /// the ring is looked at only when an event came.
    fn collect(&mut self, q: usize, ids: &[u64]) -> Vec<Done> {
        let deadline = Instant::now() + TIMEOUT;
        self.consume(q);
        while !ids.iter().all(|id| self.done.contains_key(id)) {
            self.wait_event(deadline);
            self.consume(q);
        }
        ids.iter().map(|id| self.done.remove(id).unwrap()).collect()
    }

    fn run(&mut self, q: usize, ops: &[Op]) -> Vec<Done> {
        let ids = self.publish(q, ops);
        self.collect(q, &ids)
    }

    fn write(&mut self, q: usize, sector: usize, data: &[u8]) {
        let done = self.run(q, &[Op::Write(sector, data.to_vec())]);
        assert_eq!(done[0].status, BLKIF_RSP_OKAY, "write at sector {sector}");
    }

    fn read(&mut self, q: usize, sector: usize, pages: usize) -> Vec<u8> {
        let mut done = self.run(q, &[Op::Read(sector, pages)]);
        assert_eq!(done[0].status, BLKIF_RSP_OKAY, "read at sector {sector}");
        done.remove(0).data
    }

    /// Gives up the connection as a blkfront that is unloaded after its
    /// backend vanished: every grant must be free to end, since the dead
    /// backend's mappings went with it.
    fn abandon(self) {
        assert!(self.in_flight.is_empty());
        for q in self.queues {
            self.ev.close(q.port).unwrap();
            self.gs.end_access(q.ring).expect("the dead backend's ring mapping is gone");
        }
        for page in self.free {
            self.gs.end_access(page).expect("the dead backend's persistent mappings are gone");
        }
    }
}

/// The image file as the frontend wrote it.
struct Model(Vec<u8>);

impl Model {
    fn new(rig: &Rig) -> Model {
        Model(rig.file(0, SIZE))
    }

    fn write(&mut self, sector: usize, data: &[u8]) {
        self.0[sector * 512..][..data.len()].copy_from_slice(data);
    }

    fn at(&self, sector: usize, pages: usize) -> &[u8] {
        &self.0[sector * 512..][..pages * PAGE]
    }

    fn check(&self, rig: &Rig) {
        assert!(rig.file(0, SIZE) == self.0, "the image file holds exactly what the frontend wrote");
    }
}

/// Random writes on every queue, each read back through the ring.
fn exercise(front: &mut Front<'_>, model: &mut Model, rng: &mut StdRng, rounds: usize) {
    for round in 0..rounds {
        let q = round % front.queues.len();
        let pages = rng.gen_range(1..=11);
        let sector = rng.gen_range(0..(SIZE - pages * PAGE) / 512);
        let data = random_data(rng, pages);
        front.write(q, sector, &data);
        model.write(sector, &data);
        let back = front.read(q, sector, pages);
        assert!(back == data, "read back {pages} pages at {sector}");
    }
}

#[test]
fn a_killed_backend_is_taken_over_and_answers_the_requests_it_left() {
    let mut rng = seeded_rng();
    let rig = Rig::new();
    let old = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec { queues: 2, ring_order: 1, persistent: true });
    let mut model = Model::new(&rig);
    exercise(&mut front, &mut model, &mut rng, 8);

    // The backend takes three writes and dies once it has done the first,
    // before answering it.
    old.gate.hold_writes();
    let taken: Vec<(usize, Vec<u8>)> =
        vec![(2048, random_data(&mut rng, 2)), (4096, random_data(&mut rng, 1)), (6000, random_data(&mut rng, 4))];
    let ops: Vec<Op> = taken.iter().map(|(s, d)| Op::Write(*s, d.clone())).collect();
    let taken_ids = front.publish(0, &ops);
    old.gate.wait_held(1);
    old.kill();
    assert_eq!(rig.states(), (Some("4".into()), Some("4".into())), "the dead backend changed nothing");
    assert!(rig.file(2048 * 512, 2 * PAGE) == taken[0].1, "the first write was done");
    assert!(rig.file(4096 * 512, PAGE) != taken[1].1, "the second was not");

    // The frontend goes on without knowing: more requests, on both rings.
    let later = random_data(&mut rng, 3);
    let late_ids = front.publish(0, &[Op::Write(7000, later.clone()), Op::Read(2048, 2), Op::Flush]);
    let other = random_data(&mut rng, 2);
    let other_ids = front.publish(1, &[Op::Write(100, other.clone())]);

    let watch = rig.watch_backend();
    let new = BackendProcess::start(&rig, BackendOpts::default());
    let done = front.collect(0, &taken_ids);
    assert!(done.iter().all(|d| d.status == BLKIF_RSP_OKAY), "{done:?}");
    for (sector, data) in &taken {
        model.write(*sector, data);
    }
    let done = front.collect(0, &late_ids);
    assert!(done.iter().all(|d| d.status == BLKIF_RSP_OKAY), "{done:?}");
    assert!(done[1].data == taken[0].1, "a read after the take-over sees the writes before it");
    model.write(7000, &later);
    let done = front.collect(1, &other_ids);
    assert_eq!(done[0].status, BLKIF_RSP_OKAY);
    model.write(100, &other);
    model.check(&rig);
    watch.assert_untouched();

    // Everything written before the crash is there, and service goes on.
    let all = front.read(1, 0, 11);
    assert!(all == model.at(0, 11));
    exercise(&mut front, &mut model, &mut rng, 8);
    model.check(&rig);

    new.stop().unwrap();
    assert_eq!(rig.backend_node("state").as_deref(), Some("6"), "a plain stop still closes the device");
}

#[test]
fn a_backend_killed_between_requests_is_taken_over_without_persisting_grants() {
    let mut rng = seeded_rng();
    let rig = Rig::new();
    // The old backend offered no persistent grants, so the frontend ends
    // every grant after its response; the new one offers them but must
    // keep to what was agreed.
    let old = BackendProcess::start(&rig, BackendOpts { persistent: false, ..Default::default() });
    let mut front = Front::connect(&rig, FrontSpec::default());
    assert!(!front.persistent);
    let mut model = Model::new(&rig);
    exercise(&mut front, &mut model, &mut rng, 6);

    old.kill();
    let watch = rig.watch_backend();
    let new = BackendProcess::start(&rig, BackendOpts::default());
    exercise(&mut front, &mut model, &mut rng, 6);
    model.check(&rig);
    watch.assert_untouched();

    new.stop().unwrap();
}

#[test]
fn a_backend_stopped_for_an_upgrade_leaves_the_device_to_the_next() {
    let mut rng = seeded_rng();
    let rig = Rig::new();
    let old = BackendProcess::start(&rig, BackendOpts { keep_connected: true, ..Default::default() });
    let mut front = Front::connect(&rig, FrontSpec { queues: 2, ring_order: 2, persistent: true });
    let mut model = Model::new(&rig);
    exercise(&mut front, &mut model, &mut rng, 6);

    old.stop().unwrap();
    assert_eq!(rig.states(), (Some("4".into()), Some("4".into())));
    let data = random_data(&mut rng, 5);
    let ids = front.publish(1, &[Op::Write(512, data.clone())]);
    let watch = rig.watch_backend();
    let new = BackendProcess::start(&rig, BackendOpts::default());
    let done = front.collect(1, &ids);
    assert_eq!(done[0].status, BLKIF_RSP_OKAY);
    watch.assert_untouched();
    model.write(512, &data);
    exercise(&mut front, &mut model, &mut rng, 6);
    model.check(&rig);

    new.stop().unwrap();
    assert_eq!(rig.backend_node("state").as_deref(), Some("6"));
}

#[test]
fn the_new_backend_sends_the_event_the_dead_one_owed() {
    let rig = Rig::new();
    let old = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec::default());
    let before = front.read(0, 0, 1);
    old.kill();

    // The frontend publishes a flush and goes to sleep, asking for an
    // event on its response. The dying backend had answered and pushed it
    // but not sent the event.
    let ids = front.publish(0, &[Op::Flush]);
    front.consume(0);
    front.drain_events();
    {
        let mem = front.queues[0].ring.memory().ring_mem().unwrap();
        let start = mem.load_index(SringIndex::RspProd);
        let mut back = BackRing::<BlkifRequest, BlkifResponse>::attach(mem, start).unwrap();
        let request = back.consume_request().unwrap().unwrap();
        let response = BlkifResponse {
            id: request.id,
            operation: request.operation,
            status: BLKIF_RSP_OKAY,
            ..Default::default()
        };
        back.put_response(&response).unwrap();
        back.push_responses().unwrap();
    }

    let watch = rig.watch_backend();
    let new = BackendProcess::start(&rig, BackendOpts::default());
    front.wait_event(Instant::now() + TIMEOUT);
    let done = front.collect(0, &ids);
    assert_eq!(done[0].status, BLKIF_RSP_OKAY);
    assert!(front.read(0, 0, 1) == before, "the ring goes on from there");
    watch.assert_untouched();

    new.stop().unwrap();
}

#[test]
fn requests_that_come_while_a_sleeping_frontend_waits_are_answered_with_its_event() {
    let rig = Rig::new();
    let backend = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec::default());
    let data = vec![0x3c; PAGE];
    front.write(0, 8, &data);
    front.drain_events();

    // The backend is in the middle of a write while the frontend, asleep
    // on its event channel (rsp_event armed), publishes two reads.
    backend.gate.hold_writes();
    let first = front.publish(0, &[Op::Write(16, data.clone())]);
    backend.gate.wait_held(1);
    front.consume(0);
    let more = front.publish(0, &[Op::Read(8, 1), Op::Read(16, 1)]);
    backend.gate.release();

    // One event, for all three: the write's response was held while the
    // reads were served.
    front.wait_event(Instant::now() + TIMEOUT);
    front.consume(0);
    for id in first.iter().chain(&more) {
        assert!(front.done.contains_key(id), "request {id} was answered with the first event");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(front.ev.pending().unwrap(), None, "and no second event came");
    let done = front.collect(0, &more);
    assert!(done.iter().all(|d| d.status == BLKIF_RSP_OKAY && d.data == data));
    assert!(front.read(0, 16, 1) == data, "the ring goes on");

    backend.stop().unwrap();
}

#[test]
fn a_ring_left_broken_fails_the_device_on_take_over() {
    let rig = Rig::new();
    let old = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec::default());
    front.read(0, 0, 1);
    old.kill();

    let mem = front.queues[0].ring.memory().ring_mem().unwrap();
    mem.store_index(SringIndex::ReqProd, std::num::Wrapping(100_000));
    let new = BackendProcess::start(&rig, BackendOpts::default());

    rig.wait_backend_state("5");
    let error_path = format!("/local/domain/0/error/backend/vbd/{FE}/{DEVID}/error");
    let error = rig.read_node(&error_path).unwrap();
    assert!(error.contains("req_prod"), "{error}");
    assert!(new.is_running(), "the backend waits for the frontend to close");
    new.stop().unwrap();
}

#[test]
fn a_second_backend_does_not_take_a_device_still_served() {
    let mut rng = seeded_rng();
    let rig = Rig::new();
    let first = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec::default());
    let mut model = Model::new(&rig);

    let mut second = BackendProcess::start(&rig, BackendOpts::default());
    let result = second.join();

    assert!(matches!(result, Err(BackendError::TakeOver { .. })), "{result:?}");
    assert_eq!(rig.states(), (Some("4".into()), Some("4".into())));
    exercise(&mut front, &mut model, &mut rng, 4);
    model.check(&rig);
    first.stop().unwrap();
}

#[test]
fn a_frontend_that_started_over_gets_the_handshake() {
    let mut rng = seeded_rng();
    let rig = Rig::new();
    let old = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec::default());
    let data = random_data(&mut rng, 2);
    front.write(0, 64, &data);
    old.kill();
    front.abandon();

    // blkfront reloaded (Initialising): the new backend offers InitWait.
    rig.set_frontend_state("1");
    let new = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec { ring_order: 1, ..Default::default() });
    assert!(front.read(0, 64, 2) == data);
    new.kill();
    front.abandon();

    // A frontend that already set up fresh rings (Initialised) is
    // connected to them.
    let mut front = Front::offer(&rig, FrontSpec { queues: 2, ..Default::default() });
    let new = BackendProcess::start(&rig, BackendOpts::default());
    assert!(front.read(1, 64, 2) == data);
    front.finish();
    new.kill();
    front.abandon();

    // A frontend that closed is left closed until it comes back.
    rig.set_frontend_state("6");
    let new = BackendProcess::start(&rig, BackendOpts::default());
    rig.wait_backend_state("6");
    rig.set_frontend_state("1");
    rig.wait_backend_state("2");
    let mut front = Front::connect(&rig, FrontSpec::default());
    assert!(front.read(0, 64, 2) == data);
    new.stop().unwrap();
}

#[test]
fn a_disk_grown_while_no_backend_ran_is_announced_as_blkback_does() {
    let mut rng = seeded_rng();
    let rig = Rig::new();
    let old = BackendProcess::start(&rig, BackendOpts::default());
    let mut front = Front::connect(&rig, FrontSpec::default());
    let data = random_data(&mut rng, 1);
    front.write(0, 8, &data);
    old.kill();

    std::fs::OpenOptions::new().write(true).open(&rig.disk_path).unwrap().set_len(2 * SIZE as u64).unwrap();
    let watch = rig.watch_backend();
    let new = BackendProcess::start(&rig, BackendOpts::default());

    // blkfront's watch on the backend's state fires; it reads the size.
    let deadline = Instant::now() + TIMEOUT;
    let mut changed = Vec::new();
    while !changed.iter().any(|p: &String| p.ends_with("/state")) {
        assert!(Instant::now() < deadline, "the new size was not announced: {changed:?}");
        if let Some(event) = watch.xs.read_watch(Some(Duration::from_millis(50))).unwrap() {
            changed.push(event.path);
        }
    }
    // Both in one transaction: whoever reads on the state's event sees
    // the new size.
    assert!(changed.iter().any(|p| p.ends_with("/sectors")), "{changed:?}");
    assert_eq!(rig.backend_node("sectors"), Some((2 * SIZE / 512).to_string()));
    assert_eq!(rig.backend_node("state").as_deref(), Some("4"));
    let beyond = random_data(&mut rng, 2);
    front.write(0, SIZE / 512 + 8, &beyond);
    assert!(rig.file(SIZE + 8 * 512, 2 * PAGE) == beyond);
    assert!(front.read(0, 8, 1) == data);
    new.stop().unwrap();
}
