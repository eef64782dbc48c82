//! rblkfront end to end against rblkback on the loopback platform: a
//! hypervisor thread, rblkback as domain 0 serving a file on tmpfs, the
//! test as the toolstack, and [`rblkfront::BlockFrontend`] as domain 1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use common::{config, Toolstack, DEVID, FE};
use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::blkif::BlkifStatus;
use hypercall_abi::xen::xenbus::XenbusState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rblkback::{Backend, BackendConfig, BackendError, LoopbackPlatform, RawDisk, RawDiskOptions, StopSignal};
use rblkfront::{Error, FrontendConfig};

fn seeded_rng() -> StdRng {
    let seed = std::env::var("RBLKFRONT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("seed {seed} (set RBLKFRONT_TEST_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

#[derive(Clone, Copy)]
struct DiskSpec {
    size: usize,
    read_only: bool,
    sector_size: u32,
    persistent: bool,
    max_queues: u32,
    max_indirect_segments: u32,
    /// rblkback's busy-polling time.
    poll: std::time::Duration,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            size: 8 << 20,
            read_only: false,
            sector_size: 512,
            persistent: true,
            max_queues: 4,
            max_indirect_segments: 256,
            poll: std::time::Duration::ZERO,
        }
    }
}

/// The toolstack, a disk file and rblkback serving it.
struct Rig {
    ts: Toolstack,
    disk_path: PathBuf,
    stop: Arc<StopSignal>,
    backend: Option<JoinHandle<Result<(), BackendError>>>,
}

impl Rig {
    fn start(spec: DiskSpec) -> Rig {
        let ts = Toolstack::start("e2e");
        let shm = Path::new("/dev/shm");
        let disk_dir = if shm.is_dir() { shm.to_owned() } else { ts.dir.clone() };
        let disk_path = disk_dir.join(format!("{}.img", ts.dir.file_name().unwrap().to_str().unwrap()));
        let initial: Vec<u8> = (0..spec.size).map(|i| (i / 512) as u8 ^ 0x5a).collect();
        std::fs::write(&disk_path, initial).unwrap();
        let mut cfg = BackendConfig::new(0, FE, DEVID);
        cfg.persistent = spec.persistent;
        cfg.max_queues = spec.max_queues;
        cfg.max_indirect_segments = spec.max_indirect_segments;
        cfg.poll_interval = std::time::Duration::from_millis(50);
        cfg.poll = spec.poll;
        let stop = Arc::new(StopSignal::new().unwrap());
        let backend = {
            let (d0, stop, path) = (ts.d0.clone(), Arc::clone(&stop), disk_path.clone());
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
        Rig { ts, disk_path, stop, backend: Some(backend) }
    }

    fn file(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.disk_path).unwrap().read_exact_at(&mut buf, offset).unwrap();
        buf
    }

    /// Stops rblkback as SIGTERM does.
    fn stop_backend(&mut self) {
        self.stop.stop();
        if let Some(backend) = self.backend.take() {
            backend.join().unwrap().unwrap();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.stop();
        let _ = std::fs::remove_file(&self.disk_path);
    }
}

fn random_data(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen()).collect()
}

/// Writes and reads back requests of every kind: one sector, a few
/// sectors in one page, multi-segment direct requests, indirect requests,
/// and transfers split into many requests in flight at once; then flush
/// and discard. Checks the file as well as the reads.
fn exercise(spec: DiskSpec, cfg: FrontendConfig) -> rblkfront::Stats {
    let mut rng = seeded_rng();
    let rig = Rig::start(spec);
    let mut dev = rig.ts.frontend(cfg.clone());
    dev.connect().unwrap();
    assert_eq!(dev.size(), spec.size as u64);
    assert_eq!(dev.persistent(), spec.persistent && cfg.persistent);
    assert!(dev.can_flush() && dev.can_discard() && !dev.read_only());
    let mut model = rig.file(0, spec.size);
    let sectors = (spec.size / 512) as u64;
    let page = 4096;
    let max = dev.max_request_bytes();

    for len in [512, 1536, page, 3 * page + 1024, 11 * page, 12 * page, max, 3 * max + 2048, 1 << 20, 2 << 20] {
        let nr = (len / 512) as u64;
        let sector = rng.gen_range(0..=sectors - nr);
        let data = random_data(&mut rng, len);
        dev.write(sector, &data).unwrap();
        model[sector as usize * 512..][..len].copy_from_slice(&data);
        let mut back = vec![0u8; len];
        dev.read(sector, &mut back).unwrap();
        assert!(back == data, "read back {len} bytes at sector {sector}");
    }
    // The last sector, and the whole disk at once.
    let tail = random_data(&mut rng, 512);
    dev.write(sectors - 1, &tail).unwrap();
    model[spec.size - 512..].copy_from_slice(&tail);
    dev.flush().unwrap();
    assert!(rig.file(0, spec.size) == model, "the file holds exactly what was written");
    let mut whole = vec![0u8; spec.size];
    dev.read(0, &mut whole).unwrap();
    assert!(whole == model, "the whole disk reads back");

    // Discard whole blocks: they read back as zeroes.
    let granularity = u64::from(dev.info().unwrap().discard.unwrap().granularity.max(512));
    let (start, count) = (4 * granularity / 512, 3 * granularity / 512);
    dev.discard(start, count).unwrap();
    let mut back = vec![0xffu8; (count * 512) as usize];
    dev.read(start, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "discarded sectors read as zeroes");

    let stats = dev.stats();
    dev.disconnect().unwrap();
    assert_eq!(rig.ts.backend_node("state").as_deref(), Some("6"), "the backend followed to Closed");
    assert_eq!(rig.ts.frontend_node("state").as_deref(), Some("6"));
    assert_eq!(dev.stats().leaked_pages, 0, "the backend unmapped everything; no grant is left");
    drop(dev);
    let mut rig = rig;
    rig.stop_backend();
    stats
}

#[test]
fn data_round_trips_with_persistent_grants_and_indirect_requests() {
    let stats = exercise(DiskSpec::default(), config());

    assert!(stats.indirect_req > 0, "{stats:?}");
    assert!(stats.max_in_flight > 1, "several requests were in flight at once: {stats:?}");
    assert!(stats.f_req == 1 && stats.ds_req == 1 && stats.errors == 0, "{stats:?}");
}

#[test]
fn data_round_trips_without_persistent_grants_on_a_multi_page_ring() {
    let mut cfg = config();
    cfg.persistent = false;
    cfg.max_ring_page_order = 2;
    cfg.max_indirect_segments = 256;

    let stats = exercise(DiskSpec::default(), cfg);

    assert!(stats.indirect_req > 0);
}

#[test]
fn data_round_trips_when_the_backend_refuses_persistent_grants() {
    exercise(DiskSpec { persistent: false, ..Default::default() }, config());
}

#[test]
fn data_round_trips_with_direct_requests_only() {
    let stats = exercise(DiskSpec { max_indirect_segments: 0, ..Default::default() }, config());

    assert_eq!(stats.indirect_req, 0);
}

#[test]
fn a_multi_queue_device_publishes_every_queue_and_uses_them() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec { max_queues: 3, ..Default::default() });
    let mut cfg = config();
    cfg.max_queues = 8;
    cfg.max_ring_page_order = 1;
    let mut dev = rig.ts.frontend(cfg);

    dev.connect().unwrap();

    assert_eq!(dev.queues(), 3, "as many as the backend offers");
    assert_eq!(rig.ts.frontend_node("multi-queue-num-queues").as_deref(), Some("3"));
    for q in 0..3 {
        assert!(rig.ts.frontend_node(&format!("queue-{q}/ring-ref0")).is_some());
        assert!(rig.ts.frontend_node(&format!("queue-{q}/ring-ref1")).is_some());
        assert!(rig.ts.frontend_node(&format!("queue-{q}/event-channel")).is_some());
    }
    assert_eq!(rig.ts.frontend_node("ring-page-order").as_deref(), Some("1"));
    assert_eq!(rig.ts.frontend_node("protocol").as_deref(), Some("x86_64-abi"));
    // Enough requests to go round every queue several times.
    let data = random_data(&mut rng, 4 << 20);
    dev.write(0, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read(0, &mut back).unwrap();
    assert!(back == data);
    assert!(rig.file(0, data.len()) == data);
    assert!(dev.stats().max_in_flight >= 3, "{:?}", dev.stats());
    dev.disconnect().unwrap();
}

