//! The HTTP/JSON front: the same services as gRPC for callers that speak HTTP.
//!
//! Every model call goes through the gRPC service implementations (`RewardApi`, `PolicyApi`,
//! `ModelApi`) or, for `/get_reward`, the same `reward::score_items` that `Score` uses: the HTTP
//! layer only moves JSON in and out. Headers become gRPC metadata (`authorization`,
//! `x-request-id`, and `x-request-timeout` in seconds as the call's deadline), so auth, limits,
//! validation, deadlines, request ids and metrics are exactly gRPC's; each call is labelled
//! `protocol="http"` in the request metrics. A failure keeps the gRPC message word for word and
//! gets the HTTP status of its gRPC code (the mapping grpc-gateway uses), in an OpenAI-style body:
//! `{"error": {"message", "type", "code", "param"}}` where `param` names the offending field.
//!
//! Routes: `POST /v1/score`, `/v1/compare`, `/v1/classify` (the gRPC messages as JSON, proto field
//! names), `POST /get_reward` (OpenRLHF's remote reward model), `POST /v1/chat/completions` and
//! `/v1/completions` (OpenAI-compatible, streaming with SSE), `GET /v1/models`, `GET /health`
//! (live), `GET /ready` (every configured model ready, not draining), `GET /openapi.json`.
//!
//! Its own port (`http_listen`): gRPC keeps its HTTP/2-only listener and TLS settings, and an
//! operator can expose, firewall or probe the two apart.

pub mod openai;
pub mod reward;
mod wire;

use wire::{grpc_request, unary};
pub use wire::{http_status, ApiError, ErrorBody, ErrorDetail, Http, Json};

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rllr_proto::v1::{
    self, policy_service_server::PolicyService, reward_service_server::RewardService,
};
use tokio::net::TcpListener;
use utoipa::OpenApi;

/// The router of the HTTP front.
pub fn router(http: Http) -> Router {
    let limit = http.state.cfg.http_max_body_bytes;
    Router::new()
        .route("/v1/score", post(score))
        .route("/v1/compare", post(compare))
        .route("/v1/classify", post(classify))
        .route("/get_reward", post(reward::get_reward))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::list_models))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(http)
}

/// Bind `addr` and serve until `shutdown` resolves (in-flight requests finish first).
pub async fn serve(
    addr: &str,
    http: Http,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the HTTP listener on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = router(http);
    let join = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, join))
}

/// The OpenAPI document: generated from the request and response types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rllr HTTP API",
        description = "Label-sensitive reward scoring and chain-of-thought classification over HTTP/JSON: the gRPC messages of rllr.v1 as JSON, OpenRLHF's remote reward model, and OpenAI-compatible completions."
    ),
    paths(
        score,
        compare,
        classify,
        reward::get_reward,
        openai::chat_completions,
        openai::completions,
        openai::list_models,
        health,
        ready
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
async fn openapi() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

/// Score (input, rationale, label) items with the label (and rationale) reward model.
#[utoipa::path(post, path = "/v1/score", request_body = v1::ScoreRequest,
    responses((status = 200, body = v1::ScoreResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
async fn score(
    State(h): State<Http>,
    headers: HeaderMap,
    Json(req): Json<v1::ScoreRequest>,
) -> Result<Response, ApiError> {
    Ok(unary(h.reward().score(grpc_request(&headers, req)?).await))
}

/// Compare two candidates for one input: P(a ≻ b) from the mixed rewards.
#[utoipa::path(post, path = "/v1/compare", request_body = v1::CompareRequest,
    responses((status = 200, body = v1::CompareResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
async fn compare(
    State(h): State<Http>,
    headers: HeaderMap,
    Json(req): Json<v1::CompareRequest>,
) -> Result<Response, ApiError> {
    Ok(unary(
        h.reward().compare(grpc_request(&headers, req)?).await,
    ))
}

/// Classify inputs with a chain-of-thought policy (rationale, then the label and its probabilities).
#[utoipa::path(post, path = "/v1/classify", request_body = v1::ClassifyRequest,
    responses((status = 200, body = v1::ClassifyResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
async fn classify(
    State(h): State<Http>,
    headers: HeaderMap,
    Json(req): Json<v1::ClassifyRequest>,
) -> Result<Response, ApiError> {
    Ok(unary(
        h.policy().classify(grpc_request(&headers, req)?).await,
    ))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "the process is up")))]
async fn health() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Readiness: every configured model is loaded and ready, and the server is not draining.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "ready"), (status = 503, description = "not ready: the body lists what is missing")))]
async fn ready(State(h): State<Http>) -> Response {
    let loaded = h.state.registry.list();
    let mut missing: Vec<String> = h
        .state
        .cfg
        .models
        .iter()
        .filter(|m| !loaded.iter().any(|e| e.name == m.name && e.ready()))
        .map(|m| m.name.clone())
        .collect();
    let unready: Vec<String> = loaded
        .iter()
        .filter(|e| !e.ready() && !missing.contains(&e.name))
        .map(|e| e.name.clone())
        .collect();
    missing.extend(unready);
    let draining = h.draining.load(Ordering::Acquire);
    let body = serde_json::json!({
        "ready": missing.is_empty() && !draining,
        "draining": draining,
        "not_ready": missing,
    });
    let status = if missing.is_empty() && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "not found: {} {} (see GET /openapi.json for the routes)",
            req.method(),
            req.uri().path()
        ),
    )
}
