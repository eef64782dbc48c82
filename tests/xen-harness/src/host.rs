//! Booting the test host under QEMU and driving it.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{Agent, Output};
use crate::cpio::Archive;
use crate::error::{Error, Result};
use crate::guest::{
    console_log_path, dom0_paths, guest_kernel_path, parse_xl_list, shell_quote, Domain, Guest,
    GuestConfig, GuestLine,
};
use crate::manifest::{GuestKernel, Manifest};

/// How long the console may stay silent before dom0 is ready: a boot
/// prints all the way (dom0's kernel, then its init), and one that hung
/// under emulation printed nothing more for minutes.
pub const BOOT_STALL: Duration = Duration::from_secs(90);
/// How often a boot's console is looked at.
const BOOT_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Default timeout of a dom0 step.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a file put into dom0 at boot comes from.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// A file on the machine running the harness.
    Host(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// Where dom0's init finds Xen's xenstore daemon.
pub const XENSTORED_PATH: &str = "/usr/lib/xen-4.17/bin/xenstored";

/// Where dom0's init finds Xen's console daemon (first on its `PATH`).
pub const XENCONSOLED_PATH: &str = "/usr/lib/xen-4.17/bin/xenconsoled";

#[derive(Debug, Clone)]
struct Dom0File {
    dest: String,
    source: FileSource,
    mode: u32,
}

/// How to boot the test host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Names the log directory (`target/xen-logs/NAME`).
    pub name: String,
    /// The cached artifacts to boot.
    pub manifest: Manifest,
    /// Memory of the emulated machine, MiB.
    pub memory_mib: u32,
    /// CPUs of the emulated machine.
    pub cpus: u32,
    /// Xen's `dom0_mem=`.
    pub dom0_mem: String,
    /// Extra words for Xen's command line.
    pub xen_cmdline: Vec<String>,
    /// Extra words for dom0's kernel command line.
    pub dom0_cmdline: Vec<String>,
    /// Time allowed from starting QEMU to dom0's agent reporting ready.
    pub boot_timeout: Duration,
    /// Where the serial console, QEMU's output and guest consoles go.
    pub log_dir: PathBuf,
    dom0_files: Vec<Dom0File>,
}

impl HostConfig {
    /// The standard host (3 GiB, 2 CPUs, dom0 with 1536 MiB), from the
    /// manifest `make xen-host` wrote.
    pub fn new(name: &str) -> Result<HostConfig> {
        Ok(HostConfig::with_manifest(name, Manifest::load()?))
    }

    /// The standard host, from `manifest`.
    ///
    /// dom0 runs from its initramfs, a tmpfs that the kernel caps at half
    /// of dom0's memory, and the guests' images, initramfs copies and
    /// rxl's unwrapped kernels all live there: a boot hook lifts the cap
    /// (memory is only used as files are written).
    pub fn with_manifest(name: &str, manifest: Manifest) -> HostConfig {
        let config = HostConfig {
            name: name.to_owned(),
            manifest,
            memory_mib: 3072,
            cpus: 2,
            dom0_mem: "1536M".to_owned(),
            xen_cmdline: Vec::new(),
            dom0_cmdline: Vec::new(),
            boot_timeout: Duration::from_secs(300),
            log_dir: target_dir().join("xen-logs").join(name),
            dom0_files: Vec::new(),
        };
        config.with_dom0_boot_hook(
            "00-rootfs-size",
            "#!/bin/sh\nmount -o remount,size=85% / || echo 'rxen-dom0: cannot resize the root file system'\n",
        )
    }

    /// Puts a file into dom0's root file system at boot (appended to the
    /// cached initramfs, so nothing is rebuilt).
    pub fn with_dom0_file(mut self, dest: &str, source: FileSource, mode: u32) -> HostConfig {
        self.dom0_files.push(Dom0File {
            dest: dest.to_owned(),
            source,
            mode,
        });
        self
    }

    /// Puts the project binary `target/release/NAME` into dom0 as
    /// `/usr/local/bin/NAME`.
    pub fn with_project_binary(self, name: &str) -> Result<HostConfig> {
        let path = project_binary(name)?;
        Ok(self.with_dom0_file(
            &format!("/usr/local/bin/{name}"),
            FileSource::Host(path),
            0o755,
        ))
    }

    /// Runs the project's `rxenstored` in place of Xen's xenstore daemon:
    /// dom0's init starts `xenstored --pid-file …` from
    /// `/usr/lib/xen-4.17/bin` (first on its `PATH`), which becomes a
    /// wrapper that execs `/usr/local/bin/rxenstored` with the same
    /// arguments, logging to `/var/log/xen/rxenstored.log`. Nothing in the
    /// cached root changes.
    pub fn with_rxenstored(self) -> Result<HostConfig> {
        Ok(self.with_project_binary("rxenstored")?.with_dom0_file(
            XENSTORED_PATH,
            FileSource::Bytes(
                b"#!/bin/sh\nexec /usr/local/bin/rxenstored -T /var/log/xen/rxenstored.log \"$@\"\n"
                    .to_vec(),
            ),
            0o755,
        ))
    }