#[test]
fn a_read_only_disk_serves_reads_and_writes_fail() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec { read_only: true, ..Default::default() });
    let before = rig.file(0, 8 << 20);
    let mut dev = rig.ts.frontend(config());
    dev.connect().unwrap();

    assert!(dev.read_only());
    assert!(!dev.can_flush() && !dev.can_discard());
    let mut back = vec![0u8; 24 * 512];
    dev.read(16, &mut back).unwrap();
    assert!(back == before[16 * 512..40 * 512]);
    let data = random_data(&mut rng, 8192);
    assert!(matches!(dev.write(16, &data), Err(Error::ReadOnly)), "refused before reaching the ring");
    assert!(matches!(dev.discard(0, 8), Err(Error::Unsupported("discard"))));
    dev.flush().unwrap(); // Nothing to flush: no request is sent.
    dev.disconnect().unwrap();

    // Sent anyway, the backend refuses, and the failure surfaces.
    let mut cfg = config();
    cfg.honour_read_only = false;
    let mut dev = rig.ts.frontend(cfg);
    dev.connect().unwrap();
    let err = dev.write(16, &data).unwrap_err();
    assert!(matches!(err, Error::Io { op: "write", sector: 16, nr_sectors: 16, status: BlkifStatus::Error }), "{err}");
    assert!(dev.broken().is_none(), "an I/O error does not break the device");
    dev.read(16, &mut back).unwrap();
    assert!(rig.file(0, 8 << 20) == before, "nothing changed");
    assert_eq!(dev.stats().errors, 1);
    dev.disconnect().unwrap();
}

