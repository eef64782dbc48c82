//! The guest's memory as the builder sees it: pages addressed by pfn
//! (guest pseudo-physical frame number).
//!
//! An implementation over privcmd maps the pages by their mfns (the list the
//! caller got from `populate_physmap`); [`VecGuestMemory`] keeps them in a
//! `Vec` for tests and dry runs.

use thiserror::Error;

use crate::PAGE_SIZE;

/// Write access to a guest's memory by pseudo-physical frame number.
pub trait GuestMemory {
    /// What a failed access reports.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Writes `data` at guest pseudo-physical address
    /// `pfn * PAGE_SIZE + offset`. The data may run on into the following
    /// pfns; the builder always passes `offset < PAGE_SIZE`.
    fn write(&mut self, pfn: u64, offset: u64, data: &[u8]) -> Result<(), Self::Error>;

    /// Fills `count` whole pages from `pfn` on with zeroes.
    fn zero(&mut self, pfn: u64, count: u64) -> Result<(), Self::Error>;
}

/// An access outside a [`VecGuestMemory`].
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("guest memory access of {len} bytes at pfn {pfn:#x} offset {offset:#x} is outside the guest's {pages} pages")]
pub struct OutOfRange {
    /// First pfn of the access.
    pub pfn: u64,
    /// Offset from the start of that pfn.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Pages the memory holds.
    pub pages: u64,
}

/// Guest memory in a `Vec<u8>`: pfn `n` is bytes `n * 4096 ..`.
#[derive(Clone, Debug)]
pub struct VecGuestMemory {
    bytes: Vec<u8>,
}

impl VecGuestMemory {
    /// `pages` zeroed pages.
    ///
    /// # Panics
    ///
    /// If the size does not fit `usize`.
    pub fn new(pages: u64) -> Self {
        let len = usize::try_from(pages * PAGE_SIZE).unwrap_or(usize::MAX);
        Self {
            bytes: vec![0; len],
        }
    }

    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.bytes.len() as u64 / PAGE_SIZE
    }

    /// The bytes at `pfn * PAGE_SIZE + offset`, if they lie inside.
    pub fn read(&self, pfn: u64, offset: u64, len: u64) -> Option<&[u8]> {
        let range = self.range(pfn, offset, len).ok()?;
        Some(&self.bytes[range])
    }

    /// The page `pfn`.
    pub fn page(&self, pfn: u64) -> Option<&[u8]> {
        self.read(pfn, 0, PAGE_SIZE)
    }

    fn range(&self, pfn: u64, offset: u64, len: u64) -> Result<std::ops::Range<usize>, OutOfRange> {
        let err = OutOfRange {
            pfn,
            offset,
            len,
            pages: self.pages(),
        };
        let start = pfn
            .checked_mul(PAGE_SIZE)
            .and_then(|a| a.checked_add(offset))
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(err)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= self.bytes.len())
            .ok_or(err)?;
        Ok(start..end)
    }
}

impl GuestMemory for VecGuestMemory {
    type Error = OutOfRange;

    fn write(&mut self, pfn: u64, offset: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let range = self.range(pfn, offset, data.len() as u64)?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn zero(&mut self, pfn: u64, count: u64) -> Result<(), OutOfRange> {
        let len = count.checked_mul(PAGE_SIZE).ok_or(OutOfRange {
            pfn,
            offset: 0,
            len: u64::MAX,
            pages: self.pages(),
        })?;
        let range = self.range(pfn, 0, len)?;
        self.bytes[range].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_span_pages_and_stay_inside() {
        let mut mem = VecGuestMemory::new(4);

        mem.write(1, 4090, &[7; 10]).unwrap();

        assert_eq!(mem.read(1, 4090, 6).unwrap(), &[7; 6]);
        assert_eq!(mem.read(2, 0, 4).unwrap(), &[7; 4]);
        assert!(mem.write(3, 4090, &[1; 10]).is_err());
        assert!(mem.zero(2, 3).is_err());
        mem.zero(1, 2).unwrap();
        assert!(mem.page(2).unwrap().iter().all(|&b| b == 0));
    }
}
