//! What the bench binaries share: the `--model` flag that names the base model they load, so
//! `rllr-bench` and `rllr-serve-bench` read the same variable with the same default, and the
//! `--random-config` model that stands in for it on a machine without weights (a GPU box reached
//! with no network): a model directory with seeded random weights of a given shape, written in
//! the Hugging Face layout so rllr and transformers' `LlamaForCausalLM` load the same files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rllr_core::checkpoint::{self, Checkpoint};
use rllr_core::Config;

/// The base model every engine bench loads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// HF-layout model directory with tokenizer.json (e.g. from scripts/fetch-smollm2.sh);
    /// rllr-bench's PyTorch peer loads the same directory, so both sides run the same weights.
    #[arg(
        long,
        env = "RLLR_BENCH_MODEL",
        default_value = "models/smollm2-135m-instruct"
    )]
    pub model: PathBuf,
}

/// A random-weight model of a given shape instead of `--model`: for machines that have no
/// weights (the GPU box takes ≤ 64 MiB of files), where speed is all that is measured.
#[derive(clap::Args, Debug, Clone)]
pub struct RandomModelArgs {
    /// A config.json (e.g. benches/configs/llama-1b.json): build a model of that shape with
    /// seeded random weights (normal, std 0.02; norms 1) instead of loading --model. The weights
    /// are written as an HF model directory that rllr and the PyTorch peer both load, so both
    /// sides run identical weights without any download.
    #[arg(long, env = "RLLR_BENCH_RANDOM_CONFIG")]
    pub random_config: Option<PathBuf>,
    /// Seed of the random weights (same seed and config → same weights).
    #[arg(long, env = "RLLR_BENCH_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Where to write the random model (kept, and reused by a later run with the same config,
    /// seed and dtype, which saves regenerating a 1B model); default: a temporary directory
    /// removed at exit.
    #[arg(long, env = "RLLR_BENCH_RANDOM_OUT")]
    pub random_out: Option<PathBuf>,
}

/// The model directory a bench runs on, and the temporary directory holding it, if any (dropped,
/// and so removed, with it).
pub struct ModelDir {
    pub path: PathBuf,
    pub random: bool,
    _tmp: Option<tempfile::TempDir>,
}

/// The file in a random model directory that says what it was made from (for reuse).
const RANDOM_MARKER: &str = "rllr-bench-random.json";

/// Resolve the model directory: `--model` as given, or a random model of `--random-config`'s
/// shape, in `dtype`, with `extra` files (`tokenizer.json`, ...) copied in.
pub fn model_dir(
    model: &ModelArg,
    random: &RandomModelArgs,
    dtype: DType,
    extra: &[PathBuf],
) -> Result<ModelDir> {
    let Some(config) = &random.random_config else {
        if !extra.is_empty() {
            bail!("--tokenizer only applies with --random-config (a --model dir has its own)");
        }
        return Ok(ModelDir {
            path: model.model.clone(),
            random: false,
            _tmp: None,
        });
    };
    let (path, tmp) = match &random.random_out {
        Some(p) => (p.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("rllr-random-").tempdir()?;
            (t.path().join("model"), Some(t))
        }
    };
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let marker = serde_json::json!({
        "config": serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("parsing {}", config.display()))?,
        "seed": random.seed,
        "dtype": checkpoint::dtype_name(dtype),
        "extra": extra.iter().map(|p| std::fs::read(p).map(|b| b.len()).unwrap_or(0)).collect::<Vec<_>>(),
    });
    let reuse = std::fs::read_to_string(path.join(RANDOM_MARKER))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|m| m == marker)
        && Checkpoint::open(&path).is_ok();
    if reuse {
        eprintln!("random model: reusing {}", path.display());
    } else {
        let t = std::time::Instant::now();
        let cfg = Config::from_file(config)?;
        write_random_model(&cfg, random.seed, dtype, extra, &path, &marker)?;
        eprintln!(
            "random model: {} ({:.0}M params, {}, seed {}) written to {} in {:.1}s",
            config.display(),
            param_count(&cfg) as f64 / 1e6,
            checkpoint::dtype_name(dtype),
            random.seed,
            path.display(),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(ModelDir {
        path,
        random: true,
        _tmp: tmp,
    })
}

/// Parameters of a model of `cfg`'s shape.
pub fn param_count(cfg: &Config) -> usize {
    rllr_core::model::weight_shapes(cfg)
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// Seeded random weights for every base tensor of `cfg` (HF names): normal with std 0.02 for
/// matrices (transformers' `initializer_range`), ones for the RMSNorm weights, zeros for biases.
/// Each block of [`BLOCK`] values draws from its own stream (seed, tensor index, block index), so
/// the weights do not depend on the thread count, and a 1B model is drawn on every core.
pub fn random_tensors(cfg: &Config, seed: u64, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    cfg.validate()?;
    rllr_core::model::weight_shapes(cfg)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = if name.ends_with("norm.weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let mut v = vec![0.0; n];
                fill_normal(&mut v, mix(seed, i as u64), 0.02);
                v
            };
            let t = Tensor::from_vec(vals, shape, &Device::Cpu)?.to_dtype(dtype)?;
            Ok((name, t))
        })
        .collect()
}

