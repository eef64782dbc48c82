//! The transport of a domain connection: the 1024-byte request and reply
//! byte rings of `struct xenstore_domain_interface` (`io/xs_wire.h`).
//!
//! Indices are free-running `XENSTORE_RING_IDX` values masked into the
//! ring. The domain produces requests and consumes replies; the daemon the
//! reverse. Every index the domain can write is checked: a producer more
//! than a ring's size ahead of its consumer is a protocol error, after
//! which the connection is dead and the page's `error` field says why.
//! Bytes are copied out of the ring once, then parsed from the copy.

use std::collections::VecDeque;
use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};
use hypercall_abi::xen::xs_wire::{
    mask_xenstore_idx, XenstoreDomainInterface, XENSTORE_CONNECTED, XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION,
};

/// Byte offsets in `struct xenstore_domain_interface`.
mod off {
    use super::XenstoreDomainInterface as I;
    use std::mem::offset_of;

    pub const REQ: usize = offset_of!(I, req);
    pub const RSP: usize = offset_of!(I, rsp);
    pub const REQ_CONS: usize = offset_of!(I, req_cons);
    pub const REQ_PROD: usize = offset_of!(I, req_prod);
    pub const RSP_CONS: usize = offset_of!(I, rsp_cons);
    pub const RSP_PROD: usize = offset_of!(I, rsp_prod);
    pub const SERVER_FEATURES: usize = offset_of!(I, server_features);
    pub const CONNECTION: usize = offset_of!(I, connection);
    pub const ERROR: usize = offset_of!(I, error);
}

/// `XENSTORE_RING_SIZE` as a ring index distance.
const RING: u32 = XENSTORE_RING_SIZE as u32;

/// Why a ring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The domain set an index more than a ring's size away from the other.
    #[error("the {ring} ring's indices are inconsistent (consumer {cons}, producer {prod})")]
    BadIndex {
        /// `req` or `rsp`.
        ring: &'static str,
        /// The consumer index.
        cons: u32,
        /// The producer index.
        prod: u32,
    },
    /// The page is smaller than `struct xenstore_domain_interface`, or
    /// read-only.
    #[error("the ring page cannot be accessed: {0}")]
    Memory(#[from] SharedMemoryError),
}

/// A page holding `struct xenstore_domain_interface`, accessed with
/// volatile copies and atomic index loads and stores only.
pub trait RingPage: fmt::Debug {
    /// Loads the `u32` at `offset` with `order`.
    fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, SharedMemoryError>;
    /// Stores `v` at `offset` with `order`.
    fn store_u32(&self, offset: usize, v: u32, order: Ordering) -> Result<(), SharedMemoryError>;
    /// Copies bytes out of the page.
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SharedMemoryError>;
    /// Copies bytes into the page.
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), SharedMemoryError>;
}

/// Mappings that give a [`SharedMemory`] accessor.
pub trait MapsMemory: fmt::Debug {
    /// The mapped page.
    fn memory(&self) -> SharedMemory<'_>;
}

impl<T: MapsMemory> RingPage for T {
    fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, SharedMemoryError> {
        self.memory().load_u32(offset, order)
    }
    fn store_u32(&self, offset: usize, v: u32, order: Ordering) -> Result<(), SharedMemoryError> {
        self.memory().store_u32(offset, v, order)
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SharedMemoryError> {
        self.memory().read(offset, buf)
    }
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), SharedMemoryError> {
        self.memory().write(offset, buf)
    }
}

impl MapsMemory for xen_linux::LinuxMappedGrants {
    fn memory(&self) -> SharedMemory<'_> {
        hypercall_abi::platform::MappedGrants::memory(self)
    }
}

impl MapsMemory for xen_linux::ForeignMapping {
    fn memory(&self) -> SharedMemory<'_> {
        xen_linux::ForeignMapping::memory(self)
    }
}

impl MapsMemory for xen_linux::LocalStoreRing {
    fn memory(&self) -> SharedMemory<'_> {
        xen_linux::LocalStoreRing::memory(self)
    }
}

/// Marks the page as served: the features this daemon offers, connected.
pub fn announce(page: &dyn RingPage) -> Result<(), RingError> {
    page.store_u32(
        off::SERVER_FEATURES,
        XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR,
        Ordering::Relaxed,
    )?;
    page.store_u32(off::CONNECTION, XENSTORE_CONNECTED, Ordering::Release)?;
    Ok(())
}

/// The `connection` field: `XENSTORE_RECONNECT` when the domain asks for
/// a fresh connection.
pub fn connection(page: &dyn RingPage) -> Result<u32, RingError> {
    Ok(page.load_u32(off::CONNECTION, Ordering::Acquire)?)
}

/// Completes a reconnection the domain asked for: empty rings, no error,
/// connected again.
pub fn reset(page: &dyn RingPage) -> Result<(), RingError> {
    for o in [
        off::REQ_CONS,
        off::REQ_PROD,
        off::RSP_CONS,
        off::RSP_PROD,
        off::ERROR,
    ] {
        page.store_u32(o, 0, Ordering::Relaxed)?;
    }
    fence(Ordering::SeqCst);
    page.store_u32(off::CONNECTION, XENSTORE_CONNECTED, Ordering::Release)?;
    Ok(())
}

