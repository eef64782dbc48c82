//! The project's guest kernel (kernel-patches/: Debian's 6.12 with the
//! Rust Xen abstractions and the Rust block frontend `xen_blkfront_rs`) on
//! the real Xen test host, beside a stock Debian 6.1 guest.
//!
//! - The patched kernel boots as a PV guest with its Rust blkfront (the C
//!   `xen-blkfront` module is not loaded). The Rust driver takes a disk
//!   from the project's rblkback and one from Linux's in-kernel blkback:
//!   on each, the guest makes ext4, writes and reads back data, passes
//!   `fio --verify` for sequential and random writes, and fsck; `fstrim`
//!   sends discards through it to both backends.
//! - `xl block-detach` takes the blkback disk away from the guest and
//!   `xl block-attach` gives it back: the guest finds its data again.
//! - The Rust driver's disks hang under their xenbus devices in sysfs.
//! - Misbehaving backends (`rogue-blkback`), one disk each: a response
//!   with an id the frontend never used, and a response index past the
//!   requests in flight, each stop that disk's ring; a status that is not
//!   blkif's fails the request. Each is logged, reads from those disks fail,
//!   and the guest and its other disks carry on.
//! - The same patched kernel with the C `xen-blkfront` instead serves the
//!   same check, so both drivers of the series work side by side.
//! - The patched kernel also boots as a PVH guest, whose Rust blkfront
//!   reads the host's test disk (read-only, Linux's blkback).
//!
//! One host boot serves every check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use xen_harness::cpio::Archive;
use xen_harness::{GuestConfig, GuestKernel, GuestKind, HostConfig, Result, XenHost};
use xen_scenarios::{attach_rblkback, attach_rogue_blkback, boot, ensure, init_logging, Figures, BLK_CHECK_SCRIPT};

/// Time for guests to boot and finish their disk work (software emulation).
const GUEST_DONE: Duration = Duration::from_secs(600);
/// xvdb .. xvdf as Xen's virtual device numbers.
const XVDB: u32 = 51728;
const XVDD: u32 = 51760;
const XVDE: u32 = 51776;
const XVDF: u32 = 51792;

/// After the disk checks: `fstrim` on each writable disk's ext4 (discard
/// requests through the frontend to the backend), which xenbus driver each
/// vbd is bound to, and the Rust driver's connect lines.
const DRIVER_SCRIPT: &str = r#"#!/bin/sh
for spec in $rxen_blk; do
    n=${spec%%:*}
    mount -t ext4 /dev/$n /mnt/$n || continue
    fstrim -v /mnt/$n >/tmp/trim.log 2>&1; r=$?
    umount /mnt/$n
    echo "RXEN-GK fstrim $n rc=$r $(cat /tmp/trim.log)"
done
for drv in vbd vbd_rs; do
    [ -d /sys/bus/xen/drivers/$drv ] || continue
    echo "RXEN-GK bound $drv: $(ls /sys/bus/xen/drivers/$drv | grep '^vbd-' | tr '\n' ' ')"
done
dmesg | grep -E 'xen_blkfront_rs|: [0-9]+ sectors of' | sed 's/^/RXEN-GK dmesg /'
# The Rust driver's disk hangs under its xenbus device.
[ -e /sys/bus/xen/drivers/vbd_rs/vbd-51728 ] && echo "RXEN-GK parent xvdb $(readlink /sys/block/xvdb/device)"
# Where its completion interrupts come: the Rust driver's interrupts per
# CPU (all its disks; only xvdb is busy) around reads from each CPU in
# turn. With 32 small reads in flight they move to the other CPU
# ("irq-deep"); one at a time, after 100 to let them move back, 300 reads
# are answered on the submitting CPU ("irq-cpu").
irq_counts() { grep ' blkif-rs$' /proc/interrupts | awk '{c0 += $2; c1 += $3} END {print c0 + 0, c1 + 0}'; }
if [ -e /sys/bus/xen/drivers/vbd_rs/vbd-51728 ]; then
    for cpu in 0 1; do
        a=$(irq_counts)
        fio --name=deep --filename=/dev/xvdb --rw=randread --bs=4k --direct=1 --ioengine=io_uring \
            --iodepth=32 --size=64M --number_ios=8000 --cpus_allowed=$cpu --minimal >/dev/null 2>&1
        b=$(irq_counts)
        echo "RXEN-GK irq-deep $cpu $a $b"
        fio --name=settle --filename=/dev/xvdb --rw=randread --bs=4k --direct=1 --ioengine=psync \
            --size=16M --number_ios=100 --cpus_allowed=$cpu --minimal >/dev/null 2>&1
        a=$(irq_counts)
        fio --name=irq --filename=/dev/xvdb --rw=randread --bs=4k --direct=1 --ioengine=psync \
            --size=16M --number_ios=300 --cpus_allowed=$cpu --minimal >/dev/null 2>&1
        b=$(irq_counts)
        echo "RXEN-GK irq-cpu $cpu $a $b"
    done
