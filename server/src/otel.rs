//! OpenTelemetry traces over OTLP/gRPC, off unless `otlp_endpoint` is set: one server span per
//! RPC, child of the caller's W3C `traceparent`/`tracestate` (gRPC metadata, or HTTP headers on
//! the HTTP bridge, which become metadata), so a caller's trace continues through rllr-server.
//! The tracer lives in `AppState` (no global provider), so in-process test servers don't share one.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;
use tonic::metadata::MetadataMap;

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {source}")]
pub struct OtelError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The tracer provider (kept to flush at shutdown) and its tracer; `None` when tracing is off.
pub struct Otel {
    pub provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

/// Build the OTLP exporter when `endpoint` is set (must run inside the tokio runtime: the tonic
/// channel lives there). Sampling is parent-based: a caller's sampled flag wins, root spans are
/// sampled with `ratio`.
pub fn init(endpoint: Option<&str>, service: &str, ratio: f64) -> Result<Option<Otel>, OtelError> {
    let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| OtelError {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("rllr-server");
    Ok(Some(Otel { provider, tracer }))
}

struct Md<'a>(&'a MetadataMap);

impl Extractor for Md<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// gRPC service and method of an internal method name (`classify` -> PolicyService/Classify).
pub fn rpc_name(method: &str) -> (&'static str, String) {
    let service = match method {
        "score" | "score_stream" | "compare" | "get_reward" => "rllr.v1.RewardService",
        "classify" | "classify_stream" | "classify_batch" => "rllr.v1.PolicyService",
        _ => "rllr.v1.ModelService",
    };
    let camel = method
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    (service, camel)
}

/// Start the server span of one call, child of the caller's `traceparent` if any.
pub fn server_span(
    tracer: &SdkTracer,
    md: &MetadataMap,
    method: &str,
    request_id: &str,
    protocol: &str,
) -> Span {
    let parent = TraceContextPropagator::new().extract(&Md(md));
    let (service, m) = rpc_name(method);
    tracer
        .span_builder(format!("{service}/{m}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", m),
            KeyValue::new("rllr.request_id", request_id.to_string()),
            KeyValue::new("rllr.protocol", protocol.to_string()),
        ])
        .start_with_context(tracer, &parent)
}

/// End `span` with the call's gRPC status and model.
pub fn end(mut span: Span, code: tonic::Code, model: &str) {
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
    if !model.is_empty() {
        span.set_attribute(KeyValue::new("rllr.model", model.to_string()));
    }
    if code != tonic::Code::Ok {
        span.set_status(Status::error(format!("{code:?}")));
    }
    span.end();
}

/// The `traceparent` of `span`, echoed to the caller.
pub fn traceparent(span: &Span) -> Option<String> {
    let c = span.span_context();
    c.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            c.trace_id(),
            c.span_id(),
            c.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_an_endpoint() {
        assert!(init(None, "rllr-server", 1.0).unwrap().is_none());
        assert!(init(Some("  "), "rllr-server", 1.0).unwrap().is_none());
    }

    #[test]
    fn method_names_map_to_grpc_names() {
        assert_eq!(
            rpc_name("classify_stream"),
            ("rllr.v1.PolicyService", "ClassifyStream".into())
        );
        assert_eq!(rpc_name("score"), ("rllr.v1.RewardService", "Score".into()));
        assert_eq!(
            rpc_name("get_server_info"),
            ("rllr.v1.ModelService", "GetServerInfo".into())
        );
    }

    #[test]
    fn span_continues_the_callers_trace() {
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("t");
        let mut md = MetadataMap::new();
        md.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let span = server_span(&tracer, &md, "classify", "req-1", "grpc");
        let tp = traceparent(&span).unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(!tp.contains("b7ad6b7169203331"), "a new span id: {tp}");
        assert!(tp.ends_with("-01"), "{tp}");
    }
}
