//! k sampled responses per prompt from a policy (M_sft, optionally with an adapter on top), drawn
//! with PPO's rollout sampler ([`crate::ppo::rollout::sample`]: T 1.0, top-k 50 by default, EOS and
//! the template's stop strings) and parsed with the task's strict `ResponseFormat::parse` (D9).
//! Sample `j` of example `i` is seeded by (seed, i, j), so the same seed gives the same samples
//! whatever the batch size or the other examples.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rllr_core::checkpoint::load_adapter;
use rllr_core::dataset::{read_examples, Example};
use rllr_core::task::TaskSpec;
use rllr_core::{ForwardCtx, SamplingParams, StopCriteria};

use crate::ppo::rollout::{self, Rollout, RolloutSpec};
use crate::stage::{self, Loaded};
use crate::train::train_loop::{mix_seed, progress_bar};

/// The first `limit` examples of `data` (0: all), whose prompts are sampled; none is an error.
pub fn read_prompts(
    data: &std::path::Path,
    task: &TaskSpec,
    limit: usize,
) -> anyhow::Result<Vec<Example>> {
    let mut examples = read_examples(data, task)?;
    if limit > 0 {
        examples.truncate(limit);
    }
    if examples.is_empty() {
        bail!("{}: no examples", data.display());
    }
    Ok(examples)
}

/// Adapter name of the optional `--adapter` the samples are drawn through.
pub const SAMPLER: &str = "sampler";

/// Which policy samples, and how.
#[derive(clap::Args, Debug, Clone)]
pub struct SamplerArgs {
    /// The policy whose own samples are wanted: M_sft (`<sft run>/model`), the model the reward
    /// models are (or will be) trained on.
    #[arg(long, env = "RLLR_TRAIN_MODEL")]
    pub model: PathBuf,
    /// PEFT adapter applied on top of --model for sampling (e.g. a PPO policy); none: --model itself.
    #[arg(long, env = "RLLR_TRAIN_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// Samples per prompt: enough that a prompt usually gets both a right and a wrong answer.
    #[arg(long, env = "RLLR_TRAIN_K", default_value_t = 8)]
    pub k: usize,
    /// Sampling temperature; 1.0 as PPO's rollouts (docs/method.md §5.4.1), so the samples follow the
    /// policy's own distribution.
    #[arg(long, env = "RLLR_TRAIN_TEMPERATURE", default_value_t = 1.0)]
    pub temperature: f32,
    /// Top-k of the sampler: 50 as PPO's rollouts (D13); 0 turns it off.
    #[arg(long, env = "RLLR_TRAIN_TOP_K", default_value_t = 50)]
    pub top_k: usize,
    /// Response length cap; a sample cut here usually has no answer line (unparseable).
    #[arg(long, env = "RLLR_TRAIN_MAX_NEW_TOKENS", default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Prompts per generate call (k sequences each): larger is faster until memory runs out; the
    /// samples do not depend on it.
    #[arg(long, env = "RLLR_TRAIN_BATCH_SIZE", default_value_t = 4)]
    pub batch_size: usize,
    /// Seed: sample j of example i is seeded by (seed, i, j); same seed, byte-identical outputs.
    #[arg(long, env = "RLLR_TRAIN_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Chat template (auto: from the checkpoint); it must be the one the policy was trained with.
    #[arg(long, env = "RLLR_TRAIN_TEMPLATE", default_value = "auto")]
    pub template: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "RLLR_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Compute dtype (f32 on CPU).
    #[arg(long, env = "RLLR_TRAIN_DTYPE", default_value = "f32")]
    pub dtype: String,
}

/// How samples are drawn: everything but the model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampleSpec {
    pub k: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl SampleSpec {
    /// Refuse settings that cannot sample.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.k == 0 {
            bail!("k must be >= 1");
        }
        if self.max_new_tokens == 0 {
            bail!("max_new_tokens must be >= 1");
        }
        self.sampling().validate().context("sampling settings")?;
        Ok(())
    }

    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: (self.top_k > 0).then_some(self.top_k),
            top_p: Some(1.0),
            seed: 0,
        }
    }
}

/// A loaded policy and the adapter its samples are drawn through (`None`: the base itself).
pub struct Policy {
    pub loaded: Loaded,
    pub adapter: Option<&'static str>,
}

impl Policy {
    /// The forward context of the policy (eval mode).
    pub fn ctx(&self) -> ForwardCtx<'static> {
        ForwardCtx {
            adapter: self.adapter,
            dropout_seed: None,
        }
    }
}

impl SamplerArgs {
    pub fn spec(&self) -> SampleSpec {
        SampleSpec {
            k: self.k,
            temperature: self.temperature,
            top_k: self.top_k,
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            seed: self.seed,
        }
    }

    /// Load --model (checked against `task`) and --adapter.
    pub fn load(&self, task: &TaskSpec) -> anyhow::Result<Policy> {
        let ckpt = stage::open_checkpoint(&self.model, "--model", Some(task))?;
        let mut loaded = stage::load(ckpt, &self.template, &self.device, &self.dtype)?;
        let adapter = match &self.adapter {
            Some(dir) => {
                load_adapter(&mut loaded.model, dir, SAMPLER, false)
                    .with_context(|| format!("loading --adapter {}", dir.display()))?;
                Some(SAMPLER)
            }
            None => None,
        };
        Ok(Policy { loaded, adapter })
    }
}

/// One sampled response, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The response text: the template's stop strings and a final EOS token removed, trimmed.
    pub text: String,
    /// Parsed label, an index into the task's labels; `None`: unparseable.
    pub label: Option<usize>,
    /// Prompt ids and generated ids (the stopping EOS kept), as PPO scores a rollout.
    pub query: Vec<u32>,
    pub response: Vec<u32>,
}

