//! rnetback, the project's userspace network backend, serving Linux's own
//! xen-netfront on the real Xen test host, and rnetfront, the project's
//! netfront, against Linux's in-kernel netback.
//!
//! - Two PV guests, one on the 6.1 kernel and one on 6.12, each get a vif
//!   from rnetback (a TAP `rvifDOMID.0` on dom0's bridge `xenbr0`, where
//!   dom0 is 192.168.200.1). Each pings dom0 and the other guest, fetches
//!   a 16 MiB file of random data over TCP from dom0 (dom0 to guest: the
//!   receive path) and from the other guest (guest to guest through the
//!   bridge), and serves its own file, which dom0 fetches (guest to dom0:
//!   the transmit path). Every transfer is checked by SHA-256. The 6.12
//!   guest then unbinds netfront from its vif and binds it again: a clean
//!   disconnect and a new connection, which must carry traffic.
//! - A 6.12 PV guest whose vif Linux's netback serves (`xl create` with a
//!   `vif=` line, the kernel's netfront not loaded) runs rnetfront, which
//!   makes the vif a TAP in the guest; the same pings and transfers with
//!   dom0.
//!
//! The 6.1 guest's vif connects while gntalloc's limit on grants is 0, so
//! rnetback copies through plain memory there; the 6.12 guest's through
//! pages dom0 granted to itself: both ways carry the same checks.
//!
//! rnetback's vifs live under their own backend kind (`rvif`), so Linux's
//! netback, loaded in dom0 throughout, never claims them. One host boot
//! serves every check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use xen_harness::cpio::Archive;
use xen_harness::{
    project_binary, GuestConfig, GuestKernel, GuestKind, HostConfig, Result, XenHost,
};
use xen_scenarios::{attach_rnetback, boot, ensure, init_logging, Figures};

/// gntalloc's limit on grants, lowered while the 6.1 guest's vif connects.
const GNTALLOC_LIMIT: &str = "/sys/module/xen_gntalloc/parameters/limit";

/// Time allowed for the guests' network work (software emulation).
const GUEST_DONE: Duration = Duration::from_secs(420);

/// dom0's side: a 16 MiB file of random data served over HTTP on port
/// 8080 from /tmp/www; prints its SHA-256.
const DOM0_SERVE: &str = "set -e; mkdir -p /tmp/www; \
    dd if=/dev/urandom of=/tmp/www/blob bs=1M count=16 2>/dev/null; \
    busybox httpd -p 8080 -h /tmp/www </dev/null >/dev/null 2>&1; sha256sum /tmp/www/blob | cut -d' ' -f1\n";

