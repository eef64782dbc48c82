//! `/dev/xen/xenbus` and `/dev/xen/xenbus_backend`: Xen's
//! tools/include/xen-sys/Linux/xenbus_dev.h (`/usr/include/xen/sys/xenbus_dev.h`).
//!
//! `/dev/xen/xenbus` itself needs no ioctl: xenstore messages are written
//! and read whole, with the framing of `xs_wire.h` (see
//! [`hypercall_abi::xenstore`]). These ioctls are for a xenstored running
//! in a domain other than dom0, on `/dev/xen/xenbus_backend`.

use super::{ioc, IOC_NONE};

/// `IOCTL_XENBUS_BACKEND_EVTCHN`: returns the xenstore event channel port.
pub const IOCTL_XENBUS_BACKEND_EVTCHN: u32 = ioc(IOC_NONE, b'B', 0, 0);
/// `IOCTL_XENBUS_BACKEND_SETUP`: allocates the xenstore ring of a domain.
pub const IOCTL_XENBUS_BACKEND_SETUP: u32 = ioc(IOC_NONE, b'B', 1, 0);
