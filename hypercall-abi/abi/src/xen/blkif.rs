//! The PV block device protocol (`xen/io/blkif.h`), x86_64 layout: ring
//! requests and responses, operation codes, and validation of requests read
//! from a frontend.
//!
//! Every ring slot is a [`BlkifRequest`] (112 bytes); discard and indirect
//! requests are other views of the same slot, reached with
//! [`BlkifRequest::as_discard`] and [`BlkifRequest::as_indirect`].
//! Validation works on a copy taken out of the ring, never on the shared
//! slot itself.

use core::fmt;

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, UnknownValue};
use super::GrantRef;

/// A virtual device handle (`blkif_vdev_t`).
pub type BlkifVdev = u16;
/// A sector number (`blkif_sector_t`), in units of 512 bytes unless the
/// frontend negotiated `feature-large-sector-size`.
pub type BlkifSector = u64;

/// `BLKIF_OP_READ`: read into the segments.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`: write from the segments.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`: a write ordered after all earlier writes
/// (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`: flush the backing device's volatile cache
/// (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`: reserved (SLES device-specific packets).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`: discard a sector range (`feature-discard`); the slot
/// is a [`BlkifRequestDiscard`].
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`: a read or write whose segments live in granted
/// pages (`feature-max-indirect-segments`); the slot is a
/// [`BlkifRequestIndirect`].
pub const BLKIF_OP_INDIRECT: u8 = 6;

abi_enum! {
    /// A block request's `operation`.
    pub enum BlkifOp: u8, "blkif operation" {
        /// Read.
        Read = BLKIF_OP_READ => "BLKIF_OP_READ",
        /// Write.
        Write = BLKIF_OP_WRITE => "BLKIF_OP_WRITE",
        /// Write barrier.
        WriteBarrier = BLKIF_OP_WRITE_BARRIER => "BLKIF_OP_WRITE_BARRIER",
        /// Cache flush.
        FlushDiskcache = BLKIF_OP_FLUSH_DISKCACHE => "BLKIF_OP_FLUSH_DISKCACHE",
        /// Reserved.
        Reserved1 = BLKIF_OP_RESERVED_1 => "BLKIF_OP_RESERVED_1",
        /// Discard.
        Discard = BLKIF_OP_DISCARD => "BLKIF_OP_DISCARD",
        /// Indirect read or write.
        Indirect = BLKIF_OP_INDIRECT => "BLKIF_OP_INDIRECT",
    }
}

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: segment pages in an indirect
/// request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// The unit of `first_sect`, `last_sect` and `sector_number` without
/// `feature-large-sector-size`.
pub const BLKIF_SECTOR_SIZE: usize = 512;
/// 512-byte sectors in a page: a segment's `last_sect` is below this.
pub const BLKIF_SECTORS_PER_PAGE: usize = super::PAGE_SIZE / BLKIF_SECTOR_SIZE;
/// Segments in one indirect page (`PAGE_SIZE / sizeof(struct
/// blkif_request_segment)`; Linux's `SEGS_PER_INDIRECT_FRAME`).
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize =
    super::PAGE_SIZE / core::mem::size_of::<BlkifRequestSegment>();
/// The most segments any indirect request can describe.
pub const BLKIF_MAX_INDIRECT_SEGMENTS: usize =
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * BLKIF_SEGS_PER_INDIRECT_FRAME;

/// `BLKIF_DISCARD_SECURE`: the discard must erase the data securely
/// (`flag` of [`BlkifRequestDiscard`], honoured with `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1 << 0;

/// `BLKIF_RSP_EOPNOTSUPP`: the backend does not support the operation.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`: the request failed.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`: the request succeeded.
pub const BLKIF_RSP_OKAY: i16 = 0;

abi_enum! {
    /// A block response's `status`.
    pub enum BlkifStatus: i16, "blkif response status" {
        /// Not supported.
        Eopnotsupp = BLKIF_RSP_EOPNOTSUPP => "BLKIF_RSP_EOPNOTSUPP",
        /// Failed.
        Error = BLKIF_RSP_ERROR => "BLKIF_RSP_ERROR",
        /// Succeeded.
        Okay = BLKIF_RSP_OKAY => "BLKIF_RSP_OKAY",
    }
}

/// `VDISK_CDROM`.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE`.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY`.
pub const VDISK_READONLY: u32 = 0x4;

bitflags! {
    /// The backend's `info` xenstore node (`VDISK_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VdiskInfo: u32 {
        /// The device is a CD-ROM.
        const CDROM = VDISK_CDROM;
        /// The medium is removable.
        const REMOVABLE = VDISK_REMOVABLE;
        /// The device is read-only.
        const READONLY = VDISK_READONLY;
    }
}

