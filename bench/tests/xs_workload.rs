//! The xenstore workload of `rxen-xs-bench` against rxenstored's daemon
//! loop (without Xen): every figure is produced and the store is left
//! clean.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rxen_bench::xs::{run_workload, Measure, Workload};
use rxenstored::{Daemon, NoXen};
use xenstore_engine::Quotas;

#[test]
fn workload_measures_every_operation_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("rxen-xs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("socket");
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let daemon = {
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut d = Daemon::new(&socket, Quotas::default(), NoXen).unwrap();
            ready_tx.send(()).unwrap();
            d.run(&stop, 20).unwrap();
        })
    };
    ready_rx.recv().unwrap();
    let w = Workload {
        socket: socket.clone(),
        per_op: Duration::from_millis(150),
        background: 200,
        children: 16,
    };
    let results = run_workload(&w).unwrap();
    let ops: Vec<&str> = results
        .iter()
        .map(|m| match m {
            Measure::Rate { op, per_sec } => {
                assert!(*per_sec > 10.0, "{op}: {per_sec}");
                *op
            }
            Measure::WatchLatency {
                p50_us,
                p99_us,
                samples,
            } => {
                assert!(*samples > 10 && *p50_us > 0.0 && p99_us >= p50_us, "{m:?}");
                "watch-latency"
            }
        })
        .collect();
    assert_eq!(ops, ["read", "write", "directory", "transaction", "watch-latency"]);

    // The workload removed its subtree.
    let client = hypercall_abi::xenstore::XsClient::open_path(&socket).unwrap();
    use hypercall_abi::platform::{Transaction, Xenstore};
    assert!(client.read(Transaction::NONE, "/rxen-bench").is_err());
    drop(client);
    stop.store(true, Ordering::Relaxed);
    daemon.join().unwrap();
}
