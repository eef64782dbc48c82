//! `make bench` on the Xen test host: the project's guest kernel with its
//! Rust block frontend (`xen_blkfront_rs`) against the C `xen-blkfront` of
//! the same kernel, in the same guest, on the same backend
//! (`RXEN_BLK_BENCH_SECONDS` per job, default 4; `RXEN_KBLK_BENCH_ROUNDS`
//! rounds, default 6).
//!
//! A 6.12 PV guest (the patched kernel, 2 vCPUs, 512 MiB) gets two disks of
//! the same size on a dom0 tmpfs, both served by Linux's in-kernel blkback.
//! It loads both frontends with the bus's autoprobe off and binds one disk
//! to the Rust driver (`vbd_rs`) and the other to the C one (`vbd`), then
//! pins each driver's queue i interrupt to vCPU i (the CPU whose requests
//! queue i takes), the same for both, so that where Linux happens to place
//! four interrupts does not favour one disk. A second guest does the same
//! with the disks swapped (so neither driver always has the same disk, its
//! loop device and blkback threads in dom0); each runs half the rounds. The
//! guest runs the same `fio` jobs on
//! each disk in turn, the order alternating over the rounds: sequential
//! 1 MiB write and read (MB/s, 8 in flight) and 4 KiB random read at queue
//! depth 1 and 32 (IOPS), all O_DIRECT through io_uring. Prints the median
//! of the rounds, the ratio Rust / C (goal >= 1.0 on every line) and in how
//! many rounds the Rust driver was ahead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
use xen_scenarios::{boot, fio, init_logging, Figures};

