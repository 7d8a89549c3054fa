//! `rllr batch`: classify a JSONL/CSV file into a JSONL output, resumably.
//!
//! A batch job must survive what long jobs meet: a kill, a server restart, a bad line in the
//! input. The design:
//!
//! - **Input** is read and validated up front ([`crate::input`]). Malformed records and duplicate
//!   ids (the first occurrence wins) are reported with their line numbers, then skipped or, with
//!   [`OnBadRecord::Fail`], fail the job before anything is sent or written.
//! - **Output** is append-only JSONL ([`crate::resume`]): one `write_all` per complete line, fsync
//!   every `checkpoint_every` rows, every second while idle, and at the end. A restart cuts a torn
//!   last line and skips every id already written, so rows are never lost or duplicated.
//! - **Work** is split into chunks of `batch_size` inputs and sent over several `ClassifyBatch`
//!   bidi streams (spread round-robin over the endpoints) with at most `concurrency` chunks in
//!   flight in all. The server answers each stream in order, so the first unanswered chunk of a
//!   stream is the one a failure belongs to.
//! - **Rebalancing**: a stream lives for `rotate_every` at most; then it takes no new chunk, waits
//!   for the ones in flight, closes and is opened again on the next address in the round. So an
//!   address that joins (a restarted or added replica) gets a share of a long job within about
//!   that time, instead of never (streams only moved when one broke).
//! - **Failures**: a status that says the work did not run (UNAVAILABLE, RESOURCE_EXHAUSTED, a
//!   broken connection, no reply within `request_timeout`) puts the stream's unanswered chunks back
//!   in the queue and reopens the stream after an exponential backoff with jitter; the job gives up
//!   when no chunk has succeeded for `give_up_after`. INVALID_ARGUMENT-like statuses fail just that
//!   chunk's records (reported, not written, so a rerun tries them again). Auth and
//!   unknown-model errors stop the job.
//! - **Gold labels** (`label` in the input) are copied to the output as `gold`; at the end the job
//!   reports accuracy and a confusion matrix over the whole output and writes the summary as JSON
//!   next to it (`<output>.summary.json`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rllr_proto::v1;
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::input::{self, BadRecord, Format, Record};
use crate::report::{self, Accuracy};
use crate::resume;
use crate::retry::RetryPolicy;
use crate::shard::Shard;

/// What to do with a malformed input record or a duplicate id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadRecord {
    /// Report it (line number and reason) and go on without it.
    #[default]
    Skip,
    /// Report it and stop before sending anything.
    Fail,
}

/// How long a batch stream lives before it is reopened on the next address (the client's
/// default re-resolve period, so a new replica found by a lookup gets work at the next rotation).
pub const ROTATE_EVERY: Duration = crate::client::RESOLVE_EVERY;

/// Settings of one batch job.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Input file; `-` reads stdin.
    pub input: PathBuf,
    /// Output JSONL (appended to; created if missing).
    pub output: PathBuf,
    /// Input format (None: from the extension, `.csv` or else JSONL).
    pub format: Option<Format>,
    /// Chunks in flight at once, over all streams.
    pub concurrency: usize,
    /// Inputs per ClassifyRequest.
    pub batch_size: usize,
    /// Bidi streams to open (None: enough for the endpoints and the concurrency).
    pub streams: Option<usize>,
    /// Policy model (empty: the server's default).
    pub model: String,
    pub params: v1::GenerationParams,
    pub system: Option<String>,
    pub on_bad_record: OnBadRecord,
    /// Rows between fsyncs of the output.
    pub checkpoint_every: usize,
    /// A stream with work in flight that gets no reply for this long is reopened.
    pub request_timeout: Duration,
    /// Stop when no chunk has succeeded for this long.
    pub give_up_after: Duration,
    /// Backoff between stream reopenings.
    pub retry: RetryPolicy,
    /// A stream is closed (after its chunks in flight are answered) and opened again on the next
    /// address this long after it opened, so replicas that join get work (None: never).
    pub rotate_every: Option<Duration>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Test hook: abort the process (as a crash would) after writing this many rows.
    pub stop_after: Option<usize>,
    /// Only the records of this shard ([`crate::shard`]); None: all of them.
    pub shard: Option<Shard>,
}

