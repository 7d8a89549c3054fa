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
