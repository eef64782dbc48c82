//! `xl.cfg` domain configuration files.
//!
//! - [`file`](mod@file): the file syntax (`xl.cfg(5)`, as libxlu parses it) into
//!   [`Settings`], with `xl create`'s `KEY=VALUE` overrides.
//! - [`DomainConfig`]: the typed configuration of a PV or PVH domain, built
//!   from the settings as `xl_parse.c` does for the keys rxl implements.
//! - [`disk`]: disk specifications (`xl-disk-configuration(5)`) and virtual
//!   device numbers.
//! - [`vif`]: network specifications (`xl-network-configuration(5)`).
//!
//! ```
//! use rxl::config::{DomainConfig, Source};
//!
//! let text = "name = 'web'\nmemory = 512\ndisk = [ 'phy:/dev/vg/web,xvda,w' ]\n";
//! let config = DomainConfig::parse(Source::File("web.cfg".into()), text, &["vcpus=2"])?;
//! assert_eq!((config.name.as_str(), config.memory_mib, config.vcpus), ("web", 512, 2));
//! assert_eq!(config.disks[0].vdev.devid, 51712);
//! # Ok::<(), rxl::config::ConfigError>(())
//! ```

pub mod disk;
mod domain;
mod error;
pub mod file;
pub mod vif;

pub use disk::{DiskError, DiskSpec, Vdev};
pub use domain::{
    Action, ConfigWarning, DomainConfig, DomainType, IgnoredSetting, InvalidUuid, TscMode,
    UnknownAction, Uuid, DEFAULT_MEMORY_MIB, RXL_KEYS, XL_KEYS,
};
pub use error::{ConfigError, Location, Near, SettingProblem, Source, SyntaxProblem};
pub use file::{Op, Setting, Settings, Value, ValueKind};
pub use vif::{MacAddr, VifBackendType, VifError, VifSpec};

#[cfg(test)]
mod tests;
