//! Suites, servers and configuration data.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::validate::{self, ValidationError};

/// The memory of a suite's servers when `suite-add` is not told, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// The vCPUs of a suite's servers when `suite-add` is not told.
pub const DEFAULT_VCPUS: u32 = 1;

/// The format of a suite's root image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// The disk's bytes as they are.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
}

impl ImageFormat {
    /// The format's name, as QEMU and `xl-disk-configuration(5)` write it.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no image format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image format {0:?}: use raw or qcow2")]
pub struct UnknownFormat(pub String);

impl FromStr for ImageFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            _ => Err(UnknownFormat(s.to_owned())),
        }
    }
}

impl From<ImageFormat> for rblkback::ImageFormat {
    fn from(format: ImageFormat) -> Self {
        match format {
            ImageFormat::Raw => rblkback::ImageFormat::Raw,
            ImageFormat::Qcow2 => rblkback::ImageFormat::Qcow2,
        }
    }
}

impl From<rblkback::ImageFormat> for ImageFormat {
    fn from(format: rblkback::ImageFormat) -> Self {
        match format {
            rblkback::ImageFormat::Raw => ImageFormat::Raw,
            rblkback::ImageFormat::Qcow2 => ImageFormat::Qcow2,
        }
    }
}

/// A tested, read-only kernel and root image, with the defaults of the
/// servers made from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// The suite's name.
    pub name: String,
    /// The guest kernel, an absolute dom0 path.
    pub kernel: PathBuf,
    /// The initial ramdisk, an absolute dom0 path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramdisk: Option<PathBuf>,
    /// The read-only root image every server's overlay is backed by, an
    /// absolute dom0 path.
    pub image: PathBuf,
    /// The root image's format.
    pub image_format: ImageFormat,
    /// The base kernel command line (`rxl` appends `rxl_server=NAME`).
    #[serde(default)]
    pub cmdline: String,
    /// Each server's memory, in MiB.
    pub memory_mib: u64,
    /// Each server's vCPUs.
    pub vcpus: u32,
    /// When the suite was added, in seconds since the Unix epoch.
    pub added_at: u64,
}

impl Suite {
    /// A suite with no ramdisk, an empty command line, the default memory
    /// and vCPUs, added now.
    pub fn new(name: &str, kernel: PathBuf, image: PathBuf, image_format: ImageFormat) -> Suite {
        Suite {
            name: name.to_owned(),
            kernel,
            ramdisk: None,
            image,
            image_format,
            cmdline: String::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            added_at: unix_now(),
        }
    }

    /// Checks the name, the paths (absolute, UTF-8, no control
    /// characters), the command line and the sizes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::name("suite", &self.name)?;
        validate::host_path("kernel", &self.kernel)?;
        if let Some(ramdisk) = &self.ramdisk {
            validate::host_path("ramdisk", ramdisk)?;
        }
        validate::host_path("image", &self.image)?;
        validate::cmdline(&self.cmdline)?;
        if self.memory_mib == 0 {
            return Err(ValidationError::Zero { what: "memory" });
        }
        if self.vcpus == 0 {
            return Err(ValidationError::Zero { what: "vcpus" });
        }
        Ok(())
    }
}

/// A server: a suite and its configuration data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// The server's name, also its domain's name.
    pub name: String,
    /// The suite it runs.
    pub suite: String,
    /// What makes it this server.
    pub config: ConfigData,
    /// When it was added, in seconds since the Unix epoch.
    pub created_at: u64,
}

impl Server {
    /// A server of `suite` with `config`, created now.
    pub fn new(name: &str, suite: &str, config: ConfigData) -> Server {
        Server {
            name: name.to_owned(),
            suite: suite.to_owned(),
            config,
            created_at: unix_now(),
        }
    }

    /// Checks the names and the configuration data.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::name("server", &self.name)?;
        validate::name("suite", &self.suite)?;
        self.config.validate()
    }
}

/// A server's configuration data, delivered to the guest on its
/// configuration disk ([`crate::configdisk`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigData {
    /// The guest's hostname (RFC 1123).
    pub hostname: String,
    /// `(interface, address/prefix)` pairs, in order.
    #[serde(default)]
    pub addresses: Vec<(String, String)>,
    /// The default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Tuning parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Files to install: absolute guest path to contents (base64 in JSON).
    #[serde(default, with = "base64_files")]
    pub files: BTreeMap<String, Vec<u8>>,
}

impl ConfigData {
    /// Configuration data with only a hostname.
    pub fn with_hostname(hostname: &str) -> ConfigData {
        ConfigData {
            hostname: hostname.to_owned(),
            ..ConfigData::default()
        }
    }

    /// Checks the hostname, the addresses, the gateway, the parameters
    /// and the files' guest paths.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::hostname(&self.hostname)?;
        for (iface, cidr) in &self.addresses {
            validate::iface(iface)?;
            validate::cidr(cidr)?;
        }
        if let Some(gateway) = &self.gateway {
            validate::gateway(gateway)?;
        }
        for (key, value) in &self.params {
            validate::param(key, value)?;
        }
        for path in self.files.keys() {
            validate::guest_path(path)?;
        }
        Ok(())
    }
}

/// The time now, in seconds since the Unix epoch (0 if the clock is set
/// before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's `civil_from_days`, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Serde for the files map: contents as standard base64 (with padding).
mod base64_files {
    use std::collections::BTreeMap;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let encoded: BTreeMap<&str, String> = files
            .iter()
            .map(|(k, v)| (k.as_str(), STANDARD.encode(v)))
            .collect();
        encoded.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let encoded = BTreeMap::<String, String>::deserialize(d)?;
        encoded
            .into_iter()
            .map(|(path, text)| match STANDARD.decode(text.as_bytes()) {
                Ok(bytes) => Ok((path, bytes)),
                Err(e) => Err(D::Error::custom(format!(
                    "the contents of {path} are not base64: {e}"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("qcow2".parse(), Ok(ImageFormat::Qcow2));
        assert_eq!(ImageFormat::Raw.to_string(), "raw");
        assert!("vhd".parse::<ImageFormat>().is_err());
    }
}
