//! The generic shared ring of `xen/io/ring.h`.
//!
//! A split driver's front end and back end share one page (or `1 << order`
//! pages for `ring-page-order`) laid out as ring.h's `struct __name##_sring`:
//!
//! | offset | field       | written by |
//! |-------:|-------------|------------|
//! | 0      | `req_prod`  | front      |
//! | 4      | `req_event` | back       |
//! | 8      | `rsp_prod`  | back       |
//! | 12     | `rsp_event` | front      |
//! | 16     | `pvt` (4)   | protocol   |
//! | 20     | `__pad` (44)| nobody     |
//! | 64     | `ring[]`    | both       |
//!
//! `ring[]` is an array of `union { Req req; Rsp rsp; }` whose length is the
//! largest power of two that fits ([`ring_size`]). Indices are free-running
//! `u32`s ([`RingIdx`]) reduced modulo the ring size when used.
//!
//! [`FrontRing`] and [`BackRing`] hold each end's private indices and
//! implement ring.h's macros with the same arithmetic, the same notification
//! hold-off rules (`req_event`/`rsp_event`) and the same barriers, mapped to
//! `core::sync::atomic::fence`. Unlike the macros they do not trust the
//! peer: a producer index that claims more entries than the ring can hold,
//! or that moved backwards, marks the ring broken ([`RingError`]), and no
//! page contents can make them panic or access memory outside the ring.
//! Entries are copied out of the ring once and returned by value, so what
//! the caller validates is what it uses (no double fetch).
//!
//! The memory itself is reached only through [`SharedRingMem`].
//!
//! ```
//! use core::num::NonZeroUsize;
//! use hypercall_abi::ring::{BackRing, FrontRing, OwnedRingMem, RingError};
//!
//! let page = OwnedRingMem::new(NonZeroUsize::MIN);
//! let mut front = FrontRing::<u64, u32>::init_shared(page.mem())?;
//! let mut back = BackRing::<u64, u32>::new(page.mem())?;
//!
//! front.put_request(&7)?;
//! let kick_back = front.push_requests_and_check_notify()?;
//! assert!(kick_back); // the back end asked for an event on request 1
//!
//! // The back end's event handler: drain, respond, and sleep only once a
//! // final check (which re-arms req_event) finds nothing new.
//! loop {
//!     while let Some(req) = back.consume_request()? {
//!         back.put_response(&(req as u32 * 2))?;
//!     }
//!     let _kick_front = back.push_responses_and_check_notify()?;
//!     if !back.final_check_for_requests()? {
//!         break;
//!     }
//! }
//! assert_eq!(front.consume_response()?, Some(14));
//! # Ok::<(), RingError>(())
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of};
use core::num::Wrapping;
use core::sync::atomic::{fence, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

mod mem;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "std"))]
pub use mem::OwnedRingMem;
pub use mem::{SharedRingMem, SringIndex};

/// `RING_IDX`: a free-running ring index; all arithmetic on it wraps.
pub type RingIdx = Wrapping<u32>;

/// Size of the shared ring header: `offsetof(struct __name##_sring, ring)`.
pub const SRING_HEADER_SIZE: usize = 64;

/// `XEN_PAGE_SIZE`: ring pages are 4 KiB whatever the guest's page size.
pub const XEN_PAGE_SIZE: usize = 4096;

/// Largest power of two not above `x` (0 for 0): ring.h's `__RD32`.
pub const fn round_down_pow2(x: u32) -> u32 {
    if x == 0 {
        0
    } else {
        1 << (31 - x.leading_zeros())
    }
}

/// `__RING_SIZE`: how many entries of `entry_size` bytes fit after the
/// header in `ring_bytes` bytes, rounded down to a power of two.
///
/// `ring_bytes` is `XEN_PAGE_SIZE << ring_page_order`. Returns 0 if not even
/// one entry fits (or `entry_size` is 0); such a ring is unusable and the
/// ring constructors reject it.
pub const fn ring_size(entry_size: usize, ring_bytes: usize) -> u32 {
    if entry_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let entries = (ring_bytes - SRING_HEADER_SIZE) / entry_size;
    if entries > u32::MAX as usize {
        round_down_pow2(u32::MAX)
    } else {
        round_down_pow2(entries as u32)
    }
}

