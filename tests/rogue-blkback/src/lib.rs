//! rogue-blkback: a blkif backend that lies, for tests only.
//!
//! It proves that a guest's block frontend does not trust its backend. It
//! runs the backend half of the xenbus handshake as rblkback does, for one
//! one-page ring, and then answers the frontend's requests with responses
//! that a frontend must refuse ([`Mode`]): ids it never used, statuses
//! that are no `BLKIF_RSP_*` value, two responses to one request, or an
//! `rsp_prod` published beyond the responses written. It never maps the
//! frontend's data pages, so no request is ever served with data.
//!
//! | module | what |
//! |---|---|
//! | [`answer`] | each mode's responses to a request, as plain values |
//! | [`ring`] | the ring: requests taken with `BackRing`, responses written raw |
//! | [`xenbus`] | the handshake, the answering loop, and when to stop |
//!
//! The rogue is generic over the backends' [`Platform`]: real Xen through
//! Linux's `/dev/xen` devices in dom0 (the binary), or the loopback
//! hypervisor (its tests, against the project's blkfront).
//!
//! [`Platform`]: pv_backend_common::platform::Platform

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod answer;
pub mod ring;
pub mod xenbus;

pub use answer::{Answer, Mode};
pub use pv_backend_common::platform::{LoopbackPlatform, Platform, XenPlatform};
pub use pv_backend_common::StopSignal;
pub use xenbus::{run, Config, Ended, RogueError};
