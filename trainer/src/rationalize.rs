//! `rllr-train rationalize`: run a teacher over a dataset for the gold label and k wrong labels
//! (D3), appending one [`RationaleRecord`] per (example, label) to a JSONL file.
//!
//! Long teacher runs get interrupted, so the output is an append-only log: each chunk of records
//! is written with one `write` and synced, a torn last line (from a kill mid-write) is cut off on
//! restart, and (id, label) rows already present are skipped. A summary reports counts, failures
//! and mean rationale length.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rllr_core::dataset::{parse_jsonl, read_examples, to_jsonl, Example};
use rllr_core::device::parse_device;

use crate::data::cli::TaskArgs;
use crate::data::rationales::RationaleRecord;
use crate::pairs::{wrong_labels, WrongLabels};
use crate::teacher::cache::DiskCache;
use crate::teacher::dataset::DatasetTeacher;
use crate::teacher::local::{LocalConfig, LocalTeacher};
use crate::teacher::openai::{OpenAiConfig, OpenAiTeacher};
use crate::teacher::{RationaleRequest, Teacher, TeacherError};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeacherKind {
    /// Rationales already in the data (human explanations); writes nothing new.
    Dataset,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
    /// An rllr checkpoint on this machine.
    Local,
}

#[derive(Args, Debug)]
pub struct RationalizeArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Canonical examples JSONL (e.g. data/esnli/train.jsonl).
    #[arg(long, env = "RLLR_TRAIN_RATIONALIZE_INPUT")]
    pub input: PathBuf,
    /// Rationale records JSONL, appended to; rerunning resumes where a previous run stopped.
    #[arg(long, env = "RLLR_TRAIN_RATIONALIZE_OUTPUT")]
    pub output: PathBuf,
    /// Who writes the rationales.
    #[arg(long, env = "RLLR_TRAIN_TEACHER", value_enum)]
    pub teacher: TeacherKind,
    /// Wrong labels per example (D3): `all` (k−1, one pair per wrong label) or a count sampled by
    /// seed, to bound teacher cost on many-label tasks.
    #[arg(long, env = "RLLR_TRAIN_WRONG_LABELS", default_value = "all")]
    pub wrong_labels: WrongLabels,
    /// Only the first N examples, for a cheap trial run.
    #[arg(long, env = "RLLR_TRAIN_LIMIT")]
    pub limit: Option<usize>,
    /// Seed of the wrong-label sampling and of a sampling teacher.
    #[arg(long, env = "RLLR_TRAIN_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Requests per teacher call and per synced append: the most work a crash can lose.
    #[arg(long, env = "RLLR_TRAIN_CHUNK", default_value_t = 16)]
    pub chunk: usize,
    #[command(flatten)]
    pub openai: OpenAiArgs,
    #[command(flatten)]
    pub local: LocalArgs,
}

#[derive(Args, Debug)]
pub struct OpenAiArgs {
    /// Endpoint base URL including the version path; `/chat/completions` is appended.
    #[arg(
        long,
        env = "RLLR_TRAIN_OPENAI_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub base_url: String,
    /// Model name sent to the endpoint (part of the cache key).
    #[arg(long, env = "RLLR_TRAIN_OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub openai_model: String,
    /// API key, read from the environment only so it never appears in shell history.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, hide = true)]
    pub api_key: Option<String>,
    /// Requests in flight at once: the endpoint's rate limit decides.
    #[arg(long, env = "RLLR_TRAIN_OPENAI_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Retries on 429 / 5xx / timeouts before a request counts as failed.
    #[arg(long, env = "RLLR_TRAIN_OPENAI_RETRIES", default_value_t = 5)]
    pub max_retries: u32,
    /// Per-request timeout in seconds.
    #[arg(long, env = "RLLR_TRAIN_OPENAI_TIMEOUT_S", default_value_t = 60)]
    pub timeout_s: u64,
    /// Reply cache, keyed by (model, prompt): reruns never pay twice for a prompt.
    #[arg(
        long,
        env = "RLLR_TRAIN_TEACHER_CACHE",
        default_value = ".rllr-cache/teacher"
    )]
    pub cache_dir: PathBuf,
    /// Longest rationale, in tokens.
    #[arg(long, env = "RLLR_TRAIN_OPENAI_MAX_TOKENS", default_value_t = 128)]
    pub openai_max_tokens: u32,
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Checkpoint directory of the local teacher (e.g. models/smollm2-135m-instruct).
    #[arg(long, env = "RLLR_TRAIN_MODEL")]
    pub model: Option<PathBuf>,
    /// Chat template of the local teacher (auto reads rllr.json / tokenizer_config.json).
    #[arg(long, env = "RLLR_TRAIN_TEMPLATE", default_value = "auto")]
    pub template: String,
    /// Prompts per generation batch: larger is faster per token until memory or padding bites.
    #[arg(long, env = "RLLR_TRAIN_BATCH_SIZE", default_value_t = 8)]
    pub batch_size: usize,
    /// Longest rationale, in tokens.
    #[arg(long, env = "RLLR_TRAIN_MAX_NEW_TOKENS", default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy (reproducible); above 0 samples, seeded.
    #[arg(long, env = "RLLR_TRAIN_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "RLLR_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,
}

