//! Guests as Xen's `xl` sees them: configurations to `xl create` and
//! `xl list` rows.

use std::fmt::Write as _;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::manifest::GuestKernel;

/// Where the harness puts the guest material in dom0.
pub mod dom0_paths {
    /// Directory of the guest kernels, initramfs and test disk.
    pub const GUEST_DIR: &str = "/var/lib/rxen/guest";
    /// The guests' base initramfs.
    pub const GUEST_INITRD: &str = "/var/lib/rxen/guest/initrd.img";
    /// The ext4 test disk image (see the manifest's `GUEST_DISK_FILE`).
    pub const GUEST_DISK: &str = "/var/lib/rxen/guest/disk.img";
    /// Directory of the `xl` configurations the harness writes.
    pub const CONFIG_DIR: &str = "/var/lib/rxen/xl";
    /// Directory of per-guest initramfs images with overlays.
    pub const INITRD_DIR: &str = "/var/lib/rxen/initrd";
    /// xenconsoled's guest console logs (`guest-NAME.log`).
    pub const CONSOLE_LOG_DIR: &str = "/var/log/xen/console";
}

/// Path in dom0 of a guest kernel image with release `release`.
pub fn guest_kernel_path(release: &str) -> String {
    format!("{}/vmlinuz-{release}", dom0_paths::GUEST_DIR)
}

/// Path in dom0 of a guest's console log, as xenconsoled writes it.
pub fn console_log_path(name: &str) -> String {
    format!("{}/guest-{name}.log", dom0_paths::CONSOLE_LOG_DIR)
}

/// The virtualization mode of a guest (`type=` in xl.cfg).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// Paravirtualized.
    Pv,
    /// PVH (hardware-assisted paging, PV drivers, no device model).
    Pvh,
}

impl GuestKind {
    fn as_xl(self) -> &'static str {
        match self {
            GuestKind::Pv => "pv",
            GuestKind::Pvh => "pvh",
        }
    }
}

/// A guest to `xl create`, booting one of the host's kernels with the
/// harness's busybox initramfs (see tests/xen-host/guest/init).
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Domain name; also names the console log.
    pub name: String,
    /// PV or PVH.
    pub kind: GuestKind,
    /// Which kernel it boots.
    pub kernel: GuestKernel,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// The initramfs in dom0; `None` for the base one.
    pub ramdisk: Option<String>,
    /// Disk specifications (`disk = [...]` entries, xl-disk-configuration syntax).
    pub disks: Vec<String>,
    /// Network specifications (`vif = [...]` entries).
    pub vifs: Vec<String>,
    /// Extra kernel command line words.
    pub cmdline: Vec<String>,
    /// Further raw `key = value` lines.
    pub raw: Vec<String>,
}

impl GuestConfig {
    /// A one-vCPU, 256 MiB guest with no devices but its console.
    pub fn new(name: &str, kind: GuestKind, kernel: GuestKernel) -> GuestConfig {
        GuestConfig {
            name: name.to_owned(),
            kind,
            kernel,
            memory_mib: 256,
            vcpus: 1,
            ramdisk: None,
            disks: Vec::new(),
            vifs: Vec::new(),
            cmdline: Vec::new(),
            raw: Vec::new(),
        }
    }

    /// Keeps the guest running after its init has run its commands (by
    /// default it powers off).
    pub fn hold(mut self) -> GuestConfig {
        self.cmdline.push("rxen_hold=1".to_owned());
        self
    }

    /// Gives the guest the host's test disk, read-only, as `vdev`, served by
    /// dom0's in-kernel blkback from the image file; the guest's init mounts
    /// it and prints `RXEN-DISK-SHA256 <vdev> <sum>` for the known file.
    pub fn with_test_disk(mut self, vdev: &str) -> GuestConfig {
        self.disks.push(format!(
            "format=raw,vdev={vdev},access=ro,target={}",
            dom0_paths::GUEST_DISK
        ));
        self.cmdline.push(format!("rxen_disk={vdev}"));
        self
    }

