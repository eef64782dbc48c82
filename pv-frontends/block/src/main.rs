//! `rblkfront`: use a Xen virtual block device from a guest's userspace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hypercall_abi::platform::{EventChannels, GrantShare, Xenstore};
use rblkfront::check::{self, CheckOptions};
use rblkfront::platform::{Loopback, PlatformError, XenGuest};
use rblkfront::{BlockFrontend, FrontendConfig};

const SYNTAX: &str = "\
The toolstack must have created the device first (xl block-attach, or a
disk in the guest's config): the frontend directory device/vbd/DEVID in
the guest's xenstore home, with `backend` and `backend-id` nodes, and a
backend serving it (Linux's blkback, or rblkback). Linux's own blkfront
must not drive the same device: detach it from xen-blkfront first, or
give the guest a device no kernel driver binds.

Examples:
  rblkfront check --devid 51728
  rblkfront check --devid 51728 --bytes 64M --max-ring-page-order 2
  rblkfront --platform loopback --loopback-dir /tmp/hv --domid 1 check --devid 51712
  modprobe nbd && rblkfront nbd --devid 51728 --nbd /dev/nbd0 &
  rblkfront nbd-disconnect --nbd /dev/nbd0      # as nbd-client -d

`check` prints one line on stdout:
  RBLKFRONT-CHECK PASS bytes=N MB/s-write=W MB/s-read=R
  RBLKFRONT-CHECK FAIL <reason>

Exit codes: 0 pass (check) or clean disconnect (nbd); 1 failure.";

/// Where the frontend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlatformKind {
    /// A Linux guest of Xen: /dev/xen/{gntalloc,evtchn,xenbus}.
    Xen,
    /// A domain of the xen-loopback hypervisor serving --loopback-dir.
    Loopback,
}

/// Use a Xen virtual block device (vbd) from userspace, as Linux's
/// xen-blkfront does.
#[derive(Debug, Parser)]
#[command(name = "rblkfront", version, after_help = SYNTAX)]
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
    /// Write a pseudo-random pattern across the disk with requests of
    /// mixed sizes, flush, read it back and verify it.
    Check(CheckArgs),
    /// Expose the disk as a Linux NBD device until it is disconnected
    /// (nbd-disconnect, or nbd-client -d).
    Nbd(NbdArgs),
    /// Ask the kernel to disconnect an NBD device (as nbd-client -d):
    /// `nbd` then flushes, disconnects from the backend and exits.
    NbdDisconnect(NbdDisconnectArgs),
}

#[derive(Debug, Args)]
struct NbdDisconnectArgs {
    /// The NBD device node.
    #[arg(long, default_value = "/dev/nbd0")]
    nbd: PathBuf,
}

#[derive(Debug, Args)]
struct NbdArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// The NBD device node (load the `nbd` module first).
    #[arg(long, default_value = "/dev/nbd0")]
    nbd: PathBuf,
}

