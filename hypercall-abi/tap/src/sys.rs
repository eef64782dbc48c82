//! The TUN/TAP and network interface ioctls, with the C structures they
//! take. Every `unsafe` of the crate is here.
//!
//! Numbers and layouts are those of Linux's UAPI headers
//! `<linux/if_tun.h>`, `<linux/sockios.h>` and `<linux/if.h>`; each is
//! quoted where it is defined.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `TUNSETIFF`: `_IOW('T', 202, int)` (`<linux/if_tun.h>`).
pub(crate) const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
pub(crate) const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`.
pub(crate) const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNSETSNDBUF`: `_IOW('T', 212, int)`, the bytes of written frames
/// each queue may have in the kernel (not yet taken by the stack).
pub(crate) const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
/// `TUNGETSNDBUF`: `_IOR('T', 211, int)`.
pub(crate) const TUNGETSNDBUF: libc::c_ulong = 0x8004_54d3;
/// `TUNSETCARRIER`: `_IOW('T', 226, int)`.
pub(crate) const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
/// `TUNSETSTEERINGEBPF`: `_IOR('T', 224, int)`, the fd of a socket filter
/// program whose return value (modulo the queues) picks the queue of each
/// frame the host sends.
pub(crate) const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// `SIOCSIFMTU` (`<linux/sockios.h>`).
pub(crate) const SIOCSIFMTU: libc::c_ulong = 0x8922;
/// `SIOCGIFMTU`.
pub(crate) const SIOCGIFMTU: libc::c_ulong = 0x8921;
/// `SIOCGIFFLAGS`.
pub(crate) const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
/// `SIOCSIFFLAGS`.
pub(crate) const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
/// `SIOCSIFHWADDR`.
pub(crate) const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
/// `SIOCGIFHWADDR`.
pub(crate) const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
/// `SIOCGIFINDEX`.
pub(crate) const SIOCGIFINDEX: libc::c_ulong = 0x8933;
/// `SIOCBRADDIF`: add an interface to a bridge.
pub(crate) const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// `IFNAMSIZ` (`<linux/if.h>`), including the terminating NUL.
pub(crate) const IFNAMSIZ: usize = 16;
/// `ARPHRD_ETHER` (`<linux/if_arp.h>`): the `sa_family` of an Ethernet
/// hardware address.
pub(crate) const ARPHRD_ETHER: u16 = 1;

/// `struct ifreq` (`<linux/if.h>`):
///
/// ```c
/// struct ifreq {
///     union { char ifrn_name[IFNAMSIZ]; } ifr_ifrn;
///     union {
///         struct sockaddr ifru_hwaddr; short ifru_flags; int ifru_ivalue;
///         int ifru_mtu; struct ifmap ifru_map; char ifru_slave[IFNAMSIZ];
///         char ifru_newname[IFNAMSIZ]; void __user *ifru_data;
///         struct if_settings ifru_settings;
///     } ifr_ifru;
/// };
/// ```
///
/// The union (24 bytes on 64-bit Linux, the size of `struct ifmap`) is kept
/// as bytes; the accessors below read and write the member an ioctl uses.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}
const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

impl IfReq {
    /// A request naming interface `name` (at most `IFNAMSIZ - 1` bytes,
    /// checked by the caller), the union zeroed.
    pub(crate) fn new(name: &str) -> Self {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        let bytes = name.as_bytes();
        let n = bytes.len().min(IFNAMSIZ - 1);
        req.name[..n].copy_from_slice(&bytes[..n]);
        req
    }

    /// The name the kernel wrote back (TUNSETIFF fills in a `%d` template).
    pub(crate) fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// `ifru_flags` (a `short`).
    pub(crate) fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    /// Sets `ifru_flags`.
    pub(crate) fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }

    /// `ifru_ivalue`, `ifru_mtu` or `ifr_ifindex` (an `int`).
    pub(crate) fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    /// Sets `ifru_ivalue`, `ifru_mtu` or `ifr_ifindex`.
    pub(crate) fn set_int(&mut self, value: i32) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }

    /// `ifru_hwaddr`: `sa_family` then the address in `sa_data`.
    pub(crate) fn hwaddr(&self) -> (u16, [u8; 6]) {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.data[2..8]);
        (u16::from_ne_bytes([self.data[0], self.data[1]]), mac)
    }

    /// Sets `ifru_hwaddr` to an Ethernet address.
    pub(crate) fn set_hwaddr(&mut self, mac: [u8; 6]) {
        self.data[..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        self.data[2..8].copy_from_slice(&mac);
    }
}

