//! Provenance and tracing of answers: every loaded model has a content hash (revision) in
//! `ModelInfo` and in the metadata of each response it produced, a hot reload with new weights
//! changes it, `GetServerInfo` names the build, and a caller's `x-request-id` comes back on
//! answers and errors alike.

mod common;

use common::*;
use rllr_core::manifest::ModelKind;
use rllr_proto::v1::{
    self, model_service_client::ModelServiceClient, reward_service_client::RewardServiceClient,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn channel(server: &rllr_server::RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(url(server))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn score(model: &str) -> v1::ScoreRequest {
    v1::ScoreRequest {
        items: vec![item("A man sleeps.", "A person rests.", "r", "entailment")],
        label_model: model.into(),
        ..Default::default()
    }
}

async fn revision(models: &mut ModelServiceClient<Channel>, name: &str) -> String {
    let info = models
        .get_model(v1::GetModelRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    info.revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_names_the_revision_of_the_weights_that_answered() {
    let root = model_root();
    let mut cfg = config(root.path());
    cfg.admin_key = Some("admin".into());
    let server = start(cfg).await;
    let ch = channel(&server).await;
    let mut models = ModelServiceClient::new(ch.clone());
    let mut reward = RewardServiceClient::new(ch);

    let rm = revision(&mut models, "rm").await;
    let rm2 = revision(&mut models, "rm2").await;
    assert!(rm.starts_with("sha256:") && rm.len() == 7 + 64, "{rm}");
    assert_ne!(rm, rm2, "different weights, different revisions");

    let md = reward
        .score(v1::ScoreRequest {
            rationale_model: "rm2".into(),
            ..score("rm")
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap();
    assert_eq!(md.model_revisions.len(), 2);
    assert_eq!(md.model_revisions["rm"], rm);
    assert_eq!(md.model_revisions["rm2"], rm2);

    // Hot reload of "rm" with other weights: the revision follows the weights.
    write_model(root.path(), "rm-v2", ModelKind::Reward, 99, "plain");
    let mut load = Request::new(v1::LoadModelRequest {
        name: "rm".into(),
        path: "rm-v2".into(),
        replace: true,
    });
    load.metadata_mut()
        .insert("authorization", "Bearer admin".parse().unwrap());
    let loaded = models.load_model(load).await.unwrap().into_inner();
    assert_ne!(loaded.revision, rm);
    let md = reward
        .score(score("rm"))
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap();
    assert_eq!(md.model_revisions["rm"], loaded.revision);
    assert_eq!(revision(&mut models, "rm").await, loaded.revision);
    server
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_names_the_build() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let mut models = ModelServiceClient::new(channel(&server).await);
    let info = models
        .get_server_info(v1::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(!info.git_sha.is_empty());
    assert_eq!(info.device, "cpu");
    server
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_request_id_is_echoed_on_answers_and_errors() {
    let root = model_root();
    let server = start(config(root.path())).await;
    let mut reward = RewardServiceClient::new(channel(&server).await);
    let with_id = |m: v1::ScoreRequest, id: &str| {
        let mut r = Request::new(m);
        r.metadata_mut().insert("x-request-id", id.parse().unwrap());
        r
    };

    let ok = reward
        .score(with_id(score("rm"), "job-7/row-42"))
        .await
        .unwrap();
    assert_eq!(ok.metadata().get("x-request-id").unwrap(), "job-7/row-42");
    assert_eq!(ok.into_inner().metadata.unwrap().request_id, "job-7/row-42");

    let err = reward
        .score(with_id(score("no-such-model"), "job-7/row-43"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "job-7/row-43");

    // An id past the limit is not trusted: the server assigns its own.
    let long = "x".repeat(200);
    let ok = reward.score(with_id(score("rm"), &long)).await.unwrap();
    let id = ok.into_inner().metadata.unwrap().request_id;
    assert!(id.starts_with("req-"), "{id}");
    server
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
}
