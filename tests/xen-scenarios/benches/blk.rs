//! `make bench` on the Xen test host: one 6.12 PV guest with three disks of
//! the same size on dom0's tmpfs, served by rblkback (xvdb), Linux's
//! in-kernel blkback (xvdc, `xl` disk with a file target: loop device) and
//! QEMU's qdisk (xvdd, `backendtype=qdisk`). The guest runs the same `fio`
//! jobs on each raw device: sequential 1 MiB write and read (MB/s, 8 in
//! flight) and 4 KiB random read at queue depth 1 and 32 (IOPS), all
//! O_DIRECT through io_uring. Each job runs on the three devices one after
//! the other (so that the figures compared were taken within seconds of
//! each other: this emulated host's speed drifts), the devices' order
//! rotating over the rounds. Prints the median of the rounds and the
//! ratios rblkback / blkback (goal >= 1.0) and rblkback / qdisk (goal >=
//! 1.5).
//!
//! `RXEN_BLK_VARIANT="ARGS"` adds a fourth disk (xvde), served by a second
//! rblkback with those arguments, measured in the same rounds: an A/B of
//! an option in one boot, e.g. `RXEN_BLK_VARIANT="--io sync"`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
use xen_scenarios::{attach_rblkback, boot, fio, init_logging, Figures};

const XVDB: u32 = 51728;
const XVDE: u32 = 51776;
const SIZE_MIB: u32 = 128;
const ROUNDS: usize = 5;
/// (device, backend) in the guest.
const DISKS: [(&str, &str); 4] =
    [("xvdb", "rblkback"), ("xvdc", "blkback"), ("xvdd", "qdisk"), ("xvde", "variant")];
fn guest_script(seconds: u32, variant: bool) -> String {
    let disks = if variant { "xvdb xvdc xvdd xvde" } else { "xvdb xvdc xvdd" };
    let mut s = format!(
        "#!/bin/sh\nfor d in {disks}; do\n  i=0; while [ ! -b /dev/$d ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done\n  [ -b /dev/$d ] || echo \"RXEN-FIO missing $d\"\ndone\n",
    );
    s.push_str(&format!("for round in $(seq {ROUNDS}); do\n"));
    if variant {
        s.push_str("  case $((round % 4)) in 1) order='xvdb xvde xvdc xvdd' ;; 2) order='xvde xvdc xvdd xvdb' ;; 3) order='xvdc xvdd xvdb xvde' ;; *) order='xvdd xvdb xvde xvdc' ;; esac\n");
    } else {
        s.push_str("  case $((round % 3)) in 1) order='xvdb xvdc xvdd' ;; 2) order='xvdc xvdd xvdb' ;; *) order='xvdd xvdb xvdc' ;; esac\n");
    }
    for job in &fio::JOBS {
        s.push_str("  for d in $order; do\n    ");
        s.push_str(&fio::command(job, "/dev/$d", SIZE_MIB, seconds, "dev=$d round=$round"));
        s.push_str("  done\n");
    }
    s.push_str("done\necho RXEN-FIO done\n");
    s
}

fn main() {
    init_logging();
    let seconds = fio::seconds();
    let mut figures = Figures::default();
    let config = HostConfig::new("bench-blk")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary("rblkback")
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");
    let variant = std::env::var("RXEN_BLK_VARIANT").ok();
    let result = run(&mut host, seconds, variant.as_deref());
    if result.is_err() {
        if let Ok(out) = host.run("tail -n 20 /var/log/xen/rblkback-*.log /var/log/xen/qemu-dm-*.log 2>/dev/null") {
            eprintln!("{}", out.stdout);
        }
    }
    let _ = host.shutdown();
    let rows = result.expect("the block benchmark ran");
    print_table(&rows, seconds, variant.as_deref());
    println!("\nhost figures:\n{}", figures.table());
}

/// rows[job][backend] = per-round values.
type Rows = fio::Rows;

