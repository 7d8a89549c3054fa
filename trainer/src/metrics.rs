//! Metrics of a policy and of a reward model (docs/method.md §7), shared by every stage that
//! evaluates: the `eval` command, the SFT / reward / PPO dev evaluations and best-of-N.
//!
//! A policy answers a task split with greedy generations; each answer is parsed strictly (D9:
//! unparseable counts as wrong) into accuracy, per-label precision/recall, a confusion matrix, the
//! unparseable rate and the mean rationale length. A reward model scores both sides of each pair
//! at the last token: pairwise accuracy (strict `r_c > r_r`), mean margin and reward statistics.

use rllr_core::dataset::{Example, Pair};
use rllr_core::task::TaskSpec;
use rllr_core::template::ChatTemplate;
use rllr_core::{
    generate, Batch, ForwardCtx, GenerationRequest, Llama, PaddingSide, SamplingParams,
    StopCriteria,
};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::stage;

/// How to ask a policy: everything but the model.
#[derive(Clone, Copy)]
pub struct PolicyEvalSpec<'a> {
    pub task: &'a TaskSpec,
    pub template: &'a ChatTemplate,
    pub tokenizer: &'a Tokenizer,
    pub eos: &'a [u32],
    pub pad: u32,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Extra text after the query (e.g. the answer-format instruction for a zero-shot base).
    pub hint: Option<&'a str>,
}

impl<'a> PolicyEvalSpec<'a> {
    /// Ask `loaded`'s model (its template, tokenizer, EOS and pad) with no hint.
    pub fn of(
        task: &'a TaskSpec,
        loaded: &'a stage::Loaded,
        max_new_tokens: usize,
        batch_size: usize,
    ) -> Self {
        PolicyEvalSpec {
            task,
            template: &loaded.template,
            tokenizer: &loaded.tokenizer,
            eos: &loaded.eos,
            pad: loaded.pad,
            max_new_tokens,
            batch_size,
            hint: None,
        }
    }
}

/// Precision and recall of one label.
#[derive(Debug, Clone, Serialize)]
pub struct LabelMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub support: usize,
    pub predicted: usize,
}

/// One example's answer, as `eval policy --predictions` writes it (one JSONL row per example, in
/// input order): what paired comparisons between two policies are computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub gold: String,
    /// The parsed label's name; `None` when the answer could not be parsed.
    pub pred: Option<String>,
    pub correct: bool,
    /// The generated answer (stop strings removed, trimmed).
    pub text: String,
}