#[test]
fn bad_ranges_are_refused_locally() {
    let rig = Rig::start(DiskSpec { sector_size: 4096, ..Default::default() });
    let mut dev = rig.ts.frontend(config());
    dev.connect().unwrap();
    let sectors = dev.sectors();

    assert_eq!(dev.sector_size(), 4096);
    assert!(matches!(dev.write(12, &[1; 4096]), Err(Error::Misaligned { .. })), "misaligned start");
    assert!(matches!(dev.write(16, &[1; 4608]), Err(Error::Misaligned { .. })), "partial sector");
    assert!(matches!(dev.read(sectors - 8, &mut [0; 8192]), Err(Error::OutOfRange { .. })));
    assert!(matches!(dev.read(u64::MAX - 1, &mut [0; 4096]), Err(Error::OutOfRange { .. })));
    dev.write(16, &[7; 8192]).unwrap();
    assert_eq!(rig.file(16 * 512, 8192), vec![7; 8192]);
    assert_eq!(dev.stats().errors, 0, "nothing bad reached the backend");
    dev.disconnect().unwrap();
}

#[test]
fn a_frontend_disconnects_and_reconnects() {
    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec::default());
    let mut cfg = config();
    cfg.max_ring_page_order = 2;
    cfg.max_queues = 2;
    let mut dev = rig.ts.frontend(cfg);
    dev.connect().unwrap();
    let data = random_data(&mut rng, 256 << 10);
    dev.write(64, &data).unwrap();

    dev.disconnect().unwrap();
    assert!(!dev.is_connected());
    assert!(matches!(dev.read(0, &mut [0; 512]), Err(Error::NotConnected)));
    assert_eq!(rig.ts.backend_node("state").as_deref(), Some("6"));
    dev.connect().unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read(64, &mut back).unwrap();
    assert!(back == data, "the data survived the reconnect");
    dev.reconnect().unwrap();
    dev.read(64, &mut back).unwrap();
    assert!(back == data);

    assert_eq!(dev.stats().connects, 3);
    assert_eq!(dev.stats().leaked_pages, 0);
    dev.disconnect().unwrap();
}

