//! `PolicyService`: Classify, ClassifyStream and ClassifyBatch with a CoT policy model.
//!
//! Each input becomes one generation job (n with best-of-n) that joins the model's running decode
//! batch; the generated text is parsed into rationale and label, and the label probabilities are
//! read from the logits where the label begins (see `text.rs`). Best-of-n samples n responses and
//! keeps the one with the highest mixed reward.

use std::sync::Arc;
use std::time::Instant;

use rllr_core::{FinishReason, SamplingParams};
use rllr_proto::v1::{self, policy_service_server::PolicyService};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Role;
use crate::batcher::{GenDone, GenJob, Job};
use crate::error::{Error, Result};
use crate::registry::ModelEntry;
use crate::reward::{self, RewardModels, ScoredItem, Timing};
use crate::state::{self, AppState, Call};
use crate::text;

/// Largest best-of-n accepted.
pub const MAX_BEST_OF_N: u32 = 16;

/// Validated generation settings of a request.
struct Plan {
    sampling: SamplingParams,
    max_new_tokens: usize,
    n: usize,
}

fn plan(st: &AppState, req: &v1::ClassifyRequest) -> Result<Plan> {
    let p = req.params.unwrap_or_default();
    if req.best_of_n > MAX_BEST_OF_N {
        return Err(Error::invalid(
            "best_of_n",
            format!("{} exceeds the limit {MAX_BEST_OF_N}", req.best_of_n),
        ));
    }
    let n = req.best_of_n.max(1) as usize;
    let temperature = p.temperature.unwrap_or(if n > 1 { 1.0 } else { 0.0 });
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::invalid(
            "params.temperature",
            format!("must be finite and >= 0, got {temperature}"),
        ));
    }
    if let Some(tp) = p.top_p {
        if !(tp > 0.0 && tp <= 1.0) {
            return Err(Error::invalid(
                "params.top_p",
                format!("must be in (0, 1], got {tp}"),
            ));
        }
    }
    let max = st.cfg.max_new_tokens;
    let max_new_tokens = p.max_new_tokens.map(|m| m as usize).unwrap_or(max);
    if max_new_tokens == 0 {
        return Err(Error::invalid("params.max_new_tokens", "must be >= 1"));
    }
    if max_new_tokens > max {
        return Err(Error::invalid(
            "params.max_new_tokens",
            format!("{max_new_tokens} exceeds max_new_tokens {max}"),
        ));
    }
    let sampling = SamplingParams {
        temperature,
        top_k: p.top_k.filter(|&k| k > 0).map(|k| k as usize),
        top_p: p.top_p,
        seed: p.seed,
    };
    sampling
        .validate()
        .map_err(|e| Error::invalid("params", e.to_string()))?;
    Ok(Plan {
        sampling,
        max_new_tokens,
        n,
    })
}

fn finish_name(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Eos => "eos",
        FinishReason::StopString(_) => "stop",
        FinishReason::Length => "length",
    }
}

