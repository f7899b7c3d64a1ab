//! Prometheus metrics on `--metrics-addr` (docs/interfaces.md, "Metrics"): the same counters as
//! status, rendered from one [`StatusReport`] snapshot per scrape so the two never disagree.
//!
//! The HTTP side is deliberately tiny (one GET route, `Connection: close`), written on a tokio
//! `TcpListener`: a scrape endpoint does not justify an HTTP stack as a dependency.

use crate::status::{LatencySummary, StatusReport, StatusSource};
use anyhow::Context as _;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, error, info, warn};

/// The OpenMetrics text format, which prometheus-client writes (it ends with `# EOF`).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A request head larger than this is refused: a scrape's head is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;

/// The answer to a connection over the cap.
const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
                    Content-Length: 37\r\nConnection: close\r\n\r\ntoo many metrics connections at once\n";

/// Time a connection has to send its request head, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

type Labelled = Family<[(&'static str, String); 1], Counter>;

/// Renders `report` as OpenMetrics text, every name prefixed `podmap_`.
pub fn render(report: &StatusReport) -> String {
    let mut reg = Registry::with_prefix("podmap");

    reg.register(
        "daemon",
        "podmapd's identity and the modes it runs in",
        Info::new(vec![
            ("node", report.node.clone()),
            ("version", report.version.clone()),
            ("mode", report.mode.clone()),
            ("cgroup_hierarchy", report.cgroup_hierarchy.clone()),
            ("cgroup_layout", report.cgroup_layout.clone()),
            ("enforcement_mode", report.enforcement_mode.clone()),
        ]),
    );

    let uptime = Gauge::<f64, AtomicU64>::default();
    uptime.set(report.uptime_seconds);
    reg.register("uptime_seconds", "Seconds since podmapd started", uptime);

    reg.register(
        "events_seen",
        "Events read from the ring buffer, by type",
        labelled("type", &report.events_seen),
    );
    reg.register(
        "attribution",
        "Attributed events by kind: container, host, unknown",
        labelled("kind", &report.attribution),
    );
    reg.register(
        "shared_counters",
        "Shared counters of the kernel programs and runtime plugins, by name",
        labelled("name", &report.shared_counters),
    );

    for (name, help, value) in [
        (
            "events_delivered",
            "Event lines handed to socket clients (one per client per event)",
            report.events_delivered,
        ),
        (
            "events_lost_kernel",
            "Events the kernel could not queue (ring buffer full)",
            report.events_lost_kernel,
        ),
        (
            "events_lost_slow_clients",
            "Event lines dropped because a socket client did not keep up",
            report.events_lost_slow_clients,
        ),
        (
            "events_held",
            "Events held waiting for their container mapping",
            report.events_held,
        ),
        (
            "events_held_timed_out",
            "Held events that went out as unknown when the wait ran out",
            report.events_held_timed_out,
        ),
        (
            "events_held_released_early",
            "Held events sent on as unknown before their time because a hold bound was reached",
            report.events_held_released_early,
        ),
        (
            "events_shaped_outside_pod_parents",
            "Events of cgroups named like a container's outside the pod parents (attributed to the host)",
            report.shaped_outside_pod_parents,
        ),
        (
            "events_unknown_pod_mismatch",
            "Unknown events whose container the pod cache has under another pod than the path names (no pod data joined)",
            report.unknown_pod_mismatch,
        ),
        (
            "records_unreadable",
            "Container records whose metadata did not parse",
            report.records_unreadable,
        ),
        (
            "processes_untracked",
            "Execs the full process table could not keep",
            report.processes_untracked,
        ),
        (
            "reader_sleeps",
            "Times the idle event reader stopped polling (the next record wakes it)",
            report.reader_sleeps,
        ),
        (
            "reader_woken",
            "Times a record woke the sleeping event reader",
            report.reader_woken,
        ),
        (
            "reader_late",
            "Records the sleeping reader's slow look found (submitted as it fell asleep)",
            report.reader_late,
        ),
        (
            "client_errors",
            "Socket requests refused (malformed, too long, silent, a second line)",
            report.client_errors,
        ),
        (
            "clients_refused",
            "Socket connections refused because the maximum of clients was connected",
            report.clients_refused,
        ),
        (
            "clients_write_timeouts",
            "Socket clients disconnected because a write to them timed out (they stopped reading)",
            report.clients_write_timeouts,
        ),
        (
            "metrics_connections_refused",
            "Metrics connections refused because the endpoint's maximum was connected",
            report.metrics_connections_refused,
        ),
        (
            "mapping_latency_samples",
            "Create-to-mapping-ready measurements reported by the runtime plugins",
            report.mapping_latency_us.count,
        ),
        (
            "event_latency_samples",
            "Event latency measurements (kernel timestamp to client queues)",
            report.event_latency_us.count,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        reg.register(name, help, c);
    }

    for (name, help, value) in [
        (
            "clients",
            "Streaming socket clients connected",
            report.clients_connected,
        ),
        (
            "containers_mapped",
            "Containers in the mapping table",
            report.containers_mapped,
        ),
        (
            "events_held_now",
            "Events waiting for their container mapping now",
            report.events_held_now,
        ),
        (
            "events_held_peak",
            "The most events ever waiting for their mapping at once",
            report.events_held_peak,
        ),
        (
            "pods_cached",
            "Pods in the Kubernetes informer cache",
            report.pods_cached,
        ),
        (
            "policies_loaded",
            "Policies active (kernel rule tables written)",
            report.policies.loaded.len() as u64,
        ),
        (
            "policies_refused",
            "Policy files or documents refused now (see podmap status for why)",
            report.policies.errors.len() as u64,
        ),
        (
            "policy_memberships",
            "(policy, container) pairs in the kernel's membership map",
            report.policies.memberships,
        ),
    ] {
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(value);
        reg.register(name, help, g);
    }
    for (name, help, value) in [
        (
            "policy_dir_read_failures",
            "Failed reads of the policy directory or its files (the policies last loaded stayed in force)",
            report.policies.read_failures,
        ),
        (
            "policy_rule_write_failures",
            "Kernel rule table entries that could not be written as asked (see podmap status)",
            report.policies.rule_write_failures,
        ),
        (
            "policy_orphan_memberships_removed",
            "Policy memberships removed because their container had no record any more",
            report.policies.orphan_memberships_removed,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        reg.register(name, help, c);
    }

    if let Some(m) = &report.policies.resources {
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(m.resources);
        reg.register(
            "policy_resources",
            "PodPolicy resources on the API server, mirrored into the policy directory",
            g,
        );
        let g = Gauge::<u64, AtomicU64>::default();
        g.set(m.refused.len() as u64);
        reg.register(
            "policy_resources_refused",
            "PodPolicy resources refused now (see podmap status for why)",
            g,
        );
        let c = Counter::<u64>::default();
        c.inc_by(m.errors);
        reg.register(
            "policy_resource_errors",
            "Failed watches of PodPolicy resources and failed writes of their files",
            c,
        );
    }

    reg.register(
        "mapping_latency_seconds",
        "Create-to-mapping-ready latency reported by the runtime plugins",
        quantiles(&report.mapping_latency_us),
    );
    reg.register(
        "event_latency_seconds",
        "Latency from the kernel's timestamp to the hand-off to the clients' queues",
        quantiles(&report.event_latency_us),
    );

    let mut out = String::new();
    // Writing into a String cannot fail.
    encode(&mut out, &reg).expect("encoding metrics into a String");
    out
}

/// Summary-style quantiles as a gauge family: what is reported is quantiles, not the
/// observations a histogram would need. "1" is the maximum, as in Prometheus summaries; an
/// absent quantile (no samples yet) is left out rather than shown as 0.
fn quantiles(
    summary: &LatencySummary,
) -> Family<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>> {
    let family = Family::<[(&'static str, &'static str); 1], Gauge<f64, AtomicU64>>::default();
    for (quantile, value) in [
        ("0.5", summary.p50),
        ("0.99", summary.p99),
        ("1", summary.max),
    ] {
        if let Some(us) = value {
            family
                .get_or_create(&[("quantile", quantile)])
                .set(us as f64 / 1e6);
        }
    }
    family
}

fn labelled(label: &'static str, values: &BTreeMap<String, u64>) -> Labelled {
    let family = Labelled::default();
    for (key, value) in values {
        family.get_or_create(&[(label, key.clone())]).inc_by(*value);
    }
    family
}

/// Connections served at once unless told otherwise: a scrape takes one, and a few Prometheus
/// replicas plus a curl need no more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;

/// How the endpoint limits its clients.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Most connections served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Connections turned away over the cap (podmapd shares it with its status).
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            refused: Arc::default(),
        }
    }
}

/// Binds `addr` and serves `GET /metrics` until `shutdown` completes.
pub async fn serve_metrics(
    addr: SocketAddr,
    source: Arc<dyn StatusSource>,
    config: MetricsConfig,
    shutdown: impl Future,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    info!(%addr, "serving metrics");
    serve_metrics_on(listener, source, config, shutdown).await;
    Ok(())
}

/// Serves `GET /metrics` on an already bound listener until `shutdown` completes.
pub async fn serve_metrics_on(
    listener: TcpListener,
    source: Arc<dyn StatusSource>,
    config: MetricsConfig,
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
                        error!(error = %e, "a metrics connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        let source = Arc::clone(&source);
                        tasks.spawn(async move {
                            if let Err(e) = handle_http(stream, &*source).await {
                                debug!(%peer, error = %e, "metrics connection failed");
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // Every place is taken (each connection may hold one for IO_TIMEOUT
                        // twice): answer at once, without a task, so a flood costs nothing.
                        config.refused.fetch_add(1, Ordering::Relaxed);
                        debug!(%peer, max = config.max_connections, "refusing a metrics connection over the cap");
                        // A fresh socket's send buffer is empty, so this one write goes out whole.
                        let _ = stream.try_write(BUSY.as_bytes());
                    }
                },
                Err(e) => {
                    warn!(error = %e, "accepting a metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tasks.shutdown().await;
}

/// What a request head asks for, as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    if method == "GET" && path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

async fn handle_http(mut stream: TcpStream, source: &dyn StatusSource) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let complete = timeout(IO_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            head.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let route = match complete {
        Err(_) => return Ok(()), // silent client: just close
        Ok(Err(e)) => return Err(e),
        Ok(Ok(true)) => route(&head),
        Ok(Ok(false)) => Route::BadRequest,
    };
    let (status, content_type, body) = match route {
        Route::Metrics => ("200 OK", CONTENT_TYPE, render(&source.status())),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at GET /metrics\n".to_string(),
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match timeout(IO_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Ok(()), // client did not read: close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> StatusReport {
        StatusReport {
            node: "node-a".into(),
            version: "0.1.0".into(),
            uptime_seconds: 12.5,
            mode: "standalone".into(),
            cgroup_hierarchy: "cgroup2".into(),
            cgroup_layout: "systemd".into(),
            events_seen: [("exec".to_string(), 10), ("exit".to_string(), 9)].into(),
            events_delivered: 30,
            events_lost_kernel: 1,
            events_lost_slow_clients: 2,
            attribution: [("container".to_string(), 7), ("host".to_string(), 3)].into(),
            events_held: 4,
            events_held_timed_out: 1,
            events_held_now: 2,
            events_held_peak: 256,
            events_held_released_early: 11,
            events_held_limits: crate::status::HoldLimitsStatus {
                per_cgroup: 256,
                total: 4096,
            },
            pod_parents: vec!["/kubepods".into()],
            shaped_outside_pod_parents: 12,
            unknown_pod_mismatch: 13,
            clients_connected: 2,
            records_unreadable: 0,
            processes_untracked: 0,
            reader_asleep: false,
            reader_sleeps: 7,
            reader_woken: 6,
            reader_late: 1,
            client_errors: 5,
            clients_refused: 8,
            clients_write_timeouts: 9,
            metrics_connections_refused: 10,
            containers_mapped: 6,
            pods_cached: 3,
            enforcement_mode: "lsm".into(),
            shared_counters: [("nri_mapped".to_string(), 6)].into(),
            mapping_latency_us: LatencySummary {
                count: 6,
                p50: Some(800),
                p99: Some(2500),
                max: None,
            },
            event_latency_us: LatencySummary {
                count: 100,
                p50: Some(40),
                p99: Some(300),
                max: Some(1200),
            },
            policies: crate::policies::PolicyStatus {
                loaded: vec!["a (/p/a.yaml)".into(), "b (/p/b.yaml)".into()],
                errors: vec!["/p/c.yaml: spec: bad".into()],
                memberships: 4,
                read_failures: 5,
                rule_write_failures: 1,
                orphan_memberships_removed: 2,
                resources: Some(crate::policy_mirror::MirrorStatus {
                    synced: true,
                    resources: 1,
                    refused: vec!["PodPolicy resource \"d\": spec: bad".into()],
                    errors: 3,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pod_cache: None,
            programs: Default::default(),
        }
    }

    #[test]
    fn render_carries_every_counter() {
        let text = render(&sample_report());
        for line in [
            r#"podmap_events_seen_total{type="exec"} 10"#,
            r#"podmap_events_seen_total{type="exit"} 9"#,
            r#"podmap_attribution_total{kind="container"} 7"#,
            r#"podmap_attribution_total{kind="host"} 3"#,
            r#"podmap_shared_counters_total{name="nri_mapped"} 6"#,
            "podmap_events_delivered_total 30",
            "podmap_events_lost_kernel_total 1",
            "podmap_events_lost_slow_clients_total 2",
            "podmap_events_held_total 4",
            "podmap_events_held_timed_out_total 1",
            "podmap_events_held_released_early_total 11",
            "podmap_events_shaped_outside_pod_parents_total 12",
            "podmap_events_unknown_pod_mismatch_total 13",
            "podmap_events_held_now 2",
            "podmap_events_held_peak 256",
            "podmap_client_errors_total 5",
            "podmap_clients_refused_total 8",
            "podmap_clients_write_timeouts_total 9",
            "podmap_metrics_connections_refused_total 10",
            "podmap_reader_sleeps_total 7",
            "podmap_reader_woken_total 6",
            "podmap_reader_late_total 1",
            "podmap_clients 2",
            "podmap_containers_mapped 6",
            "podmap_pods_cached 3",
            "podmap_uptime_seconds 12.5",
            "podmap_mapping_latency_samples_total 6",
            r#"podmap_mapping_latency_seconds{quantile="0.5"} 0.0008"#,
            r#"podmap_mapping_latency_seconds{quantile="0.99"} 0.0025"#,
            "podmap_event_latency_samples_total 100",
            r#"podmap_event_latency_seconds{quantile="1"} 0.0012"#,
            "podmap_policies_loaded 2",
            "podmap_policies_refused 1",
            "podmap_policy_memberships 4",
            "podmap_policy_dir_read_failures_total 5",
            "podmap_policy_rule_write_failures_total 1",
            "podmap_policy_orphan_memberships_removed_total 2",
            "podmap_policy_resources 1",
            "podmap_policy_resources_refused 1",
            "podmap_policy_resource_errors_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains(r#"enforcement_mode="lsm""#), "{text}");
        assert!(text.contains("podmap_daemon_info{"), "{text}");
        assert!(
            !text.contains(r#"podmap_mapping_latency_seconds{quantile="1"}"#),
            "an absent max is not rendered as 0"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn routes_only_get_metrics() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"garbage\r\n\r\n"), Route::BadRequest);
    }

    struct Fake;
    impl StatusSource for Fake {
        fn status(&self) -> StatusReport {
            sample_report()
        }
        fn containers(&self) -> serde_json::Value {
            serde_json::json!([])
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
        let server = tokio::spawn(serve_metrics_on(
            listener,
            Arc::new(Fake),
            MetricsConfig::default(),
            stopped,
        ));

        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE));
        let body = ok.split_once("\r\n\r\n").unwrap().1;
        assert!(ok.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("podmap_containers_mapped 6"));

        let missing = get(addr, "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 404 Not Found\r\n"), "{post}");

        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connections_over_the_cap_get_503_and_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = MetricsConfig {
            max_connections: 2,
            ..Default::default()
        };
        let refused = Arc::clone(&config.refused);
        let server = tokio::spawn(serve_metrics_on(listener, Arc::new(Fake), config, stopped));

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
        assert_eq!(MetricsConfig::default().max_connections, 8);
    }
}
