//! Prometheus metrics: the recorder, the description of every metric, and the /metrics listener.
//!
//! Names follow TEI's under an `rllr_` prefix (peers.md §3) and the Prometheus conventions (unit
//! suffixes such as `_seconds`, `_total` on counters, a `model` label where a model is involved),
//! plus reward histograms per model and head, predicted-label counters, a CoT-length histogram,
//! `rllr_model_ready` and `rllr_build_info`. Every metric is described at start-up so the endpoint
//! is meaningful before the first request.
//!
//! The endpoint is `metrics-exporter-prometheus`'s own HTTP listener, run on a thread of its own
//! (with a one-thread runtime) so scrapes are answered however busy the gRPC runtime is. The
//! recorder is process-global, so there is one listener per process: later servers in the same
//! process (tests) share it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The names the dashboard and alerts may rely on (a test checks a live scrape against them).
pub const METRIC_NAMES: &[&str] = &[
    "rllr_requests_total",
    "rllr_request_success_total",
    "rllr_request_failure_total",
    "rllr_request_dropped_total",
    "rllr_request_duration_seconds",
    "rllr_requests_in_flight",
    "rllr_batch_inference_duration_seconds",
    "rllr_batch_size",
    "rllr_batch_tokens",
    "rllr_queue_depth",
    "rllr_queue_capacity",
    "rllr_generated_tokens_total",
    "rllr_reward",
    "rllr_predicted_label_total",
    "rllr_cot_tokens",
    "rllr_model_ready",
    "rllr_build_info",
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static LISTENER: OnceLock<Result<SocketAddr, String>> = OnceLock::new();

fn builder() -> PrometheusBuilder {
    // TEI's duration buckets: 35 geometric steps from 15 us, x1.5.
    let durations: Vec<f64> = (0..35).map(|i| 1.5e-5 * 1.5f64.powi(i)).collect();
    let sizes: Vec<f64> = (0..14).map(|i| f64::from(1u32 << i)).collect();
    let rewards: Vec<f64> = (-20..=20).map(|i| f64::from(i) * 0.5).collect();
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &durations)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("rllr_batch_size".into()), &sizes))
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("rllr_batch_tokens".into()),
                &sizes.iter().map(|s| s * 16.0).collect::<Vec<_>>(),
            )
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("rllr_cot_tokens".into()), &sizes))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full("rllr_reward".into()), &rewards))
        .expect("bucket lists are non-empty")
}

/// Install `recorder` globally (once per process) and describe the metrics.
fn set_global(recorder: metrics_exporter_prometheus::PrometheusRecorder) -> PrometheusHandle {
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
    }
    describe();
    handle
}

/// Install the global recorder without a listener (benchmarks, embedding); returns its handle.
pub fn install() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| set_global(builder().build_recorder()))
        .clone()
}

/// Start the exporter's /metrics listener on `addr` with the global recorder; returns the bound
/// address. Port 0 picks a free port. Only the first call in a process binds; later calls return
/// the address already serving (the recorder, and so the metrics, are process-wide anyway).
pub fn start(addr: &str) -> anyhow::Result<SocketAddr> {
    let r = LISTENER.get_or_init(|| spawn_listener(addr).map_err(|e| format!("{e:#}")));
    match r {
        Ok(a) => Ok(*a),
        Err(e) => Err(anyhow::anyhow!("metrics listener on {addr}: {e}")),
    }
}

fn spawn_listener(addr: &str) -> anyhow::Result<SocketAddr> {
    anyhow::ensure!(
        RECORDER.get().is_none(),
        "the metrics recorder was installed without a listener"
    );
    let mut sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("'{addr}' resolves to no address"))?;
    if sock.port() == 0 {
        // The exporter binds by address, so ask the OS for a free port first (tests use port 0).
        sock = std::net::TcpListener::bind(sock)?.local_addr()?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("rllr-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("metrics runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                // `build` binds the listener and spawns the upkeep task on this runtime.
                match builder().with_http_listener(sock).build() {
                    Ok((recorder, exporter)) => {
                        let handle = RECORDER.get_or_init(|| set_global(recorder)).clone();
                        let _ = tx.send(Ok(handle));
                        if let Err(e) = exporter.await {
                            tracing::error!(?e, "the /metrics listener stopped");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::anyhow!("{e}")));
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| anyhow::anyhow!("the metrics thread died while starting"))??;
    Ok(sock)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "rllr_requests_total",
        "RPCs finished (successfully or not), by method and model"
    );
    describe_counter!(
        "rllr_request_success_total",
        "RPCs answered OK, by method and model"
    );
    describe_counter!("rllr_request_failure_total", "RPCs failed, by method, model and err (validation, overloaded, deadline, not_found, unauthenticated, permission_denied, unavailable, model_type, inference)");
    describe_counter!(
        "rllr_request_dropped_total",
        "Queued items dropped before running, by model and reason (cancelled, deadline)"
    );
    describe_histogram!(
        "rllr_request_duration_seconds",
        Unit::Seconds,
        "RPC wall time, by method and model"
    );
    describe_gauge!(
        "rllr_requests_in_flight",
        "RPCs (or stream messages) being served now, by method"
    );
    describe_histogram!(
        "rllr_batch_inference_duration_seconds",
        Unit::Seconds,
        "Engine time per batch, by model and method (score, prefill, decode)"
    );
    describe_histogram!(
        "rllr_batch_size",
        "Rows per engine batch, by model and method"
    );
    describe_histogram!(
        "rllr_batch_tokens",
        "Padded tokens per engine batch, by model and method"
    );
    describe_gauge!("rllr_queue_depth", "Items waiting in a model's queue");
    describe_gauge!(
        "rllr_queue_capacity",
        "Items a model's queue holds before RESOURCE_EXHAUSTED (queue_capacity)"
    );
    describe_counter!("rllr_generated_tokens_total", "Tokens generated, by model");
    describe_histogram!(
        "rllr_reward",
        "Rewards returned, by model, head and kind (label, rationale, mixed)"
    );
    describe_counter!(
        "rllr_predicted_label_total",
        "Classifications returned, by model and label"
    );
    describe_histogram!(
        "rllr_cot_tokens",
        "Generated tokens per classification (CoT length), by model"
    );
    describe_gauge!(
        "rllr_model_ready",
        "1: the model's worker is serving; 0: loaded but its worker stopped; -1: unloaded"
    );
    describe_gauge!(
        "rllr_build_info",
        "Always 1; the labels say which build is running (version, git_sha)"
    );
    metrics::gauge!("rllr_build_info", "version" => crate::VERSION, "git_sha" => crate::GIT_SHA)
        .set(1.0);
    for method in [
        "score",
        "score_stream",
        "compare",
        "classify",
        "classify_stream",
        "classify_batch",
    ] {
        // Same label set as the series requests write (state.rs), so no series lacks a label.
        metrics::counter!("rllr_requests_total", "method" => method, "protocol" => "grpc", "model" => "")
            .increment(0);
        metrics::counter!("rllr_request_success_total", "method" => method, "protocol" => "grpc", "model" => "")
            .increment(0);
        metrics::gauge!("rllr_requests_in_flight", "method" => method).set(0.0);
    }
}
