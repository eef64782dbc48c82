//! `xl console`: the terminal connected to a domain's console pty, as
//! Xen's `xenconsole` client (which `libxl_console_exec` runs) does.
//!
//! The console daemon (xenconsoled, or rxconsoled) writes the path of
//! each console's pty to xenstore (`console/tty` for the primary PV
//! console, `device/console/N/tty` for the others, `serial/N/tty` for
//! QEMU's serial ports, `vuart/0/tty` for Arm's vUART). The client waits
//! up to five seconds for it (a domain just created may not have it
//! yet), takes xenconsole's lock for the domain, and copies both ways:
//!
//! - With a terminal on standard input and output, the terminal is put
//!   in raw mode (and restored at the end, SIGTERM and SIGHUP included),
//!   and Ctrl-] (0x1d) leaves.
//! - Otherwise standard input is copied to the console until it ends,
//!   then output is still copied until the console has been quiet for
//!   half a second (at most ten seconds), so that
//!   `echo uname -a | rxl console guest` prints the answer and returns.
//!   (xenconsole ignores such input and never returns; to follow the
//!   output without end, keep standard input open: `sleep inf | rxl
//!   console guest`.)
//!
//! If the pty goes away (the daemon restarted, the domain died), the
//! client follows the `tty` node to a new pty, or returns once the node
//! is gone or names no usable pty for five seconds.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hypercall_abi::platform::Xenstore;

use super::{devices, store, DomainType, XenHost, NONE};
use crate::host::{ConsoleKind, DomId, HostError};

/// How long to wait for the pty to appear, or to come back (xenconsole's
/// `get_pty_fd(xs, path, 5)`).
const TTY_WAIT: Duration = Duration::from_secs(5);

/// The byte that leaves an interactive session: Ctrl-].
const ESCAPE: u8 = 0x1d;

/// How long the console must be quiet, once standard input has ended,
/// before a non-interactive session returns.
const DRAIN_IDLE: Duration = Duration::from_millis(500);

/// The longest a non-interactive session goes on after standard input
/// ended.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// How often the session looks at xenstore and the signals without
/// other activity.
const TICK: Duration = Duration::from_millis(250);

/// Where xenconsole keeps its per-domain lock files (`XEN_LOCK_DIR`).
const LOCK_DIR: &str = "/var/lock";

/// Attaches the terminal to console `kind` (`None`: the primary one)
/// number `num` of `domid`, until the user leaves it (xl's
/// `main_console`, then `xenconsole`).
pub(super) fn attach(
    host: &XenHost,
    domid: DomId,
    kind: Option<ConsoleKind>,
    num: u32,
) -> Result<(), HostError> {
    if domid == 0 {
        return Err(HostError::Invalid("Can't specify Domain-0".into()));
    }
    let raw = host.raw_info(domid)?;
    // libxl_primary_console_exec: PV and PVH guests' first PV console,
    // HVM guests' first serial port.
    let (kind, num) = match kind {
        Some(kind) => (kind, num),
        None => match host.domain_type(domid, &raw) {
            DomainType::Pv | DomainType::Pvh => (ConsoleKind::Pv, 0),
            DomainType::Hvm => (ConsoleKind::Serial, 0),
        },
    };
    let xs = host.store();
    let dom = devices::dom_path(domid);
    let node = tty_node(&dom, kind, num, |path| {
        store::exists(xs, NONE, path).unwrap_or(false)
    });
    let _lock = ConsoleLock::take(Path::new(LOCK_DIR), domid)?;
    let (pty, pty_path) = wait_for_pty(xs, &node, TTY_WAIT)?.ok_or_else(|| {
        HostError::Failed(format!(
            "Could not read tty from store: {node} did not name a usable pty within {} seconds; is the console daemon running?",
            TTY_WAIT.as_secs()
        ))
    })?;
    let stdin = dup(io::stdin().as_fd(), "standard input")?;
    let stdout = dup(io::stdout().as_fd(), "standard output")?;
    let escape = sys::is_terminal(stdin.as_fd());
    let raw_mode = escape && sys::is_terminal(stdout.as_fd());
    let _terminal = if raw_mode {
        Some(RawTerminal::enter(stdin.as_fd())?)
    } else {
        None
    };
    let mut output = stdout;
    Session {
        xs,
        node: &node,
        pty: Some(pty),
        pty_path: Some(pty_path),
        input: Some(stdin),
        output: &mut output,
        mode: Mode { escape, raw_mode },
        drain: (DRAIN_IDLE, DRAIN_MAX),
    }
    .run()
}

