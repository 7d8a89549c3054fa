//! `rllr-train sft`: supervised fine-tuning with a completion-only causal-LM loss (docs/method.md §5.1):
//! the prompt is masked, the response and its EOS are targets, and targets are either a rationale
//! plus the answer line (CoT) or the answer line alone. A fresh LoRA adapter is trained and then
//! merged into the base, which gives M_sft, the starting point of every later stage.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rllr_core::checkpoint::{save_adapter, save_model};
use rllr_core::dataset::{read_examples, Example};
use rllr_core::manifest::ModelKind;
use rllr_core::task::TaskSpec;
use rllr_core::{Batch, ForwardCtx, Llama, PaddingSide};
use serde_json::{json, Map, Value};

use crate::metrics::{evaluate_policy, PolicyEvalSpec};
use crate::stage::{self, Loaded};
use crate::train::config::{overridable, required, stage_args, LoraSection, TrainConfig};
use crate::train::losses::{shifted_targets, token_ce};
use crate::train::run_dir::stage_manifest;
use crate::train::train_loop::{self, LoopOptions, MicroLoss, Objective};

/// Name of the adapter SFT trains.
pub const ADAPTER: &str = "sft";

overridable! {
    /// `[sft]`: what to train on and where to write.
    SftConfig / SftStageArgs {
        value {
            /// Targets carry a rationale before the answer line (CoT); false: the answer line alone.
            rationales: bool = true, "RLLR_TRAIN_RATIONALES";
            /// Use at most this many training examples (0: all).
            limit: usize = 0, "RLLR_TRAIN_LIMIT";
            /// Dev examples for the accuracy-from-generation evaluation (0: all).
            dev_limit: usize = 100, "RLLR_TRAIN_DEV_LIMIT";
            /// Longest prompt + response in tokens (proportional truncation).
            cutoff_len: usize = 512, "RLLR_TRAIN_CUTOFF_LEN";
            /// Chat template (auto: from the checkpoint).
            template: String = "auto".into(), "RLLR_TRAIN_TEMPLATE";
            /// Token budget of the dev generations.
            max_new_tokens: usize = 96, "RLLR_TRAIN_MAX_NEW_TOKENS";
            /// Prompts per generation batch in evaluation.
            eval_batch_size: usize = 8, "RLLR_TRAIN_EVAL_BATCH_SIZE";
        }
        optional {
            /// Base checkpoint directory (HF layout).
            model: PathBuf, "RLLR_TRAIN_MODEL";
            /// Task spec file (data/tasks/<task>.json).
            task: PathBuf, "RLLR_TRAIN_TASK";
            /// Training examples (JSONL).
            train: PathBuf, "RLLR_TRAIN_TRAIN";
            /// Dev examples (JSONL) for periodic and final evaluation.
            dev: PathBuf, "RLLR_TRAIN_DEV";
            /// Run directory: model/ (merged M_sft), adapter/, checkpoints/, metrics.jsonl, report.json.
            output: PathBuf, "RLLR_TRAIN_OUTPUT";
        }
    }
}

/// The config file: `[sft]`, `[train]`, `[lora]`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftFile {
    pub sft: SftConfig,
    pub train: TrainConfig,
    pub lora: LoraSection,
}

stage_args! {
    /// `rllr-train sft` arguments.
    SftArgs => SftFile { sft: SftStageArgs }
}

/// One tokenised training example: the loss covers `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SftItem {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

impl SftItem {
    /// Prompt and response ids, cut proportionally to `cutoff` tokens.
    pub fn new(prompt: &[u32], response: &[u32], cutoff: usize) -> Self {
        let (s, t) = stage::proportional_cut(prompt.len(), response.len(), cutoff);
        let mut ids: Vec<u32> = prompt[..s].to_vec();
        ids.extend_from_slice(&response[..t]);
        ids.truncate(cutoff);
        Self {
            prompt_len: s.min(ids.len()),
            ids,
        }
    }
}

/// Completion-only causal-LM loss through one adapter.
pub struct SftObjective<'a> {
    pub adapter: &'a str,
    pub pad: u32,
    /// Dev items (loss) and the generation evaluation; `None` when there is no dev set.
    pub dev: Option<DevSet<'a>>,
}

/// What SFT evaluates on: dev items for the loss, dev examples for accuracy from generations.
pub struct DevSet<'a> {
    pub items: Vec<SftItem>,
    pub examples: Vec<Example>,
    pub spec: PolicyEvalSpec<'a>,
    pub batch_size: usize,
}