impl Sample {
    /// Is the parsed label the example's gold label?
    pub fn is_gold(&self, task: &TaskSpec, ex: &Example) -> bool {
        self.label
            .is_some_and(|i| task.labels.get(i).is_some_and(|l| l.name == ex.label))
    }

    /// The parsed label's canonical name.
    pub fn label_name<'t>(&self, task: &'t TaskSpec) -> Option<&'t str> {
        self.label
            .and_then(|i| task.labels.get(i))
            .map(|l| l.name.as_str())
    }

    /// As a rollout, for the reward models' scorer.
    pub fn rollout(&self, item: usize) -> Rollout {
        Rollout {
            item,
            query: self.query.clone(),
            response: self.response.clone(),
            text: self.text.clone(),
        }
    }
}

/// A temperature as written (`0.7`, not the f32's `0.699999988…`), for reports.
pub fn temperature_as_written(t: f32) -> f64 {
    t.to_string().parse().unwrap_or(f64::from(t))
}

/// The seed of sample `j` of example `i`.
pub fn sample_seed(seed: u64, i: usize, j: usize) -> u64 {
    mix_seed(&[seed, i as u64, j as u64, 0x0b5])
}

/// `spec.k` samples for each example, outer index = example index, inner = sample index.
pub fn sample_k(
    policy: &Policy,
    task: &TaskSpec,
    examples: &[Example],
    spec: &SampleSpec,
) -> anyhow::Result<Vec<Vec<Sample>>> {
    spec.validate()?;
    let l = &policy.loaded;
    let rs = RolloutSpec {
        adapter: policy.adapter,
        sampling: spec.sampling(),
        stop: StopCriteria {
            eos_ids: l.eos.clone(),
            stop_strings: l.template.stop_strings(),
            max_new_tokens: spec.max_new_tokens,
        },
        pad: l.pad,
    };
    let fmt = task.response_format();
    let labels = task.label_texts();
    let per_call = spec.batch_size.max(1);
    let bar = progress_bar(&format!("sampling k={}", spec.k), examples.len(), 0);
    let mut out = Vec::with_capacity(examples.len());
    for (c, chunk) in examples.chunks(per_call).enumerate() {
        let (mut prompts, mut seeds) = (Vec::new(), Vec::new());
        for (o, ex) in chunk.iter().enumerate() {
            let i = c * per_call + o;
            let text = stage::prompt_text(task, &l.template, &ex.input, None)?;
            let ids = stage::encode(&l.tokenizer, &text)?;
            for j in 0..spec.k {
                prompts.push((i, ids.clone()));
                seeds.push(sample_seed(spec.seed, i, j));
            }
        }
        let rolls = rollout::sample(&l.model, Some(&l.tokenizer), &prompts, &seeds, &rs)?;
        for per in rolls.chunks(spec.k) {
            out.push(
                per.iter()
                    .map(|r| {
                        let text = clean_text(l, &r.text);
                        Sample {
                            label: fmt.parse(&text, &labels).label,
                            text,
                            query: r.query.clone(),
                            response: r.response.clone(),
                        }
                    })
                    .collect(),
            );
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The answer as `eval policy` reads it: stop strings removed, and the text of a final EOS token
/// (special tokens are kept by the decoder), trimmed.
fn clean_text(l: &Loaded, text: &str) -> String {
    let mut t = l
        .template
        .stop_strings()
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), ""));
    for id in &l.eos {
        if let Some(tok) = l.tokenizer.id_to_token(*id) {
            if let Some(s) = t.trim_end().strip_suffix(tok.as_str()) {
                t = s.to_string();
            }
        }
    }
    t.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::testutil::{toy_examples, toy_policy_dir, toy_task};

    fn spec(seed: u64, batch_size: usize) -> SampleSpec {
        SampleSpec {
            k: 4,
            temperature: 1.0,
            top_k: 50,
            max_new_tokens: 6,
            batch_size,
            seed,
        }
    }

    fn policy(dir: &std::path::Path) -> Policy {
        SamplerArgs {
            model: dir.to_path_buf(),
            adapter: None,
            k: 4,
            temperature: 1.0,
            top_k: 50,
            max_new_tokens: 6,
            batch_size: 2,
            seed: 0,
            template: "auto".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
        }
        .load(&toy_task())
        .unwrap()
    }

    #[test]
    fn k_samples_per_prompt_seeded_independently_of_batching() {
        let dir = tempfile::tempdir().unwrap();
        toy_policy_dir(dir.path());
        let p = policy(dir.path());
        let (task, exs) = (toy_task(), toy_examples(5));
        let a = sample_k(&p, &task, &exs, &spec(3, 2)).unwrap();
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|s| s.len() == 4));
        assert_eq!(a, sample_k(&p, &task, &exs, &spec(3, 2)).unwrap());
        let texts = |v: &[Vec<Sample>]| -> Vec<String> {
            v.iter().flatten().map(|s| s.text.clone()).collect()
        };
        assert_eq!(
            texts(&a),
            texts(&sample_k(&p, &task, &exs, &spec(3, 5)).unwrap()),
            "batching does not change the samples"
        );
        assert_ne!(
            texts(&a),
            texts(&sample_k(&p, &task, &exs, &spec(4, 2)).unwrap())
        );
        let parsed = a.iter().flatten().filter(|s| s.label.is_some()).count();
        assert!(parsed > 0, "the toy vocabulary writes answer lines");
        for s in a.iter().flatten() {
            let again = task.response_format().parse(&s.text, &task.label_texts());
            assert_eq!(again.label, s.label);
            assert!(!s.text.contains("<eos>"), "{}", s.text);
        }
    }
}
