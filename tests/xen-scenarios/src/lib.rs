//! Scenarios on the real Xen test host live in `tests/*.rs`; each test
//! binary boots the host once and runs its checks one after another
//! (`make test-xen`: `cargo test --release -p xen-scenarios`). This library
//! holds what they share.
//!
//! A new scenario file follows `tests/baseline.rs`: one `#[test]` marked
//! `#[cfg_attr(debug_assertions, ignore = "...")]` (so that the debug
//! `cargo test --workspace` does not boot Xen), which boots a
//! [`HostConfig`] carrying the project binaries it needs and runs checks
//! through [`XenHost::scenario`]. A program in dom0 and its peer in a guest
//! run at the same time like this:
//!
//! ```no_run
//! # use std::time::Duration;
//! # use xen_harness::{cpio::Archive, project_binary, GuestConfig, GuestKernel, GuestKind, HostConfig, XenHost};
//! # fn main() -> xen_harness::Result<()> {
//! let config = HostConfig::new("platform")?.with_project_binary("rxen-platform-check")?;
//! let mut host = XenHost::boot(config)?;
//! let mut overlay = Archive::new();
//! overlay
//!     .host_file("/rxen/bin/rxen-platform-check", &project_binary("rxen-platform-check")?, 0o755)?
//!     .file("/rxen/guest.d/10-check", 0o755, b"#!/bin/sh\nrxen-platform-check guest\n");
//! let initrd = host.guest_initrd_with("check", overlay)?;
//! let guest = host.xl_create(
//!     &GuestConfig::new("check", GuestKind::Pvh, GuestKernel::Linux61).with_ramdisk(&initrd),
//! )?;
//! let dom0 = host.spawn("rxen-platform-check dom0 --name check")?;
//! let in_guest = host.wait_guest_line(&guest, "RXEN-CHECK guest", Duration::from_secs(300))?;
//! let in_dom0 = host.wait_job(&dom0, Duration::from_secs(300))?;
//! assert!(in_guest.line.ends_with("PASS") && in_dom0.stdout.contains("RXEN-CHECK dom0 PASS"));
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, Instant};

pub mod fio;

use xen_harness::{FileSource, HostConfig, Result, XenHost};

/// Sets up logging for a scenario binary (`RUST_LOG` overrides `info`).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .is_test(false)
        .try_init();
}

/// Figures a suite records and prints at its end.
#[derive(Debug, Default)]
pub struct Figures {
    rows: Vec<(String, String)>,
}

impl Figures {
    /// Records a named duration.
    pub fn record(&mut self, what: &str, d: Duration) {
        self.note(what, format!("{:.1} s", d.as_secs_f64()));
    }

    /// Records a named value.
    pub fn note(&mut self, what: &str, value: String) {
        log::info!("figure: {what}: {value}");
        self.rows.push((what.to_owned(), value));
    }

    /// The recorded figures as a table.
    pub fn table(&self) -> String {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        self.rows
            .iter()
            .map(|(k, v)| format!("  {k:<w$}  {v:>9}\n"))
            .collect()
    }
}

/// A failed check with `msg` unless `cond` holds.
pub fn ensure(cond: bool, msg: String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(xen_harness::Error::Check(msg))
    }
}

/// rblkback's backend kind on the test host (`backend/rvbd/...`), so that
/// Linux's in-kernel blkback, which serves `vbd`, never claims its devices.
pub const RBLKBACK_KIND: &str = "rvbd";

/// Attaches a disk served by the project's rblkback to guest `guest`, as
/// `xl block-attach` does for its backends: the backend directory (dom0's,
/// readable by the guest), one `rblkback` process for the device started
/// with `args` (e.g. `--read-only`, `--format qcow2`), logging to
/// `/var/log/xen/rblkback-DOMID-DEVID.log`, then the frontend directory.
pub fn attach_rblkback(h: &mut XenHost, guest: &str, devid: u32, image: &str, args: &str) -> Result<()> {
    let mode = if args.contains("--read-only") { "r" } else { "w" };
    let kind = RBLKBACK_KIND;
    attach_vbd(
        h,
        guest,
        devid,
        image,
        mode,
        &format!("rblkback --kind {kind} --domid $d --devid {devid} --path {image} {args}"),
        "rblkback",
    )
}

