//! rblkback, the project's userspace block backend, serving Linux's own
//! xen-blkfront on the real Xen test host: PV guests with the 6.1 and
//! 6.12 kernels make ext4 on a disk image rblkback serves, write,
//! remount and read back their data; dom0 then finds the same data in the
//! image file. A read-only disk is served read-only. Linux's in-kernel
//! blkback stays loaded in dom0 throughout: rblkback's devices live under
//! their own backend kind, so the two never claim each other's devices.
//!
//! The device nodes are written the way a toolstack writes them
//! (`xl block-attach`): backend and frontend directories with their
//! permissions, then one rblkback process per device.
//!
//! The guests are PV: a PVH guest under QEMU's software emulation of SVM
//! triple-faults now and then, also long after boot (seen mid-`mkfs`),
//! and xl's restart gives it a new domain id that the disks attached here
//! do not follow. PVH guests are covered by the baseline and rxenstored
//! suites.
//!
//! One host boot serves every check, run in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use xen_harness::cpio::Archive;
use xen_harness::{project_binary, GuestConfig, GuestKernel, GuestKind, HostConfig, Result, XenHost};
use xen_scenarios::{attach_rblkback, boot, ensure, init_logging, Figures, BLK_CHECK_SCRIPT, RBLKBACK_KIND};

/// Time allowed for guests to reach userspace and finish their disk work
/// (software emulation).
const GUEST_DONE: Duration = Duration::from_secs(420);
/// rblkback's backend kind: `/local/domain/0/backend/KIND/DOMID/DEVID`.
const KIND: &str = RBLKBACK_KIND;
/// xvdb and xvdc as Xen's virtual device numbers.
const XVDB: u32 = 51728;
const XVDC: u32 = 51744;

