//! The transmit requests in flight on one queue (netfront's `tx_skbs`,
//! `tx_link` and `grant_tx_ref`), and the check of every transmit
//! response against them.
//!
//! Each data slot of a frame takes an entry; its id names the entry (low
//! bits, the ring slot count's log2) and a sequence number (the high bits
//! of the 16-bit id, which netback echoes untouched), so that a response
//! is matched to exactly one request ever sent:
//!
//! - an id whose entry is free or in flight under another sequence
//!   number is [`ProtocolError::TxUnknownId`];
//! - the id an entry last completed (free again, or reused by a later
//!   request) is a [`ProtocolError::TxDuplicateResponse`];
//! - a status other than `NETIF_RSP_*` is [`ProtocolError::TxBadStatus`];
//! - a `NETIF_RSP_NULL` (netback's answer to an extra-info slot) when no
//!   extra-info slot is owed one is [`ProtocolError::TxUnexpectedNull`].
//!
//! The response checked is a copy taken off the ring once.

use hypercall_abi::xen::netif::{NetifRspStatus, NetifTxResponse, NETIF_RSP_NULL};

use crate::error::ProtocolError;

enum Entry {
    Free,
    InFlight {
        id: u16,
        /// The frame's length, on the entry of its first slot.
        frame_len: Option<usize>,
    },
}

/// A data slot answered by a well-formed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxCompletion {
    /// The entry (and tx buffer page) it occupied.
    pub slot: u16,
    /// Its id.
    pub id: u16,
    /// The backend's verdict (never `Null`).
    pub status: NetifRspStatus,
    /// The frame's length, if this was the frame's first slot (whose
    /// status is the frame's).
    pub frame_len: Option<usize>,
}

/// The transmit requests in flight on one ring.
pub struct TxShadow {
    queue: u32,
    slot_bits: u32,
    entries: Vec<Entry>,
    /// The id each entry last completed, even once it is in flight again.
    last: Vec<Option<u16>>,
    /// Free entries, last-in first-out.
    free: Vec<u16>,
    next_seq: u16,
    /// Extra-info slots pushed and not yet answered by `NETIF_RSP_NULL`.
    nulls_owed: usize,
}

impl std::fmt::Debug for TxShadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxShadow")
            .field("queue", &self.queue)
            .field("entries", &self.entries.len())
            .field("in_flight", &self.in_flight())
            .field("nulls_owed", &self.nulls_owed)
            .finish_non_exhaustive()
    }
}

impl TxShadow {
    /// Entries for a ring of `size` slots (a power of two, at most 32768)
    /// of queue `queue`.
    pub fn new(queue: u32, size: u16) -> Self {
        let size = if size.is_power_of_two() {
            size
        } else {
            size.checked_next_power_of_two().unwrap_or(1 << 15) / 2
        };
        TxShadow {
            queue,
            slot_bits: size.trailing_zeros(),
            entries: (0..size).map(|_| Entry::Free).collect(),
            last: vec![None; usize::from(size)],
            free: (0..size).rev().collect(),
            next_seq: 1,
            nulls_owed: 0,
        }
    }

