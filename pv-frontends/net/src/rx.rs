//! Received frames put back together from their responses (netfront's
//! `xennet_get_responses`, `xennet_get_extras` and `xennet_fill_frags`),
//! with every response checked.
//!
//! The backend answers receive requests in ring order, one response per
//! request: the response at ring index `i` fills the page posted at `i`,
//! whose request carried id `i % size`. A frame is a first response, the
//! extra-info slots its `NETRXF_extra_info` announces (each chained by
//! `XEN_NETIF_EXTRA_FLAG_MORE`), then further data responses while
//! `NETRXF_more_data` is set. Each data response is checked before its
//! bytes are copied out of its page:
//!
//! - its id must be the one posted in its slot ([`ProtocolError::RxWrongId`]);
//! - its status must be a byte count ([`ProtocolError::RxBadStatus`]);
//! - offset + size must stay within the page ([`ProtocolError::RxBeyondPage`]);
//! - the frame may take at most [`MAX_RX_SLOTS`] data slots and
//!   [`MAX_RX_EXTRAS`] extra-info slots;
//! - an extra-info slot must have a known type, and a GSO one a TCP type
//!   and a non-zero size.
//!
//! Netfront drops a frame for some of these and goes on; here any of them
//! marks the device broken, as netfront does for a grant still mapped.
//! A frame whose responses are not all published yet is kept and
//! completed by later responses: nothing is read from the ring twice.

use hypercall_abi::platform::SharedMemoryError;
use hypercall_abi::xen::netif::{NetRxFlags, NetifExtraInfo, NetifExtraType, NetifRxResponse};
use hypercall_abi::xen::PAGE_SIZE;

use crate::error::{Error, ProtocolError};
use crate::protocol::{Checksum, Gso, GsoKind, Offload, MAX_RX_EXTRAS, MAX_RX_SLOTS};

/// A received frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RxFrame {
    /// The bytes, from the Ethernet header on.
    pub data: Vec<u8>,
    /// Checksum state and segmentation offload.
    pub offload: Offload,
    /// The queue it came on.
    pub queue: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Extra,
    Data,
}

#[derive(Debug)]
struct Partial {
    frame: RxFrame,
    /// Whether the first response had `NETRXF_more_data`.
    more_after_extras: bool,
    slots: usize,
    extras: usize,
    expect: Expect,
}

/// The frame being put together on one receive ring.
#[derive(Debug)]
pub struct RxAssembler {
    queue: u32,
    partial: Option<Partial>,
}

impl RxAssembler {
    /// An assembler for queue `queue`.
    pub fn new(queue: u32) -> Self {
        RxAssembler {
            queue,
            partial: None,
        }
    }

    /// Whether a frame is half received.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }

    /// Forgets a half-received frame (at teardown).
    pub fn reset(&mut self) {
        self.partial = None;
    }

    /// Takes the response consumed at ring index `index`, whose slot's
    /// request carried `posted_id`. `read(offset, len, buf)` appends
    /// `len` bytes at `offset` of the slot's page to `buf`; it is called
    /// only for checked data responses. Returns the frame once its last
    /// response is in.
    pub fn push(
        &mut self,
        index: u32,
        posted_id: u16,
        rsp: NetifRxResponse,
        read: impl FnOnce(usize, usize, &mut Vec<u8>) -> Result<(), SharedMemoryError>,
    ) -> Result<Option<RxFrame>, Error> {
        let queue = self.queue;
        let Some(mut partial) = self.partial.take() else {
            // The first response of a frame.
            let flags = self.check_data(index, posted_id, &rsp)?;
            let mut frame = RxFrame {
                queue,
                ..RxFrame::default()
            };
            frame.offload.checksum = Offload::from_rx_flags(flags);
            read(
                usize::from(rsp.offset),
                rsp.status as usize,
                &mut frame.data,
            )?;
            let more = flags.contains(NetRxFlags::MORE_DATA);
            let expect = if flags.contains(NetRxFlags::EXTRA_INFO) {
                Expect::Extra
            } else if more {
                Expect::Data
            } else {
                return Ok(Some(frame));
            };
            self.partial = Some(Partial {
                frame,
                more_after_extras: more,
                slots: 1,
                extras: 0,
                expect,
            });
            return Ok(None);
        };
        let done = match partial.expect {
            Expect::Extra => {
                // The slot holds a netif_extra_info, not a response.
                let extra: NetifExtraInfo = zerocopy::transmute!(rsp);
                partial.extras += 1;
                if partial.extras > MAX_RX_EXTRAS {
                    return Err(ProtocolError::RxTooManyExtras {
                        queue,
                        max: MAX_RX_EXTRAS,
                    }
                    .into());
                }
                match extra.extra_type() {
                    Err(_) => {
                        return Err(ProtocolError::RxBadExtra {
                            queue,
                            extra_type: extra.type_,
                        }
                        .into())
                    }
                    Ok(NetifExtraType::Gso) => {
                        let gso = extra.gso();
                        match GsoKind::from_raw(gso.type_) {
                            Some(kind) if gso.size != 0 => {
                                partial.frame.offload.gso = Some(Gso {
                                    kind,
                                    size: gso.size,
                                })
                            }
                            _ => {
                                return Err(ProtocolError::RxBadGso {
                                    queue,
                                    gso_type: gso.type_,
                                    size: gso.size,
                                }
                                .into())
                            }
                        }
                    }
                    // Multicast and hash extras carry nothing a frame needs.
                    Ok(_) => {}
                }
                if extra
                    .extra_flags()
                    .contains(hypercall_abi::xen::netif::NetifExtraFlags::MORE)
                {
                    false
                } else if partial.more_after_extras {
                    partial.expect = Expect::Data;
                    false
                } else {
                    true
                }
            }
            Expect::Data => {
                let flags = self.check_data(index, posted_id, &rsp)?;
                partial.slots += 1;
                if partial.slots > MAX_RX_SLOTS {
                    return Err(ProtocolError::RxTooManySlots {
                        queue,
                        max: MAX_RX_SLOTS,
                    }
                    .into());
                }
                read(
                    usize::from(rsp.offset),
                    rsp.status as usize,
                    &mut partial.frame.data,
                )?;
                !flags.contains(NetRxFlags::MORE_DATA)
            }
        };
        if done {
            let mut frame = partial.frame;
            if frame.offload.gso.is_some() && frame.offload.checksum != Checksum::Partial {
                // A GSO frame is always partially checksummed; netfront's
                // `checksum_setup` forces it for backends that forget.
                log::debug!("queue {queue}: a GSO frame without NETRXF_csum_blank");
                frame.offload.checksum = Checksum::Partial;
            }
            return Ok(Some(frame));
        }
        self.partial = Some(partial);
        Ok(None)
    }

