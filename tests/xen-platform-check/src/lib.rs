//! The two halves of the platform check, as a library so that the binary
//! stays thin.
//!
//! Protocol between the halves, all under the guest's
//! `/local/domain/<guest>/data/rxen-check/`:
//! 1. guest grants a writable page and a read-only page to dom0, allocates
//!    an unbound port for dom0, writes `rw-ref`, `ro-ref`, `port`, then
//!    `ready`;
//! 2. dom0 (watching `ready`) maps both pages and checks the guest's
//!    patterns, checks that the read-only grant cannot be mapped writable,
//!    binds the port, writes a reply into the writable page and notifies;
//! 3. the guest, woken by the event, checks the reply and notifies back;
//! 4. dom0, woken, writes `done`; the guest, watching it, finishes.

use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, GrantMap, GrantShare, MappedGrants, SharedGrants, SharedMemoryError, Transaction, Xenstore, XsError,
};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};
use xen_linux::{LinuxEvtchn, LinuxGntalloc, LinuxGntdev};

/// Pattern the guest writes into its writable page.
pub const GUEST_RW_PATTERN: &[u8] = b"rxen: guest data in a writable grant";
/// Pattern the guest writes into its read-only page.
pub const GUEST_RO_PATTERN: &[u8] = b"rxen: guest data in a read-only grant";
/// Reply dom0 writes into the writable page, at [`REPLY_OFFSET`].
pub const DOM0_REPLY: &[u8] = b"rxen: dom0 wrote through the mapping";
/// Where in the page dom0 replies.
pub const REPLY_OFFSET: usize = 2048;
const DIR: &str = "data/rxen-check";

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A device could not be opened.
    #[error("opening {0}: {1}")]
    Open(&'static str, String),
    /// An event channel operation failed.
    #[error("event channel: {0}")]
    Evtchn(#[from] hypercall_abi::platform::EvtchnError),
    /// A grant operation failed.
    #[error("grant: {0}")]
    Grant(#[from] hypercall_abi::platform::GrantError),
    /// A shared-memory access failed.
    #[error("shared memory: {0}")]
    Memory(#[from] SharedMemoryError),
    /// A xenstore request failed.
    #[error("xenstore: {0}")]
    Store(#[from] XsError),
    /// The other side did not act in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Something was observed that should not be.
    #[error("{0}")]
    Mismatch(String),
}

fn step(msg: &str) {
    println!("RXEN-CHECK step: {msg}");
}

fn parse<T: std::str::FromStr>(bytes: &[u8], what: &str) -> Result<T, CheckError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| CheckError::Mismatch(format!("{what} in xenstore is not a number: {bytes:?}")))
}

fn wait_event(ev: &impl EventChannels, port: EvtchnPort, timeout: Duration, what: &'static str) -> Result<(), CheckError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CheckError::Timeout(what));
        }
        if let Some(p) = ev.wait(Some(left))? {
            ev.unmask(p)?;
            if p == port {
                return Ok(());
            }
        }
    }
}

/// Waits, through a xenstore watch, until `path` reads `want`.
fn wait_node(xs: &impl Xenstore, path: &str, want: &[u8], timeout: Duration, what: &'static str) -> Result<(), CheckError> {
    let token = "rxen-check";
    xs.watch(path, token)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match xs.read(Transaction::NONE, path) {
            Ok(v) if v == want => break Ok(()),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => break Err(e.into()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(CheckError::Timeout(what));
        }
        // Any event (ours fires on registration and on each change) means: read again.
        xs.read_watch(Some(left))?;
    };
    xs.unwatch(path, token)?;
    result
}

