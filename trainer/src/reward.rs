//! `rllr-train reward`: a reward model = base (normally M_sft) + a fresh LoRA + a `score` head,
//! trained on preference pairs (docs/method.md §4, §5.2). The loss is last-token Bradley–Terry by
//! default or the released code's divergent-span loss; both read the head at the last real token
//! for metrics. The same command makes the label-sensitive RM (RLLR, label pairs) and the
//! rationale-sensitive RM (RLHF, rationale pairs); held-out pair files are evaluated separately.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::ValueEnum;
use rllr_core::checkpoint::{save_adapter, SCORE_HEAD};
use rllr_core::dataset::Pair;
use rllr_core::manifest::ModelKind;
use rllr_core::task::TaskSpec;
use rllr_core::{Batch, ForwardCtx, Llama, PaddingSide};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::data::trl::PairsFormat;
use crate::metrics::{encode_pairs, pair_metrics, score_pairs, PairItem};
use crate::stage;
use crate::train::config::{overridable, required, stage_args, LoraSection, TrainConfig};
use crate::train::losses::{bradley_terry, divergent_span, divergent_span_loss};
use crate::train::run_dir::stage_manifest;
use crate::train::train_loop::{self, mix_seed, LoopOptions, MicroLoss, Objective};

/// Which RM loss (D11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RmLoss {
    /// −log σ(r_c − r_r) at the last real token.
    Bt,
    /// Mean over the divergent span of −log σ((v^c_t − v^r_t)/T) (released code).
    DivergentSpan,
}

overridable! {
    /// `[reward]`: data, loss and outputs of the reward stage.
    RewardConfig / RewardStageArgs {
        value {
            /// bt (default) or divergent-span.
            loss: RmLoss = RmLoss::Bt, "RLLR_TRAIN_RM_LOSS";
            /// Margin m in −log σ(r_c − r_r − m) (BT only).
            margin: f64 = 0.0, "RLLR_TRAIN_RM_MARGIN";
            /// TRL's center_rewards_coefficient: + coef · mean((r_c + r_r)²).
            center_rewards_coefficient: f64 = 0.0, "RLLR_TRAIN_CENTER_REWARDS";
            /// Temperature T of the divergent-span loss.
            bpr_temperature: f64 = 1.0, "RLLR_TRAIN_BPR_TEMPERATURE";
            /// Dropout on the hidden state before the head while training (TRL ValueHead: 0.1).
            head_dropout: f32 = 0.1, "RLLR_TRAIN_HEAD_DROPOUT";
            /// Use at most this many training pairs (0: all).
            limit: usize = 0, "RLLR_TRAIN_LIMIT";
            /// Use at most this many pairs of each eval file (0: all).
            eval_limit: usize = 0, "RLLR_TRAIN_EVAL_LIMIT";
            /// Longest prompt + response in tokens.
            cutoff_len: usize = 512, "RLLR_TRAIN_CUTOFF_LEN";
            /// Chat template (auto: from the checkpoint).
            template: String = "auto".into(), "RLLR_TRAIN_TEMPLATE";
            /// Comma-separated held-out pair files, each evaluated on its own.
            eval_pairs: String = String::new(), "RLLR_TRAIN_EVAL_PAIRS";
        }
        optional {
            /// Starting checkpoint (M_sft).
            model: PathBuf, "RLLR_TRAIN_MODEL";
            /// Task spec file.
            task: PathBuf, "RLLR_TRAIN_TASK";
            /// Training pairs (JSONL): rllr's pair records or TRL preference records.
            pairs: PathBuf, "RLLR_TRAIN_PAIRS";
            /// Layout of the pair files: auto (default; by each file's keys), rllr or trl.
            pairs_format: PairsFormat, "RLLR_TRAIN_PAIRS_FORMAT";
            /// Run directory: model/ (adapter + head + rllr.json), checkpoints/, metrics.jsonl, report.json.
            output: PathBuf, "RLLR_TRAIN_OUTPUT";
        }
    }
}