impl BatchConfig {
    /// Defaults for everything but the files.
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        BatchConfig {
            input: input.into(),
            output: output.into(),
            format: None,
            concurrency: 8,
            batch_size: 1,
            streams: None,
            model: String::new(),
            params: v1::GenerationParams {
                temperature: Some(0.0),
                ..Default::default()
            },
            system: None,
            on_bad_record: OnBadRecord::Skip,
            checkpoint_every: 64,
            request_timeout: Duration::from_secs(300),
            give_up_after: Duration::from_secs(120),
            retry: RetryPolicy {
                max_attempts: u32::MAX,
                ..RetryPolicy::default()
            },
            progress: false,
            stop_after: None,
            shard: None,
            rotate_every: Some(ROTATE_EVERY),
        }
    }
}

/// A record whose classification failed for good (not written; a rerun tries it again).
#[derive(Debug, Clone, Serialize)]
pub struct FailedRecord {
    pub id: String,
    pub line: usize,
    pub error: String,
}

/// What a job did; also written to `<output>.summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchSummary {
    pub input: String,
    pub output: String,
    /// Usable records in the input (after dropping bad ones and duplicates, and keeping only
    /// this shard's).
    pub records: usize,
    /// The shard this job ran (`--shard I/N`); absent for a whole-input job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Malformed records and duplicate ids, with line numbers.
    pub bad_records: Vec<BadRecord>,
    pub on_bad_record: OnBadRecord,
    /// Rows already in the output when the job started.
    pub already_done: usize,
    /// Rows this run wrote.
    pub written: usize,
    /// Bytes of a torn last line cut off the output at start.
    pub truncated_bytes: u64,
    pub failed: Vec<FailedRecord>,
    /// Streams reopened after a failure.
    pub retries: u64,
    pub elapsed_s: f64,
    /// Rows written per second of this run.
    pub rows_per_s: f64,
    /// Over every output row with a gold label.
    pub accuracy: Option<Accuracy>,
    /// Rows this run answered per server address: how the load was spread over the replicas.
    pub rows_per_endpoint: std::collections::BTreeMap<String, u64>,
}

/// Where the summary of `output` goes: `out.jsonl` → `out.summary.json`.
pub fn summary_path(output: &Path) -> PathBuf {
    output.with_extension("summary.json")
}

#[derive(Serialize)]
struct Timings {
    queue_ms: f64,
    inference_ms: f64,
    server_ms: f64,
    client_ms: f64,
}

#[derive(Serialize)]
struct OutRecord<'a> {
    id: &'a str,
    label: &'a str,
    confidence: f32,
    rationale: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold: Option<&'a str>,
    finish_reason: &'a str,
    generated_tokens: u32,
    model: &'a str,
    /// Content hash of the weights that answered (`sha256:...`), so rows written before and after
    /// a hot reload can be told apart.
    model_revision: &'a str,
    timings: Timings,
}

type Chunk = Vec<Record>;

/// One output row on its way to the writer.
struct Row {
    id: String,
    json: String,
}

struct Shared {
    queue: Mutex<VecDeque<Chunk>>,
    /// Chunks not yet answered or failed for good.
    outstanding: AtomicUsize,
    notify: Notify,
    abort: Mutex<Option<String>>,
    aborted: AtomicBool,
    failing_since: Mutex<Option<Instant>>,
    retries: AtomicU64,
    failed: Mutex<Vec<FailedRecord>>,
}

impl Shared {
    fn take(&self) -> Option<Chunk> {
        self.queue.lock().expect("lock").pop_front()
    }

