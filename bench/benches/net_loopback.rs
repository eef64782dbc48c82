//! Network throughput on the loopback platform at native speed: rnetfront
//! through rnetback to a real TAP interface on the host and back, against
//! a memcpy of the same bytes, in the same run.
//!
//! This process runs the loopback hypervisor (a thread) and is domain 1
//! with rnetfront; it re-executes itself as domain 0, which creates the
//! vif in xenstore as `xl network-attach` does and serves it with
//! rnetback (a library call, as the `rnetback` binary does) on a TAP of
//! its own. This process is also the host on the other side of that TAP:
//! a packet socket bound to it with virtio-net headers (`rxen-tap`'s
//! [`PacketSocket`]). All features are the defaults of both ends, with one
//! queue.
//!
//! - *Transmit* rows: the frontend sends frames with
//!   [`NetFrontend::send_batch`]; rnetback writes them to the TAP; the
//!   packet socket receives them. Rate: bytes received by the socket over
//!   the phase.
//! - *Receive* rows: the packet socket writes frames into the TAP;
//!   rnetback delivers them; the frontend takes them with
//!   [`NetFrontend::recv_batch`]. Rate: bytes the frontend received over
//!   the phase.
//! - *memcpy*: `copy_from_slice` between two buffers of the row's frame
//!   size, for the same time, in this process.
//!
//! One thread does both ends of each measurement, so that the frontend and
//! the host share one CPU and the backend has the other. Frames in flight
//! (sent, not yet received) are bounded by a window per row that the
//! kernel's buffers on the way hold: the packet socket's receive buffer
//! (`net.core.rmem_default`) when transmitting, the receive ring and the
//! TAP's queue when receiving. Nothing is dropped by design; what is lost
//! anyway is counted and shown.
//!
//! Every frame carries a tag of its phase and its sequence number, stamped
//! every [`STAMP_EVERY`] bytes of its payload and at its end, over a fixed
//! pattern. Each received frame's headers, length, offload metadata and
//! stamps are checked, and its sequence number must follow the previous
//! one's; every [`FULL_CHECK_EVERY`]th frame is compared byte for byte.
//! Frames of earlier phases and the host's own traffic are skipped.
//!
//! rnetback moves every byte with grant copies. The loopback platform
//! performs a batch of grant copies by mapping each page it names through
//! the hypervisor (a socket round trip to the hypervisor thread, an mmap,
//! and the same again to unmap) before copying, so these figures measure
//! that emulation as much as the two ends; on Xen, `GNTTABOP_copy` is one
//! hypercall per batch.
//!
//! Each row is timed for [`PHASE_TIME`] through the rings and then with
//! memcpy, [`ROUNDS`] times over, interleaved; each figure is the best of
//! its rounds, which filters out other load on the host.
//!
//! Creating the TAP needs root (CAP_NET_ADMIN and CAP_NET_RAW) and
//! `/dev/net/tun`. The TAP goes away with the backend process.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::XsClient;
use rnetback::{Backend, BackendConfig, LoopbackPlatform, StopSignal};
use rnetfront::platform::Loopback;
use rnetfront::{Checksum, FrontendConfig, Gso, GsoKind, NetFrontend, Offload, RxFrame, TxFrame};
use rxen_tap::{
    PacketSocket, VirtioNetHdr, TUN_DEVICE, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VNET_HDR_LEN,
};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};
use zerocopy::{FromBytes, IntoBytes};

