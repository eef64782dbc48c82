//! A development aid (not a suite): guest and dom0 CPU time and guest
//! interrupts while one 6.12 PV guest runs the same fio job (default 4 KiB
//! random reads at queue depth 32) on rblkback, qdisk and blkback, twice
//! each, with a `perf record` profile of dom0 (rblkback's threads by
//! symbol) and rblkback's system calls (`perf trace -s`, per thread)
//! during rblkback's turns when `RXEN_PERF_PKG` names a perf package (see
//! the `netprof` example); reported after the runs.
//!
//! The images are written whole first (as the bench's first job does),
//! unless `BLKPROF_SPARSE` is set. `BLKPROF_ARGS`: extra rblkback arguments; `BLKPROF_ALT_ARGS`: when set,
//! a second rblkback disk (xvde, backend `rblkback-alt`) with these
//! arguments instead, run after each rblkback turn (an A/B comparison in
//! one boot); `BLKPROF_GUEST_PRE`: shell run in the guest before each
//! fio run, with `$i` (the run's index) and `$b` (its backend) set (e.g.
//! to move the blkif interrupts: /proc/irq/N/smp_affinity); `BLKPROF_JOB`:
//! fio arguments; `BLKPROF_SECONDS`: per run
//! (10); `BLKPROF_ONLY`: backends to run (comma-separated, e.g.
//! `rblkback`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig};
use xen_scenarios::{attach_rblkback, boot, init_logging, Figures};

const ALL: [(&str, &str); 6] = [
    ("xvdb", "rblkback"), ("xvdd", "qdisk"), ("xvdc", "blkback"),
    ("xvdb", "rblkback"), ("xvdd", "qdisk"), ("xvdc", "blkback"),
];

fn order() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("BLKPROF_ONLY").unwrap_or_default();
    let alt = std::env::var_os("BLKPROF_ALT_ARGS").is_some();
    ALL.iter()
        .copied()
        .filter(|(_, b)| only.is_empty() || only.split(',').any(|o| o == *b))
        .flat_map(|d| {
            let alt = (alt && d.1 == "rblkback").then_some(("xvde", "rblkback-alt"));
            std::iter::once(d).chain(alt)
        })
        .collect()
}

fn guest_script(job: &str, seconds: u32) -> String {
    let alt = if std::env::var_os("BLKPROF_ALT_ARGS").is_some() { "xvde" } else { "" };
    let mut s = format!("#!/bin/sh\nALT={alt}\n");
    s.push_str("for d in xvdb xvdc xvdd $ALT; do i=0; while [ ! -b /dev/$d ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done; done\nsleep 2\n");
    let pre = std::env::var("BLKPROF_GUEST_PRE").unwrap_or_else(|_| ":".into());
    for (i, (d, b)) in order().iter().enumerate() {
        s.push_str(&format!(
            "i={i}; b={b}; {pre}\n\
             echo \"RXEN-PROF start {i} {b}\"\n\
             grep -E 'blkif|timer|resched|callfunc' /proc/interrupts > /tmp/i0; grep -E '^cpu[0-9]* ' /proc/stat > /tmp/s0\n\
             fio --name=j --filename=/dev/{d} --direct=1 --ioengine=io_uring {job} --size=128M --runtime={seconds} --time_based --minimal 2>/tmp/fio.err | awk -F';' '{{print \"RXEN-PROF fio {b} riops=\" $8 \" rkib=\" $7 \" wiops=\" $49 \" wkib=\" $48}}'\n\
             grep -E 'blkif|timer|resched|callfunc' /proc/interrupts > /tmp/i1; grep -E '^cpu[0-9]* ' /proc/stat > /tmp/s1\n\
             paste /tmp/i0 /tmp/i1 | awk '{{n=NF/2; a=$2+$3; b=$(n+2)+$(n+3); print \"RXEN-PROF irq {b}\", b-a, \"cpu0\", $(n+2)-$2, \"cpu1\", $(n+3)-$3, $(n-1), $n}}'\n\
             paste /tmp/s0 /tmp/s1 | awk '{{print \"RXEN-PROF stat {b}\", $1, \"user\", $13-$2, \"sys\", $15-$4, \"idle\", $16-$5, \"irq\", $18-$7, \"softirq\", $19-$8, \"steal\", $20-$9}}'\n\
             echo \"RXEN-PROF end {i} {b}\"\nsleep 3\n"
        ));
    }
    s.push_str("echo RXEN-PROF done\n");
    s
}

