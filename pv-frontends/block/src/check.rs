//! `rblkfront check`: write a pseudo-random pattern across the disk with
//! requests of mixed sizes, flush, read it back with other sizes and
//! verify every byte.
//!
//! The pattern is a function of the seed and the byte offset only, so the
//! read-back may cut the disk differently from the writes.

use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, GrantShare, Xenstore};

use crate::{BlockFrontend, Error};

/// Request sizes, in bytes, cycled through: a sector, a page, sectors not
/// filling a page, the 11 pages of a direct request, and indirect sizes.
/// Each is rounded up to the logical sector size.
const SIZES: [usize; 9] = [512, 4096, 1536, 11 * 4096, 65536, 128 * 1024, 1 << 20, 3 * 4096 + 512, 4 << 20];

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Bytes from the start of the disk (the whole disk if `None`, or if
    /// larger).
    pub bytes: Option<u64>,
    /// The pattern's seed.
    pub seed: u64,
}

/// A passed check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckReport {
    /// Bytes written and verified.
    pub bytes: u64,
    /// Write throughput, including the flush, in MB/s (10^6 bytes).
    pub write_mb_s: f64,
    /// Read throughput in MB/s.
    pub read_mb_s: f64,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The device failed.
    #[error(transparent)]
    Device(#[from] Error),
    /// Nothing to check.
    #[error("the disk (or --bytes) holds less than one {0}-byte sector")]
    Empty(u32),
    /// The disk is read-only.
    #[error("the disk is read-only: a write check needs a writable disk")]
    ReadOnly,
    /// A byte read back differs from the one written.
    #[error("data mismatch at byte {offset}: wrote {wrote:#04x}, read {read:#04x}")]
    Mismatch {
        /// Byte offset on the disk.
        offset: u64,
        /// What was written.
        wrote: u8,
        /// What was read.
        read: u8,
    },
}

/// `splitmix64`: one well-mixed word per input.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of the disk bytes from `offset` (a
/// multiple of 8).
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, word) in (0u64..).zip(buf.chunks_mut(8)) {
        let value = mix(seed ^ (offset / 8 + i)).to_le_bytes();
        word.copy_from_slice(&value[..word.len()]);
    }
}

/// Runs the check on a connected device.
pub fn run<G: GrantShare, E: EventChannels, S: Xenstore>(
    dev: &mut BlockFrontend<G, E, S>,
    opts: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    if !dev.is_connected() {
        return Err(Error::NotConnected.into());
    }
    if dev.read_only() {
        return Err(CheckError::ReadOnly);
    }
    let sector_size = u64::from(dev.sector_size());
    let total = opts.bytes.map_or(dev.size(), |b| b.min(dev.size())) / sector_size * sector_size;
    if total == 0 {
        return Err(CheckError::Empty(dev.sector_size()));
    }
    let sizes: Vec<u64> = SIZES.iter().map(|&s| (s as u64).div_ceil(sector_size) * sector_size).collect();
    let largest = sizes.iter().copied().max().unwrap_or(sector_size);
    let mut buf = vec![0u8; largest as usize];
    let mut expected = vec![0u8; largest as usize];

    log::info!("writing {total} bytes");
    let started = Instant::now();
    let mut progress = Progress::new("written", total);
    for (offset, len) in chunks(total, &sizes, 0) {
        let chunk = &mut buf[..len];
        pattern(opts.seed, offset, chunk);
        dev.write(offset / 512, chunk)?;
        progress.update(offset + len as u64);
    }
    dev.flush()?;
    let write_time = started.elapsed();

    log::info!("reading back {total} bytes");
    let started = Instant::now();
    let mut progress = Progress::new("verified", total);
    for (offset, len) in chunks(total, &sizes, 3) {
        let chunk = &mut buf[..len];
        dev.read(offset / 512, chunk)?;
        let want = &mut expected[..len];
        pattern(opts.seed, offset, want);
        if let Some(i) = (0..len).find(|&i| chunk.get(i) != want.get(i)) {
            return Err(CheckError::Mismatch {
                offset: offset + i as u64,
                wrote: want.get(i).copied().unwrap_or_default(),
                read: chunk.get(i).copied().unwrap_or_default(),
            });
        }
        progress.update(offset + len as u64);
    }
    let read_time = started.elapsed();
    Ok(CheckReport { bytes: total, write_mb_s: rate(total, write_time), read_mb_s: rate(total, read_time) })
}

/// `(offset, len)` pieces covering `0..total`, their sizes cycling
/// through `sizes` from index `start`.
fn chunks(total: u64, sizes: &[u64], start: usize) -> impl Iterator<Item = (u64, usize)> + '_ {
    let mut offset = 0;
    sizes.iter().cycle().skip(start).map_while(move |&size| {
        if offset >= total {
            return None;
        }
        let len = size.min(total - offset);
        let piece = (offset, len as usize);
        offset += len;
        Some(piece)
    })
}

fn rate(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64().max(1e-9)
}

/// Logs progress every tenth of the way.
struct Progress {
    what: &'static str,
    total: u64,
    next: u64,
}

impl Progress {
    fn new(what: &'static str, total: u64) -> Self {
        Progress { what, total, next: total / 10 }
    }

    fn update(&mut self, done: u64) {
        if done >= self.next && done < self.total {
            log::info!("{}% {}", done * 100 / self.total, self.what);
            self.next = done + self.total / 10;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_depends_on_offset_not_on_cutting() {
        let mut whole = vec![0u8; 8192];
        pattern(7, 4096, &mut whole);
        let mut halves = vec![0u8; 8192];
        let (a, b) = halves.split_at_mut(512);
        pattern(7, 4096, a);
        pattern(7, 4096 + 512, b);

        assert_eq!(whole, halves);
        let mut other = vec![0u8; 8192];
        pattern(8, 4096, &mut other);
        assert_ne!(whole, other, "the seed changes the pattern");
    }

    #[test]
    fn chunks_cover_the_range_with_mixed_sizes() {
        let sizes = [512u64, 4096, 1536];

        let pieces: Vec<_> = chunks(10_240, &sizes, 1).collect();

        assert_eq!(pieces, [(0, 4096), (4096, 1536), (5632, 512), (6144, 4096)]);
    }
}