/// Tells the domain why its connection died (`XENSTORE_ERROR_*`).
pub fn set_error(page: &dyn RingPage, error: u32) -> Result<(), RingError> {
    Ok(page.store_u32(off::ERROR, error, Ordering::Release)?)
}

/// Copies the request bytes the domain has produced (at most a ring's
/// worth) to the end of `into` and consumes them; returns how many.
pub fn read_requests(page: &dyn RingPage, into: &mut Vec<u8>) -> Result<usize, RingError> {
    let cons = Wrapping(page.load_u32(off::REQ_CONS, Ordering::Relaxed)?);
    // Acquire: see the bytes before the producer index that covers them
    // (xs_wire.h's reader: read prod, then rmb).
    let prod = Wrapping(page.load_u32(off::REQ_PROD, Ordering::Acquire)?);
    let avail = (prod - cons).0;
    if avail > RING {
        return Err(RingError::BadIndex {
            ring: "req",
            cons: cons.0,
            prod: prod.0,
        });
    }
    let mut done = 0u32;
    while done < avail {
        let at = mask_xenstore_idx((cons + Wrapping(done)).0);
        let n = (avail - done).min(RING - at as u32) as usize;
        let start = into.len();
        into.resize(start + n, 0);
        page.read(off::REQ + at, &mut into[start..])?;
        done += n as u32;
    }
    if done > 0 {
        // Full barrier: finish reading the bytes before handing the space
        // back (mb before updating req_cons).
        fence(Ordering::SeqCst);
        page.store_u32(off::REQ_CONS, (cons + Wrapping(done)).0, Ordering::Release)?;
    }
    Ok(done as usize)
}

/// Moves as many bytes of `out` as fit into the reply ring; returns how
/// many.
pub fn write_replies(page: &dyn RingPage, out: &mut VecDeque<u8>) -> Result<usize, RingError> {
    // Acquire: the domain has finished reading what it consumed.
    let cons = Wrapping(page.load_u32(off::RSP_CONS, Ordering::Acquire)?);
    let prod = Wrapping(page.load_u32(off::RSP_PROD, Ordering::Relaxed)?);
    let used = (prod - cons).0;
    if used > RING {
        return Err(RingError::BadIndex {
            ring: "rsp",
            cons: cons.0,
            prod: prod.0,
        });
    }
    let space = (RING - used) as usize;
    let mut done = 0usize;
    while done < space && !out.is_empty() {
        let at = mask_xenstore_idx((prod + Wrapping(done as u32)).0);
        let n = (space - done).min(XENSTORE_RING_SIZE - at).min(out.len());
        let chunk: Vec<u8> = out.drain(..n).collect();
        page.write(off::RSP + at, &chunk)?;
        done += n;
    }
    if done > 0 {
        // Release (wmb): the bytes are visible before the producer index.
        page.store_u32(
            off::RSP_PROD,
            (prod + Wrapping(done as u32)).0,
            Ordering::Release,
        )?;
    }
    Ok(done)
}

#[cfg(test)]
pub(crate) mod test_page {
    //! An in-memory ring page, for tests (the domain's side included).

    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::atomic::Ordering;

    use hypercall_abi::platform::SharedMemoryError;

    use super::RingPage;

    /// One zeroed 4 KiB page; clones share it (the daemon's and the
    /// domain's view).
    #[derive(Debug, Clone)]
    pub(crate) struct TestPage(pub(crate) Rc<RefCell<Vec<u8>>>);

    impl TestPage {
        pub(crate) fn new() -> Self {
            TestPage(Rc::new(RefCell::new(vec![0; 4096])))
        }
    }

    fn range(
        len: usize,
        offset: usize,
        n: usize,
    ) -> Result<std::ops::Range<usize>, SharedMemoryError> {
        match offset.checked_add(n) {
            Some(end) if end <= len => Ok(offset..end),
            _ => Err(SharedMemoryError::OutOfBounds {
                offset,
                len: n,
                size: len,
            }),
        }
    }

    impl RingPage for TestPage {
        fn load_u32(&self, offset: usize, _: Ordering) -> Result<u32, SharedMemoryError> {
            let mut b = [0u8; 4];
            self.read(offset, &mut b)?;
            Ok(u32::from_le_bytes(b))
        }
        fn store_u32(&self, offset: usize, v: u32, _: Ordering) -> Result<(), SharedMemoryError> {
            self.write(offset, &v.to_le_bytes())
        }
        fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SharedMemoryError> {
            let page = self.0.borrow();
            buf.copy_from_slice(&page[range(page.len(), offset, buf.len())?]);
            Ok(())
        }
        fn write(&self, offset: usize, buf: &[u8]) -> Result<(), SharedMemoryError> {
            let mut page = self.0.borrow_mut();
            let r = range(page.len(), offset, buf.len())?;
            page[r].copy_from_slice(buf);
            Ok(())
        }
    }
}
