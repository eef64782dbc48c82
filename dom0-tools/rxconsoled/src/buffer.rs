//! Guest output waiting for the pty: what xenconsoled's `struct buffer`
//! holds, bounded by the console's `limit` node.

use std::collections::VecDeque;

/// What to do with output that arrives faster than the pty's reader
/// takes it (`xenconsoled --overflow-data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Keep reading the ring and drop the middle of the buffered output
    /// (xenconsoled's default): the guest never waits for a reader.
    #[default]
    Discard,
    /// Stop reading the ring while the buffer is full: the guest waits
    /// until a reader takes the output.
    Keep,
}

/// The limit used when the console has no (or a zero) `limit` node:
/// libxl's `LIBXL_XENCONSOLE_LIMIT`. (xenconsoled then buffers without
/// bound; a guest must not be able to make dom0 do that.)
pub const DEFAULT_LIMIT: usize = 1024 * 1024;

/// The largest `limit` honoured; the node is in the guest's writable
/// console directory, so its value is the guest's to choose.
pub const MAX_LIMIT: usize = 16 * 1024 * 1024;

/// Output bytes waiting for the pty, oldest first.
#[derive(Debug)]
pub struct OutputBuffer {
    data: VecDeque<u8>,
    limit: usize,
    overflow: Overflow,
}

impl OutputBuffer {
    /// An empty buffer holding about `limit` bytes (see [`DEFAULT_LIMIT`]
    /// and [`MAX_LIMIT`]).
    pub fn new(limit: Option<usize>, overflow: Overflow) -> Self {
        let limit = match limit {
            None | Some(0) => DEFAULT_LIMIT,
            Some(n) => n.min(MAX_LIMIT),
        };
        OutputBuffer {
            data: VecDeque::new(),
            limit,
            overflow,
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether more output may be read from the ring now.
    pub fn has_room(&self) -> bool {
        self.overflow == Overflow::Discard || self.data.len() < self.limit
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// How many bytes are waiting.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Appends output. With [`Overflow::Discard`], once more than 5/4 of
    /// the limit is waiting, the bytes between half the limit and the
    /// limit go, as xenconsoled drops the middle: the start of the
    /// backlog and the newest output survive.
    pub fn push(&mut self, bytes: &[u8]) {
        self.data.extend(bytes);
        if self.overflow == Overflow::Discard && self.data.len() > self.limit / 4 * 5 {
            self.data.drain(self.limit / 2..self.limit);
        }
    }

    /// The oldest waiting bytes, contiguous (at most all of them).
    pub fn front(&self) -> &[u8] {
        self.data.as_slices().0
    }

    /// Drops the `n` oldest bytes (written to the pty).
    pub fn consume(&mut self, n: usize) {
        self.data.drain(..n.min(self.data.len()));
        if self.data.is_empty() && self.data.capacity() > self.limit {
            self.data.shrink_to(self.limit);
        }
    }

    /// Everything waiting, in order (for tests and the final flush).
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_zero_and_huge_limits_are_bounded() {
        assert_eq!(
            OutputBuffer::new(None, Overflow::Discard).limit(),
            DEFAULT_LIMIT
        );
        assert_eq!(
            OutputBuffer::new(Some(0), Overflow::Discard).limit(),
            DEFAULT_LIMIT
        );
        assert_eq!(
            OutputBuffer::new(Some(usize::MAX), Overflow::Discard).limit(),
            MAX_LIMIT
        );
        assert_eq!(OutputBuffer::new(Some(4096), Overflow::Keep).limit(), 4096);
    }

    #[test]
    fn discard_drops_the_middle_and_keeps_head_and_tail() {
        let mut b = OutputBuffer::new(Some(8), Overflow::Discard);

        b.push(b"0123456789");
        b.push(b"ab");

        // 12 > 10 (5/4 of 8): bytes 4..8 go.
        assert_eq!(b.to_vec(), b"012389ab");
        assert!(b.has_room());
    }

    #[test]
    fn keep_stops_at_the_limit_until_consumed() {
        let mut b = OutputBuffer::new(Some(4), Overflow::Keep);

        b.push(b"abcdef");
        let full = !b.has_room();
        let n = b.front().len().min(3);
        b.consume(n);

        assert!(full);
        assert_eq!(b.to_vec(), b"def");
        assert!(b.has_room());
        b.consume(10);
        assert!(b.is_empty());
    }
}
