//! The typed domain configuration built from a file's settings, as
//! `xl_parse.c`'s `parse_config_data` reads the keys rxl implements.

use std::fmt;
use std::str::FromStr;

use super::disk::DiskSpec;
use super::error::{ConfigError, Location, SettingProblem, Source};
use super::file::{Setting, Settings};
use super::vif::{NicType, VifSpec, VifWarning};

/// The kind of guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Paravirtualised (`type="pv"`, `builder="generic"`; the default).
    Pv,
    /// PVH (`type="pvh"`).
    Pvh,
}

/// How the guest's `rdtsc` is served (`tsc_mode`, libxl's
/// `libxl_tsc_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TscMode {
    /// `default`: native while the TSC is reliable, emulated otherwise.
    #[default]
    Default,
    /// `always_emulate`: every `rdtsc` is emulated.
    AlwaysEmulate,
    /// `native`: never emulated.
    Native,
}

impl TscMode {
    /// The mode's name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            TscMode::Default => "default",
            TscMode::AlwaysEmulate => "always_emulate",
            TscMode::Native => "native",
        }
    }

    /// The mode number of `XEN_DOMCTL_settscinfo` (`XEN_TSC_MODE_*`).
    pub fn xen_mode(self) -> u32 {
        use hypercall_abi::xen::domctl::{
            XEN_TSC_MODE_ALWAYS_EMULATE, XEN_TSC_MODE_DEFAULT, XEN_TSC_MODE_NEVER_EMULATE,
        };
        match self {
            TscMode::Default => XEN_TSC_MODE_DEFAULT,
            TscMode::AlwaysEmulate => XEN_TSC_MODE_ALWAYS_EMULATE,
            TscMode::Native => XEN_TSC_MODE_NEVER_EMULATE,
        }
    }
}

/// What to do when the guest shuts down for a given reason (`on_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `destroy`: destroy the domain.
    Destroy,
    /// `restart`: destroy it and create a new one from the same
    /// configuration.
    Restart,
    /// `rename-restart`: rename the old domain and create a new one.
    RenameRestart,
    /// `preserve`: keep the domain as it is, for inspection.
    Preserve,
    /// `coredump-destroy`: write a core dump, then destroy.
    CoredumpDestroy,
    /// `coredump-restart`: write a core dump, then restart.
    CoredumpRestart,
    /// `soft-reset`: reset the domain keeping its memory (for kexec).
    SoftReset,
}

impl Action {
    /// Every action, in xl's order.
    pub const ALL: [Action; 7] = [
        Action::Destroy,
        Action::Restart,
        Action::RenameRestart,
        Action::Preserve,
        Action::CoredumpDestroy,
        Action::CoredumpRestart,
        Action::SoftReset,
    ];

    /// The action's name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "rename-restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::SoftReset => "soft-reset",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

/// A domain's UUID (its `xen_domain_handle_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

/// A string that is no UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid UUID {0:?}")]
pub struct InvalidUuid(pub String);

impl FromStr for Uuid {
    type Err = InvalidUuid;

    /// The standard form: 32 hex digits (either case) in groups of
    /// 8-4-4-4-12 separated by hyphens.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidUuid(s.to_owned());
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        let mut digits = Vec::with_capacity(32);
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(invalid());
                }
            } else {
                let digit = char::from(c).to_digit(16).ok_or_else(invalid)?;
                digits.push(digit as u8);
            }
        }
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Uuid(bytes))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Something in the configuration that rxl accepted but the user should
/// hear about (xl prints these and carries on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    /// `cmdline` is set, so `root` and `extra` are not used.
    #[error("{at}: cmdline: ignoring root= and extra= in favour of cmdline=")]
    CmdlineOverridesRootExtra {
        /// Where `cmdline` is.
        at: Location,
    },
    /// A vif specification has something that was ignored.
    #[error("{at}: vif: {warning}")]
    Vif {
        /// Where the vif's specification is.
        at: Location,
        /// What was ignored.
        warning: VifWarning,
    },
}

/// A setting the domain configuration does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IgnoredSetting<'a> {
    /// The setting.
    pub setting: &'a Setting,
    /// xl knows the key (rxl does not implement it); otherwise xl would
    /// ignore it too, which usually means a typing mistake.
    pub known_to_xl: bool,
}