/// The domain currently named `name`, if any.
fn domain_named(xs: &impl Xenstore, name: &str) -> Result<Option<DomId>, CheckError> {
    for id in xs.directory(Transaction::NONE, "/local/domain")? {
        match xs.read(Transaction::NONE, &format!("/local/domain/{id}/name")) {
            Ok(n) if n == name.as_bytes() => return Ok(id.parse().ok()),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Waits, through a watch on `/local/domain`, until the domain named
/// `name` has written `ready`, and returns its id.
fn wait_ready_by_name(xs: &impl Xenstore, name: &str, timeout: Duration) -> Result<DomId, CheckError> {
    let token = "rxen-check-ready";
    xs.watch("/local/domain", token)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        if let Some(id) = domain_named(xs, name)? {
            match xs.read(Transaction::NONE, &format!("/local/domain/{id}/{DIR}/ready")) {
                Ok(v) if v == b"1" => break Ok(id),
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => break Err(e.into()),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(CheckError::Timeout("the guest's ready"));
        }
        // Any change below /local/domain wakes us; look again (bounded by
        // the deadline, and at least once a second).
        xs.read_watch(Some(left.min(Duration::from_secs(1))))?;
    };
    xs.unwatch("/local/domain", token)?;
    result
}

/// The guest half.
pub fn run_guest(timeout: Duration) -> Result<(), CheckError> {
    let xs = xen_linux::xenstore::open()?;
    let domid: DomId = parse(&xs.read(Transaction::NONE, "domid")?, "domid")?;
    step(&format!("guest is domain {domid}"));
    let gnt = LinuxGntalloc::open().map_err(|e| CheckError::Open("/dev/xen/gntalloc", e.to_string()))?;
    let ev = LinuxEvtchn::open().map_err(|e| CheckError::Open("/dev/xen/evtchn", e.to_string()))?;

    let rw = gnt.share(0, 1, true)?;
    rw.memory().write(0, GUEST_RW_PATTERN)?;
    let ro = gnt.share(0, 1, false)?;
    ro.memory().write(0, GUEST_RO_PATTERN)?;
    let port = ev.alloc_unbound(0)?;
    step(&format!("granted rw ref {} and ro ref {}, port {port}", rw.refs()[0], ro.refs()[0]));

    let base = DIR;
    xs.write(Transaction::NONE, &format!("{base}/rw-ref"), rw.refs()[0].to_string().as_bytes())?;
    xs.write(Transaction::NONE, &format!("{base}/ro-ref"), ro.refs()[0].to_string().as_bytes())?;
    xs.write(Transaction::NONE, &format!("{base}/port"), port.to_string().as_bytes())?;
    xs.write(Transaction::NONE, &format!("{base}/ready"), b"1")?;

    wait_event(&ev, port, timeout, "dom0's event")?;
    step("event from dom0 received");
    let mut reply = vec![0u8; DOM0_REPLY.len()];
    rw.memory().read(REPLY_OFFSET, &mut reply)?;
    if reply != DOM0_REPLY {
        return Err(CheckError::Mismatch(format!("dom0's reply in the shared page is {reply:?}")));
    }
    let mut still = vec![0u8; GUEST_RO_PATTERN.len()];
    ro.memory().read(0, &mut still)?;
    if still != GUEST_RO_PATTERN {
        return Err(CheckError::Mismatch("the read-only page changed".into()));
    }
    step("dom0's reply is in the writable page; the read-only page is intact");
    ev.notify(port)?;
    wait_node(&xs, &format!("{base}/done"), b"1", timeout, "dom0's done")?;
    step("dom0 wrote done (seen through a watch)");
    ev.close(port)?;
    Ok(())
}

/// The dom0 half.
///
/// The guest is found by name, not by a domain id fixed in advance: if xl
/// restarts it (a new domain id), dom0 follows the new instance.
pub fn run_dom0(name: &str, timeout: Duration) -> Result<(), CheckError> {
    let xs = xen_linux::xenstore::open()?;
    store_round_trip(&xs, &format!("/rxen-check/{name}"))?;
    let guest = wait_ready_by_name(&xs, name, timeout)?;
    let base = format!("{}/{DIR}", xs.get_domain_path(guest)?);
    step(&format!("guest is ready (seen through a watch), domain {guest}"));
    let rw_ref: GrantRef = parse(&xs.read(Transaction::NONE, &format!("{base}/rw-ref"))?, "rw-ref")?;
    let ro_ref: GrantRef = parse(&xs.read(Transaction::NONE, &format!("{base}/ro-ref"))?, "ro-ref")?;
    let port: EvtchnPort = parse(&xs.read(Transaction::NONE, &format!("{base}/port"))?, "port")?;

    let gnt = LinuxGntdev::open().map_err(|e| CheckError::Open("/dev/xen/gntdev", e.to_string()))?;
    let rw = gnt.map(guest, &[rw_ref], true)?;
    let mut seen = vec![0u8; GUEST_RW_PATTERN.len()];
    rw.memory().read(0, &mut seen)?;
    if seen != GUEST_RW_PATTERN {
        return Err(CheckError::Mismatch(format!("mapped rw page holds {seen:?}")));
    }
    step("mapped the guest's writable grant and read its data");

    if let Ok(m) = gnt.map(guest, &[ro_ref], true) {
        drop(m);
        return Err(CheckError::Mismatch("a read-only grant was mapped writable".into()));
    }
    step("mapping the read-only grant writable was refused");
    let ro = gnt.map(guest, &[ro_ref], false)?;
    let mut seen = vec![0u8; GUEST_RO_PATTERN.len()];
    ro.memory().read(0, &mut seen)?;
    if seen != GUEST_RO_PATTERN {
        return Err(CheckError::Mismatch(format!("mapped ro page holds {seen:?}")));
    }
    if ro.memory().write(0, b"x").is_ok() {
        return Err(CheckError::Mismatch("a write through a read-only mapping was allowed".into()));
    }
    step("mapped the read-only grant read-only, read its data, and a write was refused");

    let ev = LinuxEvtchn::open().map_err(|e| CheckError::Open("/dev/xen/evtchn", e.to_string()))?;
    let local = ev.bind_interdomain(guest, port)?;
    rw.memory().write(REPLY_OFFSET, DOM0_REPLY)?;
    ev.notify(local)?;
    step(&format!("bound port {local} to the guest's port {port} and notified"));
    wait_event(&ev, local, timeout, "the guest's event")?;
    step("event from the guest received");
    xs.write(Transaction::NONE, &format!("{base}/done"), b"1")?;
    drop(rw);
    drop(ro);
    ev.close(local)?;
    Ok(())
}

/// Reads, writes, directory, permissions and a transaction through the
/// project's client, checked against each other, under `root` (one per
/// concurrent run).
fn store_round_trip(xs: &impl Xenstore, root: &str) -> Result<(), CheckError> {
    match xs.rm(Transaction::NONE, root) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    xs.write(Transaction::NONE, &format!("{root}/a"), b"alpha")?;
    xs.mkdir(Transaction::NONE, &format!("{root}/b"))?;
    if xs.read(Transaction::NONE, &format!("{root}/a"))? != b"alpha" {
        return Err(CheckError::Mismatch("xenstore read did not return what was written".into()));
    }
    let mut dir = xs.directory(Transaction::NONE, root)?;
    dir.sort();
    if dir != ["a", "b"] {
        return Err(CheckError::Mismatch(format!("xenstore directory is {dir:?}")));
    }
    let perms = xs.get_perms(Transaction::NONE, &format!("{root}/a"))?;
    if perms.first().map(|p| p.domid) != Some(0) {
        return Err(CheckError::Mismatch(format!("permissions of a dom0 node are {perms:?}")));
    }
    // A transaction may be asked to retry (EAGAIN) when something else
    // changed the store meanwhile; retry a bounded number of times.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let tx = xs.transaction_start()?;
        xs.write(tx, &format!("{root}/a"), b"beta")?;
        if xs.read(Transaction::NONE, &format!("{root}/a"))? != b"alpha" {
            return Err(CheckError::Mismatch("a write inside a transaction was visible outside it".into()));
        }
        match xs.transaction_end(tx, true) {
            Ok(()) => break,
            Err(e) if e.is_again() && attempts < 5 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    if xs.read(Transaction::NONE, &format!("{root}/a"))? != b"beta" {
        return Err(CheckError::Mismatch("a committed transaction's write is missing".into()));
    }
    xs.rm(Transaction::NONE, root)?;
    match xs.read(Transaction::NONE, &format!("{root}/a")) {
        Err(e) if e.is_not_found() => {}
        other => return Err(CheckError::Mismatch(format!("read after rm gave {other:?}"))),
    }
    step("xenstore write/read/mkdir/directory/get_perms/transaction/rm through the project's client");
    Ok(())
}

/// Prefix of every line [`run_xs_probe`] prints.
pub const PROBE: &str = "RXEN-XS-PROBE";

/// One probe outcome: `ok` or the daemon's error name (`EACCES` ...).
fn outcome<T>(r: Result<T, XsError>) -> Result<String, CheckError> {
    match r {
        Ok(_) => Ok("ok".to_owned()),
        Err(XsError::Daemon { name, .. }) => Ok(name),
        Err(e) => Err(CheckError::Store(e)),
    }
}

/// The isolation probe, run in a guest: tries to read and write dom0's
/// and domain `other`'s nodes, then writes new nodes under its own
/// `data/` until the daemon refuses (at most `limit` writes). Prints one
/// `RXEN-XS-PROBE` line per result and a final `RXEN-XS-PROBE END`; the
/// caller judges the answers.
pub fn run_xs_probe(other: DomId, limit: u32) -> Result<(), CheckError> {
    let xs = xen_linux::xenstore::open()?;
    let tx = Transaction::NONE;
    let other_home = format!("/local/domain/{other}");
    let probes: [(&str, String, Option<&[u8]>); 4] = [
        ("read", "/local/domain/0/name".to_owned(), None),
        (
            "write",
            "/local/domain/0/rxen-probe".to_owned(),
            Some(b"guest"),
        ),
        ("read", format!("{other_home}/name"), None),
        (
            "write",
            format!("{other_home}/data/rxen-probe"),
            Some(b"guest"),
        ),
    ];
    for (op, path, value) in &probes {
        let result = match value {
            None => outcome(xs.read(tx, path))?,
            Some(v) => outcome(xs.write(tx, path, v))?,
        };
        println!("{PROBE} {op} {path} {result}");
    }
    let mut written = 0u32;
    let refused = loop {
        if written >= limit {
            break "none".to_owned();
        }
        match xs.write(tx, &format!("data/flood/{written}"), b"x") {
            Ok(()) => written += 1,
            Err(XsError::Daemon { name, .. }) => break name,
            Err(e) => return Err(CheckError::Store(e)),
        }
    };
    println!("{PROBE} flood {refused} after {written}");
    println!("{PROBE} END");
    Ok(())
}