/// The guests' side, after `eth0` (`$rxen_if`) is up with `$rxen_me`:
/// serve a blob of its own, ping dom0, fetch dom0's blob, then (if
/// `$rxen_peer` is set) wait for the peer, ping it and fetch its blob.
/// Prints `RXEN-NET blob sha256=...` once its file is served and
/// `RXEN-NET done ...` at the end.
const GUEST_NET: &str = r#"
mkdir -p /www; dd if=/dev/urandom of=/www/blob bs=1M count=16 2>/dev/null
httpd -p 8080 -h /www </dev/null >/dev/null 2>&1
echo "RXEN-NET blob sha256=$(sha256sum /www/blob | cut -d' ' -f1) mac=$(cat /sys/class/net/$rxen_if/address)"
ping -c 3 -W 5 192.168.200.1 >/tmp/ping0 2>&1 && p0=ok || { p0=fail; cat /tmp/ping0; }
fetch() { # URL: the SHA-256 of what it serves, after up to 20 tries
    i=0; while [ $i -lt 20 ]; do
        if wget -q -O /tmp/got "$1"; then sha256sum /tmp/got | cut -d' ' -f1; rm -f /tmp/got; return 0; fi
        i=$((i + 1)); sleep 2
    done
    echo none
}
from0=$(fetch http://192.168.200.1:8080/blob)
pp=none; frompeer=none
if [ -n "${rxen_peer:-}" ]; then
    i=0; while ! ping -c 1 -W 2 $rxen_peer >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i + 1)); done
    ping -c 3 -W 5 $rxen_peer >/tmp/pingp 2>&1 && pp=ok || { pp=fail; cat /tmp/pingp; }
    frompeer=$(fetch http://$rxen_peer:8080/blob)
fi
rc=none
if [ "${rxen_reconnect:-0}" = 1 ]; then
    # Unbind netfront from the vif (it closes the connection with the
    # backend), bind it again (a new connection), and use it.
    echo vif-0 >/sys/bus/xen/drivers/vif/unbind; sleep 1
    echo vif-0 >/sys/bus/xen/drivers/vif/bind
    i=0; while [ ! -e /sys/class/net/$rxen_if ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
    ip addr add $rxen_me/24 dev $rxen_if; ip link set $rxen_if up
    ping -c 3 -W 5 192.168.200.1 >/tmp/ping1 2>&1 && rc=ok || { rc=fail; cat /tmp/ping1; }
    [ "$(fetch http://192.168.200.1:8080/blob)" = "$from0" ] || rc=fail
fi
echo "RXEN-NET done ping0=$p0 from0=$from0 pingpeer=$pp frompeer=$frompeer reconnect=$rc"
"#;

/// A guest of the first check: waits for `eth0` (Linux's netfront over
/// rnetback), gives it `$rxen_me`, then [`GUEST_NET`].
fn netfront_script() -> String {
    format!(
        "#!/bin/sh\nrxen_if=eth0\n\
         i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done\n\
         ip link set lo up; ip addr add $rxen_me/24 dev eth0 && ip link set eth0 up\n\
         {GUEST_NET}"
    )
}

/// The rnetfront guest: rnetfront makes vif 0 (Linux's netback) the TAP
/// `rnf0`, then [`GUEST_NET`] on it.
fn rnetfront_script() -> String {
    format!(
        "#!/bin/sh\nrxen_if=rnf0\n\
         echo 65536 >/sys/module/xen_gntalloc/parameters/limit\n\
         rnetfront tap --devid 0 --name rnf0 >/tmp/rnf.log 2>&1 &\n\
         i=0; while [ ! -e /sys/class/net/rnf0 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done\n\
         [ -e /sys/class/net/rnf0 ] || {{ echo \"RXEN-NET done FAIL no rnf0\"; cat /tmp/rnf.log; exit 1; }}\n\
         ip link set lo up; ip addr add $rxen_me/24 dev rnf0 && ip link set rnf0 up\n\
         {GUEST_NET}\ntail -3 /tmp/rnf.log\n"
    )
}

/// Parses `key=value` words of a guest line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or("")
}

// Boots Xen under QEMU: run by `make test-xen` (release, after `make
// xen-host`); `make test-unit` excludes this crate.
#[test]
fn rnetback_serves_linux_netfront() {
    init_logging();
    let suite = Instant::now();
    let mut figures = Figures::default();
    let config = HostConfig::new("rnetback")
        .expect("the Xen test host is built (make xen-host)")
        .with_project_binary("rnetback")
        .expect("project binaries are built (cargo build --release --workspace --bins)");
    let mut host = boot(config, &mut figures).expect("the Xen test host boots");

    let mut failures = Vec::new();
    let r = host.scenario(
        "6.1 and 6.12 PV guests reach dom0 and each other over rnetback vifs on dom0's bridge",
        |h| two_guests(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("two guests: {e}"));
        if let Ok(log) = host.run("tail -n 30 /var/log/xen/rnetback-*.log") {
            failures.push(format!("rnetback logs:\n{}", log.stdout));
        }
    }
    // Warnings pass, but are shown: e.g. a packet rnetback found published
    // in part and waited for.
    if let Ok(out) = host.run("grep -h ' WARN \\| ERROR ' /var/log/xen/rnetback-*.log || true") {
        for line in out.stdout.lines() {
            log::warn!("rnetback: {line}");
        }
    }
    let r = host.scenario(
        "rnetfront in a 6.12 PV guest's userspace talks to Linux's netback",
        |h| rnetfront_against_netback(h, &mut figures),
    );
    if let Err(e) = r {
        failures.push(format!("rnetfront against netback: {e}"));
    }
    if let Err(e) = host.shutdown() {
        failures.push(format!("shutdown: {e}"));
    }
    figures.record("whole suite", suite.elapsed());
    println!("\nrnetback figures:\n{}", figures.table());
    assert!(
        failures.is_empty(),
        "failed checks:\n{}",
        failures.join("\n")
    );
}

fn two_guests(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let dom0_blob = h.run_ok(DOM0_SERVE)?.trim().to_owned();
    let mut overlay = Archive::new();
    overlay.file("/rxen/guest.d/40-net", 0o755, netfront_script().as_bytes());
    let initrd = h.guest_initrd_with("rnetback", overlay)?;
    let guests = [
        (
            "net-pv-61",
            GuestKernel::Linux61,
            "192.168.200.11",
            "192.168.200.12",
            "00:16:3e:52:00:11",
        ),
        (
            "net-pv-612",
            GuestKernel::Linux612,
            "192.168.200.12",
            "192.168.200.11",
            "00:16:3e:52:00:12",
        ),
    ];

    // Act
    let mut created = Vec::new();
    for (name, kernel, me, peer, mac) in guests {
        // The 6.12 guest also disconnects and reconnects its vif.
        let reconnect = u8::from(kernel == GuestKernel::Linux612);
        let config = GuestConfig::new(name, GuestKind::Pv, kernel)
            .with_ramdisk(&initrd)
            .with_cmdline(&format!(
                "rxen_me={me} rxen_peer={peer} rxen_reconnect={reconnect}"
            ))
            .hold();
        // The 6.1 guest's rnetback finds gntalloc's limit reached when
        // its frontend connects, so its copy buffers are plain memory;
        // the 6.12 guest's are pages granted to dom0 itself.
        let plain = kernel == GuestKernel::Linux61;
        if plain {
            h.run_ok(&format!("cat {GNTALLOC_LIMIT} > /tmp/gntalloc-limit; echo 0 > {GNTALLOC_LIMIT}\n"))?;
        }
        let g = h.xl_create(&config)?;
        // The 6.12 guest's packets reach dom0's stack as by default:
        // those with data through bulk TAP queues and their NAPI threads,
        // acknowledgements in the TAP writes. The 6.1 guest's all in the
        // writes.
        let args = if plain { "--tap-delivery inline" } else { "" };
        attach_rnetback(h, name, 0, mac, "xenbr0", "rvifDOMID.0", args)?;
        if plain {
            let connected = h.run_with(
                &format!(
                    "d=$(xl domid {name}); i=0; while ! grep -q ' -> Connected' /var/log/xen/rnetback-$d-0.log && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done; \
                     cat /tmp/gntalloc-limit > {GNTALLOC_LIMIT}; grep -c ' -> Connected' /var/log/xen/rnetback-$d-0.log\n"
                ),
                &[],
                Duration::from_secs(180),
            )?;
            ensure(connected.stdout.trim() == "1", format!("{name}'s vif did not connect: {connected:?}"))?;
        }
        created.push(g);
    }
    let mut blobs = Vec::new();
    let mut done = Vec::new();
    for g in &created {
        blobs.push(h.wait_guest_line(g, "RXEN-NET blob", GUEST_DONE)?);
    }
    for g in &created {
        done.push(h.wait_guest_line(g, "RXEN-NET done", GUEST_DONE)?);
    }
    // dom0 fetches each guest's blob (the guests' transmit path).
    let mut from_guest = Vec::new();
    for (_, _, me, _, _) in guests {
        let out = h.run_with(
            &format!("busybox wget -q -O - http://{me}:8080/blob | sha256sum | cut -d' ' -f1"),
            &[],
            Duration::from_secs(180),
        )?;
        from_guest.push(out.stdout.trim().to_owned());
    }
    let nodes = h.run_ok(
        "for n in net-pv-61 net-pv-612; do d=$(xl domid $n); \
         echo $(xenstore-read /local/domain/0/backend/rvif/$d/0/state /local/domain/$d/device/vif/0/state); \
         ip -o link show rvif$d.0 | grep -o 'master [a-z0-9]*'; \
         echo connects=$(grep -c ' -> Connected' /var/log/xen/rnetback-$d-0.log); \
         echo plain=$(grep -c 'using plain memory' /var/log/xen/rnetback-$d-0.log); \
         echo waits=$(grep -c 'event channel waits: io_uring' /var/log/xen/rnetback-$d-0.log); \
         echo writers=$(for p in $(pgrep -f -- \"--domid $d --devid 0 \"); do cat /proc/$p/task/*/comm; done | grep -c -- '-tap$'); \
         echo napi=$(cat /sys/class/net/rvif$d.0/threaded)/$(grep -l \"^napi/rvif$d.0-\" /proc/[0-9]*/comm 2>/dev/null | wc -l); done\n",
    )?;
    for g in &created {
        h.xl_destroy(&g.name)?;
    }

    // Assert
    log::info!("dom0 blob {dom0_blob}; nodes {nodes:?}");
    for (((g, blob), line), (_, _, _, _, mac)) in created.iter().zip(&blobs).zip(&done).zip(guests)
    {
        log::info!("{}: {} / {}", g.name, blob.line, line.line);
        figures.record(
            &format!("{} create to network checks done", g.name),
            line.since_create,
        );
        ensure(
            field(&blob.line, "mac") == mac,
            format!("{}: netfront's MAC is not {mac}: {}", g.name, blob.line),
        )?;
        ensure(
            field(&line.line, "ping0") == "ok",
            format!("{} cannot ping dom0: {}", g.name, line.line),
        )?;
        ensure(
            field(&line.line, "from0") == dom0_blob,
            format!(
                "{} fetched dom0's file as {}, dom0 has {dom0_blob}",
                g.name,
                field(&line.line, "from0")
            ),
        )?;
        ensure(
            field(&line.line, "pingpeer") == "ok",
            format!("{} cannot ping the other guest: {}", g.name, line.line),
        )?;
        if g.name == "net-pv-612" {
            ensure(
                field(&line.line, "reconnect") == "ok",
                format!(
                    "{}: after netfront disconnected and reconnected: {}",
                    g.name, line.line
                ),
            )?;
        }
    }
    let sums: Vec<&str> = blobs.iter().map(|b| field(&b.line, "sha256")).collect();
    for (i, g) in created.iter().enumerate() {
        let peer_sum = sums[1 - i];
        ensure(
            field(&done[i].line, "frompeer") == peer_sum,
            format!(
                "{} fetched the other guest's file as {}, it has {peer_sum}",
                g.name,
                field(&done[i].line, "frompeer")
            ),
        )?;
        ensure(
            from_guest[i] == sums[i],
            format!(
                "dom0 fetched {}'s file as {:?}, the guest has {}",
                g.name, from_guest[i], sums[i]
            ),
        )?;
    }
    ensure(
        nodes.lines().filter(|l| l.trim() == "4 4").count() == 2
            && nodes.matches("master xenbr0").count() == 2,
        format!("both vifs Connected with their TAPs on xenbr0: {nodes:?}"),
    )?;
    // The 6.1 guest's queues copied through plain memory (two buffers per
    // queue), the 6.12 guest's through self-granted pages.
    let plain: Vec<&str> = nodes.lines().filter(|l| l.starts_with("plain=")).collect();
    ensure(
        plain.len() == 2 && plain[0] != "plain=0" && plain[1] == "plain=0",
        format!("copy buffers: plain memory for the 6.1 guest only (gntalloc's limit at 0 while it connected): {nodes:?}"),
    )?;
    // Both processes' queue threads sleep through io_uring (one system
    // call a wait; the first handle of a process logs it).
    ensure(
        nodes.lines().filter(|l| l.starts_with("waits=")).collect::<Vec<_>>() == ["waits=1", "waits=1"],
        format!("event channel waits through io_uring in both rnetback processes: {nodes:?}"),
    )?;
    // Each process writes its guest's packets to the TAP from a writer
    // thread per queue (the default), which the transfers above went
    // through.
    let writers: Vec<&str> = nodes.lines().filter(|l| l.starts_with("writers=")).collect();
    ensure(
        writers.len() == 2 && writers.iter().all(|w| w.trim_start_matches("writers=").parse::<u32>().is_ok_and(|n| n >= 1)),
        format!("a TAP writer thread in both rnetback processes: {nodes:?}"),
    )?;
    // The 6.12 guest's TAP has NAPI threads (one per bulk queue of its
    // second connection), the 6.1 guest's none. The transfers above show
    // that the frames for the 6.12 guest were steered to the queues
    // rnetback reads.
    let napi: Vec<&str> = nodes.lines().filter(|l| l.starts_with("napi=")).collect();
    ensure(
        napi.len() == 2
            && napi[0] == "napi=0/0"
            && napi[1].strip_prefix("napi=1/").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1),
        format!("NAPI threads for the 6.12 guest's TAP only: {nodes:?}"),
    )?;
    // The 6.1 guest connected once; the 6.12 guest twice (the reconnect).
    ensure(
        nodes
            .lines()
            .filter(|l| l.starts_with("connects="))
            .collect::<Vec<_>>()
            == ["connects=1", "connects=2"],
        format!("rnetback's connections per guest (6.1: 1, 6.12: 2 with the reconnect): {nodes:?}"),
    )?;
    Ok(())
}

