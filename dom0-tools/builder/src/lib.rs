//! The domain builder's hypervisor-independent core: it unwraps a guest
//! kernel (bzImage or ELF), reads its Xen ELF notes, lays out a 64-bit PV
//! (or PVH) domain's boot memory the way libxenguest's `xc_dom_*` code does in
//! Xen 4.17, and writes that memory through a [`GuestMemory`] trait.
//!
//! What needs the hypervisor stays with the caller: creating the domain,
//! populating its memory (which gives the pfn-to-mfn list), mapping its pages
//! (the [`GuestMemory`] implementation), the hypercall page
//! (`XEN_DOMCTL_hypercall_init`), pinning the page tables
//! (`MMUEXT_PIN_L4_TABLE`), the shared info page and `setvcpucontext`. The
//! [`pv::PvBootState`] returned by a build says what to pass to each.
//!
//! A PV build, in the order libxenguest does it:
//!
//! ```no_run
//! # fn demo(file: &[u8], mfns: &[u64], mem: &mut rxen_builder::VecGuestMemory)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use rxen_builder::{elf::ElfKernel, image, pv};
//!
//! let image = image::load_kernel(file)?;
//! let kernel = ElfKernel::parse(&image.elf)?;
//! let config = pv::PvConfig::new(256, 2, "console=hvc0 root=/dev/xvda1");
//! let layout = pv::PvLayout::new(&kernel, &config)?;
//! // ... create the domain, populate layout.total_pages pages -> mfns ...
//! let boot = layout.build(&kernel, None, mfns, &pv::StartInfoParams::default(), mem)?;
//! // ... hypercall_init(boot.hypercall_page), pin boot.pin_l4_mfn,
//! //     init the shared info page, setvcpucontext(boot.vcpu) ...
//! # Ok(()) }
//! ```

pub mod decompress;
pub mod elf;
pub mod image;
pub mod mem;
mod pagetable;
pub mod pv;
pub mod pvh;

#[cfg(test)]
mod real_kernels;

pub use mem::{GuestMemory, VecGuestMemory};

/// Size of a guest page (x86 4 KiB pages).
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
