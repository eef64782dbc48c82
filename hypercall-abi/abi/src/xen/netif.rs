//! The PV network device protocol (`xen/io/netif.h`): transmit and receive
//! ring entries, extra-info slots, flags and statuses, and the optional
//! control ring.
//!
//! A transmit ring slot holds a [`NetifTxRequest`] or, after a request with
//! `NETTXF_extra_info`, a [`NetifExtraInfo`]; likewise on the receive ring
//! after a response with `NETRXF_extra_info`.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, UnknownValue};
use super::GrantRef;

/// `XEN_NETIF_NR_SLOTS_MIN`: the fewest slots a backend must accept for one
/// packet (frontends may use more only if `feature-sg` limits allow).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// `XEN_NETIF_MAX_TX_SIZE`: the largest packet a transmit request may
/// describe (`size` of the first slot).
pub const XEN_NETIF_MAX_TX_SIZE: u32 = 0xFFFF;

/// `NETTXF_csum_blank`: the checksum is not filled in yet.
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
/// `NETTXF_data_validated`: the checksum has been validated.
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
/// `NETTXF_more_data`: the packet continues in the next request.
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
/// `NETTXF_extra_info`: the next slot is a [`NetifExtraInfo`].
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

bitflags! {
    /// The `flags` of [`NetifTxRequest`] (`NETTXF_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct NetTxFlags: u16 {
        /// `NETTXF_csum_blank`.
        const CSUM_BLANK = NETTXF_CSUM_BLANK;
        /// `NETTXF_data_validated`.
        const DATA_VALIDATED = NETTXF_DATA_VALIDATED;
        /// `NETTXF_more_data`.
        const MORE_DATA = NETTXF_MORE_DATA;
        /// `NETTXF_extra_info`.
        const EXTRA_INFO = NETTXF_EXTRA_INFO;
    }
}

/// `NETRXF_data_validated`: the checksum has been validated.
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
/// `NETRXF_csum_blank`: the checksum is not filled in.
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
/// `NETRXF_more_data`: the packet continues in the next response.
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
/// `NETRXF_extra_info`: the next slot is a [`NetifExtraInfo`].
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// `NETRXF_gso_prefix`: this slot holds only GSO information, before the
/// packet.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

bitflags! {
    /// The `flags` of [`NetifRxResponse`] (`NETRXF_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct NetRxFlags: u16 {
        /// `NETRXF_data_validated`.
        const DATA_VALIDATED = NETRXF_DATA_VALIDATED;
        /// `NETRXF_csum_blank`.
        const CSUM_BLANK = NETRXF_CSUM_BLANK;
        /// `NETRXF_more_data`.
        const MORE_DATA = NETRXF_MORE_DATA;
        /// `NETRXF_extra_info`.
        const EXTRA_INFO = NETRXF_EXTRA_INFO;
        /// `NETRXF_gso_prefix`.
        const GSO_PREFIX = NETRXF_GSO_PREFIX;
    }
}

/// `NETIF_RSP_DROPPED`: the packet was dropped.
pub const NETIF_RSP_DROPPED: i16 = -2;
/// `NETIF_RSP_ERROR`: the request failed.
pub const NETIF_RSP_ERROR: i16 = -1;
/// `NETIF_RSP_OKAY`: the request succeeded.
pub const NETIF_RSP_OKAY: i16 = 0;
/// `NETIF_RSP_NULL`: a placeholder response for an extra-info slot.
pub const NETIF_RSP_NULL: i16 = 1;

abi_enum! {
    /// A transmit response's `status`. (A receive response's `status` is a
    /// byte count when non-negative.)
    pub enum NetifRspStatus: i16, "netif response status" {
        /// Dropped.
        Dropped = NETIF_RSP_DROPPED => "NETIF_RSP_DROPPED",
        /// Failed.
        Error = NETIF_RSP_ERROR => "NETIF_RSP_ERROR",
        /// Succeeded.
        Okay = NETIF_RSP_OKAY => "NETIF_RSP_OKAY",
        /// Placeholder for an extra-info slot.
        Null = NETIF_RSP_NULL => "NETIF_RSP_NULL",
    }
}