/// The config file: `[reward]`, `[train]`, `[lora]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardFile {
    pub reward: RewardConfig,
    pub train: TrainConfig,
    pub lora: LoraSection,
}

stage_args! {
    /// `rllr-train reward` arguments.
    RewardArgs => RewardFile { reward: RewardStageArgs }
}

/// The pairwise objective through adapter + head `name`.
pub struct RewardObjective {
    pub name: String,
    pub pad: u32,
    pub loss: RmLoss,
    pub margin: f64,
    pub center: f64,
    pub temperature: f64,
    pub head_dropout: f32,
    /// Held-out sets: (name, pairs).
    pub evals: Vec<(String, Vec<PairItem>)>,
    pub eval_batch_size: usize,
}

impl RewardObjective {
    /// Differentiable loss plus (wins, margin sum) of one micro-batch.
    pub fn loss(
        &self,
        model: &Llama,
        items: &[&PairItem],
        seed: Option<u64>,
    ) -> anyhow::Result<(candle_core::Tensor, usize, f64, usize)> {
        let n = items.len();
        let mut seqs: Vec<Vec<u32>> = items.iter().map(|p| p.chosen.clone()).collect();
        seqs.extend(items.iter().map(|p| p.rejected.clone()));
        let batch = Batch::new(&seqs, self.pad, PaddingSide::Right, model.device())?;
        let ctx = ForwardCtx {
            adapter: Some(&self.name),
            dropout_seed: seed,
        };
        let mut h = model.hidden_states(&batch, &ctx)?;
        if let (Some(s), true) = (seed, self.head_dropout > 0.0) {
            h = rllr_core::lora::dropout(&h, self.head_dropout, mix_seed(&[s, 0x4ead]))?;
        }
        let head = model
            .head(&self.name)
            .with_context(|| format!("no score head {}", self.name))?;
        let (b, l, hidden) = h.dims3()?;
        let last = batch.last_index();
        let (loss, ends) = match self.loss {
            RmLoss::Bt => {
                let s = head.forward(&Llama::gather_rows(&h, &last)?)?;
                let (c, r) = (s.narrow(0, 0, n)?, s.narrow(0, n, n)?);
                (bradley_terry(&c, &r, self.margin, self.center)?, s)
            }
            RmLoss::DivergentSpan => {
                let v = head
                    .forward(&h.reshape((b * l, hidden))?)?
                    .reshape((b, l))?;
                let lens = batch.lengths();
                let ids = batch.input_ids.to_vec2::<u32>()?;
                let spans: Vec<(usize, usize)> = (0..n)
                    .map(|i| divergent_span(&ids[i], &ids[n + i], lens[i], lens[n + i]))
                    .collect();
                let loss = divergent_span_loss(
                    &v.narrow(0, 0, n)?,
                    &v.narrow(0, n, n)?,
                    &spans,
                    self.temperature,
                )?;
                let idx: Vec<usize> = last.iter().enumerate().map(|(r, c)| r * l + c).collect();
                let idx = candle_core::Tensor::new(
                    idx.iter().map(|&i| i as u32).collect::<Vec<_>>().as_slice(),
                    v.device(),
                )?;
                (loss, v.flatten_all()?.index_select(&idx, 0)?)
            }
        };
        let s = ends.to_vec1::<f32>()?;
        let wins = (0..n).filter(|&i| s[i] > s[n + i]).count();
        let margin: f64 = (0..n).map(|i| f64::from(s[i] - s[n + i])).sum();
        let tokens = seqs.iter().map(Vec::len).sum();
        Ok((loss, wins, margin, tokens))
    }
}

impl Objective for RewardObjective {
    type Item = PairItem;

    fn micro_loss(
        &self,
        model: &Llama,
        items: &[&PairItem],
        seed: u64,
    ) -> anyhow::Result<MicroLoss> {
        let (loss, wins, margin, tokens) = self.loss(model, items, Some(seed))?;
        let n = items.len() as f64;
        Ok(MicroLoss {
            loss,
            tokens,
            stats: vec![("accuracy", wins as f64, n), ("margin", margin, n)],
        })
    }

