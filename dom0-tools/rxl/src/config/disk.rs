//! Disk specifications: `xl-disk-configuration(5)`.
//!
//! A specification is a comma-separated series of `key=value` parameters,
//! flags and positional parameters (`target`, `format`, `vdev`, `access`,
//! in that order), for example `/dev/vg/guest,raw,xvda,rw` or
//! `format=qcow2, vdev=xvdb, target=/images/b.qcow2`. `target=` takes the
//! rest of the specification, commas included. The forms of xend and xl
//! 4.1 are accepted: `phy:/dev/vg/lv,xvda,w`, `file:/img,xvda1,r`,
//! `tap:aio:/img,xvda,w`, `tap:qcow2:/img,xvda,w`, `qcow2:/img,xvda,w`,
//! and `,hdc:cdrom,r` for an empty CD-ROM drive.
//!
//! The splitting follows libxlu's flex scanner (`libxlu_disk_l.l`): at
//! each point the longest match among its rules wins, the earlier rule on
//! a tie, and the legacy prefixes count as matching the rest of the
//! specification. Its messages are xl's.
//!
//! The virtual device (`vdev`) is decoded into the number the frontend
//! finds in xenstore (`xen-vbd-interface(7)`), as libxl does.

use std::fmt;

/// The image format (`format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image or block device (the default).
    Raw,
    /// QEMU's qcow.
    Qcow,
    /// QEMU's qcow2.
    Qcow2,
    /// Virtual PC's VHD.
    Vhd,
    /// QEMU's QED.
    Qed,
    /// No medium: an empty CD-ROM drive.
    Empty,
}

impl DiskFormat {
    /// The format as written in specifications.
    pub fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow => "qcow",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Qed => "qed",
            DiskFormat::Empty => "empty",
        }
    }

    /// The format for `name` (libxlu's `setformat`: empty means raw).
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "" | "raw" => DiskFormat::Raw,
            "qcow" => DiskFormat::Qcow,
            "qcow2" => DiskFormat::Qcow2,
            "vhd" => DiskFormat::Vhd,
            "empty" => DiskFormat::Empty,
            "qed" => DiskFormat::Qed,
            _ => return None,
        })
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend implementation (`backendtype=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    /// The kernel's blkback (or a user-space one registered as `vbd`).
    Phy,
    /// blktap.
    Tap,
    /// QEMU's Xen disk backend.
    Qdisk,
    /// A standalone (virtio) backend.
    Standalone,
}

/// The protocol the guest sees (`specification=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specification {
    /// Xen's blkif (the default).
    Xen,
    /// virtio-blk.
    Virtio,
}

/// Whether the guest may write (`access=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `r` or `ro`.
    ReadOnly,
    /// `w` or `rw` (the default, except for CD-ROMs).
    ReadWrite,
}

/// The kind of a virtual device name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VdevKind {
    /// A Xen virtual disk: `xvdX[N]` or `dNpM`.
    Xvd,
    /// An IDE disk: `hdX[N]`.
    Hd,
    /// A SCSI disk: `sdX[N]`.
    Sd,
    /// The xenstore number itself, written as a number.
    Number,
}

/// A virtual device (`vdev`) and the device number it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vdev {
    /// The name as written.
    pub name: String,
    /// What kind of name it is.
    pub kind: VdevKind,
    /// The disk index (from 0), unless the name is a bare number.
    pub disk: Option<u32>,
    /// The partition (0 for the whole disk), unless the name is a bare
    /// number.
    pub partition: Option<u32>,
    /// The virtual device number: the device id in xenstore.
    pub devid: u32,
}

/// A name that is no virtual device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid or unsupported virtual disk identifier `{0}'")]
pub struct InvalidVdev(pub String);

/// Largest disk index of the extended `xvd` numbering, `(1 << 20) - 1`.
const XVD_MAX_DISK: u32 = (1 << 20) - 1;
/// Largest partition of the extended `xvd` numbering.
const XVD_MAX_PARTITION: u32 = 255;
/// Major number of `xvd` devices in the compact numbering.
const XVD_MAJOR: u32 = 202;
/// Marks the extended `xvd` numbering.
const XVD_EXTENDED: u32 = 1 << 28;
/// Major number of SCSI disks.
const SD_MAJOR: u32 = 8;
/// Major numbers of the first and second IDE controllers.
const HD_MAJORS: [u32; 2] = [3, 22];

impl Vdev {
    /// Decodes `name` as libxl's `libxl__device_disk_dev_number` does:
    /// `xvdX[N]` and `dNpM` (disks up to 2^20 - 1, partitions up to 255;
    /// `202 << 8 | disk << 4 | partition` up to disk 15 partition 15,
    /// `1 << 28 | disk << 8 | partition` beyond), a bare number (decimal,
    /// `0x` hex or `0` octal, up to `i32::MAX`), `hdX[N]` (disks `a`-`d`,
    /// partitions up to 63) and `sdX[N]` (disks `a`-`p`, partitions up to
    /// 15). Disk letters count on from `z` as `aa`, `ab`, ... Partitions
    /// have no leading zero.
    pub fn parse(name: &str) -> Result<Vdev, InvalidVdev> {
        let found = |kind, disk, partition, devid| Vdev {
            name: name.to_owned(),
            kind,
            disk: Some(disk),
            partition: Some(partition),
            devid,
        };
        let xvd = |disk: u32, partition: u32| {
            let devid = if disk <= 15 && partition <= 15 {
                XVD_MAJOR << 8 | disk << 4 | partition
            } else {
                XVD_EXTENDED | disk << 8 | partition
            };
            found(VdevKind::Xvd, disk, partition, devid)
        };
        if let Some((disk, partition)) = d_p_form(name) {
            return Ok(xvd(disk, partition));
        }
        if let Some((disk, partition)) = lettered(name, "xvd", XVD_MAX_DISK, XVD_MAX_PARTITION) {
            return Ok(xvd(disk, partition));
        }
        if let Some(devid) = bare_number(name) {
            return Ok(Vdev {
                name: name.to_owned(),
                kind: VdevKind::Number,
                disk: None,
                partition: None,
                devid,
            });
        }
        if let Some((disk, partition)) = lettered(name, "hd", 3, 63) {
            let major = HD_MAJORS[usize::from(disk >= 2)];
            return Ok(found(
                VdevKind::Hd,
                disk,
                partition,
                major << 8 | (disk & 1) << 6 | partition,
            ));
        }
        if let Some((disk, partition)) = lettered(name, "sd", 15, 15) {
            return Ok(found(
                VdevKind::Sd,
                disk,
                partition,
                SD_MAJOR << 8 | disk << 4 | partition,
            ));
        }
        Err(InvalidVdev(name.to_owned()))
    }
}

