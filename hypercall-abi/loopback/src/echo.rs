//! An echo device: the smallest split driver, to test and measure a
//! platform.
//!
//! The frontend grants one ring page, offers an event channel and
//! publishes both in xenstore, xenbus-style; the backend maps the ring and
//! binds the channel. Each request carries a sequence number and up to 40
//! bytes of a pattern derived from it; the backend checks the pattern and
//! answers with a checksum of what it received, and the frontend checks the
//! answer. Both ends follow `ring.h` to the letter: they push with
//! `*_AND_CHECK_NOTIFY`, notify only when asked, and sleep only after the
//! `FINAL_CHECK`. They may poll the ring for a while before sleeping
//! ([`EchoConfig::spin`]), which under load avoids nearly all notifications.
//!
//! Everything here uses only the platform traits, so the device runs on
//! any platform.

use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, EvtchnError, GrantError, Transaction, Xenstore, XsError, XsPerm, XsPermAccess,
};
use hypercall_abi::ring::{BackRing, FrontRing, RingError, SharedRingMem};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of pattern a request can carry.
pub const ECHO_DATA_MAX: usize = 40;
/// Request operation: check the data, answer with its checksum.
pub const ECHO_OP_DATA: u32 = 0;
/// Request operation: answer, then stop serving.
pub const ECHO_OP_STOP: u32 = 1;

/// A request on the echo ring (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EchoRequest {
    /// Frontend's identifier, echoed back.
    pub id: u64,
    /// Sequence number; the pattern derives from it.
    pub seq: u64,
    /// [`ECHO_OP_DATA`] or [`ECHO_OP_STOP`].
    pub op: u32,
    /// Bytes of `data` in use.
    pub len: u32,
    /// The pattern of `seq`, `len` bytes of it.
    pub data: [u8; ECHO_DATA_MAX],
}

/// A response on the echo ring (32 bytes).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EchoResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `seq`.
    pub seq: u64,
    /// Checksum of `seq` and the data received.
    pub checksum: u64,
    /// 0, or a negative errno: `-EINVAL` bad length, `-EIO` bad pattern,
    /// `-ENOSYS` unknown operation.
    pub status: i32,
    /// Padding.
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<EchoRequest>() == 64);
const _: () = assert!(std::mem::size_of::<EchoResponse>() == 32);

