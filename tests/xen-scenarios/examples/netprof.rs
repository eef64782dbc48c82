//! A development aid (not a suite): dom0's view while one 6.12 PV guest
//! runs iperf3 over Linux's netback and over rnetback, each direction in
//! turn: bytes and frames through each vif, interrupts, CPU time of
//! rnetback's threads, dom0's TCP counters (`nstat`) and connections
//! (`ss -tin`), system calls (`perf trace -s`) and a `perf record`
//! profile with call graphs; and the guest's view: its CPU time,
//! interrupts, and per second of iperf3 its sender's congestion window
//! and smoothed RTT (guest to dom0 only).
//!
//! ```text
//! cargo build --release --workspace --bins
//! # perf for dom0 (Debian 12's linux-perf, with the libraries it needs
//! # that dom0 lacks):
//! mkdir -p /tmp/perfpkg/lib && cp /usr/bin/perf /tmp/perfpkg/ && for l in $(ldd /usr/bin/perf |
//!     awk '{print $3}' | grep /); do case $l in */libc.so.6|*/libm.so.6) ;; *) cp -L $l /tmp/perfpkg/lib/ ;; esac; done
//! RXEN_PERF_PKG=/tmp/perfpkg cargo run --release -p xen-scenarios --example netprof
//! ```
//!
//! Reports go to `NETPROF_OUT` (default /tmp/netprof), one file per
//! phase; `NETPROF_ARGS` adds rnetback arguments; `NETPROF_PRE` is a dom0
//! script run first (with `NETPROF_PRE_ONLY`, only that).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig};
use xen_scenarios::{attach_rnetback, boot, init_logging, Figures};

const PHASES: [(&str, &str); 4] =
    [("rnetback", "g2d"), ("netback", "g2d"), ("rnetback", "d2g"), ("netback", "d2g")];

/// The phases to run: `NETPROF_PHASES` (e.g. `rnetback:d2g,netback:d2g`)
/// or all of [`PHASES`].
fn phases() -> Vec<(String, String)> {
    match std::env::var("NETPROF_PHASES") {
        Ok(list) => list
            .split(',')
            .filter_map(|p| p.split_once(':'))
            .map(|(b, d)| (b.to_owned(), d.to_owned()))
            .collect(),
        Err(_) => PHASES.iter().map(|(b, d)| ((*b).to_owned(), (*d).to_owned())).collect(),
    }
}