/// The node holding the pty path of console `kind` number `num` of the
/// domain at `dom` (xenconsole's choice: a serial port that does not
/// exist falls back to the PV console).
fn tty_node(dom: &str, kind: ConsoleKind, num: u32, exists: impl FnOnce(&str) -> bool) -> String {
    let pv = |num: u32| {
        if num == 0 {
            format!("{dom}/console/tty")
        } else {
            format!("{dom}/device/console/{num}/tty")
        }
    };
    match kind {
        ConsoleKind::Pv => pv(num),
        ConsoleKind::Serial => {
            let serial = format!("{dom}/serial/{num}/tty");
            if exists(&serial) {
                serial
            } else {
                pv(num)
            }
        }
        ConsoleKind::Vuart => format!("{dom}/vuart/0/tty"),
    }
}

/// A duplicate of `fd` as a file.
fn dup(fd: BorrowedFd<'_>, what: &str) -> Result<File, HostError> {
    fd.try_clone_to_owned()
        .map(File::from)
        .map_err(|source| HostError::Os {
            what: format!("duplicating {what}"),
            source,
        })
}

/// Whether `path` can only be a pty slave: `/dev/pts/N`. The console
/// directory is the guest's to write, so a path read from it is not
/// opened unless it is one.
fn is_pty_path(path: &str) -> bool {
    path.strip_prefix("/dev/pts/")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Opens the pty `node` names; `None` if it names none, or one that
/// cannot be opened or is not a terminal.
fn open_pty(xs: &dyn Xenstore, node: &str) -> Result<Option<(File, String)>, HostError> {
    let Some(path) = store::read(xs, NONE, node)? else {
        return Ok(None);
    };
    if path.is_empty() {
        return Ok(None);
    }
    if !is_pty_path(&path) {
        log::debug!("{node} names {path:?}, which is not a pty; ignoring it");
        return Ok(None);
    }
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            log::debug!("Could not open tty `{path}': {e}");
            return Ok(None);
        }
    };
    if !sys::is_terminal(file.as_fd()) {
        log::debug!("{path} is not a terminal; ignoring it");
        return Ok(None);
    }
    // As xenconsole: the daemon may not have set raw mode.
    if let Err(e) = sys::make_raw(file.as_fd()) {
        log::debug!("cannot put {path} in raw mode: {e}");
    }
    Ok(Some((file, path)))
}

/// Waits up to `wait` for `node` to name a pty that opens.
fn wait_for_pty(
    xs: &dyn Xenstore,
    node: &str,
    wait: Duration,
) -> Result<Option<(File, String)>, HostError> {
    store::wait_for(xs, &[node], Instant::now() + wait, || open_pty(xs, node))
}

/// How the session treats its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Input is a terminal: Ctrl-] leaves.
    escape: bool,
    /// Input and output are a terminal in raw mode: input ending means
    /// the terminal went away, so the session ends at once.
    raw_mode: bool,
}

/// A console session: copies between `input`/`output` and the pty until
/// the user leaves, input ends (then output drains) or the console goes.
struct Session<'a> {
    xs: &'a dyn Xenstore,
    node: &'a str,
    pty: Option<File>,
    /// The path `pty` was opened by, if known.
    pty_path: Option<String>,
    /// `None` once it ended.
    input: Option<File>,
    output: &'a mut dyn Write,
    mode: Mode,
    /// How long output must be quiet, and how long it may go on at most,
    /// once input ended.
    drain: (Duration, Duration),
}

