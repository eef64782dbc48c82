//! `make bench` on the Xen test host: the same xenstore client workload
//! (`rxen-xs-bench`: reads, writes, directory listings, transactions per
//! second from dom0, and watch-event latency) against Xen's C `xenstored`,
//! `oxenstored` and rxenstored, in one host boot. Each daemon is started
//! as dom0's init starts Xen's (pid file, forks), dom0 is re-initialised
//! with `xen-init-dom0`, and the rounds alternate so that drift in the
//! emulated machine falls on every daemon alike. Prints rates and the
//! ratios rxenstored / C xenstored and rxenstored / oxenstored (goal:
//! at least 2x oxenstored on every operation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use xen_harness::HostConfig;
use xen_scenarios::{boot, init_logging, Figures};

/// Daemons, with the command that starts each one as a daemon writing
/// `/var/run/xenstored.pid`.
const DAEMONS: [(&str, &str); 3] = [
    ("xenstored", "/usr/lib/xen-4.17/bin/xenstored --pid-file /var/run/xenstored.pid"),
    ("oxenstored", "/usr/lib/xen-4.17/bin/oxenstored --pid-file /var/run/xenstored.pid"),
    (
        "rxenstored",
        "/usr/local/bin/rxenstored --pid-file /var/run/xenstored.pid",
    ),
];
const OPS: [&str; 4] = ["read", "write", "directory", "transaction"];
/// Rounds; each figure is the median of its rounds, so that one round
/// disturbed by the emulating machine does not decide it.
const ROUNDS: usize = 3;

fn main() {
    init_logging();
    let seconds: f64 = std::env::var("RXEN_XS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let mut figures = Figures::default();
    let config = HostConfig::new("bench-xenstored")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary("rxenstored")
        .and_then(|c| c.with_project_binary("rxen-xs-bench"))
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");
    // Nothing else may talk to the store while it is measured.
    host.run("pkill -x xenconsoled; true").expect("dom0 answers");

    // rates[daemon][op] = per-round ops/s; lat[daemon] = per-round p50 µs.
    let mut rates: BTreeMap<&str, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut lat: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let order: Vec<_> = if round % 2 == 0 {
            DAEMONS.iter().collect()
        } else {
            DAEMONS.iter().rev().collect()
        };
        for (name, start) in order {
            let script = format!(
                r#"set -e
if [ -s /var/run/xenstored.pid ]; then
    pid=$(cat /var/run/xenstored.pid); kill "$pid" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f /var/run/xenstored.pid
fi
pkill -x xenstored || true; pkill -x oxenstored || true; pkill -x rxenstored || true
sleep 0.5
rm -f /var/run/xenstored/socket /var/run/xenstored/socket_ro
{start}
for i in $(seq 100); do [ -S /var/run/xenstored/socket ] && break; sleep 0.1; done
xen-init-dom0 >/dev/null
rxen-xs-bench --label {name} --seconds {seconds}
"#
            );
            let out = host
                .run_ok_with(&script, &[], Duration::from_secs(600))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for line in out.lines().filter(|l| l.starts_with("xs-bench ")) {
                let kv: BTreeMap<&str, &str> =
                    line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
                let op = kv["op"];
                if op == "watch-latency" {
                    lat.entry(name).or_default().push((
                        kv["p50_us"].parse().unwrap(),
                        kv["p99_us"].parse().unwrap(),
                    ));
                } else {
                    rates
                        .entry(name)
                        .or_default()
                        .entry(op.to_owned())
                        .or_default()
                        .push(kv["per_sec"].parse().unwrap());
                }
            }
            println!("{}", out.trim_end());
        }
    }
    let _ = host.shutdown();

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\nxenstore daemons, same client, same host, {ROUNDS} rounds of {seconds} s per operation (median of rounds):");
    println!(
        "  {:<12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "op/s", "xenstored", "oxenstored", "rxenstored", "r/C", "r/O"
    );
    let mut met = true;
    for op in OPS {
        let get = |d: &str| median(&rates[d][op]);
        let (c, o, r) = (get("xenstored"), get("oxenstored"), get("rxenstored"));
        met &= r >= 2.0 * o;
        println!(
            "  {op:<12} {c:>12.0} {o:>12.0} {r:>12.0} {:>9.2}x {:>9.2}x",
            r / c,
            r / o
        );
    }
    let p50 = |d: &str| median(&lat[d].iter().map(|l| l.0).collect::<Vec<_>>());
    let p99 = |d: &str| median(&lat[d].iter().map(|l| l.1).collect::<Vec<_>>());
    let (c, o, r) = (p50("xenstored"), p50("oxenstored"), p50("rxenstored"));
    met &= r * 2.0 <= o;
    println!(
        "  {:<12} {c:>10.0}us {o:>10.0}us {r:>10.0}us {:>9.2}x {:>9.2}x   (p50 watch event latency; ratio = their/ours)",
        "watch",
        c / r,
        o / r
    );
    println!(
        "  {:<12} {:>10.0}us {:>10.0}us {:>10.0}us",
        "watch p99",
        p99("xenstored"),
        p99("oxenstored"),
        p99("rxenstored")
    );
    // A busy host machine slows whole stretches of the run by an order of
    // magnitude; say so rather than let it pass as a figure.
    let unsteady: Vec<String> = rates
        .iter()
        .flat_map(|(d, ops)| ops.iter().map(move |(op, v)| (d, op, v)))
        .filter(|(_, _, v)| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            hi > 3.0 * lo
        })
        .map(|(d, op, v)| format!("{d} {op} {v:.0?}"))
        .collect();
    if !unsteady.is_empty() {
        println!(
            "UNSTEADY (rounds differ more than 3x; was the machine busy? rerun on an idle one): {}",
            unsteady.join("; ")
        );
    }
    println!(
        "goal (rxenstored >= 2x oxenstored on every line): {}",
        if met { "met" } else { "NOT met" }
    );
    println!("\nhost figures:\n{}", figures.table());
}