impl fmt::Display for IgnoredSetting<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let setting = self.setting;
        if self.known_to_xl {
            write!(
                f,
                "{}: {}: ignored: rxl does not implement this xl setting",
                setting.location(),
                setting.key
            )
        } else {
            write!(
                f,
                "{}: {}: ignored: unknown setting",
                setting.location(),
                setting.key
            )
        }
    }
}

/// The keys [`DomainConfig`] reads.
pub const RXL_KEYS: &[&str] = &[
    "name",
    "type",
    "builder",
    "uuid",
    "kernel",
    "ramdisk",
    "cmdline",
    "root",
    "extra",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "on_poweroff",
    "on_reboot",
    "on_watchdog",
    "on_crash",
    "on_soft_reset",
    "tsc_mode",
    "disk",
    "vif",
];

/// The keys xl 4.17 reads (`xl_parse.c`), whether or not rxl does.
pub const XL_KEYS: &[&str] = &[
    "acpi",
    "acpi_firmware",
    "acpi_laptop_slate",
    "acpi_s3",
    "acpi_s4",
    "altp2m",
    "altp2mhvm",
    "apic",
    "bios",
    "bios_path_override",
    "boot",
    "bootloader",
    "bootloader_args",
    "builder",
    "cap",
    "channel",
    "cmdline",
    "cpu_weight",
    "cpuid",
    "cpus",
    "cpus_soft",
    "device_model",
    "device_model_args",
    "device_model_override",
    "device_model_stubdomain_override",
    "device_model_stubdomain_seclabel",
    "device_model_user",
    "device_model_version",
    "device_tree",
    "disk",
    "display",
    "dm_restrict",
    "driver_domain",
    "dtdev",
    "e820_host",
    "extra",
    "extratime",
    "firmware",
    "firmware_override",
    "gfx_passthru",
    "gic_version",
    "hap",
    "hdtype",
    "hpet",
    "init_seclabel",
    "iomem",
    "ioports",
    "irqs",
    "kernel",
    "keymap",
    "latency",
    "localtime",
    "max_event_channels",
    "max_grant_frames",
    "max_grant_version",
    "max_maptrack_frames",
    "maxmem",
    "maxvcpus",
    "mca_caps",
    "memory",
    "mmio_hole",
    "ms_vm_genid",
    "msr_relaxed",
    "name",
    "nestedhvm",
    "nographic",
    "nomigrate",
    "nx",
    "on_crash",
    "on_poweroff",
    "on_reboot",
    "on_soft_reset",
    "on_watchdog",
    "oos",
    "opengl",
    "p9",
    "pae",
    "passthrough",
    "pci",
    "pci_msitranslate",
    "pci_permissive",
    "pci_power_mgmt",
    "pci_seize",
    "period",
    "pool",
    "pvcalls",
    "pvshim",
    "pvshim_cmdline",
    "pvshim_extra",
    "pvshim_path",
    "ramdisk",
    "rdm",
    "rdm_mem_boundary",
    "root",
    "rtc_timeoffset",
    "sdl",
    "seclabel",
    "serial",
    "shadow_memory",
    "slice",
    "smbios_firmware",
    "soundhw",
    "spice",
    "spice_clipboard_sharing",
    "spice_image_compression",
    "spice_streaming_video",
    "spiceagent_mouse",
    "spicedisable_ticketing",
    "spicehost",
    "spicepasswd",
    "spiceport",
    "spicetls_port",
    "spiceusbredirection",
    "spicevdagent",
    "stdvga",
    "stubdomain_cmdline",
    "stubdomain_kernel",
    "stubdomain_memory",
    "stubdomain_ramdisk",
    "tee",
    "timer_mode",
    "tsc_mode",
    "type",
    "usb",
    "usbctrl",
    "usbdev",
    "usbdevice",
    "usbversion",
    "uuid",
    "vcpus",
    "vdispl",
    "vendor_device",
    "vfb",
    "vga",
    "videoram",
    "vif",
    "vif2",
    "viridian",
    "vkb",
    "vkb_device",
    "vmtrace_buf_kb",
    "vnc",
    "vncdisplay",
    "vnclisten",
    "vncpasswd",
    "vncunused",
    "vncviewer",
    "vnuma",
    "vpmu",
    "vpt_align",
    "vsnd",
    "vtpm",
    "vuart",
    "xauthority",
    "xen_platform_pci",
    "xend_suspend_evtchn_compat",
];

