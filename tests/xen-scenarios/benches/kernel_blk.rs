//! `make bench` on the Xen test host: the project's guest kernel with its
//! Rust block frontend (`xen_blkfront_rs`) against the C `xen-blkfront` of
//! the same kernel, same guest configuration, same disk and backend
//! (`RXEN_BLK_BENCH_SECONDS` per job, default 4).
//!
//! A 6.12 PV guest (the patched kernel, 2 vCPUs, 512 MiB) gets one disk,
//! an image on a dom0 tmpfs served by Linux's in-kernel blkback, and loads
//! one of the two frontends (`rxen_skip` keeps the other out). It runs the
//! same `fio` jobs: sequential 1 MiB write and read (MB/s, 8 in flight) and
//! 4 KiB random read at queue depth 1 and 32 (IOPS), all O_DIRECT through
//! io_uring, then powers off. One guest per driver per round, the drivers'
//! order rotating over the rounds. Prints the median of the rounds and the
//! ratio Rust / C (goal >= 1.0 on every line).
//!
//! (One guest swapping modules does not work: a bound vbd holds its
//! driver's module, and after an unbind the C driver cannot reconnect the
//! closed device to blkback.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
use xen_scenarios::{boot, fio, init_logging, Figures};

const SIZE_MIB: u32 = 128;
/// Rounds (`RXEN_KBLK_BENCH_ROUNDS`, default 3).
fn rounds() -> usize {
    std::env::var("RXEN_KBLK_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}
/// (label, the other driver's module, which the guest does not load).
const DRIVERS: [(&str, &str); 2] = [("rust", "xen-blkfront"), ("c", "xen_blkfront_rs")];
fn guest_script(seconds: u32) -> String {
    let mut s = String::from(
        "#!/bin/sh\ni=0; while [ ! -b /dev/xvdb ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n\
         [ -b /dev/xvdb ] || echo \"RXEN-FIO missing xvdb\"\n\
         for drv in vbd vbd_rs; do [ ! -e /sys/bus/xen/drivers/$drv/vbd-51728 ] || echo \"RXEN-FIO bound-to $drv\"; done\n",
    );
    for job in &fio::JOBS {
        s.push_str(&fio::command(job, "/dev/xvdb", SIZE_MIB, seconds, "drv=$rxen_drv round=$rxen_round"));
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
         truncate -s {SIZE_MIB}M /var/lib/rxen/bench/kb.img\n"
    ))?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-fio", 0o755, guest_script(seconds).as_bytes());
    let initrd = h.guest_initrd_with("bench-kernel-blk", overlay)?;
    let mut console = String::new();
    for round in 1..=rounds() {
        let mut order = DRIVERS;
        if round % 2 == 0 {
            order.reverse();
        }
        for (label, skip) in order {
            let mut guest = GuestConfig::new(&format!("kblk-{label}-{round}"), GuestKind::Pv, GuestKernel::Rxen612)
                .with_ramdisk(&initrd)
                .with_disk("format=raw,vdev=xvdb,access=rw,target=/var/lib/rxen/bench/kb.img")
                .with_cmdline(&format!("rxen_skip={skip} rxen_drv={label} rxen_round={round}"));
            guest.memory_mib = 512;
            guest.vcpus = 2;
            let g = h.xl_create(&guest)?;
            let done = h.wait_guest_line(&g, "RXEN-FIO done", Duration::from_secs(u64::from(seconds) * 10 + 300))?;
            log::info!("{}: {}", g.name, done.line);
            let text = h.guest_console(&g.name)?;
            let bound = if label == "rust" { "RXEN-FIO bound-to vbd_rs" } else { "RXEN-FIO bound-to vbd\n" };
            if !text.replace('\r', "").contains(bound) || text.contains("RXEN-FIO missing") {
                return Err(xen_harness::Error::Check(format!("{}: the {label} driver did not take xvdb", g.name)));
            }
            console.push_str(&text);
            let _ = h.xl_destroy(&g.name);
        }
    }
    Ok(fio::rows(&console, &fio::JOBS, "drv", str::to_owned))
}

fn print_table(rows: &Rows, seconds: u32) {
    println!(
        "\nguest block frontends, same patched 6.12 PV guest, Linux blkback, same fio jobs ({seconds} s each, median of {} rounds), a {SIZE_MIB} MiB image on a dom0 tmpfs:",
        rounds()
    );
    println!("  {:<20} {:>10} {:>10} {:>8}", "job", "Rust", "C", "Rust/C");
    let mut met = true;
    for (job, _, mbps) in fio::JOBS {
        let get = |d: &str| fio::median(rows, job, d);
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
