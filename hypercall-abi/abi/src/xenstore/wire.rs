//! Encoding requests and decoding what the daemon sends.
//!
//! Pure functions over bytes, kept apart from the connection so that every
//! check on the daemon's messages can be tested (and fuzzed) on its own. In
//! the guest case the daemon is another domain's code: nothing it sends is
//! trusted, and every function here returns [`XsError::Protocol`] rather
//! than panicking or allocating without bound.

use zerocopy::{FromBytes, IntoBytes};

use crate::platform::{WatchEvent, XsError, XsPerm};
use crate::xen::xs_wire::{
    XsType, XsdSockmsg, XENSTORE_ABS_PATH_MAX, XENSTORE_PAYLOAD_MAX, XENSTORE_REL_PATH_MAX, XSD_SOCKMSG_SIZE,
};

/// A message cut out of the byte stream: its header and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The header, as received.
    pub header: XsdSockmsg,
    /// The payload, `header.len` bytes.
    pub payload: Vec<u8>,
}

/// Builds the bytes of one request: header then payload.
///
/// Fails with [`XsError::Invalid`] if the payload exceeds
/// [`XENSTORE_PAYLOAD_MAX`] (the daemon would drop the connection).
pub(crate) fn encode(ty: XsType, req_id: u32, tx_id: u32, payload: &[u8]) -> Result<Vec<u8>, XsError> {
    let len = payload_len(ty, payload.len())?;
    let header = XsdSockmsg { type_: ty as u32, req_id, tx_id, len };
    let mut msg = Vec::with_capacity(XSD_SOCKMSG_SIZE + payload.len());
    msg.extend_from_slice(header.as_bytes());
    msg.extend_from_slice(payload);
    Ok(msg)
}

/// The length of a request payload, refused with [`XsError::Invalid`]
/// beyond [`XENSTORE_PAYLOAD_MAX`].
pub(crate) fn payload_len(ty: XsType, len: usize) -> Result<u32, XsError> {
    match u32::try_from(len) {
        Ok(len32) if len <= XENSTORE_PAYLOAD_MAX => Ok(len32),
        _ => Err(XsError::Invalid(format!(
            "{} request of {len} bytes exceeds the {XENSTORE_PAYLOAD_MAX}-byte payload limit",
            ty.name()
        ))),
    }
}

/// Cuts the first complete message off the front of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, and the message with the
/// number of bytes it took otherwise. A header announcing more than
/// [`XENSTORE_PAYLOAD_MAX`] bytes is a protocol error: the stream cannot be
/// resynchronised after it, so the connection must be closed.
pub(crate) fn split_message(buf: &[u8]) -> Result<Option<(Message, usize)>, XsError> {
    let Ok((header, rest)) = XsdSockmsg::read_from_prefix(buf) else {
        return Ok(None);
    };
    let len = header.len as usize;
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(XsError::Protocol(format!(
            "message of type {} announces a {len}-byte payload, more than the {XENSTORE_PAYLOAD_MAX} allowed",
            header.type_
        )));
    }
    if rest.len() < len {
        return Ok(None);
    }
    let payload = rest[..len].to_vec();
    Ok(Some((Message { header, payload }, XSD_SOCKMSG_SIZE + len)))
}

/// Appends `s` and its NUL terminator, refusing embedded NULs.
pub(crate) fn push_str(payload: &mut Vec<u8>, what: &str, s: &str) -> Result<(), XsError> {
    if s.as_bytes().contains(&0) {
        return Err(XsError::Invalid(format!("{what} {s:?} contains a NUL byte")));
    }
    payload.extend_from_slice(s.as_bytes());
    payload.push(0);
    Ok(())
}

/// Appends a path and its NUL terminator, checking what would break the
/// framing or that the daemon is certain to refuse: embedded NULs and the
/// length limits of `xs_wire.h`. The daemon checks the characters itself.
pub(crate) fn push_path(payload: &mut Vec<u8>, path: &str) -> Result<(), XsError> {
    let max = if path.starts_with('/') { XENSTORE_ABS_PATH_MAX } else { XENSTORE_REL_PATH_MAX };
    if path.is_empty() {
        return Err(XsError::Invalid("empty xenstore path".into()));
    }
    if path.len() > max {
        return Err(XsError::Invalid(format!(
            "xenstore path of {} bytes is longer than the {max} allowed",
            path.len()
        )));
    }
    push_str(payload, "xenstore path", path)
}

/// Splits a payload of NUL-terminated strings (`"a\0b\0"`).
///
/// An empty payload is an empty list. Anything else must end with a NUL
/// and hold valid UTF-8; `what` names the reply in errors.
pub(crate) fn split_strings<'a>(payload: &'a [u8], what: &str) -> Result<Vec<&'a str>, XsError> {
    let Some((&last, body)) = payload.split_last() else {
        return Ok(Vec::new());
    };
    if last != 0 {
        return Err(XsError::Protocol(format!("{what} is not NUL-terminated")));
    }
    body.split(|&b| b == 0)
        .map(|s| {
            std::str::from_utf8(s).map_err(|_| XsError::Protocol(format!("{what} holds a string that is not UTF-8")))
        })
        .collect()
}

