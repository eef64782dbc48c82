//! The receive ring: frames from the TAP, copied into the pages the
//! frontend posted, as Linux's netback does (`xenvif_rx_skb`).
//!
//! A frame takes one posted request per 4 KiB of data (data starts at
//! offset 0 of each page), plus one more for the GSO extra info when it is
//! a GSO frame; the extra info goes in the response slot right after the
//! first one, as netfront reads it. The first response carries the
//! checksum flags (`NETRXF_csum_blank`, `NETRXF_data_validated`) and
//! `NETRXF_extra_info`; every response but the last `NETRXF_more_data`.
//! Responses hold the bytes copied (`status`), or `NETIF_RSP_ERROR` for a
//! page whose grant could not be copied into (netfront then drops the
//! frame). A frame is delivered only once enough requests are posted; the
//! queue holds it meanwhile ([`crate::queue`]).
//!
//! A frontend without `feature-sg` takes frames of one page only; larger
//! ones are dropped (the TAP's MTU keeps them from occurring).

use std::ops::Range;

use hypercall_abi::platform::{CopyMemory, GrantError, GrantMap};
use hypercall_abi::ring::{BackRing, RingError};
use hypercall_abi::xen::netif::{
    NetifExtraFlags, NetifExtraGso, NetifExtraInfo, NetifRxRequest, NetifRxResponse,
    NETIF_RSP_ERROR, NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, XEN_NETIF_NR_SLOTS_MIN,
};
use hypercall_abi::xen::{DomId, PAGE_SIZE};
use rxen_tap::VirtioNetHdr;

use crate::copy::{copy_spans, Direction, Span};
use crate::offload::{rx_offload, OffloadError, RxFeatures, ETH_HLEN};

/// The receive ring.
pub type RxRing<'a> = BackRing<'a, NetifRxRequest, NetifRxResponse>;

/// Why a frame from the TAP is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxDrop {
    /// Shorter than an Ethernet header.
    #[error("a {0}-byte frame is shorter than an Ethernet header")]
    Runt(usize),
    /// More pages than the frontend takes for one frame.
    #[error("a {len}-byte frame needs {slots} slots, more than the {max} the frontend takes")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// Slots it needs.
        slots: usize,
        /// Slots allowed.
        max: usize,
    },
    /// Its offload metadata cannot be expressed to the frontend.
    #[error(transparent)]
    Offload(#[from] OffloadError),
}

/// Why the receive path failed.
#[derive(Debug, thiserror::Error)]
pub enum RxError {
    /// The frontend broke the ring.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The batch of grant copies could not be submitted.
    #[error("grant copy to the frontend failed: {0}")]
    Copy(#[from] GrantError),
}

/// How a checked frame goes onto the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxPlan {
    /// Data slots (pages).
    pub data_slots: usize,
    /// `NETRXF_*` checksum flags of the first response.
    pub flags: u16,
    /// GSO extra info, after the first response.
    pub gso: Option<NetifExtraGso>,
}

impl RxPlan {
    /// Requests the frame consumes.
    pub fn slots(&self) -> usize {
        self.data_slots + usize::from(self.gso.is_some())
    }
}

/// Checks a frame the TAP handed out with `hdr` (completing partial
/// checksums the frontend cannot) and plans its slots.
pub fn plan(hdr: &VirtioNetHdr, frame: &mut [u8], features: &RxFeatures) -> Result<RxPlan, RxDrop> {
    if frame.len() < ETH_HLEN {
        return Err(RxDrop::Runt(frame.len()));
    }
    let offload = rx_offload(hdr, frame, features)?;
    let data_slots = frame.len().div_ceil(PAGE_SIZE);
    let max = if features.sg {
        XEN_NETIF_NR_SLOTS_MIN
    } else {
        1
    };
    if data_slots > max {
        return Err(RxDrop::TooLarge {
            len: frame.len(),
            slots: data_slots,
            max,
        });
    }
    Ok(RxPlan {
        data_slots,
        flags: offload.flags,
        gso: offload.gso,
    })
}

