//! rxenstored in place of Xen's xenstore daemon on the real Xen test host:
//! dom0's init starts it as it would start `xenstored`, and Xen's own
//! tools, dom0's kernel (backends) and Linux guests use it. Xen's
//! `xenstore-*` clients give the answers Xen's C daemon gave
//! (`golden/xenstore-clients.*`, also checked in `baseline.rs`), and a
//! guest can neither touch other domains' nodes nor starve dom0 and other
//! guests by flooding (`rxen-platform-check xs-probe`).
//!
//! One host boot serves every check, run in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use xen_harness::cpio::Archive;
use xen_harness::{
    project_binary, GuestConfig, GuestKernel, GuestKind, HostConfig, Result, XenHost,
};
use xen_scenarios::{ensure, boot, init_logging, xenstore_clients_match_golden, Figures};

/// Time allowed for guests to reach userspace (software emulation).
const GUEST_UP: Duration = Duration::from_secs(300);
/// The project's probe binary, put into the probe guest's initramfs.
const CHECK_BIN: &str = "rxen-platform-check";

// Boots Xen under QEMU: run by `make test-xen` (release, after `make
// xen-host`); `make test-unit` excludes this crate.
#[test]
fn rxenstored_replaces_xens_daemon() {
    init_logging();
    let suite = Instant::now();
    let mut figures = Figures::default();
    let config = HostConfig::new("rxenstored")
        .expect("the Xen test host is built (make xen-host)")
        .with_rxenstored()
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots with rxenstored");

    let mut failures = Vec::new();
    let mut check = |name: &str, r: Result<()>| {
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    };
    let r = host.scenario("dom0's control plane came up on rxenstored", control_plane);
    check("control plane", r);
    let r = host.scenario(
        "Xen's xenstore-* clients answer as with Xen's C xenstored",
        xenstore_clients_match_golden,
    );
    check("same answers", r);
    let r = host.scenario(
        "xl: 6.12 PV and 6.1 PVH guests with PV devices through rxenstored",
        |h| guests(h, &mut figures),
    );
    check("guests", r);
    let r = host.scenario("a guest is isolated and its flood is contained", |h| {
        isolation(h, &mut figures)
    });
    check("isolation", r);
    let r = host.scenario("xl destroy removes the guests", destroy_all);
    check("destroy", r);
    let r = host.scenario("Xen's test-xenstore against rxenstored", |h| {
        test_xenstore(h, &mut figures)
    });
    check("test-xenstore", r);
    if !failures.is_empty() {
        if let Ok(log) = host.run("tail -n 60 /var/log/xen/rxenstored.log") {
            failures.push(format!("rxenstored's log:\n{}", log.stdout));
        }
    }
    if let Err(e) = host.shutdown() {
        failures.push(format!("shutdown: {e}"));
    }
    figures.record("whole suite", suite.elapsed());
    println!("\nrxenstored figures:\n{}", figures.table());
    assert!(
        failures.is_empty(),
        "failed checks:\n{}",
        failures.join("\n")
    );
}

/// The daemon running is ours, with the pid file Xen's init asked for;
/// `xen-init-dom0` wrote dom0's nodes through it; `xenconsoled` runs;
/// `xenstore-control` reaches its CONTROL commands.
fn control_plane(h: &mut XenHost) -> Result<()> {
    let out = h.run_ok(
        "cat /proc/$(cat /var/run/xenstored.pid)/comm\n\
         xenstore-read /local/domain/0/name\n\
         pidof xenconsoled >/dev/null && echo xenconsoled-running\n\
         xenstore-control quota\n",
    )?;
    let lines: Vec<&str> = out.lines().collect();
    ensure(
        lines.first() == Some(&"rxenstored"),
        format!("the pid file names {:?}, not rxenstored", lines.first()),
    )?;
    ensure(
        lines.get(1) == Some(&"Domain-0"),
        format!("xen-init-dom0 did not name dom0: {out:?}"),
    )?;
    ensure(
        lines.get(2) == Some(&"xenconsoled-running"),
        format!("xenconsoled is not running: {out:?}"),
    )?;
    ensure(
        out.contains("nodes"),
        format!("xenstore-control quota did not list quotas: {out:?}"),
    )?;
    Ok(())
}

/// `xl create` a PV guest on the 6.12 kernel with a netback vif and a PVH
/// guest on the 6.1 kernel with a blkback disk; both reach userspace,
/// their devices connect (dom0's kernel backends talk to rxenstored over
/// dom0's ring, the guests over theirs); `xl list` shows them. They keep
/// running for [`isolation`]; [`destroy_all`] removes them.
fn guests(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let pv = GuestConfig::new("rxs-pv-612", GuestKind::Pv, GuestKernel::Linux612)
        .with_network("192.168.200.2/24")
        .hold();
    let pvh = GuestConfig::new("rxs-pvh-61", GuestKind::Pvh, GuestKernel::Linux61)
        .with_test_disk("xvdb")
        .hold();
    let want_sha = h.manifest().guest_disk_sha256()?.to_owned();

    // Act
    let g_pv = h.xl_create(&pv)?;
    let g_pvh = h.xl_create(&pvh)?;
    let up = h.wait_guest_lines(
        &[
            (&g_pv, "RXEN-GUEST-UP release="),
            (&g_pvh, "RXEN-GUEST-UP release="),
        ],
        GUEST_UP,
    )?;
    let disk = h.wait_guest_line(&g_pvh, "RXEN-DISK-", Duration::from_secs(120))?;
    let net = h.wait_guest_line(&g_pv, "RXEN-NET-UP eth0", Duration::from_secs(120))?;
    let listed = h.xl_list()?;

    // Assert
    for (g, line) in [&g_pv, &g_pvh].into_iter().zip(&up) {
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
        net.line.starts_with("RXEN-NET-UP eth0"),
        format!("netfront: {:?}", net.line),
    )?;
    for name in ["rxs-pv-612", "rxs-pvh-61"] {
        ensure(
            listed.iter().any(|d| d.name == name),
            format!("xl list lacks {name}: {listed:?}"),
        )?;
    }
    Ok(())
}

