//! Batched disk I/O through io_uring: the reads and writes of one batch
//! of ring requests go to the kernel with one `io_uring_enter`, not one
//! `preadv`/`pwritev` each.
//!
//! The operations name memory by raw iovecs (the frontend's mapped pages),
//! which the kernel reads or writes until it posts the completion. So a
//! batch is run to the end before [`Uring::run`] returns, whatever
//! happens: the caller's promise ([`Uring::run`]'s safety contract) is to
//! keep that memory mapped until then, and nothing is ever left in flight
//! behind its back. If the ring itself fails while operations are in
//! flight, the process aborts rather than unmap memory the kernel may
//! still write (one process serves one device, so that device alone
//! stops).
//!
//! Every `unsafe` of the io_uring path is in this module.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

/// Submission queue entries of a queue's ring; a batch with more
/// operations is submitted in rounds.
pub(crate) const ENTRIES: u32 = 128;

/// One read or write of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op {
    /// The file.
    pub fd: RawFd,
    /// Byte offset in the file.
    pub offset: u64,
    /// The memory: `count` iovecs.
    pub iovecs: *const libc::iovec,
    /// Number of iovecs (at most `IOV_MAX`).
    pub count: u32,
    /// Memory to file (`writev`) rather than file to memory (`readv`).
    pub write: bool,
}

/// An io_uring instance for one queue thread.
pub(crate) struct Uring {
    ring: IoUring,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring").finish_non_exhaustive()
    }
}

impl Uring {
    /// A ring of [`ENTRIES`] entries; fails where io_uring is missing or
    /// forbidden (ENOSYS, EPERM), and the caller then does synchronous I/O.
    pub(crate) fn new() -> io::Result<Uring> {
        Ok(Uring { ring: IoUring::new(ENTRIES)? })
    }

    /// Runs `ops` and stores each result in `results` (bytes transferred,
    /// or a negated errno), returning only once every operation has
    /// completed.
    ///
    /// # Safety
    ///
    /// For each op, `iovecs` must point to `count` live iovecs, each
    /// describing memory that stays mapped (and writable, for reads) until
    /// this call returns, and to which no Rust reference exists meanwhile;
    /// `fd` must be open until this call returns.
    pub(crate) unsafe fn run(&mut self, ops: &[Op], results: &mut [i32]) {
        debug_assert_eq!(ops.len(), results.len());
        let mut next = 0;
        let mut in_flight = 0usize;
        let mut done = 0;
        while done < ops.len() {
            {
                let mut sq = self.ring.submission();
                while next < ops.len() && !sq.is_full() {
                    let op = ops[next];
                    let entry = if op.write {
                        opcode::Writev::new(types::Fd(op.fd), op.iovecs, op.count).offset(op.offset).build()
                    } else {
                        opcode::Readv::new(types::Fd(op.fd), op.iovecs, op.count).offset(op.offset).build()
                    }
                    .user_data(next as u64);
                    // SAFETY: the entry names iovecs and memory that the
                    // caller keeps valid until `run` returns (this
                    // function's contract), and `run` does not return
                    // before the entry's completion is reaped below.
                    if unsafe { sq.push(&entry) }.is_err() {
                        break;
                    }
                    next += 1;
                    in_flight += 1;
                }
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => {
                    // The kernel may still own memory of the operations in
                    // flight: nothing here can take it back.
                    log::error!("io_uring_enter failed with {in_flight} operations in flight: {e}; aborting");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                let index = cqe.user_data() as usize;
                if let Some(slot) = results.get_mut(index) {
                    *slot = cqe.result();
                    in_flight = in_flight.saturating_sub(1);
                    done += 1;
                }
            }
        }
    }
}
