//! Client-side balancing over the addresses of one name, against real servers: calls spread over
//! every address a name resolves to, follow the name when its addresses change, and leave a
//! replica that went away; a batch job's streams move onto a replica that joins mid-job.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rllr_client::batch::{self, BatchConfig};
use rllr_client::pool::{Resolve, ResolveFuture};
use rllr_client::{v1, Client, ClientConfig};
use rllr_server::testutil::{config, input, model_root, start};

/// Answers every lookup with the addresses the test sets.
#[derive(Clone, Default)]
struct Fixed(Arc<Mutex<Vec<SocketAddr>>>);

impl Resolve for Fixed {
    fn resolve(&self, _host: &str, _port: u16) -> ResolveFuture {
        let a = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(a) })
    }
}

fn score() -> v1::ScoreRequest {
    v1::ScoreRequest {
        items: vec![v1::ScoreItem {
            input: input("A man sleeps.", "A person rests."),
            rationale: "Sleeping is resting.".into(),
            label: "entailment".into(),
        }],
        label_model: "rm".into(),
        ..Default::default()
    }
}

fn client(r: &Fixed, port: u16) -> Client {
    ClientConfig::new([format!("http://rllr-replicas.test:{port}")])
        .resolver(Arc::new(r.clone()))
        .resolve_every(Some(Duration::from_millis(100)))
        .connect()
        .unwrap()
}

async fn calls(c: &Client, n: usize) {
    for _ in 0..n {
        c.score(score()).await.unwrap();
    }
}

/// The count of address `a` in a map keyed by member label (`http://IP:port (name:port)`).
fn count_for(counts: &std::collections::BTreeMap<String, u64>, a: SocketAddr) -> u64 {
    let key = format!("http://{a} ");
    counts
        .iter()
        .filter(|(k, _)| k.starts_with(&key))
        .map(|(_, n)| n)
        .sum()
}

/// Calls answered per server address.
fn per_addr(c: &Client, a: SocketAddr) -> u64 {
    count_for(&c.answered(), a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_spread_over_every_address_of_a_name() {
    let root = model_root();
    let (a, b) = (
        start(config(root.path())).await,
        start(config(root.path())).await,
    );
    let r = Fixed::default();
    *r.0.lock().unwrap() = vec![a.addr, b.addr];
    let c = client(&r, a.addr.port());
    calls(&c, 8).await;
    assert_eq!((per_addr(&c, a.addr), per_addr(&c, b.addr)), (4, 4));
    assert_eq!(c.endpoints().await.len(), 2);
    assert!(c.health("").await.iter().all(|h| h.serving));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_follows_the_name_when_replicas_come_and_go() {
    let root = model_root();
    let (a, b) = (
        start(config(root.path())).await,
        start(config(root.path())).await,
    );
    let (a_addr, b_addr) = (a.addr, b.addr);
    let r = Fixed::default();
    *r.0.lock().unwrap() = vec![a_addr];
    let c = client(&r, a_addr.port());
    calls(&c, 4).await;
    assert_eq!((per_addr(&c, a_addr), per_addr(&c, b_addr)), (4, 0));

    // A new replica appears in DNS: it gets its share.
    *r.0.lock().unwrap() = vec![a_addr, b_addr];
    let t0 = tokio::time::Instant::now();
    while c.endpoints().await.len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "new address not found"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    calls(&c, 4).await;
    assert_eq!((per_addr(&c, a_addr), per_addr(&c, b_addr)), (6, 2));

    // The first replica goes away (and out of DNS): every call still succeeds, on the second.
    *r.0.lock().unwrap() = vec![b_addr];
    a.shutdown(Duration::from_secs(5)).await.unwrap();
    calls(&c, 6).await;
    assert_eq!(
        per_addr(&c, a_addr),
        6,
        "nothing more answered by the gone replica"
    );
    assert_eq!(per_addr(&c, b_addr), 8);
    drop(b);
}

/// Rows of a 1,000-row batch job answered by replica A and by replica B, when B joins the name
/// after the job has written 20 rows; `rotate` is the job's stream lifetime.
async fn batch_rows_when_a_replica_joins(rotate: Option<Duration>) -> (u64, u64) {
    let root = model_root();
    let (a, b) = (
        start(config(root.path())).await,
        start(config(root.path())).await,
    );
    let r = Fixed::default();
    *r.0.lock().unwrap() = vec![a.addr];
    let c = client(&r, a.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    let n = 1000;
    let rows: String = (0..n)
        .map(|i| {
            let r = serde_json::json!({"id": format!("r{i}"), "text": format!("A man number {i} sleeps."), "text_pair": "A person rests."});
            format!("{r}\n")
        })
        .collect();
    std::fs::write(&inp, rows).unwrap();
    let mut bc = BatchConfig::new(&inp, &out);
    bc.model = "pol".into();
    bc.params.max_new_tokens = Some(8);
    bc.concurrency = 2;
    bc.rotate_every = rotate;
    let job = tokio::spawn(async move { batch::run(&c, bc).await });
    let written = || {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while written() < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *r.0.lock().unwrap() = vec![a.addr, b.addr];
    let s = tokio::time::timeout(Duration::from_secs(120), job)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((s.written, written()), (n, n), "{s:?}");
    (
        count_for(&s.rows_per_endpoint, a.addr),
        count_for(&s.rows_per_endpoint, b.addr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_joins_mid_job_gets_rows_when_streams_rotate() {
    let (a, b) = batch_rows_when_a_replica_joins(Some(Duration::from_millis(100))).await;
    assert_eq!(a + b, 1000);
    assert!(
        b >= 100,
        "the new replica answered only {b} of 1000 rows (a: {a})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_rotation_a_long_lived_stream_stays_on_its_replica() {
    assert_eq!(batch_rows_when_a_replica_joins(None).await, (1000, 0));
}