/// The pattern of sequence number `seq`.
pub fn pattern(seq: u64) -> [u8; ECHO_DATA_MAX] {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = [0u8; ECHO_DATA_MAX];
    for b in &mut out {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    out
}

/// FNV-1a over `seq` and `data`.
pub fn checksum(seq: u64, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seq.to_le_bytes().iter().chain(data) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The request for sequence number `seq`: its length varies with `seq`.
pub fn request(seq: u64) -> EchoRequest {
    EchoRequest {
        id: seq ^ 0x5eed,
        seq,
        op: ECHO_OP_DATA,
        len: (seq % (ECHO_DATA_MAX as u64 + 1)) as u32,
        data: pattern(seq),
    }
}

/// The backend's answer to a request it copied off the ring.
pub fn answer(req: &EchoRequest) -> EchoResponse {
    let mut rsp = EchoResponse {
        id: req.id,
        seq: req.seq,
        ..EchoResponse::default()
    };
    match req.op {
        ECHO_OP_STOP => {}
        ECHO_OP_DATA => match req.data.get(..req.len as usize) {
            None => rsp.status = -libc::EINVAL,
            Some(data) if data != &pattern(req.seq)[..data.len()] => rsp.status = -libc::EIO,
            Some(data) => rsp.checksum = checksum(req.seq, data),
        },
        _ => rsp.status = -libc::ENOSYS,
    }
    rsp
}

/// Why the echo device failed.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The peer broke the ring protocol.
    #[error("echo ring: {0}")]
    Ring(#[from] RingError),
    /// An event channel operation failed.
    #[error("echo event channel: {0}")]
    Evtchn(#[from] EvtchnError),
    /// A grant operation failed.
    #[error("echo grant: {0}")]
    Grant(#[from] GrantError),
    /// A xenstore operation failed.
    #[error("echo xenstore: {0}")]
    Xenstore(#[from] XsError),
    /// A response did not answer its request correctly.
    #[error("response to request {seq} is wrong: {reason}")]
    BadResponse {
        /// The sequence number expected.
        seq: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The peer did nothing for longer than the idle timeout.
    #[error("the peer did not {0} within the idle timeout; is it still running?")]
    Timeout(&'static str),
    /// A xenstore node held something unusable.
    #[error("xenstore node {path} holds {value:?}, which is not {expected}")]
    BadNode {
        /// The node.
        path: String,
        /// Its value.
        value: String,
        /// What it should have been.
        expected: &'static str,
    },
}

/// How an end behaves when the ring is empty.
#[derive(Debug, Clone, Copy)]
pub struct EchoConfig {
    /// Poll the ring this long before going to sleep on the event channel.
    pub spin: Duration,
    /// Give up when a sleep lasts this long.
    pub idle_timeout: Duration,
    /// Publish (push, and notify if asked) after at most this many
    /// entries, rather than only when out of work: smaller values let the
    /// peer start on a batch sooner, at the cost of a memory barrier per
    /// push.
    pub push_every: u32,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            spin: Duration::ZERO,
            idle_timeout: Duration::from_secs(10),
            push_every: u32::MAX,
        }
    }
}

/// What an end did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Requests sent (frontend) or answered (backend), `STOP` excluded.
    pub requests: u64,
    /// Notifications sent to the peer.
    pub notifications: u64,
    /// Times this end slept on the event channel.
    pub sleeps: u64,
}

/// When a frontend run ends.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// After this many requests.
    Count(u64),
    /// After this long (whole batches).
    Time(Duration),
}

/// Polls `ready` for up to `spin`; true as soon as it holds.
fn spin_until(
    spin: Duration,
    mut ready: impl FnMut() -> Result<bool, RingError>,
) -> Result<bool, RingError> {
    if spin.is_zero() {
        return Ok(false);
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return Ok(false);
        }
    }
}

/// Sleeps until `port` fires, then unmasks it.
fn sleep_on<E: EventChannels>(
    evtchn: &E,
    port: EvtchnPort,
    cfg: &EchoConfig,
    what: &'static str,
) -> Result<(), EchoError> {
    let deadline = Instant::now() + cfg.idle_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match evtchn.wait(Some(left))? {
            Some(p) => {
                evtchn.unmask(p)?;
                if p == port {
                    return Ok(());
                }
            }
            None if left.is_zero() => return Err(EchoError::Timeout(what)),
            None => {}
        }
    }
}

/// The frontend's end of an echo ring.
#[derive(Debug)]
pub struct EchoFrontend<'a, E: EventChannels> {
    ring: FrontRing<'a, EchoRequest, EchoResponse>,
    evtchn: &'a E,
    port: EvtchnPort,
    cfg: EchoConfig,
    next_seq: u64,
}

impl<'a, E: EventChannels> EchoFrontend<'a, E> {
    /// Initialises the shared ring in `mem` (`XEN_FRONT_RING_INIT`) and
    /// uses `port` of `evtchn` to talk to the backend.
    pub fn new(
        mem: SharedRingMem<'a>,
        evtchn: &'a E,
        port: EvtchnPort,
        cfg: EchoConfig,
    ) -> Result<Self, EchoError> {
        Ok(EchoFrontend {
            ring: FrontRing::init_shared(mem)?,
            evtchn,
            port,
            cfg,
            next_seq: 0,
        })
    }

    /// Slots of the ring.
    pub fn ring_size(&self) -> u32 {
        self.ring.size()
    }

    /// Changes how this end waits from now on.
    pub fn set_config(&mut self, cfg: EchoConfig) {
        self.cfg = cfg;
    }