const ROLE_ENV: &str = "RXEN_NET_BENCH_ROLE";
const DIR_ENV: &str = "RXEN_NET_BENCH_DIR";
const IFNAME_ENV: &str = "RXEN_NET_BENCH_IFNAME";
/// Overrides [`PHASE_TIME`], in milliseconds (for quick runs).
const PHASE_ENV: &str = "RXEN_NET_BENCH_PHASE_MS";
/// How long each measurement runs.
const PHASE_TIME: Duration = Duration::from_millis(1000);
/// How many times the rows run, interleaved.
const ROUNDS: usize = 3;
const FE: DomId = 1;
const DEVID: u32 = 0;
/// The guest's MAC address, which the toolstack gives the vif.
const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x4e, 0x42, 0x01];
/// The host's end: not the TAP's own address, so that the host's IP stack
/// ignores the frames (`PACKET_OTHERHOST`) and only the socket sees them.
const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x4e, 0x42, 0x99];
/// IEEE 802 local experimental EtherType 1.
const ETHERTYPE_BENCH: u16 = 0x88b5;
const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethernet + IPv4 + TCP headers without options.
const TCP_HEADERS: usize = 14 + 20 + 20;
/// The TCP segment size of GSO frames: a 1500-byte MTU's.
const MSS: u16 = 1448;
/// Payload bytes between sequence stamps.
const STAMP_EVERY: usize = 512;
/// One frame in this many is compared byte for byte.
const FULL_CHECK_EVERY: u64 = 32;
/// Most frames handed to `send_batch` or taken by `recv_batch` at once.
const BATCH: usize = 64;
/// How long a wait for the next frame sleeps before it looks at the clock.
const WAIT_SLICE: Duration = Duration::from_millis(10);
/// No frame for this long while some are in flight: they are lost, and
/// the window opens again.
const STALL: Duration = Duration::from_millis(200);
/// How long set-up steps may take.
const TIMEOUT: Duration = Duration::from_secs(20);

type Error = Box<dyn std::error::Error>;
type Front = NetFrontend<LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Frontend to TAP.
    Transmit,
    /// TAP to frontend.
    Receive,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An Ethernet frame of [`ETHERTYPE_BENCH`], no offloads.
    Plain,
    /// A TCP/IPv4 frame with a partial checksum, to be segmented at
    /// [`MSS`] (`feature-gso-tcpv4`, `VIRTIO_NET_HDR_GSO_TCPV4`).
    TcpGso,
}

struct Row {
    name: &'static str,
    direction: Direction,
    kind: Kind,
    /// Frame length, from the Ethernet header on.
    len: usize,
    /// Most frames in flight.
    window: u64,
}

