//! GGUF import: turn a llama.cpp `.gguf` file into a Hugging Face-layout model directory.
//!
//! Small Llama-family models are often published only as GGUF. rllr trains and serves HF-layout
//! checkpoints, so this module reads a GGUF (with candle's reader), dequantises every tensor to f32,
//! renames it to its HF name, undoes llama.cpp's q/k row permutation, rebuilds `config.json` and the
//! tokenizer from the metadata, and writes the whole directory atomically. The result loads in
//! transformers and matches what `from_pretrained(dir, gguf_file=...)` gives (same tensors, same ids).

mod tokenizer;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::checkpoint::save_model_dir;
use crate::config::{RopeScaling, TokenIds};
use crate::manifest::{Manifest, ModelKind, MANIFEST_FILE};
use crate::template::ChatTemplate;
use crate::{Config, Error, Result};
use tokenizer::TokenizerSpec;

/// Everything a GGUF file holds, in Hugging Face form.
pub struct GgufImport {
    /// HF-style config; `extra` carries `architectures: ["LlamaForCausalLM"]`.
    pub config: Config,
    /// HF names, f32, CPU, HF layout (q/k un-permuted), in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// Rebuilt from the `tokenizer.ggml.*` metadata.
    pub tokenizer: tokenizers::Tokenizer,
    /// HF `tokenizer_config.json` (special tokens, chat template, add_bos_token, ...).
    pub tokenizer_config: serde_json::Value,
    /// HF `generation_config.json` (bos/eos/pad ids).
    pub generation_config: serde_json::Value,
    /// HF `special_tokens_map.json`.
    pub special_tokens_map: serde_json::Value,
}

impl GgufImport {
    /// Total number of parameters.
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.elem_count()).sum()
    }
}

/// Read, dequantise and translate a GGUF file. See [`import_gguf_with_progress`].
pub fn import_gguf(path: &Path) -> Result<GgufImport> {
    import_gguf_with_progress(path, |_, _, _| {})
}

/// Like [`import_gguf`], calling `progress(done, total, hf_name)` after each tensor.
pub fn import_gguf_with_progress(
    path: &Path,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<GgufImport> {
    let start = Instant::now();
    let (mut reader, content) = open(path)?;
    let meta = Metadata(&content.metadata);
    check_architecture(&meta)?;
    let spec = tokenizer_spec(&meta)?;
    let (tokenizer, _) = tokenizer::build_tokenizer(&spec)?;
    let config = config_from_metadata(&meta, &content, spec.tokens.len())?;

    let names = tensor_order(&content);
    let mut tensors = Vec::with_capacity(names.len());
    for (i, gguf_name) in names.iter().enumerate() {
        if let Some(pair) = load_tensor(&mut reader, &content, gguf_name, &config)? {
            progress(i + 1, names.len(), &pair.0);
            tensors.push(pair);
        }
    }
    check_tensor_shapes(&config, &tensors)?;
    let tokenizer_config = tokenizer::tokenizer_config(&spec, config.max_position_embeddings);
    let special_tokens_map = tokenizer::special_tokens_map(&spec);
    let generation_config = generation_config(&config);
    tracing::info!(
        "imported {} tensors from {} in {:.1}s",
        tensors.len(),
        path.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(GgufImport {
        config,
        tensors,
        tokenizer,
        tokenizer_config,
        generation_config,
        special_tokens_map,
    })
}

/// Write `import` as an HF model directory at `dest` (atomically), tensors cast to `dtype`:
/// `config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
/// `generation_config.json`, `special_tokens_map.json`.
pub fn write_hf_checkpoint(import: &GgufImport, dest: &Path, dtype: DType) -> Result<()> {
    write_hf_checkpoint_with(import, dest, dtype, &base_manifest(import, None))
}

/// The `rllr.json` of an imported base model: kind `base`, the chat template its tokenizer
/// config declares, and where it came from. A template a built-in covers is recorded by that
/// built-in's name (as before: ChatML without a default system text); any other (Llama-3, ...) is
/// recorded as the jinja itself with the GGUF's BOS/EOS text.
pub fn base_manifest(import: &GgufImport, source: Option<&Path>) -> Manifest {
    let mut m = Manifest::new(ModelKind::Base, "convert");
    let detected = import
        .tokenizer_config
        .get("chat_template")
        .and_then(|t| t.as_str())
        .and_then(ChatTemplate::detect);
    m.chat_template = match detected {
        Some(ChatTemplate::Jinja(_)) | None => {
            match ChatTemplate::from_tokenizer_config(&import.tokenizer_config, "the GGUF") {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("{e}; the imported model gets no chat template");
                    None
                }
            }
        }
        Some(t) => ChatTemplate::from_name(t.name()).ok(),
    };
    m.provenance.source = source.map(|p| p.display().to_string());
    m
}

/// [`write_hf_checkpoint`] with a given manifest (e.g. recording the source file).
pub fn write_hf_checkpoint_with(
    import: &GgufImport,
    dest: &Path,
    dtype: DType,
    manifest: &Manifest,
) -> Result<()> {
    let torch_dtype = match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        other => {
            return Err(Error::Gguf(format!(
                "cannot write weights as {other:?} (f32, f16, bf16)"
            )))
        }
    };
    let mut config = import.config.clone();
    config
        .extra
        .insert("torch_dtype".into(), json!(torch_dtype));
    let tensors = import
        .tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    let tokenizer_json = import
        .tokenizer
        .to_string(true)
        .map_err(|e| Error::Tokenizer(format!("serialising tokenizer: {e}")))?;
    let pretty =
        |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("JSON values serialise");
    let extra: Vec<(&str, Vec<u8>)> = vec![
        ("tokenizer.json", tokenizer_json.into_bytes()),
        ("tokenizer_config.json", pretty(&import.tokenizer_config)),
        ("generation_config.json", pretty(&import.generation_config)),
        (
            "special_tokens_map.json",
            pretty(&import.special_tokens_map),
        ),
        (MANIFEST_FILE, manifest.to_json().into_bytes()),
    ];
    save_model_dir(dest, &config, &tensors, &extra)
}

