//! A server's root disk: an empty qcow2 overlay over its suite's
//! read-only image.
//!
//! The qcow2 code is rblkback's ([`rblkback::qcow2::create`]), the code
//! that serves the overlay to the guest afterwards, so what is written
//! here is what the backend reads: a version 3 image with 64 KiB clusters,
//! laid out as `qemu-img create -f qcow2 -b BACKING -F FORMAT` lays it
//! out, with the backing file's name and format in its header.

use std::path::{Path, PathBuf};

use rblkback::qcow2::{self, BackingFile, CreateOptions};
use rblkback::{open_image, DiskError, Qcow2Disk, Qcow2Options, RawDiskOptions};

use crate::model::ImageFormat;

/// Why an overlay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The backing image could not be opened in its format (missing,
    /// unreadable, or not of that format).
    #[error("cannot open the backing image {path} as {format}: {source}")]
    Backing {
        /// The backing image, resolved.
        path: PathBuf,
        /// The format it was opened as.
        format: ImageFormat,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// The backing file's path cannot be stored in a qcow2 header.
    #[error("the backing image path {0} is not UTF-8")]
    NotUtf8(PathBuf),
    /// The overlay would be smaller than its backing image.
    #[error(
        "an overlay of {size} bytes would hide the end of its {backing_size}-byte backing image"
    )]
    TooSmall {
        /// The size asked for.
        size: u64,
        /// The backing image's virtual size.
        backing_size: u64,
    },
    /// An existing overlay could not be opened.
    #[error("cannot open the overlay {path}: {source}")]
    Open {
        /// The overlay.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
    /// Writing the overlay failed (it exists already, or its directory is
    /// missing or not writable).
    #[error("cannot create the overlay {path}: {source}")]
    Create {
        /// The overlay.
        path: PathBuf,
        /// Why.
        #[source]
        source: DiskError,
    },
}

/// The virtual size of the image at `path` in `format`, in bytes: the
/// guest-visible size, not the file's.
pub fn image_size(path: &Path, format: ImageFormat) -> Result<u64, OverlayError> {
    let options = RawDiskOptions {
        read_only: true,
        ..RawDiskOptions::default()
    };
    let disk =
        open_image(path, Some(format.into()), options).map_err(|source| OverlayError::Backing {
            path: path.to_owned(),
            format,
            source,
        })?;
    Ok(disk.size())
}

/// The format of the image at `path`: qcow2 if it starts with qcow2's
/// magic, raw otherwise. Only for images the host made (a suite's image),
/// never for one a guest has written to.
pub fn detect_format(path: &Path) -> Result<ImageFormat, OverlayError> {
    rblkback::ImageFormat::detect(path)
        .map(ImageFormat::from)
        .map_err(|source| OverlayError::Backing {
            path: path.to_owned(),
            format: ImageFormat::Raw,
            source,
        })
}

/// The backing file of the qcow2 image at `path`, resolved as the
/// backend resolves it, if it has one. Opens the whole backing chain, so
/// this fails if a backing image is missing.
pub fn backing_of(path: &Path) -> Result<Option<PathBuf>, OverlayError> {
    let options = Qcow2Options {
        read_only: true,
        ..Qcow2Options::default()
    };
    let disk = Qcow2Disk::open(path, options).map_err(|source| OverlayError::Open {
        path: path.to_owned(),
        source,
    })?;
    Ok(disk.backing_path().map(Path::to_owned))
}

/// Creates an empty qcow2 version 3 image at `path` (which must not
/// exist) whose backing file is `backing`, of format `backing_format`.
///
/// `backing` is stored as given: a relative path is relative to the
/// overlay's directory, as QEMU and rblkback resolve it. The virtual size
/// is `size`, rounded up to whole 512-byte sectors, or the backing image's
/// size when `size` is `None`; it cannot be smaller than the backing
/// image's. Returns the virtual size.
pub fn create_overlay(
    path: &Path,
    backing: &Path,
    backing_format: ImageFormat,
    size: Option<u64>,
) -> Result<u64, OverlayError> {
    let name = backing
        .to_str()
        .ok_or_else(|| OverlayError::NotUtf8(backing.to_owned()))?;
    let resolved = qcow2::resolve_backing(path, name);
    let backing_size = image_size(&resolved, backing_format)?;
    // Past 2^56 bytes qcow2::create refuses the size anyway.
    let size = size
        .unwrap_or(backing_size)
        .checked_next_multiple_of(512)
        .unwrap_or(u64::MAX);
    if size < backing_size {
        return Err(OverlayError::TooSmall { size, backing_size });
    }
    let options = CreateOptions {
        backing: Some(BackingFile {
            name: name.to_owned(),
            format: backing_format.into(),
        }),
        ..CreateOptions::new(size)
    };
    qcow2::create(path, &options).map_err(|source| OverlayError::Create {
        path: path.to_owned(),
        source,
    })?;
    log::info!(
        "created {} ({size} bytes) over {name} ({backing_format})",
        path.display()
    );
    Ok(size)
}
