//! What every RPC shares: the registry, limits, auth, the admission semaphore, and the per-call
//! bookkeeping (request id, deadline, timing, the models used, metrics at the edges) that wraps
//! each handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::{Response, Status};

use crate::auth::{Auth, Role};
use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::registry::{ModelEntry, Registry};

/// Shared by all services.
pub struct AppState {
    pub cfg: Arc<ServerConfig>,
    pub registry: Arc<Registry>,
    pub auth: Auth,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    /// When the server started (for `GetServerInfo.uptime_s`).
    pub started: Instant,
    /// The OTLP tracer when `otlp_endpoint` is set.
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
    /// Set when the listener closes; see [`AppState::close_streams`].
    closing: tokio::sync::watch::Sender<bool>,
}

/// One RPC in progress: holds its admission permit (and its place in `rllr_requests_in_flight`)
/// until dropped.
pub struct Call {
    pub id: String,
    pub method: &'static str,
    pub start: Instant,
    pub deadline: Option<Instant>,
    /// `grpc` or `http` (the `protocol` label of the request metrics).
    pub protocol: &'static str,
    /// The models this call used, (name, revision), in the order first used.
    models: Mutex<Vec<(String, String)>>,
    /// The server span (tracing on, and the call came with metadata).
    span: Option<opentelemetry_sdk::trace::Span>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Metadata key the HTTP front sets on the calls it bridges (the `protocol` metrics label). A
/// gRPC caller sending it only relabels its own calls.
pub const PROTOCOL_KEY: &str = "x-rllr-protocol";

/// The protocol a call arrived over.
fn protocol(md: Option<&MetadataMap>) -> &'static str {
    match md
        .and_then(|m| m.get(PROTOCOL_KEY))
        .and_then(|v| v.to_str().ok())
    {
        Some("http") => "http",
        _ => "grpc",
    }
}

/// Longest caller-chosen `x-request-id` kept; longer ones are replaced by a server id.
const MAX_REQUEST_ID: usize = 128;

/// The W3C trace context of a call's metadata, alone: what each message of a stream inherits
/// (not its request id, which is per message).
pub fn trace_context(md: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = md.get(key) {
            out.insert(key, v.clone());
        }
    }
    out
}

/// The caller's `x-request-id` when it is printable ASCII of a sane length.
fn caller_request_id(md: &MetadataMap) -> Option<String> {
    let v = md.get("x-request-id")?.to_str().ok()?.trim();
    let ok = !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| v.to_string())
}

impl AppState {
    pub fn new(cfg: Arc<ServerConfig>, registry: Arc<Registry>) -> Self {
        AppState {
            auth: Auth::new(cfg.api_key.clone(), cfg.admin_key.clone()),
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
            cfg,
            registry,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            tracer: None,
            closing: tokio::sync::watch::channel(false).0,
        }
    }

    /// The listener is closing (SIGTERM, after the drain delay): open streams stop taking new
    /// messages, answer the ones they took, and end with UNAVAILABLE so clients reopen elsewhere.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`AppState::close_streams`] has been called.
    pub async fn closed(&self) {
        let mut r = self.closing.subscribe();
        let _ = r.wait_for(|&c| c).await;
    }

