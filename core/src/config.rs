//! `Config`: the model's shape, mirroring Hugging Face's `config.json` for the Llama family.
//!
//! Llama-2/3, Mistral and SmolLM2 checkpoints all describe themselves with this file. Fields rllr
//! does not use are kept in `extra` so a config read and written back loses nothing. Both the
//! transformers v4 spelling (`rope_theta` + `rope_scaling`) and the v5 one (`rope_parameters`) load.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `eos_token_id` is an integer in most configs and a list in Llama-3's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids, as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// RoPE frequency scaling (`rope_scaling` in v4 configs, `rope_parameters` in v5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `default`, `linear` or `llama3`. v4 configs sometimes call it `type`.
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// v5 keeps theta inside `rope_parameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

/// The model's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers v5 name for theta + scaling; read, never written.
    #[serde(default, skip_serializing)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's sliding-window attention span (null or absent: full attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    /// Everything else in the file (architectures, torch_dtype, id2label, ...), kept verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Config {
    /// Read and validate a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the shape is one this engine can run, with a message naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !matches!(self.model_type.as_str(), "llama" | "mistral") {
            return bad(format!(
                "model_type '{}' is not a Llama-family decoder (llama, mistral)",
                self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act '{}' unsupported (only silu)",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0 || self.num_hidden_layers == 0 || self.hidden_size == 0 {
            return bad(
                "num_attention_heads, num_hidden_layers and hidden_size must be > 0".into(),
            );
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for RoPE",
                self.head_dim()
            ));
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        if let Some(s) = self.scaling() {
            match s.rope_type.as_str() {
                "default" => {}
                "linear" if s.factor.is_some() => {}
                "llama3" if s.factor.is_some() && s.original_max_position_embeddings.is_some() => {}
                other => return bad(format!("rope_scaling type '{other}' unsupported or incomplete (default, linear, llama3)")),
            }
        }
        Ok(())
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Key/value heads (grouped-query attention); equal to the query heads when absent.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// RoPE base frequency, from v4 or v5 spelling.
    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0)
    }

    /// Frequency scaling, from v4 or v5 spelling.
    pub fn scaling(&self) -> Option<&RopeScaling> {
        self.rope_scaling.as_ref().or(self.rope_parameters.as_ref())
    }

    /// End-of-sequence ids (Llama-3 has several).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Normalise to the v4 spelling, which every transformers version reads.
    pub fn normalized(mut self) -> Self {
        if let Some(p) = self.rope_parameters.take() {
            if self.rope_theta.is_none() {
                self.rope_theta = p.rope_theta;
            }
            if self.rope_scaling.is_none() && p.rope_type != "default" {
                self.rope_scaling = Some(RopeScaling {
                    rope_theta: None,
                    ..p
                });
            }
        }
        if self.rope_theta.is_none() {
            self.rope_theta = Some(10_000.0);
        }
        self
    }

    /// Serialise as `config.json` text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.clone().normalized()).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_llama3_and_mistral_configs_parse() {
        let smol = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":49152,"hidden_size":576,
            "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
            "max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":100000,"tie_word_embeddings":true,
            "bos_token_id":1,"eos_token_id":2,"torch_dtype":"bfloat16"}"#;
        let c: Config = serde_json::from_str(smol).unwrap();
        c.validate().unwrap();
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.num_kv_heads(), 3);
        assert_eq!(c.rope_theta(), 100000.0);
        assert_eq!(c.extra["torch_dtype"], "bfloat16");

        let l3 = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"eos_token_id":[128001,128008,128009]}"#;
        let c: Config = serde_json::from_str(l3).unwrap();
        c.validate().unwrap();
        assert_eq!(c.eos_ids(), vec![128001, 128008, 128009]);
        assert_eq!(c.scaling().unwrap().rope_type, "llama3");

        let mistral = r#"{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":1000000.0,
            "sliding_window":null,"rms_norm_eps":1e-5}"#;
        let c: Config = serde_json::from_str(mistral).unwrap();
        c.validate().unwrap();
        assert_eq!(c.sliding_window, None);

        let v5 = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":2,"rope_parameters":{"rope_type":"default","rope_theta":500.0}}"#;
        let c: Config = serde_json::from_str(v5).unwrap();
        assert_eq!(c.rope_theta(), 500.0);
        let back: Config = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(back.rope_theta, Some(500.0));
        assert!(back.rope_scaling.is_none());
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let c = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":3}"#;
        let c: Config = serde_json::from_str(c).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
    }
}
