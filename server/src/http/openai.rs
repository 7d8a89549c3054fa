//! OpenAI-compatible `/v1/chat/completions`, `/v1/completions` and `/v1/models` for policy models.
//!
//! A request is one classification: the (last) user message — or the completion `prompt` — is
//! the input, rendered with the model's task instruction and chat template exactly as `Classify`
//! renders it; a system message becomes `Classify.system`. Both go through `PolicyApi` (`classify`,
//! or `classify_stream` for `"stream": true`, as server-sent events ending in `data: [DONE]`), so
//! limits, errors and metrics are gRPC's. The answer carries, besides OpenAI's fields, an `rllr`
//! object with the parsed label, its confidence, the label probabilities and the rationale.
//!
//! Sampling: `temperature`, `top_p`, `max_tokens` / `max_completion_tokens`, `seed`, and the
//! extension `top_k`; without `temperature` the server's default (greedy) is used, not OpenAI's
//! 1.0, because a classifier should answer the same way twice. For two-text tasks (e-SNLI) the
//! extension `text_pair` carries the second text. Options that would change what is returned and
//! are not supported (`n` > 1, `stop`, `tools`, `logprobs`) are refused with 400 naming the field;
//! other OpenAI fields (`user`, `stream_options`, `frequency_penalty`, ...) are accepted and ignored.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rllr_proto::v1::{self, classify_stream_response, policy_service_server::PolicyService};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::wire::{grpc_request, list, ok_json, ApiError, ErrorBody, Http, Json};

/// A chat message's content: a string, or OpenAI's list of typed parts (text parts only).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatMessage {
    /// `system` (or `developer`), `user`; other roles are refused.
    pub role: String,
    pub content: Option<Content>,
}

/// The sampling fields shared by both endpoints.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
pub struct Sampling {
    /// Policy model (default: the server's default policy model).
    #[serde(default)]
    pub model: String,
    /// Sampling temperature; omitted means the server's default (greedy).
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension: top-k sampling.
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    /// Only 1 is supported.
    pub n: Option<u32>,
    /// Not supported (refused when set).
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Not supported (refused when true).
    pub logprobs: Option<bool>,
    /// Extension: the second text of a two-text task (e-SNLI's hypothesis).
    pub text_pair: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Not supported (refused when non-empty).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// Other OpenAI fields: accepted and ignored.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    /// The input text (or a list holding one).
    #[schema(value_type = Object)]
    pub prompt: Value,
    #[serde(flatten)]
    pub sampling: Sampling,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub other: BTreeMap<String, Value>,
}

/// What rllr adds to an OpenAI answer: the classification.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RllrClassification {
    /// The parsed label, or null when the answer line is missing or not a label.
    pub label: Option<String>,
    /// P(label) at the answer position (0 when unparsed).
    pub confidence: f32,
    pub probabilities: Vec<v1::LabelProbability>,
    pub rationale: String,
    pub request_id: String,
    /// Model name → content hash of the weights that answered.
    pub model_revisions: HashMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// A chat completion (non-streaming).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub rllr: RllrClassification,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub finish_reason: String,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// A text completion (non-streaming).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
    pub rllr: RllrClassification,
}

/// One model in `/v1/models`, with its full rllr description.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    pub rllr: v1::ModelInfo,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn text_of(c: &Content) -> String {
    match c {
        Content::Text(t) => t.clone(),
        Content::Parts(parts) => parts
            .iter()
            .filter(|p| p.kind == "text")
            .filter_map(|p| p.text.clone())
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// The ClassifyRequest of `input` (and system text) under `s`.
fn classify_request(
    s: &Sampling,
    input: String,
    system: Option<String>,
) -> Result<v1::ClassifyRequest, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only n = 1 is supported (one classification per request)",
        ));
    }
    if s.stop.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "stop",
            "is not supported: generation stops after the answer line",
        ));
    }
    if s.logprobs == Some(true) {
        return Err(ApiError::invalid(
            "logprobs",
            "is not supported; the label probabilities are in the `rllr` field",
        ));
    }
    Ok(v1::ClassifyRequest {
        inputs: vec![v1::Input {
            text: input,
            text_pair: s.text_pair.clone(),
        }],
        model: s.model.clone(),
        params: Some(v1::GenerationParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            max_new_tokens: s.max_completion_tokens.or(s.max_tokens),
            seed: s.seed.unwrap_or(0),
        }),
        system,
        ..Default::default()
    })
}