fn rnetfront_against_netback(h: &mut XenHost, figures: &mut Figures) -> Result<()> {
    // Arrange
    let dom0_blob = h
        .run_ok("sha256sum /tmp/www/blob | cut -d' ' -f1\n")?
        .trim()
        .to_owned();
    let mut overlay = Archive::new();
    overlay.host_file("/rxen/bin/rnetfront", &project_binary("rnetfront")?, 0o755)?;
    overlay.file("/rxen/guest.d/40-net", 0o755, rnetfront_script().as_bytes());
    let initrd = h.guest_initrd_with("rnetfront", overlay)?;
    let me = "192.168.200.21";
    let mac = "00:16:3e:52:00:21";
    let mut guest = GuestConfig::new("rnf-pv-612", GuestKind::Pv, GuestKernel::Linux612)
        .with_ramdisk(&initrd)
        .with_cmdline(&format!("rxen_me={me} rxen_skip=xen-netfront"))
        .hold();
    guest.vifs.push(format!("bridge=xenbr0,mac={mac}"));

    // Act
    let g = h.xl_create(&guest)?;
    let blob = h.wait_guest_line(&g, "RXEN-NET blob", GUEST_DONE)?;
    let line = h.wait_guest_line(&g, "RXEN-NET done", GUEST_DONE)?;
    let from_guest = h.run_with(
        &format!("busybox wget -q -O - http://{me}:8080/blob | sha256sum | cut -d' ' -f1"),
        &[],
        Duration::from_secs(180),
    )?;
    let backend = h.run_ok(
        "d=$(xl domid rnf-pv-612); xenstore-read /local/domain/0/backend/vif/$d/0/state; \
         ls /sys/bus/xen-backend/devices/ | grep \"^vif-$d-0$\"\n",
    )?;
    h.xl_destroy(&g.name)?;

    // Assert
    log::info!("{} / {}; netback: {backend:?}", blob.line, line.line);
    figures.record(
        "rnf-pv-612 create to network checks done",
        line.since_create,
    );
    ensure(
        field(&blob.line, "mac") == mac,
        format!("rnetfront's TAP has not the vif's MAC {mac}: {}", blob.line),
    )?;
    ensure(
        field(&line.line, "ping0") == "ok",
        format!("rnetfront: cannot ping dom0: {}", line.line),
    )?;
    ensure(
        field(&line.line, "from0") == dom0_blob,
        format!(
            "rnetfront: fetched dom0's file as {}, dom0 has {dom0_blob}",
            field(&line.line, "from0")
        ),
    )?;
    let sum = field(&blob.line, "sha256");
    ensure(
        from_guest.stdout.trim() == sum,
        format!(
            "dom0 fetched the rnetfront guest's file as {:?}, the guest has {sum}",
            from_guest.stdout.trim()
        ),
    )?;
    ensure(
        backend.lines().next() == Some("4") && backend.contains("vif-"),
        format!("Linux's netback serves the vif, Connected: {backend:?}"),
    )?;
    Ok(())
}
