//! `rxl`: an `xl`-compatible toolstack. See the `rxl` library.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use rxl::commands::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // xl logs warnings and errors by default; each -v shows more.
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();

    let mut host = match rxl::host::connect() {
        Ok(host) => host,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = io::stdout();
    let stderr = io::stderr();
    let code = commands::run(&cli, host.as_mut(), &mut stdout.lock(), &mut stderr.lock());
    // Nothing is left to report a failing stdout to.
    let _ = io::stdout().flush();
    ExitCode::from(code)
}
