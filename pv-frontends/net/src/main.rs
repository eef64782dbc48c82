//! `rnetfront`: use a Xen virtual network interface from a guest's
//! userspace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hypercall_abi::platform::{EventChannels, GrantShare, Xenstore};
use rnetfront::check::{self, CheckOptions};
use rnetfront::platform::{Loopback, PlatformError, XenGuest};
use rnetfront::tap::{self, BridgeError};
use rnetfront::{FrontendConfig, NetFrontend};

const SYNTAX: &str = "\
The toolstack must have created the interface first (xl network-attach,
or a vif in the guest's config): the frontend directory device/vif/DEVID
in the guest's xenstore home, with `backend`, `backend-id` and `mac`
nodes, and a backend serving it (Linux's netback). Linux's own netfront
must not drive the same vif: unbind it from xen-netfront first
(echo vif-DEVID > /sys/bus/xen/drivers/vif/unbind), or give the guest a
vif no kernel driver binds.

Examples:
  rnetfront tap --devid 1                 # TAP rnf1 until SIGINT/SIGTERM
  rnetfront tap --devid 1 --name eth1 --max-queues 2
  rnetfront check --devid 1 --listen 5
  rnetfront --platform loopback --loopback-dir /tmp/hv --domid 1 check --devid 0

`check` prints one line on stdout:
  RNETFRONT-CHECK PASS sent=N received=M mac=MAC queues=Q
  RNETFRONT-CHECK FAIL <reason>

Exit codes: 0 pass (check) or clean stop (tap); 1 failure.";

/// Where the frontend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlatformKind {
    /// A Linux guest of Xen: /dev/xen/{gntalloc,evtchn,xenbus}.
    Xen,
    /// A domain of the xen-loopback hypervisor serving --loopback-dir.
    Loopback,
}

/// Use a Xen virtual network interface (vif) from userspace, as Linux's
/// xen-netfront does.
#[derive(Debug, Parser)]
#[command(name = "rnetfront", version, after_help = SYNTAX)]
struct Cli {
    /// The platform.
    #[arg(long, value_enum, default_value_t = PlatformKind::Xen, global = true)]
    platform: PlatformKind,
    /// The loopback hypervisor's directory (with --platform loopback).
    #[arg(long, required_if_eq("platform", "loopback"), global = true)]
    loopback_dir: Option<PathBuf>,
    /// The domain to act as (with --platform loopback).
    #[arg(long, default_value_t = 1, global = true)]
    domid: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring the vif up as a TAP interface of this guest and move frames
    /// between them until SIGINT or SIGTERM.
    Tap(TapArgs),
    /// Connect, send test frames, wait for the backend to answer them,
    /// listen for frames a while, disconnect.
    Check(CheckArgs),
}

/// The interface and how to connect to it.
#[derive(Debug, Args)]
struct DeviceArgs {
    /// The vif's device number (device/vif/DEVID).
    #[arg(long)]
    devid: u32,
    /// Most queues used: multi-queue-num-queues. Each queue grants 514
    /// pages; gntalloc allows 1024 by default.
    #[arg(long, default_value_t = rnetfront::protocol::DEFAULT_MAX_QUEUES)]
    max_queues: u32,
    /// Use one event channel per queue even if the backend offers split
    /// ones.
    #[arg(long)]
    no_split_event_channels: bool,
    /// Seconds to wait for each handshake step, and for room on a full
    /// transmit ring.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Debug, Args)]
struct TapArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// The TAP interface's name (default rnfDEVID).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Rounds of test frames (each: 60, 1514 bytes and, with
    /// feature-sg, 4097, 9014, 65535 bytes).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Seconds to listen for frames after sending.
    #[arg(long, default_value_t = 2)]
    listen: u64,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Device(#[from] rnetfront::Error),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

fn config(args: &DeviceArgs) -> FrontendConfig {
    let mut cfg = FrontendConfig::new(args.devid);
    cfg.max_queues = args.max_queues;
    cfg.split_event_channels = !args.no_split_event_channels;
    cfg.timeout = Duration::from_secs(args.timeout);
    cfg
}

fn check<G: GrantShare, E: EventChannels, S: Xenstore>(
    (grants, evtchn, store): (G, E, S),
    args: &CheckArgs,
) -> Result<String, MainError> {
    let mut nic = NetFrontend::open(grants, evtchn, store, config(&args.device))?;
    let opts = CheckOptions {
        rounds: args.rounds,
        listen: Duration::from_secs(args.listen),
    };
    let report = check::run(&mut nic, &opts)?;
    let summary = format!(
        "sent={} received={} mac={} queues={}",
        report.sent,
        report.received,
        nic.mac().unwrap_or_default(),
        nic.queues()
    );
    log::info!("{:?}", nic.stats());
    nic.disconnect()?;
    Ok(summary)
}

fn bridge<G: GrantShare, E: EventChannels, S: Xenstore>(
    (grants, evtchn, store): (G, E, S),
    args: &TapArgs,
) -> Result<(), MainError> {
    rnetfront::sys::install_stop_handler().map_err(MainError::Signal)?;
    let mut nic = NetFrontend::open(grants, evtchn, store, config(&args.device))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("rnf{}", args.device.devid));
    let tap = tap::open_tap(&nic, &name)?;
    println!(
        "RNETFRONT-TAP {} mac={} queues={}",
        tap.name(),
        nic.mac().unwrap_or_default(),
        nic.queues()
    );
    let result = tap::run(&mut nic, &tap);
    log::info!("{:?}", nic.stats());
    let closed = nic.disconnect();
    result?;
    closed?;
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let loopback = match (cli.platform, &cli.loopback_dir) {
        (PlatformKind::Loopback, Some(dir)) => Some(dir),
        // clap requires --loopback-dir with the loopback platform.
        (PlatformKind::Loopback, None) | (PlatformKind::Xen, _) => None,
    };
    let result = match &cli.command {
        Command::Check(args) => {
            let result = match loopback {
                Some(dir) => Loopback::connect(dir, cli.domid)
                    .and_then(|p| p.handles())
                    .map_err(MainError::from)
                    .and_then(|h| check(h, args)),
                None => XenGuest
                    .handles()
                    .map_err(MainError::from)
                    .and_then(|h| check(h, args)),
            };
            match result {
                Ok(summary) => {
                    println!("RNETFRONT-CHECK PASS {summary}");
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    println!("RNETFRONT-CHECK FAIL {e}");
                    Err(e)
                }
            }
        }
        Command::Tap(args) => match loopback {
            Some(dir) => Loopback::connect(dir, cli.domid)
                .and_then(|p| p.handles())
                .map_err(MainError::from)
                .and_then(|h| bridge(h, args)),
            None => XenGuest
                .handles()
                .map_err(MainError::from)
                .and_then(|h| bridge(h, args)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
