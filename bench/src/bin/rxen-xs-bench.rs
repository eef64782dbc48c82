//! `rxen-xs-bench`: one xenstore client workload, run against whichever
//! daemon answers on the socket, so that Xen's C `xenstored`, `oxenstored`
//! and rxenstored are measured by the same code in the same run.
//!
//! The client is deliberately thin (one blocking request at a time over the
//! Unix socket, no reader thread) so that the figures are the daemon's.
//! Output: one `xs-bench` line per measurement, `key=value` words.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rxen_bench::xs::{run_workload, Workload};

#[derive(Debug, Parser)]
#[command(about = "Measure a xenstore daemon over its Unix socket", version)]
struct Args {
    /// The daemon's socket.
    #[arg(long, default_value = "/var/run/xenstored/socket")]
    socket: String,
    /// A label for the output lines (the daemon's name).
    #[arg(long, default_value = "xenstored")]
    label: String,
    /// Seconds each operation is measured for.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Background nodes created before measuring (a store of realistic size).
    #[arg(long, default_value_t = 2000)]
    background: usize,
    /// Children of the directory that is listed.
    #[arg(long, default_value_t = 64)]
    children: usize,
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    let workload = Workload {
        socket: args.socket.into(),
        per_op: Duration::from_secs_f64(args.seconds),
        background: args.background,
        children: args.children,
    };
    match run_workload(&workload) {
        Ok(results) => {
            for r in results {
                println!("xs-bench daemon={} {}", args.label, r);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rxen-xs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
