//! What the Xen host reads from dom0 itself: `uname`, `/proc/uptime`, the
//! clock, libxl's per-domain files under `/var/lib/xen`, and the PCI
//! devices in sysfs.

use std::io;
use std::path::{Path, PathBuf};

use super::hypercalls::{parse_pci_name, PciDevice};
use crate::host::{DomId, HostError, NodeInfo, Uuid, WallClock};

/// libxl's `XEN_LIB_DIR`, where it keeps each domain's "userdata".
pub(crate) const XEN_LIB_DIR: &str = "/var/lib/xen";

/// Where the PCI devices are listed.
const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// A NUL-terminated `utsname` field as text.
fn field(chars: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// dom0's `uname(2)`.
pub(crate) fn node_info() -> Result<NodeInfo, HostError> {
    // SAFETY: `utsname` is plain old data; all zeroes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, exclusively borrowed utsname for the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(HostError::Os {
            what: "uname".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(NodeInfo {
        nodename: field(&uts.nodename),
        release: field(&uts.release),
        version: field(&uts.version),
        machine: field(&uts.machine),
    })
}

/// The whole seconds of `/proc/uptime`'s first field.
pub(crate) fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let whole = first.split('.').next()?;
    whole.parse().ok()
}

/// dom0's uptime in whole seconds.
pub(crate) fn dom0_uptime() -> Result<u64, HostError> {
    let text = std::fs::read_to_string("/proc/uptime").map_err(|source| HostError::Os {
        what: "reading /proc/uptime".into(),
        source,
    })?;
    parse_uptime(&text)
        .ok_or_else(|| HostError::Failed(format!("/proc/uptime reads {text:?}, not an uptime")))
}

/// The time now, and the local time of day (`localtime_r`).
pub(crate) fn wallclock() -> Result<WallClock, HostError> {
    // SAFETY: time(NULL) only returns the time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: `tm` is plain old data; all zeroes is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r writes
    // only `tm`.
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return Err(HostError::Os {
            what: "localtime_r".into(),
            source: io::Error::last_os_error(),
        });
    }
    let part = |v: libc::c_int| u8::try_from(v).unwrap_or(0);
    Ok(WallClock {
        epoch_secs: u64::try_from(now).unwrap_or(0),
        hour: part(tm.tm_hour),
        minute: part(tm.tm_min),
        second: part(tm.tm_sec),
    })
}

/// libxl's userdata file `KEY` of domain `domid` (`libxl__userdata_path`
/// with `wh` = `d`): `userdata-d.DOMID.UUID.KEY`.
pub(crate) fn userdata_path(dir: &Path, domid: DomId, uuid: &Uuid, key: &str) -> PathBuf {
    dir.join(format!("userdata-d.{domid}.{uuid}.{key}"))
}

/// The domain's stored configuration (`libxl-json`), if there is one.
pub(crate) fn domain_config(
    dir: &Path,
    domid: DomId,
    uuid: &Uuid,
) -> Result<Option<serde_json::Value>, HostError> {
    let path = userdata_path(dir, domid, uuid, "libxl-json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HostError::Os {
                what: format!("reading {}", path.display()),
                source,
            })
        }
    };
    // libxl stores the string with its terminating NUL.
    serde_json::from_str(text.trim_end_matches(['\0', '\n']))
        .map(Some)
        .map_err(|e| HostError::Failed(format!("{} is not JSON: {e}", path.display())))
}