    fn id(&self) -> String {
        format!("req-{:08x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Start a unary call: authenticate, take a permit without waiting (RESOURCE_EXHAUSTED when
    /// `max_concurrent_requests` are in flight), read the deadline.
    pub fn begin(&self, md: &MetadataMap, method: &'static str, role: Role) -> Result<Call> {
        let permit = counted(
            md,
            method,
            self.auth.check(md, role).and_then(|_| {
                self.permits.clone().try_acquire_owned().map_err(|_| {
                    Error::Overloaded(format!(
                        "{} requests in flight (max_concurrent_requests)",
                        self.cfg.max_concurrent_requests
                    ))
                })
            }),
        )?;
        Ok(self.call(Some(md), method, deadline(md), Some(permit)))
    }

    /// Authenticate a call that needs `role`; a refusal is counted as a failed `method` call.
    /// Streaming RPCs call this once for the stream (each message then starts with
    /// [`AppState::begin_stream_item`]).
    pub fn authorize(&self, md: &MetadataMap, method: &'static str, role: Role) -> Result<()> {
        counted(md, method, self.auth.check(md, role))
    }

    fn call(
        &self,
        md: Option<&MetadataMap>,
        method: &'static str,
        deadline: Option<Instant>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Call {
        metrics::gauge!("rllr_requests_in_flight", "method" => method).increment(1.0);
        let id = md.and_then(caller_request_id).unwrap_or_else(|| self.id());
        let protocol = protocol(md);
        let span = match (&self.tracer, md) {
            (Some(t), Some(md)) => Some(crate::otel::server_span(t, md, method, &id, protocol)),
            _ => None,
        };
        Call {
            id,
            method,
            protocol,
            span,
            start: Instant::now(),
            deadline,
            models: Mutex::new(Vec::new()),
            _permit: permit,
        }
    }

    /// Start one message of a stream: streams wait for a permit instead of failing (TEI does the
    /// same), so a long batch job is throttled rather than refused. `trace` holds the stream's
    /// `traceparent`/`tracestate` ([`trace_context`]): each message gets its own server span in
    /// the caller's trace, and its own request id.
    pub async fn begin_stream_item(
        &self,
        method: &'static str,
        deadline: Option<Instant>,
        trace: &MetadataMap,
    ) -> Result<Call> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        Ok(self.call(Some(trace), method, deadline, Some(permit)))
    }

    /// A call that takes no permit (cheap metadata RPCs).
    pub fn begin_light(&self, md: &MetadataMap, method: &'static str, role: Role) -> Result<Call> {
        self.authorize(md, method, role)?;
        Ok(self.call(Some(md), method, deadline(md), None))
    }
}

/// Pass `r` through, counting an error as a failed `method` call (before any model is known).
fn counted<T>(md: &MetadataMap, method: &'static str, r: Result<T>) -> Result<T> {
    if let Err(e) = &r {
        record_failure(method, protocol(Some(md)), "", e);
    }
    r
}

impl Drop for Call {
    fn drop(&mut self) {
        metrics::gauge!("rllr_requests_in_flight", "method" => self.method).decrement(1.0);
    }
}

impl Call {
    /// Note that this call uses `m` (its name is the `model` label of the request metrics; the
    /// first model used wins).
    pub fn uses(&self, m: &ModelEntry) {
        let mut models = self.models.lock().expect("models lock");
        if !models.iter().any(|(n, _)| n == &m.name) {
            models.push((m.name.clone(), m.revision.clone()));
        }
    }

    /// The models used so far, name to revision.
    pub fn model_revisions(&self) -> HashMap<String, String> {
        self.models
            .lock()
            .expect("models lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The `model` label: the first model used, empty before any.
    fn model_label(&self) -> String {
        self.models
            .lock()
            .expect("models lock")
            .first()
            .map(|(n, _)| n.clone())
            .unwrap_or_default()
    }

    /// Record the outcome and turn it into a tonic response (with `x-request-id`).
    pub fn finish<T>(mut self, result: Result<T>) -> std::result::Result<Response<T>, Status> {
        let v = match result {
            Ok(v) => v,
            Err(e) => return Err(self.fail(e)),
        };
        let (elapsed, model) = self.record_duration();
        let proto = self.protocol;
        metrics::counter!("rllr_requests_total", "method" => self.method, "protocol" => proto, "model" => model.clone())
            .increment(1);
        metrics::counter!("rllr_request_success_total", "method" => self.method, "protocol" => proto, "model" => model)
            .increment(1);
        tracing::debug!(request_id = %self.id, method = self.method, ms = elapsed.as_millis() as u64, "ok");
        let mut r = Response::new(v);
        if let Ok(v) = self.id.parse() {
            r.metadata_mut().insert("x-request-id", v);
        }
        self.end_span(tonic::Code::Ok, r.metadata_mut());
        Ok(r)
    }

    /// Record the call's duration; returns it and the `model` label.
    fn record_duration(&self) -> (Duration, String) {
        let elapsed = self.start.elapsed();
        let model = self.model_label();
        metrics::histogram!("rllr_request_duration_seconds", "method" => self.method, "protocol" => self.protocol, "model" => model.clone())
            .record(elapsed.as_secs_f64());
        (elapsed, model)
    }

    /// Run `fut` under this call's deadline: past it, DEADLINE_EXCEEDED and `fut` (with any work it
    /// queued) is dropped. Covers every stage, tokenization included.
    pub async fn within<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match self.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), fut)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::DeadlineExceeded(
                        "the request's deadline passed; its work was dropped".into(),
                    ))
                }),
            None => fut.await,
        }
    }

    /// Record a failure and return its status (with `x-request-id`).
    pub fn fail(mut self, e: Error) -> Status {
        let (_, model) = self.record_duration();
        record_failure(self.method, self.protocol, &model, &e);
        tracing::info!(request_id = %self.id, method = self.method, error = %e, "request failed");
        let mut status: Status = e.into();
        if let Ok(v) = self.id.parse() {
            status.metadata_mut().insert("x-request-id", v);
        }
        self.end_span(status.code(), status.metadata_mut());
        status
    }

    /// End the server span with `code`, echoing its `traceparent` in `md`.
    fn end_span(&mut self, code: tonic::Code, md: &mut MetadataMap) {
        if let Some(span) = self.span.take() {
            if let Some(v) = crate::otel::traceparent(&span).and_then(|t| t.parse().ok()) {
                md.insert("traceparent", v);
            }
            crate::otel::end(span, code, &self.model_label());
        }
    }

    /// Outcome of one stream message, as a status.
    pub fn finish_item<T>(self, result: Result<T>) -> std::result::Result<T, Status> {
        self.finish(result).map(Response::into_inner)
    }
}