    /// Data slots in flight.
    pub fn in_flight(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Free entries.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Extra-info slots owed a `NETIF_RSP_NULL`.
    pub fn nulls_owed(&self) -> usize {
        self.nulls_owed
    }

    /// Takes a free entry for a data slot, and returns it with the id
    /// the request carries; `frame_len` is the frame's length on its
    /// first slot.
    pub fn take(&mut self, frame_len: Option<usize>) -> Option<(u16, u16)> {
        let slot = self.free.pop()?;
        let seq_bits = 16 - self.slot_bits;
        let seq = if seq_bits == 0 {
            0
        } else {
            self.next_seq & ((1u32 << seq_bits) - 1) as u16
        };
        let id = (((u32::from(seq)) << self.slot_bits) as u16) | slot;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(entry) = self.entries.get_mut(usize::from(slot)) {
            *entry = Entry::InFlight { id, frame_len };
        }
        Some((slot, id))
    }

    /// Records an extra-info slot put on the ring.
    pub fn extra_sent(&mut self) {
        self.nulls_owed += 1;
    }

    /// Checks `rsp` against the requests in flight: `Ok(None)` for the
    /// `NETIF_RSP_NULL` of an extra-info slot, else the data slot it
    /// answers, whose entry is freed.
    pub fn complete(
        &mut self,
        rsp: &NetifTxResponse,
    ) -> Result<Option<TxCompletion>, ProtocolError> {
        let (queue, id) = (self.queue, rsp.id);
        if rsp.status == NETIF_RSP_NULL {
            if self.nulls_owed == 0 {
                return Err(ProtocolError::TxUnexpectedNull { queue });
            }
            self.nulls_owed -= 1;
            return Ok(None);
        }
        let mask = (1u32 << self.slot_bits) - 1;
        let slot = (u32::from(id) & mask) as u16;
        let entry = self
            .entries
            .get_mut(usize::from(slot))
            .ok_or(ProtocolError::TxUnknownId { queue, id })?;
        let last = self
            .last
            .get_mut(usize::from(slot))
            .ok_or(ProtocolError::TxUnknownId { queue, id })?;
        let frame_len = match entry {
            Entry::InFlight {
                id: expected,
                frame_len,
            } if *expected == id => *frame_len,
            _ if *last == Some(id) => return Err(ProtocolError::TxDuplicateResponse { queue, id }),
            _ => return Err(ProtocolError::TxUnknownId { queue, id }),
        };
        let status =
            NetifRspStatus::try_from(rsp.status).map_err(|_| ProtocolError::TxBadStatus {
                queue,
                id,
                status: rsp.status,
            })?;
        *entry = Entry::Free;
        *last = Some(id);
        self.free.push(slot);
        Ok(Some(TxCompletion {
            slot,
            id,
            status,
            frame_len,
        }))
    }

    /// Forgets every request in flight (at teardown); returns how many
    /// there were.
    pub fn drain(&mut self) -> usize {
        let in_flight = self.in_flight();
        let size = self.entries.len() as u16;
        *self = TxShadow::new(self.queue, size);
        in_flight
    }
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::netif::{NETIF_RSP_DROPPED, NETIF_RSP_OKAY};

    use super::*;

    fn rsp(id: u16, status: i16) -> NetifTxResponse {
        NetifTxResponse { id, status }
    }

    #[test]
    fn responses_complete_their_slots_once_and_carry_the_frame() {
        let mut shadow = TxShadow::new(0, 256);
        let (s0, a) = shadow.take(Some(5000)).unwrap();
        let (s1, b) = shadow.take(None).unwrap();
        shadow.extra_sent();

        assert_ne!(a, b);
        assert_eq!(shadow.in_flight(), 2);
        let first = shadow.complete(&rsp(a, NETIF_RSP_OKAY)).unwrap().unwrap();
        assert_eq!(shadow.complete(&rsp(0xdead, NETIF_RSP_NULL)), Ok(None));
        let second = shadow
            .complete(&rsp(b, NETIF_RSP_DROPPED))
            .unwrap()
            .unwrap();

        assert_eq!(
            (first.slot, first.frame_len, first.status),
            (s0, Some(5000), NetifRspStatus::Okay)
        );
        assert_eq!(
            (second.slot, second.frame_len, second.status),
            (s1, None, NetifRspStatus::Dropped)
        );
        assert_eq!(shadow.in_flight(), 0);
        assert_eq!(
            shadow.complete(&rsp(a, NETIF_RSP_OKAY)),
            Err(ProtocolError::TxDuplicateResponse { queue: 0, id: a })
        );
    }

    #[test]
    fn unknown_ids_statuses_and_nulls_are_rejected() {
        let mut shadow = TxShadow::new(3, 256);
        let (_, a) = shadow.take(Some(60)).unwrap();

        assert_eq!(
            shadow.complete(&rsp(a ^ 0x100, NETIF_RSP_OKAY)),
            Err(ProtocolError::TxUnknownId {
                queue: 3,
                id: a ^ 0x100
            })
        );
        assert_eq!(
            shadow.complete(&rsp(a + 1, NETIF_RSP_OKAY)),
            Err(ProtocolError::TxUnknownId {
                queue: 3,
                id: a + 1
            })
        );
        assert_eq!(
            shadow.complete(&rsp(a, 7)),
            Err(ProtocolError::TxBadStatus {
                queue: 3,
                id: a,
                status: 7
            })
        );
        assert_eq!(
            shadow.complete(&rsp(a, NETIF_RSP_NULL)),
            Err(ProtocolError::TxUnexpectedNull { queue: 3 })
        );
        assert_eq!(shadow.in_flight(), 1);
    }

    #[test]
    fn a_reused_slot_gets_a_new_id_and_the_old_one_is_a_duplicate() {
        let mut shadow = TxShadow::new(0, 4);
        let (slot, a) = shadow.take(Some(60)).unwrap();
        shadow.complete(&rsp(a, NETIF_RSP_OKAY)).unwrap();

        let (again, b) = shadow.take(Some(60)).unwrap();

        assert_eq!(slot, again);
        assert_ne!(a, b);
        assert_eq!(
            shadow.complete(&rsp(a, NETIF_RSP_OKAY)),
            Err(ProtocolError::TxDuplicateResponse { queue: 0, id: a })
        );
        assert!(shadow.complete(&rsp(b, NETIF_RSP_OKAY)).unwrap().is_some());
    }

    #[test]
    fn the_shadow_runs_out_with_the_ring() {
        let mut shadow = TxShadow::new(0, 4);
        for _ in 0..4 {
            shadow.take(None).unwrap();
        }

        assert_eq!(shadow.take(None), None);
        assert_eq!(shadow.drain(), 4);
        assert_eq!(shadow.free(), 4);
    }
}
