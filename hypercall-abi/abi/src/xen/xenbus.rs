//! The xenbus handshake shared by every split driver (`xen/io/xenbus.h`)
//! and the ring layout names of `xen/io/protocols.h`.
//!
//! Each end of a device has a `state` node in its xenstore directory; the
//! frontend and the backend move through [`XenbusState`] in step, each
//! watching the other's node.

/// `XEN_IO_PROTO_ABI_X86_32`: the `protocol` a 32-bit x86 frontend writes.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
/// `XEN_IO_PROTO_ABI_X86_64`: the `protocol` a 64-bit x86 frontend writes,
/// and the only ring layout this crate's structures describe.
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";

/// `enum xenbus_state` (`xen/io/xenbus.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XenbusState {
    /// `XenbusStateUnknown`: also a missing node.
    Unknown = 0,
    /// `XenbusStateInitialising`.
    Initialising = 1,
    /// `XenbusStateInitWait`: the backend waits for the frontend's rings.
    InitWait = 2,
    /// `XenbusStateInitialised`: the frontend published its rings.
    Initialised = 3,
    /// `XenbusStateConnected`.
    Connected = 4,
    /// `XenbusStateClosing`.
    Closing = 5,
    /// `XenbusStateClosed`.
    Closed = 6,
    /// `XenbusStateReconfiguring`.
    Reconfiguring = 7,
    /// `XenbusStateReconfigured`.
    Reconfigured = 8,
}

impl XenbusState {
    /// Parses a `state` node's value (decimal, optionally NUL-terminated);
    /// `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = core::str::from_utf8(value)
            .ok()?
            .trim_end_matches('\0')
            .trim();
        Some(match text.parse::<u32>().ok()? {
            0 => XenbusState::Unknown,
            1 => XenbusState::Initialising,
            2 => XenbusState::InitWait,
            3 => XenbusState::Initialised,
            4 => XenbusState::Connected,
            5 => XenbusState::Closing,
            6 => XenbusState::Closed,
            7 => XenbusState::Reconfiguring,
            8 => XenbusState::Reconfigured,
            _ => return None,
        })
    }

    /// The node value.
    pub fn as_str(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_junk_is_refused() {
        for n in 0..=8u8 {
            let text = [b'0' + n];
            let state = XenbusState::parse(&text);
            assert_eq!(
                state.map(XenbusState::as_str).map(str::as_bytes),
                Some(&text[..])
            );
            assert_eq!(state.map(|s| s as u8), Some(n));
        }
        assert_eq!(XenbusState::parse(b"4\0"), Some(XenbusState::Connected));
        assert_eq!(XenbusState::parse(b"9"), None);
        assert_eq!(XenbusState::parse(b"x"), None);
        assert_eq!(XenbusState::parse(b""), None);
    }
}
