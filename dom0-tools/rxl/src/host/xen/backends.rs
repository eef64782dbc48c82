//! The dom0 programs behind devices: the project's backends (rblkback,
//! rnetback), one detached process per device, and Xen's hotplug scripts
//! for the kernel's backends, run as libxl runs them.
//!
//! rxl records each backend it starts in a pid file,
//! `/var/run/rxl/DOMID/KIND-DEVID.pid`, and logs its output to
//! `/var/log/xen/PROGRAM-DOMID-DEVID.log`. A later rxl (detach, destroy)
//! stops it through that record, after checking that the process still
//! is that backend (its command line names the device).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::devices::{DevicePaths, RBLKBACK_KIND, RNETBACK_KIND};
use crate::host::{DomId, HostError};

/// Where rxl records the backends it starts.
pub(crate) const RUN_DIR: &str = "/var/run/rxl";

/// Where the backends log (as Xen's daemons do).
pub(crate) const LOG_DIR: &str = "/var/log/xen";

/// How long a hotplug script may run (`LIBXL_HOTPLUG_TIMEOUT`).
const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(40);

/// How long a backend has to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// How often a process is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A project backend program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    /// rblkback, for `rvbd` devices.
    Rblkback,
    /// rnetback, for `rvif` devices.
    Rnetback,
}

impl Program {
    /// The executable's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Program::Rblkback => "rblkback",
            Program::Rnetback => "rnetback",
        }
    }

    /// The program serving backend kind `kind`, if it is one of ours.
    pub(crate) fn for_kind(kind: &str) -> Option<Self> {
        match kind {
            RBLKBACK_KIND => Some(Program::Rblkback),
            RNETBACK_KIND => Some(Program::Rnetback),
            _ => None,
        }
    }

    /// Its log file for device `devid` of `domid`.
    pub(crate) fn log_path(self, domid: DomId, devid: u32) -> PathBuf {
        Path::new(LOG_DIR).join(format!("{}-{domid}-{devid}.log", self.name()))
    }
}

/// The pid files of the backends rxl started, under a root directory
/// ([`RUN_DIR`] on a host).
#[derive(Debug, Clone)]
pub(crate) struct PidFiles {
    root: PathBuf,
}

impl PidFiles {
    /// The pid files under `root`.
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        PidFiles { root: root.into() }
    }

    fn domain_dir(&self, domid: DomId) -> PathBuf {
        self.root.join(domid.to_string())
    }

    fn path(&self, domid: DomId, kind: &str, devid: u32) -> PathBuf {
        self.domain_dir(domid).join(format!("{kind}-{devid}.pid"))
    }

    /// Records `pid` as the backend of device `kind`/`devid` of `domid`.
    pub(crate) fn record(
        &self,
        domid: DomId,
        kind: &str,
        devid: u32,
        pid: u32,
    ) -> Result<(), HostError> {
        let dir = self.domain_dir(domid);
        std::fs::create_dir_all(&dir).map_err(|source| HostError::Os {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let path = self.path(domid, kind, devid);
        std::fs::write(&path, format!("{pid}\n")).map_err(|source| HostError::Os {
            what: format!("writing {}", path.display()),
            source,
        })
    }

    /// The recorded pid of the device's backend, if any.
    pub(crate) fn recorded(&self, domid: DomId, kind: &str, devid: u32) -> Option<i32> {
        let path = self.path(domid, kind, devid);
        let text = std::fs::read_to_string(&path).ok()?;
        match text.trim().parse::<i32>() {
            Ok(pid) if pid > 1 => Some(pid),
            _ => {
                log::warn!("{}: no process id in it; ignored", path.display());
                None
            }
        }
    }

    /// Drops the record of the device's backend.
    pub(crate) fn forget(&self, domid: DomId, kind: &str, devid: u32) {
        let path = self.path(domid, kind, devid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
        }
    }

    /// The devices of `domid` with a recorded backend, as `(kind, devid)`.
    pub(crate) fn recorded_devices(&self, domid: DomId) -> Vec<(String, u32)> {
        let Ok(entries) = std::fs::read_dir(self.domain_dir(domid)) else {
            return Vec::new();
        };
        let mut devices: Vec<(String, u32)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (kind, devid) = name.strip_suffix(".pid")?.rsplit_once('-')?;
                Some((kind.to_owned(), devid.parse().ok()?))
            })
            .collect();
        devices.sort();
        devices
    }

    /// Drops every record of `domid` (once it is gone).
    pub(crate) fn forget_domain(&self, domid: DomId) {
        let dir = self.domain_dir(domid);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", dir.display()),
        }
    }
}