/// Size of one ring slot, `sizeof(union { Req req; Rsp rsp; })`: the larger
/// size rounded up to the stricter alignment, as C lays out a union.
pub const fn slot_size<Req, Rsp>() -> usize {
    let size = if size_of::<Req>() > size_of::<Rsp>() {
        size_of::<Req>()
    } else {
        size_of::<Rsp>()
    };
    let align = if align_of::<Req>() > align_of::<Rsp>() {
        align_of::<Req>()
    } else {
        align_of::<Rsp>()
    };
    size.div_ceil(align) * align
}

/// What a request or response type must be to travel through a ring: a
/// plain `#[repr(C)]` wire struct that any bytes are a valid value of.
pub trait RingEntry: FromBytes + IntoBytes + Immutable + KnownLayout + Copy {}

impl<T: FromBytes + IntoBytes + Immutable + KnownLayout + Copy> RingEntry for T {}

/// Why a ring operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The ring memory is not 4-byte aligned.
    Misaligned {
        /// Address of the memory.
        addr: usize,
    },
    /// The ring memory holds the header but not a single entry.
    TooSmall {
        /// Size of the memory in bytes.
        len: usize,
        /// Size of one slot (0 when only the header was checked).
        entry_size: usize,
    },
    /// A byte range lies outside the ring memory.
    OutOfBounds {
        /// Start of the range.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// Size of the memory.
        mem_len: usize,
    },
    /// The front end's `req_prod` claims more requests than the ring can
    /// hold, or moved backwards. The ring is now broken.
    RequestProducerOverrun {
        /// The `req_prod` read from the shared page.
        req_prod: u32,
        /// The back end's `req_cons`.
        req_cons: u32,
        /// The back end's `rsp_prod_pvt`.
        rsp_prod_pvt: u32,
        /// Ring size.
        size: u32,
    },
    /// The back end's `rsp_prod` claims more responses than requests
    /// were pushed, or moved backwards. The ring is now broken.
    ResponseProducerOverrun {
        /// The `rsp_prod` read from the shared page.
        rsp_prod: u32,
        /// The front end's `rsp_cons`.
        rsp_cons: u32,
        /// The front end's last pushed `req_prod`.
        req_prod: u32,
    },
    /// The front ring has no free slot for another request.
    Full,
    /// The back end tried to put back requests it had already answered
    /// (or never consumed).
    RewindPastResponses {
        /// The index asked for.
        to: u32,
        /// The back end's `rsp_prod_pvt`.
        rsp_prod_pvt: u32,
        /// The back end's `req_cons`.
        req_cons: u32,
    },
    /// The back end tried to respond with no consumed request left
    /// unanswered.
    NoRequestToAnswer,
    /// The peer misbehaved earlier; the ring must be torn down.
    Broken,
    /// The memory offered for the ring is mapped read-only.
    ReadOnly,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::Misaligned { addr } => write!(
                f,
                "ring memory at {addr:#x} is not 4-byte aligned; map the ring page-aligned"
            ),
            RingError::TooSmall { len, entry_size } => write!(
                f,
                "ring memory of {len} bytes cannot hold the 64-byte header and one \
                 {entry_size}-byte entry; map more ring pages"
            ),
            RingError::OutOfBounds {
                offset,
                len,
                mem_len,
            } => write!(
                f,
                "bytes {offset}..{offset}+{len} lie outside the {mem_len}-byte ring memory"
            ),
            RingError::RequestProducerOverrun {
                req_prod,
                req_cons,
                rsp_prod_pvt,
                size,
            } => write!(
                f,
                "frontend set req_prod to {req_prod} with req_cons {req_cons} and \
                 rsp_prod_pvt {rsp_prod_pvt} on a {size}-entry ring: more requests than \
                 the ring holds; the ring is broken, disconnect the frontend"
            ),
            RingError::ResponseProducerOverrun {
                rsp_prod,
                rsp_cons,
                req_prod,
            } => write!(
                f,
                "backend set rsp_prod to {rsp_prod} with rsp_cons {rsp_cons} and only \
                 requests up to {req_prod} pushed: more responses than requests; the ring \
                 is broken, disconnect the backend"
            ),
            RingError::RewindPastResponses {
                to,
                rsp_prod_pvt,
                req_cons,
            } => write!(
                f,
                "cannot put requests back to index {to}: only {rsp_prod_pvt}..{req_cons} \
                 are consumed and unanswered"
            ),
            RingError::Full => write!(
                f,
                "the ring is full; wait for responses before queueing more requests"
            ),
            RingError::NoRequestToAnswer => write!(
                f,
                "no consumed request is waiting for a response; respond only to requests \
                 taken off the ring"
            ),
            RingError::ReadOnly => write!(
                f,
                "ring memory is mapped read-only; both ends write to a ring, map it writable"
            ),
            RingError::Broken => write!(
                f,
                "the ring was marked broken after the peer misbehaved; tear it down and \
                 reconnect"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RingError {}

/// The notification rule of `RING_PUSH_*_AND_CHECK_NOTIFY`: having moved the
/// producer index from `old` to `new`, the consumer wants an event if its
/// `event` index lies in `(old, new]`, i.e. `new - event < new - old` in
/// wrapping arithmetic.
pub fn need_notify(old: RingIdx, new: RingIdx, event: RingIdx) -> bool {
    (new - event) < (new - old)
}

/// Checks the sizes shared by both ends and returns `(size, slot_size)`.
fn geometry<Req, Rsp>(mem: &SharedRingMem<'_>) -> Result<(u32, usize), RingError> {
    let slot = slot_size::<Req, Rsp>();
    match ring_size(slot, mem.len()) {
        0 => Err(RingError::TooSmall {
            len: mem.len(),
            entry_size: slot,
        }),
        size => Ok((size, slot)),
    }
}

/// Byte offset of the slot that index `idx` maps to.
fn slot_offset(idx: RingIdx, size: u32, slot: usize) -> usize {
    SRING_HEADER_SIZE + (idx.0 & (size - 1)) as usize * slot
}

/// Copies a `T` out of the slot at `offset`, once.
fn read_slot<T: RingEntry>(mem: &SharedRingMem<'_>, offset: usize) -> Result<T, RingError> {
    let mut value = T::new_zeroed();
    mem.read_bytes(offset, value.as_mut_bytes())?;
    Ok(value)
}

/// The front end of a ring (`__name##_front_ring`): produces requests,
/// consumes responses.
pub struct FrontRing<'a, Req, Rsp> {
    mem: SharedRingMem<'a>,
    /// `req_prod_pvt`: the next request slot to fill.
    req_prod_pvt: RingIdx,
    /// `rsp_cons`: the next response to consume.
    rsp_cons: RingIdx,
    /// The `req_prod` last published; bounds the responses the back end can
    /// legitimately have produced. Private, so the peer cannot forge it.
    req_prod_pushed: RingIdx,
    /// `nr_ents`.
    size: u32,
    slot: usize,
    broken: bool,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> fmt::Debug for FrontRing<'_, Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontRing")
            .field("size", &self.size)
            .field("req_prod_pvt", &self.req_prod_pvt.0)
            .field("rsp_cons", &self.rsp_cons.0)
            .field("req_prod_pushed", &self.req_prod_pushed.0)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// The private state of a [`FrontRing`]: what it needs to be detached
/// from its memory and attached again later, with requests in flight.
///
/// A ring borrows its memory, so an owner that keeps both the granted
/// pages and the ring in one place keeps this instead and re-attaches with
/// [`FrontRing::resume`] whenever it uses the ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontRingState {
    req_prod_pvt: RingIdx,
    rsp_cons: RingIdx,
    req_prod_pushed: RingIdx,
    broken: bool,
}

