//! Xen's public headers (`xen/include/public/`), interface version 0x00040e00
//! as shipped with Xen 4.17, x86_64 layout.
//!
//! Every structure is `#[repr(C)]` with zerocopy derives; its size and field
//! offsets are asserted at compile time against the C layout, and
//! `tests/c_layout.rs` checks them again against Debian's `libxen-dev`.

pub mod arch_x86;
pub mod blkif;
pub mod console;
pub mod domctl;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hvm_start_info;
pub mod hypercall;
pub mod memory;
pub mod netif;
pub mod sched;
pub mod start_info;
pub mod sysctl;
pub mod xenbus;
pub mod xs_wire;

/// A domain identifier (`domid_t`).
pub type DomId = u16;
/// `DOMID_FIRST_RESERVED`: ids from here on name no real domain but
/// special ones (`DOMID_SELF`, `DOMID_IO`, ...).
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;
/// The calling domain (`DOMID_SELF`).
pub const DOMID_SELF: DomId = 0x7FF0;
/// The first domain, dom0.
pub const DOMID_0: DomId = 0;
/// A grant reference (`grant_ref_t`).
pub type GrantRef = u32;
/// An event channel port (`evtchn_port_t`).
pub type EvtchnPort = u32;
/// Page size on x86 (`XEN_PAGE_SIZE`).
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`] (`XEN_PAGE_SHIFT`).
pub const PAGE_SHIFT: u32 = 12;
