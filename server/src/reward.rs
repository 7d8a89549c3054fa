//! `RewardService`: Score, ScoreStream and Compare over the label (and rationale) reward models.
//!
//! Each item becomes one scoring job per model; the label model's raw score is `label_reward`,
//! the rationale model's (if asked for) `rationale_reward`, and `mixed_reward =
//! min(label_reward, lambda) + rationale_reward` (docs/method.md §5.3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rllr_proto::v1::{self, reward_service_server::RewardService};
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Role;
use crate::batcher::{Job, ScoreJob};
use crate::error::{Error, Result};
use crate::registry::ModelEntry;
use crate::state::{self, AppState, Call};
use crate::text;

/// One response to score, validated.
pub struct ScoredItem {
    pub input: text::Prompt,
    pub rationale: String,
    pub label: String,
}

/// Where a request's time went.
#[derive(Debug, Default, Clone)]
pub struct Timing {
    pub tokenization: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub input_tokens: u64,
    pub generated_tokens: u64,
}

impl Timing {
    /// The response metadata of `call`.
    pub fn metadata(&self, call: &Call) -> v1::Metadata {
        v1::Metadata {
            tokenization_time_ns: state::ns(self.tokenization),
            queue_time_ns: state::ns(self.queue),
            inference_time_ns: state::ns(self.inference),
            total_time_ns: state::ns(call.start.elapsed()),
            input_tokens: self.input_tokens,
            generated_tokens: self.generated_tokens,
            request_id: call.id.clone(),
            model_revisions: call.model_revisions(),
        }
    }

    /// Fold another stage's timing in (max of times, sum of tokens).
    pub fn merge(&mut self, o: &Timing) {
        self.tokenization += o.tokenization;
        self.queue = self.queue.max(o.queue);
        self.inference = self.inference.max(o.inference);
        self.input_tokens += o.input_tokens;
        self.generated_tokens += o.generated_tokens;
    }
}

/// The reward models of a request.
pub struct RewardModels {
    pub label: Arc<ModelEntry>,
    pub rationale: Option<Arc<ModelEntry>>,
    pub lambda: f32,
}

impl RewardModels {
    /// Resolve and check the models and lambda a request names, and note them on `call`.
    pub fn resolve(
        st: &AppState,
        call: &Call,
        label: &str,
        rationale: &str,
        lambda: Option<f32>,
    ) -> Result<Self> {
        let label = st.registry.reward_model(label)?;
        let rationale = if rationale.is_empty() {
            None
        } else {
            Some(st.registry.reward_model(rationale)?)
        };
        call.uses(&label);
        if let Some(r) = &rationale {
            call.uses(r);
        }
        let lambda = match lambda {
            Some(l) if !l.is_finite() => {
                return Err(Error::invalid("lambda", format!("must be finite, got {l}")))
            }
            Some(l) => l,
            None => st.cfg.lambda,
        };
        Ok(RewardModels {
            label,
            rationale,
            lambda,
        })
    }
}

/// Validate one proto item at `field`.
pub fn item(
    models: &RewardModels,
    input: Option<&v1::Input>,
    rationale: &str,
    label: &str,
    field: &str,
) -> Result<ScoredItem> {
    let input = text::task_input(input, &format!("{field}.input"))?;
    text::label_index(&models.label, label, &format!("{field}.label"))?;
    Ok(ScoredItem {
        input: text::Prompt::Task(input),
        rationale: rationale.to_string(),
        label: label.to_string(),
    })
}

