//! Checkpoints in the Hugging Face layout: `config.json`, `model.safetensors` (or a sharded index),
//! `tokenizer.json`, PEFT adapters, plus rllr's own `rllr.json` manifest.
//!
//! Everything is written atomically (a temporary directory renamed into place), so an interrupted
//! save never leaves a half-written checkpoint behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::fsutil::{write_dir_atomic, write_file_atomic};
use crate::manifest::Manifest;
use crate::model::{Llama, ScoreHead};
use crate::{Config, Error, LoraConfig, Result};

/// The weight file name transformers writes for an unsharded model.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index file of a sharded model.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Write `tensors` as one safetensors file (atomically). Names are kept as given (HF names).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let tmp_dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".weights-")
        .suffix(".tmp")
        .tempfile_in(tmp_dir)
        .map_err(|e| Error::io(tmp_dir, e))?;
    candle_core::safetensors::save(&map, tmp.path())?;
    crate::fsutil::set_mode(tmp.path(), 0o644)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Write a whole HF-layout model directory at `dest`, atomically: `config.json`,
/// `model.safetensors`, and whatever `extra_files` (name, bytes) are given (`tokenizer.json`,
/// `tokenizer_config.json`, `rllr.json`, ...).
pub fn save_model_dir(
    dest: &Path,
    config: &Config,
    tensors: &[(String, Tensor)],
    extra_files: &[(&str, Vec<u8>)],
) -> Result<()> {
    write_dir_atomic(dest, |dir| {
        write_file_atomic(&dir.join("config.json"), config.to_json().as_bytes())?;
        save_safetensors(&dir.join(WEIGHTS_FILE), tensors)?;
        for (name, bytes) in extra_files {
            write_file_atomic(&dir.join(name), bytes)?;
        }
        Ok(())
    })
}

/// PEFT's adapter file names.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// Tokenizer-side files copied along when a model is saved.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Name under which a checkpoint's own score head (`score.weight`) is loaded.
pub const SCORE_HEAD: &str = "score";

/// An HF-layout checkpoint directory, opened (config and manifest read; weights on demand).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: std::path::PathBuf,
    pub config: Config,
    pub manifest: Option<Manifest>,
}

impl Checkpoint {
    /// Open `dir`: it must hold a valid `config.json` and weights.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::checkpoint(&dir, "not a directory"));
        }
        let config = Config::from_file(dir.join("config.json"))?;
        let manifest = Manifest::read(&dir)?;
        let ckpt = Self {
            dir,
            config,
            manifest,
        };
        ckpt.weight_files()?;
        Ok(ckpt)
    }

    /// The safetensors files holding the weights: `model.safetensors`, or the shards listed in
    /// `model.safetensors.index.json`.
    pub fn weight_files(&self) -> Result<Vec<std::path::PathBuf>> {
        let single = self.dir.join(WEIGHTS_FILE);
        if single.exists() {
            return Ok(vec![single]);
        }
        let index = self.dir.join(WEIGHTS_INDEX_FILE);
        if !index.exists() {
            return Err(Error::checkpoint(
                &self.dir,
                format!(
                    "no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} (only safetensors weights are read)"
                ),
            ));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::json(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::checkpoint(&index, "no weight_map object"))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        Ok(files.into_iter().map(|f| self.dir.join(f)).collect())
    }

    /// Every tensor of every weight file, by name.
    pub fn load_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut all = HashMap::new();
        for f in self.weight_files()? {
            if !f.exists() {
                return Err(Error::checkpoint(
                    &self.dir,
                    format!("missing shard {}", f.display()),
                ));
            }
            all.extend(candle_core::safetensors::load(&f, device)?);
        }
        Ok(all)
    }

    /// The model, in `dtype` on `device`. A `score.weight` (LlamaForSequenceClassification) or
    /// `v_head.summary.*` (TRL value head) becomes the score head named [`SCORE_HEAD`].
    pub fn load_model(&self, dtype: DType, device: &Device) -> Result<Llama> {
        let mut tensors = self.load_tensors(device)?;
        let head = match (
            tensors.remove("score.weight"),
            tensors.remove("v_head.summary.weight"),
        ) {
            (Some(w), _) => Some((w, tensors.remove("score.bias"))),
            (None, Some(w)) => Some((w, tensors.remove("v_head.summary.bias"))),
            _ => None,
        };
        let vb = VarBuilder::from_tensors(tensors, dtype, device);
        let mut model = Llama::load(&self.config, vb)
            .map_err(|e| Error::checkpoint(&self.dir, e.to_string()))?;
        if let Some((w, b)) = head {
            let w = w.to_dtype(dtype)?;
            let b = b.map(|b| b.to_dtype(dtype)).transpose()?;
            model.add_head(SCORE_HEAD, ScoreHead::new(&w, b.as_ref(), false)?)?;
        }
        Ok(model)
    }

    /// The tokenizer (`tokenizer.json`).
    pub fn load_tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let path = self.dir.join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::checkpoint(&self.dir, format!("tokenizer.json: {e}")))
    }

    /// `tokenizer_config.json`, if present (chat template, special tokens).
    pub fn tokenizer_config(&self) -> Result<Option<serde_json::Value>> {
        crate::fsutil::read_json_opt(&self.dir.join("tokenizer_config.json"))
    }
}