/// Values per random stream.
const BLOCK: usize = 1 << 20;

/// A seed for stream `b` under `seed`.
fn mix(seed: u64, b: u64) -> u64 {
    (seed ^ 0x5DEE_CE66_D1CE_4E5B)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        .wrapping_add(b.wrapping_mul(0xD6E8_FEB8_6659_FD93))
}

/// Fill `out` with N(0, std²) draws, block `b` from stream `mix(stream, b)`, blocks spread over
/// the cores (rayon), so the values do not depend on the thread count.
fn fill_normal(out: &mut [f32], stream: u64, std: f32) {
    use rand_distr::Distribution;
    use rayon::prelude::*;
    let normal = rand_distr::Normal::new(0.0f32, std).expect("a finite, positive std");
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, chunk)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(mix(stream, b as u64));
            chunk.iter_mut().for_each(|x| *x = normal.sample(&mut rng));
        });
}

/// Write a random model of `cfg`'s shape at `dest` (atomically, replacing what is there):
/// `config.json` (architectures `LlamaForCausalLM`, `torch_dtype` = `dtype`),
/// `model.safetensors`, `generation_config.json` (bos/eos/pad from the config), the `extra`
/// files by their own names, and `marker` as [`RANDOM_MARKER`].
pub fn write_random_model(
    cfg: &Config,
    seed: u64,
    dtype: DType,
    extra: &[PathBuf],
    dest: &Path,
    marker: &serde_json::Value,
) -> Result<()> {
    let tensors = random_tensors(cfg, seed, dtype)?;
    let mut cfg = cfg.clone();
    cfg.extra.insert(
        "architectures".into(),
        serde_json::json!(["LlamaForCausalLM"]),
    );
    cfg.extra.insert(
        "torch_dtype".into(),
        serde_json::json!(checkpoint::dtype_name(dtype)),
    );
    let mut gen = serde_json::Map::new();
    if let Some(b) = cfg.bos_token_id {
        gen.insert("bos_token_id".into(), b.into());
    }
    if let Some(e) = &cfg.eos_token_id {
        let ids = e.to_vec();
        gen.insert(
            "eos_token_id".into(),
            if ids.len() == 1 {
                ids[0].into()
            } else {
                ids.into()
            },
        );
    }
    if let Some(p) = cfg.pad_token_id {
        gen.insert("pad_token_id".into(), p.into());
    }
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "generation_config.json".into(),
            serde_json::to_vec_pretty(&gen)?,
        ),
        (RANDOM_MARKER.into(), serde_json::to_vec_pretty(marker)?),
    ];
    for p in extra {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: no file name", p.display()))?;
        files.push((
            name.to_string(),
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        ));
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    checkpoint::save_model_dir(dest, &cfg, &tensors, &refs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Config {
        serde_json::from_str(
            r#"{"model_type":"llama","vocab_size":64,"hidden_size":32,"intermediate_size":48,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "max_position_embeddings":128,"rms_norm_eps":1e-5,"rope_theta":10000,
            "tie_word_embeddings":false,"bos_token_id":1,"eos_token_id":2}"#,
        )
        .unwrap()
    }

    #[test]
    fn random_model_is_seeded_and_loads() {
        let cfg = tiny();
        let a = random_tensors(&cfg, 3, DType::F32).unwrap();
        let b = random_tensors(&cfg, 3, DType::F32).unwrap();
        let c = random_tensors(&cfg, 4, DType::F32).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&a[0].1), flat(&b[0].1));
        assert_ne!(flat(&a[0].1), flat(&c[0].1));
        let std = {
            let v = flat(&a[0].1);
            (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt()
        };
        assert!((0.015..0.025).contains(&std), "std {std}");

        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("config.json");
        std::fs::write(&cfg_path, cfg.to_json()).unwrap();
        let random = RandomModelArgs {
            random_config: Some(cfg_path),
            seed: 3,
            random_out: Some(dir.path().join("m")),
        };
        let model = ModelArg {
            model: "unused".into(),
        };
        let m = model_dir(&model, &random, DType::BF16, &[]).unwrap();
        let ckpt = Checkpoint::open(&m.path).unwrap();
        let llama = ckpt.load_model(DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(llama.config().num_hidden_layers, 2);
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(m.path.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written["architectures"][0], "LlamaForCausalLM");
        assert_eq!(written["torch_dtype"], "bfloat16");
        assert!(m.path.join("generation_config.json").is_file());
        // A second run with the same inputs reuses the directory.
        let before = std::fs::metadata(m.path.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        let again = model_dir(&model, &random, DType::BF16, &[]).unwrap();
        let after = std::fs::metadata(again.path.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
    }
}
