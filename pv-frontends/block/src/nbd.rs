//! `rblkfront nbd`: the disk as a Linux NBD device.
//!
//! The kernel's NBD driver is handed one end of a socket pair
//! ([`crate::sys::NbdDevice`]) and sends requests on it in the NBD transmission
//! protocol (`Documentation/blockdev/nbd.rst`, the NBD protocol's
//! "transmission phase"; the kernel skips the handshake). [`serve`]
//! answers them on the other end from a [`BlockFrontend`].
//!
//! Requests come from the kernel, but are still checked: an unknown
//! command or a range off the disk is answered with an error, and a
//! request whose payload could not be skipped ends the session.
//!
//! A write's payload is read from the socket straight into the granted
//! pages that carry it to the backend
//! ([`BlockFrontend::write_in_place`]), with no copy in between.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use hypercall_abi::platform::{EventChannels, GrantShare, Xenstore};

use crate::{sys, BlockFrontend, Error};

/// `NBD_REQUEST_MAGIC`.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_CMD_READ`.
pub const NBD_CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const NBD_CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`: the client disconnects.
pub const NBD_CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const NBD_CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const NBD_CMD_TRIM: u16 = 4;
/// Largest request payload accepted (the kernel sends at most
/// `max_sectors`, 32 MiB at the very most).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// NBD error values (the protocol's, which are Linux's errnos).
const NBD_EPERM: u32 = 1;
const NBD_EIO: u32 = 5;
const NBD_EINVAL: u32 = 22;
const NBD_ENOSPC: u32 = 28;
const NBD_ENOTSUP: u32 = 95;

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed.
    #[error("the NBD socket failed: {0}")]
    Io(#[from] io::Error),
    /// The client sent something that is not an NBD request.
    #[error("the NBD client sent a request with magic {0:#010x}; closing the session")]
    BadMagic(u32),
    /// A write too large to take.
    #[error("the NBD client sent a {0}-byte write, more than {MAX_PAYLOAD}; closing the session")]
    TooLarge(u32),
    /// The device broke or went away.
    #[error(transparent)]
    Device(Error),
}

/// One request header (28 bytes, big-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
}

fn read_request(sock: &mut impl Read) -> Result<Option<Request>, NbdError> {
    let mut header = [0u8; 28];
    match sock.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let be32 = |at: usize| header.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes);
    let be64 = |at: usize| header.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
    let magic = be32(0);
    if magic != NBD_REQUEST_MAGIC {
        return Err(NbdError::BadMagic(magic));
    }
    // Bytes 4..6 are the command flags (FUA, ...), which need nothing here:
    // writes complete only once the backend answered.
    let command = header.get(6..8).and_then(|b| b.try_into().ok()).map_or(0, u16::from_be_bytes);
    Ok(Some(Request { command, cookie: be64(8), offset: be64(16), length: be32(24) }))
}

fn reply(sock: &mut impl Write, cookie: u64, error: u32, data: &[u8]) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    header[4..8].copy_from_slice(&error.to_be_bytes());
    header[8..].copy_from_slice(&cookie.to_be_bytes());
    sock.write_all(&header)?;
    if error == 0 {
        sock.write_all(data)?;
    }
    sock.flush()
}

/// The NBD error for a failed device call; device failures that end the
/// session, and a socket that failed while a write's payload was read,
/// are returned as `Err`.
fn nbd_error(e: Error) -> Result<u32, NbdError> {
    match e {
        Error::Batch { source, .. } => nbd_error(*source),
        Error::Data(e) => Err(NbdError::Io(e)),
        Error::ReadOnly => Ok(NBD_EPERM),
        Error::Unsupported(_) => Ok(NBD_ENOTSUP),
        Error::OutOfRange { .. } => Ok(NBD_ENOSPC),
        Error::Misaligned { .. } => Ok(NBD_EINVAL),
        Error::Io { .. } => Ok(NBD_EIO),
        e => Err(NbdError::Device(e)),
    }
}

/// Serves NBD requests from `sock` with `dev` until the client
/// disconnects (`NBD_CMD_DISC` or end of stream).
pub fn serve<G: GrantShare, E: EventChannels, S: Xenstore>(
    dev: &mut BlockFrontend<G, E, S>,
    sock: &mut (impl Read + Write + AsFd),
) -> Result<(), NbdError> {
    let mut buf = Vec::new();
    while let Some(request) = read_request(sock)? {
        let Request { command, cookie, offset, length } = request;
        if command == NBD_CMD_WRITE && length > MAX_PAYLOAD {
            return Err(NbdError::TooLarge(length));
        }
        let len = length.min(MAX_PAYLOAD) as usize;
        let aligned = offset % 512 == 0 && length % 512 == 0;
        let sector = offset / 512;
        let result = match command {
            NBD_CMD_DISC => return Ok(()),
            NBD_CMD_READ if aligned && length <= MAX_PAYLOAD => {
                buf.resize(len, 0);
                dev.read(sector, &mut buf)
            }
            NBD_CMD_WRITE => {
                // The payload goes from the socket into the granted pages,
                // part by part in order; what was not taken (a refused
                // range, a part that failed) is skipped after.
                let mut received = 0;
                let result = if aligned {
                    dev.write_in_place(&[(sector, len)], |_, _, pages| {
                        sys::read_exact_into(sock.as_fd(), pages)?;
                        received += pages.len();
                        Ok(())
                    })
                } else {
                    Err(Error::Misaligned { offset, len, sector_size: 512 })
                };
                if !matches!(result, Err(Error::Batch { ref source, .. }) if matches!(**source, Error::Data(_))) {
                    skip(sock, len - received, &mut buf)?;
                }
                result
            }
            NBD_CMD_FLUSH => dev.flush(),
            NBD_CMD_TRIM if aligned => dev.discard(sector, u64::from(length) / 512),
            NBD_CMD_READ | NBD_CMD_TRIM => Err(Error::Misaligned { offset, len, sector_size: 512 }),
            _ => Err(Error::Unsupported("this NBD command")),
        };
        let error = match result {
            Ok(()) => 0,
            Err(e) => {
                log::warn!("NBD command {command} at {offset}+{length}: {e}");
                nbd_error(e)?
            }
        };
        let data = if command == NBD_CMD_READ { buf.as_slice() } else { &[] };
        reply(sock, cookie, error, data)?;
    }
    Ok(())
}

/// Reads and drops `len` bytes of payload.
fn skip(sock: &mut impl Read, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(len.min(64 << 10), 0);
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        sock.read_exact(&mut buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// NBD client side, for tests: the request header.
pub fn request_header(command: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut header = [0u8; 28];
    header[..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
    header[6..8].copy_from_slice(&command.to_be_bytes());
    header[8..16].copy_from_slice(&cookie.to_be_bytes());
    header[16..24].copy_from_slice(&offset.to_be_bytes());
    header[24..28].copy_from_slice(&length.to_be_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_magic_is_refused() {
        let header = request_header(NBD_CMD_WRITE, 0xfeed, 4096, 512);

        let parsed = read_request(&mut &header[..]).unwrap();

        assert_eq!(parsed, Some(Request { command: NBD_CMD_WRITE, cookie: 0xfeed, offset: 4096, length: 512 }));
        let mut bad = header;
        bad[0] = 0;
        assert!(matches!(read_request(&mut &bad[..]), Err(NbdError::BadMagic(0x0060_9513))));
        assert_eq!(read_request(&mut &header[..10]).unwrap(), None, "a closed stream ends the session");
    }

    #[test]
    fn replies_carry_data_only_on_success() {
        let mut out = Vec::new();
        reply(&mut out, 7, 0, b"data").unwrap();
        reply(&mut out, 8, NBD_EIO, b"ignored").unwrap();

        assert_eq!(out.len(), 16 + 4 + 16);
        assert_eq!(out[..4], NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&out[16..20], b"data");
        assert_eq!(out[24..28], NBD_EIO.to_be_bytes());
    }
}
