//! Checks with external tools against a live server: the Python grpcio client generated from the
//! same proto, the `openai` Python SDK on the OpenAI-compatible endpoints, the curl examples of
//! docs/client.md, and `promtool check metrics` on the /metrics endpoint. Ignored by default
//! because they need `pip install grpcio grpcio-tools openai`, curl and Debian's `prometheus`;
//! `.ci/run` installs them.

mod common;

use std::time::Duration;

/// Run `python3 ARGS` off the runtime, fail the test (showing its output) unless it exits 0;
/// returns its stdout.
async fn python(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(&args).output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "python client failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-tools (run by .ci/run)"]
async fn python_grpcio_client() {
    let root = common::model_root();
    let server = common::start(common::config(root.path())).await;
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
    python(vec![script.into(), server.addr.to_string(), proto.into()]).await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Run `server/tests/openai_client.py` against `addr` (the SDK checks plain vs streamed chat).
async fn openai_sdk(addr: std::net::SocketAddr, model: &str, text_pair: Option<&str>) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let mut args = vec![script.to_string(), addr.to_string(), model.to_string()];
    args.extend(text_pair.map(str::to_string));
    python(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with the openai SDK (run by .ci/run)"]
async fn python_openai_sdk_client() {
    let root = common::model_root();
    let server = common::start(common::config(root.path())).await;
    openai_sdk(
        server.http_addr.unwrap(),
        "pol-chat",
        Some("A person rests."),
    )
    .await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The `sh` blocks of docs/client.md's HTTP section that call curl.
fn docs_curl_commands() -> Vec<String> {
    let doc = include_str!("../../docs/client.md");
    let section = doc
        .split("## HTTP/JSON")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/client.md has an HTTP/JSON section");
    let mut cmds = Vec::new();
    for block in section.split("```sh\n").skip(1) {
        let body = block.split("```").next().unwrap_or_default();
        // Join continuation lines, one command per line.
        for cmd in body.replace("\\\n", " ").lines() {
            if cmd.trim_start().starts_with("curl") {
                cmds.push(cmd.to_string());
            }
        }
    }
    cmds
}

/// Run each curl command of the docs against `addr` (in place of localhost:8080); returns outputs.
async fn run_docs_curl(addr: std::net::SocketAddr) -> Vec<String> {
    let cmds = docs_curl_commands();
    assert!(
        cmds.len() >= 6,
        "expected the documented curl examples, got {cmds:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for cmd in cmds {
        let cmd = cmd.replace("localhost:8080", &addr.to_string());
        let d = dir.path().to_path_buf();
        let c = cmd.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .args(["-euo", "pipefail", "-c", &c])
                .current_dir(d)
                .output()
        })
        .await
        .unwrap()
        .expect("bash runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{cmd}` failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        outs.push(text);
    }
    assert!(dir.path().join("openapi.json").exists());
    outs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (Debian package prometheus; run by .ci/run)"]
async fn promtool_check_metrics() {
    let root = common::model_root();
    let server = common::start(common::config(root.path())).await;
    // Exercise every family once so the exposition holds histograms and labelled counters.
    let ch = tonic::transport::Endpoint::from_shared(common::url(&server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reward = rllr_proto::v1::reward_service_client::RewardServiceClient::new(ch.clone());
    let item = common::item("A man sleeps.", "A person rests.", "r", "entailment");
    reward
        .score(rllr_proto::v1::ScoreRequest {
            items: vec![item],
            label_model: "rm".into(),
            rationale_model: "rm2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = reward.score(rllr_proto::v1::ScoreRequest::default()).await;
    let mut policy = rllr_proto::v1::policy_service_client::PolicyServiceClient::new(ch);
    policy
        .classify(rllr_proto::v1::ClassifyRequest {
            inputs: vec![common::input("a", "b").unwrap()],
            model: "pol".into(),
            params: Some(rllr_proto::v1::GenerationParams {
                max_new_tokens: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let body = rllr_server::testutil::scrape(server.metrics_addr.unwrap()).await;
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(body.as_bytes())?;
        child.wait_with_output()
    })
    .await
    .unwrap()
    .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{text}"
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The embedded default (`server/server.toml`) serves the quickstart's shipped adapters
/// (`models/quickstart/sst2/`: M_sft as an SFT adapter over SmolLM2, the two reward models and the
/// policy chosen on dev) once the base model is fetched, and the served policy is a classifier:
/// on the first 64 SST-2 dev examples it must beat always answering that slice's majority label by
/// 10 points (the whole test split is measured with `rllr batch`, docs/training.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs models/smollm2-135m-instruct (scripts/fetch-smollm2.sh)"]
async fn smollm2_embedded_default_serves_the_quickstart_models() {
    use rllr_proto::v1::{
        model_service_client::ModelServiceClient, policy_service_client::PolicyServiceClient,
        reward_service_client::RewardServiceClient, ClassifyRequest, GenerationParams, Input,
        ListModelsRequest, ScoreItem, ScoreRequest,
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    let cfg = rllr_server::ServerConfig::load_from([
        "rllr-server",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--model-root",
        root,
    ])
    .unwrap();
    let policy = cfg
        .default_policy_model
        .clone()
        .expect("the embedded default names its policy");
    let server = common::start(cfg).await;
    let ch = tonic::transport::Endpoint::from_shared(common::url(&server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let models = ModelServiceClient::new(ch.clone())
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    for want in [policy.as_str(), "rm-label", "rm-rationale"] {
        assert!(names.contains(&want), "{want} not served: {names:?}");
    }
    let text = |t: &str| {
        Some(Input {
            text: t.into(),
            text_pair: None,
        })
    };
    let review = "a gripping , funny and deeply moving film";
    let item = |label: &str| ScoreItem {
        input: text(review),
        rationale: format!("The sentiment of this movie review sentence is {label}."),
        label: label.into(),
    };
    let scored = RewardServiceClient::new(ch.clone())
        .score(ScoreRequest {
            items: vec![item("positive"), item("negative")],
            label_model: "rm-label".into(),
            rationale_model: "rm-rationale".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let lambda = scored.lambda.expect("a mixed score reports its lambda");
    for r in &scored.rewards {
        let rat = r.rationale_reward.expect("rationale reward");
        assert!(r.label_reward.is_finite() && rat.is_finite());
        assert!((r.mixed_reward - (r.label_reward.min(lambda) + rat)).abs() < 1e-5);
    }

    let dev: Vec<serde_json::Value> = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/sst2/dev.jsonl"
    ))
    .unwrap()
    .lines()
    .take(64)
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let mut client = PolicyServiceClient::new(ch);
    let (mut right, mut positive_gold) = (0usize, 0usize);
    for chunk in dev.chunks(16) {
        let out = client
            .classify(ClassifyRequest {
                inputs: chunk
                    .iter()
                    .map(|ex| text(ex["input"].as_str().unwrap()).unwrap())
                    .collect(),
                model: policy.clone(),
                params: Some(GenerationParams {
                    max_new_tokens: Some(48),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for (ex, c) in chunk.iter().zip(&out.results) {
            let gold = ex["label"].as_str().unwrap();
            assert!(
                ["negative", "positive", ""].contains(&c.label.as_str()),
                "label {} outside the task's label set",
                c.label
            );
            right += usize::from(c.label == gold);
            positive_gold += usize::from(gold == "positive");
            if !c.label.is_empty() {
                let p: f32 = c.probabilities.iter().map(|p| p.probability).sum();
                assert!((p - 1.0).abs() < 1e-4, "{:?}", c.probabilities);
            }
        }
    }
    let n = dev.len() as f64;
    let majority = positive_gold.max(dev.len() - positive_gold) as f64 / n;
    let accuracy = right as f64 / n;
    eprintln!(
        "{policy}: {right}/{} right, majority rate {majority:.3}",
        dev.len()
    );
    assert!(
        accuracy >= majority + 0.10,
        "served policy {policy}: accuracy {accuracy:.3} on 64 dev examples, majority rate {majority:.3}"
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// The HTTP front on the embedded default: every curl example of docs/client.md runs as written
/// (with the test server's port), the documented `/get_reward` query gets the same mixed reward as
/// the documented `/v1/score` item it renders, and the `openai` SDK talks to the served policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs models/smollm2-135m-instruct (scripts/fetch-smollm2.sh), curl and the openai SDK"]
async fn smollm2_docs_curl_examples_run_as_written() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    let cfg = rllr_server::ServerConfig::load_from([
        "rllr-server",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--http-listen",
        "127.0.0.1:0",
        "--model-root",
        root,
    ])
    .unwrap();
    let policy = cfg.default_policy_model.clone().unwrap();
    let server = common::start(cfg).await;
    let addr = server.http_addr.unwrap();
    let outs = run_docs_curl(addr).await;
    let json = |s: &str| -> serde_json::Value { serde_json::from_str(s).unwrap() };
    let score = outs
        .iter()
        .find(|o| o.contains("\"rewards\"") && o.contains("\"mixed_reward\""))
        .expect("the /v1/score example answered");
    let get = outs
        .iter()
        .find(|o| o.contains("\"extra_logs\""))
        .expect("the /get_reward example answered");
    let mixed = json(score)["rewards"][0]["mixed_reward"].as_f64().unwrap();
    let rewarded = json(get)["rewards"][0].as_f64().unwrap();
    assert!(
        (mixed - rewarded).abs() <= 1e-5,
        "/get_reward {rewarded} vs /v1/score {mixed}"
    );
    let sdk = openai_sdk(addr, &policy, None).await;
    let label = json(sdk.trim())["label"].clone();
    assert!(
        label == "positive" || label == "negative",
        "the served policy answered {label}"
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