fi
"#;

/// Detach and re-attach (`rxen_reattach=NAME`): the guest records the
/// checksum of the data the check script left, waits for the disk to go
/// and come back, and checks the data again.
const REATTACH_SCRIPT: &str = r#"#!/bin/sh
[ -n "$rxen_reattach" ] || exit 0
n=$rxen_reattach; dev=/dev/$n
mkdir -p /mnt/$n
mount -t ext4 -o ro $dev /mnt/$n && before=$(sha256sum /mnt/$n/data | cut -d' ' -f1); umount /mnt/$n
echo "RXEN-GK detach-ready $n sha256=$before"
i=0; while [ -b $dev ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
if [ -b $dev ]; then echo "RXEN-GK still-there $n"; else echo "RXEN-GK gone $n"; fi
i=0; while [ ! -b $dev ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done
after=
mount -t ext4 -o ro $dev /mnt/$n && after=$(sha256sum /mnt/$n/data | cut -d' ' -f1); umount /mnt/$n
echo "RXEN-GK back $n sha256=$after"
"#;

/// Rogue backends (`rxen_rogue="NAME ..."`): a read of each fails, the
/// driver logged what it refused, and a good disk (`rxen_good`) still reads.
const ROGUE_SCRIPT: &str = r#"#!/bin/sh
[ -n "$rxen_rogue" ] || exit 0
for n in $rxen_rogue; do
    dev=/dev/$n
    i=0; while [ ! -b $dev ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b $dev ]; then echo "RXEN-GK rogue $n missing"; continue; fi
    if dd if=$dev of=/dev/null bs=4096 count=1 2>/dev/null; then r=ok; else r=failed; fi
    echo "RXEN-GK rogue $n read=$r"
done
echo "RXEN-GK rogue-log unknown-id=$(dmesg | grep -c 'unknown id.*ring stopped') unknown-status=$(dmesg | grep -c 'unknown status') overrun=$(dmesg | grep -c 'past the .* requests in flight')"
dmesg | grep -E 'unknown id|unknown status|requests in flight' | head -n 6 | sed 's/^/RXEN-GK dmesg /'
if dd if=/dev/$rxen_good of=/dev/null bs=1M count=4 2>/dev/null; then r=ok; else r=failed; fi
echo "RXEN-GK after-rogue $rxen_good read=$r"
"#;

// Boots Xen under QEMU: run by `make test-xen` (release, after `make
// xen-host`, which builds the guest kernel); `make test-unit` excludes
// this crate.
#[test]
fn patched_guest_kernel_runs_the_rust_blkfront() {
    init_logging();
    let suite = Instant::now();
    let mut figures = Figures::default();
    let config = HostConfig::new("guest-kernel")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary("rblkback")
        .and_then(|c| c.with_project_binary("rogue-blkback"))
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");

    let mut failures = Vec::new();
    let r = host.scenario(
        "the patched 6.12 kernel's Rust blkfront serves rblkback and blkback disks beside a stock 6.1 guest; \
         detach and re-attach; rogue backends are refused",
        |h| rust_blkfront(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("Rust blkfront: {e}"));
        if let Ok(log) = host.run("tail -n 30 /var/log/xen/rblkback-*.log /var/log/xen/rogue-blkback-*.log") {
            failures.push(format!("backend logs:\n{}", log.stdout));
        }
    }
    if let Err(e) = host.shutdown() {
        failures.push(format!("shutdown: {e}"));
    }
    figures.record("whole suite", suite.elapsed());
    println!("\nguest kernel figures:\n{}", figures.table());
    assert!(failures.is_empty(), "failed checks:\n{}", failures.join("\n"));
}

/// The `RXEN-BLK ` and `RXEN-GK ` lines of a console.
fn said(console: &str, tag: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|l| l.split_once(tag).map(|(_, r)| r.trim_end().to_owned()))
        .collect()
}

fn rust_blkfront(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange: empty images for the Rust driver (one per backend) and the
    // C driver, the guest scripts, and three guests.
    let release = h.manifest().guest_release(GuestKernel::Rxen612)?.to_owned();
    let want_known = h.manifest().guest_disk_sha256()?.to_owned();
    h.run_ok(
        "set -e; mkdir -p /var/lib/rxen\n\
         truncate -s 128M /var/lib/rxen/gk-r.img /var/lib/rxen/gk-k.img /var/lib/rxen/gk-c.img\n",
    )?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/20-blk", 0o755, BLK_CHECK_SCRIPT.as_bytes());
    overlay.file("/rxen/guest.d/30-driver", 0o755, DRIVER_SCRIPT.as_bytes());
    overlay.file("/rxen/guest.d/40-reattach", 0o755, REATTACH_SCRIPT.as_bytes());
    overlay.file("/rxen/guest.d/50-rogue", 0o755, ROGUE_SCRIPT.as_bytes());
    let initrd = h.guest_initrd_with("gk", overlay)?;
    let mut rust = GuestConfig::new("gk-rust", GuestKind::Pv, GuestKernel::Rxen612)
        .with_ramdisk(&initrd)
        .with_disk("format=raw,vdev=xvdc,access=rw,target=/var/lib/rxen/gk-k.img")
        .with_cmdline("rxen_skip=xen-blkfront rxen_blk=\"xvdb:rw xvdc:rw\" rxen_reattach=xvdc")
        .with_cmdline("rxen_rogue=\"xvdd xvde xvdf\" rxen_good=xvdb")
        .hold();
    rust.vcpus = 2;
    let c = GuestConfig::new("gk-c", GuestKind::Pv, GuestKernel::Rxen612)
        .with_ramdisk(&initrd)
        .with_cmdline("rxen_skip=xen_blkfront_rs rxen_blk=xvdb:rw")
        .hold();
    let stock = GuestConfig::new("gk-stock61", GuestKind::Pv, GuestKernel::Linux61)
        .with_test_disk("xvdb")
        .hold();
    let pvh = GuestConfig::new("gk-pvh", GuestKind::Pvh, GuestKernel::Rxen612)
        .with_test_disk("xvdb")
        .with_cmdline("rxen_skip=xen-blkfront")
        .hold();

    // Act: boot all three; the project's backends join as the toolstack
    // would add them.
    let start = Instant::now();
    let g_rust = h.xl_create(&rust)?;
    let g_c = h.xl_create(&c)?;
    let g_stock = h.xl_create(&stock)?;
    let g_pvh = h.xl_create(&pvh)?;
    attach_rblkback(h, &g_rust.name, XVDB, "/var/lib/rxen/gk-r.img", "")?;
    attach_rogue_blkback(h, &g_rust.name, XVDD, "bad-id")?;
    attach_rogue_blkback(h, &g_rust.name, XVDE, "bad-status")?;
    attach_rogue_blkback(h, &g_rust.name, XVDF, "overrun")?;
    attach_rblkback(h, &g_c.name, XVDB, "/var/lib/rxen/gk-c.img", "")?;
    let up = h.wait_guest_lines(
        &[
            (&g_rust, "RXEN-GK detach-ready"),
            (&g_c, "RXEN-GUEST-RC 20-blk"),
            (&g_stock, "RXEN-DISK-SHA256"),
            (&g_pvh, "RXEN-DISK-SHA256"),
        ],
        GUEST_DONE,
    )?;
    figures.record("four guests' disk checks done", start.elapsed());
    for line in &up {
        log::info!("{}", line.line);
    }
    let t = Instant::now();
    h.run_ok(&format!("xl block-detach {} xvdc", g_rust.name))?;
    h.wait_guest_line(&g_rust, "RXEN-GK gone xvdc", Duration::from_secs(120))?;
    figures.record("block-detach to the disk gone in the guest", t.elapsed());
    let t = Instant::now();
    h.run_ok(&format!(
        "xl block-attach {} format=raw,vdev=xvdc,access=rw,target=/var/lib/rxen/gk-k.img",
        g_rust.name
    ))?;
    h.wait_guest_line(&g_rust, "RXEN-GK back xvdc", Duration::from_secs(120))?;
    figures.record("block-attach to the data read again", t.elapsed());
    h.wait_guest_line(&g_rust, "RXEN-GUEST-RC 50-rogue", Duration::from_secs(180))?;

    let rust_console = h.guest_console(&g_rust.name)?;
    let c_console = h.guest_console(&g_c.name)?;
    let stock_console = h.guest_console(&g_stock.name)?;
    let rust_blk = said(&rust_console, "RXEN-BLK ");
    let rust_gk = said(&rust_console, "RXEN-GK ");
    let c_blk = said(&c_console, "RXEN-BLK ");
    let c_gk = said(&c_console, "RXEN-GK ");
    log::info!("Rust driver guest: {rust_blk:#?}\n{rust_gk:#?}\nC driver guest: {c_blk:#?}\n{c_gk:#?}");

    // Assert: the patched kernel is the one running, next to stock 6.1.
    ensure(
        rust_console.contains(&format!("RXEN-GUEST-UP release={release}")),
        format!("the Rust driver guest runs {release}"),
    )?;
    ensure(
        stock_console.contains(&format!("RXEN-DISK-SHA256 xvdb {want_known}")),
        "the stock 6.1 guest beside it reads its test disk".to_owned(),
    )?;
    let pvh_console = h.guest_console(&g_pvh.name)?;
    ensure(
        pvh_console.contains(&format!("RXEN-GUEST-UP release={release}"))
            && pvh_console.contains(&format!("RXEN-DISK-SHA256 xvdb {want_known}"))
            && pvh_console.contains("xen_blkfront_rs")
            && pvh_console.contains("RXEN-GUEST skipping module xen-blkfront"),
        "the patched kernel boots PVH and its Rust blkfront reads the test disk".to_owned(),
    )?;
    // The Rust driver took the vbds and the C driver did not; in the other
    // guest, the reverse.
    let bound = |gk: &[String], drv: &str| -> String {
        gk.iter()
            .find_map(|l| l.strip_prefix(&format!("bound {drv}: ")))
            .unwrap_or("")
            .to_owned()
    };
    ensure(
        bound(&rust_gk, "vbd_rs").contains("vbd-51728") && bound(&rust_gk, "vbd").is_empty(),
        format!("in gk-rust the vbds are bound to vbd_rs only: {rust_gk:?}"),
    )?;
    ensure(
        bound(&c_gk, "vbd").contains("vbd-51728") && bound(&c_gk, "vbd_rs").is_empty(),
        format!("in gk-c the vbd is bound to the C vbd driver only: {c_gk:?}"),
    )?;
    // ext4, data, fio --verify and fsck on both backends through the Rust
    // driver, and on rblkback through the C one.
    for (said, name, who) in [
        (&rust_blk, "xvdb", "Rust driver, rblkback"),
        (&rust_blk, "xvdc", "Rust driver, Linux blkback"),
        (&c_blk, "xvdb", "C driver, rblkback"),
    ] {
        ensure(
            said.iter().any(|l| l.starts_with(&format!("{name} PASS sha256="))),
            format!("{who}: ext4 data and fsck: {said:?}"),
        )?;
        ensure(
            said.iter().any(|l| l == &format!("{name} FIO seq=0 rand=0 deep=0")),
            format!("{who}: fio --verify: {said:?}"),
        )?;
        ensure(
            said.iter().any(|l| l == &format!("{name} size=262144 ro=0")),
            format!("{who}: a 128 MiB writable disk: {said:?}"),
        )?;
    }
    // Discard: fstrim through both backends (and the C driver's), leaving
    // the data alone.
    for (gk, name, who) in [(&rust_gk, "xvdb", "Rust, rblkback"), (&rust_gk, "xvdc", "Rust, blkback"), (&c_gk, "xvdb", "C, rblkback")] {
        ensure(
            gk.iter().any(|l| l.starts_with(&format!("fstrim {name} rc=0 ")) && l.contains("bytes trimmed")),
            format!("{who}: fstrim on {name}: {gk:?}"),
        )?;
    }
    // The disk's parent is the xenbus device.
    ensure(
        rust_gk.iter().any(|l| l.starts_with("parent xvdb ") && l.ends_with("/vbd-51728")),
        format!("/sys/block/xvdb/device is the xenbus device vbd-51728: {rust_gk:?}"),
    )?;
    // Each queue's interrupt is on a CPU that submits to it while it is
    // kept shallow: 300 reads one at a time from one vCPU, then the other,
    // are answered by interrupts on that vCPU (left where Xen puts them,
    // they may come to the other, which then has to send the submitter an
    // IPI). Kept deep with small requests, it moves to the other vCPU,
    // which then takes the completions beside the busy submitter.
    let counts = |what: &str, cpu: usize| -> Result<(i64, i64)> {
        let n: Vec<i64> = rust_gk
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{what} {cpu} ")))
            .map(|l| l.split_whitespace().filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        ensure(n.len() == 4, format!("{what}: interrupt counts around reads from vCPU {cpu}: {rust_gk:?}"))?;
        Ok((n[2 + cpu] - n[cpu], n[3 - cpu] - n[1 - cpu]))
    };
    // The driver decides where a ring's events go once per window of 64
    // of them, so the first window or two come on the submitter's vCPU
    // before they move (a deep run takes a few hundred).
    const LEARNING: i64 = 2 * 64;
    for cpu in [0usize, 1] {
        let (here, there) = counts("irq-deep", cpu)?;
        ensure(
            there >= 20 && there >= 2 * (here - LEARNING).max(0),
            format!("8000 reads 32 in flight from vCPU {cpu}: {here} interrupts there, {there} on the other vCPU"),
        )?;
        let (here, there) = counts("irq-cpu", cpu)?;
        ensure(
            here >= 250 && there <= here / 10,
            format!("300 reads from vCPU {cpu}: {here} interrupts there, {there} on the other vCPU"),
        )?;
    }
    // Detach and re-attach: the data the check wrote, after fstrim, detach
    // and attach.
    let written = rust_blk
        .iter()
        .find_map(|l| l.strip_prefix("xvdc PASS sha256="))
        .unwrap_or("");
    ensure(
        !written.is_empty()
            && rust_gk.iter().any(|l| l == &format!("detach-ready xvdc sha256={written}"))
            && rust_gk.iter().any(|l| l == &format!("back xvdc sha256={written}")),
        format!("xvdc's data ({written}) after fstrim, detach and re-attach: {rust_gk:?}"),
    )?;
    // Rogue backends: reads fail, the driver said why, the good disk reads.
    for n in ["xvdd", "xvde", "xvdf"] {
        ensure(
            rust_gk.iter().any(|l| l == &format!("rogue {n} read=failed")),
            format!("a read from the rogue backend's {n} must fail: {rust_gk:?}"),
        )?;
    }
    let log_line = rust_gk
        .iter()
        .find(|l| l.starts_with("rogue-log "))
        .cloned()
        .unwrap_or_default();
    let count = |key: &str| -> u32 {
        log_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    ensure(
        count("unknown-id") > 0 && count("unknown-status") > 0 && count("overrun") > 0,
        format!("the Rust driver logs an unknown id, an unknown status and a response index overrun: {log_line:?}"),
    )?;
    ensure(
        rust_gk.iter().any(|l| l == "after-rogue xvdb read=ok"),
        format!("the good disk still reads after the rogue ones: {rust_gk:?}"),
    )?;
    for g in [&g_rust, &g_c, &g_stock, &g_pvh] {
        h.xl_destroy(&g.name)?;
    }
    Ok(())
}
