//! The loopback between real processes: the `xen-loopback` hypervisor
//! binary, this test process as one domain, and a copy of this test binary
//! re-executed as the other domain (the `child_role` entry point, selected
//! by an environment variable). Children report on stdout with lines
//! starting `@@ ` and take commands on stdin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, GrantError, GrantMap, GrantShare, MappedGrants, SharedGrants, SharedMemoryError,
    Transaction, Xenstore,
};
use hypercall_abi::xen::DomId;
use xen_loopback::echo::{self, EchoBackend, EchoConfig, EchoFrontend, Limit};
use xen_loopback::{LoopbackDomain, SOCKET_NAME};

const ROLE_ENV: &str = "XEN_LOOPBACK_TEST_ROLE";
const DIR_ENV: &str = "XEN_LOOPBACK_TEST_DIR";
const SECOND: Duration = Duration::from_secs(1);

/// A `xen-loopback serve` process on a fresh directory; killed and the
/// directory removed at the end.
struct HvProcess {
    dir: PathBuf,
    child: Child,
}

impl HvProcess {
    fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xen-loopback-mp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_xen-loopback"))
            .args(["serve", "--dir"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let hv = HvProcess { dir, child };
        let deadline = Instant::now() + 10 * SECOND;
        while !hv.dir.join(SOCKET_NAME).exists() {
            assert!(Instant::now() < deadline, "the hypervisor did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        hv
    }

    fn domain(&self, domid: DomId) -> LoopbackDomain {
        LoopbackDomain::connect(&self.dir, domid).unwrap()
    }

    /// Connects as `domid` once the hypervisor has forgotten its last holder.
    fn domain_when_free(&self, domid: DomId) -> LoopbackDomain {
        let deadline = Instant::now() + 5 * SECOND;
        loop {
            match LoopbackDomain::connect(&self.dir, domid) {
                Ok(d) => return d,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("domain {domid} never became free: {e}"),
            }
        }
    }

    /// Starts this test binary as a child in `role`.
    fn spawn_role(&self, role: &str) -> RoleProcess {
        self.spawn_role_with(role, &[])
    }

    /// Starts this test binary as a child in `role`, with extra variables.
    fn spawn_role_with(&self, role: &str, env: &[(&str, String)]) -> RoleProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_role",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(ROLE_ENV, role)
            .env(DIR_ENV, &self.dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        RoleProcess {
            child,
            stdout,
            stdin,
        }
    }

    /// Whether the hypervisor process still runs.
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for HvProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct RoleProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
    stdin: ChildStdin,
}

impl RoleProcess {
    /// The value of the child's next `@@ key value` line.
    fn expect(&mut self, key: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "child exited before reporting {key}"
            );
            if let Some(rest) = line.trim_end().strip_prefix("@@ ") {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                assert_eq!(k, key, "child reported {rest:?}");
                return v.to_owned();
            }
        }
    }

    fn expect_num<T: std::str::FromStr>(&mut self, key: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        self.expect(key).parse().unwrap()
    }

    fn say(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait_success(mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child failed: {status}");
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(key: &str, value: impl std::fmt::Display) {
    println!("@@ {key} {value}");
}

fn command() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// Entry point of child processes; does nothing in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    match role.as_str() {
        "sharer" => sharer(&dir),
        "victim" => victim(&dir),
        "mapper" => mapper(&dir),
        "xs-writer" => xs_writer(&dir),
        "echo-frontend" => echo_frontend(&dir),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// Domain 1: shares pages in three ways and answers pings.
fn sharer(dir: &Path) {
    let d = LoopbackDomain::connect(dir, 1).unwrap();
    let gs = d.grant_share();
    let rw = gs.share(0, 1, true).unwrap();
    rw.memory().write(0, b"hello from 1").unwrap();
    let ro = gs.share(0, 1, false).unwrap();
    ro.memory().write(0, b"read only").unwrap();
    let other = gs.share(2, 1, true).unwrap();
    let ev = d.event_channels().unwrap();
    let port = ev.alloc_unbound(0).unwrap();
    report("rw", rw.refs()[0]);
    report("ro", ro.refs()[0]);
    report("other", other.refs()[0]);
    report("port", port);
    // Ping-pong: read the counter at 100, answer counter + 1 at 200.
    for _ in 0..100 {
        let p = ev.wait(Some(10 * SECOND)).unwrap().expect("a ping");
        ev.unmask(p).unwrap();
        let n = rw.memory().load_u32(100, Ordering::Acquire).unwrap();
        rw.memory()
            .store_u32(200, n + 1, Ordering::Release)
            .unwrap();
        ev.notify(port).unwrap();
    }
    assert_eq!(command(), "end");
    match gs.end_access(rw) {
        Err(GrantError::InUse(_)) => report("end-rw", "in-use"),
        other => report("end-rw", format!("{other:?}")),
    }
    report("end-ro", format!("{:?}", gs.end_access(ro)));
    assert_eq!(command(), "exit");
}

#[test]
fn grants_and_events_between_processes() {
    let hv = HvProcess::start();
    let mut child = hv.spawn_role("sharer");
    let (rw, ro, other): (u32, u32, u32) = (
        child.expect_num("rw"),
        child.expect_num("ro"),
        child.expect_num("other"),
    );
    let port = child.expect_num("port");
    let d0 = hv.domain(0);
    let gm = d0.grant_map();

    let rw_map = gm.map(1, &[rw], true).unwrap();
    let mut buf = [0u8; 12];
    rw_map.memory().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello from 1");

    assert!(matches!(
        gm.map(1, &[ro], true),
        Err(GrantError::ReadOnly { .. })
    ));
    let ro_map = gm.map(1, &[ro], false).unwrap();
    ro_map.memory().read(0, &mut buf[..9]).unwrap();
    assert_eq!(&buf[..9], b"read only");
    assert_eq!(
        ro_map.memory().write(0, b"x"),
        Err(SharedMemoryError::ReadOnly)
    );
    assert!(
        matches!(
            gm.map(1, &[other], false),
            Err(GrantError::NotGranted { .. })
        ),
        "granted to domain 2"
    );
    assert!(matches!(
        gm.map(1, &[12345], false),
        Err(GrantError::NotGranted { .. })
    ));

    let ev = d0.event_channels().unwrap();
    let p0 = ev.bind_interdomain(1, port).unwrap();
    for i in 0..100u32 {
        rw_map
            .memory()
            .store_u32(100, i, Ordering::Release)
            .unwrap();
        ev.notify(p0).unwrap();
        let mut pfd = libc::pollfd {
            fd: ev.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, exclusively borrowed for the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(ready, 1, "the handle's fd is pollable");
        assert_eq!(ev.pending().unwrap(), Some(p0));
        ev.unmask(p0).unwrap();
        assert_eq!(
            rw_map.memory().load_u32(200, Ordering::Acquire).unwrap(),
            i + 1
        );
    }

    drop(ro_map);
    child.say("end");
    assert_eq!(
        child.expect("end-rw"),
        "in-use",
        "a mapped grant cannot end"
    );
    assert_eq!(child.expect("end-ro"), "Ok(())");
    assert!(
        matches!(gm.map(1, &[ro], false), Err(GrantError::NotGranted { .. })),
        "revoked"
    );
    child.say("exit");
    child.wait_success();
}

/// Domain 1: shares a page and offers a port, then waits to be killed.
fn victim(dir: &Path) {
    let d = LoopbackDomain::connect(dir, 1).unwrap();
    let shared = d.grant_share().share(0, 4, true).unwrap();
    for page in 0..4 {
        shared
            .memory()
            .write(page * 4096, format!("page {page} of the victim").as_bytes())
            .unwrap();
    }
    let ev = d.event_channels().unwrap();
    let port = ev.alloc_unbound(0).unwrap();
    let xs = d.xenstore().unwrap();
    xs.write(Transaction::NONE, "victim", b"alive").unwrap();
    report(
        "refs",
        shared
            .refs()
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    report("port", port);
    command(); // killed before this returns
}

#[test]
fn a_domain_killed_with_sigkill_does_not_hurt_its_peer() {
    let mut hv = HvProcess::start();
    let mut child = hv.spawn_role("victim");
    let refs: Vec<u32> = child
        .expect("refs")
        .split(',')
        .map(|r| r.parse().unwrap())
        .collect();
    let port = child.expect_num("port");
    let d0 = hv.domain(0);
    let xs = d0.xenstore().unwrap();
    xs.watch("@releaseDomain", "released").unwrap();
    assert!(
        xs.read_watch(Some(SECOND)).unwrap().is_some(),
        "fires once when registered"
    );
    let mapped = d0.grant_map().map(1, &refs, true).unwrap();
    let ev = d0.event_channels().unwrap();
    let p0 = ev.bind_interdomain(1, port).unwrap();
    ev.notify(p0).unwrap();

    child.child.kill().unwrap(); // SIGKILL: no destructor runs in the child
    child.child.wait().unwrap();

    assert_eq!(
        ev.wait(Some(5 * SECOND)).unwrap(),
        Some(p0),
        "the dead peer's port closing rings us"
    );
    ev.unmask(p0).unwrap();
    assert!(!ev.is_connected(p0).unwrap());
    ev.notify(p0).unwrap(); // harmless
    assert_eq!(
        xs.read_watch(Some(5 * SECOND)).unwrap().unwrap().path,
        "@releaseDomain"
    );
    assert!(
        xs.read(Transaction::NONE, "/local/domain/1/victim")
            .unwrap_err()
            .is_not_found(),
        "its home is gone"
    );
    // Its pages stay valid memory for us: no SIGBUS, contents intact.
    for page in 0..4 {
        let want = format!("page {page} of the victim");
        let mut got = vec![0u8; want.len()];
        mapped.memory().read(page * 4096, &mut got).unwrap();
        assert_eq!(got, want.as_bytes());
        mapped
            .memory()
            .write(page * 4096 + 2048, b"survivor writes")
            .unwrap();
    }
    assert!(
        matches!(
            d0.grant_map().map(1, &refs[..1], false),
            Err(GrantError::NotGranted { .. })
        ),
        "no new maps"
    );
    drop(mapped);

    // The hypervisor serves on: the id is reusable and everything works.
    assert!(hv.alive());
    let d1 = hv.domain_when_free(1);
    let shared = d1.grant_share().share(0, 1, true).unwrap();
    assert!(d0.grant_map().map(1, shared.refs(), true).is_ok());
    let e1 = d1.event_channels().unwrap();
    let p1 = e1.alloc_unbound(0).unwrap();
    let p0 = ev.bind_interdomain(1, p1).unwrap();
    ev.notify(p0).unwrap();
    assert_eq!(e1.wait(Some(5 * SECOND)).unwrap(), Some(p1));
}

/// Domain 2: maps the page domain 0 granted it, then waits to be killed.
fn mapper(dir: &Path) {
    let d = LoopbackDomain::connect(dir, 2).unwrap();
    let gref: u32 = command().parse().unwrap();
    let mapped = d.grant_map().map(0, &[gref], true).unwrap();
    mapped.memory().write(0, b"mapper was here").unwrap();
    report("mapped", "");
    command(); // killed before this returns
}

#[test]
fn a_killed_mapper_releases_its_mappings() {
    let hv = HvProcess::start();
    let d0 = hv.domain(0);
    let xs = d0.xenstore().unwrap();
    xs.watch("@releaseDomain", "released").unwrap();
    xs.read_watch(Some(SECOND)).unwrap();
    let gs = d0.grant_share();
    let mut child = hv.spawn_role("mapper");
    let shared = gs.share(2, 1, true).unwrap();
    child.say(&shared.refs()[0].to_string());
    child.expect("mapped");
    let mut buf = [0u8; 15];
    shared.memory().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"mapper was here");

    child.child.kill().unwrap();
    child.child.wait().unwrap();
    // The hypervisor undoes a domain's mappings before it announces its release.
    assert_eq!(
        xs.read_watch(Some(5 * SECOND)).unwrap().unwrap().path,
        "@releaseDomain"
    );
    gs.end_access(shared).unwrap();
}

/// Domain 1: writes through a transaction, then exits.
fn xs_writer(dir: &Path) {
    let d = LoopbackDomain::connect(dir, 1).unwrap();
    let xs = d.xenstore().unwrap();
    loop {
        let tx = xs.transaction_start().unwrap();
        xs.write(tx, "data/greeting", b"hello from another process")
            .unwrap();
        xs.write(tx, "data/count", b"1").unwrap();
        match xs.transaction_end(tx, true) {
            Ok(()) => break,
            Err(e) if e.is_again() => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(command(), "exit");
}

#[test]
fn xenstore_between_processes() {
    let hv = HvProcess::start();
    let d0 = hv.domain(0);
    let xs = d0.xenstore().unwrap();
    xs.watch("/local/domain/1/data", "data").unwrap();
    xs.watch("@introduceDomain", "intro").unwrap();
    let mut events = Vec::new();
    let drain = |events: &mut Vec<String>, until: &str| {
        let deadline = Instant::now() + 5 * SECOND;
        while !events.iter().any(|e| e == until) {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = xs
                .read_watch(Some(left))
                .unwrap()
                .unwrap_or_else(|| panic!("no {until} event; got {events:?}"));
            events.push(format!("{} {}", ev.token, ev.path));
        }
    };
    drain(&mut events, "data /local/domain/1/data");
    let mut child = hv.spawn_role("xs-writer");
    drain(&mut events, "intro @introduceDomain");
    drain(&mut events, "data /local/domain/1/data/greeting");
    assert_eq!(
        xs.read(Transaction::NONE, "/local/domain/1/data/greeting")
            .unwrap(),
        b"hello from another process"
    );
    assert_eq!(
        xs.get_perms(Transaction::NONE, "/local/domain/1/data/greeting")
            .unwrap()[0]
            .domid,
        1,
        "owned by its writer"
    );
    child.say("exit");
    child.wait_success();
    // The domain's home goes with it, which fires the watch on its data.
    events.clear();
    drain(&mut events, "data /local/domain/1/data");
    assert!(xs
        .read(Transaction::NONE, "/local/domain/1/data")
        .unwrap_err()
        .is_not_found());
}

/// Domain 1: the echo frontend; sends the requests and checks every answer.
fn echo_frontend(dir: &Path) {
    let count: u64 = std::env::var("ECHO_COUNT").unwrap().parse().unwrap();
    let d = LoopbackDomain::connect(dir, 1).unwrap();
    let xs = d.xenstore().unwrap();
    let ev = d.event_channels().unwrap();
    let ring = d.grant_share().share(0, 1, true).unwrap();
    let port = ev.alloc_unbound(0).unwrap();
    let cfg = EchoConfig {
        spin: Duration::from_micros(20),
        idle_timeout: 20 * SECOND,
        ..EchoConfig::default()
    };
    let mem = ring.memory();
    let mut front = EchoFrontend::new(mem.ring_mem().unwrap(), &ev, port, cfg).unwrap();
    echo::publish_frontend(&xs, 1, 0, 0, ring.refs()[0], port).unwrap();
    echo::await_backend(&xs, 0, 1, 0, 20 * SECOND).unwrap();
    let start = Instant::now();
    let stats = front.run(Limit::Count(count), front.ring_size()).unwrap();
    let elapsed = start.elapsed();
    front.stop().unwrap();
    report(
        "done",
        format!(
            "{} {} {} {:.3}",
            stats.requests,
            stats.notifications,
            stats.sleeps,
            elapsed.as_secs_f64()
        ),
    );
}

/// THE SHOW: a frontend process and a backend process exchange a million
/// requests over a granted ring page, with ring.h notification rules, and
/// every payload is checked on both sides.
#[test]
fn a_million_echo_requests_between_processes() {
    const COUNT: u64 = 1_000_000;
    let hv = HvProcess::start();
    let mut child = hv.spawn_role_with("echo-frontend", &[("ECHO_COUNT", COUNT.to_string())]);
    let d0 = hv.domain(0);
    let xs = d0.xenstore().unwrap();
    let ev = d0.event_channels().unwrap();
    let (gref, port) = echo::await_frontend(&xs, 1, 0, 20 * SECOND).unwrap();
    let ring = d0.grant_map().map(1, &[gref], true).unwrap();
    let p0 = ev.bind_interdomain(1, port).unwrap();
    let cfg = EchoConfig {
        spin: Duration::from_micros(20),
        idle_timeout: 20 * SECOND,
        ..EchoConfig::default()
    };
    let mem = ring.memory();
    let mut back = EchoBackend::new(mem.ring_mem().unwrap(), &ev, p0, cfg).unwrap();
    echo::backend_connected(&xs, 0, 1, 0).unwrap();
    let stats = back.serve().unwrap();

    let done = child.expect("done");
    let fields: Vec<&str> = done.split(' ').collect();
    let (sent, fe_notifications, fe_sleeps, secs): (u64, u64, u64, f64) = (
        fields[0].parse().unwrap(),
        fields[1].parse().unwrap(),
        fields[2].parse().unwrap(),
        fields[3].parse().unwrap(),
    );
    child.wait_success();
    println!(
        "{COUNT} requests in {secs:.2} s ({:.0}/s); notifications: frontend {fe_notifications}, backend {}; sleeps: frontend {fe_sleeps}, backend {}",
        COUNT as f64 / secs,
        stats.notifications,
        stats.sleeps,
    );
    assert_eq!(sent, COUNT, "the frontend had every answer checked");
    assert_eq!(stats.requests, COUNT, "the backend checked every request");
}