#[test]
fn a_new_frontend_takes_over_a_stale_session() {
    let rig = Rig::start(DiskSpec::default());
    let mut first = rig.ts.frontend(config());
    first.connect().unwrap();
    first.write(0, &[3; 4096]).unwrap();
    // The first frontend's process dies without closing: its state stays
    // Connected, and so does the backend's.
    std::mem::forget(first);

    let mut second = rig.ts.frontend(config());
    second.connect().unwrap();

    let mut back = [0u8; 4096];
    second.read(0, &mut back).unwrap();
    assert_eq!(back, [3; 4096]);
    second.disconnect().unwrap();
}

#[test]
fn a_backend_that_closes_is_followed_and_reported() {
    let rig = Rig::start(DiskSpec::default());
    let mut dev = rig.ts.frontend(config());
    dev.connect().unwrap();
    dev.write(0, &[1; 4096]).unwrap();
    let mut rig = rig;

    rig.stop_backend();

    let err = dev.write(0, &[2; 4096]).unwrap_err();
    assert!(matches!(err, Error::BackendClosed(XenbusState::Closed)), "{err}");
    assert!(!dev.is_connected());
    assert_eq!(rig.ts.frontend_node("state").as_deref(), Some("6"), "the frontend followed to Closed");
    assert!(matches!(dev.read(0, &mut [0; 512]), Err(Error::NotConnected)));
}

#[test]
fn the_check_command_passes_on_the_loopback() {
    let rig = Rig::start(DiskSpec::default());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rblkfront"))
        .args(["--platform", "loopback", "--loopback-dir"])
        .arg(&rig.ts.dir)
        .args(["--domid", "1", "check", "--devid", &DEVID.to_string(), "--bytes", "6M", "--seed", "42"])
        .args(["--max-ring-page-order", "1"])
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.starts_with("RBLKFRONT-CHECK")).unwrap();
    assert!(line.starts_with("RBLKFRONT-CHECK PASS bytes=6291456 MB/s-write="), "{line}");
    assert!(line.contains(" MB/s-read="), "{line}");
    // The pattern is on the disk, past what a partial check would touch.
    let mut expected = vec![0u8; 4096];
    rblkfront::check::pattern(42, (6 << 20) - 4096, &mut expected);
    assert_eq!(rig.file((6 << 20) - 4096, 4096), expected);
    assert!(rig.file(6 << 20, 512).iter().enumerate().all(|(i, &b)| b == ((12288 + i / 512) as u8 ^ 0x5a)));
    // The check closed the device (and its domain is gone with the process).
    rig.ts.wait_node(&format!("{}/state", rig.ts.be_path), "6");
}

#[test]
fn the_check_command_reports_a_missing_device() {
    let ts = Toolstack::start("missing");
    ts.xs0.rm(Transaction::NONE, &format!("{}/backend", ts.fe_path)).unwrap();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rblkfront"))
        .args(["--platform", "loopback", "--loopback-dir"])
        .arg(&ts.dir)
        .args(["check", "--devid", &DEVID.to_string(), "--timeout", "2"])
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.starts_with("RBLKFRONT-CHECK FAIL "), "{stdout}");
    assert!(stdout.contains("backend does not exist"), "{stdout}");
}

