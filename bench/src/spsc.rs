//! A minimal lock-free single-producer single-consumer queue in one shared
//! page: the baseline the shared ring is measured against.
//!
//! Layout: the consumer's `head` at byte 0, the producer's `tail` at byte
//! 64 (separate cache lines), then [`CAPACITY`] slots of [`SLOT`] bytes.
//! Indices are free-running `u32`s; a slot is written before the `tail`
//! that covers it is published (Release) and read after the `tail` was
//! loaded (Acquire), and the same for `head` in the other direction. Each
//! end caches the other's index and reloads it only when it seems full or
//! empty. There is no notification: consumers poll.
//!
//! The peer's index is untrusted: one claiming more than the queue holds
//! breaks the queue instead of letting us read garbage.

use std::sync::atomic::Ordering;

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};
use hypercall_abi::ring::RingEntry;

/// Slots in a queue.
pub const CAPACITY: u32 = 32;
/// Bytes per slot.
pub const SLOT: usize = 64;
/// Bytes a queue needs.
pub const QUEUE_BYTES: usize = SLOTS_AT + CAPACITY as usize * SLOT;

const HEAD_AT: usize = 0;
const TAIL_AT: usize = 64;
const SLOTS_AT: usize = 128;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpscError {
    /// The memory is too small, misaligned or not writable.
    #[error("SPSC queue memory: {0}")]
    Memory(#[from] SharedMemoryError),
    /// The peer published an index beyond what the queue holds.
    #[error(
        "the peer's queue index {theirs} is inconsistent with ours ({ours}); the queue is broken"
    )]
    Broken {
        /// The peer's index.
        theirs: u32,
        /// Ours.
        ours: u32,
    },
}

/// The producing end.
#[derive(Debug)]
pub struct Producer<'a> {
    mem: SharedMemory<'a>,
    tail: u32,
    head_cache: u32,
}

/// The consuming end.
#[derive(Debug)]
pub struct Consumer<'a> {
    mem: SharedMemory<'a>,
    head: u32,
    tail_cache: u32,
}

fn slot(idx: u32) -> usize {
    SLOTS_AT + (idx % CAPACITY) as usize * SLOT
}

fn check_len(mem: &SharedMemory<'_>) -> Result<(), SpscError> {
    if mem.len() < QUEUE_BYTES {
        return Err(SpscError::Memory(SharedMemoryError::OutOfBounds {
            offset: 0,
            len: QUEUE_BYTES,
            size: mem.len(),
        }));
    }
    Ok(())
}

impl<'a> Producer<'a> {
    /// Initialises an empty queue in `mem` and produces into it.
    pub fn init(mem: SharedMemory<'a>) -> Result<Self, SpscError> {
        check_len(&mem)?;
        mem.store_u32(HEAD_AT, 0, Ordering::Relaxed)?;
        mem.store_u32(TAIL_AT, 0, Ordering::Release)?;
        Ok(Producer {
            mem,
            tail: 0,
            head_cache: 0,
        })
    }

    /// Appends `msg` (at most [`SLOT`] bytes); false if the queue is full.
    pub fn push<T: RingEntry>(&mut self, msg: &T) -> Result<bool, SpscError> {
        if self.tail.wrapping_sub(self.head_cache) >= CAPACITY {
            let head = self.mem.load_u32(HEAD_AT, Ordering::Acquire)?;
            if self.tail.wrapping_sub(head) > CAPACITY {
                return Err(SpscError::Broken {
                    theirs: head,
                    ours: self.tail,
                });
            }
            self.head_cache = head;
            if self.tail.wrapping_sub(head) == CAPACITY {
                return Ok(false);
            }
        }
        let bytes = msg.as_bytes();
        if bytes.len() > SLOT {
            return Err(SpscError::Memory(SharedMemoryError::OutOfBounds {
                offset: 0,
                len: bytes.len(),
                size: SLOT,
            }));
        }
        self.mem.write(slot(self.tail), bytes)?;
        self.tail = self.tail.wrapping_add(1);
        // Release: the slot is written before the tail that covers it.
        self.mem.store_u32(TAIL_AT, self.tail, Ordering::Release)?;
        Ok(true)
    }
}

impl<'a> Consumer<'a> {
    /// Consumes from the queue the producer initialised in `mem`.
    pub fn attach(mem: SharedMemory<'a>) -> Result<Self, SpscError> {
        check_len(&mem)?;
        Ok(Consumer {
            mem,
            head: 0,
            tail_cache: 0,
        })
    }

    /// Takes the oldest message, copied out once, if any.
    pub fn pop<T: RingEntry>(&mut self) -> Result<Option<T>, SpscError> {
        if self.head == self.tail_cache {
            // Acquire: slots are read after the tail that covers them.
            let tail = self.mem.load_u32(TAIL_AT, Ordering::Acquire)?;
            if tail.wrapping_sub(self.head) > CAPACITY {
                return Err(SpscError::Broken {
                    theirs: tail,
                    ours: self.head,
                });
            }
            self.tail_cache = tail;
            if tail == self.head {
                return Ok(None);
            }
        }
        let msg = self.mem.read_obj::<T>(slot(self.head))?;
        self.head = self.head.wrapping_add(1);
        // Release: the slot is read before the producer may reuse it.
        self.mem.store_u32(HEAD_AT, self.head, Ordering::Release)?;
        Ok(Some(msg))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::ptr::NonNull;

    #[test]
    fn messages_arrive_in_order_and_full_is_reported() {
        let mut page = vec![0u64; 512];
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `page` outlives both accessors and is only reached through them.
        let (a, b) = unsafe {
            (
                SharedMemory::new(base, 4096, true),
                SharedMemory::new(base, 4096, true),
            )
        };
        let mut p = Producer::init(a).unwrap();
        let mut c = Consumer::attach(b).unwrap();
        assert_eq!(c.pop::<u64>().unwrap(), None);
        for round in 0..3u64 {
            for i in 0..u64::from(CAPACITY) {
                assert!(p.push(&(round * 100 + i)).unwrap());
            }
            assert!(!p.push(&0u64).unwrap(), "full");
            for i in 0..u64::from(CAPACITY) {
                assert_eq!(c.pop::<u64>().unwrap(), Some(round * 100 + i));
            }
            assert_eq!(c.pop::<u64>().unwrap(), None);
        }
    }

    #[test]
    fn a_lying_peer_breaks_the_queue() {
        let mut page = vec![0u64; 512];
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: as above.
        let (a, b, peer) = unsafe {
            (
                SharedMemory::new(base, 4096, true),
                SharedMemory::new(base, 4096, true),
                SharedMemory::new(base, 4096, true),
            )
        };
        let _p = Producer::init(a).unwrap();
        let mut c = Consumer::attach(b).unwrap();
        peer.store_u32(TAIL_AT, 1000, Ordering::Release).unwrap();
        assert!(matches!(c.pop::<u64>(), Err(SpscError::Broken { .. })));
    }
}
