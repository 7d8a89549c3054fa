//! On-policy preference pairs (`rllr-train pairs on-policy`): the pairs are built from M_sft's own
//! samples instead of teacher rationales, so the reward models learn to rank the kind of text PPO
//! will show them.
//!
//! - **Label-sensitive** (RLLR): for one input, a sample whose parsed label is the gold label ≻ a
//!   sample with a wrong label. An unparseable sample is never chosen; it may be rejected (it is a
//!   wrong answer under the strict parser, D9; `rejected_label` is then `""`) unless
//!   `--unparseable-rejected false`. Parseable wrong samples are used before unparseable ones.
//! - **Rationale-sensitive** (the RLHF baseline, D5) with no label signal: both sides carry the gold
//!   label. The judge: chosen = the example's gold response (human rationale first, else a
//!   teacher's, [`stage::gold_response`]), rejected = a gold-labelled M_sft sample; prompts without
//!   a gold rationale are skipped.
//!
//! Per prompt and kind at most `pairs_per_prompt` pairs (default 2: twice the teacher pairs of a
//! two-label task from the same prompts, without leaning on one prompt): distinct sample texts in
//! sample order, chosen `i mod n_chosen` against rejected `i mod n_rejected`, so no pair repeats and
//! none has chosen == rejected.

use std::path::PathBuf;

use anyhow::bail;
use rllr_core::dataset::{write_jsonl, Example, Pair, PairKind};
use rllr_core::task::TaskSpec;
use serde::Serialize;

use super::sample::{read_prompts, sample_k, temperature_as_written, Sample, SamplerArgs};
use crate::pairs::{check_distinct, PairError};
use crate::stage;

/// How pairs are picked from the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairOptions {
    /// At most this many pairs per prompt and kind.
    pub pairs_per_prompt: usize,
    /// May an unparseable sample be the rejected side of a label pair?
    pub unparseable_rejected: bool,
}

/// What the samples gave (`summary.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OnPolicySummary {
    pub prompts: usize,
    pub k: usize,
    pub temperature: f64,
    pub seed: u64,
    pub samples: usize,
    /// Share of samples with a parseable answer line.
    pub parse_rate: f64,
    /// Share of samples whose parsed label is the gold label.
    pub gold_label_rate: f64,
    pub label_pairs: usize,
    pub rationale_pairs: usize,
    /// Prompts none of whose samples has the gold label (no label pair possible).
    pub prompts_without_gold_sample: usize,
    /// Prompts with no usable wrong sample (no label pair possible).
    pub prompts_without_wrong_sample: usize,
    /// Prompts without a gold rationale in the data (no rationale pair).
    pub prompts_without_gold_rationale: usize,
}

/// The pairs and their summary.
#[derive(Debug, Clone, PartialEq)]
pub struct OnPolicyPairs {
    pub label: Vec<Pair>,
    pub rationale: Vec<Pair>,
    pub summary: OnPolicySummary,
}

/// Distinct sample texts (first occurrence kept, sample order) of the samples `keep` selects.
fn distinct(samples: &[Sample], keep: impl Fn(&Sample) -> bool) -> Vec<(usize, &Sample)> {
    let mut out: Vec<(usize, &Sample)> = Vec::new();
    for (j, s) in samples.iter().enumerate() {
        if keep(s) && !out.iter().any(|(_, o)| o.text == s.text) {
            out.push((j, s));
        }
    }
    out
}

/// Round-robin up to `cap` pairs of distinct (chosen, rejected) indices.
fn pair_up(n_chosen: usize, n_rejected: usize, cap: usize) -> Vec<(usize, usize)> {
    if n_chosen == 0 || n_rejected == 0 {
        return Vec::new();
    }
    (0..cap.min(n_chosen.max(n_rejected)))
        .map(|i| (i % n_chosen, i % n_rejected))
        .collect()
}

