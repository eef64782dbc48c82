//! `rxenstored`: starts like Xen's `xenstored` (same flags, pid file,
//! forks unless `-N`), then serves until killed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use rxenstored::{Daemon, LinuxXen, DEFAULT_RUN_DIR, SOCKET_NAME};
use xenstore_engine::Quotas;

/// A xenstore daemon: Xen's xenstore protocol for dom0's tools (Unix
/// socket) and every domain (its ring page and event channel).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Write the daemon's pid to FILE.
    #[arg(short = 'F', long = "pid-file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Stay in the foreground.
    #[arg(short = 'N', long = "no-fork")]
    no_fork: bool,
    /// Do not connect dom0's own ring (its kernel's xenbus).
    #[arg(short = 'D', long = "no-domain-init")]
    no_domain_init: bool,
    /// Log to FILE (default: standard error; nowhere once forked).
    #[arg(
        short = 'T',
        long = "trace-file",
        visible_alias = "log-file",
        value_name = "FILE"
    )]
    trace_file: Option<PathBuf>,
    /// Log requests and connections.
    #[arg(short = 'V', long)]
    verbose: bool,
    /// Directory of the socket [default: $XENSTORED_RUNDIR, or
    /// /var/run/xenstored].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Set quota WHAT (nodes, node-size, watches, transactions,
    /// permissions, outstanding) to NB; repeatable.
    #[arg(short = 'Q', long = "quota", value_name = "WHAT=NB")]
    quota: Vec<String>,
    /// Most nodes per domain.
    #[arg(short = 'E', long = "entry-nb", value_name = "NB")]
    entry_nb: Option<usize>,
    /// Largest node value of a domain, in bytes.
    #[arg(short = 'S', long = "entry-size", value_name = "SIZE")]
    entry_size: Option<usize>,
    /// Most watches per connection.
    #[arg(short = 'W', long = "watch-nb", value_name = "NB")]
    watch_nb: Option<usize>,
    /// Most open transactions per connection.
    #[arg(short = 't', long = "transaction", value_name = "NB")]
    transaction: Option<usize>,
    /// Most permission entries per node.
    #[arg(short = 'A', long = "perm-nb", value_name = "NB")]
    perm_nb: Option<usize>,
    /// Accepted for compatibility with C xenstored, ignored.
    #[arg(short = 'P', long = "output-pid", hide = true)]
    _output_pid: bool,
    #[arg(short = 'R', long = "no-recovery", hide = true)]
    _no_recovery: bool,
    #[arg(short = 'I', long = "internal-db", hide = true)]
    _internal_db: bool,
    #[arg(short = 'K', long = "keep-orphans", hide = true)]
    _keep_orphans: bool,
    #[arg(short = 'M', long = "path-max", hide = true)]
    _path_max: Option<String>,
    #[arg(short = 'q', long = "quota-soft", hide = true)]
    _quota_soft: Vec<String>,
    #[arg(short = 'w', long = "timeout", hide = true)]
    _timeout: Vec<String>,
    #[arg(long = "trace-control", hide = true)]
    _trace_control: Vec<String>,
    #[arg(short = 'e', long = "event", hide = true)]
    _event: Option<String>,
    #[arg(short = 'm', long = "master-domid", hide = true)]
    _master_domid: Option<String>,
    #[arg(short = 'p', long = "priv-domid", hide = true)]
    _priv_domid: Option<String>,
}

fn quotas(args: &Args) -> Result<Quotas, String> {
    let mut q = Quotas::default();
    for (name, v) in [
        ("nodes", args.entry_nb),
        ("node-size", args.entry_size),
        ("watches", args.watch_nb),
        ("transactions", args.transaction),
        ("permissions", args.perm_nb),
    ] {
        if let Some(v) = v {
            q.set(name, v);
        }
    }
    for spec in &args.quota {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| format!("quota {spec:?} is not WHAT=NB"))?;
        let value = value
            .parse()
            .map_err(|_| format!("quota {spec:?}: {value:?} is not a number"))?;
        if !q.set(name, value) {
            log::warn!("ignoring unknown quota {name:?}");
        }
    }
    Ok(q)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(if args.verbose { "debug" } else { "info" }),
    );
    if let Some(path) = &args.trace_file {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                logger.target(env_logger::Target::Pipe(Box::new(f)));
            }
            Err(e) => {
                eprintln!("rxenstored: cannot open log file {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    logger.init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("rxenstored: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let quotas = quotas(args)?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        std::env::var_os("XENSTORED_RUNDIR")
            .map_or_else(|| PathBuf::from(DEFAULT_RUN_DIR), PathBuf::from)
    });
    std::fs::create_dir_all(&run_dir)?;
    let xen = LinuxXen::open()?;
    let mut daemon = Daemon::new(&run_dir.join(SOCKET_NAME), quotas, xen)?;
    match daemon.platform().bind_dom_exc() {
        Ok(port) => daemon.watch_dom_exc(port),
        Err(e) => log::warn!("cannot watch for dying domains (VIRQ_DOM_EXC): {e}"),
    }
    if !args.no_domain_init {
        let (page, port) = LinuxXen::local_ring()?;
        daemon.connect_dom0(page, port)?;
    }
    // Everything clients need is in place: now detach, as C xenstored's
    // callers expect the socket to work once it returns.
    if !args.no_fork {
        rxenstored::sys::daemonize()?;
    }
    if let Some(path) = &args.pid_file {
        let mut f = std::fs::File::create(path)?;
        writeln!(f, "{}", std::process::id())?;
    }
    log::info!("rxenstored {} serving", env!("CARGO_PKG_VERSION"));
    let never = AtomicBool::new(false);
    daemon.run(&never, -1)?;
    Ok(())
}
