//! Block I/O on the loopback platform at native speed: rblkfront through
//! rblkback to a file on tmpfs, against reads and writes of the same file
//! made directly, in the same run.
//!
//! This process runs the loopback hypervisor (a thread), fills the disk
//! file, and is domain 1 with rblkfront; it re-executes itself as domain 0,
//! which creates the vbd in xenstore as `xl block-attach` does and serves it
//! with rblkback (a library call, one thread per queue, as the `rblkback`
//! binary does). Persistent grants and every other feature are the
//! defaults of both ends.
//!
//! Each row of [`ROWS`] is timed for [`PHASE_TIME`] through the frontend
//! and then directly with `pread`/`pwrite` on the same file (no O_DIRECT on
//! tmpfs), [`ROUNDS`] times over, interleaved; each figure is the best of
//! its rounds, which filters out other load on the host. Rows with more
//! than one request in flight use [`BlockFrontend::read_many`] and
//! [`BlockFrontend::write_many`]; the direct baseline does the same work
//! from one thread, one call per request.
//!
//! Every row runs twice through the frontend: with the copying calls
//! (the caller's buffers; data copied into and out of the granted pages)
//! and in place ([`BlockFrontend::read_in_place`],
//! [`BlockFrontend::write_in_place`]: the caller reads a read's data in
//! the granted pages, and produces a write's there). In place, each part
//! read is looked at (its first 8 bytes) and each part written is stamped
//! with its offset in its first 8 bytes, the rest being what the pages
//! hold; the direct baseline writes from and reads into buffers that are
//! ready, so both move each byte once.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::XsClient;
use rblkback::{Backend, BackendConfig, LoopbackPlatform, IoMode, RawDisk, RawDiskOptions, StopSignal};
use rblkfront::platform::Loopback;
use rblkfront::{BlockFrontend, FrontendConfig};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};

const ROLE_ENV: &str = "RXEN_BLK_BENCH_ROLE";
const DIR_ENV: &str = "RXEN_BLK_BENCH_DIR";
const DISK_ENV: &str = "RXEN_BLK_BENCH_DISK";
/// Overrides [`PHASE_TIME`], in milliseconds (for quick runs).
const PHASE_ENV: &str = "RXEN_BLK_BENCH_PHASE_MS";
/// Caps the frontend's queues (`max_queues`); the default is
/// [`DEFAULT_QUEUES`].
const QUEUES_ENV: &str = "RXEN_BLK_BENCH_QUEUES";
/// Default for [`QUEUES_ENV`]: one. The frontend is driven by one thread
/// here, and blk-mq gives a submitting thread one queue; a second queue
/// only adds a backend thread that competes with the frontend for the two
/// CPUs of this machine.
const DEFAULT_QUEUES: u32 = 1;
/// Busy-polling of both ends, in microseconds (`poll_us` of rblkback and
/// rblkfront); 0 makes both sleep on their event channels at once.
const POLL_ENV: &str = "RXEN_BLK_BENCH_POLL_US";
/// Default for [`POLL_ENV`]: 50 us. With one queue, the frontend and the
/// backend's queue thread each poll on a CPU of their own, and neither
/// pays for a wake-up between requests (a wake-up on this machine costs
/// more than a 64 KiB copy). With two queues on two CPUs three threads
/// would poll, and polling loses: then use 0.
const DEFAULT_POLL_US: u64 = 50;
/// rblkback's event moderation (`--coalesce-max`): `0` turns it off, for
/// comparisons; unset, the default.
const COALESCE_ENV: &str = "RXEN_BLK_BENCH_COALESCE_MAX";
/// Runs only the row of this index (0-based), e.g. for profiling.
const ONLY_ENV: &str = "RXEN_BLK_BENCH_ONLY";
/// Runs only this API through the frontend (`copy` or `in-place`), e.g.
/// for profiling.
const API_ENV: &str = "RXEN_BLK_BENCH_API";
/// How long each measurement runs.
const PHASE_TIME: Duration = Duration::from_millis(1500);
/// How many times the rows run, interleaved.
const ROUNDS: usize = 3;
/// The disk: a file on tmpfs of this size.
const DISK_BYTES: u64 = 256 << 20;
const FE: DomId = 1;
const DEVID: u32 = 51712;
/// How long set-up steps may take.
const TIMEOUT: Duration = Duration::from_secs(20);

type Error = Box<dyn std::error::Error>;
type Front = BlockFrontend<LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Sequential,
    Random,
}

struct Row {
    name: &'static str,
    op: Op,
    pattern: Pattern,
    /// Bytes per request.
    size: usize,
    /// Requests per call: 1 is `read`/`write`, more a batch.
    depth: usize,
    /// The frontend's rate over the direct one that the row aims for.
    goal: f64,
}

