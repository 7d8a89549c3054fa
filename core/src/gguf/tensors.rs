//! GGUF tensors in Hugging Face form: names mapped to HF names, dequantised to f32, llama.cpp's
//! q/k row permutation undone, shapes checked against the config.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::{Config, Error, Result};

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
pub(super) fn tensor_order(content: &Content) -> Vec<String> {
    let mut names: Vec<(&String, u64)> = content
        .tensor_infos
        .iter()
        .map(|(n, t)| (n, t.offset))
        .collect();
    names.sort_by_key(|(_, off)| *off);
    names.into_iter().map(|(n, _)| n.clone()).collect()
}

/// Read, dequantise, rename and (for q/k) un-permute one tensor. `Ok(None)`: skipped (no HF home).
pub(super) fn load_tensor<R: Read + Seek>(
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
pub(super) fn dequantize<R: Read + Seek>(
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
pub(super) fn check_tensor_shapes(config: &Config, tensors: &[(String, Tensor)]) -> Result<()> {
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

pub(super) fn unsupported(tensor: &str, ty: &str) -> Error {
    Error::Gguf(format!(
        "tensor '{tensor}' is stored as {ty}, which is not supported \
         (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K); re-quantise the model"
    ))
}
