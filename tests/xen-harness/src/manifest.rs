//! The test host manifest written by `tests/xen-host/build.sh`.
//!
//! It is an env-style file (`KEY=value` lines, `#` comments) at
//! `$RXEN_CACHE/host/current`, naming the cached Xen, dom0 and guest
//! artifacts and the package versions they came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A guest kernel the host carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuestKernel {
    /// Debian 12's 6.1 cloud kernel.
    Linux61,
    /// Debian 12's 6.12 (backports) cloud kernel.
    Linux612,
    /// The project's patched 6.12 guest kernel from kernel-patches/
    /// (Debian's linux-source-6.12 with the series applied, Rust enabled).
    Rxen612,
}

impl GuestKernel {
    /// Debian's two kernels, oldest first. The project's own kernel
    /// ([`GuestKernel::Rxen612`]) is not among them: a host may lack it
    /// (see [`Manifest::has_guest_kernel`]).
    pub const ALL: [GuestKernel; 2] = [GuestKernel::Linux61, GuestKernel::Linux612];

    fn key(self) -> &'static str {
        match self {
            GuestKernel::Linux61 => "GUEST_KERNEL_61",
            GuestKernel::Linux612 => "GUEST_KERNEL_612",
            GuestKernel::Rxen612 => "GUEST_KERNEL_RXEN",
        }
    }
}

/// The parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl Manifest {
    /// Where the manifest is: `$RXEN_CACHE/host/current`, with `RXEN_CACHE`
    /// defaulting as in the Makefile to `${XDG_CACHE_HOME:-$HOME/.cache}/rxen`.
    /// `RXEN_HOST_MANIFEST` overrides the whole path.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("RXEN_HOST_MANIFEST") {
            return PathBuf::from(p);
        }
        let cache = match std::env::var_os("RXEN_CACHE") {
            Some(c) => PathBuf::from(c),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from("/root/.cache"));
                base.join("rxen")
            }
        };
        cache.join("host").join("current")
    }

    /// Loads the manifest from [`Manifest::default_path`].
    pub fn load() -> Result<Manifest> {
        Manifest::load_from(&Manifest::default_path())
    }

    /// Loads the manifest from `path`.
    pub fn load_from(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ManifestRead {
            path: path.to_owned(),
            source,
        })?;
        Ok(Manifest::parse(path, &text))
    }

    /// Parses manifest text; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Manifest {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Manifest {
            path: path.to_owned(),
            entries,
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.entries
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::ManifestKey {
                path: self.path.clone(),
                key: key.to_owned(),
            })
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        self.get(key).map(PathBuf::from)
    }

    /// The QEMU binary.
    pub fn qemu(&self) -> Result<PathBuf> {
        self.path_of("QEMU")
    }
    /// Xen, as a multiboot ELF.
    pub fn xen_elf(&self) -> Result<PathBuf> {
        self.path_of("XEN_ELF")
    }
    /// dom0's kernel.
    pub fn dom0_kernel(&self) -> Result<PathBuf> {
        self.path_of("DOM0_KERNEL")
    }
    /// dom0's initramfs (the whole root file system).
    pub fn dom0_initrd(&self) -> Result<PathBuf> {
        self.path_of("DOM0_INITRD")
    }
    /// dom0's kernel release (`uname -r`).
    pub fn dom0_release(&self) -> Result<&str> {
        self.get("DOM0_KERNEL_RELEASE")
    }
    /// Whether the host carries guest kernel `k`.
    pub fn has_guest_kernel(&self, k: GuestKernel) -> bool {
        self.entries.contains_key(k.key())
    }
    /// A guest kernel image.
    pub fn guest_kernel(&self, k: GuestKernel) -> Result<PathBuf> {
        self.path_of(k.key())
    }
    /// The release (`uname -r`) a guest kernel reports.
    pub fn guest_release(&self, k: GuestKernel) -> Result<&str> {
        self.get(&format!("{}_RELEASE", k.key()))
    }
    /// The Debian package version of a guest kernel (for
    /// [`GuestKernel::Rxen612`]: linux-source-6.12's, then `+` and the start of
    /// the kernel's cache key).
    pub fn guest_package_version(&self, k: GuestKernel) -> Result<&str> {
        self.get(&format!("{}_VERSION", k.key()))
    }
    /// The guests' base initramfs.
    pub fn guest_initrd(&self) -> Result<PathBuf> {
        self.path_of("GUEST_INITRD")
    }
    /// The ext4 test disk image.
    pub fn guest_disk(&self) -> Result<PathBuf> {
        self.path_of("GUEST_DISK")
    }
    /// SHA-256 of the known file on the test disk.
    pub fn guest_disk_sha256(&self) -> Result<&str> {
        self.get("GUEST_DISK_FILE_SHA256")
    }
    /// The Xen version (Debian package version).
    pub fn xen_version(&self) -> Result<&str> {
        self.get("XEN_VERSION")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_style_lines_and_skips_comments() {
        let m = Manifest::parse(
            Path::new("m"),
            "# comment\nXEN_ELF=/c/xen.elf\n\nGUEST_KERNEL_612_RELEASE=6.12.117+deb12-cloud-amd64\n",
        );
        assert_eq!(m.xen_elf().unwrap(), PathBuf::from("/c/xen.elf"));
        assert_eq!(
            m.guest_release(GuestKernel::Linux612).unwrap(),
            "6.12.117+deb12-cloud-amd64"
        );
    }

    #[test]
    fn rxen_kernel_is_optional() {
        let m = Manifest::parse(Path::new("m"), "GUEST_KERNEL_612=/c/vmlinuz\n");
        assert!(m.has_guest_kernel(GuestKernel::Linux612));
        assert!(!m.has_guest_kernel(GuestKernel::Rxen612));
        let m = Manifest::parse(
            Path::new("m"),
            "GUEST_KERNEL_RXEN=/c/vmlinuz-6.12.117-rxen\nGUEST_KERNEL_RXEN_RELEASE=6.12.117-rxen\n",
        );
        assert!(m.has_guest_kernel(GuestKernel::Rxen612));
        assert_eq!(
            m.guest_release(GuestKernel::Rxen612).unwrap(),
            "6.12.117-rxen"
        );
        assert!(!GuestKernel::ALL.contains(&GuestKernel::Rxen612));
    }

    #[test]
    fn missing_key_names_the_key() {
        let m = Manifest::parse(Path::new("m"), "");
        let e = m.dom0_kernel().unwrap_err().to_string();
        assert!(e.contains("DOM0_KERNEL"), "{e}");
    }
}
