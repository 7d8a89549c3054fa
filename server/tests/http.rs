//! The HTTP/JSON front over real sockets with tiny random models: the same answers as gRPC for
//! the same requests, OpenRLHF's `/get_reward` shape, the OpenAI-compatible endpoints (plain and
//! SSE), the bad-input table with HTTP statuses, deadlines, 503 from a closed registry, readiness,
//! the OpenAPI document and the `protocol` metrics label.

mod common;

use std::time::Duration;

use common::*;
use rllr_core::response::ResponseFormat;
use rllr_core::task::TaskInput;
use rllr_core::template::ChatTemplate;
use rllr_proto::v1::{
    self, policy_service_client::PolicyServiceClient, reward_service_client::RewardServiceClient,
};
use serde_json::{json, Value};

async fn channel(s: &rllr_server::RunningServer) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url(s))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn score_json(label_model: &str, items: Value) -> Value {
    json!({"label_model": label_model, "items": items})
}

fn nli_item(rationale: &str, label: &str) -> Value {
    json!({"input": {"text": "A man sleeps.", "text_pair": "A person rests."}, "rationale": rationale, "label": label})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn score_over_http_equals_grpc() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let items = json!([
        nli_item("sleeping is resting", "entailment"),
        nli_item("no", "neutral")
    ]);
    let r = post_json(&server, "/v1/score", &[], &score_json("rm", items)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("x-request-id").is_some());
    let http: Vec<f64> = r.json()["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label_reward"].as_f64().unwrap())
        .collect();
    let mut reward = RewardServiceClient::new(channel(&server).await);
    let grpc = reward
        .score(v1::ScoreRequest {
            items: vec![
                item(
                    "A man sleeps.",
                    "A person rests.",
                    "sleeping is resting",
                    "entailment",
                ),
                item("A man sleeps.", "A person rests.", "no", "neutral"),
            ],
            label_model: "rm".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(http.len(), 2);
    for (h, g) in http.iter().zip(&grpc.rewards) {
        assert!(
            (h - f64::from(g.label_reward)).abs() <= 1e-5,
            "{h} vs {g:?}"
        );
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The ChatML text the server scores for one NLI item under `rm2` (chatml template).
fn chatml_prompt(premise: &str, hypothesis: &str) -> String {
    let q = nli_task()
        .query(&TaskInput::Pair(premise.into(), hypothesis.into()))
        .unwrap();
    ChatTemplate::from_name("chatml")
        .unwrap()
        .render_prompt(None, &q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_reward_as_openrlhf_calls_it_equals_grpc_score() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let fmt = ResponseFormat::default();
    let cases = [
        (
            "A man sleeps.",
            "A person rests.",
            "sleeping is resting",
            "entailment",
        ),
        (
            "A dog runs.",
            "A cat sleeps.",
            "different animals",
            "contradiction",
        ),
        (
            "Kids play.",
            "Kids play outside.",
            "maybe outside",
            "neutral",
        ),
    ];
    // OpenRLHF's remote_rm_fn: {"query": prompt+response texts, "prompts": ..., "labels": ...}
    // (decoded with special tokens: the end-of-turn token stays on the query).
    let prompts: Vec<String> = cases.iter().map(|c| chatml_prompt(c.0, c.1)).collect();
    let queries: Vec<String> = cases
        .iter()
        .zip(&prompts)
        .map(|(c, p)| format!("{p}{}<|im_end|>", fmt.render(c.2, c.3)))
        .collect();
    let body = json!({"query": queries, "prompts": prompts, "labels": ["", "", ""]});
    let path = "/get_reward?label_model=rm2&rationale_model=rm2&lambda=0.05";
    let r = post_json(&server, path, &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<f64> = r.json()["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(r.json()["scores"], r.json()["rewards"]);
    let mut reward = RewardServiceClient::new(channel(&server).await);
    let grpc = reward
        .score(v1::ScoreRequest {
            items: cases.iter().map(|c| item(c.0, c.1, c.2, c.3)).collect(),
            label_model: "rm2".into(),
            rationale_model: "rm2".into(),
            lambda: Some(0.05),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (h, g) in got.iter().zip(&grpc.rewards) {
        assert!(
            (h - f64::from(g.mixed_reward)).abs() <= 1e-5,
            "{h} vs {g:?}"
        );
    }
    // Without `prompts` the split is at the template's assistant marker: same rewards.
    let r2 = post_json(&server, path, &[], &json!({"query": queries})).await;
    assert_eq!(r2.json()["rewards"], r.json()["rewards"]);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_reward_penalises_an_unparseable_response() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.get_reward_penalty = -7.5;
    let server = start(cfg).await;
    let p = chatml_prompt("A man sleeps.", "A person rests.");
    let queries = [
        format!("{p}no answer line here<|im_end|>"),
        format!("{p}a rationale\nAnswer: maybe<|im_end|>"),
        format!("{p}a rationale\nAnswer: neutral<|im_end|>"),
    ];
    let r = post_json(
        &server,
        "/get_reward?label_model=rm2",
        &[],
        &json!({"query": queries}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["rewards"][0], -7.5);
    assert_eq!(v["rewards"][1], -7.5);
    assert_ne!(v["rewards"][2], -7.5);
    assert_eq!(v["extra_logs"]["unparseable"], json!([1.0, 1.0, 0.0]));
    assert_eq!(v["extra_logs"]["label"][2], "neutral");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_reward_without_a_marker_or_prompt_names_the_query() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let r = post_json(
        &server,
        "/get_reward?label_model=rm2",
        &[],
        &json!({"query": ["just text\nAnswer: neutral"]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "query[0]");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "pol-chat",
        "messages": [{"role": "user", "content": "A man sleeps."}],
        "text_pair": "A person rests.",
        "max_tokens": 12,
        "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chat_completion_is_the_classify_answer() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let r = post_json(&server, "/v1/chat/completions", &[], &chat_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let mut policy = PolicyServiceClient::new(channel(&server).await);
    let c = policy
        .classify(v1::ClassifyRequest {
            inputs: vec![v1::Input {
                text: "A man sleeps.".into(),
                text_pair: Some("A person rests.".into()),
            }],
            model: "pol-chat".into(),
            params: Some(v1::GenerationParams {
                max_new_tokens: Some(12),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let g = &c.results[0];
    assert_eq!(v["choices"][0]["message"]["content"], g.text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], g.generated_tokens);
    assert_eq!(v["usage"]["prompt_tokens"], g.prompt_tokens);
    assert_eq!(v["rllr"]["rationale"], g.rationale.as_str());
    assert!(v["rllr"]["model_revisions"]["pol-chat"].is_string());
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_chat_spells_the_same_text_and_ends_with_done() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let plain = post_json(&server, "/v1/chat/completions", &[], &chat_body(false))
        .await
        .json();
    let r = post_json(&server, "/v1/chat/completions", &[], &chat_body(true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&r.body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, plain["choices"][0]["message"]["content"]);
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        plain["choices"][0]["finish_reason"]
    );
    assert_eq!(last["rllr"]["rationale"], plain["rllr"]["rationale"]);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_completion_classifies_the_prompt() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let body = json!({"model": "pol-chat", "prompt": "A man sleeps.", "text_pair": "A person rests.", "max_tokens": 8});
    let r = post_json(&server, "/v1/completions", &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 8);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The same bad inputs as the gRPC table (`grpc.rs`), over HTTP: status, the field named in
/// `error.param` or the message, the gRPC words kept. NaN cannot be written in JSON, so the two
/// NaN cases of the gRPC table are covered by "not a number" here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_inputs_get_precise_http_statuses() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.max_input_tokens = 300;
    cfg.max_items_per_request = 4;
    cfg.api_key = Some("user".into());
    cfg.http_max_body_bytes = 4096;
    let server = start(cfg).await;
    let user = [("authorization", "Bearer user")];
    let ok = nli_item("r", "entailment");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut i = ok.clone();
        f(&mut i);
        score_json("rm", json!([i]))
    };
    let gen = |f: &dyn Fn(&mut Value)| {
        let mut r = json!({"inputs": [{"text": "a", "text_pair": "b"}], "model": "pol", "params": {"max_new_tokens": 4}});
        f(&mut r["params"]);
        r
    };
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "empty input",
            "/v1/score",
            with(&|i| i["input"]["text"] = json!("")),
            400,
            "items[0].input.text",
        ),
        (
            "no items",
            "/v1/score",
            score_json("rm", json!([])),
            400,
            "items",
        ),
        (
            "over the token limit",
            "/v1/score",
            with(&|i| i["rationale"] = json!("word ".repeat(100))),
            400,
            "max_input_tokens 300",
        ),
        (
            "unknown label",
            "/v1/score",
            with(&|i| i["label"] = json!("maybe")),
            400,
            "items[0].label",
        ),
        (
            "unknown model",
            "/v1/score",
            score_json("nope", json!([ok.clone()])),
            404,
            "nope",
        ),
        (
            "negative temperature",
            "/v1/classify",
            gen(&|p| p["temperature"] = json!(-1.0)),
            400,
            "params.temperature",
        ),
        (
            "temperature not a number",
            "/v1/classify",
            gen(&|p| p["temperature"] = json!("hot")),
            400,
            "params.temperature",
        ),
        (
            "top_p > 1",
            "/v1/classify",
            gen(&|p| p["top_p"] = json!(1.5)),
            400,
            "params.top_p",
        ),
        (
            "max_new_tokens over the limit",
            "/v1/classify",
            gen(&|p| p["max_new_tokens"] = json!(10_000)),
            400,
            "max_new_tokens 48",
        ),
        (
            "too many items",
            "/v1/score",
            score_json(
                "rm",
                json!([ok.clone(), ok.clone(), ok.clone(), ok.clone(), ok.clone()]),
            ),
            400,
            "max_items_per_request 4",
        ),
        (
            "policy used as reward model",
            "/v1/score",
            score_json("pol", json!([ok.clone()])),
            400,
            "pol",
        ),
        (
            "pair task given one text",
            "/v1/classify",
            json!({"inputs": [{"text": "a"}], "model": "pol"}),
            400,
            "inputs[0]",
        ),
        (
            "unknown field",
            "/v1/score",
            json!({"label_model": "rm", "itemz": []}),
            400,
            "itemz",
        ),
        (
            "wrong type names the field",
            "/v1/score",
            score_json("rm", json!([{"input": {"text": 5}}])),
            400,
            "items[0].input.text",
        ),
        (
            "body over http_max_body_bytes",
            "/v1/score",
            with(&|i| i["rationale"] = json!("x".repeat(5000))),
            413,
            "http_max_body_bytes",
        ),
        (
            "chat with two user turns",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
            400,
            "messages[1]",
        ),
        (
            "chat asking for n = 3",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "n": 3}),
            400,
            "n",
        ),
        (
            "get_reward with no query",
            "/get_reward",
            json!({"query": []}),
            400,
            "query",
        ),
        (
            "get_reward prompts of another length",
            "/get_reward",
            json!({"query": ["a"], "prompts": ["a", "b"]}),
            400,
            "prompts",
        ),
    ];
    for (name, path, body, status, needle) in cases {
        let r = post_json(&server, path, &user, &body).await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
        let e = &r.json()["error"];
        let msg = e["message"].as_str().unwrap();
        let param = e["param"].as_str().unwrap_or("");
        assert!(
            msg.contains(needle) || param == needle,
            "{name}: '{msg}' (param '{param}') lacks '{needle}'"
        );
    }
    // Auth, media type, malformed JSON, unknown route.
    let body = score_json("rm", json!([ok.clone()]));
    let r = post_json(&server, "/v1/score", &[], &body).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing"));
    let r = post_json(
        &server,
        "/v1/score",
        &[("authorization", "Bearer guess")],
        &body,
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("wrong"));
    let addr = server.http_addr.unwrap();
    let r = http(addr, "POST", "/v1/score", &user, &body.to_string()).await;
    assert_eq!(r.status, 415, "{}", r.body);
    let r = http(
        addr,
        "POST",
        "/v1/score",
        &[("content-type", "application/json"), user[0]],
        "{\"items\": [",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http(addr, "GET", "/v2/nothing", &user, "").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v2/nothing"));
    // Still serving.
    let r = post_json(&server, "/v1/score", &user, &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_429_and_deadlines_are_504() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.max_new_tokens = 4000;
    cfg.max_concurrent_requests = 1;
    let server = start(cfg).await;
    let long = json!({"inputs": [{"text": "a", "text_pair": "b"}], "model": "pol", "params": {"max_new_tokens": 4000}});
    let r = post_json(
        &server,
        "/v1/classify",
        &[("x-request-timeout", "0.2")],
        &long,
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "deadline_exceeded");
    let addr = server.http_addr.unwrap();
    let body = long.to_string();
    let busy = tokio::spawn(async move {
        http(
            addr,
            "POST",
            "/v1/classify",
            &[
                ("content-type", "application/json"),
                ("x-request-timeout", "3"),
            ],
            &body,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post_json(&server, "/v1/classify", &[], &long).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_concurrent_requests"));
    busy.await.unwrap();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A request-level 503: once the registry is closed (`Registry::clear`, the step with which
/// `RunningServer::shutdown` stops the workers) every model lookup is gRPC UNAVAILABLE, and each
/// HTTP route answers 503 with the JSON error body, so a client retries elsewhere instead of
/// giving up on a "missing" model. (In the full shutdown sequence the HTTP listener has already
/// closed by then; here the front stays up so the mapping is observable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_to_a_closed_registry_are_503() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let score = score_json("rm", json!([nli_item("r", "entailment")]));
    let r = post_json(&server, "/v1/score", &[], &score).await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.registry.clear();
    let classify = json!({"inputs": [{"text": "a", "text_pair": "b"}], "model": "pol", "params": {"max_new_tokens": 4}});
    let cases: Vec<(&str, &str, Value)> = vec![
        ("score", "/v1/score", score),
        ("classify", "/v1/classify", classify),
        (
            "get_reward",
            "/get_reward?label_model=rm2",
            json!({"query": ["a"], "prompts": ["a"]}),
        ),
        ("chat", "/v1/chat/completions", chat_body(false)),
        ("streamed chat", "/v1/chat/completions", chat_body(true)),
        // No model named: the registry's default/first-able pick is closed too (not a 404).
        (
            "score, no model named",
            "/v1/score",
            json!({"items": [nli_item("r", "entailment")]}),
        ),
    ];
    for (name, path, body) in cases {
        let r = post_json(&server, path, &[], &body).await;
        assert_eq!(r.status, 503, "{name}: {}", r.body);
        assert!(r.header("x-request-id").is_some(), "{name}");
        let e = &r.json()["error"];
        assert_eq!(e["type"], "service_unavailable", "{name}: {}", r.body);
        assert_eq!(e["code"], "unavailable", "{name}: {}", r.body);
        assert!(
            e["message"].as_str().unwrap().contains("shutting down"),
            "{name}: {}",
            r.body
        );
    }
    // Liveness is unaffected; readiness reports every model missing.
    let addr = server.http_addr.unwrap();
    assert_eq!(http(addr, "GET", "/health", &[], "").await.status, 200);
    assert_eq!(http(addr, "GET", "/ready", &[], "").await.status, 503);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_follows_the_configured_models() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.admin_key = Some("admin".into());
    let server = start(cfg).await;
    let addr = server.http_addr.unwrap();
    assert_eq!(http(addr, "GET", "/health", &[], "").await.status, 200);
    let r = http(addr, "GET", "/ready", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.registry.unload("rm2").unwrap();
    let r = http(addr, "GET", "/ready", &[], "").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["not_ready"], json!(["rm2"]));
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_lists_every_route_and_the_request_types() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let r = http(server.http_addr.unwrap(), "GET", "/openapi.json", &[], "").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    for p in [
        "/v1/score",
        "/v1/compare",
        "/v1/classify",
        "/get_reward",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/health",
        "/ready",
    ] {
        assert!(
            v["paths"][p].is_object(),
            "{p} missing from the OpenAPI paths"
        );
    }
    for s in [
        "ScoreRequest",
        "ScoreItem",
        "ClassifyResponse",
        "GetRewardRequest",
        "ChatCompletionRequest",
    ] {
        assert!(v["components"]["schemas"][s].is_object(), "{s} missing");
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_calls_are_labelled_in_the_request_metrics() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let items = json!([nli_item("r", "entailment")]);
    let r = post_json(&server, "/v1/score", &[], &score_json("rm", items)).await;
    assert_eq!(r.status, 200);
    let text = scrape(server.metrics_addr.unwrap()).await;
    assert!(
        text.lines().any(|l| l.starts_with("rllr_requests_total{")
            && l.contains("protocol=\"http\"")
            && l.contains("method=\"score\"")),
        "no http-labelled score count in:\n{text}"
    );
    let r = http(server.http_addr.unwrap(), "GET", "/v1/models", &[], "").await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["pol", "pol-chat", "rm", "rm2"]);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
