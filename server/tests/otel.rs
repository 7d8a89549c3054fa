//! Traces reach a collector: a fake OTLP/gRPC collector on 127.0.0.1, a server exporting to it,
//! a Classify with a caller's `traceparent`; after the graceful shutdown (which flushes the
//! exporter) the collector holds the server span, in the caller's trace, child of its span.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classify_span_continues_the_callers_trace() {
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
    let mut p = PolicyServiceClient::connect(url(&server)).await.unwrap();
    let mut req = tonic::Request::new(v1::ClassifyRequest {
        inputs: vec![input("A man sleeps.", "A person rests.").unwrap()],
        model: "pol".into(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    req.metadata_mut()
        .insert("x-request-id", "otel-test-1".parse().unwrap());
    let r = p.classify(req).await.unwrap();
    let echoed = r.metadata().get("traceparent").unwrap().to_str().unwrap();
    assert!(echoed.starts_with(&format!("00-{TRACE}-")), "{echoed}");
    server
        .shutdown_after(Duration::ZERO, Duration::from_secs(10))
        .await
        .unwrap();

    let spans = collector.0.lock().unwrap().clone();
    let s = spans
        .iter()
        .find(|s| s.name == "rllr.v1.PolicyService/Classify")
        .unwrap_or_else(|| panic!("no Classify span among {spans:?}"));
    assert_eq!(hex(&s.trace_id), TRACE);
    assert_eq!(hex(&s.parent_span_id), PARENT);
    assert_eq!(echoed, format!("00-{TRACE}-{}-01", hex(&s.span_id)));
    let attr = |k: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|| panic!("no {k} in {:?}", s.attributes))
    };
    assert!(attr("rpc.system").contains("\"grpc\""));
    assert!(attr("rpc.service").contains("rllr.v1.PolicyService"));
    assert!(attr("rpc.method").contains("Classify"));
    assert!(attr("rpc.grpc.status_code").contains("IntValue(0)"));
    assert!(attr("rllr.request_id").contains("otel-test-1"));
    assert!(attr("rllr.model").contains("pol"));
}
