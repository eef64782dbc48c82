//! Kernel image formats: a raw ELF `vmlinux`, a gzip-compressed one, or an
//! x86 bzImage whose compressed payload is the ELF `vmlinux`
//! (libxenguest's `xg_dom_bzimageloader.c` and `xc_dom_try_gunzip`).
//!
//! The bzImage setup header is described in Linux's
//! `Documentation/arch/x86/boot.rst`; a Xen PV or PVH domain boots the ELF
//! inside, never the real-mode setup code.

use std::borrow::Cow;

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::decompress::{self, Compression, DecompressError};

/// The ELF magic, `\x7fELF`.
pub const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset of the setup header in a bzImage (`struct setup_header` in
/// `arch/x86/include/uapi/asm/bootparam.h`).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// `header` of the setup header: `"HdrS"`.
pub const SETUP_HEADER_MAGIC: &[u8; 4] = b"HdrS";
/// The oldest boot protocol with `payload_offset`/`payload_length` (2.08).
pub const MIN_BOOT_PROTOCOL: u16 = 0x0208;

/// The bzImage setup header up to `payload_length` (boot protocol 2.08),
/// little-endian and unaligned as it sits in the file at
/// [`SETUP_HEADER_OFFSET`].
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct SetupHeader {
    /// Size of the setup code in 512-byte sectors (0 means 4).
    pub setup_sects: u8,
    /// Deprecated root read-only flag.
    pub root_flags: U16,
    /// Size of the 32-bit code in 16-byte paragraphs.
    pub syssize: U32,
    /// Obsolete.
    pub ram_size: U16,
    /// Video mode.
    pub vid_mode: U16,
    /// Default root device.
    pub root_dev: U16,
    /// `0xAA55`.
    pub boot_flag: U16,
    /// x86 jump instruction.
    pub jump: U16,
    /// [`SETUP_HEADER_MAGIC`].
    pub header: [u8; 4],
    /// Boot protocol version, e.g. `0x020f`.
    pub version: U16,
    /// Boot loader hook.
    pub realmode_swtch: U32,
    /// Obsolete.
    pub start_sys_seg: U16,
    /// Pointer to the kernel version string.
    pub kernel_version: U16,
    /// Boot loader identifier.
    pub type_of_loader: u8,
    /// Boot protocol option flags.
    pub loadflags: u8,
    /// Move to high memory size.
    pub setup_move_size: U16,
    /// Boot loader hook.
    pub code32_start: U32,
    /// initrd load address.
    pub ramdisk_image: U32,
    /// initrd size.
    pub ramdisk_size: U32,
    /// Obsolete.
    pub bootsect_kludge: U32,
    /// Free memory after setup end.
    pub heap_end_ptr: U16,
    /// Extended boot loader version.
    pub ext_loader_ver: u8,
    /// Extended boot loader ID.
    pub ext_loader_type: u8,
    /// 32-bit pointer to the kernel command line.
    pub cmd_line_ptr: U32,
    /// Highest legal initrd address.
    pub initrd_addr_max: U32,
    /// Physical address alignment required for the kernel.
    pub kernel_alignment: U32,
    /// Whether the kernel is relocatable.
    pub relocatable_kernel: u8,
    /// Minimum alignment, as a power of two.
    pub min_alignment: u8,
    /// Boot protocol option flags.
    pub xloadflags: U16,
    /// Maximum size of the kernel command line.
    pub cmdline_size: U32,
    /// Hardware subarchitecture.
    pub hardware_subarch: U32,
    /// Subarchitecture-specific data.
    pub hardware_subarch_data: U64,
    /// Offset of the kernel payload from the end of the setup code.
    pub payload_offset: U32,
    /// Length of the kernel payload.
    pub payload_length: U32,
}
const _: () = assert!(core::mem::size_of::<SetupHeader>() == 0x250 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, header) == 0x202 - SETUP_HEADER_OFFSET);
const _: () = assert!(core::mem::offset_of!(SetupHeader, version) == 0x206 - SETUP_HEADER_OFFSET);
const _: () =
    assert!(core::mem::offset_of!(SetupHeader, payload_offset) == 0x248 - SETUP_HEADER_OFFSET);

impl SetupHeader {
    /// Reads the setup header of a bzImage; `None` if `image` is too short or
    /// lacks the `HdrS` magic.
    pub fn from_image(image: &[u8]) -> Option<Self> {
        let bytes = image.get(SETUP_HEADER_OFFSET..)?;
        let (header, _) = Self::read_from_prefix(bytes).ok()?;
        (&header.header == SETUP_HEADER_MAGIC).then_some(header)
    }

