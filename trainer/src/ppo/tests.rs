//! PPO on a tiny random model: a rule-based reward must rise (the toy check of issue 7), a run
//! stopped and resumed must equal an uninterrupted one, the gradients must reach exactly the
//! policy adapter, the value adapter and the value head, and the reward modes combine as §5.3.

use candle_core::{DType, Device};
use rllr_core::{Llama, SamplingParams, StopCriteria};
use serde_json::{json, Map, Value};

use super::config::RewardMode;
use super::math::{KlController, LossParams, RunningMoments};
use super::ppo_loop::{run_loop, Hooks, PpoReport, RunSpec};
use super::rollout::{Rollout, RolloutSpec};
use super::scorer::RewardFn;
use super::step::{PpoState, StepSpec};
use super::*;
use crate::train::config::TrainConfig;
use crate::train::optim::{AdamW, AdamWParams, ScheduleKind};
use crate::train::testutil::{max_var_diff, tiny_config, tiny_lora, tiny_train, tok};

/// Reward: the share of response tokens in 10..18 (1/8 of the vocabulary at random).
struct Rule;

impl RewardFn for Rule {
    fn score(
        &self,
        rollouts: &[Rollout],
        _: usize,
        _: &mut Map<String, Value>,
    ) -> anyhow::Result<Vec<f64>> {
        Ok(rollouts
            .iter()
            .map(|r| {
                let hits = r.response.iter().filter(|t| (10..18).contains(*t)).count();
                hits as f64 / r.response.len() as f64
            })
            .collect())
    }
}

/// Tiny base + fresh policy adapter + value adapter + value head; a frozen "reward" adapter too,
/// to check it gets no gradient.
fn ppo_model(dropout: f32) -> Llama {
    let mut m = Llama::random(&tiny_config(), 1, DType::F32, &Device::Cpu).unwrap();
    m.add_adapter(POLICY, &tiny_lora(dropout), 5).unwrap();
    m.add_adapter(VALUE, &tiny_lora(dropout), 6).unwrap();
    m.add_new_head(VALUE, true, 7).unwrap();
    m.add_adapter(RM_LABEL, &tiny_lora(dropout), 8).unwrap();
    m.set_adapter_trainable(RM_LABEL, false).unwrap();
    m
}

fn prompts() -> Vec<(usize, Vec<u32>)> {
    (0..32)
        .map(|i| (i, (0..4).map(|j| tok(i, j, 20, 60)).collect()))
        .collect()
}

fn spec(dropout: bool, mini: usize) -> StepSpec<'static> {
    StepSpec {
        policy: POLICY,
        value: VALUE,
        pad: 0,
        gamma: 1.0,
        gae_lambda: 0.95,
        loss: LossParams::default(),
        ppo_epochs: 2,
        mini_batch_size: mini,
        score_norm: true,
        dropout,
        head_dropout: 0.1,
        max_grad_norm: 1.0,
        seed: 42,
    }
}

fn rollout_spec() -> RolloutSpec<'static> {
    RolloutSpec {
        adapter: Some(POLICY),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
        },
        stop: StopCriteria {
            eos_ids: vec![1],
            stop_strings: vec![],
            max_new_tokens: 6,
        },
        pad: 0,
    }
}

fn initial(beta: f64) -> PpoState {
    PpoState {
        kl: KlController {
            value: beta,
            target: Some(6.0),
            horizon: 10000.0,
        },
        moments: RunningMoments::default(),
    }
}

fn run_toy(
    model: &Llama,
    dir: &std::path::Path,
    tc: &TrainConfig,
    dropout: bool,
    resume: bool,
    stop_after: Option<usize>,
) -> Option<PpoReport> {
    let rs = rollout_spec();
    let hooks = Hooks {
        accuracy: None,
        tokenizer: None,
        rollout: &rs,
        reward: &Rule,
        lambda: None,
        label: "toy",
    };
    let run = RunSpec {
        out: dir,
        resume,
        stop_after,
        fingerprint: json!({"toy": 1}),
    };
    run_loop(
        model,
        &spec(dropout, 8),
        &hooks,
        &prompts(),
        tc,
        initial(0.05),
        &run,
    )
    .unwrap()
}

