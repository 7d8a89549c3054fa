//! Batched generation: prefill every prompt at once, then decode one token per live sequence per
//! step; sequences that stop (EOS, stop string, length) leave the batch and free their cache rows.
//!
//! This is the loop evaluation (greedy, docs/method.md §7) and PPO rollouts (sampled, §5.4.1) run:
//! one [`Decoder`] admission of every prompt, then steps until every row has retired. The server's
//! continuous batcher drives the same [`Decoder`], admitting and abandoning rows between steps.

use tokenizers::Tokenizer;

use crate::decode::{Admission, DecodeEvents, Decoder, Retired};
use crate::lora::ForwardCtx;
use crate::model::Llama;
use crate::sampling::{FinishReason, SamplingParams, StopCriteria};
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

/// Collects retired rows by request index (the tag).
struct Finished(Vec<Option<Retired<usize>>>);

impl DecodeEvents<usize> for Finished {
    fn retired(&mut self, row: Retired<usize>) {
        let i = row.tag;
        self.0[i] = Some(row);
    }
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
    let mut decoder = Decoder::new(true);
    let admissions = requests
        .iter()
        .enumerate()
        .map(|(i, r)| Admission {
            prompt: r.prompt.clone(),
            sampling: r.sampling.clone(),
            stop: r.stop.clone(),
            tag: i,
        })
        .collect();
    decoder
        .admit(model, ctx, pad_id, admissions)
        .map_err(|r| r.error)?;
    let mut done = Finished(vec![None; requests.len()]);
    while !decoder.is_empty() {
        decoder.step(model, ctx, tokenizer, &mut done)?;
    }
    done.0
        .into_iter()
        .zip(requests)
        .map(|(row, r)| {
            let row = row.expect("every request finishes");
            let text = tokenizer
                .map(|t| decode(t, &row.tokens).map(|s| r.stop.truncate_at_stop(&s)))
                .transpose()?;
            Ok(Generation {
                tokens: row.tokens,
                logprobs: row.logprobs,
                finish: row.finish.expect("generate abandons no row"),
                text,
            })
        })
        .collect()
}

fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    Ok(tokenizer.decode(ids, false)?)
}
