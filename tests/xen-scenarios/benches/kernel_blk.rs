//! `make bench` on the Xen test host: the project's guest kernel with its
//! Rust block frontend (`xen_blkfront_rs`) against the C `xen-blkfront` of
//! the same kernel, in the same guest, on the same backend
//! (`RXEN_BLK_BENCH_SECONDS` per job, default 4; `RXEN_KBLK_BENCH_ROUNDS`
//! rounds, default 6).
//!
//! A 6.12 PV guest (the patched kernel, 2 vCPUs, 512 MiB) gets two disks of
//! the same size on a dom0 tmpfs, both served by Linux's in-kernel blkback.
//! It loads both frontends with the bus's autoprobe off and binds one disk
//! to the Rust driver (`vbd_rs`) and the other to the C one (`vbd`). The
//! Rust driver binds its queue i interrupt to the CPU whose requests queue
//! i takes by itself, and moves it to the next CPU while the queue is kept
//! deep with small requests (the 4 KiB queue-depth-32 job); the C driver's
//! go where Xen puts them (the vCPU with the fewest ports), and the bench
//! also measures them pinned as the Rust driver first binds its own (a
//! completion on another CPU than the submitter's costs an IPI: 20-35%
//! fewer IOPS at queue depth 1 on this host), so that where Xen happens to
//! place them does not decide the comparison. Both placements are printed. A second guest does the same
//! with the disks swapped (so neither driver always has the same disk, its
//! loop device and blkback threads in dom0); each runs half the rounds. The
//! guest runs the same `fio` jobs on
//! each disk in turn, the order alternating over the rounds: sequential
//! 1 MiB write and read (MB/s, 8 in flight) and 4 KiB random read at queue
//! depth 1 and 32 (IOPS), all O_DIRECT through io_uring. Prints the median
//! of the rounds, the ratio Rust / C (goal >= 1.0 on every line) and in how
//! many rounds the Rust driver was ahead.
//!
//! Development aids: `RXEN_KBLK_JOBS` (job names, comma-separated) runs
//! only those jobs; `RXEN_KBLK_RUST_KO=PATH` loads that `xen_blkfront_rs.ko`
//! (built against the same kernel, e.g. from a kernel tree with the series
//! applied) instead of the host's, and checks the guest got it;
//! `RXEN_KBLK_RUST_VARIANT="SHELL"` adds a fourth variant, the Rust driver
//! after SHELL (see [`rust_variant`]).

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
/// The jobs run: `RXEN_KBLK_JOBS` (names, comma-separated) or all.
fn jobs() -> Vec<fio::Job> {
    let only = std::env::var("RXEN_KBLK_JOBS").unwrap_or_default();
    fio::JOBS.into_iter().filter(|j| only.is_empty() || only.split(',').any(|o| o == j.0)).collect()
}

/// (label, xenbus driver, interrupt name) of each frontend.
const DRIVERS: [(&str, &str, &str); 2] = [("rust", "vbd_rs", "blkif-rs"), ("c", "vbd", "blkif")];
/// What is measured: (driver index, label, shell run before each job):
/// the Rust driver, the C driver with its interrupts where Xen put them
/// (as shipped), and with them pinned as the Rust driver pins its own.
const VARIANTS: [(usize, &str, &str); 3] =
    [(0, "rust", ""), (1, "c", "c_irqs placed\n"), (1, "c-pinned", "c_irqs pinned\n")];

/// `RXEN_KBLK_RUST_VARIANT="SHELL"`: a fourth variant, "rust-var", the Rust
/// driver with SHELL run before each of its jobs (and undone by
/// `rust_default` before the Rust driver's own). SHELL can use `$rdisk`
/// (the Rust driver's disk) and `rust_irqs own|other` (its queue i
/// interrupt on vCPU i, or on the next vCPU). The driver moves its
/// interrupts itself too (on the next event after it decides to), so a
/// variant that moves them measures only until the driver next decides.
fn rust_variant() -> Option<String> {
    std::env::var("RXEN_KBLK_RUST_VARIANT").ok().filter(|s| !s.trim().is_empty())
}