impl<'a, Req: RingEntry, Rsp: RingEntry> FrontRing<'a, Req, Rsp> {
    /// `XEN_FRONT_RING_INIT`: initialises the shared ring
    /// ([`SharedRingMem::init_shared`]) and attaches at index 0.
    pub fn init_shared(mem: SharedRingMem<'a>) -> Result<Self, RingError> {
        let ring = Self::new(mem)?;
        mem.init_shared();
        Ok(ring)
    }

    /// `FRONT_RING_INIT`: attaches at index 0 without touching the page.
    pub fn new(mem: SharedRingMem<'a>) -> Result<Self, RingError> {
        Self::attach(mem, Wrapping(0))
    }

    /// `FRONT_RING_ATTACH`: attaches to a ring whose indices are all at
    /// `start`, without touching the page.
    pub fn attach(mem: SharedRingMem<'a>, start: RingIdx) -> Result<Self, RingError> {
        let (size, slot) = geometry::<Req, Rsp>(&mem)?;
        Ok(FrontRing {
            mem,
            req_prod_pvt: start,
            rsp_cons: start,
            req_prod_pushed: start,
            size,
            slot,
            broken: false,
            _entries: PhantomData,
        })
    }

    /// Attaches to `mem` with the private indices of `state`, saved by
    /// [`FrontRing::state`] from a ring over the same memory.
    pub fn resume(mem: SharedRingMem<'a>, state: FrontRingState) -> Result<Self, RingError> {
        let (size, slot) = geometry::<Req, Rsp>(&mem)?;
        Ok(FrontRing {
            mem,
            req_prod_pvt: state.req_prod_pvt,
            rsp_cons: state.rsp_cons,
            req_prod_pushed: state.req_prod_pushed,
            size,
            slot,
            broken: state.broken,
            _entries: PhantomData,
        })
    }

