//! Whole configurations: real-world files, overrides, and the domain
//! configuration's rules and errors.

use super::disk::{Access, DiskFormat};
use super::vif::VifWarning;
use super::*;

fn source() -> Source {
    Source::File("guest.cfg".into())
}

fn config(text: &str) -> DomainConfig {
    DomainConfig::parse(source(), text, &[] as &[&str]).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    DomainConfig::parse(source(), text, &[] as &[&str])
        .unwrap_err()
        .to_string()
}

/// What xen-tools 4.x writes for a Debian PV guest (`xen-create-image`).
const XEN_TOOLS_PV: &str = r#"#
# Configuration file for the Xen instance web01, created
# by xen-tools 4.9.2 on Mon Mar  2 10:00:00 2020.
#

#
#  Kernel + memory size
#
kernel      = '/boot/vmlinuz-5.10.0-21-amd64'
extra       = 'elevator=noop'
ramdisk     = '/boot/initrd.img-5.10.0-21-amd64'

vcpus       = '2'
memory      = '1024'


#
#  Disk device(s).
#
root        = '/dev/xvda2 ro'
disk        = [
                  'phy:/dev/vg0/web01-disk,xvda2,w',
                  'phy:/dev/vg0/web01-swap,xvda1,w',
              ]


#
#  Physical volumes
#


#
#  Hostname
#
name        = 'web01'

#
#  Networking
#
vif         = [ 'ip=192.168.1.10 ,mac=00:16:3E:D5:41:7C' ]

#
#  Behaviour
#
on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
"#;

#[test]
fn xen_tools_pv_guest() {
    let c = config(XEN_TOOLS_PV);

    assert_eq!(c.name, "web01");
    assert_eq!(c.domain_type, DomainType::Pv);
    assert_eq!(c.kernel.as_deref(), Some("/boot/vmlinuz-5.10.0-21-amd64"));
    assert_eq!(
        c.ramdisk.as_deref(),
        Some("/boot/initrd.img-5.10.0-21-amd64")
    );
    assert_eq!(
        c.cmdline.as_deref(),
        Some("root=/dev/xvda2 ro elevator=noop")
    );
    assert_eq!((c.memory_mib, c.maxmem_mib), (1024, 1024));
    assert_eq!((c.vcpus, c.maxvcpus), (2, 2));
    assert_eq!(c.on_crash, Action::Restart);
    assert_eq!(c.disks.len(), 2);
    assert_eq!(c.disks[0].target.as_deref(), Some("/dev/vg0/web01-disk"));
    assert_eq!(c.disks[0].vdev.devid, 51714);
    assert_eq!(c.disks[1].vdev.devid, 51713);
    assert_eq!(c.disks[1].access, Access::ReadWrite);
    assert_eq!(c.vifs.len(), 1);
    assert_eq!(c.vifs[0].ip.as_deref(), Some("192.168.1.10"));
    assert_eq!(
        c.vifs[0].mac.map(|m| m.to_string()).as_deref(),
        Some("00:16:3e:d5:41:7c")
    );
    assert_eq!(c.vifs[0].devid, Some(0));
    assert!(c.warnings.is_empty());
    assert!(c.ignored_settings().is_empty());
    assert!(c.uuid.is_none());
}

/// A PVH guest in the style of xl's own examples (`xlexample.pvhlinux`),
/// with file images and several vifs.
const PVH_EXAMPLE: &str = r#"
# =====================================================================
# Example PVH Linux guest configuration
# =====================================================================
type = "pvh"
name = "pvh-guest"
uuid = "1E5E9E4A-6A1B-4F23-9D4C-7A2E5B0C1D3F"
kernel = "/boot/vmlinuz-pvh"
cmdline = "console=hvc0 root=/dev/xvda1 rw"
memory = 2048
maxmem = 4096
vcpus = 2
maxvcpus = 8
on_reboot = "rename-restart"
on_watchdog = "coredump-restart"
disk = [ '/var/lib/xen/images/pvh.img,raw,xvda,rw',
         'format=qcow2, vdev=xvdb, access=ro, target=/var/lib/xen/images/data,v2.qcow2',
         ',hdc:cdrom,r' ]
vif = [ 'bridge=xenbr0', 'mac=00:16:3e:00:00:02,bridge=xenbr1,rate=100Mb/s',
        'vifname=pvh.2,script=vif-route,ip=10.0.0.2,gatewaydev=eth0' ]
"#;

