//! Grant tables: how a frontend lends its pages and a backend uses them.

use crate::xen::{DomId, GrantRef};

use super::memory::SharedMemory;

/// Why a grant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The platform's device failed.
    #[error("grant {op} failed: {source}")]
    Io {
        /// The operation that failed, e.g. `"map"`.
        op: &'static str,
        /// The underlying OS error.
        #[source]
        source: std::io::Error,
    },
    /// The reference does not name a page the domain granted to us.
    #[error("grant reference {gref} of domain {domid} is not granted to this domain")]
    NotGranted {
        /// The granting domain.
        domid: DomId,
        /// The reference.
        gref: GrantRef,
    },
    /// A writable mapping or copy-in of a read-only grant.
    #[error("grant reference {gref} of domain {domid} is read-only")]
    ReadOnly {
        /// The granting domain.
        domid: DomId,
        /// The reference.
        gref: GrantRef,
    },
    /// The grant is still mapped by the other side, so access cannot end.
    #[error("grant reference {0} is still in use by the other domain")]
    InUse(GrantRef),
    /// A copy segment reaches outside its page or a buffer.
    #[error("grant copy segment of {len} bytes at offset {offset} crosses a page boundary or its buffer")]
    BadCopy {
        /// Offset in the page.
        offset: u16,
        /// Length of the segment.
        len: u16,
    },
    /// The request asked for nothing or for more than the platform allows.
    #[error("invalid grant request: {0}")]
    Invalid(&'static str),
    /// Xen (or the loopback) refused with a `GNTST_*` status.
    #[error("grant operation on reference {gref} of domain {domid} failed with status {status}")]
    Status {
        /// The granting domain.
        domid: DomId,
        /// The reference.
        gref: GrantRef,
        /// The `GNTST_*` value.
        status: i16,
    },
}

/// Pages this domain granted to another (`xengntshr_share_pages`).
///
/// Dropping it ends foreign access and frees the pages.
pub trait SharedGrants: Send {
    /// The grant references, one per page, in order.
    fn refs(&self) -> &[GrantRef];
    /// The granted pages, contiguous in this process.
    fn memory(&self) -> SharedMemory<'_>;
}

/// The frontend side of grant tables (`libxengntshr`, Linux `gntalloc`).
pub trait GrantShare: Send + Sync {
    /// The handle on a set of shared pages.
    type Shared: SharedGrants;

    /// Allocates `count` zeroed pages and grants them to `domid`, writable
    /// by it or read-only.
    fn share(&self, domid: DomId, count: usize, writable: bool) -> Result<Self::Shared, GrantError>;

    /// Ends foreign access to the pages. Fails with [`GrantError::InUse`]
    /// while the other side still maps them; the pages are then leaked to
    /// the grant table, as in Xen, rather than reused while mapped.
    fn end_access(&self, shared: Self::Shared) -> Result<(), GrantError>;
}

/// Pages of another domain mapped into this process
/// (`xengnttab_map_domain_grant_refs`). Dropping it unmaps them.
pub trait MappedGrants: Send {
    /// The references that were mapped, in order.
    fn refs(&self) -> &[GrantRef];
    /// The mapped pages, contiguous in this process.
    fn memory(&self) -> SharedMemory<'_>;
}

/// One end of a grant copy: a granted page, or memory of our own.
#[derive(Debug)]
pub enum GrantCopyPtr<'a> {
    /// `offset` bytes into the page `gref` of `domid`.
    Grant {
        /// The granting domain.
        domid: DomId,
        /// The reference.
        gref: GrantRef,
        /// Byte offset within the page.
        offset: u16,
    },
    /// A buffer in this process to copy into (as a destination).
    LocalMut(&'a mut [u8]),
    /// A buffer in this process to copy from (as a source).
    Local(&'a [u8]),
}

/// Memory of a backend's own that its data path copies through with grant
/// copies: plain memory, or pages its domain granted to itself, which a
/// copy names by reference (the kernel then pins no user page per copy).
/// Either way no other domain can reach it, so it is seen as a slice.
pub trait CopyMemory: Send {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// The bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// With pages granted to the own domain: that domain, and the reference
    /// of each page of [`bytes`](Self::bytes) in order.
    fn own_grants(&self) -> Option<(DomId, &[GrantRef])>;
}

/// Plain memory: a `Vec<u8>`, a `&mut [u8]`, ...
impl<T: AsRef<[u8]> + AsMut<[u8]> + Send> CopyMemory for T {
    fn bytes(&self) -> &[u8] {
        self.as_ref()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut()
    }

    fn own_grants(&self) -> Option<(DomId, &[GrantRef])> {
        None
    }
}

/// One grant copy segment (`struct gnttab_copy`), within one page.
#[derive(Debug)]
pub struct GrantCopyOp<'a> {
    /// Where the bytes come from.
    pub source: GrantCopyPtr<'a>,
    /// Where the bytes go.
    pub dest: GrantCopyPtr<'a>,
    /// How many bytes.
    pub len: u16,
    /// Result, set by [`GrantMap::copy`]: `Ok` or the failure of this segment.
    pub status: Result<(), i16>,
}

/// The backend side of grant tables (`libxengnttab`, Linux `gntdev`).
pub trait GrantMap: Send + Sync {
    /// The handle on a mapping.
    type Mapped: MappedGrants;

    /// Maps the pages `refs` of `domid`, contiguously, writable or read-only.
    /// All or nothing: if one ref cannot be mapped, none is.
    fn map(&self, domid: DomId, refs: &[GrantRef], writable: bool) -> Result<Self::Mapped, GrantError>;

    /// Performs a batch of copies (`GNTTABOP_copy`). Each segment's status
    /// is set; the call fails only if the batch could not be submitted.
    fn copy(&self, ops: &mut [GrantCopyOp<'_>]) -> Result<(), GrantError>;
}