#[test]
fn nbd_requests_are_served_from_the_device() {
    use rblkfront::nbd::{request_header, NBD_CMD_DISC, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE};
    use std::io::{Read, Write};

    let mut rng = seeded_rng();
    let rig = Rig::start(DiskSpec::default());
    let mut dev = rig.ts.frontend(config());
    dev.connect().unwrap();
    let (mut client, mut server) = std::os::unix::net::UnixStream::pair().unwrap();
    let data = random_data(&mut rng, 192 << 10);
    let expected = data.clone();
    let kernel = std::thread::spawn(move || {
        let reply = |client: &mut std::os::unix::net::UnixStream, cookie: u64, payload: usize| {
            let mut header = [0u8; 16];
            client.read_exact(&mut header).unwrap();
            assert_eq!(header[..4], 0x6744_6698u32.to_be_bytes());
            assert_eq!(u64::from_be_bytes(header[8..].try_into().unwrap()), cookie);
            let error = u32::from_be_bytes(header[4..8].try_into().unwrap());
            let mut body = vec![0u8; if error == 0 { payload } else { 0 }];
            client.read_exact(&mut body).unwrap();
            (error, body)
        };
        client.write_all(&request_header(NBD_CMD_WRITE, 1, 1 << 20, data.len() as u32)).unwrap();
        client.write_all(&data).unwrap();
        assert_eq!(reply(&mut client, 1, 0).0, 0);
        client.write_all(&request_header(NBD_CMD_FLUSH, 2, 0, 0)).unwrap();
        assert_eq!(reply(&mut client, 2, 0).0, 0);
        client.write_all(&request_header(NBD_CMD_READ, 3, 1 << 20, data.len() as u32)).unwrap();
        let (error, body) = reply(&mut client, 3, data.len());
        assert!(error == 0 && body == data);
        client.write_all(&request_header(NBD_CMD_TRIM, 4, 1 << 20, 8192)).unwrap();
        assert_eq!(reply(&mut client, 4, 0).0, 0);
        client.write_all(&request_header(NBD_CMD_READ, 5, (8 << 20) - 512, 1024)).unwrap();
        assert_eq!(reply(&mut client, 5, 1024).0, 28, "ENOSPC past the end");
        client.write_all(&request_header(NBD_CMD_READ, 6, 100, 512)).unwrap();
        assert_eq!(reply(&mut client, 6, 512).0, 22, "EINVAL when misaligned");
        // Refused writes: their payload is skipped, and the session goes on.
        client.write_all(&request_header(NBD_CMD_WRITE, 10, 100, 4096)).unwrap();
        client.write_all(&[0xee; 4096]).unwrap();
        assert_eq!(reply(&mut client, 10, 0).0, 22, "EINVAL for a misaligned write");
        client.write_all(&request_header(NBD_CMD_WRITE, 11, (8 << 20) - 4096, 8192)).unwrap();
        client.write_all(&[0xee; 8192]).unwrap();
        assert_eq!(reply(&mut client, 11, 0).0, 28, "ENOSPC for a write past the end");
        client.write_all(&request_header(9, 7, 0, 0)).unwrap();
        assert_eq!(reply(&mut client, 7, 0).0, 95, "ENOTSUP for an unknown command");
        client.write_all(&request_header(NBD_CMD_DISC, 8, 0, 0)).unwrap();
    });

    rblkfront::nbd::serve(&mut dev, &mut server).unwrap();

    kernel.join().unwrap();
    let mut on_disk = rig.file(1 << 20, expected.len());
    assert!(on_disk[..8192].iter().all(|&b| b == 0), "trimmed");
    on_disk[..8192].copy_from_slice(&expected[..8192]);
    assert!(on_disk == expected);
    // The refused writes wrote nothing: the file's first and last pages
    // hold what it was made with.
    let initial = |at: usize, len: usize| (at..at + len).map(|i| (i / 512) as u8 ^ 0x5a).collect::<Vec<u8>>();
    assert!(rig.file(0, 8192) == initial(0, 8192));
    assert!(rig.file((8 << 20) - 4096, 4096) == initial((8 << 20) - 4096, 4096));
    dev.disconnect().unwrap();
}