/// Whether `path` is an executable file.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where `program` is: next to the running rxl first (an install or a
/// build directory keeps them together), then on `PATH`.
pub(crate) fn find_program(program: Program) -> Result<PathBuf, HostError> {
    let name = program.name();
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)));
    if let Some(path) = beside.as_ref().filter(|p| is_executable(p)) {
        return Ok(path.clone());
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
    {
        return Ok(path);
    }
    Err(HostError::Failed(format!(
        "cannot find the backend program {name}: it is neither next to rxl{} nor on PATH; \
         install the project's backends with rxl",
        beside
            .as_ref()
            .and_then(|p| p.parent())
            .map(|d| format!(" (in {})", d.display()))
            .unwrap_or_default()
    )))
}

/// Starts `program` with `args` as a daemon of its own: a new session
/// (no terminal, untouched by the user's Ctrl-C), in `/`, stdin from
/// `/dev/null`, stdout and stderr appended to `log`.
pub(crate) fn spawn_detached(
    program: &Path,
    args: &[String],
    log: &Path,
) -> Result<Child, HostError> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|source| HostError::Os {
            what: format!("creating {}", dir.display()),
            source,
        })?;
    }
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| HostError::Os {
                what: format!("opening {}", log.display()),
                source,
            })
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(open_log()?)
        .stderr(open_log()?);
    // SAFETY: the closure runs in the child between fork and exec and
    // only calls setsid(2), which is async-signal-safe, touching no memory
    // of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| HostError::Os {
        what: format!("starting {}", program.display()),
        source,
    })
}

/// Lets `child` run on its own: a thread reaps it when it exits, should
/// this rxl still be running then (otherwise init does).
pub(crate) fn detach(mut child: Child) {
    let spawned = std::thread::Builder::new()
        .name("rxl-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    if let Err(e) = spawned {
        log::debug!("cannot start a thread to reap a backend: {e}");
    }
}

/// The last `max` bytes of `path` (for an error about a process that
/// logged there), trimmed to whole lines.
pub(crate) fn log_tail(path: &Path, max: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match (len > max, text.find('\n')) {
            (true, Some(nl)) => text[nl + 1..].to_owned(),
            _ => text,
        })
    };
    read().map_or_else(
        |e| format!("(cannot read {}: {e})", path.display()),
        |t| t.trim_end().to_owned(),
    )
}

/// Whether a process's command line (`/proc/PID/cmdline`, NUL
/// separated) is `program` serving device `devid` of `domid`.
pub(crate) fn cmdline_is(cmdline: &[u8], program: Program, domid: DomId, devid: u32) -> bool {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let Some(argv0) = args.first() else {
        return false;
    };
    let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or(argv0);
    let pair = |flag: &str, value: String| {
        args.windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
    };
    base == program.name().as_bytes()
        && pair("--domid", domid.to_string())
        && pair("--devid", devid.to_string())
}

/// Whether process `pid` exists (a zombie not yet reaped counts).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that `pid` exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether process `pid` is `program` serving device `devid` of `domid`.
pub(crate) fn process_is(pid: i32, program: Program, domid: DomId, devid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| cmdline_is(&c, program, domid, devid))
}

/// Waits until `pid` is gone, up to `timeout`; whether it is.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    // Ends: the deadline.
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(EXIT_POLL);
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; `pid` > 1 was checked to be
    // the backend by its command line.
    if unsafe { libc::kill(pid, sig) } != 0 {
        log::debug!("kill({pid}, {sig}): {}", io::Error::last_os_error());
    }
}

/// The process recorded for device `devid` of `domid` served by
/// `program`, if it is still that backend.
pub(crate) fn running_backend(
    pids: &PidFiles,
    program: Program,
    domid: DomId,
    kind: &str,
    devid: u32,
) -> Option<i32> {
    let pid = pids.recorded(domid, kind, devid)?;
    if process_is(pid, program, domid, devid) {
        Some(pid)
    } else {
        log::debug!("process {pid} recorded for {kind} {devid} of domain {domid} is gone");
        None
    }
}

/// Stops the recorded backend of device `devid` of `domid`, if it runs:
/// it has `grace` to exit by itself (it does once its device is closed
/// and offline), then gets SIGTERM (it closes the device and exits), then
/// SIGKILL. The record is dropped.
pub(crate) fn stop_backend(pids: &PidFiles, device: &DevicePaths, grace: Duration) {
    let Some(program) = Program::for_kind(&device.backend_kind) else {
        return;
    };
    let (domid, kind, devid) = (device.domid, device.backend_kind.as_str(), device.devid);
    if let Some(pid) = running_backend(pids, program, domid, kind, devid) {
        if !wait_gone(pid, grace) {
            log::info!(
                "stopping {} (process {pid}) of domain {domid} device {devid}",
                program.name()
            );
            signal(pid, libc::SIGTERM);
            if !wait_gone(pid, TERM_GRACE) {
                log::warn!(
                    "{} (process {pid}) ignored SIGTERM; killing it",
                    program.name()
                );
                signal(pid, libc::SIGKILL);
                wait_gone(pid, TERM_GRACE);
            }
        }
    }
    pids.forget(domid, kind, devid);
}