    fn requeue(&self, chunks: impl IntoIterator<Item = Chunk>) {
        let mut q = self.queue.lock().expect("lock");
        let chunks: Vec<Chunk> = chunks.into_iter().collect();
        for c in chunks.into_iter().rev() {
            q.push_front(c);
        }
        drop(q);
        self.notify.notify_waiters();
    }

    fn complete(&self) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        *self.failing_since.lock().expect("lock") = None;
        self.notify.notify_waiters();
    }

    fn finished(&self) -> bool {
        self.outstanding.load(Ordering::SeqCst) == 0 || self.aborted.load(Ordering::SeqCst)
    }

    fn stop(&self, why: String) {
        let mut a = self.abort.lock().expect("lock");
        if a.is_none() {
            *a = Some(why);
        }
        self.aborted.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// A failure that will be retried; stops the job when nothing succeeded for `give_up`.
    fn note_failure(&self, give_up: Duration, what: &str) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut since = self.failing_since.lock().expect("lock");
        let t0 = *since.get_or_insert_with(Instant::now);
        if t0.elapsed() > give_up {
            drop(since);
            self.stop(format!(
                "no chunk succeeded for {:.0}s; last error: {what}",
                give_up.as_secs_f64()
            ));
        }
    }
}

/// How a stream failure is handled.
enum Handling {
    /// The work did not run or the connection broke: retry the unanswered chunks.
    Retry,
    /// The first unanswered chunk is bad: fail its records, retry the rest.
    FailChunk,
    /// Nothing will work (auth, unknown model): stop the job.
    Stop,
}

fn handling(code: Code) -> Handling {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Handling::FailChunk,
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::Unimplemented => {
            Handling::Stop
        }
        _ => Handling::Retry,
    }
}

/// Read the input, drop bad records and duplicate ids (reporting them), in line order.
pub(crate) fn read_input(
    path: &Path,
    format: Option<Format>,
) -> Result<(Vec<Record>, Vec<BadRecord>)> {
    let format = format.unwrap_or_else(|| Format::detect(path));
    let parsed = if path.as_os_str() == "-" {
        input::parse(std::io::stdin().lock(), format)
    } else {
        let f = std::fs::File::open(path).map_err(Error::io(path))?;
        input::parse(f, format)
    }
    .map_err(Error::io(path))?;
    let mut bad = parsed.bad;
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut records = Vec::with_capacity(parsed.records.len());
    for r in parsed.records {
        if let Some(&at) = first.get(&r.id) {
            bad.push(BadRecord {
                line: r.line,
                message: format!("duplicate id '{}' (first at line {at})", r.id),
            });
        } else {
            first.insert(r.id.clone(), r.line);
            records.push(r);
        }
    }
    bad.sort_by_key(|b| b.line);
    Ok((records, bad))
}

fn request(chunk: &Chunk, cfg: &BatchConfig) -> v1::ClassifyRequest {
    v1::ClassifyRequest {
        inputs: chunk
            .iter()
            .map(|r| v1::Input {
                text: r.text.clone(),
                text_pair: r.text_pair.clone(),
            })
            .collect(),
        model: cfg.model.clone(),
        params: Some(cfg.params),
        system: cfg.system.clone(),
        ..Default::default()
    }
}

