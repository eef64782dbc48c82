//! The transmit ring: packets from the frontend, checked as Linux's
//! netback checks them (`xenvif_tx_build_gops`, `xenvif_get_extras`,
//! `xenvif_count_requests`), then copied out of the frontend's pages with
//! one batch of grant copies.
//!
//! A packet is a first request (whose `size` is the whole packet's),
//! optionally followed by extra-info slots (`NETTXF_extra_info`), then by
//! one request per further fragment while `NETTXF_more_data` is set. Each
//! slot gets a response, in slot order: the first and the fragments their
//! own `id` and status, extra-info slots `NETIF_RSP_NULL`.
//!
//! | frontend fault | outcome |
//! |---|---|
//! | extra-info or fragment slots not yet published | wait ([`TxVerdict::Incomplete`]); fatal if they never come |
//! | extra-info type 0 or unknown | fatal |
//! | GSO extra with size 0 or a type other than TCPv4/TCPv6 | fatal |
//! | more than [`FATAL_SLOTS`] fragment slots | fatal |
//! | a slot that crosses its page (`offset + size > 4096`) | fatal |
//! | more than [`XEN_NETIF_NR_SLOTS_MIN`] fragment slots | `NETIF_RSP_ERROR` for every slot |
//! | a fragment larger than what remains of the packet | `NETIF_RSP_ERROR` for every slot |
//! | a first fragment shorter than an Ethernet header | `NETIF_RSP_ERROR` for every slot |
//! | a grant that cannot be copied | `NETIF_RSP_ERROR` for that slot; packet dropped |
//!
//! A fatal fault is `xenvif_fatal_tx_err`: the frontend is treated as
//! malicious and the whole interface stops serving it (see [`crate::queue`]).
//! A multicast-control extra (`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`/`_DEL`)
//! carries no packet; it is answered `NETIF_RSP_OKAY`.

use hypercall_abi::platform::{CopyMemory, GrantError, GrantMap};
use hypercall_abi::ring::{BackRing, RingError};
use hypercall_abi::xen::grant_table::GNTST_GENERAL_ERROR;
pub use hypercall_abi::xen::netif::XEN_NETIF_NR_SLOTS_MIN;
use hypercall_abi::xen::netif::{
    NetTxFlags, NetifExtraFlags, NetifExtraGso, NetifExtraInfo, NetifExtraType, NetifGsoType,
    NetifTxRequest, NetifTxResponse, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY,
    XEN_NETIF_EXTRA_TYPE_MAX,
};
use hypercall_abi::xen::{DomId, PAGE_SIZE};
use rxen_tap::VNET_HDR_LEN;
use zerocopy::IntoBytes;

use crate::copy::{copy_spans, Direction, Span};
use crate::offload::{TxOffload, ETH_HLEN};

/// The transmit ring.
pub type TxRing<'a> = BackRing<'a, NetifTxRequest, NetifTxResponse>;

/// Fragment slots past which a frontend is malicious (netback's
/// `fatal_skb_slots` default, `FATAL_SKB_SLOTS_DEFAULT`).
pub const FATAL_SLOTS: usize = 20;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The first request announces extra info or more data that is not on
    /// the ring.
    #[error("the packet's slots are not all published: {0} more expected")]
    MissingSlots(usize),
    /// An extra-info slot of type 0 or unknown.
    #[error("extra info of invalid type {0}")]
    BadExtraType(u8),
    /// A GSO extra with segment size 0.
    #[error("GSO size must not be zero")]
    ZeroGsoSize,
    /// A GSO extra of an unknown type.
    #[error("bad GSO type {0}")]
    BadGsoType(u8),
    /// More fragment slots than a well-behaved frontend would ever use.
    #[error("malicious frontend using more than {FATAL_SLOTS} slots for one packet")]
    Malicious,
    /// A slot reaches past the end of its page.
    #[error("slot at offset {offset} of size {size} crosses a page boundary")]
    CrossesPage {
        /// The slot's `offset`.
        offset: u16,
        /// Its size.
        size: u16,
    },
    /// More than [`XEN_NETIF_NR_SLOTS_MIN`] fragment slots.
    #[error("{0} slots exceed the limit of {XEN_NETIF_NR_SLOTS_MIN}")]
    TooManySlots(usize),
    /// A fragment is larger than what remains of the packet's size (a
    /// frame of 64 KiB or more overflowed the first `size`).
    #[error("slot size {slot} exceeds the {remaining} bytes remaining of the packet")]
    SlotTooLarge {
        /// The fragment's size.
        slot: u16,
        /// What remained.
        remaining: u16,
    },
    /// The first fragment cannot hold an Ethernet header.
    #[error("first fragment of {0} bytes is shorter than an Ethernet header")]
    TooShort(u16),
    /// A grant could not be copied.
    #[error("copying granted data failed with status {0}")]
    Copy(i16),
}