/// Attaches to guest `guest` a disk "served" by `rogue-blkback`, the
/// test-only backend that answers every request with responses a frontend
/// must refuse, as `mode` says (`bad-id-and-status`, `overrun`, `bad-id`,
/// `bad-status`; see `rogue-blkback --help`). The directories are
/// [`attach_rblkback`]'s (kind [`RBLKBACK_KIND`], a writable disk whose
/// `params` only names the mode); the process logs each request and its
/// answer to `/var/log/xen/rogue-blkback-DOMID-DEVID.log`, and exits when
/// the frontend closes or the backend directory is removed.
///
/// The binary must be in dom0: boot the host with
/// `HostConfig::with_project_binary("rogue-blkback")` (which takes
/// `target/release/rogue-blkback`: build it with `cargo build --release
/// -p rogue-blkback` first).
pub fn attach_rogue_blkback(h: &mut XenHost, guest: &str, devid: u32, mode: &str) -> Result<()> {
    let kind = RBLKBACK_KIND;
    attach_vbd(
        h,
        guest,
        devid,
        &format!("rogue-blkback:{mode}"),
        "w",
        &format!("rogue-blkback --kind {kind} --domid $d --devid {devid} --mode {mode}"),
        "rogue-blkback",
    )
}

/// What [`attach_rblkback`] and [`attach_rogue_blkback`] share: writes the
/// backend directory of vbd `devid` of guest `guest` (kind
/// [`RBLKBACK_KIND`], with `params` and `mode`), starts `backend` (a shell
/// command line, in which `$d` is the guest's domain id) in the background
/// logging to `/var/log/xen/LOG-DOMID-DEVID.log`, then writes the frontend
/// directory.
fn attach_vbd(
    h: &mut XenHost,
    guest: &str,
    devid: u32,
    params: &str,
    mode: &str,
    backend: &str,
    log: &str,
) -> Result<()> {
    let kind = RBLKBACK_KIND;
    h.run_ok(&format!(
        r#"set -e
d=$(xl domid {guest})
be=/local/domain/0/backend/{kind}/$d/{devid}
fe=/local/domain/$d/device/vbd/{devid}
xenstore-write $be/frontend $fe $be/frontend-id $d $be/online 1 $be/state 1 \
    $be/params {params} $be/mode {mode} $be/device-type disk
xenstore-chmod -r $be n0 r$d
{backend} \
    >/var/log/xen/{log}-$d-{devid}.log 2>&1 &
# The guest owns its frontend directory before anything in it appears
# (new nodes inherit it), and `state` comes last: blkfront probes the
# device when it sees the directory with a state.
xenstore-write $fe ""
xenstore-chmod $fe n$d r0
xenstore-write $fe/backend $be $fe/backend-id 0 $fe/virtual-device {devid} $fe/device-type disk
xenstore-write $fe/state 1
"#
    ))?;
    Ok(())
}

/// A guest's disk check (an overlay script for `/rxen/guest.d/`): waits for each disk named in `rxen_blk` (space
/// separated, `NAME:rw` or `NAME:ro`), then for a writable disk makes
/// ext4, writes 16 MiB of random data, remounts after dropping caches and
/// checks it, and runs fsck; for a read-only disk checks that writing
/// fails and that the test file on it has the expected checksum.
pub const BLK_CHECK_SCRIPT: &str = r#"#!/bin/sh
for spec in $rxen_blk; do
    name=${spec%%:*}; mode=${spec#*:}; dev=/dev/$name
    i=0; while [ ! -b $dev ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i + 1)); done
    if [ ! -b $dev ]; then echo "RXEN-BLK $name FAIL no device"; continue; fi
    echo "RXEN-BLK $name size=$(cat /sys/block/$name/size) ro=$(cat /sys/block/$name/ro)"
    mkdir -p /mnt/$name
    if [ "$mode" = ro ]; then
        if dd if=/dev/zero of=$dev bs=4096 count=1 conv=fsync 2>/dev/null; then w=allowed; else w=refused; fi
        mount -t ext4 -o ro $dev /mnt/$name &&
            sum=$(sha256sum /mnt/$name/rxen/known.bin | cut -d' ' -f1) && umount /mnt/$name
        echo "RXEN-BLK $name RO write=$w sha256=$sum"
        continue
    fi
    mkfs.ext4 -q -F $dev || { echo "RXEN-BLK $name FAIL mkfs"; continue; }
    mount -t ext4 $dev /mnt/$name || { echo "RXEN-BLK $name FAIL mount"; continue; }
    dd if=/dev/urandom of=/mnt/$name/data bs=1M count=16 2>/dev/null
    sum=$(sha256sum /mnt/$name/data | cut -d' ' -f1)
    umount /mnt/$name
    echo 3 >/proc/sys/vm/drop_caches
    mount -t ext4 -o ro $dev /mnt/$name && sum2=$(sha256sum /mnt/$name/data | cut -d' ' -f1)
    umount /mnt/$name
    fsck.ext4 -fn $dev >/dev/null 2>&1; fsck=$?
    # fio on the mounted file system: sequential and random writes, each
    # verified by reading back (crc32c per block); the last keeps 16 in
    # flight (a backend's event moderation holds responses then).
    mount -t ext4 $dev /mnt/$name
    fio --name=seq --filename=/mnt/$name/fio-seq --size=24M --rw=write --bs=1M \
        --direct=1 --ioengine=psync --verify=crc32c --verify_fatal=1 >/tmp/fio-seq.log 2>&1; seq=$?
    fio --name=rand --filename=/mnt/$name/fio-rand --size=8M --rw=randwrite --bs=4k \
        --direct=1 --ioengine=psync --verify=crc32c --verify_fatal=1 >/tmp/fio-rand.log 2>&1; rand=$?
    fio --name=deep --filename=/mnt/$name/fio-deep --size=8M --rw=randwrite --bs=4k \
        --direct=1 --ioengine=io_uring --iodepth=16 --verify=crc32c --verify_fatal=1 >/tmp/fio-deep.log 2>&1; deep=$?
    umount /mnt/$name
    echo "RXEN-BLK $name FIO seq=$seq rand=$rand deep=$deep"
    [ $seq = 0 ] && [ $rand = 0 ] && [ $deep = 0 ] || tail -5 /tmp/fio-seq.log /tmp/fio-rand.log /tmp/fio-deep.log
    if [ "$sum" = "$sum2" ] && [ $fsck = 0 ]; then
        echo "RXEN-BLK $name PASS sha256=$sum"
    else
        echo "RXEN-BLK $name FAIL wrote=$sum read=$sum2 fsck=$fsck"
    fi
