//! `rxen-platform-check`: run once in a guest (`guest`) and once in dom0
//! (`dom0 --name NAME`) at the same time; the two halves exercise the
//! project's Linux platform against each other on real Xen and print
//! `RXEN-CHECK <role> PASS` or a `FAIL` line with the reason.
//! `xs-probe` runs alone in a guest: it tries other domains' xenstore
//! nodes and floods its own, printing `RXEN-XS-PROBE` lines for dom0 to judge.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(version, about = "Checks the rxen Linux platform between dom0 and a guest on real Xen")]
struct Cli {
    #[command(subcommand)]
    role: Role,
    /// Seconds to wait for the other side at each step.
    #[arg(long, global = true, default_value_t = 240)]
    timeout: u64,
}

#[derive(Subcommand, Debug)]
enum Role {
    /// The guest half: grants pages, offers an event channel, publishes them in xenstore.
    Guest,
    /// The dom0 half: maps the guest's grants, binds its channel, drives xenstore.
    Dom0 {
        /// The guest's name (followed across restarts by xl).
        #[arg(long)]
        name: String,
    },
    /// In a guest: try other domains' nodes and flood its own `data/`,
    /// printing one `RXEN-XS-PROBE` line per answer.
    XsProbe {
        /// Another guest's domain id, whose home to try.
        #[arg(long)]
        other: u16,
        /// Most nodes to write while flooding.
        #[arg(long, default_value_t = 5000)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let timeout = std::time::Duration::from_secs(cli.timeout);
    let (name, result) = match cli.role {
        Role::Guest => ("guest", xen_platform_check::run_guest(timeout)),
        Role::Dom0 { name } => ("dom0", xen_platform_check::run_dom0(&name, timeout)),
        Role::XsProbe { other, limit } => {
            ("xs-probe", xen_platform_check::run_xs_probe(other, limit))
        }
    };
    match result {
        Ok(()) => {
            println!("RXEN-CHECK {name} PASS");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("RXEN-CHECK {name} FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
