//! Where a setting came from, and what can be wrong with a configuration.

use std::fmt;

use super::disk::DiskError;
use super::vif::VifError;

/// The text a setting was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A configuration file, named as the user gave it.
    File(String),
    /// `KEY=VALUE` overrides given to `xl create` after the file name.
    CommandLine,
}

impl Source {
    /// A file source named by `path` as the user gave it.
    pub fn file(path: impl AsRef<std::path::Path>) -> Self {
        Source::File(path.as_ref().display().to_string())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(name) => f.write_str(name),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// A place in a configuration text: `guest.cfg:12` or `guest.cfg:12:5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The text.
    pub origin: Source,
    /// The line, from 1. For command-line overrides, the override's
    /// position among them, from 1.
    pub line: u32,
    /// The column in characters, from 1, where known.
    pub column: Option<u32>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.line)?;
        if let Some(column) = self.column {
            write!(f, ":{column}")?;
        }
        Ok(())
    }
}

/// The text a syntax error was found at, shown as xl shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Near {
    /// Ordinary text.
    Text(String),
    /// A line break.
    Newline,
    /// The end of the text.
    EndOfFile,
}

impl fmt::Display for Near {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Near::Text(text) => {
                f.write_str("`")?;
                for c in text.chars() {
                    if c.is_control() {
                        write!(f, "{}", c.escape_default())?;
                    } else {
                        write!(f, "{c}")?;
                    }
                }
                f.write_str("'")
            }
            Near::Newline => f.write_str("<newline>"),
            Near::EndOfFile => f.write_str("end of file"),
        }
    }
}

/// Why a configuration text does not follow the `xl.cfg(5)` grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxProblem {
    /// A character that starts no token (for example `-`, `.`, or an
    /// upper-case letter in a key).
    #[error("lexical error{}", if *likely_python {
        " (this looks like Python, which xl.cfg files no longer support: \
         see https://wiki.xen.org/wiki/PythonInXlConfig)"
    } else {
        ""
    })]
    Lexical {
        /// The character is one Python code would have (`+-.():`).
        likely_python: bool,
    },
    /// A carriage return: the file has DOS line endings.
    #[error("lexical error (carriage return: convert the file to Unix line endings)")]
    CarriageReturn,
    /// A quoted string runs to the end of its line.
    #[error("unterminated quoted string")]
    UnterminatedString,
    /// `\` followed by a character that is not an escape.
    #[error("invalid character after backslash in quoted string")]
    InvalidEscape,
    /// `\x..` or `\0..`: libxlu rejects or mangles these, rxl rejects them.
    #[error("numerical character escapes are not supported in quoted strings")]
    NumericEscape,
    /// A token the grammar does not allow here.
    #[error("syntax error, unexpected {found}, expecting {expected}")]
    Unexpected {
        /// What was found.
        found: &'static str,
        /// What the grammar allows here.
        expected: &'static str,
    },
}

