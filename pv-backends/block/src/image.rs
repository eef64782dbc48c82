//! Image formats, and the "suite" layout: one read-only base image shared
//! by many guests, and per guest a qcow2 overlay that holds what the guest
//! wrote, backed by the base.
//!
//! ```text
//!   base.img (raw or qcow2, never written)
//!      ^            ^
//!   guest1.qcow2  guest2.qcow2   (create_overlay; served writable)
//! ```
//!
//! [`open_image`] opens any supported image as a [`Disk`]; [`create_overlay`]
//! makes an overlay as `qemu-img create -f qcow2 -b BASE -F FMT OVERLAY`
//! does, without QEMU's tools.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::disk::{Disk, DiskError, RawDisk, RawDiskOptions};
use crate::qcow2::{self, BackingFile, CreateOptions, Qcow2Disk, Qcow2Error, Qcow2Options, QCOW2_MAGIC};

/// The format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// The disk's bytes as they are: a file or a block device.
    Raw,
    /// QEMU's copy-on-write format, versions 2 and 3.
    Qcow2,
}

impl ImageFormat {
    /// The format of the image at `path`: qcow2 if it starts with the
    /// qcow2 magic, raw otherwise.
    ///
    /// Never probe an image a guest has written to as raw: the guest could
    /// have written a qcow2 header naming a host file as backing file.
    /// Probing is for images the host made.
    pub fn detect(path: &Path) -> Result<ImageFormat, DiskError> {
        let open_err = |source| DiskError::Open { path: path.to_owned(), source };
        let file = File::open(path).map_err(open_err)?;
        let mut magic = [0u8; 4];
        let mut done = 0;
        while done < magic.len() {
            match file.read_at(&mut magic[done..], done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(open_err(e)),
            }
        }
        Ok(if done == magic.len() && magic == QCOW2_MAGIC { ImageFormat::Qcow2 } else { ImageFormat::Raw })
    }

    /// The name QEMU uses for the format (`-f`, `-F`).
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// Opens the image at `path` as a disk, in `format`, or in the format
/// [`ImageFormat::detect`] finds when `format` is `None`. `options.direct`
/// (O_DIRECT) is only supported for raw images.
pub fn open_image(
    path: &Path,
    format: Option<ImageFormat>,
    options: RawDiskOptions,
) -> Result<Box<dyn Disk>, DiskError> {
    let format = match format {
        Some(format) => format,
        None => ImageFormat::detect(path)?,
    };
    match format {
        ImageFormat::Raw => Ok(Box::new(RawDisk::open(path, options)?)),
        ImageFormat::Qcow2 if options.direct => Err(Qcow2Error::DirectIo(path.to_owned()).into()),
        ImageFormat::Qcow2 => {
            let options = Qcow2Options { read_only: options.read_only, sector_size: options.sector_size };
            Ok(Box::new(Qcow2Disk::open(path, options)?))
        }
    }
}

/// Opens a backing file read-only, `depth` levels below the served image.
pub(crate) fn open_backing(path: &Path, format: Option<ImageFormat>, depth: usize) -> Result<Box<dyn Disk>, DiskError> {
    let format = match format {
        Some(format) => format,
        None => ImageFormat::detect(path)?,
    };
    match format {
        ImageFormat::Raw => {
            Ok(Box::new(RawDisk::open(path, RawDiskOptions { read_only: true, ..Default::default() })?))
        }
        ImageFormat::Qcow2 => {
            let options = Qcow2Options { read_only: true, sector_size: None };
            Ok(Box::new(Qcow2Disk::open_at_depth(path, options, depth)?))
        }
    }
}

/// Creates a qcow2 overlay at `overlay` (which must not exist) over the
/// base image `base`, of the base's size, with 64 KiB clusters: reads of
/// what the guest has not written come from the base, writes land in the
/// overlay, and the base is only ever opened read-only.
///
/// `base` is stored in the overlay as given: a relative path is relative
/// to the overlay's directory, as QEMU resolves it. Its format is detected
/// when `base_format` is `None`, and stored either way (QEMU's `-F`).
/// Returns the virtual size.
pub fn create_overlay(overlay: &Path, base: &Path, base_format: Option<ImageFormat>) -> Result<u64, DiskError> {
    let resolved = qcow2::resolve_backing(overlay, &base.to_string_lossy());
    let format = match base_format {
        Some(format) => format,
        None => ImageFormat::detect(&resolved)?,
    };
    let size = open_backing(&resolved, Some(format), 1)?.size();
    let name = base.to_str().ok_or_else(|| Qcow2Error::Create {
        path: overlay.to_owned(),
        what: format!("the base path {} is not UTF-8", base.display()),
    })?;
    let options =
        CreateOptions { backing: Some(BackingFile { name: name.to_owned(), format }), ..CreateOptions::new(size) };
    qcow2::create(overlay, &options)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_by_magic_and_overlays_read_their_base() {
        let dir = std::env::temp_dir().join(format!("rblkback-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("base.img");
        std::fs::write(&base, vec![0x5au8; 128 << 10]).unwrap();
        let overlay = dir.join("guest.qcow2");
        let _ = std::fs::remove_file(&overlay);

        let size = create_overlay(&overlay, Path::new("base.img"), None).unwrap();
        let disk = open_image(&overlay, None, RawDiskOptions::default()).unwrap();
        disk.write_at(512, b"mine").unwrap();
        let mut got = vec![0u8; 1024];
        disk.read_at(0, &mut got).unwrap();
        let direct = open_image(&overlay, None, RawDiskOptions { direct: true, ..Default::default() });

        assert_eq!(size, 128 << 10);
        assert_eq!(ImageFormat::detect(&base).unwrap(), ImageFormat::Raw);
        assert_eq!(ImageFormat::detect(&overlay).unwrap(), ImageFormat::Qcow2);
        assert_eq!(disk.size(), 128 << 10);
        assert!(got[..512].iter().chain(&got[516..]).all(|&b| b == 0x5a));
        assert_eq!(&got[512..516], b"mine");
        assert!(matches!(direct, Err(DiskError::Qcow2(Qcow2Error::DirectIo(_)))));
        assert!(create_overlay(&overlay, Path::new("base.img"), None).is_err(), "an overlay is never overwritten");
        drop(disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
