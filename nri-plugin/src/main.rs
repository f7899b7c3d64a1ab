//! `podmap-nri`: see lib.rs. External when started by hand or by a service manager (connects to
//! the NRI socket); pre-launched when the runtime started it (NRI_PLUGIN_SOCKET set).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use podmap_node::nri_health as health;
use podmap_nri::config::{Args, Mode, PreLaunchEnv, Settings};
use podmap_nri::connection;
use podmap_nri::logging::LogSink;
use podmap_nri::plugin::PodmapPlugin;

fn main() -> ExitCode {
    let env = PreLaunchEnv::from_env();
    let prelaunched = env.socket.is_some();
    let log = LogSink::default();
    // A pre-launched plugin never stops before registering (containerd would go down with it):
    // bad arguments or environment fall back to defaults, and the log says so.
    let mut early_problem = None;
    let mut filter = podmap_node::LogFilter::default();
    let mut format = podmap_node::LogFormat::default();
    let mut probe = false;
    let settings = match Args::try_parse()
        .map_err(anyhow::Error::from)
        .and_then(|a| {
            filter = a.node.log.clone();
            format = a.node.log_format;
            probe = a.probe;
            Settings::new(a, &env).map_err(anyhow::Error::from)
        }) {
        Ok(s) => s,
        Err(e) if prelaunched => {
            early_problem = Some(e);
            Settings::prelaunched_defaults(&env)
        }
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_err) => clap_err.exit(),
            Err(e) => {
                eprintln!("podmap-nri: {e:#}");
                return ExitCode::from(2);
            }
        },
    };
    if probe {
        return match health::probe(&health::path_in(&settings.state_dir)) {
            Ok(ready) => {
                println!("{ready}");
                ExitCode::SUCCESS
            }
            Err(not_ready) => {
                println!("{not_ready}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(file) = &settings.log_file {
        if let Err(e) = log.set_file(file) {
            eprintln!("podmap-nri: cannot log to {}: {e}", file.display());
        }
    }
    log.install(&filter, format);
    if let Some(e) = early_problem {
        tracing::error!(error = %format!("{e:#}"), "bad arguments or environment; running on defaults");
    }
    for w in podmap_node::retired_env_warnings() {
        tracing::warn!("{w}");
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(settings, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings, log: LogSink) -> anyhow::Result<()> {
    tracing::info!(
        mode = ?settings.mode,
        name = %settings.plugin_name,
        idx = %settings.plugin_idx,
        bpffs = %settings.bpffs_dir.display(),
        state = %settings.state_dir.display(),
        cgroups = %settings.cgroup_root.display(),
        grace = ?settings.grace,
        "podmap-nri starting"
    );
    let plugin = PodmapPlugin::new(settings.clone(), Some(log));
    let sweep_every =
        (settings.grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    let sweeper = plugin.spawn_sweeper(sweep_every);
    let name = settings.plugin_name.clone();
    let idx = settings.plugin_idx.clone();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let served = async {
        match &settings.mode {
            Mode::External { socket } => {
                // Rebuild lost map entries now, not when the runtime first calls.
                let p = plugin.clone();
                let _ = tokio::task::spawn_blocking(move || p.open_backend()).await;
                connection::run_external(socket, plugin.clone(), &name, &idx).await;
                Ok(())
            }
            Mode::PreLaunched { fd } => {
                connection::run_prelaunched(*fd, plugin.clone(), &name, &idx)
                    .await
                    .map(|_| ())
                    .context("serving the runtime")
            }
        }
    };
    let res = tokio::select! {
        r = served => r,
        _ = term.recv() => { tracing::info!("SIGTERM"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT"); Ok(()) }
    };
    sweeper.abort();
    plugin.clear_health();
    let p = plugin.clone();
    let _ = tokio::task::spawn_blocking(move || p.flush()).await;
    tracing::info!("podmap-nri stopped");
    res
}