/// Stores `text` as the domain's libxl userdata file `key`, as
/// `libxl__userdata_store` does: through a temporary file renamed into
/// place, with the string's terminating NUL.
pub(crate) fn store_userdata(
    dir: &Path,
    domid: DomId,
    uuid: &Uuid,
    key: &str,
    text: &str,
) -> Result<(), HostError> {
    let path = userdata_path(dir, domid, uuid, key);
    let tmp = path.with_extension(format!("{key}.new"));
    let os = |what: &str, source| HostError::Os {
        what: format!("{what} {}", path.display()),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| os("creating the directory of", e))?;
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    std::fs::write(&tmp, &bytes).map_err(|e| os("writing", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| os("renaming into", e))
}

/// Whether file `name` is libxl userdata of `domid` and `uuid` that
/// [`remove_userdata`] removes (all but the lock file, as
/// `libxl__userdata_destroyall`).
pub(crate) fn is_userdata_of(name: &str, domid: DomId, uuid: &Uuid) -> bool {
    let Some(rest) = name.strip_prefix("userdata-") else {
        return false;
    };
    let mut chars = rest.chars();
    let (Some(_wh), Some('.')) = (chars.next(), chars.next()) else {
        return false;
    };
    chars
        .as_str()
        .strip_prefix(&format!("{domid}.{uuid}."))
        .is_some_and(|key| !key.is_empty() && !key.contains("domain-userdata-lock"))
}

/// Removes the domain's libxl userdata files (its stored configuration).
pub(crate) fn remove_userdata(dir: &Path, domid: DomId, uuid: &Uuid) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            log::warn!("cannot list {}: {e}", dir.display());
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_userdata_of(&name.to_string_lossy(), domid, uuid) {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                log::warn!("cannot remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The PCI devices dom0 sees (`libxl__pci_topology_init`).
pub(crate) fn pci_devices() -> Vec<PciDevice> {
    let mut devices: Vec<PciDevice> = match std::fs::read_dir(PCI_DEVICES) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| parse_pci_name(&e.file_name().to_string_lossy()))
            .collect(),
        Err(e) => {
            log::info!("cannot list {PCI_DEVICES}: {e}; no PCI topology");
            Vec::new()
        }
    };
    devices.sort_by_key(|d| (d.seg, d.bus, d.devfn));
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: Uuid = Uuid([
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ]);

    #[test]
    fn uptime_is_the_whole_seconds_of_the_first_field() {
        assert_eq!(parse_uptime("12345.67 54321.00\n"), Some(12345));
        assert_eq!(parse_uptime("7 1"), Some(7));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn the_stored_configuration_is_libxl_s_json_file() {
        let dir = std::env::temp_dir().join(format!("rxl-userdata-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = userdata_path(&dir, 3, &UUID, "libxl-json");
        assert!(path
            .to_string_lossy()
            .ends_with("userdata-d.3.12345678-9abc-def0-0123-456789abcdef.libxl-json"));
        assert_eq!(domain_config(&dir, 3, &UUID).unwrap(), None);

        // As libxl stores it: with the string's terminating NUL.
        std::fs::write(&path, "{\"c_info\": {\"name\": \"web\"}}\n\0").unwrap();
        let lock =
            dir.join("userdata-d.3.12345678-9abc-def0-0123-456789abcdef.domain-userdata-lock");
        std::fs::write(&lock, "").unwrap();

        let config = domain_config(&dir, 3, &UUID).unwrap().unwrap();
        assert_eq!(config["c_info"]["name"], "web");
        remove_userdata(&dir, 3, &UUID);
        assert!(!path.exists() && lock.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn userdata_names_are_matched_on_domain_and_uuid() {
        let uuid = UUID.to_string();
        assert!(is_userdata_of(
            &format!("userdata-d.3.{uuid}.libxl-json"),
            3,
            &UUID
        ));
        assert!(is_userdata_of(&format!("userdata-d.3.{uuid}.xl"), 3, &UUID));
        assert!(!is_userdata_of(
            &format!("userdata-d.3.{uuid}.domain-userdata-lock"),
            3,
            &UUID
        ));
        assert!(!is_userdata_of(
            &format!("userdata-d.31.{uuid}.libxl-json"),
            3,
            &UUID
        ));
        assert!(!is_userdata_of(
            "userdata-d.3.00000000-0000-0000-0000-000000000000.xl",
            3,
            &UUID
        ));
    }

    #[test]
    fn uname_and_clock_answer() {
        let node = node_info().unwrap();
        let clock = wallclock().unwrap();

        assert!(!node.release.is_empty());
        assert!(clock.epoch_secs > 1_600_000_000 && clock.hour < 24 && clock.minute < 60);
    }
}
