//! The one accessor for memory that another domain can write.
//!
//! A granted or mapped page may change under our feet at any moment, so no
//! Rust reference (`&`/`&mut`) into it is ever handed out: reads copy bytes
//! out with volatile loads, writes copy bytes in with volatile stores, and
//! index words use atomics. Callers copy a request out once and validate the
//! copy (no double fetch).

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Why an access to shared memory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedMemoryError {
    /// The access would reach outside the region.
    #[error("access of {len} bytes at offset {offset} is outside the {size}-byte shared region")]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the region.
        size: usize,
    },
    /// A write to a region mapped read-only.
    #[error("the shared region is mapped read-only")]
    ReadOnly,
    /// An atomic access at an offset that is not 4-byte aligned.
    #[error("offset {0} is not aligned for an atomic 32-bit access")]
    Unaligned(usize),
    /// A copy between two regions whose bytes overlap.
    #[error("the source and destination of a copy overlap")]
    Overlap,
}

/// A region of shared memory: base, length and whether we may write it.
///
/// It borrows the mapping that created it, which keeps the memory mapped
/// for as long as the accessor lives.
pub struct SharedMemory<'a> {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
    _mapping: std::marker::PhantomData<&'a ()>,
}

impl fmt::Debug for SharedMemory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish()
    }
}

// SAFETY: the accessor only does volatile and atomic accesses through a raw
// pointer into a mapping that outlives it; such accesses are sound from any
// thread, as with memory shared with another process.
unsafe impl Send for SharedMemory<'_> {}
// SAFETY: as for Send: no method hands out references into the memory.
unsafe impl Sync for SharedMemory<'_> {}

impl<'a> SharedMemory<'a> {
    /// Wraps `len` bytes at `base`.
    ///
    /// # Safety
    /// `base..base+len` must stay mapped and readable (and writable if
    /// `writable`) for `'a`, and must not be accessed through Rust
    /// references by anyone in this process while the accessor lives.
    /// `base` must be 8-byte aligned (pages are).
    pub unsafe fn new(base: NonNull<u8>, len: usize, writable: bool) -> Self {
        Self { base, len, writable, _mapping: std::marker::PhantomData }
    }