/// Turn one generation into a classification (blocking: decodes).
fn classification(
    model: &ModelEntry,
    prompt_len: usize,
    done: &GenDone,
) -> Result<v1::Classification> {
    let text = text::decode(&model.tokenizer, &done.tokens)?;
    let parsed = model.format.parse(&text, &model.label_texts);
    let probs = text::label_probabilities(model, &done.tokens, &done.label_logits, &text);
    let label = parsed
        .label
        .map(|k| model.labels[k].clone())
        .unwrap_or_default();
    let confidence = match (parsed.label, &probs) {
        (Some(k), Some(p)) => p[k],
        _ => 0.0,
    };
    Ok(v1::Classification {
        rationale: parsed.rationale,
        label,
        confidence,
        probabilities: probs
            .map(|p| {
                model
                    .labels
                    .iter()
                    .zip(p)
                    .map(|(l, probability)| v1::LabelProbability {
                        label: l.clone(),
                        probability,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        text,
        prompt_tokens: prompt_len as u32,
        generated_tokens: done.tokens.len() as u32,
        finish_reason: finish_name(&done.finish).to_string(),
        reward: None,
    })
}

/// The Classify RPC's work; `tokens_tx` receives generated ids (ClassifyStream, one input).
pub async fn classify(
    st: &AppState,
    req: v1::ClassifyRequest,
    call: &Call,
    tokens_tx: Option<mpsc::UnboundedSender<u32>>,
) -> Result<v1::ClassifyResponse> {
    let count = req.inputs.len();
    let max_items = st.cfg.max_items_per_request;
    if count == 0 {
        return Err(Error::invalid("inputs", "must hold at least 1 input"));
    }
    if count > max_items {
        return Err(Error::invalid(
            "inputs",
            format!("{count} inputs exceed max_items_per_request {max_items}"),
        ));
    }
    let plan = plan(st, &req)?;
    if count * plan.n > max_items * MAX_BEST_OF_N as usize {
        return Err(Error::invalid(
            "best_of_n",
            "inputs x best_of_n is too large",
        ));
    }
    let model = st.registry.policy_model(&req.model)?;
    call.uses(&model);
    let rewarders = if plan.n > 1 {
        Some(RewardModels::resolve(
            st,
            call,
            &req.label_model,
            &req.rationale_model,
            req.lambda,
        )?)
    } else {
        None
    };
    let inputs = req
        .inputs
        .iter()
        .enumerate()
        .map(|(i, x)| text::task_input(Some(x), &format!("inputs[{i}]")))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let (m, max_in, system) = (model.clone(), st.cfg.max_input_tokens, req.system.clone());
    let inputs = Arc::new(inputs);
    let inputs2 = inputs.clone();
    let prompts: Vec<Vec<u32>> = state::blocking(move || {
        inputs2
            .iter()
            .enumerate()
            .map(|(i, x)| {
                text::prompt_tokens(&m, x, system.as_deref(), max_in, &format!("inputs[{i}]"))
            })
            .collect()
    })
    .await?;
    let mut timing = Timing {
        tokenization: t0.elapsed(),
        input_tokens: prompts.iter().map(|p| p.len() as u64).sum(),
        ..Default::default()
    };
    let now = Instant::now();
    let mut jobs = Vec::new();
    let mut rxs = Vec::new();
    for p in &prompts {
        for k in 0..plan.n {
            let (tx, rx) = oneshot::channel();
            let mut sampling = plan.sampling.clone();
            sampling.seed = sampling.seed.wrapping_add(k as u64);
            jobs.push(Job::Generate(GenJob {
                prompt: p.clone(),
                sampling,
                max_new_tokens: plan.max_new_tokens,
                tokens_tx: tokens_tx.clone(),
                reply: tx,
                enqueued: now,
                deadline: call.deadline,
            }));
            rxs.push(rx);
        }
    }
    drop(tokens_tx);
    model.queue.submit(jobs)?;
    let done = state::await_all(rxs, call.deadline).await?;
    for d in &done {
        timing.queue = timing.queue.max(d.queue);
        timing.inference = timing.inference.max(d.inference);
        timing.generated_tokens += d.tokens.len() as u64;
    }
    let m = model.clone();
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let n = plan.n;
    let candidates: Vec<v1::Classification> = state::blocking(move || {
        done.iter()
            .enumerate()
            .map(|(j, d)| classification(&m, lens[j / n], d))
            .collect()
    })
    .await?;
    let results = match rewarders {
        None => candidates,
        Some(rm) => best_of_n(st, &rm, &inputs, candidates, n, call, &mut timing).await?,
    };
    for r in &results {
        let label = if r.label.is_empty() {
            "<none>".to_string()
        } else {
            r.label.clone()
        };
        metrics::counter!("rllr_predicted_label_total", "model" => model.name.clone(), "label" => label)
            .increment(1);
        metrics::histogram!("rllr_cot_tokens", "model" => model.name.clone())
            .record(f64::from(r.generated_tokens));
    }
    Ok(v1::ClassifyResponse {
        results,
        model: model.name.clone(),
        metadata: Some(timing.metadata(call)),
    })
}

/// Keep, per input, the candidate with the highest mixed reward (unparseable ones never win over a
/// parseable one).
async fn best_of_n(
    st: &AppState,
    rm: &RewardModels,
    inputs: &[rllr_core::task::TaskInput],
    candidates: Vec<v1::Classification>,
    n: usize,
    call: &Call,
    timing: &mut Timing,
) -> Result<Vec<v1::Classification>> {
    let mut items = Vec::new();
    let mut which = Vec::new();
    for (j, c) in candidates.iter().enumerate() {
        if !c.label.is_empty() && text::label_index(&rm.label, &c.label, "label").is_ok() {
            items.push(ScoredItem {
                input: text::Prompt::Task(inputs[j / n].clone()),
                rationale: c.rationale.clone(),
                label: c.label.clone(),
            });
            which.push(j);
        }
    }
    let mut rewards = vec![None; candidates.len()];
    if !items.is_empty() {
        let (rs, t) = reward::score_items(st, rm, items, call.deadline).await?;
        timing.merge(&t);
        for (j, r) in which.into_iter().zip(rs) {
            rewards[j] = Some(r.mixed_reward);
        }
    }
    let mut out = Vec::with_capacity(inputs.len());
    for (i, group) in candidates.chunks(n).enumerate() {
        let best = (0..group.len())
            .max_by(|&a, &b| {
                let ra = rewards[i * n + a].unwrap_or(f32::NEG_INFINITY);
                let rb = rewards[i * n + b].unwrap_or(f32::NEG_INFINITY);
                ra.total_cmp(&rb).then(b.cmp(&a))
            })
            .unwrap_or(0);
        let mut c = group[best].clone();
        c.reward = rewards[i * n + best];
        out.push(c);
    }
    Ok(out)
}

/// The PolicyService implementation.
pub struct PolicyApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    async fn classify(
        &self,
        req: Request<v1::ClassifyRequest>,
    ) -> std::result::Result<Response<v1::ClassifyResponse>, Status> {
        let call = self.state.begin(req.metadata(), "classify", Role::User)?;
        let r = call
            .within(classify(&self.state, req.into_inner(), &call, None))
            .await;
        call.finish(r)
    }

    type ClassifyStreamStream =
        ReceiverStream<std::result::Result<v1::ClassifyStreamResponse, Status>>;

    async fn classify_stream(
        &self,
        req: Request<v1::ClassifyRequest>,
    ) -> std::result::Result<Response<Self::ClassifyStreamStream>, Status> {
        let call = self
            .state
            .begin(req.metadata(), "classify_stream", Role::User)?;
        let req = req.into_inner();
        let check = (|| {
            if req.inputs.len() != 1 {
                return Err(Error::invalid(
                    "inputs",
                    format!(
                        "ClassifyStream takes exactly 1 input, got {}",
                        req.inputs.len()
                    ),
                ));
            }
            if req.best_of_n > 1 {
                return Err(Error::invalid(
                    "best_of_n",
                    "ClassifyStream streams one response; use Classify for best-of-n",
                ));
            }
            self.state.registry.policy_model(&req.model)
        })();
        let model = match check {
            Ok(m) => m,
            Err(e) => return Err(call.fail(e)),
        };
        let (out_tx, out_rx) = mpsc::channel(64);
        let st = self.state.clone();
        tokio::spawn(async move {
            let (tok_tx, mut tok_rx) = mpsc::unbounded_channel::<u32>();
            let result = {
                let fut = call.within(classify(&st, req, &call, Some(tok_tx)));
                tokio::pin!(fut);
                let mut ids = Vec::new();
                let mut sent = 0usize;
                // The text of the ids so far past what was sent: held back while it ends inside a
                // multi-byte character, unless `flush` (the generation is over).
                let mut delta = |ids: &[u32], flush: bool| -> Option<String> {
                    let t = text::decode(&model.tokenizer, ids).ok()?;
                    let ready = flush || !t.ends_with('\u{FFFD}');
                    if t.len() > sent && t.is_char_boundary(sent) && ready {
                        let d = t[sent..].to_string();
                        sent = t.len();
                        Some(d)
                    } else {
                        None
                    }
                };
                let token = |d: String| v1::ClassifyStreamResponse {
                    event: Some(v1::classify_stream_response::Event::Token(d)),
                };
                let result = loop {
                    tokio::select! {
                        biased;
                        Some(id) = tok_rx.recv() => {
                            ids.push(id);
                            if let Some(d) = delta(&ids, false) {
                                if out_tx.send(Ok(token(d))).await.is_err() {
                                    return; // client gone: dropping `fut` cancels the generation
                                }
                            }
                        }
                        r = &mut fut => break r,
                    }
                };
                // The generation can finish with ids still queued (the engine sends the last
                // token and the reply back to back, and `select!` may see the reply first):
                // drain them and flush the tail, so the streamed text always spells the result.
                while let Ok(id) = tok_rx.try_recv() {
                    ids.push(id);
                }
                if result.is_ok() {
                    if let Some(d) = delta(&ids, true) {
                        if out_tx.send(Ok(token(d))).await.is_err() {
                            return;
                        }
                    }
                }
                result
            };
            let last = match result {
                Ok(resp) => Ok(v1::ClassifyStreamResponse {
                    event: Some(v1::classify_stream_response::Event::Result(resp)),
                }),
                Err(e) => Err(e),
            };
            let _ = out_tx.send(call.finish_item(last)).await;
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }

    type ClassifyBatchStream = ReceiverStream<std::result::Result<v1::ClassifyResponse, Status>>;

    async fn classify_batch(
        &self,
        req: Request<Streaming<v1::ClassifyRequest>>,
    ) -> std::result::Result<Response<Self::ClassifyBatchStream>, Status> {
        self.state
            .authorize(req.metadata(), "classify_batch", Role::User)?;
        let md = req.metadata().clone();
        let s = crate::stream::ordered(
            self.state.clone(),
            &md,
            req.into_inner(),
            "classify_batch",
            |st, r, call| async move {
                let out = call.within(classify(&st, r, &call, None)).await;
                call.finish_item(out)
            },
        );
        Ok(Response::new(s))
    }
}