    /// Sends requests, at most `in_flight` at a time, until `limit`;
    /// checks every response.
    pub fn run(&mut self, limit: Limit, in_flight: u32) -> Result<EchoStats, EchoError> {
        let max = u64::from(in_flight.clamp(1, self.ring.size()));
        let start = Instant::now();
        let first = self.next_seq;
        let mut done = first;
        let mut stats = EchoStats::default();
        let more = |next: u64| match limit {
            Limit::Count(n) => next - first < n,
            Limit::Time(d) => start.elapsed() < d,
        };
        loop {
            let mut queued = 0;
            while self.next_seq - done < max && more(self.next_seq) {
                self.ring.put_request(&request(self.next_seq))?;
                self.next_seq += 1;
                queued += 1;
                if queued == self.cfg.push_every {
                    self.push(&mut stats)?;
                    queued = 0;
                }
            }
            if queued > 0 {
                self.push(&mut stats)?;
            }
            let mut got = false;
            while let Some(rsp) = self.ring.consume_response()? {
                check_response(&rsp, done)?;
                done += 1;
                got = true;
            }
            if done == self.next_seq && !more(self.next_seq) {
                stats.requests = done - first;
                return Ok(stats);
            }
            if got || spin_until(self.cfg.spin, || self.ring.has_unconsumed_responses())? {
                continue;
            }
            if self.ring.final_check_for_responses()? {
                continue;
            }
            sleep_on(self.evtchn, self.port, &self.cfg, "answer")?;
            stats.sleeps += 1;
        }
    }

    /// Publishes the requests put so far; notifies if the backend asked.
    fn push(&mut self, stats: &mut EchoStats) -> Result<(), EchoError> {
        if self.ring.push_requests_and_check_notify()? {
            self.evtchn.notify(self.port)?;
            stats.notifications += 1;
        }
        Ok(())
    }

    /// Tells the backend to stop, and waits for its answer.
    pub fn stop(&mut self) -> Result<(), EchoError> {
        let seq = self.next_seq;
        self.ring.put_request(&EchoRequest {
            id: seq,
            seq,
            op: ECHO_OP_STOP,
            len: 0,
            data: [0; ECHO_DATA_MAX],
        })?;
        self.next_seq += 1;
        if self.ring.push_requests_and_check_notify()? {
            self.evtchn.notify(self.port)?;
        }
        loop {
            if let Some(rsp) = self.ring.consume_response()? {
                return if rsp.seq == seq && rsp.status == 0 {
                    Ok(())
                } else {
                    Err(EchoError::BadResponse {
                        seq,
                        reason: "the stop request was not acknowledged",
                    })
                };
            }
            if !self.ring.final_check_for_responses()? {
                sleep_on(
                    self.evtchn,
                    self.port,
                    &self.cfg,
                    "acknowledge the stop request",
                )?;
            }
        }
    }
}

/// Checks that `rsp` correctly answers [`request`]`(seq)`.
pub fn check_response(rsp: &EchoResponse, seq: u64) -> Result<(), EchoError> {
    let req = request(seq);
    let bad = |reason| Err(EchoError::BadResponse { seq, reason });
    if rsp.seq != seq || rsp.id != req.id {
        return bad("it answers another request");
    }
    if rsp.status != 0 {
        return bad("the backend reported an error");
    }
    if rsp.checksum != checksum(seq, &req.data[..req.len as usize]) {
        return bad("the checksum does not match the data sent");
    }
    Ok(())
}

/// The backend's end of an echo ring.
#[derive(Debug)]
pub struct EchoBackend<'a, E: EventChannels> {
    ring: BackRing<'a, EchoRequest, EchoResponse>,
    evtchn: &'a E,
    port: EvtchnPort,
    cfg: EchoConfig,
}

impl<'a, E: EventChannels> EchoBackend<'a, E> {
    /// Attaches to the ring the frontend initialised in `mem`.
    pub fn new(
        mem: SharedRingMem<'a>,
        evtchn: &'a E,
        port: EvtchnPort,
        cfg: EchoConfig,
    ) -> Result<Self, EchoError> {
        Ok(EchoBackend {
            ring: BackRing::new(mem)?,
            evtchn,
            port,
            cfg,
        })
    }

