//! The requests in flight on one ring (blkfront's `shadow` array), and the
//! check of every response against them.
//!
//! Each ring slot has an entry. A request takes a free entry and gets an id
//! that names both the entry (low 16 bits) and a sequence number (the rest),
//! so that a response is matched to exactly one request ever sent:
//!
//! - an id whose entry is out of range, free, or in flight under another
//!   sequence number is [`ProtocolError::UnknownId`];
//! - the id of the request last completed in a now free entry is a
//!   [`ProtocolError::DuplicateResponse`];
//! - an operation other than the request's is
//!   [`ProtocolError::WrongOperation`];
//! - a status other than `BLKIF_RSP_*` is [`ProtocolError::BadStatus`].
//!
//! The response checked is a copy taken off the ring once; nothing is read
//! from the shared page twice.

use hypercall_abi::xen::blkif::{BlkifResponse, BlkifStatus};

use crate::error::ProtocolError;

/// Bits of an id that name the entry.
const SLOT_BITS: u32 = 16;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

enum Entry<T> {
    Free {
        /// The id of the request this entry last completed.
        last: Option<u64>,
    },
    InFlight {
        id: u64,
        /// The operation the response must carry.
        op: u8,
        payload: T,
    },
}

/// A free entry and the id a request placed in it will carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The entry (ring slot) index.
    pub slot: u16,
    /// The request id.
    pub id: u64,
}

/// A request answered by a well-formed response.
#[derive(Debug)]
pub struct Completion<T> {
    /// The entry it occupied.
    pub slot: u16,
    /// Its id.
    pub id: u64,
    /// The backend's verdict.
    pub status: BlkifStatus,
    /// What was recorded with the request.
    pub payload: T,
}

/// The requests in flight on one ring.
pub struct Shadow<T> {
    queue: u32,
    entries: Vec<Entry<T>>,
    /// Free entries, used last-in first-out so that few persistent buffers
    /// are needed when few requests are in flight.
    free: Vec<u16>,
    next_seq: u64,
}

