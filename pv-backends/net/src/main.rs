//! `rnetback`: serve one virtual network interface to one Xen frontend.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use rnetback::xenbus::parse_mac;
use rnetback::{Backend, BackendConfig, LoopbackPlatform, Platform, StopSignal, TapDelivery, XenPlatform};

const SYNTAX: &str = "\
The toolstack must have created the device in xenstore first (as xl
network-attach does): /local/domain/BACKEND/backend/KIND/DOMID/DEVID with a
`frontend` node (and `mac`), and the frontend's directory with its `mac`.
rnetback then creates the TAP interface (vif<DOMID>.<DEVID> unless --ifname;
MAC fe:ff:ff:ff:ff:ff as Linux netback's vifs; joined to --bridge), writes
the device's features and state, serves the frontend until it closes, goes
back to InitWait for a reconnect, and exits on SIGTERM/SIGINT (state
Closed) or when the toolstack sets `online` to 0.

Examples:
  rnetback --domid 3 --devid 0 --bridge xenbr0
  rnetback --domid 3 --devid 1 --kind rvif --ifname rvif3.1 --mac 00:16:3e:00:00:01
  rnetback --platform loopback --loopback-dir /tmp/hv --domid 1 --devid 0

Exit codes: 0 stopped or device removed; 1 error.";

/// Where the backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PlatformKind {
    /// Xen, through /dev/xen/{gntdev,evtchn} and xenstored.
    Xen,
    /// The xen-loopback hypervisor serving --loopback-dir.
    Loopback,
}

/// Serve a Xen guest's xen-netfront through a TAP interface.
#[derive(Debug, Parser)]
#[command(name = "rnetback", version, after_help = SYNTAX)]
struct Cli {
    /// The frontend's domain id.
    #[arg(long)]
    domid: u16,
    /// The device index (0 for the guest's first vif).
    #[arg(long)]
    devid: u32,
    /// The backend kind in the device's xenstore path
    /// (/local/domain/BACKEND/backend/KIND/DOMID/DEVID). `vif` is Xen's
    /// own, which Linux's in-kernel netback (xen-netback) also serves: use
    /// another kind (e.g. `rvif`) on a dom0 where that module is loaded.
    #[arg(long, default_value = "vif")]
    kind: String,
    /// The domain this backend runs in.
    #[arg(long, default_value_t = 0)]
    backend_domid: u16,
    /// The TAP interface's name (default vif<DOMID>.<DEVID>).
    #[arg(long)]
    ifname: Option<String>,
    /// The guest's MAC address (default: the backend's `mac` node).
    #[arg(long, value_parser = parse_mac_arg)]
    mac: Option<[u8; 6]>,
    /// A Linux bridge to add the TAP to.
    #[arg(long)]
    bridge: Option<String>,
    /// The TAP's MTU (default: the backend's `mtu` node, else 1500).
    #[arg(long)]
    mtu: Option<u32>,
    /// Most queues offered: multi-queue-max-queues (default: CPUs).
    #[arg(long)]
    max_queues: Option<u32>,
    /// Do not offer feature-split-event-channels.
    #[arg(long)]
    no_split_event_channels: bool,
    /// How queue threads sleep between rounds: `uring` unmasks the event
    /// channel, waits (for it, the TAP or a timeout) and takes the next
    /// event in one io_uring system call (the default; `poll` where
    /// io_uring is missing), `poll` in three (write, poll, read).
    #[arg(long, value_enum, default_value_t = EvtchnWaitArg::Uring)]
    evtchn_wait: EvtchnWaitArg,
    /// Who writes the frontend's packets to the TAP: `thread`, a thread
    /// per queue beside the one that takes them off the ring and copies
    /// them out (the default: the two overlap), or `inline`, that thread
    /// itself.
    #[arg(long, value_enum, default_value_t = TapWriterArg::Thread)]
    tap_writer: TapWriterArg,
    /// How the packets written to the TAP reach dom0's network stack:
    /// `split` (the default), the guest's pure TCP acknowledgements in the
    /// write and its other packets through a second TAP queue per queue,
    /// whose NAPI instance (IFF_NAPI) runs in a kernel thread of its own
    /// and takes a batch of them at a time; `inline`, every packet in the
    /// write; `napi`, every packet through the TAP queue's NAPI instance in
    /// the write's softirq; `napi-thread`, every packet through that
    /// instance in its kernel thread.
    #[arg(long, value_enum, default_value_t = TapDeliveryArg::Split)]
    tap_delivery: TapDeliveryArg,
    /// The platform.
    #[arg(long, value_enum, default_value_t = PlatformKind::Xen)]
    platform: PlatformKind,
    /// The loopback hypervisor's directory (with --platform loopback).
    #[arg(long, required_if_eq("platform", "loopback"))]
    loopback_dir: Option<PathBuf>,
}

/// `--evtchn-wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EvtchnWaitArg {
    Uring,
    Poll,
}

/// `--tap-writer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TapWriterArg {
    Thread,
    Inline,
}

/// `--tap-delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TapDeliveryArg {
    Inline,
    Napi,
    NapiThread,
    Split,
}

fn parse_mac_arg(text: &str) -> Result<[u8; 6], String> {
    parse_mac(text).ok_or_else(|| format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Backend(#[from] rnetback::BackendError),
    #[error(transparent)]
    Platform(#[from] rnetback::PlatformError),
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

fn serve<P: Platform>(platform: P, cfg: BackendConfig) -> Result<(), MainError> {
    let stop = StopSignal::on_termination().map_err(MainError::Signal)?;
    let mut backend = Backend::new(platform, cfg)?;
    backend.run(stop)?;
    Ok(())
}

fn run(cli: Cli) -> Result<(), MainError> {
    let mut cfg = BackendConfig::new(cli.backend_domid, cli.domid, cli.devid);
    cfg.kind = cli.kind;
    cfg.ifname = cli.ifname;
    cfg.mac = cli.mac;
    cfg.bridge = cli.bridge;
    xen_linux::evtchn::set_wait_by_poll(cli.evtchn_wait == EvtchnWaitArg::Poll);
    cfg.mtu = cli.mtu;
    if let Some(max_queues) = cli.max_queues {
        cfg.max_queues = max_queues;
    }
    cfg.split_event_channels = !cli.no_split_event_channels;
    cfg.tap_writer_thread = cli.tap_writer == TapWriterArg::Thread;
    cfg.tap_delivery = match cli.tap_delivery {
        TapDeliveryArg::Split => TapDelivery::Split,
        TapDeliveryArg::Inline => TapDelivery::Inline,
        TapDeliveryArg::Napi => TapDelivery::Napi,
        TapDeliveryArg::NapiThread => TapDelivery::NapiThread,
    };
    match (cli.platform, cli.loopback_dir) {
        (PlatformKind::Loopback, Some(dir)) => {
            serve(LoopbackPlatform::connect(&dir, cli.backend_domid)?, cfg)
        }
        // clap requires --loopback-dir with the loopback platform.
        (PlatformKind::Loopback, None) | (PlatformKind::Xen, _) => serve(XenPlatform, cfg),
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
