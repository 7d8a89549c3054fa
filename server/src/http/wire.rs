//! What every HTTP route shares: the handler state, the JSON extractor, errors with their HTTP
//! status and OpenAI-shaped body, headers turned into gRPC metadata and back. The routes
//! (`super`, `openai`, `reward`) use these; nothing here knows a route.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rllr_proto::v1::{self, model_service_server::ModelService};
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::models::ModelApi;
use crate::policy::PolicyApi;
use crate::reward::RewardApi;
use crate::state::{AppState, PROTOCOL_KEY};

/// What the handlers share.
#[derive(Clone)]
pub struct Http {
    pub(crate) state: Arc<AppState>,
    pub(crate) draining: Arc<AtomicBool>,
}

impl Http {
    pub(super) fn reward(&self) -> RewardApi {
        RewardApi {
            state: self.state.clone(),
        }
    }
    pub(super) fn policy(&self) -> PolicyApi {
        PolicyApi {
            state: self.state.clone(),
        }
    }
    pub(super) fn models(&self) -> ModelApi {
        ModelApi {
            state: self.state.clone(),
        }
    }
}

/// The body of every error answer (OpenAI's shape, so SDKs show the message).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// One error: the gRPC status message word for word, its code, and the field it names.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The same words as the gRPC status message (`field: reason` for invalid arguments).
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `authentication_error`, `rate_limit_error`,
    /// `server_error`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The gRPC code in snake case (`invalid_argument`, `resource_exhausted`, ...).
    pub code: String,
    /// The request field the error is about, when there is one.
    pub param: Option<String>,
}

/// An error answer: HTTP status + JSON body (+ `x-request-id` when the call had one).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: errors travel in `Result`s of every handler.
    pub body: Box<ErrorBody>,
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error that never reached a gRPC service (body rejected, unknown route, bad shape).
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error: ErrorDetail {
                    param: None,
                    kind: kind_of(status).into(),
                    code: code.into(),
                    message,
                },
            }),
            request_id: None,
        }
    }

    /// A 400 about `field`.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Self {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("{field}: {reason}"),
        );
        e.body.error.param = Some(field.to_string());
        e
    }
}

/// The HTTP status of a gRPC code (grpc-gateway's table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        504 => "timeout",
        _ => "server_error",
    }
}

fn code_name(code: Code) -> String {
    // `Code`'s Debug is CamelCase (`InvalidArgument`): snake-case it.
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let status = http_status(s.code());
        let message = s.message().to_string();
        // An invalid argument reads `field: reason` (crate::error::Error::InvalidArgument).
        let param = (s.code() == Code::InvalidArgument)
            .then(|| message.split_once(": ").map(|(f, _)| f.to_string()))
            .flatten()
            .filter(|f| !f.contains(' '));
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error: ErrorDetail {
                    message,
                    kind: kind_of(status).into(),
                    code: code_name(s.code()),
                    param,
                },
            }),
            request_id: s
                .metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        Status::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body)).into_response();
        if let Some(id) = self.request_id.and_then(|i| HeaderValue::from_str(&i).ok()) {
            r.headers_mut().insert("x-request-id", id);
        }
        r
    }
}

/// A JSON body whose rejections are [`ApiError`]s: 413 over `http_max_body_bytes`, 415 without a
/// JSON content type, 400 naming the field for anything serde refuses.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    match r {
        JsonRejection::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "body: larger than http_max_body_bytes; send fewer items per request or use the streaming gRPC RPCs",
            )
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content-type: must be application/json",
        ),
        JsonRejection::JsonDataError(_) => {
            // axum reports the path of the field serde refused: `... body into the target type:
            // items[0].label: invalid type: ...`.
            let detail = text
                .split_once("target type: ")
                .map(|(_, d)| d.to_string())
                .unwrap_or(text);
            let param = detail
                .split_once(": ")
                .map(|(f, _)| f.to_string())
                .filter(|f| !f.contains(' '));
            let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", detail);
            e.body.error.param = param;
            e
        }
        _ => ApiError::new(
            r.status().max(StatusCode::BAD_REQUEST),
            "invalid_argument",
            format!("body: {text}"),
        ),
    }
}

/// The gRPC metadata of an HTTP call: its headers, the `x-request-timeout` deadline (seconds) as
/// `grpc-timeout`, and the protocol label.
pub fn metadata(headers: &HeaderMap) -> Result<MetadataMap, ApiError> {
    let mut md = MetadataMap::from_headers(headers.clone());
    md.remove("grpc-timeout");
    if let Some(v) = headers.get("x-request-timeout") {
        let secs = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| {
                ApiError::invalid("x-request-timeout", "must be a positive number of seconds")
            })?;
        let ms = (secs * 1000.0).ceil().min(99_999_999.0) as u64;
        md.insert(
            "grpc-timeout",
            format!("{ms}m").parse().expect("digits are ASCII"),
        );
    }
    md.insert(PROTOCOL_KEY, "http".parse().expect("ASCII"));
    Ok(md)
}

/// A tonic request carrying `msg` with the call's metadata.
pub fn grpc_request<T>(headers: &HeaderMap, msg: T) -> Result<tonic::Request<T>, ApiError> {
    Ok(tonic::Request::from_parts(
        metadata(headers)?,
        tonic::Extensions::default(),
        msg,
    ))
}

/// A JSON answer with the call's `x-request-id`.
pub fn ok_json<T: Serialize>(md: &MetadataMap, v: &T) -> Response {
    let mut r = axum::Json(v).into_response();
    if let Some(id) = md.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if let Ok(h) = HeaderValue::from_str(id) {
            r.headers_mut().insert("x-request-id", h);
        }
    }
    r
}

/// Turn a unary gRPC answer into an HTTP one.
pub(super) fn unary<T: Serialize>(r: Result<tonic::Response<T>, Status>) -> Response {
    match r {
        Ok(resp) => {
            let (md, v, _) = resp.into_parts();
            ok_json(&md, &v)
        }
        Err(s) => ApiError::from(s).into_response(),
    }
}

/// The ModelService list, for the OpenAI-style `/v1/models`.
pub(crate) async fn list(h: &Http, headers: &HeaderMap) -> Result<Vec<v1::ModelInfo>, ApiError> {
    let r = h
        .models()
        .list_models(grpc_request(headers, v1::ListModelsRequest {})?)
        .await?;
    Ok(r.into_inner().models)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn invalid_argument_names_its_field() {
        let e = ApiError::from(Status::invalid_argument(
            "items[2].label: 'x' is not one of the labels",
        ));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body.error.param.as_deref(), Some("items[2].label"));
        assert_eq!(e.body.error.code, "invalid_argument");
        assert_eq!(
            e.body.error.message,
            "items[2].label: 'x' is not one of the labels"
        );
    }

    #[test]
    fn timeout_header_becomes_the_grpc_deadline() {
        let mut h = HeaderMap::new();
        h.insert("x-request-timeout", "1.5".parse().unwrap());
        let md = metadata(&h).unwrap();
        assert_eq!(md.get("grpc-timeout").unwrap(), "1500m");
        assert_eq!(md.get(PROTOCOL_KEY).unwrap(), "http");
        h.insert("x-request-timeout", "soon".parse().unwrap());
        let e = metadata(&h).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("x-request-timeout"));
    }
}