impl<T> std::fmt::Debug for Shadow<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow")
            .field("queue", &self.queue)
            .field("entries", &self.entries.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<T> Shadow<T> {
    /// `size` entries (the ring size, at most 65536) for queue `queue`.
    pub fn new(queue: u32, size: u16) -> Self {
        Shadow {
            queue,
            entries: (0..size).map(|_| Entry::Free { last: None }).collect(),
            free: (0..size).rev().collect(),
            next_seq: 1,
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// The entry and id the next request will take, if one is free.
    pub fn reserve(&self) -> Option<Reservation> {
        let slot = *self.free.last()?;
        Some(Reservation { slot, id: (self.next_seq << SLOT_BITS) | u64::from(slot) })
    }

    /// Records the request of `reservation` (the last [`reserve`](Self::reserve)),
    /// whose response must carry `op`.
    pub fn insert(&mut self, reservation: Reservation, op: u8, payload: T) {
        if let Some(pos) = self.free.iter().rposition(|&s| s == reservation.slot) {
            self.free.remove(pos);
        }
        if let Some(entry) = self.entries.get_mut(usize::from(reservation.slot)) {
            *entry = Entry::InFlight { id: reservation.id, op, payload };
        }
        // Sequence numbers have 48 bits: they would wrap after 2^48
        // requests on one ring.
        self.next_seq = (self.next_seq + 1) & (u64::MAX >> SLOT_BITS);
    }

    /// Checks `rsp` against the requests in flight and, if it answers one,
    /// frees its entry and hands back what was recorded.
    pub fn complete(&mut self, rsp: &BlkifResponse) -> Result<Completion<T>, ProtocolError> {
        let (queue, id) = (self.queue, rsp.id);
        let slot = (id & SLOT_MASK) as u16;
        let entry = self.entries.get_mut(usize::from(slot)).ok_or(ProtocolError::UnknownId { queue, id })?;
        match entry {
            Entry::InFlight { id: expected, op, .. } if *expected == id => {
                if rsp.operation != *op {
                    return Err(ProtocolError::WrongOperation { queue, id, expected: *op, got: rsp.operation });
                }
            }
            Entry::Free { last: Some(last) } if *last == id => {
                return Err(ProtocolError::DuplicateResponse { queue, id })
            }
            _ => return Err(ProtocolError::UnknownId { queue, id }),
        }
        let status = BlkifStatus::try_from(rsp.status).map_err(|_| ProtocolError::BadStatus {
            queue,
            id,
            status: rsp.status,
        })?;
        match std::mem::replace(entry, Entry::Free { last: Some(id) }) {
            Entry::InFlight { payload, .. } => {
                self.free.push(slot);
                Ok(Completion { slot, id, status, payload })
            }
            // Matched as in flight just above.
            Entry::Free { .. } => Err(ProtocolError::UnknownId { queue, id }),
        }
    }

    /// Forgets every request in flight (the ring is being torn down) and
    /// hands back what was recorded with them.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (slot, entry) in (0..).zip(self.entries.iter_mut()) {
            if let Entry::InFlight { payload, .. } = std::mem::replace(entry, Entry::Free { last: None }) {
                out.push(payload);
                self.free.push(slot);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::blkif::{
        BLKIF_OP_DISCARD, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    };

    use super::*;

    fn rsp(id: u64, op: u8, status: i16) -> BlkifResponse {
        BlkifResponse { id, operation: op, status, ..Default::default() }
    }

    fn send(shadow: &mut Shadow<&'static str>, op: u8, what: &'static str) -> u64 {
        let r = shadow.reserve().unwrap();
        shadow.insert(r, op, what);
        r.id
    }

    #[test]
    fn responses_in_any_order_complete_their_requests() {
        let mut shadow = Shadow::new(0, 4);
        let a = send(&mut shadow, BLKIF_OP_READ, "a");
        let b = send(&mut shadow, BLKIF_OP_WRITE, "b");
        assert_eq!(shadow.in_flight(), 2);

        let done_b = shadow.complete(&rsp(b, BLKIF_OP_WRITE, BLKIF_RSP_ERROR)).unwrap();
        let done_a = shadow.complete(&rsp(a, BLKIF_OP_READ, BLKIF_RSP_OKAY)).unwrap();

        assert_eq!((done_b.payload, done_b.status), ("b", BlkifStatus::Error));
        assert_eq!((done_a.payload, done_a.status), ("a", BlkifStatus::Okay));
        assert_eq!(shadow.in_flight(), 0);
    }

    #[test]
    fn a_full_shadow_reserves_nothing_and_ids_are_never_reused() {
        let mut shadow = Shadow::new(0, 2);
        let a = send(&mut shadow, BLKIF_OP_READ, "a");
        let _b = send(&mut shadow, BLKIF_OP_READ, "b");
        assert_eq!(shadow.reserve(), None);

        shadow.complete(&rsp(a, BLKIF_OP_READ, BLKIF_RSP_OKAY)).unwrap();
        let c = send(&mut shadow, BLKIF_OP_READ, "c");

        assert_eq!(c & SLOT_MASK, a & SLOT_MASK, "the freed entry is reused");
        assert_ne!(c, a, "under a new id");
    }

    #[test]
    fn unknown_ids_are_rejected() {
        let mut shadow = Shadow::new(3, 4);
        let a = send(&mut shadow, BLKIF_OP_READ, "a");

        for id in [a + 1, a ^ (1 << 20), 99, u64::MAX, a & SLOT_MASK] {
            assert_eq!(
                shadow.complete(&rsp(id, BLKIF_OP_READ, BLKIF_RSP_OKAY)).map(|c| c.id),
                Err(ProtocolError::UnknownId { queue: 3, id })
            );
        }
        assert_eq!(shadow.in_flight(), 1, "nothing was completed");
    }

    #[test]
    fn a_second_response_is_a_duplicate() {
        let mut shadow = Shadow::new(0, 4);
        let a = send(&mut shadow, BLKIF_OP_DISCARD, "a");
        shadow.complete(&rsp(a, BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP)).unwrap();

        let again = shadow.complete(&rsp(a, BLKIF_OP_DISCARD, BLKIF_RSP_OKAY)).map(|c| c.id);

        assert_eq!(again, Err(ProtocolError::DuplicateResponse { queue: 0, id: a }));
    }

    #[test]
    fn wrong_operation_and_bad_status_are_rejected() {
        let mut shadow = Shadow::new(1, 4);
        let a = send(&mut shadow, BLKIF_OP_READ, "a");

        assert_eq!(
            shadow.complete(&rsp(a, BLKIF_OP_WRITE, BLKIF_RSP_OKAY)).map(|c| c.id),
            Err(ProtocolError::WrongOperation { queue: 1, id: a, expected: BLKIF_OP_READ, got: BLKIF_OP_WRITE })
        );
        assert_eq!(
            shadow.complete(&rsp(a, BLKIF_OP_READ, 7)).map(|c| c.id),
            Err(ProtocolError::BadStatus { queue: 1, id: a, status: 7 })
        );
        assert_eq!(shadow.in_flight(), 1);
    }

    #[test]
    fn drain_hands_back_what_is_in_flight() {
        let mut shadow = Shadow::new(0, 4);
        send(&mut shadow, BLKIF_OP_READ, "a");
        send(&mut shadow, BLKIF_OP_READ, "b");

        let mut drained = shadow.drain();
        drained.sort_unstable();

        assert_eq!(drained, ["a", "b"]);
        assert_eq!(shadow.in_flight(), 0);
    }
}
