//! Boots the Xen test host and shows two guests of different kernel
//! versions, built and served by the project's own toolstack, daemons and
//! backends, running side by side. Run it with `make demo`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use xen_harness::HostConfig;

/// Boot Xen 4.17 and a Debian dom0 under QEMU (with rxenstored and
/// rxconsoled), start a Linux 6.1 PVH guest and a Linux 6.12 PV guest with
/// rxl, each with an rblkback disk and an rnetback vif, and show them
/// running.
#[derive(Debug, Parser)]
#[command(name = "rxen-demo", version)]
struct Args {
    /// Seconds allowed from starting QEMU until dom0 is ready.
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config = match HostConfig::new("demo") {
        Ok(mut c) => {
            c.boot_timeout = Duration::from_secs(args.boot_timeout);
            c
        }
        Err(e) => {
            eprintln!("rxen-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match xen_harness::demo::run(config, &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rxen-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