    /// The private state, to [`resume`](FrontRing::resume) the ring later.
    pub fn state(&self) -> FrontRingState {
        FrontRingState {
            req_prod_pvt: self.req_prod_pvt,
            rsp_cons: self.rsp_cons,
            req_prod_pushed: self.req_prod_pushed,
            broken: self.broken,
        }
    }

    /// The memory this ring lives in.
    pub fn mem(&self) -> SharedRingMem<'a> {
        self.mem
    }

    /// `RING_SIZE`: number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `req_prod_pvt`: index the next request will take.
    pub fn req_prod_pvt(&self) -> RingIdx {
        self.req_prod_pvt
    }

    /// `rsp_cons`: index of the next response to consume.
    pub fn rsp_cons(&self) -> RingIdx {
        self.rsp_cons
    }

    /// Whether the back end was caught misbehaving.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// `RING_FREE_REQUESTS`: slots free for new requests. Depends only on
    /// private indices, which never exceed the ring size.
    pub fn free_requests(&self) -> u32 {
        self.size
            .wrapping_sub((self.req_prod_pvt - self.rsp_cons).0)
    }

    /// `RING_FULL`.
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Writes `req` into the private producer slot
    /// (`*RING_GET_REQUEST(r, r->req_prod_pvt++) = req`); it becomes
    /// visible to the back end at the next push.
    pub fn put_request(&mut self, req: &Req) -> Result<(), RingError> {
        self.check()?;
        if self.is_full() {
            return Err(RingError::Full);
        }
        let offset = slot_offset(self.req_prod_pvt, self.size, self.slot);
        self.mem.write_bytes(offset, req.as_bytes())?;
        self.req_prod_pvt += 1;
        Ok(())
    }

    /// `RING_PUSH_REQUESTS`: publishes the requests put so far.
    pub fn push_requests(&mut self) -> Result<(), RingError> {
        self.check()?;
        // xen_wmb: the back end must see the request slots written before it
        // sees the req_prod that covers them. Pairs with the Acquire fence
        // in `BackRing::unconsumed_requests`.
        fence(Ordering::Release);
        self.mem.store_index(SringIndex::ReqProd, self.req_prod_pvt);
        self.req_prod_pushed = self.req_prod_pvt;
        Ok(())
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the requests put so
    /// far and returns whether the back end asked to be notified of them
    /// (its `req_event` lies among the newly pushed indices).
    #[must_use = "true means the peer must be sent an event"]
    pub fn push_requests_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.check()?;
        let old = self.mem.load_index(SringIndex::ReqProd);
        let new = self.req_prod_pvt;
        // xen_wmb: the back end must see the request slots before the new
        // req_prod (pairs with its Acquire fence after reading req_prod).
        fence(Ordering::Release);
        self.mem.store_index(SringIndex::ReqProd, new);
        self.req_prod_pushed = new;
        // xen_mb: the store of req_prod must be globally visible before we
        // read req_event. The back end's final check does the mirror image
        // (store req_event, mb, load req_prod); with both full fences at
        // least one side sees the other's store, so a back end going to
        // sleep either finds our requests or gets our notification.
        fence(Ordering::SeqCst);
        let event = self.mem.load_index(SringIndex::ReqEvent);
        Ok(need_notify(old, new, event))
    }

    /// Whether pushing the requests put so far would send the back end an
    /// event: it asked for one on a request among them (it is waiting).
    /// A hint for batching only, not part of ring.h: the back end may
    /// re-arm `req_event` at any moment after this look, and
    /// [`push_requests_and_check_notify`](Self::push_requests_and_check_notify)
    /// decides afresh.
    pub fn push_would_notify(&self) -> bool {
        let old = self.mem.load_index(SringIndex::ReqProd);
        let event = self.mem.load_index(SringIndex::ReqEvent);
        need_notify(old, self.req_prod_pvt, event)
    }

    /// `RING_HAS_UNCONSUMED_RESPONSES` (the count form): responses produced
    /// by the back end and not yet consumed.
    ///
    /// Fails, and breaks the ring, if `rsp_prod` claims responses to
    /// requests that were never pushed or moved backwards.
    pub fn unconsumed_responses(&mut self) -> Result<u32, RingError> {
        self.check()?;
        let rsp_prod = self.mem.load_index(SringIndex::RspProd);
        let available = rsp_prod - self.rsp_cons;
        let outstanding = self.req_prod_pushed - self.rsp_cons;
        if available > outstanding {
            self.broken = true;
            return Err(RingError::ResponseProducerOverrun {
                rsp_prod: rsp_prod.0,
                rsp_cons: self.rsp_cons.0,
                req_prod: self.req_prod_pushed.0,
            });
        }
        // xen_rmb: response slots are read only after rsp_prod was read, so
        // we see the slots the back end wrote before publishing rsp_prod.
        // Pairs with the Release fence in `BackRing::push_responses*`.
        fence(Ordering::Acquire);
        Ok(available.0)
    }

    /// Whether responses are waiting (`!!RING_HAS_UNCONSUMED_RESPONSES`).
    pub fn has_unconsumed_responses(&mut self) -> Result<bool, RingError> {
        Ok(self.unconsumed_responses()? != 0)
    }

    /// `RING_COPY_RESPONSE`: a copy of the response slot that `idx` maps to,
    /// whatever it holds. Prefer [`FrontRing::consume_response`].
    pub fn get_response(&self, idx: RingIdx) -> Result<Rsp, RingError> {
        self.check()?;
        read_slot(&self.mem, slot_offset(idx, self.size, self.slot))
    }

    /// Takes the next response off the ring, if the back end produced one:
    /// a copy of slot `rsp_cons`, after which `rsp_cons` advances.
    pub fn consume_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.unconsumed_responses()? == 0 {
            return Ok(None);
        }
        let rsp = read_slot(&self.mem, slot_offset(self.rsp_cons, self.size, self.slot))?;
        self.rsp_cons += 1;
        Ok(Some(rsp))
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: before sleeping, asks for an event
    /// on the next response (`rsp_event = rsp_cons + 1`) and checks again;
    /// true means responses are waiting and the front end must not sleep.
    #[must_use = "true means there is work and the caller must not sleep"]
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.has_unconsumed_responses()? {
            return Ok(true);
        }
        self.mem
            .store_index(SringIndex::RspEvent, self.rsp_cons + Wrapping(1));
        // xen_mb: rsp_event must be visible before rsp_prod is re-read;
        // pairs with the back end's mb between storing rsp_prod and loading
        // rsp_event, so a response pushed meanwhile is either seen here or
        // notified there.
        fence(Ordering::SeqCst);
        self.has_unconsumed_responses()
    }

    fn check(&self) -> Result<(), RingError> {
        if self.broken {
            Err(RingError::Broken)
        } else {
            Ok(())
        }
    }
}

