//! The alerts (`deploy/base/prometheusrule.yaml`), the autoscaler (`deploy/base/hpa.yaml`) and the
//! Grafana dashboard (`deploy/grafana/rllr-server.json`) query metrics by name; a rename in the
//! server would leave them silently empty. This test scrapes a live server that has answered,
//! failed and batched, and checks every `rllr_*` name those files use against the scrape.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use rllr_proto::v1::{
    self, policy_service_client::PolicyServiceClient, reward_service_client::RewardServiceClient,
};

/// Every `rllr_[a-z0-9_]+` token of `text`.
fn rllr_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("rllr_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The sample names of a Prometheus text exposition (histograms as `_bucket`, `_sum`, `_count`).
fn scraped_names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_name_scanner_finds_names_in_promql() {
    let got = rllr_names(r#"sum(rate(rllr_a_total{x="y"}[5m])) / rllr_b_seconds_bucket"#);
    assert_eq!(
        got,
        BTreeSet::from(["rllr_a_total".into(), "rllr_b_seconds_bucket".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_alerts_and_autoscaler_query_metrics_that_exist() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let ch = tonic::transport::Endpoint::from_shared(url(&server))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reward = RewardServiceClient::new(ch.clone());
    let mut policy = PolicyServiceClient::new(ch);
    let it = item("A man sleeps.", "A person rests.", "r", "entailment");
    reward
        .score(v1::ScoreRequest {
            items: vec![it.clone()],
            label_model: "rm".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A failure, so the failure counter exists.
    let missing = reward
        .score(v1::ScoreRequest {
            items: vec![it],
            label_model: "no-such-model".into(),
            ..Default::default()
        })
        .await;
    assert!(missing.is_err());
    policy
        .classify(v1::ClassifyRequest {
            inputs: vec![input("A man sleeps.", "A person rests.").unwrap()],
            model: "pol".into(),
            params: Some(v1::GenerationParams {
                max_new_tokens: Some(4),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let scraped = scraped_names(&scrape(server.metrics_addr.unwrap()).await);

    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut checked = 0;
    for file in [
        "base/prometheusrule.yaml",
        "base/hpa.yaml",
        "grafana/rllr-server.json",
    ] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        let used = rllr_names(&text);
        assert!(!used.is_empty(), "{file} names no rllr metric");
        let missing: Vec<_> = used.difference(&scraped).collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, which the server does not export; it exports {scraped:?}"
        );
        checked += used.len();
    }
    assert!(checked >= 10, "only {checked} names checked");
    server
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}
