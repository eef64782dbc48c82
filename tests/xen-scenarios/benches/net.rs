//! `make bench` on the Xen test host: one 6.12 PV guest (2 vCPUs, Linux's
//! netfront) with two vifs, one served by Linux's in-kernel netback (on
//! dom0's bridge xenbr0, dom0 192.168.200.1) and one by rnetback (a TAP on
//! a second bridge, xenbr1, dom0 192.168.201.1). The guest runs the same
//! `iperf3` TCP tests against dom0's `iperf3 -s` over each, in alternating
//! order over the rounds: guest to dom0 and dom0 to guest (`-R`). Prints
//! the median of the rounds (Mbit/s, as the receiver counted) and the
//! ratios rnetback / netback (goal >= 1.0 both ways).
//!
//! `RXEN_NET_VARIANT="ARGS"` adds a third vif, served by a second rnetback
//! with those arguments (on xenbr2, dom0 192.168.202.1), measured in the
//! same rounds: an A/B of an option in one boot, e.g.
//! `RXEN_NET_VARIANT="--tap-writer inline"`. `RXEN_NET_BENCH_ROUNDS` and
//! `RXEN_NET_BENCH_SECONDS` set the rounds (default 3) and the seconds of
//! each test (default 10).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
use xen_scenarios::{attach_rnetback, boot, init_logging, Figures};

/// Rounds by default (`RXEN_NET_BENCH_ROUNDS` sets another number).
const ROUNDS: usize = 3;

/// The rounds to run.
fn rounds() -> usize {
    std::env::var("RXEN_NET_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or(ROUNDS)
}
const NETBACK_MAC: &str = "00:16:3e:52:01:01";
const RNETBACK_MAC: &str = "00:16:3e:52:01:02";
const VARIANT_MAC: &str = "00:16:3e:52:01:03";
/// (direction, iperf3 flag).
const DIRECTIONS: [(&str, &str); 2] = [("guest-to-dom0", ""), ("dom0-to-guest", "-R")];

fn guest_script(seconds: u32, variant: bool) -> String {
    let (variant_setup, variant_order) = if variant {
        (
            format!("v=$(ifname {VARIANT_MAC}); ip addr add 192.168.202.50/24 dev $v; ip link set $v up"),
            " variant",
        )
    } else {
        (String::new(), "")
    };
    format!(
        r#"#!/bin/sh
ifname() {{ # MAC: the interface that has it, after up to 60 s
    i=0; while [ $i -lt 600 ]; do
        for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$1" ] && {{ echo ${{n##*/}}; return; }}; done
        sleep 0.1; i=$((i + 1))
    done
}}
k=$(ifname {NETBACK_MAC}); r=$(ifname {RNETBACK_MAC})
[ -n "$k" ] && [ -n "$r" ] || echo "RXEN-IPERF missing netback=$k rnetback=$r"
ip link set lo up
ip addr add 192.168.200.50/24 dev $k; ip link set $k up
ip addr add 192.168.201.50/24 dev $r; ip link set $r up
{variant_setup}
sleep 2
for round in $(seq {rounds}); do
    case $round in 2) order='netback rnetback{variant_order}' ;; *) order='rnetback{variant_order} netback' ;; esac
    for b in $order; do
        case $b in netback) ip=192.168.200.1 ;; variant) ip=192.168.202.1 ;; *) ip=192.168.201.1 ;; esac
        for d in {dirs}; do
            case $d in dom0-to-guest) flag=-R ;; *) flag= ;; esac
            mbps=$(iperf3 -c $ip -t {seconds} -f m $flag 2>/tmp/iperf.err | awk '/receiver/ {{print $7}}')
            echo "RXEN-IPERF backend=$b round=$round dir=$d mbps=${{mbps:-failed}}"
            [ -n "$mbps" ] || tail -2 /tmp/iperf.err
        done
    done
done
echo "RXEN-IPERF done"
"#,
        rounds = rounds(),
        dirs = DIRECTIONS.iter().map(|(d, _)| *d).collect::<Vec<_>>().join(" ")
    )
}