impl SftObjective<'_> {
    /// Mean loss, target count and argmax hits of `items` (dropout on when `seed` is set).
    pub fn loss(
        &self,
        model: &Llama,
        items: &[&SftItem],
        seed: Option<u64>,
    ) -> anyhow::Result<(candle_core::Tensor, usize, usize, usize)> {
        let seqs: Vec<Vec<u32>> = items.iter().map(|i| i.ids.clone()).collect();
        let batch = Batch::new(&seqs, self.pad, PaddingSide::Right, model.device())?;
        let ctx = ForwardCtx {
            adapter: Some(self.adapter),
            dropout_seed: seed,
        };
        let h = model.hidden_states(&batch, &ctx)?;
        let (b, l, hidden) = h.dims3()?;
        let mask: Vec<Vec<bool>> = items
            .iter()
            .map(|i| (0..i.ids.len()).map(|t| t >= i.prompt_len).collect())
            .collect();
        let (rows, targets) = shifted_targets(&seqs, &mask, l);
        if rows.is_empty() {
            bail!("a micro-batch has no response tokens (cutoff_len too small?)");
        }
        let idx = candle_core::Tensor::new(rows.as_slice(), model.device())?;
        let picked = h.reshape((b * l, hidden))?.index_select(&idx, 0)?;
        let ce = token_ce(&model.lm_logits(&picked)?, &targets)?;
        let tokens = seqs.iter().map(Vec::len).sum();
        Ok((ce.loss, ce.tokens, ce.correct, tokens))
    }
}

impl Objective for SftObjective<'_> {
    type Item = SftItem;

    fn micro_loss(
        &self,
        model: &Llama,
        items: &[&SftItem],
        seed: u64,
    ) -> anyhow::Result<MicroLoss> {
        let (loss, targets, correct, tokens) = self.loss(model, items, Some(seed))?;
        Ok(MicroLoss {
            loss,
            tokens,
            stats: vec![("token_acc", correct as f64, targets as f64)],
        })
    }

    fn evaluate(&self, model: &Llama) -> anyhow::Result<Map<String, Value>> {
        let mut out = Map::new();
        let Some(dev) = &self.dev else {
            return Ok(out);
        };
        let (mut loss_sum, mut n_tok, mut hits) = (0f64, 0usize, 0usize);
        for chunk in dev.items.chunks(dev.batch_size.max(1)) {
            let refs: Vec<&SftItem> = chunk.iter().collect();
            let (loss, t, c, _) = self.loss(model, &refs, None)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * t as f64;
            n_tok += t;
            hits += c;
        }
        out.insert("dev_loss".into(), json!(loss_sum / n_tok.max(1) as f64));
        out.insert(
            "dev_token_acc".into(),
            json!(hits as f64 / n_tok.max(1) as f64),
        );
        if !dev.examples.is_empty() {
            let r = evaluate_policy(
                model,
                &ForwardCtx::with_adapter(self.adapter),
                &dev.examples,
                &dev.spec,
            )?;
            out.insert("dev_accuracy".into(), json!(r.accuracy));
            out.insert("dev_unparseable".into(), json!(r.unparseable_rate));
        }
        Ok(out)
    }
}

/// Tokenise examples into SFT items; an example without a gold rationale is an error when
/// rationales are asked for.
pub fn encode_examples(
    loaded: &Loaded,
    task: &TaskSpec,
    examples: &[Example],
    rationales: bool,
    cutoff: usize,
) -> anyhow::Result<Vec<SftItem>> {
    examples
        .iter()
        .map(|ex| {
            let Some(resp) = stage::gold_response(task, ex, rationales)? else {
                bail!(
                    "example '{}' has no rationale for its gold label '{}' (set rationales = false to train on labels alone)",
                    ex.id,
                    ex.label
                );
            };
            let p = stage::encode(&loaded.tokenizer, &stage::prompt_text(task, &loaded.template, &ex.input, None)?)?;
            let r = stage::response_ids(&loaded.tokenizer, &loaded.template, &loaded.eos, &resp)?;
            Ok(SftItem::new(&p, &r, cutoff))
        })
        .collect()
}

fn take(mut v: Vec<Example>, limit: usize) -> Vec<Example> {
    if limit > 0 {
        v.truncate(limit);
    }
    v
}

