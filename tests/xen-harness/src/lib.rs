//! Test support for the rxen Xen test host.
//!
//! `tests/xen-host/build.sh` (`make xen-host`) builds, from Debian's
//! packages, Xen 4.17, a dom0 (Debian's 6.1 kernel and a debootstrap root
//! packed as an initramfs) and guest material (Debian's 6.1 and 6.12 cloud
//! kernels, a busybox initramfs, an ext4 test disk), and writes a manifest.
//! This crate boots that host under QEMU's software emulation and drives it:
//!
//! * [`XenHost::boot`] starts QEMU with Xen as the multiboot kernel and
//!   dom0's kernel and initramfs as modules. The cached initramfs gets a
//!   small archive appended ([`HostConfig::with_dom0_file`],
//!   [`HostConfig::with_project_binary`]), so nothing big is rebuilt.
//! * dom0's init starts xenstored, xen-init-dom0 and xenconsoled, then
//!   `rxen-agent`, which serves a dedicated virtio-serial port (see
//!   [`agent`]). Every step ([`XenHost::run`]) is a bash script with its
//!   own timeout, returning stdout, stderr and exit status; one boot serves
//!   any number of scenarios.
//! * Guests are created with Xen's `xl` ([`XenHost::xl_create`]) from a
//!   [`GuestConfig`]; their init (tests/xen-host/guest/init) prints marker
//!   lines that [`XenHost::wait_guest_lines`] waits for in xenconsoled's
//!   logs. [`XenHost::guest_initrd_with`] adds files (project binaries,
//!   `/rxen/guest.d/*` scripts) to a guest's initramfs.
//!
//! ```no_run
//! use std::time::Duration;
//! use xen_harness::{cpio::Archive, GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
//!
//! # fn main() -> xen_harness::Result<()> {
//! let mut host = XenHost::boot(HostConfig::new("example")?.with_project_binary("rxen-demo")?)?;
//! // A guest that runs a script, while dom0 runs a program concurrently.
//! let mut overlay = Archive::new();
//! overlay.file("/rxen/guest.d/10-hello", 0o755, b"#!/bin/sh\necho hello from $(uname -r)\n");
//! let initrd = host.guest_initrd_with("hello", overlay)?;
//! let job = host.spawn("rxen-demo --help")?;
//! let guest = host.xl_create(
//!     &GuestConfig::new("hello", GuestKind::Pvh, GuestKernel::Linux61).with_ramdisk(&initrd),
//! )?;
//! host.wait_guest_line(&guest, "RXEN-GUEST-RC 10-hello 0", Duration::from_secs(120))?;
//! let dom0_out = host.wait_job(&job, Duration::from_secs(60))?;
//! assert!(dom0_out.success());
//! host.shutdown()?;
//! # Ok(())
//! # }
//! ```

pub mod agent;
pub mod cpio;
pub mod demo;
pub mod error;
pub mod guest;
pub mod host;
pub mod manifest;

pub use agent::Output;
pub use error::{Error, Result};
pub use guest::{dom0_paths, guest_kernel_path, Domain, Guest, GuestConfig, GuestKind, GuestLine};
pub use host::{project_binary, target_dir, Dom0Job, FileSource, HostConfig, Timings, XenHost};
pub use manifest::{GuestKernel, Manifest};