/// `xl destroy` removes every guest.
fn destroy_all(h: &mut XenHost) -> Result<()> {
    for d in h.xl_list()? {
        if d.name != "Domain-0" {
            h.xl_destroy(&d.name)?;
        }
    }
    let after = h.xl_list()?;
    ensure(
        after.iter().all(|d| d.name == "Domain-0"),
        format!("guests remain after xl destroy: {after:?}"),
    )
}

/// Node quota while the probe floods (nodes a guest may own).
const PROBE_NODE_QUOTA: u32 = 300;

/// A guest cannot read or write dom0's or another guest's nodes, and a
/// guest flooding its own `data/` gets a quota error while dom0 and the
/// other guest (`rxs-pv-612`, still running) keep working.
fn isolation(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let start = Instant::now();
    let other = h.domid("rxs-pv-612")?;
    let mut overlay = Archive::new();
    overlay.host_file(
        &format!("/rxen/bin/{CHECK_BIN}"),
        &project_binary(CHECK_BIN)?,
        0o755,
    )?;
    overlay.file(
        "/rxen/guest.d/10-xs-probe",
        0o755,
        format!("#!/bin/sh\n{CHECK_BIN} xs-probe --other {other} --limit 5000\n").as_bytes(),
    );
    let initrd = h.guest_initrd_with("xs-probe", overlay)?;
    let probe = GuestConfig::new("rxs-probe", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .hold();
    let quota_before = h.run_ok("xenstore-control quota")?;

    // Act
    let g = h.xl_create(&probe)?;
    // After xl create has written the guest's nodes, before its userspace runs.
    h.run_ok(&format!("xenstore-control quota nodes {PROBE_NODE_QUOTA}"))?;
    let end = h.wait_guest_line(&g, "RXEN-XS-PROBE END", GUEST_UP);
    let console = h.guest_console(&g.name)?;
    let dom0 = h.run_ok(&format!(
        "xenstore-write /local/domain/0/rxen-after-flood yes\n\
         xenstore-read /local/domain/0/rxen-after-flood\n\
         xenstore-read /local/domain/{other}/name\n\
         xenstore-write /local/domain/{other}/data/from-dom0 still-fine\n\
         xenstore-read /local/domain/{other}/data/from-dom0\n\
         xenstore-rm /local/domain/0/rxen-after-flood\n"
    ))?;
    restore_node_quota(h, &quota_before)?;

    // Assert
    let end = end.map_err(|e| {
        xen_harness::Error::Check(format!("the probe did not finish: {e}\n{console}"))
    })?;
    figures.record("rxs-probe create to probe done", end.since_create);
    let said: Vec<&str> = console
        .lines()
        .filter_map(|l| {
            l.split_once("RXEN-XS-PROBE ")
                .map(|(_, rest)| rest.trim_end())
        })
        .collect();
    log::info!("the probe said: {said:#?}");
    for want in [
        "read /local/domain/0/name EACCES".to_owned(),
        "write /local/domain/0/rxen-probe EACCES".to_owned(),
        format!("read /local/domain/{other}/name EACCES"),
        format!("write /local/domain/{other}/data/rxen-probe EACCES"),
    ] {
        ensure(
            said.contains(&want.as_str()),
            format!("the probe did not report {want:?}: {said:?}"),
        )?;
    }
    let flood = said
        .iter()
        .find(|l| l.starts_with("flood "))
        .ok_or_else(|| xen_harness::Error::Check(format!("no flood result: {said:?}")))?;
    ensure(
        flood.starts_with("flood ENOSPC after "),
        format!("flooding its data/ did not end in a quota error: {flood:?}"),
    )?;
    ensure(
        dom0.lines().collect::<Vec<_>>() == ["yes", "rxs-pv-612", "still-fine"],
        format!("dom0 after the flood: {dom0:?}"),
    )?;
    figures.record("isolation scenario", start.elapsed());
    Ok(())
}

/// Puts the node quota back to what `xenstore-control quota` listed.
fn restore_node_quota(h: &mut XenHost, listed: &str) -> Result<()> {
    let nodes = listed
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nodes")).then(|| w.next_back()).flatten()
        })
        .ok_or_else(|| xen_harness::Error::Check(format!("no nodes quota in {listed:?}")))?;
    h.run_ok(&format!("xenstore-control quota nodes {nodes}"))?;
    Ok(())
}

/// Xen's own xenstore test suite (`test-xenstore` from xen-utils-4.17).
fn test_xenstore(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    let start = Instant::now();
    let out = h.run_with(
        "/usr/lib/xen-4.17/bin/test-xenstore 2>&1",
        &[],
        Duration::from_secs(120),
    )?;
    figures.record("test-xenstore", start.elapsed());
    log::info!("test-xenstore said:\n{}", out.stdout);
    ensure(
        out.status == 0,
        format!(
            "test-xenstore failed (status {}):\n{}",
            out.status, out.stdout
        ),
    )
}