/// Why a setting's value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingProblem {
    /// A number was expected but the string does not hold one.
    #[error("expected a number, found string {0:?}")]
    ExpectedNumber(String),
    /// A number was expected but the value is a list.
    #[error("expected a number, found a list")]
    ExpectedNumberFoundList,
    /// The number does not fit.
    #[error("the number {0:?} is out of range")]
    NumberOutOfRange(String),
    /// The number is below the smallest allowed value.
    #[error("value {value} is smaller than the minimum {min}")]
    TooSmall {
        /// The value given.
        value: i64,
        /// The smallest value allowed.
        min: i64,
    },
    /// The number is above the largest allowed value.
    #[error("value {value} is greater than the maximum {max}")]
    TooLarge {
        /// The value given.
        value: i64,
        /// The largest value allowed.
        max: i64,
    },
    /// `KEY += VALUE` for a numeric setting.
    #[error("can't use += with numbers")]
    AddToNumber,
    /// A single value was expected but the value is a list.
    #[error("expected a single value, found a list")]
    ExpectedSingleValue,
    /// A list was expected but the value is a string.
    #[error("expected a list, found string {0:?}")]
    ExpectedList(String),
    /// A list item that should be a string is a list.
    #[error("item {0} of the list is a list, expected a string")]
    ListItemNotString(usize),
    /// `KEY += VALUE` where one of the two is a list and the other is not.
    #[error("can't add [list] to \"string\" or vice versa")]
    AddMismatch,
    /// No `name`.
    #[error("domain name must be specified")]
    MissingName,
    /// `type` or `builder` names no domain type.
    #[error("invalid domain type {0:?}")]
    InvalidType(String),
    /// The domain type exists in xl but rxl does not build it.
    #[error("{0} guests are not supported by rxl; use type=\"pv\" or type=\"pvh\"")]
    UnsupportedType(&'static str),
    /// `builder` and `type` name different domain types.
    #[error("contradicting \"builder\" and \"type\" options specified")]
    ContradictingBuilder,
    /// `uuid` is not of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    #[error("failed to parse UUID {0:?}: expected 32 hex digits as 8-4-4-4-12")]
    InvalidUuid(String),
    /// An `on_*` setting names no action.
    #[error(
        "unknown action {0:?} specified (expected destroy, restart, rename-restart, \
         preserve, coredump-destroy, coredump-restart or soft-reset)"
    )]
    UnknownAction(String),
    /// `tsc_mode` names no mode.
    #[error("invalid value {0:?} for \"tsc_mode\" (expected default, always_emulate or native)")]
    UnknownTscMode(String),
    /// `tsc_mode="native_paravirt"`, which Xen no longer has.
    #[error("TSC Mode native_paravirt (a.k.a PVRDTSCP) has been removed")]
    TscModeRemoved,
    /// `maxmem` is below `memory`.
    #[error("maxmem ({maxmem} MiB) must be greater than or equal to memory ({memory} MiB)")]
    MaxmemBelowMemory {
        /// `maxmem`, in MiB.
        maxmem: u64,
        /// `memory`, in MiB.
        memory: u64,
    },
    /// `maxvcpus` is below `vcpus`.
    #[error("maxvcpus ({maxvcpus}) < vcpus ({vcpus})")]
    MaxvcpusBelowVcpus {
        /// `maxvcpus`.
        maxvcpus: u32,
        /// `vcpus`.
        vcpus: u32,
    },
    /// A `disk` list item is not a valid disk specification.
    #[error(transparent)]
    Disk(Box<DiskError>),
    /// Two disks have the same virtual device.
    #[error("virtual device {vdev} ({devid}) is used twice, also on line {other_line}")]
    DuplicateVdev {
        /// The second disk's `vdev`.
        vdev: String,
        /// The device number both have.
        devid: u32,
        /// The line of the first disk.
        other_line: u32,
    },
    /// A `vif` list item is not a valid network specification.
    #[error(transparent)]
    Vif(Box<VifError>),
    /// Two vifs have the same device id.
    #[error("vif devid {devid} is used twice, also on line {other_line}")]
    DuplicateDevid {
        /// The device id.
        devid: u32,
        /// The line of the first vif.
        other_line: u32,
    },
    /// `type=ioemu` on a PV or PVH guest.
    #[error("emulated network interfaces (type=ioemu) need an HVM guest")]
    EmulatedNicOnPv,
}

/// Why a configuration cannot be read.
///
/// Each message starts with the text and line, as xl's do:
/// `guest.cfg:12: memory: expected a number, found string "abc"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text does not follow the grammar.
    #[error("{at}: config parsing error near {near}: {problem}")]
    Syntax {
        /// Where.
        at: Location,
        /// The text found there.
        near: Near,
        /// What is wrong.
        problem: SyntaxProblem,
    },
    /// A setting's value cannot be used.
    #[error("{at}: {key}: {problem}")]
    Setting {
        /// Where the value is (the list item's line for list items).
        at: Location,
        /// The setting's key.
        key: String,
        /// What is wrong.
        problem: SettingProblem,
    },
    /// A mandatory setting is absent.
    #[error("{origin}: {key}: {problem}")]
    Missing {
        /// The text that lacks it.
        origin: Source,
        /// The setting's key.
        key: &'static str,
        /// What is wrong.
        problem: SettingProblem,
    },
}

impl ConfigError {
    /// Where the error is, if it is at a place in the text.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Syntax { at, .. } | ConfigError::Setting { at, .. } => Some(at),
            ConfigError::Missing { .. } => None,
        }
    }

    /// The key of the setting at fault, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax { .. } => None,
            ConfigError::Setting { key, .. } => Some(key),
            ConfigError::Missing { key, .. } => Some(key),
        }
    }
}
