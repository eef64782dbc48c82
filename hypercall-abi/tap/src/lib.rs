//! Linux TAP devices for userspace network backends.
//!
//! A [`Tap`] is one queue (file descriptor) of a TAP interface created
//! through `/dev/net/tun` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: every
//! frame read or written is preceded by a [`VirtioNetHdr`] carrying its
//! checksum and segmentation offload metadata, and the kernel hands out
//! partially checksummed or GSO frames only as far as
//! [`Tap::set_offload`] allows. With `multi_queue`, more queues of the
//! same interface are opened with [`Tap::open_queue`], and the kernel
//! spreads frames across them. [`Tap::create_with`] chooses how frames
//! written to the interface reach the host's stack ([`Delivery`]): in the
//! write, or through a NAPI instance per queue (`IFF_NAPI`), run in the
//! write's softirq or in a kernel thread of its own; a queue opened with
//! [`Tap::open_queue_with`] may differ from the others. [`Tap::steer_to_first`]
//! keeps the frames the host sends on the first queues, so that later
//! ones are only written to.
//!
//! The interface is configured through the usual ioctls: MAC address,
//! MTU, link up, and membership of a Linux bridge (what Xen's `vif-bridge`
//! hotplug script does for in-kernel netback's `vif<domid>.<devid>`).
//!
//! [`PacketSocket`] is the other side of an interface, a raw `AF_PACKET`
//! socket bound to it: the host's view, for tests and diagnostics.
//!
//! Everything here needs `CAP_NET_ADMIN` (and `CAP_NET_RAW` for
//! [`PacketSocket`]); [`TapError::Permission`] says so.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod sys;
mod vnet;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use bitflags::bitflags;

pub use vnet::*;

/// The clone device that creates TUN/TAP interfaces.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name (`IFNAMSIZ - 1`).
pub const MAX_NAME_LEN: usize = sys::IFNAMSIZ - 1;

/// `IFF_TAP` (`<linux/if_tun.h>`): Ethernet frames, not IP packets.
const IFF_TAP: i16 = 0x0002;
/// `IFF_NO_PI`: no `struct tun_pi` before frames.
const IFF_NO_PI: i16 = 0x1000;
/// `IFF_VNET_HDR`: a `struct virtio_net_hdr` before frames.
const IFF_VNET_HDR: i16 = 0x4000;
/// `IFF_MULTI_QUEUE`: the interface has one queue per open fd.
const IFF_MULTI_QUEUE: i16 = 0x0100;
/// `IFF_NAPI`: frames written to the queue are handed to the network
/// stack by a NAPI instance of the queue (with GRO), not in the writer's
/// system call.
const IFF_NAPI: i16 = 0x0010;
/// `IFF_UP` (`<linux/if.h>`).
const IFF_UP: i16 = 0x1;

bitflags! {
    /// The offloads of `TUNSETOFFLOAD` (`TUN_F_*`): which metadata the
    /// kernel may leave to the reader of the TAP (frames with
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`, GSO frames). Without them the kernel
    /// completes checksums and segments frames before handing them out.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Offload: u32 {
        /// `TUN_F_CSUM`: partial checksums.
        const CSUM = 0x01;
        /// `TUN_F_TSO4`: TCP segmentation over IPv4 (needs `CSUM`).
        const TSO4 = 0x02;
        /// `TUN_F_TSO6`: TCP segmentation over IPv6 (needs `CSUM`).
        const TSO6 = 0x04;
        /// `TUN_F_TSO_ECN`: TSO with the ECN bits.
        const TSO_ECN = 0x08;
    }
}

/// Why a TAP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` does not exist.
    #[error("{TUN_DEVICE} does not exist: load the tun module (modprobe tun) or create the node (mknod /dev/net/tun c 10 200)")]
    NoTunDevice,
    /// The caller lacks `CAP_NET_ADMIN` (or `CAP_NET_RAW`).
    #[error("{op} on {name} is not permitted: it needs CAP_NET_ADMIN (run as root)")]
    Permission {
        /// What was attempted.
        op: &'static str,
        /// The interface.
        name: String,
    },
    /// The interface name is empty, too long or holds a character Linux refuses.
    #[error("{0:?} is not a valid interface name: 1 to {MAX_NAME_LEN} bytes, no '/', ':', whitespace or NUL")]
    BadName(String),
    /// An ioctl or system call failed.
    #[error("{op} on {name} failed: {source}")]
    Io {
        /// What was attempted, e.g. `"TUNSETIFF"`.
        op: &'static str,
        /// The interface.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl TapError {
    fn io(op: &'static str, name: &str, source: io::Error) -> Self {
        if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
            TapError::Permission {
                op,
                name: name.to_owned(),
            }
        } else {
            TapError::Io {
                op,
                name: name.to_owned(),
                source,
            }
        }
    }
}

