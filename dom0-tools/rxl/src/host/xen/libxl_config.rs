//! The configuration rxl stores for each domain it creates, in libxl's
//! JSON form (`libxl_domain_config` of Xen 4.17's `libxl_types.idl`), in
//! the file where libxl keeps it for xl's domains
//! (`/var/lib/xen/userdata-d.DOMID.UUID.libxl-json`). `xl list -l` and
//! `rxl list -l` then show rxl's domains as they show xl's.
//!
//! As libxl's generator does, fields appear in the IDL's order and only
//! when they differ from the IDL's defaults. The values are those xl
//! stores for the same configuration file (compared on the Xen test host:
//! PV and PVH guests with a disk and a vif), as far as rxl's
//! configuration has them.

use serde_json::{json, Map, Value};

use crate::config::disk::{Access, BackendType};
use crate::config::{Action, DomainConfig, DomainType, TscMode};
use super::devices::NicPlan;
use crate::host::Uuid;

/// libxl's name of an on_* action (`libxl_action_on_shutdown`): the
/// configuration file's name with underscores.
fn action(a: Action) -> String {
    a.name().replace('-', "_")
}

/// When the configuration is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// As parsed, for `create -n` (xl prints the configuration before
    /// libxl fills in its defaults).
    Parsed,
    /// As stored once the domain is built (after libxl's `setdefault`).
    Created,
}

/// A vif's fields in `libxl_device_nic`.
struct StoredNic {
    devid: u32,
    mac: Option<String>,
    ip: Option<String>,
    bridge: Option<String>,
    ifname: Option<String>,
    script: Option<String>,
    nictype: Option<&'static str>,
    gatewaydev: Option<String>,
}

impl StoredNic {
    /// A vif as attached.
    fn attached(n: &NicPlan) -> Self {
        Self {
            devid: n.devid,
            mac: Some(n.mac.to_string()),
            ip: n.ip.clone(),
            bridge: Some(n.bridge.clone()),
            ifname: n.vifname.clone(),
            script: n.script.clone(),
            nictype: Some("vif"),
            gatewaydev: n.gatewaydev.clone(),
        }
    }

    /// A vif as its specification gives it (the `index`th of the file).
    fn parsed(spec: &crate::config::VifSpec, index: usize) -> Self {
        Self {
            devid: spec.devid.unwrap_or(index as u32),
            mac: spec.mac.map(|m| m.to_string()),
            ip: spec.ip.clone(),
            bridge: spec.bridge.clone(),
            ifname: spec.vifname.clone(),
            script: spec.script.clone(),
            nictype: spec.nic_type.map(|t| match t {
                crate::config::vif::NicType::Vif => "vif",
                crate::config::vif::NicType::Ioemu => "ioemu",
            }),
            gatewaydev: spec.gatewaydev.clone(),
        }
    }
}

/// What `xl create -n` prints for `cfg`: the configuration as parsed,
/// before libxl fills in its defaults, with `uuid`.
pub(crate) fn parsed(cfg: &DomainConfig, uuid: &Uuid) -> Value {
    let nics: Vec<_> = cfg
        .vifs
        .iter()
        .enumerate()
        .map(|(i, v)| StoredNic::parsed(v, i))
        .collect();
    domain_config(cfg, Stage::Parsed, uuid, &nics)
}

/// What xl stores for a domain built from `cfg` with `uuid` whose vifs
/// were attached as `nics`.
pub(crate) fn created(cfg: &DomainConfig, uuid: &Uuid, nics: &[NicPlan]) -> Value {
    let nics: Vec<_> = nics.iter().map(StoredNic::attached).collect();
    domain_config(cfg, Stage::Created, uuid, &nics)
}