/// `XEN_NETIF_EXTRA_TYPE_NONE`: never valid.
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_EXTRA_TYPE_GSO`: segmentation offload, [`NetifExtraGso`].
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`: join a multicast group, [`NetifExtraMcast`].
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
/// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`: leave a multicast group, [`NetifExtraMcast`].
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
/// `XEN_NETIF_EXTRA_TYPE_HASH`: the packet's receive hash, [`NetifExtraHash`].
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// `XEN_NETIF_EXTRA_TYPE_MAX`: extra types are below this.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

abi_enum! {
    /// The `type` of a [`NetifExtraInfo`]; `XEN_NETIF_EXTRA_TYPE_NONE` is
    /// rejected like any unknown type.
    pub enum NetifExtraType: u8, "netif extra info type" {
        /// GSO.
        Gso = XEN_NETIF_EXTRA_TYPE_GSO => "XEN_NETIF_EXTRA_TYPE_GSO",
        /// Multicast add.
        McastAdd = XEN_NETIF_EXTRA_TYPE_MCAST_ADD => "XEN_NETIF_EXTRA_TYPE_MCAST_ADD",
        /// Multicast delete.
        McastDel = XEN_NETIF_EXTRA_TYPE_MCAST_DEL => "XEN_NETIF_EXTRA_TYPE_MCAST_DEL",
        /// Hash.
        Hash = XEN_NETIF_EXTRA_TYPE_HASH => "XEN_NETIF_EXTRA_TYPE_HASH",
    }
}

/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra-info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

bitflags! {
    /// The `flags` of [`NetifExtraInfo`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct NetifExtraFlags: u8 {
        /// `XEN_NETIF_EXTRA_FLAG_MORE`.
        const MORE = XEN_NETIF_EXTRA_FLAG_MORE;
    }
}

/// `XEN_NETIF_GSO_TYPE_NONE`.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
/// `XEN_NETIF_GSO_TYPE_TCPV4`.
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
/// `XEN_NETIF_GSO_TYPE_TCPV6`.
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

abi_enum! {
    /// The `type` of a [`NetifExtraGso`].
    pub enum NetifGsoType: u8, "netif GSO type" {
        /// No segmentation.
        None = XEN_NETIF_GSO_TYPE_NONE => "XEN_NETIF_GSO_TYPE_NONE",
        /// TCP over IPv4.
        TcpV4 = XEN_NETIF_GSO_TYPE_TCPV4 => "XEN_NETIF_GSO_TYPE_TCPV4",
        /// TCP over IPv6.
        TcpV6 = XEN_NETIF_GSO_TYPE_TCPV6 => "XEN_NETIF_GSO_TYPE_TCPV6",
    }
}

/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV4`: bit number of the IPv4 hash type.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT: u8 = 0;
/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`: bit number of the IPv4+TCP hash type.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT: u8 = 1;
/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV6`: bit number of the IPv6 hash type.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT: u8 = 2;
/// `_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`: bit number of the IPv6+TCP hash type.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT: u8 = 3;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV4`: hash over the IPv4 addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV4_BIT;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP`: hash over IPv4 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV6`: hash over the IPv6 addresses.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV6_BIT;
/// `XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP`: hash over IPv6 addresses and TCP ports.
pub const XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP: u32 = 1 << XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP_BIT;
/// `XEN_NETIF_CTRL_HASH_ALGORITHM_NONE`.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_NONE: u32 = 0;
/// `XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ`.
pub const XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ: u32 = 1;

/// A transmit request (`struct netif_tx_request`): one buffer of a packet.
#[doc(alias = "netif_tx_request")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxRequest {
    /// The granted page holding the buffer.
    pub gref: GrantRef,
    /// Offset of the buffer within the page.
    pub offset: u16,
    /// `NETTXF_*`, see [`NetTxFlags`].
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// Buffer size; in a packet's first request, the whole packet's size.
    pub size: u16,
}
const _: () = assert!(core::mem::size_of::<NetifTxRequest>() == 12);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, gref) == 0);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, offset) == 4);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, flags) == 6);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, id) == 8);
const _: () = assert!(core::mem::offset_of!(NetifTxRequest, size) == 10);

impl NetifTxRequest {
    /// `flags`, including bits this crate does not name.
    pub const fn tx_flags(&self) -> NetTxFlags {
        NetTxFlags::from_bits_retain(self.flags)
    }

    /// Whether the buffer lies within its page.
    pub const fn fits_in_page(&self) -> bool {
        self.offset as usize + self.size as usize <= super::PAGE_SIZE
    }
}