    /// Gives the guest a vif on dom0's bridge `xenbr0` (dom0 is
    /// 192.168.200.1/24 there), served by dom0's in-kernel netback; the
    /// guest's init sets `eth0` to `address` (e.g. `192.168.200.2/24`) and
    /// prints `RXEN-NET-UP eth0 <address>`.
    pub fn with_network(mut self, address: &str) -> GuestConfig {
        self.vifs.push("bridge=xenbr0".to_owned());
        self.cmdline.push(format!("rxen_ip={address}"));
        self
    }

    /// Has the guest's init run `command` with `sh -c` (output on its
    /// console, then `RXEN-GUEST-RC cmdline <status>`). It travels on the
    /// kernel command line, so it must be short and free of double quotes;
    /// put anything longer in an overlay script (`/rxen/guest.d/`).
    pub fn with_command(mut self, command: &str) -> GuestConfig {
        self.cmdline
            .push(format!("rxen_cmd=\"{}\"", command.replace('"', "'")));
        self
    }

    /// Adds a disk (xl-disk-configuration syntax).
    pub fn with_disk(mut self, spec: &str) -> GuestConfig {
        self.disks.push(spec.to_owned());
        self
    }

    /// Uses an initramfs in dom0 other than the base one (see
    /// [`crate::XenHost::guest_initrd_with`]).
    pub fn with_ramdisk(mut self, dom0_path: &str) -> GuestConfig {
        self.ramdisk = Some(dom0_path.to_owned());
        self
    }

    /// Adds kernel command line words.
    pub fn with_cmdline(mut self, words: &str) -> GuestConfig {
        self.cmdline
            .extend(words.split_whitespace().map(str::to_owned));
        self
    }

    /// The xl.cfg text, for a kernel whose release is `release`.
    pub fn render(&self, release: &str) -> String {
        let mut cfg = String::new();
        let ramdisk = self.ramdisk.as_deref().unwrap_or(dom0_paths::GUEST_INITRD);
        let mut extra = vec!["console=hvc0".to_owned(), "rdinit=/init".to_owned()];
        extra.extend(self.cmdline.iter().cloned());
        // Writing to a String cannot fail.
        let _ = writeln!(cfg, "name = {}", xl_string(&self.name));
        let _ = writeln!(cfg, "type = {}", xl_string(self.kind.as_xl()));
        let _ = writeln!(cfg, "kernel = {}", xl_string(&guest_kernel_path(release)));
        let _ = writeln!(cfg, "ramdisk = {}", xl_string(ramdisk));
        let _ = writeln!(cfg, "extra = {}", xl_string(&extra.join(" ")));
        let _ = writeln!(cfg, "memory = {}", self.memory_mib);
        let _ = writeln!(cfg, "vcpus = {}", self.vcpus);
        let _ = writeln!(cfg, "on_poweroff = \"destroy\"");
        // The guests' init never reboots, so a reboot here is a PVH guest's
        // triple fault during early boot, which QEMU's emulated SVM causes
        // now and then (about one boot in thirty, at the PIT reads of the
        // kernel's TSC calibration). xl restarts the guest; the harness
        // counts these (XenHost::triple_faults).
        let _ = writeln!(cfg, "on_reboot = \"restart\"");
        let _ = writeln!(cfg, "on_crash = \"destroy\"");
        if !self.disks.is_empty() {
            let _ = writeln!(cfg, "disk = [ {} ]", xl_list(&self.disks));
        }
        if !self.vifs.is_empty() {
            let _ = writeln!(cfg, "vif = [ {} ]", xl_list(&self.vifs));
        }
        for line in &self.raw {
            let _ = writeln!(cfg, "{line}");
        }
        cfg
    }
}