/// How a row calls the frontend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    /// `read`/`write`, `read_many`/`write_many`: the caller's buffers.
    Copy,
    /// `read_in_place`/`write_in_place`: the granted pages.
    InPlace,
}

impl Api {
    const ALL: [Api; 2] = [Api::Copy, Api::InPlace];

    fn name(self) -> &'static str {
        match self {
            Api::Copy => "copy",
            Api::InPlace => "in place",
        }
    }
}

const ROWS: [Row; 6] = [
    Row {
        name: "64 KiB seq write",
        op: Op::Write,
        pattern: Pattern::Sequential,
        size: 64 << 10,
        depth: 1,
        goal: 0.8,
    },
    Row {
        name: "64 KiB seq read",
        op: Op::Read,
        pattern: Pattern::Sequential,
        size: 64 << 10,
        depth: 1,
        goal: 0.8,
    },
    Row {
        name: "64 KiB seq write",
        op: Op::Write,
        pattern: Pattern::Sequential,
        size: 64 << 10,
        depth: 8,
        goal: 0.8,
    },
    Row {
        name: "64 KiB seq read",
        op: Op::Read,
        pattern: Pattern::Sequential,
        size: 64 << 10,
        depth: 8,
        goal: 0.8,
    },
    Row {
        name: "4 KiB rand read",
        op: Op::Read,
        pattern: Pattern::Random,
        size: 4 << 10,
        depth: 32,
        goal: 0.6,
    },
    Row {
        name: "4 KiB rand write",
        op: Op::Write,
        pattern: Pattern::Random,
        size: 4 << 10,
        depth: 32,
        goal: 0.6,
    },
];

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match std::env::var(ROLE_ENV) {
        Ok(_) => backend(),
        Err(_) => frontend(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blk_loopback bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the disk file goes: tmpfs if there is one.
fn disk_path() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("rxen-blk-bench-{}.img", std::process::id()))
}