fn chat_input(req: &ChatCompletionRequest) -> Result<(String, Option<String>), ApiError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "are not supported"));
    }
    let mut system: Option<String> = None;
    let mut user: Option<String> = None;
    for (i, m) in req.messages.iter().enumerate() {
        let text = m.content.as_ref().map(text_of).unwrap_or_default();
        match m.role.as_str() {
            "system" | "developer" => {
                system = Some(match system {
                    Some(s) => format!("{s}\n{text}"),
                    None => text,
                })
            }
            "user" if user.is_none() => user = Some(text),
            "user" => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}]"),
                    "only one user message is supported: it is the input to classify",
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("'{other}' is not supported; send a system message (optional) and one user message"),
                ))
            }
        }
    }
    let user = user.ok_or_else(|| ApiError::invalid("messages", "must hold one user message"))?;
    Ok((user, system))
}

fn finish_reason(f: &str) -> String {
    match f {
        "length" => "length".into(),
        _ => "stop".into(),
    }
}

fn extra(c: &v1::Classification, md: Option<&v1::Metadata>) -> RllrClassification {
    RllrClassification {
        label: (!c.label.is_empty()).then(|| c.label.clone()),
        confidence: c.confidence,
        probabilities: c.probabilities.clone(),
        rationale: c.rationale.clone(),
        request_id: md.map(|m| m.request_id.clone()).unwrap_or_default(),
        model_revisions: md.map(|m| m.model_revisions.clone()).unwrap_or_default(),
    }
}

fn usage(c: &v1::Classification) -> Usage {
    Usage {
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.generated_tokens,
        total_tokens: c.prompt_tokens + c.generated_tokens,
    }
}

/// Which OpenAI object an answer is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id(self, request_id: &str) -> String {
        match self {
            Kind::Chat => format!("chatcmpl-{request_id}"),
            Kind::Text => format!("cmpl-{request_id}"),
        }
    }

    /// The non-streaming answer for `r`.
    fn answer(self, r: &v1::ClassifyResponse) -> Result<Value, ApiError> {
        let c = r.results.first().ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal: the policy returned no result",
            )
        })?;
        let md = r.metadata.as_ref();
        let id = self.id(&md.map(|m| m.request_id.clone()).unwrap_or_default());
        let v = match self {
            Kind::Chat => serde_json::to_value(ChatCompletion {
                id,
                object: "chat.completion".into(),
                created: now(),
                model: r.model.clone(),
                choices: vec![ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content: c.text.clone(),
                    },
                    finish_reason: finish_reason(&c.finish_reason),
                    logprobs: None,
                }],
                usage: usage(c),
                rllr: extra(c, md),
            }),
            Kind::Text => serde_json::to_value(Completion {
                id,
                object: "text_completion".into(),
                created: now(),
                model: r.model.clone(),
                choices: vec![CompletionChoice {
                    index: 0,
                    text: c.text.clone(),
                    finish_reason: finish_reason(&c.finish_reason),
                    logprobs: None,
                }],
                usage: usage(c),
                rllr: extra(c, md),
            }),
        };
        Ok(v.expect("answers serialise"))
    }

    /// One streamed chunk: a text delta, or (with `done`) the closing chunk.
    fn chunk(
        self,
        id: &str,
        model: &str,
        delta: Option<&str>,
        done: Option<&v1::ClassifyResponse>,
    ) -> Value {
        let c = done.and_then(|r| r.results.first());
        let finish = c.map(|c| finish_reason(&c.finish_reason));
        let mut v = match self {
            Kind::Chat => {
                let mut d = serde_json::Map::new();
                if let Some(t) = delta {
                    d.insert("content".into(), Value::from(t));
                }
                serde_json::json!({
                    "id": id, "object": "chat.completion.chunk", "created": now(), "model": model,
                    "choices": [{"index": 0, "delta": d, "finish_reason": finish, "logprobs": null}],
                })
            }
            Kind::Text => serde_json::json!({
                "id": id, "object": "text_completion", "created": now(), "model": model,
                "choices": [{"index": 0, "text": delta.unwrap_or(""), "finish_reason": finish, "logprobs": null}],
            }),
        };
        if let (Some(c), Some(r)) = (c, done) {
            v["usage"] = serde_json::to_value(usage(c)).expect("usage serialises");
            v["rllr"] =
                serde_json::to_value(extra(c, r.metadata.as_ref())).expect("rllr serialises");
        }
        v
    }
}

