//! The per-model queue and the dynamic batcher that drains it.
//!
//! Requests enter as one [`Job`] per item through a channel whose length is counted against a
//! capacity at admission (so a multi-item request fits whole or is refused whole with
//! RESOURCE_EXHAUSTED). The batcher runs on the engine thread and packs scoring jobs FIFO up to a
//! padded-token budget and a row limit, optionally waiting `max_delay` for more work to fill a batch
//! (Triton's `max_queue_delay`; 0 means run as soon as the engine is free, as TEI does). Generation
//! jobs are admitted into the running decode batch between steps (continuous batching). Jobs whose
//! caller went away are dropped here, and jobs past their deadline are answered DEADLINE_EXCEEDED
//! without running.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rllr_core::SamplingParams;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Batch-forming limits.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Padded tokens (rows x longest row) per forward pass.
    pub max_batch_tokens: usize,
    /// Rows per forward pass / live sequences per decode batch.
    pub max_batch_size: usize,
    /// How long to wait for more scoring work before running a partial batch.
    pub max_delay: Duration,
}

/// One sequence to score at its last token.
pub struct ScoreJob {
    pub tokens: Vec<u32>,
    pub reply: oneshot::Sender<Result<ScoreDone>>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
}

/// The score of one [`ScoreJob`] and where its time went.
#[derive(Debug, Clone)]
pub struct ScoreDone {
    pub score: f32,
    pub queue: Duration,
    pub inference: Duration,
    /// Rows in the batch it ran in.
    pub batch_size: usize,
}

/// One prompt to continue.
pub struct GenJob {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Receives every generated token id as it is sampled (ClassifyStream).
    pub tokens_tx: Option<mpsc::UnboundedSender<u32>>,
    pub reply: oneshot::Sender<Result<GenDone>>,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
}

/// What one [`GenJob`] produced.
#[derive(Debug, Clone)]
pub struct GenDone {
    pub tokens: Vec<u32>,
    /// For each generated token: the logits, at the step that produced it, of each label's first token.
    pub label_logits: Vec<Vec<f32>>,
    pub finish: rllr_core::FinishReason,
    pub queue: Duration,
    pub inference: Duration,
}

/// A queued job as the batcher sees it before running it: its caller may have gone away, its
/// deadline may have passed.
trait Pending {
    /// The caller stopped waiting for the reply.
    fn cancelled(&self) -> bool;
    fn deadline(&self) -> Option<Instant>;
    /// Answer with `e` instead of running.
    fn fail(self, e: Error);
}

/// Both job kinds reply on a oneshot channel and carry an optional deadline.
macro_rules! impl_pending {
    ($($job:ty),*) => {$(
        impl Pending for $job {
            fn cancelled(&self) -> bool {
                self.reply.is_closed()
            }
            fn deadline(&self) -> Option<Instant> {
                self.deadline
            }
            fn fail(self, e: Error) {
                let _ = self.reply.send(Err(e));
            }
        }
    )*};
}

impl_pending!(ScoreJob, GenJob);

/// Work for an engine worker.
pub enum Job {
    Score(ScoreJob),
    Generate(GenJob),
}

/// The sending side of a model's queue, held by the services.
#[derive(Clone)]
pub struct QueueSender {
    tx: Sender<Job>,
    queued: Arc<AtomicUsize>,
    capacity: usize,
    model: String,
}

impl QueueSender {
    /// Enqueue all of `jobs` or none: RESOURCE_EXHAUSTED when they do not fit.
    pub fn submit(&self, jobs: Vec<Job>) -> Result<()> {
        let n = jobs.len();
        let before = self.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            return Err(Error::Overloaded(format!(
                "model '{}' queue holds {before} of {} items; {n} more do not fit",
                self.model, self.capacity
            )));
        }
        for job in jobs {
            if self.tx.send(job).is_err() {
                self.queued.fetch_sub(n, Ordering::SeqCst);
                return Err(Error::Unavailable(format!(
                    "model '{}' worker has stopped",
                    self.model
                )));
            }
        }
        metrics::gauge!("rllr_queue_depth", "model" => self.model.clone())
            .set(self.queued.load(Ordering::SeqCst) as f64);
        Ok(())
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The receiving side, owned by the engine thread.
pub struct Batcher {
    settings: BatchSettings,
    rx: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    model: String,
    scores: VecDeque<ScoreJob>,
    gens: VecDeque<GenJob>,
    disconnected: bool,
}

/// A queue of `capacity` items for `model`.
pub fn queue(model: &str, capacity: usize, settings: BatchSettings) -> (QueueSender, Batcher) {
    let (tx, rx) = std::sync::mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    metrics::gauge!("rllr_queue_capacity", "model" => model.to_string()).set(capacity as f64);
    metrics::gauge!("rllr_queue_depth", "model" => model.to_string()).set(0.0);
    (
        QueueSender {
            tx,
            queued: queued.clone(),
            capacity,
            model: model.to_string(),
        },
        Batcher {
            settings,
            rx,
            queued,
            model: model.to_string(),
            scores: VecDeque::new(),
            gens: VecDeque::new(),
            disconnected: false,
        },
    )
}

impl Batcher {
    /// The limits this batcher packs to.
    pub fn settings(&self) -> &BatchSettings {
        &self.settings
    }

