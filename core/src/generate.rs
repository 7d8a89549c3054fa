//! Batched generation: prefill every prompt at once, then decode one token per live sequence per
//! step; sequences that stop (EOS, stop string, length) leave the batch and free their cache rows.
//!
//! This is the loop evaluation (greedy, docs/method.md §7) and PPO rollouts (sampled, §5.4.1) run; the
//! server's continuous batcher drives the same [`Llama::prefill`] / [`Llama::decode_step`] /
//! [`KvCache`] pieces step by step.

use candle_core::Device;
use tokenizers::Tokenizer;

use crate::batch::{Batch, PaddingSide};
use crate::kv_cache::KvCache;
use crate::lora::ForwardCtx;
use crate::model::Llama;
use crate::sampling::{FinishReason, Sampler, SamplingParams, StopCriteria};
use crate::{Error, Result};

/// One prompt to continue.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopCriteria,
}

/// What came out for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids (the stopping EOS included, as PPO keeps it).
    pub tokens: Vec<u32>,
    /// log π(token) under the unmodified softmax of the logits, per generated token.
    pub logprobs: Vec<f32>,
    pub finish: FinishReason,
    /// Decoded text (special tokens kept), cut before a matched stop string; `None` without a tokenizer.
    pub text: Option<String>,
}

struct Live {
    request: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
}

/// Generate continuations of every request in one batch. `tokenizer` is needed for stop strings
/// and for `Generation::text`; `pad_id` fills the left padding of the prefill.
pub fn generate(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    requests: &[GenerationRequest],
    ctx: &ForwardCtx,
    pad_id: u32,
) -> Result<Vec<Generation>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    for (i, r) in requests.iter().enumerate() {
        r.sampling
            .validate()
            .map_err(|e| Error::Input(format!("request {i}: {e}")))?;
        if r.stop.max_new_tokens == 0 {
            return Err(Error::Input(format!(
                "request {i}: max_new_tokens must be >= 1"
            )));
        }
        if !r.stop.stop_strings.is_empty() && tokenizer.is_none() {
            return Err(Error::Input(format!(
                "request {i}: stop strings need a tokenizer"
            )));
        }
    }
    // The loop runs on a rayon worker: the kernels' parallel loops then share work with the other
    // workers instead of waking the pool and putting this thread to sleep hundreds of times a step.
    rayon::scope(|_| run(model, tokenizer, requests, ctx, pad_id))
}

fn run(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    requests: &[GenerationRequest],
    ctx: &ForwardCtx,
    pad_id: u32,
) -> Result<Vec<Generation>> {
    let prompts: Vec<Vec<u32>> = requests.iter().map(|r| r.prompt.clone()).collect();
    let batch = Batch::new(&prompts, pad_id, PaddingSide::Left, model.device())?;
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut logits = model.prefill(&batch, &mut cache, ctx)?;
    let mut live: Vec<Live> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| Live {
            request: i,
            sampler: Sampler::new(r.sampling.clone()),
            tokens: Vec::new(),
            logprobs: Vec::new(),
        })
        .collect();
    let mut done: Vec<Option<Generation>> = vec![None; requests.len()];
    while !live.is_empty() {
        let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        let mut keep = Vec::with_capacity(live.len());
        let mut next = Vec::with_capacity(live.len());
        for (row, seq) in live.iter_mut().enumerate() {
            let (tok, lp) = seq.sampler.sample_with_logprob(&rows[row]);
            seq.tokens.push(tok);
            seq.logprobs.push(lp);
            let stop = &requests[seq.request].stop;
            let text = match tokenizer {
                Some(t) if !stop.stop_strings.is_empty() => decode(t, &seq.tokens)?,
                _ => String::new(),
            };
            match stop.check(&seq.tokens, &text) {
                Some(finish) => {
                    let text = tokenizer
                        .map(|t| decode(t, &seq.tokens).map(|s| stop.truncate_at_stop(&s)))
                        .transpose()?;
                    done[seq.request] = Some(Generation {
                        tokens: std::mem::take(&mut seq.tokens),
                        logprobs: std::mem::take(&mut seq.logprobs),
                        finish,
                        text,
                    });
                }
                None => {
                    keep.push(row);
                    next.push(tok);
                }
            }
        }
        if keep.len() < live.len() {
            cache.retain(&keep)?;
            let mut it = 0;
            live.retain(|_| {
                let k = keep.contains(&it);
                it += 1;
                k
            });
        }
        if live.is_empty() {
            break;
        }
        logits = model.decode_step(&next, &mut cache, ctx)?;
    }
    Ok(done
        .into_iter()
        .map(|g| g.expect("every request finishes"))
        .collect())
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    Ok(tokenizer.decode(ids, false)?)
}
