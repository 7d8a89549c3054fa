//! `POST /get_reward`: the label-sensitive reward model as OpenRLHF's remote reward model.
//!
//! OpenRLHF (`--remote_rm_url`, `openrlhf/utils/remote_rm_utils.py`) posts
//! `{"query": [full texts], "prompts": [prompt texts], "labels": [...]}` and reads `rewards`. Each
//! query is the chat-rendered prompt followed by the policy's response (decoded with its special
//! tokens, so it may carry padding before and EOS after). The server:
//!
//! 1. strips leading pad and trailing EOS / end-of-turn tokens (as `openrlhf.cli.serve_rm` does);
//! 2. splits prompt and response: at `prompts[i]` when it is a prefix of the query, else after the
//!    last generation-prompt marker of the label model's chat template (ChatML:
//!    `<|im_start|>assistant\n`; a template whose marker cannot be found needs `prompts`);
//! 3. parses the response's final `Answer:` line against the label model's labels;
//! 4. scores `prompt + render(rationale, label) + end-of-turn` exactly as `Score` does, through
//!    the same batcher and engine, and returns the mixed reward `min(r_label, λ) + r_rationale`.
//!
//! A response without a parseable answer line, or with a label outside the label set, gets
//! `get_reward_penalty` (default −10) and is not scored. `labels` (OpenRLHF's dataset labels) are
//! accepted and ignored: the reward models judge the label. The models and λ come from the URL's
//! query string (`?label_model=rm-label&rationale_model=rm-rationale&lambda=0.2`), since OpenRLHF
//! only takes a URL; without them, the default reward model alone.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::wire::{metadata, ok_json, ApiError, ErrorBody, Http, Json};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::registry::ModelEntry;
use crate::reward::{score_items, RewardModels, ScoredItem};
use crate::state::{AppState, Call};
use crate::text::Prompt;

/// OpenRLHF's request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct GetRewardRequest {
    /// Full texts: chat-rendered prompt + response.
    pub query: Vec<String>,
    /// The prompt part of each query (as OpenRLHF sends it); optional.
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    /// OpenRLHF's dataset labels: accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub labels: Option<Vec<serde_json::Value>>,
}

/// The models and λ of a `/get_reward` URL.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetRewardParams {
    /// Label-sensitive reward model (default: the server's default reward model).
    #[serde(default)]
    pub label_model: String,
    /// Rationale reward model; without one the reward is the label reward alone.
    #[serde(default)]
    pub rationale_model: String,
    /// Cap on the label reward (default: the server's `lambda`).
    pub lambda: Option<f32>,
}

/// OpenRLHF's response, with the parts of each reward.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GetRewardResponse {
    /// The mixed reward per query (what OpenRLHF reads).
    pub rewards: Vec<f32>,
    /// The same values (newer OpenRLHF reads `scores`).
    pub scores: Vec<f32>,
    /// Per query: the parts, for logging.
    pub extra_logs: ExtraLogs,
}

/// The parts of each reward.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExtraLogs {
    /// r_label, or null for an unparseable response.
    pub label_reward: Vec<Option<f32>>,
    /// r_rationale, or null (no rationale model, or unparseable).
    pub rationale_reward: Vec<Option<f32>>,
    /// The parsed label, or null.
    pub label: Vec<Option<String>>,
    /// 1 where the response had no parseable answer (the penalty was given).
    pub unparseable: Vec<f32>,
}