fn main() {
    init_logging();
    let seconds: u32 = std::env::var("RXEN_NET_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut figures = Figures::default();
    let config = HostConfig::new("bench-net")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary("rnetback")
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");
    let variant = std::env::var("RXEN_NET_VARIANT").ok();
    let result = run(&mut host, seconds, variant.as_deref());
    if result.is_err() {
        if let Ok(out) = host.run("tail -n 20 /var/log/xen/rnetback-*.log 2>/dev/null") {
            eprintln!("{}", out.stdout);
        }
    }
    let _ = host.shutdown();
    let rows = result.expect("the network benchmark ran");
    print_table(&rows, seconds, variant.as_deref());
    println!("\nhost figures:\n{}", figures.table());
}

/// rows[direction][backend] = per-round Mbit/s.
type Rows = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

fn run(h: &mut XenHost, seconds: u32, variant: Option<&str>) -> xen_harness::Result<Rows> {
    h.run_ok(
        "set -e; for b in 1 2; do ip link show xenbr$b >/dev/null 2>&1 || ip link add xenbr$b type bridge\n\
         ip addr add 192.168.20$b.1/24 dev xenbr$b 2>/dev/null || true; ip link set xenbr$b up; done\n\
         iperf3 -s -D >/dev/null 2>&1 </dev/null\n",
    )?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-iperf", 0o755, guest_script(seconds, variant.is_some()).as_bytes());
    let initrd = h.guest_initrd_with("bench-net", overlay)?;
    let mut guest = GuestConfig::new("bench-net", GuestKind::Pv, GuestKernel::Linux612).with_ramdisk(&initrd).hold();
    guest.vifs.push(format!("bridge=xenbr0,mac={NETBACK_MAC}"));
    guest.memory_mib = 512;
    guest.vcpus = 2;
    let g = h.xl_create(&guest)?;
    attach_rnetback(h, &g.name, 1, RNETBACK_MAC, "xenbr1", "rvifDOMID.1", "")?;
    if let Some(args) = variant {
        attach_rnetback(h, &g.name, 2, VARIANT_MAC, "xenbr2", "rvifDOMID.2", args)?;
    }
    let budget = Duration::from_secs(u64::from(seconds + 4) * 6 * rounds() as u64 + 600);
    h.wait_guest_line(&g, "RXEN-IPERF done", budget)?;
    let console = h.guest_console(&g.name)?;
    // Frames and bytes through each vif's dom0 end (the average frame
    // size shows whether GSO frames crossed).
    if let Ok(out) = h.run_ok(&format!(
        "d=$(xl domid {name}); ip -s link show dev rvif$d.1; ip -s link show dev vif$d.0\n\
         for i in rvif$d.1 xenbr1 vif$d.0; do echo $i; ethtool -k $i | grep -E 'tcp-segm|tx-checksumming|scatter'; done\n",
        name = g.name
    )) {
        println!("{out}");
    }
    let _ = h.xl_destroy(&g.name);
    if let Ok(out) = h.run_ok("sleep 1; grep stopped /var/log/xen/rnetback-*.log\n") {
        println!("{out}");
    }

    let mut rows = Rows::new();
    for line in console.lines().filter_map(|l| l.split_once("RXEN-IPERF ").map(|(_, r)| r)) {
        println!("  {line}");
        let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        let (Some(backend), Some(dir), Some(mbps)) = (kv.get("backend"), kv.get("dir"), kv.get("mbps")) else {
            continue;
        };
        let Ok(mbps) = mbps.parse::<f64>() else {
            continue;
        };
        rows.entry((*dir).to_owned()).or_default().entry((*backend).to_owned()).or_default().push(mbps);
    }
    Ok(rows)
}

fn print_table(rows: &Rows, seconds: u32, variant: Option<&str>) {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "\nnetwork backends, same 6.12 PV guest (2 vCPUs), iperf3 TCP to/from dom0 ({seconds} s each, median of {} rounds):",
        rounds()
    );
    println!("  {:<16} {:>10} {:>10} {:>8}", "Mbit/s", "rnetback", "netback", "r/n");
    let mut met = true;
    for (dir, _) in DIRECTIONS {
        let get = |b: &str| rows.get(dir).and_then(|r| r.get(b)).map_or(0.0, |v| median(v));
        let (r, k) = (get("rnetback"), get("netback"));
        met &= r >= k && r > 0.0;
        println!("  {dir:<16} {r:>10.1} {k:>10.1} {:>7.2}x", r / k);
    }
    if let Some(args) = variant {
        println!("variant: rnetback {args}, same rounds (not part of the goal):");
        for (dir, _) in DIRECTIONS {
            let get = |b: &str| rows.get(dir).and_then(|r| r.get(b)).map_or(0.0, |v| median(v));
            let (v, r, k) = (get("variant"), get("rnetback"), get("netback"));
            println!("  {dir:<16} {v:>10.1} Mbit/s  variant/rnetback {:.2}x  variant/netback {:.2}x", v / r, v / k);
        }
    }
    println!("goal (>= 1.0x netback both ways): {}", if met { "met" } else { "NOT met" });
}