/// The suite check's guest side: the shared base is the test disk (ext4
/// with `rxen/known.bin`); each guest writes its own file through its
/// overlay and must see no other guest's.
const SUITE_SCRIPT: &str = r#"#!/bin/sh
dev=/dev/xvdb
i=0; while [ ! -b $dev ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /mnt/s && mount -t ext4 $dev /mnt/s || { echo "RXEN-SUITE FAIL mount"; exit 1; }
known=$(sha256sum /mnt/s/rxen/known.bin | cut -d' ' -f1)
dd if=/dev/urandom of=/mnt/s/mine-$rxen_me bs=1M count=4 2>/dev/null
sum=$(sha256sum /mnt/s/mine-$rxen_me | cut -d' ' -f1)
umount /mnt/s
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 $dev /mnt/s && sum2=$(sha256sum /mnt/s/mine-$rxen_me | cut -d' ' -f1)
others=$(ls /mnt/s | grep '^mine-' | grep -v "^mine-$rxen_me\$" | tr '\n' ' ')
umount /mnt/s
fsck.ext4 -fn $dev >/dev/null 2>&1; fsck=$?
if [ "$sum" = "$sum2" ]; then mine=ok; else mine=bad; fi
echo "RXEN-SUITE known=$known mine=$mine fsck=$fsck others=[$others]"
"#;

/// The restart check's guest side: ext4 on xvdb, then fio writing and
/// verifying while dom0 kills rblkback (SIGKILL) and starts a new one.
const RESTART_SCRIPT: &str = r#"#!/bin/sh
dev=/dev/xvdb
i=0; while [ ! -b $dev ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done
mkfs.ext4 -q -F $dev && mkdir -p /mnt/r && mount -t ext4 $dev /mnt/r || { echo "RXEN-RESTART FAIL setup"; exit 1; }
echo "RXEN-RESTART fio-start"
rc=0
for pass in 1 2 3; do
    fio --name=p$pass --filename=/mnt/r/f$pass --size=16M --rw=randwrite --bs=16k \
        --direct=1 --ioengine=psync --verify=crc32c --verify_fatal=1 >/tmp/fio-$pass.log 2>&1 || { rc=1; tail -5 /tmp/fio-$pass.log; }
done
umount /mnt/r && fsck.ext4 -fn $dev >/dev/null 2>&1 || rc=2
echo "RXEN-RESTART done rc=$rc"
"#;

/// rblkfront's `nbd` mode in the guest, after `check`: the disk becomes
/// /dev/nbd0 (the kernel's NBD driver over a socket pair, rblkfront
/// serving it from the vbd), which gets ext4, a file of random data, a
/// remount and a check, fio with verification, and fsck; then
/// `nbd-disconnect` ends the session and rblkfront exits cleanly.
const NBD_SCRIPT: &str = r#"
rblkfront nbd --devid 51728 --nbd /dev/nbd0 >/tmp/nbd.log 2>&1 &
pid=$!
i=0; while ! grep -q "RBLKFRONT-NBD serving" /tmp/nbd.log && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
rc=0; sum=; sum2=
mkfs.ext4 -q -F /dev/nbd0 && mkdir -p /mnt/n && mount -t ext4 /dev/nbd0 /mnt/n || rc=1
if [ $rc = 0 ]; then
    dd if=/dev/urandom of=/mnt/n/data bs=1M count=8 2>/dev/null
    sum=$(sha256sum /mnt/n/data | cut -d' ' -f1)
    umount /mnt/n; echo 3 >/proc/sys/vm/drop_caches
    mount -t ext4 /dev/nbd0 /mnt/n && sum2=$(sha256sum /mnt/n/data | cut -d' ' -f1)
    [ "$sum" = "$sum2" ] || rc=2
    fio --name=nbd --filename=/mnt/n/fio --size=8M --rw=randwrite --bs=4k --direct=1 \
        --ioengine=psync --verify=crc32c --verify_fatal=1 >/tmp/fio-nbd.log 2>&1 || { rc=3; tail -5 /tmp/fio-nbd.log; }
    umount /mnt/n
    fsck.ext4 -fn /dev/nbd0 >/dev/null 2>&1 || rc=4
fi
sync
rblkfront nbd-disconnect --nbd /dev/nbd0
wait $pid; exit=$?
[ $rc = 0 ] && [ $exit = 0 ] && r=PASS || { r=FAIL; tail -5 /tmp/nbd.log; }
echo "RBLKFRONT-NBD done $r rc=$rc exit=$exit sha256=$sum"
"#;

// Boots Xen under QEMU: run by `make test-xen` (release, after `make
// xen-host`); `make test-unit` excludes this crate.
#[test]
fn rblkback_serves_linux_blkfront() {
    init_logging();
    let suite = Instant::now();
    let mut figures = Figures::default();
    let config = HostConfig::new("rblkback")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary("rblkback")
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");

    let mut failures = Vec::new();
    let r = host.scenario(
        "6.1 and 6.12 PV guests make ext4 on rblkback disks; data reaches the images",
        |h| two_guests(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("two guests: {e}"));
        if let Ok(log) = host.run("tail -n 40 /var/log/xen/rblkback-*.log") {
            failures.push(format!("rblkback logs:\n{}", log.stdout));
        }
    }
    let r = host.scenario(
        "two guests share a read-only suite image, each writing to its own qcow2 overlay",
        |h| suite_with_overlays(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("suite: {e}"));
    }
    let r = host.scenario(
        "a guest's fio verifies its writes while rblkback is killed and restarted",
        |h| restart_under_load(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("restart: {e}"));
    }
    let r = host.scenario(
        "rblkfront in a 6.12 PV guest's userspace reads and writes a disk from Linux's blkback",
        |h| rblkfront_against_blkback(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("rblkfront against blkback: {e}"));
    }
    if let Err(e) = host.shutdown() {
        failures.push(format!("shutdown: {e}"));
    }
    figures.record("whole suite", suite.elapsed());
    println!("\nrblkback figures:\n{}", figures.table());
    assert!(
        failures.is_empty(),
        "failed checks:\n{}",
        failures.join("\n")
    );
}

fn two_guests(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange: an empty image per guest, and the test disk (ext4 with a
    // file of known checksum) served read-only to the 6.1 guest.
    let want_known = h.manifest().guest_disk_sha256()?.to_owned();
    let known_image = xen_harness::dom0_paths::GUEST_DISK;
    h.run_ok(
        "set -e; mkdir -p /var/lib/rxen\n\
         truncate -s 128M /var/lib/rxen/p61.img /var/lib/rxen/pv.img\n",
    )?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/20-blk", 0o755, BLK_CHECK_SCRIPT.as_bytes());
    let initrd = h.guest_initrd_with("blk", overlay)?;
    let p61 = GuestConfig::new("blk-pv-61", GuestKind::Pv, GuestKernel::Linux61)
        .with_ramdisk(&initrd)
        .with_cmdline("rxen_blk=\"xvdb:rw xvdc:ro\"")
        .hold();
    let pv = GuestConfig::new("blk-pv-612", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .with_cmdline("rxen_blk=xvdb:rw")
        .hold();

    // Act
    let start = Instant::now();
    let g_p61 = h.xl_create(&p61)?;
    let g_pv = h.xl_create(&pv)?;
    attach_rblkback(h, &g_p61.name, XVDB, "/var/lib/rxen/p61.img", "")?;
    attach_rblkback(h, &g_p61.name, XVDC, known_image, "--read-only")?;
    attach_rblkback(h, &g_pv.name, XVDB, "/var/lib/rxen/pv.img", "")?;
    let done = h.wait_guest_lines(
        &[
            (&g_p61, "RXEN-GUEST-RC 20-blk"),
            (&g_pv, "RXEN-GUEST-RC 20-blk"),
        ],
        GUEST_DONE,
    )?;
    figures.record("both guests' disk work done", start.elapsed());
    for line in &done {
        log::info!("{}", line.line);
    }
    let p61_console = h.guest_console(&g_p61.name)?;
    let pv_console = h.guest_console(&g_pv.name)?;

    // Assert: each guest's own verdicts...
    let said = |console: &str| -> Vec<String> {
        console
            .lines()
            .filter_map(|l| l.split_once("RXEN-BLK ").map(|(_, r)| r.trim_end().to_owned()))
            .collect()
    };
    let p61_said = said(&p61_console);
    let pv_said = said(&pv_console);
    log::info!("6.1 guest: {p61_said:#?}\n6.12 guest: {pv_said:#?}");
    let pass_sum = |said: &[String], name: &str| -> Result<String> {
        said.iter()
            .find_map(|l| l.strip_prefix(&format!("{name} PASS sha256=")))
            .map(str::to_owned)
            .ok_or_else(|| {
                xen_harness::Error::Check(format!("{name} did not pass: {said:?}"))
            })
    };
    let p61_sum = pass_sum(&p61_said, "xvdb")?;
    let pv_sum = pass_sum(&pv_said, "xvdb")?;
    ensure(
        p61_said.contains(&format!("xvdc RO write=refused sha256={want_known}")),
        format!("read-only xvdc: expected refused writes and sha256 {want_known}: {p61_said:?}"),
    )?;
    for (said, who) in [(&p61_said, "6.1"), (&pv_said, "6.12")] {
        ensure(
            said.iter().any(|l| l == "xvdb FIO seq=0 rand=0 deep=0"),
            format!("fio --verify in the {who} guest: {said:?}"),
        )?;
    }
    ensure(
        p61_said.iter().any(|l| l == "xvdb size=262144 ro=0"),
        format!("xvdb should be 128 MiB (262144 sectors), writable: {p61_said:?}"),
    )?;

    // ...and the data is in dom0's image files.
    let out = h.run_ok(
        "set -e\n\
         for g in p61 pv; do\n\
           mkdir -p /mnt/$g; mount -o loop,ro /var/lib/rxen/$g.img /mnt/$g\n\
           echo $g $(sha256sum /mnt/$g/data | cut -d' ' -f1); umount /mnt/$g\n\
         done\n",
    )?;
    ensure(
        out.contains(&format!("p61 {p61_sum}")) && out.contains(&format!("pv {pv_sum}")),
        format!("dom0 reads other data from the images: {out:?} (guests wrote p61 {p61_sum}, pv {pv_sum})"),
    )?;
    Ok(())
}

/// The project's Rust blkfront, as a program in a guest's userspace (Xen's
/// gntalloc, evtchn and xenbus devices), against a peer it did not come
/// from: Linux's in-kernel blkback, set up by `xl create` from a `disk=`
/// line. The guest does not load its kernel's xen-blkfront, so the vbd is
/// left to the program: it writes a pseudo-random pattern with requests of
/// mixed sizes, flushes, reads it back and verifies it. Then it exposes
/// the disk to the guest's kernel as /dev/nbd0 ([`NBD_SCRIPT`]): ext4,
/// fio and fsck run on it, and dom0 finds the guest's file, byte for
/// byte, in the image blkback served.
fn rblkfront_against_blkback(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    const BYTES: u64 = 32 << 20;
    // dom0's root is a RAM file system shared with the earlier
    // scenarios' images: drop them first, or a guest's writes may find it
    // full (blkback then fails them, as it should).
    let df = h.run_ok(
        "set -e; rm -f /var/lib/rxen/p61.img /var/lib/rxen/pv.img /var/lib/rxen/restart.img \
         /var/lib/rxen/*.qcow2; mkdir -p /var/lib/rxen; truncate -s 64M /var/lib/rxen/kb.img; \
         df -k /var/lib/rxen | tail -n 1\n",
    )?;
    log::info!("dom0 space for the image: {}", df.trim());
    let mut overlay = Archive::new();
    overlay.host_file("/rxen/bin/rblkfront", &project_binary("rblkfront")?, 0o755)?;
    overlay.file(
        "/rxen/guest.d/30-rblkfront",
        0o755,
        // gntalloc lets a process share 1024 pages by default; persistent
        // grants for every ring slot of several queues need more.
        format!(
            "#!/bin/sh\necho 65536 >/sys/module/xen_gntalloc/parameters/limit\n\
             rblkfront check --devid {XVDB} --bytes {BYTES}\n{NBD_SCRIPT}"
        )
        .as_bytes(),
    );
    let initrd = h.guest_initrd_with("rblkfront", overlay)?;
    let guest = GuestConfig::new("rbf-pv-612", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .with_disk("format=raw,vdev=xvdb,access=rw,target=/var/lib/rxen/kb.img")
        .with_cmdline("rxen_skip=xen-blkfront")
        .hold();

    // Act
    let g = h.xl_create(&guest)?;
    let line = h.wait_guest_line(&g, "RBLKFRONT-CHECK", GUEST_DONE)?;
    let nbd = h.wait_guest_line(&g, "RBLKFRONT-NBD done", GUEST_DONE)?;
    let backend = h.run_ok(&format!(
        "d=$(xl domid {name}); xenstore-read /local/domain/0/backend/vbd/$d/{XVDB}/state \
             /local/domain/0/backend/vbd/$d/{XVDB}/feature-persistent\n",
        name = g.name
    ));
    figures.record("rbf-pv-612 create to check done", line.since_create);
    figures.record("rbf-pv-612 create to nbd checks done", nbd.since_create);
    h.xl_destroy(&g.name)?;
    // The file the guest wrote through /dev/nbd0, as dom0 reads it from
    // the image blkback served.
    let in_image = h.run_ok(
        "set -e; mkdir -p /mnt/kb; mount -o ro,loop /var/lib/rxen/kb.img /mnt/kb; \
         sha256sum /mnt/kb/data | cut -d' ' -f1; umount /mnt/kb\n",
    )?;

    // Assert
    log::info!("{}; blkback nodes: {backend:?}", line.line);
    ensure(
        line.line.contains("RBLKFRONT-CHECK PASS"),
        format!("rblkfront against blkback: {}", line.line),
    )?;
    log::info!("{}", nbd.line);
    ensure(
        nbd.line.contains("RBLKFRONT-NBD done PASS"),
        format!("ext4 and fio over rblkfront's NBD device: {}", nbd.line),
    )?;
    let written = nbd.line.split("sha256=").nth(1).unwrap_or("").trim();
    ensure(
        !written.is_empty() && in_image.trim() == written,
        format!("the guest wrote data with sha256 {written:?} through rblkfront; the image holds {:?}", in_image.trim()),
    )?;
    Ok(())
}

/// rblkback's take-over: a guest's ext4 and fio (random writes, each
/// verified) keep working while dom0 kills the backend process with
/// SIGKILL and starts a new one for the same device; the new process finds
/// both ends Connected and serves the running rings, re-running what the
/// old one left unanswered. Linux's blkfront never sees a state change.
fn restart_under_load(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    h.run_ok("set -e; mkdir -p /var/lib/rxen; truncate -s 128M /var/lib/rxen/restart.img\n")?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/20-restart", 0o755, RESTART_SCRIPT.as_bytes());
    let initrd = h.guest_initrd_with("restart", overlay)?;
    let guest = GuestConfig::new("blk-restart", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .hold();

    // Act
    let g = h.xl_create(&guest)?;
    attach_rblkback(h, &g.name, XVDB, "/var/lib/rxen/restart.img", "")?;
    h.wait_guest_line(&g, "RXEN-RESTART fio-start", GUEST_DONE)?;
    let restarts = h.run_ok(&format!(
        r#"set -e
d=$(xl domid {name})
n=0
for round in 1 2; do
    sleep 3
    pid=$(pgrep -f "rblkback --kind {KIND} --domid $d --devid {XVDB} ") || true
    [ -n "$pid" ] || {{ echo "no rblkback to kill"; exit 1; }}
    kill -9 $pid
    while kill -0 $pid 2>/dev/null; do sleep 0.1; done
    rblkback --kind {KIND} --domid $d --devid {XVDB} --path /var/lib/rxen/restart.img \
        >>/var/log/xen/rblkback-$d-{XVDB}.log 2>&1 &
    n=$((n + 1))
done
echo "restarted $n"
xenstore-read /local/domain/0/backend/{KIND}/$d/{XVDB}/state
"#,
        name = g.name
    ))?;
    let done = h.wait_guest_line(&g, "RXEN-RESTART done", GUEST_DONE)?;
    figures.record("blk-restart create to fio done", done.since_create);
    let waits = h.run_ok(&format!(
        "grep -c 'event channel waits: io_uring' /var/log/xen/rblkback-$(xl domid {})-{XVDB}.log || true",
        g.name
    ))?;
    let console = h.guest_console(&g.name)?;
    h.xl_destroy(&g.name)?;

    // Assert
    ensure(
        restarts.lines().next() == Some("restarted 2") && restarts.lines().nth(1) == Some("4"),
        format!("dom0 did not restart rblkback twice with the device connected: {restarts:?}"),
    )?;
    ensure(
        done.line.trim_end().ends_with("RXEN-RESTART done rc=0"),
        format!("the guest's fio/fsck across backend restarts: {}\n{}", done.line, tail_lines(&console, 30)),
    )?;
    ensure(
        !console.contains("I/O error"),
        format!("the guest saw I/O errors:\n{}", tail_lines(&console, 30)),
    )?;
    // Each of the three processes' queue threads slept through io_uring
    // (one system call a wait; the first handle of a process logs it).
    ensure(waits.trim() == "3", format!("io_uring waits logged by the 3 rblkback processes: {waits:?}"))?;
    Ok(())
}

fn tail_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The mission's "suite" layout: one read-only base image (the test disk,
/// ext4 with a file of known checksum) shared by two guests, each served
/// by rblkback from its own qcow2 overlay. The overlays are made by QEMU's
/// `qemu-img` (a peer's tool) on the build machine with the base's dom0
/// path as backing file. Each guest reads the base's file, writes its own,
/// reads it back after a remount and sees nothing of the other's; the base
/// image's checksum in dom0 is unchanged.
fn suite_with_overlays(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let want_known = h.manifest().guest_disk_sha256()?.to_owned();
    let base = xen_harness::dom0_paths::GUEST_DISK;
    let scratch = std::env::temp_dir().join(format!("rxen-suite-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| xen_harness::Error::Check(format!("{e}")))?;
    for name in ["suite-a", "suite-b"] {
        let ov = scratch.join(format!("{name}.qcow2"));
        let _ = std::fs::remove_file(&ov);
        let out = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", base])
            .arg(&ov)
            .arg("32M")
            .output()
            .map_err(|e| xen_harness::Error::Check(format!("qemu-img: {e} (install qemu-utils)")))?;
        ensure(out.status.success(), format!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr)))?;
        let data = std::fs::read(&ov).map_err(|e| xen_harness::Error::Check(format!("{e}")))?;
        h.put_file(&format!("/var/lib/rxen/{name}.qcow2"), &data, 0o644)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let base_before = h.run_ok(&format!("sha256sum {base} | cut -d' ' -f1"))?;
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/20-suite", 0o755, SUITE_SCRIPT.as_bytes());
    let initrd = h.guest_initrd_with("suite", overlay)?;

    // Act
    let start = Instant::now();
    let mut guests = Vec::new();
    for (name, kernel) in [("suite-a", GuestKernel::Linux61), ("suite-b", GuestKernel::Linux612)] {
        let g = h.xl_create(
            &GuestConfig::new(name, GuestKind::Pv, kernel)
                .with_ramdisk(&initrd)
                .with_cmdline(&format!("rxen_me={name}"))
                .hold(),
        )?;
        attach_rblkback(h, name, XVDB, &format!("/var/lib/rxen/{name}.qcow2"), "--format qcow2")?;
        guests.push(g);
    }
    let lines = h.wait_guest_lines(
        &[(&guests[0], "RXEN-SUITE "), (&guests[1], "RXEN-SUITE ")],
        GUEST_DONE,
    )?;
    figures.record("suite guests' overlay work done", start.elapsed());
    let base_after = h.run_ok(&format!("sha256sum {base} | cut -d' ' -f1"))?;
    for g in &guests {
        h.xl_destroy(&g.name)?;
    }

    // Assert
    for (g, line) in guests.iter().zip(&lines) {
        let want = format!("RXEN-SUITE known={want_known} mine=ok fsck=0 others=[]");
        ensure(
            line.line.trim_end().ends_with(&want),
            format!("{}: {:?}, expected {want:?}", g.name, line.line),
        )?;
    }
    ensure(
        !base_before.trim().is_empty() && base_before == base_after,
        format!("the shared base image changed: {base_before:?} -> {base_after:?}"),
    )?;
    Ok(())
}
