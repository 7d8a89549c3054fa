//! The engine worker: one OS thread per model that owns the model and runs its batches.
//!
//! Async code never calls candle. The worker loops: take arrived jobs (the [`Batcher`]), run one
//! scoring batch if any is pending, admit waiting generations into the decode batch (prefill them
//! into their own KV cache, then join it), and advance every live sequence by one token; finished,
//! cancelled and expired sequences leave the cache between steps (continuous batching).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use rllr_core::sampling::Sampler;
use rllr_core::{Batch, FinishReason, ForwardCtx, KvCache, Llama, PaddingSide, StopCriteria};

use crate::batcher::{Batcher, GenDone, GenJob, ScoreDone, ScoreJob};
use crate::error::Error;

/// What the worker needs besides the model.
#[derive(Debug, Clone)]
pub struct EngineSpec {
    /// Model name, for metrics and logs.
    pub model: String,
    /// Score head to read (reward models).
    pub head: Option<String>,
    /// LoRA adapter to run through, if the checkpoint is an adapter.
    pub adapter: Option<String>,
    pub pad_id: u32,
    /// Token ids that end a generation (EOS and the template's end-of-turn token).
    pub eos_ids: Vec<u32>,
    /// The first token of each label, in label order (logits read at the label position).
    pub label_first_ids: Vec<u32>,
}

/// Start the worker thread. `alive` turns false when it exits; `on_exit` runs then (health).
pub fn spawn(
    model: Llama,
    spec: EngineSpec,
    batcher: Batcher,
    alive: Arc<AtomicBool>,
    on_exit: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("engine-{}", spec.model))
        .spawn(move || {
            let mut worker = Worker {
                model,
                spec,
                batcher,
                live: Vec::new(),
                cache: None,
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
            if result.is_err() {
                tracing::error!(model = %worker.spec.model, "engine worker panicked; model marked unavailable");
            }
            alive.store(false, Ordering::SeqCst);
            on_exit();
        })
}

struct Live {
    job: GenJob,
    sampler: Sampler,
    logits: Vec<f32>,
    tokens: Vec<u32>,
    label_logits: Vec<Vec<f32>>,
    admitted: Instant,
}

struct Worker {
    model: Llama,
    spec: EngineSpec,
    batcher: Batcher,
    live: Vec<Live>,
    cache: Option<KvCache>,
}