/// The back end of a ring (`__name##_back_ring`): consumes requests,
/// produces responses.
pub struct BackRing<'a, Req, Rsp> {
    mem: SharedRingMem<'a>,
    /// `rsp_prod_pvt`: the next response slot to fill.
    rsp_prod_pvt: RingIdx,
    /// `req_cons`: the next request to consume.
    req_cons: RingIdx,
    /// `nr_ents`.
    size: u32,
    slot: usize,
    broken: bool,
    _entries: PhantomData<fn(Req) -> Rsp>,
}

impl<Req, Rsp> fmt::Debug for BackRing<'_, Req, Rsp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackRing")
            .field("size", &self.size)
            .field("req_cons", &self.req_cons.0)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt.0)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl<'a, Req: RingEntry, Rsp: RingEntry> BackRing<'a, Req, Rsp> {
    /// `BACK_RING_INIT`: attaches at index 0 (the front end initialises the
    /// shared page).
    pub fn new(mem: SharedRingMem<'a>) -> Result<Self, RingError> {
        Self::attach(mem, Wrapping(0))
    }

    /// `BACK_RING_ATTACH`: attaches with both private indices at `start`,
    /// e.g. the page's `rsp_prod` when reconnecting.
    pub fn attach(mem: SharedRingMem<'a>, start: RingIdx) -> Result<Self, RingError> {
        let (size, slot) = geometry::<Req, Rsp>(&mem)?;
        Ok(BackRing {
            mem,
            rsp_prod_pvt: start,
            req_cons: start,
            size,
            slot,
            broken: false,
            _entries: PhantomData,
        })
    }

    /// The memory this ring lives in.
    pub fn mem(&self) -> SharedRingMem<'a> {
        self.mem
    }

    /// `RING_SIZE`: number of slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// `req_cons`: index of the next request to consume.
    pub fn req_cons(&self) -> RingIdx {
        self.req_cons
    }

    /// `rsp_prod_pvt`: index the next response will take.
    pub fn rsp_prod_pvt(&self) -> RingIdx {
        self.rsp_prod_pvt
    }

    /// Whether the front end was caught misbehaving.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Requests consumed and not yet answered (`req_cons - rsp_prod_pvt`).
    pub fn requests_in_flight(&self) -> u32 {
        (self.req_cons - self.rsp_prod_pvt).0
    }

    /// `RING_HAS_UNCONSUMED_REQUESTS` (the count form, Xen 4.17's: the
    /// smaller of the requests published and the slots not holding
    /// in-flight requests).
    ///
    /// `req_prod` is untrusted. A well-behaved front end never has more
    /// than the ring size outstanding (`RING_REQUEST_PROD_OVERFLOW`), so
    /// the published count can never exceed the free space; if it does, or
    /// `req_prod` moved back behind `req_cons`, this fails and breaks the
    /// ring.
    pub fn unconsumed_requests(&mut self) -> Result<u32, RingError> {
        self.check()?;
        let req_prod = self.mem.load_index(SringIndex::ReqProd);
        let req = (req_prod - self.req_cons).0;
        let rsp = self.size.wrapping_sub(self.requests_in_flight());
        if req > rsp {
            self.broken = true;
            return Err(RingError::RequestProducerOverrun {
                req_prod: req_prod.0,
                req_cons: self.req_cons.0,
                rsp_prod_pvt: self.rsp_prod_pvt.0,
                size: self.size,
            });
        }
        // xen_rmb: request slots are read only after req_prod was read, so
        // we see the slots the front end wrote before publishing req_prod.
        // Pairs with the Release fence in `FrontRing::push_requests*`.
        fence(Ordering::Acquire);
        Ok(req.min(rsp))
    }

    /// Whether requests are waiting (`!!RING_HAS_UNCONSUMED_REQUESTS`).
    pub fn has_unconsumed_requests(&mut self) -> Result<bool, RingError> {
        Ok(self.unconsumed_requests()? != 0)
    }

    /// `RING_REQUEST_CONS_OVERFLOW`: would consuming index `cons` overrun
    /// the responses not yet produced?
    pub fn request_cons_overflow(&self, cons: RingIdx) -> bool {
        (cons - self.rsp_prod_pvt).0 >= self.size
    }

    /// `RING_COPY_REQUEST`: a copy of the request slot that `idx` maps to,
    /// whatever it holds. Prefer [`BackRing::consume_request`].
    pub fn get_request(&self, idx: RingIdx) -> Result<Req, RingError> {
        self.check()?;
        read_slot(&self.mem, slot_offset(idx, self.size, self.slot))
    }

    /// Takes the next request off the ring, if the front end published one:
    /// a single copy of slot `req_cons`, after which `req_cons` advances.
    /// Validate the returned copy; the slot may change under you.
    pub fn consume_request(&mut self) -> Result<Option<Req>, RingError> {
        if self.unconsumed_requests()? == 0 {
            return Ok(None);
        }
        let req = read_slot(&self.mem, slot_offset(self.req_cons, self.size, self.slot))?;
        self.req_cons += 1;
        Ok(Some(req))
    }

    /// Puts back the requests consumed since index `to` (`req_cons = to`),
    /// e.g. a packet whose slots are not all published yet, to be taken
    /// again (copied afresh) on a later round. `to` must lie between
    /// `rsp_prod_pvt` and `req_cons`: answered requests cannot come back.
    pub fn unconsume_requests(&mut self, to: RingIdx) -> Result<(), RingError> {
        self.check()?;
        if (self.req_cons - to).0 > self.requests_in_flight() {
            return Err(RingError::RewindPastResponses {
                to: to.0,
                rsp_prod_pvt: self.rsp_prod_pvt.0,
                req_cons: self.req_cons.0,
            });
        }
        self.req_cons = to;
        Ok(())
    }

    /// Writes `rsp` into the private producer slot
    /// (`*RING_GET_RESPONSE(r, r->rsp_prod_pvt++) = rsp`); it becomes
    /// visible to the front end at the next push. Responses answer
    /// consumed requests one for one, in slot order.
    pub fn put_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.check()?;
        if self.requests_in_flight() == 0 {
            return Err(RingError::NoRequestToAnswer);
        }
        let offset = slot_offset(self.rsp_prod_pvt, self.size, self.slot);
        self.mem.write_bytes(offset, rsp.as_bytes())?;
        self.rsp_prod_pvt += 1;
        Ok(())
    }

    /// `RING_PUSH_RESPONSES`: publishes the responses put so far.
    pub fn push_responses(&mut self) -> Result<(), RingError> {
        self.check()?;
        // xen_wmb: the front end must see the response slots before the
        // rsp_prod that covers them. Pairs with the Acquire fence in
        // `FrontRing::unconsumed_responses`.
        fence(Ordering::Release);
        self.mem.store_index(SringIndex::RspProd, self.rsp_prod_pvt);
        Ok(())
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the responses put
    /// so far and returns whether the front end asked to be notified of
    /// them (its `rsp_event` lies among the newly pushed indices).
    #[must_use = "true means the peer must be sent an event"]
    pub fn push_responses_and_check_notify(&mut self) -> Result<bool, RingError> {
        self.check()?;
        // `old` comes from the page, as in ring.h; if the front end scribbled
        // on rsp_prod the only consequence is a spurious or missing event,
        // which is its own loss.
        let old = self.mem.load_index(SringIndex::RspProd);
        let new = self.rsp_prod_pvt;
        // xen_wmb: the front end must see the response slots before the new
        // rsp_prod (pairs with its Acquire fence after reading rsp_prod).
        fence(Ordering::Release);
        self.mem.store_index(SringIndex::RspProd, new);
        // xen_mb: the store of rsp_prod must be globally visible before we
        // read rsp_event; mirror image of the front end's final check
        // (store rsp_event, mb, load rsp_prod), so a front end going to
        // sleep either finds our responses or gets our notification.
        fence(Ordering::SeqCst);
        let event = self.mem.load_index(SringIndex::RspEvent);
        Ok(need_notify(old, new, event))
    }

    /// Whether pushing the responses put so far and `more` after them
    /// would send the front end an event: it asked for one on a response
    /// among them (it is waiting). A hint for batching only, not part of
    /// ring.h: the front end may re-arm `rsp_event` at any moment after
    /// this look, and
    /// [`push_responses_and_check_notify`](Self::push_responses_and_check_notify)
    /// decides afresh.
    pub fn push_would_notify(&self, more: u32) -> bool {
        let old = self.mem.load_index(SringIndex::RspProd);
        let event = self.mem.load_index(SringIndex::RspEvent);
        need_notify(old, self.rsp_prod_pvt + Wrapping(more), event)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: before sleeping, asks for an event
    /// on the next request (`req_event = req_cons + 1`) and checks again;
    /// true means requests are waiting and the back end must not sleep.
    #[must_use = "true means there is work and the caller must not sleep"]
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
        self.final_check_for_requests_after(1)
    }

    /// As [`final_check_for_requests`](Self::final_check_for_requests), but
    /// asks for an event only once `count` (at least one) more requests are
    /// published (`req_event = req_cons + count`), for a back end that would
    /// rather take a few requests together. Not part of ring.h: a front end
    /// that publishes fewer sends no event, so the back end must also wake
    /// by itself (a timeout) and serve what came.
    #[must_use = "true means there is work and the caller must not sleep"]
    pub fn final_check_for_requests_after(&mut self, count: u32) -> Result<bool, RingError> {
        if self.has_unconsumed_requests()? {
            return Ok(true);
        }
        self.mem
            .store_index(SringIndex::ReqEvent, self.req_cons + Wrapping(count.max(1)));
        // xen_mb: req_event must be visible before req_prod is re-read;
        // pairs with the front end's mb between storing req_prod and loading
        // req_event, so a request pushed meanwhile is either seen here or
        // notified there.
        fence(Ordering::SeqCst);
        self.has_unconsumed_requests()
    }

    fn check(&self) -> Result<(), RingError> {
        if self.broken {
            Err(RingError::Broken)
        } else {
            Ok(())
        }
    }
}
