//! `rllr-server`: load the configured models and serve them over gRPC until SIGTERM/SIGINT, then
//! go NOT_SERVING, wait `drain_delay_s` for load balancers to notice, stop accepting, drain
//! in-flight requests (up to `shutdown_timeout_s`) and exit.

use std::time::Duration;

use clap::CommandFactory;
use rllr_server::ServerConfig;

#[global_allocator]
static GLOBAL: rllr_cli::alloc::MiMalloc = rllr_cli::alloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    rllr_cli::alloc::retain_freed_memory();
    // Before any thread exists: the old `RLLR_*` names become `RLLR_SERVER_*`.
    let legacy = rllr_cli::adopt_legacy_env(
        &ServerConfig::command(),
        rllr_server::config::ENV_PREFIX,
        "RLLR_",
    );
    let cfg = ServerConfig::load()?;
    rllr_cli::init_logging(cfg.log_format, "RUST_LOG", "info");
    legacy.iter().for_each(rllr_cli::LegacyEnv::warn);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(cfg))
}

async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    let drain = Duration::from_secs(cfg.shutdown_timeout_s);
    let delay = Duration::from_secs(cfg.drain_delay_s);
    let server = rllr_server::start(cfg).await?;
    shutdown_signal().await;
    tracing::info!(
        drain_delay_s = delay.as_secs(),
        "shutdown signal received; NOT_SERVING, then draining"
    );
    server.shutdown_after(delay, drain).await
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