/// The `libxl_domain_config` of `cfg` at `stage`.
fn domain_config(cfg: &DomainConfig, stage: Stage, uuid: &Uuid, nics: &[StoredNic]) -> Value {
    let created = stage == Stage::Created;
    let kind = match cfg.domain_type {
        DomainType::Pv => "pv",
        DomainType::Pvh => "pvh",
    };
    // `domid` is LIBXL_DOMID_INVALID's u32 (~0) once libxl has set its
    // defaults: xl asks for no particular domid.
    let mut c_info = Map::new();
    c_info.insert("type".into(), json!(kind));
    c_info.insert("name".into(), json!(cfg.name));
    if created {
        c_info.insert("domid".into(), json!(u32::MAX));
    }
    c_info.insert("uuid".into(), json!(uuid.to_string()));
    c_info.insert("run_hotplug_scripts".into(), json!("True"));
    let mut b = Map::new();
    b.insert("max_vcpus".into(), json!(cfg.maxvcpus));
    b.insert(
        "avail_vcpus".into(),
        Value::Array((0..cfg.vcpus).map(|i| json!(i)).collect()),
    );
    // libxl's JSON leaves out fields at their default.
    if cfg.tsc_mode != TscMode::Default {
        b.insert("tsc_mode".into(), json!(cfg.tsc_mode.name()));
    }
    b.insert("max_memkb".into(), json!(cfg.maxmem_mib * 1024));
    b.insert("target_memkb".into(), json!(cfg.memory_mib * 1024));
    if created {
        // PV and PVH guests have no video memory; libxl adds it to the
        // memory target it reads back, so it must be 0, not "default".
        b.insert("video_memkb".into(), json!(0));
    }
    b.insert("sched_params".into(), json!({}));
    b.insert("claim_mode".into(), json!("True"));
    if let Some(kernel) = &cfg.kernel {
        b.insert("kernel".into(), json!(kernel));
    }
    if let Some(cmdline) = &cfg.cmdline {
        b.insert("cmdline".into(), json!(cmdline));
    }
    if let Some(ramdisk) = &cfg.ramdisk {
        b.insert("ramdisk".into(), json!(ramdisk));
    }
    b.insert(format!("type.{kind}"), json!({}));
    b.insert("arch_arm".into(), json!({}));
    b.insert(
        "arch_x86".into(),
        if created {
            json!({ "msr_relaxed": "False" })
        } else {
            json!({})
        },
    );
    let disks: Vec<Value> = cfg
        .disks
        .iter()
        .map(|d| {
            let mut m = Map::new();
            if let Some(target) = &d.target {
                m.insert("pdev_path".into(), json!(target));
            }
            m.insert("vdev".into(), json!(d.vdev.name));
            // Only Linux's blkback is one of libxl's backends (rblkback is
            // "unknown", the default).
            if d.backend_type == Some(BackendType::Phy) {
                m.insert("backend".into(), json!("phy"));
            }
            // rxl's format names are libxl_disk_format's.
            m.insert("format".into(), json!(d.format.name()));
            // Integers at 0 are libxl's defaults, left out.
            if d.access == Access::ReadWrite {
                m.insert("readwrite".into(), json!(1));
            }
            if d.is_cdrom {
                m.insert("is_cdrom".into(), json!(1));
            }
            if created {
                m.insert("colo_restore_enable".into(), json!("False"));
            }
            Value::Object(m)
        })
        .collect();
    let nics: Vec<Value> = nics
        .iter()
        .map(|n| {
            let mut m = Map::new();
            m.insert("devid".into(), json!(n.devid));
            let fields = [
                ("mac", n.mac.as_deref()),
                ("ip", n.ip.as_deref()),
                ("bridge", n.bridge.as_deref()),
                ("ifname", n.ifname.as_deref()),
                ("script", n.script.as_deref()),
                ("nictype", n.nictype),
                ("gatewaydev", n.gatewaydev.as_deref()),
            ];
            for (key, value) in fields {
                if let Some(value) = value {
                    m.insert(key.into(), json!(value));
                }
            }
            Value::Object(m)
        })
        .collect();
    let mut top = Map::new();
    top.insert("c_info".into(), Value::Object(c_info));
    top.insert("b_info".into(), Value::Object(b));
    if !disks.is_empty() {
        top.insert("disks".into(), Value::Array(disks));
    }
    if !nics.is_empty() {
        top.insert("nics".into(), Value::Array(nics));
    }
    // `destroy` is the actions' default (the enumeration's `init_val`).
    for (key, a) in [
        ("on_poweroff", cfg.on_poweroff),
        ("on_reboot", cfg.on_reboot),
        ("on_watchdog", cfg.on_watchdog),
        ("on_crash", cfg.on_crash),
        ("on_soft_reset", cfg.on_soft_reset),
    ] {
        if a != Action::Destroy {
            top.insert(key.into(), json!(action(a)));
        }
    }
    Value::Object(top)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MacAddr, Source};

    /// What rxl stores for `cfg` with the uuid and MAC xl gave the same
    /// domain, laid out by libxl's generator.
    fn stored(cfg_text: &str, uuid: &str, mac: [u8; 6]) -> String {
        let cfg = DomainConfig::parse(Source::File("t.cfg".into()), cfg_text, &[] as &[&str])
            .unwrap_or_else(|e| panic!("{e}"));
        let uuid: crate::config::Uuid = uuid.parse().unwrap();
        let nic = NicPlan::new(&cfg.vifs[0], 1, 0, MacAddr(mac)).unwrap();
        crate::commands::format::libxl_json(&created(&cfg, &Uuid(uuid.0), &[nic]))
    }

    /// The golden files are what Xen 4.17's xl stored in
    /// /var/lib/xen/userdata-d.*.libxl-json for the same configuration
    /// file, captured on the Xen test host.
    #[test]
    fn pv_guest_is_stored_as_xl_stores_it() {
        let got = stored(
            include_str!("../../../tests/golden/xl-stored-pv.cfg"),
            "0d010c9c-e976-11f1-8bb4-eef6c25d2a1b",
            [0x00, 0x16, 0x3e, 0x0d, 0xab, 0xb2],
        );
        assert_eq!(got, include_str!("../../../tests/golden/xl-stored-pv.json"));
    }

    #[test]
    fn pvh_guest_is_stored_as_xl_stores_it() {
        let got = stored(
            include_str!("../../../tests/golden/xl-stored-pvh.cfg"),
            "195eac10-e976-11f1-91c5-6b40f6649277",
            [0x00, 0x16, 0x3e, 0x1a, 0x09, 0x3e],
        );
        assert_eq!(got, include_str!("../../../tests/golden/xl-stored-pvh.json"));
    }

    /// What `create -n` prints for the golden configurations: xl's output
    /// for them (its uuid aside, which is fresh each time).
    #[test]
    fn dry_run_prints_what_xl_create_n_prints() {
        for (cfg_text, want, uuid) in [
            (
                include_str!("../../../tests/golden/xl-stored-pv.cfg"),
                include_str!("../../../tests/golden/xl-create-n-pv.json"),
                "14dd65c8-e976-11f1-bd0b-feffffffffff",
            ),
            (
                include_str!("../../../tests/golden/xl-stored-pvh.cfg"),
                include_str!("../../../tests/golden/xl-create-n-pvh.json"),
                "75811fe0-4120-43d8-ba9c-116905f30428",
            ),
        ] {
            let cfg = DomainConfig::parse(Source::File("t.cfg".into()), cfg_text, &[] as &[&str]).unwrap();
            let uuid: crate::config::Uuid = uuid.parse().unwrap();
            let got = parsed(&cfg, &Uuid(uuid.0));
            assert_eq!(crate::commands::format::libxl_json(&got), want);
        }
    }

    /// xl lists `tsc_mode` after `avail_vcpus`, and only when it is not
    /// the default (checked against xl on the test host by the rxl suite).
    #[test]
    fn tsc_mode_follows_the_vcpus_unless_default() {
        let uuid = Uuid([7; 16]);
        let json = |extra: &str| {
            let text = format!("name = \"g\"\nkernel = \"/k\"\n{extra}");
            let cfg = DomainConfig::parse(Source::File("t.cfg".into()), &text, &[] as &[&str]).unwrap();
            crate::commands::format::libxl_json(&parsed(&cfg, &uuid))
        };
        let emulated = json("tsc_mode = \"always_emulate\"\n");
        let (vcpus, tsc, mem) = (
            emulated.find("\"avail_vcpus\"").unwrap(),
            emulated.find("\"tsc_mode\": \"always_emulate\"").unwrap(),
            emulated.find("\"max_memkb\"").unwrap(),
        );
        assert!(vcpus < tsc && tsc < mem, "{emulated}");
        assert!(!json("tsc_mode = \"default\"\n").contains("tsc_mode"));
        assert!(!json("").contains("tsc_mode"));
    }

    #[test]
    fn non_default_actions_and_writable_disks_are_stored() {
        let text = "name = \"g\"\nkernel = \"/k\"\nmemory = 128\non_poweroff = \"preserve\"\n\
                    on_crash = \"coredump-restart\"\ndisk = [ \"/img,raw,xvda,rw,backendtype=phy\" ]\n\
                    vif = [ \"bridge=br1,mac=00:16:3e:00:00:01\" ]\n";
        let v: Value = serde_json::from_str(&stored(text, "00000000-0000-0000-0000-000000000001", [0, 0x16, 0x3e, 0, 0, 1]))
            .unwrap();
        assert_eq!(v["on_poweroff"], "preserve");
        assert_eq!(v["on_crash"], "coredump_restart");
        assert_eq!(v["on_reboot"], "restart");
        assert!(v.get("on_watchdog").is_none());
        assert_eq!(v["disks"][0]["readwrite"], 1);
        assert_eq!(v["nics"][0]["bridge"], "br1");
        assert_eq!(v["b_info"]["max_memkb"], 131072);
        assert_eq!(v["b_info"]["avail_vcpus"], json!([0]));
    }
}