/// Removes what the run made, however it ends.
struct Cleanup {
    dir: PathBuf,
    disk: PathBuf,
    backend: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.backend.take() {
            // Closing its stdin stops the backend; kill it if it hangs on.
            drop(child.stdin.take());
            let deadline = Instant::now() + TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.disk);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The frontend process: hypervisor thread, domain 1, the direct
/// baseline, and the report.
fn frontend() -> Result<(), Error> {
    let phase = std::env::var(PHASE_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(PHASE_TIME, Duration::from_millis);
    let mut cleanup = Cleanup {
        dir: std::env::temp_dir().join(format!("rxen-blk-bench-{}", std::process::id())),
        disk: disk_path(),
        backend: None,
    };
    std::fs::create_dir_all(&cleanup.dir)?;
    fill(&cleanup.disk)?;
    Hypervisor::bind(&cleanup.dir)?.spawn()?;
    let d1 = LoopbackDomain::connect(&cleanup.dir, FE)?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "backend")
        .env(DIR_ENV, &cleanup.dir)
        .env(DISK_ENV, &cleanup.disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let ready = child.stdout.take().ok_or("no backend stdout")?;
    cleanup.backend = Some(child);
    let mut line = String::new();
    BufReader::new(ready).read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err("the backend exited before it served the device".into());
    }

    let platform = Loopback::from_domain(d1);
    let (grants, evtchn, store) = platform.handles()?;
    let mut cfg = FrontendConfig::new(DEVID);
    cfg.max_queues = std::env::var(QUEUES_ENV).ok().and_then(|q| q.parse().ok()).unwrap_or(DEFAULT_QUEUES);
    cfg.poll = poll();
    let mut dev = BlockFrontend::open(grants, evtchn, store, cfg)?;
    if dev.size() != DISK_BYTES {
        return Err(format!("the device has {} bytes, not {DISK_BYTES}", dev.size()).into());
    }
    let file = File::options().read(true).write(true).open(&cleanup.disk)?;

    println!(
        "blk_loopback: rblkfront -> rblkback (separate processes) on a {} MiB tmpfs file vs \
         pread/pwrite of the same file; best of {ROUNDS} interleaved runs of {:.1} s per figure; \
         both ends busy-poll {} us before sleeping ({POLL_ENV})",
        DISK_BYTES >> 20,
        phase.as_secs_f64(),
        poll().as_micros()
    );
    let max_request = dev.max_request_bytes();
    println!(
        "negotiated: {} queue(s), ring-page-order {} ({} slots per ring), persistent grants {}, \
         indirect {} ({} KiB per request at most)",
        dev.queues(),
        dev.ring_page_order(),
        dev.ring_slots(),
        if dev.persistent() { "on" } else { "off" },
        if max_request > 11 * 4096 { "on" } else { "off" },
        max_request >> 10
    );
    let only: Option<usize> = std::env::var(ONLY_ENV).ok().and_then(|i| i.parse().ok());
    let load_before = load_average();
    // Per row: the best of each API through the frontend, and direct.
    let mut best = vec![([0.0f64; Api::ALL.len()], 0.0f64); ROWS.len()];
    let mut work = Work::new();
    for _ in 0..ROUNDS {
        for (i, (row, best)) in ROWS.iter().zip(&mut best).enumerate() {
            if only.is_some_and(|only| only != i) {
                continue;
            }
            for (api, front_best) in Api::ALL.iter().zip(&mut best.0) {
                if std::env::var(API_ENV).is_ok_and(|only| only != api.name().replace(' ', "-")) {
                    continue;
                }
                let front = work.run(row, phase, &mut Target::Front(&mut dev, *api))?;
                *front_best = front_best.max(front);
            }
            let direct = work.run(row, phase, &mut Target::Direct(&file))?;
            best.1 = best.1.max(direct);
        }
    }
    let load_after = load_average();
    let stats = dev.stats();
    dev.disconnect()?;

    println!(
        "{:<18} {:>9} {:>9} {:>12} {:>12} {:>6} {:>7} {:>5} {:>8}",
        "mode", "in flight", "api", "rblkfront", "direct", "unit", "ratio", "goal", "goal met"
    );
    for (row, (fronts, direct)) in ROWS.iter().zip(&best) {
        let (unit, scale) = match row.pattern {
            Pattern::Sequential => ("MB/s", row.size as f64 / 1e6),
            Pattern::Random => ("IOPS", 1.0),
        };
        for (api, front) in Api::ALL.iter().zip(fronts) {
            let ratio = front / direct;
            println!(
                "{:<18} {:>9} {:>9} {:>12.0} {:>12.0} {:>6} {:>7.2} {:>5.2} {:>8}",
                row.name,
                row.depth,
                api.name(),
                front * scale,
                direct * scale,
                unit,
                ratio,
                row.goal,
                if ratio >= row.goal { "yes" } else { "no" }
            );
        }
    }
    println!(
        "rblkfront: {} reads, {} writes, {} indirect, at most {} in flight, {} errors",
        stats.rd_req, stats.wr_req, stats.indirect_req, stats.max_in_flight, stats.errors
    );
    println!(
        "host load average before/after: {load_before}/{load_after} on {} CPUs; \
         the frontend, the backend's queue threads and the baseline share them",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

/// Writes the whole disk file with data (not holes, which read faster).
fn fill(path: &Path) -> Result<(), Error> {
    let mut file = File::create(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..DISK_BYTES / chunk.len() as u64 {
        for word in chunk.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next().to_le_bytes());
        }
        file.write_all(&chunk)?;
    }
    Ok(())
}

/// Where a row's I/O goes.
enum Target<'a> {
    Front(&'a mut Front, Api),
    Direct(&'a File),
}

/// The buffers and positions of the rows, kept across rounds.
struct Work {
    buffers: Vec<Vec<u8>>,
    /// The next sequential offset.
    next: u64,
    rng: XorShift,
}

impl Work {
    fn new() -> Self {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let buffers = (0..32)
            .map(|_| (0..64 << 10).map(|_| rng.next() as u8).collect())
            .collect();
        Work {
            buffers,
            next: 0,
            rng,
        }
    }

    /// Runs `row` on `target` for `phase`; returns requests per second.
    fn run(&mut self, row: &Row, phase: Duration, target: &mut Target<'_>) -> Result<f64, Error> {
        let blocks = DISK_BYTES / row.size as u64;
        let mut offsets = vec![0u64; row.depth];
        let mut done = 0u64;
        let start = Instant::now();
        while start.elapsed() < phase {
            for offset in &mut offsets {
                *offset = match row.pattern {
                    Pattern::Sequential => {
                        let at = self.next;
                        self.next = (at + row.size as u64) % (blocks * row.size as u64);
                        at
                    }
                    Pattern::Random => self.rng.next() % blocks * row.size as u64,
                };
            }
            let buffers = self.buffers.iter_mut().map(|b| &mut b[..row.size]);
            match (&mut *target, row.op) {
                (Target::Front(dev, Api::InPlace), op) => {
                    let reqs: Vec<(u64, usize)> = offsets.iter().map(|o| (o / 512, row.size)).collect();
                    if op == Op::Read {
                        dev.read_in_place(&reqs, |_, _, pages| {
                            std::hint::black_box(pages.read_obj::<u64>(0).map_err(std::io::Error::other)?);
                            Ok(())
                        })?;
                    } else {
                        dev.write_in_place(&reqs, |index, offset, pages| {
                            let at = offsets[index] + offset as u64;
                            pages.write_obj(0, &at).map_err(std::io::Error::other)
                        })?;
                    }
                }
                (Target::Front(dev, Api::Copy), Op::Read) => {
                    let mut reqs: Vec<(u64, &mut [u8])> =
                        offsets.iter().map(|o| o / 512).zip(buffers).collect();
                    if let [(sector, buf)] = reqs.as_mut_slice() {
                        dev.read(*sector, buf)?;
                    } else {
                        dev.read_many(&mut reqs)?;
                    }
                }
                (Target::Front(dev, Api::Copy), Op::Write) => {
                    let reqs: Vec<(u64, &[u8])> = offsets
                        .iter()
                        .map(|o| o / 512)
                        .zip(buffers.map(|b| &*b))
                        .collect();
                    if let [(sector, buf)] = reqs.as_slice() {
                        dev.write(*sector, buf)?;
                    } else {
                        dev.write_many(&reqs)?;
                    }
                }
                (Target::Direct(file), Op::Read) => {
                    for (&offset, buf) in offsets.iter().zip(buffers) {
                        file.read_exact_at(buf, offset)?;
                    }
                }
                (Target::Direct(file), Op::Write) => {
                    for (&offset, buf) in offsets.iter().zip(buffers) {
                        file.write_all_at(buf, offset)?;
                    }
                }
            }
            done += row.depth as u64;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    }
}

/// xorshift64: offsets and data without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The backend process: domain 0 as toolstack and rblkback, until its
/// stdin closes.
fn backend() -> Result<(), Error> {
    let dir = PathBuf::from(std::env::var(DIR_ENV)?);
    let disk_path = PathBuf::from(std::env::var(DISK_ENV)?);
    let d0 = LoopbackDomain::connect(&dir, 0)?;
    create_vbd(&d0.xenstore()?)?;
    let disk = RawDisk::open(
        &disk_path,
        RawDiskOptions {
            read_only: false,
            sector_size: None,
            direct: false,
            // RXEN_BLK_BENCH_IO=uring|sync|mmap (default: rblkback's
            // choice, mmap for a tmpfs file).
            io: match std::env::var("RXEN_BLK_BENCH_IO").as_deref() {
                Ok("uring") => Some(IoMode::Batched),
                Ok("sync") => Some(IoMode::Sync),
                Ok("mmap") => Some(IoMode::Mapped),
                _ => None,
            },
        },
    )?;
    let stop = Arc::new(StopSignal::new()?);
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.stop();
        });
    }
    let mut cfg = BackendConfig::new(0, FE, DEVID);
    cfg.poll = poll();
    if let Some(max_held) = std::env::var(COALESCE_ENV).ok().and_then(|v| v.parse().ok()) {
        cfg.coalesce = cfg.coalesce.map(|c| rblkback::queue::Coalesce { max_held, ..c });
    }
    let mut backend = Backend::new(LoopbackPlatform::from_domain(d0), Arc::new(disk), cfg)?;
    println!("ready");
    std::io::stdout().flush()?;
    backend.run(&stop)?;
    Ok(())
}

/// Both ends' busy-polling time ([`POLL_ENV`]).
fn poll() -> Duration {
    Duration::from_micros(std::env::var(POLL_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_POLL_US))
}

/// Creates the vbd's directories as `xl block-attach` does, each readable
/// by the other end.
fn create_vbd(xs: &impl Xenstore) -> Result<(), Error> {
    let be = format!("/local/domain/0/backend/vbd/{FE}/{DEVID}");
    let fe = format!("/local/domain/{FE}/device/vbd/{DEVID}");
    let none = Transaction::NONE;
    let fe_id = FE.to_string();
    let devid = DEVID.to_string();
    for (node, value) in [
        ("frontend", fe.as_str()),
        ("frontend-id", &fe_id),
        ("online", "1"),
        ("state", "1"),
    ] {
        xs.write(none, &format!("{be}/{node}"), value.as_bytes())?;
    }
    for (node, value) in [
        ("backend", be.as_str()),
        ("backend-id", "0"),
        ("virtual-device", &devid),
        ("state", "1"),
    ] {
        xs.write(none, &format!("{fe}/{node}"), value.as_bytes())?;
    }
    let perms = |owner: DomId, reader: DomId| {
        [
            XsPerm {
                domid: owner,
                access: XsPermAccess::None,
            },
            XsPerm {
                domid: reader,
                access: XsPermAccess::Read,
            },
        ]
    };
    for node in ["", "/frontend", "/frontend-id", "/online", "/state"] {
        xs.set_perms(none, &format!("{be}{node}"), &perms(0, FE))?;
    }
    for node in ["", "/backend", "/backend-id", "/virtual-device", "/state"] {
        xs.set_perms(none, &format!("{fe}{node}"), &perms(FE, 0))?;
    }
    Ok(())
}
