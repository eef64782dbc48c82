//! `/dev/xen/evtchn`: include/uapi/xen/evtchn.h.
//!
//! Besides these ioctls, `read()` returns the pending ports (native-endian
//! `u32`s; the port stays masked) and `write()` of ports unmasks them.

use std::io;
use std::mem::size_of;
use std::os::fd::BorrowedFd;

use super::{ioc, ioctl, ioctl_none, IOC_NONE};

/// Mirrors `struct ioctl_evtchn_bind_virq { unsigned int virq; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlEvtchnBindVirq {
    /// The virtual IRQ (`VIRQ_*`).
    pub virq: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnBindVirq>() == 4);

/// Mirrors `struct ioctl_evtchn_bind_interdomain { unsigned int remote_domain, remote_port; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlEvtchnBindInterdomain {
    /// The remote domain.
    pub remote_domain: u32,
    /// Its unbound port offered to us.
    pub remote_port: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnBindInterdomain>() == 8);
const _: () = assert!(std::mem::offset_of!(IoctlEvtchnBindInterdomain, remote_port) == 4);

/// Mirrors `struct ioctl_evtchn_bind_unbound_port { unsigned int remote_domain; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlEvtchnBindUnboundPort {
    /// The domain allowed to bind the new port.
    pub remote_domain: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnBindUnboundPort>() == 4);

/// Mirrors `struct ioctl_evtchn_unbind { unsigned int port; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlEvtchnUnbind {
    /// The local port.
    pub port: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnUnbind>() == 4);

/// Mirrors `struct ioctl_evtchn_notify { unsigned int port; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlEvtchnNotify {
    /// The local port.
    pub port: u32,
}
const _: () = assert!(size_of::<IoctlEvtchnNotify>() == 4);

/// Mirrors `struct ioctl_evtchn_restrict_domid { domid_t domid; }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoctlEvtchnRestrictDomid {
    /// The only domain interdomain bindings may then name.
    pub domid: u16,
}
const _: () = assert!(size_of::<IoctlEvtchnRestrictDomid>() == 2);

/// `IOCTL_EVTCHN_BIND_VIRQ`: bind a virtual IRQ; returns the port.
pub const IOCTL_EVTCHN_BIND_VIRQ: u32 = ioc(IOC_NONE, b'E', 0, size_of::<IoctlEvtchnBindVirq>());
/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: bind to a remote port; returns the local port.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 = ioc(IOC_NONE, b'E', 1, size_of::<IoctlEvtchnBindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: allocate a port for a remote domain; returns it.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 = ioc(IOC_NONE, b'E', 2, size_of::<IoctlEvtchnBindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`: close a port bound through this fd.
pub const IOCTL_EVTCHN_UNBIND: u32 = ioc(IOC_NONE, b'E', 3, size_of::<IoctlEvtchnUnbind>());
/// `IOCTL_EVTCHN_NOTIFY`: send an event on a port bound through this fd.
pub const IOCTL_EVTCHN_NOTIFY: u32 = ioc(IOC_NONE, b'E', 4, size_of::<IoctlEvtchnNotify>());
/// `IOCTL_EVTCHN_RESET`: clear the pending-port buffer and its overflow state.
pub const IOCTL_EVTCHN_RESET: u32 = ioc(IOC_NONE, b'E', 5, 0);
/// `IOCTL_EVTCHN_RESTRICT_DOMID`: allow interdomain bindings to one domain only.
pub const IOCTL_EVTCHN_RESTRICT_DOMID: u32 = ioc(IOC_NONE, b'E', 6, size_of::<IoctlEvtchnRestrictDomid>());

/// Converts the non-negative port an ioctl returned.
fn port(rc: libc::c_int) -> io::Result<u32> {
    u32::try_from(rc).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative port from evtchn ioctl"))
}

/// `IOCTL_EVTCHN_BIND_VIRQ`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn bind_virq(fd: BorrowedFd<'_>, virq: u32) -> io::Result<u32> {
    let mut arg = IoctlEvtchnBindVirq { virq };
    // SAFETY: fd is the evtchn device (caller), which reads one
    // `ioctl_evtchn_bind_virq` from `arg`.
    port(unsafe { ioctl(fd, IOCTL_EVTCHN_BIND_VIRQ, &mut arg) }?)
}

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn bind_interdomain(fd: BorrowedFd<'_>, remote_domain: u32, remote_port: u32) -> io::Result<u32> {
    let mut arg = IoctlEvtchnBindInterdomain { remote_domain, remote_port };
    // SAFETY: fd is the evtchn device (caller), which reads one
    // `ioctl_evtchn_bind_interdomain` from `arg`.
    port(unsafe { ioctl(fd, IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg) }?)
}

/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn bind_unbound_port(fd: BorrowedFd<'_>, remote_domain: u32) -> io::Result<u32> {
    let mut arg = IoctlEvtchnBindUnboundPort { remote_domain };
    // SAFETY: fd is the evtchn device (caller), which reads one
    // `ioctl_evtchn_bind_unbound_port` from `arg`.
    port(unsafe { ioctl(fd, IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut arg) }?)
}

/// `IOCTL_EVTCHN_UNBIND`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn unbind(fd: BorrowedFd<'_>, port: u32) -> io::Result<()> {
    let mut arg = IoctlEvtchnUnbind { port };
    // SAFETY: fd is the evtchn device (caller), which reads one
    // `ioctl_evtchn_unbind` from `arg`.
    unsafe { ioctl(fd, IOCTL_EVTCHN_UNBIND, &mut arg) }.map(drop)
}

/// `IOCTL_EVTCHN_NOTIFY`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn notify(fd: BorrowedFd<'_>, port: u32) -> io::Result<()> {
    let mut arg = IoctlEvtchnNotify { port };
    // SAFETY: fd is the evtchn device (caller), which reads one
    // `ioctl_evtchn_notify` from `arg`.
    unsafe { ioctl(fd, IOCTL_EVTCHN_NOTIFY, &mut arg) }.map(drop)
}

/// `IOCTL_EVTCHN_RESET`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn reset(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is the evtchn device (caller), which takes no argument here.
    unsafe { ioctl_none(fd, IOCTL_EVTCHN_RESET) }.map(drop)
}

/// `IOCTL_EVTCHN_RESTRICT_DOMID`.
///
/// # Safety
/// `fd` must be an open `/dev/xen/evtchn`.
pub unsafe fn restrict_domid(fd: BorrowedFd<'_>, domid: u16) -> io::Result<()> {
    let mut arg = IoctlEvtchnRestrictDomid { domid };
    // SAFETY: fd is the evtchn device (caller), which reads one
    // `ioctl_evtchn_restrict_domid` from `arg`.
    unsafe { ioctl(fd, IOCTL_EVTCHN_RESTRICT_DOMID, &mut arg) }.map(drop)
}