impl TxError {
    /// Whether Linux's netback disables the interface for this fault
    /// (`xenvif_fatal_tx_err`).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            TxError::MissingSlots(_)
                | TxError::BadExtraType(_)
                | TxError::ZeroGsoSize
                | TxError::BadGsoType(_)
                | TxError::Malicious
                | TxError::CrossesPage { .. }
        )
    }
}

/// A packet that passed every check that needs only the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// The first request, its `size` reduced to its own fragment's.
    pub first: NetifTxRequest,
    /// Extra-info slots that followed it.
    pub extra_count: usize,
    /// The further fragments.
    pub frags: Vec<NetifTxRequest>,
    /// Checksum and segmentation metadata.
    pub offload: TxOffload,
}

impl TxPacket {
    /// Bytes in the packet.
    pub fn len(&self) -> usize {
        usize::from(self.first.size)
            + self
                .frags
                .iter()
                .map(|f| usize::from(f.size))
                .sum::<usize>()
    }

    /// Whether the packet is empty (never, once checked).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data slots, first fragment first.
    pub fn slots(&self) -> impl Iterator<Item = &NetifTxRequest> {
        std::iter::once(&self.first).chain(&self.frags)
    }

    /// The responses to all its slots, with `status[i]` for data slot `i`.
    pub fn responses(&self, status: impl Fn(usize) -> i16) -> Vec<NetifTxResponse> {
        responses(&self.first, self.extra_count, &self.frags, status)
    }
}

fn responses(
    first: &NetifTxRequest,
    extra_count: usize,
    frags: &[NetifTxRequest],
    status: impl Fn(usize) -> i16,
) -> Vec<NetifTxResponse> {
    let mut out = Vec::with_capacity(1 + extra_count + frags.len());
    out.push(NetifTxResponse {
        id: first.id,
        status: status(0),
    });
    out.extend(
        std::iter::repeat(NetifTxResponse {
            id: 0,
            status: NETIF_RSP_NULL,
        })
        .take(extra_count),
    );
    out.extend(frags.iter().enumerate().map(|(i, f)| NetifTxResponse {
        id: f.id,
        status: status(i + 1),
    }));
    out
}

/// What became of the next packet on the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxVerdict {
    /// A packet to copy and send.
    Packet(TxPacket),
    /// A packet refused: answer its slots with `responses`.
    Dropped {
        /// Why.
        reason: TxError,
        /// The responses to its slots.
        responses: Vec<NetifTxResponse>,
    },
    /// A multicast control request: answer it with `responses`.
    Control {
        /// Whether it joins (else leaves) the group.
        add: bool,
        /// The group.
        addr: [u8; 6],
        /// The responses to its slots.
        responses: Vec<NetifTxResponse>,
    },
    /// The frontend is malicious: stop serving it, answer nothing.
    Fatal(TxError),
    /// The packet's first slot is published but not all of its slots: its
    /// slots were put back on the ring (nothing consumed) to be read afresh
    /// later. A frontend publishes whole packets (netfront pushes once per
    /// packet), so the rest is expected at once; the caller decides how
    /// long to wait before treating it as [`TxError::MissingSlots`].
    Incomplete(Incomplete),
}

/// What was on the ring when a packet's slots ran out: enough to tell a
/// frontend that publishes slowly from a misread packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// Ring index of the packet's first slot.
    pub start: u32,
    /// Slots published from `start` when the packet was read.
    pub published: u32,
    /// The slots read, raw (extra-info slots shown as requests).
    pub slots: Vec<NetifTxRequest>,
}