fn rows(chunk: &Chunk, resp: &v1::ClassifyResponse, client_time: Duration) -> Result<Vec<Row>> {
    if resp.results.len() != chunk.len() {
        return Err(Error::Batch(format!(
            "the server answered {} results for {} inputs",
            resp.results.len(),
            chunk.len()
        )));
    }
    let md = resp.metadata.clone().unwrap_or_default();
    let ms = |ns: u64| ns as f64 / 1e6;
    let revision = md
        .model_revisions
        .get(&resp.model)
        .map_or("", String::as_str);
    chunk
        .iter()
        .zip(&resp.results)
        .map(|(rec, c)| {
            let out = OutRecord {
                id: &rec.id,
                label: &c.label,
                confidence: c.confidence,
                rationale: &c.rationale,
                gold: rec.label.as_deref(),
                finish_reason: &c.finish_reason,
                generated_tokens: c.generated_tokens,
                model: &resp.model,
                model_revision: revision,
                timings: Timings {
                    queue_ms: ms(md.queue_time_ns),
                    inference_ms: ms(md.inference_time_ns),
                    server_ms: ms(md.total_time_ns),
                    client_ms: client_time.as_secs_f64() * 1e3,
                },
            };
            let json = serde_json::to_string(&out)
                .map_err(|e| Error::Batch(format!("encoding a row: {e}")))?;
            Ok(Row {
                id: rec.id.clone(),
                json,
            })
        })
        .collect()
}

/// One stream's loop: keep up to `window` chunks in flight, reopen after failures.
async fn stream_worker(
    client: Client,
    shared: Arc<Shared>,
    cfg: Arc<BatchConfig>,
    out: std_mpsc::Sender<Vec<Row>>,
    window: usize,
) {
    let mut failures = 0u32;
    while !shared.finished() {
        if failures > 0 {
            tokio::time::sleep(cfg.retry.backoff(failures)).await;
            if shared.finished() {
                break;
            }
        }
        let (req_tx, req_rx) = mpsc::channel::<v1::ClassifyRequest>(window);
        let (mut stream, on) = match client.classify_batch(ReceiverStream::new(req_rx)).await {
            Ok(s) => s,
            Err(e) => {
                match e.code().map(handling) {
                    Some(Handling::Stop) => shared.stop(format!("opening a stream: {e}")),
                    _ => shared.note_failure(cfg.give_up_after, &e.to_string()),
                }
                failures += 1;
                continue;
            }
        };
        let mut inflight: VecDeque<(Chunk, Instant)> = VecDeque::new();
        let mut close_at = cfg.rotate_every.map(|d| Instant::now() + d);
        let error: String = loop {
            let mut rotate = close_at.is_some_and(|t| Instant::now() >= t);
            if rotate && client.endpoints().await.len() < 2 {
                // One address: reopening would land on it again.
                rotate = false;
                close_at = cfg.rotate_every.map(|d| Instant::now() + d);
            }
            while !rotate && inflight.len() < window {
                let Some(chunk) = shared.take() else { break };
                if req_tx.send(request(&chunk, &cfg)).await.is_err() {
                    shared.requeue([chunk]);
                    break;
                }
                inflight.push_back((chunk, Instant::now()));
            }
            if inflight.is_empty() {
                if shared.finished() {
                    return;
                }
                if rotate {
                    // Every chunk of this stream is answered: close it and open the next one
                    // on the next address in the round (no failure, no backoff).
                    break String::new();
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), shared.notify.notified())
                    .await;
                continue;
            }
            match tokio::time::timeout(cfg.request_timeout, stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    let (chunk, sent) = inflight.pop_front().expect("in flight");
                    match rows(&chunk, &resp, sent.elapsed()) {
                        Ok(rows) => {
                            client.count_rows(&on, rows.len() as u64);
                            if out.send(rows).is_err() {
                                shared.stop("the output writer stopped".into());
                                return;
                            }
                            shared.complete();
                            failures = 0;
                        }
                        Err(e) => {
                            shared.stop(e.to_string());
                            return;
                        }
                    }
                }
                Ok(Ok(None)) => {
                    client.mark_down(&on);
                    break "the server closed the stream".to_string();
                }
                Ok(Err(status)) => {
                    let what = format!("{:?}: {}", status.code(), status.message());
                    match handling(status.code()) {
                        Handling::Retry => {
                            // The replica may be gone (killed, rescheduled): prefer the others.
                            client.mark_down(&on);
                            break what;
                        }
                        Handling::Stop => {
                            shared.requeue(inflight.drain(..).map(|(c, _)| c));
                            shared.stop(what);
                            return;
                        }
                        Handling::FailChunk => {
                            let (chunk, _) = inflight.pop_front().expect("in flight");
                            shared
                                .failed
                                .lock()
                                .expect("lock")
                                .extend(chunk.iter().map(|r| FailedRecord {
                                    id: r.id.clone(),
                                    line: r.line,
                                    error: what.clone(),
                                }));
                            tracing::warn!(lines = ?chunk.iter().map(|r| r.line).collect::<Vec<_>>(), error = %what, "records failed");
                            shared.outstanding.fetch_sub(1, Ordering::SeqCst);
                            shared.requeue(inflight.drain(..).map(|(c, _)| c));
                            failures = 0;
                            // The server ended the stream: open a new one without waiting.
                            break String::new();
                        }
                    }
                }
                Err(_) => {
                    break format!("no reply within {:.0}s", cfg.request_timeout.as_secs_f64())
                }
            }
        };
        shared.requeue(inflight.drain(..).map(|(c, _)| c));
        if !error.is_empty() {
            tracing::warn!(%error, "batch stream failed; retrying");
            shared.note_failure(cfg.give_up_after, &error);
            failures += 1;
        }
    }
}