    /// Size of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The base address, for handing to the kernel (e.g. grant copy).
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// A sub-region of `len` bytes at `offset`.
    pub fn subregion(&self, offset: usize, len: usize) -> Result<SharedMemory<'a>, SharedMemoryError> {
        self.check(offset, len)?;
        if offset % 8 != 0 {
            return Err(SharedMemoryError::Unaligned(offset));
        }
        // SAFETY: the range is inside ours (checked above), so the same
        // mapping keeps it valid for 'a; alignment checked.
        Ok(unsafe { SharedMemory::new(NonNull::new_unchecked(self.base.as_ptr().add(offset)), len, self.writable) })
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), SharedMemoryError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(SharedMemoryError::OutOfBounds { offset, len, size: self.len }),
        }
    }

    /// Copies `buf.len()` bytes out of the region at `offset`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SharedMemoryError> {
        self.check(offset, buf.len())?;
        // SAFETY: the source range is inside the mapped region (checked);
        // `buf` is our own exclusive memory.
        unsafe { volatile_copy(self.base.as_ptr().add(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into the region at `offset`.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Result<(), SharedMemoryError> {
        if !self.writable {
            return Err(SharedMemoryError::ReadOnly);
        }
        self.check(offset, buf.len())?;
        // SAFETY: the destination range is inside the writable mapped region
        // (checked); `buf` is our own memory and cannot overlap it, since no
        // reference into the region exists.
        unsafe { volatile_copy(buf.as_ptr(), self.base.as_ptr().add(offset), buf.len()) };
        Ok(())
    }

    /// Copies a `T` out of the region at `offset`, once.
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, SharedMemoryError> {
        let mut v = T::new_zeroed();
        self.read(offset, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Copies `v` into the region at `offset`.
    pub fn write_obj<T: IntoBytes + Immutable>(&self, offset: usize, v: &T) -> Result<(), SharedMemoryError> {
        self.write(offset, v.as_bytes())
    }

    fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, SharedMemoryError> {
        self.check(offset, 4)?;
        if offset % 4 != 0 {
            return Err(SharedMemoryError::Unaligned(offset));
        }
        // SAFETY: in bounds and 4-aligned (checked; base is 8-aligned); the
        // memory stays mapped for the accessor's life; all our accesses to
        // this word are atomic, so an `&AtomicU32` to it is sound even while
        // the peer writes it.
        Ok(unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast::<u32>()) })
    }

    /// Atomically loads the 32-bit word at `offset`.
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, SharedMemoryError> {
        Ok(self.atomic_u32(offset)?.load(order))
    }

    /// Atomically stores the 32-bit word at `offset`.
    pub fn store_u32(&self, offset: usize, v: u32, order: Ordering) -> Result<(), SharedMemoryError> {
        if !self.writable {
            return Err(SharedMemoryError::ReadOnly);
        }
        self.atomic_u32(offset)?.store(v, order);
        Ok(())
    }

    /// The region as the shared page(s) of a ring (`io/ring.h`), for
    /// [`FrontRing`](crate::ring::FrontRing) or [`BackRing`](crate::ring::BackRing).
    /// Fails on a read-only region: both ends of a ring write to it.
    pub fn ring_mem(&self) -> Result<crate::ring::SharedRingMem<'a>, crate::ring::RingError> {
        if !self.writable {
            return Err(crate::ring::RingError::ReadOnly);
        }
        // SAFETY: the region is mapped readable and writable for 'a (our own
        // constructor's contract), and it is only ever accessed through raw
        // pointers (this accessor and the ring's), never through references.
        unsafe { crate::ring::SharedRingMem::new(self.base, self.len) }
    }

    /// Copies `len` bytes at `src_offset` of `src` into this region at
    /// `offset`: shared memory to shared memory (e.g. a mapped file's
    /// page cache to a frontend's granted page), with no copy in between.
    pub fn copy_from(
        &self,
        offset: usize,
        src: &SharedMemory<'_>,
        src_offset: usize,
        len: usize,
    ) -> Result<(), SharedMemoryError> {
        if !self.writable {
            return Err(SharedMemoryError::ReadOnly);
        }
        self.check(offset, len)?;
        src.check(src_offset, len)?;
        // Both ranges are inside their regions (checked), so these sums do
        // not overflow.
        let dst = self.base.as_ptr() as usize + offset;
        let from = src.base.as_ptr() as usize + src_offset;
        if len > 0 && dst < from + len && from < dst + len {
            return Err(SharedMemoryError::Overlap);
        }
        // SAFETY: the source range is inside `src`'s mapped region and the
        // destination inside our writable one (checked), the two do not
        // overlap (checked), and both are only accessed through raw
        // pointers (the contract of `new`).
        unsafe { volatile_copy(src.base.as_ptr().add(src_offset), self.base.as_ptr().add(offset), len) };
        Ok(())
    }

    /// Fills the region with zeroes.
    pub fn zero(&self) -> Result<(), SharedMemoryError> {
        const ZEROES: [u8; 4096] = [0; 4096];
        let mut off = 0;
        while off < self.len {
            let n = (self.len - off).min(ZEROES.len());
            self.write(off, &ZEROES[..n])?;
            off += n;
        }
        Ok(())
    }
}

/// Copies `len` bytes with volatile accesses: 64 bytes at a time (four
/// 16-byte vector loads, then four stores) where both ends share their
/// alignment modulo 16, else 8 bytes at a time where they share it modulo
/// 8, and bytes around those.
///
/// # Safety
/// `src..src+len` must be readable and `dst..dst+len` writable, and the two
/// ranges must not overlap.
unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if (src as usize) % 16 == (dst as usize) % 16 {
        use core::arch::x86_64::__m128i;
        let head = ((16 - (src as usize) % 16) % 16).min(len);
        while i < head {
            // SAFETY: i < len, inside both ranges per the caller's contract.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + 64 <= len {
            // SAFETY: 64 bytes at offset i are inside both ranges, and both
            // pointers are 16-aligned here (same alignment, advanced
            // together), as __m128i needs.
            unsafe {
                let s = src.add(i).cast::<__m128i>();
                let d = dst.add(i).cast::<__m128i>();
                let (a, b, c, e) =
                    (s.read_volatile(), s.add(1).read_volatile(), s.add(2).read_volatile(), s.add(3).read_volatile());
                d.write_volatile(a);
                d.add(1).write_volatile(b);
                d.add(2).write_volatile(c);
                d.add(3).write_volatile(e);
            }
            i += 64;
        }
    }
    if (src as usize + i) % 8 == (dst as usize + i) % 8 {
        while i < len && (src as usize + i) % 8 != 0 {
            // SAFETY: i < len, inside both ranges per the caller's contract.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
        while i + 8 <= len {
            // SAFETY: 8 bytes at offset i are inside both ranges, and both
            // pointers are 8-aligned here (same alignment, advanced together).
            unsafe {
                let w = src.add(i).cast::<u64>().read_volatile();
                dst.add(i).cast::<u64>().write_volatile(w);
            }
            i += 8;
        }
    }
    while i < len {
        // SAFETY: i < len, inside both ranges per the caller's contract.
        unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_bounds() {
        let mut page = vec![0u64; 512];
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `page` outlives `mem` and is not touched through references meanwhile.
        let mem = unsafe { SharedMemory::new(base, 4096, true) };
        mem.write(3, b"hello, granted world").unwrap();
        let mut out = [0u8; 20];
        mem.read(3, &mut out).unwrap();
        assert_eq!(&out, b"hello, granted world");
        mem.store_u32(8, 0xdead_beef, Ordering::Release).unwrap();
        assert_eq!(mem.load_u32(8, Ordering::Acquire).unwrap(), 0xdead_beef);
        assert!(matches!(mem.read(4090, &mut out), Err(SharedMemoryError::OutOfBounds { .. })));
        assert!(matches!(mem.read(usize::MAX, &mut out), Err(SharedMemoryError::OutOfBounds { .. })));
        assert_eq!(mem.load_u32(6, Ordering::Relaxed), Err(SharedMemoryError::Unaligned(6)));
        let sub = mem.subregion(8, 8).unwrap();
        assert_eq!(sub.load_u32(0, Ordering::Relaxed).unwrap(), 0xdead_beef);
        assert!(sub.read(4, &mut [0u8; 8]).is_err());
    }

    #[test]
    fn read_only_refuses_writes() {
        let mut page = vec![0u64; 512];
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: as above.
        let mem = unsafe { SharedMemory::new(base, 4096, false) };
        assert_eq!(mem.write(0, b"x"), Err(SharedMemoryError::ReadOnly));
        assert_eq!(mem.store_u32(0, 1, Ordering::Relaxed), Err(SharedMemoryError::ReadOnly));
    }

    #[test]
    fn copies_every_alignment_and_length() {
        let mut page = vec![0u64; 1024];
        let base = NonNull::new(page.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: as above.
        let mem = unsafe { SharedMemory::new(base, 8192, true) };
        let src: Vec<u8> = (0..8192u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for offset in 0..40 {
            for shift in 0..17 {
                for len in [0, 1, 7, 15, 16, 63, 64, 65, 127, 200, 1000, 4096] {
                    mem.zero().unwrap();
                    let data = &src[shift..shift + len];
                    mem.write(offset, data).unwrap();
                    let mut out = vec![0u8; len + 17];
                    mem.read(offset, &mut out[shift..shift + len]).unwrap();
                    assert_eq!(&out[shift..shift + len], data, "offset {offset} shift {shift} len {len}");
                    // Nothing around the range was touched.
                    let mut around = [0xffu8; 2];
                    if offset > 0 {
                        mem.read(offset - 1, &mut around[..1]).unwrap();
                        assert_eq!(around[0], 0);
                    }
                    mem.read(offset + len, &mut around[1..]).unwrap();
                    assert_eq!(around[1], 0);
                }
            }
        }
    }

    #[test]
    fn copies_between_regions() {
        let mut a = vec![0u64; 512];
        let mut b = vec![0u64; 512];
        let src: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        // SAFETY: `a` and `b` outlive the accessors and are not touched
        // through references meanwhile.
        let (from, to) = unsafe {
            (
                SharedMemory::new(NonNull::new(a.as_mut_ptr().cast::<u8>()).unwrap(), 4096, true),
                SharedMemory::new(NonNull::new(b.as_mut_ptr().cast::<u8>()).unwrap(), 4096, true),
            )
        };
        from.write(0, &src).unwrap();
        to.copy_from(100, &from, 7, 3000).unwrap();
        let mut out = vec![0u8; 4096];
        to.read(0, &mut out).unwrap();
        assert_eq!(&out[100..3100], &src[7..3007]);
        assert!(out[..100].iter().chain(&out[3100..]).all(|&x| x == 0), "nothing around the range was touched");
        assert!(matches!(to.copy_from(1100, &from, 7, 3000), Err(SharedMemoryError::OutOfBounds { .. })));
        assert!(matches!(to.copy_from(0, &from, 1100, 3000), Err(SharedMemoryError::OutOfBounds { .. })));
        assert_eq!(from.copy_from(0, &from, 100, 200), Err(SharedMemoryError::Overlap));
        assert_eq!(from.copy_from(0, &from, 200, 200), Ok(()), "adjacent ranges do not overlap");
        let sub = from.subregion(8, 64).unwrap();
        assert_eq!(sub.copy_from(0, &from, 12, 8), Err(SharedMemoryError::Overlap));
        assert_eq!(sub.copy_from(0, &from, 16, 8), Ok(()));
        // SAFETY: as above (a read-only view of `b`).
        let read_only = unsafe { SharedMemory::new(NonNull::new(b.as_mut_ptr().cast::<u8>()).unwrap(), 4096, false) };
        assert_eq!(read_only.copy_from(0, &from, 0, 1), Err(SharedMemoryError::ReadOnly));
    }
}
