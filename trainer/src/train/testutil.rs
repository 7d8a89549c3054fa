//! Tiny random models and data for the trainer's fast tests.

use candle_core::{DType, Device};
use rllr_core::{Config, Llama, LoraConfig};

use super::config::TrainConfig;

/// A 2-layer, 32-wide Llama over a 64-token vocabulary.
pub fn tiny_config() -> Config {
    serde_json::from_str(
        r#"{"vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,
        "eos_token_id":1,"pad_token_id":0}"#,
    )
    .unwrap()
}

/// LoRA r 8, α 16 on every projection, with `dropout`.
pub fn tiny_lora(dropout: f32) -> LoraConfig {
    LoraConfig {
        r: 8,
        lora_alpha: 16.0,
        lora_dropout: dropout,
        target_modules: rllr_core::lora::TARGETABLE
            .iter()
            .map(|s| s.to_string())
            .collect(),
        use_rslora: false,
    }
}

/// A tiny random model with a fresh adapter `name` on every projection.
pub fn tiny_model(name: &str, seed: u64, dropout: f32) -> Llama {
    let mut m = Llama::random(&tiny_config(), 1, DType::F32, &Device::Cpu).unwrap();
    m.add_adapter(name, &tiny_lora(dropout), seed).unwrap();
    m
}

/// A deterministic pseudo-random token in `lo..hi`.
pub fn tok(i: usize, j: usize, lo: u32, hi: u32) -> u32 {
    let h = (i as u64 * 2_654_435_761 + j as u64 * 40_503 + 17) % 1_000_003;
    lo + (h % u64::from(hi - lo)) as u32
}

/// Loop settings for tests: no checkpoints unless asked, constant-ish schedule.
pub fn tiny_train(lr: f64, steps: usize, batch: usize) -> TrainConfig {
    TrainConfig {
        learning_rate: lr,
        max_steps: steps,
        batch_size: batch,
        save_every: 0,
        max_grad_norm: 1.0,
        ..Default::default()
    }
}

/// Max |a − b| over the named variables of two models.
pub fn max_var_diff(a: &Llama, b: &Llama) -> f32 {
    let (va, vb) = (a.trainable_vars(), b.trainable_vars());
    assert_eq!(va.len(), vb.len());
    va.iter()
        .zip(&vb)
        .map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            (x.as_tensor() - y.as_tensor())
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max)
}

/// A two-label toy task (hot / cold) for tests that parse answers.
pub fn toy_task() -> rllr_core::task::TaskSpec {
    serde_json::from_value(serde_json::json!({
        "name": "toy", "instruction": "is it hot or cold ?", "input_fields": ["text"],
        "labels": [{"name": "hot"}, {"name": "cold"}], "metric": "accuracy",
        "answer_prefix": "Answer:"
    }))
    .unwrap()
}

/// `n` toy examples (alternating gold labels), each with a human rationale for its gold label.
pub fn toy_examples(n: usize) -> Vec<rllr_core::dataset::Example> {
    (0..n)
        .map(|i| {
            let label = if i % 2 == 0 { "hot" } else { "cold" };
            serde_json::from_value(serde_json::json!({
                "id": format!("toy-{i}"), "task": "toy", "input": format!("the sun {i}"),
                "label": label,
                "rationales": {label: [{"text": format!("thing {i} is {label}"), "source": "human"}]}
            }))
            .unwrap()
        })
        .collect()
}

/// The toy vocabulary (64 tokens, the tiny model's size): special tokens, prompt words, and
/// whole answer lines ("so\nAnswer: hot\n", …) so a random model writes parseable answers often.
fn toy_vocab() -> Vec<String> {
    let mut v: Vec<String> = ["<pad>", "<eos>", "<unk>"].map(String::from).to_vec();
    v.extend(
        "is it hot or cold ? the sun fire snow ice"
            .split_whitespace()
            .map(String::from),
    );
    for p in ["so", "thus", "hence", "yes", "then", "and", "ok", "well"] {
        for l in ["hot", "cold"] {
            v.push(format!("{p}\nAnswer: {l}\n"));
        }
    }
    let mut i = 0;
    while v.len() < 64 {
        v.push(format!("w{i}"));
        i += 1;
    }
    v
}

/// A tiny random policy checkpoint in `dir` (tiny config, plain template, word-level tokenizer
/// over [`toy_vocab`]), loadable with `stage::open_checkpoint` + `stage::load`.
pub fn toy_policy_dir(dir: &std::path::Path) {
    let model = Llama::random(&tiny_config(), 3, DType::F32, &Device::Cpu).unwrap();
    let mut manifest =
        rllr_core::manifest::Manifest::new(rllr_core::manifest::ModelKind::Sft, "test");
    manifest.chat_template = Some(rllr_core::template::ChatTemplate::Plain);
    rllr_core::checkpoint::save_model(&model, dir, None, None, Some(&manifest)).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = toy_vocab()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::json!(i)))
        .collect();
    let special = |id: u32, s: &str| {
        serde_json::json!({"id": id, "content": s, "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "<eos>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// A random reward model (LoRA + score head, rllr.json kind reward) on the policy in `base`,
/// written to `dest` as `rllr-train reward` writes one.
pub fn toy_reward_dir(base: &std::path::Path, dest: &std::path::Path, seed: u64) {
    use rllr_core::checkpoint::SCORE_HEAD;
    let mut model = Llama::random(&tiny_config(), 3, DType::F32, &Device::Cpu).unwrap();
    model
        .add_adapter(SCORE_HEAD, &tiny_lora(0.0), seed)
        .unwrap();
    model.add_new_head(SCORE_HEAD, false, seed + 1).unwrap();
    let mut m = rllr_core::manifest::Manifest::new(rllr_core::manifest::ModelKind::Reward, "test");
    m.base_checkpoint = Some(base.display().to_string());
    m.adapter = Some(SCORE_HEAD.into());
    m.head = Some(SCORE_HEAD.into());
    let b = base.display().to_string();
    rllr_core::checkpoint::save_adapter(&model, SCORE_HEAD, Some(SCORE_HEAD), &b, dest, Some(&m))
        .unwrap();
}
