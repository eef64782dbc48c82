//! The control protocol between a domain and the loopback hypervisor: the
//! loopback's hypercalls.
//!
//! One request or reply is one `SOCK_SEQPACKET` message: a `u32` opcode
//! then fixed little-endian fields, with any file descriptors attached to
//! the same message. Every field is checked while decoding (lengths against
//! the bytes actually present and against [`MAX_REFS`], booleans against
//! 0/1, no trailing bytes), so the hypervisor never trusts a count it has
//! not bounded.

use std::fmt;

use hypercall_abi::xen::{DomId, EvtchnPort, GrantRef};

/// Largest message either side sends or accepts.
pub(crate) const MAX_MESSAGE: usize = 16 * 1024;
/// Most grant references one request may name.
pub(crate) const MAX_REFS: usize = 1024;

/// A domain's request to the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// First message of a connection: claim `domid`.
    Hello { domid: DomId },
    /// Grant the `count` pages of the attached sealed memfd to `grantee`.
    GrantShare {
        grantee: DomId,
        count: u32,
        readonly: bool,
    },
    /// End foreign access to `refs`, all or none; fails while mapped.
    GrantEnd { refs: Vec<GrantRef> },
    /// Give `refs` back: ended now if unmapped, else at their last unmap.
    GrantRelease { refs: Vec<GrantRef> },
    /// Map `refs` of `owner`.
    GrantMap {
        owner: DomId,
        writable: bool,
        refs: Vec<GrantRef>,
    },
    /// Undo the mapping `handle`.
    GrantUnmap { handle: u64 },
    /// Allocate a port `remote` may bind to; the doorbell bell is attached.
    EvtchnAllocUnbound { remote: DomId },
    /// Bind to `remote_port` of `remote`; the doorbell bell is attached.
    EvtchnBindInterdomain {
        remote: DomId,
        remote_port: EvtchnPort,
    },
    /// Notify the other end of `port` (the slow path: see `evtchn`).
    EvtchnSend { port: EvtchnPort },
    /// Close `port`.
    EvtchnClose { port: EvtchnPort },
    /// Open a xenstore connection as this domain; the reply carries it.
    XenstoreConnect,
}

/// Where one mapped page comes from: the attached descriptor `fd` (an
/// index into the reply's descriptors) at page `page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MappedPage {
    pub(crate) fd: u32,
    pub(crate) page: u32,
}

/// The hypervisor's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Done.
    Ok,
    /// Welcome; the port status page (read-only memfd) is attached.
    Hello { max_ports: u32 },
    /// The references of a share, in page order.
    Refs(Vec<GrantRef>),
    /// A mapping: its handle and where each page is; descriptors attached.
    Mapped { handle: u64, pages: Vec<MappedPage> },
    /// A port and its status word; after a bind, the peer's bell is attached.
    Port { port: EvtchnPort, status: u32 },
    /// The port's status word after a send; if connected, the peer's bell
    /// is attached.
    Sent { status: u32 },
    /// The xenstore connection is attached.
    Xenstore,
    /// The request failed.
    Error(HvError),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HvError {
    /// The message could not be decoded, or came out of order.
    Protocol,
    /// Another live connection holds the domain id.
    DomidInUse(DomId),
    /// The domain id is not one a domain can have.
    BadDomid(DomId),
    /// The reference is not granted by `domid` to the caller.
    NotGranted { domid: DomId, gref: GrantRef },
    /// A writable mapping of a read-only grant.
    ReadOnly { domid: DomId, gref: GrantRef },
    /// The grant is still mapped.
    InUse(GrantRef),
    /// The request is malformed in a way the caller can fix.
    Invalid(Invalid),
    /// The grant table is full.
    NoSpace,
    /// The port is not the caller's.
    NotBound(EvtchnPort),
    /// The remote port is not an unbound port offered to the caller.
    BadRemote { domid: DomId, port: EvtchnPort },
    /// All ports are in use.
    NoFreePorts,
    /// The hypervisor itself failed (out of descriptors, memory ...).
    Internal,
}

/// What was invalid about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// A share or map of no pages.
    NoPages,
    /// More than [`MAX_REFS`] references.
    TooManyRefs,
    /// The attached memory is not a sealed memfd holding the pages.
    BadMemory,
    /// The attached descriptor is not a doorbell.
    BadDoorbell,
    /// A mapping would need more descriptors than a message carries.
    TooManyShares,
    /// The same reference twice in one request.
    DuplicateRef,
}