/// The variants measured: `VARIANTS`, and "rust-var" when asked for.
fn variants() -> Vec<(usize, String, String)> {
    let mut v: Vec<_> = VARIANTS.iter().map(|(d, l, p)| (*d, (*l).to_owned(), (*p).to_owned())).collect();
    if let Some(shell) = rust_variant() {
        if let Some(rust) = v.iter_mut().find(|(_, l, _)| l == "rust") {
            rust.2 = "rust_default\n".to_owned();
        }
        v.push((0, "rust-var".to_owned(), format!("{shell}\n")));
    }
    v
}
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
    for (d, (label, drv, irq)) in DRIVERS.iter().enumerate() {
        let (disk, dev) = disk_of(d, g);
        // The Rust driver binds each queue's interrupt to that queue's CPU
        // itself; the C driver's go where Xen puts them. Their placement
        // is kept (cirqs: irq:placed:pinned) for c_irqs to switch between.
        let pin = if *label == "c" {
            "cirqs=\"$cirqs $q:$p:$((n % $(nproc)))\"; ".to_owned()
        } else {
            format!("rdisk={disk}; rirqs=\"$rirqs $q:$p:$(((n + 1) % $(nproc)))\"; ")
        };
        s.push_str(&format!(
            "echo {dev} > /sys/bus/xen/drivers/{drv}/bind\n\
             i=0; while [ ! -b /dev/{disk} ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n\
             [ -b /dev/{disk} ] && [ -e /sys/bus/xen/drivers/{drv}/{dev} ] && echo \"RXEN-FIO bound {disk} {drv}\"\n\
             n=0; for q in $(grep -E ' {irq}$' /proc/interrupts | cut -d: -f1); do \
             p=$(cat /proc/irq/$q/effective_affinity_list); \
             echo \"RXEN-FIO irq {irq} queue $n placed on cpu $p\"; \
             {pin}\
             n=$((n + 1)); done\n"
        ));
    }
    // c_irqs placed|pinned: the C driver's interrupts where Xen put them,
    // or queue i's on vCPU i (where the Rust driver puts its own).
    s.push_str(
        "c_irqs() { for e in $cirqs; do q=${e%%:*}; r=${e#*:}; \
         if [ $1 = placed ]; then c=${r%%:*}; else c=${r#*:}; fi; \
         echo $c > /proc/irq/$q/smp_affinity_list; done; }\n\
         c_irqs pinned; for e in $cirqs; do q=${e%%:*}; \
         echo \"RXEN-FIO irq blkif $q can be pinned to cpu $(cat /proc/irq/$q/effective_affinity_list)\"; done\n",
    );
    // rust_irqs own|other: the Rust driver's interrupts where it put them,
    // or each on the next vCPU; rust_default: as the driver set them.
    s.push_str(
        "rust_irqs() { for e in $rirqs; do q=${e%%:*}; r=${e#*:}; \
         if [ $1 = own ]; then c=${r%%:*}; else c=${r#*:}; fi; \
         echo $c > /proc/irq/$q/smp_affinity_list; done; }\n\
         rust_default() { rust_irqs own; echo 1 > /sys/block/$rdisk/queue/rq_affinity; }\n",
    );
    // irqs NAME: the interrupts so far of the lines named NAME, all CPUs.
    s.push_str("irqs() { grep -E \" $1$\" /proc/interrupts | awk -v n=$(nproc) '{for (i = 2; i <= n + 1; i++) s += $i} END {print s + 0}'; }\n");
    for round in rounds {
        for job in jobs() {
            let mut order = variants();
            if round % 2 == 0 {
                order.reverse();
            }
            for (d, label, pre) in order {
                let (disk, _) = disk_of(d, g);
                let irq = DRIVERS[d].2;
                let labels = format!("drv={label} round={round} disk={disk}");
                s.push_str(&pre);
                s.push_str(&format!("a=$(irqs {irq})\n"));
                s.push_str(&fio::command(&job, &format!("/dev/{disk}"), SIZE_MIB, seconds, &labels));
                s.push_str(&format!("echo \"RXEN-KBLK {labels} job={} irqs=$(($(irqs {irq}) - a))\"\n", job.0));
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
    // Before the host boots, so that a bad path fails at once.
    let ko = rust_ko().expect("RXEN_KBLK_RUST_KO names a readable module");
    let config = HostConfig::new("bench-kernel-blk").expect("the Xen test host is built (make xen-host)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");
    let result = run(&mut host, seconds, ko);
    let _ = host.shutdown();
    let (rows, irqs) = result.expect("the guest kernel block benchmark ran");
    print_table(&rows, &irqs, seconds);
    println!("\nhost figures:\n{}", figures.table());
}

/// A rebuilt Rust driver to load instead of the host's.
struct RustKo {
    path: String,
    bytes: Vec<u8>,
    sha256: String,
}

/// `RXEN_KBLK_RUST_KO=PATH`: measure a rebuilt Rust driver (built against
/// the same kernel) without rebuilding the test host; read once, with the
/// sha256 the guest must report for it.
fn rust_ko() -> xen_harness::Result<Option<RustKo>> {
    let Ok(path) = std::env::var("RXEN_KBLK_RUST_KO") else {
        return Ok(None);
    };
    let check = |what: &str, e: &dyn std::fmt::Display| xen_harness::Error::Check(format!("RXEN_KBLK_RUST_KO={path}: {what}: {e}"));
    let bytes = std::fs::read(&path).map_err(|e| check("read", &e))?;
    let out = std::process::Command::new("sha256sum").arg(&path).output().map_err(|e| check("sha256sum", &e))?;
    let sha256 = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned();
    if sha256.is_empty() {
        return Err(check("sha256sum", &"no digest"));
    }
    Ok(Some(RustKo { path, bytes, sha256 }))
}

/// rows[job][driver] = per-round values.
type Rows = fio::Rows;

/// Each job's results, then the frontend's interrupts in each run.
fn run(h: &mut XenHost, seconds: u32, ko: Option<RustKo>) -> xen_harness::Result<(Rows, Rows)> {
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
        if let Some(ko) = &ko {
            let release = h.manifest().guest_release(GuestKernel::Rxen612)?.to_owned();
            let path = format!("/lib/modules/{release}/kernel/drivers/block/xen_blkfront_rs.ko");
            overlay.file(&path, 0o644, &ko.bytes);
            overlay.file("/rxen/guest.d/39-ko", 0o755, format!("#!/bin/sh\necho \"RXEN-FIO insmod-ko $(sha256sum {path})\"\n").as_bytes());
        }
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
        let jobs = (jobs().len() * variants().len() * range.count()) as u64;
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
        if let Some(ko) = &ko {
            if !text.contains(&format!("RXEN-FIO insmod-ko {} ", ko.sha256)) {
                return Err(xen_harness::Error::Check(format!("{}: the guest did not get {} (sha256 {})", gd.name, ko.path, ko.sha256)));
            }
        }
        console.push_str(&text);
    }
    let mut irqs = Rows::new();
    for line in console.lines().filter_map(|l| l.split_once("RXEN-KBLK ").map(|(_, r)| r)) {
        let kv: std::collections::BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        if let (Some(job), Some(drv), Some(n)) = (kv.get("job"), kv.get("drv"), kv.get("irqs").and_then(|n| n.parse().ok())) {
            irqs.entry((*job).to_owned()).or_default().entry((*drv).to_owned()).or_default().push(n);
        }
    }
    Ok((fio::rows(&console, &fio::JOBS, "drv", str::to_owned), irqs))
}

fn print_table(rows: &Rows, irqs: &Rows, seconds: u32) {
    println!(
        "\nguest block frontends, one patched 6.12 PV guest with a disk for each, Linux blkback, same fio jobs ({seconds} s each, median of {} rounds), {SIZE_MIB} MiB images on a dom0 tmpfs; C: the C driver as shipped (interrupts where Xen put them), C pinned: its queue i interrupt moved to vCPU i by hand, as the Rust driver places its own:",
        rounds()
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>10} {:>8} {:>12}          rounds Rust >= C, C pinned",
        "job", "Rust", "C", "C pinned", "Rust/C", "Rust/pinned"
    );
    let mut met = true;
    for (job, _, mbps) in fio::JOBS {
        let get = |d: &str| fio::median(rows, job, d);
        let (r, c, p) = (get("rust"), get("c"), get("c-pinned"));
        met &= r > 0.0 && r >= c;
        let per_round = |d: &str| rows.get(job).and_then(|x| x.get(d)).cloned().unwrap_or_default();
        let (rr, cc, pp) = (per_round("rust"), per_round("c"), per_round("c-pinned"));
        let ahead = |other: &[f64]| rr.iter().zip(other).filter(|(a, b)| a >= b).count();
        println!(
            "  {job:<20} {r:>10.1} {c:>10.1} {p:>10.1} {:>7.2}x {:>11.2}x   {:<6} {}/{}, {}/{}",
            r / c,
            r / p,
            if mbps { "MB/s" } else { "IOPS" },
            ahead(&cc),
            rr.len().min(cc.len()),
            ahead(&pp),
            rr.len().min(pp.len())
        );
    }
    println!("goal (Rust >= 1.0x C on every line): {}", if met { "met" } else { "NOT met" });
    if let Some(shell) = rust_variant() {
        println!("\nrust-var (the Rust driver after `{}`) against the Rust driver and C pinned, per round:", shell.trim());
        for (job, _, _) in fio::JOBS {
            let per_round = |d: &str| rows.get(job).and_then(|x| x.get(d)).cloned().unwrap_or_default();
            let (v, r, p) = (per_round("rust-var"), per_round("rust"), per_round("c-pinned"));
            if v.is_empty() {
                continue;
            }
            let ratios = |o: &[f64]| v.iter().zip(o).map(|(a, b)| format!("{:.2}", a / b)).collect::<Vec<_>>().join(" ");
            println!(
                "  {job:<20} median {:.1}: {:.2}x Rust ({}), {:.2}x C pinned ({})",
                fio::median(rows, job, "rust-var"),
                fio::median(rows, job, "rust-var") / fio::median(rows, job, "rust"),
                ratios(&r),
                fio::median(rows, job, "rust-var") / fio::median(rows, job, "c-pinned"),
                ratios(&p)
            );
        }
    }
    // Interrupts per I/O (per MB for the MB/s jobs): the medians of the
    // runs' interrupts over their ramp and measured seconds, over the
    // median rate (so approximate: fio's start-up is counted too).
    println!("\nthe frontend's interrupts per I/O (per MB on the MB/s lines), approximate:");
    println!("  {:<20} {:>10} {:>10} {:>10}", "job", "Rust", "C", "C pinned");
    for (job, _, _) in fio::JOBS {
        let per = |d: &str| fio::median(irqs, job, d) / f64::from(seconds + 1) / fio::median(rows, job, d);
        if irqs.contains_key(job) {
            println!("  {job:<20} {:>10.3} {:>10.3} {:>10.3}", per("rust"), per("c"), per("c-pinned"));
        }
    }
}