/// Is `dir` a PEFT adapter directory (an `adapter_config.json` and no `config.json` of its own)?
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file() && !dir.join("config.json").is_file()
}

/// The model an adapter directory builds on: its `rllr.json` `base_checkpoint`, else
/// `adapter_config.json`'s `base_model_name_or_path`. A relative path is relative to the adapter
/// directory, so a shipped tree of adapters (`sft/` on the base, `rm/` on `../sft`) moves as one.
pub fn adapter_base(dir: &Path) -> Result<PathBuf> {
    let from_manifest = Manifest::read(dir)?.and_then(|m| m.base_checkpoint);
    let base = match from_manifest {
        Some(b) => b,
        None => {
            let p = dir.join(ADAPTER_CONFIG_FILE);
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::json(&p, e))?;
            v.get("base_model_name_or_path")
                .and_then(|b| b.as_str())
                .map(str::to_string)
                .ok_or_else(|| Error::checkpoint(dir, "adapter names no base model"))?
        }
    };
    Ok(dir.join(base))
}

/// Load the model a directory stands for: a full checkpoint as it is, or an adapter directory
/// whose base is loaded the same way (recursively) and the adapter merged into it — M_sft shipped
/// as a small SFT adapter over the public base. `confine` checks (and may rewrite) every base path
/// before it is opened, e.g. to keep a server inside its model root. Returns the model and the full
/// checkpoint at the bottom of the chain (config, tokenizer).
pub fn load_merged(
    dir: &Path,
    dtype: DType,
    device: &Device,
    confine: &dyn Fn(&Path) -> Result<PathBuf>,
) -> Result<(Llama, Checkpoint)> {
    load_merged_depth(dir, dtype, device, confine, 0)
}

fn load_merged_depth(
    dir: &Path,
    dtype: DType,
    device: &Device,
    confine: &dyn Fn(&Path) -> Result<PathBuf>,
    depth: usize,
) -> Result<(Llama, Checkpoint)> {
    if depth > 8 {
        return Err(Error::checkpoint(
            dir,
            "adapter chain deeper than 8 (a cycle?)",
        ));
    }
    if !is_adapter_dir(dir) {
        let ckpt = Checkpoint::open(dir)?;
        let model = ckpt.load_model(dtype, device)?;
        return Ok((model, ckpt));
    }
    let base = confine(&adapter_base(dir)?)?;
    let (mut model, ckpt) = load_merged_depth(&base, dtype, device, confine, depth + 1)?;
    const MERGING: &str = "__merging";
    load_adapter(&mut model, dir, MERGING, false)?;
    model.merge_adapter(MERGING)?;
    model.remove_head(MERGING);
    Ok((model, ckpt))
}

/// What a PEFT `adapter_config.json` holds that rllr uses.
#[derive(Debug, Clone, serde::Deserialize)]
struct PeftConfig {
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    peft_type: Option<String>,
}

