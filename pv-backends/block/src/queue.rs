//! One ring (queue) of a device: its mapped pages, its event channel, and
//! the loop that serves it on a thread of its own.
//!
//! The loop follows `ring.h`: take every request published, serve them,
//! put the responses, push them with one notify decision
//! (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`), and sleep on the event channel
//! only after `RING_FINAL_CHECK_FOR_REQUESTS` found nothing new. A ring the
//! frontend broke (a producer index beyond what the ring can hold) ends
//! the loop with an error; the device is then torn down.
//!
//! A queue can also take over a ring that a previous backend process
//! served ([`Queue::resuming`]): the backend's private indices died with
//! that process, so the queue starts at the shared `rsp_prod`, serves
//! again every request published after it (those the old process had
//! taken but not answered, and those published since), and notifies the
//! frontend after its first batch in case the old process pushed
//! responses and died before sending their event.
//!
//! Serving a request again is safe at the block level (a read or write of
//! the same sectors, a flush), with one limit set by the ring: a response
//! is written into the slot of the request it answers, and only the push
//! of `rsp_prod` tells the frontend, so a backend that dies between
//! writing responses and pushing them leaves slots that hold neither the
//! request nor a published response. The loop therefore writes the
//! responses of a batch (or of a part of it) only once all of them are
//! ready, and pushes them at once.

use std::sync::Arc;
use std::time::Duration;

use hypercall_abi::platform::{EventChannels, EvtchnError, GrantError, GrantMap, MappedGrants, WaitFor, Wake};
use hypercall_abi::ring::{BackRing, RingError, SringIndex};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifResponse, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE};
use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef, PAGE_SIZE};

use crate::device::BlockDevice;
use crate::disk::Disk;
use crate::stats::Stats;
use pv_backend_common::StopSignal;

/// How long a queue sleeps after its event channel woke it with nothing
/// pending.
const SPURIOUS_WAKEUP_BACKOFF: Duration = Duration::from_millis(10);

/// Why a queue could not be set up or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The ring pages could not be mapped.
    #[error("queue {queue}: mapping ring pages {refs:?} failed: {source}")]
    MapRing {
        /// Queue index.
        queue: u32,
        /// The ring references.
        refs: Vec<GrantRef>,
        /// The grant error.
        #[source]
        source: GrantError,
    },
    /// The event channel could not be bound or used.
    #[error("queue {queue}: event channel: {source}")]
    Evtchn {
        /// Queue index.
        queue: u32,
        /// The event channel error.
        #[source]
        source: EvtchnError,
    },
    /// The frontend broke the ring protocol.
    #[error("queue {queue}: {source}")]
    Ring {
        /// Queue index.
        queue: u32,
        /// The ring error.
        #[source]
        source: RingError,
    },
}

/// A connected queue: ring pages mapped, event channel bound.
pub struct Queue<G: GrantMap, E: EventChannels> {
    index: u32,
    ring: G::Mapped,
    evtchn: E,
    port: EvtchnPort,
    /// Notify the frontend after the first batch, whatever `rsp_event`
    /// says: set when taking over from a previous backend.
    kick: bool,
    /// How long to busy-poll the ring before sleeping (zero: sleep at once).
    poll: Duration,
    /// Interrupt moderation, if on.
    coalesce: Option<Coalesce>,
}

/// Interrupt moderation ([`Queue::coalescing`]): while a frontend keeps
/// many requests in flight, the responses of a round are held for more
/// requests, so that both ends take one event for several of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesce {
    /// Most responses held for (the target is half the requests seen in
    /// flight lately, at most this).
    pub max_held: u32,
    /// Longest wait for the requests a hold waits for; then the held
    /// responses go out.
    pub timeout: Duration,
}

impl Coalesce {
    /// rblkback's default: up to 16 responses held (a frontend keeping 32
    /// requests in flight gets about one event per 16), for at most 2 ms.
    /// A hold ends as soon as the requests it waits for are published; the
    /// timeout matters only when they are slow to come (on the emulated
    /// test host a guest takes about 0.5 ms of CPU per 4 KiB read, and
    /// 1 ms holds often expired first), and after a hold that expired
    /// with no request the depth seen is forgotten.
    pub const DEFAULT: Coalesce = Coalesce { max_held: 16, timeout: Duration::from_millis(2) };
}

/// The depth a frontend keeps its ring at: the most requests seen
/// unanswered at once over the last two windows of rounds.
#[derive(Debug, Default)]
struct Depth {
    current: u32,
    previous: u32,
    rounds: u32,
}