    /// Runs the project's `rxconsoled` in place of Xen's console daemon,
    /// as [`HostConfig::with_rxenstored`] does for the store: dom0's init
    /// starts `xenconsoled` with its usual arguments from
    /// `/usr/lib/xen-4.17/bin`, which becomes a wrapper that execs
    /// `/usr/local/bin/rxconsoled`; guest consoles are logged to the same
    /// files.
    pub fn with_rxconsoled(self) -> Result<HostConfig> {
        Ok(self.with_project_binary("rxconsoled")?.with_dom0_file(
            XENCONSOLED_PATH,
            FileSource::Bytes(b"#!/bin/sh\nexec /usr/local/bin/rxconsoled \"$@\"\n".to_vec()),
            0o755,
        ))
    }

    /// Adds a script that dom0's init runs (in name order, before the agent
    /// starts) from `/rxen/boot.d/NAME`.
    pub fn with_dom0_boot_hook(self, name: &str, script: &str) -> HostConfig {
        self.with_dom0_file(
            &format!("/rxen/boot.d/{name}"),
            FileSource::Bytes(script.as_bytes().to_vec()),
            0o755,
        )
    }

    fn xen_cmdline(&self) -> String {
        let mut words = vec![
            "console=com1".to_owned(),
            "com1=115200".to_owned(),
            format!("dom0_mem={}", self.dom0_mem),
        ];
        words.extend(self.xen_cmdline.iter().cloned());
        words.join(" ")
    }

    fn dom0_cmdline(&self) -> String {
        let mut words = vec![
            "console=hvc0".to_owned(),
            "earlyprintk=xen".to_owned(),
            "rdinit=/init".to_owned(),
        ];
        words.extend(self.dom0_cmdline.iter().cloned());
        words.join(" ")
    }

    /// The archive appended to dom0's initramfs: guest kernels (Debian's
    /// and, when the host has it, the project's), initramfs and test disk,
    /// then the scenario's files.
    fn overlay(&self) -> Result<Archive> {
        let m = &self.manifest;
        let mut a = Archive::new();
        let rxen = Some(GuestKernel::Rxen612).filter(|&k| m.has_guest_kernel(k));
        for k in GuestKernel::ALL.into_iter().chain(rxen) {
            a.host_file(
                &guest_kernel_path(m.guest_release(k)?),
                &m.guest_kernel(k)?,
                0o644,
            )?;
        }
        a.host_file(dom0_paths::GUEST_INITRD, &m.guest_initrd()?, 0o644)?;
        a.host_file(dom0_paths::GUEST_DISK, &m.guest_disk()?, 0o644)?;
        a.dir(dom0_paths::CONFIG_DIR).dir(dom0_paths::INITRD_DIR);
        for f in &self.dom0_files {
            match &f.source {
                FileSource::Host(p) => a.host_file(&f.dest, p, f.mode)?,
                FileSource::Bytes(b) => a.file(&f.dest, f.mode, b),
            };
        }
        Ok(a)
    }
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // This crate is at <workspace>/tests/xen-harness.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| manifest_dir.join("../../target"), |w| w.join("target"))
}

/// The path of the release build of project binary `name`.
pub fn project_binary(name: &str) -> Result<PathBuf> {
    let path = target_dir().join("release").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::ReadFile {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not built; run `cargo build --release --workspace --bins` first",
            ),
        })
    }
}

/// Measured times of one host.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// From starting QEMU until dom0's agent reported ready (Xen booted,
    /// dom0 booted, xenstored and xenconsoled running).
    pub dom0_ready: Duration,
}

/// A background job in dom0 (see [`XenHost::spawn`]).
#[derive(Debug, Clone)]
pub struct Dom0Job {
    dir: String,
    /// The job's process id in dom0.
    pub pid: u32,
}

/// A running test host: Xen and dom0 under QEMU. QEMU is killed when this
/// is dropped; [`XenHost::shutdown`] powers the host off cleanly.
#[derive(Debug)]
pub struct XenHost {
    config: HostConfig,
    qemu: Child,
    agent: Agent,
    run_dir: PathBuf,
    serial_log: PathBuf,
    timings: Timings,
    dom0_release: String,
    next_job: u32,
}