#[test]
fn pvh_guest_with_several_disks_and_vifs() {
    let c = config(PVH_EXAMPLE);

    assert_eq!(c.domain_type, DomainType::Pvh);
    assert_eq!(
        c.uuid.map(|u| u.to_string()).as_deref(),
        Some("1e5e9e4a-6a1b-4f23-9d4c-7a2e5b0c1d3f")
    );
    assert_eq!(
        c.cmdline.as_deref(),
        Some("console=hvc0 root=/dev/xvda1 rw")
    );
    assert_eq!((c.memory_mib, c.maxmem_mib), (2048, 4096));
    assert_eq!((c.vcpus, c.maxvcpus), (2, 8));
    assert_eq!(
        (
            c.on_poweroff,
            c.on_reboot,
            c.on_watchdog,
            c.on_crash,
            c.on_soft_reset
        ),
        (
            Action::Destroy,
            Action::RenameRestart,
            Action::CoredumpRestart,
            Action::Destroy,
            Action::SoftReset
        )
    );
    assert_eq!(
        c.disks[1].target.as_deref(),
        Some("/var/lib/xen/images/data,v2.qcow2")
    );
    assert_eq!(c.disks[1].format, DiskFormat::Qcow2);
    assert_eq!(c.disks[1].access, Access::ReadOnly);
    assert_eq!(c.disks[2].format, DiskFormat::Empty);
    assert!(c.disks[2].is_cdrom);
    let devids: Vec<Option<u32>> = c.vifs.iter().map(|v| v.devid).collect();
    assert_eq!(devids, [Some(0), Some(1), Some(2)]);
    assert_eq!(c.vifs[1].rate.map(|r| r.bytes_per_interval), Some(625_000));
    assert_eq!(c.vifs[2].vifname.as_deref(), Some("pvh.2"));
}

#[test]
fn minimal_config_takes_xls_defaults() {
    let c = config("name = 'tiny'\n");

    assert_eq!(c.domain_type, DomainType::Pv);
    assert_eq!(
        (c.memory_mib, c.maxmem_mib),
        (DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_MIB)
    );
    assert_eq!((c.vcpus, c.maxvcpus), (1, 1));
    assert_eq!(
        (
            c.on_poweroff,
            c.on_reboot,
            c.on_watchdog,
            c.on_crash,
            c.on_soft_reset
        ),
        (
            Action::Destroy,
            Action::Restart,
            Action::Destroy,
            Action::Destroy,
            Action::SoftReset
        )
    );
    assert_eq!((c.kernel, c.ramdisk, c.cmdline), (None, None, None));
    assert!(c.disks.is_empty() && c.vifs.is_empty());
}

#[test]
fn overrides_from_the_command_line() {
    let c = DomainConfig::parse(
        source(),
        XEN_TOOLS_PV,
        &[
            "memory=2048",
            "maxmem=4096",
            "extra+=' console=hvc0'",
            "vif+=['bridge=xenbr1']",
            "name='web02'",
        ],
    )
    .unwrap();

    assert_eq!(c.name, "web02");
    assert_eq!((c.memory_mib, c.maxmem_mib), (2048, 4096));
    assert_eq!(
        c.cmdline.as_deref(),
        Some("root=/dev/xvda2 ro elevator=noop console=hvc0")
    );
    assert_eq!(c.vifs.len(), 2);
    assert_eq!(c.vifs[1].bridge.as_deref(), Some("xenbr1"));
    assert_eq!(c.vifs[1].devid, Some(1));
}

#[test]
fn override_errors_name_the_command_line() {
    let err =
        DomainConfig::parse(source(), XEN_TOOLS_PV, &["vcpus=2", "memory='lots'"]).unwrap_err();

    assert_eq!(
        err.to_string(),
        "command line:2: memory: expected a number, found string \"lots\""
    );
    assert_eq!(err.key(), Some("memory"));
    assert_eq!(err.location().map(|l| l.line), Some(2));
}