    /// Byte offset of the protected-mode code, where `payload_offset` counts
    /// from: `(setup_sects + 1) * 512`, with 0 sectors meaning 4.
    pub fn protected_mode_offset(&self) -> u64 {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            u64::from(self.setup_sects)
        };
        (sects + 1) * 512
    }
}

/// How the kernel ELF was wrapped in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// A plain ELF file.
    Elf,
    /// A gzip-compressed ELF file.
    GzipElf,
    /// An x86 bzImage.
    BzImage {
        /// Boot protocol version of the setup header.
        boot_protocol: u16,
        /// Compression of the payload.
        compression: Compression,
    },
}

/// A kernel file unwrapped down to its ELF image.
#[derive(Debug)]
pub struct KernelImage<'a> {
    /// How the ELF was wrapped.
    pub format: ImageFormat,
    /// The ELF image: borrowed from the file when it was a plain ELF.
    pub elf: Cow<'a, [u8]>,
}

/// Why a kernel file could not be unwrapped.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The file is neither an ELF, a gzip file nor a bzImage.
    #[error("the kernel is neither an ELF image, a gzip-compressed ELF nor an x86 bzImage (it starts with {magic:02x?})")]
    UnknownFormat {
        /// The first (up to 4) bytes of the file.
        magic: Vec<u8>,
    },
    /// The bzImage's boot protocol predates the payload fields.
    #[error("the bzImage uses boot protocol {version:#06x} but at least 2.08 is needed to find its payload; use a newer kernel or its vmlinux")]
    BootProtocolTooOld {
        /// The protocol version.
        version: u16,
    },
    /// The payload lies outside the file.
    #[error("the bzImage says its payload is {length} bytes at offset {offset}, past the file's {file_len} bytes; the file is truncated or corrupt")]
    PayloadOutOfBounds {
        /// Offset of the payload in the file.
        offset: u64,
        /// Length of the payload.
        length: u64,
        /// Length of the file.
        file_len: usize,
    },
    /// Decompression failed.
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    /// What the payload or gzip file held is not an ELF image.
    #[error("the decompressed kernel is not an ELF image (it starts with {magic:02x?})")]
    PayloadNotElf {
        /// The first (up to 4) decompressed bytes.
        magic: Vec<u8>,
    },
}

/// Unwraps a kernel file to its ELF image, with the default decompression
/// limit ([`decompress::DEFAULT_MAX_DECOMPRESSED`]).
pub fn load_kernel(file: &[u8]) -> Result<KernelImage<'_>, ImageError> {
    load_kernel_with_limit(file, decompress::DEFAULT_MAX_DECOMPRESSED)
}

/// Unwraps a kernel file to its ELF image, decompressing at most `limit`
/// bytes.
pub fn load_kernel_with_limit(file: &[u8], limit: usize) -> Result<KernelImage<'_>, ImageError> {
    if file.starts_with(ELF_MAGIC) {
        return Ok(KernelImage {
            format: ImageFormat::Elf,
            elf: Cow::Borrowed(file),
        });
    }
    if let Some(header) = SetupHeader::from_image(file) {
        return unwrap_bzimage(file, &header, limit);
    }
    if file.starts_with(&[0x1f, 0x8b]) {
        // Like xc_dom_try_gunzip, which takes a gzip'd vmlinux as well.
        let elf = decompress::gunzip(file, limit)?;
        check_elf(&elf)?;
        return Ok(KernelImage {
            format: ImageFormat::GzipElf,
            elf: Cow::Owned(elf),
        });
    }
    Err(ImageError::UnknownFormat {
        magic: file.iter().take(4).copied().collect(),
    })
}

fn unwrap_bzimage<'a>(
    file: &'a [u8],
    header: &SetupHeader,
    limit: usize,
) -> Result<KernelImage<'a>, ImageError> {
    let version = header.version.get();
    if version < MIN_BOOT_PROTOCOL {
        return Err(ImageError::BootProtocolTooOld { version });
    }
    let offset = header.protected_mode_offset() + u64::from(header.payload_offset.get());
    let length = u64::from(header.payload_length.get());
    let out_of_bounds = || ImageError::PayloadOutOfBounds {
        offset,
        length,
        file_len: file.len(),
    };
    let start = usize::try_from(offset).map_err(|_| out_of_bounds())?;
    let end = usize::try_from(offset + length).map_err(|_| out_of_bounds())?;
    if start >= file.len() {
        return Err(out_of_bounds());
    }
    let payload = file.get(start..end).ok_or_else(out_of_bounds)?;

    let (compression, elf) = decompress::decompress_payload(payload, limit)?;
    check_elf(&elf)?;
    log::debug!(
        "bzImage (boot protocol {version:#06x}): {compression} payload of {length} bytes at {offset:#x} -> {} byte ELF",
        elf.len()
    );
    Ok(KernelImage {
        format: ImageFormat::BzImage {
            boot_protocol: version,
            compression,
        },
        elf: Cow::Owned(elf),
    })
}

