//! End-to-end tests of rllr-server over real gRPC on 127.0.0.1:0 with tiny random models: every
//! RPC, batching equivalence, overload, the bad-input table, deadlines, auth, hot reload, metrics,
//! health and reflection.

mod common;

use std::time::Duration;

use common::*;
use rllr_proto::v1::{
    self, model_service_client::ModelServiceClient, policy_service_client::PolicyServiceClient,
    reward_service_client::RewardServiceClient,
};
use tonic::{Code, Request};

type Reward = RewardServiceClient<tonic::transport::Channel>;
type Policy = PolicyServiceClient<tonic::transport::Channel>;
type Models = ModelServiceClient<tonic::transport::Channel>;

async fn clients(url: &str) -> (Reward, Policy, Models) {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        RewardServiceClient::new(ch.clone()),
        PolicyServiceClient::new(ch.clone()),
        ModelServiceClient::new(ch),
    )
}

fn score_req(items: Vec<v1::ScoreItem>) -> v1::ScoreRequest {
    v1::ScoreRequest {
        items,
        label_model: "rm".into(),
        ..Default::default()
    }
}

fn classify_req(inputs: Vec<v1::Input>, max_new: u32) -> v1::ClassifyRequest {
    v1::ClassifyRequest {
        inputs,
        model: "pol".into(),
        params: Some(v1::GenerationParams {
            max_new_tokens: Some(max_new),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn inp(a: &str, b: &str) -> v1::Input {
    input(a, b).unwrap()
}

/// A server with the default test config plus an admin key (the end-to-end tests), its model root
/// (kept alive with it) and clients.
async fn serve_all() -> (
    tempfile::TempDir,
    rllr_server::RunningServer,
    Reward,
    Policy,
    Models,
) {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.admin_key = Some("admin".into());
    let server = start(cfg).await;
    let (reward, policy, models) = clients(&url(&server)).await;
    (root, server, reward, policy, models)
}

/// The two score items of the end-to-end tests.
fn two_items() -> Vec<v1::ScoreItem> {
    vec![
        item(
            "A man sleeps.",
            "A person rests.",
            "Sleeping is resting.",
            "entailment",
        ),
        item(
            "A dog runs.",
            "A cat sits.",
            "Different animals.",
            "neutral",
        ),
    ]
}

/// The two-input greedy classify request of the end-to-end tests.
fn two_inputs() -> v1::ClassifyRequest {
    classify_req(
        vec![
            inp("A man sleeps.", "A person rests."),
            inp("A dog runs.", "A cat sits."),
        ],
        12,
    )
}

/// The plain score (label model only) of [`two_items`].
async fn plain_scores(reward: &mut Reward) -> v1::ScoreResponse {
    reward
        .score(score_req(two_items()))
        .await
        .unwrap()
        .into_inner()
}

// ModelService
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_service_lists_and_describes_models() {
    let (_root, server, _, _, mut models) = serve_all().await;
    let list = models
        .list_models(v1::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["pol", "pol-chat", "rm", "rm2"]);
    let rm = models
        .get_model(v1::GetModelRequest { name: "rm".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rm.kind, v1::ModelKind::Reward as i32);
    assert_eq!(rm.labels, LABELS);
    assert_eq!(rm.head, "score");
    assert_eq!(rm.task, "nli");
    assert!(rm.ready);
    assert_eq!(rm.limits.unwrap().max_new_tokens, 48);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Score: raw rewards, finite, per-item token counts; mixed = min(label, lambda) + rationale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn score_mixes_plain_and_sigmoid_rewards() {
    let (_root, server, mut reward, _, _) = serve_all().await;
    let items = two_items();
    let mut req = score_req(items.clone());
    req.rationale_model = "rm2".into();
    req.lambda = Some(0.0);
    let resp = reward.score(req).await.unwrap().into_inner();
    assert_eq!(resp.rewards.len(), 2);
    assert_eq!(resp.lambda, Some(0.0));
    for r in &resp.rewards {
        let rr = r.rationale_reward.unwrap();
        assert!((r.mixed_reward - (r.label_reward.min(0.0) + rr)).abs() < 1e-6);
        assert!(r.tokens > 20);
    }
    let md = resp.metadata.unwrap();
    assert!(md.total_time_ns >= md.inference_time_ns && md.input_tokens > 40);
    assert!(md.request_id.starts_with("req-"));
    let plain = reward
        .score(score_req(items.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.rewards[0].label_reward, resp.rewards[0].label_reward);
    assert_eq!(plain.rewards[0].mixed_reward, plain.rewards[0].label_reward);
    assert!(plain.rewards[0].rationale_reward.is_none());
    let sig = reward
        .score(v1::ScoreRequest {
            sigmoid: true,
            ..score_req(items.clone())
        })
        .await
        .unwrap()
        .into_inner();
    let s = 1.0 / (1.0 + (-plain.rewards[1].label_reward).exp());
    assert!((sig.rewards[1].label_reward - s).abs() < 1e-6);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ScoreStream: in order, same values as unary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn score_stream_answers_in_order_like_unary() {
    let (_root, server, mut reward, _, _) = serve_all().await;
    let items = two_items();
    let plain = plain_scores(&mut reward).await;
    let reqs: Vec<v1::ScoreRequest> = (0..5)
        .map(|i| score_req(vec![items[i % 2].clone()]))
        .collect();
    let mut out = reward
        .score_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = out.message().await.unwrap() {
        got.push(r.rewards[0].label_reward);
    }
    assert_eq!(got.len(), 5);
    for (i, g) in got.iter().enumerate() {
        assert!(
            (g - plain.rewards[i % 2].label_reward).abs() < 1e-5,
            "stream item {i} out of order"
        );
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Compare: sigmoid(r_a - r_b).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_is_sigmoid_of_the_reward_difference() {
    let (_root, server, mut reward, _, _) = serve_all().await;
    let plain = plain_scores(&mut reward).await;
    let cmp = reward
        .compare(v1::CompareRequest {
            input: input("A man sleeps.", "A person rests."),
            a: Some(v1::Candidate {
                rationale: "Sleeping is resting.".into(),
                label: "entailment".into(),
            }),
            b: Some(v1::Candidate {
                rationale: "Different animals.".into(),
                label: "neutral".into(),
            }),
            label_model: "rm".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (a, b) = (
        cmp.reward_a.unwrap().mixed_reward,
        cmp.reward_b.unwrap().mixed_reward,
    );
    assert!((cmp.probability_a - 1.0 / (1.0 + (b - a).exp())).abs() < 1e-6);
    assert!((a - plain.rewards[0].label_reward).abs() < 1e-5);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Classify (greedy): deterministic, token counts, finish reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classify_greedy_is_deterministic() {
    let (_root, server, _, mut policy, _) = serve_all().await;
    let creq = two_inputs();
    let c1 = policy.classify(creq.clone()).await.unwrap().into_inner();
    assert_eq!(c1.results.len(), 2);
    for r in &c1.results {
        assert!(r.generated_tokens >= 1 && r.generated_tokens <= 12);
        assert!(r.prompt_tokens > 40);
        assert!(["eos", "length"].contains(&r.finish_reason.as_str()));
    }
    assert!(c1.metadata.unwrap().generated_tokens >= 2);
    let c2 = policy.classify(creq.clone()).await.unwrap().into_inner();
    assert_eq!(c1.results[0].text, c2.results[0].text);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ClassifyStream: the streamed tokens spell the final text, which is the unary answer to the
// same single-input request (the same batch shape: a row's logits are not bit-identical across
// batch shapes, so greedy decoding may split differently on a near-tie in a padded batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classify_stream_spells_the_unary_answer() {
    let (_root, server, _, mut policy, _) = serve_all().await;
    let single = classify_req(vec![inp("A man sleeps.", "A person rests.")], 12);
    let unary = policy.classify(single.clone()).await.unwrap().into_inner();
    let mut s = policy.classify_stream(single).await.unwrap().into_inner();
    let (mut streamed, mut last) = (String::new(), None);
    while let Some(m) = s.message().await.unwrap() {
        match m.event.unwrap() {
            v1::classify_stream_response::Event::Token(t) => streamed.push_str(&t),
            v1::classify_stream_response::Event::Result(r) => last = Some(r),
        }
    }
    let last = last.expect("a final result");
    assert_eq!(last.results[0].text, unary.results[0].text);
    assert_eq!(streamed, last.results[0].text);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ClassifyBatch: order preserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classify_batch_preserves_order() {
    let (_root, server, _, mut policy, _) = serve_all().await;
    let c1 = policy.classify(two_inputs()).await.unwrap().into_inner();
    let batch: Vec<_> = (0..4)
        .map(|i| {
            classify_req(
                vec![if i % 2 == 0 {
                    inp("A man sleeps.", "A person rests.")
                } else {
                    inp("A dog runs.", "A cat sits.")
                }],
                12,
            )
        })
        .collect();
    let mut out = policy
        .classify_batch(tokio_stream::iter(batch))
        .await
        .unwrap()
        .into_inner();
    let mut i = 0;
    while let Some(r) = out.message().await.unwrap() {
        assert_eq!(r.results[0].text, c1.results[i % 2].text);
        i += 1;
    }
    assert_eq!(i, 4);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Best-of-n: sampled, reranked by the reward model.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn best_of_n_is_reranked_by_the_reward_model() {
    let (_root, server, _, mut policy, _) = serve_all().await;
    let mut bo = classify_req(vec![inp("A man sleeps.", "A person rests.")], 8);
    bo.best_of_n = 3;
    bo.label_model = "rm".into();
    let r = policy.classify(bo).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 1);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Load (hot reload with replace) and unload, with the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_replace_and_unload_with_the_admin_token() {
    let (_root, server, mut reward, _, mut models) = serve_all().await;
    let items = two_items();
    let plain = plain_scores(&mut reward).await;
    fn admin<T>(m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.metadata_mut()
            .insert("authorization", "Bearer admin".parse().unwrap());
        r
    }
    let info = models
        .load_model(admin(v1::LoadModelRequest {
            name: "rm3".into(),
            path: "rm".into(),
            replace: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "rm3");
    let again = reward
        .score(v1::ScoreRequest {
            label_model: "rm3".into(),
            ..score_req(items.clone())
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.rewards[0].label_reward, plain.rewards[0].label_reward);
    models
        .load_model(admin(v1::LoadModelRequest {
            name: "rm3".into(),
            path: "rm2".into(),
            replace: true,
        }))
        .await
        .unwrap();
    models
        .unload_model(admin(v1::UnloadModelRequest { name: "rm3".into() }))
        .await
        .unwrap();
    let gone = models
        .get_model(v1::GetModelRequest { name: "rm3".into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Health per service and reflection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_per_service_and_reflection() {
    let (_root, server, _, _, _) = serve_all().await;
    let ch = tonic::transport::Endpoint::from_shared(url(&server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for svc in [
        "rllr.v1.RewardService",
        "rllr.v1.PolicyService",
        "rllr.v1.ModelService",
        "",
    ] {
        let st = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            st.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut rs = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = rs.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(l)) = resp.message_response else {
        panic!("no service list")
    };
    let svcs: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
    for s in [
        "rllr.v1.RewardService",
        "rllr.v1.PolicyService",
        "rllr.v1.ModelService",
        "grpc.health.v1.Health",
    ] {
        assert!(svcs.contains(&s), "{s} missing from reflection: {svcs:?}");
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

// Metrics endpoint: every family present. The recorder is shared by the whole test process, so
// this test makes the score (mixed, with a rationale model) and classify calls whose families it
// checks itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_has_every_family() {
    let (_root, server, mut reward, mut policy, _) = serve_all().await;
    let mut req = score_req(two_items());
    req.rationale_model = "rm2".into();
    req.lambda = Some(0.0);
    reward.score(req).await.unwrap();
    plain_scores(&mut reward).await;
    policy.classify(two_inputs()).await.unwrap();
    let body = rllr_server::testutil::scrape(server.metrics_addr.unwrap()).await;
    for name in [
        "rllr_requests_total",
        "rllr_request_success_total",
        "rllr_request_duration_seconds",
        "rllr_requests_in_flight",
        "rllr_batch_size",
        "rllr_batch_tokens",
        "rllr_queue_depth",
        "rllr_queue_capacity",
        "rllr_model_ready",
        "rllr_build_info",
        "rllr_generated_tokens_total",
        "rllr_reward",
        "rllr_predicted_label_total",
        "rllr_batch_inference_duration_seconds",
        "rllr_cot_tokens",
    ] {
        assert!(body.contains(name), "{name} missing from /metrics");
    }
    if let Ok(dir) = std::env::var("RLLR_METRICS_DUMP") {
        std::fs::write(std::path::Path::new(&dir).join("metrics.txt"), &body).unwrap();
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_are_the_same_alone_or_batched() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.max_delay_us = 20_000; // make concurrent requests share batches
    let server = start(cfg).await;
    let (reward, policy, _) = clients(&url(&server)).await;
    let target = item(
        "A man sleeps.",
        "A person rests.",
        "Sleeping is resting.",
        "entailment",
    );
    let alone = reward
        .clone()
        .score(score_req(vec![target.clone()]))
        .await
        .unwrap()
        .into_inner()
        .rewards[0]
        .label_reward;
    // One request with items of very different lengths around it.
    let long = "x ".repeat(150);
    let mixed = vec![
        item("A.", "B.", "", "neutral"),
        target.clone(),
        item(&long, "B.", &long, "contradiction"),
        item(
            "A dog runs in the park.",
            "An animal moves.",
            "Dogs are animals.",
            "entailment",
        ),
    ];
    let batched = reward
        .clone()
        .score(score_req(mixed))
        .await
        .unwrap()
        .into_inner();
    assert!(
        (batched.rewards[1].label_reward - alone).abs() < 1e-5,
        "{} vs {alone}",
        batched.rewards[1].label_reward
    );
    // Concurrent single-item requests, merged by the batcher.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut c = reward.clone();
        let it = if i == 3 {
            target.clone()
        } else {
            item(&"y ".repeat(10 * i + 1), "B.", "r", "neutral")
        };
        tasks.push(tokio::spawn(async move {
            c.score(score_req(vec![it])).await.unwrap().into_inner()
        }));
    }
    let mut max_batch = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i == 3 {
            assert!((r.rewards[0].label_reward - alone).abs() < 1e-5);
        }
        max_batch = max_batch.max(r.metadata.unwrap().inference_time_ns);
    }
    assert!(max_batch > 0);
    let body = grpc_fetch(&server).await;
    assert!(
        batched_rows(&body) > 1.0,
        "the batcher never merged requests"
    );

    // Greedy classification: same text alone and batched with inputs of other lengths.
    let one = policy
        .clone()
        .classify(classify_req(
            vec![inp("A man sleeps.", "A person rests.")],
            16,
        ))
        .await
        .unwrap()
        .into_inner();
    let many = policy
        .clone()
        .classify(classify_req(
            vec![
                inp("Hi.", "Yo."),
                inp("A man sleeps.", "A person rests."),
                inp(&long, "B."),
            ],
            16,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.results[0].text, many.results[1].text);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

async fn grpc_fetch(server: &rllr_server::RunningServer) -> String {
    rllr_server::testutil::scrape(server.metrics_addr.unwrap()).await
}

/// Largest observed scoring batch bucket count above 1 (from the histogram's sum/count).
fn batched_rows(body: &str) -> f64 {
    let get = |suffix: &str| -> f64 {
        body.lines()
            .filter(|l| {
                l.starts_with(&format!("rllr_batch_size_{suffix}{{"))
                    && l.contains("method=\"score\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    get("sum") / get("count").max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_sheds_load_and_stays_healthy() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.max_concurrent_requests = 8;
    cfg.queue_capacity = 16;
    let server = start(cfg).await;
    let (reward, _, _) = clients(&url(&server)).await;
    let it = item(
        "A man sleeps.",
        "A person rests.",
        "Sleeping is resting.",
        "entailment",
    );
    let expect = reward
        .clone()
        .score(score_req(vec![it.clone(); 4]))
        .await
        .unwrap()
        .into_inner()
        .rewards[0]
        .label_reward;
    // 10x the concurrency capacity, each request with 4 items.
    let mut tasks = Vec::new();
    for _ in 0..80 {
        let mut c = reward.clone();
        let r = score_req(vec![it.clone(); 4]);
        tasks.push(tokio::spawn(async move { c.score(r).await }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                ok += 1;
                for x in r.into_inner().rewards {
                    assert!((x.label_reward - expect).abs() < 1e-5);
                }
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                shed += 1;
            }
        }
    }
    eprintln!("overload: {ok} answered, {shed} RESOURCE_EXHAUSTED");
    assert!(shed > 0 && ok > 0);
    // Healthy afterwards.
    let r = reward
        .clone()
        .score(score_req(vec![it]))
        .await
        .unwrap()
        .into_inner();
    assert!((r.rewards[0].label_reward - expect).abs() < 1e-5);
    let body = grpc_fetch(&server).await;
    assert!(body.contains("err=\"overloaded\""));
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A server with the bad-input test config (token and item limits, user and admin keys), its
/// model root (kept alive with it) and clients.
async fn serve_strict() -> (
    tempfile::TempDir,
    rllr_server::RunningServer,
    Reward,
    Policy,
    Models,
) {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.max_input_tokens = 300;
    cfg.max_items_per_request = 4;
    cfg.api_key = Some("user".into());
    cfg.admin_key = Some("admin".into());
    let server = start(cfg).await;
    let (reward, policy, models) = clients(&url(&server)).await;
    (root, server, reward, policy, models)
}

fn auth<T>(m: T, token: &str) -> Request<T> {
    let mut r = Request::new(m);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The valid score item the bad-input cases start from.
fn ok_item() -> v1::ScoreItem {
    item("A man sleeps.", "A person rests.", "r", "entailment")
}

/// A bad-input case: its name, what the RPC returned, and the status code and message fragment
/// it must fail with.
type Case = (&'static str, Result<(), tonic::Status>, Code, &'static str);

fn s(r: Result<tonic::Response<v1::ScoreResponse>, tonic::Status>) -> Result<(), tonic::Status> {
    r.map(|_| ())
}

fn c(r: Result<tonic::Response<v1::ClassifyResponse>, tonic::Status>) -> Result<(), tonic::Status> {
    r.map(|_| ())
}

fn check_cases(cases: Vec<Case>) {
    for (name, got, code, needle) in cases {
        let e = got.expect_err(name);
        assert_eq!(e.code(), code, "{name}: {e:?}");
        assert!(
            e.message().contains(needle),
            "{name}: '{}' lacks '{needle}'",
            e.message()
        );
    }
}

/// Still serving after the bad inputs; then shut down.
async fn still_serving(server: rllr_server::RunningServer, reward: &mut Reward) {
    reward
        .score(auth(score_req(vec![ok_item()]), "user"))
        .await
        .unwrap();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_score_inputs_are_invalid_arguments() {
    let (_root, server, mut reward, _, _) = serve_strict().await;
    let ok = ok_item();
    let with = |f: &dyn Fn(&mut v1::ScoreItem)| {
        let mut i = ok.clone();
        f(&mut i);
        score_req(vec![i])
    };
    let cases: Vec<Case> = vec![
        (
            "empty input",
            s(reward
                .score(auth(
                    with(&|i| i.input.as_mut().unwrap().text.clear()),
                    "user",
                ))
                .await),
            Code::InvalidArgument,
            "items[0].input.text",
        ),
        (
            "no items",
            s(reward.score(auth(score_req(vec![]), "user")).await),
            Code::InvalidArgument,
            "items",
        ),
        (
            "over the token limit",
            s(reward
                .score(auth(with(&|i| i.rationale = "word ".repeat(100)), "user"))
                .await),
            Code::InvalidArgument,
            "max_input_tokens 300",
        ),
        (
            "unknown label",
            s(reward
                .score(auth(with(&|i| i.label = "maybe".into()), "user"))
                .await),
            Code::InvalidArgument,
            "items[0].label",
        ),
        (
            "too many items",
            s(reward
                .score(auth(score_req(vec![ok.clone(); 5]), "user"))
                .await),
            Code::InvalidArgument,
            "max_items_per_request 4",
        ),
        (
            "NaN lambda",
            s(reward
                .score(auth(
                    v1::ScoreRequest {
                        lambda: Some(f32::NAN),
                        rationale_model: "rm2".into(),
                        ..score_req(vec![ok.clone()])
                    },
                    "user",
                ))
                .await),
            Code::InvalidArgument,
            "lambda",
        ),
    ];
    check_cases(cases);
    still_serving(server, &mut reward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_generation_params_are_invalid_arguments() {
    let (_root, server, mut reward, mut policy, _) = serve_strict().await;
    let gen = |f: &dyn Fn(&mut v1::GenerationParams)| {
        let mut r = classify_req(vec![inp("a", "b")], 4);
        f(r.params.as_mut().unwrap());
        r
    };
    let cases: Vec<Case> = vec![
        (
            "NaN temperature",
            c(policy
                .classify(auth(gen(&|p| p.temperature = Some(f32::NAN)), "user"))
                .await),
            Code::InvalidArgument,
            "params.temperature",
        ),
        (
            "negative temperature",
            c(policy
                .classify(auth(gen(&|p| p.temperature = Some(-1.0)), "user"))
                .await),
            Code::InvalidArgument,
            "params.temperature",
        ),
        (
            "top_p > 1",
            c(policy
                .classify(auth(gen(&|p| p.top_p = Some(1.5)), "user"))
                .await),
            Code::InvalidArgument,
            "params.top_p",
        ),
        (
            "max_new_tokens over the limit",
            c(policy
                .classify(auth(gen(&|p| p.max_new_tokens = Some(10_000)), "user"))
                .await),
            Code::InvalidArgument,
            "max_new_tokens 48",
        ),
    ];
    check_cases(cases);
    still_serving(server, &mut reward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_classify_inputs_are_invalid_arguments() {
    let (_root, server, mut reward, mut policy, _) = serve_strict().await;
    let cases: Vec<Case> = vec![(
        "pair task given one text",
        c(policy
            .classify(auth(
                classify_req(
                    vec![v1::Input {
                        text: "a".into(),
                        text_pair: None,
                    }],
                    4,
                ),
                "user",
            ))
            .await),
        Code::InvalidArgument,
        "inputs[0]",
    )];
    check_cases(cases);
    still_serving(server, &mut reward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_model_names_are_not_found_or_failed_precondition() {
    let (_root, server, mut reward, _, _) = serve_strict().await;
    let ok = ok_item();
    let cases: Vec<Case> = vec![
        (
            "unknown model",
            s(reward
                .score(auth(
                    v1::ScoreRequest {
                        label_model: "nope".into(),
                        ..score_req(vec![ok.clone()])
                    },
                    "user",
                ))
                .await),
            Code::NotFound,
            "nope",
        ),
        (
            "policy used as reward model",
            s(reward
                .score(auth(
                    v1::ScoreRequest {
                        label_model: "pol".into(),
                        ..score_req(vec![ok.clone()])
                    },
                    "user",
                ))
                .await),
            Code::FailedPrecondition,
            "pol",
        ),
    ];
    check_cases(cases);
    still_serving(server, &mut reward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_model_paths_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    write_model(
        outside.path(),
        "evil",
        rllr_core::manifest::ModelKind::Reward,
        9,
        "plain",
    );
    let (_root, server, mut reward, _, mut models) = serve_strict().await;
    let evil = outside.path().join("evil").to_string_lossy().into_owned();
    let load = |path: &str| v1::LoadModelRequest {
        name: "x".into(),
        path: path.into(),
        replace: false,
    };
    let cases: Vec<Case> = vec![
        (
            "model path outside the root (absolute)",
            models
                .load_model(auth(load(&evil), "admin"))
                .await
                .map(|_| ()),
            Code::PermissionDenied,
            "outside the model root",
        ),
        (
            "model path outside the root (..)",
            models
                .load_model(auth(load("../../../etc"), "admin"))
                .await
                .map(|_| ()),
            Code::PermissionDenied,
            "outside the model root",
        ),
        (
            "missing model path",
            models
                .load_model(auth(load("nothing-here"), "admin"))
                .await
                .map(|_| ()),
            Code::NotFound,
            "nothing-here",
        ),
    ];
    check_cases(cases);
    still_serving(server, &mut reward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_are_unauthenticated_or_denied() {
    let (_root, server, mut reward, _, mut models) = serve_strict().await;
    let ok = ok_item();
    let load = |path: &str| v1::LoadModelRequest {
        name: "x".into(),
        path: path.into(),
        replace: false,
    };
    let cases: Vec<Case> = vec![
        (
            "missing token",
            s(reward.score(score_req(vec![ok.clone()])).await),
            Code::Unauthenticated,
            "missing",
        ),
        (
            "wrong token",
            s(reward
                .score(auth(score_req(vec![ok.clone()]), "guess"))
                .await),
            Code::Unauthenticated,
            "wrong",
        ),
        (
            "user token on an admin RPC",
            models
                .load_model(auth(load("rm"), "user"))
                .await
                .map(|_| ()),
            Code::PermissionDenied,
            "admin",
        ),
    ];
    check_cases(cases);
    still_serving(server, &mut reward).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlines_are_honoured_and_reload_keeps_requests() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.max_new_tokens = 4000;
    cfg.admin_key = Some("admin".into());
    let server = start(cfg).await;
    let (reward, policy, mut models) = clients(&url(&server)).await;
    // Work that cannot finish in 100 ms: 8 long prompts, then up to 4000 tokens each.
    let long = "x ".repeat(350);
    let mut r = Request::new(classify_req(vec![inp(&long, "A person rests."); 8], 4000));
    r.set_timeout(Duration::from_millis(100));
    let t0 = std::time::Instant::now();
    let e = policy.clone().classify(r).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(2));

    // Hot reload under load: every request is answered.
    let it = item("A man sleeps.", "A person rests.", "r", "entailment");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut c = reward.clone();
        let r = v1::ScoreRequest {
            label_model: "rm".into(),
            ..score_req(vec![it.clone(); 2])
        };
        tasks.push(tokio::spawn(async move { c.score(r).await }));
    }
    let mut req = Request::new(v1::LoadModelRequest {
        name: "rm".into(),
        path: "rm".into(),
        replace: true,
    });
    req.metadata_mut()
        .insert("authorization", "Bearer admin".parse().unwrap());
    models.load_model(req).await.unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Graceful shutdown lets an in-flight request finish.
    let mut p = policy.clone();
    let inflight =
        tokio::spawn(async move { p.classify(classify_req(vec![inp("a", "b")], 64)).await });
    tokio::time::sleep(Duration::from_millis(5)).await;
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    inflight.await.unwrap().unwrap();
}