/// Quotes a string for xl.cfg (double quotes, backslash escapes).
pub fn xl_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn xl_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| xl_string(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A guest the harness created.
#[derive(Debug, Clone)]
pub struct Guest {
    /// Domain name.
    pub name: String,
    /// The release its kernel reports (`uname -r`).
    pub release: String,
    /// dom0's clock (seconds since the epoch) just before `xl create`.
    pub(crate) created_at: f64,
}

/// A line a guest printed on its console.
#[derive(Debug, Clone)]
pub struct GuestLine {
    /// The line, without the line end.
    pub line: String,
    /// Time from `xl create` until the line was seen in the console log.
    pub since_create: Duration,
}

/// One row of `xl list`.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    /// Domain name.
    pub name: String,
    /// Domain id.
    pub id: u32,
    /// Memory in MiB.
    pub mem_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// State flags (`r-----`, `-b----`, ...).
    pub state: String,
    /// CPU time in seconds.
    pub cpu_secs: f64,
}

/// Parses `xl list` output.
pub fn parse_xl_list(text: &str) -> Result<Vec<Domain>> {
    let bad = |detail: String| Error::XlOutput {
        command: "list".to_owned(),
        detail,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next() {
        Some(h) if h.starts_with("Name") => {}
        other => return Err(bad(format!("expected a header line, got {other:?}"))),
    }
    lines
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return Err(bad(format!("short row {line:?}")));
            }
            let num = |i: usize| {
                f[i].parse::<f64>()
                    .map_err(|_| bad(format!("bad number in {line:?}")))
            };
            Ok(Domain {
                name: f[0].to_owned(),
                id: f[1]
                    .parse()
                    .map_err(|_| bad(format!("bad id in {line:?}")))?,
                mem_mib: f[2]
                    .parse()
                    .map_err(|_| bad(format!("bad memory in {line:?}")))?,
                vcpus: f[3]
                    .parse()
                    .map_err(|_| bad(format!("bad vcpus in {line:?}")))?,
                state: f[4].to_owned(),
                cpu_secs: num(5)?,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_xl_list() {
        let text = "Name                                        ID   Mem VCPUs\tState\tTime(s)\n\
                    Domain-0                                     0  1536     2     r-----      32.1\n\
                    g61                                          1   256     1     -b----       4.0\n";
        let d = parse_xl_list(text).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].name, "g61");
        assert_eq!(d[1].id, 1);
        assert_eq!(d[1].state, "-b----");
    }

    #[test]
    fn rejects_output_without_header() {
        assert!(parse_xl_list("oops\n").is_err());
    }

    #[test]
    fn renders_a_pvh_guest_with_a_test_disk() {
        let cfg = GuestConfig::new("g", GuestKind::Pvh, GuestKernel::Linux61)
            .with_test_disk("xvdb")
            .hold()
            .render("6.1.0-56-cloud-amd64");
        assert!(cfg.contains("type = \"pvh\"\n"), "{cfg}");
        assert!(cfg.contains("kernel = \"/var/lib/rxen/guest/vmlinuz-6.1.0-56-cloud-amd64\""));
        assert!(cfg.contains(
            "disk = [ \"format=raw,vdev=xvdb,access=ro,target=/var/lib/rxen/guest/disk.img\" ]"
        ));
        assert!(cfg.contains("extra = \"console=hvc0 rdinit=/init rxen_disk=xvdb rxen_hold=1\""));
    }

    #[test]
    fn network_and_command_reach_the_kernel_command_line() {
        let cfg = GuestConfig::new("n", GuestKind::Pv, GuestKernel::Linux612)
            .with_network("192.168.200.2/24")
            .with_command("ping -c 3 192.168.200.1")
            .render("r");
        assert!(cfg.contains("vif = [ \"bridge=xenbr0\" ]"), "{cfg}");
        assert!(
            cfg.contains(r#"rxen_ip=192.168.200.2/24 rxen_cmd=\"ping -c 3 192.168.200.1\"""#),
            "{cfg}"
        );
    }

    #[test]
    fn quotes_for_xl_and_shell() {
        assert_eq!(xl_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