    /// Changes how this end waits from now on.
    pub fn set_config(&mut self, cfg: EchoConfig) {
        self.cfg = cfg;
    }

    /// Publishes the responses put so far; notifies if the frontend asked.
    fn push(&mut self, stats: &mut EchoStats) -> Result<(), EchoError> {
        if self.ring.push_responses_and_check_notify()? {
            self.evtchn.notify(self.port)?;
            stats.notifications += 1;
        }
        Ok(())
    }

    /// Answers requests until a `STOP` request.
    pub fn serve(&mut self) -> Result<EchoStats, EchoError> {
        let mut stats = EchoStats::default();
        let size = self.ring.size();
        loop {
            let mut n = 0u32;
            let mut stop = false;
            // At most a ring's worth before publishing: a frontend that
            // keeps pushing cannot keep us from answering.
            let mut queued = 0;
            while n < size {
                let Some(req) = self.ring.consume_request()? else {
                    break;
                };
                stop |= req.op == ECHO_OP_STOP;
                self.ring.put_response(&answer(&req))?;
                n += 1;
                queued += 1;
                if queued == self.cfg.push_every {
                    self.push(&mut stats)?;
                    queued = 0;
                }
            }
            if queued > 0 {
                self.push(&mut stats)?;
            }
            stats.requests += u64::from(n) - u64::from(stop);
            if stop {
                return Ok(stats);
            }
            if n > 0 || spin_until(self.cfg.spin, || self.ring.has_unconsumed_requests())? {
                continue;
            }
            if self.ring.final_check_for_requests()? {
                continue;
            }
            sleep_on(self.evtchn, self.port, &self.cfg, "send a request")?;
            stats.sleeps += 1;
        }
    }
}

/// `XenbusStateInitialised`.
const STATE_INITIALISED: &str = "3";
/// `XenbusStateConnected`.
const STATE_CONNECTED: &str = "4";

/// The frontend's directory for echo device `devid`.
pub fn frontend_path(frontend: DomId, devid: u32) -> String {
    format!("/local/domain/{frontend}/device/echo/{devid}")
}

/// The backend's directory for echo device `devid` of `frontend`.
pub fn backend_path(backend: DomId, frontend: DomId, devid: u32) -> String {
    format!("/local/domain/{backend}/backend/echo/{frontend}/{devid}")
}