/// A transmit response (`struct netif_tx_response`).
#[doc(alias = "netif_tx_response")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxResponse {
    /// The request's `id`.
    pub id: u16,
    /// `NETIF_RSP_*`, see [`NetifRspStatus`].
    pub status: i16,
}
const _: () = assert!(core::mem::size_of::<NetifTxResponse>() == 4);
const _: () = assert!(core::mem::offset_of!(NetifTxResponse, id) == 0);
const _: () = assert!(core::mem::offset_of!(NetifTxResponse, status) == 2);

/// A receive request (`struct netif_rx_request`): an empty page posted by
/// the frontend.
#[doc(alias = "netif_rx_request")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// The granted page to fill.
    pub gref: GrantRef,
}
const _: () = assert!(core::mem::size_of::<NetifRxRequest>() == 8);
const _: () = assert!(core::mem::offset_of!(NetifRxRequest, id) == 0);
const _: () = assert!(core::mem::offset_of!(NetifRxRequest, pad) == 2);
const _: () = assert!(core::mem::offset_of!(NetifRxRequest, gref) == 4);

/// A receive response (`struct netif_rx_response`).
#[doc(alias = "netif_rx_response")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Offset of the data within the page.
    pub offset: u16,
    /// `NETRXF_*`, see [`NetRxFlags`].
    pub flags: u16,
    /// Bytes received if non-negative, else `NETIF_RSP_*`.
    pub status: i16,
}
const _: () = assert!(core::mem::size_of::<NetifRxResponse>() == 8);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, id) == 0);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, offset) == 2);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, flags) == 4);
const _: () = assert!(core::mem::offset_of!(NetifRxResponse, status) == 6);

impl NetifRxResponse {
    /// `flags`, including bits this crate does not name.
    pub const fn rx_flags(&self) -> NetRxFlags {
        NetRxFlags::from_bits_retain(self.flags)
    }
}