    /// Checks a data response; returns its flags.
    fn check_data(
        &self,
        index: u32,
        posted_id: u16,
        rsp: &NetifRxResponse,
    ) -> Result<NetRxFlags, ProtocolError> {
        let queue = self.queue;
        if rsp.id != posted_id {
            return Err(ProtocolError::RxWrongId {
                queue,
                index,
                expected: posted_id,
                got: rsp.id,
            });
        }
        if rsp.status < 0 {
            return Err(ProtocolError::RxBadStatus {
                queue,
                id: rsp.id,
                status: rsp.status,
            });
        }
        if usize::from(rsp.offset) + rsp.status as usize > PAGE_SIZE {
            return Err(ProtocolError::RxBeyondPage {
                queue,
                id: rsp.id,
                offset: rsp.offset,
                size: rsp.status as u16,
            });
        }
        let flags = rsp.rx_flags();
        if flags.contains(NetRxFlags::GSO_PREFIX) {
            return Err(ProtocolError::RxGsoPrefix { queue });
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::netif::{
        NetifExtraFlags, NetifExtraGso, NetifExtraHash, NETRXF_CSUM_BLANK, NETRXF_DATA_VALIDATED,
        NETRXF_EXTRA_INFO, NETRXF_MORE_DATA, XEN_NETIF_GSO_TYPE_TCPV4,
    };

    use super::*;

    /// Pages whose bytes are their slot number.
    fn page(slot: u16) -> impl FnOnce(usize, usize, &mut Vec<u8>) -> Result<(), SharedMemoryError> {
        move |_offset, len, buf| {
            buf.extend(std::iter::repeat(slot as u8).take(len));
            Ok(())
        }
    }

    fn data(id: u16, offset: u16, size: i16, flags: u16) -> NetifRxResponse {
        NetifRxResponse {
            id,
            offset,
            flags,
            status: size,
        }
    }

    fn extra(extra: NetifExtraInfo) -> NetifRxResponse {
        zerocopy::transmute!(extra)
    }

    #[test]
    fn a_one_slot_frame_is_delivered_with_its_checksum_state() {
        let mut asm = RxAssembler::new(0);

        let frame = asm
            .push(7, 7, data(7, 16, 60, NETRXF_DATA_VALIDATED), page(7))
            .unwrap()
            .unwrap();

        assert_eq!(frame.data, vec![7; 60]);
        assert_eq!(
            frame.offload,
            Offload {
                checksum: Checksum::Validated,
                gso: None
            }
        );
        assert!(!asm.in_progress());
    }

    #[test]
    fn a_gso_frame_over_several_slots_and_responses_is_put_together() {
        let mut asm = RxAssembler::new(1);
        let gso = NetifExtraGso {
            size: 1448,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };
        let hash = NetifExtraHash {
            type_: 0,
            algorithm: 1,
            value: [0; 4],
        };

        let first = data(
            0,
            0,
            4096,
            NETRXF_CSUM_BLANK | NETRXF_DATA_VALIDATED | NETRXF_EXTRA_INFO | NETRXF_MORE_DATA,
        );
        assert_eq!(asm.push(0, 0, first, page(0)).unwrap(), None);
        let gso_slot = extra(NetifExtraInfo::from_gso(gso, NetifExtraFlags::MORE));
        assert_eq!(asm.push(1, 1, gso_slot, page(1)).unwrap(), None);
        let hash_slot = extra(NetifExtraInfo::from_hash(hash, NetifExtraFlags::empty()));
        assert_eq!(asm.push(2, 2, hash_slot, page(2)).unwrap(), None);
        assert_eq!(
            asm.push(3, 3, data(3, 0, 4096, NETRXF_MORE_DATA), page(3))
                .unwrap(),
            None
        );
        let frame = asm
            .push(4, 4, data(4, 0, 100, 0), page(4))
            .unwrap()
            .unwrap();

        assert_eq!(frame.data.len(), 4096 * 2 + 100);
        assert_eq!(&frame.data[4096..4098], &[3, 3]);
        assert_eq!(
            frame.offload.gso,
            Some(Gso {
                kind: GsoKind::TcpV4,
                size: 1448
            })
        );
        assert_eq!(frame.offload.checksum, Checksum::Partial);
        assert_eq!(frame.queue, 1);
    }

    fn protocol_error(result: Result<Option<RxFrame>, Error>) -> ProtocolError {
        match result {
            Err(Error::Protocol(e)) => e,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn bad_data_responses_are_rejected() {
        let mut asm = RxAssembler::new(0);

        assert_eq!(
            protocol_error(asm.push(5, 5, data(6, 0, 60, 0), page(5))),
            ProtocolError::RxWrongId {
                queue: 0,
                index: 5,
                expected: 5,
                got: 6
            }
        );
        assert_eq!(
            protocol_error(asm.push(5, 5, data(5, 0, -1, 0), page(5))),
            ProtocolError::RxBadStatus {
                queue: 0,
                id: 5,
                status: -1
            }
        );
        assert_eq!(
            protocol_error(asm.push(5, 5, data(5, 4000, 97, 0), page(5))),
            ProtocolError::RxBeyondPage {
                queue: 0,
                id: 5,
                offset: 4000,
                size: 97
            }
        );
        assert_eq!(
            protocol_error(asm.push(5, 5, data(5, 0, 60, 1 << 4), page(5))),
            ProtocolError::RxGsoPrefix { queue: 0 }
        );
        assert!(asm
            .push(5, 5, data(5, 4000, 96, 0), page(5))
            .unwrap()
            .is_some());
    }

    #[test]
    fn endless_frames_and_bad_extras_are_rejected() {
        let mut asm = RxAssembler::new(0);
        let mut result = Ok(None);
        for i in 0..=MAX_RX_SLOTS as u16 {
            result = asm.push(u32::from(i), i, data(i, 0, 10, NETRXF_MORE_DATA), page(i));
            if result.is_err() {
                break;
            }
        }
        assert_eq!(
            protocol_error(result),
            ProtocolError::RxTooManySlots {
                queue: 0,
                max: MAX_RX_SLOTS
            }
        );

        let mut asm = RxAssembler::new(0);
        asm.push(0, 0, data(0, 0, 60, NETRXF_EXTRA_INFO), page(0))
            .unwrap();
        assert_eq!(
            protocol_error(asm.push(1, 1, extra(NetifExtraInfo::default()), page(1))),
            ProtocolError::RxBadExtra {
                queue: 0,
                extra_type: 0
            }
        );

        let mut asm = RxAssembler::new(0);
        asm.push(0, 0, data(0, 0, 60, NETRXF_EXTRA_INFO), page(0))
            .unwrap();
        let zero = NetifExtraGso {
            size: 0,
            type_: XEN_NETIF_GSO_TYPE_TCPV4,
            pad: 0,
            features: 0,
        };
        assert!(matches!(
            protocol_error(asm.push(
                1,
                1,
                extra(NetifExtraInfo::from_gso(zero, NetifExtraFlags::empty())),
                page(1)
            )),
            ProtocolError::RxBadGso { size: 0, .. }
        ));

        let mut asm = RxAssembler::new(0);
        asm.push(0, 0, data(0, 0, 60, NETRXF_EXTRA_INFO), page(0))
            .unwrap();
        let hash = NetifExtraInfo::from_hash(NetifExtraHash::default(), NetifExtraFlags::MORE);
        let mut result = Ok(None);
        for i in 1..=(MAX_RX_EXTRAS as u32 + 1) {
            result = asm.push(i, i as u16, extra(hash), page(0));
        }
        assert_eq!(
            protocol_error(result),
            ProtocolError::RxTooManyExtras {
                queue: 0,
                max: MAX_RX_EXTRAS
            }
        );
    }
}