/// Writes then reads back a batch of independent requests of mixed
/// sizes at random non-overlapping places, more than the rings hold at
/// once; checks the file and the buffers.
fn batch_round_trip(spec: DiskSpec, cfg: FrontendConfig) -> rblkfront::Stats {
    let mut rng = seeded_rng();
    let rig = Rig::start(spec);
    let mut dev = rig.ts.frontend(cfg);
    dev.connect().unwrap();
    let mut model = rig.file(0, spec.size);
    // Slots of 64 KiB, shuffled: each request lies in a slot of its own.
    let slot = 64 << 10;
    let mut slots: Vec<usize> = (0..spec.size / slot).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.gen_range(0..=i));
    }
    let sizes = [4096, 512, 64 << 10, 1536, 12 * 4096, 4096, 8192];
    let requests: Vec<(u64, Vec<u8>)> = slots
        .iter()
        .take(200)
        .enumerate()
        .map(|(i, &s)| {
            let len = sizes[i % sizes.len()];
            let at = s * slot + rng.gen_range(0..=(slot - len) / 512) * 512;
            ((at / 512) as u64, random_data(&mut rng, len))
        })
        .collect();
    let ring_slots = dev.ring_slots() * dev.queues();
    assert!(requests.len() > ring_slots, "more requests than the rings hold ({ring_slots})");

    let writes: Vec<(u64, &[u8])> = requests.iter().map(|(s, d)| (*s, d.as_slice())).collect();
    dev.write_many(&writes).unwrap();
    let mut buffers: Vec<Vec<u8>> = requests.iter().map(|(_, d)| vec![0u8; d.len()]).collect();
    let mut reads: Vec<(u64, &mut [u8])> =
        requests.iter().zip(&mut buffers).map(|((s, _), b)| (*s, b.as_mut_slice())).collect();
    dev.read_many(&mut reads).unwrap();

    for ((sector, data), back) in requests.iter().zip(&buffers) {
        assert!(back == data, "read back {} bytes at sector {sector}", data.len());
        model[*sector as usize * 512..][..data.len()].copy_from_slice(data);
    }
    assert!(rig.file(0, spec.size) == model, "the file holds exactly what the batch wrote, nothing else");
    dev.write_many(&[]).unwrap();
    dev.read_many(&mut []).unwrap();
    let stats = dev.stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
    dev.disconnect().unwrap();
    assert_eq!(dev.stats().leaked_pages, 0);
    stats
}

#[test]
fn a_batch_keeps_the_rings_full_and_its_data_round_trips() {
    let stats = batch_round_trip(DiskSpec { size: 16 << 20, ..Default::default() }, config());

    assert!(stats.max_in_flight >= 32, "a ring's worth was in flight at once: {stats:?}");
    assert!(stats.indirect_req > 0, "{stats:?}");
    assert_eq!(stats.rd_req, stats.wr_req, "one blkif request per transfer each way: {stats:?}");
}

#[test]
fn data_round_trips_when_both_ends_busy_poll() {
    let spec = DiskSpec { size: 16 << 20, poll: std::time::Duration::from_micros(200), ..Default::default() };
    let mut cfg = config();
    cfg.poll = std::time::Duration::from_micros(200);

    exercise(spec, cfg.clone());
    let stats = batch_round_trip(spec, cfg);

    assert!(stats.max_in_flight >= 32, "a ring's worth was in flight at once: {stats:?}");
}

