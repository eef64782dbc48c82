//! `rnetfront tap`: the interface as a TAP device of the guest, the way
//! netfront makes it a net device: named for the vif, with the vif's
//! MAC, up, and frames moved both ways between the TAP and the rings.
//!
//! The TAP is opened with `IFF_VNET_HDR` ([`rxen_tap`]), so that offloads
//! cross it as metadata ([`crate::offload`]): the kernel may hand over
//! partially checksummed frames (`TUN_F_CSUM`, always: a blank IPv6
//! checksum is completed here if the backend lacks
//! `feature-ipv6-csum-offload`) and unsegmented TCP frames (`TUN_F_TSO4`,
//! `TUN_F_TSO6`, as the backend offers `feature-gso-tcpv4`/`-tcpv6` with
//! `feature-sg`), exactly as netfront's `xennet_fix_features` advertises.
//!
//! Back-pressure: while the transmit ring is full, the TAP is not read,
//! so frames wait in the kernel's queue (and are dropped there, not
//! here, if it overflows).

use std::io;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{EventChannels, GrantShare, Xenstore};
use rxen_tap::{Tap, TapError};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::{from_vnet, to_vnet, VirtioNetHdr, VNET_HDR_LEN};
use crate::protocol::Offload;
use crate::{sys, Error, NetFrontend, RxFrame, TxFrame};

/// Frames taken from either side per turn of the loop.
const BATCH: usize = 64;
/// Longest frame a TAP hands over: a 64 KiB GSO frame, its headers and a
/// VLAN tag, after the `virtio_net_hdr`.
const TAP_FRAME_MAX: usize = VNET_HDR_LEN + 65536 + 256;
/// How long the loop sleeps without events before it looks at the
/// backend's state.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The interface failed.
    #[error(transparent)]
    Device(#[from] Error),
    /// Setting up the TAP failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Reading, writing or polling the TAP failed.
    #[error("TAP {name}: {op} failed: {source}")]
    Io {
        /// The interface.
        name: String,
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the bridge moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Frames read from the TAP and sent on the rings.
    pub to_backend: u64,
    /// Frames received on the rings and written to the TAP.
    pub to_tap: u64,
    /// Frames read from the TAP that the backend cannot take (too large,
    /// an offload it lacks, bad metadata): dropped, as netfront drops them.
    pub dropped_to_backend: u64,
    /// Received frames whose partial checksum could not be located, or
    /// that the TAP refused: dropped.
    pub dropped_to_tap: u64,
}

/// The TAP offloads that match what the backend takes.
pub fn tap_offload(features: &crate::BackendFeatures) -> rxen_tap::Offload {
    let mut offload = rxen_tap::Offload::CSUM;
    if features.sg && features.gso_tcpv4 {
        offload |= rxen_tap::Offload::TSO4;
    }
    if features.sg && features.gso_tcpv6 {
        offload |= rxen_tap::Offload::TSO6;
    }
    offload
}

/// Creates TAP `name` for the connected interface `nic`: its MAC, the
/// offloads the backend takes, link up.
pub fn open_tap<G: GrantShare, E: EventChannels, S: Xenstore>(
    nic: &NetFrontend<G, E, S>,
    name: &str,
) -> Result<Tap, BridgeError> {
    let (Some(mac), Some(features)) = (nic.mac(), nic.features()) else {
        return Err(Error::NotConnected.into());
    };
    let tap = Tap::create(name, false)?;
    tap.set_offload(tap_offload(&features))?;
    tap.set_mac(mac.0)?;
    tap.set_up(true)?;
    log::info!(
        "{}: TAP up with mac {mac}, offloads {:?}",
        tap.name(),
        tap_offload(&features)
    );
    Ok(tap)
}

/// Moves frames between `tap` and `nic` until a stop signal
/// ([`sys::install_stop_handler`]), or the interface fails or closes.
pub fn run<G: GrantShare, E: EventChannels, S: Xenstore>(
    nic: &mut NetFrontend<G, E, S>,
    tap: &Tap,
) -> Result<BridgeStats, BridgeError> {
    let features = nic.features().ok_or(Error::NotConnected)?;
    let io_error = |op| {
        move |source| BridgeError::Io {
            name: tap.name().to_owned(),
            op,
            source,
        }
    };
    let mut stats = BridgeStats::default();
    let mut buf = vec![0u8; TAP_FRAME_MAX];
    // Frames read from the TAP and not yet on the rings (ring full).
    let mut pending: Vec<(Vec<u8>, Offload)> = Vec::new();
    let mut received: Vec<RxFrame> = Vec::with_capacity(BATCH);
    let mut out = Vec::with_capacity(TAP_FRAME_MAX);
    let mut last_backend_check = Instant::now();
    while !sys::stop_requested() {
        let mut busy = false;
        // TAP -> backend.
        while pending.len() < BATCH {
            let n = match tap.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("read")(e)),
            };
            busy = true;
            let Some((hdr, frame)) = buf
                .get_mut(..n)
                .and_then(|b| b.split_at_mut_checked(VNET_HDR_LEN))
            else {
                stats.dropped_to_backend += 1;
                continue;
            };
            let Ok(hdr) = VirtioNetHdr::read_from_bytes(hdr) else {
                stats.dropped_to_backend += 1;
                continue;
            };
            let checked = from_vnet(&hdr, frame, features.ipv6_csum_offload)
                .map_err(|e| e.to_string())
                .and_then(|offload| {
                    match nic.check_frame(&TxFrame {
                        data: frame,
                        offload,
                    }) {
                        Ok(()) => Ok(offload),
                        Err(e) => Err(e.to_string()),
                    }
                });
            match checked {
                Ok(offload) => pending.push((frame.to_vec(), offload)),
                Err(why) => {
                    log::debug!("{}: dropping a frame: {why}", tap.name());
                    stats.dropped_to_backend += 1;
                }
            }
        }
        if !pending.is_empty() {
            let batch: Vec<TxFrame<'_>> = pending
                .iter()
                .map(|(data, offload)| TxFrame {
                    data,
                    offload: *offload,
                })
                .collect();
            let sent = nic.send_batch(&batch)?;
            drop(batch);
            stats.to_backend += sent as u64;
            pending.drain(..sent);
            busy |= sent > 0;
        }
        // Backend -> TAP.
        received.clear();
        nic.recv_batch(&mut received, BATCH)?;
        for mut frame in received.drain(..) {
            busy = true;
            let Some(hdr) = to_vnet(&frame.offload, &mut frame.data) else {
                stats.dropped_to_tap += 1;
                continue;
            };
            out.clear();
            out.extend_from_slice(hdr.as_bytes());
            out.extend_from_slice(&frame.data);
            match tap.send(&out) {
                Ok(_) => stats.to_tap += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::InvalidInput
                    ) =>
                {
                    stats.dropped_to_tap += 1;
                }
                Err(e) => return Err(io_error("write")(e)),
            }
        }
        if last_backend_check.elapsed() >= IDLE_POLL {
            last_backend_check = Instant::now();
            nic.poll_backend()?;
        }
        if busy || nic.prepare_wait()? {
            continue;
        }
        // Sleep on the TAP only while its frames can go out.
        let tap_fd = tap.fd();
        let evtchn_fd = nic.event_fd();
        if pending.is_empty() {
            sys::poll_readable([tap_fd, evtchn_fd], IDLE_POLL).map_err(io_error("poll"))?;
        } else {
            sys::poll_readable([evtchn_fd], IDLE_POLL).map_err(io_error("poll"))?;
        }
        nic.process_events()?;
    }
    log::info!("{}: stopping: {stats:?}", tap.name());
    Ok(stats)
}