pub fn run(args: &SftArgs) -> anyhow::Result<()> {
    let file = args.resolve()?;
    let (c, tc) = (&file.sft, &file.train);
    train_loop::validate(tc)?;
    let lora = file.lora.to_lora()?;
    let model_dir = required(&c.model, "model")?;
    let task_path = required(&c.task, "task")?;
    let train_path = required(&c.train, "train")?;
    let out = required(&c.output, "output")?;
    if c.cutoff_len < 2 {
        bail!("cutoff_len must be >= 2");
    }
    let task =
        TaskSpec::load(&task_path).with_context(|| format!("task {}", task_path.display()))?;
    let train = take(read_examples(&train_path, &task)?, c.limit);
    if train.is_empty() {
        bail!("{}: no training examples", train_path.display());
    }
    let dev = match &c.dev {
        Some(p) => take(read_examples(p, &task)?, c.dev_limit),
        None => Vec::new(),
    };
    let ckpt = stage::open_checkpoint(&model_dir, "--model", Some(&task))?;
    let mut loaded = stage::load(ckpt, &c.template, &tc.device, &tc.dtype)?;
    let items = encode_examples(&loaded, &task, &train, c.rationales, c.cutoff_len)?;
    let dev_items = encode_examples(&loaded, &task, &dev, c.rationales, c.cutoff_len)?;
    loaded.model.add_adapter(ADAPTER, &lora, tc.seed)?;
    let spec = PolicyEvalSpec::of(&task, &loaded, c.max_new_tokens, c.eval_batch_size);
    let objective = SftObjective {
        adapter: ADAPTER,
        pad: loaded.pad,
        dev: (!dev.is_empty()).then(|| DevSet {
            items: dev_items,
            examples: dev.clone(),
            spec,
            batch_size: tc.batch_size,
        }),
    };
    let fingerprint = json!({"sft": c, "lora": file.lora, "model": model_dir});
    eprintln!(
        "sft: {} train examples ({} tokens), {} dev, {} steps, base {}",
        items.len(),
        items.iter().map(|i| i.ids.len()).sum::<usize>(),
        dev.len(),
        train_loop::total_steps(tc, items.len()),
        model_dir.display()
    );
    let opts = LoopOptions::stage("sft", tc, &out, args.resume, args.stop_after, fingerprint);
    let report = train_loop::run_stage(&loaded.model, &objective, &items, &opts)?;
    let mut manifest = stage_manifest(
        ModelKind::Sft,
        "sft",
        &task,
        &loaded.template,
        &model_dir,
        &file,
        &report,
    )?;
    manifest.rationales = c.rationales;
    let mut adapter_manifest = manifest.clone();
    adapter_manifest.adapter = Some(ADAPTER.into());
    let base = model_dir.display().to_string();
    save_adapter(
        &loaded.model,
        ADAPTER,
        None,
        &base,
        &out.join("adapter"),
        Some(&adapter_manifest),
    )?;
    loaded.model.merge_adapter(ADAPTER)?;
    save_model(
        &loaded.model,
        &out.join("model"),
        None,
        Some(&model_dir),
        Some(&manifest),
    )?;
    crate::stage::finish("sft", "M_sft", &out, &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::testutil::{tiny_model, tiny_train, tok};

    /// 32 examples: a random prompt, then a response whose first token depends on the prompt.
    fn tiny_items() -> Vec<SftItem> {
        (0..32)
            .map(|i| {
                let prompt: Vec<u32> = (0..5).map(|j| tok(i, j, 10, 60)).collect();
                let response = vec![2 + prompt[1] % 4, 6 + prompt[3] % 2, 8, 1];
                SftItem::new(&prompt, &response, 64)
            })
            .collect()
    }

    #[test]
    fn shipped_config_parses() {
        let f: SftFile = toml::from_str(include_str!("../../configs/comve-sft.toml")).unwrap();
        assert!(f.sft.rationales);
        assert_eq!(f.lora.to_lora().unwrap(), rllr_core::LoraConfig::default());
    }

    #[test]
    fn sft_item_masks_the_prompt_and_cuts_proportionally() {
        let it = SftItem::new(&[5, 6, 7, 8], &[9, 1], 64);
        assert_eq!((it.ids.clone(), it.prompt_len), (vec![5, 6, 7, 8, 9, 1], 4));
        // 6 + 3 > 6: ⌊6·6/9⌋ = 4 prompt tokens, ⌊6·3/9⌋ = 2 response tokens
        let cut = SftItem::new(&[1, 2, 3, 4, 5, 6], &[7, 8, 9], 6);
        assert_eq!((cut.ids, cut.prompt_len), (vec![1, 2, 3, 4, 7, 8], 4));
    }

    #[test]
    fn tiny_model_fits_32_examples() {
        let model = tiny_model(ADAPTER, 3, 0.0);
        let items = tiny_items();
        let obj = SftObjective {
            adapter: ADAPTER,
            pad: 0,
            dev: None,
        };
        let refs: Vec<&SftItem> = items.iter().collect();
        let (_, n0, c0, _) = obj.loss(&model, &refs, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            schedule: crate::train::optim::ScheduleKind::Constant,
            ..tiny_train(1e-2, 150, 8)
        };
        let report = train_loop::run(
            &model,
            &obj,
            &items,
            &LoopOptions {
                cfg: &cfg,
                run_dir: dir.path(),
                resume: false,
                stop_after: None,
                fingerprint: json!(null),
                label: "test",
            },
        )
        .unwrap();
        let (loss, n, c, _) = obj.loss(&model, &refs, None).unwrap();
        let acc = c as f64 / n as f64;
        assert_eq!(n, n0);
        assert!(
            acc >= 0.95,
            "token accuracy {acc} (before {}), loss {}, report {report:?}",
            c0 as f64 / n0 as f64,
            loss.to_scalar::<f32>().unwrap()
        );
        let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
        for k in ["loss", "lr", "grad_norm", "tokens_per_s", "token_acc"] {
            assert!(first.get(k).is_some(), "{k} missing from {first}");
        }
        assert_eq!(log.lines().count(), 150);
    }
}