/// Whether the device's backend is one of ours that is no longer running
/// (then nothing will ever move its state).
pub(crate) fn backend_exited(pids: &PidFiles, device: &DevicePaths) -> bool {
    match Program::for_kind(&device.backend_kind) {
        Some(program) => match pids.recorded(device.domid, &device.backend_kind, device.devid) {
            Some(pid) => !alive(pid) || !process_is(pid, program, device.domid, device.devid),
            None => false,
        },
        None => false,
    }
}

/// What a hotplug script is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HotplugAction {
    /// The device was added.
    Add,
    /// The device was removed.
    Remove,
}

/// The arguments and environment libxl gives a hotplug script
/// (`libxl__get_hotplug_script_info` and `get_hotplug_env` of
/// `libxl_linux.c`); `gatewaydev` is the vif's `gatewaydev` node.
pub(crate) fn hotplug_command(
    script: &str,
    action: HotplugAction,
    device: &DevicePaths,
    gatewaydev: Option<&str>,
) -> (Vec<String>, Vec<(String, String)>) {
    let vif = device.kind == "vif";
    let mut args = vec![match (vif, action) {
        (false, HotplugAction::Add) => "add",
        (false, HotplugAction::Remove) => "remove",
        (true, HotplugAction::Add) => "online",
        (true, HotplugAction::Remove) => "offline",
    }
    .to_owned()];
    let kind = &device.backend_kind;
    let mut env = vec![
        ("script".to_owned(), script.to_owned()),
        ("XENBUS_TYPE".to_owned(), kind.clone()),
        (
            "XENBUS_PATH".to_owned(),
            format!("backend/{kind}/{}/{}", device.domid, device.devid),
        ),
        ("XENBUS_BASE_PATH".to_owned(), "backend".to_owned()),
    ];
    if vif {
        args.push("type_if=vif".to_owned());
        env.push(("netdev".to_owned(), gatewaydev.unwrap_or("").to_owned()));
        env.push((
            "vif".to_owned(),
            format!("vif{}.{}", device.domid, device.devid),
        ));
    }
    (args, env)
}