/// Score full chat texts with the label-sensitive (and rationale) reward model.
#[utoipa::path(post, path = "/get_reward", request_body = GetRewardRequest, params(GetRewardParams),
    responses((status = 200, body = GetRewardResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_reward(
    State(h): State<Http>,
    Query(params): Query<GetRewardParams>,
    headers: HeaderMap,
    Json(req): Json<GetRewardRequest>,
) -> std::result::Result<Response, ApiError> {
    let md = metadata(&headers)?;
    let call = h.state.begin(&md, "get_reward", Role::User)?;
    let r = call.within(run(&h.state, &params, req, &call)).await;
    match call.finish(r) {
        Ok(resp) => {
            let (md, v, _) = resp.into_parts();
            Ok(ok_json(&md, &v))
        }
        Err(s) => Err(s.into()),
    }
}

async fn run(
    st: &AppState,
    params: &GetRewardParams,
    req: GetRewardRequest,
    call: &Call,
) -> Result<GetRewardResponse> {
    let n = req.query.len();
    let max = st.cfg.max_items_per_request;
    if n == 0 {
        return Err(Error::invalid("query", "must hold at least 1 text"));
    }
    if n > max {
        return Err(Error::invalid(
            "query",
            format!("{n} texts exceed max_items_per_request {max}"),
        ));
    }
    if let Some(p) = &req.prompts {
        if p.len() != n {
            return Err(Error::invalid(
                "prompts",
                format!("{} prompts for {n} queries; send one per query", p.len()),
            ));
        }
    }
    let models = RewardModels::resolve(
        st,
        call,
        &params.label_model,
        &params.rationale_model,
        params.lambda,
    )?;
    let mut items = Vec::new();
    let mut which = Vec::new();
    let mut labels = vec![None; n];
    let splitter = Splitter::new(&models.label);
    for (i, q) in req.query.iter().enumerate() {
        let prompt = req.prompts.as_ref().map(|p| p[i].as_str());
        let (prompt, response) = splitter.split(q, prompt, &format!("query[{i}]"))?;
        let parsed = models
            .label
            .format
            .parse(response, &models.label.label_texts);
        if let Some(k) = parsed.label {
            labels[i] = Some(models.label.labels[k].clone());
            items.push(ScoredItem {
                input: Prompt::Rendered(prompt.to_string()),
                rationale: parsed.rationale,
                label: models.label.labels[k].clone(),
            });
            which.push(i);
        }
    }
    let penalty = st.cfg.get_reward_penalty;
    let mut rewards = vec![penalty; n];
    let mut label_reward = vec![None; n];
    let mut rationale_reward = vec![None; n];
    if !items.is_empty() {
        let (rs, _) = score_items(st, &models, items, call.deadline).await?;
        for (r, &i) in rs.iter().zip(&which) {
            rewards[i] = r.mixed_reward;
            label_reward[i] = Some(r.label_reward);
            rationale_reward[i] = r.rationale_reward;
        }
    }
    let unparseable = labels
        .iter()
        .map(|l| if l.is_none() { 1.0 } else { 0.0 })
        .collect();
    Ok(GetRewardResponse {
        scores: rewards.clone(),
        rewards,
        extra_logs: ExtraLogs {
            label_reward,
            rationale_reward,
            label: labels,
            unparseable,
        },
    })
}

/// How one model's queries split into (prompt, response): its padding and end-of-turn texts and
/// its template's generation marker, worked out once per request.
struct Splitter<'m> {
    model: &'m ModelEntry,
    pad: Option<String>,
    ends: Vec<String>,
    /// The text the template puts after the user turn (ChatML: `<|im_end|>\n<|im_start|>assistant\n`).
    marker: String,
}

impl<'m> Splitter<'m> {
    fn new(model: &'m ModelEntry) -> Self {
        const SENTINEL: &str = "\u{1}rllr-user-turn\u{1}";
        let text = |id: u32| model.tokenizer.id_to_token(id).filter(|t| !t.is_empty());
        let pad = text(model.pad_id);
        let ends = [Some(model.template.response_end().to_string())]
            .into_iter()
            .chain([model.eos_id.and_then(text), pad.clone()])
            .flatten()
            .filter(|e| !e.is_empty())
            .collect();
        let marker = model
            .template
            .render_prompt(None, SENTINEL)
            .split_once(SENTINEL)
            .map(|(_, after)| after.to_string())
            .unwrap_or_default();
        Splitter {
            model,
            pad,
            ends,
            marker,
        }
    }

    /// `s` without leading padding.
    fn unpadded<'s>(&self, mut s: &'s str) -> &'s str {
        if let Some(pad) = &self.pad {
            while let Some(rest) = s.strip_prefix(pad.as_str()) {
                s = rest;
            }
        }
        s
    }

    /// Split one OpenRLHF query into (prompt, response), padding and end-of-turn tokens removed.
    fn split<'a>(
        &self,
        query: &'a str,
        prompt: Option<&str>,
        field: &str,
    ) -> Result<(&'a str, &'a str)> {
        let mut q = self.unpadded(query);
        while let Some(rest) = self
            .ends
            .iter()
            .find_map(|e| q.trim_end().strip_suffix(e.as_str()))
        {
            q = rest;
        }
        if let Some(p) = prompt.map(|p| self.unpadded(p)) {
            if let Some(resp) = q.strip_prefix(p) {
                return Ok((&q[..p.len()], resp));
            }
        }
        let (model, marker) = (self.model, &self.marker);
        if marker.trim().is_empty() {
            return Err(Error::invalid(
                field,
                format!(
                    "the chat template '{}' of model '{}' has no assistant marker to split on; send `prompts` (the prompt part of each query)",
                    model.template.name(),
                    model.name
                ),
            ));
        }
        match q.rfind(marker.as_str()) {
            Some(at) => {
                let cut = at + marker.len();
                Ok((&q[..cut], &q[cut..]))
            }
            None => Err(Error::invalid(
                field,
                format!(
                    "no assistant turn ({marker:?}) of chat template '{}' found, and no matching `prompts` entry",
                    model.template.name()
                ),
            )),
        }
    }
}
