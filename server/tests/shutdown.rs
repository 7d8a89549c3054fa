//! Graceful shutdown under load, the sequence a Kubernetes pod goes through on SIGTERM: health
//! turns NOT_SERVING at once, the listener stays open for the drain delay (load balancers are
//! still catching up), then it closes, every request accepted until then gets its answer, later
//! ones get UNAVAILABLE, and the server is gone within the drain timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rllr_proto::v1::policy_service_client::PolicyServiceClient;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_accepted_before_the_listener_closes_are_answered() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.queue_capacity = 4096;
    let server = start(cfg).await;
    let ch = tonic::transport::Endpoint::from_shared(url(&server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(ch.clone());
    let status = |h: &mut HealthClient<_>| {
        let mut h = h.clone();
        async move {
            h.check(HealthCheckRequest {
                service: "rllr.v1.PolicyService".into(),
            })
            .await
            .map(|r| r.into_inner().status)
        }
    };
    assert_eq!(
        status(&mut health).await.unwrap(),
        ServingStatus::Serving as i32
    );

    // Load: 48 requests of 4 generations each, sent before the drain starts.
    let load: Vec<_> = (0..48)
        .map(|_| {
            let mut p = PolicyServiceClient::new(ch.clone());
            tokio::spawn(async move {
                let r = p.classify(classify_four()).await;
                (r, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let delay = Duration::from_millis(500);
    let drain = Duration::from_secs(30);
    let began = Instant::now();
    let stop = tokio::spawn(server.shutdown_after(delay, drain));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Draining: NOT_SERVING, yet a request that still arrives in the delay is answered.
    assert_eq!(
        status(&mut health).await.unwrap(),
        ServingStatus::NotServing as i32
    );
    let mut late = PolicyServiceClient::new(ch.clone());
    let in_delay = late.classify(classify_four()).await;
    assert!(in_delay.is_ok(), "{in_delay:?}");

    stop.await.unwrap().unwrap();
    let stopped = began.elapsed();
    assert!(stopped >= delay && stopped < drain, "{stopped:?}");
    let mut answered_after_drain_began = 0;
    let mut answered_after_close = 0;
    for t in load {
        let (r, at) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("an accepted request failed: {e}"));
        assert_eq!(r.into_inner().results.len(), 4);
        answered_after_drain_began += usize::from(at > began);
        answered_after_close += usize::from(at > began + delay);
    }
    eprintln!(
        "stopped after {stopped:?}; {answered_after_drain_began}/48 answers came after the drain \
         began, {answered_after_close} after the listener closed"
    );
    assert!(
        answered_after_drain_began > 0,
        "the load finished before the drain: the test shows nothing"
    );

    // After the listener closed: UNAVAILABLE, on the old channel and on a new connection.
    let err = late.classify(classify_four()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_batch_stream_is_answered_then_ended_with_unavailable_at_shutdown() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let ch = tonic::transport::Endpoint::from_shared(url(&server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A batch job's stream: messages sent, the request side left open (more would follow).
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for _ in 0..3 {
        tx.send(classify_four()).await.unwrap();
    }
    let mut replies = PolicyServiceClient::new(ch)
        .classify_batch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let drain = Duration::from_secs(30);
    let began = Instant::now();
    let stop = tokio::spawn(server.shutdown_after(Duration::ZERO, drain));
    let mut answered = 0;
    let end = loop {
        match replies.message().await {
            Ok(Some(r)) => {
                assert_eq!(r.results.len(), 4);
                answered += 1;
            }
            Ok(None) => panic!("the stream ended without saying why"),
            Err(s) => break s,
        }
    };
    assert_eq!(
        answered, 3,
        "every message sent before shutdown is answered"
    );
    assert_eq!(end.code(), Code::Unavailable, "{end}");
    stop.await.unwrap().unwrap();
    let stopped = began.elapsed();
    assert!(
        stopped < drain / 2,
        "the open stream held the drain for {stopped:?}"
    );
    drop(tx);
}
