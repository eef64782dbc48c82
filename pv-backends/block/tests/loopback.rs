//! rblkback end to end on the loopback platform: a hypervisor thread, the
//! backend as domain 0 serving a file on tmpfs, the test as the toolstack
//! (domain 0 too) and as a small blkfront in domain 1 that does the
//! xenbus handshake, grants pages, and speaks the ring exactly as Linux's
//! xen-blkfront does (ring pages, event channels, persistent grants,
//! indirect requests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, GrantShare, SharedGrants, Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::ring::{FrontRing, RingIdx, SringIndex};
use hypercall_abi::xen::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BLKIF_SEGS_PER_INDIRECT_FRAME,
};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};
use hypercall_abi::xenstore::XsClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rblkback::queue::Coalesce;
use rblkback::{Backend, BackendConfig, BackendError, LoopbackPlatform, RawDisk, RawDiskOptions, StopSignal};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare, LoopbackSharedGrants};
use zerocopy::IntoBytes;

const FE: DomId = 1;
const DEVID: u32 = 51712;
const TIMEOUT: Duration = Duration::from_secs(20);

fn seeded_rng() -> StdRng {
    let seed = std::env::var("RBLKBACK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("seed {seed} (set RBLKBACK_TEST_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

/// Everything but the frontend: hypervisor, disk file, toolstack, backend.
struct Rig {
    dir: PathBuf,
    disk_path: PathBuf,
    /// Keeps domain 0 alive after the backend exits.
    _d0: LoopbackDomain,
    d1: LoopbackDomain,
    xs0: XsClient<UnixStream>,
    stop: Arc<StopSignal>,
    backend: Option<JoinHandle<Result<(), BackendError>>>,
    be_path: String,
    fe_path: String,
    /// Last: released once the rest is dropped.
    _timing: Timing,
}

/// A rig with moderation counts events against the frontend's pace, which
/// other tests' threads would disturb on a busy machine: it runs alone
/// (holding [`TIMING`] exclusively), the others together (sharing it).
static TIMING: RwLock<()> = RwLock::new(());

#[allow(dead_code)] // held, never read
enum Timing {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

#[derive(Clone, Copy)]
struct DiskSpec {
    size: usize,
    read_only: bool,
    sector_size: u32,
    persistent: bool,
    max_queues: u32,
    coalesce: Option<Coalesce>,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec { size: 8 << 20, read_only: false, sector_size: 512, persistent: true, max_queues: 4, coalesce: None }
    }
}

impl Rig {
    fn start(spec: DiskSpec) -> Rig {
        // A test that failed holding it poisons it; the others go on.
        let timing = match spec.coalesce {
            Some(_) => Timing::Alone(TIMING.write().unwrap_or_else(|e| e.into_inner())),
            None => Timing::Shared(TIMING.read().unwrap_or_else(|e| e.into_inner())),
        };
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rblkback-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        let shm = Path::new("/dev/shm");
        let disk_dir = if shm.is_dir() { shm.to_owned() } else { dir.clone() };
        let disk_path = disk_dir.join(format!("rblkback-e2e-{}-{n}.img", std::process::id()));
        // Recognisable initial contents.
        let initial: Vec<u8> = (0..spec.size).map(|i| (i / 512) as u8 ^ 0x5a).collect();
        std::fs::write(&disk_path, initial).unwrap();

        let d0 = LoopbackDomain::connect(&dir, 0).unwrap();
        let d1 = LoopbackDomain::connect(&dir, FE).unwrap();
        let xs0 = d0.xenstore().unwrap();
        let mut cfg = BackendConfig::new(0, FE, DEVID);
        cfg.persistent = spec.persistent;
        cfg.max_queues = spec.max_queues;
        cfg.coalesce = spec.coalesce;
        cfg.poll_interval = Duration::from_millis(50);
        let be_path = cfg.backend_path();
        let fe_path = format!("/local/domain/{FE}/device/vbd/{DEVID}");

        // The toolstack's part (xl block-attach): both directories, each
        // readable by the other end.
        let none = Transaction::NONE;
        for (node, value) in [
            ("frontend", fe_path.as_str()),
            ("frontend-id", &FE.to_string()),
            ("online", "1"),
            ("state", "1"),
            ("params", disk_path.to_str().unwrap()),
            ("mode", if spec.read_only { "r" } else { "w" }),
        ] {
            xs0.write(none, &format!("{be_path}/{node}"), value.as_bytes()).unwrap();
        }
        for (node, value) in [
            ("backend", be_path.as_str()),
            ("backend-id", "0"),
            ("virtual-device", &DEVID.to_string()),
            ("state", "1"),
        ] {
            xs0.write(none, &format!("{fe_path}/{node}"), value.as_bytes()).unwrap();
        }
        let perms = |owner: DomId, reader: DomId| {
            [XsPerm { domid: owner, access: XsPermAccess::None }, XsPerm { domid: reader, access: XsPermAccess::Read }]
        };
        for node in ["", "/frontend", "/frontend-id", "/online", "/state", "/params", "/mode"] {
            xs0.set_perms(none, &format!("{be_path}{node}"), &perms(0, FE)).unwrap();
        }
        for node in ["", "/backend", "/backend-id", "/virtual-device", "/state"] {
            xs0.set_perms(none, &format!("{fe_path}{node}"), &perms(FE, 0)).unwrap();
        }

        let stop = Arc::new(StopSignal::new().unwrap());
        let backend = {
            let (d0, stop, path) = (d0.clone(), Arc::clone(&stop), disk_path.clone());
            std::thread::spawn(move || {
                let disk = RawDisk::open(
                    &path,
                    RawDiskOptions {
                        read_only: spec.read_only,
                        sector_size: Some(spec.sector_size),
                        direct: false,
                        io: None,
                    },
                )
                .unwrap();
                let mut backend = Backend::new(LoopbackPlatform::from_domain(d0), Arc::new(disk), cfg)?;
                backend.run(&stop)
            })
        };
        Rig { dir, disk_path, _d0: d0, d1, xs0, stop, backend: Some(backend), be_path, fe_path, _timing: timing }
    }

    fn file_len(&self) -> usize {
        std::fs::metadata(&self.disk_path).unwrap().len() as usize
    }

    fn file(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.disk_path).unwrap().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    fn backend_node(&self, node: &str) -> Option<String> {
        self.xs0
            .read(Transaction::NONE, &format!("{}/{node}", self.be_path))
            .ok()
            .map(|v| String::from_utf8(v).unwrap())
    }

    fn wait_backend_state(&self, state: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.backend_node("state").as_deref() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend stayed in state {:?}, expected {state}",
                self.backend_node("state")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the backend as SIGTERM does; it must end Closed.
    fn stop(mut self) {
        self.stop.stop();
        let result = self.backend.take().unwrap().join().unwrap();
        result.unwrap();
        assert_eq!(self.backend_node("state").as_deref(), Some("6"), "the backend ends Closed");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.stop();
        let _ = std::fs::remove_file(&self.disk_path);
        let _ = std::fs::remove_dir_all(&self.dir);
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
    /// `req_prod_pvt == rsp_cons` between calls: every request is answered
    /// before a call returns.
    idx: RingIdx,
}

/// How a data request carries its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Indirect,
}

/// A minimal xen-blkfront.
struct Front<'r> {
    rig: &'r Rig,
    xs: XsClient<UnixStream>,
    gs: LoopbackGrantShare,
    ev: LoopbackEventChannels,
    queues: Vec<FrontQueue>,
    /// Whether both ends agreed on persistent grants.
    persistent: bool,
    /// Persistent data pages, reused by every request.
    pool: Vec<LoopbackSharedGrants>,
    next_id: u64,
    features: HashMap<String, String>,
}

impl<'r> Front<'r> {
    fn connect(rig: &'r Rig, spec: FrontSpec) -> Front<'r> {
        let xs = rig.d1.xenstore().unwrap();
        let gs = rig.d1.grant_share();
        let ev = rig.d1.event_channels().unwrap();
        rig.wait_backend_state("2");
        let max_order: u32 = rig.backend_node("max-ring-page-order").unwrap().parse().unwrap();
        let max_queues: u32 = rig.backend_node("multi-queue-max-queues").unwrap().parse().unwrap();
        assert!(spec.ring_order <= max_order && spec.queues <= max_queues);
        let mut queues = Vec::new();
        for _ in 0..spec.queues {
            let ring = gs.share(0, 1 << spec.ring_order, true).unwrap();
            FrontRing::<BlkifRequest, BlkifResponse>::init_shared(ring.memory().ring_mem().unwrap()).unwrap();
            let port = ev.alloc_unbound(0).unwrap();
            queues.push(FrontQueue { ring, port, idx: RingIdx::default() });
        }
        let fe = &rig.fe_path;
        let none = Transaction::NONE;
        let write = |path: String, value: String| xs.write(none, &path, value.as_bytes()).unwrap();
        let published: Vec<(&[GrantRef], EvtchnPort)> = queues.iter().map(|q| (q.ring.refs(), q.port)).collect();
        common::publish_rings(&xs, fe, spec.ring_order, &published, spec.persistent);
        rig.wait_backend_state("4");
        let mut features = HashMap::new();
        for node in [
            "feature-flush-cache",
            "feature-barrier",
            "feature-discard",
            "discard-granularity",
            "feature-persistent",
            "feature-max-indirect-segments",
            "sectors",
            "info",
            "sector-size",
            "physical-sector-size",
        ] {
            if let Some(v) = rig.backend_node(node) {
                features.insert(node.to_owned(), v);
            }
        }
        // The frontend reads the backend's nodes as domain 1.
        let sectors = xs.read(none, &format!("{}/sectors", rig.be_path)).unwrap();
        assert_eq!(String::from_utf8(sectors).unwrap(), features["sectors"]);
        write(format!("{fe}/state"), "4".into());
        let persistent = spec.persistent && features["feature-persistent"] == "1";
        Front { rig, xs, gs, ev, queues, persistent, pool: Vec::new(), next_id: 1, features }
    }

    fn feature(&self, name: &str) -> &str {
        self.features.get(name).map_or("", String::as_str)
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Puts `requests` on ring `q`, pushes once, and waits for all their
    /// responses, returned by request id.
    fn submit(&mut self, q: usize, requests: &[BlkifRequest]) -> HashMap<u64, BlkifResponse> {
        let queue = &mut self.queues[q];
        let mem = queue.ring.memory().ring_mem().unwrap();
        let mut ring = FrontRing::<BlkifRequest, BlkifResponse>::attach(mem, queue.idx).unwrap();
        for request in requests {
            ring.put_request(request).unwrap();
        }
        if ring.push_requests_and_check_notify().unwrap() {
            self.ev.notify(queue.port).unwrap();
        }
        let mut responses = HashMap::new();
        let deadline = Instant::now() + TIMEOUT;
        while responses.len() < requests.len() {
            while let Some(rsp) = ring.consume_response().unwrap() {
                assert!(responses.insert(rsp.id, rsp).is_none(), "two responses to request {}", rsp.id);
            }
            if responses.len() == requests.len() || ring.final_check_for_responses().unwrap() {
                continue;
            }
            assert!(Instant::now() < deadline, "no response from the backend");
            if let Some(port) = self.ev.wait(Some(Duration::from_millis(100))).unwrap() {
                self.ev.unmask(port).unwrap();
            }
        }
        queue.idx = ring.req_prod_pvt();
        responses
    }

    /// One request, one response.
    fn one(&mut self, q: usize, request: BlkifRequest) -> BlkifResponse {
        let responses = self.submit(q, &[request]);
        let rsp = responses[&request.id];
        assert_eq!(rsp.operation, expected_operation(&request), "blkfront checks the echoed operation");
        rsp
    }

    /// `n` data pages for one request: from the persistent pool, or fresh.
    fn pages(&mut self, n: usize) -> Vec<LoopbackSharedGrants> {
        if self.persistent {
            while self.pool.len() < n {
                self.pool.push(self.gs.share(0, 1, true).unwrap());
            }
            Vec::new()
        } else {
            (0..n).map(|_| self.gs.share(0, 1, true).unwrap()).collect()
        }
    }

    fn page_memory<'a>(&'a self, fresh: &'a [LoopbackSharedGrants], i: usize) -> &'a LoopbackSharedGrants {
        if self.persistent {
            &self.pool[i]
        } else {
            &fresh[i]
        }
    }

    /// After a response: non-persistent grants must be unmapped already,
    /// as blkfront checks.
    fn release(&self, fresh: Vec<LoopbackSharedGrants>) {
        for page in fresh {
            self.gs.end_access(page).expect("the backend unmapped the request's pages before answering");
        }
    }

    /// Splits `nr_sectors` into at most `max_segments` segments of 1..=8
    /// sectors at random offsets in their pages.
    fn layout(rng: &mut StdRng, nr_sectors: usize, max_segments: usize) -> Vec<(u8, u8)> {
        assert!(nr_sectors <= max_segments * 8);
        let mut left = nr_sectors;
        let mut out = Vec::new();
        while left > 0 {
            let segments_left = max_segments - out.len();
            let least = left.saturating_sub(8 * (segments_left - 1)).max(1);
            let n = rng.gen_range(least..=left.min(8));
            let first = rng.gen_range(0..=8 - n);
            out.push((first as u8, (first + n - 1) as u8));
            left -= n;
        }
        out
    }

    /// Builds a read or write of `layout` at `sector`, direct or indirect;
    /// returns the request and the pages it uses (fresh ones, to release
    /// after the response).
    fn data_request(
        &mut self,
        op: u8,
        sector: u64,
        layout: &[(u8, u8)],
        mode: Mode,
    ) -> (BlkifRequest, Vec<LoopbackSharedGrants>) {
        let nr_indirect = if mode == Mode::Indirect { layout.len().div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME) } else { 0 };
        let fresh = self.pages(layout.len() + nr_indirect);
        let gref = |this: &Self, i: usize| this.page_memory(&fresh, i).refs()[0];
        let segments: Vec<_> =
            layout.iter().enumerate().map(|(i, &(f, l))| BlkifRequestSegment::new(gref(self, i), f, l)).collect();
        let id = self.id();
        let request = match mode {
            Mode::Direct => {
                let mut r = BlkifRequest {
                    operation: op,
                    nr_segments: segments.len() as u8,
                    id,
                    sector_number: sector,
                    ..Default::default()
                };
                r.seg[..segments.len()].copy_from_slice(&segments);
                r
            }
            Mode::Indirect => {
                let mut indirect_grefs = [0; 8];
                for (p, chunk) in segments.chunks(BLKIF_SEGS_PER_INDIRECT_FRAME).enumerate() {
                    let page = self.page_memory(&fresh, layout.len() + p);
                    page.memory().write(0, chunk.as_bytes()).unwrap();
                    indirect_grefs[p] = page.refs()[0];
                }
                BlkifRequest::from_indirect(BlkifRequestIndirect {
                    operation: BLKIF_OP_INDIRECT,
                    indirect_op: op,
                    nr_segments: segments.len() as u16,
                    id,
                    sector_number: sector,
                    indirect_grefs,
                    ..Default::default()
                })
            }
        };
        (request, fresh)
    }

    fn write(&mut self, rng: &mut StdRng, sector: u64, data: &[u8], mode: Mode) -> i16 {
        let layout = Self::layout(rng, data.len() / 512, max_segments(mode));
        let (request, fresh) = self.data_request(BLKIF_OP_WRITE, sector, &layout, mode);
        let mut at = 0;
        for (i, &(f, l)) in layout.iter().enumerate() {
            let len = (usize::from(l) - usize::from(f) + 1) * 512;
            self.page_memory(&fresh, i).memory().write(usize::from(f) * 512, &data[at..at + len]).unwrap();
            at += len;
        }
        let status = self.one(0, request).status;
        self.release(fresh);
        status
    }

    fn read(&mut self, rng: &mut StdRng, sector: u64, nr_sectors: usize, mode: Mode) -> (i16, Vec<u8>) {
        let layout = Self::layout(rng, nr_sectors, max_segments(mode));
        let (request, fresh) = self.data_request(BLKIF_OP_READ, sector, &layout, mode);
        let status = self.one(0, request).status;
        let mut data = vec![0u8; nr_sectors * 512];
        let mut at = 0;
        for (i, &(f, l)) in layout.iter().enumerate() {
            let len = (usize::from(l) - usize::from(f) + 1) * 512;
            self.page_memory(&fresh, i).memory().read(usize::from(f) * 512, &mut data[at..at + len]).unwrap();
            at += len;
        }
        self.release(fresh);
        (status, data)
    }

    fn flush(&mut self, op: u8) -> i16 {
        let id = self.id();
        self.one(0, BlkifRequest { operation: op, id, ..Default::default() }).status
    }

    fn discard(&mut self, sector: u64, nr_sectors: u64) -> i16 {
        let id = self.id();
        let request = BlkifRequest::from_discard(BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            id,
            sector_number: sector,
            nr_sectors,
            ..Default::default()
        });
        self.one(0, request).status
    }

    fn set_state(&self, state: &str) {
        self.xs.write(Transaction::NONE, &format!("{}/state", self.rig.fe_path), state.as_bytes()).unwrap();
    }

    /// Closes as blkfront does on unload: Closing, then Closed once the
    /// backend follows; then every grant can be ended.
    fn close(self) {
        self.set_state("5");
        self.rig.wait_backend_state("5");
        self.set_state("6");
        self.rig.wait_backend_state("6");
        for q in self.queues {
            self.ev.close(q.port).unwrap();
            self.gs.end_access(q.ring).expect("the backend unmapped the ring when it closed");
        }
        for page in self.pool {
            self.gs.end_access(page).expect("the backend unmapped the persistent grants when it closed");
        }
        // Tidy up for the next frontend, which may use fewer nodes.
        let fe = &self.rig.fe_path;
        for node in ["ring-page-order", "multi-queue-num-queues", "ring-ref", "event-channel", "queue-0", "queue-1", "queue-2"] {
            let _ = self.xs.rm(Transaction::NONE, &format!("{fe}/{node}"));
        }
        for i in 0..16 {
            let _ = self.xs.rm(Transaction::NONE, &format!("{fe}/ring-ref{i}"));
        }
    }
}

fn max_segments(mode: Mode) -> usize {
    match mode {
        Mode::Direct => 11,
        Mode::Indirect => 256,
    }
}

fn expected_operation(request: &BlkifRequest) -> u8 {
    if request.operation == BLKIF_OP_INDIRECT {
        request.as_indirect().indirect_op
    } else {
        request.operation
    }
}

fn random_data(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen()).collect()
}

/// Random writes, direct and indirect, read back through the ring and
/// checked in the file; flush, barrier and discard.
fn exercise_data_path(spec: DiskSpec, front_spec: FrontSpec) {
    let mut rng = seeded_rng();
    let rig = Rig::start(spec);
    let mut front = Front::connect(&rig, front_spec);
    assert_eq!(front.feature("feature-persistent"), if spec.persistent { "1" } else { "0" });
    assert_eq!(front.feature("sectors"), (spec.size / 512).to_string());
    assert_eq!(front.feature("feature-flush-cache"), "1");
    assert_eq!(front.feature("feature-discard"), "1");
    assert_eq!(front.feature("info"), "0");
    let sectors = (spec.size / 512) as u64;
    let mut model = rig.file(0, spec.size);

    for round in 0..40 {
        let mode = if round % 3 == 0 { Mode::Indirect } else { Mode::Direct };
        let max = if mode == Mode::Indirect { 256 } else { 88 };
        let nr = rng.gen_range(1..=max);
        let sector = rng.gen_range(0..=sectors - nr as u64);
        let data = random_data(&mut rng, nr * 512);
        assert_eq!(front.write(&mut rng, sector, &data, mode), BLKIF_RSP_OKAY, "write {nr} sectors at {sector} ({mode:?})");
        model[sector as usize * 512..][..data.len()].copy_from_slice(&data);
        let read_mode = if rng.gen() { Mode::Direct } else { Mode::Indirect };
        let nr_read = if read_mode == Mode::Direct { nr.min(88) } else { nr };
        let (status, back) = front.read(&mut rng, sector, nr_read, read_mode);
        assert_eq!(status, BLKIF_RSP_OKAY);
        assert_eq!(back, data[..nr_read * 512], "read back {nr_read} sectors at {sector} ({read_mode:?})");
    }
    // A large indirect write of 200 full pages, and the last sector.
    let data = random_data(&mut rng, 256 * 4096);
    assert_eq!(front.write(&mut rng, 1000, &data, Mode::Indirect), BLKIF_RSP_OKAY);
    model[1000 * 512..][..data.len()].copy_from_slice(&data);
    let tail = random_data(&mut rng, 512);
    assert_eq!(front.write(&mut rng, sectors - 1, &tail, Mode::Direct), BLKIF_RSP_OKAY);
    model[spec.size - 512..].copy_from_slice(&tail);

    assert_eq!(front.flush(BLKIF_OP_FLUSH_DISKCACHE), BLKIF_RSP_OKAY);
    assert_eq!(front.flush(BLKIF_OP_WRITE_BARRIER), BLKIF_RSP_OKAY);
    assert_eq!(rig.file(0, spec.size), model, "the file holds exactly what was written");

    // Discard whole file-system blocks: they read back as zeroes.
    let granularity: u64 = front.feature("discard-granularity").parse().unwrap();
    let discard_sector = 4 * granularity / 512;
    let discard_len = 3 * granularity / 512;
    assert_eq!(front.discard(discard_sector, discard_len), BLKIF_RSP_OKAY);
    model[(discard_sector * 512) as usize..][..(discard_len * 512) as usize].fill(0);
    let (status, back) = front.read(&mut rng, discard_sector, discard_len as usize, Mode::Indirect);
    assert_eq!(status, BLKIF_RSP_OKAY);
    assert!(back.iter().all(|&b| b == 0));
    assert_eq!(rig.file(0, spec.size), model);

    // Several requests in one push, answered by id.
    let mut batch = Vec::new();
    let mut fresh_all = Vec::new();
    let mut expected = HashMap::new();
    for i in 0..8u64 {
        let (request, fresh) = front.data_request(BLKIF_OP_READ, i * 64, &[(0, 7)], Mode::Direct);
        expected.insert(request.id, i * 64);
        batch.push(request);
        fresh_all.push(fresh);
    }
    if front.persistent {
        // Every request of the batch shares pool page 0: check statuses only.
        let responses = front.submit(0, &batch);
        assert!(responses.values().all(|r| r.status == BLKIF_RSP_OKAY));
        assert_eq!(responses.len(), 8);
    } else {
        let responses = front.submit(0, &batch);
        for (i, fresh) in fresh_all.into_iter().enumerate() {
            let id = batch[i].id;
            assert_eq!(responses[&id].status, BLKIF_RSP_OKAY);
            let mut page = vec![0u8; 4096];
            fresh[0].memory().read(0, &mut page).unwrap();
            let sector = expected[&id] as usize;
            assert_eq!(page, model[sector * 512..][..4096]);
            front.release(fresh);
        }
    }

    front.close();
    rig.stop();
}

#[test]
fn data_round_trips_with_persistent_grants() {
    exercise_data_path(DiskSpec::default(), FrontSpec::default());
}

#[test]
fn data_round_trips_without_persistent_grants_on_a_multi_page_ring() {
    exercise_data_path(DiskSpec::default(), FrontSpec { persistent: false, ring_order: 2, ..Default::default() });
}

#[test]
fn backend_without_persistent_grants_serves_a_frontend_that_wants_them() {
    exercise_data_path(DiskSpec { persistent: false, ..Default::default() }, FrontSpec::default());
}

/// What a pipelined frontend saw: events taken, and each request's time
/// from its push to its response.
struct Pipelined {
    events: usize,
    latencies: Vec<Duration>,
}

/// Reads `count` pages (sector `8 * i` for request `i`, checking their
/// data) on queue 0, keeping up to `depth` in flight, one request per
/// push, a new one every `pace` (at once when zero): the first `depth`
/// go out together, the rest as others are answered and their time comes.
fn pipelined_reads(rig: &Rig, front: &mut Front<'_>, count: usize, depth: usize, pace: Duration) -> Pipelined {
    let pages: Vec<_> = (0..depth).map(|_| front.gs.share(0, 1, true).unwrap()).collect();
    let mut free: Vec<usize> = (0..depth).collect();
    // Request id -> (page, sector, pushed at).
    let mut in_flight: HashMap<u64, (usize, u64, Instant)> = HashMap::new();
    let mut out = Pipelined { events: 0, latencies: Vec::new() };
    let (mut sent, mut next_at, mut id) = (0usize, Instant::now(), front.next_id);
    let deadline = Instant::now() + TIMEOUT;
    let sectors = rig.file_len() as u64 / 512;
    let queue = &front.queues[0];
    let mem = queue.ring.memory().ring_mem().unwrap();
    let mut ring = FrontRing::<BlkifRequest, BlkifResponse>::attach(mem, queue.idx).unwrap();
    while out.latencies.len() < count {
        assert!(Instant::now() < deadline, "requests not answered: {} of {count}", out.latencies.len());
        // Submit: all of the first `depth` at once, then paced.
        while sent < count && !free.is_empty() && (sent < depth || Instant::now() >= next_at) {
            let page = free.pop().unwrap();
            let sector = (8 * sent as u64) % sectors;
            id += 1;
            let mut request =
                BlkifRequest { operation: BLKIF_OP_READ, nr_segments: 1, id, sector_number: sector, ..Default::default() };
            request.seg[0] = BlkifRequestSegment::new(pages[page].refs()[0], 0, 7);
            ring.put_request(&request).unwrap();
            if ring.push_requests_and_check_notify().unwrap() {
                front.ev.notify(queue.port).unwrap();
            }
            in_flight.insert(id, (page, sector, Instant::now()));
            sent += 1;
            next_at = Instant::now() + pace;
            if sent >= depth && !pace.is_zero() {
                break;
            }
        }
        // Take the responses.
        loop {
            while let Some(rsp) = ring.consume_response().unwrap() {
                let (page, sector, pushed) = in_flight.remove(&rsp.id).expect("a response to a request in flight");
                assert_eq!(rsp.status, BLKIF_RSP_OKAY);
                let mut data = vec![0u8; 4096];
                pages[page].memory().read(0, &mut data).unwrap();
                for (i, chunk) in data.chunks(512).enumerate() {
                    let expect = (sector + i as u64) as u8 ^ 0x5a;
                    assert!(chunk.iter().all(|&b| b == expect), "request {} read sector {} wrong", rsp.id, sector + i as u64);
                }
                out.latencies.push(pushed.elapsed());
                free.push(page);
            }
            if !ring.final_check_for_responses().unwrap() {
                break;
            }
        }
        if out.latencies.len() == count {
            break;
        }
        // Sleep until an event, or the next request's time.
        let wait = if sent < count && !free.is_empty() {
            next_at.saturating_duration_since(Instant::now()).max(Duration::from_micros(1))
        } else {
            Duration::from_millis(100)
        };
        if let Some(port) = front.ev.wait(Some(wait)).unwrap() {
            out.events += 1;
            front.ev.unmask(port).unwrap();
        }
    }
    let idx = ring.req_prod_pvt();
    front.queues[0].idx = idx;
    front.next_id = id;
    drop(pages);
    out
}

#[test]
fn coalescing_answers_a_deep_queue_with_fewer_events_and_a_lone_request_at_once() {
    let timeout = Duration::from_millis(100);
    let rig = Rig::start(DiskSpec { coalesce: Some(Coalesce { max_held: 8, timeout }), ..Default::default() });
    let mut front = Front::connect(&rig, FrontSpec::default());
    // 16 in flight, a new request every 2 ms: the backend learns the depth
    // from the first 16, then holds responses for several requests, so
    // the frontend takes one event for several (without moderation it
    // takes one per request: each is answered before the next comes).
    let deep = pipelined_reads(&rig, &mut front, 300, 16, Duration::from_millis(2));
    assert!(deep.events <= 300 / 3, "{} events for 300 requests", deep.events);
    // No response waits much longer than the timeout (and a round).
    let slowest = deep.latencies.iter().max().unwrap();
    assert!(*slowest < timeout + Duration::from_secs(2), "a response took {slowest:?}");
    // One request at a time: the first is held (the depth seen is still
    // 16) until the timeout, in which no request comes; the backend then
    // forgets the depth, and answers every later one at once.
    let lone = pipelined_reads(&rig, &mut front, 120, 1, Duration::ZERO);
    let slow = lone.latencies.iter().filter(|l| **l >= timeout / 2).count();
    assert!(slow <= 1, "{slow} of 120 lone requests waited for the timeout: {:?}", lone.latencies);
    front.close();
    rig.stop();
}

#[test]
fn every_queue_of_a_multi_queue_device_serves_requests() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec::default());
    let mut front = Front::connect(&rig, FrontSpec { queues: 3, ring_order: 1, persistent: true });
    let layout = [(0u8, 7u8)];
    for q in 0..3 {
        let data = random_data(&mut rng, 4096);
        let (request, fresh) = front.data_request(BLKIF_OP_WRITE, 8 * q as u64, &layout, Mode::Direct);
        front.page_memory(&fresh, 0).memory().write(0, &data).unwrap();
        let responses = front.submit(q, &[request]);
        assert_eq!(responses[&request.id].status, BLKIF_RSP_OKAY, "queue {q}");
        assert_eq!(rig.file(8 * q as u64 * 512, 4096), data, "queue {q}");
    }
    front.close();
    rig.stop();
}