#[test]
fn memory_and_maxmem() {
    let c = config("name='a'\nmaxmem = 1024\n");
    assert_eq!(
        (c.memory_mib, c.maxmem_mib),
        (1024, 1024),
        "memory defaults to maxmem"
    );

    let c = config("name='a'\nmemory = 0x200\nmaxmem = '01000'\n");
    assert_eq!((c.memory_mib, c.maxmem_mib), (512, 512));

    assert_eq!(
        error("name='a'\nmemory = 1024\nmaxmem = 512\n"),
        "guest.cfg:3: maxmem: maxmem (512 MiB) must be greater than or equal to memory (1024 MiB)"
    );
    assert_eq!(
        error("name = 'x'\nmemory = \"abc\"\n"),
        "guest.cfg:2: memory: expected a number, found string \"abc\""
    );
    assert_eq!(
        error("name = 'x'\nmemory = 0\n"),
        "guest.cfg:2: memory: value 0 is smaller than the minimum 1"
    );
    assert_eq!(
        error("name = 'x'\nmemory = 512\nmemory += 512\n"),
        "guest.cfg:3: memory: can't use += with numbers"
    );
    assert!(error("name = 'x'\nmemory = 512M\n")
        .starts_with("guest.cfg:2:13: config parsing error near `M'"));
}

#[test]
fn vcpus_and_maxvcpus() {
    let c = config("name='a'\nmaxvcpus = 4\n");
    assert_eq!((c.vcpus, c.maxvcpus), (1, 4));

    assert_eq!(
        error("name='a'\nvcpus = 4\nmaxvcpus = 2\n"),
        "guest.cfg:3: maxvcpus: maxvcpus (2) < vcpus (4)"
    );
    assert_eq!(
        error("name='a'\nvcpus = [2]\n"),
        "guest.cfg:2: vcpus: expected a number, found a list"
    );
    assert!(error("name='a'\nvcpus = 0\n").contains("vcpus: value 0 is smaller than the minimum 1"));
    assert!(error("name='a'\nvcpus = 4294967296\n")
        .contains("vcpus: value 4294967296 is greater than the maximum"));
}

#[test]
fn name_is_mandatory() {
    assert_eq!(
        error("memory = 512\n"),
        "guest.cfg: name: domain name must be specified"
    );
    assert_eq!(
        error("name = ['a']\n"),
        "guest.cfg:1: name: expected a single value, found a list"
    );
}

#[test]
fn domain_types() {
    assert_eq!(config("name='a'\ntype='pv'\n").domain_type, DomainType::Pv);
    assert_eq!(
        config("name='a'\ntype='pvh'\n").domain_type,
        DomainType::Pvh
    );
    assert_eq!(
        config("name='a'\nbuilder='generic'\n").domain_type,
        DomainType::Pv
    );
    assert_eq!(
        config("name='a'\ntype='pv'\nbuilder='generic'\n").domain_type,
        DomainType::Pv
    );
    // xl compares only the characters given.
    assert_eq!(config("name='a'\ntype='p'\n").domain_type, DomainType::Pv);
    assert_eq!(
        config("name='a'\nbuilder='gen'\n").domain_type,
        DomainType::Pv
    );

    assert_eq!(
        error("name='a'\ntype='hvm'\n"),
        "guest.cfg:2: type: HVM guests are not supported by rxl; use type=\"pv\" or type=\"pvh\""
    );
    assert!(error("name='a'\nbuilder='hvm'\n")
        .starts_with("guest.cfg:2: builder: HVM guests are not supported"));
    assert_eq!(
        error("name='a'\ntype='xen'\n"),
        "guest.cfg:2: type: invalid domain type \"xen\""
    );
    assert_eq!(
        error("name='a'\nbuilder='linux'\n"),
        "guest.cfg:2: builder: invalid domain type \"linux\""
    );
    assert_eq!(
        error("name='a'\ntype='pvh'\nbuilder='generic'\n"),
        "guest.cfg:3: builder: contradicting \"builder\" and \"type\" options specified"
    );
    assert!(error("name='a'\ntype=['pv']\n").contains("type: expected a single value"));
}

#[test]
fn uuids() {
    let c = config("name='a'\nuuid='00112233-4455-6677-8899-aabbccddeeff'\n");
    assert_eq!(
        c.uuid,
        Some(Uuid([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]))
    );

    for bad in [
        "",
        "00112233445566778899aabbccddeeff",
        "00112233-4455-6677-8899-aabbccddeef",
        "00112233-4455-6677-8899-aabbccddeeff0",
        "0011223-34455-6677-8899-aabbccddeeff",
        "00112233-4455-6677-8899-aabbccddeegf",
        "{00112233-4455-6677-8899-aabbccddee}",
        "+0112233-4455-6677-8899-aabbccddeeff",
    ] {
        assert_eq!(
            bad.parse::<Uuid>(),
            Err(InvalidUuid(bad.to_owned())),
            "{bad:?}"
        );
    }
    assert_eq!(
        error("name='a'\nuuid='not-a-uuid'\n"),
        "guest.cfg:2: uuid: failed to parse UUID \"not-a-uuid\": expected 32 hex digits as 8-4-4-4-12"
    );
}

