//! The system calls `std` does not wrap: ptys and terminal modes,
//! `poll(2)`, signal handlers, detaching from the terminal, resource
//! limits, syslog and local time. Every `unsafe` of the crate is here.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Returns the error of the last failed call if `rc` is negative.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

// ---------------------------------------------------------------- ptys

/// Opens a new pty master (`posix_openpt`, `grantpt`, `unlockpt`) and
/// returns it with the path of its slave (`ptsname_r`).
pub fn open_pty_master() -> io::Result<(File, PathBuf)> {
    // SAFETY: posix_openpt takes flags only and returns a new fd or -1.
    let fd = check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by posix_openpt, is open, and nothing
    // else owns it.
    let master = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: grantpt and unlockpt take an open pty master fd, which
    // `master` is and stays for the calls.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is a live, writable buffer of `name.len()` bytes;
    // ptsname_r writes a NUL-terminated string of at most that many.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string
    // within its bounds.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    Ok((
        master,
        PathBuf::from(std::ffi::OsStr::from_bytes(path.to_bytes())),
    ))
}

/// Puts the terminal `fd` in raw mode (`cfmakeraw`): no echo, no line
/// editing, no signals, no output processing, 8-bit bytes.
pub fn make_raw(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: an all-zero termios is a valid value for tcgetattr to fill.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open for the call; `term` is a live termios.
    check(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut term) })?;
    // SAFETY: `term` is a valid termios, filled in by tcgetattr.
    unsafe { libc::cfmakeraw(&mut term) };
    // SAFETY: `fd` is open for the call; `term` is a valid termios.
    check(unsafe { libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &term) })?;
    Ok(())
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd that is open for the call; no pointers.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: F_SETFL on an open fd with an integer argument.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

// ---------------------------------------------------------------- poll

/// One `struct pollfd`, borrowing its fd for the call.
#[derive(Debug)]
pub struct PollFd<'fd> {
    raw: libc::pollfd,
    _fd: PhantomData<BorrowedFd<'fd>>,
}

impl<'fd> PollFd<'fd> {
    /// Waits on `fd` for input and/or room for output.
    pub fn new(fd: BorrowedFd<'fd>, input: bool, output: bool) -> Self {
        let mut events = 0;
        if input {
            events |= libc::POLLIN;
        }
        if output {
            events |= libc::POLLOUT;
        }
        PollFd {
            raw: libc::pollfd {
                fd: fd.as_raw_fd(),
                events,
                revents: 0,
            },
            _fd: PhantomData,
        }
    }

    /// Whether input (or end of file) is waiting.
    pub fn readable(&self) -> bool {
        self.raw.revents & libc::POLLIN != 0
    }

    /// Whether there is room for output.
    pub fn writable(&self) -> bool {
        self.raw.revents & libc::POLLOUT != 0
    }

