//! Baseline on the real Xen test host, with Xen's own tools and Linux's own
//! PV drivers only: what the project's components are measured against.
//!
//! One host boot serves every check, run in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use xen_harness::cpio::Archive;
use xen_harness::{
    project_binary, GuestConfig, GuestKernel, GuestKind, HostConfig, Result, XenHost,
};
use xen_scenarios::{ensure, boot, init_logging, xenstore_clients_match_golden, Figures};

/// Time allowed for guests to reach userspace (software emulation, two
/// guests sharing two host CPUs with dom0).
const GUEST_UP: Duration = Duration::from_secs(300);

/// The project's platform check, run in dom0 and in guests (built by
/// `cargo build --release --workspace --bins`).
const CHECK_BIN: &str = "rxen-platform-check";

// Boots Xen under QEMU: run by `make test-xen` (release, after `make
// xen-host`); `make test-unit` excludes this crate.
#[test]
fn baseline_with_xens_own_tools() {
    init_logging();
    let suite = Instant::now();
    let mut figures = Figures::default();
    let config = HostConfig::new("baseline")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary(CHECK_BIN)
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");

    let mut failures = Vec::new();
    let mut check = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    };
    let r = host.scenario(
        "Xen's xenstore-* clients against Xen's C xenstored give the golden answers",
        xenstore_clients_match_golden,
    );
    check("xenstore clients golden", r);
    let r = host.scenario(
        "xl: 6.1 PVH with blkback disk and 6.12 PV with netback vif",
        |h| two_kernels_side_by_side(h, &mut figures),
    );
    check("two kernels side by side", r);
    let r = host.scenario("project's Linux platform between dom0 and 6.12 PV / 6.1 PVH guests", |h| {
        project_platform_between_dom0_and_guests(h, &mut figures)
    });
    check("project platform between dom0 and guests", r);

    match host.triple_faults() {
        Ok(n) => figures.note(
            "guest triple faults (emulation; restarted by xl)",
            n.to_string(),
        ),
        Err(e) => failures.push(format!("xl dmesg: {e}")),
    }
    if let Err(e) = host.shutdown() {
        failures.push(format!("shutdown: {e}"));
    }
    figures.record("whole suite", suite.elapsed());
    println!("\nbaseline figures:\n{}", figures.table());
    assert!(
        failures.is_empty(),
        "failed checks:\n{}",
        failures.join("\n")
    );
}

/// `xl create` a PVH guest on Debian's 6.1 cloud kernel, with a disk
/// served by dom0's in-kernel blkback, and a PV guest on the 6.12 cloud
/// kernel, with a vif on dom0's bridge served by netback; both reach
/// userspace and report the packaged kernel; the disk reads back known
/// data; dom0 reaches the PV guest over the network; `xl list` shows both;
/// `xl destroy` removes them.
fn two_kernels_side_by_side(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let pvh = GuestConfig::new("base-pvh-61", GuestKind::Pvh, GuestKernel::Linux61)
        .with_test_disk("xvdb")
        .hold();
    let pv = GuestConfig::new("base-pv-612", GuestKind::Pv, GuestKernel::Linux612)
        .with_network("192.168.200.2/24")
        .hold();
    let want_sha = h.manifest().guest_disk_sha256()?.to_owned();

    // Act
    let g_pvh = h.xl_create(&pvh)?;
    let g_pv = h.xl_create(&pv)?;
    let up = h.wait_guest_lines(
        &[
            (&g_pvh, "RXEN-GUEST-UP release="),
            (&g_pv, "RXEN-GUEST-UP release="),
        ],
        GUEST_UP,
    )?;
    let disk = h.wait_guest_line(&g_pvh, "RXEN-DISK-", Duration::from_secs(120))?;
    let backend = h.run_ok(
        "domid=$(xl domid base-pvh-61)\n\
         xenstore-read /local/domain/0/backend/vbd/$domid/51728/state\n\
         ls /sys/bus/xen-backend/devices/ | grep \"^vbd-$domid-51728$\"\n",
    )?;
    h.wait_guest_line(&g_pv, "RXEN-NET-UP eth0", Duration::from_secs(120))?;
    let ping = h.run_with(
        "busybox ping -c 3 -W 5 192.168.200.2",
        &[],
        Duration::from_secs(60),
    )?;
    let listed = h.xl_list()?;

    // Assert
    for (g, line) in [&g_pvh, &g_pv].into_iter().zip(&up) {
        let release = xen_harness::host::release_of(&line.line);
        ensure(
            release == g.release,
            format!("{} runs {release}, expected {}", g.name, g.release),
        )?;
        figures.record(
            &format!("{} create to userspace", g.name),
            line.since_create,
        );
    }
    ensure(
        disk.line == format!("RXEN-DISK-SHA256 xvdb {want_sha}"),
        format!(
            "the blkback disk read back {:?}, expected sha256 {want_sha}",
            disk.line
        ),
    )?;
    ensure(
        backend.lines().next() == Some("4"),
        format!("blkback's vbd is not connected (state, device): {backend:?}"),
    )?;
    ensure(
        ping.success() && ping.stdout.contains("3 packets received"),
        format!("dom0 cannot ping the PV guest through netback: {ping:?}"),
    )?;
    for name in ["base-pvh-61", "base-pv-612"] {
        ensure(
            listed.iter().any(|d| d.name == name),
            format!("xl list lacks {name}: {listed:?}"),
        )?;
    }

    h.xl_destroy(&g_pvh.name)?;
    h.xl_destroy(&g_pv.name)?;
    let after = h.xl_list()?;
    ensure(
        after.iter().all(|d| d.name == "Domain-0"),
        format!("guests remain after xl destroy: {after:?}"),
    )?;
    Ok(())
}

