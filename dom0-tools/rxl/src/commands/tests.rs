//! The commands against [`FakeHost`]: argument parsing, exact output
//! (checked against C `printf` with xl's format strings), and exit codes.

use clap::Parser;
use serde_json::json;

use super::{run, Cli, Command};
use crate::host::fake::{FakeDomain, FakeHost};
use crate::host::{
    BlockDevice, CpuMap, CpuTopology, DomainEvent, MacAddr, NetworkDevice, NodeInfo, NumaNode,
    PciTopology, ShutdownReason, VirtCaps, WallClock,
};

/// What a command did: exit status, stdout, stderr.
#[derive(Debug)]
struct Outcome {
    code: u8,
    out: String,
    err: String,
}

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("rxl").chain(args.iter().copied())).unwrap()
}

fn rxl(host: &mut FakeHost, args: &[&str]) -> Outcome {
    let cli = parse(args);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run(&cli, host, &mut out, &mut err);
    Outcome {
        code,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

/// dom0, a paused guest (5) with a disk and a NIC, and a crashed one (7).
fn host() -> FakeHost {
    let mut host = FakeHost::new();

    let mut guest = FakeDomain::new(5, "guest", 512, 2);
    guest.info.state.paused = true;
    guest.info.cpu_time_ns = 12_345_678_901;
    guest.config = Some(json!({"c_info": {"type": "pv", "name": "guest"}, "disks": []}));
    guest.start_time = Some(1_000_000 - 90_061);
    guest.disks.push(BlockDevice {
        devid: 51712,
        vdev: Some("xvda".into()),
        backend_id: 0,
        frontend_id: 5,
        state: Some(4),
        evtch: Some(12),
        ring_ref: Some(8),
        backend_path: "/local/domain/0/backend/vbd/5/51712".into(),
    });
    guest.nics.push(NetworkDevice {
        devid: 0,
        backend_id: 0,
        mac: MacAddr([0x00, 0x16, 0x3e, 0x00, 0x00, 0x01]),
        state: Some(4),
        evtch: Some(14),
        tx_ring_ref: Some(768),
        rx_ring_ref: Some(769),
        backend_path: "/local/domain/0/backend/vif/5/0".into(),
    });
    guest.vcpus[0].cpu = 1;
    guest.vcpus[0].time_ns = 3_000_000_000;
    guest.vcpus[1].online = false;
    guest.vcpus[1].hard_affinity = CpuMap::from_cpus([0, 1, 3]);
    host.add(guest);

    let mut crashed = FakeDomain::new(7, "crashed", 256, 1);
    crashed.info.state.blocked = false;
    crashed.info.state.shutdown = Some(ShutdownReason::Crash);
    crashed.info.cpu_time_ns = 500_000_000;
    crashed.info.ssid_label = Some("system_u:system_r:domU_t".into());
    host.add(crashed);

    host.clock = WallClock {
        epoch_secs: 1_000_000,
        hour: 12,
        minute: 34,
        second: 56,
    };
    host.dom0_uptime = 3725;
    host
}

const LIST_HEADER: &str =
    "Name                                        ID   Mem VCPUs\tState\tTime(s)";
const DOM0_ROW: &str =
    "Domain-0                                     0  2048     4     r-----       0.0";
const GUEST_ROW: &str =
    "guest                                        5   512     2     -bp---      12.3";
const CRASHED_ROW: &str =
    "crashed                                      7   256     1     ---sc-       0.5";

// Argument parsing.

#[test]
fn parses_list_long() {
    let cli = parse(&["list", "-l"]);

    let Command::List(args) = cli.command else {
        panic!("not list: {cli:?}")
    };
    assert!(args.long && args.domains.is_empty());
}

#[test]
fn parses_mem_set_with_a_unit() {
    let cli = parse(&["mem-set", "dom", "512m"]);

    let Command::MemSet(args) = cli.command else {
        panic!("not mem-set: {cli:?}")
    };
    assert_eq!((args.domain.as_str(), args.size.as_str()), ("dom", "512m"));
}

#[test]
fn parses_shutdown_wait_once_and_twice() {
    let Command::Shutdown(once) = parse(&["shutdown", "-w", "guest"]).command else {
        panic!("not shutdown")
    };
    let Command::Reboot(twice) = parse(&["reboot", "-ww", "-a"]).command else {
        panic!("not reboot")
    };

    assert_eq!(
        (once.wait, once.all, once.domain.as_deref()),
        (1, false, Some("guest"))
    );
    assert_eq!((twice.wait, twice.all, twice.domain), (2, true, None));
}

#[test]
fn parses_create_with_overrides_and_global_dry_run() {
    let cli = parse(&[
        "-N",
        "create",
        "-p",
        "-c",
        "guest.cfg",
        "memory=512",
        "name=\"x\"",
    ]);

    let Command::Create(args) = cli.command else {
        panic!("not create: {cli:?}")
    };
    assert!(cli.dry_run && args.paused && args.console);
    assert_eq!(args.args, ["guest.cfg", "memory=512", "name=\"x\""]);
}

#[test]
fn parses_xl_long_options_and_names() {
    assert!(
        matches!(parse(&["vcpu-set", "--ignore-host", "g", "8"]).command, Command::VcpuSet(a) if a.ignore_host)
    );
    assert!(
        matches!(parse(&["console", "-t", "serial", "-n", "1", "g"]).command, Command::Console(a) if a.kind.as_deref() == Some("serial"))
    );
    assert!(
        matches!(parse(&["block-detach", "-f", "g", "xvdb"]).command, Command::BlockDetach(a) if a.force)
    );
    assert!(matches!(parse(&["dmesg", "--clear"]).command, Command::Dmesg(a) if a.clear));
    assert!(
        matches!(parse(&["uptime", "-s", "a", "b"]).command, Command::Uptime(a) if a.short && a.domains.len() == 2)
    );
    assert!(matches!(
        parse(&["-vv", "vm-list"]),
        Cli {
            verbose: 2,
            command: Command::VmList,
            ..
        }
    ));
}

#[test]
fn usage_errors_exit_2_like_xl() {
    for args in [
        &["list", "-x"][..],
        &["block-list"],
        &["network-list"],
        &["mem-set", "guest"],
        &["pause"],
        &["frobnicate"],
    ] {
        let err =
            Cli::try_parse_from(std::iter::once("rxl").chain(args.iter().copied())).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

// list

#[test]
fn list_prints_xl_table() {
    let mut host = host();

    let r = rxl(&mut host, &["list"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        format!("{LIST_HEADER}\n{DOM0_ROW}\n{GUEST_ROW}\n{CRASHED_ROW}\n")
    );
    assert_eq!(r.err, "");
}

#[test]
fn list_verbose_adds_uuid_reason_and_label() {
    let mut host = host();

    let r = rxl(&mut host, &["list", "-v"]);

    assert_eq!(
        r.out,
        "Name                                        ID   Mem VCPUs\tState\tTime(s)   UUID                            Reason-Code\tSecurity Label\n\
         Domain-0                                     0  2048     4     r-----       0.0 00000000-0000-0000-0000-000000000000        -                -\n\
         guest                                        5   512     2     -bp---      12.3 00000000-0000-0000-0000-000000000005        -                -\n\
         crashed                                      7   256     1     ---sc-       0.5 00000000-0000-0000-0000-000000000007        3 system_u:system_r:domU_t\n"
    );
}

#[test]
fn list_context_cpupool_and_numa_columns() {
    let mut host = host();
    host.cpupools.insert(0, "Pool-0".into());
    host.domain_mut(5).unwrap().node_affinity = CpuMap::from_cpus([0]);

    let z = rxl(&mut host, &["list", "-Z", "guest"]);
    let c = rxl(&mut host, &["list", "-c", "-n", "guest"]);

    assert_eq!(
        z.out,
        format!("{LIST_HEADER}   Security Label\n{GUEST_ROW}                -\n")
    );
    assert_eq!(
        c.out,
        format!("{LIST_HEADER}         Cpupool NODE Affinity\n{GUEST_ROW}          Pool-0 all\n")
    );
}

#[test]
fn list_one_domain_by_name_or_id() {
    let mut host = host();

    let by_name = rxl(&mut host, &["list", "guest"]);
    let by_id = rxl(&mut host, &["list", "5"]);

    assert_eq!(by_name.out, format!("{LIST_HEADER}\n{GUEST_ROW}\n"));
    assert_eq!(by_id.out, by_name.out);
}

#[test]
fn list_reports_missing_domains_as_xl() {
    let mut host = host();

    let by_id = rxl(&mut host, &["list", "99"]);
    let by_name = rxl(&mut host, &["list", "nosuch"]);
    let two = rxl(&mut host, &["list", "guest", "crashed"]);

    assert_eq!((by_id.code, by_id.out.as_str()), (1, ""));
    assert_eq!(by_id.err, "Error: Domain '99' does not exist.\n");
    assert_eq!(by_name.code, 1);
    assert_eq!(
        by_name.err,
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );
    assert_eq!(two.code, 1);
}

#[test]
fn list_long_prints_stored_configs_as_libxl_json() {
    let mut host = host();

    let r = rxl(&mut host, &["list", "-l"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        "[\n    {\n        \"domid\": 5,\n        \"config\": {\n            \"c_info\": {\n                \"type\": \"pv\",\n                \"name\": \"guest\"\n            },\n            \"disks\": [\n\n            ]\n        }\n    }\n]\n\n"
    );
}

// Life cycle.

#[test]
fn pause_and_unpause_by_name() {
    let mut host = host();

    let p = rxl(&mut host, &["pause", "crashed"]);
    let u = rxl(&mut host, &["unpause", "guest"]);

    assert_eq!((p.code, u.code), (0, 0));
    assert!(host.domains[&7].info.state.paused);
    assert!(!host.domains[&5].info.state.paused);
    assert_eq!(host.calls, ["pause 7", "unpause 5"]);
}

#[test]
fn pause_of_a_missing_id_fails() {
    let mut host = host();

    let r = rxl(&mut host, &["pause", "42"]);

    assert_eq!(r.code, 1);
    assert_eq!(r.err, "cannot pause domain 42: domain 42 does not exist\n");
}

#[test]
fn destroy_refuses_dom0_without_force() {
    let mut host = host();

    let r = rxl(&mut host, &["destroy", "0"]);

    assert_eq!(r.code, 1);
    assert_eq!(
        r.err,
        "Not destroying domain 0; use -f to force.\nThis can only be done when using a disaggregated hardware domain and toolstack.\n\n"
    );
    assert!(host.calls.is_empty());
}

#[test]
fn destroy_removes_the_domain_and_reports_rc_on_failure() {
    let mut host = host();

    let ok = rxl(&mut host, &["destroy", "guest"]);
    let again = rxl(&mut host, &["destroy", "5"]);

    assert_eq!(ok.code, 0);
    assert!(!host.domains.contains_key(&5));
    assert_eq!(
        (again.code, again.err.as_str()),
        (1, "destroy failed (rc=-21)\n")
    );
}

#[test]
fn shutdown_signals_the_domain() {
    let mut host = host();

    let r = rxl(&mut host, &["shutdown", "guest"]);

    assert_eq!((r.code, r.out.as_str()), (0, ""));
    assert_eq!(r.err, "Shutting down domain 5\n");
    assert_eq!(host.calls, ["shutdown 5"]);
}

#[test]
fn shutdown_needs_a_domain_or_all() {
    let mut host = host();

    let r = rxl(&mut host, &["shutdown"]);

    assert_eq!(
        (r.code, r.err.as_str()),
        (1, "You must specify -a or a domain id.\n\n")
    );
}

#[test]
fn shutdown_wait_returns_on_shutdown() {
    let mut host = host();
    host.events.push_back(DomainEvent::Shutdown {
        domid: 5,
        reason: ShutdownReason::Poweroff,
    });

    let r = rxl(&mut host, &["shutdown", "-w", "guest"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.err,
        "Shutting down domain 5\nWaiting for 1 domains\nDomain 5 has been shut down, reason code 0\n"
    );
}

#[test]
fn shutdown_wait_twice_waits_for_death() {
    let mut host = host();
    host.events.push_back(DomainEvent::Shutdown {
        domid: 5,
        reason: ShutdownReason::Poweroff,
    });
    host.events.push_back(DomainEvent::Death { domid: 5 });

    let r = rxl(&mut host, &["shutdown", "-ww", "5"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.err,
        "Shutting down domain 5\nWaiting for 1 domains\n\
         Domain 5 has been shut down, reason code 0\n\
         Domain 5 continue waiting for death\n\
         Domain 5 has been destroyed\n"
    );
    assert!(host.events.is_empty());
}

#[test]
fn shutdown_all_skips_dom0_and_the_xenstore_domain() {
    let mut host = host();
    host.domain_mut(7).unwrap().info.xenstore_domain = true;
    host.events.push_back(DomainEvent::Death { domid: 5 });

    let r = rxl(&mut host, &["shutdown", "-a", "-w"]);

    assert_eq!(r.code, 0);
    assert_eq!(host.calls, ["shutdown 5", "wait [5]"]);
    assert_eq!(
        r.err,
        "Shutting down domain 5\nWaiting for 1 domains\nDomain 5 has been destroyed\n"
    );
}

#[test]
fn shutdown_without_pv_drivers_needs_f() {
    let mut host = host();
    host.domain_mut(5).unwrap().pv_control = false;

    let plain = rxl(&mut host, &["shutdown", "guest"]);
    let fallback = rxl(&mut host, &["shutdown", "-F", "guest"]);

    assert_eq!(plain.code, 1);
    assert_eq!(
        plain.err,
        "Shutting down domain 5\n\
         PV control interface not available: external graceful shutdown not possible.\n\
         Use \"-F\" to fallback to ACPI power event.\n\
         shutdown failed (rc=-10)\n"
    );
    assert_eq!(fallback.code, 0);
    assert_eq!(
        fallback.err,
        "Shutting down domain 5\nPV control interface not available: sending ACPI power button event.\n"
    );
    assert_eq!(host.calls.last().unwrap(), "trigger 5 Power 0");
}

#[test]
fn reboot_falls_back_to_acpi_reset() {
    let mut host = host();
    host.domain_mut(5).unwrap().pv_control = false;

    let plain = rxl(&mut host, &["reboot", "guest"]);
    let fallback = rxl(&mut host, &["reboot", "-F", "guest"]);

    assert_eq!(plain.code, 1);
    assert_eq!(
        plain.err,
        "Rebooting domain 5\n\
         PV control interface not available: external graceful reboot not possible.\n\
         Use \"-F\" to fallback to ACPI reset event.\n\
         reboot failed (rc=-10)\n"
    );
    assert_eq!(fallback.code, 0);
    assert_eq!(host.calls.last().unwrap(), "trigger 5 Reset 0");
}

#[test]
fn create_passes_the_file_and_overrides() {
    let mut host = host();

    let r = rxl(&mut host, &["create", "/etc/xen/new.cfg", "name=new", "-p"]);

    assert_eq!((r.code, r.out.as_str()), (0, ""));
    assert_eq!(r.err, "Parsing config from /etc/xen/new.cfg\n");
    assert_eq!(host.domains[&8].info.name.as_deref(), Some("new"));
    assert!(host.domains[&8].info.state.paused);
}

#[test]
fn create_c_attaches_the_console_of_the_new_domain() {
    let mut host = host();
    host.console_works = true;

    let r = rxl(&mut host, &["create", "-c", "/etc/xen/new.cfg", "name=new"]);
    host.console_works = false;
    let failed = rxl(&mut host, &["create", "-c", "/etc/xen/other.cfg", "name=other"]);
    let plain = rxl(&mut host, &["create", "/etc/xen/third.cfg", "name=third"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        host.calls.iter().filter(|c| c.starts_with("console")).collect::<Vec<_>>(),
        ["console 8 None 0", "console 9 None 0"]
    );
    // The domain stays when the console cannot be attached, as with xl.
    assert_eq!((failed.code, failed.err.lines().last()), (1, Some("Unable to attach console")));
    assert_eq!(host.domains[&9].info.name.as_deref(), Some("other"));
    assert_eq!(plain.code, 0);
    assert!(!host.calls.iter().any(|c| c == "console 10 None 0"));
}

#[test]
fn create_dry_run_prints_the_config() {
    let mut host = host();
    host.dry_run_config = json!({"c_info": {"name": "new"}});

    let local = rxl(&mut host, &["create", "-q", "-n", "new.cfg"]);
    let global = rxl(&mut host, &["-N", "create", "-f", "new.cfg"]);

    let expected = "{\n    \"c_info\": {\n        \"name\": \"new\"\n    }\n}\n";
    assert_eq!(
        (local.code, local.out.as_str(), local.err.as_str()),
        (0, expected, "")
    );
    assert_eq!(global.out, expected);
    assert_eq!(host.domains.len(), 3);
}

#[test]
fn create_argument_errors_exit_as_xl() {
    let mut host = host();

    let none = rxl(&mut host, &["create", "memory=512"]);
    let two = rxl(&mut host, &["create", "a.cfg", "b.cfg"]);

    assert_eq!(none.code, 6);
    assert_eq!(
        none.err,
        "Config file not specified and none in save file\n"
    );
    assert_eq!(two.code, 2);
    assert!(host.calls.is_empty());
}

#[test]
fn global_dry_run_is_refused_by_other_commands() {
    let mut host = host();

    let r = rxl(&mut host, &["-N", "destroy", "guest"]);

    assert_eq!(r.code, 1);
    assert_eq!(r.err, "command does not implement -N (dryrun) option\n");
    assert!(host.calls.is_empty());
}

#[test]
fn console_checks_the_type_and_reports_failure() {
    let mut host = host();

    let bad = rxl(&mut host, &["console", "-t", "vga", "guest"]);
    let unsupported = rxl(&mut host, &["console", "guest"]);
    host.console_works = true;
    let ok = rxl(&mut host, &["console", "-t", "serial", "-n", "1", "guest"]);

    assert_eq!(
        (bad.code, bad.err.as_str()),
        (1, "console type supported are: pv, serial, vuart\n")
    );
    assert_eq!(
        (unsupported.code, unsupported.err.as_str()),
        (1, "Unable to attach console\n")
    );
    assert_eq!(ok.code, 0);
    assert_eq!(host.calls.last().unwrap(), "console 5 Some(Serial) 1");
}

// uptime, vm-list, domid, domname

#[test]
fn uptime_lists_dom0_then_guests() {
    let mut host = host();

    let r = rxl(&mut host, &["uptime"]);

    // The crashed domain has no start time: skipped, as xl does.
    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        "Name                                ID Uptime\n\
         Domain-0                             0  1:02:05\n\
         guest                                5 1 day,  1:01:01\n"
    );
}

#[test]
fn uptime_short_for_chosen_domains() {
    let mut host = host();

    let r = rxl(&mut host, &["uptime", "-s", "0", "guest"]);

    assert_eq!(
        r.out,
        " 12:34:56 up  1:02, Domain-0 (0)\n 12:34:56 up 1 day,  1:01, guest (5)\n"
    );
}

#[test]
fn vm_list_domid_domname() {
    let mut host = host();
    host.domain_mut(7).unwrap().info.stubdom = true;

    let vms = rxl(&mut host, &["vm-list"]);
    let id = rxl(&mut host, &["domid", "guest"]);
    let name = rxl(&mut host, &["domname", "5"]);
    let no_id = rxl(&mut host, &["domid", "nosuch"]);
    let bad_name = rxl(&mut host, &["domname", "x"]);

    assert_eq!(
        vms.out,
        "UUID                                  ID    name\n\
         00000000-0000-0000-0000-000000000000  0    Domain-0                      \n\
         00000000-0000-0000-0000-000000000005  5    guest                         \n"
    );
    assert_eq!((id.out.as_str(), name.out.as_str()), ("5\n", "guest\n"));
    assert_eq!(
        no_id.err,
        "Can't get domid of domain name 'nosuch', maybe this domain does not exist.\n"
    );
    assert_eq!(
        (bad_name.code, bad_name.err.as_str()),
        (1, "Invalid domain id.\n\n")
    );
}

// info and dmesg

fn info_host() -> FakeHost {
    let mut host = host();
    host.node = NodeInfo {
        nodename: "host1".into(),
        release: "6.1.0-18-amd64".into(),
        version: "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1".into(),
        machine: "x86_64".into(),
    };
    host.physinfo.hw_caps[0] = 0xbfebfbff;
    host.physinfo.virt_caps = VirtCaps {
        pv: true,
        hvm: true,
        directio: true,
        hap: true,
        shadow: true,
        gnttab_v1: true,
        ..VirtCaps::default()
    };
    host.physinfo.outstanding_pages = 256;
    host.free_cpus = 0;
    let version = host.version.as_mut().unwrap();
    version.capabilities = "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64".into();
    version.virt_start = 0xffff_8000_0000_0000;
    version.commandline = "dom0_mem=2048M,max:2048M".into();
    version.compiler = "gcc (Debian 12.2.0-14) 12.2.0".into();
    version.compile_by = "pkg-xen-devel".into();
    version.compile_domain = "lists.alioth.debian.org".into();
    version.compile_date = "Thu Jan 12 00:00:00 UTC 2023".into();
    version.build_id = "0123abcd".into();
    host
}

const INFO: &str = "\
host                   : host1
release                : 6.1.0-18-amd64
version                : #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1
machine                : x86_64
nr_cpus                : 4
max_cpu_id             : 3
nr_nodes               : 1
cores_per_socket       : 4
threads_per_core       : 1
cpu_mhz                : 2400.000
hw_caps                : bfebfbff:00000000:00000000:00000000:00000000:00000000:00000000:00000000
virt_caps              : pv hvm hvm_directio pv_directio hap shadow gnttab-v1
total_memory           : 16384
free_memory            : 8191
sharing_freed_memory   : 0
sharing_used_memory    : 0
outstanding_claims     : 1
free_cpus              : 0
xen_major              : 4
xen_minor              : 17
xen_extra              : .0
xen_version            : 4.17.0
xen_caps               : xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_64
xen_scheduler          : credit2
xen_pagesize           : 4096
platform_params        : virt_start=0xffff800000000000
xen_changeset          : 
xen_commandline        : dom0_mem=2048M,max:2048M
cc_compiler            : gcc (Debian 12.2.0-14) 12.2.0
cc_compile_by          : pkg-xen-devel
cc_compile_domain      : lists.alioth.debian.org
cc_compile_date        : Thu Jan 12 00:00:00 UTC 2023
build_id               : 0123abcd
xend_config_format     : 4
";

#[test]
fn info_prints_xl_layout() {
    let mut host = info_host();

    let r = rxl(&mut host, &["info"]);

    assert_eq!((r.code, r.err.as_str()), (0, ""));
    assert_eq!(r.out, INFO);
}

#[test]
fn info_with_a_name_prints_matching_values() {
    let mut host = info_host();

    let one = rxl(&mut host, &["info", "free_memory"]);
    let prefix = rxl(&mut host, &["info", "xen_m"]);
    let caps = rxl(&mut host, &["info", "virt_caps"]);

    assert_eq!(one.out, "8191\n");
    assert_eq!(prefix.out, "4\n17\n");
    assert_eq!(
        caps.out,
        "pv hvm hvm_directio pv_directio hap shadow gnttab-v1\n"
    );
}

#[test]
fn info_numa_adds_topology() {
    let mut host = info_host();
    host.cpu_topology = vec![
        Some(CpuTopology {
            core: 0,
            socket: 0,
            node: 0,
        }),
        None,
        Some(CpuTopology {
            core: 1,
            socket: 0,
            node: 0,
        }),
    ];
    host.pci_topology = vec![PciTopology {
        seg: 0,
        bus: 0x3a,
        devfn: 0x11,
        node: Some(0),
    }];
    host.numa = vec![Some(NumaNode {
        size: 16 << 30,
        free: 8 << 30,
        distances: vec![10, 21],
    })];

    let r = rxl(&mut host, &["info", "-n"]);

    let expected_tables = "\
cpu_topology           :
cpu:    core    socket     node
  0:       0        0        0
  2:       1        0        0
device topology        :
device           node
0000:3a:02.1      0
numa_info              :
node:    memsize    memfree    distances
   0:     16384       8192      10,21
xen_major              : 4
";
    assert!(r.out.contains(expected_tables), "{}", r.out);
}

#[test]
fn info_reports_missing_sections_and_succeeds() {
    let mut host = info_host();
    host.version = None;

    let r = rxl(&mut host, &["info"]);

    assert_eq!(r.code, 0);
    assert_eq!(r.err, "libxl_get_version_info failed.\n");
    assert!(
        !r.out.contains("total_memory")
            && r.out
                .ends_with("free_cpus              : 0\nxend_config_format     : 4\n")
    );
}

#[test]
fn dmesg_prints_and_clears_the_ring() {
    let mut host = host();
    host.console_ring = "(XEN) Xen version 4.17.0\n(XEN) Brought up 4 CPUs\n".into();

    let first = rxl(&mut host, &["dmesg", "-c"]);
    let second = rxl(&mut host, &["dmesg"]);

    assert_eq!(
        first.out,
        "(XEN) Xen version 4.17.0\n(XEN) Brought up 4 CPUs\n"
    );
    assert_eq!((second.code, second.out.as_str()), (0, ""));
}

// vCPUs and memory

#[test]
fn vcpu_list_prints_xl_columns() {
    let mut host = host();

    let r = rxl(&mut host, &["vcpu-list", "guest"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n\
         guest                                5     0    1   -b-       3.0  all / all\n\
         guest                                5     1    -   --p       0.0  0-1,3 / all\n"
    );
}

#[test]
fn vcpu_list_of_all_domains() {
    let mut host = host();

    let r = rxl(&mut host, &["vcpu-list"]);

    assert_eq!(r.out.lines().count(), 1 + 4 + 2 + 1);
    assert!(r.out.contains(
        "\nDomain-0                             0     3    0   -b-       0.0  all / all\n"
    ));
}

#[test]
fn vcpu_set_checks_the_count_and_the_host() {
    let mut host = host();

    let ok = rxl(&mut host, &["vcpu-set", "guest", "1"]);
    let invalid = rxl(&mut host, &["vcpu-set", "guest", "many"]);
    let over = rxl(&mut host, &["vcpu-set", "guest", "8"]);
    let ignored = rxl(&mut host, &["vcpu-set", "-i", "guest", "8"]);

    assert_eq!(ok.code, 0);
    assert_eq!(host.domains[&5].info.vcpu_online, 1);
    assert_eq!(
        (invalid.code, invalid.err.as_str()),
        (1, "Error: Invalid argument.\n")
    );
    assert_eq!(over.code, 1);
    assert_eq!(
        over.err,
        "You are overcommmitting! You have 4 physical CPUs and want 8 vCPUs! Aborting, use --ignore-host to continue\n"
    );
    assert_eq!(ignored.code, 1);
    assert_eq!(
        ignored.err,
        "libxl_set_vcpuonline failed domid=5 max_vcpus=8, rc: -6\n"
    );
}

#[test]
fn mem_set_parses_xl_sizes() {
    let mut host = host();

    let m = rxl(&mut host, &["mem-set", "guest", "256m"]);
    let plain = rxl(&mut host, &["mem-set", "5", "300"]);
    let g = rxl(&mut host, &["mem-set", "guest", "1G"]);
    let bad = rxl(&mut host, &["mem-set", "guest", "12q"]);
    let missing = rxl(&mut host, &["mem-set", "nosuch", "1g"]);

    assert_eq!((m.code, plain.code, g.code), (0, 0, 0));
    assert_eq!(
        host.calls,
        ["mem-set 5 262144", "mem-set 5 307200", "mem-set 5 1048576"]
    );
    assert_eq!(
        (bad.code, bad.err.as_str()),
        (1, "invalid memory size: 12q\n")
    );
    assert_eq!(
        missing.err,
        "nosuch is an invalid domain identifier (rc=-6)\n"
    );
}

#[test]
fn mem_set_failure_names_the_domain() {
    let mut host = host();

    let r = rxl(&mut host, &["mem-set", "42", "1g"]);

    assert_eq!(
        (r.code, r.err.as_str()),
        (1, "cannot set domid 42 dynamic max memory to : 1g\n")
    );
}

// Block devices

const BLOCK_HEADER: &str =
    "Vdev  BE  handle state evt-ch ring-ref BE-path                       \n";

#[test]
fn block_list_prints_xl_table() {
    let mut host = host();

    let r = rxl(&mut host, &["block-list", "guest", "nosuch", "crashed"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        format!("{BLOCK_HEADER}51712 0   5      4     12     8        /local/domain/0/backend/vbd/5/51712\n")
    );
    assert_eq!(r.err, "nosuch is an invalid domain identifier\n");
}

#[test]
fn block_list_prints_minus_one_for_missing_nodes() {
    let mut host = host();
    host.domain_mut(7).unwrap().disks.push(BlockDevice {
        devid: 51728,
        backend_id: 0,
        frontend_id: 7,
        backend_path: "/local/domain/0/backend/vbd/7/51728".into(),
        ..BlockDevice::default()
    });

    let r = rxl(&mut host, &["block-list", "7"]);

    assert_eq!(
        r.out,
        format!("{BLOCK_HEADER}51728 0   7      -1    -1     -1       /local/domain/0/backend/vbd/7/51728\n")
    );
}

#[test]
fn block_attach_hands_the_spec_to_the_host() {
    let mut host = host();

    let ok = rxl(
        &mut host,
        &["block-attach", "guest", "/dev/vg/data,raw,xvdb,w"],
    );
    let bad = rxl(&mut host, &["block-attach", "nosuch", "x"]);

    assert_eq!(ok.code, 0);
    assert_eq!(host.calls, ["block-attach 5 /dev/vg/data,raw,xvdb,w"]);
    assert_eq!(
        (bad.code, bad.err.as_str()),
        (1, "nosuch is an invalid domain identifier\n")
    );
}

#[test]
fn block_detach_by_vdev_or_devid() {
    let mut host = host();

    let unknown = rxl(&mut host, &["block-detach", "guest", "xvdz"]);
    let by_name = rxl(&mut host, &["block-detach", "guest", "xvda"]);
    let gone = rxl(&mut host, &["block-detach", "guest", "51712"]);

    assert_eq!(
        (unknown.code, unknown.err.as_str()),
        (1, "Error: Device xvdz not connected.\n")
    );
    assert_eq!(by_name.code, 0);
    assert_eq!(host.calls, ["block-detach 5 51712 force=false"]);
    assert_eq!(gone.code, 1);
}

// Network interfaces

const NET_HEADER: &str =
    "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       \n";

#[test]
fn network_list_prints_xl_table() {
    let mut host = host();

    let r = rxl(&mut host, &["network-list", "guest"]);

    assert_eq!(r.code, 0);
    assert_eq!(
        r.out,
        format!("{NET_HEADER}0   0  00:16:3e:00:00:01     0     4     14   768/769         /local/domain/0/backend/vif/5/0\n")
    );
}

#[test]
fn network_list_stops_at_an_unknown_domain() {
    let mut host = host();

    let r = rxl(&mut host, &["network-list", "nosuch", "guest"]);

    assert_eq!(r.code, 1);
    assert_eq!(r.out, NET_HEADER);
    assert_eq!(r.err, "nosuch is an invalid domain identifier (rc=-6)\n");
}

#[test]
fn network_attach_and_detach() {
    let mut host = host();

    let attach = rxl(
        &mut host,
        &[
            "network-attach",
            "guest",
            "bridge=xenbr0",
            "mac=00:16:3e:00:00:02",
        ],
    );
    let unknown = rxl(&mut host, &["network-detach", "guest", "00:16:3e:00:00:09"]);
    let by_mac = rxl(&mut host, &["network-detach", "guest", "00:16:3E:00:00:01"]);
    let by_id = rxl(&mut host, &["network-detach", "guest", "0"]);

    assert_eq!(attach.code, 0);
    assert_eq!(
        (unknown.code, unknown.err.as_str()),
        (1, "Unknown device 00:16:3e:00:00:09.\n")
    );
    assert_eq!(by_mac.code, 0);
    assert_eq!(
        host.calls,
        [
            "network-attach 5 bridge=xenbr0 mac=00:16:3e:00:00:02",
            "network-detach 5 0"
        ]
    );
    assert_eq!((by_id.code, by_id.err.as_str()), (1, "Unknown device 0.\n"));
}
