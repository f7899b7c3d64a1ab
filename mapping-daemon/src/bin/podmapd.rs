use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = podmap_daemon::daemon::Args::parse();
    // PODMAP_LOG (--log) was checked against EnvFilter's grammar when parsed.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(args.node.log.as_str()).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    for w in podmap_node::retired_env_warnings() {
        tracing::warn!("{w}");
    }
    // One thread: the event path is a single pipeline, and cross-thread wake-ups would cost more
    // than they save.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(podmap_daemon::daemon::run(args));
    if let Err(e) = &res {
        tracing::error!("{e:#}");
    }
    res
}