done
"#;

/// rnetback's backend kind on the test host (`backend/rvif/...`), so that
/// Linux's in-kernel netback, which serves `vif`, never claims its devices.
pub const RNETBACK_KIND: &str = "rvif";

/// Attaches a vif served by the project's rnetback to guest `guest`, as
/// `xl network-attach` does: the backend directory (dom0's, readable by the
/// guest) with the guest's `mac`, one `rnetback` process for the vif with
/// its TAP `ifname` on dom0's bridge `bridge`, started with `args`, logging
/// to `/var/log/xen/rnetback-DOMID-DEVID.log`, then the frontend directory
/// with the same `mac` (netfront reads its own).
pub fn attach_rnetback(
    h: &mut XenHost,
    guest: &str,
    devid: u32,
    mac: &str,
    bridge: &str,
    ifname: &str,
    args: &str,
) -> Result<()> {
    let kind = RNETBACK_KIND;
    h.run_ok(&format!(
        r#"set -e
d=$(xl domid {guest})
be=/local/domain/0/backend/{kind}/$d/{devid}
fe=/local/domain/$d/device/vif/{devid}
ifname=$(echo {ifname} | sed "s/DOMID/$d/")
xenstore-write $be/frontend $fe $be/frontend-id $d $be/online 1 $be/state 1     $be/mac {mac} $be/handle {devid} $be/type vif $be/bridge {bridge}
xenstore-chmod -r $be n0 r$d
rnetback --kind {kind} --domid $d --devid {devid} --bridge {bridge} --ifname $ifname {args}     >/var/log/xen/rnetback-$d-{devid}.log 2>&1 &
xenstore-write $fe ""
xenstore-chmod $fe n$d r0
xenstore-write $fe/backend $be $fe/backend-id 0 $fe/handle {devid} $fe/mac {mac}
xenstore-write $fe/state 1
"#
    ))?;
    Ok(())
}

/// Puts a perf package into dom0 for profiling (the `netprof` and
/// `blkprof` examples): `pkg/perf` as `/opt/perf/perf` and the libraries
/// in `pkg/lib` under `/opt/perf/lib` (run it with
/// `LD_LIBRARY_PATH=/opt/perf/lib`).
pub fn with_perf(mut config: HostConfig, pkg: &str) -> HostConfig {
    let pkg = std::path::Path::new(pkg);
    config = config.with_dom0_file("/opt/perf/perf", FileSource::Host(pkg.join("perf")), 0o755);
    if let Ok(dir) = std::fs::read_dir(pkg.join("lib")) {
        for path in dir.filter_map(|e| e.ok().map(|e| e.path())) {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                let dest = format!("/opt/perf/lib/{name}");
                config = config.with_dom0_file(&dest, FileSource::Host(path.clone()), 0o755);
            }
        }
    }
    config
}