#[test]
fn a_read_only_disk_serves_reads_and_refuses_writes() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec { read_only: true, ..Default::default() });
    let mut front = Front::connect(&rig, FrontSpec::default());
    let before = rig.file(0, 8 << 20);

    assert_eq!(front.feature("info"), "4", "VDISK_READONLY");
    assert_eq!(front.feature("feature-flush-cache"), "0");
    assert_eq!(front.feature("feature-discard"), "0");
    let (status, data) = front.read(&mut rng, 16, 24, Mode::Direct);
    assert_eq!(status, BLKIF_RSP_OKAY);
    assert_eq!(data, before[16 * 512..40 * 512]);
    assert_eq!(front.write(&mut rng, 16, &[1; 4096], Mode::Direct), BLKIF_RSP_ERROR);
    assert_eq!(front.write(&mut rng, 16, &[1; 4096], Mode::Indirect), BLKIF_RSP_ERROR);
    assert_eq!(front.flush(BLKIF_OP_FLUSH_DISKCACHE), BLKIF_RSP_ERROR);
    assert_eq!(front.discard(0, 8), BLKIF_RSP_EOPNOTSUPP);
    assert_eq!(rig.file(0, 8 << 20), before, "nothing changed");

    front.close();
    rig.stop();
}

#[test]
fn a_4k_sector_disk_needs_aligned_requests() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec { sector_size: 4096, ..Default::default() });
    let mut front = Front::connect(&rig, FrontSpec::default());

    assert_eq!(front.feature("sector-size"), "4096");
    assert_eq!(front.feature("sectors"), (8u64 << 20 >> 9).to_string(), "sectors stay in 512-byte units");
    let data = random_data(&mut rng, 8192);
    assert_eq!(front.write(&mut rng, 16, &data, Mode::Direct), BLKIF_RSP_OKAY);
    assert_eq!(rig.file(16 * 512, 8192), data);
    assert_eq!(front.write(&mut rng, 12, &data, Mode::Direct), BLKIF_RSP_ERROR, "misaligned start");
    assert_eq!(front.write(&mut rng, 16, &data[..4096 + 512], Mode::Direct), BLKIF_RSP_ERROR, "partial sector");

    front.close();
    rig.stop();
}

