//! Checkpoints in the Hugging Face layout: `config.json`, `model.safetensors` (or a sharded index),
//! `tokenizer.json`, PEFT adapters, plus rllr's own `rllr.json` manifest.
//!
//! Everything is written atomically (a temporary directory renamed into place), so an interrupted
//! save never leaves a half-written checkpoint behind.

use std::path::Path;

use candle_core::Tensor;

use crate::fsutil::{write_dir_atomic, write_file_atomic};
use crate::{Config, Error, Result};

/// The weight file name transformers writes for an unsharded model.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index file of a sharded model.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// Write `tensors` as one safetensors file (atomically). Names are kept as given (HF names).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let map: std::collections::HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let tmp_dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".weights-")
        .suffix(".tmp")
        .tempfile_in(tmp_dir)
        .map_err(|e| Error::io(tmp_dir, e))?;
    candle_core::safetensors::save(&map, tmp.path())?;
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