impl Depth {
    /// Rounds per window: a frontend whose depth fell is believed after
    /// one to two windows.
    const WINDOW: u32 = 16;

    fn observe(&mut self, in_flight: u32) {
        self.current = self.current.max(in_flight);
        self.rounds += 1;
        if self.rounds == Self::WINDOW {
            self.previous = std::mem::take(&mut self.current);
            self.rounds = 0;
        }
    }

    /// How many responses to hold for: half the depth seen, so that the
    /// frontend keeps as many requests of its own to work on meanwhile.
    fn target(&self, max_held: u32) -> u32 {
        (self.current.max(self.previous) / 2).min(max_held)
    }
}

impl<G: GrantMap, E: EventChannels> std::fmt::Debug for Queue<G, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("index", &self.index).field("port", &self.port).finish_non_exhaustive()
    }
}

impl<G: GrantMap, E: EventChannels> Queue<G, E> {
    /// Maps the ring `refs` of domain `frontend` and binds its event
    /// channel `remote_port` through `evtchn`, a handle of this queue's own.
    /// Refuses a ring whose indices already claim more requests than it
    /// holds (as blkback's `xen_blkif_map`).
    ///
    /// Serving starts at the ring's `rsp_prod`: on a fresh ring that is
    /// where the frontend starts too, and on a ring taken over from a
    /// previous backend it is the first request without a response.
    pub fn connect(
        index: u32,
        grants: &G,
        evtchn: E,
        frontend: DomId,
        refs: &[GrantRef],
        remote_port: EvtchnPort,
    ) -> Result<Self, QueueError> {
        let ring = grants
            .map(frontend, refs, true)
            .map_err(|source| QueueError::MapRing { queue: index, refs: refs.to_vec(), source })?;
        {
            let ring_error = |source| QueueError::Ring { queue: index, source };
            let mem = ring.memory();
            let mem = mem.ring_mem().map_err(ring_error)?;
            let start = mem.load_index(SringIndex::RspProd);
            let mut back = BackRing::<BlkifRequest, BlkifResponse>::attach(mem, start).map_err(ring_error)?;
            back.unconsumed_requests().map_err(ring_error)?;
        }
        let port = evtchn
            .bind_interdomain(frontend, remote_port)
            .map_err(|source| QueueError::Evtchn { queue: index, source })?;
        Ok(Queue { index, ring, evtchn, port, kick: false, poll: Duration::ZERO, coalesce: None })
    }

    /// Marks the queue as taking over a ring that a previous backend
    /// process served: it sends the frontend an event after its first
    /// batch (empty or not), since that process may have pushed responses
    /// and died before notifying them. A spurious event costs the
    /// frontend one look at its ring.
    #[must_use]
    pub fn resuming(mut self) -> Self {
        self.kick = true;
        self
    }