#[test]
fn a_batch_round_trips_without_persistent_grants_on_one_queue() {
    let mut cfg = config();
    cfg.persistent = false;
    cfg.max_queues = 1;

    let stats = batch_round_trip(DiskSpec { size: 16 << 20, ..Default::default() }, cfg);

    assert_eq!(stats.max_in_flight, 32, "the one ring was full: {stats:?}");
}

#[test]
fn a_batch_with_a_bad_range_sends_nothing() {
    let rig = Rig::start(DiskSpec::default());
    let before = rig.file(0, 8 << 20);
    let mut dev = rig.ts.frontend(config());
    dev.connect().unwrap();
    let sectors = dev.sectors();
    let data = [9u8; 4096];

    let err = dev.write_many(&[(0, &data), (8, &data), (sectors - 4, &data), (16, &data)]).unwrap_err();

    assert!(
        matches!(&err, Error::Batch { index: 2, failed: 1, source } if matches!(**source, Error::OutOfRange { .. })),
        "{err}"
    );
    assert_eq!(dev.stats().wr_req, 0, "nothing was sent");
    assert!(rig.file(0, 8 << 20) == before);
    let (mut a, mut b) = ([0u8; 4096], [0u8; 1000]);
    let err = dev.read_many(&mut [(0, &mut a), (8, &mut b)]).unwrap_err();
    assert!(matches!(&err, Error::Batch { index: 1, source, .. } if matches!(**source, Error::Misaligned { .. })));
    assert_eq!(dev.stats().rd_req, 0);
    dev.disconnect().unwrap();
}

#[test]
fn a_batch_the_backend_fails_names_its_first_failed_request() {
    let rig = Rig::start(DiskSpec { read_only: true, ..Default::default() });
    let before = rig.file(0, 8 << 20);
    let mut cfg = config();
    cfg.honour_read_only = false;
    let mut dev = rig.ts.frontend(cfg);
    dev.connect().unwrap();
    let data = vec![4u8; 4096];
    let writes: Vec<(u64, &[u8])> = (0..8).map(|i| (i * 8, data.as_slice())).collect();

    let err = dev.write_many(&writes).unwrap_err();

    let Error::Batch { index, failed, source } = &err else { panic!("{err}") };
    assert_eq!(*index, 0, "{err}");
    assert!(*failed >= 1 && *failed <= 8, "{err}");
    assert!(matches!(**source, Error::Io { op: "write", sector: 0, nr_sectors: 8, status: BlkifStatus::Error }));
    assert!(dev.broken().is_none(), "an I/O error does not break the device");
    // The reads of a batch still work, and nothing was written.
    let mut back = vec![0u8; 4096];
    dev.read_many(&mut [(8, &mut back)]).unwrap();
    assert!(back == before[8 * 512..8 * 512 + 4096]);
    assert!(rig.file(0, 8 << 20) == before);
    dev.disconnect().unwrap();
}