/// Decodes a reply holding exactly one NUL-terminated string.
pub(crate) fn single_string(payload: &[u8], what: &str) -> Result<String, XsError> {
    match split_strings(payload, what)?.as_slice() {
        [s] => Ok((*s).to_owned()),
        other => Err(XsError::Protocol(format!("{what} holds {} strings, expected one", other.len()))),
    }
}

/// Checks the `"OK\0"` acknowledgement of requests that return nothing.
pub(crate) fn ack(payload: &[u8], ty: XsType) -> Result<(), XsError> {
    if payload == b"OK\0" {
        Ok(())
    } else {
        Err(XsError::Protocol(format!(
            "{} reply is {:?}, expected \"OK\"",
            ty.name(),
            String::from_utf8_lossy(payload)
        )))
    }
}

/// Decodes an `XS_ERROR` payload into its error name.
pub(crate) fn error_name(payload: &[u8]) -> Result<String, XsError> {
    let name = single_string(payload, "XS_ERROR reply")?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(XsError::Protocol(format!("XS_ERROR reply names no error: {name:?}")));
    }
    Ok(name)
}

/// Decodes an `XS_DIRECTORY` reply into child names.
pub(crate) fn directory(payload: &[u8]) -> Result<Vec<String>, XsError> {
    names(split_strings(payload, "XS_DIRECTORY reply")?)
}

fn names(list: Vec<&str>) -> Result<Vec<String>, XsError> {
    list.into_iter()
        .map(|name| {
            if name.is_empty() || name.contains('/') {
                Err(XsError::Protocol(format!("directory listing holds an invalid child name {name:?}")))
            } else {
                Ok(name.to_owned())
            }
        })
        .collect()
}

/// One `XS_DIRECTORY_PART` chunk: the node's generation, the child names
/// it holds, and whether it is the last chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DirectoryPart {
    /// The node's generation count, as a string; compared between chunks.
    pub generation: String,
    /// The names in this chunk.
    pub names: Vec<String>,
    /// Bytes of the children list this chunk covered (the next offset
    /// advances by this much).
    pub consumed: usize,
    /// Whether the listing ended with this chunk (an empty string follows
    /// the last name).
    pub last: bool,
}

/// Decodes an `XS_DIRECTORY_PART` reply: `gen\0name\0...\0` with an extra
/// `\0` after the last name of the listing.
pub(crate) fn directory_part(payload: &[u8]) -> Result<DirectoryPart, XsError> {
    let mut strings = split_strings(payload, "XS_DIRECTORY_PART reply")?;
    if strings.is_empty() {
        return Err(XsError::Protocol("XS_DIRECTORY_PART reply lacks the generation".into()));
    }
    let generation = strings.remove(0).to_owned();
    if generation.is_empty() || !generation.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XsError::Protocol(format!("XS_DIRECTORY_PART generation {generation:?} is not a number")));
    }
    let last = strings.last() == Some(&"");
    if last {
        strings.pop();
    }
    let consumed = strings.iter().map(|s| s.len() + 1).sum();
    Ok(DirectoryPart { generation, names: names(strings)?, consumed, last })
}

/// Decodes an `XS_GET_PERMS` reply: one entry per string, owner first.
pub(crate) fn perms(payload: &[u8]) -> Result<Vec<XsPerm>, XsError> {
    let list = split_strings(payload, "XS_GET_PERMS reply")?;
    if list.is_empty() {
        return Err(XsError::Protocol("XS_GET_PERMS reply names no owner".into()));
    }
    list.into_iter()
        .map(|s| {
            s.parse::<XsPerm>()
                .map_err(|_| XsError::Protocol(format!("XS_GET_PERMS reply holds a bad permission {s:?}")))
        })
        .collect()
}

/// Decodes the id an `XS_TRANSACTION_START` reply carries.
pub(crate) fn transaction_id(payload: &[u8]) -> Result<u32, XsError> {
    let s = single_string(payload, "XS_TRANSACTION_START reply")?;
    match parse_decimal(&s) {
        Some(id) if id != 0 => Ok(id),
        _ => Err(XsError::Protocol(format!("XS_TRANSACTION_START reply {s:?} is not a transaction id"))),
    }
}

/// Decodes a yes/no reply (`XS_IS_DOMAIN_INTRODUCED`): `"T"` or `"F"`.
pub(crate) fn boolean(payload: &[u8], ty: XsType) -> Result<bool, XsError> {
    match single_string(payload, ty.name())?.as_str() {
        "T" => Ok(true),
        "F" => Ok(false),
        other => Err(XsError::Protocol(format!("{} reply {other:?} is neither \"T\" nor \"F\"", ty.name()))),
    }
}

