//! The OTLP sink: batches of log records sent to a collector over gRPC or HTTP/protobuf, with
//! retries and exponential backoff. The protocol's own types (opentelemetry-proto) are used on
//! both transports, so any conforming collector receives the same.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message as _;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

use super::buffer::BoundedBuffer;
use super::record::{request, Pending};
use super::{Counters, OtlpProtocol};

/// How long one export request may take before it counts as failed (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("the OTLP endpoint {0:?} is not a URL this exporter can use: {1}")]
    Endpoint(String, String),
    /// Worth another attempt: the collector is away, overloaded or restarting.
    #[error("{0}")]
    Transient(String),
    /// The collector refused the request for good (malformed, unauthorised): retrying the
    /// same bytes would be refused again.
    #[error("{0}")]
    Permanent(String),
}

/// Where and how to send.
// One value per process, never moved in a hot path: boxing a variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Transport {
    Grpc(LogsServiceClient<Channel>),
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
        uri: hyper::Uri,
    },
}

/// `host:port` or a URL; plain-text only (http://). OTLP/HTTP posts to `/v1/logs` when the URL
/// has no path of its own, as OpenTelemetry's exporters do with a base endpoint.
pub fn endpoint_url(endpoint: &str, protocol: OtlpProtocol) -> Result<String, OtlpError> {
    let bad = |why: &str| OtlpError::Endpoint(endpoint.to_string(), why.to_string());
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    if url.starts_with("https://") {
        return Err(bad(
            "TLS is not supported yet: send to a plain-text receiver (a node-local or \
             in-cluster collector)",
        ));
    }
    let uri: hyper::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(bad("expected http://HOST:PORT"));
    }
    Ok(match protocol {
        OtlpProtocol::Http if matches!(uri.path(), "" | "/") => {
            format!("{}/v1/logs", url.trim_end_matches('/'))
        }
        _ => url,
    })
}

impl Transport {
    pub fn new(endpoint: &str, protocol: OtlpProtocol) -> Result<Self, OtlpError> {
        let url = endpoint_url(endpoint, protocol)?;
        let bad = |e: &dyn std::fmt::Display| OtlpError::Endpoint(url.clone(), e.to_string());
        Ok(match protocol {
            OtlpProtocol::Grpc => {
                // Lazy: the channel connects at the first request and again after the collector
                // went away, so a collector that starts after the exporter or restarts needs
                // nothing of ours beyond the retry.
                let channel = Endpoint::from_shared(url.clone())
                    .map_err(|e| bad(&e))?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(REQUEST_TIMEOUT)
                    .connect_lazy();
                Transport::Grpc(LogsServiceClient::new(channel))
            }
            OtlpProtocol::Http => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(Duration::from_secs(5)));
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Transport::Http {
                    client,
                    uri: url.parse().map_err(|e| bad(&e))?,
                }
            }
        })
    }

    /// Sends one request; Ok holds how many records the collector rejected (partial success).
    async fn export(&mut self, req: ExportLogsServiceRequest) -> Result<u64, OtlpError> {
        let response = match self {
            Transport::Grpc(client) => match client.export(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    use tonic::Code::*;
                    let msg = format!("gRPC {:?}: {}", status.code(), status.message());
                    // The codes OTLP/gRPC names as retryable; and any status made on this side
                    // from a transport failure (it has a source: a connection reset while the
                    // collector stops comes as Unknown), never sent by the collector itself.
                    return Err(match status.code() {
                        Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange
                        | Unavailable | DataLoss => OtlpError::Transient(msg),
                        _ if std::error::Error::source(&status).is_some() => {
                            OtlpError::Transient(msg)
                        }
                        _ => OtlpError::Permanent(msg),
                    });
                }
            },
            Transport::Http { client, uri } => {
                let body = Bytes::from(req.encode_to_vec());
                let http_req = hyper::Request::post(uri.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(body))
                    .map_err(|e| OtlpError::Permanent(format!("building the request: {e}")))?;
                let send = async {
                    let resp = client
                        .request(http_req)
                        .await
                        .map_err(|e| OtlpError::Transient(format!("POST {uri}: {e:#}")))?;
                    let status = resp.status();
                    let body = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| OtlpError::Transient(format!("reading the reply: {e}")))?
                        .to_bytes();
                    Ok::<_, OtlpError>((status, body))
                };
                let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, send)
                    .await
                    .map_err(|_| OtlpError::Transient(format!("POST {uri}: timed out")))??;
                if !status.is_success() {
                    let msg = format!(
                        "POST {uri}: {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    );
                    // The statuses OTLP/HTTP names as retryable.
                    return Err(match status.as_u16() {
                        429 | 502 | 503 | 504 => OtlpError::Transient(msg),
                        _ => OtlpError::Permanent(msg),
                    });
                }
                // A JSON or empty success body is still a success; only protobuf is decoded.
                ExportLogsServiceResponse::decode(body).unwrap_or_default()
            }
        };
        Ok(response
            .partial_success
            .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0)))
    }
}

