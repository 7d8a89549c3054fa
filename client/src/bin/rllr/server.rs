//! The commands that ask about the server rather than a model's answers: `rllr models`,
//! `rllr info`, `rllr health`.

use anyhow::Result;
use clap::Args;
use rllr_client::{v1, Client};

use crate::output::{OutputFormat, Rows};

/// List the served models, or describe one (to see its labels and limits before sending).
#[derive(Args, Debug)]
pub struct Models {
    /// Describe just this model.
    #[arg(long, env = "RLLR_CLIENT_MODEL_NAME")]
    name: Option<String>,
}

impl Models {
    pub async fn run(self, c: &Client, format: OutputFormat) -> Result<i32> {
        let models = match self.name {
            Some(n) => vec![c.get_model(&n).await?],
            None => c.list_models().await?,
        };
        let kind = |k: i32| {
            v1::ModelKind::try_from(k)
                .map_or("?", |k| k.as_str_name())
                .trim_start_matches("MODEL_KIND_")
                .to_lowercase()
        };
        let mut rows = Rows::new(&["name", "kind", "task", "labels", "ready", "revision"]);
        for m in &models {
            let l = m.limits.unwrap_or_default();
            rows.push(
                vec![
                    m.name.clone(),
                    kind(m.kind),
                    m.task.clone(),
                    m.labels.join(","),
                    m.ready.to_string(),
                    short_revision(&m.revision),
                ],
                serde_json::json!({"name": m.name, "kind": kind(m.kind), "task": m.task, "labels": m.labels, "template": m.template, "dtype": m.dtype, "device": m.device, "path": m.path, "head": m.head, "ready": m.ready, "revision": m.revision, "limits": {"max_input_tokens": l.max_input_tokens, "max_new_tokens": l.max_new_tokens, "max_items_per_request": l.max_items_per_request, "max_batch_size": l.max_batch_size, "queue_capacity": l.queue_capacity}}),
            );
        }
        rows.print(format)?;
        Ok(0)
    }
}

/// `sha256:` + the first 12 hex digits: enough to tell revisions apart in a table (`--output
/// json` has the full hash).
fn short_revision(r: &str) -> String {
    r.chars().take("sha256:".len() + 12).collect()
}

/// Version, git commit, device and uptime of the server (the first endpoint that answers):
/// which build a deployment runs.
#[derive(Args, Debug)]
pub struct Info {}

impl Info {
    pub async fn run(self, c: &Client, format: OutputFormat) -> Result<i32> {
        let i = c.server_info().await?;
        let mut rows = Rows::new(&["version", "git_sha", "device", "dtype", "uptime_s"]);
        rows.push(
            vec![
                i.version.clone(),
                i.git_sha.clone(),
                i.device.clone(),
                i.dtype.clone(),
                i.uptime_s.to_string(),
            ],
            serde_json::json!({"version": i.version, "git_sha": i.git_sha, "device": i.device, "dtype": i.dtype, "uptime_s": i.uptime_s}),
        );
        rows.print(format)?;
        Ok(0)
    }
}

/// Check grpc.health.v1 on every endpoint; exits non-zero unless all serve (for probes).
#[derive(Args, Debug)]
pub struct Health {
    /// Service to check: "" (the server), rllr.v1.RewardService, rllr.v1.PolicyService,
    /// rllr.v1.ModelService.
    #[arg(long, env = "RLLR_CLIENT_SERVICE", default_value = "")]
    service: String,
}

impl Health {
    pub async fn run(self, c: &Client, format: OutputFormat) -> Result<i32> {
        let h = c.health(&self.service).await;
        let mut rows = Rows::new(&["endpoint", "service", "status"]);
        for x in &h {
            rows.push(
                vec![x.endpoint.clone(), x.service.clone(), x.status.clone()],
                serde_json::to_value(x)?,
            );
        }
        rows.print(format)?;
        Ok(if h.iter().all(|x| x.serving) { 0 } else { 1 })
    }
}