/// One granted page of a request's data (`struct blkif_request_segment`):
/// sectors `first_sect..=last_sect` of page `gref`.
#[doc(alias = "blkif_request_segment")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestSegment {
    /// The granted page.
    pub gref: GrantRef,
    /// First sector in the page (inclusive).
    pub first_sect: u8,
    /// Last sector in the page (inclusive).
    pub last_sect: u8,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<BlkifRequestSegment>() == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequestSegment, gref) == 0);
const _: () = assert!(core::mem::offset_of!(BlkifRequestSegment, first_sect) == 4);
const _: () = assert!(core::mem::offset_of!(BlkifRequestSegment, last_sect) == 5);

/// A segment whose sector range is inverted or leaves its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadSegment {
    /// The segment's `first_sect`.
    pub first_sect: u8,
    /// The segment's `last_sect`.
    pub last_sect: u8,
}

impl fmt::Display for BadSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "segment sectors {}..={} do not lie within one page of {} sectors",
            self.first_sect, self.last_sect, BLKIF_SECTORS_PER_PAGE
        )
    }
}

impl BlkifRequestSegment {
    /// A segment covering sectors `first_sect..=last_sect` of `gref`.
    pub const fn new(gref: GrantRef, first_sect: u8, last_sect: u8) -> Self {
        Self {
            gref,
            first_sect,
            last_sect,
            _pad: [0; 2],
        }
    }

    /// Checks `first_sect <= last_sect < 8` (512-byte sectors in a 4 KiB page).
    pub const fn validate(&self) -> Result<(), BadSegment> {
        if self.first_sect <= self.last_sect && (self.last_sect as usize) < BLKIF_SECTORS_PER_PAGE {
            Ok(())
        } else {
            Err(BadSegment {
                first_sect: self.first_sect,
                last_sect: self.last_sect,
            })
        }
    }

    /// Number of sectors; meaningful after [`validate`](Self::validate).
    pub const fn nr_sectors(&self) -> usize {
        (self.last_sect as usize + 1).saturating_sub(self.first_sect as usize)
    }

    /// Byte offset of the data within the page.
    pub const fn byte_offset(&self) -> usize {
        self.first_sect as usize * BLKIF_SECTOR_SIZE
    }

    /// Data length in bytes; meaningful after [`validate`](Self::validate).
    pub const fn byte_len(&self) -> usize {
        self.nr_sectors() * BLKIF_SECTOR_SIZE
    }
}

/// A block ring request slot (`struct blkif_request`), as used for read,
/// write, barrier and flush requests.
#[doc(alias = "blkif_request")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`, see [`BlkifOp`].
    pub operation: u8,
    /// Number of valid entries of `seg`.
    pub nr_segments: u8,
    /// The virtual device (read/write only).
    pub handle: BlkifVdev,
    /// Padding (implicit in C).
    pub _pad: [u8; 4],
    /// Frontend cookie, echoed in the response.
    pub id: u64,
    /// First sector on the disk (read/write only).
    pub sector_number: BlkifSector,
    /// The data pages.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}
const _: () = assert!(core::mem::size_of::<BlkifRequest>() == 112);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, operation) == 0);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, nr_segments) == 1);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, handle) == 2);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequest, seg) == 24);

/// A discard request (`struct blkif_request_discard`), in a
/// [`BlkifRequest`] slot whose `operation` is `BLKIF_OP_DISCARD`.
#[doc(alias = "blkif_request_discard")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestDiscard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// Padding (implicit in C).
    pub _pad: [u8; 4],
    /// Frontend cookie, echoed in the response.
    pub id: u64,
    /// First sector to discard.
    pub sector_number: BlkifSector,
    /// Number of sectors to discard.
    pub nr_sectors: u64,
}
const _: () = assert!(core::mem::size_of::<BlkifRequestDiscard>() == 32);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, operation) == 0);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, flag) == 1);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, handle) == 2);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequestDiscard, nr_sectors) == 24);

