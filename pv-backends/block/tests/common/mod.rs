//! What the test frontends of `loopback.rs` and `restart.rs` share.

use hypercall_abi::platform::{Transaction, Xenstore};
use hypercall_abi::xen::{EvtchnPort, GrantRef};

/// Publishes a frontend's rings as Linux's blkfront does (ring-page-order,
/// multi-queue-num-queues, per queue `ring-ref`/`ring-refN` and
/// `event-channel`, protocol, feature-persistent) and moves it to
/// Initialised (3). `queues` holds each queue's ring grants and port.
pub fn publish_rings(
    xs: &impl Xenstore,
    fe: &str,
    ring_order: u32,
    queues: &[(&[GrantRef], EvtchnPort)],
    persistent: bool,
) {
    let write = |path: String, value: String| xs.write(Transaction::NONE, &path, value.as_bytes()).unwrap();
    if ring_order > 0 {
        write(format!("{fe}/ring-page-order"), ring_order.to_string());
    }
    if queues.len() > 1 {
        write(format!("{fe}/multi-queue-num-queues"), queues.len().to_string());
    }
    for (i, (refs, port)) in queues.iter().enumerate() {
        let dir = if queues.len() == 1 { fe.to_owned() } else { format!("{fe}/queue-{i}") };
        if ring_order == 0 {
            write(format!("{dir}/ring-ref"), refs[0].to_string());
        } else {
            for (j, r) in refs.iter().enumerate() {
                write(format!("{dir}/ring-ref{j}"), r.to_string());
            }
        }
        write(format!("{dir}/event-channel"), port.to_string());
    }
    write(format!("{fe}/protocol"), "x86_64-abi".into());
    write(format!("{fe}/feature-persistent"), u8::from(persistent).to_string());
    write(format!("{fe}/state"), "3".into());
}