#[test]
fn shutdown_actions() {
    for action in Action::ALL {
        let c = config(&format!(
            "name='a'\non_poweroff='{action}'\non_crash='{action}'\n"
        ));
        assert_eq!((c.on_poweroff, c.on_crash), (action, action));
    }
    assert_eq!(
        error("name='a'\non_reboot='reboot'\n"),
        "guest.cfg:2: on_reboot: unknown action \"reboot\" specified (expected destroy, restart, \
         rename-restart, preserve, coredump-destroy, coredump-restart or soft-reset)"
    );
    assert_eq!("soft-reset".parse(), Ok(Action::SoftReset));
    assert_eq!(
        "Destroy".parse::<Action>(),
        Err(UnknownAction("Destroy".into()))
    );
}

#[test]
fn tsc_modes() {
    let mode = |text: &str| config(&format!("name='a'\n{text}")).tsc_mode;

    assert_eq!(mode(""), TscMode::Default);
    assert_eq!(mode("tsc_mode='default'\n"), TscMode::Default);
    assert_eq!(mode("tsc_mode='always_emulate'\n"), TscMode::AlwaysEmulate);
    assert_eq!(mode("tsc_mode='native'\n"), TscMode::Native);
    // The older numeric form.
    assert_eq!(mode("tsc_mode=1\n"), TscMode::AlwaysEmulate);
    assert_eq!(mode("tsc_mode=2\n").xen_mode(), 2);
    assert_eq!(
        error("name='a'\ntsc_mode='native_paravirt'\n"),
        "guest.cfg:2: tsc_mode: TSC Mode native_paravirt (a.k.a PVRDTSCP) has been removed"
    );
    assert_eq!(
        error("name='a'\ntsc_mode='fast'\n"),
        "guest.cfg:2: tsc_mode: invalid value \"fast\" for \"tsc_mode\" (expected default, always_emulate or native)"
    );
    // Read by rxl now, so no longer reported as ignored.
    assert!(config("name='a'\ntsc_mode='native'\n")
        .ignored_settings()
        .is_empty());
}

#[test]
fn kernel_command_line() {
    let line = |text: &str| config(&format!("name='a'\n{text}")).cmdline;

    assert_eq!(
        line("root='/dev/xvda1'\n").as_deref(),
        Some("root=/dev/xvda1")
    );
    assert_eq!(line("extra='quiet'\n").as_deref(), Some("quiet"));
    assert_eq!(
        line("root='/dev/xvda1 ro'\nextra='quiet'\n").as_deref(),
        Some("root=/dev/xvda1 ro quiet")
    );
    assert_eq!(
        line("cmdline='console=hvc0'\n").as_deref(),
        Some("console=hvc0")
    );
    assert_eq!(line("cmdline=''\n").as_deref(), Some(""));

    let c = config("name='a'\nroot='/dev/xvda1'\nextra='quiet'\ncmdline='console=hvc0'\n");
    assert_eq!(c.cmdline.as_deref(), Some("console=hvc0"));
    assert_eq!(
        c.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["guest.cfg:4: cmdline: ignoring root= and extra= in favour of cmdline="]
    );
    assert!(error("name='a'\nextra=['quiet']\n").contains("extra: expected a single value"));
}

#[test]
fn disk_errors_name_the_item_line() {
    assert_eq!(
        error("name='a'\ndisk = [\n  'phy:/dev/vg/a,xvda,w',\n  '/dev/vg/b,xvdb,w',\n]\n"),
        "guest.cfg:4: disk: config parsing error in disk specification: unknown value for format: \
         near `xvdb' in `/dev/vg/b,xvdb,w'"
    );
    assert_eq!(
        error("name='a'\ndisk = 'phy:/dev/vg/a,xvda,w'\n"),
        "guest.cfg:2: disk: expected a list, found string \"phy:/dev/vg/a,xvda,w\""
    );
    assert_eq!(
        error("name='a'\ndisk = [ ['phy:/dev/vg/a,xvda,w'] ]\n"),
        "guest.cfg:2: disk: item 1 of the list is a list, expected a string"
    );
    assert_eq!(
        error("name='a'\ndisk = [ 'phy:/dev/a,xvda,w',\n 'phy:/dev/b,d0p0,w' ]\n"),
        "guest.cfg:3: disk: virtual device d0p0 (51712) is used twice, also on line 2"
    );
    assert_eq!(config("name='a'\ndisk = []\n").disks.len(), 0);
}

