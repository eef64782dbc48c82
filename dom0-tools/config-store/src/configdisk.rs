//! The configuration disk: a server's configuration data as a small raw
//! disk holding a ustar archive, which the guest unpacks straight from the
//! block device (`tar -xf /dev/xvdc -C /run/rxl`; busybox tar reads it as
//! well as GNU tar).
//!
//! The archive holds, in this order:
//!
//! | entry | contents |
//! |---|---|
//! | `rxl/hostname` | the hostname and a newline |
//! | `rxl/addresses` | one `IFACE CIDR` line per address, in order |
//! | `rxl/gateway` | the gateway and a newline, or nothing |
//! | `rxl/params` | one `key=value` line per parameter, sorted by key |
//! | `files/PATH` | each file, at its guest path under `files/` |
//!
//! preceded by entries for the directories (`rxl`, `files` and the
//! directories of each file), mode 0755; files have mode 0644; everything
//! is owned by root (0:0). Guest paths longer than ustar's 255 bytes use
//! GNU long-name entries, which GNU and busybox tar both read. The
//! archive ends with ustar's two zero blocks, and the disk is padded with
//! zeroes to whole 512-byte sectors and to at least [`MIN_DISK_SIZE`].

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use crate::model::ConfigData;
use crate::validate::ValidationError;

/// The smallest configuration disk, in bytes.
pub const MIN_DISK_SIZE: u64 = 64 << 10;
const SECTOR: usize = 512;

/// Why a configuration disk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigDiskError {
    /// The configuration data is invalid (a guest path that would escape
    /// `files/`, say).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Building the archive failed.
    #[error("cannot build the configuration archive: {0}")]
    Archive(#[source] io::Error),
    /// Writing the disk file failed.
    #[error("cannot write the configuration disk {path}: {source}")]
    Write {
        /// The disk file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The disk's bytes: the archive of `config`, padded. Every entry has
/// modification time `mtime` (seconds since the Unix epoch), so equal
/// data and time give equal bytes.
pub fn disk_image(config: &ConfigData, mtime: u64) -> Result<Vec<u8>, ConfigDiskError> {
    config.validate()?;
    let mut tar = Builder::new(Vec::new());
    let mut dirs = BTreeSet::from(["rxl".to_owned(), "files".to_owned()]);
    for path in config.files.keys() {
        let mut dir = format!("files{path}");
        while let Some(slash) = dir.rfind('/') {
            dir.truncate(slash);
            dirs.insert(dir.clone());
        }
    }
    for dir in &dirs {
        append(&mut tar, dir, EntryType::Directory, 0o755, mtime, &[])?;
    }

    let line = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{s}\n")
        }
    };
    let addresses: String = config
        .addresses
        .iter()
        .map(|(iface, cidr)| format!("{iface} {cidr}\n"))
        .collect();
    let params: String = config
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    let gateway = line(config.gateway.as_deref().unwrap_or(""));
    let rxl_files = [
        ("rxl/hostname", line(&config.hostname)),
        ("rxl/addresses", addresses),
        ("rxl/gateway", gateway),
        ("rxl/params", params),
    ];
    for (name, contents) in &rxl_files {
        append(
            &mut tar,
            name,
            EntryType::Regular,
            0o644,
            mtime,
            contents.as_bytes(),
        )?;
    }
    for (path, contents) in &config.files {
        append(
            &mut tar,
            &format!("files{path}"),
            EntryType::Regular,
            0o644,
            mtime,
            contents,
        )?;
    }

    let mut image = tar.into_inner().map_err(ConfigDiskError::Archive)?;
    let len = image
        .len()
        .next_multiple_of(SECTOR)
        .max(MIN_DISK_SIZE as usize);
    image.resize(len, 0);
    Ok(image)
}

fn append(
    tar: &mut Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    mode: u32,
    mtime: u64,
    contents: &[u8],
) -> Result<(), ConfigDiskError> {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_size(contents.len() as u64);
    header
        .set_username("root")
        .map_err(ConfigDiskError::Archive)?;
    header
        .set_groupname("root")
        .map_err(ConfigDiskError::Archive)?;
    tar.append_data(&mut header, name, contents)
        .map_err(ConfigDiskError::Archive)
}

/// Writes the configuration disk of `config` to `path` (mode 0600),
/// replacing any file there at once: the new disk is written beside it and
/// renamed over it, so a domain still running from the old one keeps
/// reading the old one. Returns the disk's size.
pub fn write_config_disk(
    path: &Path,
    config: &ConfigData,
    mtime: u64,
) -> Result<u64, ConfigDiskError> {
    let image = disk_image(config, mtime)?;
    let write_err = |source| ConfigDiskError::Write {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".new");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&image)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // Best effort: the half-written file is of no use.
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    Ok(image.len() as u64)
}
