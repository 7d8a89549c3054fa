//! Assembling and running the gRPC server: models, services, health, reflection, TLS, metrics
//! listener and graceful shutdown.
//!
//! Health (`grpc.health.v1`) follows model readiness through the registry's `watch` channel:
//! `rllr.v1.RewardService` serves while a ready model can score, `rllr.v1.PolicyService` while one can
//! generate, `rllr.v1.ModelService` always; everything turns NOT_SERVING when shutdown begins.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rllr_proto::v1::model_service_server::ModelServiceServer;
use rllr_proto::v1::policy_service_server::PolicyServiceServer;
use rllr_proto::v1::reward_service_server::RewardServiceServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config::ServerConfig;
use crate::models::ModelApi;
use crate::policy::PolicyApi;
use crate::registry::Registry;
use crate::reward::RewardApi;
use crate::state::AppState;

pub const REWARD_SERVICE: &str = "rllr.v1.RewardService";
pub const POLICY_SERVICE: &str = "rllr.v1.PolicyService";
pub const MODEL_SERVICE: &str = "rllr.v1.ModelService";

/// A started server.
pub struct RunningServer {
    /// The gRPC address actually bound.
    pub addr: SocketAddr,
    /// The /metrics address actually bound, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    reporter: HealthReporter,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Load the configured models and start serving.
pub async fn start(cfg: ServerConfig) -> anyhow::Result<RunningServer> {
    let cfg = Arc::new(cfg);
    let metrics_addr = match cfg.metrics_listen.as_str() {
        "" => None,
        a => Some(crate::metrics::start(a).await?),
    };
    let registry = Arc::new(Registry::new(cfg.clone())?);
    for m in &cfg.models {
        let reg = registry.clone();
        let (name, path) = (m.name.clone(), m.path.to_string_lossy().into_owned());
        tokio::task::spawn_blocking(move || reg.load(&name, &path, false))
            .await?
            .map_err(|e| {
                anyhow::anyhow!("loading model '{}' from {}: {e}", m.name, m.path.display())
            })?;
    }
    let state = Arc::new(AppState::new(cfg.clone(), registry.clone()));

    let (reporter, health) = tonic_health::server::health_reporter();
    let mut changed = registry.subscribe();
    let (rep, reg) = (reporter.clone(), registry.clone());
    tokio::spawn(async move {
        loop {
            let models = reg.list();
            let ready = |f: fn(&crate::registry::ModelEntry) -> bool| {
                if models.iter().any(|m| m.ready() && f(m)) {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                }
            };
            rep.set_service_status(
                REWARD_SERVICE,
                ready(crate::registry::ModelEntry::can_score),
            )
            .await;
            rep.set_service_status(
                POLICY_SERVICE,
                ready(crate::registry::ModelEntry::can_generate),
            )
            .await;
            rep.set_service_status(MODEL_SERVICE, ServingStatus::Serving)
                .await;
            rep.set_service_status("", ServingStatus::Serving).await;
            if changed.changed().await.is_err() {
                break;
            }
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rllr_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let listener = TcpListener::bind(&cfg.listen).await?;
    let addr = listener.local_addr()?;
    let mut builder = Server::builder();
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let (tx, rx) = oneshot::channel::<()>();
    let router = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(RewardServiceServer::new(RewardApi {
            state: state.clone(),
        }))
        .add_service(PolicyServiceServer::new(PolicyApi {
            state: state.clone(),
        }))
        .add_service(ModelServiceServer::new(ModelApi { state }));
    let join = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = rx.await;
        },
    ));
    tracing::info!(%addr, metrics = ?metrics_addr, models = registry.list().len(), tls = cfg.tls_cert.is_some(), "rllr-server listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        registry,
        reporter,
        shutdown: Some(tx),
        join,
    })
}

impl RunningServer {
    /// Stop accepting, let in-flight requests finish (up to `drain`), then stop the workers.
    pub async fn shutdown(mut self, drain: Duration) -> anyhow::Result<()> {
        for s in [REWARD_SERVICE, POLICY_SERVICE, MODEL_SERVICE, ""] {
            self.reporter
                .set_service_status(s, ServingStatus::NotServing)
                .await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(drain, &mut self.join).await {
            Ok(r) => r??,
            Err(_) => {
                tracing::warn!(
                    ?drain,
                    "in-flight requests did not drain in time; stopping anyway"
                );
                self.join.abort();
            }
        }
        self.registry.clear();
        Ok(())
    }
}