fn run(h: &mut XenHost, seconds: u32, variant: Option<&str>) -> xen_harness::Result<Rows> {
    h.run_ok(&format!(
        "set -e; mkdir -p /var/lib/rxen\n\
         mkdir -p /var/lib/rxen/bench\n\
         mountpoint -q /var/lib/rxen/bench || mount -t tmpfs -o size=512M tmpfs /var/lib/rxen/bench\n\
         for b in r k q v; do truncate -s {SIZE_MIB}M /var/lib/rxen/bench/$b.img; done\n"
    ))?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-fio", 0o755, guest_script(seconds, variant.is_some()).as_bytes());
    let initrd = h.guest_initrd_with("bench-blk", overlay)?;
    let mut guest = GuestConfig::new("bench-blk", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .with_disk("format=raw,vdev=xvdc,access=rw,target=/var/lib/rxen/bench/k.img")
        .with_disk("format=raw,vdev=xvdd,access=rw,backendtype=qdisk,target=/var/lib/rxen/bench/q.img")
        .hold();
    guest.memory_mib = 512;
    guest.vcpus = 2;
    let g = h.xl_create(&guest)?;
    attach_rblkback(h, &g.name, XVDB, "/var/lib/rxen/bench/r.img", "")?;
    if let Some(args) = variant {
        attach_rblkback(h, &g.name, XVDE, "/var/lib/rxen/bench/v.img", args)?;
    }
    let disks = if variant.is_some() { 4 } else { 3 };
    let budget = Duration::from_secs(u64::from(seconds) * 4 * disks * ROUNDS as u64 + 600);
    h.wait_guest_line(&g, "RXEN-FIO done", budget)?;
    let console = h.guest_console(&g.name)?;
    let _ = h.xl_destroy(&g.name);

    let backend_of: BTreeMap<&str, &str> = DISKS.into_iter().collect();
    let rows = fio::rows(&console, &fio::JOBS, "dev", |d| backend_of.get(d).copied().unwrap_or(d).to_owned());
    Ok(rows)
}

fn print_table(rows: &Rows, seconds: u32, variant: Option<&str>) {
    println!(
        "\nblock backends, same 6.12 PV guest, same fio jobs ({seconds} s each, median of {ROUNDS} rounds), {SIZE_MIB} MiB images on a dom0 tmpfs:"
    );
    println!(
        "  {:<20} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "job", "rblkback", "blkback", "qdisk", "r/blk", "r/qdisk"
    );
    let mut met = true;
    for (job, _, mbps) in fio::JOBS {
        let get = |b: &str| fio::median(rows, job, b);
        let (r, k, q) = (get("rblkback"), get("blkback"), get("qdisk"));
        met &= r >= k && r >= 1.5 * q;
        println!(
            "  {job:<20} {r:>10.1} {k:>10.1} {q:>10.1} {:>7.2}x {:>7.2}x   {}",
            r / k,
            r / q,
            if mbps { "MB/s" } else { "IOPS" }
        );
    }
    println!(
        "goal (>= 1.0x blkback and >= 1.5x qdisk on every line): {}",
        if met { "met" } else { "NOT met" }
    );
    if let Some(args) = variant {
        println!("\nvariant: a second rblkback with `{args}` (xvde), same rounds:");
        println!("  {:<20} {:>10} {:>10} {:>8}   per round (variant/rblkback)", "job", "rblkback", "variant", "v/r");
        for (job, _, _) in fio::JOBS {
            let (r, v) = (fio::median(rows, job, "rblkback"), fio::median(rows, job, "variant"));
            let per_round: Vec<String> = match (rows.get(job).and_then(|j| j.get("rblkback")), rows.get(job).and_then(|j| j.get("variant"))) {
                (Some(a), Some(b)) => a.iter().zip(b).map(|(a, b)| format!("{:.2}", b / a)).collect(),
                _ => Vec::new(),
            };
            println!("  {job:<20} {r:>10.1} {v:>10.1} {:>7.2}x   {}", v / r, per_round.join(" "));
        }
    }
}