/// The project's Linux platform against real Xen, from both ends at once:
/// `rxen-platform-check guest` runs in a PV 6.12 guest and in a PVH 6.1
/// guest while `rxen-platform-check dom0` runs in dom0 for each. Between
/// them an event channel is bound and notified both ways, dom0 maps the
/// guest's granted page and sees its data, a read-only grant cannot be
/// mapped writable, and xenstore reads, writes, transactions and watches go
/// through the project's client (over the xenstored socket in dom0, over
/// `/dev/xen/xenbus` in the guests).
fn project_platform_between_dom0_and_guests(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let mut overlay = Archive::new();
    overlay.host_file(&format!("/rxen/bin/{CHECK_BIN}"), &project_binary(CHECK_BIN)?, 0o755)?;
    overlay.file(
        "/rxen/guest.d/10-platform-check",
        0o755,
        format!("#!/bin/sh\n{CHECK_BIN} guest\n").as_bytes(),
    );
    let initrd = h.guest_initrd_with("platform-check", overlay)?;
    let guests = [
        GuestConfig::new("check-pv-612", GuestKind::Pv, GuestKernel::Linux612).with_ramdisk(&initrd),
        GuestConfig::new("check-pvh-61", GuestKind::Pvh, GuestKernel::Linux61).with_ramdisk(&initrd),
    ];

    // Act
    let mut running = Vec::new();
    for cfg in &guests {
        let guest = h.xl_create(cfg)?;
        let job = h.spawn(&format!("{CHECK_BIN} dom0 --name {} --timeout 240", guest.name))?;
        running.push((guest, job));
    }
    let mut results = Vec::new();
    for (guest, job) in &running {
        // Collect both halves before judging, so that a failure shows both.
        let in_guest = h.wait_guest_line(guest, "RXEN-CHECK guest ", GUEST_UP);
        let in_dom0 = h.wait_job(job, GUEST_UP)?;
        results.push((guest, in_guest, in_dom0));
    }

    // Assert
    for (guest, in_guest, in_dom0) in results {
        let dom0_said = format!(
            "dom0 half (status {}):\n{}{}",
            in_dom0.status, in_dom0.stdout, in_dom0.stderr
        );
        let in_guest = match in_guest {
            Ok(line) => line,
            Err(e) => return Err(xen_harness::Error::Check(format!("{}: {e}\n{dom0_said}", guest.name))),
        };
        ensure(
            in_guest.line.trim_end().ends_with("RXEN-CHECK guest PASS"),
            format!(
                "{} ({}): the guest half said {:?}\n{dom0_said}",
                guest.name, guest.release, in_guest.line
            ),
        )?;
        ensure(
            in_dom0.success() && in_dom0.stdout.contains("RXEN-CHECK dom0 PASS"),
            format!("{}: the dom0 half failed\n{dom0_said}", guest.name),
        )?;
        for step in [
            "xenstore write/read/mkdir/directory/get_perms/transaction/rm",
            "guest is ready (seen through a watch)",
            "mapped the guest's writable grant and read its data",
            "mapping the read-only grant writable was refused",
            "event from the guest received",
        ] {
            ensure(
                in_dom0.stdout.contains(step),
                format!("{}: dom0 did not report {step:?}\n{dom0_said}", guest.name),
            )?;
        }
        figures.record(
            &format!("{} create to platform check passed", guest.name),
            in_guest.since_create,
        );
    }
    // on_poweroff=destroy: the guests go away by themselves.
    for (guest, _) in &running {
        let gone = h.run_ok(&format!(
            "for i in $(seq 1 600); do xl domid {0} >/dev/null 2>&1 || {{ echo gone; exit 0; }}; sleep 0.1; done",
            guest.name
        ))?;
        ensure(gone.trim() == "gone", format!("{} did not go away after powering off", guest.name))?;
    }
    Ok(())
}