fn guest_script(seconds: u32) -> String {
    format!(
        r#"#!/bin/sh
ifname() {{
    i=0; while [ $i -lt 600 ]; do
        for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$1" ] && {{ echo ${{n##*/}}; return; }}; done
        sleep 0.1; i=$((i + 1))
    done
}}
k=$(ifname 00:16:3e:52:01:01); r=$(ifname 00:16:3e:52:01:02)
ip link set lo up
ip addr add 192.168.200.50/24 dev $k; ip link set $k up
ip addr add 192.168.201.50/24 dev $r; ip link set $r up
sleep 2
for p in {phases}; do
    b=${{p%:*}}; d=${{p#*:}}
    case $b in netback) ip=192.168.200.1 ;; *) ip=192.168.201.1 ;; esac
    case $d in d2g) flag=-R ;; *) flag= ;; esac
    echo "RXEN-PROF start $b $d"
    case $b in netback) n=$k ;; *) n=$r ;; esac
    pk0="$(cat /sys/class/net/$n/statistics/tx_packets) $(cat /sys/class/net/$n/statistics/rx_packets)"
    grep -E -- '-event' /proc/interrupts > /tmp/i0; grep -E '^cpu[0-9]* ' /proc/stat > /tmp/s0
    iperf3 -c $ip -t {seconds} $flag -J >/tmp/iperf.json 2>/tmp/iperf.err
    mbps=$(grep -A8 '"sum_received"' /tmp/iperf.json | awk -F: '/bits_per_second/ {{gsub(/[ ,]/, "", $2); printf "%d", $2 / 1e6; exit}}')
    grep -E -- '-event' /proc/interrupts > /tmp/i1; grep -E '^cpu[0-9]* ' /proc/stat > /tmp/s1
    pk1="$(cat /sys/class/net/$n/statistics/tx_packets) $(cat /sys/class/net/$n/statistics/rx_packets)"
    echo "RXEN-PROF end $b $d mbps=$mbps"
    head -c 300 /tmp/iperf.err | sed "s/^/RXEN-PROF guest-iperf-err /"
    echo "$pk0 $pk1" | awk -v p="$b $d" '{{print "RXEN-PROF guest-packets", p, "tx", $3-$1, "rx", $4-$2}}'
    paste /tmp/i0 /tmp/i1 | awk -v p="$b $d" '{{n=NF/2; a=$2+$3; c=$(n+2)+$(n+3); if (c-a > 0) print "RXEN-PROF guest-irq", p, c-a, $n}}'
    awk -F: -v p="$b $d" '{{gsub(/[ ,\t]/, "", $2)}} /"bits_per_second"/ {{bps=$2}} /"snd_cwnd"/ {{cwnd=$2}} /"rtt"/ {{printf "RXEN-PROF guest-iperf %s mbps %d cwnd %d rtt_us %d in_flight_est %d\n", p, bps / 1e6, cwnd, $2, bps / 8 * $2 / 1e6}}' /tmp/iperf.json
    paste /tmp/s0 /tmp/s1 | awk -v p="$b $d" '{{print "RXEN-PROF guest-stat", p, $1, "user", $13-$2, "sys", $15-$4, "idle", $16-$5, "softirq", $19-$8, "steal", $20-$9}}'
    sleep 30
done
echo "RXEN-PROF done"
"#,
        phases = phases().iter().map(|(b, d)| format!("{b}:{d}")).collect::<Vec<_>>().join(" ")
    )
}