fn main() {
    init_logging();
    let args = std::env::var("BLKPROF_ARGS").unwrap_or_default();
    let job = std::env::var("BLKPROF_JOB").unwrap_or("--rw=randread --bs=4k --iodepth=32".into());
    let seconds: u32 = std::env::var("BLKPROF_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let perf_pkg = std::env::var("RXEN_PERF_PKG").ok();
    let perf = perf_pkg.is_some();
    let mut figures = Figures::default();
    let mut config = HostConfig::new("blkprof").unwrap().with_project_binary("rblkback").unwrap();
    if let Some(pkg) = &perf_pkg {
        config = xen_scenarios::with_perf(config, pkg);
    }
    let mut h = boot(config, &mut figures).unwrap();
    h.run_ok(
        "set -e; mkdir -p /var/lib/rxen/bench; mount -t tmpfs -o size=512M tmpfs /var/lib/rxen/bench\n\
         for b in r k q; do truncate -s 128M /var/lib/rxen/bench/$b.img; done\n",
    )
    .unwrap();
    if std::env::var_os("BLKPROF_SPARSE").is_none() {
        // Written images, as in the bench (whose first job writes them
        // whole): reads then come from written pages.
        h.run_ok("for b in r k q; do dd if=/dev/zero of=/var/lib/rxen/bench/$b.img bs=1M count=128 conv=notrunc status=none; done").unwrap();
    }
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-fio", 0o755, guest_script(&job, seconds).as_bytes());
    let initrd = h.guest_initrd_with("blkprof", overlay).unwrap();
    let mut guest = GuestConfig::new("blkprof", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .with_disk("format=raw,vdev=xvdc,access=rw,target=/var/lib/rxen/bench/k.img")
        .with_disk("format=raw,vdev=xvdd,access=rw,backendtype=qdisk,target=/var/lib/rxen/bench/q.img")
        .hold();
    guest.memory_mib = 512;
    guest.vcpus = 2;
    let g = h.xl_create(&guest).unwrap();
    attach_rblkback(&mut h, &g.name, 51728, "/var/lib/rxen/bench/r.img", &args).unwrap();
    if let Ok(alt) = std::env::var("BLKPROF_ALT_ARGS") {
        h.run_ok("dd if=/dev/zero of=/var/lib/rxen/bench/a.img bs=1M count=128 status=none").unwrap();
        attach_rblkback(&mut h, &g.name, 51776, "/var/lib/rxen/bench/a.img", &alt).unwrap();
    }
    for (i, (_, b)) in order().iter().enumerate() {
        h.wait_guest_line(&g, &format!("RXEN-PROF start {i} {b}"), Duration::from_secs(900)).unwrap();
        let script = format!(
            r#"sleep 2
xentop -b -i 2 -d {d} > /tmp/xentop &
for p in $(pidof rblkback) $(pgrep -f qemu-system) ; do for t in /proc/$p/task/*; do echo "$(cat $t/comm) $(cut -d' ' -f14,15 $t/stat)"; done; done > /tmp/t0
{perf}
sleep {d}
for p in $(pidof rblkback) $(pgrep -f qemu-system) ; do for t in /proc/$p/task/*; do echo "$(cat $t/comm) $(cut -d' ' -f14,15 $t/stat)"; done; done > /tmp/t1
wait
echo "== xentop"; tail -n 3 /tmp/xentop | awk '{{print $1, $4}}'
echo "== threads"; paste /tmp/t0 /tmp/t1 | awk '{{u=$5-$2; s=$6-$3; if (u+s > 0) print $1, "utime", u, "stime", s}}'
"#,
            d = seconds / 2,
            perf = if perf && b.starts_with("rblkback") { format!("(sleep 6; export LD_LIBRARY_PATH=/opt/perf/lib; /opt/perf/perf record -a -g -o /tmp/perf{i}.data -- sleep 4 >/dev/null 2>&1; timeout 10 /opt/perf/perf trace -s -t $(for p in $(pidof rblkback); do ls /proc/$p/task; done | paste -sd,) -- sleep 3 >/tmp/trace{i}.txt 2>&1) &") } else { String::new() },
        );
        let out = h.run_with(&script, &[], Duration::from_secs(300)).unwrap();
        println!("===== dom0 during {i} {b}\n{}{}", out.stdout, out.stderr);
        h.wait_guest_line(&g, &format!("RXEN-PROF end {i} {b}"), Duration::from_secs(300)).unwrap();
    }
    h.wait_guest_line(&g, "RXEN-PROF done", Duration::from_secs(300)).unwrap();
    // rblkback's counters (rounds, events) are in its log line at exit.
    let out = h
        .run_with("pkill -TERM -x rblkback; sleep 3; grep -h 'stopped; served' /var/log/xen/rblkback-*.log", &[], Duration::from_secs(60))
        .unwrap();
    println!("===== rblkback counters\n{}", out.stdout);
    if perf {
        // Reported after the runs: perf report is slow under emulation.
        let out = h
            .run_with(
                "for f in /tmp/perf*.data; do echo \"== $f\"; LD_LIBRARY_PATH=/opt/perf/lib /opt/perf/perf report -i $f --no-children --sort comm --stdio -g none --percent-limit 1 2>&1 | grep -v '^#' | grep -v '^$' | head -12; \
                 LD_LIBRARY_PATH=/opt/perf/lib /opt/perf/perf report -i $f --no-children --comms rblkback-q0,rblkback-q1 --sort dso,sym --stdio -g none --percent-limit 0.15 2>&1 | grep -v '^#' | grep -v '^$' | head -60; done\n\
                 for f in /tmp/trace*.txt; do echo \"== $f\"; cat $f; done",
                &[],
                Duration::from_secs(600),
            )
            .unwrap();
        println!("===== profiles\n{}{}", out.stdout, out.stderr);
    }
    let console = h.guest_console(&g.name).unwrap();
    for l in console.lines().filter(|l| l.contains("RXEN-PROF") && !l.contains("start") && !l.contains("end ")) {
        println!("{l}");
    }
    let _ = h.shutdown();
}
