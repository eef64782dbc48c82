//! Memory mapped from a Xen device, seen only through
//! [`SharedMemory`].

use std::fs::File;
use std::io;
use std::ptr::NonNull;

use hypercall_abi::platform::SharedMemory;
use memmap2::{MmapOptions, MmapRaw};

/// A `MAP_SHARED` mapping of a device (gntalloc, gntdev, privcmd), unmapped
/// on drop. Its memory is shared with another domain, so it is never
/// exposed as a Rust slice.
#[derive(Debug)]
pub(crate) struct DeviceMapping {
    map: MmapRaw,
    writable: bool,
}

impl DeviceMapping {
    /// `mmap(NULL, len, PROT_READ[|PROT_WRITE], MAP_SHARED, file, offset)`.
    pub(crate) fn new(file: &File, offset: u64, len: usize, writable: bool) -> io::Result<Self> {
        let mut options = MmapOptions::new();
        options.offset(offset).len(len);
        let map = if writable { options.map_raw(file) } else { options.map_raw_read_only(file) }?;
        Ok(Self { map, writable })
    }

    /// Wraps an existing mapping (e.g. an anonymous one).
    pub(crate) fn from_raw(map: MmapRaw, writable: bool) -> Self {
        Self { map, writable }
    }

    /// The start address, for the kernel.
    pub(crate) fn addr(&self) -> u64 {
        self.map.as_mut_ptr() as u64
    }

    /// The start address.
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Whether it was mapped writable.
    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The volatile accessor for the mapping.
    pub(crate) fn memory(&self) -> SharedMemory<'_> {
        let base = NonNull::new(self.map.as_mut_ptr()).unwrap_or(NonNull::dangling());
        // SAFETY: `map` is a live mapping of `len()` bytes, readable (and
        // writable if `writable`: it was mapped with PROT_WRITE then), that
        // lives as long as `self`, which the accessor borrows. This crate
        // never creates Rust references into it. mmap returns page-aligned
        // (so 8-aligned) addresses; a non-empty mapping is never at null
        // (and an empty one has len 0, so `dangling` is never accessed).
        unsafe { SharedMemory::new(base, self.map.len(), self.writable) }
    }
}