/// An extra-info slot (`struct netif_extra_info`).
///
/// The C union `u` is kept as raw words; read it with [`gso`](Self::gso),
/// [`mcast`](Self::mcast) or [`hash`](Self::hash) after checking
/// [`extra_type`](Self::extra_type).
#[doc(alias = "netif_extra_info")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`, see [`NetifExtraType`] (`type` in C).
    pub type_: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`, see [`NetifExtraFlags`].
    pub flags: u8,
    /// The C union `u`.
    pub u: [u16; 3],
}
const _: () = assert!(core::mem::size_of::<NetifExtraInfo>() == 8);
const _: () = assert!(core::mem::align_of::<NetifExtraInfo>() == 2);
const _: () = assert!(core::mem::offset_of!(NetifExtraInfo, type_) == 0);
const _: () = assert!(core::mem::offset_of!(NetifExtraInfo, flags) == 1);
const _: () = assert!(core::mem::offset_of!(NetifExtraInfo, u) == 2);

/// `u.gso` of [`NetifExtraInfo`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraGso {
    /// Maximum segment size.
    pub size: u16,
    /// `XEN_NETIF_GSO_TYPE_*`, see [`NetifGsoType`] (`type` in C).
    pub type_: u8,
    /// Future expansion; zero.
    pub pad: u8,
    /// GSO features; zero.
    pub features: u16,
}
const _: () = assert!(core::mem::size_of::<NetifExtraGso>() == 6);
const _: () = assert!(core::mem::offset_of!(NetifExtraGso, size) == 0);
const _: () = assert!(core::mem::offset_of!(NetifExtraGso, type_) == 2);
const _: () = assert!(core::mem::offset_of!(NetifExtraGso, pad) == 3);
const _: () = assert!(core::mem::offset_of!(NetifExtraGso, features) == 4);

/// `u.mcast` of [`NetifExtraInfo`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraMcast {
    /// The multicast MAC address.
    pub addr: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NetifExtraMcast>() == 6);
const _: () = assert!(core::mem::offset_of!(NetifExtraMcast, addr) == 0);

/// `u.hash` of [`NetifExtraInfo`].
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraHash {
    /// The hash type, a `_XEN_NETIF_CTRL_HASH_TYPE_*` bit number (`type` in C).
    pub type_: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash value, little-endian.
    pub value: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<NetifExtraHash>() == 6);
const _: () = assert!(core::mem::offset_of!(NetifExtraHash, type_) == 0);
const _: () = assert!(core::mem::offset_of!(NetifExtraHash, algorithm) == 1);
const _: () = assert!(core::mem::offset_of!(NetifExtraHash, value) == 2);

impl NetifExtraInfo {
    /// A GSO slot.
    pub fn from_gso(gso: NetifExtraGso, flags: NetifExtraFlags) -> Self {
        Self {
            type_: XEN_NETIF_EXTRA_TYPE_GSO,
            flags: flags.bits(),
            u: zerocopy::transmute!(gso),
        }
    }

    /// A multicast slot: `XEN_NETIF_EXTRA_TYPE_MCAST_ADD` if `add`, else `..._DEL`.
    pub fn from_mcast(add: bool, addr: [u8; 6], flags: NetifExtraFlags) -> Self {
        let type_ = if add {
            XEN_NETIF_EXTRA_TYPE_MCAST_ADD
        } else {
            XEN_NETIF_EXTRA_TYPE_MCAST_DEL
        };
        Self {
            type_,
            flags: flags.bits(),
            u: zerocopy::transmute!(NetifExtraMcast { addr }),
        }
    }

    /// A hash slot.
    pub fn from_hash(hash: NetifExtraHash, flags: NetifExtraFlags) -> Self {
        Self {
            type_: XEN_NETIF_EXTRA_TYPE_HASH,
            flags: flags.bits(),
            u: zerocopy::transmute!(hash),
        }
    }

    /// The slot's type; `XEN_NETIF_EXTRA_TYPE_NONE` and unknown types are errors.
    pub fn extra_type(&self) -> Result<NetifExtraType, UnknownValue<u8>> {
        NetifExtraType::try_from(self.type_)
    }

    /// `flags`, including bits this crate does not name.
    pub const fn extra_flags(&self) -> NetifExtraFlags {
        NetifExtraFlags::from_bits_retain(self.flags)
    }

    /// The union read as `u.gso`.
    pub fn gso(&self) -> NetifExtraGso {
        zerocopy::transmute!(self.u)
    }

    /// The union read as `u.mcast`.
    pub fn mcast(&self) -> NetifExtraMcast {
        zerocopy::transmute!(self.u)
    }

    /// The union read as `u.hash`.
    pub fn hash(&self) -> NetifExtraHash {
        zerocopy::transmute!(self.u)
    }
}

/// `XEN_NETIF_CTRL_TYPE_INVALID`.
pub const XEN_NETIF_CTRL_TYPE_INVALID: u16 = 0;
/// `XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS`.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS: u16 = 1;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS`.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS: u16 = 2;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_KEY`.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_KEY: u16 = 3;
/// `XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE`.
pub const XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE: u16 = 4;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE`.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE: u16 = 5;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING`.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING: u16 = 6;
/// `XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM`.
pub const XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM: u16 = 7;
/// `XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE`.
pub const XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE: u16 = 8;
/// `XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING`.
pub const XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING: u16 = 9;
/// `XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING`.
pub const XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING: u16 = 10;

abi_enum! {
    /// The `type` of a control ring request.
    pub enum NetifCtrlType: u16, "netif control request type" {
        /// Never valid.
        Invalid = XEN_NETIF_CTRL_TYPE_INVALID => "XEN_NETIF_CTRL_TYPE_INVALID",
        /// Query supported hash types.
        GetHashFlags = XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS => "XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS",
        /// Select hash types.
        SetHashFlags = XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS => "XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS",
        /// Set the hash key.
        SetHashKey = XEN_NETIF_CTRL_TYPE_SET_HASH_KEY => "XEN_NETIF_CTRL_TYPE_SET_HASH_KEY",
        /// Query the largest mapping table.
        GetHashMappingSize = XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE
            => "XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE",
        /// Set the mapping table size.
        SetHashMappingSize = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE
            => "XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE",
        /// Fill the mapping table.
        SetHashMapping = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING => "XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING",
        /// Select the hash algorithm.
        SetHashAlgorithm = XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM
            => "XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM",
        /// Query the largest static grant mapping.
        GetGrefMappingSize = XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE
            => "XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE",
        /// Add static grant mappings.
        AddGrefMapping = XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING => "XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING",
        /// Remove static grant mappings.
        DelGrefMapping = XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING => "XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING",
    }
}

/// `XEN_NETIF_CTRL_STATUS_SUCCESS`.
pub const XEN_NETIF_CTRL_STATUS_SUCCESS: u32 = 0;
/// `XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED`.
pub const XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED: u32 = 1;
/// `XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER`.
pub const XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER: u32 = 2;
/// `XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW`.
pub const XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW: u32 = 3;

/// A control ring request (`struct xen_netif_ctrl_request`).
#[doc(alias = "xen_netif_ctrl_request")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenNetifCtrlRequest {
    /// Echoed in the response.
    pub id: u16,
    /// `XEN_NETIF_CTRL_TYPE_*`, see [`NetifCtrlType`] (`type` in C).
    pub type_: u16,
    /// Type-specific arguments.
    pub data: [u32; 3],
}
const _: () = assert!(core::mem::size_of::<XenNetifCtrlRequest>() == 16);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlRequest, id) == 0);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlRequest, type_) == 2);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlRequest, data) == 4);

/// A control ring response (`struct xen_netif_ctrl_response`).
#[doc(alias = "xen_netif_ctrl_response")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenNetifCtrlResponse {
    /// The request's `id`.
    pub id: u16,
    /// The request's `type`.
    pub type_: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`.
    pub status: u32,
    /// Type-specific result.
    pub data: u32,
}
const _: () = assert!(core::mem::size_of::<XenNetifCtrlResponse>() == 12);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlResponse, id) == 0);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlResponse, type_) == 2);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlResponse, status) == 4);
const _: () = assert!(core::mem::offset_of!(XenNetifCtrlResponse, data) == 8);

