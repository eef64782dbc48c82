//! Requests on the wire: `xsd_sockmsg` framing (`xs_wire.h`), argument
//! parsing and checking, and running each request on the [`Store`].
//!
//! Transports (a Unix socket, a domain's ring page) hand complete messages
//! to [`handle`] and send what it returns; [`FrameReader`] cuts a byte
//! stream into messages.

use hypercall_abi::platform::XsPerm;
use hypercall_abi::xen::xs_wire::{
    name_for_errno, XsType, XsdSockmsg, XENSTORE_PAYLOAD_MAX, XSD_SOCKMSG_SIZE,
};
use hypercall_abi::xen::DomId;
use zerocopy::{FromBytes, IntoBytes};

use crate::store::{Answer, Caller, Errno, Fire, Op, Store};

/// Runs one complete request for `caller` and frames the reply (an
/// `XS_ERROR` reply if it failed).
pub fn handle(store: &mut Store, caller: Caller, h: &XsdSockmsg, payload: &[u8]) -> Vec<u8> {
    match dispatch(store, caller, h, payload) {
        Ok(body) => message(h.type_, h.req_id, h.tx_id, &body),
        Err(e) => error_message(h, e),
    }
}

/// The `XS_WATCH_EVENT` message for `fire`, or `None` (logged) if its path
/// and token do not fit in one payload.
pub fn watch_event(fire: &Fire) -> Option<Vec<u8>> {
    let mut body = Vec::with_capacity(fire.path.len() + fire.token.len() + 2);
    push_str(&mut body, &fire.path);
    push_str(&mut body, &fire.token);
    if body.len() > XENSTORE_PAYLOAD_MAX {
        log::warn!(
            "dropping a watch event for {:?}: path and token exceed the payload limit",
            fire.path
        );
        return None;
    }
    Some(message(XsType::WatchEvent as u32, 0, 0, &body))
}

/// Why a byte stream cannot be cut into messages any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A header announced a payload over `XENSTORE_PAYLOAD_MAX`; the
    /// request it belongs to is given so that it can be answered.
    Oversized(XsdSockmsg),
}

/// Cuts a byte stream into `xsd_sockmsg` messages.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes still needed before the next message is complete (at least 1).
    pub fn wanted(&self) -> usize {
        if self.buf.len() < XSD_SOCKMSG_SIZE {
            return XSD_SOCKMSG_SIZE - self.buf.len();
        }
        let len = self.header().map_or(0, |h| h.len as usize);
        (XSD_SOCKMSG_SIZE + len.min(XENSTORE_PAYLOAD_MAX))
            .saturating_sub(self.buf.len())
            .max(1)
    }

    fn header(&self) -> Option<XsdSockmsg> {
        let bytes = self.buf.get(..XSD_SOCKMSG_SIZE)?;
        XsdSockmsg::read_from_bytes(bytes).ok()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete message, if there is one.
    pub fn next_message(&mut self) -> Result<Option<(XsdSockmsg, Vec<u8>)>, FrameError> {
        let Some(h) = self.header() else {
            return Ok(None);
        };
        let len = h.len as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(FrameError::Oversized(h));
        }
        if self.buf.len() < XSD_SOCKMSG_SIZE + len {
            return Ok(None);
        }
        let payload = self.buf[XSD_SOCKMSG_SIZE..XSD_SOCKMSG_SIZE + len].to_vec();
        self.buf.drain(..XSD_SOCKMSG_SIZE + len);
        Ok(Some((h, payload)))
    }
}

/// One framed message: an `xsd_sockmsg` header and `body`.
pub fn message(type_: u32, req_id: u32, tx_id: u32, body: &[u8]) -> Vec<u8> {
    // Bodies are bounded by XENSTORE_PAYLOAD_MAX (checked by the callers).
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(XSD_SOCKMSG_SIZE + body.len());
    m.extend_from_slice(
        XsdSockmsg {
            type_,
            req_id,
            tx_id,
            len,
        }
        .as_bytes(),
    );
    m.extend_from_slice(body);
    m
}

/// An `XS_ERROR` reply to the request `h`, naming `e` as Xen does.
pub fn error_message(h: &XsdSockmsg, e: Errno) -> Vec<u8> {
    let mut body = Vec::new();
    push_str(&mut body, name_for_errno(e.0).unwrap_or("EINVAL"));
    message(XsType::Error as u32, h.req_id, h.tx_id, &body)
}

fn push_str(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(s.as_bytes());
    v.push(0);
}

/// The NUL-terminated strings of a payload; it must end with a NUL.
fn strings(payload: &[u8]) -> Result<Vec<&str>, Errno> {
    let einval = Errno(libc::EINVAL);
    let body = payload.strip_suffix(&[0]).ok_or(einval)?;
    body.split(|b| *b == 0)
        .map(|s| std::str::from_utf8(s).map_err(|_| einval))
        .collect()
}

/// Exactly one NUL-terminated string.
fn one_arg(payload: &[u8]) -> Result<&str, Errno> {
    match strings(payload)?.as_slice() {
        [s] => Ok(s),
        _ => Err(Errno(libc::EINVAL)),
    }
}

/// Exactly two NUL-terminated strings.
fn two_args(payload: &[u8]) -> Result<(&str, &str), Errno> {
    match strings(payload)?.as_slice() {
        [a, b] => Ok((a, b)),
        _ => Err(Errno(libc::EINVAL)),
    }
}

const OK: &[u8] = b"OK\0";

