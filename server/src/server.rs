//! Assembling and running the gRPC server: models, services, health, reflection, TLS, metrics
//! listener and graceful shutdown.
//!
//! Health (`grpc.health.v1`) follows model readiness through the registry's `watch` channel:
//! `rllr.v1.RewardService` serves while a ready model can score, `rllr.v1.PolicyService` while one can
//! generate, `rllr.v1.ModelService` always; everything turns NOT_SERVING when shutdown begins.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// Every name health reports on ("" is the whole server, for liveness probes).
const ALL_SERVICES: [&str; 4] = [REWARD_SERVICE, POLICY_SERVICE, MODEL_SERVICE, ""];

/// A started server.
pub struct RunningServer {
    /// The gRPC address actually bound.
    pub addr: SocketAddr,
    /// The /metrics address actually bound, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTP/JSON address actually bound, if enabled.
    pub http_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    reporter: HealthReporter,
    /// Set when shutdown begins, so a model event cannot turn health back to SERVING.
    draining: Arc<AtomicBool>,
    /// The OTLP provider, flushed after the drain.
    otel: Option<crate::otel::Otel>,
    /// To end open streams when the listener closes.
    state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<Result<(), tonic::transport::Error>>,
    http: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
}

/// Load the configured models and start serving.
pub async fn start(cfg: ServerConfig) -> anyhow::Result<RunningServer> {
    let cfg = Arc::new(cfg);
    let metrics_addr = match cfg.metrics_listen.as_str() {
        "" => None,
        a => Some(crate::metrics::start(a)?),
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
    let otel = crate::otel::init(
        cfg.otlp_endpoint.as_deref(),
        &cfg.otel_service_name,
        cfg.otel_sample_ratio,
    )?;
    let mut state = AppState::new(cfg.clone(), registry.clone());
    state.tracer = otel.as_ref().map(|o| o.tracer.clone());
    let state = Arc::new(state);
    let app_state = state.clone();

    let (reporter, health) = tonic_health::server::health_reporter();
    let mut changed = registry.subscribe();
    let (rep, reg) = (reporter.clone(), registry.clone());
    let draining = Arc::new(AtomicBool::new(false));
    let drain_flag = draining.clone();
    tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::new();
        loop {
            let models = reg.list();
            let names: HashSet<String> = models.iter().map(|m| m.name.clone()).collect();
            for m in &models {
                let v = if m.ready() { 1.0 } else { 0.0 };
                metrics::gauge!("rllr_model_ready", "model" => m.name.clone()).set(v);
            }
            for gone in seen.difference(&names) {
                metrics::gauge!("rllr_model_ready", "model" => gone.clone()).set(-1.0);
            }
            seen = names;
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
            if drain_flag.load(Ordering::Acquire) {
                // Shutdown began while this pass ran: undo it (shutdown owns health from now on).
                for s in ALL_SERVICES {
                    rep.set_service_status(s, ServingStatus::NotServing).await;
                }
                break;
            }
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
        .add_service(ModelServiceServer::new(ModelApi {
            state: state.clone(),
        }));
    let join = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = rx.await;
        },
    ));
    let (http_addr, http) = match cfg.http_listen.as_str() {
        "" => (None, None),
        a => {
            if cfg.tls_cert.is_some() {
                tracing::warn!(http = a, "TLS is configured for gRPC only: the HTTP front is plaintext (terminate TLS in front of it, or set http_listen = \"\")");
            }
            let (htx, hrx) = oneshot::channel::<()>();
            let front = crate::http::Http {
                state,
                draining: draining.clone(),
            };
            let (bound, join) = crate::http::serve(a, front, async {
                let _ = hrx.await;
            })
            .await?;
            (Some(bound), Some((htx, join)))
        }
    };
    tracing::info!(%addr, http = ?http_addr, metrics = ?metrics_addr, models = registry.list().len(), tls = cfg.tls_cert.is_some(), "rllr-server listening");
    Ok(RunningServer {
        addr,
        metrics_addr,
        http_addr,
        registry,
        reporter,
        draining,
        otel,
        state: app_state,
        shutdown: Some(tx),
        join,
        http,
    })
}

impl RunningServer {
    /// Stop accepting, let in-flight requests finish (up to `drain`), then stop the workers.
    pub async fn shutdown(self, drain: Duration) -> anyhow::Result<()> {
        self.shutdown_after(Duration::ZERO, drain).await
    }

    /// The SIGTERM sequence: every health service turns NOT_SERVING at once, new calls are still
    /// served for `delay` (while load balancers and Kubernetes endpoints notice), then the listener
    /// closes and in-flight requests get up to `drain` to finish before the workers stop.
    pub async fn shutdown_after(mut self, delay: Duration, drain: Duration) -> anyhow::Result<()> {
        self.draining.store(true, Ordering::Release);
        for s in ALL_SERVICES {
            self.reporter
                .set_service_status(s, ServingStatus::NotServing)
                .await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.state.close_streams();
        let started = std::time::Instant::now();
        if let Some((tx, mut join)) = self.http.take() {
            let _ = tx.send(());
            match tokio::time::timeout(drain, &mut join).await {
                Ok(r) => r??,
                Err(_) => {
                    tracing::warn!(?drain, "in-flight HTTP requests did not drain in time");
                    join.abort();
                }
            }
        }
        let drain = drain.saturating_sub(started.elapsed());
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
        if let Some(o) = self.otel.take() {
            // Flush the spans still batched; blocking, so off the async workers.
            let flushed = tokio::task::spawn_blocking(move || o.provider.shutdown()).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(error = %e, "flushing the OTLP exporter failed");
            }
        }
        Ok(())
    }
}