impl fmt::Display for Vdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Decimal digits only, as a number.
fn decimal(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `dNpM`: disk N (below 2^20), partition M (below 256).
fn d_p_form(name: &str) -> Option<(u32, u32)> {
    let (disk, partition) = name.strip_prefix('d')?.split_once('p')?;
    let (disk, partition) = (decimal(disk)?, decimal(partition)?);
    (disk <= XVD_MAX_DISK && partition <= XVD_MAX_PARTITION).then_some((disk, partition))
}

/// `PREFIX` + disk letters (`a`..`z`, then `aa`.. like a spreadsheet's
/// columns) + an optional partition number without leading zeros.
fn lettered(name: &str, prefix: &str, max_disk: u32, max_partition: u32) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 {
        return None;
    }
    let mut index: u32 = 0;
    for (i, letter) in rest.bytes().take(letters).enumerate() {
        let digit = u32::from(letter - b'a');
        index = if i == 0 {
            digit
        } else {
            (index + 1).checked_mul(26)?.checked_add(digit)?
        };
        if index > max_disk {
            return None;
        }
    }
    let partition = &rest[letters..];
    if partition.is_empty() {
        return Some((index, 0));
    }
    if partition.starts_with('0') {
        return None;
    }
    let partition = decimal(partition)?;
    (partition <= max_partition).then_some((index, partition))
}

/// A bare device number: decimal, `0x` hex or `0` octal, up to
/// `i32::MAX`.
fn bare_number(name: &str) -> Option<u32> {
    let (radix, digits) =
        if let Some(hex) = name.strip_prefix("0x").or_else(|| name.strip_prefix("0X")) {
            (16, hex)
        } else if name.len() > 1 && name.starts_with('0') {
            (8, &name[1..])
        } else {
            (10, name)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = u32::from_str_radix(digits, radix).ok()?;
    (value <= i32::MAX.unsigned_abs()).then_some(value)
}

/// A disk: one item of `disk = [ ... ]`, or `xl block-attach`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The block device, image file or script argument; `None` for an
    /// empty CD-ROM drive.
    pub target: Option<String>,
    /// The image format.
    pub format: DiskFormat,
    /// The device as the guest sees it.
    pub vdev: Vdev,
    /// Whether the guest may write; CD-ROMs are always read-only.
    pub access: Access,
    /// A CD-ROM drive (`devtype=cdrom`): removable and read-only.
    pub is_cdrom: bool,
    /// The backend domain's name (`backend=`), dom0 if absent.
    pub backend_domain: Option<String>,
    /// The backend implementation (`backendtype=`), chosen by the
    /// toolstack if absent. The legacy `phy:`/`tap:` prefixes do not set
    /// it (xl ignores them).
    pub backend_type: Option<BackendType>,
    /// The protocol (`specification=`), Xen's blkif if absent.
    pub specification: Option<Specification>,
    /// The hotplug script (`script=`, or `block-iscsi` and the like from
    /// the legacy `iscsi:` prefixes).
    pub script: Option<String>,
    /// `direct-io-safe`: the backend need not avoid `O_DIRECT`.
    pub direct_io_safe: bool,
    /// `discard` / `no-discard`; the backend's default if absent.
    pub discard: Option<bool>,
    /// `trusted` / `untrusted`; trusted if absent.
    pub trusted: Option<bool>,
}

/// What is wrong with a disk specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskProblem {
    /// `format=` (or the positional format) names no format.
    #[error("unknown value for format")]
    UnknownFormat,
    /// `access=` (or the positional access) is not `r`, `ro`, `w` or `rw`.
    #[error("unknown value for access")]
    UnknownAccess,
    /// `backendtype=` names no backend.
    #[error("unknown value for backendtype")]
    UnknownBackendType,
    /// `specification=` is not `xen` or `virtio`.
    #[error("unknown value for specification")]
    UnknownSpecification,
    /// `devtype=` is not `disk` or `cdrom`.
    #[error("unknown value for type")]
    UnknownDevtype,
    /// The legacy `vdev:type` has a type other than `disk` or `cdrom`.
    #[error("unknown deprecated type")]
    UnknownDeprecatedType,
    /// A parameter is given twice with different values.
    #[error("{0} respecified")]
    Respecified(&'static str),
    /// A `key=value` with an unknown key.
    #[error("unknown parameter")]
    UnknownParameter,
    /// A legacy `prefix:` that xl does not know.
    #[error("unknown deprecated disk prefix")]
    UnknownPrefix,
    /// More than four positional parameters.
    #[error("too many positional parameters")]
    TooManyPositional,
    /// Text that starts no parameter (such as `=`).
    #[error("bad disk syntax")]
    BadSyntax,
    /// No virtual device.
    #[error("no vdev specified")]
    NoVdev,
    /// No target, and the device is no CD-ROM drive.
    #[error("no target specified (and device not removable)")]
    NoTarget,
    /// The virtual device is not a name libxl knows.
    #[error("invalid or unsupported virtual disk identifier")]
    InvalidVdev,
    /// A parameter xl knows that rxl does not implement.
    #[error("{0} is not supported by rxl")]
    Unsupported(&'static str),
}

/// A disk specification that cannot be used.
///
/// Displayed as xl does: ``config parsing error in disk specification:
/// unknown value for format: near `xvda' in `/dev/vg/lv,xvda,w'``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "config parsing error in disk specification: {problem}{} in `{spec}'",
    near.as_ref().map(|n| format!(": near `{n}'")).unwrap_or_default()
)]
pub struct DiskError {
    /// The specification.
    pub spec: String,
    /// The part of it at fault, where there is one.
    pub near: Option<String>,
    /// What is wrong.
    pub problem: DiskProblem,
}