/// libxl's memory size when neither `memory` nor `maxmem` is given.
pub const DEFAULT_MEMORY_MIB: u64 = 32;
/// The largest `memory`/`maxmem` whose size in KiB fits libxl's fields.
const MAX_MEMORY_MIB: i64 = i64::MAX >> 10;
/// The largest vCPU count libxl's `int` fields hold.
const MAX_VCPUS: i64 = i32::MAX as i64;

/// A domain's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainConfig {
    /// `name`.
    pub name: String,
    /// `type` (or the older `builder`).
    pub domain_type: DomainType,
    /// `uuid`; `None` means the toolstack makes a fresh one.
    pub uuid: Option<Uuid>,
    /// `kernel`: the kernel image in dom0.
    pub kernel: Option<String>,
    /// `ramdisk`: the initial ramdisk in dom0.
    pub ramdisk: Option<String>,
    /// The kernel command line: `cmdline`, or else `root=ROOT EXTRA`
    /// from `root` and `extra`.
    pub cmdline: Option<String>,
    /// `memory`: the memory the guest starts with, in MiB.
    pub memory_mib: u64,
    /// `maxmem`: the most the guest may balloon up to, in MiB; `memory`
    /// if not given.
    pub maxmem_mib: u64,
    /// `vcpus`: vCPUs online at start (1 if not given).
    pub vcpus: u32,
    /// `maxvcpus`: vCPUs the guest may bring up; `vcpus` if not given.
    pub maxvcpus: u32,
    /// `on_poweroff` (default `destroy`).
    pub on_poweroff: Action,
    /// `on_reboot` (default `restart`).
    pub on_reboot: Action,
    /// `on_watchdog` (default `destroy`).
    pub on_watchdog: Action,
    /// `on_crash` (default `destroy`).
    pub on_crash: Action,
    /// `on_soft_reset` (default `soft-reset`).
    pub on_soft_reset: Action,
    /// `tsc_mode` (default `default`).
    pub tsc_mode: TscMode,
    /// `disk`, in order.
    pub disks: Vec<DiskSpec>,
    /// `vif`, in order; every `devid` is set (to the index if not given).
    pub vifs: Vec<VifSpec>,
    /// What was accepted with a warning.
    pub warnings: Vec<ConfigWarning>,
    /// All the settings, for keys this type does not read.
    pub settings: Settings,
}

impl DomainConfig {
    /// Parses a configuration file's `text`, read from `origin`, applies
    /// `xl create`'s `KEY=VALUE` `overrides`, and builds the domain
    /// configuration.
    pub fn parse<S: AsRef<str>>(
        origin: Source,
        text: &str,
        overrides: &[S],
    ) -> Result<Self, ConfigError> {
        let mut settings = Settings::parse(origin, text)?;
        settings.apply_overrides(overrides)?;
        Self::from_settings(settings)
    }

    /// Builds the domain configuration from parsed settings.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let domain_type = domain_type(&settings)?;
        let name = settings
            .string("name")?
            .ok_or_else(|| ConfigError::Missing {
                origin: settings.origin().clone(),
                key: "name",
                problem: SettingProblem::MissingName,
            })?
            .to_owned();
        let uuid = match settings.get("uuid") {
            Some(s) => Some(
                s.string()?
                    .parse::<Uuid>()
                    .map_err(|e| s.error(SettingProblem::InvalidUuid(e.0)))?,
            ),
            None => None,
        };

        let memory = mib(settings.number_in("memory", 1, MAX_MEMORY_MIB)?);
        let maxmem = mib(settings.number_in("maxmem", 1, MAX_MEMORY_MIB)?);
        let memory_mib = memory.or(maxmem).unwrap_or(DEFAULT_MEMORY_MIB);
        let maxmem_mib = maxmem.unwrap_or(memory_mib);
        if maxmem_mib < memory_mib {
            if let Some(setting) = settings.get("maxmem") {
                return Err(setting.error(SettingProblem::MaxmemBelowMemory {
                    maxmem: maxmem_mib,
                    memory: memory_mib,
                }));
            }
        }

