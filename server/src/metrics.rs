//! Prometheus metrics: the recorder, the description of every metric, and the /metrics listener.
//!
//! Names follow TEI's under an `rllr_` prefix (peers.md §3), plus reward histograms per model and
//! head, predicted-label counters and a CoT-length histogram. Every metric is described at start-up
//! so the endpoint is meaningful before the first request. The listener is a few lines of HTTP/1.1
//! on its own address so it works in gRPC-only deployments and can bind port 0 in tests.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global recorder once per process and describe the metrics; returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // TEI's duration buckets: 35 geometric steps from 15 us, x1.5.
            let durations: Vec<f64> = (0..35).map(|i| 1.5e-5 * 1.5f64.powi(i)).collect();
            let sizes: Vec<f64> = (0..14).map(|i| f64::from(1u32 << i)).collect();
            let rewards: Vec<f64> = (-20..=20).map(|i| f64::from(i) * 0.5).collect();
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration".into()), &durations)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("rllr_batch_size".into()), &sizes)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("rllr_batch_tokens".into()),
                        &sizes.iter().map(|s| s * 16.0).collect::<Vec<_>>(),
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("rllr_cot_tokens".into()), &sizes)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("rllr_reward".into()), &rewards)
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("rllr_requests_total", "RPCs received, by method");
    describe_counter!("rllr_request_success_total", "RPCs answered OK, by method");
    describe_counter!("rllr_request_failure_total", "RPCs failed, by method and err (validation, overloaded, deadline, not_found, unauthenticated, permission_denied, unavailable, model_type, inference)");
    describe_counter!(
        "rllr_request_dropped_total",
        "Queued items dropped before running (cancelled, deadline)"
    );
    describe_histogram!("rllr_request_duration", Unit::Seconds, "RPC wall time");
    describe_histogram!(
        "rllr_batch_inference_duration",
        Unit::Seconds,
        "Engine time per batch, by method (score, prefill, decode)"
    );
    describe_histogram!("rllr_batch_size", "Rows per engine batch, by method");
    describe_histogram!(
        "rllr_batch_tokens",
        "Padded tokens per engine batch, by method"
    );
    describe_gauge!("rllr_queue_size", "Items waiting in a model's queue");
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
        "Generated tokens per classification (CoT length)"
    );
    for method in [
        "score",
        "score_stream",
        "compare",
        "classify",
        "classify_stream",
        "classify_batch",
    ] {
        metrics::counter!("rllr_requests_total", "method" => method).increment(0);
        metrics::counter!("rllr_request_success_total", "method" => method).increment(0);
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                handle.run_upkeep();
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Bind `addr` and serve metrics in the background; returns the bound address.
pub async fn start(addr: &str) -> anyhow::Result<SocketAddr> {
    let handle = install();
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, handle));
    Ok(local)
}