    /// Whether the fd hung up or failed.
    pub fn failed(&self) -> bool {
        self.raw.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// `poll(fds, timeout_ms)` (-1: forever); an interrupted call (a signal)
/// counts as a timeout.
pub fn poll(fds: &mut [PollFd<'_>], timeout_ms: i32) -> io::Result<()> {
    let n = libc::nfds_t::try_from(fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // A plain array for the kernel: `PollFd`'s layout is not guaranteed.
    let mut raw: Vec<libc::pollfd> = fds.iter().map(|f| f.raw).collect();
    // SAFETY: `raw` is a live, exclusively borrowed array of `n` pollfds
    // whose fds are borrowed (open) for the call; poll(2) writes only
    // their `revents`.
    let rc = unsafe { libc::poll(raw.as_mut_ptr(), n, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(())
        } else {
            Err(e)
        };
    }
    for (f, r) in fds.iter_mut().zip(raw) {
        f.raw.revents = r.revents;
    }
    Ok(())
}

// ------------------------------------------------------------- signals

/// The write end of the signal pipe, or -1 before [`Signals::install`].
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
/// SIGHUP arrived: reopen the logs.
static HANGUP: AtomicBool = AtomicBool::new(false);
/// SIGTERM or SIGINT arrived: stop.
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    if signal == libc::SIGHUP {
        HANGUP.store(true, Ordering::Relaxed);
    } else {
        TERMINATE.store(true, Ordering::Relaxed);
    }
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = [1u8];
        // SAFETY: write(2) is async-signal-safe; `byte` is a live 1-byte
        // buffer; `fd` is the non-blocking write end of a socket pair
        // that lives for the rest of the process (`Signals::install`
        // leaks it). A full socket means a wake-up is pending already.
        unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
    }
}

/// What SIGHUP, SIGTERM and SIGINT asked for since the last look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// SIGHUP: reopen the log files.
    pub reopen_logs: bool,
    /// SIGTERM or SIGINT: stop serving.
    pub terminate: bool,
}

/// The daemon's signal handlers: SIGHUP, SIGTERM and SIGINT set flags and
/// make [`fd`](Signals::fd) readable.
#[derive(Debug)]
pub struct Signals {
    read: &'static UnixStream,
}

impl Signals {
    /// Installs the handlers (once per process; later calls return a
    /// handle on the same pipe).
    pub fn install() -> io::Result<Signals> {
        static READ: std::sync::OnceLock<UnixStream> = std::sync::OnceLock::new();
        if let Some(read) = READ.get() {
            return Ok(Signals { read });
        }
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let read = READ.get_or_init(|| read);
        // The write end must stay open for as long as a handler may run.
        let write: &'static UnixStream = Box::leak(Box::new(write));
        SIGNAL_FD.store(write.as_raw_fd(), Ordering::Relaxed);
        for signal in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            // SAFETY: an all-zero sigaction is a valid value to fill in.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: `action.sa_mask` is a valid sigset_t to initialise.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: `action` is a fully initialised sigaction whose
            // handler only stores to atomics and performs an
            // async-signal-safe write; the old action is not requested.
            check(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) })?;
        }
        Ok(Signals { read })
    }

    /// Readable once a signal arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Takes what the signals asked for, and empties the pipe.
    pub fn take(&self) -> Requests {
        let mut buf = [0u8; 64];
        // Ends: the pipe is non-blocking and the handlers write one byte
        // per signal.
        while matches!(io::Read::read(&mut &*self.read, &mut buf), Ok(n) if n > 0) {}
        Requests {
            reopen_logs: HANGUP.swap(false, Ordering::Relaxed),
            terminate: TERMINATE.load(Ordering::Relaxed),
        }
    }
}

// -------------------------------------------------------------- process

/// Whether the process runs as root (`geteuid() == 0`).
pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Raises the open file limit to at least `wanted` if it is lower; the
/// limit it ends up with.
pub fn raise_fd_limit(wanted: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live rlimit for getrlimit to fill.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    if lim.rlim_cur >= wanted {
        return Ok(lim.rlim_cur);
    }
    let new = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted.max(lim.rlim_max),
    };
    // SAFETY: `new` is a valid rlimit, read by the call only.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) })?;
    Ok(wanted)
}

