//! Shared rings against a plain SPSC queue, between two processes on the
//! loopback platform, and the cost of one event channel notification.
//!
//! This process runs the loopback hypervisor (a thread) and the echo
//! frontend (domain 1); it re-executes itself as the echo backend
//! (domain 0). The two connect through xenstore as split drivers do, then
//! run the phases of [`PHASES`] in order, each for [`PHASE_TIME`], [`ROUNDS`]
//! times over:
//!
//! - the echo device's shared ring, with ring.h's notification rules, one
//!   request in flight or a ring's worth, each end either sleeping on the
//!   event channel as soon as the ring is empty or polling it for a while
//!   first;
//! - the same requests and checks through two SPSC queues (requests and
//!   responses) in granted memory, with polling consumers;
//!
//! and finally an event channel ping-pong, both sides sleeping.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, GrantMap, GrantShare, MappedGrants, SharedGrants, SharedMemory, Transaction,
    Xenstore,
};
use hypercall_abi::xen::EvtchnPort;
use rxen_bench::spsc::{Consumer, Producer};
use xen_loopback::echo::{
    self, EchoBackend, EchoConfig, EchoFrontend, EchoRequest, EchoResponse, Limit, ECHO_OP_STOP,
};
use xen_loopback::{Hypervisor, LoopbackDomain};

const ROLE_ENV: &str = "RXEN_BENCH_ROLE";
const DIR_ENV: &str = "RXEN_BENCH_DIR";
/// How long each throughput phase runs.
const PHASE_TIME: Duration = Duration::from_millis(1500);
/// How many times the phases run, interleaved; each row reports its best
/// round, which filters out other load on the host.
const ROUNDS: usize = 3;
/// How long the notification ping-pong runs.
const PING_PONG_TIME: Duration = Duration::from_secs(3);
/// How long a polling end polls before sleeping.
const POLL: Duration = Duration::from_micros(50);
/// Ring ends publish after this many entries (half the echo ring), so that
/// the peer can start on a batch while the rest is being produced.
const PUSH_EVERY: u32 = 16;
/// Give up when the peer does nothing for this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Where the ping-pong words live in the queue page (past the queue).
const PING_AT: usize = 3072;
const PONG_AT: usize = 3076;
const PING_STOP: u32 = u32::MAX;

type Error = Box<dyn std::error::Error>;

#[derive(Clone, Copy)]
enum Kind {
    Ring { spin: Duration },
    Spsc,
}

struct Phase {
    name: &'static str,
    kind: Kind,
    in_flight: u32,
}

