//! `xen-loopback`: runs the loopback hypervisor that domain processes
//! connect to.
//!
//! ```text
//! xen-loopback serve --dir /run/rxen-loopback
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xen_loopback::Hypervisor;

#[derive(Debug, Parser)]
#[command(
    name = "xen-loopback",
    version,
    about = "Xen's split-driver ABI between processes of one Linux host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve grant tables, event channels and xenstore to domain processes.
    Serve {
        /// Directory for the control socket (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { dir } => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                log::error!("cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            match Hypervisor::bind(&dir).and_then(Hypervisor::serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
