//! The GGUF key/value metadata read as a Hugging Face `config.json`, generation config and
//! tokenizer spec: which keys llama.cpp writes for a Llama-family model and what they mean.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::json;

use super::tokenizer::TokenizerSpec;
use crate::config::{RopeScaling, TokenIds};
use crate::{Config, Error, Result};

/// Typed access to the metadata map, with errors naming the key.
pub(super) struct Metadata<'a>(pub(super) &'a HashMap<String, Value>);

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

pub(super) fn check_architecture(meta: &Metadata) -> Result<()> {
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

pub(super) fn config_from_metadata(
    meta: &Metadata,
    content: &Content,
    n_tokens: usize,
) -> Result<Config> {
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
pub(super) fn round_f32(x: f64) -> f64 {
    let s = format!("{}", x as f32);
    s.parse().unwrap_or(x)
}

pub(super) fn rope_scaling(meta: &Metadata) -> Result<Option<RopeScaling>> {
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

pub(super) fn generation_config(config: &Config) -> serde_json::Value {
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

pub(super) fn tokenizer_spec(meta: &Metadata) -> Result<TokenizerSpec> {
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

pub(super) fn value_to_i32(v: &Value) -> candle_core::Result<i32> {
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