/// Checks an interface name as Linux's `dev_valid_name` does.
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.to_owned()))
    }
}

/// Runs `f` with a socket for interface ioctls.
fn with_control_socket<T>(
    op: &'static str,
    name: &str,
    f: impl FnOnce(BorrowedFd<'_>) -> io::Result<T>,
) -> Result<T, TapError> {
    let socket = sys::control_socket().map_err(|e| TapError::io("socket(AF_INET)", name, e))?;
    f(socket.as_fd()).map_err(|e| TapError::io(op, name, e))
}

/// One queue of a TAP interface, non-blocking. The interface disappears
/// when its last queue is closed.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    multi_queue: bool,
    napi: bool,
}

/// How frames written to a [`Tap`] reach the host's network stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// In the `write` that hands them over (the kernel's default).
    #[default]
    Inline,
    /// Queued for the queue's NAPI instance (`IFF_NAPI`), which the write
    /// schedules and which then runs in the softirq that ends the write.
    Napi,
    /// Queued for the queue's NAPI instance, run by a kernel thread of its
    /// own (`IFF_NAPI` and the interface's `threaded` attribute): the
    /// write only queues the frame, and the thread hands a batch of them
    /// (up to the NAPI weight, 64) to the stack together.
    NapiThread,
}

impl Tap {
    /// Creates TAP interface `name` (or attaches to it, if a multi-queue
    /// interface of that name exists and belongs to us), with a
    /// [`VirtioNetHdr`] before every frame and no offload yet. With
    /// `multi_queue`, further queues come from [`Tap::open_queue`].
    pub fn create(name: &str, multi_queue: bool) -> Result<Tap, TapError> {
        Tap::create_with(name, multi_queue, Delivery::Inline)
    }

    /// [`Tap::create`], with frames written to every queue of the
    /// interface delivered as `delivery` says.
    pub fn create_with(name: &str, multi_queue: bool, delivery: Delivery) -> Result<Tap, TapError> {
        let tap = Tap::attach(name, multi_queue, delivery != Delivery::Inline, true)?;
        // The attribute needs a NAPI instance, which the queue just made;
        // queues attached later get their threads from it.
        tap.set_napi_threaded(delivery == Delivery::NapiThread)?;
        Ok(tap)
    }

    /// Sets the interface's `threaded` attribute: with `IFF_NAPI` queues,
    /// whether their NAPI instances run in kernel threads of their own.
    fn set_napi_threaded(&self, on: bool) -> Result<(), TapError> {
        if !self.napi {
            return Ok(());
        }
        let path = format!("/sys/class/net/{}/threaded", self.name);
        std::fs::write(&path, if on { "1" } else { "0" })
            .map_err(|e| TapError::io("write /sys/class/net/*/threaded", &self.name, e))
    }

