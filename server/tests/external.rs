//! Checks with external tools against a live server: the Python grpcio client generated from the
//! same proto, and `promtool check metrics` on the /metrics endpoint. Ignored by default because
//! they need `pip install grpcio grpcio-tools` and Debian's `prometheus`; `.ci/run` installs both.

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with grpcio and grpcio-tools (run by .ci/run)"]
async fn python_grpcio_client() {
    let root = common::model_root();
    let server = common::start(common::config(root.path())).await;
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &addr, proto])
            .output()
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
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool (Debian package prometheus; run by .ci/run)"]
async fn promtool_check_metrics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let mut s = tokio::net::TcpStream::connect(server.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
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
/// (`models/quickstart/comve/`: M_sft as an SFT adapter over SmolLM2, the two reward models and the
/// RLLR-mixed policy) once the base model is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs models/smollm2-135m-instruct (scripts/fetch-smollm2.sh)"]
async fn smollm2_embedded_default_serves_the_quickstart_models() {
    use rllr_proto::v1::{
        model_service_client::ModelServiceClient, policy_service_client::PolicyServiceClient,
        reward_service_client::RewardServiceClient, ClassifyRequest, GenerationParams,
        ListModelsRequest, ScoreRequest,
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    let cfg = rllr_server::ServerConfig::load_from([
        "rllr-server",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--model-root",
        root,
    ])
    .unwrap();
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
    for want in ["rllr-mixed", "rm-label", "rm-rationale"] {
        assert!(names.contains(&want), "{want} not served: {names:?}");
    }
    let (a, b) = (
        "he put a turkey in the oven",
        "he put an elephant in the oven",
    );
    let mut reward = RewardServiceClient::new(ch.clone());
    let scored = reward
        .score(ScoreRequest {
            items: vec![
                common::item(a, b, "an elephant is too big for an oven", "second"),
                common::item(a, b, "an elephant is too big for an oven", "first"),
            ],
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
    let out = PolicyServiceClient::new(ch)
        .classify(ClassifyRequest {
            inputs: vec![common::input(a, b).unwrap()],
            model: "rllr-mixed".into(),
            params: Some(GenerationParams {
                max_new_tokens: Some(48),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let c = &out.results[0];
    eprintln!("rllr-mixed: {c:?}");
    assert!(
        ["first", "second", ""].contains(&c.label.as_str()),
        "label {} outside the task's label set",
        c.label
    );
    assert!(!c.text.is_empty());
    // "Statement 1" / "Statement 2" share their first token: the probabilities are read where
    // the labels part (" 1" / " 2"), so they are not an even split
    if !c.label.is_empty() {
        let p: Vec<f32> = c.probabilities.iter().map(|p| p.probability).collect();
        assert_eq!(p.len(), 2);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-4, "{p:?}");
        assert!(
            (p[0] - p[1]).abs() > 1e-4,
            "an even split means the fork was missed: {p:?}"
        );
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