/// The device and how to connect to it.
#[derive(Debug, Args)]
struct DeviceArgs {
    /// The virtual device number (xvda = 51712, xvdb = 51728, ...).
    #[arg(long)]
    devid: u32,
    /// Most queues (rings) used: multi-queue-num-queues.
    #[arg(long, default_value_t = rblkfront::protocol::DEFAULT_MAX_QUEUES)]
    max_queues: u32,
    /// Most ring pages used, as a power of two: ring-page-order (0-4).
    #[arg(long, default_value_t = rblkfront::protocol::DEFAULT_MAX_RING_PAGE_ORDER)]
    max_ring_page_order: u32,
    /// Most segments per indirect request.
    #[arg(long, default_value_t = rblkfront::protocol::DEFAULT_MAX_INDIRECT_SEGMENTS)]
    max_indirect_segments: u32,
    /// Do not ask for persistent grants (feature-persistent = 0).
    #[arg(long)]
    no_persistent: bool,
    /// Seconds to wait for each handshake step and for each response.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Busy-poll for responses this many microseconds before sleeping on
    /// the event channel (0: sleep at once).
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    device: DeviceArgs,
    /// Check only the first BYTES of the disk (suffixes K, M, G: powers
    /// of 1024).
    #[arg(long, value_parser = parse_size)]
    bytes: Option<u64>,
    /// The pattern's seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

/// Parses `123`, `64K`, `512M`, `2G`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("{text:?} is not a size like 4096, 64K, 512M or 2G"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{text} is too large"))
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Device(#[from] rblkfront::Error),
    #[error(transparent)]
    Check(#[from] check::CheckError),
    #[error(transparent)]
    Nbd(#[from] rblkfront::nbd::NbdError),
    #[error("{0}: {1}")]
    NbdDevice(String, std::io::Error),
}

fn config(args: &DeviceArgs) -> FrontendConfig {
    let mut cfg = FrontendConfig::new(args.devid);
    cfg.max_queues = args.max_queues;
    cfg.max_ring_page_order = args.max_ring_page_order;
    cfg.max_indirect_segments = args.max_indirect_segments;
    cfg.persistent = !args.no_persistent;
    cfg.timeout = Duration::from_secs(args.timeout);
    cfg.poll = Duration::from_micros(args.poll_us);
    cfg
}

fn check<G: GrantShare, E: EventChannels, S: Xenstore>(
    (grants, evtchn, store): (G, E, S),
    args: &CheckArgs,
) -> Result<check::CheckReport, MainError> {
    let mut dev = BlockFrontend::open(grants, evtchn, store, config(&args.device))?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    log::info!("pattern seed {seed}");
    let report = check::run(&mut dev, &CheckOptions { bytes: args.bytes, seed })?;
    log::info!("{:?}", dev.stats());
    dev.disconnect()?;
    Ok(report)
}

fn nbd<G: GrantShare, E: EventChannels, S: Xenstore>(
    (grants, evtchn, store): (G, E, S),
    args: &NbdArgs,
) -> Result<(), MainError> {
    use rblkfront::sys::{NbdDevice, NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_TRIM};
    use std::os::fd::AsFd;

    let mut dev = BlockFrontend::open(grants, evtchn, store, config(&args.device))?;
    let path = args.nbd.display().to_string();
    let nbd_error = |e| MainError::NbdDevice(path.clone(), e);
    let device = NbdDevice::open(&args.nbd).map_err(nbd_error)?;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(nbd_error)?;
    let mut flags = NBD_FLAG_HAS_FLAGS;
    if dev.read_only() {
        flags |= NBD_FLAG_READ_ONLY;
    }
    if dev.can_flush() {
        flags |= NBD_FLAG_SEND_FLUSH;
    }
    if dev.can_discard() {
        flags |= NBD_FLAG_SEND_TRIM;
    }
    let block = u64::from(dev.sector_size());
    device.configure(theirs.as_fd(), block, dev.size() / block, flags).map_err(nbd_error)?;
    let runner = device.try_clone().map_err(nbd_error)?;
    let kernel = std::thread::spawn(move || {
        let result = runner.run();
        drop(theirs);
        result
    });
    println!("RBLKFRONT-NBD serving {} bytes on {path}", dev.size());
    let served = rblkfront::nbd::serve(&mut dev, &mut ours);
    if let Err(e) = device.disconnect() {
        log::debug!("{path}: disconnect: {e}");
    }
    drop(ours);
    match kernel.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("{path}: NBD_DO_IT ended: {e}"),
        Err(_) => log::error!("{path}: the NBD thread panicked"),
    }
    if let Err(e) = device.clear_sock() {
        log::debug!("{path}: clear sock: {e}");
    }
    log::info!("{:?}", dev.stats());
    dev.disconnect()?;
    served.map_err(MainError::from)
}

fn run_check(cli: &Cli, args: &CheckArgs) -> Result<check::CheckReport, MainError> {
    match (cli.platform, &cli.loopback_dir) {
        (PlatformKind::Loopback, Some(dir)) => check(Loopback::connect(dir, cli.domid)?.handles()?, args),
        // clap requires --loopback-dir with the loopback platform.
        (PlatformKind::Loopback, None) | (PlatformKind::Xen, _) => check(XenGuest.handles()?, args),
    }
}

fn run_nbd(cli: &Cli, args: &NbdArgs) -> Result<(), MainError> {
    match (cli.platform, &cli.loopback_dir) {
        (PlatformKind::Loopback, Some(dir)) => nbd(Loopback::connect(dir, cli.domid)?.handles()?, args),
        (PlatformKind::Loopback, None) | (PlatformKind::Xen, _) => nbd(XenGuest.handles()?, args),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let args = match &cli.command {
        Command::Check(args) => args,
        Command::NbdDisconnect(args) => {
            let path = args.nbd.display().to_string();
            let result = rblkfront::sys::NbdDevice::open(&args.nbd)
                .and_then(|device| device.disconnect())
                .map_err(|e| MainError::NbdDevice(path, e));
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Nbd(args) => {
            return match run_nbd(&cli, args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    match run_check(&cli, args) {
        Ok(report) => {
            println!(
                "RBLKFRONT-CHECK PASS bytes={} MB/s-write={:.1} MB/s-read={:.1}",
                report.bytes, report.write_mb_s, report.read_mb_s
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            println!("RBLKFRONT-CHECK FAIL {e}");
            ExitCode::FAILURE
        }
    }
}
