//! Validation of block requests copied off the ring.
//!
//! The frontend is untrusted: every request is checked here, on the copy
//! the ring handed out, before any grant is mapped or any byte of the disk
//! is touched. The checks and the status each failure earns follow Linux's
//! xen-blkback, which is what xen-blkfront expects:
//!
//! | request | status |
//! |---|---|
//! | unknown or reserved `operation` | `BLKIF_RSP_EOPNOTSUPP` |
//! | discard on a disk that cannot discard | `BLKIF_RSP_EOPNOTSUPP` |
//! | read/write with no segment, or more than the kind allows | `BLKIF_RSP_ERROR` |
//! | indirect with `indirect_op` neither read nor write | `BLKIF_RSP_ERROR` |
//! | segment with `first_sect > last_sect` or `last_sect >= 8` | `BLKIF_RSP_ERROR` |
//! | sector range past the end of the disk, or overflowing | `BLKIF_RSP_ERROR` |
//! | range not aligned to a 4096-byte logical sector | `BLKIF_RSP_ERROR` |
//! | write, flush, barrier or discard on a read-only disk | `BLKIF_RSP_ERROR` |
//!
//! Sector numbers and `first_sect`/`last_sect` are in 512-byte units
//! whatever the disk's logical sector size (`xen/io/blkif.h`; blkfront
//! does not negotiate `feature-large-sector-size`).
//!
//! Responses echo the request's `id` and `operation`, except that an
//! indirect request is answered with its `indirect_op`, as blkback does and
//! blkfront checks.

use hypercall_abi::xen::blkif::{
    BlkifOp, BlkifRequest, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse, BlkifStatus,
    BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_SECTOR_SIZE, BLKIF_SECTORS_PER_PAGE,
};
use hypercall_abi::xen::GrantRef;

/// What the device allows, against which requests are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Disk size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size in bytes: 512 or 4096.
    pub sector_size: u32,
    /// Writes, flushes and discards are refused.
    pub read_only: bool,
    /// Discard is supported (`feature-discard`).
    pub discard: bool,
    /// Segments an indirect request may carry
    /// (`feature-max-indirect-segments`); at most
    /// [`BLKIF_MAX_INDIRECT_SEGMENTS`].
    pub max_indirect_segments: usize,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `operation` is not one this backend implements.
    #[error("operation {0} is unknown or reserved")]
    UnknownOperation(u8),
    /// Discard on a disk that cannot discard.
    #[error("discard is not supported by this disk")]
    DiscardUnsupported,
    /// An indirect request's `indirect_op` is neither read nor write.
    #[error("indirect operation {0} is neither read nor write")]
    BadIndirectOperation(u8),
    /// A read or write without segments.
    #[error("a read or write request carries no segment")]
    NoSegments,
    /// More segments than the request kind allows.
    #[error("{nr_segments} segments, more than the {max} allowed")]
    TooManySegments {
        /// Segments in the request.
        nr_segments: usize,
        /// Most allowed.
        max: usize,
    },
    /// A segment's sector range is inverted or leaves its page.
    #[error("segment {index} covers sectors {first_sect}..={last_sect}, not within one page")]
    BadSegment {
        /// Index of the segment.
        index: usize,
        /// Its `first_sect`.
        first_sect: u8,
        /// Its `last_sect`.
        last_sect: u8,
    },
    /// The sector range overflows or passes the end of the disk.
    #[error("sectors {sector}+{nr_sectors} lie beyond the end of the {disk_sectors}-sector disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of 512-byte sectors.
        nr_sectors: u64,
        /// Disk size in 512-byte sectors.
        disk_sectors: u64,
    },
    /// The range is not aligned to the logical sector size.
    #[error("sectors {sector}+{nr_sectors} are not aligned to the {sector_size}-byte logical sector")]
    Misaligned {
        /// First sector.
        sector: u64,
        /// Number of 512-byte sectors.
        nr_sectors: u64,
        /// Logical sector size.
        sector_size: u32,
    },
    /// A write, flush, barrier or discard on a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
}