impl Worker {
    fn ctx(&self) -> ForwardCtx<'_> {
        ForwardCtx {
            adapter: self.spec.adapter.as_deref(),
            dropout_seed: None,
        }
    }

    fn run(&mut self) {
        while self.batcher.fill(self.live.is_empty()) || !self.live.is_empty() {
            // The model work runs on a rayon worker (the kernels' parallel loops then share work
            // within the pool instead of waking it and parking this thread every op); waiting
            // for requests stays outside, so an idle engine holds no worker.
            let batch = self.batcher.next_score_batch();
            if !batch.is_empty() {
                rayon::scope(|_| self.score(batch));
            }
            let admitted = self.batcher.admit_generations(self.live.len());
            if !admitted.is_empty() {
                rayon::scope(|_| self.prefill(admitted));
            }
            if !self.live.is_empty() {
                rayon::scope(|_| self.step());
            }
        }
        tracing::info!(model = %self.spec.model, "engine worker stopped");
    }

    fn score(&mut self, jobs: Vec<ScoreJob>) {
        let t0 = Instant::now();
        let seqs: Vec<Vec<u32>> = jobs.iter().map(|j| j.tokens.clone()).collect();
        let tokens = seqs.len() * seqs.iter().map(Vec::len).max().unwrap_or(0);
        let result = (|| -> rllr_core::Result<Vec<f32>> {
            let head =
                self.spec.head.as_deref().ok_or_else(|| {
                    rllr_core::Error::Input("this model has no score head".into())
                })?;
            let batch = Batch::new(
                &seqs,
                self.spec.pad_id,
                PaddingSide::Right,
                self.model.device(),
            )?;
            let h = self.model.hidden_states(&batch, &self.ctx())?;
            let s = self.model.score(&h, &batch, head)?;
            Ok(s.to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?)
        })();
        let inference = t0.elapsed();
        let m = self.spec.model.clone();
        metrics::histogram!("rllr_batch_size", "model" => m.clone(), "method" => "score")
            .record(jobs.len() as f64);
        metrics::histogram!("rllr_batch_tokens", "model" => m.clone(), "method" => "score")
            .record(tokens as f64);
        metrics::histogram!("rllr_batch_inference_duration_seconds", "model" => m, "method" => "score")
            .record(inference.as_secs_f64());
        let n = jobs.len();
        match result {
            Ok(scores) => {
                for (job, score) in jobs.into_iter().zip(scores) {
                    let _ = job.reply.send(Ok(ScoreDone {
                        score,
                        queue: t0.saturating_duration_since(job.enqueued),
                        inference,
                        batch_size: n,
                    }));
                }
            }
            Err(e) => {
                tracing::error!(model = %self.spec.model, error = %e, "scoring batch failed");
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Internal(msg.clone())));
                }
            }
        }
    }

    fn prefill(&mut self, jobs: Vec<GenJob>) {
        let t0 = Instant::now();
        let prompts: Vec<Vec<u32>> = jobs.iter().map(|j| j.prompt.clone()).collect();
        let tokens = prompts.len() * prompts.iter().map(Vec::len).max().unwrap_or(0);
        let layers = self.model.config().num_hidden_layers;
        let result = (|| -> rllr_core::Result<(KvCache, Vec<Vec<f32>>)> {
            let batch = Batch::new(
                &prompts,
                self.spec.pad_id,
                PaddingSide::Left,
                self.model.device(),
            )?;
            let mut cache = KvCache::new(layers);
            let logits = self.model.prefill(&batch, &mut cache, &self.ctx())?;
            Ok((cache, logits.to_device(&Device::Cpu)?.to_vec2::<f32>()?))
        })();
        let m = self.spec.model.clone();
        metrics::histogram!("rllr_batch_size", "model" => m.clone(), "method" => "prefill")
            .record(jobs.len() as f64);
        metrics::histogram!("rllr_batch_tokens", "model" => m.clone(), "method" => "prefill")
            .record(tokens as f64);
        metrics::histogram!("rllr_batch_inference_duration_seconds", "model" => m, "method" => "prefill")
            .record(t0.elapsed().as_secs_f64());
        let joined = result.and_then(|(new_cache, rows)| {
            match self.cache.as_mut() {
                Some(c) => c.join(new_cache)?,
                None => self.cache = Some(new_cache),
            }
            Ok(rows)
        });
        match joined {
            Ok(rows) => {
                for (job, logits) in jobs.into_iter().zip(rows) {
                    let sampler = Sampler::new(job.sampling.clone());
                    self.live.push(Live {
                        job,
                        sampler,
                        logits,
                        tokens: Vec::new(),
                        label_logits: Vec::new(),
                        admitted: t0,
                    });
                }
            }
            Err(e) => {
                tracing::error!(model = %self.spec.model, error = %e, "prefill failed");
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Internal(e.to_string())));
                }
            }
        }
    }

    /// Sample one token for every live sequence, retire the finished, decode the rest one step.
    fn step(&mut self) {
        let t0 = Instant::now();
        let now = Instant::now();
        let mut keep = Vec::with_capacity(self.live.len());
        let mut next = Vec::with_capacity(self.live.len());
        let mut finished: Vec<(usize, Option<FinishReason>)> = Vec::new();
        for (row, seq) in self.live.iter_mut().enumerate() {
            if seq.job.reply.is_closed() {
                finished.push((row, None));
                continue;
            }
            if seq.job.deadline.is_some_and(|d| d <= now) {
                finished.push((row, None));
                continue;
            }
            let tok = seq.sampler.sample(&seq.logits);
            seq.label_logits.push(
                self.spec
                    .label_first_ids
                    .iter()
                    .map(|&id| {
                        seq.logits
                            .get(id as usize)
                            .copied()
                            .unwrap_or(f32::NEG_INFINITY)
                    })
                    .collect(),
            );
            seq.tokens.push(tok);
            if let Some(tx) = &seq.job.tokens_tx {
                let _ = tx.send(tok);
            }
            let stop = StopCriteria {
                eos_ids: self.spec.eos_ids.clone(),
                stop_strings: Vec::new(),
                max_new_tokens: seq.job.max_new_tokens,
            };
            match stop.check(&seq.tokens, "") {
                Some(f) => finished.push((row, Some(f))),
                None => {
                    keep.push(row);
                    next.push(tok);
                }
            }
        }
        if !finished.is_empty() {
            let mut slots: Vec<Option<Live>> = std::mem::take(&mut self.live)
                .into_iter()
                .map(Some)
                .collect();
            for (row, finish) in &finished {
                let seq = slots[*row].take().expect("row finishes once");
                let expired = seq.job.deadline.is_some_and(|d| d <= now);
                match finish {
                    Some(f) => {
                        metrics::counter!("rllr_generated_tokens_total", "model" => self.spec.model.clone())
                            .increment(seq.tokens.len() as u64);
                        let _ = seq.job.reply.send(Ok(GenDone {
                            tokens: seq.tokens,
                            label_logits: seq.label_logits,
                            finish: f.clone(),
                            queue: seq.admitted.saturating_duration_since(seq.job.enqueued),
                            inference: seq.admitted.elapsed(),
                        }));
                    }
                    None if expired => {
                        let _ = seq.job.reply.send(Err(Error::DeadlineExceeded(
                            "the deadline passed during generation".into(),
                        )));
                    }
                    None => {}
                }
            }
            self.live = slots.into_iter().flatten().collect();
            if self.live.is_empty() {
                self.cache = None;
                return;
            }
            if let Some(c) = self.cache.as_mut() {
                if let Err(e) = c.retain(&keep) {
                    self.fail_live(&e.to_string());
                    return;
                }
            }
        }
        let Some(cache) = self.cache.as_mut() else {
            self.fail_live("decode batch lost its cache");
            return;
        };
        let ctx = ForwardCtx {
            adapter: self.spec.adapter.as_deref(),
            dropout_seed: None,
        };
        let result = self
            .model
            .decode_step(&next, cache, &ctx)
            .and_then(|l| Ok(l.to_device(&Device::Cpu)?.to_vec2::<f32>()?));
        let m = self.spec.model.clone();
        metrics::histogram!("rllr_batch_size", "model" => m.clone(), "method" => "decode")
            .record(next.len() as f64);
        metrics::histogram!("rllr_batch_inference_duration_seconds", "model" => m, "method" => "decode")
            .record(t0.elapsed().as_secs_f64());
        match result {
            Ok(rows) => {
                for (seq, logits) in self.live.iter_mut().zip(rows) {
                    seq.logits = logits;
                }
            }
            Err(e) => self.fail_live(&e.to_string()),
        }
    }

    fn fail_live(&mut self, msg: &str) {
        tracing::error!(model = %self.spec.model, error = %msg, "decode step failed");
        for seq in self.live.drain(..) {
            let _ = seq.job.reply.send(Err(Error::Internal(msg.to_string())));
        }
        self.cache = None;
    }
}