/// Puts `frame`, planned as `plan`, into the pages of the next posted
/// requests of domain `domid`, with one batch of grant copies, and writes
/// the responses (not yet pushed). Returns `Ok(None)`, consuming nothing,
/// if fewer than `plan.slots()` requests are posted; else whether every
/// page was copied.
pub fn deliver<G: GrantMap>(
    ring: &mut RxRing<'_>,
    grants: &G,
    domid: DomId,
    frame: &[u8],
    plan: &RxPlan,
) -> Result<Option<bool>, RxError> {
    let Some(staged) = stage(ring, plan, 0..frame.len())? else {
        return Ok(None);
    };
    let mut frame = frame.to_vec();
    let copied = deliver_staged(ring, grants, domid, &mut frame, &[staged])?;
    Ok(Some(copied.first().copied().unwrap_or(false)))
}

/// A frame whose requests are taken off the ring, waiting to be copied
/// and answered by [`deliver_staged`] (every request taken gets its
/// response there).
#[derive(Debug)]
pub struct Staged {
    /// The requests it took, in ring order.
    requests: Vec<NetifRxRequest>,
    plan: RxPlan,
    /// Where its bytes are in the buffer given to [`deliver_staged`].
    frame: Range<usize>,
}

impl Staged {
    /// The data requests: the first, then (after the extra info's) the
    /// rest.
    fn data_requests(&self) -> impl Iterator<Item = &NetifRxRequest> {
        let extra = usize::from(self.plan.gso.is_some());
        self.requests
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i == 0 || *i > extra)
            .map(|(_, r)| r)
    }

    /// Where its bytes are in the batch's buffer.
    pub fn frame(&self) -> Range<usize> {
        self.frame.clone()
    }
}

/// Takes the `plan.slots()` requests a frame needs off the ring, or
/// returns `Ok(None)`, taking nothing, if fewer are posted. `frame` is
/// where the frame will be in the buffer given to [`deliver_staged`].
pub fn stage(
    ring: &mut RxRing<'_>,
    plan: &RxPlan,
    frame: Range<usize>,
) -> Result<Option<Staged>, RxError> {
    if (ring.unconsumed_requests()? as usize) < plan.slots() {
        return Ok(None);
    }
    let mut requests = Vec::with_capacity(plan.slots());
    for _ in 0..plan.slots() {
        match ring.consume_request()? {
            Some(request) => requests.push(request),
            // Counted above; a ring that shrank is broken.
            None => return Err(RxError::Ring(RingError::Broken)),
        }
    }
    Ok(Some(Staged {
        requests,
        plan: *plan,
        frame,
    }))
}