/// Frontend: publishes `ring-ref` and `event-channel` and moves to
/// Initialised, in one transaction (retried on `EAGAIN`). The directory is
/// readable by the backend.
pub fn publish_frontend<X: Xenstore>(
    xs: &X,
    frontend: DomId,
    backend: DomId,
    devid: u32,
    ring_ref: GrantRef,
    port: EvtchnPort,
) -> Result<(), EchoError> {
    let dir = frontend_path(frontend, devid);
    for _ in 0..16 {
        let tx = xs.transaction_start()?;
        let wrote = (|| {
            xs.write(
                tx,
                &format!("{dir}/backend"),
                backend_path(backend, frontend, devid).as_bytes(),
            )?;
            xs.write(
                tx,
                &format!("{dir}/ring-ref"),
                ring_ref.to_string().as_bytes(),
            )?;
            xs.write(
                tx,
                &format!("{dir}/event-channel"),
                port.to_string().as_bytes(),
            )?;
            let perms = [
                XsPerm {
                    domid: frontend,
                    access: XsPermAccess::None,
                },
                XsPerm {
                    domid: backend,
                    access: XsPermAccess::Read,
                },
            ];
            for node in ["", "/backend", "/ring-ref", "/event-channel"] {
                xs.set_perms(tx, &format!("{dir}{node}"), &perms)?;
            }
            xs.write(tx, &format!("{dir}/state"), STATE_INITIALISED.as_bytes())?;
            xs.set_perms(tx, &format!("{dir}/state"), &perms)
        })();
        if let Err(e) = wrote {
            let _ = xs.transaction_end(tx, false);
            return Err(e.into());
        }
        match xs.transaction_end(tx, true) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_again() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(EchoError::Timeout("let a xenstore transaction commit"))
}

/// Waits, with a watch, until `path` reads `value`.
fn wait_for_value<X: Xenstore>(
    xs: &X,
    path: &str,
    value: &str,
    timeout: Duration,
    what: &'static str,
) -> Result<(), EchoError> {
    let token = format!("echo-wait-{path}");
    xs.watch(path, &token)?;
    let deadline = Instant::now() + timeout;
    let result = loop {
        match xs.read(Transaction::NONE, path) {
            Ok(v) if v == value.as_bytes() => break Ok(()),
            Ok(_) => {}
            // Not there yet, or not yet readable by us.
            Err(e) if e.is_not_found() || e.errno() == Some(libc::EACCES) => {}
            Err(e) => break Err(e.into()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(EchoError::Timeout(what));
        }
        if let Err(e) = xs.read_watch(Some(left)) {
            break Err(e.into());
        }
    };
    let _ = xs.unwatch(path, &token);
    result
}

fn read_number<X: Xenstore>(xs: &X, path: &str) -> Result<u32, EchoError> {
    let raw = xs.read(Transaction::NONE, path)?;
    let value = String::from_utf8_lossy(&raw).into_owned();
    value.parse().map_err(|_| EchoError::BadNode {
        path: path.to_owned(),
        value,
        expected: "a decimal number",
    })
}

/// Backend: waits for the frontend to be Initialised and returns its
/// `(ring-ref, event-channel)`.
pub fn await_frontend<X: Xenstore>(
    xs: &X,
    frontend: DomId,
    devid: u32,
    timeout: Duration,
) -> Result<(GrantRef, EvtchnPort), EchoError> {
    let dir = frontend_path(frontend, devid);
    wait_for_value(
        xs,
        &format!("{dir}/state"),
        STATE_INITIALISED,
        timeout,
        "publish its ring",
    )?;
    Ok((
        read_number(xs, &format!("{dir}/ring-ref"))?,
        read_number(xs, &format!("{dir}/event-channel"))?,
    ))
}

/// Backend: moves to Connected, readable by the frontend.
pub fn backend_connected<X: Xenstore>(
    xs: &X,
    backend: DomId,
    frontend: DomId,
    devid: u32,
) -> Result<(), EchoError> {
    let dir = backend_path(backend, frontend, devid);
    xs.write(
        Transaction::NONE,
        &format!("{dir}/state"),
        STATE_CONNECTED.as_bytes(),
    )?;
    let perms = [
        XsPerm {
            domid: backend,
            access: XsPermAccess::None,
        },
        XsPerm {
            domid: frontend,
            access: XsPermAccess::Read,
        },
    ];
    xs.set_perms(Transaction::NONE, &format!("{dir}/state"), &perms)?;
    Ok(())
}

/// Frontend: waits for the backend to be Connected.
pub fn await_backend<X: Xenstore>(
    xs: &X,
    backend: DomId,
    frontend: DomId,
    devid: u32,
    timeout: Duration,
) -> Result<(), EchoError> {
    let path = format!("{}/state", backend_path(backend, frontend, devid));
    wait_for_value(xs, &path, STATE_CONNECTED, timeout, "connect")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_check_the_pattern() {
        let req = request(1234);
        let rsp = answer(&req);
        assert_eq!(rsp.status, 0);
        check_response(&rsp, 1234).unwrap();
        let mut corrupt = req;
        corrupt.len = ECHO_DATA_MAX as u32;
        corrupt.data[0] ^= 1;
        assert_eq!(answer(&corrupt).status, -libc::EIO);
        corrupt.len = 41;
        assert_eq!(answer(&corrupt).status, -libc::EINVAL);
        corrupt.op = 7;
        assert_eq!(answer(&corrupt).status, -libc::ENOSYS);
        assert!(check_response(&rsp, 1235).is_err());
    }
}