/// Read a PEFT LoRA adapter config.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let p: PeftConfig = serde_json::from_str(&text).map_err(|e| Error::json(&path, e))?;
    if p.peft_type.as_deref().is_some_and(|t| t != "LORA") {
        return Err(Error::checkpoint(
            dir,
            format!("peft_type {:?} is not LORA", p.peft_type),
        ));
    }
    let target_modules = match p.target_modules {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(s) if crate::lora::TARGETABLE.contains(&s.as_str()) => vec![s],
        other => {
            return Err(Error::checkpoint(
                dir,
                format!("target_modules {other} unsupported (use a list of names)"),
            ))
        }
    };
    let cfg = LoraConfig {
        r: p.r,
        lora_alpha: p.lora_alpha,
        lora_dropout: p.lora_dropout,
        target_modules,
        use_rslora: p.use_rslora,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// PEFT key of a tensor without the adapter-name infix older versions wrote (`lora_A.default.weight`).
fn peft_key(name: &str) -> String {
    name.replace(".default.weight", ".weight")
        .replace(".modules_to_save.", ".")
}

/// Load the PEFT adapter in `dir` onto `model` as adapter `name`. A saved score head
/// (`base_model.model.score.weight`, from `modules_to_save`) becomes head `name`.
pub fn load_adapter(model: &mut Llama, dir: &Path, name: &str, trainable: bool) -> Result<()> {
    let cfg = read_adapter_config(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !path.exists() {
        return Err(Error::checkpoint(dir, format!("no {ADAPTER_WEIGHTS_FILE}")));
    }
    let raw = candle_core::safetensors::load(&path, model.device())?;
    let mut tensors: HashMap<String, Tensor> =
        raw.into_iter().map(|(k, v)| (peft_key(&k), v)).collect();
    let mut take = |key: String| {
        tensors
            .remove(&key)
            .ok_or_else(|| Error::checkpoint(dir, format!("missing tensor {key}")))
    };
    model.add_adapter_from(name, &cfg, trainable, |path| {
        Ok((
            take(format!("base_model.model.{path}.lora_A.weight"))?,
            take(format!("base_model.model.{path}.lora_B.weight"))?,
        ))
    })?;
    if let Some(w) = tensors.remove("base_model.model.score.weight") {
        let b = tensors.remove("base_model.model.score.bias");
        let dt = model.dtype();
        let b = b.map(|b| b.to_dtype(dt)).transpose()?;
        model.add_head(
            name,
            ScoreHead::new(&w.to_dtype(dt)?, b.as_ref(), trainable)?,
        )?;
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::checkpoint(dir, format!("unexpected tensor {extra} (targets in adapter_config.json disagree with the weights?)")));
    }
    Ok(())
}

/// Save adapter `name` of `model` in PEFT layout into `dest` (atomically): `adapter_config.json`,
/// `adapter_model.safetensors` and, when `head` is given, that score head as `modules_to_save`
/// `score` (task type SEQ_CLS). `base` is recorded as `base_model_name_or_path`.
pub fn save_adapter(
    model: &Llama,
    name: &str,
    head: Option<&str>,
    base: &str,
    dest: &Path,
    manifest: Option<&Manifest>,
) -> Result<()> {
    let info = model
        .adapters()
        .get(name)
        .ok_or_else(|| Error::UnknownAdapter(name.into()))?;
    let mut tensors: Vec<(String, Tensor)> = model
        .adapter_tensors(name)?
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect();
    if let Some(h) = head {
        let head = model
            .head(h)
            .ok_or_else(|| Error::UnknownAdapter(format!("score head {h}")))?;
        let (w, b) = head.vars();
        tensors.push((
            "base_model.model.score.weight".into(),
            w.as_tensor().detach(),
        ));
        if let Some(b) = b {
            tensors.push(("base_model.model.score.bias".into(), b.as_tensor().detach()));
        }
    }
    let c = &info.config;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": if head.is_some() { "SEQ_CLS" } else { "CAUSAL_LM" },
        "base_model_name_or_path": base,
        "r": c.r,
        "lora_alpha": c.lora_alpha,
        "lora_dropout": c.lora_dropout,
        "target_modules": c.target_modules,
        "use_rslora": c.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "modules_to_save": if head.is_some() { serde_json::json!(["score"]) } else { serde_json::Value::Null },
    });
    write_dir_atomic(dest, |dir| {
        write_file_atomic(
            &dir.join(ADAPTER_CONFIG_FILE),
            serde_json::to_string_pretty(&config)
                .expect("json")
                .as_bytes(),
        )?;
        save_safetensors(&dir.join(ADAPTER_WEIGHTS_FILE), &tensors)?;
        if let Some(m) = manifest {
            m.write(dir)?;
        }
        Ok(())
    })
}

/// Save `model`'s base weights (after merges) as a full HF checkpoint at `dest`, atomically.
/// With `head`, the model is written as `LlamaForSequenceClassification` (`score.weight`,
/// `num_labels = 1`). Tokenizer files are copied from `tokenizer_from` when given.
pub fn save_model(
    model: &Llama,
    dest: &Path,
    head: Option<&str>,
    tokenizer_from: Option<&Path>,
    manifest: Option<&Manifest>,
) -> Result<()> {
    let mut tensors = model.base_tensors();
    let mut config = model.config().clone();
    if let Some(h) = head {
        let head = model
            .head(h)
            .ok_or_else(|| Error::UnknownAdapter(format!("score head {h}")))?;
        let (w, b) = head.vars();
        if b.is_some() {
            return Err(Error::Input(format!(
                "score head {h} has a bias, which LlamaForSequenceClassification cannot hold"
            )));
        }
        tensors.push(("score.weight".into(), w.as_tensor().detach()));
        config.extra.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForSequenceClassification"]),
        );
        config
            .extra
            .insert("num_labels".into(), serde_json::json!(1));
        config
            .extra
            .insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
        config
            .extra
            .insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
    } else {
        config.extra.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
        );
        for k in ["num_labels", "id2label", "label2id"] {
            config.extra.remove(k);
        }
    }
    config.extra.insert(
        "torch_dtype".into(),
        serde_json::json!(dtype_name(model.dtype())),
    );
    let mut extra: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(src) = tokenizer_from {
        for f in TOKENIZER_FILES {
            let p = src.join(f);
            if p.exists() {
                extra.push((f, std::fs::read(&p).map_err(|e| Error::io(&p, e))?));
            }
        }
    }
    if let Some(m) = manifest {
        extra.push((crate::manifest::MANIFEST_FILE, m.to_json().into_bytes()));
    }
    save_model_dir(dest, &config, &tensors, &extra)
}

/// transformers' name for a dtype.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    }
}