async fn run(
    h: Http,
    headers: HeaderMap,
    req: v1::ClassifyRequest,
    stream: bool,
    kind: Kind,
) -> Result<Response, ApiError> {
    if !stream {
        let r = h.policy().classify(grpc_request(&headers, req)?).await?;
        let (md, v, _) = r.into_parts();
        return Ok(ok_json(&md, &kind.answer(&v)?));
    }
    let model_name = h
        .state
        .registry
        .policy_model(&req.model)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let r = h
        .policy()
        .classify_stream(grpc_request(&headers, req)?)
        .await?;
    let (md, mut inner, _) = r.into_parts();
    let request_id = md
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let id = kind.id(&request_id);
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| Ok(Event::default().data(v.to_string()));
        if kind == Kind::Chat {
            let mut first = kind.chunk(&id, &model_name, Some(""), None);
            first["choices"][0]["delta"]["role"] = Value::from("assistant");
            if tx.send(send(first)).await.is_err() {
                return;
            }
        }
        while let Some(item) = inner.next().await {
            let v = match item {
                Ok(v1::ClassifyStreamResponse {
                    event: Some(classify_stream_response::Event::Token(t)),
                }) => kind.chunk(&id, &model_name, Some(&t), None),
                Ok(v1::ClassifyStreamResponse {
                    event: Some(classify_stream_response::Event::Result(r)),
                }) => kind.chunk(&id, &r.model, None, Some(&r)),
                Ok(_) => continue,
                Err(s) => serde_json::to_value(ApiError::from(s).body).expect("errors serialise"),
            };
            if tx.send(send(v)).await.is_err() {
                return; // client gone: dropping `inner` cancels the generation
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    let mut resp = Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response();
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("x-request-id", v);
    }
    Ok(resp)
}

/// OpenAI-compatible chat completion: one classification of the user message.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, body = ChatCompletion, description = "JSON, or server-sent chunks with \"stream\": true"),
        (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn chat_completions(
    State(h): State<Http>,
    headers: HeaderMap,
    Json(req): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let (input, system) = chat_input(&req)?;
    let creq = classify_request(&req.sampling, input, system)?;
    run(h, headers, creq, req.sampling.stream, Kind::Chat).await
}

/// OpenAI-compatible text completion: one classification of the prompt.
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, body = Completion, description = "JSON, or server-sent chunks with \"stream\": true"),
        (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn completions(
    State(h): State<Http>,
    headers: HeaderMap,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    let input = match &req.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => {
            return Err(ApiError::invalid(
                "prompt",
                "must be a string (or a list of one string)",
            ))
        }
    };
    let creq = classify_request(&req.sampling, input, None)?;
    run(h, headers, creq, req.sampling.stream, Kind::Text).await
}

/// OpenAI-compatible model list (every loaded model, with its rllr description).
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = "4XX", body = ErrorBody)))]
pub async fn list_models(State(h): State<Http>, headers: HeaderMap) -> Result<Response, ApiError> {
    let models = list(&h, &headers).await?;
    let list = ModelList {
        object: "list".into(),
        data: models
            .into_iter()
            .map(|m| ModelCard {
                id: m.name.clone(),
                object: "model".into(),
                created: 0,
                owned_by: "rllr".into(),
                rllr: m,
            })
            .collect(),
    };
    Ok(axum::Json(list).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, text: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(Content::Text(text.into())),
        }
    }

    fn chat(messages: Vec<ChatMessage>) -> ChatCompletionRequest {
        ChatCompletionRequest {
            messages,
            sampling: Sampling::default(),
            tools: None,
            other: BTreeMap::new(),
        }
    }

    #[test]
    fn system_and_user_messages_become_system_and_input() {
        let (input, system) = chat_input(&chat(vec![
            msg("system", "be brief"),
            msg("user", "great film"),
        ]))
        .unwrap();
        assert_eq!(input, "great film");
        assert_eq!(system.as_deref(), Some("be brief"));
    }

    #[test]
    fn a_second_user_message_is_refused_by_index() {
        let e = chat_input(&chat(vec![msg("user", "a"), msg("user", "b")])).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("messages[1]"));
    }

    #[test]
    fn assistant_turns_are_refused() {
        let e = chat_input(&chat(vec![msg("user", "a"), msg("assistant", "b")])).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("messages[1].role"));
    }

    #[test]
    fn unsupported_n_is_refused() {
        let s = Sampling {
            n: Some(2),
            ..Default::default()
        };
        let e = classify_request(&s, "x".into(), None).unwrap_err();
        assert_eq!(e.body.error.param.as_deref(), Some("n"));
    }

    #[test]
    fn sampling_fields_map_to_generation_params() {
        let s = Sampling {
            temperature: Some(0.7),
            max_tokens: Some(9),
            max_completion_tokens: Some(5),
            seed: Some(3),
            text_pair: Some("h".into()),
            ..Default::default()
        };
        let r = classify_request(&s, "p".into(), None).unwrap();
        let p = r.params.unwrap();
        assert_eq!(p.temperature, Some(0.7));
        assert_eq!(p.max_new_tokens, Some(5));
        assert_eq!(p.seed, 3);
        assert_eq!(r.inputs[0].text_pair.as_deref(), Some("h"));
    }

    #[test]
    fn text_parts_are_joined() {
        let c = Content::Parts(vec![
            ContentPart {
                kind: "text".into(),
                text: Some("a ".into()),
            },
            ContentPart {
                kind: "image_url".into(),
                text: None,
            },
            ContentPart {
                kind: "text".into(),
                text: Some("b".into()),
            },
        ]);
        assert_eq!(text_of(&c), "a b");
    }
}
