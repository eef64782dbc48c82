//! `rxen-demo`: boots the test host, starts a 6.1 PVH guest and a 6.12 PV
//! guest with Xen's `xl`, shows `xl list` and the kernel each guest
//! reports, and shuts everything down, printing how long each part took.

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
    let mut host = XenHost::boot(config)?;
    w(out, format!(
        "dom0 ({}) ready after {:.1} s (QEMU start to xenstored, xenconsoled and the agent running)",
        host.dom0_release(),
        host.timings().dom0_ready.as_secs_f64()
    ))?;

    let result = host.scenario("demo", |h| {
        let plans = [
            ("demo-pvh-61", GuestKind::Pvh, GuestKernel::Linux61),
            ("demo-pv-612", GuestKind::Pv, GuestKernel::Linux612),
        ];
        let mut guests = Vec::new();
        for (name, kind, kernel) in plans {
            guests.push(h.xl_create(&GuestConfig::new(name, kind, kernel).hold())?);
        }
        let waits: Vec<_> = guests
            .iter()
            .map(|g| (g, "RXEN-GUEST-UP release="))
            .collect();
        let lines = h.wait_guest_lines(&waits, GUEST_UP_TIMEOUT)?;
        let list = h.xl_list_text()?;
        Ok((guests, lines, list, plans))
    });
    let (guests, lines, list, plans) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = host.shutdown();
            return Err(e);
        }
    };

    w(out, "\n$ xl list".to_owned())?;
    w(out, list.trim_end().to_owned())?;
    w(out, String::new())?;
    let mut mismatch = None;
    for ((g, line), (_, kind, _)) in guests.iter().zip(&lines).zip(plans) {
        let seen = release_of(&line.line);
        w(
            out,
            format!(
                "{:<12} {:<4} uname -r: {:<28} (expected {}) userspace {:.1} s after xl create",
                g.name,
                format!("{kind:?}").to_uppercase(),
                seen,
                g.release,
                line.since_create.as_secs_f64()
            ),
        )?;
        if seen != g.release {
            mismatch = Some(format!(
                "{} reported {seen}, expected {}",
                g.name, g.release
            ));
        }
    }
    for g in &guests {
        host.xl_destroy(&g.name)?;
    }
    w(
        out,
        "\nDestroyed both guests; powering the host off.".to_owned(),
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