/// Boots a host for a suite and records its boot time; a boot that times
/// out (dom0 hung) is tried once more.
pub fn boot(config: HostConfig, figures: &mut Figures) -> Result<XenHost> {
    let start = Instant::now();
    let host = match XenHost::boot(config.clone()) {
        // dom0 hung on its way up: seen under emulation, once in a while,
        // with no console output for minutes after ACPI's PnP init (the
        // console's tail was printed). Not a scenario's fault: once more.
        Err(e @ (xen_harness::Error::BootTimeout { .. } | xen_harness::Error::BootStalled { .. })) => {
            log::warn!("{e}; booting the test host once more");
            XenHost::boot(config)?
        }
        other => other?,
    };
    figures.record("QEMU start to dom0 ready", host.timings().dom0_ready);
    log::debug!("boot took {:.1} s", start.elapsed().as_secs_f64());
    Ok(host)
}

/// A fixed script of Xen's `xenstore-*` clients (write, read, list, ls,
/// ls -p, chmod, exists, rm, errors) that dom0 runs against whichever
/// xenstore daemon the host has.
pub const XENSTORE_CLIENTS_SCRIPT: &str = include_str!("../golden/xenstore-clients.sh");

/// What [`XENSTORE_CLIENTS_SCRIPT`] printed against Xen's C `xenstored`
/// (`golden/xenstore-clients.out`).
pub const XENSTORE_CLIENTS_GOLDEN: &str = include_str!("../golden/xenstore-clients.out");

/// Runs [`XENSTORE_CLIENTS_SCRIPT`] in dom0 (stderr merged into stdout)
/// and checks that its output equals [`XENSTORE_CLIENTS_GOLDEN`]; the
/// error names the first line that differs.
pub fn xenstore_clients_match_golden(h: &mut XenHost) -> Result<()> {
    let out = h.run_with(
        &format!("exec 2>&1\n{XENSTORE_CLIENTS_SCRIPT}"),
        &[],
        Duration::from_secs(120),
    )?;
    match first_difference(&out.stdout, XENSTORE_CLIENTS_GOLDEN) {
        None => Ok(()),
        Some(diff) => Err(xen_harness::Error::Check(format!(
            "xenstore-* clients answered differently from Xen's C xenstored: {diff}\nwhole output:\n{}",
            out.stdout
        ))),
    }
}

/// Where `got` first differs from `want`, line by line; `None` if equal.
pub fn first_difference(got: &str, want: &str) -> Option<String> {
    if got == want {
        return None;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let n = g.len().max(w.len());
    (0..n)
        .find(|&i| g.get(i) != w.get(i))
        .map(|i| format!("line {}: got {:?}, expected {:?}", i + 1, g.get(i), w.get(i)))
        .or_else(|| Some("the line ends differ".to_owned()))
}

/// How long a guest's kernel ran before its userspace started, by the
/// guest's own clock: the printk time (`[   5.123456]`) of the last kernel
/// line of `console` before the `RXEN-GUEST-UP` line. No toolstack can
/// bring a guest to userspace faster than this (it is spent after the
/// domain was built and unpaused). `None` without timestamped lines.
pub fn kernel_boot_time(console: &str) -> Option<Duration> {
    let mut last = None;
    for line in console.lines() {
        if line.contains("RXEN-GUEST-UP") {
            return last;
        }
        let stamp = line.trim_start().strip_prefix('[').and_then(|r| r.split_once(']')).map(|(t, _)| t.trim());
        if let Some(secs) = stamp.and_then(|t| t.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0) {
            last = Some(Duration::from_secs_f64(secs));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{first_difference, kernel_boot_time};
    use std::time::Duration;

    #[test]
    fn kernel_boot_time_is_the_last_stamp_before_userspace() {
        // Arrange
        let console = "[    0.000000] Linux version 6.12\n\
                       [    4.250000] Run /init as init process\n\
                       RXEN-GUEST-UP release=6.12\n\
                       [    9.000000] later\n";

        // Act
        let boot = kernel_boot_time(console);
        let none = kernel_boot_time("no stamps\nRXEN-GUEST-UP release=x\n");
        let never_up = kernel_boot_time("[    1.000000] booting\n");

        // Assert
        assert_eq!(boot, Some(Duration::from_millis(4250)));
        assert_eq!(none, None);
        assert_eq!(never_up, None);
    }

    #[test]
    fn first_difference_names_the_line() {
        // Arrange
        let want = "a\nb\nc\n";

        // Act
        let same = first_difference("a\nb\nc\n", want);
        let changed = first_difference("a\nB\nc\n", want);
        let shorter = first_difference("a\nb\n", want);

        // Assert
        assert_eq!(same, None);
        assert_eq!(changed.as_deref(), Some("line 2: got Some(\"B\"), expected Some(\"b\")"));
        assert_eq!(shorter.as_deref(), Some("line 3: got None, expected Some(\"c\")"));
    }
}