/// An indirect request (`struct blkif_request_indirect`), in a
/// [`BlkifRequest`] slot whose `operation` is `BLKIF_OP_INDIRECT`. Its
/// segments are [`BlkifRequestSegment`] arrays in the pages
/// `indirect_grefs`, [`BLKIF_SEGS_PER_INDIRECT_FRAME`] to a page.
#[doc(alias = "blkif_request_indirect")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Number of segments across the indirect pages.
    pub nr_segments: u16,
    /// Padding (implicit in C).
    pub _pad0: [u8; 4],
    /// Frontend cookie, echoed in the response.
    pub id: u64,
    /// First sector on the disk.
    pub sector_number: BlkifSector,
    /// The virtual device.
    pub handle: BlkifVdev,
    /// Padding (implicit in C).
    pub _pad1: [u8; 2],
    /// Grants of the pages holding the segments.
    pub indirect_grefs: [GrantRef; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Padding (implicit in C).
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<BlkifRequestIndirect>() == 64);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, operation) == 0);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, indirect_op) == 1);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, nr_segments) == 2);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, id) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, handle) == 24);
const _: () = assert!(core::mem::offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);

impl BlkifRequestIndirect {
    /// Number of indirect pages `nr_segments` segments occupy.
    pub const fn nr_indirect_pages(nr_segments: usize) -> usize {
        nr_segments.div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME)
    }
}

/// A block ring response (`struct blkif_response`).
#[doc(alias = "blkif_response")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// Padding (implicit in C).
    pub _pad0: u8,
    /// `BLKIF_RSP_*`, see [`BlkifStatus`].
    pub status: i16,
    /// Padding (implicit in C).
    pub _pad1: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<BlkifResponse>() == 16);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, id) == 0);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, operation) == 8);
const _: () = assert!(core::mem::offset_of!(BlkifResponse, status) == 10);

impl BlkifResponse {
    /// The response to request `id` of `operation` (echoed raw, as the
    /// frontend sent it, even if unknown).
    pub const fn new(id: u64, operation: u8, status: BlkifStatus) -> Self {
        Self {
            id,
            operation,
            _pad0: 0,
            status: status.raw(),
            _pad1: [0; 4],
        }
    }
}

/// Why a request copied out of the ring cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkifRequestError {
    /// `operation` is not a `BLKIF_OP_*` value.
    UnknownOperation(UnknownValue<u8>),
    /// An indirect request's `indirect_op` is neither read nor write.
    BadIndirectOperation(u8),
    /// A read or write carries no segments.
    NoSegments,
    /// More segments than the request kind allows.
    TooManySegments {
        /// Segments claimed by the request.
        nr_segments: usize,
        /// The most allowed.
        max: usize,
    },
    /// A segment's sector range is invalid.
    BadSegment {
        /// Index of the segment in the request.
        index: usize,
        /// The bad range.
        segment: BadSegment,
    },
}

