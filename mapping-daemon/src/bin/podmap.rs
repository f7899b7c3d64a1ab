//! `podmap`: the command-line client of podmapd's event socket. The work is in
//! `podmap_daemon::client`; this only parses the command line and reports failure.

use clap::Parser as _;
use podmap_daemon::client::{run, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmap: {e:#}");
            ExitCode::FAILURE
        }
    }
}
