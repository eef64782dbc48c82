//! `struct virtio_net_hdr` (`<linux/virtio_net.h>`): the metadata a TAP
//! opened with `IFF_VNET_HDR` puts before every frame it hands out and
//! expects before every frame it is given.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` must be completed over `csum_start..` (it holds the
/// pseudo-header sum).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum has been validated.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on the GSO type, the TCP ECN bits are set.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// ```c
/// struct virtio_net_hdr {
///     __u8 flags;
///     __u8 gso_type;
///     __virtio16 hdr_len;     /* Ethernet + IP + tcp/udp hdrs */
///     __virtio16 gso_size;    /* Bytes to append to hdr_len per frame */
///     __virtio16 csum_start;  /* Position to start checksumming from */
///     __virtio16 csum_offset; /* Offset after that to place checksum */
/// };
/// ```
///
/// The 16-bit fields are in the TAP's byte order: native, unless
/// `TUNSETVNETLE`/`TUNSETVNETBE` said otherwise (this crate never does).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (Ethernet, IP, TCP/UDP) of a GSO frame.
    pub hdr_len: u16,
    /// Segment payload size of a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the frame.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}
const _: () = assert!(std::mem::size_of::<VirtioNetHdr>() == 10);
const _: () = assert!(std::mem::offset_of!(VirtioNetHdr, gso_type) == 1);
const _: () = assert!(std::mem::offset_of!(VirtioNetHdr, hdr_len) == 2);
const _: () = assert!(std::mem::offset_of!(VirtioNetHdr, gso_size) == 4);
const _: () = assert!(std::mem::offset_of!(VirtioNetHdr, csum_start) == 6);
const _: () = assert!(std::mem::offset_of!(VirtioNetHdr, csum_offset) == 8);

/// Size of [`VirtioNetHdr`], the `TUNSETVNETHDRSZ` this crate sets.
pub const VNET_HDR_LEN: usize = std::mem::size_of::<VirtioNetHdr>();

impl VirtioNetHdr {
    /// Whether `VIRTIO_NET_HDR_F_NEEDS_CSUM` is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }

    /// Whether `VIRTIO_NET_HDR_F_DATA_VALID` is set.
    pub fn data_valid(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0
    }

    /// The GSO type without the ECN flag.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !VIRTIO_NET_HDR_GSO_ECN
    }
}
