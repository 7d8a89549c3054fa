//! Rotary position embeddings, with the `linear` and `llama3` frequency scalings of `config.json`.
//!
//! Positions are given per token (not per column), so padded rows and sequences at different decode
//! steps share one batch. Applied in the "rotate half" layout transformers uses, with plain tensor
//! ops so gradients flow through it (candle's fused `rope` has no backward).

use candle_core::{DType, Device, Tensor, D};

pub use crate::ops::rope::{apply, apply_heads};
use crate::{Config, Error, Result};

/// cos/sin tables for every position up to `max_position_embeddings`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    max_pos: usize,
}

/// Inverse frequencies `1 / theta^(2i/d)`, scaled as the config says (transformers'
/// `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
/// `_compute_llama3_parameters`).
pub fn inv_freq(cfg: &Config) -> Vec<f32> {
    let dim = cfg.head_dim();
    let theta = cfg.rope_theta() as f32;
    let base: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f32 / dim as f32))
        .collect();
    let Some(s) = cfg.scaling() else { return base };
    let factor = s.factor.unwrap_or(1.0) as f32;
    match s.rope_type.as_str() {
        "linear" => base.iter().map(|f| f / factor).collect(),
        "llama3" => {
            let low = s.low_freq_factor.unwrap_or(1.0) as f32;
            let high = s.high_freq_factor.unwrap_or(4.0) as f32;
            let old_ctx = s.original_max_position_embeddings.unwrap_or(8192) as f32;
            let low_wavelen = old_ctx / low;
            let high_wavelen = old_ctx / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        _ => base,
    }
}

impl Rope {
    /// Tables for `cfg`, in `dtype` on `device`.
    pub fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inv_freq(cfg);
        let half = inv.len();
        let max_pos = cfg.max_position_embeddings.max(1);
        let mut freqs = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            freqs.extend(inv.iter().map(|f| p as f32 * f));
        }
        let freqs = Tensor::from_vec(freqs, (max_pos, half), device)?;
        Ok(Self {
            cos: freqs.cos()?.to_dtype(dtype)?,
            sin: freqs.sin()?.to_dtype(dtype)?,
            max_pos,
        })
    }

    /// Gather (B, 1, L, D) cos and sin for per-token `positions` (B rows of L).
    pub fn tables(&self, positions: &[Vec<u32>]) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let l = positions.first().map(Vec::len).unwrap_or(0);
        let flat: Vec<u32> = positions.iter().flatten().copied().collect();
        if let Some(p) = flat.iter().find(|p| **p as usize >= self.max_pos) {
            return Err(Error::Input(format!(
                "position {p} exceeds max_position_embeddings {} of the model",
                self.max_pos
            )));
        }
        let idx = Tensor::from_vec(flat, b * l, self.cos.device())?;
        let gather = |t: &Tensor| -> Result<Tensor> {
            let g = t.index_select(&idx, 0)?.reshape((b, 1, l, t.dim(1)?))?;
            Ok(Tensor::cat(&[&g, &g], D::Minus1)?)
        };
        Ok((gather(&self.cos)?, gather(&self.sin)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: &str) -> Config {
        serde_json::from_str(&format!(
            r#"{{"vocab_size":8,"hidden_size":16,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":1,"rope_theta":500.0,"max_position_embeddings":64{scaling}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let plain = inv_freq(&cfg(""));
        let scaled = inv_freq(&cfg(
            r#","rope_scaling":{"rope_type":"llama3","factor":4.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32}"#,
        ));
        assert_eq!(plain[0], 1.0);
        assert_eq!(scaled[0], 1.0); // wavelength 2π < 32/4: untouched
        let last = plain.len() - 1; // wavelength 2π·500^(14/16) ≫ 16: divided by the factor
        assert!((scaled[last] - plain[last] / 4.0).abs() < 1e-9);
        let linear = inv_freq(&cfg(r#","rope_scaling":{"type":"linear","factor":2.0}"#));
        assert!((linear[1] - plain[1] / 2.0).abs() < 1e-9);
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let c = cfg("");
        let rope = Rope::new(&c, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::arange(0f32, 32.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 16))
            .unwrap();
        let (cos, sin) = rope.tables(&[vec![0, 5]]).unwrap();
        let y = apply(&x, &cos, &sin).unwrap();
        let rows = |t: &Tensor| t.reshape((2, 16)).unwrap().to_vec2::<f32>().unwrap();
        let (x4, y4) = (rows(&x), rows(&y));
        assert_eq!(x4[0], y4[0]);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((n(&x4[1]) - n(&y4[1])).abs() < 1e-3);
        assert_ne!(x4[1], y4[1]);
        assert!(rope
            .tables(&[vec![64]])
            .unwrap_err()
            .to_string()
            .contains("max_position_embeddings"));
    }
}
