//! What the dom0 backends (`rblkback`, `rnetback`) share: the platforms
//! they run on ([`platform`]: Xen through Linux's `/dev/xen` devices, or
//! the loopback hypervisor), [`StopSignal`],
//! the level-triggered stop request their queue threads poll next to their
//! event channels, and the system calls behind it ([`poll_readable`],
//! [`poll_readable_slice`]). Every `unsafe` of the crate is in its `sys`
//! module.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod platform;
mod stop;
mod sys;

pub use stop::StopSignal;
pub use sys::{poll_readable, poll_readable_slice};