/// Label and rationale pairs from `samples[i]` (the samples of `examples[i]`).
pub fn build_pairs(
    task: &TaskSpec,
    examples: &[Example],
    samples: &[Vec<Sample>],
    opts: PairOptions,
) -> Result<OnPolicyPairs, PairError> {
    if examples.len() != samples.len() {
        return Err(PairError::Invalid(format!(
            "{} examples but samples for {}",
            examples.len(),
            samples.len()
        )));
    }
    let mut s = OnPolicySummary {
        prompts: examples.len(),
        ..Default::default()
    };
    let (mut label, mut rationale) = (Vec::new(), Vec::new());
    let (mut parsed, mut gold_n) = (0usize, 0usize);
    for (ex, ss) in examples.iter().zip(samples) {
        s.samples += ss.len();
        parsed += ss.iter().filter(|x| x.label.is_some()).count();
        let gold = distinct(ss, |x| x.is_gold(task, ex));
        gold_n += ss.iter().filter(|x| x.is_gold(task, ex)).count();
        let mut wrong = distinct(ss, |x| x.label.is_some() && !x.is_gold(task, ex));
        if opts.unparseable_rejected {
            wrong.extend(distinct(ss, |x| x.label.is_none()));
        }
        s.prompts_without_gold_sample += usize::from(gold.is_empty());
        s.prompts_without_wrong_sample += usize::from(wrong.is_empty());
        for (c, r) in pair_up(gold.len(), wrong.len(), opts.pairs_per_prompt) {
            let ((jc, chosen), (jr, rejected)) = (gold[c], wrong[r]);
            label.push(Pair {
                id: format!("{}:s{jc}>s{jr}", ex.id),
                task: task.name.clone(),
                kind: PairKind::Label,
                input: ex.input.clone(),
                chosen: chosen.text.clone(),
                rejected: rejected.text.clone(),
                chosen_label: ex.label.clone(),
                rejected_label: rejected.label_name(task).unwrap_or("").to_string(),
            });
        }
        let reference = stage::gold_response(task, ex, true)
            .map_err(|e| PairError::Invalid(format!("example '{}': {e:#}", ex.id)))?;
        let Some(reference) = reference else {
            s.prompts_without_gold_rationale += 1;
            continue;
        };
        let worse: Vec<_> = gold.iter().filter(|(_, x)| x.text != reference).collect();
        for (_, r) in pair_up(1, worse.len(), opts.pairs_per_prompt) {
            let (jr, rejected) = worse[r];
            rationale.push(Pair {
                id: format!("{}:gold>s{jr}", ex.id),
                task: task.name.clone(),
                kind: PairKind::Rationale,
                input: ex.input.clone(),
                chosen: reference.clone(),
                rejected: rejected.text.clone(),
                chosen_label: ex.label.clone(),
                rejected_label: ex.label.clone(),
            });
        }
    }
    check_distinct(&label)?;
    check_distinct(&rationale)?;
    let n = s.samples.max(1) as f64;
    s.parse_rate = parsed as f64 / n;
    s.gold_label_rate = gold_n as f64 / n;
    s.label_pairs = label.len();
    s.rationale_pairs = rationale.len();
    Ok(OnPolicyPairs {
        label,
        rationale,
        summary: s,
    })
}

/// `rllr-train pairs on-policy` arguments.
#[derive(clap::Args, Debug)]
pub struct OnPolicyArgs {
    #[command(flatten)]
    pub task: crate::data::cli::TaskArgs,
    /// Training examples (canonical JSONL): their prompts are sampled, their gold rationales are
    /// the chosen side of the rationale pairs.
    #[arg(long, env = "RLLR_TRAIN_DATA")]
    pub data: PathBuf,
    /// Use the first N examples (0: all), to bound the sampling time.
    #[arg(long, env = "RLLR_TRAIN_LIMIT", default_value_t = 0)]
    pub limit: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// At most this many pairs per prompt and kind (distinct samples, round-robin).
    #[arg(long, env = "RLLR_TRAIN_PAIRS_PER_PROMPT", default_value_t = 2)]
    pub pairs_per_prompt: usize,
    /// Let an unparseable sample be the rejected side of a label pair (it is a wrong answer under
    /// the strict parser); it is never chosen. `false` keeps only parseable wrong answers.
    #[arg(long, env = "RLLR_TRAIN_UNPARSEABLE_REJECTED", default_value_t = true, action = clap::ArgAction::Set)]
    pub unparseable_rejected: bool,
    /// Directory for label.jsonl, rationale.jsonl and summary.json (each written atomically).
    #[arg(long, env = "RLLR_TRAIN_OUT_DIR")]
    pub out_dir: PathBuf,
}