impl fmt::Display for BlkifRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOperation(err) => {
                write!(f, "the block request's operation {} is unknown", err.value)
            }
            Self::BadIndirectOperation(op) => {
                write!(
                    f,
                    "the indirect block request's operation {op} is neither read (0) nor write (1)"
                )
            }
            Self::NoSegments => f.write_str("the block read or write request has no segments"),
            Self::TooManySegments { nr_segments, max } => {
                write!(
                    f,
                    "the block request has {nr_segments} segments, more than the {max} allowed"
                )
            }
            Self::BadSegment { index, segment } => {
                write!(f, "block request segment {index}: {segment}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for BlkifRequestError {}

#[cfg(feature = "std")]
impl std::error::Error for BadSegment {}

/// A discard request padded to the size of a ring slot.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable)]
struct DiscardSlot {
    request: BlkifRequestDiscard,
    rest: [u8; 112 - 32],
}

/// An indirect request padded to the size of a ring slot.
#[repr(C)]
#[derive(FromBytes, IntoBytes, Immutable)]
struct IndirectSlot {
    request: BlkifRequestIndirect,
    rest: [u8; 112 - 64],
}

impl BlkifRequest {
    /// The `operation` as a typed value.
    pub fn op(&self) -> Result<BlkifOp, BlkifRequestError> {
        BlkifOp::try_from(self.operation).map_err(BlkifRequestError::UnknownOperation)
    }

    /// The slot read as a discard request.
    pub fn as_discard(&self) -> BlkifRequestDiscard {
        let slot: DiscardSlot = zerocopy::transmute!(*self);
        slot.request
    }

    /// The slot read as an indirect request.
    pub fn as_indirect(&self) -> BlkifRequestIndirect {
        let slot: IndirectSlot = zerocopy::transmute!(*self);
        slot.request
    }

    /// A slot holding `request`, zero-filled after it.
    pub fn from_discard(request: BlkifRequestDiscard) -> Self {
        zerocopy::transmute!(DiscardSlot {
            request,
            rest: [0; 112 - 32]
        })
    }

    /// A slot holding `request`, zero-filled after it.
    pub fn from_indirect(request: BlkifRequestIndirect) -> Self {
        zerocopy::transmute!(IndirectSlot {
            request,
            rest: [0; 112 - 64]
        })
    }

    /// The segments in use, after checking `nr_segments` and every
    /// segment's sector range.
    ///
    /// Only meaningful for read, write, barrier and flush requests.
    pub fn segments(&self) -> Result<&[BlkifRequestSegment], BlkifRequestError> {
        let nr_segments = usize::from(self.nr_segments);
        let segments = self
            .seg
            .get(..nr_segments)
            .ok_or(BlkifRequestError::TooManySegments {
                nr_segments,
                max: BLKIF_MAX_SEGMENTS_PER_REQUEST,
            })?;
        validate_segments(segments)?;
        Ok(segments)
    }

    /// Checks a request copied out of the ring: a known operation, and for
    /// the direct kinds a sane segment list (reads and writes need at least
    /// one segment; barriers and flushes may have none). For an indirect
    /// request, checks `indirect_op` and the segment count against
    /// [`BLKIF_MAX_INDIRECT_SEGMENTS`]; the segments themselves live in the
    /// indirect pages and are checked with [`validate_segments`] once
    /// mapped.
    pub fn validate(&self) -> Result<BlkifOp, BlkifRequestError> {
        let op = self.op()?;
        match op {
            BlkifOp::Read | BlkifOp::Write | BlkifOp::WriteBarrier | BlkifOp::FlushDiskcache => {
                let segments = self.segments()?;
                if segments.is_empty() && matches!(op, BlkifOp::Read | BlkifOp::Write) {
                    return Err(BlkifRequestError::NoSegments);
                }
            }
            BlkifOp::Indirect => {
                let indirect = self.as_indirect();
                if !matches!(indirect.indirect_op, BLKIF_OP_READ | BLKIF_OP_WRITE) {
                    return Err(BlkifRequestError::BadIndirectOperation(
                        indirect.indirect_op,
                    ));
                }
                let nr_segments = usize::from(indirect.nr_segments);
                if nr_segments == 0 {
                    return Err(BlkifRequestError::NoSegments);
                }
                if nr_segments > BLKIF_MAX_INDIRECT_SEGMENTS {
                    return Err(BlkifRequestError::TooManySegments {
                        nr_segments,
                        max: BLKIF_MAX_INDIRECT_SEGMENTS,
                    });
                }
            }
            BlkifOp::Discard | BlkifOp::Reserved1 => {}
        }
        Ok(op)
    }
}

/// Checks the sector range of every segment in `segments`.
pub fn validate_segments(segments: &[BlkifRequestSegment]) -> Result<(), BlkifRequestError> {
    for (index, segment) in segments.iter().enumerate() {
        segment
            .validate()
            .map_err(|segment| BlkifRequestError::BadSegment { index, segment })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_request(segments: &[BlkifRequestSegment]) -> BlkifRequest {
        let mut request = BlkifRequest {
            operation: BLKIF_OP_READ,
            nr_segments: segments.len() as u8,
            id: 0xfeed,
            sector_number: 64,
            ..Default::default()
        };
        request.seg[..segments.len()].copy_from_slice(segments);
        request
    }

    #[test]
    fn valid_read_is_accepted() {
        let request = read_request(&[
            BlkifRequestSegment::new(10, 0, 7),
            BlkifRequestSegment::new(11, 2, 3),
        ]);

        assert_eq!(request.validate(), Ok(BlkifOp::Read));
        let segments = request.segments();
        assert_eq!(segments.map(<[_]>::len), Ok(2));
        assert_eq!(request.seg[1].byte_offset(), 1024);
        assert_eq!(request.seg[1].byte_len(), 1024);
    }

    #[test]
    fn unknown_operation_is_rejected() {
        let request = BlkifRequest {
            operation: 7,
            ..read_request(&[BlkifRequestSegment::new(1, 0, 0)])
        };

        assert_eq!(
            request.validate(),
            Err(BlkifRequestError::UnknownOperation(UnknownValue {
                kind: "blkif operation",
                value: 7
            }))
        );
    }

    #[test]
    fn segment_leaving_the_page_or_inverted_is_rejected() {
        assert_eq!(
            BlkifRequestSegment::new(1, 0, 8).validate(),
            Err(BadSegment {
                first_sect: 0,
                last_sect: 8
            })
        );
        assert_eq!(
            BlkifRequestSegment::new(1, 4, 3).validate(),
            Err(BadSegment {
                first_sect: 4,
                last_sect: 3
            })
        );

        let request = read_request(&[
            BlkifRequestSegment::new(1, 0, 7),
            BlkifRequestSegment::new(2, 5, 2),
        ]);
        assert_eq!(
            request.validate(),
            Err(BlkifRequestError::BadSegment {
                index: 1,
                segment: BadSegment {
                    first_sect: 5,
                    last_sect: 2
                }
            })
        );
    }

    #[test]
    fn segment_count_is_bounded() {
        let mut request = read_request(&[]);
        assert_eq!(request.validate(), Err(BlkifRequestError::NoSegments));

        request.nr_segments = 12;
        assert_eq!(
            request.validate(),
            Err(BlkifRequestError::TooManySegments {
                nr_segments: 12,
                max: 11
            })
        );

        request.operation = BLKIF_OP_FLUSH_DISKCACHE;
        request.nr_segments = 0;
        assert_eq!(request.validate(), Ok(BlkifOp::FlushDiskcache));
    }

    #[test]
    fn discard_and_indirect_views_share_the_slot() {
        let discard = BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            flag: BLKIF_DISCARD_SECURE,
            id: 3,
            sector_number: 100,
            nr_sectors: 8,
            ..Default::default()
        };
        let slot = BlkifRequest::from_discard(discard);
        assert_eq!(slot.id, 3);
        assert_eq!(slot.as_discard(), discard);
        assert_eq!(slot.validate(), Ok(BlkifOp::Discard));

        let indirect = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 600,
            indirect_grefs: [9, 10, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        };
        let slot = BlkifRequest::from_indirect(indirect);
        assert_eq!(slot.as_indirect(), indirect);
        assert_eq!(slot.validate(), Ok(BlkifOp::Indirect));
        assert_eq!(BlkifRequestIndirect::nr_indirect_pages(600), 2);
    }

    #[test]
    fn indirect_request_limits_are_enforced() {
        let indirect = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_DISCARD,
            nr_segments: 1,
            ..Default::default()
        };
        assert_eq!(
            BlkifRequest::from_indirect(indirect).validate(),
            Err(BlkifRequestError::BadIndirectOperation(BLKIF_OP_DISCARD))
        );

        let too_many = BlkifRequestIndirect {
            indirect_op: BLKIF_OP_READ,
            nr_segments: 4097,
            ..indirect
        };
        assert_eq!(
            BlkifRequest::from_indirect(too_many).validate(),
            Err(BlkifRequestError::TooManySegments {
                nr_segments: 4097,
                max: 4096
            })
        );
    }

    #[test]
    fn indirect_frame_geometry_matches_linux() {
        assert_eq!(BLKIF_SEGS_PER_INDIRECT_FRAME, 512);
        assert_eq!(BLKIF_SECTORS_PER_PAGE, 8);
    }
}