/// What one round of the session decided.
enum Next {
    Continue,
    Leave,
}

impl Session<'_> {
    fn run(mut self) -> Result<(), HostError> {
        let token = format!("rxl-console-{}", std::process::id());
        if let Err(e) = self.xs.watch(self.node, &token) {
            log::debug!("cannot watch {}: {e}; polling it", self.node);
        }
        let signals = sys::TerminationSignals::catch();
        let result = self.copy(&signals);
        if let Err(e) = self.xs.unwatch(self.node, &token) {
            log::debug!("cannot unwatch {}: {e}", self.node);
        }
        result
    }

    fn copy(&mut self, signals: &sys::TerminationSignals) -> Result<(), HostError> {
        // When input ended, and when output last came.
        let mut ended: Option<Instant> = None;
        let mut last_output = Instant::now();
        // Since when the pty is gone.
        let mut lost: Option<Instant> = None;
        // Ends: every round waits at most TICK; the drain and the loss of
        // the pty are bounded in time; leaving is up to the user.
        loop {
            if signals.caught() {
                return Ok(());
            }
            let now = Instant::now();
            if let Some(end) = ended {
                if now.duration_since(last_output) >= self.drain.0
                    || now.duration_since(end) >= self.drain.1
                {
                    return Ok(());
                }
            }
            let (input_ready, pty_ready) = {
                let input = self.input.as_ref().map(File::as_fd);
                let pty = self.pty.as_ref().map(File::as_fd);
                sys::poll_readable(input, pty, TICK.min(self.drain.0)).map_err(|source| {
                    HostError::Os {
                        what: "waiting for console input or output".into(),
                        source,
                    }
                })?
            };
            if input_ready {
                match self.forward_input()? {
                    Some(Next::Leave) => return Ok(()),
                    Some(Next::Continue) => {}
                    None => {
                        if self.mode.raw_mode {
                            return Ok(());
                        }
                        self.input = None;
                        ended = Some(Instant::now());
                    }
                }
            }
            if pty_ready && self.forward_output()? {
                last_output = Instant::now();
            }
            // The pty may have moved (the daemon restarted) or gone (the
            // domain died): follow the node.
            let changed = matches!(self.xs.read_watch(Some(Duration::ZERO)), Ok(Some(_)));
            if self.pty.is_some() && !changed {
                continue;
            }
            match open_pty(self.xs, self.node)? {
                Some((file, path)) => {
                    if self.pty.is_none() || self.pty_path.as_deref() != Some(path.as_str()) {
                        log::debug!("console pty is now {path}");
                        self.pty = Some(file);
                        self.pty_path = Some(path);
                    }
                    lost = None;
                }
                // The console (and likely the domain) is gone.
                None if store::read(self.xs, NONE, self.node)?.is_none() => return Ok(()),
                None if self.pty.is_none() => {
                    let since = *lost.get_or_insert_with(Instant::now);
                    if since.elapsed() >= TTY_WAIT {
                        return Ok(());
                    }
                }
                None => {}
            }
        }
    }

    /// Copies waiting input to the pty; `None` at end of input.
    fn forward_input(&mut self) -> Result<Option<Next>, HostError> {
        let Some(input) = &mut self.input else {
            return Ok(Some(Next::Continue));
        };
        let mut buf = [0u8; 1024];
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Some(Next::Continue)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(Next::Continue)),
            Err(source) => {
                return Err(HostError::Os {
                    what: "reading standard input".into(),
                    source,
                })
            }
        };
        let (data, leave) = match buf[..n].iter().position(|&b| b == ESCAPE) {
            Some(i) if self.mode.escape => (&buf[..i], true),
            _ => (&buf[..n], false),
        };
        if let Some(pty) = &mut self.pty {
            if let Err(e) = pty.write_all(data) {
                log::debug!("writing to the console pty: {e}");
                self.pty = None;
            }
        }
        Ok(Some(if leave { Next::Leave } else { Next::Continue }))
    }

    /// Copies waiting console output to the output; whether any came.
    fn forward_output(&mut self) -> Result<bool, HostError> {
        let Some(pty) = &mut self.pty else {
            return Ok(false);
        };
        let mut buf = [0u8; 4096];
        match pty.read(&mut buf) {
            Ok(0) => {
                self.pty = None;
                Ok(false)
            }
            Ok(n) => {
                self.output
                    .write_all(&buf[..n])
                    .and_then(|()| self.output.flush())
                    .map_err(|source| HostError::Os {
                        what: "writing console output".into(),
                        source,
                    })?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => {
                // EIO: the daemon closed its end.
                log::debug!("reading the console pty: {e}");
                self.pty = None;
                Ok(false)
            }
        }
    }
}

