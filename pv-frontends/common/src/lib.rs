//! What the Rust frontends (`rblkfront`, `rnetfront`) share: the
//! platforms they run on ([`platform`]: a Linux guest of Xen through
//! `/dev/xen/{gntalloc,evtchn,xenbus}`, or a domain of the loopback
//! hypervisor).

pub mod platform;