        let vcpus = count(settings.number_in("vcpus", 1, MAX_VCPUS)?).unwrap_or(1);
        let maxvcpus = count(settings.number_in("maxvcpus", 1, MAX_VCPUS)?).unwrap_or(vcpus);
        if maxvcpus < vcpus {
            if let Some(setting) = settings.get("maxvcpus") {
                return Err(setting.error(SettingProblem::MaxvcpusBelowVcpus { maxvcpus, vcpus }));
            }
        }

        let on_poweroff = action(&settings, "on_poweroff", Action::Destroy)?;
        let on_reboot = action(&settings, "on_reboot", Action::Restart)?;
        let on_watchdog = action(&settings, "on_watchdog", Action::Destroy)?;
        let on_crash = action(&settings, "on_crash", Action::Destroy)?;
        let on_soft_reset = action(&settings, "on_soft_reset", Action::SoftReset)?;
        let tsc_mode = tsc_mode(&settings)?;

        let kernel = settings.string("kernel")?.map(str::to_owned);
        let ramdisk = settings.string("ramdisk")?.map(str::to_owned);
        let mut warnings = Vec::new();
        let cmdline = cmdline(&settings, &mut warnings)?;
        let disks = disks(&settings)?;
        let vifs = vifs(&settings, &mut warnings)?;

        Ok(DomainConfig {
            name,
            domain_type,
            uuid,
            kernel,
            ramdisk,
            cmdline,
            memory_mib,
            maxmem_mib,
            vcpus,
            maxvcpus,
            on_poweroff,
            on_reboot,
            on_watchdog,
            on_crash,
            on_soft_reset,
            tsc_mode,
            disks,
            vifs,
            warnings,
            settings,
        })
    }

    /// The settings this configuration does not use, in the order their
    /// keys first appear, so the caller can warn about them (xl ignores
    /// keys it does not know without a word).
    pub fn ignored_settings(&self) -> Vec<IgnoredSetting<'_>> {
        self.settings
            .effective()
            .into_iter()
            .filter(|s| !RXL_KEYS.contains(&s.key.as_str()))
            .map(|setting| IgnoredSetting {
                setting,
                known_to_xl: XL_KEYS.contains(&setting.key.as_str()),
            })
            .collect()
    }
}