/// A policy's scores on a split.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub n: usize,
    pub accuracy: f64,
    pub unparseable_rate: f64,
    /// Share of the split's most frequent gold label: the accuracy of always answering it.
    pub majority_rate: f64,
    /// Mean rationale length in whitespace-separated words.
    pub mean_rationale_words: f64,
    pub per_label: Vec<LabelMetrics>,
    /// `confusion[gold][predicted]`; the last column counts unparseable answers.
    pub confusion: Vec<Vec<usize>>,
    pub wall_s: f64,
    /// First few (gold, generated text) pairs, to read.
    pub samples: Vec<(String, String)>,
    /// Every example's answer, in input order (not part of the JSON report: `--predictions`).
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// Metrics from gold label indices and parsed predictions (`None` = unparseable).
pub fn policy_metrics(
    labels: &[String],
    gold: &[usize],
    pred: &[Option<usize>],
    rationale_words: &[usize],
) -> PolicyReport {
    let k = labels.len();
    let mut confusion = vec![vec![0usize; k + 1]; k];
    for (g, p) in gold.iter().zip(pred) {
        confusion[*g][p.unwrap_or(k)] += 1;
    }
    let n = gold.len();
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let unparseable: usize = confusion.iter().map(|r| r[k]).sum();
    let majority = confusion
        .iter()
        .map(|r| r.iter().sum::<usize>())
        .max()
        .unwrap_or(0);
    let per_label = (0..k)
        .map(|i| {
            let support: usize = confusion[i].iter().sum();
            let predicted: usize = confusion.iter().map(|r| r[i]).sum();
            LabelMetrics {
                label: labels[i].clone(),
                precision: ratio(confusion[i][i], predicted),
                recall: ratio(confusion[i][i], support),
                support,
                predicted,
            }
        })
        .collect();
    PolicyReport {
        n,
        accuracy: ratio(correct, n),
        unparseable_rate: ratio(unparseable, n),
        majority_rate: ratio(majority, n),
        mean_rationale_words: ratio(rationale_words.iter().sum(), rationale_words.len()),
        per_label,
        confusion,
        wall_s: 0.0,
        samples: Vec::new(),
        predictions: Vec::new(),
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Greedy answers of `model` (through `ctx`) to `examples`, scored.
pub fn evaluate_policy(
    model: &Llama,
    ctx: &ForwardCtx,
    examples: &[Example],
    spec: &PolicyEvalSpec,
) -> anyhow::Result<PolicyReport> {
    let t0 = std::time::Instant::now();
    let task = spec.task;
    let fmt = task.response_format();
    let label_texts = task.label_texts();
    let stop = StopCriteria {
        eos_ids: spec.eos.to_vec(),
        stop_strings: spec.template.stop_strings(),
        max_new_tokens: spec.max_new_tokens,
    };
    let (mut gold, mut pred, mut words, mut samples, mut texts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for chunk in examples.chunks(spec.batch_size.max(1)) {
        let requests = chunk
            .iter()
            .map(|ex| {
                let text = stage::prompt_text(task, spec.template, &ex.input, spec.hint)?;
                Ok(GenerationRequest {
                    prompt: stage::encode(spec.tokenizer, &text)?,
                    sampling: SamplingParams::greedy(),
                    stop: stop.clone(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let out = generate(model, Some(spec.tokenizer), &requests, ctx, spec.pad)?;
        for (ex, g) in chunk.iter().zip(out) {
            let text = spec
                .template
                .stop_strings()
                .iter()
                .fold(g.text.unwrap_or_default(), |t, s| t.replace(s.as_str(), ""));
            let parsed = fmt.parse(&text, &label_texts);
            gold.push(task.label_index(&ex.label)?);
            pred.push(parsed.label);
            words.push(parsed.rationale.split_whitespace().count());
            if samples.len() < 5 {
                samples.push((ex.label.clone(), text.trim().to_string()));
            }
            texts.push(text.trim().to_string());
        }
    }
    let names: Vec<String> = task.labels.iter().map(|l| l.name.clone()).collect();
    let mut r = policy_metrics(&names, &gold, &pred, &words);
    r.wall_s = t0.elapsed().as_secs_f64();
    r.samples = samples;
    r.predictions = predictions(&names, examples, &gold, &pred, texts);
    Ok(r)
}

/// Per-example rows from gold label indices, parsed predictions and the generated texts.
pub fn predictions(
    labels: &[String],
    examples: &[Example],
    gold: &[usize],
    pred: &[Option<usize>],
    texts: Vec<String>,
) -> Vec<Prediction> {
    examples
        .iter()
        .zip(gold)
        .zip(pred)
        .zip(texts)
        .map(|(((ex, &g), &p), text)| Prediction {
            id: ex.id.clone(),
            gold: labels[g].clone(),
            pred: p.map(|i| labels[i].clone()),
            correct: p == Some(g),
            text,
        })
        .collect()
}

/// JSONL, one row per prediction.
pub fn predictions_jsonl(rows: &[Prediction]) -> anyhow::Result<String> {
    let mut out = String::new();
    for r in rows {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}

/// A tokenised pair: full sequences (prompt + response + EOS) for both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct PairItem {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// A reward model's scores on pairs.
#[derive(Debug, Clone, Serialize)]
pub struct PairReport {
    pub n: usize,
    pub accuracy: f64,
    pub margin: f64,
    pub chosen_mean: f64,
    pub rejected_mean: f64,
    pub reward_mean: f64,
    pub reward_std: f64,
}

/// Pairwise metrics from last-token rewards.
pub fn pair_metrics(chosen: &[f32], rejected: &[f32]) -> PairReport {
    let n = chosen.len();
    let mean = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len().max(1) as f64;
    let wins = chosen.iter().zip(rejected).filter(|(c, r)| c > r).count();
    let all: Vec<f32> = chosen.iter().chain(rejected).copied().collect();
    let m = mean(&all);
    let var =
        all.iter().map(|x| (f64::from(*x) - m).powi(2)).sum::<f64>() / all.len().max(1) as f64;
    PairReport {
        n,
        accuracy: ratio(wins, n),
        margin: mean(chosen) - mean(rejected),
        chosen_mean: mean(chosen),
        rejected_mean: mean(rejected),
        reward_mean: m,
        reward_std: var.sqrt(),
    }
}

/// Last-token rewards of head `head` for both sides of `pairs` (eval mode).
pub fn score_pairs(
    model: &Llama,
    ctx: &ForwardCtx,
    head: &str,
    pairs: &[PairItem],
    pad: u32,
    batch_size: usize,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let (mut c, mut r) = (Vec::new(), Vec::new());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let mut seqs: Vec<Vec<u32>> = chunk.iter().map(|p| p.chosen.clone()).collect();
        seqs.extend(chunk.iter().map(|p| p.rejected.clone()));
        let batch = Batch::new(&seqs, pad, PaddingSide::Right, model.device())?;
        let h = model.hidden_states(&batch, ctx)?;
        let s = model.score(&h, &batch, head)?.to_vec1::<f32>()?;
        c.extend_from_slice(&s[..chunk.len()]);
        r.extend_from_slice(&s[chunk.len()..]);
    }
    Ok((c, r))
}

/// Tokenise pairs: prompt from the pair's input, each response + template end + EOS, both cut
/// with the proportion of the longer response (docs/method.md §2.3).
pub fn encode_pairs(
    loaded: &stage::Loaded,
    task: &TaskSpec,
    pairs: &[Pair],
    cutoff: usize,
) -> anyhow::Result<Vec<PairItem>> {
    pairs
        .iter()
        .map(|p| {
            let prompt = stage::encode(
                &loaded.tokenizer,
                &stage::prompt_text(task, &loaded.template, &p.input, None)?,
            )?;
            let c =
                stage::response_ids(&loaded.tokenizer, &loaded.template, &loaded.eos, &p.chosen)?;
            let r = stage::response_ids(
                &loaded.tokenizer,
                &loaded.template,
                &loaded.eos,
                &p.rejected,
            )?;
            let (s, t) = stage::proportional_cut(prompt.len(), c.len().max(r.len()), cutoff);
            let join = |resp: &[u32]| {
                let mut v = prompt[..s].to_vec();
                v.extend_from_slice(&resp[..t.min(resp.len())]);
                v.truncate(cutoff);
                v
            };
            Ok(PairItem {
                chosen: join(&c),
                rejected: join(&r),
            })
        })
        .collect()
}

/// The report as a readable table.
pub fn print_policy(task: &TaskSpec, r: &PolicyReport) {
    println!(
        "n {}  accuracy {:.4}  unparseable {:.4}  mean rationale {:.1} words  ({:.1}s)",
        r.n, r.accuracy, r.unparseable_rate, r.mean_rationale_words, r.wall_s
    );
    println!(
        "{:<16} {:>9} {:>9} {:>8} {:>9}",
        "label", "precision", "recall", "support", "predicted"
    );
    for l in &r.per_label {
        println!(
            "{:<16} {:>9.4} {:>9.4} {:>8} {:>9}",
            l.label, l.precision, l.recall, l.support, l.predicted
        );
    }
    let mut head = format!("{:<16}", "gold \\ pred");
    for l in &task.labels {
        head.push_str(&format!(" {:>12}", l.name));
    }
    head.push_str(&format!(" {:>12}", "unparseable"));
    println!("{head}");
    for (i, row) in r.confusion.iter().enumerate() {
        let mut line = format!("{:<16}", task.labels[i].name);
        for v in row {
            line.push_str(&format!(" {v:>12}"));
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_metrics_count_unparseable_as_wrong() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let gold = [0, 0, 1, 1, 1];
        let pred = [Some(0), None, Some(1), Some(0), Some(1)];
        let r = policy_metrics(&labels, &gold, &pred, &[2, 4, 6, 0, 3]);
        assert_eq!(r.confusion, vec![vec![1, 0, 1], vec![1, 2, 0]]);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        assert!((r.unparseable_rate - 0.2).abs() < 1e-12);
        assert!((r.per_label[0].precision - 0.5).abs() < 1e-12);
        assert!((r.per_label[0].recall - 0.5).abs() < 1e-12);
        assert!((r.per_label[1].recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.mean_rationale_words - 3.0).abs() < 1e-12);
    }

    #[test]
    fn majority_rate_is_the_most_frequent_gold_share() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // gold counts 1, 3, 1: whatever was predicted, the majority rate is 3/5
        let r = policy_metrics(
            &labels,
            &[0, 1, 1, 1, 2],
            &[Some(0), Some(0), None, Some(2), Some(2)],
            &[0; 5],
        );
        assert!((r.majority_rate - 0.6).abs() < 1e-12);
    }

    #[test]
    fn predictions_are_one_row_per_example_in_input_order() {
        let labels = vec!["yes".to_string(), "no".to_string()];
        let ex = |id: &str| -> Example {
            serde_json::from_value(serde_json::json!({
                "id": id, "task": "t", "input": "x", "label": "yes"
            }))
            .unwrap()
        };
        let rows = predictions(
            &labels,
            &[ex("e2"), ex("e1"), ex("e3")],
            &[0, 1, 0],
            &[Some(0), Some(0), None],
            vec!["A".into(), "B".into(), "C".into()],
        );
        let text = predictions_jsonl(&rows).unwrap();
        let back: Vec<Prediction> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, rows);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"id": "e2", "gold": "yes", "pred": "yes", "correct": true, "text": "A"})
        );
        assert_eq!((rows[1].id.as_str(), rows[1].correct), ("e1", false));
        assert_eq!((rows[2].pred.as_deref(), rows[2].correct), (None, false));
    }

    #[test]
    fn pair_metrics_are_strict() {
        let r = pair_metrics(&[1.0, 0.5, 2.0], &[0.0, 0.5, 3.0]);
        assert!((r.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.margin - 0.0).abs() < 1e-6);
    }
}
