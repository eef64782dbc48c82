//! `rogue-blkback`: answer one Xen block frontend with responses it must
//! not trust.

use std::process::ExitCode;

use clap::Parser;
use rogue_blkback::{Config, Mode, StopSignal, XenPlatform};

const SYNTAX: &str = "\
For tests only. The toolstack (the test) must have created the device in
xenstore first, as for rblkback: /local/domain/0/backend/KIND/DOMID/DEVID
with a `frontend` node, and the frontend's directory. rogue-blkback then
advertises a 1 MiB disk with one one-page ring (InitWait), waits up to 60 s
for the frontend to be Initialised, maps its ring, binds its event channel
(Connected), and answers every request as --mode says, logging each
request and its answer to stderr. No data page is ever mapped.

It exits when the frontend moves to Closing or Closed (or its state node
disappears), when the backend directory is removed, or on SIGTERM/SIGINT,
leaving the backend Closed if its directory still exists.

Example:
  rogue-blkback --kind rvbd --domid 3 --devid 51728 --mode overrun

Exit codes: 0 the frontend closed, the device was removed, or stopped;
1 error (e.g. the frontend never became Initialised, or set up more than
one one-page ring).";

/// Serve a Xen guest's block frontend with responses it must refuse.
#[derive(Debug, Parser)]
#[command(name = "rogue-blkback", version, after_help = SYNTAX)]
struct Cli {
    /// The backend kind in the device's xenstore path
    /// (/local/domain/0/backend/KIND/DOMID/DEVID).
    #[arg(long, default_value = "vbd")]
    kind: String,
    /// The frontend's domain id.
    #[arg(long)]
    domid: u16,
    /// The virtual device number (xvda = 51712, xvdb = 51728, ...).
    #[arg(long)]
    devid: u32,
    /// How to answer requests.
    #[arg(long, value_enum, default_value_t = Mode::BadIdAndStatus)]
    mode: Mode,
}

impl Cli {
    fn config(&self) -> Config {
        Config::new(&self.kind, self.domid, self.devid, self.mode)
    }
}

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Rogue(#[from] rogue_blkback::RogueError),
    #[error("cannot install the SIGTERM handler: {0}")]
    Signal(std::io::Error),
}

fn run(cli: &Cli) -> Result<(), MainError> {
    let stop = StopSignal::on_termination().map_err(MainError::Signal)?;
    let ended = rogue_blkback::run(&XenPlatform, &cli.config(), stop)?;
    log::info!("stopped: {ended:?}");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_hosts_command_line_parses() {
        // Act
        let cli = Cli::try_parse_from([
            "rogue-blkback",
            "--kind",
            "rvbd",
            "--domid",
            "3",
            "--devid",
            "51728",
            "--mode",
            "overrun",
        ])
        .unwrap();

        // Assert
        let cfg = cli.config();
        assert_eq!(cfg.backend_path(), "/local/domain/0/backend/rvbd/3/51728");
        assert_eq!(cfg.mode, Mode::Overrun);
        assert_eq!(cfg.connect_timeout, rogue_blkback::xenbus::CONNECT_TIMEOUT);
    }

    #[test]
    fn the_mode_defaults_to_bad_id_and_status() {
        let cli = Cli::try_parse_from(["rogue-blkback", "--domid", "1", "--devid", "51712"]).unwrap();

        assert_eq!((cli.mode, cli.kind.as_str()), (Mode::BadIdAndStatus, "vbd"));
    }

    #[test]
    fn an_unknown_mode_is_refused() {
        let err =
            Cli::try_parse_from(["rogue-blkback", "--domid", "1", "--devid", "51712", "--mode", "nice"]).unwrap_err();

        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn domid_and_devid_are_required() {
        let err = Cli::try_parse_from(["rogue-blkback", "--devid", "51712"]).unwrap_err();

        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