/// Count a finished-with-error call: in `rllr_requests_total` (every call ends in exactly one of
/// success or failure) and in `rllr_request_failure_total` by error kind.
fn record_failure(method: &'static str, protocol: &'static str, model: &str, e: &Error) {
    metrics::counter!("rllr_requests_total", "method" => method, "protocol" => protocol, "model" => model.to_string())
        .increment(1);
    metrics::counter!("rllr_request_failure_total", "method" => method, "protocol" => protocol, "model" => model.to_string(), "err" => e.kind())
        .increment(1);
}

/// The deadline from the `grpc-timeout` header, a little early (10%, 5 to 100 ms) so that our
/// DEADLINE_EXCEEDED (and the dropping of queued work) wins the race with tonic's own timeout
/// layer, which answers CANCELLED.
pub fn deadline(md: &MetadataMap) -> Option<Instant> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (d / 10).clamp(Duration::from_millis(5), Duration::from_millis(100));
    Some(Instant::now() + d.saturating_sub(margin))
}

/// Await every reply, failing with DEADLINE_EXCEEDED at `deadline` (dropping the receivers, so the
/// engine skips work it has not started).
pub async fn await_all<T>(
    rxs: Vec<oneshot::Receiver<Result<T>>>,
    deadline: Option<Instant>,
) -> Result<Vec<T>> {
    let all = async {
        let mut out = Vec::with_capacity(rxs.len());
        for rx in rxs {
            out.push(rx.await.map_err(|_| {
                Error::Unavailable("the model's worker stopped before answering".into())
            })??);
        }
        Ok(out)
    };
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), all).await.map_err(|_| {
            Error::DeadlineExceeded("the request's deadline passed; its work was dropped".into())
        })?,
        None => all.await,
    }
}

/// Run blocking work (tokenization, decoding) on tokio's blocking pool, off the engine threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// Nanoseconds of a duration, saturating.
pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