/// Counts of one run.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub requested: usize,
    pub already_done: usize,
    pub written: usize,
    pub gold_written: usize,
    pub not_in_data: usize,
    pub failed: usize,
    pub total_chars: usize,
    pub total_words: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.written.max(1) as f64;
        write!(
            f,
            "requested {}, already done {}, written {} ({} gold, {} wrong-label), not in data {}, failed {}, mean length {:.1} words / {:.1} chars",
            self.requested,
            self.already_done,
            self.written,
            self.gold_written,
            self.written - self.gold_written,
            self.not_in_data,
            self.failed,
            self.total_words as f64 / n,
            self.total_chars as f64 / n
        )
    }
}

/// The (id, label) rows of an existing output; a torn last line is cut off the file first.
pub fn resume_state(path: &Path) -> anyhow::Result<HashSet<(String, String)>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(HashSet::new());
    };
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if keep < bytes.len() {
        tracing::warn!(file = %path.display(), bytes = bytes.len() - keep, "cutting a torn last line");
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep as u64)?;
        f.sync_all()?;
    }
    let text = std::str::from_utf8(&bytes[..keep])
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    let rows: Vec<RationaleRecord> = parse_jsonl(text, path)?;
    Ok(rows.into_iter().map(|r| (r.id, r.label)).collect())
}

/// Append records with one write, then sync, so a crash loses at most this chunk.
pub fn append_records(path: &Path, records: &[RationaleRecord]) -> anyhow::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(to_jsonl(records)?.as_bytes())?;
    f.sync_data()?;
    Ok(())
}

/// The (example, label) requests still to do, gold label first.
fn plan<'a>(
    task: &'a rllr_core::task::TaskSpec,
    examples: &'a [Example],
    k: WrongLabels,
    seed: u64,
    done: &HashSet<(String, String)>,
    summary: &mut Summary,
) -> Vec<RationaleRequest<'a>> {
    let mut todo = Vec::new();
    for ex in examples {
        let mut labels = vec![ex.label.as_str()];
        labels.extend(wrong_labels(task, ex, k, seed));
        for label in labels {
            summary.requested += 1;
            if done.contains(&(ex.id.clone(), label.to_string())) {
                summary.already_done += 1;
            } else {
                todo.push(RationaleRequest {
                    task,
                    example: ex,
                    label,
                });
            }
        }
    }
    todo
}

/// Which labels to rationalise and how much work goes between synced appends.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub wrong_labels: WrongLabels,
    pub seed: u64,
    pub chunk: usize,
}

/// Run `teacher` over `examples`, appending to `output`; returns the summary.
pub fn rationalize(
    teacher: &dyn Teacher,
    task: &rllr_core::task::TaskSpec,
    examples: &[Example],
    output: &Path,
    opts: RunOptions,
    bar: &ProgressBar,
) -> anyhow::Result<Summary> {
    let done = resume_state(output)?;
    let mut summary = Summary::default();
    let (k, seed, chunk) = (opts.wrong_labels, opts.seed, opts.chunk);
    let todo = plan(task, examples, k, seed, &done, &mut summary);
    bar.set_length(todo.len() as u64);
    let source = teacher.source();
    for part in todo.chunks(chunk.max(1)) {
        let mut records = Vec::new();
        for (req, result) in part.iter().zip(teacher.rationalize(part)) {
            match result {
                Ok(text) => {
                    summary.written += 1;
                    summary.total_chars += text.chars().count();
                    summary.total_words += text.split_whitespace().count();
                    let gold = req.label == req.example.label;
                    summary.gold_written += usize::from(gold);
                    records.push(RationaleRecord {
                        id: req.example.id.clone(),
                        task: task.name.clone(),
                        label: req.label.to_string(),
                        gold,
                        text,
                        source: source.clone(),
                    });
                }
                Err(TeacherError::NotInData(_)) => summary.not_in_data += 1,
                Err(e) => {
                    summary.failed += 1;
                    tracing::warn!(id = %req.example.id, label = req.label, error = %e, "rationale failed");
                }
            }
        }
        append_records(output, &records)?;
        bar.inc(part.len() as u64);
    }
    bar.finish_and_clear();
    Ok(summary)
}

