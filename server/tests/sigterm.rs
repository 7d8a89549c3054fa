//! SIGTERM under load on the real `rllr-server` binary, not the in-process `shutdown_after` of
//! `shutdown.rs`: this also covers the signal handler in `main.rs`, the flags
//! `--drain-delay-s`/`--shutdown-timeout-s` and the exit status a supervisor (Kubernetes) sees.
//! Every request sent before the signal is answered, health goes NOT_SERVING during the drain,
//! calls after the listener closed get UNAVAILABLE and the process exits 0 in time.
//! The bounds are generous: the test runs on loaded 2-core machines.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rllr_proto::v1::policy_service_client::PolicyServiceClient;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const DRAIN_DELAY_S: u64 = 2;
const SHUTDOWN_TIMEOUT_S: u64 = 20;
const LOAD: usize = 32;

async fn health_status(ch: tonic::transport::Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: "rllr.v1.PolicyService".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_answers_accepted_requests_and_exits_zero() {
    let root = model_root();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rllr-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--http-listen", "127.0.0.1:0"])
        .args(["--model", "pol=pol", "--log-format", "json"])
        .args(["--max-new-tokens", "48", "--queue-capacity", "4096"])
        .args(["--drain-delay-s", &DRAIN_DELAY_S.to_string()])
        .args(["--shutdown-timeout-s", &SHUTDOWN_TIMEOUT_S.to_string()])
        .arg("--model-root")
        .arg(root.path())
        .env_remove("RLLR_SERVER_API_KEY")
        .env_remove("RLLR_SERVER_ADMIN_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let addr: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("rllr-server did not start");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v.get("message").and_then(|m| m.as_str()) == Some("rllr-server listening") {
            break v["addr"].as_str().unwrap().parse().unwrap();
        }
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let ch = endpoint.connect().await.unwrap();
    assert_eq!(
        health_status(ch.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // Load: LOAD requests of 4 generations each, each on its own connection, all on the wire
    // before the signal (the server has begun answering one when we send it).
    let mut conns = Vec::new();
    for _ in 0..LOAD {
        conns.push(endpoint.connect().await.unwrap());
    }
    let load: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let mut p = PolicyServiceClient::new(c);
            tokio::spawn(async move {
                let r = p.classify(classify_four()).await;
                (r, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let signalled = Instant::now();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    // Draining: health turns NOT_SERVING while the listener is still open (the drain delay).
    let mut not_serving_at = None;
    while signalled.elapsed() < Duration::from_secs(DRAIN_DELAY_S) {
        match health_status(ch.clone()).await {
            Ok(s) if s == ServingStatus::NotServing as i32 => {
                not_serving_at = Some(signalled.elapsed());
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("health failed during the drain delay: {e}"),
        }
    }
    let not_serving_at = not_serving_at.expect("health never went NOT_SERVING in the drain delay");

    // After the delay the listener closes: a call on a new connection gets UNAVAILABLE (probed
    // with the cheap health RPC, then a Classify).
    let mut closed_at = None;
    while signalled.elapsed() < Duration::from_secs(DRAIN_DELAY_S + SHUTDOWN_TIMEOUT_S) {
        match health_status(endpoint.connect_lazy()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e}");
                closed_at = Some(signalled.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("the listener never closed");
    assert!(
        closed_at >= Duration::from_secs(DRAIN_DELAY_S),
        "refused before the drain delay was over: {closed_at:?}"
    );
    let err = PolicyServiceClient::new(endpoint.connect_lazy())
        .classify(classify_four())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    let mut answered_after_signal = 0;
    for t in load {
        let (r, at) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("a request sent before SIGTERM failed: {e}"));
        assert_eq!(r.into_inner().results.len(), 4);
        answered_after_signal += usize::from(at > signalled);
    }

    let status = tokio::task::spawn_blocking(move || {
        let deadline =
            Instant::now() + Duration::from_secs(DRAIN_DELAY_S + SHUTDOWN_TIMEOUT_S + 10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rllr-server still running past drain delay + shutdown timeout + 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let exited = signalled.elapsed();
    reader.join().unwrap();
    let lines: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("shutdown signal received")),
        "{lines:#?}"
    );
    eprintln!(
        "NOT_SERVING after {not_serving_at:?}, refused after {closed_at:?}, exited after \
         {exited:?}; {answered_after_signal}/{LOAD} answers came after SIGTERM"
    );
    assert!(
        answered_after_signal > 0,
        "the load finished before the signal: the test shows nothing"
    );
}