#[test]
fn vif_rules() {
    let c = config("name='a'\nvif = [ '', 'devid=5', 'bridge=br0,frob' ]\n");
    let devids: Vec<Option<u32>> = c.vifs.iter().map(|v| v.devid).collect();
    assert_eq!(devids, [Some(0), Some(5), Some(2)]);
    assert_eq!(
        c.warnings,
        [ConfigWarning::Vif {
            at: Location {
                origin: source(),
                line: 2,
                column: None
            },
            warning: VifWarning::Unrecognized("frob".into()),
        }]
    );
    assert_eq!(
        c.warnings[0].to_string(),
        "guest.cfg:2: vif: unrecognized argument `frob' ignored"
    );

    assert_eq!(
        error("name='a'\nvif = [ 'devid=1',\n 'bridge=br0' ]\n"),
        "guest.cfg:3: vif: vif devid 1 is used twice, also on line 2"
    );
    assert_eq!(
        error("name='a'\nvif = [ 'type=ioemu' ]\n"),
        "guest.cfg:2: vif: emulated network interfaces (type=ioemu) need an HVM guest"
    );
    assert_eq!(
        error("name='a'\nvif = [\n 'mac=00:16:3e:00:00',\n]\n"),
        "guest.cfg:3: vif: invalid vif specification `mac=00:16:3e:00:00': invalid MAC address \
         `00:16:3e:00:00': expected six hex bytes separated by colons, like 00:16:3e:12:34:56"
    );
    assert_eq!(
        error("name='a'\nvif = 'bridge=br0'\n"),
        "guest.cfg:2: vif: expected a list, found string \"bridge=br0\""
    );
}

#[test]
fn unknown_and_unimplemented_keys_are_kept_and_reported() {
    let c = config(
        "name='a'\nbootloader = 'pygrub'\nmemroy = 512\nbootloader = '/usr/bin/pygrub'\nvfb = ['vnc=1']\n",
    );

    let ignored: Vec<(&str, bool, u32)> = c
        .ignored_settings()
        .iter()
        .map(|i| (i.setting.key.as_str(), i.known_to_xl, i.setting.line))
        .collect();
    assert_eq!(
        ignored,
        [
            ("bootloader", true, 4),
            ("memroy", false, 3),
            ("vfb", true, 5)
        ]
    );
    let messages: Vec<String> = c
        .ignored_settings()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        messages,
        [
            "guest.cfg:4: bootloader: ignored: rxl does not implement this xl setting",
            "guest.cfg:3: memroy: ignored: unknown setting",
            "guest.cfg:5: vfb: ignored: rxl does not implement this xl setting",
        ]
    );
    assert_eq!(
        c.settings.string("bootloader").unwrap(),
        Some("/usr/bin/pygrub")
    );
}

#[test]
fn every_rxl_key_is_an_xl_key() {
    for key in RXL_KEYS {
        assert!(XL_KEYS.contains(key), "{key}");
    }
}

#[test]
fn syntax_errors_in_whole_files_name_line_and_column() {
    assert_eq!(
        error("name = 'a'\ndisk = [ 'phy:/dev/vg/a,xvda,w'\n         'phy:/dev/vg/b,xvdb,w' ]\n"),
        "guest.cfg:3:10: config parsing error near `'phy:/dev/vg/b,xvdb,w'': syntax error, unexpected \
         string, expecting ',' or ']'"
    );
    assert!(error("name = 'a'\nimport os\n")
        .starts_with("guest.cfg:2:8: config parsing error near `os'"));
    assert!(error("name = 'a'\nmemory = 256 * 2\n").contains("lexical error"));
}

#[test]
fn errors_expose_location_and_key() {
    let err = DomainConfig::parse(source(), "name='a'\nvcpus='x'\n", &[] as &[&str]).unwrap_err();

    assert_eq!(
        err.location(),
        Some(&Location {
            origin: source(),
            line: 2,
            column: None
        })
    );
    assert_eq!(err.key(), Some("vcpus"));
    let err = DomainConfig::parse(source(), "name='a'\nvcpus=\n", &[] as &[&str]).unwrap_err();
    assert_eq!(err.key(), None);
    assert_eq!(err.location().and_then(|l| l.column), Some(7));
}

#[test]
fn source_names() {
    assert_eq!(
        Source::file("/etc/xen/web.cfg").to_string(),
        "/etc/xen/web.cfg"
    );
    assert_eq!(Source::CommandLine.to_string(), "command line");
}
