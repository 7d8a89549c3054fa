//! Traces reach a collector: a fake OTLP/gRPC collector on 127.0.0.1, a server exporting to it,
//! calls with a caller's `traceparent`; after the graceful shutdown (which flushes the exporter)
//! the collector holds the server spans, in the caller's trace, children of its span: a unary
//! Classify, every message of a ClassifyBatch stream, and an HTTP `POST /v1/classify`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use rllr_proto::v1::{self, policy_service_client::PolicyServiceClient};

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for r in req.into_inner().resource_spans {
            for s in r.scope_spans {
                spans.extend(s.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A fake collector on 127.0.0.1 and a server exporting to it (model root kept alive with it).
async fn traced_server() -> (Collector, rllr_server::RunningServer, tempfile::TempDir) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let caddr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.otlp_endpoint = Some(format!("http://{caddr}"));
    let server = start(cfg).await;
    (collector, server, root)
}

/// Shut `server` down (flushing its spans) and return the spans named `name`.
async fn spans_after_shutdown(
    server: rllr_server::RunningServer,
    collector: &Collector,
    name: &str,
) -> Vec<Span> {
    server
        .shutdown_after(Duration::ZERO, Duration::from_secs(10))
        .await
        .unwrap();
    let spans = collector.0.lock().unwrap().clone();
    let named: Vec<Span> = spans.iter().filter(|s| s.name == name).cloned().collect();
    assert!(!named.is_empty(), "no {name} span among {spans:?}");
    named
}

/// The value of attribute `k` of `s`, debug-printed.
fn attr(s: &Span, k: &str) -> String {
    s.attributes
        .iter()
        .find(|a| a.key == k)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| panic!("no {k} in {:?}", s.attributes))
}

fn traceparent() -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{TRACE}-{PARENT}-01").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classify_span_continues_the_callers_trace() {
    let (collector, server, _root) = traced_server().await;
    let mut p = PolicyServiceClient::connect(url(&server)).await.unwrap();
    let mut req = tonic::Request::new(v1::ClassifyRequest {
        inputs: vec![input("A man sleeps.", "A person rests.").unwrap()],
        model: "pol".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("traceparent", traceparent());
    req.metadata_mut()
        .insert("x-request-id", "otel-test-1".parse().unwrap());
    let r = p.classify(req).await.unwrap();
    let echoed = r.metadata().get("traceparent").unwrap().to_str().unwrap();
    assert!(echoed.starts_with(&format!("00-{TRACE}-")), "{echoed}");
    let spans = spans_after_shutdown(server, &collector, "rllr.v1.PolicyService/Classify").await;
    let s = &spans[0];
    assert_eq!(hex(&s.trace_id), TRACE);
    assert_eq!(hex(&s.parent_span_id), PARENT);
    assert_eq!(echoed, format!("00-{TRACE}-{}-01", hex(&s.span_id)));
    let attr = |k: &str| attr(s, k);
    assert!(attr("rpc.system").contains("\"grpc\""));
    assert!(attr("rpc.service").contains("rllr.v1.PolicyService"));
    assert!(attr("rpc.method").contains("Classify"));
    assert!(attr("rpc.grpc.status_code").contains("IntValue(0)"));
    assert!(attr("rllr.request_id").contains("otel-test-1"));
    assert!(attr("rllr.model").contains("pol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_batch_stream_gets_a_span_in_the_callers_trace() {
    let (collector, server, _root) = traced_server().await;
    let mut p = PolicyServiceClient::connect(url(&server)).await.unwrap();
    let msgs: Vec<v1::ClassifyRequest> = (0..3)
        .map(|i| v1::ClassifyRequest {
            inputs: vec![input(&format!("A man number {i} sleeps."), "A person rests.").unwrap()],
            model: "pol".into(),
            ..Default::default()
        })
        .collect();
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.metadata_mut().insert("traceparent", traceparent());
    let mut answers = p.classify_batch(req).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = answers.message().await.unwrap() {
        assert_eq!(m.results.len(), 1);
        n += 1;
    }
    assert_eq!(n, 3);
    let spans =
        spans_after_shutdown(server, &collector, "rllr.v1.PolicyService/ClassifyBatch").await;
    assert_eq!(spans.len(), 3, "one span per message: {spans:?}");
    for s in &spans {
        assert_eq!(hex(&s.trace_id), TRACE);
        assert_eq!(hex(&s.parent_span_id), PARENT);
        assert!(attr(s, "rpc.grpc.status_code").contains("IntValue(0)"));
    }
    let ids: std::collections::HashSet<String> =
        spans.iter().map(|s| attr(s, "rllr.request_id")).collect();
    assert_eq!(ids.len(), 3, "each message has its own request id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_call_continues_the_traceparent_header() {
    let (collector, server, _root) = traced_server().await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let body = serde_json::json!({
        "inputs": [{"text": "A man sleeps.", "text_pair": "A person rests."}],
        "model": "pol",
    });
    let r = post_json(&server, "/v1/classify", &[("traceparent", &tp)], &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let spans = spans_after_shutdown(server, &collector, "rllr.v1.PolicyService/Classify").await;
    let s = &spans[0];
    assert_eq!(hex(&s.trace_id), TRACE);
    assert_eq!(hex(&s.parent_span_id), PARENT);
    assert!(attr(s, "rllr.protocol").contains("\"http\""));
}