/// The terminal in raw mode; restored on drop (xenconsole's `init_term`
/// and `restore_term`).
struct RawTerminal {
    file: File,
    saved: sys::Termios,
}

impl RawTerminal {
    fn enter(terminal: BorrowedFd<'_>) -> Result<Self, HostError> {
        let file = dup(terminal, "the terminal")?;
        let saved = sys::Termios::get(file.as_fd()).map_err(|source| HostError::Os {
            what: "reading the terminal's settings".into(),
            source,
        })?;
        sys::make_raw(file.as_fd()).map_err(|source| HostError::Os {
            what: "putting the terminal in raw mode".into(),
            source,
        })?;
        Ok(RawTerminal { file, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = self.saved.set(self.file.as_fd()) {
            log::warn!("cannot restore the terminal's settings: {e}");
        }
    }
}

/// xenconsole's per-domain lock (`XEN_LOCK_DIR/xenconsole.DOMID`): one
/// console client per domain, xenconsole or rxl. Removed on drop.
struct ConsoleLock {
    _file: File,
    path: PathBuf,
}

/// Attempts at taking the lock while other clients remove its file.
const LOCK_ATTEMPTS: u32 = 16;

impl ConsoleLock {
    /// Takes the lock of `domid` in `dir`; `None` if `dir` does not exist
    /// (no lock to share with anyone).
    fn take(dir: &Path, domid: DomId) -> Result<Option<ConsoleLock>, HostError> {
        let path = dir.join(format!("xenconsole.{domid}"));
        let failed = |what: &str, source| HostError::Os {
            what: format!("{what} {}", path.display()),
            source,
        };
        for _ in 0..LOCK_ATTEMPTS {
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    log::debug!("no {}: attaching without xenconsole's lock", dir.display());
                    return Ok(None);
                }
                Err(e) => return Err(failed("Could not open", e)),
            };
            match sys::try_lock(file.as_fd()) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(HostError::Failed(format!(
                        "Could not lock {}: another console client is attached to domain {domid}",
                        path.display()
                    )))
                }
                Err(e) => return Err(failed("Could not lock", e)),
            }
            // The previous holder may have removed the file between our
            // open and our lock: the lock must be on the file at `path`.
            let held = file.metadata().map_err(|e| failed("Could not fstat", e))?;
            match std::fs::metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(Some(ConsoleLock { _file: file, path }))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed("Could not stat", e)),
            }
        }
        Err(HostError::Failed(format!(
            "Could not lock {}: it keeps being replaced",
            path.display()
        )))
    }
}

impl Drop for ConsoleLock {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::debug!("cannot remove {}: {e}", self.path.display());
        }
    }
}