/// Detaches from the terminal as xenconsoled does: fork, new session,
/// fork again (the daemon can never reacquire a terminal), standard
/// streams on `/dev/null`, umask 027, working directory `/`. The parents
/// exit at once. Call it while the process has one thread only.
pub fn daemonize() -> io::Result<()> {
    for round in 0..2 {
        // SAFETY: the caller guarantees the process is single-threaded,
        // so the child inherits no lock held by another thread.
        match unsafe { libc::fork() } {
            -1 => return Err(io::Error::last_os_error()),
            0 => {}
            _ => std::process::exit(0),
        }
        if round == 0 {
            // SAFETY: setsid takes no arguments and only changes process
            // state.
            check(unsafe { libc::setsid() })?;
        }
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: dup2 of an open fd (`null`) onto a standard stream
        // number; it touches no Rust-owned memory.
        check(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    // SAFETY: umask takes a mode and cannot fail.
    unsafe { libc::umask(0o027) };
    std::env::set_current_dir("/")?;
    Ok(())
}

// --------------------------------------------------------------- syslog

/// Sends messages to syslog as `rxconsoled`, facility `daemon`.
pub fn open_syslog() {
    static IDENT: &CStr = c"rxconsoled";
    // SAFETY: `IDENT` is a NUL-terminated string that lives for the whole
    // process, as openlog requires (it keeps the pointer).
    unsafe {
        libc::openlog(
            IDENT.as_ptr(),
            libc::LOG_PID | libc::LOG_CONS,
            libc::LOG_DAEMON,
        )
    };
}

/// Logs `message` to syslog with `priority` (`LOG_ERR`, `LOG_INFO` ...).
/// NUL bytes in `message` are dropped.
pub fn syslog(priority: libc::c_int, message: &str) {
    let message = CString::new(message.replace('\0', "")).unwrap_or_default();
    // SAFETY: the format is a NUL-terminated "%s" and its one argument a
    // NUL-terminated string, both live for the call.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), message.as_ptr()) };
}

// ------------------------------------------------------------ local time

/// The local time as `[YYYY-MM-DD HH:MM:SS] ` (xenconsoled's log
/// timestamp); empty if the clock cannot be read.
pub fn timestamp() -> String {
    // SAFETY: time(NULL) only returns the current time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: an all-zero tm is a valid value for localtime_r to fill.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: `now` and `tm` are live for the call; localtime_r is the
    // thread-safe variant.
    if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        return String::new();
    }
    let mut buf = [0u8; 32];
    // SAFETY: `buf` is writable for `buf.len()` bytes; the format is
    // NUL-terminated; `tm` was filled in by localtime_r. strftime writes
    // at most `buf.len()` bytes and returns how many (0 on overflow).
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"[%Y-%m-%d %H:%M:%S] ".as_ptr(),
            &tm,
        )
    };
    String::from_utf8_lossy(&buf[..n.min(buf.len())]).into_owned()
}

// ------------------------------------------------------- test ring page

#[cfg(test)]
pub(crate) use heap_page::HeapPage;

#[cfg(test)]
mod heap_page {
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::ptr::NonNull;

    use hypercall_abi::platform::SharedMemory;

    const PAGE: usize = 4096;

    /// A zeroed, page-aligned page on the heap that is only ever reached
    /// through [`SharedMemory`], like a mapped ring: the tests' stand-in
    /// for a domain's console page, with both ends in the test.
    #[derive(Debug)]
    pub(crate) struct HeapPage {
        base: NonNull<u8>,
    }

    fn layout() -> Layout {
        // A valid, non-zero, power-of-two layout: cannot fail.
        Layout::from_size_align(PAGE, PAGE).unwrap_or_else(|_| Layout::new::<u8>())
    }

    impl HeapPage {
        /// A new zeroed page.
        pub(crate) fn new() -> Self {
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc_zeroed(layout()) };
            let base =
                NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout()));
            HeapPage { base }
        }

        /// The page, through the shared-memory accessor.
        pub(crate) fn memory(&self) -> SharedMemory<'_> {
            // SAFETY: `base` points at PAGE bytes allocated by `new`,
            // page-aligned, freed only when `self` drops (the accessor
            // borrows `self`); no Rust reference into it is ever made.
            unsafe { SharedMemory::new(self.base, PAGE, true) }
        }

        /// The page, read-only (as a mapping without `PROT_WRITE`).
        pub(crate) fn read_only_memory(&self) -> SharedMemory<'_> {
            // SAFETY: as for `memory`; writes through it are refused.
            unsafe { SharedMemory::new(self.base, PAGE, false) }
        }
    }

    impl Drop for HeapPage {
        fn drop(&mut self) {
            // SAFETY: `base` was allocated by `alloc_zeroed` with the same
            // layout and is freed once, here.
            unsafe { dealloc(self.base.as_ptr(), layout()) };
        }
    }
}
