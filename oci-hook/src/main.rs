//! `podmap-oci-hook [flags] create-runtime|poststop`, the OCI state on stdin. Exits 0 whatever
//! goes wrong, within --timeout, except for unmapped containers of fail-closed namespaces. A
//! panic is no exception: it is caught here, never the runtime's exit status 101.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use podmap_node::LogFormat;
use podmap_oci_hook::hook::Hook;
use podmap_oci_hook::log::HookLog;
use podmap_oci_hook::options::{Level, Options, Stage, DEFAULT_LOG_FILE};
use podmap_oci_hook::{panics, state, watchdog};

fn main() -> ExitCode {
    // The create-to-mapping-ready clock starts here.
    let started = Instant::now();
    // Installing and uninstalling are commands of a person or of the DaemonSet, not a runtime's
    // hook run: no watchdog, and a failure is said on stderr with a non-zero exit.
    let command = std::env::args_os().nth(1);
    match command.as_ref().and_then(|a| a.to_str()) {
        Some("install") => return manage(install_command()),
        Some("uninstall") => return manage(uninstall_command()),
        _ => {}
    }
    panics::install_quiet_hook();
    // The run catches panics of the stage itself (it knows the container then); this catches
    // the rest: the command line, opening the log, starting the watchdog.
    let res = std::panic::catch_unwind(|| run(started));
    let failure = match res {
        Ok(Ok(code)) => return ExitCode::from(code),
        Ok(Err(e)) => format!("{e:#}; nothing done"),
        Err(payload) => format!(
            "panicked before the run started: {}; nothing done",
            panics::describe(&*payload)
        ),
    };
    // Nothing is known yet, not even the log file's flag (a broken hooks.d entry): log where
    // the environment or the default says, and let the container start, within the default
    // bound (a hung /var/log).
    watchdog::arm(started + DEFAULT_BOUND, || 0);
    let _ = std::panic::catch_unwind(|| {
        let path = std::env::var_os("PODMAP_LOG_FILE").unwrap_or(DEFAULT_LOG_FILE.into());
        // The format as the environment says, if it says so plainly (the flags did not parse).
        let json = std::env::var("PODMAP_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
        let format = if json {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        HookLog::open(path.as_ref(), Level::Error, Stage::CreateRuntime)
            .with_format(format)
            .line(Level::Error, None, format_args!("{failure}"));
    });
    ExitCode::SUCCESS
}

fn manage(res: anyhow::Result<()>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmap-oci-hook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install_command() -> anyhow::Result<()> {
    use podmap_oci_hook::install::{self, InstallArgs, Installed, StopSignals};
    let args = InstallArgs::parse_from(std::env::args_os().skip(1));
    let stop = if args.stay {
        Some(StopSignals::block().context("blocking SIGTERM and SIGINT")?)
    } else {
        None
    };
    // Read from where it is, in chunks, never whole: with its debug info it is tens of MiB.
    let binary = std::path::Path::new("/proc/self/exe");
    let installed = match install::install(&args, binary)? {
        Installed::Done { binary, entry } => {
            println!(
                "podmap-oci-hook: installed {} and {}",
                binary.display(),
                entry.display()
            );
            true
        }
        Installed::Skipped(why) => {
            println!("podmap-oci-hook: not installed: {why}");
            false
        }
    };
    if let Some(stop) = stop {
        let sig = stop.wait().context("waiting for SIGTERM or SIGINT")?;
        if !installed {
            // A hook someone installed by hand on this host is theirs.
            println!("podmap-oci-hook: signal {sig}: nothing of mine to remove");
            return Ok(());
        }
        let removed = install::uninstall_if_ours(&args, binary)?;
        if removed.is_empty() {
            println!("podmap-oci-hook: signal {sig}: removed nothing (another installer's binary or entry is there now)");
        } else {
            println!(
                "podmap-oci-hook: signal {sig}: removed {}",
                describe(&removed)
            );
        }
    }
    Ok(())
}

fn uninstall_command() -> anyhow::Result<()> {
    use podmap_oci_hook::install::{self, UninstallArgs};
    let args = UninstallArgs::parse_from(std::env::args_os().skip(1));
    let removed = install::uninstall(&args.paths)?;
    println!("podmap-oci-hook: removed {}", describe(&removed));
    Ok(())
}

fn describe(paths: &[std::path::PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing (not installed)".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The bound of a run whose --timeout is unknown (a bad command line), less the watchdog's
/// margin.
const DEFAULT_BOUND: Duration = Duration::from_millis(950);

fn run(started: Instant) -> anyhow::Result<u8> {
    let opts = match Options::try_parse() {
        Ok(o) => o,
        Err(e) if !e.use_stderr() => {
            // --help, --version.
            let _ = e.print();
            return Ok(0);
        }
        Err(e) => {
            let _ = e.print();
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            anyhow::bail!("bad command line: {first}");
        }
    };
    // The watchdog first, then the log: opening it can block on a hung filesystem.
    let log =
        HookLog::new(&opts.log_file, opts.log_level(), opts.stage).with_format(opts.log_format);
    let hook = Arc::new(Hook::new(opts, log, started));
    let on_fire = Arc::clone(&hook);
    let armed = watchdog::arm(hook.deadline(), move || on_fire.on_timeout());
    hook.log().open_file();
    if !armed {
        hook.log().line(
            Level::Warn,
            None,
            format_args!("could not start the watchdog thread; running without the time bound"),
        );
    }
    for w in podmap_node::retired_env_warnings() {
        hook.log().line(Level::Warn, None, format_args!("{w}"));
    }
    // Read under the watchdog: a runtime that never closes stdin is bounded too.
    let code = hook.guard(|| hook.run(|| state::read_input(std::io::stdin().lock())));
    Ok(u8::try_from(code).unwrap_or(1))
}
