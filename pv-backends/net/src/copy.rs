//! Grant copies between a frontend's pages and a buffer of the backend's
//! own ([`CopyMemory`]), for both directions of the data path.
//!
//! The buffer's end of each copy is given by address when the buffer is
//! plain memory, or by reference when its pages are granted to the
//! backend's own domain: then a span that crosses one of the buffer's page
//! boundaries becomes two segments, as a grant copy stays within a page on
//! each end.

use std::ops::Range;

use hypercall_abi::platform::{CopyMemory, GrantCopyOp, GrantCopyPtr, GrantError, GrantMap};
use hypercall_abi::xen::grant_table::GNTST_GENERAL_ERROR;
use hypercall_abi::xen::{DomId, GrantRef, PAGE_SIZE};

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the frontend's page into the buffer (transmit).
    FromFrontend,
    /// From the buffer into the frontend's page (receive).
    ToFrontend,
}

/// One copy between `len` bytes at `offset` in the frontend's page `gref`
/// and the bytes `local` of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The frontend's reference.
    pub gref: GrantRef,
    /// Byte offset in the frontend's page.
    pub offset: u16,
    /// The buffer's bytes; at most a page.
    pub local: Range<usize>,
}

/// Performs `spans` between domain `domid`'s pages and `buf` with one
/// batch of grant copies. Returns each span's status: `Ok`, or the first
/// failure of its segments (`GNTST_general_error` for a span whose local
/// range is not in `buf`, longer than a page, or not after the span
/// before it: spans must come in increasing, disjoint order). Fails only
/// if the batch could not be submitted.
pub fn copy_spans<G: GrantMap + ?Sized>(
    grants: &G,
    domid: DomId,
    buf: &mut dyn CopyMemory,
    direction: Direction,
    spans: &[Span],
) -> Result<Vec<Result<(), i16>>, GrantError> {
    let mut status = vec![Ok(()); spans.len()];
    let mut ops = Vec::with_capacity(spans.len() * 2);
    // The span of each op.
    let mut owner = Vec::with_capacity(spans.len() * 2);
    let len = buf.bytes().len();
    let mut after = 0;
    let mut usable = |span: &Span| {
        let ok = span.local.start >= after
            && span.local.start <= span.local.end
            && span.local.end <= len
            && span.local.len() <= PAGE_SIZE;
        if ok {
            after = span.local.end;
        }
        ok
    };
    let frontend = |span: &Span, skip: usize| GrantCopyPtr::Grant {
        domid,
        gref: span.gref,
        // A span is at most a page (checked), so this fits; an offset
        // that runs past the page is refused by the platform.
        offset: span.offset.saturating_add(skip as u16),
    };
    match buf.own_grants() {
        Some((own, refs)) => {
            for (k, span) in spans.iter().enumerate() {
                if !usable(span) {
                    status[k] = Err(GNTST_GENERAL_ERROR);
                    continue;
                }
                let mut pos = span.local.start;
                while pos < span.local.end {
                    let in_page = pos % PAGE_SIZE;
                    let n = (span.local.end - pos).min(PAGE_SIZE - in_page);
                    let Some(&gref) = refs.get(pos / PAGE_SIZE) else {
                        status[k] = Err(GNTST_GENERAL_ERROR);
                        break;
                    };
                    let mine = GrantCopyPtr::Grant {
                        domid: own,
                        gref,
                        offset: in_page as u16,
                    };
                    let theirs = frontend(span, pos - span.local.start);
                    let (source, dest) = match direction {
                        Direction::FromFrontend => (theirs, mine),
                        Direction::ToFrontend => (mine, theirs),
                    };
                    ops.push(GrantCopyOp {
                        source,
                        dest,
                        len: n as u16,
                        status: Ok(()),
                    });
                    owner.push(k);
                    pos += n;
                }
            }
        }
        None => {
            let mut rest = buf.bytes_mut();
            let mut rest_start = 0;
            for (k, span) in spans.iter().enumerate() {
                if !usable(span) {
                    status[k] = Err(GNTST_GENERAL_ERROR);
                    continue;
                }
                // In range and after the previous span (checked).
                let (_, tail) = std::mem::take(&mut rest).split_at_mut(span.local.start - rest_start);
                let (chunk, tail) = tail.split_at_mut(span.local.len());
                rest = tail;
                rest_start = span.local.end;
                let theirs = frontend(span, 0);
                let (source, dest) = match direction {
                    Direction::FromFrontend => (theirs, GrantCopyPtr::LocalMut(chunk)),
                    Direction::ToFrontend => (GrantCopyPtr::Local(chunk), theirs),
                };
                ops.push(GrantCopyOp {
                    source,
                    dest,
                    len: span.local.len() as u16,
                    status: Ok(()),
                });
                owner.push(k);
            }
        }
    }
    grants.copy(&mut ops)?;
    for (op, k) in ops.iter().zip(owner) {
        if let (Err(e), Ok(())) = (op.status, status[k]) {
            status[k] = Err(e);
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::grant_table::GNTST_BAD_GNTREF;

    use super::*;
    use crate::memgrant::MemGrantTable;

    /// A buffer whose pages the table (standing for the own domain's
    /// grants) holds, so that copies name them by reference.
    struct Granted<'a> {
        table: &'a MemGrantTable,
        refs: Vec<GrantRef>,
        shadow: Vec<u8>,
    }

    impl Granted<'_> {
        fn sync_from_table(&mut self) {
            for (i, gref) in self.refs.iter().enumerate() {
                self.table.read_page(*gref, 0, &mut self.shadow[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
            }
        }
    }

    impl CopyMemory for Granted<'_> {
        fn bytes(&self) -> &[u8] {
            &self.shadow
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.shadow
        }
        fn own_grants(&self) -> Option<(DomId, &[GrantRef])> {
            Some((7, &self.refs))
        }
    }

    #[test]
    fn spans_reach_plain_memory_by_address() {
        let table = MemGrantTable::new(7);
        let (a, b) = (table.grant(false), table.grant(true));
        table.write_page(a, 100, &[5; 300]);
        let mut buf = vec![1u8; 1000];
        let spans = [
            Span { gref: a, offset: 100, local: 10..310 },
            Span { gref: 999, offset: 0, local: 400..410 },
            Span { gref: a, offset: 0, local: 300..320 },
        ];

        let status = copy_spans(&table, 7, &mut buf, Direction::FromFrontend, &spans).unwrap();
        let out = copy_spans(&table, 7, &mut buf, Direction::ToFrontend, &[Span { gref: b, offset: 8, local: 0..20 }]).unwrap();

        assert_eq!(status, vec![Ok(()), Err(GNTST_BAD_GNTREF), Err(GNTST_GENERAL_ERROR)]);
        assert_eq!(buf[10..310], [5; 300]);
        assert_eq!(buf[400..410], [1; 10]);
        assert_eq!(out, vec![Ok(())]);
        let mut page = [0u8; 20];
        table.read_page(b, 8, &mut page);
        assert_eq!(page[..10], [1; 10]);
        assert_eq!(page[10..], [5; 10]);
        assert_eq!(table.copy_batches(), 2);
    }

    #[test]
    fn spans_across_own_pages_are_split_in_two_segments() {
        let table = MemGrantTable::new(7);
        let theirs = table.grant(false);
        let data: Vec<u8> = (0..PAGE_SIZE).map(|i| i as u8).collect();
        table.write_page(theirs, 0, &data);
        let refs = vec![table.grant(true), table.grant(true)];
        let mut buf = Granted { table: &table, refs, shadow: vec![0; 2 * PAGE_SIZE] };
        let start = PAGE_SIZE - 100;

        let status = copy_spans(
            &table,
            7,
            &mut buf,
            Direction::FromFrontend,
            &[Span { gref: theirs, offset: 0, local: start..start + PAGE_SIZE }],
        )
        .unwrap();
        buf.sync_from_table();

        assert_eq!(status, vec![Ok(())]);
        assert_eq!(table.copy_batches(), 1);
        assert_eq!(buf.shadow[start..start + PAGE_SIZE], data[..]);
        assert_eq!(buf.shadow[..start], vec![0; start][..]);
    }
}