fn build_teacher(args: &RationalizeArgs) -> anyhow::Result<Box<dyn Teacher>> {
    Ok(match args.teacher {
        TeacherKind::Dataset => Box::new(DatasetTeacher),
        TeacherKind::Openai => {
            let o = &args.openai;
            Box::new(OpenAiTeacher::new(OpenAiConfig {
                base_url: o.base_url.clone(),
                model: o.openai_model.clone(),
                api_key: o.api_key.clone(),
                concurrency: o.concurrency.max(1),
                max_retries: o.max_retries,
                timeout: std::time::Duration::from_secs(o.timeout_s.max(1)),
                backoff: std::time::Duration::from_millis(500),
                max_tokens: o.openai_max_tokens,
                temperature: 0.0,
                cache: Some(DiskCache::new(&o.cache_dir)),
            }))
        }
        TeacherKind::Local => {
            let l = &args.local;
            let Some(model) = &l.model else {
                bail!("--teacher local needs --model (or RLLR_TRAIN_MODEL)");
            };
            let config = LocalConfig {
                batch_size: l.batch_size,
                max_new_tokens: l.max_new_tokens,
                temperature: l.temperature,
                seed: args.seed,
            };
            let device = parse_device(&l.device)?;
            Box::new(
                LocalTeacher::load(model, &l.template, &device, config)
                    .with_context(|| format!("loading --model {}", model.display()))?,
            )
        }
    })
}

/// The `rationalize` command.
pub fn run(args: &RationalizeArgs) -> anyhow::Result<()> {
    let task = args.task.load()?;
    let mut examples = read_examples(&args.input, &task)?;
    if let Some(n) = args.limit {
        examples.truncate(n);
    }
    let teacher = build_teacher(args)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} rationales [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let summary = rationalize(
        teacher.as_ref(),
        &task,
        &examples,
        &args.output,
        RunOptions {
            wrong_labels: args.wrong_labels,
            seed: args.seed,
            chunk: args.chunk,
        },
        &bar,
    )?;
    println!(
        "{} -> {}: {summary}",
        teacher.source(),
        args.output.display()
    );
    if let Some(stats) = teacher.stats() {
        println!("{stats}");
    }
    if summary.failed > 0 {
        eprintln!(
            "{} requests failed; rerun the same command to retry only those",
            summary.failed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher::tests::{example, sst2};

    /// A teacher that writes "<label> because <text>" and fails on inputs containing "boom".
    struct Echo;
    impl Teacher for Echo {
        fn source(&self) -> String {
            "echo".into()
        }
        fn rationalize(&self, batch: &[RationaleRequest<'_>]) -> Vec<Result<String, TeacherError>> {
            batch
                .iter()
                .map(|r| match &r.example.input {
                    rllr_core::task::TaskInput::Single(t) if t.contains("boom") => {
                        Err(TeacherError::Empty)
                    }
                    _ => Ok(format!("{} because {}", r.label, r.example.id)),
                })
                .collect()
        }
    }

    #[test]
    fn resumes_after_a_torn_write_without_redoing_rows() {
        let task = sst2();
        let exs = vec![
            example("a", "good", "positive"),
            example("b", "boom", "negative"),
            example("c", "bad", "negative"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let bar = ProgressBar::hidden();
        let opts = |chunk| RunOptions {
            wrong_labels: WrongLabels::All,
            seed: 0,
            chunk,
        };
        let s = rationalize(&Echo, &task, &exs[..1], &out, opts(1), &bar).unwrap();
        assert_eq!((s.written, s.gold_written), (2, 1));
        // a kill mid-append leaves a torn line
        let mut f = OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(b"{\"id\":\"c\",\"ta").unwrap();
        let s = rationalize(&Echo, &task, &exs, &out, opts(2), &bar).unwrap();
        assert_eq!(s.requested, 6);
        assert_eq!(s.already_done, 2);
        assert_eq!(s.written, 2);
        assert_eq!(s.failed, 2);
        let rows: Vec<RationaleRecord> = rllr_core::dataset::read_jsonl(&out).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.text.starts_with(&r.label)));
        assert!(format!("{s}").contains("failed 2"));
    }
}
