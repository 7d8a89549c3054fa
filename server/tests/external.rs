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
