//! What the rogue answers to each request, mode by mode, as plain values:
//! which responses go on the ring, and how far beyond them `rsp_prod` is
//! published. No ring and no Xen here, so the tests check it directly.

use std::fmt;

use hypercall_abi::xen::blkif::{BlkifRequest, BlkifResponse, BLKIF_OP_INDIRECT, BLKIF_RSP_OKAY};

/// XORed into a request's `id` to make an id the frontend never used:
/// Linux's blkfront uses slot numbers below the ring size, rblkfront
/// small counters; neither reaches bit 32.
pub const BOGUS_ID_XOR: u64 = 0xdead_0000_0000;

/// A `status` that is no `BLKIF_RSP_*` value (those are 0, -1 and -2).
pub const BOGUS_STATUS: i16 = 7;

/// How many entries beyond the responses written [`Mode::Overrun`]
/// publishes `rsp_prod`: more than the 32 slots of a one-page blkif ring,
/// so that even a frontend that only checks `rsp_prod - rsp_cons <=
/// RING_SIZE` (Linux's `RING_RESPONSE_PROD_OVERFLOW`) sees it, not only
/// one that checks `rsp_prod` against the requests it pushed.
pub const OVERRUN_BY: u32 = 64;

/// How the rogue misbehaves (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// For every request, a response with an id the frontend never used
    /// (the request's id XOR 0xdead_0000_0000), then one with the
    /// request's id and operation but status 7, published and notified.
    /// Two responses to one request also put `rsp_prod` beyond the
    /// requests pushed.
    BadIdAndStatus,
    /// The first request answered with its id, operation and status 0, but
    /// `rsp_prod` published 64 entries beyond that response; later
    /// requests get no answer.
    Overrun,
    /// For every request one response, status 0, with an id the frontend
    /// never used: the unknown id alone, `rsp_prod` in step.
    BadId,
    /// For every request one response with its id and operation but
    /// status 7: the bad status alone, `rsp_prod` in step.
    BadStatus,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::BadIdAndStatus => "bad-id-and-status",
            Mode::Overrun => "overrun",
            Mode::BadId => "bad-id",
            Mode::BadStatus => "bad-status",
        })
    }
}

/// What to put on the ring for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The responses, in ring order.
    pub responses: Vec<BlkifResponse>,
    /// How many entries beyond the responses written `rsp_prod` is then
    /// published (0: exactly at them, as ring.h's push does).
    pub overrun: u32,
}

impl Answer {
    /// Whether nothing is to be put on the ring or published.
    pub fn is_empty(&self) -> bool {
        self.responses.is_empty() && self.overrun == 0
    }
}

impl Mode {
    /// The answer to `request`, the `nth` request taken off the ring
    /// (from 0).
    pub fn answer(self, request: &BlkifRequest, nth: u64) -> Answer {
        let op = operation(request);
        let bad_id = response(request.id ^ BOGUS_ID_XOR, op, BLKIF_RSP_OKAY);
        let bad_status = response(request.id, op, BOGUS_STATUS);
        match self {
            Mode::BadIdAndStatus => Answer { responses: vec![bad_id, bad_status], overrun: 0 },
            Mode::Overrun if nth == 0 => {
                Answer { responses: vec![response(request.id, op, BLKIF_RSP_OKAY)], overrun: OVERRUN_BY }
            }
            Mode::Overrun => Answer::default(),
            Mode::BadId => Answer { responses: vec![bad_id], overrun: 0 },
            Mode::BadStatus => Answer { responses: vec![bad_status], overrun: 0 },
        }
    }
}

/// The operation a response to `request` carries, as Linux's blkback
/// echoes it: the request's `operation`, or for an indirect request the
/// read or write it wraps (`indirect_op`), which is what blkfront checks.
pub fn operation(request: &BlkifRequest) -> u8 {
    if request.operation == BLKIF_OP_INDIRECT {
        request.as_indirect().indirect_op
    } else {
        request.operation
    }
}

/// A response with any `status`, valid or not.
fn response(id: u64, operation: u8, status: i16) -> BlkifResponse {
    BlkifResponse { id, operation, status, ..BlkifResponse::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::xen::blkif::{BlkifRequestIndirect, BLKIF_OP_READ, BLKIF_OP_WRITE};

    fn read(id: u64) -> BlkifRequest {
        BlkifRequest { operation: BLKIF_OP_READ, nr_segments: 1, id, ..BlkifRequest::default() }
    }

    #[test]
    fn bad_id_and_status_answers_an_unknown_id_then_status_7() {
        // Arrange
        let request = read(3);

        // Act
        let answer = Mode::BadIdAndStatus.answer(&request, 0);

        // Assert
        assert_eq!(answer.overrun, 0);
        let [first, second] = answer.responses[..] else { panic!("two responses expected: {answer:?}") };
        assert_eq!(first.id, 0xdead_0000_0003);
        assert_eq!((first.operation, first.status), (BLKIF_OP_READ, BLKIF_RSP_OKAY));
        assert_eq!((second.id, second.operation, second.status), (3, BLKIF_OP_READ, 7));
    }

    #[test]
    fn every_request_gets_the_bad_answers_not_only_the_first() {
        let answer = Mode::BadIdAndStatus.answer(&read(9), 41);

        assert_eq!(answer.responses.len(), 2);
        assert_eq!(answer.responses[0].id, 9 ^ BOGUS_ID_XOR);
    }

    #[test]
    fn overrun_answers_the_first_request_well_and_publishes_64_more() {
        // Act
        let first = Mode::Overrun.answer(&read(5), 0);
        let later = Mode::Overrun.answer(&read(6), 1);

        // Assert
        assert_eq!(
            first.responses,
            [BlkifResponse::new(5, BLKIF_OP_READ, hypercall_abi::xen::blkif::BlkifStatus::Okay)]
        );
        assert_eq!(first.overrun, 64);
        assert!(later.is_empty(), "later requests are left unanswered: {later:?}");
    }

    #[test]
    fn single_misbehaviours_answer_once() {
        let bad_id = Mode::BadId.answer(&read(1), 0);
        let bad_status = Mode::BadStatus.answer(&read(1), 0);

        assert_eq!(bad_id.responses.len(), 1);
        assert_eq!((bad_id.responses[0].id, bad_id.responses[0].status), (1 ^ BOGUS_ID_XOR, 0));
        assert_eq!(bad_status.responses.len(), 1);
        assert_eq!((bad_status.responses[0].id, bad_status.responses[0].status), (1, BOGUS_STATUS));
    }

    #[test]
    fn an_indirect_request_is_answered_with_its_inner_operation() {
        // Arrange
        let indirect = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_WRITE,
            nr_segments: 20,
            id: 2,
            ..BlkifRequestIndirect::default()
        };
        let request = BlkifRequest::from_indirect(indirect);

        // Act
        let answer = Mode::BadStatus.answer(&request, 0);

        // Assert
        assert_eq!(answer.responses[0].operation, BLKIF_OP_WRITE);
    }

    #[test]
    fn modes_print_as_their_flag_values() {
        use clap::ValueEnum;
        for mode in Mode::value_variants() {
            let flag = mode.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(flag.as_deref(), Some(mode.to_string().as_str()));
        }
    }
}