/// Decodes an `XS_WATCH_EVENT` payload: `path\0token\0`.
pub(crate) fn watch_event(payload: &[u8]) -> Result<WatchEvent, XsError> {
    match split_strings(payload, "XS_WATCH_EVENT")?.as_slice() {
        [path, token] if !path.is_empty() => Ok(WatchEvent { path: (*path).to_owned(), token: (*token).to_owned() }),
        other => {
            Err(XsError::Protocol(format!("XS_WATCH_EVENT holds {} strings, expected a path and a token", other.len())))
        }
    }
}

/// A plain decimal `u32` (no sign, no spaces, no leading `0x`).
fn parse_decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Whether `path` is `parent` or below it (`xs_path_is_subpath`, except
/// that `/` is the parent of every absolute path).
pub(crate) fn is_subpath(parent: &str, path: &str) -> bool {
    match path.strip_prefix(parent) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || parent.ends_with('/'),
        None => false,
    }
}

/// Cuts `data` into messages as the client's reader does, and runs every
/// reply decoder on each payload; stops at the first framing error. For
/// fuzzing: whatever the bytes, this must neither panic nor loop.
pub(crate) fn decode_stream(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((msg, used))) = split_message(rest) {
        rest = &rest[used..];
        let p = &msg.payload;
        let _ = watch_event(p);
        let _ = error_name(p);
        let _ = directory(p);
        let _ = directory_part(p);
        let _ = perms(p);
        let _ = transaction_id(p);
        let _ = single_string(p, "reply");
        let _ = boolean(p, XsType::IsDomainIntroduced);
        let _ = ack(p, XsType::Write);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::platform::XsPermAccess;

    #[test]
    fn encode_writes_header_then_payload() {
        let msg = encode(XsType::Read, 7, 3, b"/a\0").unwrap();

        assert_eq!(
            msg,
            [&2u32.to_ne_bytes()[..], &7u32.to_ne_bytes(), &3u32.to_ne_bytes(), &3u32.to_ne_bytes(), b"/a\0"].concat()
        );
    }

    #[test]
    fn encode_refuses_oversized_payload() {
        let big = vec![b'x'; XENSTORE_PAYLOAD_MAX + 1];

        assert!(matches!(encode(XsType::Write, 1, 0, &big), Err(XsError::Invalid(_))));
        assert!(encode(XsType::Write, 1, 0, &big[1..]).is_ok());
    }

    #[test]
    fn split_waits_for_whole_message_and_rejects_oversized() {
        let msg = encode(XsType::Read, 1, 0, b"value").unwrap();

        for cut in 0..msg.len() {
            assert_eq!(split_message(&msg[..cut]).unwrap(), None, "cut at {cut}");
        }
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        let (first, used) = split_message(&two).unwrap().unwrap();
        assert_eq!(used, msg.len());
        assert_eq!(first.payload, b"value");

        let mut bad = XsdSockmsg { type_: 2, req_id: 1, tx_id: 0, len: 4097 }.as_bytes().to_vec();
        bad.resize(16 + 4097, 0);
        assert!(matches!(split_message(&bad[..16]), Err(XsError::Protocol(_))));
    }

    #[test]
    fn paths_and_strings_refuse_nul_and_overlong() {
        let mut p = Vec::new();

        assert!(push_path(&mut p, "/local/domain/0").is_ok());
        assert_eq!(p, b"/local/domain/0\0");
        assert!(matches!(push_path(&mut p, "/a\0b"), Err(XsError::Invalid(_))));
        assert!(matches!(push_path(&mut p, ""), Err(XsError::Invalid(_))));
        assert!(push_path(&mut p, &format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX - 1))).is_ok());
        assert!(push_path(&mut p, &format!("/{}", "a".repeat(XENSTORE_ABS_PATH_MAX))).is_err());
        assert!(push_path(&mut p, &"a".repeat(XENSTORE_REL_PATH_MAX + 1)).is_err());
        assert!(matches!(push_str(&mut p, "token", "t\0"), Err(XsError::Invalid(_))));
    }

    #[test]
    fn string_lists_must_be_nul_terminated_utf8() {
        assert_eq!(split_strings(b"", "x").unwrap(), Vec::<&str>::new());
        assert_eq!(split_strings(b"a\0bc\0", "x").unwrap(), ["a", "bc"]);
        assert!(matches!(split_strings(b"a\0bc", "x"), Err(XsError::Protocol(_))));
        assert!(matches!(split_strings(b"\xff\0", "x"), Err(XsError::Protocol(_))));
        assert!(single_string(b"a\0b\0", "x").is_err());
        assert_eq!(single_string(b"/local/domain/3\0", "x").unwrap(), "/local/domain/3");
    }

    #[test]
    fn directory_rejects_bad_names() {
        assert_eq!(directory(b"backend\0device\0").unwrap(), ["backend", "device"]);
        assert_eq!(directory(b"").unwrap(), Vec::<String>::new());
        assert!(directory(b"a\0\0").is_err());
        assert!(directory(b"a/b\0").is_err());
        assert!(directory(b"vbd").is_err());
    }

    #[test]
    fn directory_part_reports_generation_and_end() {
        let mid = directory_part(b"42\0a\0bb\0").unwrap();
        assert_eq!(
            mid,
            DirectoryPart { generation: "42".into(), names: vec!["a".into(), "bb".into()], consumed: 5, last: false }
        );

        let end = directory_part(b"42\0c\0\0").unwrap();
        assert_eq!(end.names, ["c"]);
        assert!(end.last);

        let empty = directory_part(b"7\0\0").unwrap();
        assert!(empty.names.is_empty() && empty.last);
        assert!(directory_part(b"x\0a\0").is_err());
        assert!(directory_part(b"").is_err());
    }

    #[test]
    fn perms_parse_owner_first() {
        assert_eq!(
            perms(b"n0\0r5\0").unwrap(),
            [XsPerm { domid: 0, access: XsPermAccess::None }, XsPerm { domid: 5, access: XsPermAccess::Read }]
        );
        assert!(perms(b"").is_err());
        assert!(perms(b"q1\0").is_err());
        assert!(perms(b"b1").is_err());
    }

    #[test]
    fn transaction_ids_are_nonzero_decimals() {
        assert_eq!(transaction_id(b"17\0").unwrap(), 17);
        assert!(transaction_id(b"0\0").is_err());
        assert!(transaction_id(b"0x11\0").is_err());
        assert!(transaction_id(b"-1\0").is_err());
        assert!(transaction_id(b"17").is_err());
        assert!(transaction_id(b"99999999999\0").is_err());
    }

    #[test]
    fn watch_events_need_path_and_token() {
        assert_eq!(
            watch_event(b"/local/domain/1/state\0tok\0").unwrap(),
            WatchEvent { path: "/local/domain/1/state".into(), token: "tok".into() }
        );
        assert_eq!(watch_event(b"@releaseDomain\0\0").unwrap().token, "");
        assert!(watch_event(b"/a\0").is_err());
        assert!(watch_event(b"/a\0t\0x\0").is_err());
        assert!(watch_event(b"/a\0t").is_err());
        assert!(watch_event(b"\0t\0").is_err());
    }

    #[test]
    fn errors_and_acks_are_checked() {
        assert_eq!(error_name(b"ENOENT\0").unwrap(), "ENOENT");
        assert!(error_name(b"ENOENT").is_err());
        assert!(error_name(b"\0").is_err());
        assert!(ack(b"OK\0", XsType::Write).is_ok());
        assert!(ack(b"OK", XsType::Write).is_err());
        assert!(boolean(b"T\0", XsType::IsDomainIntroduced).unwrap());
        assert!(boolean(b"Y\0", XsType::IsDomainIntroduced).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            decode_stream(&data);
        }

        #[test]
        fn decoding_framed_payloads_never_panics(
            ty in 0u32..25,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            nul_heavy in proptest::prelude::any::<bool>(),
        ) {
            // Payloads rich in NULs and digits reach deeper into the decoders.
            let payload: Vec<u8> =
                if nul_heavy { payload.iter().map(|b| [0, b'0' + b % 10, b'/', b'a'][usize::from(b % 4)]).collect() } else { payload };
            let mut data = XsdSockmsg { type_: ty, req_id: 1, tx_id: 0, len: payload.len() as u32 }.as_bytes().to_vec();
            data.extend_from_slice(&payload);
            decode_stream(&data);
        }

        #[test]
        fn encoded_requests_split_back(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=XENSTORE_PAYLOAD_MAX),
            req_id in proptest::prelude::any::<u32>(),
            tx_id in proptest::prelude::any::<u32>(),
        ) {
            let bytes = encode(XsType::Write, req_id, tx_id, &payload).unwrap();
            let (msg, used) = split_message(&bytes).unwrap().unwrap();
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(msg.header.req_id, req_id);
            proptest::prop_assert_eq!(msg.header.tx_id, tx_id);
            proptest::prop_assert_eq!(msg.payload, payload);
        }
    }

    #[test]
    fn subpaths_follow_xs_path_is_subpath() {
        assert!(is_subpath("/a", "/a"));
        assert!(is_subpath("/a", "/a/b"));
        assert!(!is_subpath("/a", "/ab"));
        assert!(!is_subpath("/a/b", "/a"));
        assert!(is_subpath("/", "/a"));
    }
}