/// Runs hotplug script `script` for `device`, as libxl does: stdin from
/// `/dev/null`, stdout to our stderr, at most [`HOTPLUG_TIMEOUT`]. The
/// error carries the script's `hotplug-error` (read by `hotplug_error`).
pub(crate) fn run_hotplug(
    script: &str,
    action: HotplugAction,
    device: &DevicePaths,
    gatewaydev: Option<&str>,
    hotplug_error: impl FnOnce() -> Option<String>,
) -> Result<(), HostError> {
    if !is_executable(Path::new(script)) {
        return Err(HostError::Failed(format!(
            "the hotplug script {script} is missing or not executable: the kernel's backends need \
             Xen's hotplug scripts (install Xen's tools), or leave backendtype out for the project's backends"
        )));
    }
    let (args, env) = hotplug_command(script, action, device, gatewaydev);
    log::debug!("running {script} {}", args.join(" "));
    // libxl sends the scripts' output to its stderr.
    let stdout = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_or_else(|_| Stdio::inherit(), Stdio::from);
    let mut child = Command::new(script)
        .args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .map_err(|source| HostError::Os {
            what: format!("running {script}"),
            source,
        })?;
    let deadline = Instant::now() + HOTPLUG_TIMEOUT;
    // Ends: the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(EXIT_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HostError::Failed(format!(
                    "the hotplug script {script} {} did not finish within {} s",
                    args.join(" "),
                    HOTPLUG_TIMEOUT.as_secs()
                )));
            }
            Err(source) => {
                return Err(HostError::Os {
                    what: format!("waiting for {script}"),
                    source,
                })
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let why = hotplug_error().map_or_else(String::new, |e| format!(": {e}"));
    Err(HostError::Failed(format!(
        "the hotplug script {script} {} failed ({status}){why}",
        args.join(" ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        std::env::temp_dir().join(format!(
            "rxl-backends-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    #[test]
    fn pid_files_record_and_forget() {
        let root = dir();
        let pids = PidFiles::new(&root);

        pids.record(3, "rvbd", 51712, 4242).unwrap();

        assert!(root.join("3/rvbd-51712.pid").exists());
        assert_eq!(pids.recorded(3, "rvbd", 51712), Some(4242));
        assert_eq!(pids.recorded_devices(3), [("rvbd".to_owned(), 51712)]);
        assert!(pids.recorded_devices(4).is_empty());
        assert_eq!(pids.recorded(3, "rvif", 0), None);
        pids.forget(3, "rvbd", 51712);
        assert_eq!(pids.recorded(3, "rvbd", 51712), None);
        pids.forget_domain(3);
        assert!(!root.join("3").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn command_lines_are_matched_on_program_and_device() {
        let line =
            b"/usr/lib/rxen/rblkback\0--kind\0rvbd\0--domid\x003\0--devid\x0051712\0--path\0/a\0";

        assert!(cmdline_is(line, Program::Rblkback, 3, 51712));
        assert!(!cmdline_is(line, Program::Rnetback, 3, 51712));
        assert!(!cmdline_is(line, Program::Rblkback, 31, 51712));
        assert!(!cmdline_is(line, Program::Rblkback, 3, 5171));
        assert!(!cmdline_is(b"", Program::Rblkback, 3, 51712));
        assert!(!cmdline_is(
            b"bash\0-c\0rblkback --domid 3 --devid 51712\0",
            Program::Rblkback,
            3,
            51712
        ));
    }

    /// Kills the process when the test ends, passed or not.
    struct KillOnDrop(i32);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) has no memory effects; the pid is our child's.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }

    #[test]
    fn a_stopped_backend_is_gone_and_forgotten() {
        // Arrange: a shell named like the backend, with its device flags.
        let root = dir();
        std::fs::create_dir_all(&root).unwrap();
        let fake = root.join("rblkback");
        std::os::unix::fs::symlink("/bin/sh", &fake).unwrap();
        let args = [
            "-c",
            "while :; do sleep 1; done",
            "--domid",
            "3",
            "--devid",
            "51712",
        ];
        let mut child = Command::new(&fake)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let _guard = KillOnDrop(pid);
        let pids = PidFiles::new(root.join("run"));
        pids.record(3, "rvbd", 51712, child.id()).unwrap();
        let device = DevicePaths::new(3, "vbd", 51712, 0, "rvbd");
        // Until the exec, the child's command line is the test's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process_is(pid, Program::Rblkback, 3, 51712) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(process_is(pid, Program::Rblkback, 3, 51712));
        assert!(!backend_exited(&pids, &device));

        // Act
        let reaper = std::thread::spawn(move || child.wait());
        stop_backend(&pids, &device, Duration::from_millis(10));

        // Assert
        assert!(!reaper.join().unwrap().unwrap().success());
        assert!(!alive(pid));
        assert_eq!(pids.recorded(3, "rvbd", 51712), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn hotplug_scripts_get_libxl_s_environment() {
        let vbd = DevicePaths::new(3, "vbd", 51712, 0, "vbd");
        let vif = DevicePaths::new(3, "vif", 1, 0, "vif");

        let (args, env) = hotplug_command("/etc/xen/scripts/block", HotplugAction::Add, &vbd, None);
        assert_eq!(args, ["add"]);
        assert!(env.contains(&("XENBUS_PATH".into(), "backend/vbd/3/51712".into())));
        assert!(env.contains(&("XENBUS_TYPE".into(), "vbd".into())));
        assert!(env.contains(&("script".into(), "/etc/xen/scripts/block".into())));

        let (args, env) = hotplug_command(
            "/etc/xen/scripts/vif-bridge",
            HotplugAction::Remove,
            &vif,
            Some("eth1"),
        );
        assert_eq!(args, ["offline", "type_if=vif"]);
        assert!(env.contains(&("vif".into(), "vif3.1".into())));
        assert!(env.contains(&("netdev".into(), "eth1".into())));
    }

    #[test]
    fn a_missing_hotplug_script_says_what_to_do() {
        let vbd = DevicePaths::new(3, "vbd", 51712, 0, "vbd");

        let err = run_hotplug("/nonexistent/block", HotplugAction::Add, &vbd, None, || {
            None
        })
        .unwrap_err();

        assert!(err.to_string().contains("Xen's hotplug scripts"), "{err}");
    }

    #[test]
    fn a_failing_hotplug_script_reports_its_error_node() {
        let vbd = DevicePaths::new(3, "vbd", 51712, 0, "vbd");

        let err = run_hotplug("/bin/false", HotplugAction::Add, &vbd, None, || {
            Some("no such device".into())
        });

        if let Err(e) = err {
            assert!(e.to_string().contains("no such device"), "{e}");
        }
    }

    #[test]
    fn the_log_tail_keeps_whole_lines() {
        let root = dir();
        std::fs::create_dir_all(&root).unwrap();
        let log = root.join("log");
        std::fs::write(&log, "first line\nsecond line\nthird\n").unwrap();

        assert_eq!(log_tail(&log, 15), "third");
        assert_eq!(log_tail(&log, 1000), "first line\nsecond line\nthird");
        assert!(log_tail(&root.join("none"), 10).contains("cannot read"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