    /// Makes the queue busy-poll its ring for up to `poll` before it goes
    /// to sleep on the event channel (after each batch). It costs a CPU
    /// for that long after the last request, and saves both ends an event
    /// and a wake-up whenever the next request comes within it: worth it
    /// with CPUs to spare and a busy device, not on an overcommitted host.
    #[must_use]
    pub fn polling(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Moderates events (`None`: off; see [`Coalesce`]). The target is
    /// half the most requests seen in flight at once over the last 16 to
    /// 32 rounds, at most `max_held`. When a round's responses, which the
    /// frontend waits for an event for, are fewer than the target, they
    /// are held: the queue sleeps asking for an event only once the
    /// missing requests are published
    /// ([`BackRing::final_check_for_requests_after`]), or for at most
    /// `timeout`, serves what came, and answers all of them with one
    /// event. A response is held once at most, so none waits longer than
    /// `timeout` and a round. A hold that times out with no request come
    /// makes the queue forget the depth seen: the frontend's depth fell.
    /// A frontend with one request in flight (a target below two) is
    /// answered at once, and so are responses for 64 KiB of data or more.
    #[must_use]
    pub fn coalescing(mut self, coalesce: Option<Coalesce>) -> Self {
        self.coalesce = coalesce.filter(|c| c.max_held > 1 && !c.timeout.is_zero());
        self
    }

    /// The local port of the queue's event channel.
    pub fn port(&self) -> EvtchnPort {
        self.port
    }

    /// Serves requests with `device` until `stop` or a broken ring.
    pub fn run<D: Disk>(self, mut device: BlockDevice<G, D>, stop: &StopSignal) -> Result<(), QueueError> {
        let queue = self.index;
        let ring_error = |source| QueueError::Ring { queue, source };
        let evtchn_error = |source| QueueError::Evtchn { queue, source };
        let mem = self.ring.memory();
        let mem = mem.ring_mem().map_err(ring_error)?;
        let start = mem.load_index(SringIndex::RspProd);
        let mut ring = BackRing::<BlkifRequest, BlkifResponse>::attach(mem, start).map_err(ring_error)?;
        let size = ring.size();
        let mut batch = Vec::with_capacity(size as usize);
        let mut responses = Vec::with_capacity(size as usize);
        log::debug!("queue {queue}: serving a {size}-slot ring on port {}", self.port);
        if self.kick {
            log::debug!("queue {queue}: resuming at request {}", start.0);
        }
        let stats = Arc::clone(device.stats_arc());
        let mut kick = self.kick;
        // The port that woke this thread, masked until the next wait.
        let mut masked = None;
        let mut depth = Depth::default();
        // The responses held now were held once already (see coalescing).
        let mut held_once = false;
        // The target the current hold waits to reach.
        let mut hold_target = 0;
        // Bytes of data the held responses answer for.
        let mut held_bytes = 0usize;
        loop {
            if stop.is_stopped() {
                // Answer what was served (held responses, see below).
                if !responses.is_empty() {
                    self.answer(&mut ring, &mut responses, false, &stats)?;
                }
                return Ok(());
            }
            // Take every request published, at most a ring's worth, so that
            // a frontend that keeps pushing cannot starve the responses.
            batch.clear();
            while batch.len() < size as usize {
                match ring.consume_request().map_err(ring_error)? {
                    Some(request) => batch.push(request),
                    None => break,
                }
            }
            // Serve the whole batch before writing any response: a response
            // takes the slot of a request, and until the push covers it a
            // backend that dies leaves a slot that is neither (see the
            // module documentation); writing them all at once keeps that
            // window to a few stores.
            //
            // A batch served one request at a time (no io_uring) is answered
            // in parts of about PUSH_BYTES each while the frontend is awake
            // (polling or busy, not waiting for an event), so that it copies
            // out the data of the first requests while the rest are served;
            // a frontend waiting for an event gets the batch's responses
            // with one event, at the end, as before. Each push writes the
            // responses it carries first, all at once, as above.
            //
            // And while the frontend waits for an event, a batch's
            // responses are held if more requests came meanwhile: those are
            // served first and answered with the same event (at most a
            // ring's worth is ever held: requests consumed count against
            // the ring until answered). A frontend that keeps its queue
            // full (e.g. 32 random reads in flight) then takes one
            // interrupt, and this thread one wake-up, per round of
            // several batches instead of one per batch; a frontend with
            // one request in flight sends no more meanwhile, and gets its
            // response at once.
            if !batch.is_empty() {
                Stats::add(&stats.batches, 1);
                // Requests unanswered at once: the frontend's depth, as
                // far as this end sees it. A hold that the frontend filled
                // (the requests waited for came) saw only the half it held
                // for; the frontend kept the other half, as the target
                // assumes, so the depth counts twice that. Without this,
                // each filled hold would halve the next target.
                let in_flight = ring.requests_in_flight();
                let filled = held_once && in_flight >= hold_target;
                depth.observe(if filled { in_flight.saturating_mul(2) } else { in_flight });
            }
            let part_bytes = if device.batches_io() { usize::MAX } else { PUSH_BYTES };
            let mut rest = batch.as_slice();
            while !rest.is_empty() {
                let (part, tail) = rest.split_at(part_len(rest, part_bytes));
                rest = tail;
                device.handle_batch(part, &mut responses);
                held_bytes = part.iter().fold(held_bytes, |sum, r| sum.saturating_add(data_bytes(r)));
                let held = u32::try_from(responses.len()).unwrap_or(u32::MAX);
                if ring.push_would_notify(held)
                    && (!rest.is_empty()
                        || ring.has_unconsumed_requests().map_err(ring_error)?
                        || self.hold_for(held, held_bytes, held_once, kick, &depth).is_some())
                {
                    continue;
                }
                self.answer(&mut ring, &mut responses, std::mem::take(&mut kick), &stats)?;
                (held_once, held_bytes) = (false, 0);
            }
            if !batch.is_empty() {
                continue;
            }
            if !responses.is_empty() {
                let held = u32::try_from(responses.len()).unwrap_or(u32::MAX);
                if let Some((missing, timeout)) = self.hold_for(held, held_bytes, held_once, kick, &depth) {
                    // Moderation: sleep until the requests held for are
                    // published (or a few came and the time is up), then
                    // serve them and answer all together.
                    (held_once, hold_target) = (true, held + missing);
                    if ring.final_check_for_requests_after(missing).map_err(ring_error)? {
                        continue;
                    }
                    let mut wait = WaitFor::new(masked.take(), stop.fd());
                    wait.timeout = Some(timeout);
                    masked = self.sleep(wait, &stats)?;
                    continue;
                }
                // Held once already, and no request came while held: the
                // frontend waited for these responses before sending
                // more, so its depth fell. Forget the depth seen, so that
                // its next requests are answered at once rather than each
                // held until the windows of rounds have passed. (Or held
                // for requests that were then not there: the ring broke,
                // which the next round reports.) Answer them.
                if held_once {
                    depth = Depth::default();
                }
                self.answer(&mut ring, &mut responses, false, &stats)?;
                (held_once, held_bytes) = (false, 0);
            }
            if std::mem::take(&mut kick) {
                self.evtchn.notify(self.port).map_err(evtchn_error)?;
                Stats::add(&stats.events_sent, 1);
            }
            // Busy-poll for a while before sleeping, if asked: req_event is
            // not re-armed meanwhile, so a frontend that publishes more
            // requests sends no event, and neither end pays for a wake-up.
            if !self.poll.is_zero() && poll_ring(self.poll, || ring.has_unconsumed_requests()).map_err(ring_error)? {
                continue;
            }
            if ring.final_check_for_requests().map_err(ring_error)? {
                continue;
            }
            // Sleep until the next event. The port that woke this thread
            // stayed masked through the round and is unmasked by this
            // wait, in the same system call where the platform can: an
            // event that came meanwhile was held by the mask and wakes it
            // at once. The final check re-armed req_event, so an event
            // from now on means new requests. This handle has one port
            // bound, and a port stays masked from its delivery until the
            // unmask, so there is at most one pending entry to take.
            masked = self.sleep(WaitFor::new(masked.take(), stop.fd()), &stats)?;
        }
    }
}

impl<G: GrantMap, E: EventChannels> Queue<G, E> {
    /// Unmasks and sleeps as `wait` says; gives the port that woke the
    /// queue (masked until the next sleep), if one did. A stop is seen by
    /// the loop's next look at the stop signal (set before its fd is
    /// signalled), which answers the responses held.
    fn sleep(&self, wait: WaitFor<'_>, stats: &Stats) -> Result<Option<EvtchnPort>, QueueError> {
        let queue = self.index;
        match self.evtchn.unmask_and_wait(wait).map_err(|source| QueueError::Evtchn { queue, source })? {
            Wake::Port(port) => {
                Stats::add(&stats.events_received, 1);
                return Ok(Some(port));
            }
            Wake::Stopped | Wake::Also | Wake::TimedOut => {}
            // Readable without a pending port: the peer's end went away
            // (a loopback doorbell hangs up). Do not spin while the
            // control thread notices and stops this queue.
            Wake::Spurious => std::thread::sleep(SPURIOUS_WAKEUP_BACKOFF),
        }
        Ok(None)
    }

