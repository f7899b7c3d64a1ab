//! The plugin's connection to the runtime: one multiplexed socket carrying the `Plugin` service
//! the plugin serves (conn 1) and the `Runtime` service it calls (conn 2). Registers first,
//! serves until the runtime goes away; in external mode connects again with backoff.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podmap_nri_protocol::api::RegisterPluginRequest;
use podmap_nri_protocol::api_ttrpc::{create_plugin, Plugin, RuntimeClient};
use podmap_nri_protocol::mux::{Closed, ConnId, Multiplexer};
use podmap_nri_protocol::transport::{client, single_connection_listener};
use podmap_nri_protocol::ttrpc::context;
use podmap_nri_protocol::ttrpc::r#async::Server;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use crate::plugin::PodmapPlugin;
use backon::{BackoffBuilder as _, ExponentialBuilder};

/// How long registration may take: the runtime's own registration timeout (5 s by default in every NRI release).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait between connection attempts.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// How a session with the runtime ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    pub registered: bool,
    pub closed: Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the NRI socket {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("NRI_PLUGIN_SOCKET fd {fd} is not a usable socket: {source}")]
    InheritedFd { fd: RawFd, source: io::Error },
    #[error("starting the multiplexer: {0}")]
    Mux(#[from] podmap_nri_protocol::MuxError),
}

/// One connection's life: serve the `Plugin` service, register, serve until the runtime goes
/// away. Registration comes first, before anything that can fail (docs/decisions.md #21); a call
/// that arrives while registering (Configure often does) is served concurrently.
pub async fn session<S>(
    socket: S,
    plugin: Arc<PodmapPlugin>,
    name: &str,
    idx: &str,
) -> Result<SessionEnd, ConnectError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut mux = Multiplexer::new(socket, &[ConnId::PLUGIN_SERVICE, ConnId::RUNTIME_SERVICE])?;
    let served = mux
        .take(ConnId::PLUGIN_SERVICE)
        .expect("the mux opened the plugin connection");
    let called = mux
        .take(ConnId::RUNTIME_SERVICE)
        .expect("the mux opened the runtime connection");
    let service: Arc<dyn Plugin + Send + Sync> = plugin.clone();
    let mut server = Server::new()
        .add_listener(single_connection_listener(served))
        .register_service(create_plugin(service));
    // Starting only spawns the accept loop; it fails only without a listener.
    if let Err(e) = server.start().await {
        tracing::error!(error = %e, "cannot serve the plugin service");
    }
    let runtime = RuntimeClient::new(client(called));

    let mut req = RegisterPluginRequest::new();
    req.plugin_name = name.to_string();
    req.plugin_idx = idx.to_string();
    let registered = match tokio::time::timeout(
        REGISTER_TIMEOUT,
        runtime.register_plugin(context::with_duration(REGISTER_TIMEOUT), &req),
    )
    .await
    {
        Ok(Ok(_)) => {
            tracing::info!(name, idx, "registered with the runtime");
            true
        }
        Ok(Err(e)) => {
            tracing::error!(name, idx, error = %e, "the runtime refused the registration");
            false
        }
        Err(_) => {
            tracing::error!(name, idx, "no answer to the registration");
            false
        }
    };
    // Even unregistered, stay until the runtime closes: a pre-launched plugin that leaves
    // first takes containerd down with it; an external one is retried by the caller.
    if registered {
        plugin.session_changed(true);
    }
    let closed = if registered {
        mux.closed().await
    } else {
        match tokio::time::timeout(REGISTER_TIMEOUT, mux.closed()).await {
            Ok(c) => c,
            Err(_) => Closed::Failed("registration failed".into()),
        }
    };
    tracing::info!(reason = %closed, "connection to the runtime ended");
    if registered {
        plugin.session_changed(false);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server.shutdown()).await;
    drop(runtime);
    drop(mux);
    Ok(SessionEnd { registered, closed })
}

/// External mode: connect, serve, and connect again with backoff whenever the runtime goes
/// away. Returns only when the task is dropped.
pub async fn run_external(socket: &Path, plugin: Arc<PodmapPlugin>, name: &str, idx: &str) {
    let retry = ExponentialBuilder::default()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    let mut delays = retry.build();
    let mut down_since: Option<Instant> = None;
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => {
                if let Some(t) = down_since.take() {
                    tracing::info!(down_s = t.elapsed().as_secs(), "runtime reachable again");
                }
                let started = Instant::now();
                match session(stream, plugin.clone(), name, idx).await {
                    Ok(end) if end.registered && started.elapsed() >= STABLE_SESSION => {
                        delays = retry.build();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "session"),
                }
            }
            Err(source) => {
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    let e = ConnectError::Connect {
                        path: socket.display().to_string(),
                        source,
                    };
                    tracing::warn!(error = %e, "runtime not reachable; retrying with backoff");
                }
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(BACKOFF_MAX)).await;
    }
}

/// Pre-launched mode: the runtime started this process with the connection on `fd`. One
/// session; when the runtime closes it the plugin's work is over (the runtime launches a new
/// instance when it starts again, which needs the store this one holds).
pub async fn run_prelaunched(
    fd: RawFd,
    plugin: Arc<PodmapPlugin>,
    name: &str,
    idx: &str,
) -> Result<SessionEnd, ConnectError> {
    let stream = inherited_socket(fd)?;
    session(stream, plugin, name, idx).await
}

/// Takes ownership of the runtime's socket on `fd` (NRI_PLUGIN_SOCKET).
fn inherited_socket(fd: RawFd) -> Result<UnixStream, ConnectError> {
    let err = |source| ConnectError::InheritedFd { fd, source };
    // SAFETY: fstat on a descriptor number into a zeroed struct; no ownership is taken.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a socket",
        )));
    }
    // SAFETY: the runtime passed this open socket for the plugin's exclusive use; nothing else
    // in this process owns it, and ownership is taken exactly once here.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    std_stream.set_nonblocking(true).map_err(err)?;
    UnixStream::from_std(std_stream).map_err(err)
}