impl DiskSpec {
    /// Parses one disk specification.
    pub fn parse(spec: &str) -> Result<DiskSpec, DiskError> {
        Self::parse_parts(&[spec])
    }

    /// Parses a disk specification given in parts, as `xl block-attach
    /// DOMAIN PART...` takes it: the parts are read in turn into one disk.
    pub fn parse_parts<S: AsRef<str>>(parts: &[S]) -> Result<DiskSpec, DiskError> {
        let mut state = State::default();
        let mut last = "";
        for part in parts {
            last = part.as_ref();
            scan(&mut state, last).map_err(|(near, problem)| DiskError {
                spec: last.to_owned(),
                near,
                problem,
            })?;
        }
        state.finish().map_err(|(near, problem)| DiskError {
            spec: last.to_owned(),
            near,
            problem,
        })
    }
}

/// An error and the text it is near.
type Failure = (Option<String>, DiskProblem);

fn failure(near: &str, problem: DiskProblem) -> Failure {
    (Some(near.to_owned()), problem)
}

/// What has been read so far (libxlu's `DiskParseContext` and disk).
#[derive(Debug)]
struct State {
    target: Option<String>,
    format: Option<DiskFormat>,
    vdev: Option<String>,
    readwrite: bool,
    /// The positional access has been given (`access=` does not count).
    access_set: bool,
    is_cdrom: bool,
    backend_domain: Option<String>,
    backend_type: Option<BackendType>,
    specification: Option<Specification>,
    script: Option<String>,
    direct_io_safe: bool,
    discard: Option<bool>,
    trusted: Option<bool>,
    had_deprecated_prefix: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            target: None,
            format: None,
            vdev: None,
            readwrite: true,
            access_set: false,
            is_cdrom: false,
            backend_domain: None,
            backend_type: None,
            specification: None,
            script: None,
            direct_io_safe: false,
            discard: None,
            trusted: None,
            had_deprecated_prefix: false,
        }
    }
}

