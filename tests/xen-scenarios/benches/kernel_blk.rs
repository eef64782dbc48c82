//! `make bench` on the Xen test host: the project's guest kernel with its
//! Rust block frontend (`xen_blkfront_rs`) against the C `xen-blkfront` of
//! the same kernel, same guest, same disk and backend.
//!
//! One 6.12 PV guest (the patched kernel, 2 vCPUs) gets one disk, an image
//! on a dom0 tmpfs served by Linux's in-kernel blkback. The guest swaps the
//! frontend module between rounds (rmmod one, insmod the other: the vbd
//! disconnects and reconnects), in rotating order, and runs the same `fio`
//! jobs with each: sequential 1 MiB write and read (MB/s, 8 in flight) and
//! 4 KiB random read at queue depth 1 and 32 (IOPS), all O_DIRECT through
//! io_uring. Prints the median of the rounds and the ratio Rust / C (goal
//! >= 1.0 on every line).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
use xen_scenarios::{boot, init_logging, Figures};

const SIZE_MIB: u32 = 128;
const ROUNDS: usize = 3;
/// (module, label).
const DRIVERS: [(&str, &str); 2] = [("xen_blkfront_rs", "rust"), ("xen-blkfront", "c")];
/// (job, fio arguments, reported as MB/s (true) or IOPS (false)).
const JOBS: [(&str, &str, bool); 4] = [
    ("seq-write-1M", "--rw=write --bs=1M --iodepth=8", true),
    ("seq-read-1M", "--rw=read --bs=1M --iodepth=8", true),
    ("rand-read-4K-qd1", "--rw=randread --bs=4k --iodepth=1", false),
    ("rand-read-4K-qd32", "--rw=randread --bs=4k --iodepth=32", false),
];

fn guest_script(seconds: u32) -> String {
    let mut s = String::from(
        "#!/bin/sh\nk=$(uname -r); dir=/lib/modules/$k\n\
         path() { grep -E \"/$1\\.ko\\$\" $dir/rxen-load-order | head -n 1; }\n\
         use() {\n\
           rmmod xen_blkfront_rs 2>/dev/null; rmmod xen_blkfront 2>/dev/null\n\
           i=0; while [ -b /dev/xvdb ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done\n\
           insmod $dir/$(path $1) || echo \"RXEN-FIO insmod $1 failed\"\n\
           i=0; while [ ! -b /dev/xvdb ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n\
           [ -b /dev/xvdb ] || echo \"RXEN-FIO missing xvdb with $1\"\n\
         }\n",
    );
    s.push_str(&format!("for round in $(seq {ROUNDS}); do\n"));
    s.push_str("  case $round in 2) order='xen-blkfront xen_blkfront_rs' ;; *) order='xen_blkfront_rs xen-blkfront' ;; esac\n");
    s.push_str("  for m in $order; do\n    use $m\n");
    for (job, args, _) in JOBS {
        // Terse output: field 7/8 = read KiB/s / IOPS, 48/49 = write.
        s.push_str(&format!(
            "    fio --name={job} --filename=/dev/xvdb --direct=1 --ioengine=io_uring {args} \
             --size={SIZE_MIB}M --runtime={seconds} --time_based --minimal 2>/tmp/fio.err | \
             awk -F';' -v m=$m -v r=$round '{{print \"RXEN-FIO drv=\" m \" round=\" r \" job={job} rkib=\" $7 \" riops=\" $8 \" wkib=\" $48 \" wiops=\" $49}}' || \
             echo \"RXEN-FIO drv=$m job={job} failed $(cat /tmp/fio.err)\"\n"
        ));
    }
    s.push_str("  done\ndone\necho RXEN-FIO done\n");
    s
}

fn main() {
    init_logging();
    let seconds: u32 = std::env::var("RXEN_BLK_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut figures = Figures::default();
    let config = HostConfig::new("bench-kernel-blk").expect("the Xen test host is built (make xen-host)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");
    let result = run(&mut host, seconds);
    let _ = host.shutdown();
    let rows = result.expect("the guest kernel block benchmark ran");
    print_table(&rows, seconds);
    println!("\nhost figures:\n{}", figures.table());
}

/// rows[job][driver] = per-round values.
type Rows = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

fn run(h: &mut XenHost, seconds: u32) -> xen_harness::Result<Rows> {
    h.run_ok(&format!(
        "set -e; mkdir -p /var/lib/rxen/bench\n\
         mountpoint -q /var/lib/rxen/bench || mount -t tmpfs -o size=512M tmpfs /var/lib/rxen/bench\n\
         truncate -s {SIZE_MIB}M /var/lib/rxen/bench/kb.img\n"
    ))?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-fio", 0o755, guest_script(seconds).as_bytes());
    let initrd = h.guest_initrd_with("bench-kernel-blk", overlay)?;
    // The guest's init loads neither frontend: the script does, per round.
    let mut guest = GuestConfig::new("bench-kblk", GuestKind::Pv, GuestKernel::Rxen612)
        .with_ramdisk(&initrd)
        .with_disk("format=raw,vdev=xvdb,access=rw,target=/var/lib/rxen/bench/kb.img")
        .with_cmdline("rxen_skip=\"xen-blkfront xen_blkfront_rs\"")
        .hold();
    guest.memory_mib = 512;
    guest.vcpus = 2;
    let g = h.xl_create(&guest)?;
    let budget = Duration::from_secs(u64::from(seconds) * 10 * ROUNDS as u64 + 600);
    h.wait_guest_line(&g, "RXEN-FIO done", budget)?;
    let console = h.guest_console(&g.name)?;
    let _ = h.xl_destroy(&g.name);

    let label_of: BTreeMap<&str, &str> = DRIVERS.into_iter().collect();
    let mut rows = Rows::new();
    for line in console.lines().filter_map(|l| l.split_once("RXEN-FIO ").map(|(_, r)| r)) {
        println!("  {line}");
        let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        let (Some(drv), Some(job)) = (kv.get("drv"), kv.get("job")) else {
            continue;
        };
        let Some((_, _, mbps)) = JOBS.iter().find(|(j, _, _)| j == job) else {
            continue;
        };
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let value = match (*mbps, job.contains("write")) {
            (true, true) => num("wkib") * 1024.0 / 1e6,
            (true, false) => num("rkib") * 1024.0 / 1e6,
            (false, true) => num("wiops"),
            (false, false) => num("riops"),
        };
        rows.entry((*job).to_owned())
            .or_default()
            .entry(label_of.get(drv).copied().unwrap_or(drv).to_owned())
            .or_default()
            .push(value);
    }
    Ok(rows)
}

fn print_table(rows: &Rows, seconds: u32) {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "\nguest block frontends, same patched 6.12 PV guest, Linux blkback, same fio jobs ({seconds} s each, median of {ROUNDS} rounds), a {SIZE_MIB} MiB image on a dom0 tmpfs:"
    );
    println!("  {:<20} {:>10} {:>10} {:>8}", "job", "Rust", "C", "Rust/C");
    let mut met = true;
    for (job, _, mbps) in JOBS {
        let get = |d: &str| rows.get(job).and_then(|r| r.get(d)).map_or(0.0, |v| median(v));
        let (r, c) = (get("rust"), get("c"));
        met &= r > 0.0 && r >= c;
        println!(
            "  {job:<20} {r:>10.1} {c:>10.1} {:>7.2}x   {}",
            r / c,
            if mbps { "MB/s" } else { "IOPS" }
        );
    }
    println!("goal (Rust >= 1.0x C on every line): {}", if met { "met" } else { "NOT met" });
}