mod sys {
    //! The terminal, `poll`, `flock` and signal calls of the console
    //! client: the `unsafe` of this module.

    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// Whether `fd` is a terminal.
    pub(super) fn is_terminal(fd: BorrowedFd<'_>) -> bool {
        // SAFETY: isatty takes an fd, open for the call, and no pointers.
        unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
    }

    /// A terminal's settings.
    pub(super) struct Termios(libc::termios);

    impl Termios {
        /// `tcgetattr`.
        pub(super) fn get(fd: BorrowedFd<'_>) -> io::Result<Termios> {
            // SAFETY: an all-zero termios is a valid value to fill in.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: `fd` is open for the call; `t` is a live termios.
            check(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) })?;
            Ok(Termios(t))
        }

        /// `tcsetattr(TCSANOW)`.
        pub(super) fn set(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
            // SAFETY: `fd` is open for the call; the termios was filled
            // in by tcgetattr.
            check(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &self.0) })?;
            Ok(())
        }
    }

    /// `cfmakeraw` on the terminal `fd`.
    pub(super) fn make_raw(fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut t = Termios::get(fd)?;
        // SAFETY: `t.0` is a valid termios, filled in by tcgetattr.
        unsafe { libc::cfmakeraw(&mut t.0) };
        t.set(fd)
    }

    /// `flock(LOCK_EX | LOCK_NB)`: `false` if someone else holds it.
    pub(super) fn try_lock(fd: BorrowedFd<'_>) -> io::Result<bool> {
        loop {
            // SAFETY: flock takes an fd, open for the call, and flags.
            if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for `a` and/or `b` to be readable (or hung
    /// up); a signal ends the wait early. Returns which are.
    pub(super) fn poll_readable(
        a: Option<BorrowedFd<'_>>,
        b: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> io::Result<(bool, bool)> {
        let entry = |fd: Option<BorrowedFd<'_>>| libc::pollfd {
            // A negative fd is skipped by poll(2).
            fd: fd.map_or(-1, |fd| fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [entry(a), entry(b)];
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live array of two pollfds whose fds are
        // borrowed (open) for the call, or negative; poll(2) writes only
        // their `revents`.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) } < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok((false, false))
            } else {
                Err(e)
            };
        }
        let ready =
            |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        Ok((ready(&fds[0]), ready(&fds[1])))
    }

    /// Set by SIGTERM and SIGHUP while a session catches them.
    static CAUGHT: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        CAUGHT.store(true, Ordering::Relaxed);
    }

    /// SIGTERM and SIGHUP end the session (so that the terminal is
    /// restored) instead of the process; the previous handlers come back
    /// on drop. Without `SA_RESTART`, they also interrupt the wait.
    pub(super) struct TerminationSignals {
        previous: Vec<(libc::c_int, libc::sigaction)>,
    }

    impl TerminationSignals {
        pub(super) fn catch() -> TerminationSignals {
            CAUGHT.store(false, Ordering::Relaxed);
            let mut previous = Vec::new();
            for signal in [libc::SIGTERM, libc::SIGHUP] {
                // SAFETY: an all-zero sigaction is a valid value to fill in.
                let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                // SAFETY: `action.sa_mask` is a valid sigset_t to initialise.
                unsafe { libc::sigemptyset(&mut action.sa_mask) };
                // SAFETY: as above, for the old action's slot.
                let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
                // SAFETY: `action` is a fully initialised sigaction whose
                // handler only stores to an atomic; `old` is a live
                // sigaction for the previous one.
                if unsafe { libc::sigaction(signal, &action, &mut old) } == 0 {
                    previous.push((signal, old));
                } else {
                    log::debug!(
                        "cannot catch signal {signal}: {}",
                        io::Error::last_os_error()
                    );
                }
            }
            TerminationSignals { previous }
        }

        /// Whether one of the signals arrived.
        pub(super) fn caught(&self) -> bool {
            CAUGHT.load(Ordering::Relaxed)
        }
    }

    impl Drop for TerminationSignals {
        fn drop(&mut self) {
            for (signal, old) in &self.previous {
                // SAFETY: `old` is the sigaction the kernel returned for
                // `signal`; reinstating it is always valid.
                unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
            }
        }
    }

    #[cfg(test)]
    pub(super) use testing::open_pty;

    #[cfg(test)]
    mod testing {
        use std::ffi::{CStr, OsStr};
        use std::fs::File;
        use std::io;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        use std::path::PathBuf;

        /// A new pty master and its slave's path, as a console daemon
        /// opens them.
        pub(in super::super) fn open_pty() -> io::Result<(File, PathBuf)> {
            // SAFETY: posix_openpt takes flags and returns a new fd or -1.
            let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
            super::check(fd)?;
            // SAFETY: `fd` is a new open fd nothing else owns.
            let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            // SAFETY: grantpt and unlockpt take an open pty master fd.
            super::check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
            // SAFETY: as above.
            super::check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
            let mut name = [0 as libc::c_char; 128];
            // SAFETY: `name` is a live, writable buffer of its length.
            let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            // SAFETY: ptsname_r succeeded: `name` is NUL-terminated.
            let path = unsafe { CStr::from_ptr(name.as_ptr()) };
            Ok((master, PathBuf::from(OsStr::from_bytes(path.to_bytes()))))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::thread;

    use super::*;
    use crate::host::xen::store::testing::TestStore;

    const NODE: &str = "/local/domain/7/console/tty";

    /// A session as `attach` runs it, with `input` for standard input,
    /// short drains, and a fresh watch connection.
    fn session(store: &TestStore, input: File, mode: Mode) -> Result<Vec<u8>, HostError> {
        let xs = store.client();
        let (pty, pty_path) = wait_for_pty(&xs, NODE, Duration::from_secs(5))?
            .ok_or_else(|| HostError::Failed("no pty".into()))?;
        let mut output = Vec::new();
        Session {
            xs: &xs,
            node: NODE,
            pty: Some(pty),
            pty_path: Some(pty_path),
            input: Some(input),
            output: &mut output,
            mode,
            drain: (Duration::from_millis(300), Duration::from_secs(5)),
        }
        .run()?;
        Ok(output)
    }

    /// A stand-in for standard input: the test keeps the other end.
    fn input() -> (File, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (File::from(std::os::fd::OwnedFd::from(ours)), theirs)
    }

    /// Plays the guest behind the daemon's pty master: answers each
    /// command line with `reply`; sends back everything it received.
    fn guest(mut master: File, reply: &'static [u8], lines: usize) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while got.iter().filter(|&&b| b == b'\r').count() < lines {
                let n = master.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if buf[..n].contains(&b'\r') {
                    master.write_all(reply).unwrap();
                }
            }
            // Keep the pty open while the client drains.
            thread::sleep(Duration::from_millis(100));
            got
        })
    }

    #[test]
    fn the_node_is_chosen_as_xenconsole_does() {
        let d = "/local/domain/3";
        assert_eq!(
            tty_node(d, ConsoleKind::Pv, 0, |_| true),
            "/local/domain/3/console/tty"
        );
        assert_eq!(
            tty_node(d, ConsoleKind::Pv, 2, |_| true),
            "/local/domain/3/device/console/2/tty"
        );
        assert_eq!(
            tty_node(d, ConsoleKind::Serial, 0, |_| true),
            "/local/domain/3/serial/0/tty"
        );
        assert_eq!(
            tty_node(d, ConsoleKind::Serial, 0, |_| false),
            "/local/domain/3/console/tty"
        );
        assert_eq!(
            tty_node(d, ConsoleKind::Vuart, 5, |_| true),
            "/local/domain/3/vuart/0/tty"
        );
    }

    #[test]
    fn only_pty_paths_are_opened() {
        assert!(is_pty_path("/dev/pts/12"));
        assert!(!is_pty_path("/dev/pts/"));
        assert!(!is_pty_path("/dev/pts/../sda"));
        assert!(!is_pty_path("/etc/passwd"));
        assert!(!is_pty_path("/dev/pts/1/x"));
    }

    #[test]
    fn piped_input_is_sent_and_the_answer_printed_before_leaving() {
        let store = TestStore::start();
        let (master, path) = sys::open_pty().unwrap();
        let answers = guest(master, b"Linux guest 6.1\r\n", 1);
        // The daemon writes the node a little after the client starts.
        let writer = store.client();
        let late = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            store::write(&writer, NONE, NODE, path.to_str().unwrap()).unwrap();
        });
        let (stdin, mut feed) = input();
        feed.write_all(b"uname -a\r").unwrap();
        drop(feed);

        let printed = session(
            &store,
            stdin,
            Mode {
                escape: false,
                raw_mode: false,
            },
        )
        .unwrap();

        late.join().unwrap();
        assert_eq!(answers.join().unwrap(), b"uname -a\r");
        assert_eq!(printed, b"Linux guest 6.1\r\n");
    }

    #[test]
    fn ctrl_close_bracket_leaves_at_once() {
        let store = TestStore::start();
        let (master, path) = sys::open_pty().unwrap();
        store::write(&store.client(), NONE, NODE, path.to_str().unwrap()).unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            let mut master = master;
            let mut buf = [0u8; 64];
            let n = master.read(&mut buf).unwrap();
            tx.send(buf[..n].to_vec()).unwrap();
        });
        let (stdin, mut feed) = input();
        feed.write_all(b"ls\x1dnot sent").unwrap();

        let start = Instant::now();
        session(
            &store,
            stdin,
            Mode {
                escape: true,
                raw_mode: true,
            },
        )
        .unwrap();

        assert!(
            start.elapsed() < Duration::from_secs(2),
            "left without draining"
        );
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"ls");
        reader.join().unwrap();
        drop(feed);
    }

    #[test]
    fn the_session_ends_when_the_console_goes() {
        let store = TestStore::start();
        let (master, path) = sys::open_pty().unwrap();
        let xs = store.client();
        store::write(&xs, NONE, NODE, path.to_str().unwrap()).unwrap();
        let ender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            // The daemon lets go of the dead domain, then the toolstack
            // removes its nodes.
            drop(master);
            thread::sleep(Duration::from_millis(100));
            store::rm(&xs, NONE, "/local/domain/7").unwrap();
        });
        // Input stays open: only the console's end ends the session.
        let (stdin, _feed) = input();

        let start = Instant::now();
        session(
            &store,
            stdin,
            Mode {
                escape: false,
                raw_mode: false,
            },
        )
        .unwrap();

        ender.join().unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_node_naming_something_else_is_not_opened() {
        let store = TestStore::start();
        let xs = store.client();
        store::write(&xs, NONE, NODE, "/etc/passwd").unwrap();

        let found = wait_for_pty(&xs, NODE, Duration::from_millis(300)).unwrap();

        assert!(found.is_none());
    }

    #[test]
    fn the_lock_is_exclusive_and_removed_after_use() {
        let dir = std::env::temp_dir().join(format!("rxl-console-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let first = ConsoleLock::take(&dir, 4).unwrap();
        let second = ConsoleLock::take(&dir, 4);
        let other_domain = ConsoleLock::take(&dir, 5).unwrap();

        assert!(first.is_some() && other_domain.is_some());
        assert!(
            matches!(second, Err(HostError::Failed(m)) if m.contains("another console client"))
        );
        drop(first);
        assert!(!dir.join("xenconsole.4").exists());
        assert!(ConsoleLock::take(&dir, 4).unwrap().is_some());
        assert!(ConsoleLock::take(&dir.join("missing"), 4)
            .unwrap()
            .is_none());
        drop(other_domain);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