fn scores(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["objective/scores"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn ppo_raises_a_rule_based_reward() {
    let model = ppo_model(0.0);
    let dir = tempfile::tempdir().unwrap();
    let tc = TrainConfig {
        schedule: ScheduleKind::Constant,
        ..tiny_train(2e-2, 150, 16)
    };
    let report = run_toy(&model, dir.path(), &tc, false, false, None).unwrap();
    assert_eq!(report.steps, 150);
    let s = scores(dir.path());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!("toy PPO: rewards of the first steps {:?}", &s[..10]);
    let (first, last) = (mean(&s[..5]), mean(&s[s.len() - 20..]));
    eprintln!("toy PPO: mean reward first 5 steps {first:.3}, last 20 steps {last:.3}");
    assert!(
        first < 0.3,
        "a random policy hits 1/8 of the vocabulary, got {first}"
    );
    assert!(
        last > first + 0.3,
        "PPO did not raise the reward: {first:.3} -> {last:.3}"
    );
}

#[test]
fn resumed_ppo_equals_uninterrupted_ppo() {
    let tc = TrainConfig {
        save_every: 2,
        weight_decay: 0.01,
        ..tiny_train(1e-2, 6, 8)
    };
    let straight = tempfile::tempdir().unwrap();
    let a = ppo_model(0.1);
    run_toy(&a, straight.path(), &tc, true, false, None).unwrap();
    let broken = tempfile::tempdir().unwrap();
    let b = ppo_model(0.1);
    assert!(run_toy(&b, broken.path(), &tc, true, false, Some(3)).is_none());
    // a fresh process: a new model, resumed from the step-2 checkpoint (step 3 was lost)
    let c = ppo_model(0.1);
    let r = run_toy(&c, broken.path(), &tc, true, true, None).unwrap();
    assert_eq!(r.resumed_from, Some(2));
    let d = max_var_diff(&a, &c);
    assert!(d <= 1e-6, "resumed weights differ by {d}");
    assert_eq!(scores(straight.path()), scores(broken.path()));
    assert_ne!(
        max_var_diff(&a, &ppo_model(0.1)),
        0.0,
        "training changed the weights"
    );
}

#[test]
fn gradients_reach_policy_value_and_head_only() {
    let model = ppo_model(0.0);
    let names: Vec<String> = model.trainable_vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n.starts_with("policy/")));
    assert!(names.iter().any(|n| n.starts_with("value/")));
    assert!(names.iter().any(|n| n.starts_with("head/value/")));
    assert!(
        !names.iter().any(|n| n.starts_with("rm_label/")),
        "frozen RM"
    );
    let before: Vec<Vec<f32>> = model
        .trainable_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    let rm_before = model.adapter_tensors(RM_LABEL).unwrap()[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let rs = rollout_spec();
    let ps = prompts();
    let seeds: Vec<u64> = (0..8).collect();
    let rollouts = rollout::sample(&model, None, &ps[..8], &seeds, &rs).unwrap();
    let s = Rule.score(&rollouts, 0, &mut Map::new()).unwrap();
    let mut opt = AdamW::new(
        model.trainable_vars(),
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    let mut state = initial(0.2);
    let st = spec(false, 8)
        .step(&model, &mut opt, &mut state, (&rollouts, &s), (0, 1e-2))
        .unwrap();
    assert!(st["loss/policy"].as_f64().unwrap().is_finite());
    // the reference is the bare base and the fresh policy equals it: KL 0 and ratio 1 at first
    assert!(st["objective/kl"].as_f64().unwrap().abs() < 1e-5, "{st:?}");
    assert!(
        (st["val/ratio"].as_f64().unwrap() - 1.0).abs() < 1e-3,
        "{st:?}"
    );
    let after: Vec<Vec<f32>> = model
        .trainable_vars()
        .iter()
        .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    for ((name, _), (b, a)) in model.trainable_vars().iter().zip(before.iter().zip(&after)) {
        assert_ne!(b, a, "{name} did not move");
    }
    let rm_after = model.adapter_tensors(RM_LABEL).unwrap()[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(rm_before, rm_after);
}

#[test]
fn reward_modes_combine_as_the_released_code() {
    let l = [0.5, 5.0];
    let r = [1.0, -1.0];
    assert_eq!(
        combine(RewardMode::Rllr, 1.0, 0.5, Some(&l), Some(&r)),
        vec![0.5, 5.0]
    );
    assert_eq!(
        combine(RewardMode::Rlhf, 1.0, 0.5, None, Some(&r)),
        vec![1.0, -1.0]
    );
    // min(r_label, λ = 3.9) + r_rationale
    assert_eq!(
        combine(RewardMode::RllrMixed, 3.9, 0.5, Some(&l), Some(&r)),
        vec![1.5, 2.9]
    );
    assert_eq!(
        combine(RewardMode::RllrWeighted, 3.9, 0.25, Some(&l), Some(&r)),
        vec![0.875, 0.5]
    );
}
