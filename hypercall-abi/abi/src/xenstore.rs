//! The xenstore wire-protocol client, shared by every platform.
