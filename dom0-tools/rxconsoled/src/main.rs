//! `rxconsoled`: starts like Xen's `xenconsoled` (same options, detaches
//! unless `-i`), then serves every domain's console until SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use hypercall_abi::platform::Xenstore;
use rxconsoled::sys::{self, Signals};
use rxconsoled::syslog::SyslogLogger;
use rxconsoled::{
    Daemon, LinuxXen, LogStyle, Options, Overflow, DEFAULT_LOG_DIR, DEFAULT_PID_FILE,
};

/// Which logs to write (`--log`), or which logs to stamp (`--timestamp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// None.
    None,
    /// Guest consoles.
    Guest,
    /// The hypervisor's console.
    Hv,
    /// Both.
    All,
}

impl Which {
    fn guest(self) -> bool {
        matches!(self, Which::Guest | Which::All)
    }
    fn hv(self) -> bool {
        matches!(self, Which::Hv | Which::All)
    }
}

/// What to do with console output no one reads (`--overflow-data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OverflowArg {
    /// Drop the middle of the backlog; the guest never waits.
    Discard,
    /// Keep everything; the guest waits for a reader.
    Keep,
}

/// The PV console daemon: every domain's console on a pty (its path in
/// `console/tty`) and, if asked, in a log file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Stay in the foreground and log to standard error.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Log debugging messages too.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Which consoles to log to files.
    #[arg(
        long,
        value_enum,
        default_value = "none",
        value_name = "none|guest|hv|all"
    )]
    log: Which,
    /// Where the log files go.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_LOG_DIR)]
    log_dir: PathBuf,
    /// Write the daemon's pid to FILE [default when detaching:
    /// /var/run/xen/xenconsoled.pid].
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Which logs to stamp with the time, line by line.
    #[arg(
        short = 't',
        long,
        value_enum,
        default_value = "none",
        value_name = "none|guest|hv|all"
    )]
    timestamp: Which,
    /// What to do with output no one reads.
    #[arg(
        short = 'o',
        long,
        value_enum,
        default_value = "discard",
        value_name = "discard|keep"
    )]
    overflow_data: OverflowArg,
    /// Write ESC characters to the logs as dots.
    #[arg(long)]
    replace_escape: bool,
}

impl Args {
    fn options(&self) -> Options {
        let style = |stamped: bool| LogStyle {
            timestamps: stamped,
            replace_escape: self.replace_escape,
        };
        Options {
            log_guest: self.log.guest(),
            log_hv: self.log.hv(),
            log_dir: self.log_dir.clone(),
            guest_style: style(self.timestamp.guest()),
            hv_style: style(self.timestamp.hv()),
            overflow: match self.overflow_data {
                OverflowArg::Discard => Overflow::Discard,
                OverflowArg::Keep => Overflow::Keep,
            },
        }
    }
}

/// File descriptors wanted: per domain a pty master and slave, a log
/// file and (in xenconsoled) an event channel, for every possible domain,
/// and some to spare (xenconsoled's `increase_fd_limit`).
const WANTED_FDS: u64 = 0x7ff0 * 4 + 1000;

fn main() -> ExitCode {
    let args = Args::parse();
    if !sys::is_root() {
        eprintln!("rxconsoled requires root to run.");
        return ExitCode::FAILURE;
    }
    let level = if args.verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    if args.interactive {
        env_logger::Builder::from_env(
            env_logger::Env::default().default_filter_or(level.as_str().to_ascii_lowercase()),
        )
        .init();
    } else if let Err(e) = SyslogLogger::install(level) {
        eprintln!("rxconsoled: cannot log to syslog: {e}");
    }
    if let Err(e) = sys::raise_fd_limit(WANTED_FDS) {
        log::warn!(
            "cannot raise the open file limit to {WANTED_FDS}: {e}; many domains may exhaust it"
        );
    }
    if !args.interactive {
        if let Err(e) = sys::daemonize() {
            log::error!("cannot detach: {e}");
            eprintln!("rxconsoled: cannot detach: {e}");
            return ExitCode::FAILURE;
        }
    }
    let pid_file = args
        .pid_file
        .clone()
        .or_else(|| (!args.interactive).then(|| PathBuf::from(DEFAULT_PID_FILE)));
    if let Some(path) = &pid_file {
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(path))
            .and_then(|mut f| writeln!(f, "{}", std::process::id()));
        if let Err(e) = written {
            log::error!("cannot write the pid file {}: {e}", path.display());
            eprintln!(
                "rxconsoled: cannot write the pid file {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let result = run(&args);
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            if args.interactive {
                eprintln!("rxconsoled: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // Before the first thread (the xenstore client's): handlers are
    // process-wide.
    let signals = Signals::install()?;
    let xs: Arc<dyn Xenstore> = Arc::new(xen_linux::xenstore::open()?);
    let xen = LinuxXen::open()?;
    let mut daemon = Daemon::new(xs, xen, args.options())?;
    daemon.handle_signals(signals);
    log::info!("rxconsoled {} serving consoles", env!("CARGO_PKG_VERSION"));
    daemon.run()?;
    Ok(())
}