impl Invalid {
    const ALL: [Invalid; 6] = [
        Invalid::NoPages,
        Invalid::TooManyRefs,
        Invalid::BadMemory,
        Invalid::BadDoorbell,
        Invalid::TooManyShares,
        Invalid::DuplicateRef,
    ];

    /// A sentence for [`hypercall_abi::platform::GrantError::Invalid`].
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Invalid::NoPages => "a grant request must name at least one page",
            Invalid::TooManyRefs => "at most 1024 grant references fit in one request; split it",
            Invalid::BadMemory => "the shared memory is not a sealed memfd holding the pages",
            Invalid::BadDoorbell => "the event channel doorbell is not a Unix stream socket",
            Invalid::TooManyShares => {
                "the references come from more than 253 separate shares; map fewer at once"
            }
            Invalid::DuplicateRef => "the same grant reference appears twice in one request",
        }
    }

    fn code(self) -> u32 {
        self as u32
    }

    fn from_code(c: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.code() == c)
    }
}

impl fmt::Display for HvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HvError::Protocol => write!(f, "the hypervisor could not decode the request"),
            HvError::DomidInUse(d) => {
                write!(f, "domain {d} is already connected to the hypervisor")
            }
            HvError::BadDomid(d) => write!(
                f,
                "{d} is not a valid domain id (use 0..{})",
                DOMID_FIRST_RESERVED
            ),
            HvError::NotGranted { domid, gref } => {
                write!(f, "grant {gref} of domain {domid} is not granted to us")
            }
            HvError::ReadOnly { domid, gref } => {
                write!(f, "grant {gref} of domain {domid} is read-only")
            }
            HvError::InUse(gref) => write!(f, "grant {gref} is still mapped"),
            HvError::Invalid(i) => f.write_str(i.as_str()),
            HvError::NoSpace => write!(f, "the grant table is full"),
            HvError::NotBound(p) => write!(f, "port {p} is not bound"),
            HvError::BadRemote { domid, port } => {
                write!(f, "port {port} of domain {domid} is not offered to us")
            }
            HvError::NoFreePorts => write!(f, "no free event channel ports"),
            HvError::Internal => write!(f, "the hypervisor failed internally; see its log"),
        }
    }
}

/// First domain id that names no domain (`DOMID_FIRST_RESERVED`).
pub(crate) const DOMID_FIRST_RESERVED: DomId = 0x7FF0;

/// The message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError;

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed hypervisor control message")
    }
}

struct Encoder(Vec<u8>);

impl Encoder {
    fn new(op: u32) -> Self {
        let mut e = Encoder(Vec::with_capacity(64));
        e.u32(op);
        e
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn refs(&mut self, refs: &[u32]) {
        // Lengths are bounded by MAX_REFS when decoding; an encoder handed
        // more produces a message the peer refuses, never a wrong one.
        self.u32(u32::try_from(refs.len()).unwrap_or(u32::MAX));
        for r in refs {
            self.u32(*r);
        }
    }
}

struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError),
        }
    }
    fn count(&mut self, each: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError)?;
        // Bounded twice: by the protocol limit and by the bytes present.
        if n > MAX_REFS || n.checked_mul(each).ok_or(DecodeError)? > self.0.len() {
            return Err(DecodeError);
        }
        Ok(n)
    }
    fn refs(&mut self) -> Result<Vec<u32>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
    fn finish<T>(self, v: T) -> Result<T, DecodeError> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(DecodeError)
        }
    }
}

