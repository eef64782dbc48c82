//! `rblkback`: serve one virtual block device to one Xen frontend.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use rblkback::{Backend, BackendConfig, Disk, ImageFormat, IoMode, LoopbackPlatform, Platform, RawDiskOptions, StopSignal, XenPlatform};

const SYNTAX: &str = "\
The toolstack must have created the device in xenstore first (as xl
block-attach does): /local/domain/BACKEND/backend/KIND/DOMID/DEVID with a
`frontend` node, and the frontend's directory. rblkback then writes the
device's features and state there, serves the frontend until it closes,
goes back to InitWait for a reconnect, and exits on SIGTERM/SIGINT (state
Closed, or left Connected with --keep-connected) or when the toolstack
sets `online` to 0.

Restart and upgrade: started for a device whose backend and frontend both
read Connected (the previous rblkback was killed, crashed, or stopped with
--keep-connected), rblkback takes over the running rings without a state
change: the guest's blkfront keeps its disk, and requests the old process
left unanswered are carried out again.

Examples:
  rblkback --domid 3 --devid 51712 --path /srv/guest.img
  rblkback --domid 3 --devid 51728 --path /dev/vg0/data --read-only
  rblkback --domid 3 --devid 51712 --path /srv/guest3.qcow2 --format qcow2
  rblkback --platform loopback --loopback-dir /tmp/hv --domid 1 --devid 51712 --path disk.img

Exit codes: 0 stopped or device removed; 1 error.";

/// How I/O reaches the kernel (--io).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IoArg {
    /// uring for block devices and --direct files, mmap otherwise.
    Auto,
    /// Each ring batch's reads and writes in one io_uring submission.
    Uring,
    /// One preadv/pwritev per request.
    Sync,
    /// Reads copied from a shared mapping of the image file, with no
    /// system call; writes with pwritev, or on tmpfs through the mapping
    /// too (buffered files only).
    Mmap,
}

/// The image format (--format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    /// The bytes of the file or block device are the disk's.
    Raw,
    /// A qcow2 image; its backing chain is opened read-only.
    Qcow2,
    /// qcow2 if the image starts with the qcow2 magic, raw otherwise. Only
    /// for images the host made: a guest can write a qcow2 header into a
    /// raw disk.
    Auto,
}

/// Where the backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlatformKind {
    /// Xen, through /dev/xen/{gntdev,evtchn} and xenstored.
    Xen,
    /// The xen-loopback hypervisor serving --loopback-dir.
    Loopback,
}

/// Serve a raw image file, block device or qcow2 image to a Xen guest's
/// xen-blkfront.
#[derive(Debug, Parser)]
#[command(name = "rblkback", version, after_help = SYNTAX)]
struct Cli {
    /// The frontend's domain id.
    #[arg(long)]
    domid: u16,
    /// The virtual device number (xvda = 51712, xvdb = 51728, ...).
    #[arg(long)]
    devid: u32,
    /// The backend kind in the device's xenstore path
    /// (/local/domain/BACKEND/backend/KIND/DOMID/DEVID). `vbd` is Xen's
    /// own, which Linux's in-kernel blkback (xen-blkback) also serves: use
    /// another kind (e.g. `rvbd`) on a dom0 where that module is loaded.
    #[arg(long, default_value = "vbd")]
    kind: String,
    /// The domain this backend runs in.
    #[arg(long, default_value_t = 0)]
    backend_domid: u16,
    /// The image file or block device to serve.
    #[arg(long)]
    path: PathBuf,
    /// The image's format.
    #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
    format: FormatArg,
    /// Serve the disk read-only (VDISK_READONLY; writes fail).
    #[arg(long)]
    read_only: bool,
    /// Logical sector size to advertise: 512 or 4096 (default: the
    /// device's, 512 for files).
    #[arg(long)]
    sector_size: Option<u32>,
    /// Open the image with O_DIRECT, bypassing the host page cache (raw
    /// images only).
    #[arg(long)]
    direct: bool,
    /// How a raw image's reads and writes reach the kernel: each ring
    /// batch in one io_uring submission (uring), one preadv/pwritev per
    /// request (sync), reads copied from a mapping of the file (mmap), or
    /// auto: uring for block devices and --direct files, mmap for buffered
    /// files (a cached read is a copy, which needs no system call; on
    /// tmpfs io_uring would hand each one to a worker thread).
    #[arg(long, value_enum, default_value_t = IoArg::Auto)]
    io: IoArg,
    /// Most queues (rings) offered: multi-queue-max-queues.
    #[arg(long)]
    max_queues: Option<u32>,
    /// Most ring pages offered, as a power of two: max-ring-page-order (0-4).
    #[arg(long, default_value_t = 4)]
    max_ring_page_order: u32,
    /// Segments per indirect request offered: feature-max-indirect-segments.
    #[arg(long, default_value_t = 256)]
    max_indirect_segments: u32,
    /// On SIGTERM/SIGINT leave a connected device Connected, for a new
    /// rblkback to take over (an upgrade), instead of closing it.
    #[arg(long)]
    keep_connected: bool,
    /// Do not offer persistent grants (feature-persistent = 0).
    #[arg(long)]
    no_persistent: bool,
    /// Busy-poll each ring for this many microseconds after its last
    /// request before sleeping on the event channel (0: sleep at once).
    /// Saves events and wake-ups on a busy device; costs CPU time, so
    /// only for hosts with CPUs to spare.
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
    /// Interrupt moderation: while a frontend keeps several small
    /// requests in flight, hold a round's responses for up to this many
    /// (half the depth seen lately) so that both ends take one event for
    /// several requests (0 or 1: off). A frontend with one request in
    /// flight is answered at once.
    #[arg(long, default_value_t = rblkback::queue::Coalesce::DEFAULT.max_held)]
    coalesce_max: u32,
    /// The longest a hold waits for more requests, in microseconds.
    #[arg(long, default_value_t = rblkback::queue::Coalesce::DEFAULT.timeout.as_micros() as u64)]
    coalesce_us: u64,
    /// How queue threads sleep between rounds: `uring` unmasks the event
    /// channel, waits and takes the next event in one io_uring system call
    /// (the default; `poll` where io_uring is missing), `poll` in three
    /// (write, poll, read).
    #[arg(long, value_enum, default_value_t = EvtchnWaitArg::Uring)]
    evtchn_wait: EvtchnWaitArg,
    /// Persistent grants kept mapped per queue.
    #[arg(long, default_value_t = rblkback::grants::DEFAULT_MAX_PERSISTENT_GRANTS)]
    max_persistent_grants: usize,
    /// The platform.
    #[arg(long, value_enum, default_value_t = PlatformKind::Xen)]
    platform: PlatformKind,
    /// The loopback hypervisor's directory (with --platform loopback).
    #[arg(long, required_if_eq("platform", "loopback"))]
    loopback_dir: Option<PathBuf>,
}

