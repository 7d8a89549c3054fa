//! `ModelService`: list and describe models; load, hot-reload and unload them (admin only).

use std::sync::Arc;

use rllr_core::manifest::ModelKind;
use rllr_proto::v1::{self, model_service_server::ModelService};
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::error::Error;
use crate::registry::ModelEntry;
use crate::state::{self, AppState};

/// The proto description of a loaded model.
pub fn info(st: &AppState, m: &ModelEntry) -> v1::ModelInfo {
    let kind = match m.kind {
        ModelKind::Base => v1::ModelKind::Base,
        ModelKind::Sft => v1::ModelKind::Sft,
        ModelKind::Reward => v1::ModelKind::Reward,
        ModelKind::Value => v1::ModelKind::Value,
        ModelKind::Policy => v1::ModelKind::Policy,
    };
    let c = &st.cfg;
    let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    v1::ModelInfo {
        name: m.name.clone(),
        kind: kind as i32,
        task: m.task.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
        labels: m.labels.clone(),
        template: m.template.name().to_string(),
        base: m.base.clone(),
        dtype: m.dtype.clone(),
        device: m.device.clone(),
        limits: Some(v1::Limits {
            max_input_tokens: u(c.max_input_tokens),
            max_new_tokens: u(c.max_new_tokens),
            max_items_per_request: u(c.max_items_per_request),
            max_batch_tokens: u(c.max_batch_tokens),
            max_batch_size: u(c.max_batch_size),
            queue_capacity: u(c.queue_capacity),
        }),
        path: m.rel_path.clone(),
        head: m.head.clone().unwrap_or_default(),
        ready: m.ready(),
        revision: m.revision.clone(),
    }
}

/// The ModelService implementation.
pub struct ModelApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn list_models(
        &self,
        req: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let call = self
            .state
            .begin_light(req.metadata(), "list_models", Role::User)?;
        let models = self
            .state
            .registry
            .list()
            .iter()
            .map(|m| info(&self.state, m))
            .collect();
        call.finish(Ok(v1::ListModelsResponse { models }))
    }

    async fn get_model(
        &self,
        req: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let call = self
            .state
            .begin_light(req.metadata(), "get_model", Role::User)?;
        let r = self
            .state
            .registry
            .get(&req.get_ref().name)
            .map(|m| info(&self.state, &m));
        call.finish(r)
    }

    async fn load_model(
        &self,
        req: Request<v1::LoadModelRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let call = self
            .state
            .begin_light(req.metadata(), "load_model", Role::Admin)?;
        let r = req.into_inner();
        let reg = self.state.registry.clone();
        let loaded = state::blocking(move || reg.load(&r.name, &r.path, r.replace)).await;
        call.finish(loaded.map(|m| info(&self.state, &m)))
    }

    async fn unload_model(
        &self,
        req: Request<v1::UnloadModelRequest>,
    ) -> Result<Response<v1::UnloadModelResponse>, Status> {
        let call = self
            .state
            .begin_light(req.metadata(), "unload_model", Role::Admin)?;
        let name = &req.get_ref().name;
        let r = if name.is_empty() {
            Err(Error::invalid("name", "must be non-empty"))
        } else {
            self.state.registry.unload(name)
        };
        call.finish(r.map(|_| v1::UnloadModelResponse {}))
    }

    async fn get_server_info(
        &self,
        req: Request<v1::GetServerInfoRequest>,
    ) -> Result<Response<v1::ServerInfo>, Status> {
        let call = self
            .state
            .begin_light(req.metadata(), "get_server_info", Role::User)?;
        let c = &self.state.cfg;
        call.finish(Ok(v1::ServerInfo {
            version: crate::VERSION.to_string(),
            git_sha: crate::GIT_SHA.to_string(),
            device: c.device.clone(),
            dtype: c.dtype.clone(),
            uptime_s: self.state.started.elapsed().as_secs(),
        }))
    }
}