impl Request {
    /// The wire form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let e = match self {
            Request::Hello { domid } => {
                let mut e = Encoder::new(1);
                e.u16(*domid);
                e
            }
            Request::GrantShare {
                grantee,
                count,
                readonly,
            } => {
                let mut e = Encoder::new(2);
                e.u16(*grantee);
                e.u32(*count);
                e.bool(*readonly);
                e
            }
            Request::GrantEnd { refs } => {
                let mut e = Encoder::new(3);
                e.refs(refs);
                e
            }
            Request::GrantRelease { refs } => {
                let mut e = Encoder::new(4);
                e.refs(refs);
                e
            }
            Request::GrantMap {
                owner,
                writable,
                refs,
            } => {
                let mut e = Encoder::new(5);
                e.u16(*owner);
                e.bool(*writable);
                e.refs(refs);
                e
            }
            Request::GrantUnmap { handle } => {
                let mut e = Encoder::new(6);
                e.u64(*handle);
                e
            }
            Request::EvtchnAllocUnbound { remote } => {
                let mut e = Encoder::new(7);
                e.u16(*remote);
                e
            }
            Request::EvtchnBindInterdomain {
                remote,
                remote_port,
            } => {
                let mut e = Encoder::new(8);
                e.u16(*remote);
                e.u32(*remote_port);
                e
            }
            Request::EvtchnSend { port } => {
                let mut e = Encoder::new(9);
                e.u32(*port);
                e
            }
            Request::EvtchnClose { port } => {
                let mut e = Encoder::new(10);
                e.u32(*port);
                e
            }
            Request::XenstoreConnect => Encoder::new(11),
        };
        e.0
    }

    /// Parses and checks a request.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder(buf);
        let req = match d.u32()? {
            1 => Request::Hello { domid: d.u16()? },
            2 => Request::GrantShare {
                grantee: d.u16()?,
                count: d.u32()?,
                readonly: d.bool()?,
            },
            3 => Request::GrantEnd { refs: d.refs()? },
            4 => Request::GrantRelease { refs: d.refs()? },
            5 => Request::GrantMap {
                owner: d.u16()?,
                writable: d.bool()?,
                refs: d.refs()?,
            },
            6 => Request::GrantUnmap { handle: d.u64()? },
            7 => Request::EvtchnAllocUnbound { remote: d.u16()? },
            8 => Request::EvtchnBindInterdomain {
                remote: d.u16()?,
                remote_port: d.u32()?,
            },
            9 => Request::EvtchnSend { port: d.u32()? },
            10 => Request::EvtchnClose { port: d.u32()? },
            11 => Request::XenstoreConnect,
            _ => return Err(DecodeError),
        };
        d.finish(req)
    }
}