impl RequestError {
    /// The status the request is answered with.
    pub fn status(&self) -> BlkifStatus {
        match self {
            RequestError::UnknownOperation(_) | RequestError::DiscardUnsupported => BlkifStatus::Eopnotsupp,
            _ => BlkifStatus::Error,
        }
    }
}

/// Direction of a data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Disk to guest pages.
    Read,
    /// Guest pages to disk.
    Write,
}

/// A read or write whose segments are known and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRequest {
    /// Direction.
    pub op: IoOp,
    /// Flush the disk cache before writing (flush and barrier requests).
    pub preflush: bool,
    /// Flush the disk cache after writing (barrier requests).
    pub postflush: bool,
    /// First 512-byte sector.
    pub sector: u64,
    /// The data pages, consecutive on the disk.
    pub segments: Vec<BlkifRequestSegment>,
}

impl DataRequest {
    /// Total length in bytes.
    pub fn byte_len(&self) -> usize {
        self.segments.iter().map(BlkifRequestSegment::byte_len).sum()
    }

    /// Byte offset on the disk.
    pub fn byte_offset(&self) -> u64 {
        self.sector * BLKIF_SECTOR_SIZE as u64
    }
}

/// An indirect read or write whose segments still live in granted pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndirectRequest {
    /// Direction.
    pub op: IoOp,
    /// First 512-byte sector.
    pub sector: u64,
    /// Number of segments across the indirect pages.
    pub nr_segments: usize,
    /// Grants of the pages holding the segments, exactly as many as
    /// `nr_segments` needs.
    pub pages: Vec<GrantRef>,
}

/// A request that passed the checks that need nothing but the ring slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A read or write with direct segments.
    Data(DataRequest),
    /// A flush or barrier without data: flush the disk cache.
    Flush,
    /// Discard 512-byte sectors `sector .. sector + nr_sectors`.
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        nr_sectors: u64,
    },
    /// An indirect read or write: fetch its segments, then
    /// [`indirect_data`].
    Indirect(IndirectRequest),
}

/// The `operation` a response to `raw` carries: the request's own, or the
/// `indirect_op` of an indirect request.
pub fn response_operation(raw: &BlkifRequest) -> u8 {
    if raw.operation == BLKIF_OP_INDIRECT {
        raw.as_indirect().indirect_op
    } else {
        raw.operation
    }
}

/// The response to `raw` with `status`.
pub fn response(raw: &BlkifRequest, status: BlkifStatus) -> BlkifResponse {
    BlkifResponse::new(raw.id, response_operation(raw), status)
}