impl XenHost {
    /// Boots the host and waits until dom0 is ready for steps.
    pub fn boot(config: HostConfig) -> Result<XenHost> {
        let m = &config.manifest;
        let (qemu_bin, xen, kernel, base_initrd) =
            (m.qemu()?, m.xen_elf()?, m.dom0_kernel()?, m.dom0_initrd()?);
        let log_dir = config.log_dir.clone();
        if log_dir.exists() {
            fs::remove_dir_all(&log_dir)
                .map_err(Error::io(format!("clearing {}", log_dir.display())))?;
        }
        fs::create_dir_all(&log_dir)
            .map_err(Error::io(format!("creating {}", log_dir.display())))?;
        let run_dir = make_run_dir()?;

        // dom0's initramfs: the cached one, then this run's files.
        let initrd = run_dir.join("dom0-initrd.img");
        let overlay = config.overlay()?.finish();
        write_concat(&base_initrd, &overlay, &initrd)?;
        log::debug!(
            "dom0 initramfs: {} + {} bytes of overlay",
            base_initrd.display(),
            overlay.len()
        );

        let sock = run_dir.join("agent.sock");
        let listener = UnixListener::bind(&sock)
            .map_err(Error::io(format!("listening on {}", sock.display())))?;
        listener
            .set_nonblocking(true)
            .map_err(Error::io("making the agent socket non-blocking"))?;

        let serial_log = log_dir.join("serial.log");
        let qemu_log =
            File::create(log_dir.join("qemu.log")).map_err(Error::io("creating qemu.log"))?;
        let qemu_log2 = qemu_log
            .try_clone()
            .map_err(Error::io("duplicating qemu.log"))?;
        let mut cmd = Command::new(&qemu_bin);
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "qemu64,+svm,+npt"])
            .args([
                "-m",
                &config.memory_mib.to_string(),
                "-smp",
                &config.cpus.to_string(),
            ])
            .args(["-display", "none", "-vga", "none", "-nic", "none"])
            .args(["-monitor", "none", "-parallel", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial_log.display()))
            .arg("-kernel")
            .arg(&xen)
            .args(["-append", &config.xen_cmdline()])
            .arg("-initrd")
            .arg(format!(
                "{} {},{}",
                qemu_opt(&kernel),
                config.dom0_cmdline().replace(',', ",,"),
                qemu_opt(&initrd)
            ))
            .args(["-device", "virtio-serial-pci,id=vser0"])
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={}", qemu_opt(&sock)))
            .args([
                "-device",
                "virtserialport,bus=vser0.0,chardev=agent,name=rxen.agent",
            ])
            .stdin(Stdio::null())
            .stdout(qemu_log)
            .stderr(qemu_log2);
        log::info!(
            "booting Xen test host {:?}; console log {}",
            config.name,
            serial_log.display()
        );
        log::debug!("{cmd:?}");
        let started = Instant::now();
        let deadline = started + config.boot_timeout;
        let mut qemu = spawn_tied_to_process(cmd).map_err(|source| Error::QemuSpawn {
            qemu: qemu_bin.clone(),
            source,
        })?;

        let connected = accept_until(&listener, &mut qemu, deadline, &config, &serial_log);
        let stream = match connected {
            Ok(s) => s,
            Err(e) => {
                kill(&mut qemu);
                return Err(e);
            }
        };
        let mut console = ConsoleWatch::new(&serial_log, BOOT_STALL);
        let stalled = || console.check();
        let (agent, dom0_release) = match Agent::wait_ready_or(stream, deadline, BOOT_CHECK_EVERY, stalled) {
            Ok(r) => r,
            Err(e) => {
                let err = match qemu.try_wait() {
                    Ok(Some(status)) => Error::QemuExited {
                        status: status.to_string(),
                        during: "waiting for dom0".to_owned(),
                        serial_log: serial_log.clone(),
                    },
                    _ if Instant::now() >= deadline => Error::BootTimeout {
                        timeout: config.boot_timeout,
                        serial_log: serial_log.clone(),
                    },
                    _ => e,
                };
                kill(&mut qemu);
                eprintln!("{}", tail_file(&serial_log, 60));
                return Err(err);
            }
        };
        let timings = Timings {
            dom0_ready: started.elapsed(),
        };
        // QEMU has loaded it; free the space.
        let _ = fs::remove_file(&initrd);
        log::info!(
            "dom0 ({dom0_release}) ready after {:.1} s",
            timings.dom0_ready.as_secs_f64()
        );
        Ok(XenHost {
            config,
            qemu,
            agent,
            run_dir,
            serial_log,
            timings,
            dom0_release,
            next_job: 1,
        })
    }

    /// The manifest the host was booted from.
    pub fn manifest(&self) -> &Manifest {
        &self.config.manifest
    }

    /// dom0's kernel release.
    pub fn dom0_release(&self) -> &str {
        &self.dom0_release
    }

    /// Measured boot times.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// Where this host's logs go.
    pub fn log_dir(&self) -> &Path {
        &self.config.log_dir
    }

    /// Runs a bash script in dom0 with the default timeout.
    pub fn run(&mut self, script: &str) -> Result<Output> {
        self.run_with(script, &[], STEP_TIMEOUT)
    }

    /// Runs a bash script in dom0 with `stdin` as input and a timeout.
    pub fn run_with(&mut self, script: &str, stdin: &[u8], timeout: Duration) -> Result<Output> {
        log::debug!("dom0$ {}", script.trim_end());
        let out = self.agent.run(script, stdin, timeout)?;
        log::trace!("dom0 status {}: {}{}", out.status, out.stdout, out.stderr);
        Ok(out)
    }

    /// Runs a bash script in dom0 and returns its stdout; a non-zero exit
    /// status is an error carrying both outputs.
    pub fn run_ok(&mut self, script: &str) -> Result<String> {
        self.run_ok_with(script, &[], STEP_TIMEOUT)
    }

    /// [`XenHost::run_ok`] with stdin and a timeout.
    pub fn run_ok_with(&mut self, script: &str, stdin: &[u8], timeout: Duration) -> Result<String> {
        let out = self.run_with(script, stdin, timeout)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(Error::StepFailed {
                script: script.to_owned(),
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
    }

    /// Writes `data` to `dest` in dom0 (creating directories) with
    /// permission bits `mode`.
    pub fn put_file(&mut self, dest: &str, data: &[u8], mode: u32) -> Result<()> {
        let d = shell_quote(dest);
        let script =
            format!("set -e; mkdir -p \"$(dirname {d})\"; cat > {d}; chmod {mode:o} {d}\n");
        let timeout = STEP_TIMEOUT + Duration::from_secs((data.len() / (1 << 20)) as u64);
        self.run_ok_with(&script, data, timeout).map(drop)
    }

    /// Starts a bash script in the background in dom0; collect it with
    /// [`XenHost::wait_job`]. Use it to run a dom0 program while a guest
    /// does its part.
    pub fn spawn(&mut self, script: &str) -> Result<Dom0Job> {
        let dir = format!("/run/rxen-jobs/{}", self.next_job);
        self.next_job += 1;
        let d = shell_quote(&dir);
        let launch = format!(
            "set -e; mkdir -p {d}; cat > {d}/script\n\
             setsid bash -c 'bash \"$1/script\" >\"$1/out\" 2>\"$1/err\" </dev/null; echo $? >\"$1/rc.tmp\"; mv \"$1/rc.tmp\" \"$1/rc\"' job {d} &\n\
             echo $!\n"
        );
        let out = self.run_ok_with(&launch, script.as_bytes(), STEP_TIMEOUT)?;
        let pid = out
            .trim()
            .parse()
            .map_err(|_| Error::Check(format!("spawn printed {out:?} instead of a pid")))?;
        Ok(Dom0Job { dir, pid })
    }

    /// Waits for a background job and returns its output and exit status.
    pub fn wait_job(&mut self, job: &Dom0Job, timeout: Duration) -> Result<Output> {
        let d = shell_quote(&job.dir);
        let secs = timeout.as_secs().max(1);
        let script = format!(
            "end=$((SECONDS + {secs}))\n\
             while [ ! -f {d}/rc ]; do\n\
               [ $SECONDS -ge $end ] && {{ echo 'job {pid} still running' >&2; exit 124; }}\n\
               sleep 0.1\n\
             done\n\
             cat {d}/out; cat {d}/err >&2; exit \"$(cat {d}/rc)\"\n",
            pid = job.pid
        );
        let out = self.run_with(&script, &[], timeout + Duration::from_secs(10))?;
        if out.status == crate::agent::TIMEOUT_STATUS && out.stderr.contains("still running") {
            return Err(Error::StepTimeout {
                script: format!("background job {}", job.pid),
                timeout,
            });
        }
        Ok(out)
    }

    /// Builds `NAME.img` in dom0: the guests' base initramfs with `overlay`
    /// appended (project binaries, `/rxen/guest.d/*` scripts the guest's
    /// init runs). Returns its dom0 path for [`GuestConfig::with_ramdisk`].
    pub fn guest_initrd_with(&mut self, name: &str, overlay: Archive) -> Result<String> {
        let img = format!("{}/{name}.img", dom0_paths::INITRD_DIR);
        let bytes = overlay.finish();
        let script = format!(
            "set -e; mkdir -p {dir}; img={img}\n\
             cp {base} \"$img\"\n\
             size=$(stat -c %s \"$img\"); pad=$(( (4 - size % 4) % 4 ))\n\
             head -c $pad /dev/zero >> \"$img\"\n\
             cat >> \"$img\"\n",
            dir = shell_quote(dom0_paths::INITRD_DIR),
            img = shell_quote(&img),
            base = shell_quote(dom0_paths::GUEST_INITRD),
        );
        self.run_ok_with(&script, &bytes, STEP_TIMEOUT)?;
        Ok(img)
    }

    /// `xl create`s a guest from `config`. Any console log left by an
    /// earlier guest of the same name is removed first.
    pub fn xl_create(&mut self, config: &GuestConfig) -> Result<Guest> {
        self.create_with(config, "xl")
    }

    /// Creates a guest from `config` with `tool create` (`xl` or the
    /// project's `rxl`, which take the same file; `tool` is a shell word
    /// list, e.g. `RUST_LOG=info rxl`), as
    /// [`XenHost::xl_create`] does.
    pub fn create_with(&mut self, config: &GuestConfig, tool: &str) -> Result<Guest> {
        let release = self
            .config
            .manifest
            .guest_release(config.kernel)?
            .to_owned();
        let text = config.render(&release);
        log::debug!("{tool} create {}:\n{text}", config.name);
        let cfg_path = format!("{}/{}.cfg", dom0_paths::CONFIG_DIR, config.name);
        let script = format!(
            "set -e; mkdir -p {dir}; cat > {cfg}\n\
             rm -f {log}\n\
             date +%s.%N\n\
             {tool} create {cfg} >&2\n",
            dir = shell_quote(dom0_paths::CONFIG_DIR),
            cfg = shell_quote(&cfg_path),
            log = shell_quote(&console_log_path(&config.name)),
            tool = tool,
        );
        let out = self.run_with(&script, text.as_bytes(), STEP_TIMEOUT)?;
        for line in out.stderr.lines() {
            log::info!("{tool} create {}: {line}", config.name);
        }
        if !out.success() {
            return Err(Error::Check(format!(
                "{tool} create {} exited with status {}: {}",
                config.name, out.status, out.stderr
            )));
        }
        let created_at = first_f64(&out.stdout)?;
        log::info!("{tool} created {} ({:?}, {release})", config.name, config.kind);
        Ok(Guest {
            name: config.name.clone(),
            release,
            created_at,
        })
    }

    /// Runs `command` in dom0 to start a guest called `name` running
    /// `kernel` some other way than from a [`GuestConfig`] (e.g. `rxl
    /// server-start`), and returns it for the waits below; its console log
    /// is removed first, as [`XenHost::create_with`] does.
    pub fn start_guest_with(&mut self, name: &str, kernel: GuestKernel, command: &str) -> Result<Guest> {
        let release = self.config.manifest.guest_release(kernel)?.to_owned();
        let script = format!(
            "set -e; rm -f {log}\ndate +%s.%N\n{command} >&2\n",
            log = shell_quote(&console_log_path(name)),
        );
        let out = self.run_ok(&script)?;
        let created_at = first_f64(&out)?;
        log::info!("{command}: started {name} ({release})");
        Ok(Guest {
            name: name.to_owned(),
            release,
            created_at,
        })
    }

    /// Waits until a guest's console shows a line containing `pattern`.
    pub fn wait_guest_line(
        &mut self,
        guest: &Guest,
        pattern: &str,
        timeout: Duration,
    ) -> Result<GuestLine> {
        let mut lines = self.wait_guest_lines(&[(guest, pattern)], timeout)?;
        lines
            .pop()
            .ok_or_else(|| Error::Check("no line returned".to_owned()))
    }

    /// Waits until each guest's console shows a line containing its
    /// pattern; the guests run concurrently, so each line's time since its
    /// guest's creation is measured in dom0 as it appears.
    pub fn wait_guest_lines(
        &mut self,
        waits: &[(&Guest, &str)],
        timeout: Duration,
    ) -> Result<Vec<GuestLine>> {
        let mut stdin = String::new();
        for (g, pat) in waits {
            if pat.contains(['\t', '\n']) || g.name.contains(['\t', '\n']) {
                return Err(Error::Check(format!(
                    "pattern {pat:?} must be one line without tabs"
                )));
            }
            stdin.push_str(&format!(
                "{}\t{}\t{}\n",
                g.name,
                console_log_path(&g.name),
                pat
            ));
        }
        let secs = timeout.as_secs().max(1);
        // Prints "INDEX<tab>TIME<tab>LINE" per match; a guest that is gone
        // without printing its line (absent at three checks 2 s apart, so
        // that an xl restart does not count) ends the wait early with
        // "GONE<tab>INDEX".
        let script = format!(
            "end=$((SECONDS + {secs})); n=0\n\
             mapfile -t reqs\n\
             declare -A found missing\n\
             while :; do\n\
               all=1; n=$((n + 1))\n\
               for i in \"${{!reqs[@]}}\"; do\n\
                 [ -n \"${{found[$i]:-}}\" ] && continue\n\
                 IFS=$'\\t' read -r name log pat <<< \"${{reqs[$i]}}\"\n\
                 line=$(grep -a -F -m1 -e \"$pat\" \"$log\" 2>/dev/null | tr -d '\\r')\n\
                 if [ -n \"$line\" ]; then found[$i]=1; printf '%s\\t%s\\t%s\\n' \"$i\" \"$(date +%s.%N)\" \"$line\"; continue; fi\n\
                 all=0\n\
                 if [ $((n % 20)) = 0 ]; then\n\
                   if xl domid \"$name\" >/dev/null 2>&1; then missing[$i]=0; else missing[$i]=$(( ${{missing[$i]:-0}} + 1 )); fi\n\
                   if [ \"${{missing[$i]}}\" -ge 3 ]; then\n\
                     line=$(grep -a -F -m1 -e \"$pat\" \"$log\" 2>/dev/null | tr -d '\\r')\n\
                     [ -n \"$line\" ] && {{ found[$i]=1; printf '%s\\t%s\\t%s\\n' \"$i\" \"$(date +%s.%N)\" \"$line\"; continue; }}\n\
                     printf 'GONE\\t%s\\n' \"$i\"; exit 2\n\
                   fi\n\
                 fi\n\
               done\n\
               [ $all = 1 ] && exit 0\n\
               [ $SECONDS -ge $end ] && exit 1\n\
               sleep 0.1\n\
             done\n"
        );
        let out = self.run_with(&script, stdin.as_bytes(), timeout + Duration::from_secs(10))?;
        let mut result: Vec<Option<GuestLine>> = vec![None; waits.len()];
        let mut gone = None;
        for l in out.stdout.lines() {
            let mut f = l.splitn(3, '\t');
            match (f.next(), f.next(), f.next()) {
                (Some("GONE"), Some(i), None) => gone = i.parse::<usize>().ok(),
                (Some(i), Some(t), Some(line)) => {
                    let (Ok(i), Ok(t)) = (i.parse::<usize>(), t.parse::<f64>()) else {
                        continue;
                    };
                    if let Some((g, _)) = waits.get(i) {
                        let since = (t - g.created_at).max(0.0);
                        result[i] = Some(GuestLine {
                            line: line.to_owned(),
                            since_create: Duration::from_secs_f64(since),
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(i) = gone {
            if let Some((g, pat)) = waits.get(i) {
                // What the guest printed last, and why xl says it ended,
                // so that the failure explains itself.
                let tail = self
                    .run(&format!(
                        "tail -n 30 {} 2>/dev/null | tr -d '\\r'; echo '--- xl log:'; tail -n 8 /var/log/xen/xl-{}.log 2>/dev/null",
                        shell_quote(&console_log_path(&g.name)),
                        shell_quote(&g.name)
                    ))
                    .map(|o| o.stdout)
                    .unwrap_or_default();
                return Err(Error::Check(format!(
                    "guest {} is gone without printing a line containing {pat:?}; its console's last lines:\n{tail}",
                    g.name
                )));
            }
        }
        result
            .into_iter()
            .zip(waits)
            .map(|(r, (g, pat))| {
                r.ok_or_else(|| Error::GuestLineTimeout {
                    guest: g.name.clone(),
                    pattern: (*pat).to_owned(),
                    timeout,
                })
            })
            .collect()
    }

    /// Waits until a guest's init reports userspace; returns the kernel
    /// release it printed and the time from creation.
    pub fn wait_guest_up(
        &mut self,
        guest: &Guest,
        timeout: Duration,
    ) -> Result<(String, Duration)> {
        let l = self.wait_guest_line(guest, "RXEN-GUEST-UP release=", timeout)?;
        Ok((release_of(&l.line), l.since_create))
    }

    /// How many times Xen has reported a guest triple fault since boot
    /// (see the note on `on_reboot` in [`GuestConfig::render`]).
    pub fn triple_faults(&mut self) -> Result<usize> {
        let out = self.run_ok("xl dmesg | grep -c 'Triple fault' || true")?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// A guest's console log so far.
    pub fn guest_console(&mut self, name: &str) -> Result<String> {
        self.run_ok(&format!(
            "cat {} 2>/dev/null || true",
            shell_quote(&console_log_path(name))
        ))
    }

    /// A domain's id (`xl domid`).
    pub fn domid(&mut self, name: &str) -> Result<u32> {
        let out = self.run_ok(&format!("xl domid {}", shell_quote(name)))?;
        out.trim().parse().map_err(|_| Error::XlOutput {
            command: format!("domid {name}"),
            detail: format!("expected a number, got {out:?}"),
        })
    }

    /// `xl list`.
    pub fn xl_list(&mut self) -> Result<Vec<Domain>> {
        let out = self.run_ok("xl list")?;
        parse_xl_list(&out)
    }

    /// The text of `xl list`, as xl prints it.
    pub fn xl_list_text(&mut self) -> Result<String> {
        self.run_ok("xl list")
    }

    /// `xl destroy`s a domain and waits until it is gone from `xl list`.
    pub fn xl_destroy(&mut self, name: &str) -> Result<()> {
        let n = shell_quote(name);
        self.run_ok(&format!(
            "xl destroy {n}\n\
             for i in $(seq 1 300); do xl domid {n} >/dev/null 2>&1 || exit 0; sleep 0.1; done\n\
             echo 'still listed 30 s after xl destroy' >&2; exit 1\n"
        ))
        .map(drop)
    }

    /// Runs `f` as a named scenario: logs its time, and on failure prints
    /// the tail of the Xen and dom0 console, guest consoles and `xl` state.
    pub fn scenario<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut XenHost) -> Result<T>,
    ) -> Result<T> {
        log::info!("scenario {name}: start");
        let start = Instant::now();
        let r = f(self);
        match &r {
            Ok(_) => log::info!(
                "scenario {name}: passed in {:.1} s",
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                eprintln!(
                    "scenario {name} failed after {:.1} s: {e}",
                    start.elapsed().as_secs_f64()
                );
                eprintln!("{}", self.failure_report());
            }
        }
        r
    }

    /// The tail of the Xen and dom0 console, and, if dom0 still answers,
    /// `xl list`, Xen's and dom0's kernel logs and each guest console.
    pub fn failure_report(&mut self) -> String {
        let serial = tail_file(&self.serial_log, usize::MAX);
        let (xen, dom0): (Vec<&str>, Vec<&str>) =
            serial.lines().partition(|l| l.starts_with("(XEN)"));
        let last = |v: &[&str], n: usize| v[v.len().saturating_sub(n)..].join("\n");
        let mut report = format!(
            "=== Xen console (from {}), last lines ===\n{}\n=== dom0 console, last lines ===\n{}\n",
            self.serial_log.display(),
            last(&xen, 30),
            last(&dom0, 50)
        );
        let script = format!(
            "echo '=== xl list ==='; xl list 2>&1\n\
             echo '=== xl dmesg (tail) ==='; xl dmesg 2>&1 | tail -n 30\n\
             for f in {dir}/*.log; do [ -f \"$f\" ] || continue; echo \"=== $f (tail) ===\"; tail -n 40 \"$f\" | tr -d '\\r'; done\n",
            dir = dom0_paths::CONSOLE_LOG_DIR
        );
        match self.run_with(&script, &[], Duration::from_secs(60)) {
            Ok(out) => report.push_str(&out.stdout),
            Err(e) => report.push_str(&format!("(dom0 does not answer: {e})\n")),
        }
        report
    }

    /// Copies the guest console logs from dom0 into the log directory.
    pub fn save_guest_consoles(&mut self) -> Result<()> {
        let list = self.run_ok(&format!(
            "ls {} 2>/dev/null || true",
            dom0_paths::CONSOLE_LOG_DIR
        ))?;
        for name in list.lines().map(str::trim).filter(|n| n.ends_with(".log")) {
            let text = self.run_ok(&format!(
                "cat {}",
                shell_quote(&format!("{}/{name}", dom0_paths::CONSOLE_LOG_DIR))
            ))?;
            let path = self.config.log_dir.join(name);
            fs::write(&path, text).map_err(Error::io(format!("writing {}", path.display())))?;
        }
        Ok(())
    }

    /// Saves the guest consoles, powers dom0 (and so Xen and QEMU) off, and
    /// waits for QEMU to exit.
    pub fn shutdown(mut self) -> Result<()> {
        if let Err(e) = self.save_guest_consoles() {
            log::warn!("cannot save guest consoles: {e}");
        }
        self.agent.send_only("sync; busybox poweroff -f")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.qemu.try_wait() {
                Ok(Some(status)) => {
                    log::info!("host powered off ({status})");
                    return Ok(());
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return Err(Error::io("waiting for QEMU")(e)),
            }
        }
        log::warn!("QEMU still running 60 s after power-off; killing it");
        kill(&mut self.qemu);
        Ok(())
    }
}

impl Drop for XenHost {
    fn drop(&mut self) {
        kill(&mut self.qemu);
        let _ = fs::remove_dir_all(&self.run_dir);
    }
}

/// Spawns `cmd` so that it is killed when this process ends, however it
/// ends (a test runner's timeout, a panic that aborts, SIGKILL): no QEMU is
/// left burning CPU. Linux's parent-death signal fires when the *thread*
/// that forked the child exits, so the fork happens on a thread that lives
/// as long as the process, not on the caller's (a test's thread ends before
/// a host shared between tests would).
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};

    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2) and getppid(2), both async-signal-safe, with valid
    // arguments; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The spawner may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other(
                    "the harness exited while starting QEMU",
                ));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("rxen-qemu-spawner".to_owned())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| log::warn!("cannot start the QEMU spawner thread: {e}"));
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = spawner
        .lock()
        .map_err(|_| std::io::Error::other("the QEMU spawner's lock is poisoned"))?
        .send((cmd, reply_tx));
    match sent {
        Ok(()) => reply_rx
            .recv()
            .map_err(|_| std::io::Error::other("the QEMU spawner thread is gone"))?,
        // No spawner thread: spawn here; QEMU then dies with this thread.
        Err(mpsc::SendError((mut cmd, _))) => cmd.spawn(),
    }
}

fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A directory for the socket and the per-boot initramfs, short enough
/// for a Unix socket path.
fn make_run_dir() -> Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = std::env::temp_dir();
    // Remove what harnesses that were killed left behind.
    if let Ok(entries) = fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("rxen-host-").and_then(|r| r.split('-').next());
            if let Some(pid) = pid {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = tmp.join(format!("rxen-host-{}-{n}", std::process::id()));
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(Error::io(format!("clearing {}", dir.display())))?;
    }
    fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    Ok(dir)
}

fn write_concat(base: &Path, overlay: &[u8], out: &Path) -> Result<()> {
    let mut src = File::open(base).map_err(|source| Error::ReadFile {
        path: base.to_owned(),
        source,
    })?;
    let what = format!("writing {}", out.display());
    let mut dst = BufWriter::new(File::create(out).map_err(Error::io(what.clone()))?);
    let n = std::io::copy(&mut src, &mut dst).map_err(Error::io(what.clone()))?;
    // Linux wants an uncompressed archive to start on a four-byte boundary.
    let pad = (4 - (n % 4) as usize) % 4;
    dst.write_all(&[0u8; 3][..pad])
        .map_err(Error::io(what.clone()))?;
    dst.write_all(overlay).map_err(Error::io(what.clone()))?;
    dst.flush().map_err(Error::io(what))
}