/// Sets a string parameter; giving it again is an error unless it was
/// empty.
fn save(slot: &mut Option<String>, what: &'static str, value: &str) -> Result<(), Failure> {
    if slot.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(failure(value, DiskProblem::Respecified(what)));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

/// Sets an enumerated parameter; giving it again with another value is an
/// error.
fn set_once<T: PartialEq>(
    slot: &mut Option<T>,
    value: T,
    what: &'static str,
    text: &str,
) -> Result<(), Failure> {
    match slot {
        Some(old) if *old != value => Err(failure(text, DiskProblem::Respecified(what))),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

impl State {
    fn set_format(&mut self, name: &str) -> Result<(), Failure> {
        let format =
            DiskFormat::from_name(name).ok_or_else(|| failure(name, DiskProblem::UnknownFormat))?;
        set_once(&mut self.format, format, "format", name)
    }

    fn set_access(&mut self, value: &str) -> Result<(), Failure> {
        self.readwrite = match value {
            "r" | "ro" => false,
            "" | "w" | "rw" => true,
            _ => return Err(failure(value, DiskProblem::UnknownAccess)),
        };
        Ok(())
    }

    fn set_backend_type(&mut self, value: &str) -> Result<(), Failure> {
        let backend = match value {
            "phy" => BackendType::Phy,
            "tap" => BackendType::Tap,
            "qdisk" => BackendType::Qdisk,
            "standalone" => BackendType::Standalone,
            _ => return Err(failure(value, DiskProblem::UnknownBackendType)),
        };
        set_once(&mut self.backend_type, backend, "backend", value)
    }

    fn set_specification(&mut self, value: &str) -> Result<(), Failure> {
        let specification = match value {
            "xen" => Specification::Xen,
            "virtio" => Specification::Virtio,
            _ => return Err(failure(value, DiskProblem::UnknownSpecification)),
        };
        set_once(
            &mut self.specification,
            specification,
            "specification",
            value,
        )
    }

    /// The legacy `vdev:devtype`; `Ok(false)` if `text` has no colon.
    fn vdev_and_devtype(&mut self, text: &str) -> Result<bool, Failure> {
        let Some((vdev, devtype)) = text.rsplit_once(':') else {
            return Ok(false);
        };
        save(&mut self.vdev, "vdev", vdev)?;
        self.is_cdrom = match devtype {
            "cdrom" => true,
            "disk" => false,
            _ => return Err(failure(devtype, DiskProblem::UnknownDeprecatedType)),
        };
        Ok(true)
    }

    /// The next positional parameter.
    fn positional(&mut self, text: &str) -> Result<(), Failure> {
        if self.target.is_none() {
            self.target = Some(text.to_owned());
        } else if !self.had_deprecated_prefix && self.format.is_none() {
            if self.target.as_deref() == Some("") && self.vdev_and_devtype(text)? {
                self.format = Some(DiskFormat::Empty);
            } else {
                self.set_format(text)?;
            }
        } else if self.vdev.is_none() {
            if !self.vdev_and_devtype(text)? {
                save(&mut self.vdev, "vdev", text)?;
            }
        } else if !self.access_set {
            self.access_set = true;
            self.set_access(text)?;
        } else {
            return Err(failure(text, DiskProblem::TooManyPositional));
        }
        Ok(())
    }

    fn finish(self) -> Result<DiskSpec, Failure> {
        let mut format = self.format.unwrap_or(DiskFormat::Raw);
        let mut target = self.target;
        let mut readwrite = self.readwrite;
        if self.is_cdrom {
            readwrite = false;
            if target.as_deref().map_or(true, str::is_empty) {
                format = DiskFormat::Empty;
                target = None;
            }
        }
        let Some(vdev) = self.vdev else {
            return Err((None, DiskProblem::NoVdev));
        };
        // xl lets an empty target through to libxl, which then fails to
        // find the device; say so here.
        if !self.is_cdrom
            && format != DiskFormat::Empty
            && target.as_deref().map_or(true, str::is_empty)
        {
            return Err((None, DiskProblem::NoTarget));
        }
        let vdev = Vdev::parse(&vdev).map_err(|e| (Some(e.0), DiskProblem::InvalidVdev))?;
        Ok(DiskSpec {
            target,
            format,
            vdev,
            access: if readwrite {
                Access::ReadWrite
            } else {
                Access::ReadOnly
            },
            is_cdrom: self.is_cdrom,
            backend_domain: self.backend_domain,
            backend_type: self.backend_type,
            specification: self.specification,
            script: self.script,
            direct_io_safe: self.direct_io_safe,
            discard: self.discard,
            trusted: self.trusted,
        })
    }
}

/// A scanner rule's pattern (flex syntax in the comments).
#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// `[ \t\n]+/([^ \t\n].*)?`
    Blank,
    /// `LITERAL,?`
    Flag(&'static str),
    /// `LITERAL[^,]*,?` where LITERAL ends in `=`.
    KeyValue(&'static str),
    /// `target=.*`
    Target,
    /// `[a-z][-a-z0-9]*=[^,],?`
    UnknownKey,
    /// `(ALT|ALT...)/.*` where each ALT ends in `:`.
    Prefix(&'static [&'static str]),
    /// `[a-z][a-z0-9]*:/([^a-z0-9].*)?`
    UnknownPrefix,
    /// `[^=,]*,|[^=,]+,?`
    Positional,
    /// `.`
    Any,
}

/// What a rule does with the text it matched.
#[derive(Debug, Clone, Copy)]
enum Action {
    Skip,
    Format,
    Cdrom,
    Disk,
    OtherDevtype,
    Access,
    Backend,
    BackendType,
    Specification,
    Vdev,
    Script,
    DirectIoSafe,
    Discard(bool),
    NoColo,
    Colo,
    Trusted(bool),
    Target,
    UnknownKey,
    FormatPrefix,
    ScriptPrefix,
    IgnoredPrefix,
    UnknownPrefix,
    Positional,
    Bad,
}

/// libxlu's rules, in its order (the order breaks ties).
const RULES: &[(Pattern, Action)] = &[
    (Pattern::Blank, Action::Skip),
    (Pattern::KeyValue("format="), Action::Format),
    (Pattern::Flag("cdrom"), Action::Cdrom),
    (Pattern::Flag("devtype=cdrom"), Action::Cdrom),
    (Pattern::Flag("devtype=disk"), Action::Disk),
    (Pattern::KeyValue("devtype="), Action::OtherDevtype),
    (Pattern::KeyValue("access="), Action::Access),
    (Pattern::KeyValue("backend="), Action::Backend),
    (Pattern::KeyValue("backendtype="), Action::BackendType),
    (Pattern::KeyValue("specification="), Action::Specification),
    (Pattern::KeyValue("vdev="), Action::Vdev),
    (Pattern::KeyValue("script="), Action::Script),
    (Pattern::Flag("direct-io-safe"), Action::DirectIoSafe),
    (Pattern::Flag("discard"), Action::Discard(true)),
    (Pattern::Flag("no-discard"), Action::Discard(false)),
    (Pattern::Flag("colo"), Action::Colo),
    (Pattern::Flag("no-colo"), Action::NoColo),
    (Pattern::KeyValue("colo-host="), Action::Colo),
    (Pattern::KeyValue("colo-port="), Action::Colo),
    (Pattern::KeyValue("colo-export="), Action::Colo),
    (Pattern::KeyValue("active-disk="), Action::Colo),
    (Pattern::KeyValue("hidden-disk="), Action::Colo),
    (Pattern::Flag("trusted"), Action::Trusted(true)),
    (Pattern::Flag("untrusted"), Action::Trusted(false)),
    (Pattern::Target, Action::Target),
    (Pattern::UnknownKey, Action::UnknownKey),
    (
        Pattern::Prefix(&["raw:", "qcow:", "qcow2:", "vhd:"]),
        Action::FormatPrefix,
    ),
    (
        Pattern::Prefix(&["iscsi:", "nbd:", "enbd:", "drbd:"]),
        Action::ScriptPrefix,
    ),
    (Pattern::Prefix(&["tapdisk:"]), Action::IgnoredPrefix),
    (Pattern::Prefix(&["tap:", "tap2:"]), Action::IgnoredPrefix),
    (Pattern::Prefix(&["aio:"]), Action::IgnoredPrefix),
    (Pattern::Prefix(&["ioemu:"]), Action::IgnoredPrefix),
    (Pattern::Prefix(&["file:"]), Action::IgnoredPrefix),
    (Pattern::Prefix(&["phy:"]), Action::IgnoredPrefix),
    (Pattern::UnknownPrefix, Action::UnknownPrefix),
    (Pattern::Positional, Action::Positional),
    (Pattern::Any, Action::Bad),
];

/// Length of `.*` at the start of `b`: up to the first newline.
fn rest_of_line(b: &[u8]) -> usize {
    b.iter().position(|&c| c == b'\n').unwrap_or(b.len())
}

/// Length of the run at the start of `b` of bytes satisfying `pred`.
fn run(b: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    b.iter().position(|&c| !pred(c)).unwrap_or(b.len())
}

/// One more byte if `b[at]` is a comma.
fn comma(b: &[u8], at: usize) -> usize {
    at + usize::from(b.get(at) == Some(&b','))
}

impl Pattern {
    /// The length the rule matches at the start of `rest` (trailing
    /// context included, as flex counts it) and the length it consumes.
    fn matches(self, rest: &str) -> Option<(usize, usize)> {
        let b = rest.as_bytes();
        match self {
            Pattern::Blank => {
                let blanks = run(b, |c| matches!(c, b' ' | b'\t' | b'\n'));
                (blanks > 0).then(|| (blanks + rest_of_line(&b[blanks..]), blanks))
            }
            Pattern::Flag(literal) => rest.starts_with(literal).then(|| {
                let end = comma(b, literal.len());
                (end, end)
            }),
            Pattern::KeyValue(literal) => rest.starts_with(literal).then(|| {
                let end = comma(b, literal.len() + run(&b[literal.len()..], |c| c != b','));
                (end, end)
            }),
            Pattern::Target => rest.starts_with("target=").then(|| {
                let end = 7 + rest_of_line(&b[7..]);
                (end, end)
            }),
            Pattern::UnknownKey => {
                if !b.first()?.is_ascii_lowercase() {
                    return None;
                }
                let key = 1 + run(&b[1..], |c| {
                    c == b'-' || c.is_ascii_lowercase() || c.is_ascii_digit()
                });
                if b.get(key) != Some(&b'=') {
                    return None;
                }
                let value = rest[key + 1..].chars().next().filter(|&c| c != ',')?;
                let end = comma(b, key + 1 + value.len_utf8());
                Some((end, end))
            }
            Pattern::Prefix(alternatives) => alternatives
                .iter()
                .find(|head| rest.starts_with(*head))
                .map(|head| (head.len() + rest_of_line(&b[head.len()..]), head.len())),
            Pattern::UnknownPrefix => {
                if !b.first()?.is_ascii_lowercase() {
                    return None;
                }
                let name = 1 + run(&b[1..], |c| c.is_ascii_lowercase() || c.is_ascii_digit());
                if b.get(name) != Some(&b':') {
                    return None;
                }
                let head = name + 1;
                match b.get(head) {
                    Some(&c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
                        Some((head + 1 + rest_of_line(&b[head + 1..]), head))
                    }
                    _ => Some((head, head)),
                }
            }
            Pattern::Positional => {
                let text = run(b, |c| c != b'=' && c != b',');
                let end = comma(b, text);
                (end > 0).then_some((end, end))
            }
            Pattern::Any => {
                let first = rest.chars().next()?;
                (first != '\n').then(|| (first.len_utf8(), first.len_utf8()))
            }
        }
    }
}

/// Reads one specification (or part) into `state`, as libxlu's scanner.
fn scan(state: &mut State, spec: &str) -> Result<(), Failure> {
    let mut pos = 0;
    while pos < spec.len() {
        let rest = &spec[pos..];
        let mut best: Option<(usize, usize, Action)> = None;
        for &(pattern, action) in RULES {
            if let Some((total, consumed)) = pattern.matches(rest) {
                if best.map_or(true, |(longest, _, _)| total > longest) {
                    best = Some((total, consumed, action));
                }
            }
        }
        let Some((_, consumed, action)) = best else {
            // Only a newline matches nothing; flex would stop there too.
            return Err(failure(rest, DiskProblem::BadSyntax));
        };
        let text = &rest[..consumed];
        pos += consumed;
        // The value after `=`, without the comma that ends it.
        let stripped = text.strip_suffix(',').unwrap_or(text);
        let value = stripped.split_once('=').map_or("", |(_, v)| v);
        match action {
            Action::Skip => {}
            Action::IgnoredPrefix => state.had_deprecated_prefix = true,
            Action::Format => state.set_format(value)?,
            Action::Cdrom => state.is_cdrom = true,
            Action::Disk => state.is_cdrom = false,
            Action::OtherDevtype => return Err(failure(stripped, DiskProblem::UnknownDevtype)),
            Action::Access => state.set_access(value)?,
            Action::Backend => save(&mut state.backend_domain, "backend", value)?,
            Action::BackendType => state.set_backend_type(value)?,
            Action::Specification => state.set_specification(value)?,
            Action::Vdev => save(&mut state.vdev, "vdev", value)?,
            Action::Script => save(&mut state.script, "script", value)?,
            Action::DirectIoSafe => state.direct_io_safe = true,
            Action::Discard(on) => state.discard = Some(on),
            Action::NoColo => {}
            Action::Colo => return Err(failure(stripped, DiskProblem::Unsupported("COLO"))),
            Action::Trusted(on) => state.trusted = Some(on),
            Action::Target => save(&mut state.target, "target", value)?,
            Action::UnknownKey => {
                // libxlu shows one character of the value; show it all.
                let end = run(rest.as_bytes(), |c| c != b',');
                return Err(failure(&rest[..end], DiskProblem::UnknownParameter));
            }
            Action::FormatPrefix => {
                state.had_deprecated_prefix = true;
                state.set_format(&text[..text.len() - 1])?;
            }
            Action::ScriptPrefix => {
                state.had_deprecated_prefix = true;
                let script = format!("block-{}", &text[..text.len() - 1]);
                save(&mut state.script, "script", &script)?;
            }
            Action::UnknownPrefix => return Err(failure(text, DiskProblem::UnknownPrefix)),
            Action::Positional => state.positional(stripped)?,
            Action::Bad => {
                let end = rest_of_line(rest.as_bytes());
                return Err(failure(&rest[..end], DiskProblem::BadSyntax));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(spec: &str) -> DiskSpec {
        DiskSpec::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    fn error(spec: &str) -> String {
        DiskSpec::parse(spec).unwrap_err().to_string()
    }

    fn devid(vdev: &str) -> u32 {
        Vdev::parse(vdev).unwrap_or_else(|e| panic!("{e}")).devid
    }

    /// The fields the manual's equivalent examples must agree on.
    fn summary(d: &DiskSpec) -> (Option<&str>, DiskFormat, &str, Access, bool) {
        (
            d.target.as_deref(),
            d.format,
            d.vdev.name.as_str(),
            d.access,
            d.is_cdrom,
        )
    }

    #[test]
    fn the_manuals_equivalent_disk_specifications() {
        let expected = (
            Some("/dev/vg/guest-volume"),
            DiskFormat::Raw,
            "hda",
            Access::ReadWrite,
            false,
        );
        for spec in [
            "/dev/vg/guest-volume,,hda",
            "/dev/vg/guest-volume,raw,hda,rw",
            "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
            "raw:/dev/vg/guest-volume,hda,w",
        ] {
            assert_eq!(summary(&disk(spec)), expected, "{spec}");
        }
    }

    #[test]
    fn the_manuals_equivalent_cdrom_specifications() {
        let expected = (
            Some("/root/image.iso"),
            DiskFormat::Raw,
            "hdc",
            Access::ReadOnly,
            true,
        );
        for spec in [
            "/root/image.iso,,hdc,cdrom",
            "/root/image.iso,,hdc,,cdrom",
            "/root/image.iso,raw,hdc,devtype=cdrom",
            "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
            "raw:/root/image.iso,hdc:cdrom,ro",
        ] {
            assert_eq!(summary(&disk(spec)), expected, "{spec}");
        }
    }

    #[test]
    fn empty_cdrom_drives() {
        for spec in [
            ",hdc:cdrom,r",
            "vdev=hdc,devtype=cdrom",
            ",,hdc,cdrom",
            "hdc:cdrom",
        ] {
            let d = DiskSpec::parse(spec);
            if spec == "hdc:cdrom" {
                // A lone first positional is the target, and there is no vdev.
                assert_eq!(d.unwrap_err().problem, DiskProblem::NoVdev);
                continue;
            }
            let d = d.unwrap();
            assert_eq!(
                summary(&d),
                (None, DiskFormat::Empty, "hdc", Access::ReadOnly, true),
                "{spec}"
            );
        }
    }

    #[test]
    fn legacy_prefixes() {
        let d = disk("phy:/dev/vg/lv,xvda,w");
        assert_eq!(
            summary(&d),
            (
                Some("/dev/vg/lv"),
                DiskFormat::Raw,
                "xvda",
                Access::ReadWrite,
                false
            )
        );
        assert_eq!(d.backend_type, None);

        let d = disk("file:/img,xvda1,r");
        assert_eq!(
            summary(&d),
            (
                Some("/img"),
                DiskFormat::Raw,
                "xvda1",
                Access::ReadOnly,
                false
            )
        );

        let d = disk("tap:aio:/img,xvda,w");
        assert_eq!(
            summary(&d),
            (
                Some("/img"),
                DiskFormat::Raw,
                "xvda",
                Access::ReadWrite,
                false
            )
        );

        let d = disk("tap:qcow2:/img,xvda,w");
        assert_eq!(
            summary(&d),
            (
                Some("/img"),
                DiskFormat::Qcow2,
                "xvda",
                Access::ReadWrite,
                false
            )
        );

        assert_eq!(disk("qcow2:/img,xvdb,w").format, DiskFormat::Qcow2);
        assert_eq!(disk("qcow:/img,xvdb,w").format, DiskFormat::Qcow);
        assert_eq!(disk("vhd:/img,xvdb,w").format, DiskFormat::Vhd);
        assert_eq!(
            disk("tap2:tapdisk:aio:/img,xvdb").target.as_deref(),
            Some("/img")
        );
        assert_eq!(disk("ioemu:/img,hda,w").vdev.name, "hda");

        let d = disk("iscsi:iqn.2001-05.com.example:disk1,xvdb,w");
        assert_eq!(d.script.as_deref(), Some("block-iscsi"));
        assert_eq!(d.target.as_deref(), Some("iqn.2001-05.com.example:disk1"));
        assert_eq!(
            disk("nbd:host 1234,xvdb,w").script.as_deref(),
            Some("block-nbd")
        );
        assert_eq!(
            disk("drbd:res0,xvdb,w").script.as_deref(),
            Some("block-drbd")
        );
    }

    #[test]
    fn unknown_legacy_prefix() {
        assert_eq!(
            error("foo:/img,xvda,w"),
            "config parsing error in disk specification: unknown deprecated disk prefix: near `foo:' in `foo:/img,xvda,w'"
        );
        // A colon followed by a letter is no prefix: this is a target.
        assert_eq!(disk("img:1,,xvda").target.as_deref(), Some("img:1"));
    }

    #[test]
    fn keyword_parameters() {
        let d = disk(
            "vdev=xvdb, target=/dev/vg/data, backend=driverdom, backendtype=qdisk, script=block-foo, \
             direct-io-safe, no-discard, untrusted, specification=xen, format=qed, access=ro",
        );
        // target= takes the rest, commas and all.
        assert_eq!(
            d.target.as_deref(),
            Some(
                "/dev/vg/data, backend=driverdom, backendtype=qdisk, script=block-foo, \
                 direct-io-safe, no-discard, untrusted, specification=xen, format=qed, access=ro"
            )
        );
        assert_eq!(d.format, DiskFormat::Raw);

        let d = disk(
            "backend=driverdom, backendtype=qdisk, script=block-foo, direct-io-safe, no-discard, \
             untrusted, specification=virtio, format=qed, access=ro, vdev=xvdb, target=/dev/vg/data",
        );
        assert_eq!(d.target.as_deref(), Some("/dev/vg/data"));
        assert_eq!(d.vdev.name, "xvdb");
        assert_eq!(d.backend_domain.as_deref(), Some("driverdom"));
        assert_eq!(d.backend_type, Some(BackendType::Qdisk));
        assert_eq!(d.script.as_deref(), Some("block-foo"));
        assert!(d.direct_io_safe);
        assert_eq!(d.discard, Some(false));
        assert_eq!(d.trusted, Some(false));
        assert_eq!(d.specification, Some(Specification::Virtio));
        assert_eq!(d.format, DiskFormat::Qed);
        assert_eq!(d.access, Access::ReadOnly);

        let d = disk("/img,qcow,xvda,w,discard,trusted,backendtype=phy");
        assert_eq!(d.format, DiskFormat::Qcow);
        assert_eq!(d.discard, Some(true));
        assert_eq!(d.trusted, Some(true));
        assert_eq!(d.backend_type, Some(BackendType::Phy));
        assert_eq!(
            disk("/img,,xvda,backendtype=tap").backend_type,
            Some(BackendType::Tap)
        );
        assert_eq!(
            disk("/img,,xvda,backendtype=standalone").backend_type,
            Some(BackendType::Standalone)
        );
    }

    #[test]
    fn defaults() {
        let d = disk("/img,,xvda");

        assert_eq!(d.format, DiskFormat::Raw);
        assert_eq!(d.access, Access::ReadWrite);
        assert!(!d.is_cdrom);
        assert_eq!(
            (d.backend_domain, d.backend_type, d.specification, d.script),
            (None, None, None, None)
        );
        assert!(!d.direct_io_safe);
        assert_eq!((d.discard, d.trusted), (None, None));
    }

    #[test]
    fn target_may_follow_an_empty_positional_target() {
        let d = disk(",raw,xvda,rw,target=/a,b:c");

        assert_eq!(d.target.as_deref(), Some("/a,b:c"));
        assert_eq!(d.format, DiskFormat::Raw);
    }

    #[test]
    fn target_strips_one_trailing_comma() {
        assert_eq!(
            disk("vdev=xvda,target=/img,").target.as_deref(),
            Some("/img")
        );
    }

    #[test]
    fn blanks_before_parameters_are_ignored() {
        let d = disk("  /img , qcow2,\txvda, ro");

        // Blanks after a parameter are kept, as in xl.
        assert_eq!(d.target.as_deref(), Some("/img "));
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.access, Access::ReadOnly);
    }

    #[test]
    fn devtype_disk_and_legacy_vdev_disk_type() {
        assert!(!disk("/img,,xvda,devtype=disk").is_cdrom);
        assert!(!disk("phy:/dev/x,xvda:disk,w").is_cdrom);
        assert!(disk("phy:/dev/x,hdc:cdrom,r").is_cdrom);
    }

    #[test]
    fn errors_name_the_parameter_and_the_specification() {
        assert_eq!(
            error("/dev/vg/lv,xvda,w"),
            "config parsing error in disk specification: unknown value for format: near `xvda' in `/dev/vg/lv,xvda,w'"
        );
        assert_eq!(
            error("/img,raw,xvda,rx"),
            "config parsing error in disk specification: unknown value for access: near `rx' in `/img,raw,xvda,rx'"
        );
        assert_eq!(
            error("/img,raw,xvda,w,extra"),
            "config parsing error in disk specification: too many positional parameters: near `extra' in `/img,raw,xvda,w,extra'"
        );
        assert_eq!(
            error("/img,raw"),
            "config parsing error in disk specification: no vdev specified in `/img,raw'"
        );
        assert_eq!(
            error("vdev=xvda"),
            "config parsing error in disk specification: no target specified (and device not removable) in `vdev=xvda'"
        );
        assert_eq!(
            error("/img,,xvda,devtype=floppy"),
            "config parsing error in disk specification: unknown value for type: near `devtype=floppy' in `/img,,xvda,devtype=floppy'"
        );
        assert_eq!(
            error("/img,,xvda,foo=bar"),
            "config parsing error in disk specification: unknown parameter: near `foo=bar' in `/img,,xvda,foo=bar'"
        );
        assert_eq!(
            error("/img,,xvda,=x"),
            "config parsing error in disk specification: bad disk syntax: near `=x' in `/img,,xvda,=x'"
        );
        assert_eq!(
            error("/img,,xvda,vdev=xvdb"),
            "config parsing error in disk specification: vdev respecified: near `xvdb' in `/img,,xvda,vdev=xvdb'"
        );
        assert_eq!(
            error("/img,,xvda0"),
            "config parsing error in disk specification: invalid or unsupported virtual disk identifier: near `xvda0' in `/img,,xvda0'"
        );
        assert!(error("/img,,xvda,backendtype=nbd")
            .contains("unknown value for backendtype: near `nbd'"));
        assert!(error("/img,,xvda,specification=scsi").contains("unknown value for specification"));
        assert!(error("/img,qcow2,xvda,format=raw").contains("format respecified: near `raw'"));
        assert!(error("/img,,xvda,backendtype=phy,backendtype=tap").contains("backend respecified"));
        assert!(error("phy:/dev/x,hdc:tape,r").contains("unknown deprecated type: near `tape'"));
        assert!(error("/img,,xvda,target=/other").contains("target respecified"));
    }

    #[test]
    fn same_value_twice_is_allowed() {
        assert_eq!(
            disk("/img,qcow2,xvda,format=qcow2").format,
            DiskFormat::Qcow2
        );
        assert_eq!(disk("vdev=,vdev=xvda,target=/x").vdev.name, "xvda");
    }

    #[test]
    fn colo_is_rejected() {
        assert_eq!(
            error("/img,,xvda,colo,colo-host=h"),
            "config parsing error in disk specification: COLO is not supported by rxl: near `colo' in `/img,,xvda,colo,colo-host=h'"
        );
        assert!(error("/img,,xvda,colo-port=9000").contains("COLO is not supported"));
        assert!(!disk("/img,,xvda,no-colo").is_cdrom);
    }

    #[test]
    fn parts_are_read_into_one_disk() {
        let d = DiskSpec::parse_parts(&["/img", "qcow2", "xvdc", "ro"]).unwrap();

        assert_eq!(
            summary(&d),
            (
                Some("/img"),
                DiskFormat::Qcow2,
                "xvdc",
                Access::ReadOnly,
                false
            )
        );
        assert!(DiskSpec::parse_parts(&["/img", "xvdc"]).is_err());
        assert_eq!(
            DiskSpec::parse_parts(&["phy:/dev/x", "xvdc", "w"])
                .unwrap()
                .vdev
                .devid,
            51744
        );
    }

    #[test]
    fn xvd_numbering() {
        assert_eq!(devid("xvda"), 202 << 8);
        assert_eq!(devid("xvda1"), 202 << 8 | 1);
        assert_eq!(devid("xvdb"), 202 << 8 | 1 << 4);
        assert_eq!(devid("xvdb2"), 51730);
        assert_eq!(devid("xvdp15"), 202 << 8 | 15 << 4 | 15);
        // Beyond disk 15 or partition 15: the extended numbering.
        assert_eq!(devid("xvdq"), 1 << 28 | 16 << 8);
        assert_eq!(devid("xvda16"), 1 << 28 | 16);
        assert_eq!(devid("xvdz"), 1 << 28 | 25 << 8);
        assert_eq!(devid("xvdaa"), 1 << 28 | 26 << 8);
        assert_eq!(devid("xvdtq37"), 1 << 28 | 536 << 8 | 37);
        assert_eq!(devid("xvda255"), 1 << 28 | 255);
        assert_eq!(devid("d0p0"), 202 << 8);
        assert_eq!(devid("d1p2"), 202 << 8 | 1 << 4 | 2);
        assert_eq!(devid("d536p37"), devid("xvdtq37"));
        assert_eq!(devid("d1048575p255"), 1 << 28 | 1_048_575 << 8 | 255);
        // The largest disk index: 2^20 - 1, "bgqcv".
        assert_eq!(devid("xvdbgqcv"), 1 << 28 | 1_048_575 << 8);

        let v = Vdev::parse("xvdtq37").unwrap();
        assert_eq!(
            (v.kind, v.disk, v.partition),
            (VdevKind::Xvd, Some(536), Some(37))
        );
    }

    #[test]
    fn hd_sd_and_numeric_numbering() {
        assert_eq!(devid("hda"), 3 << 8);
        assert_eq!(devid("hdb"), 3 << 8 | 64);
        assert_eq!(devid("hdc"), 22 << 8);
        assert_eq!(devid("hdc2"), 22 << 8 | 2);
        assert_eq!(devid("hdd63"), 22 << 8 | 64 | 63);
        assert_eq!(devid("sda"), 8 << 8);
        assert_eq!(devid("sdb3"), 8 << 8 | 1 << 4 | 3);
        assert_eq!(devid("sdp15"), 8 << 8 | 15 << 4 | 15);
        assert_eq!(devid("51712"), 51712);
        assert_eq!(devid("0xca00"), 51712);
        assert_eq!(devid("0145000"), 51712);
        assert_eq!(devid("0"), 0);
        assert_eq!(devid("2147483647"), 2_147_483_647);
        let v = Vdev::parse("51712").unwrap();
        assert_eq!(
            (v.kind, v.disk, v.partition),
            (VdevKind::Number, None, None)
        );
        assert_eq!(Vdev::parse("hdc").unwrap().kind, VdevKind::Hd);
        assert_eq!(Vdev::parse("sdb").unwrap().kind, VdevKind::Sd);
    }

    #[test]
    fn invalid_vdevs() {
        for name in [
            "",
            "xvd",
            "xvd1",
            "xvda0",
            "xvda01",
            "xvda256",
            "xvdA",
            "xvda-1",
            "xvdbgqcw",
            "hde",
            "hda64",
            "sdq",
            "sda16",
            "vda",
            "d0",
            "d0p",
            "dp1",
            "d0p256",
            "d1048576p0",
            "2147483648",
            "-1",
            "0x",
            "08",
            "xvda 1",
            "xvda ",
        ] {
            assert_eq!(
                Vdev::parse(name),
                Err(InvalidVdev(name.to_owned())),
                "{name:?}"
            );
        }
        assert_eq!(
            InvalidVdev("vda".into()).to_string(),
            "invalid or unsupported virtual disk identifier `vda'"
        );
    }

    #[test]
    fn arbitrary_specifications_never_panic() {
        let alphabet = [
            "a",
            "xvda",
            ",",
            "=",
            ":",
            "/",
            " ",
            "\t",
            "\n",
            "target=",
            "phy:",
            "tap:",
            "raw:",
            "vdev=",
            "cdrom",
            "format=",
            "access=",
            "r",
            "1",
            "ü",
            "foo:",
            "colo",
            "hdc:cdrom",
            "0x",
        ];
        for spec in crate::config::file::tests::pseudo_random_texts(&alphabet, 20_000, 2) {
            let _ = DiskSpec::parse(&spec);
        }
    }
}