    /// Whether to hold `held` responses (that the frontend waits for an
    /// event for, answering `held_bytes` of data) for more requests: with
    /// moderation on, not held once already, no kick owed, fewer than the
    /// target for the depth seen, and small requests (an event is worth
    /// saving next to the copy of a few KiB, not of a MiB). Gives how many
    /// requests are missing and how long to wait.
    fn hold_for(
        &self,
        held: u32,
        held_bytes: usize,
        held_once: bool,
        kick: bool,
        depth: &Depth,
    ) -> Option<(u32, Duration)> {
        let coalesce = self.coalesce?;
        let target = depth.target(coalesce.max_held);
        (!held_once && !kick && held < target && held_bytes < HOLD_BYTES)
            .then(|| (target - held, coalesce.timeout))
    }

    /// Writes `responses` to the ring, all at once, pushes them and sends
    /// the frontend an event if it asked for one (or if `kick`).
    fn answer(
        &self,
        ring: &mut BackRing<'_, BlkifRequest, BlkifResponse>,
        responses: &mut Vec<BlkifResponse>,
        kick: bool,
        stats: &Stats,
    ) -> Result<(), QueueError> {
        let queue = self.index;
        let ring_error = |source| QueueError::Ring { queue, source };
        for response in responses.iter() {
            ring.put_response(response).map_err(ring_error)?;
        }
        responses.clear();
        if ring.push_responses_and_check_notify().map_err(ring_error)? || kick {
            self.evtchn.notify(self.port).map_err(|source| QueueError::Evtchn { queue, source })?;
            Stats::add(&stats.events_sent, 1);
        }
        Ok(())
    }
}

/// How many bytes of data a part of a batch carries before its responses
/// are pushed, when requests are served one at a time: a 64 KiB request is
/// answered on its own, four of 4 KiB together. (A push costs a few stores
/// and a fence, and an event only if the frontend sleeps.)
const PUSH_BYTES: usize = 16 << 10;

/// Responses answering this much data or more are not held for more
/// (see [`Queue::coalescing`]).
const HOLD_BYTES: usize = 64 << 10;

/// The bytes of data a request claims to carry, for sizing the parts of a
/// batch only (the request is checked when served; a bad one counts as
/// what it claims).
fn data_bytes(request: &BlkifRequest) -> usize {
    let pages = match request.operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE => usize::from(request.nr_segments),
        BLKIF_OP_INDIRECT => usize::from(request.as_indirect().nr_segments),
        _ => 0,
    };
    pages.saturating_mul(PAGE_SIZE)
}