/// A validated size in MiB.
fn mib(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

/// A validated count.
fn count(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

/// Which guest kind a `type` or `builder` value names. xl compares only
/// as many characters as given, so any prefix of a name selects it
/// (`"p"` is PV, and the empty string HVM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hvm,
    Pv,
    Pvh,
}

fn domain_type(settings: &Settings) -> Result<DomainType, ConfigError> {
    let mut chosen: Option<(Kind, &Setting)> = None;
    if let Some(setting) = settings.get("type") {
        let value = setting.string()?;
        let kind = if "hvm".starts_with(value) {
            Kind::Hvm
        } else if "pv".starts_with(value) {
            Kind::Pv
        } else if "pvh".starts_with(value) {
            Kind::Pvh
        } else {
            return Err(setting.error(SettingProblem::InvalidType(value.to_owned())));
        };
        chosen = Some((kind, setting));
    }
    // Deprecated since Xen 4.10.
    if let Some(setting) = settings.get("builder") {
        let value = setting.string()?;
        let kind = if "hvm".starts_with(value) {
            Kind::Hvm
        } else if "generic".starts_with(value) {
            Kind::Pv
        } else {
            return Err(setting.error(SettingProblem::InvalidType(value.to_owned())));
        };
        if chosen.is_some_and(|(k, _)| k != kind) {
            return Err(setting.error(SettingProblem::ContradictingBuilder));
        }
        chosen = Some((kind, setting));
    }
    match chosen {
        None | Some((Kind::Pv, _)) => Ok(DomainType::Pv),
        Some((Kind::Pvh, _)) => Ok(DomainType::Pvh),
        Some((Kind::Hvm, setting)) => Err(setting.error(SettingProblem::UnsupportedType("HVM"))),
    }
}

fn action(settings: &Settings, key: &str, default: Action) -> Result<Action, ConfigError> {
    let Some(setting) = settings.get(key) else {
        return Ok(default);
    };
    let name = setting.string()?;
    name.parse()
        .map_err(|_| setting.error(SettingProblem::UnknownAction(name.to_owned())))
}

/// `tsc_mode`: a name, or (deprecated in xl, which warns) the mode's
/// number. `native_paravirt` (3) is refused here, where libxl refuses it
/// only when building the domain.
fn tsc_mode(settings: &Settings) -> Result<TscMode, ConfigError> {
    let Some(setting) = settings.get("tsc_mode") else {
        return Ok(TscMode::Default);
    };
    let value = setting.string()?;
    match value {
        "default" | "0" => Ok(TscMode::Default),
        "always_emulate" | "1" => Ok(TscMode::AlwaysEmulate),
        "native" | "2" => Ok(TscMode::Native),
        "native_paravirt" | "3" => Err(setting.error(SettingProblem::TscModeRemoved)),
        other => Err(setting.error(SettingProblem::UnknownTscMode(other.to_owned()))),
    }
}

/// The kernel command line, as xl's `parse_cmdline`.
fn cmdline(
    settings: &Settings,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Option<String>, ConfigError> {
    let root = settings.string("root")?;
    let extra = settings.string("extra")?;
    if let Some(setting) = settings.get("cmdline") {
        let cmdline = setting.string()?;
        if root.is_some() || extra.is_some() {
            warnings.push(ConfigWarning::CmdlineOverridesRootExtra {
                at: setting.location(),
            });
        }
        return Ok(Some(cmdline.to_owned()));
    }
    Ok(match (root, extra) {
        (Some(root), Some(extra)) => Some(format!("root={root} {extra}")),
        (Some(root), None) => Some(format!("root={root}")),
        (None, Some(extra)) => Some(extra.to_owned()),
        (None, None) => None,
    })
}

fn disks(settings: &Settings) -> Result<Vec<DiskSpec>, ConfigError> {
    let Some(setting) = settings.get("disk") else {
        return Ok(Vec::new());
    };
    let mut disks: Vec<(DiskSpec, u32)> = Vec::new();
    for (spec, item) in setting.string_list()? {
        let disk = DiskSpec::parse(spec)
            .map_err(|e| setting.error_at(item, SettingProblem::Disk(Box::new(e))))?;
        if let Some((_, other_line)) = disks.iter().find(|(d, _)| d.vdev.devid == disk.vdev.devid) {
            return Err(setting.error_at(
                item,
                SettingProblem::DuplicateVdev {
                    vdev: disk.vdev.name.clone(),
                    devid: disk.vdev.devid,
                    other_line: *other_line,
                },
            ));
        }
        disks.push((disk, item.line));
    }
    Ok(disks.into_iter().map(|(d, _)| d).collect())
}

fn vifs(
    settings: &Settings,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<Vec<VifSpec>, ConfigError> {
    let Some(setting) = settings.get("vif") else {
        return Ok(Vec::new());
    };
    let mut vifs: Vec<(VifSpec, u32)> = Vec::new();
    for (index, (spec, item)) in setting.string_list()?.into_iter().enumerate() {
        let (mut vif, vif_warnings) = VifSpec::parse(spec)
            .map_err(|e| setting.error_at(item, SettingProblem::Vif(Box::new(e))))?;
        warnings.extend(vif_warnings.into_iter().map(|warning| ConfigWarning::Vif {
            at: setting.value_location(item),
            warning,
        }));
        if vif.nic_type == Some(NicType::Ioemu) {
            return Err(setting.error_at(item, SettingProblem::EmulatedNicOnPv));
        }
        let devid = *vif
            .devid
            .get_or_insert(u32::try_from(index).unwrap_or(u32::MAX));
        if let Some((_, other_line)) = vifs.iter().find(|(v, _)| v.devid == Some(devid)) {
            return Err(setting.error_at(
                item,
                SettingProblem::DuplicateDevid {
                    devid,
                    other_line: *other_line,
                },
            ));
        }
        vifs.push((vif, item.line));
    }
    Ok(vifs.into_iter().map(|(v, _)| v).collect())
}