/// The writer thread: append each row as one line, fsync at checkpoints.
fn writer(
    mut file: std::fs::File,
    path: PathBuf,
    rows: std_mpsc::Receiver<Vec<Row>>,
    shared: Arc<Shared>,
    mut done: std::collections::HashSet<String>,
    cfg: Arc<BatchConfig>,
    bar: ProgressBar,
) -> Result<usize> {
    let mut written = 0usize;
    let mut unsynced = 0usize;
    let io = |e| Error::Io {
        path: path.clone(),
        source: e,
    };
    loop {
        let batch = match rows.recv_timeout(Duration::from_secs(1)) {
            Ok(b) => b,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if unsynced > 0 {
                    file.sync_data().map_err(io)?;
                    unsynced = 0;
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for row in batch {
            // Belt and braces: an id is written once even if a chunk were answered twice.
            if !done.insert(row.id) {
                continue;
            }
            if let Err(e) = resume::append_line(&mut file, &row.json) {
                shared.stop(format!("writing {}: {e}", path.display()));
                return Err(io(e));
            }
            written += 1;
            unsynced += 1;
            bar.inc(1);
            if cfg.stop_after == Some(written) {
                // Test hook: die like a killed process (no flush, no fsync, no unwinding).
                std::process::abort();
            }
            if unsynced >= cfg.checkpoint_every.max(1) {
                file.sync_data().map_err(io)?;
                unsynced = 0;
            }
        }
    }
    file.sync_data().map_err(io)?;
    Ok(written)
}

/// Run a batch job to the end (or to a failure; finished rows stay in the output either way).
pub async fn run(client: &Client, cfg: BatchConfig) -> Result<BatchSummary> {
    let t0 = Instant::now();
    let cfg = Arc::new(cfg);
    let (mut records, bad) = read_input(&cfg.input, cfg.format)?;
    if let Some(shard) = cfg.shard {
        // After validation and de-duplication: the shards of one input are disjoint and cover it.
        records.retain(|r| shard.contains(&r.id));
    }
    for b in &bad {
        tracing::warn!("{}: {b}", cfg.input.display());
    }
    if cfg.on_bad_record == OnBadRecord::Fail {
        if let Some(b) = bad.first() {
            return Err(Error::BadRecord {
                line: b.line,
                message: format!(
                    "{} (in {}; {} bad record(s) in all; nothing was sent, the output is untouched)",
                    b.message,
                    cfg.input.display(),
                    bad.len()
                ),
            });
        }
    }
    let (file, resumed) = resume::open_output(&cfg.output)?;
    if resumed.truncated > 0 {
        tracing::warn!(
            bytes = resumed.truncated,
            "cut a torn last line off the output"
        );
    }
    if let Some(shard) = cfg.shard {
        // Rows of another shard (or of a whole-input run) mean the output is not this shard's:
        // continuing would mix shards and break the merge's exactly-once check.
        if let Some(other) = resumed.done.iter().find(|id| !shard.contains(id)) {
            return Err(Error::Batch(format!(
                "{} holds id '{other}', which is not in shard {shard}: it was written by another shard or an unsharded run; refusing to mix them (use a separate --out per shard)",
                cfg.output.display()
            )));
        }
    }
    let already_done = records
        .iter()
        .filter(|r| resumed.done.contains(&r.id))
        .count();
    let pending: Vec<Record> = records
        .iter()
        .filter(|r| !resumed.done.contains(&r.id))
        .cloned()
        .collect();
    let chunks: VecDeque<Chunk> = pending
        .chunks(cfg.batch_size.max(1))
        .map(<[Record]>::to_vec)
        .collect();
    let shared = Arc::new(Shared {
        outstanding: AtomicUsize::new(chunks.len()),
        queue: Mutex::new(chunks),
        notify: Notify::new(),
        abort: Mutex::new(None),
        aborted: AtomicBool::new(false),
        failing_since: Mutex::new(None),
        retries: AtomicU64::new(0),
        failed: Mutex::new(Vec::new()),
    });

    let bar = if cfg.progress {
        ProgressBar::with_draw_target(Some(pending.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} rows  {per_sec}  ETA {eta}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    if already_done > 0 {
        bar.set_message(format!("({already_done} done before)"));
    }

    let (tx, rx) = std_mpsc::channel::<Vec<Row>>();
    let writer_thread = {
        let (shared, cfg, bar, path, done) = (
            shared.clone(),
            cfg.clone(),
            bar.clone(),
            cfg.output.clone(),
            resumed.done.clone(),
        );
        std::thread::spawn(move || writer(file, path, rx, shared, done, cfg, bar))
    };

    let concurrency = cfg.concurrency.max(1);
    let endpoints = client.endpoints().await.len();
    let streams = cfg
        .streams
        .unwrap_or_else(|| endpoints.max(concurrency.div_ceil(8)))
        .clamp(1, concurrency);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let window = concurrency / streams + usize::from(s < concurrency % streams);
        tasks.push(tokio::spawn(stream_worker(
            client.clone(),
            shared.clone(),
            cfg.clone(),
            tx.clone(),
            window,
        )));
    }
    drop(tx);
    for t in tasks {
        if let Err(e) = t.await {
            shared.stop(format!("a stream task failed: {e}"));
        }
    }
    let written = tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| Error::Batch(e.to_string()))?
        .map_err(|_| Error::Batch("the writer thread panicked".into()))??;
    bar.finish_and_clear();

    if let Some(why) = shared.abort.lock().expect("lock").clone() {
        return Err(Error::Batch(format!(
            "{why} ({written} rows written this run, {} in all are safe in {}; rerun to resume)",
            already_done + written,
            cfg.output.display()
        )));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut failed = shared.failed.lock().expect("lock").clone();
    failed.sort_by_key(|f| f.line);
    let summary = BatchSummary {
        input: cfg.input.display().to_string(),
        output: cfg.output.display().to_string(),
        records: records.len(),
        shard: cfg.shard,
        bad_records: bad,
        on_bad_record: cfg.on_bad_record,
        already_done,
        written,
        truncated_bytes: resumed.truncated,
        failed,
        retries: shared.retries.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        rows_per_s: written as f64 / elapsed.max(1e-9),
        accuracy: report::accuracy_of_output(&cfg.output)?,
        rows_per_endpoint: client.answered(),
    };
    let sp = summary_path(&cfg.output);
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises") + "\n";
    resume::write_atomic(&sp, json.as_bytes())?;
    Ok(summary)
}