/// The buffer shared by the reader (which pushes) and the sender (which takes).
pub struct Queue {
    pub buffer: Mutex<BoundedBuffer<Pending>>,
    pub notify: Notify,
}

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self {
            buffer: Mutex::new(BoundedBuffer::new(capacity)),
            notify: Notify::new(),
        }
    }

    /// Queues a record; false when the buffer was full (the record is dropped and counted).
    pub fn push(&self, p: Pending) -> bool {
        let queued = self
            .buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
        self.notify.notify_one();
        queued
    }

    fn len(&self) -> usize {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take(&self, n: usize) -> Vec<Pending> {
        self.buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(n)
    }
}

pub struct Settings {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub max_retries: usize,
}

/// Sends what the queue receives until `stop` is notified and the queue is drained (or
/// `drain_deadline` after the stop passes). Every record ends up counted: exported, or dropped
/// (retries exhausted, refused, rejected by the collector, or out of time at the end).
pub async fn run(
    mut transport: Transport,
    queue: Arc<Queue>,
    settings: Settings,
    counters: Arc<Counters>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    drain_deadline: Duration,
) {
    let mut stopped = stop.subscribe();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let stopping = *stopped.borrow();
        if stopping && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + drain_deadline);
        }
        if queue.len() == 0 {
            if stopping {
                return;
            }
            tokio::select! {
                _ = queue.notify.notified() => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        // A batch fills up to its size or for its time, whichever comes first; at shutdown it
        // goes at once.
        if !stopping && queue.len() < settings.batch_size {
            let window = tokio::time::sleep(settings.batch_timeout);
            tokio::pin!(window);
            while queue.len() < settings.batch_size {
                tokio::select! {
                    _ = &mut window => break,
                    _ = queue.notify.notified() => {}
                    _ = stopped.changed() => break,
                }
            }
        }
        let batch = queue.take(settings.batch_size);
        send_with_retry(
            &mut transport,
            batch,
            &settings,
            &counters,
            deadline,
            &mut stopped,
        )
        .await;
    }
}

async fn send_with_retry(
    transport: &mut Transport,
    batch: Vec<Pending>,
    settings: &Settings,
    counters: &Counters,
    mut deadline: Option<tokio::time::Instant>,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) {
    let n = batch.len() as u64;
    let req = request(batch);
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(settings.max_retries)
        .build();
    loop {
        // The request is cloned per attempt: a failed attempt consumed its copy.
        match transport.export(req.clone()).await {
            Ok(rejected) => {
                let rejected = rejected.min(n);
                counters.exported.fetch_add(n - rejected, Ordering::Relaxed);
                if rejected > 0 {
                    counters.dropped.fetch_add(rejected, Ordering::Relaxed);
                    tracing::warn!(rejected, "the collector rejected records of a batch");
                }
                return;
            }
            Err(OtlpError::Transient(msg)) => {
                let delay = delays.next();
                let out_of_time = deadline
                    .is_some_and(|d| tokio::time::Instant::now() + delay.unwrap_or_default() >= d);
                match delay {
                    Some(delay) if !out_of_time => {
                        tracing::warn!(records = n, ?delay, "OTLP export failed, retrying: {msg}");
                        counters.retried.fetch_add(n, Ordering::Relaxed);
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            // A stop during the wait: one more attempt now, then the deadline
                            // governs.
                            _ = stopped.changed(), if deadline.is_none() => {
                                deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                            }
                        }
                    }
                    _ => {
                        counters.dropped.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(records = n, "OTLP export failed, batch dropped: {msg}");
                        return;
                    }
                }
            }
            Err(e) => {
                counters.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(records = n, "OTLP export refused, batch dropped: {e}");
                return;
            }
        }
    }
}
