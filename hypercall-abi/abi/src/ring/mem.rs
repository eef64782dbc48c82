//! The only door into a shared ring's memory.
//!
//! A shared ring lives in a page (or a few pages) that the peer domain has
//! mapped too and may write at any moment, in any way. Rust references
//! promise that nobody else writes the memory behind them, so none are ever
//! created into the ring: the index fields are accessed as atomics and the
//! entries are copied in and out with volatile loads and stores, all through
//! [`SharedRingMem`]. Every `unsafe` of the ring code is in this file.

use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use super::{RingError, RingIdx, SRING_HEADER_SIZE};

/// One of the four `RING_IDX` fields at the start of a shared ring page
/// (`struct __name##_sring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SringIndex {
    /// `req_prod`: written by the front end, at offset 0.
    ReqProd,
    /// `req_event`: written by the back end, at offset 4.
    ReqEvent,
    /// `rsp_prod`: written by the back end, at offset 8.
    RspProd,
    /// `rsp_event`: written by the front end, at offset 12.
    RspEvent,
}

impl SringIndex {
    /// Byte offset of the field in the shared page.
    pub const fn offset(self) -> usize {
        match self {
            SringIndex::ReqProd => 0,
            SringIndex::ReqEvent => 4,
            SringIndex::RspProd => 8,
            SringIndex::RspEvent => 12,
        }
    }
}

/// Offset of `pvt` (a 4-byte union) in the shared page.
const PVT_OFFSET: usize = 16;

/// The memory of one shared ring: `len` bytes at `base`, which the peer may
/// write concurrently.
///
/// All accesses are bounds-checked, atomic (the index fields) or volatile
/// (everything else), and never produce a Rust reference into the memory.
/// It is `Copy`: a front and a back ring over the same memory (as in tests)
/// simply hold one copy each, exactly as two domains map the same page.
#[derive(Debug, Clone, Copy)]
pub struct SharedRingMem<'a> {
    base: NonNull<u8>,
    len: usize,
    /// The memory is borrowed for `'a`, and it is shared-mutable memory.
    _memory: PhantomData<&'a core::cell::UnsafeCell<[u8]>>,
}

// SAFETY: the accessor only performs atomic and volatile accesses through a
// raw pointer to memory that `new`'s caller guaranteed valid for `'a`; those
// accesses are already designed to race with a peer domain, so doing them
// from another thread of this process adds nothing new.
unsafe impl Send for SharedRingMem<'_> {}
// SAFETY: as for `Send`: every method takes `&self` and performs only atomic
// or volatile accesses, which tolerate concurrent writers by design.
unsafe impl Sync for SharedRingMem<'_> {}