    fn evaluate(&self, model: &Llama) -> anyhow::Result<Map<String, Value>> {
        let mut out = Map::new();
        for (name, pairs) in &self.evals {
            let (c, r) = score_pairs(
                model,
                &ForwardCtx::with_adapter(&self.name),
                &self.name,
                pairs,
                self.pad,
                self.eval_batch_size,
            )?;
            out.insert(name.clone(), serde_json::to_value(pair_metrics(&c, &r))?);
        }
        Ok(out)
    }
}

fn read_pairs(
    path: &std::path::Path,
    task: &TaskSpec,
    format: PairsFormat,
    limit: usize,
) -> anyhow::Result<Vec<Pair>> {
    let mut pairs = crate::data::trl::read_pairs(path, task, format)?;
    if limit > 0 {
        pairs.truncate(limit);
    }
    stage::check_pairs(&pairs, task, path)?;
    Ok(pairs)
}

pub fn run(args: &RewardArgs) -> anyhow::Result<()> {
    let file = args.resolve()?;
    let (c, tc) = (&file.reward, &file.train);
    train_loop::validate(tc)?;
    let lora = file.lora.to_lora()?;
    let model_dir = required(&c.model, "model")?;
    let task_path = required(&c.task, "task")?;
    let pairs_path = required(&c.pairs, "pairs")?;
    let out = required(&c.output, "output")?;
    if c.bpr_temperature.is_nan() || c.bpr_temperature <= 0.0 {
        bail!("bpr_temperature must be > 0");
    }
    let task =
        TaskSpec::load(&task_path).with_context(|| format!("task {}", task_path.display()))?;
    let format = c.pairs_format.unwrap_or_default();
    let pairs = read_pairs(&pairs_path, &task, format, c.limit)?;
    let eval_files: Vec<PathBuf> = c
        .eval_pairs
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    let eval_sets = eval_files
        .iter()
        .map(|p| Ok((p.clone(), read_pairs(p, &task, format, c.eval_limit)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ckpt = stage::open_checkpoint(&model_dir, "--model", Some(&task))?;
    let mut loaded = stage::load(ckpt, &c.template, &tc.device, &tc.dtype)?;
    let items = encode_pairs(&loaded, &task, &pairs, c.cutoff_len)?;
    let evals = eval_sets
        .iter()
        .map(|(p, ps)| {
            let name = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("eval")
                .to_string();
            Ok((name, encode_pairs(&loaded, &task, ps, c.cutoff_len)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    loaded.model.add_adapter(SCORE_HEAD, &lora, tc.seed)?;
    loaded
        .model
        .add_new_head(SCORE_HEAD, false, mix_seed(&[tc.seed, 0x5c0e]))?;
    let objective = RewardObjective {
        name: SCORE_HEAD.into(),
        pad: loaded.pad,
        loss: c.loss,
        margin: c.margin,
        center: c.center_rewards_coefficient,
        temperature: c.bpr_temperature,
        head_dropout: c.head_dropout,
        evals,
        eval_batch_size: tc.batch_size.max(4),
    };
    let fingerprint = json!({"reward": c, "lora": file.lora, "model": model_dir});
    eprintln!(
        "reward: {} pairs from {}, loss {:?}, {} steps, base {}",
        items.len(),
        pairs_path.display(),
        c.loss,
        train_loop::total_steps(tc, items.len()),
        model_dir.display()
    );
    let opts = LoopOptions::stage(
        "reward",
        tc,
        &out,
        args.resume,
        args.stop_after,
        fingerprint,
    );
    let report = train_loop::run_stage(&loaded.model, &objective, &items, &opts)?;
    let mut manifest = stage_manifest(
        ModelKind::Reward,
        "reward",
        &task,
        &loaded.template,
        &model_dir,
        &file,
        &report,
    )?;
    manifest.adapter = Some(SCORE_HEAD.into());
    manifest.head = Some(SCORE_HEAD.into());
    let base = model_dir.display().to_string();
    save_adapter(
        &loaded.model,
        SCORE_HEAD,
        Some(SCORE_HEAD),
        &base,
        &out.join("model"),
        Some(&manifest),
    )?;
    crate::stage::finish("reward", "RM", &out, &report)
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use super::*;
    use crate::train::testutil::{tiny_model, tiny_train, tok};

    /// 32 pairs over one prompt each: chosen ends in token 7, rejected in token 8, with random
    /// bodies of different lengths.
    fn separable_pairs() -> Vec<PairItem> {
        (0..32)
            .map(|i| {
                let prompt: Vec<u32> = (0..4).map(|j| tok(i, j, 10, 60)).collect();
                let body = |k: usize, n: usize| {
                    (0..n)
                        .map(|j| tok(i + 100 * k, j, 10, 60))
                        .collect::<Vec<_>>()
                };
                let mut c = prompt.clone();
                c.extend(body(1, 2 + i % 3));
                c.extend([7, 1]);
                let mut r = prompt;
                r.extend(body(2, 3 + i % 2));
                r.extend([8, 1]);
                PairItem {
                    chosen: c,
                    rejected: r,
                }
            })
            .collect()
    }

    fn objective(loss: RmLoss) -> RewardObjective {
        RewardObjective {
            name: SCORE_HEAD.into(),
            pad: 0,
            loss,
            margin: 0.0,
            center: 0.0,
            temperature: 1.0,
            head_dropout: 0.1,
            evals: vec![("train".into(), separable_pairs())],
            eval_batch_size: 8,
        }
    }

    fn rm_model() -> Llama {
        let mut m = tiny_model(SCORE_HEAD, 5, 0.1);
        m.add_new_head(SCORE_HEAD, false, 9).unwrap();
        m
    }

    #[test]
    fn shipped_configs_parse() {
        for text in [
            include_str!("../../configs/comve-rm-label.toml"),
            include_str!("../../configs/comve-rm-rationale.toml"),
        ] {
            let f: RewardFile = toml::from_str(text).unwrap();
            assert_eq!(f.reward.loss, RmLoss::Bt);
        }
    }

    #[test]
    fn lora_and_head_get_gradients_and_the_base_none() {
        let model = rm_model();
        // B = 0 at init would zero A's gradient: give B a value first, as after one update.
        for (name, var) in model.trainable_vars() {
            if name.contains("lora_B") {
                var.set(&Tensor::randn(0f32, 0.1, var.shape(), var.device()).unwrap())
                    .unwrap();
            }
        }
        let pairs = separable_pairs();
        let refs: Vec<&PairItem> = pairs.iter().take(4).collect();
        for kind in [RmLoss::Bt, RmLoss::DivergentSpan] {
            let (loss, ..) = objective(kind).loss(&model, &refs, Some(1)).unwrap();
            let grads = loss.backward().unwrap();
            let vars = model.trainable_vars();
            assert_eq!(
                vars.len(),
                2 * 7 * 2 + 1,
                "{:?}",
                vars.iter().map(|v| &v.0).collect::<Vec<_>>()
            );
            for (name, var) in &vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{kind:?}: no gradient for {name}"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{kind:?}: zero gradient for {name}");
            }
            for (name, t) in model.base_tensors() {
                assert!(
                    grads.get(&t).is_none(),
                    "{kind:?}: frozen {name} got a gradient"
                );
            }
        }
    }

    fn fit(kind: RmLoss) {
        let model = rm_model();
        let obj = objective(kind);
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny_train(5e-3, 60, 8);
        let report = train_loop::run(
            &model,
            &obj,
            &separable_pairs(),
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
        let ev = &report.evals.last().unwrap()["eval"]["train"];
        assert_eq!(
            ev["accuracy"].as_f64().unwrap(),
            1.0,
            "{kind:?}: {report:?}"
        );
        assert!(ev["margin"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn tiny_rm_separates_32_pairs_with_bt() {
        fit(RmLoss::Bt);
    }

    #[test]
    fn tiny_rm_separates_32_pairs_with_divergent_span() {
        fit(RmLoss::DivergentSpan);
    }
}