/// `--evtchn-wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EvtchnWaitArg {
    Uring,
    Poll,
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Disk(#[from] rblkback::DiskError),
    #[error(transparent)]
    Backend(#[from] rblkback::BackendError),
    #[error(transparent)]
    Platform(#[from] rblkback::PlatformError),
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

fn serve<P: Platform>(platform: P, disk: Arc<Box<dyn Disk>>, cfg: BackendConfig) -> Result<(), MainError> {
    let stop = StopSignal::on_termination().map_err(MainError::Signal)?;
    let mut backend = Backend::new(platform, disk, cfg)?;
    backend.run(stop)?;
    Ok(())
}

fn run(cli: Cli) -> Result<(), MainError> {
    let format = match cli.format {
        FormatArg::Raw => Some(ImageFormat::Raw),
        FormatArg::Qcow2 => Some(ImageFormat::Qcow2),
        FormatArg::Auto => None,
    };
    let disk = Arc::new(rblkback::open_image(
        &cli.path,
        format,
        RawDiskOptions {
            read_only: cli.read_only,
            direct: cli.direct,
            sector_size: cli.sector_size,
            io: match cli.io {
                IoArg::Auto => None,
                IoArg::Uring => Some(IoMode::Batched),
                IoArg::Sync => Some(IoMode::Sync),
                IoArg::Mmap => Some(IoMode::Mapped),
            },
        },
    )?);
    let mut cfg = BackendConfig::new(cli.backend_domid, cli.domid, cli.devid);
    cfg.kind = cli.kind;
    cfg.keep_connected = cli.keep_connected;
    if let Some(max_queues) = cli.max_queues {
        cfg.max_queues = max_queues;
    }
    cfg.max_ring_page_order = cli.max_ring_page_order;
    cfg.max_indirect_segments = cli.max_indirect_segments;
    cfg.persistent = !cli.no_persistent;
    cfg.poll = std::time::Duration::from_micros(cli.poll_us);
    cfg.coalesce = Some(rblkback::queue::Coalesce {
        max_held: cli.coalesce_max,
        timeout: std::time::Duration::from_micros(cli.coalesce_us),
    });
    xen_linux::evtchn::set_wait_by_poll(cli.evtchn_wait == EvtchnWaitArg::Poll);
    cfg.max_persistent_grants = cli.max_persistent_grants;
    match (cli.platform, cli.loopback_dir) {
        (PlatformKind::Loopback, Some(dir)) => serve(LoopbackPlatform::connect(&dir, cli.backend_domid)?, disk, cfg),
        // clap requires --loopback-dir with the loopback platform.
        (PlatformKind::Loopback, None) | (PlatformKind::Xen, _) => serve(XenPlatform, disk, cfg),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