fn check_elf(elf: &[u8]) -> Result<(), ImageError> {
    if elf.starts_with(ELF_MAGIC) {
        Ok(())
    } else {
        Err(ImageError::PayloadNotElf {
            magic: elf.iter().take(4).copied().collect(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::decompress::tests as payloads;

    /// A minimal bzImage around `payload`: setup code of `setup_sects`
    /// sectors, then some protected-mode bytes, then the payload.
    pub(crate) fn bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 3u8;
        let pm_offset = (usize::from(setup_sects) + 1) * 512;
        let payload_offset = 0x40usize;
        let mut file = vec![0u8; pm_offset + payload_offset];
        file[SETUP_HEADER_OFFSET] = setup_sects;
        file[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        file[0x202..0x206].copy_from_slice(SETUP_HEADER_MAGIC);
        file[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        file[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        file[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        file.extend_from_slice(payload);
        file.extend_from_slice(b"trailing bytes after the payload");
        file
    }

    fn fake_elf() -> Vec<u8> {
        let mut elf = ELF_MAGIC.to_vec();
        elf.extend(payloads::sample(20_000));
        elf
    }

    #[test]
    fn a_plain_elf_is_borrowed() {
        let elf = fake_elf();

        let image = load_kernel(&elf).unwrap();

        assert_eq!(image.format, ImageFormat::Elf);
        assert!(matches!(image.elf, Cow::Borrowed(_)));
    }

    #[test]
    fn bzimages_of_every_format_unwrap_to_their_elf() {
        let elf = fake_elf();
        for (compression, payload) in [
            (Compression::Lz4Legacy, payloads::lz4_legacy(&elf)),
            (Compression::Zstd, payloads::zstd(&elf)),
            (Compression::Gzip, payloads::gzip(&elf)),
            (Compression::Xz, payloads::xz(&elf)),
            (Compression::Lzma, payloads::lzma(&elf)),
        ] {
            let file = bzimage(&payload);
            let image = load_kernel(&file).unwrap();

            assert_eq!(
                image.format,
                ImageFormat::BzImage {
                    boot_protocol: 0x020f,
                    compression
                }
            );
            assert!(*image.elf == elf[..], "{compression}");
        }
    }

    #[test]
    fn a_gzipped_elf_is_accepted() {
        let elf = fake_elf();

        let file = payloads::gzip(&elf);
        let image = load_kernel(&file).unwrap();

        assert_eq!(image.format, ImageFormat::GzipElf);
        assert!(*image.elf == elf[..]);
    }

    #[test]
    fn bad_bzimages_are_refused_with_the_reason() {
        let payload = payloads::zstd(&fake_elf());
        let mut old = bzimage(&payload);
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(matches!(
            load_kernel(&old),
            Err(ImageError::BootProtocolTooOld { version: 0x0207 })
        ));

        let mut long = bzimage(&payload);
        long[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            load_kernel(&long),
            Err(ImageError::PayloadOutOfBounds { .. })
        ));

        let not_elf = bzimage(&payloads::zstd(b"MZ not an ELF at all"));
        assert!(matches!(
            load_kernel(&not_elf),
            Err(ImageError::PayloadNotElf { .. })
        ));

        assert!(matches!(
            load_kernel(b"#!/bin/sh\n"),
            Err(ImageError::UnknownFormat { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Random changes to a bzImage (header and payload) never panic.
        #[test]
        fn mutated_bzimages_never_panic(
            format in 0usize..5,
            edits in proptest::collection::vec((0usize..8192, proptest::prelude::any::<u8>()), 1..10),
        ) {
            let elf = fake_elf();
            let payload = match format {
                0 => payloads::lz4_legacy(&elf),
                1 => payloads::zstd(&elf),
                2 => payloads::gzip(&elf),
                3 => payloads::xz(&elf),
                _ => payloads::lzma(&elf),
            };
            let mut file = bzimage(&payload);
            for (at, byte) in edits {
                let len = file.len();
                // Half the edits in the setup header, half anywhere.
                let at = if at % 2 == 0 { SETUP_HEADER_OFFSET + at % 95 } else { at % len };
                file[at] = byte;
            }
            let _ = load_kernel_with_limit(&file, 1 << 20);
        }
    }
}