/// Checks a request copied off the ring.
pub fn parse(raw: &BlkifRequest, limits: &Limits) -> Result<Parsed, RequestError> {
    let op = BlkifOp::try_from(raw.operation).map_err(|_| RequestError::UnknownOperation(raw.operation))?;
    match op {
        BlkifOp::Read | BlkifOp::Write | BlkifOp::WriteBarrier | BlkifOp::FlushDiskcache => {
            let nr_segments = usize::from(raw.nr_segments);
            let segments = raw
                .seg
                .get(..nr_segments)
                .ok_or(RequestError::TooManySegments { nr_segments, max: BLKIF_MAX_SEGMENTS_PER_REQUEST })?;
            let io = if op == BlkifOp::Read { IoOp::Read } else { IoOp::Write };
            if segments.is_empty() {
                if matches!(op, BlkifOp::Read | BlkifOp::Write) {
                    return Err(RequestError::NoSegments);
                }
                if limits.read_only {
                    return Err(RequestError::ReadOnly);
                }
                return Ok(Parsed::Flush);
            }
            data_request(
                io,
                matches!(op, BlkifOp::WriteBarrier | BlkifOp::FlushDiskcache),
                op == BlkifOp::WriteBarrier,
                raw.sector_number,
                segments.to_vec(),
                limits,
            )
            .map(Parsed::Data)
        }
        BlkifOp::Discard => {
            if !limits.discard {
                return Err(RequestError::DiscardUnsupported);
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let discard = raw.as_discard();
            check_range(discard.sector_number, discard.nr_sectors, limits)?;
            Ok(Parsed::Discard { sector: discard.sector_number, nr_sectors: discard.nr_sectors })
        }
        BlkifOp::Indirect => {
            let indirect = raw.as_indirect();
            let io = match indirect.indirect_op {
                BLKIF_OP_READ => IoOp::Read,
                BLKIF_OP_WRITE => IoOp::Write,
                other => return Err(RequestError::BadIndirectOperation(other)),
            };
            let nr_segments = usize::from(indirect.nr_segments);
            if nr_segments == 0 {
                return Err(RequestError::NoSegments);
            }
            let max = limits.max_indirect_segments.min(BLKIF_MAX_INDIRECT_SEGMENTS);
            if nr_segments > max {
                return Err(RequestError::TooManySegments { nr_segments, max });
            }
            if io == IoOp::Write && limits.read_only {
                return Err(RequestError::ReadOnly);
            }
            let nr_pages = BlkifRequestIndirect::nr_indirect_pages(nr_segments);
            // nr_segments <= BLKIF_MAX_INDIRECT_SEGMENTS, so nr_pages <= 8.
            let pages = indirect
                .indirect_grefs
                .get(..nr_pages)
                .ok_or(RequestError::TooManySegments { nr_segments, max })?
                .to_vec();
            Ok(Parsed::Indirect(IndirectRequest { op: io, sector: indirect.sector_number, nr_segments, pages }))
        }
        BlkifOp::Reserved1 => Err(RequestError::UnknownOperation(raw.operation)),
    }
}

/// Completes an indirect request with the segments copied out of its
/// indirect pages.
pub fn indirect_data(
    request: &IndirectRequest,
    segments: Vec<BlkifRequestSegment>,
    limits: &Limits,
) -> Result<DataRequest, RequestError> {
    if segments.len() != request.nr_segments {
        return Err(RequestError::TooManySegments { nr_segments: segments.len(), max: request.nr_segments });
    }
    data_request(request.op, false, false, request.sector, segments, limits)
}

/// Checks the segments and the disk range of a read or write.
fn data_request(
    op: IoOp,
    preflush: bool,
    postflush: bool,
    sector: u64,
    segments: Vec<BlkifRequestSegment>,
    limits: &Limits,
) -> Result<DataRequest, RequestError> {
    let mut nr_sectors: u64 = 0;
    for (index, segment) in segments.iter().enumerate() {
        if segment.first_sect > segment.last_sect || usize::from(segment.last_sect) >= BLKIF_SECTORS_PER_PAGE {
            return Err(RequestError::BadSegment {
                index,
                first_sect: segment.first_sect,
                last_sect: segment.last_sect,
            });
        }
        nr_sectors += segment.nr_sectors() as u64;
    }
    if op == IoOp::Write && limits.read_only {
        return Err(RequestError::ReadOnly);
    }
    check_range(sector, nr_sectors, limits)?;
    let per_sector = u64::from(limits.sector_size / BLKIF_SECTOR_SIZE as u32).max(1);
    if (sector | nr_sectors) % per_sector != 0 {
        return Err(RequestError::Misaligned { sector, nr_sectors, sector_size: limits.sector_size });
    }
    Ok(DataRequest { op, preflush, postflush, sector, segments })
}

/// Checks that `sector .. sector + nr_sectors` lies on the disk.
fn check_range(sector: u64, nr_sectors: u64, limits: &Limits) -> Result<(), RequestError> {
    match sector.checked_add(nr_sectors) {
        Some(end) if end <= limits.sectors => Ok(()),
        _ => Err(RequestError::OutOfRange { sector, nr_sectors, disk_sectors: limits.sectors }),
    }
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::blkif::{
        BlkifRequestDiscard, BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_RESERVED_1,
        BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
    };

    use super::*;

    const LIMITS: Limits =
        Limits { sectors: 2048, sector_size: 512, read_only: false, discard: true, max_indirect_segments: 256 };

    fn rw(operation: u8, sector: u64, segments: &[(u32, u8, u8)]) -> BlkifRequest {
        let mut request = BlkifRequest {
            operation,
            nr_segments: segments.len() as u8,
            id: 77,
            sector_number: sector,
            ..Default::default()
        };
        for (slot, &(gref, first, last)) in request.seg.iter_mut().zip(segments) {
            *slot = BlkifRequestSegment::new(gref, first, last);
        }
        request
    }

    fn indirect(indirect_op: u8, sector: u64, nr_segments: u16) -> BlkifRequest {
        BlkifRequest::from_indirect(BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op,
            nr_segments,
            id: 99,
            sector_number: sector,
            indirect_grefs: [11, 12, 13, 14, 15, 16, 17, 18],
            ..Default::default()
        })
    }

    fn discard(sector: u64, nr_sectors: u64) -> BlkifRequest {
        BlkifRequest::from_discard(BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            id: 5,
            sector_number: sector,
            nr_sectors,
            ..Default::default()
        })
    }

    #[test]
    fn good_reads_and_writes_are_accepted_up_to_the_last_sector() {
        let read = parse(&rw(BLKIF_OP_READ, 2040, &[(1, 0, 7)]), &LIMITS).unwrap();
        let write = parse(&rw(BLKIF_OP_WRITE, 0, &[(1, 0, 7), (2, 0, 3), (3, 4, 7)]), &LIMITS).unwrap();

        let Parsed::Data(read) = read else { panic!("{read:?}") };
        assert_eq!((read.op, read.sector, read.byte_len(), read.byte_offset()), (IoOp::Read, 2040, 4096, 2040 * 512));
        let Parsed::Data(write) = write else { panic!("{write:?}") };
        assert_eq!((write.op, write.segments.len(), write.byte_len()), (IoOp::Write, 3, 8192));
        assert!(!write.preflush && !write.postflush);
    }

    #[test]
    fn one_sector_past_the_end_is_refused() {
        let err = parse(&rw(BLKIF_OP_READ, 2041, &[(1, 0, 7)]), &LIMITS).unwrap_err();

        assert_eq!(err, RequestError::OutOfRange { sector: 2041, nr_sectors: 8, disk_sectors: 2048 });
        assert_eq!(err.status(), BlkifStatus::Error);
        assert!(parse(&rw(BLKIF_OP_READ, 2047, &[(1, 3, 3)]), &LIMITS).is_ok(), "the very last sector");
    }

    #[test]
    fn overflowing_ranges_are_refused() {
        let err = parse(&rw(BLKIF_OP_WRITE, u64::MAX - 3, &[(1, 0, 7)]), &LIMITS).unwrap_err();
        assert!(matches!(err, RequestError::OutOfRange { .. }));
        assert!(matches!(parse(&discard(u64::MAX, 2), &LIMITS), Err(RequestError::OutOfRange { .. })));
        assert!(matches!(parse(&discard(2000, 49), &LIMITS), Err(RequestError::OutOfRange { .. })));
        assert_eq!(parse(&discard(2000, 48), &LIMITS), Ok(Parsed::Discard { sector: 2000, nr_sectors: 48 }));
    }

    #[test]
    fn bad_segments_are_refused() {
        let inverted = parse(&rw(BLKIF_OP_READ, 0, &[(1, 0, 7), (2, 5, 4)]), &LIMITS).unwrap_err();
        let off_page = parse(&rw(BLKIF_OP_WRITE, 0, &[(1, 0, 8)]), &LIMITS).unwrap_err();

        assert_eq!(inverted, RequestError::BadSegment { index: 1, first_sect: 5, last_sect: 4 });
        assert_eq!(off_page, RequestError::BadSegment { index: 0, first_sect: 0, last_sect: 8 });
    }

    #[test]
    fn segment_counts_are_bounded() {
        let mut twelve = rw(BLKIF_OP_WRITE, 0, &[(1, 0, 7); 11]);
        twelve.nr_segments = 12;
        assert_eq!(
            parse(&twelve, &LIMITS),
            Err(RequestError::TooManySegments { nr_segments: 12, max: BLKIF_MAX_SEGMENTS_PER_REQUEST })
        );
        assert!(matches!(parse(&rw(BLKIF_OP_READ, 0, &[(1, 0, 7); 11]), &LIMITS), Ok(Parsed::Data(_))));
        assert_eq!(parse(&rw(BLKIF_OP_READ, 0, &[]), &LIMITS), Err(RequestError::NoSegments));
        assert_eq!(parse(&rw(BLKIF_OP_WRITE, 0, &[]), &LIMITS), Err(RequestError::NoSegments));
        assert_eq!(parse(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]), &LIMITS), Ok(Parsed::Flush));
        assert_eq!(parse(&rw(BLKIF_OP_WRITE_BARRIER, 0, &[]), &LIMITS), Ok(Parsed::Flush));
    }

    #[test]
    fn barrier_and_flush_with_data_write_it_around_flushes() {
        let Ok(Parsed::Data(barrier)) = parse(&rw(BLKIF_OP_WRITE_BARRIER, 8, &[(1, 0, 7)]), &LIMITS) else {
            panic!("barrier refused")
        };
        let Ok(Parsed::Data(flush)) = parse(&rw(BLKIF_OP_FLUSH_DISKCACHE, 8, &[(1, 0, 7)]), &LIMITS) else {
            panic!("flush refused")
        };

        assert_eq!((barrier.op, barrier.preflush, barrier.postflush), (IoOp::Write, true, true));
        assert_eq!((flush.op, flush.preflush, flush.postflush), (IoOp::Write, true, false));
    }

    #[test]
    fn unknown_operations_are_not_supported() {
        for operation in [BLKIF_OP_RESERVED_1, 7, 200, 255] {
            let err = parse(&rw(operation, 0, &[(1, 0, 7)]), &LIMITS).unwrap_err();
            assert_eq!(err, RequestError::UnknownOperation(operation));
            assert_eq!(err.status().raw(), BLKIF_RSP_EOPNOTSUPP);
        }
    }

    #[test]
    fn read_only_disks_refuse_every_change() {
        let ro = Limits { read_only: true, discard: false, ..LIMITS };

        assert!(parse(&rw(BLKIF_OP_READ, 0, &[(1, 0, 7)]), &ro).is_ok());
        for request in [
            rw(BLKIF_OP_WRITE, 0, &[(1, 0, 7)]),
            rw(BLKIF_OP_WRITE_BARRIER, 0, &[(1, 0, 7)]),
            rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]),
            indirect(BLKIF_OP_WRITE, 0, 20),
        ] {
            assert_eq!(parse(&request, &ro), Err(RequestError::ReadOnly), "{request:?}");
            assert_eq!(RequestError::ReadOnly.status().raw(), BLKIF_RSP_ERROR);
        }
        assert_eq!(parse(&discard(0, 8), &ro), Err(RequestError::DiscardUnsupported));
        let ro_discard = Limits { discard: true, ..ro };
        assert_eq!(parse(&discard(0, 8), &ro_discard), Err(RequestError::ReadOnly));
    }

    #[test]
    fn discard_needs_the_feature() {
        let no_discard = Limits { discard: false, ..LIMITS };
        let err = parse(&discard(0, 8), &no_discard).unwrap_err();
        assert_eq!(err.status(), BlkifStatus::Eopnotsupp);
    }

    #[test]
    fn indirect_requests_are_bounded_and_name_their_pages() {
        let Ok(Parsed::Indirect(one_page)) = parse(&indirect(BLKIF_OP_READ, 16, 256), &LIMITS) else {
            panic!("refused")
        };
        let big = Limits { max_indirect_segments: 4096, ..LIMITS };
        let Ok(Parsed::Indirect(two_pages)) = parse(&indirect(BLKIF_OP_WRITE, 16, 513), &big) else {
            panic!("refused")
        };

        assert_eq!((one_page.op, one_page.nr_segments, one_page.pages.as_slice()), (IoOp::Read, 256, &[11][..]));
        assert_eq!(two_pages.pages, [11, 12]);
        assert_eq!(
            parse(&indirect(BLKIF_OP_READ, 0, 257), &LIMITS),
            Err(RequestError::TooManySegments { nr_segments: 257, max: 256 })
        );
        assert_eq!(parse(&indirect(BLKIF_OP_READ, 0, 0), &LIMITS), Err(RequestError::NoSegments));
        assert_eq!(
            parse(&indirect(BLKIF_OP_DISCARD, 0, 1), &LIMITS),
            Err(RequestError::BadIndirectOperation(BLKIF_OP_DISCARD))
        );
        assert_eq!(
            parse(&indirect(BLKIF_OP_READ, 0, 4097), &Limits { max_indirect_segments: usize::MAX, ..LIMITS }),
            Err(RequestError::TooManySegments { nr_segments: 4097, max: BLKIF_MAX_INDIRECT_SEGMENTS })
        );
    }

    #[test]
    fn indirect_segments_are_checked_once_fetched() {
        let request = IndirectRequest { op: IoOp::Write, sector: 2032, nr_segments: 2, pages: vec![3] };
        let good = vec![BlkifRequestSegment::new(1, 0, 7), BlkifRequestSegment::new(2, 0, 7)];
        let bad = vec![BlkifRequestSegment::new(1, 0, 7), BlkifRequestSegment::new(2, 7, 6)];
        let past_end = IndirectRequest { sector: 2040, ..request.clone() };

        assert_eq!(indirect_data(&request, good.clone(), &LIMITS).map(|d| d.byte_len()), Ok(8192));
        assert!(matches!(indirect_data(&request, bad, &LIMITS), Err(RequestError::BadSegment { index: 1, .. })));
        assert!(matches!(indirect_data(&past_end, good.clone(), &LIMITS), Err(RequestError::OutOfRange { .. })));
        assert!(indirect_data(&request, good[..1].to_vec(), &LIMITS).is_err());
    }

    #[test]
    fn four_k_disks_need_aligned_ranges() {
        let four_k = Limits { sector_size: 4096, ..LIMITS };

        assert!(parse(&rw(BLKIF_OP_READ, 8, &[(1, 0, 7)]), &four_k).is_ok());
        assert_eq!(
            parse(&rw(BLKIF_OP_READ, 4, &[(1, 0, 7)]), &four_k),
            Err(RequestError::Misaligned { sector: 4, nr_sectors: 8, sector_size: 4096 })
        );
        assert!(matches!(parse(&rw(BLKIF_OP_WRITE, 8, &[(1, 0, 3)]), &four_k), Err(RequestError::Misaligned { .. })));
    }

    #[test]
    fn responses_echo_id_and_the_operation_blkfront_expects() {
        let direct = response(&rw(BLKIF_OP_WRITE, 0, &[(1, 0, 7)]), BlkifStatus::Okay);
        let indirect = response(&indirect(BLKIF_OP_WRITE, 0, 3), BlkifStatus::Error);
        let discard = response(&discard(0, 1), BlkifStatus::Eopnotsupp);

        assert_eq!((direct.id, direct.operation, direct.status), (77, BLKIF_OP_WRITE, 0));
        assert_eq!((indirect.id, indirect.operation, indirect.status), (99, BLKIF_OP_WRITE, BLKIF_RSP_ERROR));
        assert_eq!((discard.id, discard.operation, discard.status), (5, BLKIF_OP_DISCARD, BLKIF_RSP_EOPNOTSUPP));
    }
}