/// Only the tokenizer a GGUF file describes (no tensors are read).
pub fn read_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    let (_, content) = open(path)?;
    let spec = tokenizer_spec(&Metadata(&content.metadata))?;
    Ok(tokenizer::build_tokenizer(&spec)?.0)
}

// ------------------------------------------------------------------------------------------------
// Reading the file

/// Open `path` and parse the GGUF header, with errors that say what is wrong with the file.
fn open(path: &Path) -> Result<(BufReader<File>, Content)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 4];
    let head = reader.read_exact(&mut magic);
    if head.is_err() || &magic != b"GGUF" {
        return Err(Error::Gguf(format!(
            "{} is not a GGUF file (no 'GGUF' magic)",
            path.display()
        )));
    }
    reader.rewind().map_err(|e| Error::io(path, e))?;
    match Content::read(&mut reader) {
        Ok(content) => Ok((reader, content)),
        Err(e) => {
            reader.rewind().map_err(|e| Error::io(path, e))?;
            if let Ok(Some((name, ty))) = header_scan::first_unknown_type(&mut reader) {
                return Err(unsupported(&name, &header_scan::type_name(ty)));
            }
            Err(Error::Gguf(format!(
                "cannot read the header of {}: {e}",
                path.display()
            )))
        }
    }
}

fn unsupported(tensor: &str, ty: &str) -> Error {
    Error::Gguf(format!(
        "tensor '{tensor}' is stored as {ty}, which is not supported \
         (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); re-quantise the model"
    ))
}

/// Typed access to the metadata map, with errors naming the key.
struct Metadata<'a>(&'a HashMap<String, Value>);