    /// Opens a queue of TAP `name` (creating the interface if it does not
    /// exist); `reset_offload` clears the interface's offloads.
    fn attach(name: &str, multi_queue: bool, napi: bool, reset_offload: bool) -> Result<Tap, TapError> {
        check_name(name)?;
        if !Path::new(TUN_DEVICE).exists() {
            return Err(TapError::NoTunDevice);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_DEVICE)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice,
                _ => TapError::io("open /dev/net/tun", name, e),
            })?;
        let mut req = sys::IfReq::new(name);
        let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if multi_queue {
            flags |= IFF_MULTI_QUEUE;
        }
        if napi {
            flags |= IFF_NAPI;
        }
        req.set_flags(flags);
        sys::ioctl_ifreq(file.as_fd(), sys::TUNSETIFF, &mut req)
            .map_err(|e| TapError::io("TUNSETIFF", name, e))?;
        let name = req.name();
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        sys::ioctl_int_ptr(file.as_fd(), sys::TUNSETVNETHDRSZ, hdr_len)
            .map_err(|e| TapError::io("TUNSETVNETHDRSZ", &name, e))?;
        let tap = Tap {
            file,
            name,
            multi_queue,
            napi,
        };
        // The offloads belong to the interface, not the queue: a queue
        // attached to a running interface leaves them as they are.
        if reset_offload {
            tap.set_offload(Offload::empty())?;
        }
        log::debug!(
            "{}: TAP queue opened{}",
            tap.name,
            if multi_queue { " (multi-queue)" } else { "" }
        );
        Ok(tap)
    }

    /// Opens another queue of this multi-queue interface, whose written
    /// frames reach the host's stack as `delivery` says.
    pub fn open_queue_with(&self, delivery: Delivery) -> Result<Tap, TapError> {
        let tap = self.open_queue_napi(delivery != Delivery::Inline)?;
        if delivery == Delivery::NapiThread {
            tap.set_napi_threaded(true)?;
        }
        Ok(tap)
    }

    /// Frames the host sends go to the first `queues` queues only (the
    /// ones opened first), by flow (`TUNSETSTEERINGEBPF` with a program
    /// returning the frame's hash modulo `queues`), for every queue of the
    /// interface. The others are then only written to.
    pub fn steer_to_first(&self, queues: u32) -> Result<(), TapError> {
        let prog = sys::load_steering_prog(queues).map_err(|e| TapError::io("bpf(BPF_PROG_LOAD)", &self.name, e))?;
        let fd = prog.as_raw_fd();
        sys::ioctl_int_ptr(self.file.as_fd(), sys::TUNSETSTEERINGEBPF, fd)
            .map_err(|e| TapError::io("TUNSETSTEERINGEBPF", &self.name, e))
    }

    /// Opens another queue of this multi-queue interface.
    pub fn open_queue(&self) -> Result<Tap, TapError> {
        self.open_queue_napi(self.napi)
    }

    fn open_queue_napi(&self, napi: bool) -> Result<Tap, TapError> {
        if !self.multi_queue {
            return Err(TapError::Io {
                op: "open another queue",
                name: self.name.clone(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the TAP was created without multi_queue",
                ),
            });
        }
        Tap::attach(&self.name, true, napi, false)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the interface has one queue per fd.
    pub fn is_multi_queue(&self) -> bool {
        self.multi_queue
    }

    /// Sets the offloads the reader accepts (`TUNSETOFFLOAD`), for every
    /// queue of the interface. TSO without `CSUM` is ignored by the kernel.
    pub fn set_offload(&self, offload: Offload) -> Result<(), TapError> {
        sys::ioctl_value(
            self.file.as_fd(),
            sys::TUNSETOFFLOAD,
            libc::c_ulong::from(offload.bits()),
        )
        .map_err(|e| TapError::io("TUNSETOFFLOAD", &self.name, e))
    }

    /// Turns the carrier on or off (`TUNSETCARRIER`): without carrier the
    /// kernel queues nothing for the TAP and a bridge does not forward to it.
    pub fn set_carrier(&self, on: bool) -> Result<(), TapError> {
        sys::ioctl_int_ptr(self.file.as_fd(), sys::TUNSETCARRIER, libc::c_int::from(on))
            .map_err(|e| TapError::io("TUNSETCARRIER", &self.name, e))
    }

    /// Another fd on the same queue (`dup`), e.g. for a thread of its own.
    pub fn try_clone(&self) -> Result<Tap, TapError> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| TapError::io("dup", &self.name, e))?;
        Ok(Tap {
            file,
            name: self.name.clone(),
            multi_queue: self.multi_queue,
            napi: self.napi,
        })
    }

    /// Sets the interface's MAC address.
    pub fn set_mac(&self, mac: [u8; 6]) -> Result<(), TapError> {
        set_mac(&self.name, mac)
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> Result<[u8; 6], TapError> {
        let mut req = sys::IfReq::new(&self.name);
        with_control_socket("SIOCGIFHWADDR", &self.name, |s| {
            sys::ioctl_ifreq(s, sys::SIOCGIFHWADDR, &mut req)
        })?;
        Ok(req.hwaddr().1)
    }

    /// Sets the interface's MTU.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), TapError> {
        let mut req = sys::IfReq::new(&self.name);
        let mtu = i32::try_from(mtu).map_err(|_| {
            TapError::io(
                "SIOCSIFMTU",
                &self.name,
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        req.set_int(mtu);
        with_control_socket("SIOCSIFMTU", &self.name, |s| {
            sys::ioctl_ifreq(s, sys::SIOCSIFMTU, &mut req)
        })
    }

    /// The interface's MTU.
    pub fn mtu(&self) -> Result<u32, TapError> {
        let mut req = sys::IfReq::new(&self.name);
        with_control_socket("SIOCGIFMTU", &self.name, |s| {
            sys::ioctl_ifreq(s, sys::SIOCGIFMTU, &mut req)
        })?;
        Ok(req.int().max(0) as u32)
    }

    /// Brings the link up or down (`IFF_UP` with `SIOCSIFFLAGS`).
    pub fn set_up(&self, up: bool) -> Result<(), TapError> {
        set_link_up(&self.name, up)
    }

    /// Whether the link is administratively up.
    pub fn is_up(&self) -> Result<bool, TapError> {
        Ok(flags(&self.name)? & IFF_UP != 0)
    }

    /// The interface index.
    pub fn ifindex(&self) -> Result<i32, TapError> {
        ifindex(&self.name)
    }

    /// Makes the interface a port of Linux bridge `bridge` (`SIOCBRADDIF`).
    pub fn add_to_bridge(&self, bridge: &str) -> Result<(), TapError> {
        check_name(bridge)?;
        let index = self.ifindex()?;
        let mut req = sys::IfReq::new(bridge);
        req.set_int(index);
        with_control_socket("SIOCBRADDIF", bridge, |s| {
            sys::ioctl_ifreq(s, sys::SIOCBRADDIF, &mut req)
        })
    }

    /// Reads one frame, [`VirtioNetHdr`] first, into `buf`; `WouldBlock`
    /// if none is queued. A frame longer than `buf` is truncated, so
    /// `buf` should hold `VNET_HDR_LEN + 65535 + 14` bytes at least.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame, [`VirtioNetHdr`] first; `WouldBlock` if the
    /// kernel cannot take it now.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// [`Tap::send`], waiting up to `timeout` for room while the queue's
    /// written frames fill its send buffer ([`Tap::set_sndbuf`]): those a
    /// NAPI instance has not handed to the stack yet. `WouldBlock` if
    /// there was none in time.
    pub fn send_wait(&self, frame: &[u8], timeout: Duration) -> io::Result<usize> {
        let mut deadline = None;
        loop {
            match self.send(frame) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            // The clock is read only once the queue is full: without a
            // vDSO clock (a PV dom0) each reading is a system call, too
            // dear for every write.
            let deadline = *deadline.get_or_insert_with(|| std::time::Instant::now() + timeout);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            sys::poll_writable(self.file.as_fd(), left.as_millis().clamp(1, i32::MAX as u128) as i32)?;
        }
    }

    /// Bounds the bytes of written frames each queue of the interface may
    /// have in the kernel, not yet taken by the stack (`TUNSETSNDBUF`; the
    /// kernel's default is unbounded), for the queues attached now: one
    /// attached later starts unbounded. Frames queued for a NAPI instance
    /// stay there until its poll; past the bound, [`Tap::send`] says
    /// `WouldBlock`, and the queue is writable again below half of it.
    pub fn set_sndbuf(&self, bytes: i32) -> Result<(), TapError> {
        sys::ioctl_int_ptr(self.file.as_fd(), sys::TUNSETSNDBUF, bytes)
            .map_err(|e| TapError::io("TUNSETSNDBUF", &self.name, e))
    }

    /// The bound [`Tap::set_sndbuf`] set (`TUNGETSNDBUF`).
    pub fn sndbuf(&self) -> Result<i32, TapError> {
        sys::ioctl_get_int(self.file.as_fd(), sys::TUNGETSNDBUF).map_err(|e| TapError::io("TUNGETSNDBUF", &self.name, e))
    }

    /// The fd, for `poll`: readable when a frame is queued.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Sets the MAC address of interface `name`.
pub fn set_mac(name: &str, mac: [u8; 6]) -> Result<(), TapError> {
    let mut req = sys::IfReq::new(name);
    req.set_hwaddr(mac);
    with_control_socket("SIOCSIFHWADDR", name, |s| {
        sys::ioctl_ifreq(s, sys::SIOCSIFHWADDR, &mut req)
    })
}

fn flags(name: &str) -> Result<i16, TapError> {
    let mut req = sys::IfReq::new(name);
    with_control_socket("SIOCGIFFLAGS", name, |s| {
        sys::ioctl_ifreq(s, sys::SIOCGIFFLAGS, &mut req)
    })?;
    Ok(req.flags())
}

/// Brings interface `name` up or down.
pub fn set_link_up(name: &str, up: bool) -> Result<(), TapError> {
    check_name(name)?;
    let current = flags(name)?;
    let wanted = if up {
        current | IFF_UP
    } else {
        current & !IFF_UP
    };
    let mut req = sys::IfReq::new(name);
    req.set_flags(wanted);
    with_control_socket("SIOCSIFFLAGS", name, |s| {
        sys::ioctl_ifreq(s, sys::SIOCSIFFLAGS, &mut req)
    })
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<i32, TapError> {
    check_name(name)?;
    let mut req = sys::IfReq::new(name);
    with_control_socket("SIOCGIFINDEX", name, |s| {
        sys::ioctl_ifreq(s, sys::SIOCGIFINDEX, &mut req)
    })?;
    Ok(req.int())
}

/// How many NAPI kernel threads interface `name` has (`napi/NAME-<id>`,
/// one per queue whose NAPI instance is threaded; the kernel cuts their
/// names to 15 bytes, and so does the match). Other interfaces whose names
/// share those first bytes are counted too.
pub fn napi_threads(name: &str) -> io::Result<usize> {
    let prefix: String = format!("napi/{name}-").chars().take(15).collect();
    Ok(std::fs::read_dir("/proc")?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end().starts_with(&prefix))
        .count())
}

/// Creates Linux bridge `name` (`SIOCBRADDBR`), down.
pub fn create_bridge(name: &str) -> Result<(), TapError> {
    check_name(name)?;
    with_control_socket("SIOCBRADDBR", name, |s| {
        sys::ioctl_name(s, sys::SIOCBRADDBR, name)
    })
}

/// Deletes Linux bridge `name` (`SIOCBRDELBR`), bringing it down first.
pub fn delete_bridge(name: &str) -> Result<(), TapError> {
    set_link_up(name, false)?;
    with_control_socket("SIOCBRDELBR", name, |s| {
        sys::ioctl_name(s, sys::SIOCBRDELBR, name)
    })
}

/// The host's side of an interface: a raw `AF_PACKET` socket bound to it.
/// What it sends leaves through the interface (a TAP's reader receives
/// it); it receives what arrives on the interface (what a TAP's writer
/// sent), not what it sent itself.
#[derive(Debug)]
pub struct PacketSocket {
    file: File,
    name: String,
    vnet_hdr: bool,
}

impl PacketSocket {
    /// Binds to interface `name`; with `vnet_hdr`, every frame sent or
    /// received starts with a [`VirtioNetHdr`] (`PACKET_VNET_HDR`).
    pub fn bind(name: &str, vnet_hdr: bool) -> Result<PacketSocket, TapError> {
        let index = ifindex(name)?;
        let fd: OwnedFd =
            sys::packet_socket(index).map_err(|e| TapError::io("bind(AF_PACKET)", name, e))?;
        sys::setsockopt_int(fd.as_fd(), libc::SOL_PACKET, sys::PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| TapError::io("PACKET_IGNORE_OUTGOING", name, e))?;
        if vnet_hdr {
            sys::setsockopt_int(fd.as_fd(), libc::SOL_PACKET, sys::PACKET_VNET_HDR, 1)
                .map_err(|e| TapError::io("PACKET_VNET_HDR", name, e))?;
        }
        Ok(PacketSocket {
            file: File::from(fd),
            name: name.to_owned(),
            vnet_hdr,
        })
    }

    /// The interface.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a [`VirtioNetHdr`].
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Sends one frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Receives one frame, waiting up to `timeout`; `None` if none came.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        if !sys::poll_readable(self.file.as_fd(), ms)? {
            return Ok(None);
        }
        (&self.file).read(buf).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use zerocopy::{FromBytes, IntoBytes};

    use super::*;

    /// A unique interface name for this test process.
    fn unique(prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "{prefix}{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates a TAP, failing loudly (not skipping) without /dev/net/tun or
    /// the privilege: these tests exist to exercise the real device.
    fn new_tap(multi_queue: bool) -> Tap {
        match Tap::create(&unique("rxt"), multi_queue) {
            Ok(tap) => tap,
            Err(e @ (TapError::NoTunDevice | TapError::Permission { .. })) => {
                panic!("this test creates a real TAP device and cannot: {e}")
            }
            Err(e) => panic!("creating a TAP failed: {e}"),
        }
    }

    #[test]
    fn names_are_checked_like_linux() {
        assert!(check_name("vif3.0").is_ok());
        assert!(check_name("abcdefghijklmno").is_ok());
        for bad in ["", "abcdefghijklmnop", "a/b", "a b", "a:b", ".", ".."] {
            assert!(
                matches!(check_name(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vnet_header_layout_matches_linux() {
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let bytes = hdr.as_bytes();
        assert_eq!(bytes.len(), VNET_HDR_LEN);
        assert_eq!(bytes[..2], [1, 0x81]);
        assert_eq!(bytes[4..6], 1448u16.to_ne_bytes());
        assert_eq!(VirtioNetHdr::read_from_bytes(bytes).unwrap(), hdr);
        assert!(hdr.needs_csum() && !hdr.data_valid());
        assert_eq!(hdr.gso_kind(), VIRTIO_NET_HDR_GSO_TCPV4);
    }

    #[test]
    fn creates_and_configures_a_real_tap() {
        let tap = new_tap(false);
        let mac = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

        tap.set_mac(mac).unwrap();
        tap.set_mtu(9000).unwrap();
        tap.set_offload(Offload::CSUM | Offload::TSO4 | Offload::TSO6)
            .unwrap();
        tap.set_up(true).unwrap();
        tap.set_carrier(false).unwrap();
        tap.set_carrier(true).unwrap();

        assert!(tap.name().starts_with("rxt"));
        assert_eq!(tap.mac().unwrap(), mac);
        assert_eq!(tap.mtu().unwrap(), 9000);
        assert!(tap.is_up().unwrap());
        assert!(tap.ifindex().unwrap() > 0);
        let mut buf = [0u8; 128];
        // No carrier partner wrote anything yet, and the fd never blocks.
        let _ = tap.recv(&mut buf);
        assert!(matches!(
            Tap::create("bad/name", false),
            Err(TapError::BadName(_))
        ));
    }

    /// `ethtool -k NAME` as `feature: on|off` lines.
    fn features(name: &str) -> String {
        let out = std::process::Command::new("ethtool").args(["-k", name]).output().expect("ethtool runs (install-deps installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn offloads_belong_to_the_interface_and_survive_another_queue() {
        let tap = new_tap(true);
        tap.set_offload(Offload::CSUM | Offload::TSO4 | Offload::TSO6).unwrap();

        let second = tap.open_queue().unwrap();

        let f = features(tap.name());
        assert!(f.contains("tcp-segmentation-offload: on"), "{f}");
        assert!(f.contains("tx-checksumming: on"), "{f}");
        second.set_offload(Offload::empty()).unwrap();
        let f = features(tap.name());
        assert!(f.contains("tcp-segmentation-offload: off"), "{f}");
    }

    #[test]
    fn frames_cross_between_the_tap_and_the_host_with_their_metadata() {
        let tap = new_tap(false);
        frames_cross(&tap, &[&tap]);
    }

    #[test]
    fn napi_delivery_hands_frames_to_the_stack_in_the_write_or_a_thread() {
        for (delivery, threaded) in [(Delivery::Napi, "0"), (Delivery::NapiThread, "1")] {
            let tap = match Tap::create_with(&unique("rxt"), true, delivery) {
                Ok(tap) => tap,
                Err(e) => panic!("creating a TAP with {delivery:?} failed: {e}"),
            };
            let second = tap.open_queue().unwrap();
            let attr = std::fs::read_to_string(format!("/sys/class/net/{}/threaded", tap.name())).unwrap();
            assert_eq!(attr.trim(), threaded, "{delivery:?}");
            // A thread per queue with NapiThread, the second queue's made
            // when it was attached; none without.
            let want = if delivery == Delivery::NapiThread { 2 } else { 0 };
            assert_eq!(napi_threads(tap.name()).unwrap(), want, "{delivery:?}");
            frames_cross(&tap, &[&tap, &second]);
            frames_cross(&second, &[&tap, &second]);
        }
    }

    /// The queues of `queues` that frames of 32 UDP flows the host sends
    /// arrive on (by index in `queues`).
    fn queues_hit(host: &PacketSocket, queues: &[&Tap]) -> std::collections::BTreeSet<usize> {
        for port in 0..32u16 {
            let mut f = VirtioNetHdr::default().as_bytes().to_vec();
            f.extend([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
            // IPv4, 20 bytes, UDP, 10.0.0.1 -> 10.0.0.2; UDP ports vary.
            f.extend([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
            f.extend((1000 + port).to_be_bytes());
            f.extend(2000u16.to_be_bytes());
            f.extend([0, 8, 0, 0]);
            host.send(&f).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut hit = std::collections::BTreeSet::new();
        let mut buf = vec![0u8; 2048];
        for (i, queue) in queues.iter().enumerate() {
            loop {
                match queue.recv(&mut buf) {
                    Ok(n) if n > VNET_HDR_LEN + 23 && buf[VNET_HDR_LEN + 23] == 17 => {
                        hit.insert(i);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        hit
    }

    #[test]
    fn steering_keeps_the_hosts_frames_on_the_first_queues() {
        let tap = new_tap(true);
        let second = tap.open_queue_with(Delivery::NapiThread).unwrap();
        tap.set_up(true).unwrap();
        let host = PacketSocket::bind(tap.name(), true).unwrap();
        // By default the kernel spreads flows over both queues.
        assert_eq!(queues_hit(&host, &[&tap, &second]).len(), 2);

        tap.steer_to_first(1).unwrap();
        assert_eq!(queues_hit(&host, &[&tap, &second]), [0].into());
        // The second queue still delivers what is written to it, through
        // its NAPI thread.
        assert_eq!(napi_threads(tap.name()).unwrap(), 1);
        frames_cross(&second, &[&tap]);
    }

    /// A frame written to `tap` reaches the host, and one the host sends
    /// is read from one of `queues` (the interface's queues).
    fn frames_cross(tap: &Tap, queues: &[&Tap]) {
        tap.set_offload(Offload::CSUM | Offload::TSO4 | Offload::TSO6)
            .unwrap();
        tap.set_up(true).unwrap();
        let host = PacketSocket::bind(tap.name(), true).unwrap();
        let frame = |ethertype: u16, fill: u8| {
            let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend(std::iter::repeat(fill).take(100));
            f
        };

        // TAP -> host: the frame arrives on the interface.
        let mut out = VirtioNetHdr::default().as_bytes().to_vec();
        out.extend(frame(0x88b5, 0xaa));
        assert_eq!(tap.send(&out).unwrap(), out.len());
        let mut buf = vec![0u8; 2048];
        let got = loop {
            let n = host
                .recv(&mut buf, Duration::from_secs(5))
                .unwrap()
                .expect("no frame reached the host");
            if buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == 0x88b5u16.to_be_bytes() {
                break n;
            }
        };
        assert_eq!(buf[VNET_HDR_LEN..got], frame(0x88b5, 0xaa));

        // host -> TAP: the frame is queued on the TAP with a header.
        let mut sent = VirtioNetHdr::default().as_bytes().to_vec();
        sent.extend(frame(0x88b6, 0x55));
        host.send(&sent).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
'received: loop {
            for queue in queues {
                sys::poll_readable(queue.fd(), 50).unwrap();
                match queue.recv(&mut buf) {
                    Ok(n) if buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == 0x88b6u16.to_be_bytes() => {
                        assert_eq!(buf[VNET_HDR_LEN..n], frame(0x88b6, 0x55));
                        break 'received;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the host's frame never reached the TAP"
            );
        }
    }

    #[test]
    fn a_bounded_send_buffer_holds_writes_back_until_the_stack_takes_frames() {
        let tap = Tap::create_with(&unique("rxt"), true, Delivery::Inline).unwrap();
        assert!(tap.sndbuf().unwrap() > 1 << 30, "unbounded by default: {}", tap.sndbuf().unwrap());
        let bulk = tap.open_queue_with(Delivery::NapiThread).unwrap();
        // A frame or two may wait in the kernel for the NAPI thread (each
        // takes about 1 KiB of the buffer; writable again below half).
        bulk.set_sndbuf(4096).unwrap();
        assert_eq!(tap.sndbuf().unwrap(), 4096);
        assert_eq!(bulk.sndbuf().unwrap(), 4096);
        // A queue attached later has the kernel's default until it is set
        // again.
        let third = tap.open_queue().unwrap();
        assert!(third.sndbuf().unwrap() > 1 << 30);
        third.set_sndbuf(4096).unwrap();
        assert_eq!(third.sndbuf().unwrap(), 4096);
        drop(third);
        assert!(matches!(tap.set_sndbuf(0), Err(TapError::Io { op: "TUNSETSNDBUF", .. })));
        tap.set_up(true).unwrap();
        let host = PacketSocket::bind(tap.name(), true).unwrap();
        let frame = |seq: u16| {
            let mut f = VirtioNetHdr::default().as_bytes().to_vec();
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5]);
            f.extend_from_slice(&seq.to_be_bytes());
            f.extend(std::iter::repeat(0x5a).take(98));
            f
        };
        // The host takes what arrives as it arrives (its socket could hold
        // them all: about 1 KiB each).
        const N: u16 = 100;
        let got = std::thread::spawn(move || {
            let mut buf = vec![0u8; 2048];
            let mut got = Vec::new();
            while got.len() < usize::from(N) {
                let Some(n) = host.recv(&mut buf, Duration::from_secs(5)).unwrap() else { break };
                if buf[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x88, 0xb5] {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        });
        // Written back to back, frames find the buffer full (the last one
        // not taken yet); waiting for room, every one gets through.
        let mut full = 0;
        for seq in 0..N {
            let f = frame(seq);
            match bulk.send(&f) {
                Ok(n) => assert_eq!(n, f.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full += 1;
                    assert_eq!(bulk.send_wait(&f, Duration::from_secs(5)).unwrap(), f.len());
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full > 0, "no write found the buffer full");
        let got = got.join().unwrap();
        assert_eq!(got.len(), usize::from(N), "frames that reached the host ({full} writes waited)");
        for (seq, f) in (0..N).zip(&got) {
            assert_eq!(f[..], frame(seq)[..], "frame {seq}");
        }
    }

    #[test]
    fn multi_queue_taps_open_more_queues_and_join_bridges() {
        let tap = new_tap(true);
        let second = tap.open_queue().unwrap();
        assert_eq!(second.name(), tap.name());
        assert!(
            new_tap(false).open_queue().is_err(),
            "a single-queue TAP has no second queue"
        );

        let bridge = unique("rxbr");
        create_bridge(&bridge).unwrap();
        let joined = tap.add_to_bridge(&bridge);
        let master = std::fs::read_link(format!("/sys/class/net/{}/master", tap.name()));
        delete_bridge(&bridge).unwrap();

        joined.unwrap();
        assert!(
            master.unwrap().ends_with(&bridge),
            "the TAP is a port of the bridge"
        );
    }
}