const ROWS: [Row; 4] = [
    Row {
        name: "tx 1514 B",
        direction: Direction::Transmit,
        kind: Kind::Plain,
        len: 1514,
        // About 2.3 KiB of socket buffer each: 64 fit in 208 KiB.
        window: 64,
    },
    Row {
        name: "tx 64 KiB TSO",
        direction: Direction::Transmit,
        kind: Kind::TcpGso,
        len: 65535,
        // About 68 KiB of socket buffer each.
        window: 3,
    },
    Row {
        name: "rx 1514 B",
        direction: Direction::Receive,
        kind: Kind::Plain,
        len: 1514,
        // A slot each of the 256-slot ring; the TAP queues 500.
        window: 128,
    },
    Row {
        name: "rx 64 KiB TSO",
        direction: Direction::Receive,
        kind: Kind::TcpGso,
        len: 65535,
        // 17 slots each (16 pages and the GSO extra): 15 fill the ring.
        window: 12,
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
            eprintln!("net_loopback bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Removes what the run made, however it ends: the backend process (and
/// with it the TAP) and the hypervisor's directory.
struct Cleanup {
    dir: PathBuf,
    /// Shared with the [`watchdog`].
    backend: Arc<Mutex<Option<Child>>>,
    /// The backend's stdout, a line at a time.
    lines: Option<Receiver<String>>,
}

impl Cleanup {
    /// Closes the backend's stdin, which stops it, and returns the last
    /// line it prints (its counters), if it does within [`TIMEOUT`].
    fn stop_backend(&mut self) -> Option<String> {
        if let Ok(mut backend) = self.backend.lock() {
            drop(backend.as_mut().and_then(|child| child.stdin.take()));
        }
        let lines = self.lines.as_ref()?;
        let deadline = Instant::now() + TIMEOUT;
        let mut last = None;
        while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            last = Some(line);
        }
        last
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let child = self.backend.lock().ok().and_then(|mut b| b.take());
        if let Some(mut child) = child {
            // Closing its stdin stops the backend; kill it if it hangs on.
            drop(child.stdin.take());
            let deadline = Instant::now() + TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ends the run if it takes longer than `budget`: something hangs (a
/// packet socket's send into a TAP that nobody reads is the one wait here
/// without a timeout). Kills the backend, which takes the TAP with it.
fn watchdog(budget: Duration, backend: Arc<Mutex<Option<Child>>>, dir: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!(
            "net_loopback bench failed: no result after {:.0} s; something hangs, stopping",
            budget.as_secs_f64()
        );
        let child = backend.lock().ok().and_then(|mut b| b.take());
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(2);
    });
}

/// Forwards the lines of `out` to a channel.
fn read_lines(out: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The frontend process: hypervisor thread, domain 1, the host's side of
/// the TAP, the memcpy baseline, and the report.
fn frontend() -> Result<(), Error> {
    if !Path::new(TUN_DEVICE).exists() {
        return Err(format!(
            "{TUN_DEVICE} does not exist, so no TAP interface can be created: load the tun \
             module (modprobe tun) or give the container the device"
        )
        .into());
    }
    let phase = std::env::var(PHASE_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(PHASE_TIME, Duration::from_millis);
    let ifname = format!("rxnb{}", std::process::id() % 100_000);
    let mut cleanup = Cleanup {
        dir: std::env::temp_dir().join(format!("rxen-net-bench-{}", std::process::id())),
        backend: Arc::default(),
        lines: None,
    };
    std::fs::create_dir_all(&cleanup.dir)?;
    Hypervisor::bind(&cleanup.dir)?.spawn()?;
    let d1 = LoopbackDomain::connect(&cleanup.dir, FE)?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "backend")
        .env(DIR_ENV, &cleanup.dir)
        .env(IFNAME_ENV, &ifname)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or("no backend stdout")?;
    if let Ok(mut backend) = cleanup.backend.lock() {
        *backend = Some(child);
    }
    // Each phase, its drain and flush, and the set-up and tear-down.
    let phases = (ROUNDS * ROWS.len()) as u32;
    let budget = (2 * phase + 2 * STALL) * phases + 3 * TIMEOUT;
    watchdog(budget, Arc::clone(&cleanup.backend), cleanup.dir.clone());
    let lines = cleanup.lines.insert(read_lines(out));
    match lines.recv_timeout(TIMEOUT) {
        Ok(line) if line.trim() == "ready" => {}
        Ok(line) => return Err(format!("the backend said {line:?} instead of ready").into()),
        Err(RecvTimeoutError::Timeout) => {
            return Err(format!("the backend did not start within {TIMEOUT:?}").into())
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err(
                "the backend exited before it served the device (see its error above)".into(),
            )
        }
    }

    let host = PacketSocket::bind(&ifname, true)?;
    let platform = Loopback::from_domain(d1);
    let (grants, evtchn, store) = platform.handles()?;
    let mut cfg = FrontendConfig::new(DEVID);
    cfg.timeout = TIMEOUT;
    let mut dev = NetFrontend::open(grants, evtchn, store, cfg)?;
    let features = dev.features().ok_or("the frontend is not connected")?;
    if !(features.sg && features.gso_tcpv4) {
        return Err("the backend does not offer feature-sg and feature-gso-tcpv4".into());
    }

    println!(
        "net_loopback: rnetfront -> rnetback (separate processes) -> TAP {ifname} -> packet socket, \
         and back, vs memcpy of the same bytes; best of {ROUNDS} interleaved runs of {:.1} s per \
         figure ({PHASE_ENV})",
        phase.as_secs_f64()
    );
    println!(
        "negotiated: {} queue(s){}, sg, gso-tcpv4; windows (frames in flight): {}",
        dev.queues(),
        if dev.split_event_channels() {
            " with split event channels"
        } else {
            ""
        },
        ROWS.iter()
            .map(|r| format!("{} {}", r.name, r.window))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let load_before = load_average();
    let templates: Vec<Template> = ROWS.iter().map(Template::new).collect();
    let mut best = vec![(0.0f64, 0.0f64); ROWS.len()];
    let mut totals = vec![Totals::default(); ROWS.len()];
    let mut tag = 0u16;
    for _ in 0..ROUNDS {
        for (i, row) in ROWS.iter().enumerate() {
            tag += 1;
            let run = match row.direction {
                Direction::Transmit => transmit(&mut dev, &host, &templates[i], phase, tag)?,
                Direction::Receive => receive(&mut dev, &host, &templates[i], phase, tag)?,
            };
            let copy = memcpy(row.len, phase);
            best[i] = (best[i].0.max(run.rate), best[i].1.max(copy));
            totals[i].add(&run);
        }
    }
    let load_after = load_average();
    let stats = dev.stats();
    dev.disconnect()?;
    let backend_stats = cleanup.stop_backend();

    println!(
        "{:<14} {:>12} {:>12} {:>9} {:>10} {:>7} {:>9}",
        "row", "rings Gb/s", "memcpy Gb/s", "ratio", "frames", "lost", "verified"
    );
    for ((row, &(rings, copy)), total) in ROWS.iter().zip(&best).zip(&totals) {
        println!(
            "{:<14} {:>12.2} {:>12.2} {:>9.5} {:>10} {:>7} {:>9}",
            row.name,
            rings * 8.0 / 1e9,
            copy * 8.0 / 1e9,
            rings / copy,
            total.received,
            total.lost,
            total.verified
        );
    }
    println!(
        "rnetfront: {} frames sent ({} GSO), ring full {} times, {} errors; {} received ({} GSO)",
        stats.tx_packets,
        stats.tx_gso,
        stats.tx_ring_full,
        stats.tx_errors + stats.tx_dropped,
        stats.rx_packets,
        stats.rx_gso
    );
    if let Some(line) = backend_stats {
        println!("rnetback: {line}");
    }
    println!(
        "frames: all frames of the measured phases, checked (headers, length, offloads, sequence \
         stamps every {STAMP_EVERY} B, order); verified: compared byte for byte"
    );
    println!(
        "host load average before/after: {load_before}/{load_after} on {} CPUs; the frontend and \
         the host's socket share one thread, the backend's queue thread another process",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some((row, total)) = ROWS.iter().zip(&totals).find(|(_, t)| t.received == 0) {
        return Err(format!("{}: no frame arrived ({} sent)", row.name, total.sent).into());
    }
    Ok(())
}

/// A row's frame: headers, a fixed pattern, and where the sequence
/// stamps go.
struct Template {
    /// The frame, stamps zero.
    frame: Vec<u8>,
    /// Bytes of headers before the payload.
    header: usize,
    /// What the frontend sends or receives with it.
    offload: Offload,
    /// What the packet socket sends or receives with it.
    vnet: VirtioNetHdr,
    /// Most frames in flight.
    window: u64,
}

impl Template {
    fn new(row: &Row) -> Self {
        let (dst, src) = match row.direction {
            Direction::Transmit => (HOST_MAC, GUEST_MAC),
            Direction::Receive => (GUEST_MAC, HOST_MAC),
        };
        let mut frame = dst.to_vec();
        frame.extend_from_slice(&src);
        let (header, offload, vnet) = match row.kind {
            Kind::Plain => {
                frame.extend_from_slice(&ETHERTYPE_BENCH.to_be_bytes());
                (14, Offload::default(), VirtioNetHdr::default())
            }
            Kind::TcpGso => {
                frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                frame.extend_from_slice(&tcp4_headers(row.len - 14));
                let offload = Offload {
                    checksum: Checksum::Partial,
                    gso: Some(Gso {
                        kind: GsoKind::TcpV4,
                        size: MSS,
                    }),
                };
                let vnet = VirtioNetHdr {
                    flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                    gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                    hdr_len: TCP_HEADERS as u16,
                    gso_size: MSS,
                    csum_start: 34,
                    csum_offset: 16,
                };
                (TCP_HEADERS, offload, vnet)
            }
        };
        let at = frame.len();
        frame.extend((at..row.len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(0x5a)));
        Template {
            frame,
            header,
            offload,
            vnet,
            window: row.window,
        }
    }

    /// Where the stamps go: every [`STAMP_EVERY`] bytes of the payload,
    /// and the last 8 bytes.
    fn stamps(&self) -> impl Iterator<Item = usize> + '_ {
        let last = self.frame.len() - 8;
        (self.header..last)
            .step_by(STAMP_EVERY)
            .chain(std::iter::once(last))
    }

    /// Writes `stamp` into `frame`, a copy of the template.
    fn stamp(&self, frame: &mut [u8], stamp: u64) {
        for at in self.stamps() {
            frame[at..at + 8].copy_from_slice(&stamp.to_le_bytes());
        }
    }

    /// Checks a received frame; returns its stamp, or `None` if it is
    /// not a frame of `tag`'s phase (another phase's, the host's own).
    fn check(
        &self,
        frame: &[u8],
        tag: u16,
        full: impl Fn(u64) -> bool,
    ) -> Result<Option<u64>, String> {
        let header = &self.frame[..self.header];
        if frame.len() < self.header + 8 || frame[..self.header] != *header {
            // Our frames' headers are identical but for the IPv4 total
            // length, which the length check below covers.
            return Ok(None);
        }
        let stamp = u64::from_le_bytes(
            frame[self.header..self.header + 8]
                .try_into()
                .unwrap_or_default(),
        );
        if stamp >> 48 != u64::from(tag) {
            return Ok(None);
        }
        let seq = stamp & ((1 << 48) - 1);
        if frame.len() != self.frame.len() {
            return Err(format!(
                "frame {seq} has {} bytes instead of {}",
                frame.len(),
                self.frame.len()
            ));
        }
        if let Some(at) = self
            .stamps()
            .find(|&at| frame[at..at + 8] != stamp.to_le_bytes())
        {
            return Err(format!("frame {seq} has a wrong stamp at byte {at}"));
        }
        if full(seq) {
            let mut from = 0;
            for at in self.stamps().chain(std::iter::once(self.frame.len())) {
                if frame[from..at] != self.frame[from..at] {
                    let bad = (from..at)
                        .find(|&i| frame[i] != self.frame[i])
                        .unwrap_or(from);
                    return Err(format!(
                        "frame {seq} differs from what was sent at byte {bad}"
                    ));
                }
                from = (at + 8).min(self.frame.len());
            }
        }
        Ok(Some(seq))
    }
}

/// IPv4 and TCP headers (198.51.100.1:12345 to 198.51.100.2:5001, PSH
/// ACK) for an IP packet of `ip_len` bytes, the TCP checksum holding the
/// pseudo-header sum as a partial checksum does.
fn tcp4_headers(ip_len: usize) -> Vec<u8> {
    let total = (ip_len as u16).to_be_bytes();
    let (src, dst) = ([198, 51, 100, 1], [198, 51, 100, 2]);
    let mut ip = vec![
        0x45, 0, total[0], total[1], 0, 1, 0x40, 0, 64, 6, 0, 0, src[0], src[1], src[2], src[3],
        dst[0], dst[1], dst[2], dst[3],
    ];
    let check = !fold(
        ip.chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum(),
    );
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    let tcp_len = (ip_len - 20) as u32;
    let pseudo = fold(
        u32::from(u16::from_be_bytes([src[0], src[1]]))
            + u32::from(u16::from_be_bytes([src[2], src[3]]))
            + u32::from(u16::from_be_bytes([dst[0], dst[1]]))
            + u32::from(u16::from_be_bytes([dst[2], dst[3]]))
            + 6
            + tcp_len,
    );
    let mut tcp = vec![
        0x30, 0x39, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ];
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    ip.extend(tcp);
    ip
}

/// Folds a one's complement sum to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The frames of one phase: what was sent, what came, what is in flight.
struct Flow {
    tag: u16,
    /// Frames sent.
    sent: u64,
    /// The sequence number expected next: one past the last received.
    next: u64,
    /// Frames before this are no longer waited for (a stall gave up on
    /// them).
    given_up: u64,
    /// Frames of this phase received.
    received: u64,
    /// Of which compared byte for byte.
    verified: u64,
    /// Bytes received before the phase ended.
    bytes: u64,
    /// When a frame last arrived (or the window was last opened).
    progress: Instant,
}

impl Flow {
    fn new(tag: u16) -> Self {
        Flow {
            tag,
            sent: 0,
            next: 0,
            given_up: 0,
            received: 0,
            verified: 0,
            bytes: 0,
            progress: Instant::now(),
        }
    }

    fn stamp(&self, seq: u64) -> u64 {
        u64::from(self.tag) << 48 | seq
    }

    fn in_flight(&self) -> u64 {
        self.sent - self.next.max(self.given_up)
    }

    /// Checks a received frame and counts it (its bytes if `counted`);
    /// returns whether it is a frame of this phase (others are skipped).
    fn arrived(&mut self, tpl: &Template, frame: &[u8], counted: bool) -> Result<bool, Error> {
        let Some(seq) = tpl.check(frame, self.tag, |seq| seq % FULL_CHECK_EVERY == 0)? else {
            return Ok(false);
        };
        if seq < self.next || seq >= self.sent {
            return Err(format!(
                "frame {seq} arrived after frame {} (of {} sent): out of order or duplicated",
                self.next.wrapping_sub(1),
                self.sent
            )
            .into());
        }
        self.next = seq + 1;
        self.received += 1;
        self.verified += u64::from(seq % FULL_CHECK_EVERY == 0);
        if counted {
            self.bytes += frame.len() as u64;
        }
        self.progress = Instant::now();
        Ok(true)
    }

    /// Gives up on the frames in flight if none came for [`STALL`].
    fn check_stall(&mut self) {
        if self.in_flight() > 0 && self.progress.elapsed() > STALL {
            self.given_up = self.sent;
            self.progress = Instant::now();
        }
    }

    fn result(&self, elapsed: Duration) -> Run {
        Run {
            rate: self.bytes as f64 / elapsed.as_secs_f64(),
            sent: self.sent,
            received: self.received,
            verified: self.verified,
        }
    }
}

/// One phase's outcome.
struct Run {
    /// Bytes per second.
    rate: f64,
    sent: u64,
    received: u64,
    verified: u64,
}

/// A row's frames over all rounds.
#[derive(Clone, Default)]
struct Totals {
    sent: u64,
    received: u64,
    lost: u64,
    verified: u64,
}

impl Totals {
    fn add(&mut self, run: &Run) {
        self.sent += run.sent;
        self.received += run.received;
        self.lost += run.sent - run.received;
        self.verified += run.verified;
    }
}

/// The host's side: takes the frames the socket has, waiting up to
/// `wait` for the first.
fn host_receive(
    host: &PacketSocket,
    buf: &mut [u8],
    wait: Duration,
    mut each: impl FnMut(&VirtioNetHdr, &[u8]) -> Result<(), Error>,
) -> Result<usize, Error> {
    let mut got = 0;
    let mut timeout = wait;
    while got < BATCH {
        let Some(n) = host.recv(buf, timeout)? else {
            break;
        };
        timeout = Duration::ZERO;
        got += 1;
        let Some((head, frame)) = buf[..n].split_at_checked(VNET_HDR_LEN) else {
            continue;
        };
        let hdr = VirtioNetHdr::read_from_bytes(head).unwrap_or_default();
        each(&hdr, frame)?;
    }
    Ok(got)
}

/// Checks the virtio-net header the socket gave a frame from the guest.
fn check_vnet(tpl: &Template, hdr: &VirtioNetHdr) -> Result<(), String> {
    let ok = match tpl.offload.gso {
        Some(gso) => {
            hdr.gso_kind() == VIRTIO_NET_HDR_GSO_TCPV4
                && hdr.gso_size == gso.size
                && hdr.needs_csum()
        }
        None => hdr.gso_kind() == VIRTIO_NET_HDR_GSO_NONE,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a frame reached the host with the wrong offload metadata: {hdr:?}"
        ))
    }
}

/// Frontend to TAP for `phase`: returns the socket's receive rate.
fn transmit(
    dev: &mut Front,
    host: &PacketSocket,
    tpl: &Template,
    phase: Duration,
    tag: u16,
) -> Result<Run, Error> {
    let mut bufs = vec![tpl.frame.clone(); (tpl.window as usize).min(BATCH)];
    let mut rx = vec![0u8; VNET_HDR_LEN + 65536 + 64];
    let mut flow = Flow::new(tag);
    let on_frame = |flow: &mut Flow, hdr: &VirtioNetHdr, frame: &[u8], counted: bool| {
        if flow.arrived(tpl, frame, counted)? {
            check_vnet(tpl, hdr)?;
        }
        Ok(())
    };
    let start = Instant::now();
    while start.elapsed() < phase {
        let room = (tpl.window - flow.in_flight()) as usize;
        if room > 0 {
            let n = room.min(bufs.len());
            for (i, buf) in bufs[..n].iter_mut().enumerate() {
                tpl.stamp(buf, flow.stamp(flow.sent + i as u64));
            }
            let frames: Vec<TxFrame<'_>> = bufs[..n]
                .iter()
                .map(|data| TxFrame {
                    data,
                    offload: tpl.offload,
                })
                .collect();
            flow.sent += dev.send_batch(&frames)? as u64;
        }
        let wait = if flow.in_flight() > 0 {
            WAIT_SLICE
        } else {
            Duration::ZERO
        };
        host_receive(host, &mut rx, wait, |hdr, frame| {
            on_frame(&mut flow, hdr, frame, true)
        })?;
        flow.check_stall();
    }
    let elapsed = start.elapsed();
    // What is still in flight arrives uncounted, so that the next phase
    // starts empty; what does not is lost.
    let deadline = Instant::now() + STALL;
    while flow.in_flight() > 0 && Instant::now() < deadline {
        host_receive(host, &mut rx, WAIT_SLICE, |hdr, frame| {
            on_frame(&mut flow, hdr, frame, false)
        })?;
    }
    dev.flush()?;
    Ok(flow.result(elapsed))
}

/// TAP to frontend for `phase`: returns the frontend's receive rate.
fn receive(
    dev: &mut Front,
    host: &PacketSocket,
    tpl: &Template,
    phase: Duration,
    tag: u16,
) -> Result<Run, Error> {
    let mut out = tpl.vnet.as_bytes().to_vec();
    out.extend_from_slice(&tpl.frame);
    let mut frames: Vec<RxFrame> = Vec::with_capacity(BATCH);
    let mut flow = Flow::new(tag);
    let on_frame = |flow: &mut Flow, frame: &RxFrame, counted: bool| -> Result<(), Error> {
        if flow.arrived(tpl, &frame.data, counted)? && frame.offload.gso != tpl.offload.gso {
            return Err(format!(
                "a frame reached the frontend with the wrong offload metadata: {:?}",
                frame.offload
            )
            .into());
        }
        Ok(())
    };
    let start = Instant::now();
    while start.elapsed() < phase {
        while flow.in_flight() < tpl.window {
            tpl.stamp(&mut out[VNET_HDR_LEN..], flow.stamp(flow.sent));
            match host.send(&out) {
                Ok(n) if n == out.len() => flow.sent += 1,
                Ok(n) => {
                    return Err(format!("the packet socket sent {n} of {} bytes", out.len()).into())
                }
                // The TAP's queue or the qdisc is full: counted as lost.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => flow.sent += 1,
                Err(e) => return Err(format!("sending into the TAP: {e}").into()),
            }
        }
        frames.clear();
        if dev.recv_batch(&mut frames, BATCH)? == 0 {
            dev.wait(WAIT_SLICE)?;
        }
        for frame in &frames {
            on_frame(&mut flow, frame, true)?;
        }
        flow.check_stall();
    }
    let elapsed = start.elapsed();
    let deadline = Instant::now() + STALL;
    while flow.in_flight() > 0 && Instant::now() < deadline {
        frames.clear();
        if dev.recv_batch(&mut frames, BATCH)? == 0 {
            dev.wait(WAIT_SLICE)?;
        }
        for frame in &frames {
            on_frame(&mut flow, frame, false)?;
        }
    }
    Ok(flow.result(elapsed))
}

/// Copies `len` bytes from one buffer to another for `phase`; returns
/// bytes per second.
fn memcpy(len: usize, phase: Duration) -> f64 {
    let src: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31)).collect();
    let mut dst = vec![0u8; len];
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < phase {
        // Enough copies between looks at the clock that it costs nothing.
        for _ in 0..64 {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        bytes += 64 * len as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The backend process: domain 0 as toolstack and rnetback, until its
/// stdin closes; then its counters on stdout.
fn backend() -> Result<(), Error> {
    let dir = PathBuf::from(std::env::var(DIR_ENV)?);
    let ifname = std::env::var(IFNAME_ENV)?;
    let d0 = LoopbackDomain::connect(&dir, 0)?;
    create_vif(&d0.xenstore()?)?;
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
    cfg.ifname = Some(ifname.clone());
    cfg.max_queues = 1;
    cfg.poll_interval = Duration::from_millis(50);
    // RXEN_NET_TAP_WRITER=inline: the transmit thread writes to the TAP
    // itself (rnetback --tap-writer inline), for comparison.
    cfg.tap_writer_thread = std::env::var("RXEN_NET_TAP_WRITER").as_deref() != Ok("inline");
    let mut backend = Backend::new(LoopbackPlatform::from_domain(d0), cfg)?;
    // The host's IPv6 chatter (router solicitations, MLD) would go to the
    // guest; it is skipped there, but need not be sent at all.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
    let stats = backend.stats();
    println!("ready");
    std::io::stdout().flush()?;
    backend.run(&stop)?;
    let s = stats.snapshot();
    println!(
        "{} frames to the TAP ({} dropped, {} errors), {} to the frontend ({} dropped), \
         {} sleeps, {} notifications",
        s.tx_packets, s.tx_dropped, s.tx_errors, s.rx_packets, s.rx_dropped, s.sleeps, s.notifies
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Creates the vif's directories as `xl network-attach` does, each
/// readable by the other end, with the guest's MAC on both sides.
fn create_vif(xs: &impl Xenstore) -> Result<(), Error> {
    let be = format!("/local/domain/0/backend/vif/{FE}/{DEVID}");
    let fe = format!("/local/domain/{FE}/device/vif/{DEVID}");
    let none = Transaction::NONE;
    let fe_id = FE.to_string();
    let devid = DEVID.to_string();
    let mac = rnetback::xenbus::format_mac(&GUEST_MAC);
    let be_nodes = [
        ("frontend", fe.as_str()),
        ("frontend-id", &fe_id),
        ("online", "1"),
        ("state", "1"),
        ("mac", &mac),
        ("handle", &devid),
        ("type", "vif"),
    ];
    for (node, value) in be_nodes {
        xs.write(none, &format!("{be}/{node}"), value.as_bytes())?;
    }
    let fe_nodes = [
        ("backend", be.as_str()),
        ("backend-id", "0"),
        ("handle", &devid),
        ("mac", &mac),
        ("state", "1"),
    ];
    for (node, value) in fe_nodes {
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
    for node in std::iter::once("").chain(be_nodes.iter().map(|(n, _)| *n)) {
        let path = if node.is_empty() {
            be.clone()
        } else {
            format!("{be}/{node}")
        };
        xs.set_perms(none, &path, &perms(0, FE))?;
    }
    for node in std::iter::once("").chain(fe_nodes.iter().map(|(n, _)| *n)) {
        let path = if node.is_empty() {
            fe.clone()
        } else {
            format!("{fe}/{node}")
        };
        xs.set_perms(none, &path, &perms(FE, 0))?;
    }
    Ok(())
}
