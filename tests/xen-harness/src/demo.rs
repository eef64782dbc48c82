//! `rxen-demo`: boots the test host with the project's xenstore and console
//! daemons in place of Xen's, starts a 6.1 PVH guest and a 6.12 PV guest
//! with `rxl create` (the project's toolstack and domain builder), each
//! with a disk served by rblkback and a vif served by rnetback, shows
//! `rxl list` beside Xen's `xl list`, the kernel each guest reports, its
//! disk and its network, and shuts everything down, printing how long each
//! part took.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::guest::{GuestConfig, GuestKind};
use crate::host::{release_of, HostConfig, XenHost};
use crate::manifest::GuestKernel;

/// Time allowed for the two guests to reach userspace.
const GUEST_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the demo, writing its report to `out`.
pub fn run(config: HostConfig, out: &mut dyn Write) -> Result<()> {
    let total = Instant::now();
    let w = |out: &mut dyn Write, s: String| {
        writeln!(out, "{s}").map_err(Error::io("writing the demo's output"))
    };
    w(
        out,
        format!(
            "Booting Xen {} with a Debian dom0 under QEMU (software emulation)...",
            config.manifest.xen_version()?
        ),
    )?;
    let config = config
        .with_rxenstored()?
        .with_rxconsoled()?
        .with_project_binary("rxl")?
        .with_project_binary("rblkback")?
        .with_project_binary("rnetback")?;
    let mut host = XenHost::boot(config)?;
    w(out, format!(
        "dom0 ({}) ready after {:.1} s (QEMU start to rxenstored, rxconsoled and the agent running)",
        host.dom0_release(),
        host.timings().dom0_ready.as_secs_f64()
    ))?;

    let result = host.scenario("demo", |h| {
        let want = h.manifest().guest_disk_sha256()?.to_owned();
        let plans = [
            ("demo-pvh-61", GuestKind::Pvh, GuestKernel::Linux61, "192.168.200.81"),
            ("demo-pv-612", GuestKind::Pv, GuestKernel::Linux612, "192.168.200.82"),
        ];
        let mut guests = Vec::new();
        for (name, kind, kernel, ip) in plans {
            let config = GuestConfig::new(name, kind, kernel)
                .with_test_disk("xvdb")
                .with_network(&format!("{ip}/24"))
                .hold();
            guests.push(h.create_with(&config, "rxl")?);
        }
        let waits: Vec<_> = guests.iter().map(|g| (g, "RXEN-GUEST-UP release=")).collect();
        let lines = h.wait_guest_lines(&waits, GUEST_UP_TIMEOUT)?;
        let waits: Vec<_> = guests.iter().map(|g| (g, "RXEN-DISK-SHA256 xvdb")).collect();
        let disks = h.wait_guest_lines(&waits, GUEST_UP_TIMEOUT)?;
        let waits: Vec<_> = guests.iter().map(|g| (g, "RXEN-NET-UP eth0")).collect();
        h.wait_guest_lines(&waits, GUEST_UP_TIMEOUT)?;
        let mut pings = Vec::new();
        for (_, _, _, ip) in plans {
            pings.push(h.run_ok(&format!(
                "busybox ping -c 3 -W 5 {ip} | tail -n 1"
            ))?);
        }
        let list = h.run_ok("rxl list")?;
        let xl_list = h.xl_list_text()?;
        let daemons = h.run_ok(
            "ps -o pid,args | grep -E 'rxenstored|rxconsoled|rblkback|rnetback' | grep -v grep",
        )?;
        Ok((guests, lines, disks, pings, list, xl_list, daemons, plans, want))
    });
    let (guests, lines, disks, pings, list, xl_list, daemons, plans, want) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = host.shutdown();
            return Err(e);
        }
    };

    w(out, "\n$ rxl list".to_owned())?;
    w(out, list.trim_end().to_owned())?;
    w(out, "\n$ xl list   # Xen's own tool sees rxl's domains".to_owned())?;
    w(out, xl_list.trim_end().to_owned())?;
    w(out, "\nThe project's daemons and backends in dom0:".to_owned())?;
    w(out, daemons.trim_end().to_owned())?;
    w(out, String::new())?;
    let mut mismatch = None;
    for ((((g, line), disk), ping), (_, kind, _, ip)) in
        guests.iter().zip(&lines).zip(&disks).zip(&pings).zip(plans)
    {
        let seen = release_of(&line.line);
        let disk_ok = disk.line.ends_with(&want);
        w(
            out,
            format!(
                "{:<12} {:<4} uname -r: {:<28} userspace {:.1} s after rxl create\n\
                 {:<17} rblkback disk: known file {}; rnetback vif {ip}: {}",
                g.name,
                format!("{kind:?}").to_uppercase(),
                seen,
                line.since_create.as_secs_f64(),
                "",
                if disk_ok { "intact" } else { "CORRUPT" },
                ping.trim(),
            ),
        )?;
        if seen != g.release {
            mismatch = Some(format!("{} reported {seen}, expected {}", g.name, g.release));
        } else if !disk_ok {
            mismatch = Some(format!("{}: {}", g.name, disk.line));
        }
    }
    for g in &guests {
        host.run_ok(&format!("rxl destroy {}", g.name))?;
    }
    w(
        out,
        "\nDestroyed both guests with rxl; powering the host off.".to_owned(),
    )?;
    host.shutdown()?;
    w(
        out,
        format!("Demo took {:.1} s in all.", total.elapsed().as_secs_f64()),
    )?;
    match mismatch {
        Some(m) => Err(Error::Check(m)),
        None => Ok(()),
    }
}
