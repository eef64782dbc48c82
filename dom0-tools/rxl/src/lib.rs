//! `rxl`: an `xl`-compatible toolstack.
//!
//! - [`config`]: `xl.cfg` files (`xl.cfg(5)` syntax), with Xen's disk
//!   (`xl-disk-configuration(5)`) and network (`xl-network-configuration(5)`)
//!   specifications.
//! - [`host`]: what the commands need from the hypervisor and the store,
//!   as a trait, so the commands run against a fake in tests.
//! - [`create`]: building a PV domain from its configuration.
//! - [`commands`]: xl's commands, their flags, output and exit codes.

pub mod commands;
pub mod config;
pub mod create;
pub mod host;