#[test]
fn malicious_requests_get_errors_and_later_requests_still_work() {
    for persistent in [true, false] {
        let mut rng = seeded_rng();
        let rig = Rig::start(DiskSpec::default());
        let mut front = Front::connect(&rig, FrontSpec { persistent, ..Default::default() });
        let sectors = 8u64 << 20 >> 9;
        let page = front.gs.share(0, 1, true).unwrap();
        let gref = page.refs()[0];
        let foreign = front.gs.share(2, 1, true).unwrap();
        let rw = |id: u64, op: u8, sector: u64, segs: &[(GrantRef, u8, u8)]| {
            let mut r = BlkifRequest { operation: op, nr_segments: segs.len() as u8, id, sector_number: sector, ..Default::default() };
            for (slot, &(g, f, l)) in r.seg.iter_mut().zip(segs) {
                *slot = BlkifRequestSegment::new(g, f, l);
            }
            r
        };
        let indirect = |id: u64, op: u8, nr: u16, pages: [GrantRef; 8]| {
            BlkifRequest::from_indirect(BlkifRequestIndirect {
                operation: BLKIF_OP_INDIRECT,
                indirect_op: op,
                nr_segments: nr,
                id,
                sector_number: 0,
                indirect_grefs: pages,
                ..Default::default()
            })
        };
        let mut twelve = rw(106, BLKIF_OP_WRITE, 0, &[(gref, 0, 7); 11]);
        twelve.nr_segments = 12;
        let bad: Vec<(BlkifRequest, i16)> = vec![
            (rw(101, BLKIF_OP_WRITE, 0, &[(gref, 5, 4)]), BLKIF_RSP_ERROR),
            (rw(102, BLKIF_OP_READ, 0, &[(gref, 0, 8)]), BLKIF_RSP_ERROR),
            (rw(103, BLKIF_OP_READ, sectors - 7, &[(gref, 0, 7)]), BLKIF_RSP_ERROR),
            (rw(104, BLKIF_OP_WRITE, u64::MAX - 2, &[(gref, 0, 7)]), BLKIF_RSP_ERROR),
            (rw(105, BLKIF_OP_READ, 0, &[]), BLKIF_RSP_ERROR),
            (twelve, BLKIF_RSP_ERROR),
            (rw(107, BLKIF_OP_READ, 0, &[(gref, 0, 7), (987_654, 0, 7)]), BLKIF_RSP_ERROR),
            (rw(108, BLKIF_OP_WRITE, 0, &[(foreign.refs()[0], 0, 7)]), BLKIF_RSP_ERROR),
            (rw(109, 99, 0, &[(gref, 0, 7)]), BLKIF_RSP_EOPNOTSUPP),
            (indirect(110, BLKIF_OP_READ, 257, [gref; 8]), BLKIF_RSP_ERROR),
            (indirect(111, BLKIF_OP_DISCARD, 1, [gref; 8]), BLKIF_RSP_ERROR),
            (indirect(112, BLKIF_OP_READ, 4, [555_555; 8]), BLKIF_RSP_ERROR),
            (indirect(113, BLKIF_OP_READ, 0, [gref; 8]), BLKIF_RSP_ERROR),
        ];
        // The indirect page of 114 holds a segment pointing at a foreign page.
        let seg_page = front.gs.share(0, 1, true).unwrap();
        seg_page.memory().write(0, BlkifRequestSegment::new(foreign.refs()[0], 0, 7).as_bytes()).unwrap();
        let mut bad = bad;
        bad.push((indirect(114, BLKIF_OP_READ, 1, [seg_page.refs()[0]; 8]), BLKIF_RSP_ERROR));
        let before = rig.file(0, 8 << 20);

        let requests: Vec<_> = bad.iter().map(|(r, _)| *r).collect();
        let responses = front.submit(0, &requests);

        for (request, status) in &bad {
            let rsp = responses[&request.id];
            assert_eq!(rsp.status, *status, "request {} ({request:?})", request.id);
            assert_eq!(rsp.operation, expected_operation(request), "request {}", request.id);
        }
        assert_eq!(rig.file(0, 8 << 20), before, "no bad request wrote anything");
        let data = random_data(&mut rng, 4096 * 3);
        assert_eq!(front.write(&mut rng, 24, &data, Mode::Direct), BLKIF_RSP_OKAY);
        let (status, back) = front.read(&mut rng, 24, 24, Mode::Indirect);
        assert_eq!((status, back), (BLKIF_RSP_OKAY, data));

        drop((page, foreign, seg_page));
        front.close();
        rig.stop();
    }
}

