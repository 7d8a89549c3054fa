//! The bearer tokens never leak: run the real `rllr-server` binary with both tokens set in its
//! environment and debug logging on, make it answer, refuse a wrong token and shut down on
//! SIGTERM, and look for the tokens in everything it wrote (JSON log lines) and exported
//! (`/metrics`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rllr_proto::v1::{self, reward_service_client::RewardServiceClient};
use tonic::{Code, Request};

const API_KEY: &str = "api-s3cr3t-4f1e";
const ADMIN_KEY: &str = "admin-s3cr3t-9b2c";

/// The value of `"key":"..."` in a JSON log line.
fn field(line: &serde_json::Value, key: &str) -> Option<String> {
    line.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_appear_in_no_log_line_and_no_metric() {
    let root = model_root();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rllr-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--model", "rm=rm", "--log-format", "json"])
        .arg("--model-root")
        .arg(root.path())
        .env("RLLR_SERVER_API_KEY", API_KEY)
        .env("RLLR_SERVER_ADMIN_KEY", ADMIN_KEY)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.clone());
        }
    });

    // The listening line names both addresses.
    let mut lines = Vec::new();
    let (addr, metrics) = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("rllr-server did not start");
        lines.push(line.clone());
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("--log-format json wrote a non-JSON line ({e}): {line}"));
        if field(&v, "message").as_deref() == Some("rllr-server listening") {
            let addr: SocketAddr = field(&v, "addr").unwrap().parse().unwrap();
            let m = field(&v, "metrics").unwrap();
            let m: SocketAddr = m
                .trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse()
                .unwrap();
            break (addr, m);
        }
    };

    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reward = RewardServiceClient::new(ch);
    let req = |token: &str| {
        let mut r = Request::new(v1::ScoreRequest {
            items: vec![item("A man sleeps.", "A person rests.", "r", "entailment")],
            label_model: "rm".into(),
            ..Default::default()
        });
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    reward.score(req(API_KEY)).await.unwrap();
    let wrong = reward.score(req("wrong-token")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert!(!wrong.message().contains(API_KEY));
    let body = scrape(metrics).await;
    assert!(body.contains("rllr_requests_total"));

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    reader.join().unwrap();
    lines.extend(rx.try_iter());

    assert!(lines.len() > 3, "{lines:?}");
    for line in &lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "{line}"
        );
        for s in [API_KEY, ADMIN_KEY] {
            assert!(!line.contains(s), "a token in the log: {line}");
        }
    }
    for s in [API_KEY, ADMIN_KEY] {
        assert!(!body.contains(s), "a token in /metrics");
    }
}