/// `XEN_NETIF_CTRLF_GREF_readonly`: a static grant mapping is read-only.
pub const XEN_NETIF_CTRLF_GREF_READONLY: u16 = 1 << 0;

/// An entry of the grant list passed with `XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING`
/// or `..._DEL_GREF_MAPPING` (`struct xen_netif_gref`).
#[doc(alias = "xen_netif_gref")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XenNetifGref {
    /// The grant (`ref` in C).
    pub ref_: GrantRef,
    /// `XEN_NETIF_CTRLF_GREF_*`.
    pub flags: u16,
    /// `XEN_NETIF_CTRL_STATUS_*`, per entry.
    pub status: u16,
}
const _: () = assert!(core::mem::size_of::<XenNetifGref>() == 8);
const _: () = assert!(core::mem::offset_of!(XenNetifGref, ref_) == 0);
const _: () = assert!(core::mem::offset_of!(XenNetifGref, flags) == 4);
const _: () = assert!(core::mem::offset_of!(XenNetifGref, status) == 6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gso_extra_round_trips_through_the_union() {
        let gso = NetifExtraGso {
            size: 1448,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };
        let extra = NetifExtraInfo::from_gso(gso, NetifExtraFlags::MORE);

        assert_eq!(extra.extra_type(), Ok(NetifExtraType::Gso));
        assert_eq!(extra.gso(), gso);
        assert!(extra.extra_flags().contains(NetifExtraFlags::MORE));
        assert_eq!(extra.as_bytes()[2..4], 1448u16.to_ne_bytes());
    }

    #[test]
    fn mcast_and_hash_extras_round_trip() {
        let addr = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
        let extra = NetifExtraInfo::from_mcast(true, addr, NetifExtraFlags::empty());
        assert_eq!(extra.extra_type(), Ok(NetifExtraType::McastAdd));
        assert_eq!(extra.mcast().addr, addr);
        assert_eq!(extra.as_bytes()[2..], addr);

        let hash = NetifExtraHash {
            type_: XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP_BIT,
            algorithm: 1,
            value: [1, 2, 3, 4],
        };
        assert_eq!(
            NetifExtraInfo::from_hash(hash, NetifExtraFlags::empty()).hash(),
            hash
        );
    }

    #[test]
    fn extra_type_none_is_rejected() {
        let extra = NetifExtraInfo::default();

        assert_eq!(
            extra.extra_type(),
            Err(UnknownValue {
                kind: "netif extra info type",
                value: XEN_NETIF_EXTRA_TYPE_NONE
            })
        );
    }

    #[test]
    fn tx_request_must_stay_in_its_page() {
        let request = NetifTxRequest {
            offset: 4000,
            size: 96,
            ..Default::default()
        };
        assert!(request.fits_in_page());
        assert!(!NetifTxRequest {
            size: 97,
            ..request
        }
        .fits_in_page());
    }
}