impl std::fmt::Display for Incomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "packet at ring index {} has {} slot(s) published and needs more; slots:",
            self.start, self.published
        )?;
        for slot in &self.slots {
            let (gref, offset, flags, id, size) =
                (slot.gref, slot.offset, slot.flags, slot.id, slot.size);
            write!(
                f,
                " [gref {gref} offset {offset} flags {flags:#x} id {id} size {size}]"
            )?;
        }
        Ok(())
    }
}

/// Puts back the slots of a packet whose slots ran out and describes them.
fn incomplete(
    ring: &mut TxRing<'_>,
    start: hypercall_abi::ring::RingIdx,
    published: usize,
) -> Result<Option<TxVerdict>, RingError> {
    let taken = (ring.req_cons() - start).0;
    let slots = (0..taken)
        .map(|i| ring.get_request(start + std::num::Wrapping(i)))
        .collect::<Result<Vec<_>, _>>()?;
    ring.unconsume_requests(start)?;
    Ok(Some(TxVerdict::Incomplete(Incomplete {
        start: start.0,
        published: u32::try_from(published).unwrap_or(u32::MAX),
        slots,
    })))
}

/// A transmit ring slot read as extra info: the two share the slot (the
/// C union of `netif_tx_sring`), extra info in its first 8 bytes.
fn as_extra(slot: &NetifTxRequest) -> NetifExtraInfo {
    let bytes = slot.as_bytes();
    let mut extra = NetifExtraInfo::default();
    extra
        .as_mut_bytes()
        .copy_from_slice(&bytes[..std::mem::size_of::<NetifExtraInfo>()]);
    extra
}

/// Takes the next packet off the ring and checks it; `None` if no request
/// is waiting. Each slot is copied off the ring once (a packet found
/// [`TxVerdict::Incomplete`] is put back and read afresh). Fails only if the
/// ring itself is broken (a producer index past what the ring holds),
/// which is as fatal as [`TxVerdict::Fatal`].
pub fn next_packet(ring: &mut TxRing<'_>) -> Result<Option<TxVerdict>, RingError> {
    let start = ring.req_cons();
    let mut work = ring.unconsumed_requests()? as usize;
    let published = work;
    let Some(mut first) = ring.consume_request()? else {
        return Ok(None);
    };
    work = work.saturating_sub(1);

    // Extra info (bounded by the slots published, themselves bounded by
    // the ring size).
    let mut extras: [Option<NetifExtraInfo>; XEN_NETIF_EXTRA_TYPE_MAX as usize - 1] =
        Default::default();
    let mut extra_count = 0;
    if first.tx_flags().contains(NetTxFlags::EXTRA_INFO) {
        loop {
            if work == 0 {
                return incomplete(ring, start, published);
            }
            let Some(slot) = ring.consume_request()? else {
                return incomplete(ring, start, published);
            };
            work -= 1;
            extra_count += 1;
            let extra = as_extra(&slot);
            let index = match extra.type_ {
                t if t == 0 || t >= XEN_NETIF_EXTRA_TYPE_MAX => {
                    return Ok(Some(TxVerdict::Fatal(TxError::BadExtraType(t))))
                }
                t => usize::from(t) - 1,
            };
            extras[index] = Some(extra);
            if !NetifExtraFlags::from_bits_retain(extra.flags).contains(NetifExtraFlags::MORE) {
                break;
            }
        }
    }
    for (kind, add) in [
        (NetifExtraType::McastAdd, true),
        (NetifExtraType::McastDel, false),
    ] {
        if let Some(extra) = extras[kind as usize - 1] {
            let responses = responses(&first, extra_count, &[], |_| NETIF_RSP_OKAY);
            return Ok(Some(TxVerdict::Control {
                add,
                addr: extra.mcast().addr,
                responses,
            }));
        }
    }

    // Fragments: `first.size` counts down to the first fragment's own.
    let mut frags = Vec::new();
    let mut drop = None;
    if first.tx_flags().contains(NetTxFlags::MORE_DATA) {
        loop {
            let slots = frags.len();
            if slots >= work {
                return incomplete(ring, start, published);
            }
            if slots >= FATAL_SLOTS {
                return Ok(Some(TxVerdict::Fatal(TxError::Malicious)));
            }
            if drop.is_none() && slots >= XEN_NETIF_NR_SLOTS_MIN {
                drop = Some(TxError::TooManySlots(slots + 1));
            }
            let Some(frag) = ring.consume_request()? else {
                return incomplete(ring, start, published);
            };
            if drop.is_none() && frag.size > first.size {
                drop = Some(TxError::SlotTooLarge {
                    slot: frag.size,
                    remaining: first.size,
                });
            }
            first.size = first.size.wrapping_sub(frag.size);
            if !frag.fits_in_page() {
                return Ok(Some(TxVerdict::Fatal(TxError::CrossesPage {
                    offset: frag.offset,
                    size: frag.size,
                })));
            }
            frags.push(frag);
            if !frag.tx_flags().contains(NetTxFlags::MORE_DATA) {
                break;
            }
        }
    }
    if drop.is_none() && usize::from(first.size) < ETH_HLEN {
        drop = Some(TxError::TooShort(first.size));
    }
    if let Some(reason) = drop {
        let responses = responses(&first, extra_count, &frags, |_| NETIF_RSP_ERROR);
        return Ok(Some(TxVerdict::Dropped { reason, responses }));
    }
    if !first.fits_in_page() {
        return Ok(Some(TxVerdict::Fatal(TxError::CrossesPage {
            offset: first.offset,
            size: first.size,
        })));
    }
    let gso = match extras[NetifExtraType::Gso as usize - 1] {
        None => None,
        Some(extra) => {
            let gso: NetifExtraGso = extra.gso();
            if gso.size == 0 {
                return Ok(Some(TxVerdict::Fatal(TxError::ZeroGsoSize)));
            }
            if !matches!(
                NetifGsoType::try_from(gso.type_),
                Ok(NetifGsoType::TcpV4 | NetifGsoType::TcpV6)
            ) {
                return Ok(Some(TxVerdict::Fatal(TxError::BadGsoType(gso.type_))));
            }
            Some(gso)
        }
    };
    let flags = first.tx_flags();
    let offload = TxOffload {
        csum_blank: flags.contains(NetTxFlags::CSUM_BLANK),
        data_validated: flags.contains(NetTxFlags::DATA_VALIDATED),
        gso,
    };
    Ok(Some(TxVerdict::Packet(TxPacket {
        first,
        extra_count,
        frags,
        offload,
    })))
}