    /// Move arrived jobs into the pending queues. With `idle` (nothing decoding), block until work
    /// arrives, then wait up to `max_delay` for a scoring batch to fill. Returns false once every
    /// sender is gone and nothing is pending: the worker may exit.
    pub fn fill(&mut self, idle: bool) -> bool {
        if idle && self.scores.is_empty() && self.gens.is_empty() && !self.disconnected {
            match self.rx.recv() {
                Ok(job) => self.push(job),
                Err(_) => self.disconnected = true,
            }
        }
        self.drain();
        if idle && !self.settings.max_delay.is_zero() && self.gens.is_empty() {
            if let Some(first) = self.scores.front() {
                let until = first.enqueued + self.settings.max_delay;
                while !self.disconnected && !self.score_batch_full() {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    match self.rx.recv_timeout(until - now) {
                        Ok(job) => self.push(job),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => self.disconnected = true,
                    }
                }
            }
        }
        !(self.disconnected && self.scores.is_empty() && self.gens.is_empty())
    }

    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(job) => self.push(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.disconnected = true;
                    break;
                }
            }
        }
    }

    fn push(&mut self, job: Job) {
        match job {
            Job::Score(j) => self.scores.push_back(j),
            Job::Generate(j) => self.gens.push_back(j),
        }
    }

    fn score_batch_full(&self) -> bool {
        let mut longest = 0;
        for (n, j) in self.scores.iter().enumerate() {
            longest = longest.max(j.tokens.len());
            if n + 1 >= self.settings.max_batch_size
                || (n + 1) * longest >= self.settings.max_batch_tokens
            {
                return true;
            }
        }
        false
    }

    fn taken(&self, n: usize) {
        let left = self.queued.fetch_sub(n, Ordering::SeqCst) - n;
        metrics::gauge!("rllr_queue_depth", "model" => self.model.clone()).set(left as f64);
    }

    /// Remove the front job of a queue (`queue` picks it) when its caller went away (dropped) or
    /// its deadline passed by `now` (answered DEADLINE_EXCEEDED, saying the `what` was queued);
    /// true when one was removed.
    fn drop_dead_front<J: Pending>(
        &mut self,
        queue: fn(&mut Self) -> &mut VecDeque<J>,
        now: Instant,
        what: &str,
    ) -> bool {
        let q = queue(self);
        let reason = match q.front() {
            Some(j) if j.cancelled() => "cancelled",
            Some(j) if j.deadline().is_some_and(|d| d <= now) => "deadline",
            _ => return false,
        };
        let j = q.pop_front().expect("front exists");
        self.taken(1);
        metrics::counter!("rllr_request_dropped_total", "model" => self.model.clone(), "reason" => reason).increment(1);
        if reason == "deadline" {
            j.fail(Error::DeadlineExceeded(format!(
                "the deadline passed while the {what} was queued"
            )));
        }
        true
    }

    /// The next scoring batch, FIFO: as many jobs as fit `max_batch_size` rows and
    /// `max_batch_tokens` padded tokens (always at least one). Cancelled jobs are dropped and
    /// expired ones answered DEADLINE_EXCEEDED on the way.
    pub fn next_score_batch(&mut self) -> Vec<ScoreJob> {
        let now = Instant::now();
        let mut out: Vec<ScoreJob> = Vec::new();
        let mut longest = 0;
        loop {
            if self.drop_dead_front(|b| &mut b.scores, now, "item") {
                continue;
            }
            let Some(j) = self.scores.front() else { break };
            let l = longest.max(j.tokens.len());
            let fits = out.len() < self.settings.max_batch_size
                && (out.len() + 1) * l <= self.settings.max_batch_tokens;
            if !out.is_empty() && !fits {
                break;
            }
            longest = l;
            out.push(self.scores.pop_front().expect("front exists"));
            self.taken(1);
        }
        out
    }

    /// Generation jobs to admit into a decode batch that already holds `live` sequences.
    pub fn admit_generations(&mut self, live: usize) -> Vec<GenJob> {
        let now = Instant::now();
        let mut out: Vec<GenJob> = Vec::new();
        let mut longest = 0;
        loop {
            if self.drop_dead_front(|b| &mut b.gens, now, "input") {
                continue;
            }
            let Some(j) = self.gens.front() else { break };
            let l = longest.max(j.prompt.len());
            let fits = live + out.len() < self.settings.max_batch_size
                && (out.len() + 1) * l <= self.settings.max_batch_tokens;
            let first = live == 0 && out.is_empty();
            if !fits && !first {
                break;
            }
            longest = l;
            out.push(self.gens.pop_front().expect("front exists"));
            self.taken(1);
        }
        out
    }
}