impl Reply {
    /// The wire form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let e = match self {
            Reply::Ok => Encoder::new(0),
            Reply::Hello { max_ports } => {
                let mut e = Encoder::new(1);
                e.u32(*max_ports);
                e
            }
            Reply::Refs(refs) => {
                let mut e = Encoder::new(2);
                e.refs(refs);
                e
            }
            Reply::Mapped { handle, pages } => {
                let mut e = Encoder::new(3);
                e.u64(*handle);
                e.u32(u32::try_from(pages.len()).unwrap_or(u32::MAX));
                for p in pages {
                    e.u32(p.fd);
                    e.u32(p.page);
                }
                e
            }
            Reply::Port { port, status } => {
                let mut e = Encoder::new(4);
                e.u32(*port);
                e.u32(*status);
                e
            }
            Reply::Sent { status } => {
                let mut e = Encoder::new(5);
                e.u32(*status);
                e
            }
            Reply::Xenstore => Encoder::new(6),
            Reply::Error(err) => {
                let mut e = Encoder::new(0xff);
                encode_error(&mut e, *err);
                e
            }
        };
        e.0
    }

    /// Parses and checks a reply.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut d = Decoder(buf);
        let reply = match d.u32()? {
            0 => Reply::Ok,
            1 => Reply::Hello {
                max_ports: d.u32()?,
            },
            2 => Reply::Refs(d.refs()?),
            3 => {
                let handle = d.u64()?;
                let n = d.count(8)?;
                let pages = (0..n)
                    .map(|_| {
                        Ok(MappedPage {
                            fd: d.u32()?,
                            page: d.u32()?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Reply::Mapped { handle, pages }
            }
            4 => Reply::Port {
                port: d.u32()?,
                status: d.u32()?,
            },
            5 => Reply::Sent { status: d.u32()? },
            6 => Reply::Xenstore,
            0xff => Reply::Error(decode_error(&mut d)?),
            _ => return Err(DecodeError),
        };
        d.finish(reply)
    }
}

fn encode_error(e: &mut Encoder, err: HvError) {
    match err {
        HvError::Protocol => e.u32(1),
        HvError::DomidInUse(d) => {
            e.u32(2);
            e.u16(d);
        }
        HvError::BadDomid(d) => {
            e.u32(3);
            e.u16(d);
        }
        HvError::NotGranted { domid, gref } => {
            e.u32(4);
            e.u16(domid);
            e.u32(gref);
        }
        HvError::ReadOnly { domid, gref } => {
            e.u32(5);
            e.u16(domid);
            e.u32(gref);
        }
        HvError::InUse(gref) => {
            e.u32(6);
            e.u32(gref);
        }
        HvError::Invalid(i) => {
            e.u32(7);
            e.u32(i.code());
        }
        HvError::NoSpace => e.u32(8),
        HvError::NotBound(p) => {
            e.u32(9);
            e.u32(p);
        }
        HvError::BadRemote { domid, port } => {
            e.u32(10);
            e.u16(domid);
            e.u32(port);
        }
        HvError::NoFreePorts => e.u32(11),
        HvError::Internal => e.u32(12),
    }
}

fn decode_error(d: &mut Decoder<'_>) -> Result<HvError, DecodeError> {
    Ok(match d.u32()? {
        1 => HvError::Protocol,
        2 => HvError::DomidInUse(d.u16()?),
        3 => HvError::BadDomid(d.u16()?),
        4 => HvError::NotGranted {
            domid: d.u16()?,
            gref: d.u32()?,
        },
        5 => HvError::ReadOnly {
            domid: d.u16()?,
            gref: d.u32()?,
        },
        6 => HvError::InUse(d.u32()?),
        7 => HvError::Invalid(Invalid::from_code(d.u32()?).ok_or(DecodeError)?),
        8 => HvError::NoSpace,
        9 => HvError::NotBound(d.u32()?),
        10 => HvError::BadRemote {
            domid: d.u16()?,
            port: d.u32()?,
        },
        11 => HvError::NoFreePorts,
        12 => HvError::Internal,
        _ => return Err(DecodeError),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let reqs = [
            Request::Hello { domid: 3 },
            Request::GrantShare {
                grantee: 0,
                count: 4,
                readonly: true,
            },
            Request::GrantEnd { refs: vec![8, 9] },
            Request::GrantRelease { refs: vec![] },
            Request::GrantMap {
                owner: 1,
                writable: false,
                refs: vec![8, 9, 10],
            },
            Request::GrantUnmap { handle: u64::MAX },
            Request::EvtchnAllocUnbound { remote: 2 },
            Request::EvtchnBindInterdomain {
                remote: 1,
                remote_port: 5,
            },
            Request::EvtchnSend { port: 5 },
            Request::EvtchnClose { port: 5 },
            Request::XenstoreConnect,
        ];
        for r in reqs {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
        let replies = [
            Reply::Ok,
            Reply::Hello { max_ports: 4096 },
            Reply::Refs(vec![8, 9]),
            Reply::Mapped {
                handle: 7,
                pages: vec![MappedPage { fd: 0, page: 3 }],
            },
            Reply::Port { port: 1, status: 3 },
            Reply::Sent { status: 0 },
            Reply::Xenstore,
            Reply::Error(HvError::NotGranted { domid: 1, gref: 9 }),
            Reply::Error(HvError::Invalid(Invalid::DuplicateRef)),
            Reply::Error(HvError::BadRemote { domid: 1, port: 2 }),
        ];
        for r in replies {
            assert_eq!(Reply::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn malformed_messages_are_rejected() {
        assert_eq!(Request::decode(&[]), Err(DecodeError));
        assert_eq!(Request::decode(&99u32.to_le_bytes()), Err(DecodeError));
        let mut trailing = Request::XenstoreConnect.encode();
        trailing.push(0);
        assert_eq!(Request::decode(&trailing), Err(DecodeError));
        // A count that claims more references than the message holds.
        let mut lying = 3u32.to_le_bytes().to_vec();
        lying.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(Request::decode(&lying), Err(DecodeError));
        // A count above the protocol limit, even if the bytes were there.
        let mut huge = 3u32.to_le_bytes().to_vec();
        huge.extend_from_slice(&(MAX_REFS as u32 + 1).to_le_bytes());
        huge.resize(huge.len() + 4 * (MAX_REFS + 1), 0);
        assert_eq!(Request::decode(&huge), Err(DecodeError));
        // A boolean that is neither 0 nor 1.
        let mut bad_bool = Request::GrantShare {
            grantee: 0,
            count: 1,
            readonly: false,
        }
        .encode();
        if let Some(last) = bad_bool.last_mut() {
            *last = 2;
        }
        assert_eq!(Request::decode(&bad_bool), Err(DecodeError));
    }
}
