//! Xen 4.17's public interface in Rust.
//!
//! The core (`xen`, `ring`) is `no_std`: wire structures with zerocopy
//! derives, constants, and the generic shared ring of `xen/io/ring.h`.
//! With the `std` feature (on by default) the crate also holds what a
//! *platform* offers to split drivers -- event channels, grant tables and a
//! xenstore client -- as traits, with the xenstore wire client shared by
//! every platform. Implementations live in their own crates: `xen-linux`
//! (Linux's `/dev/xen/*` devices) and `xen-loopback` (two processes on one
//! Linux host).

#![cfg_attr(not(feature = "std"), no_std)]

pub mod ring;
pub mod xen;

#[cfg(feature = "std")]
pub mod platform;
#[cfg(feature = "std")]
pub mod xenstore;