/// How many of `requests` (at least one, if any) make the next part of a
/// batch: up to the first that brings the part to `part_bytes` of data.
fn part_len(requests: &[BlkifRequest], part_bytes: usize) -> usize {
    let mut bytes = 0usize;
    for (i, request) in requests.iter().enumerate() {
        bytes = bytes.saturating_add(data_bytes(request));
        if bytes >= part_bytes {
            return i + 1;
        }
    }
    requests.len()
}

/// Busy-polls `ready` for up to `poll`: true as soon as it is, false once
/// the time is up.
pub(crate) fn poll_ring<E>(poll: Duration, mut ready: impl FnMut() -> Result<bool, E>) -> Result<bool, E> {
    let start = std::time::Instant::now();
    loop {
        // Check the clock only every few rounds: reading it costs more
        // than a look at the ring.
        for _ in 0..64 {
            if ready()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= poll {
            return Ok(false);
        }
    }
}

/// Runs `queue` on a thread of its own.
pub(crate) fn spawn<G, E, D>(
    queue: Queue<G, E>,
    device: BlockDevice<G, D>,
    stop: Arc<StopSignal>,
) -> std::io::Result<std::thread::JoinHandle<Result<(), QueueError>>>
where
    G: GrantMap + 'static,
    G::Mapped: 'static,
    E: EventChannels + 'static,
    D: Disk + 'static,
{
    std::thread::Builder::new().name(format!("rblkback-q{}", queue.index)).spawn(move || queue.run(device, &stop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::xen::blkif::{BlkifRequestIndirect, BLKIF_OP_FLUSH_DISKCACHE};

    fn rw(nr_segments: u8) -> BlkifRequest {
        BlkifRequest { operation: BLKIF_OP_READ, nr_segments, ..Default::default() }
    }

    #[test]
    fn batches_are_answered_in_parts_of_push_bytes() {
        let big = BlkifRequest::from_indirect(BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 16,
            ..Default::default()
        });
        assert_eq!(data_bytes(&big), 64 << 10);
        assert_eq!(part_len(&[big, rw(1), rw(1)], PUSH_BYTES), 1);
        assert_eq!(PUSH_BYTES, 4 * PAGE_SIZE);
        assert_eq!(part_len(&[rw(3), rw(1), rw(1)], PUSH_BYTES), 2);
        assert_eq!(part_len(&[rw(2), rw(1)], PUSH_BYTES), 2);
        let small = vec![rw(1); 40];
        assert_eq!(part_len(&small, PUSH_BYTES), 4);
        // A flush carries no data; a batch that never reaches the size is
        // one part; io_uring batches are never split.
        let flush = BlkifRequest { operation: BLKIF_OP_FLUSH_DISKCACHE, ..Default::default() };
        assert_eq!(part_len(&[flush, rw(1)], PUSH_BYTES), 2);
        assert_eq!(part_len(&small, usize::MAX), 40);
        assert_eq!(part_len(&[], PUSH_BYTES), 0);
    }
}