const SIZE_MIB: u32 = 128;
/// Rounds (`RXEN_KBLK_BENCH_ROUNDS`, default 6).
fn rounds() -> usize {
    std::env::var("RXEN_KBLK_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6)
}
/// (label, xenbus driver, interrupt name) of each frontend.
const DRIVERS: [(&str, &str, &str); 2] = [("rust", "vbd_rs", "blkif-rs"), ("c", "vbd", "blkif")];
/// (guest disk, xenbus device) of the two disks.
const DISKS: [(&str, &str); 2] = [("xvdb", "vbd-51728"), ("xvdc", "vbd-51744")];

/// The disk of driver `d` in guest `g`: the guests swap them, so that
/// neither driver always has the same disk (and its blkback threads and
/// loop device in dom0).
fn disk_of(d: usize, g: usize) -> (&'static str, &'static str) {
    DISKS[(d + g) % DISKS.len()]
}

fn guest_script(seconds: u32, g: usize, rounds: std::ops::RangeInclusive<usize>) -> String {
    let mut s = String::from(
        "#!/bin/sh\nkver=$(uname -r)\n\
         echo 0 > /sys/bus/xen/drivers_autoprobe\n\
         while read -r m; do case $m in */xen-blkfront.ko|*/xen_blkfront_rs.ko) \
         insmod /lib/modules/$kver/$m || echo \"RXEN-FIO insmod $m failed\" ;; esac; \
         done </lib/modules/$kver/rxen-load-order\n",
    );
    for (d, (_, drv, irq)) in DRIVERS.iter().enumerate() {
        let (disk, dev) = disk_of(d, g);
        s.push_str(&format!(
            "echo {dev} > /sys/bus/xen/drivers/{drv}/bind\n\
             i=0; while [ ! -b /dev/{disk} ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n\
             [ -b /dev/{disk} ] && [ -e /sys/bus/xen/drivers/{drv}/{dev} ] && echo \"RXEN-FIO bound {disk} {drv}\"\n\
             n=0; for q in $(grep -E ' {irq}$' /proc/interrupts | cut -d: -f1); do \
             echo $((n % $(nproc))) > /proc/irq/$q/smp_affinity_list && \
             echo \"RXEN-FIO irq {irq} queue $n cpu $(cat /proc/irq/$q/effective_affinity_list)\"; \
             n=$((n + 1)); done\n"
        ));
    }
    for round in rounds {
        for job in &fio::JOBS {
            let mut order = [0, 1];
            if round % 2 == 0 {
                order.reverse();
            }
            for d in order {
                let (disk, _) = disk_of(d, g);
                let labels = format!("drv={} round={round} disk={disk}", DRIVERS[d].0);
                s.push_str(&fio::command(job, &format!("/dev/{disk}"), SIZE_MIB, seconds, &labels));
            }
        }
    }
    s.push_str("echo RXEN-FIO done\n");
    s
}

fn main() {
    init_logging();
    let seconds = fio::seconds();
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
type Rows = fio::Rows;

fn run(h: &mut XenHost, seconds: u32) -> xen_harness::Result<Rows> {
    h.run_ok(&format!(
        "set -e; mkdir -p /var/lib/rxen/bench\n\
         mountpoint -q /var/lib/rxen/bench || mount -t tmpfs -o size=512M tmpfs /var/lib/rxen/bench\n\
         truncate -s {SIZE_MIB}M /var/lib/rxen/bench/kb-b.img /var/lib/rxen/bench/kb-c.img\n"
    ))?;
    let rounds = rounds();
    let mut console = String::new();
    // Two guests, the second with the disks swapped; each runs half the rounds.
    let half = rounds.div_ceil(2);
    for (g, range) in [(0, 1..=half), (1, half + 1..=rounds)] {
        if range.is_empty() {
            continue;
        }
        let mut overlay = Archive::new();
        overlay.file("/rxen/guest.d/40-fio", 0o755, guest_script(seconds, g, range.clone()).as_bytes());
        let initrd = h.guest_initrd_with(&format!("bench-kernel-blk-{g}"), overlay)?;
        let mut guest = GuestConfig::new(&format!("kblk-{g}"), GuestKind::Pv, GuestKernel::Rxen612)
            .with_ramdisk(&initrd)
            .with_disk("format=raw,vdev=xvdb,access=rw,target=/var/lib/rxen/bench/kb-b.img")
            .with_disk("format=raw,vdev=xvdc,access=rw,target=/var/lib/rxen/bench/kb-c.img");
        // Both frontends stay out at boot; the bench script loads and binds them.
        guest.cmdline.push("rxen_skip=\"xen-blkfront xen_blkfront_rs\"".to_owned());
        guest.memory_mib = 512;
        guest.vcpus = 2;
        let gd = h.xl_create(&guest)?;
        // Each job: fio's ramp, its seconds and start-up, per driver per round.
        let jobs = (fio::JOBS.len() * DRIVERS.len() * range.count()) as u64;
        let budget = (u64::from(seconds) + 10) * jobs + 300;
        let done = h.wait_guest_line(&gd, "RXEN-FIO done", Duration::from_secs(budget))?;
        log::info!("{}: {}", gd.name, done.line);
        let text = h.guest_console(&gd.name)?.replace('\r', "");
        let _ = h.xl_destroy(&gd.name);
        for (d, (_, drv, _)) in DRIVERS.iter().enumerate() {
            let (disk, _) = disk_of(d, g);
            if !text.contains(&format!("RXEN-FIO bound {disk} {drv}\n")) {
                return Err(xen_harness::Error::Check(format!("{}: {drv} did not take {disk}", gd.name)));
            }
        }
        for line in text.lines().filter(|l| l.contains("RXEN-FIO irq") || l.contains("RXEN-FIO insmod")) {
            println!("  {}: {line}", gd.name);
        }
        console.push_str(&text);
    }
    Ok(fio::rows(&console, &fio::JOBS, "drv", str::to_owned))
}

fn print_table(rows: &Rows, seconds: u32) {
    println!(
        "\nguest block frontends, one patched 6.12 PV guest with a disk for each, Linux blkback, same fio jobs ({seconds} s each, median of {} rounds), {SIZE_MIB} MiB images on a dom0 tmpfs:",
        rounds()
    );
    println!("  {:<20} {:>10} {:>10} {:>8}          rounds Rust >= C", "job", "Rust", "C", "Rust/C");
    let mut met = true;
    for (job, _, mbps) in fio::JOBS {
        let get = |d: &str| fio::median(rows, job, d);
        let (r, c) = (get("rust"), get("c"));
        met &= r > 0.0 && r >= c;
        let per_round = |d: &str| rows.get(job).and_then(|x| x.get(d)).cloned().unwrap_or_default();
        let (rr, cc) = (per_round("rust"), per_round("c"));
        let ahead = rr.iter().zip(&cc).filter(|(a, b)| a >= b).count();
        println!(
            "  {job:<20} {r:>10.1} {c:>10.1} {:>7.2}x   {:<6} {ahead}/{}",
            r / c,
            if mbps { "MB/s" } else { "IOPS" },
            rr.len().min(cc.len())
        );
    }
    println!("goal (Rust >= 1.0x C on every line): {}", if met { "met" } else { "NOT met" });
}
