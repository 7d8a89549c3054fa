//! The engine worker: one OS thread per model that owns the model and runs its batches.
//!
//! Async code never calls candle. The worker loops: take arrived jobs (the [`Batcher`]), run one
//! scoring batch if any is pending, admit waiting generations into the decode batch (prefill them
//! into their own KV cache, then join it), and advance every live sequence by one token, all through
//! rllr-core's [`Decoder`]; finished, cancelled and expired sequences leave the cache between steps
//! (continuous batching).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use rllr_core::{
    Admission, Batch, DecodeEvents, Decoder, ForwardCtx, Llama, PaddingSide, Retired, StopCriteria,
};

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
                decoder: Decoder::new(false),
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
            if result.is_err() {
                tracing::error!(model = %worker.spec.model, "engine worker panicked; model marked unavailable");
            }
            alive.store(false, Ordering::SeqCst);
            on_exit();
        })
}

/// A generation in the decode batch (the [`Decoder`] row's tag).
struct Live {
    job: GenJob,
    label_logits: Vec<Vec<f32>>,
    admitted: Instant,
}

struct Worker {
    model: Llama,
    spec: EngineSpec,
    batcher: Batcher,
    decoder: Decoder<Live>,
}

/// The forward context of `spec`'s model.
fn ctx(spec: &EngineSpec) -> ForwardCtx<'_> {
    ForwardCtx {
        adapter: spec.adapter.as_deref(),
        dropout_seed: None,
    }
}

impl Worker {
    fn run(&mut self) {
        while self.batcher.fill(self.decoder.is_empty()) || !self.decoder.is_empty() {
            // The model work runs on a rayon worker (the kernels' parallel loops then share work
            // within the pool instead of waking it and parking this thread every op); waiting
            // for requests stays outside, so an idle engine holds no worker.
            let batch = self.batcher.next_score_batch();
            if !batch.is_empty() {
                rayon::scope(|_| self.score(batch));
            }
            let admitted = self.batcher.admit_generations(self.decoder.len());
            if !admitted.is_empty() {
                rayon::scope(|_| self.prefill(admitted));
            }
            if !self.decoder.is_empty() {
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
            let h = self.model.hidden_states(&batch, &ctx(&self.spec))?;
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
        let tokens = jobs.len() * jobs.iter().map(|j| j.prompt.len()).max().unwrap_or(0);
        let n = jobs.len();
        let admissions = jobs
            .into_iter()
            .map(|mut job| Admission {
                prompt: std::mem::take(&mut job.prompt),
                sampling: job.sampling.clone(),
                stop: StopCriteria {
                    eos_ids: self.spec.eos_ids.clone(),
                    stop_strings: Vec::new(),
                    max_new_tokens: job.max_new_tokens,
                },
                tag: Live {
                    job,
                    label_logits: Vec::new(),
                    admitted: t0,
                },
            })
            .collect();
        let result =
            self.decoder
                .admit(&self.model, &ctx(&self.spec), self.spec.pad_id, admissions);
        let m = self.spec.model.clone();
        metrics::histogram!("rllr_batch_size", "model" => m.clone(), "method" => "prefill")
            .record(n as f64);
        metrics::histogram!("rllr_batch_tokens", "model" => m.clone(), "method" => "prefill")
            .record(tokens as f64);
        metrics::histogram!("rllr_batch_inference_duration_seconds", "model" => m, "method" => "prefill")
            .record(t0.elapsed().as_secs_f64());
        if let Err(r) = result {
            tracing::error!(model = %self.spec.model, error = %r.error, "prefill failed");
            for live in r.tags {
                let _ = live
                    .job
                    .reply
                    .send(Err(Error::Internal(r.error.to_string())));
            }
        }
    }

    /// Sample one token for every live sequence, retire the finished, decode the rest one step.
    fn step(&mut self) {
        let t0 = Instant::now();
        let mut events = Events {
            spec: &self.spec,
            now: t0,
        };
        let result = self
            .decoder
            .step(&self.model, &ctx(&self.spec), None, &mut events);
        let decoded = match result {
            Ok(0) => return,
            Ok(n) => n,
            Err(_) => self.decoder.len(),
        };
        let m = self.spec.model.clone();
        metrics::histogram!("rllr_batch_size", "model" => m.clone(), "method" => "decode")
            .record(decoded as f64);
        metrics::histogram!("rllr_batch_inference_duration_seconds", "model" => m, "method" => "decode")
            .record(t0.elapsed().as_secs_f64());
        if let Err(e) = result {
            self.fail_live(&e.to_string());
        }
    }

    fn fail_live(&mut self, msg: &str) {
        tracing::error!(model = %self.spec.model, error = %msg, "decode step failed");
        for live in self.decoder.drain() {
            let _ = live.job.reply.send(Err(Error::Internal(msg.to_string())));
        }
    }
}

/// The engine's view of a decode step: cancelled and expired generations leave before sampling,
/// each sampled token is streamed and its label logits kept, retired ones are answered.
struct Events<'a> {
    spec: &'a EngineSpec,
    now: Instant,
}

impl DecodeEvents<Live> for Events<'_> {
    fn abandoned(&mut self, live: &Live) -> bool {
        live.job.reply.is_closed() || live.job.deadline.is_some_and(|d| d <= self.now)
    }

    fn sampled(&mut self, live: &mut Live, logits: &[f32], token: u32) {
        live.label_logits.push(
            self.spec
                .label_first_ids
                .iter()
                .map(|&id| {
                    logits
                        .get(id as usize)
                        .copied()
                        .unwrap_or(f32::NEG_INFINITY)
                })
                .collect(),
        );
        if let Some(tx) = &live.job.tokens_tx {
            let _ = tx.send(token);
        }
    }

    fn retired(&mut self, row: Retired<Live>) {
        let Live {
            job,
            label_logits,
            admitted,
        } = row.tag;
        match row.finish {
            Some(finish) => {
                metrics::counter!("rllr_generated_tokens_total", "model" => self.spec.model.clone())
                    .increment(row.tokens.len() as u64);
                let _ = job.reply.send(Ok(GenDone {
                    tokens: row.tokens,
                    label_logits,
                    finish,
                    queue: admitted.saturating_duration_since(job.enqueued),
                    inference: admitted.elapsed(),
                }));
            }
            None if job.deadline.is_some_and(|d| d <= self.now) => {
                let _ = job.reply.send(Err(Error::DeadlineExceeded(
                    "the deadline passed during generation".into(),
                )));
            }
            None => {}
        }
    }
}