/// Sample, build, write, print the summary.
pub fn run(a: &OnPolicyArgs) -> anyhow::Result<()> {
    let task = a.task.load()?;
    let examples = read_prompts(&a.data, &task, a.limit)?;
    if a.pairs_per_prompt == 0 {
        bail!("--pairs-per-prompt must be >= 1");
    }
    let spec = a.sampler.spec();
    spec.validate()?;
    let policy = a.sampler.load(&task)?;
    let samples = sample_k(&policy, &task, &examples, &spec)?;
    let opts = PairOptions {
        pairs_per_prompt: a.pairs_per_prompt,
        unparseable_rejected: a.unparseable_rejected,
    };
    let mut built = build_pairs(&task, &examples, &samples, opts)?;
    built.summary.k = spec.k;
    built.summary.temperature = temperature_as_written(spec.temperature);
    built.summary.seed = spec.seed;
    std::fs::create_dir_all(&a.out_dir)?;
    write_jsonl(&a.out_dir.join("label.jsonl"), &built.label)?;
    write_jsonl(&a.out_dir.join("rationale.jsonl"), &built.rationale)?;
    let summary = serde_json::to_string_pretty(&built.summary)?;
    rllr_core::fsutil::write_file_atomic(&a.out_dir.join("summary.json"), summary.as_bytes())?;
    let s = &built.summary;
    println!(
        "on-policy pairs: {} prompts × k {} = {} samples, parse rate {:.3}, gold-label rate {:.3}; {} label pairs, {} rationale pairs -> {} ({} prompts without a gold sample, {} without a wrong one, {} without a gold rationale)",
        s.prompts, s.k, s.samples, s.parse_rate, s.gold_label_rate, s.label_pairs,
        s.rationale_pairs, a.out_dir.display(), s.prompts_without_gold_sample,
        s.prompts_without_wrong_sample, s.prompts_without_gold_rationale
    );
    if s.label_pairs == 0 {
        eprintln!("on-policy pairs: no label pair: M_sft never wrote both a right and a wrong answer to one prompt");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::testutil::{toy_examples, toy_policy_dir, toy_task};

    /// A sample answering `label` (None: no answer line) with rationale `why`.
    fn s(why: &str, label: Option<&str>) -> Sample {
        let task = toy_task();
        let text = match label {
            Some(l) => task.response_format().render(why, l),
            None => why.to_string(),
        };
        Sample {
            label: task
                .response_format()
                .parse(&text, &task.label_texts())
                .label,
            text,
            query: vec![],
            response: vec![],
        }
    }

    const OPTS: PairOptions = PairOptions {
        pairs_per_prompt: 2,
        unparseable_rejected: true,
    };

    #[test]
    fn label_pairs_are_capped_per_prompt_and_distinct() {
        let (task, exs) = (toy_task(), toy_examples(1)); // gold: hot
        let ss = vec![vec![
            s("a", Some("hot")),
            s("a", Some("hot")),
            s("b", Some("hot")),
            s("c", Some("hot")),
            s("d", Some("cold")),
        ]];
        let b = build_pairs(&task, &exs, &ss, OPTS).unwrap();
        assert_eq!(b.label.len(), 2);
        assert_eq!(b.label[0].id, "toy-0:s0>s4");
        assert_eq!(b.label[1].id, "toy-0:s2>s4", "duplicate text s1 skipped");
        assert!(b.label.iter().all(|p| p.chosen != p.rejected));
        assert!(b.label.iter().all(|p| p.rejected_label == "cold"));
        let one = PairOptions {
            pairs_per_prompt: 1,
            ..OPTS
        };
        assert_eq!(build_pairs(&task, &exs, &ss, one).unwrap().label.len(), 1);
    }

    #[test]
    fn unparseable_is_never_chosen_and_rejected_only_when_allowed() {
        let (task, exs) = (toy_task(), toy_examples(2)); // gold: hot, cold
        let ss = vec![
            vec![s("x", None), s("y", Some("hot"))],
            vec![s("z", None), s("w", Some("hot"))], // gold cold: no right answer
        ];
        let b = build_pairs(&task, &exs, &ss, OPTS).unwrap();
        assert_eq!(b.label.len(), 1);
        assert_eq!(b.label[0].chosen_label, "hot");
        assert_eq!(b.label[0].rejected, "x");
        assert_eq!(b.label[0].rejected_label, "", "no parseable label");
        assert_eq!(b.summary.prompts_without_gold_sample, 1);
        let strict = PairOptions {
            unparseable_rejected: false,
            ..OPTS
        };
        let b = build_pairs(&task, &exs, &ss, strict).unwrap();
        assert!(b.label.is_empty());
        assert_eq!(b.summary.prompts_without_wrong_sample, 1);
    }

    #[test]
    fn rationale_pairs_carry_the_gold_label_on_both_sides() {
        let (task, mut exs) = (toy_task(), toy_examples(3));
        exs[2].rationales.clear();
        let ss = vec![
            vec![
                s("m1", Some("hot")),
                s("m2", Some("hot")),
                s("m3", Some("cold")),
            ],
            vec![s("n1", Some("hot")), s("n2", Some("cold"))],
            vec![s("o1", Some("hot"))],
        ];
        let b = build_pairs(&task, &exs, &ss, OPTS).unwrap();
        assert_eq!(b.rationale.len(), 3, "2 + 1 + none (no gold rationale)");
        assert_eq!(b.summary.prompts_without_gold_rationale, 1);
        for p in &b.rationale {
            let parse = |t: &str| task.response_format().parse(t, &task.label_texts()).label;
            let ex = exs.iter().find(|e| p.id.starts_with(&e.id)).unwrap();
            let gold = task.label_index(&ex.label).unwrap();
            assert_eq!(
                (parse(&p.chosen), parse(&p.rejected)),
                (Some(gold), Some(gold))
            );
            assert_eq!(p.chosen_label, p.rejected_label);
            assert!(
                p.chosen.starts_with("thing"),
                "the data's gold rationale: {}",
                p.chosen
            );
        }
    }

    #[test]
    fn summary_counts_rates() {
        let (task, exs) = (toy_task(), toy_examples(1));
        let ss = vec![vec![
            s("a", Some("hot")),
            s("b", None),
            s("c", Some("cold")),
            s("d", None),
        ]];
        let b = build_pairs(&task, &exs, &ss, OPTS).unwrap().summary;
        assert_eq!((b.prompts, b.samples), (1, 4));
        assert!((b.parse_rate - 0.5).abs() < 1e-12);
        assert!((b.gold_label_rate - 0.25).abs() < 1e-12);
        assert_eq!(b.label_pairs, 2);
    }

    #[test]
    fn same_seed_writes_the_same_files_on_a_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        toy_policy_dir(&model);
        let tasks = dir.path().join("tasks");
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::write(
            tasks.join("toy.json"),
            serde_json::to_string(&toy_task()).unwrap(),
        )
        .unwrap();
        let data = dir.path().join("train.jsonl");
        write_jsonl(&data, &toy_examples(6)).unwrap();
        let args = |out: &str, seed: u64| OnPolicyArgs {
            task: crate::data::cli::TaskArgs {
                task: "toy".into(),
                tasks_dir: tasks.clone(),
            },
            data: data.clone(),
            limit: 0,
            sampler: SamplerArgs {
                model: model.clone(),
                adapter: None,
                k: 6,
                temperature: 1.0,
                top_k: 50,
                max_new_tokens: 5,
                batch_size: 4,
                seed,
                template: "auto".into(),
                device: "cpu".into(),
                dtype: "f32".into(),
            },
            pairs_per_prompt: 2,
            unparseable_rejected: true,
            out_dir: dir.path().join(out),
        };
        run(&args("a", 1)).unwrap();
        run(&args("b", 1)).unwrap();
        run(&args("c", 2)).unwrap();
        let read = |d: &str, f: &str| std::fs::read(dir.path().join(d).join(f)).unwrap();
        for f in ["label.jsonl", "rationale.jsonl", "summary.json"] {
            assert_eq!(read("a", f), read("b", f), "{f}");
        }
        let label: Vec<Pair> =
            rllr_core::dataset::read_jsonl(&dir.path().join("a/label.jsonl")).unwrap();
        assert!(!label.is_empty(), "the toy model answers both ways");
        assert!(label.len() <= 12);
        assert_ne!(
            read("a", "label.jsonl"),
            read("c", "label.jsonl"),
            "another seed, other samples"
        );
        let task = toy_task();
        for p in &label {
            let parsed = task.response_format().parse(&p.chosen, &task.label_texts());
            assert_eq!(
                parsed.label.map(|i| task.labels[i].name.clone()),
                Some(p.chosen_label.clone())
            );
            assert_ne!(p.chosen, p.rejected);
        }
    }
}