/// In-place writes and reads of mixed sizes, some longer than one blkif
/// request: each part is filled and taken in the granted pages at its
/// offset, and the data round-trips through the file.
fn in_place_round_trip(cfg: FrontendConfig) {
    let mut rng = seeded_rng();
    let spec = DiskSpec { size: 16 << 20, ..Default::default() };
    let rig = Rig::start(spec);
    let mut dev = rig.ts.frontend(cfg);
    dev.connect().unwrap();
    let max = dev.max_request_bytes();
    let mut model = rig.file(0, spec.size);
    // Requests in separate 400 KiB slots: 4 KiB, 64 KiB, a part and a
    // half, 512 bytes, three parts; more requests than one ring holds.
    let sizes = [4096, 64 << 10, max + max / 2, 512, 3 * max];
    assert!(3 * max <= 400 << 10 && 40 * (400 << 10) <= spec.size);
    let requests: Vec<(u64, usize)> = (0..40).map(|i| ((i * 800) as u64, sizes[i % sizes.len()])).collect();
    let data: Vec<Vec<u8>> = requests.iter().map(|&(_, len)| random_data(&mut rng, len)).collect();
    let mut filled = vec![0usize; requests.len()];

    dev.write_in_place(&requests, |index, offset, pages| {
        assert!(offset % max == 0 && pages.len() <= max, "parts are whole requests");
        assert_eq!(offset, filled[index], "a request's parts are filled in order");
        filled[index] += pages.len();
        pages.write(0, &data[index][offset..offset + pages.len()]).map_err(std::io::Error::other)
    })
    .unwrap();

    for (i, &(_, len)) in requests.iter().enumerate() {
        assert_eq!(filled[i], len, "every byte of request {i} was filled once");
    }
    for (&(sector, len), d) in requests.iter().zip(&data) {
        model[sector as usize * 512..][..len].copy_from_slice(d);
    }
    assert!(rig.file(0, spec.size) == model, "the file holds what was written in place");
    let mut back: Vec<Vec<u8>> = requests.iter().map(|&(_, len)| vec![0u8; len]).collect();
    let mut taken = vec![0usize; requests.len()];
    dev.read_in_place(&requests, |index, offset, pages| {
        taken[index] += pages.len();
        pages.read(0, &mut back[index][offset..offset + pages.len()]).map_err(std::io::Error::other)
    })
    .unwrap();
    assert_eq!(taken, filled, "every byte read was handed over once");
    assert!(back == data, "the reads found the data in place");
    let stats = dev.stats();
    assert!(stats.max_in_flight >= 32 && stats.errors == 0, "{stats:?}");
    dev.disconnect().unwrap();
    assert_eq!(dev.stats().leaked_pages, 0);
}

#[test]
fn in_place_data_round_trips_with_persistent_grants() {
    in_place_round_trip(config());
}

#[test]
fn in_place_data_round_trips_without_persistent_grants() {
    let mut cfg = config();
    cfg.persistent = false;
    in_place_round_trip(cfg);
}

#[test]
fn a_failing_data_function_fails_its_request_and_stops_the_batch() {
    let rig = Rig::start(DiskSpec::default());
    let before = rig.file(0, 8 << 20);
    let mut cfg = config();
    cfg.max_queues = 1;
    let mut dev = rig.ts.frontend(cfg);
    dev.connect().unwrap();
    let requests: Vec<(u64, usize)> = (0..100).map(|i| (i * 8, 4096)).collect();

    // The fill of request 3 fails: it is not sent, nor is anything after.
    let err = dev
        .write_in_place(&requests, |index, _, pages| {
            if index == 3 {
                return Err(std::io::Error::other("no data for request 3"));
            }
            pages.write(0, &[0xc3; 4096]).map_err(std::io::Error::other)
        })
        .unwrap_err();

    assert!(
        matches!(&err, Error::Batch { index: 3, failed: 1, source } if matches!(**source, Error::Data(_))),
        "{err}"
    );
    assert_eq!(dev.stats().wr_req, 3, "the three filled before it were sent, nothing after");
    let mut expected = before.clone();
    expected[..3 * 4096].fill(0xc3);
    assert!(rig.file(0, 8 << 20) == expected);
    // A read whose data function fails is reported the same way; the
    // device still works.
    let err = dev
        .read_in_place(&requests[..4], |index, _, _| {
            if index == 1 {
                Err(std::io::Error::other("the consumer failed"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(&err, Error::Batch { index: 1, source, .. } if matches!(**source, Error::Data(_))), "{err}");
    assert!(dev.broken().is_none());
    let mut back = vec![0u8; 4096];
    dev.read(0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0xc3));
    // Ranges are checked before anything is sent, as for the copying calls.
    let err = dev.read_in_place(&[(0, 4096), (1, 1000)], |_, _, _| Ok(())).unwrap_err();
    assert!(matches!(&err, Error::Batch { index: 1, source, .. } if matches!(**source, Error::Misaligned { .. })));
    dev.disconnect().unwrap();
}
