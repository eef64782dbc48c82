//! Decompression of a bzImage's payload (the compressed `vmlinux`).
//!
//! Linux's build appends the uncompressed size, as a 32-bit little-endian
//! number, to every compressed payload (`size_append` in `scripts/Makefile.lib`;
//! for gzip it is the stream's own `ISIZE`). Every decoder here checks the
//! output against it, and stops once the output would exceed a limit, so a
//! hostile image can make us neither loop nor allocate without bound.

use std::fmt;
use std::io::Read;

use thiserror::Error;

/// The largest decompressed kernel accepted by default: 1 GiB, as libxenguest's
/// `XC_DOM_DECOMPRESS_MAX`.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 1 << 30;

/// Largest block of an LZ4 legacy frame once decompressed (`LEGACY_BLOCKSIZE`).
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;
/// Magic number that opens an LZ4 legacy frame (`ARCHIVE_MAGICNUMBER`).
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Dictionary memory the xz and lzma decoders may allocate, in KiB. Linux uses
/// at most 64 MiB (`lzma -9`); anything bigger is not a kernel.
const LZMA_MEM_LIMIT_KIB: u32 = 256 * 1024;

/// A compression format of a bzImage payload, recognised by its magic bytes
/// (the same list, in the same order, as libxenguest's bzImage loader).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip (`1f 8b`), `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// bzip2 (`BZh`), `CONFIG_KERNEL_BZIP2`: recognised but not supported.
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`), `CONFIG_KERNEL_XZ`.
    Xz,
    /// zstd (`28 b5 2f fd`), `CONFIG_KERNEL_ZSTD` (Debian's 6.12 kernels).
    Zstd,
    /// lzma "alone" format (`5d 00`), `CONFIG_KERNEL_LZMA`.
    Lzma,
    /// lzop (`89 4c 5a 4f`), `CONFIG_KERNEL_LZO`: recognised but not supported.
    Lzo,
    /// LZ4 legacy frames (`02 21 4c 18`), `CONFIG_KERNEL_LZ4` (Debian's 6.1
    /// kernels).
    Lz4Legacy,
}

impl Compression {
    /// Recognises the format from the first bytes of `data`.
    pub fn detect(data: &[u8]) -> Option<Self> {
        const MAGICS: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b], Compression::Gzip),
            (b"BZh", Compression::Bzip2),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (&[0x5d, 0x00], Compression::Lzma),
            (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4Legacy),
        ];
        MAGICS
            .iter()
            .find(|(magic, _)| data.starts_with(magic))
            .map(|&(_, format)| format)
    }

    /// The format's usual name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Bzip2 => "bzip2",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Lzma => "lzma",
            Self::Lzo => "lzo",
            Self::Lz4Legacy => "lz4 (legacy frames)",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a payload could not be decompressed.
#[derive(Debug, Error)]
pub enum DecompressError {
    /// The first bytes match no known compression format.
    #[error("the kernel payload starts with {magic:02x?}, which is no compression format a Linux bzImage uses")]
    UnknownFormat {
        /// The first (up to 6) bytes of the payload.
        magic: Vec<u8>,
    },
    /// The format is recognised but this builder has no decoder for it.
    #[error("the kernel payload is {0}-compressed, which this builder cannot decompress; build the kernel with gzip, xz, lzma, lz4 or zstd, or pass the uncompressed vmlinux")]
    Unsupported(Compression),
    /// The payload is too short to hold the format's header and size trailer.
    #[error("the {format} kernel payload is only {len} bytes long, too short to be valid")]
    TooShort {
        /// The format.
        format: Compression,
        /// Length of the payload in bytes.
        len: usize,
    },
    /// The decoder rejected the data.
    #[error("the {format} kernel payload is corrupt: {reason}")]
    Corrupt {
        /// The format.
        format: Compression,
        /// What the decoder reported.
        reason: String,
    },
    /// The output grew past the limit.
    #[error("the {format} kernel payload decompresses to more than {limit} bytes; is this really a kernel?")]
    TooLarge {
        /// The format.
        format: Compression,
        /// The limit in bytes.
        limit: usize,
    },
    /// The output size disagrees with the size the kernel build appended.
    #[error("the {format} kernel payload decompressed to {actual} bytes but its trailer says {expected}; the image is truncated or corrupt")]
    SizeMismatch {
        /// The format.
        format: Compression,
        /// The size recorded in the payload's last four bytes.
        expected: u32,
        /// The size decompressed (modulo 2^32 when compared).
        actual: usize,
    },
}

/// Decompresses a bzImage payload: recognises the format, decodes it
/// (stopping past `limit` bytes), and checks the size trailer.
pub fn decompress_payload(
    data: &[u8],
    limit: usize,
) -> Result<(Compression, Vec<u8>), DecompressError> {
    let format = Compression::detect(data).ok_or_else(|| DecompressError::UnknownFormat {
        magic: data.iter().take(6).copied().collect(),
    })?;
    let Some(trailer_at) = data.len().checked_sub(4).filter(|&at| at >= 4) else {
        return Err(DecompressError::TooShort {
            format,
            len: data.len(),
        });
    };
    let mut trailer = [0u8; 4];
    trailer.copy_from_slice(&data[trailer_at..]);
    let expected = u32::from_le_bytes(trailer);
    // The trailer is part of a gzip stream (ISIZE) and follows the stream
    // for every other format.
    let body = &data[..trailer_at];

    let out = match format {
        Compression::Gzip => gunzip(data, limit)?,
        Compression::Xz => read_limited(
            format,
            lzma_rust2::XzReader::new_mem_limit(body, false, LZMA_MEM_LIMIT_KIB),
            limit,
        )?,
        Compression::Lzma => {
            let reader = lzma_rust2::LzmaReader::new_mem_limit(body, LZMA_MEM_LIMIT_KIB, None)
                .map_err(|e| corrupt(format, e))?;
            read_limited(format, reader, limit)?
        }
        Compression::Zstd => unzstd(body, limit)?,
        Compression::Lz4Legacy => unlz4_legacy(body, limit)?,
        Compression::Bzip2 | Compression::Lzo => return Err(DecompressError::Unsupported(format)),
    };
    // The trailer holds the size modulo 2^32.
    if out.len() as u64 & 0xffff_ffff != u64::from(expected) {
        return Err(DecompressError::SizeMismatch {
            format,
            expected,
            actual: out.len(),
        });
    }
    Ok((format, out))
}

fn corrupt(format: Compression, reason: impl fmt::Display) -> DecompressError {
    DecompressError::Corrupt {
        format,
        reason: reason.to_string(),
    }
}

/// Reads `reader` to its end, failing once more than `limit` bytes come out.
fn read_limited(
    format: Compression,
    reader: impl Read,
    limit: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(format, e))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { format, limit });
    }
    Ok(out)
}

/// gzip (RFC 1952): the member header, then raw deflate through miniz_oxide.
pub(crate) fn gunzip(data: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    const FORMAT: Compression = Compression::Gzip;
    const FHCRC: u8 = 1 << 1;
    const FEXTRA: u8 = 1 << 2;
    const FNAME: u8 = 1 << 3;
    const FCOMMENT: u8 = 1 << 4;
    const FRESERVED: u8 = 0xe0;
    const DEFLATE: u8 = 8;

    let short = || corrupt(FORMAT, "the header is truncated");
    let header = data.get(..10).ok_or_else(short)?;
    if header[..2] != [0x1f, 0x8b] || header[2] != DEFLATE {
        return Err(corrupt(FORMAT, "not a deflate-compressed gzip member"));
    }
    let flags = header[3];
    if flags & FRESERVED != 0 {
        return Err(corrupt(FORMAT, "reserved header flags are set"));
    }
    let mut at = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = data.get(at..at + 2).ok_or_else(short)?;
        at += 2 + usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let rest = data.get(at..).ok_or_else(short)?;
            let nul = rest.iter().position(|&b| b == 0).ok_or_else(short)?;
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let deflate = data.get(at..).ok_or_else(short)?;
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflate, limit).map_err(|e| {
        if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput {
            DecompressError::TooLarge {
                format: FORMAT,
                limit,
            }
        } else {
            corrupt(FORMAT, e)
        }
    })
}

/// zstd: one or more frames back to back.
fn unzstd(mut body: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    const FORMAT: Compression = Compression::Zstd;
    let mut out = Vec::new();
    // Every frame consumes at least its header, so this ends.
    while !body.is_empty() {
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut body).map_err(|e| corrupt(FORMAT, e))?;
        let room = limit.saturating_sub(out.len());
        let frame = read_limited(FORMAT, decoder, room).map_err(|e| match e {
            DecompressError::TooLarge { .. } => DecompressError::TooLarge {
                format: FORMAT,
                limit,
            },
            other => other,
        })?;
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// LZ4 legacy frames, as `lz4 -l` writes them: the magic number, then
/// blocks of `[u32 LE compressed size][compressed block]`, each decompressing
/// to at most 8 MiB. A repeated magic number starts a new frame.
fn unlz4_legacy(body: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    const FORMAT: Compression = Compression::Lz4Legacy;
    let read_u32 = |at: usize| -> Option<u32> {
        let bytes = body.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    if read_u32(0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(corrupt(
            FORMAT,
            "the frame does not start with the magic number",
        ));
    }
    let mut at = 4usize;
    let mut out: Vec<u8> = Vec::new();
    // Every iteration consumes at least four input bytes.
    while at < body.len() {
        let size = read_u32(at).ok_or_else(|| corrupt(FORMAT, "a block size is truncated"))?;
        at += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let block = usize::try_from(size)
            .ok()
            .and_then(|size| body.get(at..at.checked_add(size)?))
            .ok_or_else(|| corrupt(FORMAT, "a block runs past the end of the payload"))?;
        at += block.len();

        let start = out.len();
        let room = limit.saturating_sub(start).min(LZ4_LEGACY_BLOCK_MAX);
        out.resize(start + room, 0);
        match lz4_flex::block::decompress_into(block, &mut out[start..]) {
            Ok(written) => out.truncate(start + written),
            Err(_) if room < LZ4_LEGACY_BLOCK_MAX => {
                return Err(DecompressError::TooLarge {
                    format: FORMAT,
                    limit,
                })
            }
            Err(e) => return Err(corrupt(FORMAT, e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A payload as Linux's build makes it: the compressed stream, then the
    /// uncompressed size (except for gzip, whose stream ends with it).
    pub(crate) fn with_size_trailer(mut stream: Vec<u8>, len: usize) -> Vec<u8> {
        stream.extend_from_slice(&(len as u32).to_le_bytes());
        stream
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
        out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
        out.extend_from_slice(&crc32(data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    pub(crate) fn lz4_legacy(data: &[u8]) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in data.chunks(LZ4_LEGACY_BLOCK_MAX) {
            let block = lz4_flex::block::compress(chunk);
            out.extend_from_slice(&(block.len() as u32).to_le_bytes());
            out.extend(block);
        }
        with_size_trailer(out, data.len())
    }

    pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
        let stream =
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest);
        with_size_trailer(stream, data.len())
    }

    pub(crate) fn xz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut options = lzma_rust2::XzOptions::with_preset(1);
        options.set_check_sum_type(lzma_rust2::CheckType::Crc32);
        options.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut writer = lzma_rust2::XzWriter::new(Vec::new(), options).unwrap();
        writer.write_all(data).unwrap();
        let stream = writer.finish().unwrap();
        with_size_trailer(stream, data.len())
    }

    pub(crate) fn lzma(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let options = lzma_rust2::LzmaOptions::with_preset(1);
        let mut writer =
            lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &options, Some(data.len() as u64))
                .unwrap();
        writer.write_all(data).unwrap();
        let stream = writer.finish().unwrap();
        with_size_trailer(stream, data.len())
    }

    /// Something that compresses but is not all zeroes.
    pub(crate) fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 / 13 % 251) as u8).collect()
    }

    #[test]
    fn every_supported_format_round_trips() {
        let data = sample(300_000);
        for (format, payload) in [
            (Compression::Gzip, gzip(&data)),
            (Compression::Lz4Legacy, lz4_legacy(&data)),
            (Compression::Zstd, zstd(&data)),
            (Compression::Xz, xz(&data)),
            (Compression::Lzma, lzma(&data)),
        ] {
            let (found, out) = decompress_payload(&payload, DEFAULT_MAX_DECOMPRESSED)
                .unwrap_or_else(|e| panic!("{format}: {e}"));
            assert_eq!(found, format);
            assert!(out == data, "{format} output differs");
        }
    }

    #[test]
    fn lz4_legacy_spans_several_blocks_and_frames() {
        let data = sample(LZ4_LEGACY_BLOCK_MAX * 2 + 12345);
        let mut payload = lz4_legacy(&data);
        // A second frame magic in the middle of the stream is skipped.
        let second_block = 4 + 4 + u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
        payload.splice(second_block..second_block, LZ4_LEGACY_MAGIC.to_le_bytes());

        let (_, out) = decompress_payload(&payload, DEFAULT_MAX_DECOMPRESSED).unwrap();

        assert!(out == data);
    }

    #[test]
    fn output_past_the_limit_is_refused() {
        let data = vec![0u8; 1 << 20];
        for payload in [
            gzip(&data),
            lz4_legacy(&data),
            zstd(&data),
            xz(&data),
            lzma(&data),
        ] {
            let err = decompress_payload(&payload, 4096).unwrap_err();
            assert!(
                matches!(err, DecompressError::TooLarge { limit: 4096, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn a_wrong_size_trailer_is_refused() {
        let data = sample(5000);
        let mut payload = zstd(&data);
        let len = payload.len();
        payload[len - 4..].copy_from_slice(&4999u32.to_le_bytes());

        let err = decompress_payload(&payload, DEFAULT_MAX_DECOMPRESSED).unwrap_err();

        assert!(matches!(
            err,
            DecompressError::SizeMismatch {
                expected: 4999,
                actual: 5000,
                ..
            }
        ));
    }

    #[test]
    fn unknown_and_unsupported_formats_are_named() {
        assert!(matches!(
            decompress_payload(b"\x7fELF\0\0\0\0\0\0", 100),
            Err(DecompressError::UnknownFormat { .. })
        ));
        assert!(matches!(
            decompress_payload(b"BZh91AY&SY\0\0\0\0", 100),
            Err(DecompressError::Unsupported(Compression::Bzip2))
        ));
    }

    #[test]
    fn truncated_payloads_fail_without_panicking() {
        let data = sample(100_000);
        for payload in [
            gzip(&data),
            lz4_legacy(&data),
            zstd(&data),
            xz(&data),
            lzma(&data),
        ] {
            for cut in [0, 1, 3, 7, 8, 20, payload.len() / 2, payload.len() - 5] {
                assert!(decompress_payload(&payload[..cut], DEFAULT_MAX_DECOMPRESSED).is_err());
            }
        }
    }
}