fn main() {
    init_logging();
    let out_dir = std::path::PathBuf::from(std::env::var("NETPROF_OUT").unwrap_or("/tmp/netprof".into()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let extra = std::env::var("NETPROF_ARGS").unwrap_or_default();
    let mut figures = Figures::default();
    let mut config = HostConfig::new("netprof").unwrap().with_project_binary("rnetback").unwrap();
    config = xen_scenarios::with_perf(config, &std::env::var("RXEN_PERF_PKG").expect("RXEN_PERF_PKG: a directory with perf and lib/"));
    let mut h = boot(config, &mut figures).unwrap();
    h.run_ok(
        "set -e; ip link add xenbr1 type bridge; ip addr add 192.168.201.1/24 dev xenbr1; ip link set xenbr1 up\n\
         iperf3 -s -D >/dev/null 2>&1 </dev/null\n",
    )
    .unwrap();
    if let Ok(pre) = std::env::var("NETPROF_PRE") {
        let out = h.run_with(&pre, &[], Duration::from_secs(600)).unwrap();
        println!("===== pre\n{}{}", out.stdout, out.stderr);
        if std::env::var("NETPROF_PRE_ONLY").is_ok() { let _ = h.shutdown(); return; }
    }
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-iperf", 0o755, guest_script(22).as_bytes());
    let initrd = h.guest_initrd_with("netprof", overlay).unwrap();
    let mut guest = GuestConfig::new("netprof", GuestKind::Pv, GuestKernel::Linux612).with_ramdisk(&initrd).hold();
    guest.vifs.push("bridge=xenbr0,mac=00:16:3e:52:01:01".to_owned());
    guest.memory_mib = 512;
    guest.vcpus = 2;
    let g = h.xl_create(&guest).unwrap();
    attach_rnetback(&mut h, &g.name, 1, "00:16:3e:52:01:02", "xenbr1", "rvifDOMID.1", &extra).unwrap();
    for (b, d) in phases() {
        h.wait_guest_line(&g, &format!("RXEN-PROF start {b} {d}"), Duration::from_secs(600)).unwrap();
        let out = h
            .run_with(
                r#"export LD_LIBRARY_PATH=/opt/perf/lib; P=/opt/perf/perf
sleep 4
pid=$(pidof rnetback); d=$(xl domid netprof)
links() { for i in rvif$d.1 vif$d.0; do ip -s link show dev $i | awk -v i=$i 'NR==4 {rx=$1" B "$2" pk"} NR==6 {print i" rx(from guest) "rx" tx(to guest) "$1" B "$2" pk"}'; done; }
links > /tmp/l0; grep -E "xen-dyn|xen-percpu" /proc/interrupts > /tmp/i0; xl vcpu-list > /tmp/v0
for t in /proc/$pid/task/*; do echo "$t $(cut -d' ' -f2,14,15 $t/stat)"; done > /tmp/t0
ss -tin > /tmp/ss0
nstat -n
$P record -a -F 997 -g -o /tmp/perf.data -- sleep 5 2>&1 | tail -1
links > /tmp/l1; grep -E "xen-dyn|xen-percpu" /proc/interrupts > /tmp/i1; xl vcpu-list > /tmp/v1
for t in /proc/$pid/task/*; do echo "$t $(cut -d' ' -f2,14,15 $t/stat)"; done > /tmp/t1
nstat > /tmp/n1
echo "== TCP connections before perf (ss -tin)"; cat /tmp/ss0
echo "== TCP and IP counters (5 s, nstat)"; grep -E "^(Tcp|Ip)" /tmp/n1
echo "== links (5 s)"; cat /tmp/l0 /tmp/l1
echo "== interrupts"; paste /tmp/i0 /tmp/i1 | awk '{n=NF/2; a=0; b=0; for (k=2;k<=3;k++) a+=$k; for (k=n+2;k<=n+3;k++) b+=$k; if (b-a > 50) print b-a, $0}' | cut -c1-160
echo "== vCPU time (s) in the 5 s, as Xen counts it"; paste /tmp/v0 /tmp/v1 | awk 'NR > 1 {print $1, "vcpu", $3, $6 ? $(NF/2+6) - $6 : ""}'
echo "== threads (utime stime)"; cat /tmp/t0 /tmp/t1
echo "== syscalls"; timeout 10 $P trace -s -p $pid -- sleep 3 2>&1 | grep -v "^$" | head -30
echo "== perf by comm"; $P report -i /tmp/perf.data --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
echo "== symbols of the backend threads"; $P report -i /tmp/perf.data --no-children --sort comm,dso,sym --stdio -g none --percent-limit 0.3 2>/dev/null | grep -v '^#' | grep -v '^$' | head -70
echo "== inclusive, rnetback's queue threads"; $P report -i /tmp/perf.data --children --comms rnetback-q0,rnetback-q1,rnetback-q0-tx,rnetback-q0-rx,rnetback-q1-tx,rnetback-q1-rx,rnetback-q0-tap,rnetback-q1-tap --sort comm,sym --stdio -g none --percent-limit 1.0 2>/dev/null | grep -v "^#" | grep -v "^$" | head -120
echo "== hypercall callers (all comms)"; $P report -i /tmp/perf.data --no-children --sort comm,sym --stdio -g caller,0.5,callee,function,percent --percent-limit 3 2>/dev/null | grep -v '^#' | grep -v '^$' | head -150
"#,
                &[],
                Duration::from_secs(300),
            )
            .unwrap();
        let text = format!("{}{}", out.stdout, out.stderr);
        std::fs::write(out_dir.join(format!("{b}-{d}.txt")), &text).unwrap();
        println!("===== {b} {d}\n{text}");
    }
    h.wait_guest_line(&g, "RXEN-PROF done", Duration::from_secs(600)).unwrap();
    let console = h.guest_console(&g.name).unwrap();
    for l in console.lines().filter(|l| ["RXEN-PROF end", "RXEN-PROF guest-"].iter().any(|m| l.contains(m))) {
        println!("{l}");
    }
    let _ = h.shutdown();
}