/// Copies the staged frames, whose bytes are in `buf`, into the pages of
/// their requests with one batch of grant copies for all of them, and
/// writes every response (not yet pushed). Returns, per frame, whether
/// every page was copied. A frame whose range is not in `buf` (a bug of
/// the caller's) is answered with errors, so that no request goes
/// unanswered.
pub fn deliver_staged<G: GrantMap>(
    ring: &mut RxRing<'_>,
    grants: &G,
    domid: DomId,
    buf: &mut dyn CopyMemory,
    staged: &[Staged],
) -> Result<Vec<bool>, RxError> {
    let mut spans = Vec::new();
    // Where each frame's spans are in `spans`.
    let mut frame_spans = Vec::with_capacity(staged.len());
    for s in staged {
        let first = spans.len();
        let frame = s.frame.clone();
        let chunks = frame.clone().step_by(PAGE_SIZE).map(|at| at..(at + PAGE_SIZE).min(frame.end));
        spans.extend(chunks.zip(s.data_requests()).map(|(local, request)| Span {
            gref: request.gref,
            offset: 0,
            local,
        }));
        frame_spans.push(first..spans.len());
    }
    let status = copy_spans(grants, domid, buf, Direction::ToFrontend, &spans)?;

    let mut copied = Vec::with_capacity(staged.len());
    for (s, range) in staged.iter().zip(frame_spans) {
        let frame_spans = &spans[range.clone()];
        let frame_status = &status[range];
        let last = s.plan.data_slots.saturating_sub(1);
        let mut all_copied = true;
        let mut responses = Vec::with_capacity(s.requests.len());
        for (i, request) in s.data_requests().enumerate() {
            let mut flags = if i == 0 { s.plan.flags } else { 0 };
            if i == 0 && s.plan.gso.is_some() {
                flags |= NETRXF_EXTRA_INFO;
            }
            if i < last {
                flags |= NETRXF_MORE_DATA;
            }
            let status = match (frame_spans.get(i), frame_status.get(i)) {
                (Some(span), Some(Ok(()))) => span.local.len() as i16,
                _ => {
                    all_copied = false;
                    NETIF_RSP_ERROR
                }
            };
            responses.push(NetifRxResponse {
                id: request.id,
                offset: 0,
                flags,
                status,
            });
            if i == 0 {
                if let Some(gso) = s.plan.gso {
                    // The extra info takes the response slot of the
                    // request after the first.
                    let info = NetifExtraInfo::from_gso(gso, NetifExtraFlags::empty());
                    responses.push(zerocopy::transmute!(info));
                }
            }
        }
        for rsp in &responses {
            ring.put_response(rsp)?;
        }
        copied.push(all_copied);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use hypercall_abi::ring::{FrontRing, OwnedRingMem};
    use hypercall_abi::xen::netif::{
        NetifExtraType, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED, XEN_NETIF_GSO_TYPE_TCPV4,
    };
    use rxen_tap::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};
    use zerocopy::IntoBytes;

    use super::*;
    use crate::memgrant::MemGrantTable;
    use crate::offload::tests::tcp4_frame;

    const ALL: RxFeatures = RxFeatures {
        sg: true,
        gso_tcpv4: true,
        gso_tcpv6: true,
        ip_csum: true,
        ipv6_csum: true,
    };

    /// Grants `n` zeroed pages (writable by the backend or not) and posts
    /// them as requests `first_id`, `first_id + 1`, ...
    fn post(
        front: &mut FrontRing<'_, NetifRxRequest, NetifRxResponse>,
        table: &MemGrantTable,
        first_id: u16,
        n: u16,
        writable: bool,
    ) -> Vec<hypercall_abi::xen::GrantRef> {
        let grefs: Vec<_> = (0..n).map(|_| table.grant(writable)).collect();
        for (id, gref) in (first_id..).zip(&grefs) {
            let request = NetifRxRequest { id, pad: 0, gref: *gref };
            front.put_request(&request).unwrap();
        }
        front.push_requests().unwrap();
        grefs
    }

    #[test]
    fn a_gso_frame_spans_pages_with_its_extra_info_second() {
        let table = MemGrantTable::new(2);
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = RxRing::new(mem.mem()).unwrap();
        let grefs = post(&mut front, &table, 0, 4, true);
        let mut frame = tcp4_frame(5000);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };

        let plan = plan(&hdr, &mut frame, &ALL).unwrap();
        let done = deliver(&mut back, &table, 2, &frame, &plan).unwrap();
        back.push_responses().unwrap();

        assert_eq!((plan.data_slots, plan.slots()), (2, 3));
        assert_eq!(done, Some(true));
        let r0 = front.consume_response().unwrap().unwrap();
        let extra: NetifExtraInfo =
            zerocopy::transmute!(front.consume_response().unwrap().unwrap());
        let r2 = front.consume_response().unwrap().unwrap();
        assert_eq!((r0.id, r0.status, r0.offset), (0, 4096, 0));
        assert_eq!(
            r0.flags,
            NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO | NETRXF_MORE_DATA
        );
        assert_eq!(extra.extra_type(), Ok(NetifExtraType::Gso));
        assert_eq!(
            (extra.gso().size, extra.gso().type_),
            (1448, XEN_NETIF_GSO_TYPE_TCPV4)
        );
        assert_eq!(
            (r2.id, r2.status as usize, r2.flags),
            (2, frame.len() - 4096, 0)
        );
        let mut page = vec![0u8; 4096];
        table.read_page(grefs[0], 0, &mut page);
        assert_eq!(page, frame[..4096]);
        table.read_page(grefs[2], 0, &mut page[..frame.len() - 4096]);
        assert_eq!(page[..frame.len() - 4096], frame[4096..]);
        assert!(
            front.consume_response().unwrap().is_none(),
            "request 3 stays posted"
        );
    }

    #[test]
    fn staged_frames_are_copied_with_one_batch_and_answered_in_order() {
        let table = MemGrantTable::new(2);
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = RxRing::new(mem.mem()).unwrap();
        let grefs = post(&mut front, &table, 10, 4, true);
        let hdr = VirtioNetHdr::default();
        let mut small = tcp4_frame(100);
        let mut big = tcp4_frame(5000);
        let (small_plan, big_plan) = (
            plan(&hdr, &mut small, &ALL).unwrap(),
            plan(&hdr, &mut big, &ALL).unwrap(),
        );
        // Both frames in one buffer, the second after the first.
        let mut buf = small.clone();
        buf.extend_from_slice(&big);

        let a = stage(&mut back, &small_plan, 0..small.len()).unwrap().unwrap();
        let b = stage(&mut back, &big_plan, small.len()..buf.len()).unwrap().unwrap();
        let none = stage(&mut back, &big_plan, 0..big.len()).unwrap();
        let copied = deliver_staged(&mut back, &table, 2, &mut buf, &[a, b]).unwrap();
        back.push_responses().unwrap();

        assert!(none.is_none(), "one request left, two needed");
        assert_eq!(copied, vec![true, true]);
        assert_eq!(table.copy_batches(), 1, "one batch for both frames");
        let responses: Vec<_> = (0..3).map(|_| front.consume_response().unwrap().unwrap()).collect();
        let seen: Vec<_> = responses.iter().map(|r| (r.id, r.status as usize, r.flags & NETRXF_MORE_DATA)).collect();
        assert_eq!(
            seen,
            vec![(10, small.len(), 0), (11, 4096, NETRXF_MORE_DATA), (12, big.len() - 4096, 0)]
        );
        let mut page = vec![0u8; 4096];
        table.read_page(grefs[0], 0, &mut page[..small.len()]);
        assert_eq!(page[..small.len()], small[..]);
        table.read_page(grefs[1], 0, &mut page);
        assert_eq!(page, big[..4096]);
        table.read_page(grefs[2], 0, &mut page[..big.len() - 4096]);
        assert_eq!(page[..big.len() - 4096], big[4096..]);
        assert!(front.consume_response().unwrap().is_none(), "request 13 stays posted");
    }

    #[test]
    fn a_staged_frame_outside_the_buffer_is_answered_with_errors() {
        let table = MemGrantTable::new(2);
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = RxRing::new(mem.mem()).unwrap();
        post(&mut front, &table, 4, 1, true);
        let mut frame = tcp4_frame(100);
        let frame_plan = plan(&VirtioNetHdr::default(), &mut frame, &ALL).unwrap();

        let staged = stage(&mut back, &frame_plan, 1000..1000 + frame.len()).unwrap().unwrap();
        let copied = deliver_staged(&mut back, &table, 2, &mut frame, &[staged]).unwrap();
        back.push_responses().unwrap();

        assert_eq!(copied, vec![false]);
        let rsp = front.consume_response().unwrap().unwrap();
        assert_eq!((rsp.id, rsp.status), (4, NETIF_RSP_ERROR));
    }

    #[test]
    fn frames_wait_for_enough_requests_and_respect_sg() {
        let table = MemGrantTable::new(2);
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = RxRing::new(mem.mem()).unwrap();
        post(&mut front, &table, 9, 1, true);
        let mut big = tcp4_frame(6000);
        let hdr = VirtioNetHdr::default();

        let plan_sg = plan(&hdr, &mut big, &ALL).unwrap();
        let waiting = deliver(&mut back, &table, 2, &big, &plan_sg).unwrap();
        let no_sg = plan(&hdr, &mut big, &RxFeatures { sg: false, ..ALL });
        let runt = plan(&hdr, &mut [0u8; 10], &ALL);

        assert_eq!(
            waiting, None,
            "two pages needed, one posted: nothing consumed"
        );
        assert_eq!(back.req_cons().0, 0);
        assert!(matches!(
            no_sg,
            Err(RxDrop::TooLarge {
                slots: 2,
                max: 1,
                ..
            })
        ));
        assert_eq!(runt, Err(RxDrop::Runt(10)));
        let _ = hdr.as_bytes();
    }

    #[test]
    fn an_unwritable_page_answers_an_error() {
        let table = MemGrantTable::new(2);
        let mem = OwnedRingMem::with_order(0).unwrap();
        let mut front =
            FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(mem.mem()).unwrap();
        let mut back = RxRing::new(mem.mem()).unwrap();
        post(&mut front, &table, 1, 1, false);
        let mut frame = tcp4_frame(10);
        let plan = plan(&VirtioNetHdr::default(), &mut frame, &ALL).unwrap();

        assert_eq!(
            deliver(&mut back, &table, 2, &frame, &plan).unwrap(),
            Some(false)
        );
        back.push_responses().unwrap();
        let rsp = front.consume_response().unwrap().unwrap();
        assert_eq!((rsp.id, rsp.status), (1, NETIF_RSP_ERROR));
    }
}