/// Copies `packet` out of domain `domid`'s pages into `buf`, after
/// [`VNET_HDR_LEN`] bytes left for the header, with one batch of grant
/// copies. Returns each data slot's status (`Err(GNTST_*)` for a slot
/// that could not be copied); fails only if the batch could not be
/// submitted.
pub fn copy_packet<G: GrantMap>(
    grants: &G,
    domid: DomId,
    packet: &TxPacket,
    buf: &mut Vec<u8>,
) -> Result<Vec<Result<(), i16>>, GrantError> {
    buf.clear();
    buf.resize(VNET_HDR_LEN + packet.len(), 0);
    copy_packet_into(grants, domid, packet, buf)
}

/// [`copy_packet`] into the first `VNET_HDR_LEN + packet.len()` bytes of
/// `buf`, a buffer kept across packets (no clearing of it per packet: the
/// copies overwrite every byte the packet uses). A `buf` too short fails
/// every slot with `GNTST_general_error`.
pub fn copy_packet_into<G: GrantMap>(
    grants: &G,
    domid: DomId,
    packet: &TxPacket,
    mut buf: &mut [u8],
) -> Result<Vec<Result<(), i16>>, GrantError> {
    let mut status = copy_packets_into(grants, domid, &[(packet, 0)], &mut buf)?;
    Ok(status.pop().unwrap_or_default())
}