impl<'a> SharedRingMem<'a> {
    /// Wraps `len` bytes at `base` as ring memory.
    ///
    /// Fails with [`RingError::Misaligned`] unless `base` is 4-byte aligned
    /// (the `RING_IDX` fields are accessed atomically) and with
    /// [`RingError::TooSmall`] unless `len` covers at least the 64-byte
    /// header.
    ///
    /// # Safety
    ///
    /// For all of `'a`:
    /// - `base .. base + len` must be valid for reads and writes (mapped,
    ///   writable, one allocation or mapping), and not be deallocated or
    ///   unmapped;
    /// - no Rust reference (`&`/`&mut`) to any of these bytes may exist
    ///   except to `UnsafeCell`/atomic contents; the memory is accessed
    ///   only through raw pointers: other [`SharedRingMem`]s, another
    ///   domain or process, or C code.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Result<Self, RingError> {
        if base.as_ptr() as usize % core::mem::align_of::<AtomicU32>() != 0 {
            return Err(RingError::Misaligned {
                addr: base.as_ptr() as usize,
            });
        }
        if len < SRING_HEADER_SIZE {
            return Err(RingError::TooSmall { len, entry_size: 0 });
        }
        Ok(SharedRingMem {
            base,
            len,
            _memory: PhantomData,
        })
    }

    /// Size of the memory in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: the memory holds at least the 64-byte header.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `SHARED_RING_INIT`: producer indices 0, event indices 1, `pvt` and
    /// the padding zeroed. Only the front end initialises the shared ring.
    pub fn init_shared(&self) {
        self.store_index(SringIndex::ReqProd, RingIdx::default());
        self.store_index(SringIndex::RspProd, RingIdx::default());
        self.store_index(SringIndex::ReqEvent, core::num::Wrapping(1));
        self.store_index(SringIndex::RspEvent, core::num::Wrapping(1));
        // The header is in bounds (`new` checked `len >= 64`), so this
        // cannot fail.
        let _ = self.write_bytes(PVT_OFFSET, &[0; SRING_HEADER_SIZE - PVT_OFFSET]);
    }

    /// Loads one index field. Relaxed: the ring code orders it with
    /// explicit fences, as ring.h does with `xen_rmb`/`xen_mb`.
    pub fn load_index(&self, field: SringIndex) -> RingIdx {
        core::num::Wrapping(self.atomic(field).load(Ordering::Relaxed))
    }

    /// Stores one index field. Relaxed: the ring code orders it with
    /// explicit fences, as ring.h does with `xen_wmb`/`xen_mb`.
    pub fn store_index(&self, field: SringIndex, value: RingIdx) {
        self.atomic(field).store(value.0, Ordering::Relaxed);
    }

    fn atomic(&self, field: SringIndex) -> &'a AtomicU32 {
        // SAFETY: `field.offset() + 4 <= 16 <= len` (checked in `new`) so
        // the pointer is in bounds; `base` is 4-aligned (checked in `new`)
        // and so is every offset; the memory is valid for `'a` and is only
        // accessed through raw pointers and atomics (contract of `new`).
        // The `&AtomicU32` is a shared reference to interior-mutable memory,
        // which permits concurrent writes by others; it is never `&mut`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(field.offset()).cast::<u32>()) }
    }

    /// Copies `dst.len()` bytes at `offset` out of the ring, once, with
    /// volatile loads (the peer's writes cannot make us read twice).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), RingError> {
        let src = self.range(offset, dst.len())?;
        let mut i = 0;
        // Bytes until the source is 8-aligned, then words, then the tail.
        while i < dst.len() {
            let remaining = dst.len() - i;
            // SAFETY: `i < dst.len()`, and `range` checked that
            // `src .. src + dst.len()` lies within the memory.
            let p = unsafe { src.add(i) };
            if p as usize % 8 == 0 && remaining >= 8 {
                // SAFETY: `p .. p + 8` is in bounds (`remaining >= 8`),
                // 8-aligned, valid for reads for `'a` (contract of `new`);
                // volatile so the load is performed exactly once.
                let word = unsafe { ptr::read_volatile(p.cast::<u64>()) };
                if let Some(d) = dst.get_mut(i..i + 8) {
                    d.copy_from_slice(&word.to_ne_bytes());
                }
                i += 8;
            } else {
                // SAFETY: `p` is in bounds and valid for reads for `'a`.
                let byte = unsafe { ptr::read_volatile(p) };
                if let Some(d) = dst.get_mut(i) {
                    *d = byte;
                }
                i += 1;
            }
        }
        Ok(())
    }

    /// Copies `src` into the ring at `offset` with volatile stores.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), RingError> {
        let dst = self.range(offset, src.len())?;
        let mut i = 0;
        while i < src.len() {
            let remaining = src.len() - i;
            // SAFETY: `i < src.len()`, and `range` checked that
            // `dst .. dst + src.len()` lies within the memory.
            let p = unsafe { dst.add(i) };
            match src.get(i..i + 8) {
                Some(chunk) if p as usize % 8 == 0 && remaining >= 8 => {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(chunk);
                    // SAFETY: `p .. p + 8` is in bounds, 8-aligned and valid
                    // for writes for `'a` (contract of `new`).
                    unsafe { ptr::write_volatile(p.cast::<u64>(), u64::from_ne_bytes(word)) };
                    i += 8;
                }
                _ => {
                    let byte = src.get(i).copied().unwrap_or_default();
                    // SAFETY: `p` is in bounds and valid for writes for `'a`.
                    unsafe { ptr::write_volatile(p, byte) };
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Pointer to `offset`, after checking `offset .. offset + len` is
    /// within the memory.
    fn range(&self, offset: usize, len: usize) -> Result<*mut u8, RingError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {
                // SAFETY: `offset <= end <= self.len`: in bounds or one past
                // the end of the memory, which `new` guaranteed is one
                // allocation.
                Ok(unsafe { self.base.as_ptr().add(offset) })
            }
            _ => Err(RingError::OutOfBounds {
                offset,
                len,
                mem_len: self.len,
            }),
        }
    }
}