impl Answer {
    /// Cuts an `XS_DIRECTORY_PART` reply out of a listing: the generation,
    /// then the names from byte `offset` of the `name\0name\0...` list that
    /// fit, then an empty string if the list ends here. `offset` must fall
    /// on a name boundary.
    fn with_offset(self, offset: usize) -> Result<Answer, Errno> {
        let Answer::NamesAt(generation, names) = self else {
            return Err(Errno(libc::EINVAL));
        };
        let mut start = 0usize;
        let mut first = 0usize;
        while start < offset {
            let Some(n) = names.get(first) else {
                return Err(Errno(libc::EINVAL));
            };
            start += n.len() + 1;
            first += 1;
        }
        if start != offset {
            return Err(Errno(libc::EINVAL));
        }
        let mut body = Vec::new();
        push_str(&mut body, &generation.to_string());
        let mut complete = true;
        for n in &names[first..] {
            // Keep room for the terminating empty string.
            if body.len() + n.len() + 2 > XENSTORE_PAYLOAD_MAX {
                complete = false;
                break;
            }
            push_str(&mut body, n);
        }
        if complete {
            body.push(0);
        }
        Ok(Answer::Part(body))
    }
}

/// Runs one request; returns the reply payload.
///
/// The domain-management requests (`XS_INTRODUCE`, `XS_RELEASE`,
/// `XS_RESUME`, `XS_SET_TARGET`, `XS_CONTROL`) belong to the daemon that
/// owns the connections: they are refused here with `ENOSYS` for dom0 and
/// `EACCES` for anyone else, so a daemon handles them before calling this.
pub fn dispatch(
    store: &mut Store,
    caller: Caller,
    h: &XsdSockmsg,
    payload: &[u8],
) -> Result<Vec<u8>, Errno> {
    let ty = XsType::try_from(h.type_).map_err(|_| Errno(libc::EINVAL))?;
    let tx = h.tx_id;
    let answer = match ty {
        XsType::Read => store.op(caller, tx, Op::Read(one_arg(payload)?))?,
        XsType::Directory => store.op(caller, tx, Op::Directory(one_arg(payload)?))?,
        XsType::GetPerms => store.op(caller, tx, Op::GetPerms(one_arg(payload)?))?,
        XsType::Mkdir => store.op(caller, tx, Op::Mkdir(one_arg(payload)?))?,
        XsType::Rm => store.op(caller, tx, Op::Rm(one_arg(payload)?))?,
        XsType::Write => {
            let nul = payload
                .iter()
                .position(|b| *b == 0)
                .ok_or(Errno(libc::EINVAL))?;
            let path = std::str::from_utf8(&payload[..nul]).map_err(|_| Errno(libc::EINVAL))?;
            store.op(caller, tx, Op::Write(path, &payload[nul + 1..]))?
        }
        XsType::SetPerms => {
            let args = strings(payload)?;
            let (path, perms) = args.split_first().ok_or(Errno(libc::EINVAL))?;
            let perms = perms
                .iter()
                .map(|p| p.parse::<XsPerm>().map_err(|_| Errno(libc::EINVAL)))
                .collect::<Result<Vec<_>, _>>()?;
            store.op(caller, tx, Op::SetPerms(path, perms))?
        }
        XsType::Watch => {
            let (path, token) = two_args(payload)?;
            store.watch(caller, path, token)?;
            Answer::Ok
        }
        XsType::Unwatch => {
            let (path, token) = two_args(payload)?;
            store.unwatch(caller, path, token)?;
            Answer::Ok
        }
        XsType::ResetWatches => {
            store.reset_watches(caller);
            Answer::Ok
        }
        XsType::TransactionStart => {
            if tx != 0 {
                return Err(Errno(libc::EBUSY));
            }
            if !(payload.is_empty() || payload == b"\0") {
                return Err(Errno(libc::EINVAL));
            }
            let id = store.transaction_start(caller)?;
            let mut body = Vec::new();
            push_str(&mut body, &id.to_string());
            return Ok(body);
        }
        XsType::TransactionEnd => {
            let commit = match one_arg(payload)? {
                "T" => true,
                "F" => false,
                _ => return Err(Errno(libc::EINVAL)),
            };
            store.transaction_end(caller, tx, commit)?;
            Answer::Ok
        }
        XsType::GetDomainPath => {
            let domid: DomId = one_arg(payload)?.parse().map_err(|_| Errno(libc::EINVAL))?;
            let mut body = Vec::new();
            push_str(&mut body, &format!("/local/domain/{domid}"));
            return Ok(body);
        }
        XsType::WatchEvent | XsType::Error => return Err(Errno(libc::EINVAL)),
        XsType::DirectoryPart => {
            let (path, offset) = two_args(payload)?;
            let offset: usize = offset.parse().map_err(|_| Errno(libc::EINVAL))?;
            store
                .op(caller, tx, Op::DirectoryPart(path))?
                .with_offset(offset)?
        }
        XsType::IsDomainIntroduced => {
            let domid: DomId = one_arg(payload)?.parse().map_err(|_| Errno(libc::EINVAL))?;
            return Ok(if store.is_introduced(domid) {
                b"T\0".to_vec()
            } else {
                b"F\0".to_vec()
            });
        }
        XsType::Control
        | XsType::Introduce
        | XsType::Release
        | XsType::Resume
        | XsType::SetTarget => {
            return Err(Errno(if caller.domid == 0 {
                libc::ENOSYS
            } else {
                libc::EACCES
            }));
        }
    };
    Ok(match answer {
        Answer::Ok => OK.to_vec(),
        Answer::Value(v) => v,
        Answer::Names(body) => {
            if body.len() > XENSTORE_PAYLOAD_MAX {
                return Err(Errno(libc::E2BIG));
            }
            body
        }
        Answer::NamesAt(..) => return Err(Errno(libc::EINVAL)),
        Answer::Part(body) => body,
        Answer::Perms(perms) => {
            let mut body = Vec::new();
            for p in perms {
                push_str(&mut body, &p.to_string());
            }
            body
        }
    })
}