const PHASES: [Phase; 6] = [
    Phase {
        name: "ring, sleep when idle",
        kind: Kind::Ring {
            spin: Duration::ZERO,
        },
        in_flight: 1,
    },
    Phase {
        name: "ring, poll 50 us then sleep",
        kind: Kind::Ring { spin: POLL },
        in_flight: 1,
    },
    Phase {
        name: "ring, sleep when idle",
        kind: Kind::Ring {
            spin: Duration::ZERO,
        },
        in_flight: 32,
    },
    Phase {
        name: "ring, poll 50 us then sleep",
        kind: Kind::Ring { spin: POLL },
        in_flight: 32,
    },
    Phase {
        name: "SPSC queues, polling",
        kind: Kind::Spsc,
        in_flight: 1,
    },
    Phase {
        name: "SPSC queues, polling",
        kind: Kind::Spsc,
        in_flight: 32,
    },
];

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let result = match std::env::var(ROLE_ENV) {
        Ok(_) => std::env::var(DIR_ENV)
            .map_err(Error::from)
            .and_then(|d| backend(Path::new(&d))),
        Err(_) => frontend(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loopback bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cfg(spin: Duration) -> EchoConfig {
    EchoConfig {
        spin,
        idle_timeout: IDLE_TIMEOUT,
        push_every: PUSH_EVERY,
    }
}

struct Row {
    name: &'static str,
    in_flight: u32,
    rate: f64,
    notifications: f64,
    sleeps: f64,
}

/// The frontend process: hypervisor thread, domain 1, and the report.
fn frontend() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("rxen-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_frontend(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_frontend(dir: &Path) -> Result<(), Error> {
    Hypervisor::bind(dir)?.spawn()?;
    let d1 = LoopbackDomain::connect(dir, 1)?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "backend")
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut child_out = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
    let mut expect = move || -> Result<Vec<f64>, Error> {
        let mut line = String::new();
        loop {
            line.clear();
            if child_out.read_line(&mut line)? == 0 {
                return Err("the backend exited early".into());
            }
            if let Some(rest) = line.trim().strip_prefix("@@ ") {
                return rest
                    .split(' ')
                    .map(|v| v.parse::<f64>().map_err(Error::from))
                    .collect();
            }
        }
    };

    let xs = d1.xenstore()?;
    let ev = d1.event_channels()?;
    let gs = d1.grant_share();
    let ring = gs.share(0, 1, true)?;
    let queues = gs.share(0, 2, true)?;
    let port = ev.alloc_unbound(0)?;
    let dev = echo::frontend_path(1, 0);
    let refs = queues
        .refs()
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    xs.write(
        Transaction::NONE,
        &format!("{dev}/spsc-refs"),
        refs.as_bytes(),
    )?;
    let ring_mem = ring.memory();
    let mut front = EchoFrontend::new(ring_mem.ring_mem()?, &ev, port, cfg(Duration::ZERO))?;
    let qmem = queues.memory();
    let mut requests = Producer::init(qmem.subregion(0, 4096)?)?;
    let mut responses = Consumer::attach(qmem.subregion(4096, 4096)?)?;
    echo::publish_frontend(&xs, 1, 0, 0, ring.refs()[0], port)?;
    echo::await_backend(&xs, 0, 1, 0, IDLE_TIMEOUT)?;

    println!(
        "loopback: echo requests between two processes; best of {ROUNDS} interleaved runs of {:.1} s per row; \
         ring ends push every {PUSH_EVERY} entries",
        PHASE_TIME.as_secs_f64()
    );
    let load_before = load_average();
    let mut rows: Vec<Option<Row>> = PHASES.iter().map(|_| None).collect();
    for _ in 0..ROUNDS {
        for (phase, best) in PHASES.iter().zip(&mut rows) {
            let (requests_done, fe_notifications, fe_sleeps, secs) = match phase.kind {
                Kind::Ring { spin } => {
                    front.set_config(cfg(spin));
                    let start = Instant::now();
                    let s = front.run(Limit::Time(PHASE_TIME), phase.in_flight)?;
                    let secs = start.elapsed().as_secs_f64();
                    front.stop()?;
                    (s.requests, s.notifications, s.sleeps, secs)
                }
                Kind::Spsc => {
                    let start = Instant::now();
                    let n = spsc_front(&mut requests, &mut responses, phase.in_flight)?;
                    (n, 0, 0, start.elapsed().as_secs_f64())
                }
            };
            let be = expect()?;
            let (be_notifications, be_sleeps) = (
                be.first().copied().unwrap_or(0.0),
                be.get(1).copied().unwrap_or(0.0),
            );
            let n = requests_done.max(1) as f64;
            let row = Row {
                name: phase.name,
                in_flight: phase.in_flight,
                rate: requests_done as f64 / secs,
                notifications: (fe_notifications as f64 + be_notifications) / n,
                sleeps: (fe_sleeps as f64 + be_sleeps) / n,
            };
            match best {
                Some(b) if b.rate >= row.rate => {}
                _ => *best = Some(row),
            }
        }
    }
    let rows: Vec<Row> = rows.into_iter().flatten().collect();
    let one_way = ping_pong(&ev, port, &qmem)?;
    expect()?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("the backend failed: {status}").into());
    }

    println!(
        "{:<30} {:>9} {:>13} {:>13} {:>11}",
        "mode", "in flight", "requests/s", "notif/req", "sleeps/req"
    );
    for r in &rows {
        println!(
            "{:<30} {:>9} {:>13.0} {:>13.4} {:>11.4}",
            r.name, r.in_flight, r.rate, r.notifications, r.sleeps
        );
    }
    let ratio = rows[3].rate / rows[5].rate;
    println!("ring batched (poll) / SPSC batched: {ratio:.2} (goal >= 0.80)");
    println!(
        "ring batched (sleep) / SPSC batched: {:.2}",
        rows[2].rate / rows[5].rate
    );
    println!(
        "one event channel notification (notify -> peer wakes, round trip / 2): {:.1} us",
        one_way * 1e6
    );
    println!(
        "host load average before/after: {load_before}/{} on {} CPUs; polling rows need two idle CPUs to mean anything",
        load_average(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Runs SPSC round trips for [`PHASE_TIME`], `in_flight` at a time, then
/// stops the backend; returns the requests answered.
fn spsc_front(
    requests: &mut Producer<'_>,
    responses: &mut Consumer<'_>,
    in_flight: u32,
) -> Result<u64, Error> {
    let in_flight = u64::from(in_flight);
    let start = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    let mut more = true;
    let mut idle = Idle::new();
    loop {
        // The clock is read only when there is room for a request, as the
        // ring's frontend does.
        while sent - done < in_flight && more {
            more = start.elapsed() < PHASE_TIME;
            if !more || !requests.push(&echo::request(sent))? {
                break;
            }
            sent += 1;
        }
        let mut got = false;
        while let Some(rsp) = responses.pop::<EchoResponse>()? {
            echo::check_response(&rsp, done)?;
            done += 1;
            got = true;
        }
        if !more && done == sent {
            break;
        }
        idle.spin(got, "the SPSC backend stopped answering")?;
    }
    let stop = EchoRequest {
        id: sent,
        seq: sent,
        op: ECHO_OP_STOP,
        len: 0,
        data: [0; echo::ECHO_DATA_MAX],
    };
    while !requests.push(&stop)? {
        std::hint::spin_loop();
    }
    let deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        if let Some(rsp) = responses.pop::<EchoResponse>()? {
            if rsp.seq == sent {
                return Ok(done);
            }
            return Err("the SPSC stop request was not acknowledged".into());
        }
        if Instant::now() > deadline {
            return Err("the SPSC backend did not acknowledge the stop request".into());
        }
        std::hint::spin_loop();
    }
}

/// Event channel ping-pong, both sides sleeping between events; returns
/// the one-way cost in seconds. Each ping carries a number in shared
/// memory, so that an event left over from an earlier phase cannot pass
/// for an answer.
fn ping_pong(
    ev: &impl EventChannels,
    port: EvtchnPort,
    mem: &SharedMemory<'_>,
) -> Result<f64, Error> {
    while let Some(p) = ev.pending()? {
        ev.unmask(p)?;
    }
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < PING_PONG_TIME {
        n += 1;
        mem.store_u32(PING_AT, n, Ordering::Release)?;
        ev.notify(port)?;
        while mem.load_u32(PONG_AT, Ordering::Acquire)? != n {
            let p = ev
                .wait(Some(IDLE_TIMEOUT))?
                .ok_or("the ping-pong peer stopped answering")?;
            ev.unmask(p)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    mem.store_u32(PING_AT, PING_STOP, Ordering::Release)?;
    ev.notify(port)?;
    Ok(secs / f64::from(n) / 2.0)
}

/// The backend process: domain 0.
fn backend(dir: &Path) -> Result<(), Error> {
    let d0 = LoopbackDomain::connect(dir, 0)?;
    let xs = d0.xenstore()?;
    let ev = d0.event_channels()?;
    let (gref, port) = echo::await_frontend(&xs, 1, 0, IDLE_TIMEOUT)?;
    let refs_raw = xs.read(
        Transaction::NONE,
        &format!("{}/spsc-refs", echo::frontend_path(1, 0)),
    )?;
    let refs = String::from_utf8(refs_raw)?
        .split(',')
        .map(str::parse::<u32>)
        .collect::<Result<Vec<_>, _>>()?;
    let gm = d0.grant_map();
    let ring = gm.map(1, &[gref], true)?;
    let queues = gm.map(1, &refs, true)?;
    let p0 = ev.bind_interdomain(1, port)?;
    let ring_mem = ring.memory();
    let mut back = EchoBackend::new(ring_mem.ring_mem()?, &ev, p0, cfg(Duration::ZERO))?;
    let qmem = queues.memory();
    let mut requests = Consumer::attach(qmem.subregion(0, 4096)?)?;
    let mut responses = Producer::init(qmem.subregion(4096, 4096)?)?;
    echo::backend_connected(&xs, 0, 1, 0)?;

    for phase in (0..ROUNDS).flat_map(|_| PHASES.iter()) {
        match phase.kind {
            Kind::Ring { spin } => {
                back.set_config(cfg(spin));
                let s = back.serve()?;
                println!("@@ {} {}", s.notifications, s.sleeps);
            }
            Kind::Spsc => {
                spsc_back(&mut requests, &mut responses)?;
                println!("@@ 0 0");
            }
        }
    }
    pong(&ev, p0, &qmem)?;
    println!("@@ 0");
    Ok(())
}

/// Answers SPSC requests, polling, until a stop request.
fn spsc_back(requests: &mut Consumer<'_>, responses: &mut Producer<'_>) -> Result<(), Error> {
    let mut idle = Idle::new();
    loop {
        let Some(req) = requests.pop::<EchoRequest>()? else {
            idle.spin(false, "the SPSC frontend stopped sending")?;
            continue;
        };
        idle.spin(true, "")?;
        let rsp = echo::answer(&req);
        while !responses.push(&rsp)? {
            std::hint::spin_loop();
        }
        if req.op == ECHO_OP_STOP {
            return Ok(());
        }
    }
}

/// A polling loop's idle accounting: spins, and fails after
/// [`IDLE_TIMEOUT`] without progress, reading the clock only every few
/// thousand idle rounds.
struct Idle {
    rounds: u32,
    since: Instant,
}

impl Idle {
    fn new() -> Self {
        Idle {
            rounds: 0,
            since: Instant::now(),
        }
    }

    fn spin(&mut self, progress: bool, what: &'static str) -> Result<(), Error> {
        if progress {
            self.rounds = 0;
            return Ok(());
        }
        std::hint::spin_loop();
        self.rounds += 1;
        if self.rounds == 1 {
            self.since = Instant::now();
        } else if self.rounds % 4096 == 0 && self.since.elapsed() > IDLE_TIMEOUT {
            return Err(what.into());
        }
        Ok(())
    }
}

/// The other side of [`ping_pong`].
fn pong(ev: &impl EventChannels, port: EvtchnPort, mem: &SharedMemory<'_>) -> Result<(), Error> {
    let mut seen = 0;
    loop {
        let p = ev
            .wait(Some(IDLE_TIMEOUT))?
            .ok_or("the ping-pong peer stopped pinging")?;
        ev.unmask(p)?;
        let ping = mem.load_u32(PING_AT, Ordering::Acquire)?;
        if ping == PING_STOP {
            return Ok(());
        }
        if ping != seen {
            seen = ping;
            mem.store_u32(PONG_AT, ping, Ordering::Release)?;
            ev.notify(port)?;
        }
    }
}