/// QEMU's option syntax doubles commas inside a value.
fn qemu_opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn accept_until(
    listener: &UnixListener,
    qemu: &mut Child,
    deadline: Instant,
    config: &HostConfig,
    serial_log: &Path,
) -> Result<std::os::unix::net::UnixStream> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(Error::io("configuring the agent socket"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::io("accepting QEMU's connection")(e)),
        }
        if let Ok(Some(status)) = qemu.try_wait() {
            return Err(Error::QemuExited {
                status: status.to_string(),
                during: "starting".to_owned(),
                serial_log: serial_log.to_owned(),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::BootTimeout {
                timeout: config.boot_timeout,
                serial_log: serial_log.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a booting host's console log still grows.
struct ConsoleWatch<'a> {
    log: &'a Path,
    stall: Duration,
    len: u64,
    since: Instant,
}

impl<'a> ConsoleWatch<'a> {
    fn new(log: &'a Path, stall: Duration) -> Self {
        ConsoleWatch { log, stall, len: 0, since: Instant::now() }
    }

    /// [`Error::BootStalled`] once the log has not grown for `stall`.
    fn check(&mut self) -> Result<()> {
        let len = fs::metadata(self.log).map_or(0, |m| m.len());
        if len != self.len {
            self.len = len;
            self.since = Instant::now();
        } else if self.since.elapsed() >= self.stall {
            return Err(Error::BootStalled { quiet: self.since.elapsed(), serial_log: self.log.to_owned() });
        }
        Ok(())
    }
}

/// The last `n` lines of a file, for failure reports.
pub fn tail_file(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).replace('\r', "");
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn first_f64(out: &str) -> Result<f64> {
    out.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| Error::Check(format!("expected a time stamp, got {out:?}")))
}

/// The release in a `RXEN-GUEST-UP release=...` line.
pub fn release_of(line: &str) -> String {
    line.split("release=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn release_is_taken_from_the_marker_line() {
        assert_eq!(
            release_of("RXEN-GUEST-UP release=6.1.0-56-cloud-amd64\r"),
            "6.1.0-56-cloud-amd64"
        );
        assert_eq!(release_of("nothing"), "");
    }

    #[test]
    fn concatenation_pads_to_four_bytes() {
        let dir = make_run_dir().unwrap();
        let base = dir.join("base");
        fs::write(&base, b"abcde").unwrap();
        let out = dir.join("out");
        write_concat(&base, b"0707", &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"abcde\0\0\x000707");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_console_that_stops_growing_is_a_stalled_boot() {
        let dir = make_run_dir().unwrap();
        let log = dir.join("serial.log");
        let mut watch = ConsoleWatch::new(&log, Duration::from_millis(200));
        // A log that grows (or appears) is never stalled.
        for i in 0..4 {
            fs::write(&log, "x".repeat(i + 1)).unwrap();
            watch.check().unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        watch.check().unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert!(matches!(watch.check(), Err(Error::BootStalled { .. })));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn commas_are_doubled_for_qemu() {
        assert_eq!(qemu_opt(Path::new("/a,b")), "/a,,b");
    }
}
