//! `rllr merge`: join the outputs of `rllr batch --shard I/N` into one and check completeness;
//! the work is the library's [`rllr_client::merge`], this is its command line.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use rllr_client::batch::summary_path;
use rllr_client::input::Format;
use rllr_client::merge::{self, MergeConfig};

/// Join sharded batch outputs (one per pod of an Indexed Job) into one output in input order,
/// failing when an id of the input is missing, duplicated or unknown, so a lost pod is noticed.
#[derive(Args, Debug)]
pub struct Merge {
    /// The input the shards ran over (read and validated as `rllr batch` does): the ids to expect.
    #[arg(long, env = "RLLR_CLIENT_BATCH_INPUT")]
    input: PathBuf,
    /// Format of --input; by default from its extension (.csv, else JSONL).
    #[arg(long, env = "RLLR_CLIENT_INPUT_FORMAT", value_enum)]
    input_format: Option<Format>,
    /// Merged JSONL, written atomically with its `<out>.summary.json` (accuracy recomputed).
    #[arg(long, env = "RLLR_CLIENT_BATCH_OUTPUT")]
    out: PathBuf,
    /// Write the merge even if ids are missing, duplicated or unknown (exit status 0; the
    /// summary says `complete: false`), e.g. to look at a partial result.
    #[arg(long, env = "RLLR_CLIENT_ALLOW_INCOMPLETE")]
    allow_incomplete: bool,
    /// Shard outputs (JSONL files, or directories standing for their *.jsonl files).
    #[arg(required = true)]
    shards: Vec<PathBuf>,
}

impl Merge {
    pub fn run(self) -> Result<i32> {
        let cfg = MergeConfig {
            shards: merge::expand_shards(&self.shards)?,
            input: self.input,
            format: self.input_format,
            output: self.out,
            allow_incomplete: self.allow_incomplete,
        };
        let s = merge::merge(&cfg)?;
        if !s.complete {
            eprintln!("warning: incomplete merge: {}", s.problems());
        }
        eprintln!(
            "{} of {} rows merged from {} shard output(s) into {}; summary: {}",
            s.merged,
            s.expected,
            s.shards.len(),
            s.output,
            summary_path(&cfg.output).display()
        );
        if let Some(acc) = &s.accuracy {
            eprint!("{}", acc.render());
        }
        Ok(0)
    }
}
