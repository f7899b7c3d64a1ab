use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<ExitCode> {
    let args = podmap_daemon::daemon::Args::parse();
    // PODMAP_LOG (--log) was checked against EnvFilter's grammar when parsed.
    let filter =
        EnvFilter::try_new(args.node.log.as_str()).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal; `--log-format json` is one object per line.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.node.log_format {
        podmap_node::LogFormat::Text => fmt.init(),
        podmap_node::LogFormat::Json => fmt.json().init(),
    }
    // podmapd's loader process: the same binary and arguments, started by podmapd itself.
    if let Some(request) = std::env::var_os(podmap_daemon::daemon::LOADER_ENV) {
        return Ok(podmap_daemon::daemon::run_loader_child(&request));
    }
    for w in podmap_node::retired_env_warnings() {
        tracing::warn!("{w}");
    }
    // One thread: the event path is a single pipeline, and cross-thread wake-ups would cost more
    // than they save.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A failure is logged once, in the log's format (not also printed by std as a debug dump,
    // which would break a JSON log's one object per line).
    match rt.block_on(podmap_daemon::daemon::run(args)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("{e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}