/// `ioctl(fd, request, &mut ifreq)`.
pub(crate) fn ioctl_ifreq(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    req: &mut IfReq,
) -> io::Result<()> {
    // SAFETY: every request passed here takes a `struct ifreq *`; `req` is
    // a live, exclusively borrowed 40-byte `struct ifreq` for the call, and
    // the kernel reads and writes only within it. The fd is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, request, &value)` for the TUN ioctls that read an `int` or
/// `unsigned int` through a pointer (`TUNSETVNETHDRSZ`, `TUNSETCARRIER`).
pub(crate) fn ioctl_int_ptr(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the request reads one `int` through the pointer, which points
    // to a live local; the fd is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &value as *const libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, request, value)` for the TUN ioctls that take their argument
/// by value (`TUNSETOFFLOAD`).
pub(crate) fn ioctl_value(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    value: libc::c_ulong,
) -> io::Result<()> {
    // SAFETY: the request takes its argument by value and dereferences no
    // pointer; the fd is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A datagram socket to issue interface ioctls on (`SIOC*`).
pub(crate) fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `SIOCBRADDBR`: create a bridge; the argument is its name, a `char *`.
pub(crate) const SIOCBRADDBR: libc::c_ulong = 0x89a0;
/// `SIOCBRDELBR`: delete a bridge (which must be down).
pub(crate) const SIOCBRDELBR: libc::c_ulong = 0x89a1;

/// `ioctl(fd, request, name)` for the bridge ioctls that take a
/// NUL-terminated interface name.
pub(crate) fn ioctl_name(fd: BorrowedFd<'_>, request: libc::c_ulong, name: &str) -> io::Result<()> {
    let mut buf = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: the request reads a NUL-terminated string of at most
    // IFNAMSIZ bytes through the pointer; `buf` is a live local of
    // IFNAMSIZ bytes whose last byte is NUL. The fd is open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, buf.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ETH_P_ALL` (`<linux/if_ether.h>`): every protocol.
pub(crate) const ETH_P_ALL: u16 = 0x0003;
/// `PACKET_VNET_HDR` (`<linux/if_packet.h>`): frames carry a
/// `struct virtio_net_hdr` first.
pub(crate) const PACKET_VNET_HDR: libc::c_int = 15;
/// `PACKET_IGNORE_OUTGOING`: do not see frames sent on the interface.
pub(crate) const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// A raw `AF_PACKET` socket bound to interface `ifindex`.
pub(crate) fn packet_socket(ifindex: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers and returns a new fd or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::c_int::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing
    // else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is a valid value to fill in.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a live, initialised sockaddr_ll and the length
    // passed is its size; bind(2) only reads it. The fd is open.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `setsockopt(fd, level, name, &value, sizeof(int))`.
pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option reads one `int` through the pointer, which points
    // to a live local of that size; the fd is open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, request, &mut value)` for the TUN ioctls that write an
/// `int` through a pointer (`TUNGETSNDBUF`).
pub(crate) fn ioctl_get_int(fd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    // SAFETY: the request writes one `int` through the pointer, which
    // points to a live local exclusively borrowed for the call; the fd is
    // open.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &mut value as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Waits up to `timeout_ms` (-1: forever) for `fd` to be readable.
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    poll_for(fd, libc::POLLIN, timeout_ms)
}

/// Waits up to `timeout_ms` (-1: forever) for `fd` to be writable.
pub(crate) fn poll_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    poll_for(fd, libc::POLLOUT, timeout_ms)
}

fn poll_for(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd, exclusively borrowed for the
        // call; poll(2) writes only its `revents`.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `struct bpf_insn` (`<linux/bpf.h>`): opcode, destination register in
/// the low and source register in the high nibble, offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `prog_flags`; the
/// kernel takes a shorter attribute and treats the rest as zero.
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `BPF_PROG_LOAD`, the `bpf(2)` command.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_SOCKET_FILTER`, the type TUN's steering programs have.
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// `offsetof(struct __sk_buff, hash)`: after twelve `__u32` fields and
/// `cb[5]`.
const SK_BUFF_HASH: i16 = 68;

/// Loads the steering program `return skb->hash % queues` (`queues` >= 1):
/// every flow stays on one of the first `queues` queues.
pub(crate) fn load_steering_prog(queues: u32) -> io::Result<OwnedFd> {
    let modulus = i32::try_from(queues.max(1)).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let insns = [
        // r0 = *(u32 *)(r1 + offsetof(struct __sk_buff, hash))
        BpfInsn { code: 0x61, regs: 0x10, off: SK_BUFF_HASH, imm: 0 },
        // w0 %= queues
        BpfInsn { code: 0x94, regs: 0, off: 0, imm: modulus },
        // return r0
        BpfInsn { code: 0x95, regs: 0, off: 0, imm: 0 },
    ];
    let license = c"GPL";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: BPF_PROG_LOAD reads `size_of::<BpfProgLoad>()` bytes of
    // `attr`, and through it the instructions and the NUL-terminated
    // license, all live locals for the call; it writes nothing back (no
    // log buffer) and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by bpf(2), is open, and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
