//! `rllr-server`: load the configured models and serve them over gRPC until SIGTERM/SIGINT, then
//! drain in-flight requests (up to `shutdown_timeout_s`) and exit.

use std::time::Duration;

use rllr_server::ServerConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = ServerConfig::load()?;
    let drain = Duration::from_secs(cfg.shutdown_timeout_s);
    let server = rllr_server::start(cfg).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    server.shutdown(drain).await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
