//! The harness's errors.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, booting or driving the test host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest written by `tests/xen-host/build.sh` is missing or unreadable.
    #[error("cannot read the Xen test host manifest {path}: {source}; build the host with `make xen-host`")]
    ManifestRead {
        /// Where the manifest was looked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },

    /// The manifest lacks an entry the harness needs.
    #[error("the Xen test host manifest {path} has no {key}; rebuild it with `make xen-host`")]
    ManifestKey {
        /// The manifest.
        path: PathBuf,
        /// The missing key.
        key: String,
    },

    /// A file named by the manifest or by a scenario cannot be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },

    /// A host-side I/O operation of the harness failed.
    #[error("{what} failed: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// QEMU could not be started.
    #[error("cannot start {qemu}: {source}; is qemu-system-x86 installed (`make xen-host` installs it)?")]
    QemuSpawn {
        /// The QEMU binary.
        qemu: PathBuf,
        /// Why spawning failed.
        source: std::io::Error,
    },

    /// QEMU exited while the harness still needed it (Xen or dom0 crashed, or powered off).
    #[error("QEMU exited ({status}) while {during}; the serial console is in {serial_log}")]
    QemuExited {
        /// QEMU's exit status.
        status: String,
        /// What the harness was waiting for.
        during: String,
        /// The Xen and dom0 console log.
        serial_log: PathBuf,
    },

    /// dom0's agent did not report ready in time.
    #[error("dom0 was not ready within {timeout:?}; the serial console is in {serial_log}")]
    BootTimeout {
        /// The boot timeout.
        timeout: Duration,
        /// The Xen and dom0 console log.
        serial_log: PathBuf,
    },

    /// The console stayed silent for `quiet` before dom0 was ready: the
    /// boot hung.
    #[error("dom0 hung on its way up: no console output for {quiet:?}; the serial console is in {serial_log}")]
    BootStalled {
        /// How long the console was silent.
        quiet: Duration,
        /// The Xen and dom0 console log.
        serial_log: PathBuf,
    },

    /// A dom0 step did not finish in time (the agent killed it).
    #[error("dom0 step did not finish within {timeout:?}: {script}")]
    StepTimeout {
        /// The step's script.
        script: String,
        /// Its timeout.
        timeout: Duration,
    },

    /// The agent channel broke or carried something unexpected.
    #[error("dom0 agent channel: {0}; the host cannot be driven any more")]
    Protocol(String),

    /// An earlier failure left the channel out of step; the host must be rebooted.
    #[error("the test host is unusable after an earlier failure: {0}")]
    Broken(String),

    /// A dom0 step exited with a non-zero status.
    #[error("dom0 step exited with status {status}: {script}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}")]
    StepFailed {
        /// The step's script.
        script: String,
        /// Its exit status.
        status: i32,
        /// Its standard output.
        stdout: String,
        /// Its standard error.
        stderr: String,
    },

    /// A guest's console did not show the awaited line in time.
    #[error("guest {guest} did not print a line containing {pattern:?} within {timeout:?}")]
    GuestLineTimeout {
        /// The guest's name.
        guest: String,
        /// The awaited text.
        pattern: String,
        /// How long the harness waited.
        timeout: Duration,
    },

    /// `xl` output did not parse.
    #[error("cannot parse `xl {command}` output: {detail}")]
    XlOutput {
        /// The xl command.
        command: String,
        /// What was wrong.
        detail: String,
    },

    /// A scenario's own check failed.
    #[error("check failed: {0}")]
    Check(String),
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what the harness was doing.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