/// [`copy_packet_into`] for several packets, packet `p` at byte
/// `packets[p].1` of `buf` (header room first; in increasing order, not
/// overlapping), with one batch of grant copies for all of them (one
/// system call where the platform makes one per batch). Returns each
/// packet's slot status, in order; a packet that does not fit in `buf`
/// fails every slot with `GNTST_general_error`.
pub fn copy_packets_into<G: GrantMap>(
    grants: &G,
    domid: DomId,
    packets: &[(&TxPacket, usize)],
    buf: &mut dyn CopyMemory,
) -> Result<Vec<Vec<Result<(), i16>>>, GrantError> {
    let mut status: Vec<Vec<Result<(), i16>>> = packets
        .iter()
        .map(|(packet, _)| vec![Ok(()); 1 + packet.frags.len()])
        .collect();
    let mut spans = Vec::new();
    // (packet, data slot) of each span.
    let mut span_slot = Vec::new();
    let len = buf.bytes().len();
    for (p, (packet, start)) in packets.iter().enumerate() {
        if start + VNET_HDR_LEN + packet.len() > len {
            status[p].fill(Err(GNTST_GENERAL_ERROR));
            continue;
        }
        let mut pos = start + VNET_HDR_LEN;
        for (i, slot) in packet.slots().enumerate() {
            let size = usize::from(slot.size);
            if size == 0 {
                continue;
            }
            debug_assert!(usize::from(slot.offset) + size <= PAGE_SIZE);
            spans.push(Span {
                gref: slot.gref,
                offset: slot.offset,
                local: pos..pos + size,
            });
            span_slot.push((p, i));
            pos += size;
        }
    }
    let copied = copy_spans(grants, domid, buf, Direction::FromFrontend, &spans)?;
    for (result, (p, i)) in copied.into_iter().zip(span_slot) {
        status[p][i] = result;
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use hypercall_abi::ring::{FrontRing, OwnedRingMem};
    use hypercall_abi::xen::netif::XEN_NETIF_GSO_TYPE_TCPV4;

    use super::*;
    use crate::memgrant::MemGrantTable;

    fn req(gref: u32, offset: u16, size: u16, flags: u16, id: u16) -> NetifTxRequest {
        NetifTxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        }
    }

    fn extra_slot(extra: NetifExtraInfo) -> NetifTxRequest {
        let mut slot = NetifTxRequest::default();
        slot.as_mut_bytes()[..8].copy_from_slice(extra.as_bytes());
        slot
    }

    /// Pushes `slots` through a real ring and returns the verdicts.
    fn verdicts(slots: &[NetifTxRequest]) -> Vec<TxVerdict> {
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifTxRequest, NetifTxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = TxRing::new(mem.mem()).unwrap();
        for slot in slots {
            front.put_request(slot).unwrap();
        }
        front.push_requests().unwrap();
        let mut out = Vec::new();
        while let Some(v) = next_packet(&mut back).unwrap() {
            let fatal = matches!(v, TxVerdict::Fatal(_) | TxVerdict::Incomplete(_));
            out.push(v);
            if fatal {
                break;
            }
        }
        out
    }

    const MORE: u16 = 1 << 2;
    const EXTRA: u16 = 1 << 3;

    #[test]
    fn a_multi_slot_packet_with_gso_is_accepted() {
        let gso = NetifExtraGso {
            size: 1448,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };
        let slots = [
            req(1, 100, 5100, MORE | EXTRA | 1, 7),
            extra_slot(NetifExtraInfo::from_gso(gso, NetifExtraFlags::empty())),
            req(2, 0, 4096, MORE, 8),
            req(3, 0, 904, 0, 9),
        ];

        let [TxVerdict::Packet(packet)] = &verdicts(&slots)[..] else {
            panic!("not one packet")
        };

        assert_eq!(
            packet.first.size, 100,
            "5100 - 4096 - 904 is the first fragment's own size"
        );
        assert_eq!(packet.len(), 5100);
        assert_eq!(packet.extra_count, 1);
        assert_eq!(
            packet.offload,
            TxOffload {
                csum_blank: true,
                data_validated: false,
                gso: Some(gso)
            }
        );
        let rsp = packet.responses(|i| {
            if i == 1 {
                NETIF_RSP_ERROR
            } else {
                NETIF_RSP_OKAY
            }
        });
        let ids: Vec<_> = rsp.iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(
            ids,
            [(7, 0), (0, NETIF_RSP_NULL), (8, NETIF_RSP_ERROR), (9, 0)]
        );
    }

    #[test]
    fn recoverable_faults_answer_every_slot_with_an_error() {
        let too_large = [req(1, 0, 100, MORE, 1), req(2, 0, 200, 0, 2)];
        let short = [req(1, 0, 10, 0, 3)];
        let mut many = vec![req(1, 0, 19 * 60, MORE, 10)];
        many.extend((0..19).map(|i| {
            req(
                2,
                0,
                60 - u16::from(i == 18) * 60,
                if i < 18 { MORE } else { 0 },
                11 + i,
            )
        }));

        for (slots, reason) in [
            (
                &too_large[..],
                TxError::SlotTooLarge {
                    slot: 200,
                    remaining: 100,
                },
            ),
            (&short[..], TxError::TooShort(10)),
            (&many[..], TxError::TooManySlots(19)),
        ] {
            let got = verdicts(slots);
            let [TxVerdict::Dropped {
                reason: r,
                responses,
            }] = &got[..]
            else {
                panic!("{got:?}")
            };
            assert_eq!(*r, reason);
            assert!(!r.is_fatal());
            assert_eq!(responses.len(), slots.len());
            assert!(responses
                .iter()
                .zip(slots)
                .all(|(rsp, s)| rsp.id == s.id && rsp.status == NETIF_RSP_ERROR));
        }
    }

    #[test]
    fn malicious_requests_are_fatal() {
        let cross = [req(1, 4000, 200, 0, 1)];
        let frag_cross = [req(1, 0, 300, MORE, 1), req(2, 4000, 200, 0, 2)];
        let bad_extra = [
            req(1, 0, 60, EXTRA, 1),
            extra_slot(NetifExtraInfo {
                type_: 9,
                ..Default::default()
            }),
        ];
        let zero_gso = NetifExtraGso {
            size: 0,
            type_: 1,
            pad: 0,
            features: 0,
        };
        let gso0 = [
            req(1, 0, 60, EXTRA, 1),
            extra_slot(NetifExtraInfo::from_gso(zero_gso, NetifExtraFlags::empty())),
        ];
        let bad_gso = NetifExtraGso {
            size: 1000,
            type_: 7,
            pad: 0,
            features: 0,
        };
        let gso7 = [
            req(1, 0, 60, EXTRA, 1),
            extra_slot(NetifExtraInfo::from_gso(bad_gso, NetifExtraFlags::empty())),
        ];
        let mut endless = vec![req(1, 0, 60000, MORE, 1)];
        endless.extend((0..30).map(|i| req(2, 0, 10, MORE, i)));

        for (slots, error) in [
            (
                &cross[..],
                TxError::CrossesPage {
                    offset: 4000,
                    size: 200,
                },
            ),
            (
                &frag_cross[..],
                TxError::CrossesPage {
                    offset: 4000,
                    size: 200,
                },
            ),
            (&bad_extra[..], TxError::BadExtraType(9)),
            (&gso0[..], TxError::ZeroGsoSize),
            (&gso7[..], TxError::BadGsoType(7)),
            (&endless[..], TxError::Malicious),
        ] {
            assert_eq!(verdicts(slots), [TxVerdict::Fatal(error)], "{slots:?}");
            assert!(error.is_fatal());
        }
    }

    #[test]
    fn a_packet_published_in_part_is_put_back_until_the_rest_comes() {
        let gso = NetifExtraGso {
            size: 1448,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };
        let first = req(1, 0, 3000, MORE | EXTRA, 7);
        let extra = extra_slot(NetifExtraInfo::from_gso(gso, NetifExtraFlags::empty()));
        let frag = req(2, 0, 1000, 0, 8);
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifTxRequest, NetifTxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = TxRing::new(mem.mem()).unwrap();

        // Only the first slot, then the first and its extra: each time the
        // packet comes back whole onto the ring.
        front.put_request(&first).unwrap();
        front.push_requests().unwrap();
        let Some(TxVerdict::Incomplete(got)) = next_packet(&mut back).unwrap() else {
            panic!("a lone first slot announcing more is incomplete")
        };
        assert_eq!(
            (got.start, got.published, &got.slots[..]),
            (0, 1, &[first][..])
        );
        assert_eq!(back.req_cons().0, 0, "nothing stays consumed");
        front.put_request(&extra).unwrap();
        front.push_requests().unwrap();
        let Some(TxVerdict::Incomplete(got)) = next_packet(&mut back).unwrap() else {
            panic!("a first slot and its extra without the fragment is incomplete")
        };
        assert_eq!((got.published, got.slots.len()), (2, 2));
        assert!(got.to_string().contains("id 7 size 3000"), "{got}");
        assert_eq!(back.req_cons().0, 0);

        front.put_request(&frag).unwrap();
        front.push_requests().unwrap();
        let Some(TxVerdict::Packet(packet)) = next_packet(&mut back).unwrap() else {
            panic!("the whole packet is accepted")
        };
        assert_eq!(packet.len(), 3000);
        assert_eq!(
            (packet.first.id, packet.extra_count, packet.frags.len()),
            (7, 1, 1)
        );
        assert_eq!(back.req_cons().0, 3);
        assert_eq!(next_packet(&mut back).unwrap(), None);
    }

    #[test]
    fn multicast_control_is_answered_without_a_packet() {
        let addr = [0x01, 0, 0x5e, 0, 0, 1];
        let slots = [
            req(0, 0, 0, EXTRA, 4),
            extra_slot(NetifExtraInfo::from_mcast(
                true,
                addr,
                NetifExtraFlags::empty(),
            )),
        ];

        let got = verdicts(&slots);

        let [TxVerdict::Control {
            add: true,
            addr: a,
            responses,
        }] = &got[..]
        else {
            panic!("{got:?}")
        };
        assert_eq!(*a, addr);
        assert_eq!(
            responses,
            &[
                NetifTxResponse { id: 4, status: 0 },
                NetifTxResponse {
                    id: 0,
                    status: NETIF_RSP_NULL
                }
            ]
        );
    }

    #[test]
    fn packets_are_copied_out_of_their_grants() {
        let table = MemGrantTable::new(5);
        let (a, b) = (table.grant(false), table.grant(false));
        table.write_page(a, 4000, &[1; 96]);
        table.write_page(b, 0, &[2; 50]);
        let packet = TxPacket {
            first: req(a, 4000, 96, 0, 1),
            extra_count: 0,
            frags: vec![req(b, 0, 50, 0, 2), req(999, 0, 10, 0, 3)],
            offload: TxOffload::default(),
        };
        let mut buf = Vec::new();

        let status = copy_packet(&table, 5, &packet, &mut buf).unwrap();

        assert_eq!(buf.len(), VNET_HDR_LEN + 156);
        assert_eq!(buf[VNET_HDR_LEN..VNET_HDR_LEN + 96], [1; 96]);
        assert_eq!(buf[VNET_HDR_LEN + 96..VNET_HDR_LEN + 146], [2; 50]);
        assert_eq!(status[..2], [Ok(()), Ok(())]);
        assert!(status[2].is_err(), "an ungranted reference fails its slot");
    }

    #[test]
    fn several_packets_are_copied_out_with_one_batch() {
        let table = MemGrantTable::new(5);
        let (a, b, c) = (table.grant(false), table.grant(false), table.grant(false));
        table.write_page(a, 0, &[1; 60]);
        table.write_page(b, 100, &[2; 3000]);
        table.write_page(c, 0, &[3; 40]);
        let one = TxPacket {
            first: req(a, 0, 60, 0, 1),
            extra_count: 0,
            frags: vec![],
            offload: TxOffload::default(),
        };
        let two = TxPacket {
            first: req(b, 100, 3000, 0, 2),
            extra_count: 0,
            frags: vec![req(c, 0, 40, 0, 3), req(999, 0, 10, 0, 4)],
            offload: TxOffload::default(),
        };
        let mut buf = vec![0u8; 8192];

        let status = copy_packets_into(&table, 5, &[(&one, 0), (&two, VNET_HDR_LEN + 60)], &mut buf).unwrap();

        assert_eq!(table.copy_batches(), 1, "one batch for both packets");
        assert_eq!(status, vec![vec![Ok(())], vec![Ok(()), Ok(()), Err(hypercall_abi::xen::grant_table::GNTST_BAD_GNTREF)]]);
        assert_eq!(buf[VNET_HDR_LEN..VNET_HDR_LEN + 60], [1; 60]);
        let two_at = 2 * VNET_HDR_LEN + 60;
        assert_eq!(buf[two_at..two_at + 3000], [2; 3000]);
        assert_eq!(buf[two_at + 3000..two_at + 3040], [3; 40]);
    }
}