#[cfg(any(test, feature = "std"))]
pub use owned::OwnedRingMem;

#[cfg(any(test, feature = "std"))]
mod owned {
    extern crate alloc;

    use alloc::boxed::Box;
    use alloc::vec;
    use core::num::NonZeroUsize;
    use core::ptr::NonNull;

    use super::SharedRingMem;
    use crate::ring::XEN_PAGE_SIZE;

    #[derive(Clone, Copy)]
    #[repr(C, align(4096))]
    struct Page([u8; XEN_PAGE_SIZE]);

    /// Zero-filled, page-aligned ring memory owned by this process: for
    /// tests, fuzzing, and peers in one address space (loopback).
    pub struct OwnedRingMem {
        /// From `Box::<[Page]>::into_raw`; freed in `Drop`.
        pages: NonNull<Page>,
        count: usize,
    }

    // SAFETY: `OwnedRingMem` owns its allocation (like a `Box`); the memory
    // is only ever accessed through `SharedRingMem`, which is `Send`.
    unsafe impl Send for OwnedRingMem {}
    // SAFETY: `&OwnedRingMem` only hands out `SharedRingMem`s, which are
    // `Sync`; it never exposes references to the bytes.
    unsafe impl Sync for OwnedRingMem {}

    impl core::fmt::Debug for OwnedRingMem {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("OwnedRingMem")
                .field("pages", &self.count)
                .finish()
        }
    }

    impl OwnedRingMem {
        /// `pages` zero-filled 4 KiB pages.
        pub fn new(pages: NonZeroUsize) -> Self {
            let boxed: Box<[Page]> = vec![Page([0; XEN_PAGE_SIZE]); pages.get()].into_boxed_slice();
            let count = boxed.len();
            let pages = NonNull::from(Box::leak(boxed)).cast::<Page>();
            OwnedRingMem { pages, count }
        }

        /// `1 << ring_page_order` pages, as a `ring-page-order` xenstore key
        /// asks for; `None` if that does not fit in memory.
        pub fn with_order(ring_page_order: u32) -> Option<Self> {
            let pages = 1usize.checked_shl(ring_page_order)?;
            pages.checked_mul(XEN_PAGE_SIZE)?;
            NonZeroUsize::new(pages).map(Self::new)
        }

        /// Size in bytes.
        pub fn len(&self) -> usize {
            self.count * XEN_PAGE_SIZE
        }

        /// Always false: there is at least one page.
        pub fn is_empty(&self) -> bool {
            self.count == 0
        }

        /// The accessor through which rings use this memory.
        pub fn mem(&self) -> SharedRingMem<'_> {
            SharedRingMem {
                base: self.pages.cast::<u8>(),
                len: self.len(),
                _memory: core::marker::PhantomData,
            }
        }
    }

    impl Drop for OwnedRingMem {
        fn drop(&mut self) {
            let slice = core::ptr::slice_from_raw_parts_mut(self.pages.as_ptr(), self.count);
            // SAFETY: `pages`/`count` come from `Box::leak` of a `Box<[Page]>`
            // in `new`, and no `SharedRingMem` borrowing `self` outlives this
            // `&mut self`.
            drop(unsafe { Box::from_raw(slice) });
        }
    }
}
