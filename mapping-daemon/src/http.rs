//! podmapd's HTTP endpoint on `--metrics-addr` (docs/interfaces.md, "Metrics" and "Health"):
//! `GET /metrics` (OpenMetrics text), `GET /healthz` (the daemon answers) and `GET /readyz`
//! (the programs are attached and, in Kubernetes mode, the pod cache has synced), served with
//! hyper. Every answer is built from one status snapshot.
//!
//! The endpoint is bounded: at most `max_connections` at once (one more is answered 503 at once
//! and closed, and counted), a request head must arrive within `IO_TIMEOUT`, and a connection
//! lives at most twice that.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use podmap_proto::status::StatusReport;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

use crate::metrics;
use crate::status::StatusSource;

/// Connections served at once unless told otherwise: a scrape or a probe takes one, and a few
/// Prometheus replicas, the kubelet's probes and a curl need no more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;

/// The answer to a connection over the cap, written raw: no task, no parsing, so a flood costs
/// nothing.
const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
                    Content-Length: 37\r\nConnection: close\r\n\r\ntoo many metrics connections at once\n";

/// Time a connection has to send its request head; it lives at most twice this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How the endpoint limits its clients.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Most connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Connections turned away over the cap (podmapd shares it with its status).
    pub refused: Arc<AtomicU64>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            refused: Arc::default(),
        }
    }
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn StatusSource>,
    config: HttpConfig,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    info!(%addr, "serving metrics and health");
    serve_on(listener, source, config, shutdown).await;
    Ok(())
}

/// Serves on an already bound listener until `shutdown` completes.
pub async fn serve_on(
    listener: TcpListener,
    source: Arc<dyn StatusSource>,
    config: HttpConfig,
    shutdown: impl Future,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    if e.is_panic() {
                        error!(error = %e, "an HTTP connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        let source = Arc::clone(&source);
                        tasks.spawn(async move {
                            match timeout(2 * IO_TIMEOUT, connection(stream, source)).await {
                                Ok(Err(e)) => debug!(%peer, error = %e, "HTTP connection failed"),
                                Err(_) => debug!(%peer, "HTTP connection timed out"),
                                Ok(Ok(())) => {}
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        config.refused.fetch_add(1, Ordering::Relaxed);
                        debug!(%peer, max = config.max_connections, "refusing an HTTP connection over the cap");
                        // A fresh socket's send buffer is empty, so this one write goes out whole.
                        let _ = stream.try_write(BUSY.as_bytes());
                    }
                },
                Err(e) => {
                    warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tasks.shutdown().await;
}

/// One connection, one request (no keep-alive: scrapes and probes open one each).
async fn connection(stream: TcpStream, source: Arc<dyn StatusSource>) -> Result<(), hyper::Error> {
    let service = service_fn(move |req: Request<Incoming>| {
        let source = Arc::clone(&source);
        async move { Ok::<_, Infallible>(respond(req.method(), req.uri().path(), &*source)) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// The endpoint's routes. Only GET (and HEAD, which hyper answers without the body) is served.
fn respond(method: &Method, path: &str, source: &dyn StatusSource) -> Response<Full<Bytes>> {
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    if !known {
        return text(
            StatusCode::NOT_FOUND,
            "not found: GET /metrics, /healthz or /readyz\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics::render(&source.status()))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        // podmapd answered: its runtime and this endpoint are alive. Whether it is useful is
        // /readyz's question; a liveness probe must not restart a daemon that waits for a
        // cluster.
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        _ => match readiness(&source.status()) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Ready: the kernel programs are attached (events flow and policies act), and in Kubernetes
/// mode the pod cache has synced (events carry their pod). The NRI plugin is a process of its
/// own with a probe of its own (`podmap-nri --probe`): the pod is ready when both are.
pub fn readiness(status: &StatusReport) -> Result<(), String> {
    if status.programs.attached.is_empty() {
        return Err("the kernel programs are not attached".into());
    }
    if let Some(pods) = &status.pod_cache {
        if !pods.synced {
            return Err("the pod cache has not synced with the API server yet".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn ready_report() -> StatusReport {
        StatusReport {
            containers_mapped: 6,
            programs: podmap_proto::status::ProgramsStatus {
                attached: vec!["podmap_exec".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A source whose report says what the endpoint's answers depend on.
    struct Fake(StatusReport);
    impl StatusSource for Fake {
        fn status(&self) -> StatusReport {
            self.0.clone()
        }
        fn containers(&self) -> Vec<podmap_proto::containers::ContainerRow> {
            Vec::new()
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(
            listener,
            Arc::new(Fake(ready_report())),
            HttpConfig::default(),
            stopped,
        ));

        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(metrics::CONTENT_TYPE), "{ok}");
        let body = ok.split_once("\r\n\r\n").unwrap().1;
        assert!(
            ok.to_lowercase()
                .contains(&format!("content-length: {}\r\n", body.len())),
            "{ok}"
        );
        assert!(body.contains("podmap_containers_mapped 6"));

        let missing = get(addr, "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let post = get(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(
            post.to_lowercase().contains("allow: get, head\r\n"),
            "{post}"
        );
        let garbage = get(addr, "garbage\r\n\r\n").await;
        assert!(
            garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbage}"
        );

        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_cap_get_503_and_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = HttpConfig {
            max_connections: 2,
            ..Default::default()
        };
        let refused = Arc::clone(&config.refused);
        let server = tokio::spawn(serve_on(
            listener,
            Arc::new(Fake(ready_report())),
            config,
            stopped,
        ));

        // Two connections that never send their request hold both places (up to IO_TIMEOUT).
        let idle = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut out = String::new();
        timeout(Duration::from_secs(3), over.read_to_string(&mut out))
            .await
            .expect("the connection over the cap is answered at once")
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{out}"
        );
        let body = out.split_once("\r\n\r\n").unwrap().1;
        assert!(body.starts_with("too many"), "{out}");
        assert!(
            out.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{out}"
        );
        assert_eq!(refused.load(Ordering::Relaxed), 1);

        // Places free up as connections end; scrapes work again.
        drop(idle);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let got = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
            if got.starts_with("HTTP/1.1 200 OK") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{got}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[test]
    fn the_default_cap_is_eight() {
        assert_eq!(HttpConfig::default().max_connections, 8);
    }

    #[tokio::test]
    async fn health_and_readiness_follow_the_programs_and_the_pod_cache() {
        let cases = [
            (ready_report(), "200 OK", "ready"),
            (
                StatusReport::default(),
                "503 Service Unavailable",
                "not ready: the kernel programs are not attached",
            ),
            (
                StatusReport {
                    pod_cache: Some(Default::default()),
                    ..ready_report()
                },
                "503 Service Unavailable",
                "not ready: the pod cache has not synced",
            ),
            (
                StatusReport {
                    pod_cache: Some(podmap_proto::status::PodCacheStatus {
                        synced: true,
                        ..Default::default()
                    }),
                    ..ready_report()
                },
                "200 OK",
                "ready",
            ),
        ];
        for (report, status, body) in cases {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve_on(
                listener,
                Arc::new(Fake(report)),
                HttpConfig::default(),
                stopped,
            ));
            let live = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
            assert!(live.ends_with("\r\n\r\nok\n"), "{live}");
            let ready = get(addr, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(
                ready.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{ready}"
            );
            let got = ready.split_once("\r\n\r\n").unwrap().1;
            assert!(got.starts_with(body), "{ready}");
            stop.send(()).unwrap();
            server.await.unwrap();
        }
    }
}
