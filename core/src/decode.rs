//! The batched decode driver: admit prompts into a shared [`KvCache`], step every live row by one
//! sampled token, retire rows that stop (EOS, stop string, length) or that their owner abandons.
//!
//! [`crate::generate`] runs it to completion over one batch (evaluation, PPO rollouts); the server's
//! engine admits new rows between steps (continuous batching) and abandons cancelled or expired
//! ones. Each row carries a caller's tag `S` (a request index, a server job) that comes back when
//! the row retires; [`DecodeEvents`] lets the caller watch each sampled token and drop rows.

use candle_core::Device;
use tokenizers::Tokenizer;

use crate::batch::{Batch, PaddingSide};
use crate::kv_cache::KvCache;
use crate::lora::ForwardCtx;
use crate::model::Llama;
use crate::sampling::{FinishReason, Sampler, SamplingParams, StopCriteria};
use crate::{Error, Result};

/// A prompt to admit into the batch.
#[derive(Debug, Clone)]
pub struct Admission<S> {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopCriteria,
    /// The caller's handle on the row, returned in [`Retired::tag`].
    pub tag: S,
}

/// Admission failed (prefill or joining the cache); the batch is as before.
#[derive(Debug)]
pub struct Rejected<S> {
    pub error: Error,
    /// The tags of the rows that were not admitted, in admission order.
    pub tags: Vec<S>,
}

/// A row that left the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Retired<S> {
    pub tag: S,
    /// Generated ids (a stopping EOS included).
    pub tokens: Vec<u32>,
    /// log π(token) under the unmodified softmax, per token; empty unless the decoder keeps them.
    pub logprobs: Vec<f32>,
    /// Why it stopped; `None` when [`DecodeEvents::abandoned`] dropped it.
    pub finish: Option<FinishReason>,
}

/// What the caller sees of a step, row by row.
pub trait DecodeEvents<S> {
    /// Drop this row before sampling (its caller went away, its deadline passed).
    fn abandoned(&mut self, _tag: &S) -> bool {
        false
    }

    /// `token` was sampled for the row from `logits` (before the stop check).
    fn sampled(&mut self, _tag: &mut S, _logits: &[f32], _token: u32) {}

    /// The row left the batch (called before the cache shrinks, so no retired row is lost to a
    /// failing step).
    fn retired(&mut self, row: Retired<S>);
}

struct Row<S> {
    tag: S,
    sampler: Sampler,
    stop: StopCriteria,
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    /// Next-token logits, from the last prefill or decode step.
    logits: Vec<f32>,
}

/// Live rows over one [`KvCache`] (row `i` of the cache is `rows[i]`).
pub struct Decoder<S> {
    rows: Vec<Row<S>>,
    cache: Option<KvCache>,
    logprobs: bool,
    /// Per-step buffers, kept to avoid allocating each step.
    keep: Vec<usize>,
    next: Vec<u32>,
    finished: Vec<(usize, Option<FinishReason>)>,
}

impl<S> Decoder<S> {
    /// An empty batch; with `logprobs`, each sampled token's log-probability is kept too.
    pub fn new(logprobs: bool) -> Self {
        Decoder {
            rows: Vec::new(),
            cache: None,
            logprobs,
            keep: Vec::new(),
            next: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when no row is live.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Prefill `new` (left-padded with `pad_id`) into a cache of their own and join it below the
    /// live rows; each new row's first token is sampled by the next [`Decoder::step`].
    pub fn admit(
        &mut self,
        model: &Llama,
        ctx: &ForwardCtx,
        pad_id: u32,
        mut new: Vec<Admission<S>>,
    ) -> std::result::Result<(), Rejected<S>> {
        if new.is_empty() {
            return Ok(());
        }
        let prompts: Vec<Vec<u32>> = new
            .iter_mut()
            .map(|a| std::mem::take(&mut a.prompt))
            .collect();
        let prefilled = (|| -> Result<Vec<Vec<f32>>> {
            let batch = Batch::new(&prompts, pad_id, PaddingSide::Left, model.device())?;
            let mut cache = KvCache::new(model.config().num_hidden_layers);
            let logits = model.prefill(&batch, &mut cache, ctx)?;
            let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
            match self.cache.as_mut() {
                Some(c) => c.join(cache)?,
                None => self.cache = Some(cache),
            }
            Ok(rows)
        })();
        match prefilled {
            Ok(rows) => {
                self.rows
                    .extend(new.into_iter().zip(rows).map(|(a, logits)| Row {
                        tag: a.tag,
                        sampler: Sampler::new(a.sampling),
                        stop: a.stop,
                        tokens: Vec::new(),
                        logprobs: Vec::new(),
                        logits,
                    }));
                Ok(())
            }
            Err(error) => Err(Rejected {
                error,
                tags: new.into_iter().map(|a| a.tag).collect(),
            }),
        }
    }

    /// Sample one token for every live row, retire the finished (and abandoned) ones, then decode
    /// the rest one step. `tokenizer` decodes the text that stop strings are looked for in.
    /// Returns the rows decoded (0 when none was left, and no forward pass ran).
    pub fn step(
        &mut self,
        model: &Llama,
        ctx: &ForwardCtx,
        tokenizer: Option<&Tokenizer>,
        events: &mut impl DecodeEvents<S>,
    ) -> Result<usize> {
        self.keep.clear();
        self.next.clear();
        self.finished.clear();
        for (i, row) in self.rows.iter_mut().enumerate() {
            if events.abandoned(&row.tag) {
                self.finished.push((i, None));
                continue;
            }
            let tok = if self.logprobs {
                let (tok, lp) = row.sampler.sample_with_logprob(&row.logits);
                row.logprobs.push(lp);
                tok
            } else {
                row.sampler.sample(&row.logits)
            };
            events.sampled(&mut row.tag, &row.logits, tok);
            row.tokens.push(tok);
            let text = match tokenizer {
                Some(t) if !row.stop.stop_strings.is_empty() => t.decode(&row.tokens, false)?,
                _ => String::new(),
            };
            match row.stop.check(&row.tokens, &text) {
                Some(f) => self.finished.push((i, Some(f))),
                None => {
                    self.keep.push(i);
                    self.next.push(tok);
                }
            }
        }
        if !self.finished.is_empty() {
            let mut finished = self.finished.drain(..).peekable();
            let rows = std::mem::take(&mut self.rows);
            self.rows.reserve(self.keep.len());
            for (i, row) in rows.into_iter().enumerate() {
                match finished.next_if(|(r, _)| *r == i) {
                    Some((_, finish)) => events.retired(Retired {
                        tag: row.tag,
                        tokens: row.tokens,
                        logprobs: row.logprobs,
                        finish,
                    }),
                    None => self.rows.push(row),
                }
            }
            if self.rows.is_empty() {
                self.cache = None;
                return Ok(0);
            }
            self.cache
                .as_mut()
                .ok_or_else(lost_cache)?
                .retain(&self.keep)?;
        }
        let cache = self.cache.as_mut().ok_or_else(lost_cache)?;
        let logits = model.decode_step(&self.next, cache, ctx)?;
        let rows = logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        for (row, logits) in self.rows.iter_mut().zip(rows) {
            row.logits = logits;
        }
        Ok(self.next.len())
    }

    /// Empty the batch (after a failed step): the tags of the live rows, in row order.
    pub fn drain(&mut self) -> Vec<S> {
        self.cache = None;
        self.rows.drain(..).map(|r| r.tag).collect()
    }
}

fn lost_cache() -> Error {
    Error::Input("decode batch lost its cache".into())
}
