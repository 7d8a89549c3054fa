//! `rllr batch`: classify a whole file into a JSONL output over bidi streams, resumably; the
//! job itself is the library's [`rllr_client::batch`], this is its command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use rllr_client::batch::{self, BatchConfig, OnBadRecord};
use rllr_client::input::Format;
use rllr_client::shard::Shard;
use rllr_client::Client;

use crate::args::Generation;
use crate::secs;

/// Classify a JSONL/CSV file into a JSONL output; resumable (rerun the same command after a
/// kill and it carries on where it stopped).
#[derive(Args, Debug)]
pub struct Batch {
    /// Input JSONL or CSV ('-' = stdin): fields id, text|input, text_pair, label (gold, optional).
    #[arg(long, env = "RLLR_CLIENT_BATCH_INPUT")]
    input: PathBuf,
    /// Output JSONL; rows already there are kept and their ids skipped, which is what makes a
    /// rerun resume.
    #[arg(long, env = "RLLR_CLIENT_BATCH_OUTPUT")]
    out: PathBuf,
    /// Format of --input; by default from its extension (.csv, else JSONL).
    #[arg(long, env = "RLLR_CLIENT_INPUT_FORMAT", value_enum)]
    input_format: Option<Format>,
    /// Requests in flight at once, over all streams and endpoints: enough to keep the servers'
    /// batchers full, few enough not to overflow their queues.
    #[arg(long, env = "RLLR_CLIENT_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Inputs per request (the server batches across requests anyway; larger means fewer
    /// messages but more work redone when a stream breaks).
    #[arg(long, env = "RLLR_CLIENT_BATCH_SIZE", default_value_t = 1)]
    batch_size: usize,
    /// Bidi streams to open (default: one per endpoint, and one per 8 of concurrency).
    #[arg(long, env = "RLLR_CLIENT_STREAMS")]
    streams: Option<usize>,
    #[command(flatten)]
    gen: Generation,
    /// A malformed record or a duplicate id: skip it with a warning (the first occurrence of an
    /// id wins), or fail before sending anything so the input can be fixed.
    #[arg(
        long,
        env = "RLLR_CLIENT_ON_BAD_RECORD",
        value_enum,
        default_value = "skip"
    )]
    on_bad_record: OnBadRecord,
    /// Rows between fsyncs of the output: how many rows a power cut may cost (a killed process
    /// loses none).
    #[arg(long, env = "RLLR_CLIENT_CHECKPOINT_EVERY", default_value_t = 64)]
    checkpoint_every: usize,
    /// Seconds a stream may go without a reply before it is reopened (a stuck server).
    #[arg(long, env = "RLLR_CLIENT_REQUEST_TIMEOUT_S", default_value_t = 300.0)]
    request_timeout_s: f64,
    /// Seconds without any successful request before the job gives up (long enough to ride out
    /// a server restart).
    #[arg(long, env = "RLLR_CLIENT_GIVE_UP_AFTER_S", default_value_t = 120.0)]
    give_up_after_s: f64,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, env = "RLLR_CLIENT_NO_PROGRESS")]
    no_progress: bool,
    /// Seconds a batch stream lives before it is closed (once its requests are answered) and
    /// opened on the next server address, so replicas that start during a long job (restarted or
    /// scaled-out pods) get their share; 0 = streams move only when they fail.
    #[arg(long, env = "RLLR_CLIENT_STREAM_ROTATE_S", default_value_t = 10.0)]
    stream_rotate_s: f64,
    /// Run only shard I of N ('I/N', 0 ≤ I < N), so N workers (the pods of a Kubernetes Indexed
    /// Job) split one input with no overlap; 'auto/N' takes I from JOB_COMPLETION_INDEX, which
    /// Kubernetes sets in each pod. A record's shard is a stable hash of its id, so re-ordering or
    /// appending to the input keeps assignments. Give each shard its own --out and join them
    /// with `rllr merge`, which checks that nothing is missing.
    #[arg(long, env = "RLLR_CLIENT_SHARD")]
    shard: Option<Shard>,
    /// Test hook: abort after writing N rows, like a crash.
    #[arg(long, env = "RLLR_CLIENT_STOP_AFTER", hide = true)]
    stop_after: Option<usize>,
}

impl Batch {
    pub async fn run(self, c: &Client) -> Result<i32> {
        let a = self;
        let mut cfg = BatchConfig::new(&a.input, &a.out);
        cfg.format = a.input_format;
        cfg.concurrency = a.concurrency.max(1);
        cfg.batch_size = a.batch_size.max(1);
        cfg.streams = a.streams;
        cfg.model = a.gen.model.clone();
        cfg.params = a.gen.params();
        cfg.system = a.gen.system.clone();
        cfg.on_bad_record = a.on_bad_record;
        cfg.checkpoint_every = a.checkpoint_every.max(1);
        cfg.request_timeout = secs(a.request_timeout_s).unwrap_or(Duration::from_secs(3600));
        cfg.give_up_after = secs(a.give_up_after_s).unwrap_or(Duration::from_secs(120));
        cfg.progress = !a.no_progress && std::io::stderr().is_terminal();
        cfg.stop_after = a.stop_after;
        cfg.shard = a.shard;
        cfg.rotate_every = secs(a.stream_rotate_s);
        let s = batch::run(c, cfg).await?;
        for b in &s.bad_records {
            eprintln!("skipped {}: {b}", s.input);
        }
        for f in &s.failed {
            eprintln!("failed line {} (id {}): {}", f.line, f.id, f.error);
        }
        eprintln!(
            "{} rows written in {:.1}s ({:.2} rows/s), {} done before, {} bad record(s) skipped, {} failed, {} stream retries; summary: {}",
            s.written,
            s.elapsed_s,
            s.rows_per_s,
            s.already_done,
            s.bad_records.len(),
            s.failed.len(),
            s.retries,
            batch::summary_path(&a.out).display()
        );
        if s.rows_per_endpoint.len() > 1 {
            eprintln!("rows per server address:");
            for (addr, n) in &s.rows_per_endpoint {
                eprintln!("  {n:>8}  {addr}");
            }
        }
        if let Some(acc) = &s.accuracy {
            eprint!("{}", acc.render());
        }
        if !s.failed.is_empty() {
            eprintln!(
                "error: {} record(s) failed; rerun to retry them",
                s.failed.len()
            );
            return Ok(1);
        }
        Ok(0)
    }
}
