//! GGUF import: turn a llama.cpp `.gguf` file into a Hugging Face-layout model directory.
//!
//! Small Llama-family models are often published only as GGUF. rllr trains and serves HF-layout
//! checkpoints, so this module reads a GGUF (with candle's reader), dequantises every tensor to f32,
//! renames it to its HF name, undoes llama.cpp's q/k row permutation, rebuilds `config.json` and the
//! tokenizer from the metadata, and writes the whole directory atomically. The result loads in
//! transformers and matches what `from_pretrained(dir, gguf_file=...)` gives (same tensors, same ids).

mod header_scan;
mod metadata;
mod tensors;
mod tokenizer;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Tensor};
use serde_json::json;

use crate::checkpoint::save_model_dir;
use crate::manifest::{Manifest, ModelKind, MANIFEST_FILE};
use crate::template::ChatTemplate;
use crate::{Config, Error, Result};
use metadata::{
    check_architecture, config_from_metadata, generation_config, tokenizer_spec, Metadata,
};
use tensors::{check_tensor_shapes, load_tensor, tensor_order, unsupported};
pub use tensors::{hf_tensor_name, unpermute};

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

#[cfg(test)]
mod tests;
