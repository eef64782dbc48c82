//! `rnetfront check`: connect, send a few test frames of one slot and of
//! several, wait until the backend has answered every one, then listen a
//! while and count what arrives.
//!
//! The test frames are broadcast with the local experimental ethertype
//! 0x88b5 (IEEE 802 "local experimental"): a bridge in the backend domain
//! floods them and nothing answers them.

use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, GrantShare, Xenstore};

use crate::{Error, NetFrontend, Offload};

/// The local experimental ethertype.
pub const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5];

/// What to check.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Rounds of test frames sent.
    pub rounds: usize,
    /// How long to listen for frames afterwards.
    pub listen: Duration,
}

/// A passed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    /// Frames sent and accepted by the backend.
    pub sent: u64,
    /// Frames received while listening.
    pub received: u64,
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The interface failed.
    #[error(transparent)]
    Device(#[from] Error),
    /// The backend failed or dropped test frames.
    #[error("the backend accepted {accepted} of {sent} test frames ({errors} failed, {dropped} dropped)")]
    Refused {
        /// Frames sent.
        sent: u64,
        /// Frames answered `NETIF_RSP_OKAY`.
        accepted: u64,
        /// Frames answered `NETIF_RSP_ERROR`.
        errors: u64,
        /// Frames answered `NETIF_RSP_DROPPED`.
        dropped: u64,
    },
}

/// A test frame of `len` bytes from `mac`, numbered `seq`.
pub fn test_frame(mac: [u8; 6], len: usize, seq: u32) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
    if let Some(header) = frame.get_mut(..18) {
        header[..6].copy_from_slice(&[0xff; 6]);
        header[6..12].copy_from_slice(&mac);
        header[12..14].copy_from_slice(&ETHERTYPE_TEST);
        header[14..18].copy_from_slice(&seq.to_be_bytes());
    }
    frame
}

/// Runs the check on a connected interface.
pub fn run<G: GrantShare, E: EventChannels, S: Xenstore>(
    nic: &mut NetFrontend<G, E, S>,
    opts: &CheckOptions,
) -> Result<CheckReport, CheckError> {
    let mac = nic.mac().ok_or(Error::NotConnected)?;
    // One slot, a full Ethernet frame, then frames of several slots if
    // the backend takes them.
    let mut sizes = vec![60, 1514];
    if nic.max_frame() > 4096 {
        sizes.extend([4097, 9014, 65535]);
    }
    let before = nic.stats();
    let mut seq = 0;
    for _ in 0..opts.rounds {
        for &len in &sizes {
            nic.send(&test_frame(mac.0, len, seq), &Offload::default())?;
            seq += 1;
        }
    }
    nic.flush()?;
    let stats = nic.stats();
    let sent = u64::from(seq);
    let accepted = stats.tx_packets - before.tx_packets;
    if accepted != sent {
        return Err(CheckError::Refused {
            sent,
            accepted,
            errors: stats.tx_errors - before.tx_errors,
            dropped: stats.tx_dropped - before.tx_dropped,
        });
    }
    let deadline = Instant::now() + opts.listen;
    let mut received = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(frame) = nic.recv(Some(left))? {
            received += 1;
            log::info!("received {} bytes ({:?})", frame.data.len(), frame.offload);
        }
    }
    Ok(CheckReport { sent, received })
}
