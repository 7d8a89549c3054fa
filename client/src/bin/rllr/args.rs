//! The flag groups several commands share: where inputs come from, which reward models score,
//! how the policy generates.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use rllr_client::input::{self, Format, Record};
use rllr_client::v1;

/// Where the inputs of score/classify come from.
#[derive(Args, Debug)]
pub struct Inputs {
    /// The text to send (repeat the flag for several); for more, use --file.
    #[arg(long, env = "RLLR_CLIENT_TEXT")]
    pub text: Vec<String>,
    /// The second text of a pair task (e.g. the hypothesis), applied to every --text.
    #[arg(long, env = "RLLR_CLIENT_TEXT_PAIR")]
    pub text_pair: Option<String>,
    /// Read records from this JSONL or CSV file instead ('-' = stdin), so piped data needs no
    /// temporary file; fields id, text|input, text_pair, label, rationale.
    #[arg(long, env = "RLLR_CLIENT_FILE")]
    pub file: Option<PathBuf>,
    /// Format of --file; by default from its extension (.csv, else JSONL).
    #[arg(long, env = "RLLR_CLIENT_INPUT_FORMAT", value_enum)]
    pub input_format: Option<Format>,
}

impl Inputs {
    pub fn records(&self) -> Result<Vec<Record>> {
        if let Some(p) = &self.file {
            let format = self.input_format.unwrap_or_else(|| Format::detect(p));
            let parsed = if p.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::stdin().read_to_end(&mut s)?;
                input::parse(s.as_slice(), format)?
            } else {
                input::parse(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                    format,
                )?
            };
            if let Some(b) = parsed.bad.first() {
                bail!("{}: {b} ({} bad record(s))", p.display(), parsed.bad.len());
            }
            if parsed.records.is_empty() {
                bail!("{}: no records", p.display());
            }
            return Ok(parsed.records);
        }
        if self.text.is_empty() {
            bail!("nothing to send: give --text or --file");
        }
        Ok(self
            .text
            .iter()
            .enumerate()
            .map(|(i, t)| Record {
                line: i + 1,
                id: (i + 1).to_string(),
                text: t.clone(),
                text_pair: self.text_pair.clone(),
                label: None,
                rationale: None,
            })
            .collect())
    }
}

/// The reward models of score and compare.
#[derive(Args, Debug)]
pub struct RewardModels {
    /// Label-sensitive reward model; empty = the server's default reward model.
    #[arg(long, env = "RLLR_CLIENT_LABEL_MODEL", default_value = "")]
    pub label_model: String,
    /// Rationale reward model; when set the mixed reward is min(r_label, lambda) + r_rationale.
    #[arg(long, env = "RLLR_CLIENT_RATIONALE_MODEL", default_value = "")]
    pub rationale_model: String,
    /// Cap on the label reward in the mix (default: the server's).
    #[arg(long, env = "RLLR_CLIENT_LAMBDA")]
    pub lambda: Option<f32>,
}

/// Generation settings of classify and batch.
#[derive(Args, Debug)]
pub struct Generation {
    /// Policy model; empty = the server's default policy model.
    #[arg(long, env = "RLLR_CLIENT_MODEL", default_value = "")]
    pub model: String,
    /// Limit on generated tokens (rationale + answer); bounds latency and cost per input.
    #[arg(long, env = "RLLR_CLIENT_MAX_NEW_TOKENS")]
    pub max_new_tokens: Option<u32>,
    /// Sampling temperature; 0 = greedy, which makes results reproducible (and a resumed batch
    /// job equal to an uninterrupted one).
    #[arg(long, env = "RLLR_CLIENT_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f32,
    /// RNG seed for sampling at temperature > 0, for reproducible samples.
    #[arg(long, env = "RLLR_CLIENT_SEED", default_value_t = 0)]
    pub seed: u64,
    /// System text for the chat template (default: the template's).
    #[arg(long, env = "RLLR_CLIENT_SYSTEM")]
    pub system: Option<String>,
}

impl Generation {
    pub fn params(&self) -> v1::GenerationParams {
        v1::GenerationParams {
            temperature: Some(self.temperature),
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            ..Default::default()
        }
    }
}

/// The input message of one record.
pub fn input_of(r: &Record) -> v1::Input {
    v1::Input {
        text: r.text.clone(),
        text_pair: r.text_pair.clone(),
    }
}