impl Metadata<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    fn wrong(key: &str, want: &str, e: impl std::fmt::Display) -> Error {
        Error::Gguf(format!("metadata '{key}' is not {want}: {e}"))
    }

    fn u64_opt(&self, key: &str) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(Self::wrong(
                    key,
                    "a non-negative integer",
                    format!("{other:?}"),
                ))
            }
        };
        Ok(Some(n))
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.u64_opt(key)?
            .map(|n| n as usize)
            .ok_or_else(|| Error::Gguf(format!("required metadata '{key}' is missing")))
    }

    fn u32_opt(&self, key: &str) -> Result<Option<u32>> {
        Ok(self.u64_opt(key)?.map(|n| n as u32))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => self.u64_opt(key).map(|o| o.map(|n| n as f64)),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.to_bool().map_err(|e| Self::wrong(key, "a bool", e)))
            .transpose()
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|e| Self::wrong(key, "a string", e))
            })
            .transpose()
    }

    fn array_opt<T>(
        &self,
        key: &str,
        item: impl Fn(&Value) -> candle_core::Result<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.to_vec().map_err(|e| Self::wrong(key, "an array", e))?;
        arr.iter()
            .map(|x| item(x).map_err(|e| Self::wrong(key, "an array of the expected type", e)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn check_architecture(meta: &Metadata) -> Result<()> {
    match meta.str_opt("general.architecture")? {
        Some("llama") => Ok(()),
        Some(other) => Err(Error::Gguf(format!(
            "architecture '{other}' is not supported: only 'llama' GGUF files (Llama, SmolLM2, Mistral-as-llama) import"
        ))),
        None => Err(Error::Gguf("metadata 'general.architecture' is missing".into())),
    }
}

// ------------------------------------------------------------------------------------------------
// Config

fn config_from_metadata(meta: &Metadata, content: &Content, n_tokens: usize) -> Result<Config> {
    let hidden = meta.usize_req("llama.embedding_length")?;
    let heads = meta.usize_req("llama.attention.head_count")?;
    let kv_heads = meta
        .u64_opt("llama.attention.head_count_kv")?
        .map(|n| n as usize);
    let head_dim = match meta.u64_opt("llama.attention.key_length")? {
        Some(n) => Some(n as usize),
        None => meta
            .u64_opt("llama.rope.dimension_count")?
            .map(|n| n as usize),
    };
    let vocab_size = match content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims())
    {
        Some([rows, _]) if *rows != n_tokens => {
            tracing::warn!(
                "token_embd has {rows} rows but the vocabulary has {n_tokens} tokens; using {rows}"
            );
            *rows
        }
        _ => n_tokens,
    };
    let mut extra = serde_json::Map::new();
    extra.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    if let Some(name) = meta.str_opt("general.name")? {
        extra.insert("_name_or_path".into(), json!(name));
    }
    let config = Config {
        model_type: "llama".into(),
        vocab_size,
        hidden_size: hidden,
        intermediate_size: meta.usize_req("llama.feed_forward_length")?,
        num_hidden_layers: meta.usize_req("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads.unwrap_or(heads)),
        head_dim,
        max_position_embeddings: meta
            .u64_opt("llama.context_length")?
            .map(|n| n as usize)
            .unwrap_or(2048),
        rms_norm_eps: meta
            .f64_opt("llama.attention.layer_norm_rms_epsilon")?
            .map(round_f32)
            .unwrap_or(1e-5),
        rope_theta: Some(
            meta.f64_opt("llama.rope.freq_base")?
                .map(round_f32)
                .unwrap_or(10_000.0),
        ),
        rope_scaling: rope_scaling(meta)?,
        rope_parameters: None,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        hidden_act: "silu".into(),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        mlp_bias: content.tensor_infos.contains_key("blk.0.ffn_up.bias"),
        sliding_window: None,
        bos_token_id: meta.u32_opt("tokenizer.ggml.bos_token_id")?,
        eos_token_id: meta
            .u32_opt("tokenizer.ggml.eos_token_id")?
            .map(TokenIds::One),
        pad_token_id: meta.u32_opt("tokenizer.ggml.padding_token_id")?,
        extra,
    };
    config.validate()?;
    Ok(config)
}

/// GGUF stores f32; print it back as the short decimal it was (9.999999747e-06 -> 1e-05).
fn round_f32(x: f64) -> f64 {
    let s = format!("{}", x as f32);
    s.parse().unwrap_or(x)
}

fn rope_scaling(meta: &Metadata) -> Result<Option<RopeScaling>> {
    let kind = meta.str_opt("llama.rope.scaling.type")?;
    let factor = meta.f64_opt("llama.rope.scaling.factor")?;
    match (kind, factor) {
        (None | Some("none"), _) => Ok(None),
        (Some("linear"), Some(f)) if f != 1.0 => Ok(Some(RopeScaling {
            rope_type: "linear".into(),
            factor: Some(f),
            low_freq_factor: None,
            high_freq_factor: None,
            original_max_position_embeddings: meta
                .u64_opt("llama.rope.scaling.original_context_length")?
                .map(|n| n as usize),
            rope_theta: None,
        })),
        (Some("linear"), _) => Ok(None),
        (Some(other), _) => Err(Error::Gguf(format!(
            "rope scaling '{other}' is not supported (linear only)"
        ))),
    }
}

fn generation_config(config: &Config) -> serde_json::Value {
    let mut g = serde_json::Map::new();
    if let Some(b) = config.bos_token_id {
        g.insert("bos_token_id".into(), json!(b));
    }
    if let Some(e) = &config.eos_token_id {
        g.insert(
            "eos_token_id".into(),
            serde_json::to_value(e).expect("ids serialise"),
        );
    }
    if let Some(p) = config.pad_token_id {
        g.insert("pad_token_id".into(), json!(p));
    }
    serde_json::Value::Object(g)
}

// ------------------------------------------------------------------------------------------------
// Tokenizer metadata

fn tokenizer_spec(meta: &Metadata) -> Result<TokenizerSpec> {
    let strings = |key: &str| meta.array_opt(key, |v| v.to_string().cloned());
    let model = meta.str_opt("tokenizer.ggml.model")?.ok_or_else(|| {
        Error::Gguf("metadata 'tokenizer.ggml.model' is missing: the file has no tokenizer".into())
    })?;
    Ok(TokenizerSpec {
        model: model.to_string(),
        pre: meta.str_opt("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: strings("tokenizer.ggml.tokens")?.unwrap_or_default(),
        token_types: meta.array_opt("tokenizer.ggml.token_type", value_to_i32)?,
        merges: strings("tokenizer.ggml.merges")?,
        scores: meta.array_opt("tokenizer.ggml.scores", |v| v.to_f32())?,
        bos_id: meta.u32_opt("tokenizer.ggml.bos_token_id")?,
        eos_id: meta.u32_opt("tokenizer.ggml.eos_token_id")?,
        unk_id: meta.u32_opt("tokenizer.ggml.unknown_token_id")?,
        pad_id: meta.u32_opt("tokenizer.ggml.padding_token_id")?,
        add_bos: meta.bool_opt("tokenizer.ggml.add_bos_token")?,
        add_eos: meta.bool_opt("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: meta.bool_opt("tokenizer.ggml.add_space_prefix")?,
        chat_template: meta.str_opt("tokenizer.chat_template")?.map(str::to_string),
    })
}

fn value_to_i32(v: &Value) -> candle_core::Result<i32> {
    match v {
        Value::I32(x) => Ok(*x),
        Value::U32(x) => Ok(*x as i32),
        Value::I8(x) => Ok(*x as i32),
        Value::U8(x) => Ok(*x as i32),
        other => candle_core::bail!("expected an integer, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Tensors

/// The HF name of a GGUF tensor (`None` for tensors HF has no place for, e.g. `rope_freqs`).
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let base = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    };
    Some(format!("{base}.{suffix}"))
}

/// Tensor names in on-disk order (so reads are sequential).
fn tensor_order(content: &Content) -> Vec<String> {
    let mut names: Vec<(&String, u64)> = content
        .tensor_infos
        .iter()
        .map(|(n, t)| (n, t.offset))
        .collect();
    names.sort_by_key(|(_, off)| *off);
    names.into_iter().map(|(n, _)| n.clone()).collect()
}

/// Read, dequantise, rename and (for q/k) un-permute one tensor. `Ok(None)`: skipped (no HF home).
fn load_tensor<R: Read + Seek>(
    reader: &mut R,
    content: &Content,
    gguf_name: &str,
    config: &Config,
) -> Result<Option<(String, Tensor)>> {
    let info = &content.tensor_infos[gguf_name];
    if gguf_name == "rope_freqs.weight" {
        tracing::warn!(
            "the file has rope_freqs.weight (Llama-3.1-style RoPE scaling); it is not converted into \
             rope_scaling, so positions beyond the original context will differ from llama.cpp"
        );
    }
    let Some(hf_name) = hf_tensor_name(gguf_name) else {
        tracing::warn!(
            "skipping tensor '{gguf_name}' ({:?}): no Hugging Face counterpart",
            info.ggml_dtype
        );
        return Ok(None);
    };
    let wrap = |e: candle_core::Error| {
        Error::Gguf(format!("tensor '{gguf_name}' ({:?}): {e}", info.ggml_dtype))
    };
    let mut t = dequantize(reader, content, gguf_name)?;
    if gguf_name.starts_with("blk.") {
        if gguf_name.contains(".attn_q.") {
            t = unpermute(&t, config.num_attention_heads).map_err(wrap)?;
        } else if gguf_name.contains(".attn_k.") {
            t = unpermute(&t, config.num_kv_heads()).map_err(wrap)?;
        }
    }
    tracing::debug!(
        "{gguf_name} -> {hf_name} {:?} {:?}",
        info.ggml_dtype,
        t.dims()
    );
    Ok(Some((hf_name, t)))
}

/// One tensor as stored (GGUF name, torch dim order), dequantised to f32 on the CPU.
fn dequantize<R: Read + Seek>(
    reader: &mut R,
    content: &Content,
    gguf_name: &str,
) -> Result<Tensor> {
    let info = content
        .tensor_infos
        .get(gguf_name)
        .ok_or_else(|| Error::Gguf(format!("no tensor '{gguf_name}' in the file")))?;
    if matches!(info.ggml_dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
        return Err(unsupported(gguf_name, &format!("{:?}", info.ggml_dtype)));
    }
    let wrap = |e: candle_core::Error| {
        Error::Gguf(format!("tensor '{gguf_name}' ({:?}): {e}", info.ggml_dtype))
    };
    let q = info
        .read(reader, content.tensor_data_offset, &Device::Cpu)
        .map_err(wrap)?;
    Ok(q.dequantize(&Device::Cpu)
        .map_err(wrap)?
        .to_dtype(DType::F32)?)
}

/// Undo llama.cpp's `permute` of q/k rows (`reshape(n_head, 2, d/2, ..).swapaxes(1, 2)`): each
/// head's rows go from interleaved rotary pairs back to HF's two halves.
pub fn unpermute(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        candle_core::bail!("{rows} rows cannot be split into {n_head} heads of rotary pairs");
    }
    let mut shape = vec![n_head, rows / n_head / 2, 2];
    shape.extend_from_slice(&dims[1..]);
    t.reshape(shape)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// Every tensor the config implies is present with the shape it implies.
fn check_tensor_shapes(config: &Config, tensors: &[(String, Tensor)]) -> Result<()> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let q = config.num_attention_heads * config.head_dim();
    let kv = config.num_kv_heads() * config.head_dim();
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !config.tie_word_embeddings {
        expected.push(("lm_head.weight".into(), vec![v, h]));
    }
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            expected.push((format!("{p}{n}"), s));
        }
    }
    let have: HashMap<&str, &[usize]> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.dims()))
        .collect();
    for (name, shape) in expected {
        match have.get(name.as_str()) {
            None => {
                return Err(Error::Gguf(format!(
                    "tensor for '{name}' is missing from the file"
                )))
            }
            Some(got) if *got != shape.as_slice() => {
                return Err(Error::Gguf(format!(
                    "'{name}' has shape {got:?}, the metadata implies {shape:?}"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A minimal GGUF header walk, used only to name the tensor behind candle's "unknown dtype" error.
mod header_scan {
    use std::io::Read;

    fn u32_le(r: &mut impl Read) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64_le(r: &mut impl Read) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn skip(r: &mut impl Read, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
        if copied != n {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn string(r: &mut impl Read) -> std::io::Result<String> {
        let n = u64_le(r)?;
        let mut buf = Vec::new();
        r.take(n).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn skip_value(r: &mut impl Read, ty: u32) -> std::io::Result<()> {
        match ty {
            0 | 1 | 7 => skip(r, 1),
            2 | 3 => skip(r, 2),
            4..=6 => skip(r, 4),
            10..=12 => skip(r, 8),
            8 => {
                let n = u64_le(r)?;
                skip(r, n)
            }
            9 => {
                let item = u32_le(r)?;
                let n = u64_le(r)?;
                (0..n).try_for_each(|_| skip_value(r, item))
            }
            _ => Err(std::io::ErrorKind::InvalidData.into()),
        }
    }

    /// ggml type ids candle reads.
    fn known(ty: u32) -> bool {
        matches!(ty, 0..=3 | 6..=15 | 30)
    }

    /// The first tensor whose type candle does not know, with that type id (GGUF v2/v3 only).
    pub fn first_unknown_type(r: &mut impl Read) -> std::io::Result<Option<(String, u32)>> {
        skip(r, 4)?;
        let version = u32_le(r)?;
        if version < 2 {
            return Ok(None);
        }
        let n_tensors = u64_le(r)?;
        let n_kv = u64_le(r)?;
        for _ in 0..n_kv {
            let _key = string(r)?;
            let ty = u32_le(r)?;
            skip_value(r, ty)?;
        }
        for _ in 0..n_tensors {
            let name = string(r)?;
            let n_dims = u32_le(r)?;
            skip(r, 8 * n_dims as u64)?;
            let ty = u32_le(r)?;
            skip(r, 8)?;
            if !known(ty) {
                return Ok(Some((name, ty)));
            }
        }
        Ok(None)
    }

    /// ggml's name for a type id.
    pub fn type_name(ty: u32) -> String {
        let name = match ty {
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => return format!("ggml type {ty}"),
        };
        format!("{name} (ggml type {ty})")
    }
}

#[cfg(test)]
mod tests;