/// Score `items` with the label (and rationale) model and mix.
pub async fn score_items(
    st: &AppState,
    models: &RewardModels,
    items: Vec<ScoredItem>,
    deadline: Option<Instant>,
) -> Result<(Vec<v1::Reward>, Timing)> {
    let t0 = Instant::now();
    let max = st.cfg.max_input_tokens;
    let ms: Vec<Arc<ModelEntry>> = std::iter::once(models.label.clone())
        .chain(models.rationale.clone())
        .collect();
    let ms2 = ms.clone();
    let items = Arc::new(items);
    let seqs: Vec<Vec<Vec<u32>>> = state::blocking(move || {
        ms2.iter()
            .map(|m| {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, it)| {
                        let field = format!("items[{i}]");
                        let label = match text::label_index(m, &it.label, &field) {
                            Ok(Some(k)) => m.label_texts[k].clone(),
                            _ => it.label.clone(),
                        };
                        text::score_tokens(m, &it.input, &it.rationale, &label, max, &field)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect()
    })
    .await?;
    let mut timing = Timing {
        tokenization: t0.elapsed(),
        ..Default::default()
    };
    let lens: Vec<u32> = seqs[0].iter().map(|s| s.len() as u32).collect();
    let mut pending = Vec::with_capacity(ms.len());
    for (m, seqs) in ms.iter().zip(seqs) {
        let now = Instant::now();
        timing.input_tokens += seqs.iter().map(|s| s.len() as u64).sum::<u64>();
        let (jobs, rxs): (Vec<Job>, Vec<_>) = seqs
            .into_iter()
            .map(|tokens| {
                let (tx, rx) = oneshot::channel();
                (
                    Job::Score(ScoreJob {
                        tokens,
                        reply: tx,
                        enqueued: now,
                        deadline,
                    }),
                    rx,
                )
            })
            .unzip();
        m.queue.submit(jobs)?;
        pending.push(rxs);
    }
    let mut per_model = Vec::with_capacity(pending.len());
    for rxs in pending {
        let done = state::await_all(rxs, deadline).await?;
        for d in &done {
            timing.queue = timing.queue.max(d.queue);
            timing.inference = timing.inference.max(d.inference);
        }
        per_model.push(done);
    }
    let label_head = models.label.head.clone().unwrap_or_default();
    let mut rewards = Vec::new();
    for (i, l) in per_model[0].iter().enumerate() {
        let r = per_model.get(1).map(|d| d[i].score);
        let mixed = match r {
            Some(r) => l.score.min(models.lambda) + r,
            None => l.score,
        };
        metrics::histogram!("rllr_reward", "model" => models.label.name.clone(), "head" => label_head.clone(), "kind" => "label").record(f64::from(l.score));
        if let (Some(r), Some(rm)) = (r, &models.rationale) {
            metrics::histogram!("rllr_reward", "model" => rm.name.clone(), "head" => rm.head.clone().unwrap_or_default(), "kind" => "rationale").record(f64::from(r));
            metrics::histogram!("rllr_reward", "model" => models.label.name.clone(), "head" => label_head.clone(), "kind" => "mixed").record(f64::from(mixed));
        }
        rewards.push(v1::Reward {
            label_reward: l.score,
            rationale_reward: r,
            mixed_reward: mixed,
            tokens: lens[i],
        });
    }
    Ok((rewards, timing))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The Score RPC's work.
pub async fn score(st: &AppState, req: v1::ScoreRequest, call: &Call) -> Result<v1::ScoreResponse> {
    let n = req.items.len();
    let max = st.cfg.max_items_per_request;
    if n == 0 {
        return Err(Error::invalid("items", "must hold at least 1 item"));
    }
    if n > max {
        return Err(Error::invalid(
            "items",
            format!("{n} items exceed max_items_per_request {max}"),
        ));
    }
    let models =
        RewardModels::resolve(st, call, &req.label_model, &req.rationale_model, req.lambda)?;
    let items = req
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            item(
                &models,
                it.input.as_ref(),
                &it.rationale,
                &it.label,
                &format!("items[{i}]"),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut rewards, timing) = score_items(st, &models, items, call.deadline).await?;
    if req.sigmoid {
        for r in &mut rewards {
            r.label_reward = sigmoid(r.label_reward);
            r.rationale_reward = r.rationale_reward.map(sigmoid);
            r.mixed_reward = sigmoid(r.mixed_reward);
        }
    }
    Ok(v1::ScoreResponse {
        rewards,
        lambda: models.rationale.as_ref().map(|_| models.lambda),
        label_model: models.label.name.clone(),
        rationale_model: models
            .rationale
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        metadata: Some(timing.metadata(call)),
    })
}

/// The RewardService implementation.
pub struct RewardApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl RewardService for RewardApi {
    async fn score(
        &self,
        req: Request<v1::ScoreRequest>,
    ) -> std::result::Result<Response<v1::ScoreResponse>, Status> {
        let call = self.state.begin(req.metadata(), "score", Role::User)?;
        let r = call
            .within(score(&self.state, req.into_inner(), &call))
            .await;
        call.finish(r)
    }

    type ScoreStreamStream = ReceiverStream<std::result::Result<v1::ScoreResponse, Status>>;

    async fn score_stream(
        &self,
        req: Request<Streaming<v1::ScoreRequest>>,
    ) -> std::result::Result<Response<Self::ScoreStreamStream>, Status> {
        self.state
            .authorize(req.metadata(), "score_stream", Role::User)?;
        let md = req.metadata().clone();
        let s = crate::stream::ordered(
            self.state.clone(),
            &md,
            req.into_inner(),
            "score_stream",
            |st, r, call| async move {
                let out = call.within(score(&st, r, &call)).await;
                call.finish_item(out)
            },
        );
        Ok(Response::new(s))
    }

    async fn compare(
        &self,
        req: Request<v1::CompareRequest>,
    ) -> std::result::Result<Response<v1::CompareResponse>, Status> {
        let call = self.state.begin(req.metadata(), "compare", Role::User)?;
        let r = call
            .within(compare(&self.state, req.into_inner(), &call))
            .await;
        call.finish(r)
    }
}

async fn compare(
    st: &AppState,
    req: v1::CompareRequest,
    call: &Call,
) -> Result<v1::CompareResponse> {
    let models =
        RewardModels::resolve(st, call, &req.label_model, &req.rationale_model, req.lambda)?;
    let a = req
        .a
        .as_ref()
        .ok_or_else(|| Error::invalid("a", "is required"))?;
    let b = req
        .b
        .as_ref()
        .ok_or_else(|| Error::invalid("b", "is required"))?;
    let items = vec![
        item(&models, req.input.as_ref(), &a.rationale, &a.label, "a")?,
        item(&models, req.input.as_ref(), &b.rationale, &b.label, "b")?,
    ];
    let (rewards, timing) = score_items(st, &models, items, call.deadline).await?;
    let (ra, rb) = (rewards[0], rewards[1]);
    Ok(v1::CompareResponse {
        probability_a: sigmoid(ra.mixed_reward - rb.mixed_reward),
        reward_a: Some(ra),
        reward_b: Some(rb),
        metadata: Some(timing.metadata(call)),
    })
}