#[test]
fn a_frontend_can_disconnect_and_reconnect() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec::default());
    let mut front = Front::connect(&rig, FrontSpec { persistent: true, ring_order: 1, ..Default::default() });
    let data = random_data(&mut rng, 8192);
    assert_eq!(front.write(&mut rng, 64, &data, Mode::Indirect), BLKIF_RSP_OKAY);
    front.close();

    // blkfront reloaded: Initialising, the backend goes back to InitWait.
    rig.xs0.write(Transaction::NONE, &format!("{}/state", rig.fe_path), b"1").unwrap();
    for spec in [FrontSpec { persistent: false, ..Default::default() }, FrontSpec { queues: 2, ..Default::default() }]
    {
        let mut front = Front::connect(&rig, spec);
        let (status, back) = front.read(&mut rng, 64, 16, Mode::Direct);
        assert_eq!((status, back), (BLKIF_RSP_OKAY, data.clone()), "the data survived the reconnect");
        front.close();
        rig.xs0.write(Transaction::NONE, &format!("{}/state", rig.fe_path), b"1").unwrap();
    }
    rig.wait_backend_state("2");
    rig.stop();
}

#[test]
fn a_broken_ring_fails_the_device_and_a_reconnect_recovers() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec::default());
    let front = Front::connect(&rig, FrontSpec::default());

    // req_prod far beyond what the ring can hold.
    let mem = front.queues[0].ring.memory().ring_mem().unwrap();
    mem.store_index(SringIndex::ReqProd, std::num::Wrapping(100_000));
    front.ev.notify(front.queues[0].port).unwrap();
    rig.wait_backend_state("5");
    let error_path = format!("/local/domain/0/error/backend/vbd/{FE}/{DEVID}/error");
    let error = String::from_utf8(rig.xs0.read(Transaction::NONE, &error_path).unwrap()).unwrap();
    assert!(error.contains("req_prod"), "{error}");
    front.close();

    rig.xs0.write(Transaction::NONE, &format!("{}/state", rig.fe_path), b"1").unwrap();
    let mut front = Front::connect(&rig, FrontSpec::default());
    let data = random_data(&mut rng, 4096);
    assert_eq!(front.write(&mut rng, 0, &data, Mode::Direct), BLKIF_RSP_OKAY);
    assert_eq!(rig.file(0, 4096), data);
    front.close();
    rig.stop();
}

#[test]
fn the_backend_exits_when_the_toolstack_takes_the_device_offline() {
    let rig = Rig::start(DiskSpec::default());
    let front = Front::connect(&rig, FrontSpec::default());
    rig.xs0.write(Transaction::NONE, &format!("{}/online", rig.be_path), b"0").unwrap();

    front.close();

    let mut rig = rig;
    let backend = rig.backend.take().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !backend.is_finished() {
        assert!(Instant::now() < deadline, "the backend did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    backend.join().unwrap().unwrap();
    assert_eq!(rig.backend_node("state").as_deref(), Some("6"));
}
