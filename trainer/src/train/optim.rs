//! AdamW (decoupled weight decay, as `torch.optim.AdamW`), global-norm gradient clipping and the
//! learning-rate schedules (cosine / linear / constant with linear warm-up, as transformers'
//! `get_*_schedule_with_warmup`).
//!
//! The optimizer is ours rather than `candle_nn::AdamW` so that its moments can be written to and
//! read from a checkpoint: a resumed run must continue with exactly the state it stopped with.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// AdamW over named variables; the moments are f32 tensors keyed by the variable's name.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Optimizer steps taken (bias correction uses it).
    pub t: u64,
    params: AdamWParams,
}

impl AdamW {
    /// Zero moments for every variable.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like()?.to_dtype(DType::F32);
        let m = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            m,
            v,
            t: 0,
            params,
        })
    }

    /// The optimised variables, in a fixed order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// One update with `grads[i]` (f32, same shape) for variable i at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let p = self.params;
        self.t += 1;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let g = &grads[i];
            self.m[i] = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            self.v[i] = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let m_hat = (&self.m[i] / bc1)?;
            let v_hat = (&self.v[i] / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
            let w = var.as_tensor().to_dtype(DType::F32)?;
            let w = (w * (1.0 - lr * p.weight_decay))?;
            let w = (w - (update * lr)?)?;
            var.set(&w.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Moments under `m/<name>` and `v/<name>`, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.push((format!("m/{name}"), self.m[i].clone()));
            out.push((format!("v/{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restore moments written by [`AdamW::state_tensors`]; every variable must be present.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (slot, prefix) in [(&mut self.m[i], "m"), (&mut self.v[i], "v")] {
                let key = format!("{prefix}/{name}");
                let x = tensors.remove(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks {key}"))
                })?;
                if x.shape() != var.shape() {
                    candle_core::bail!(
                        "optimizer state {key} has shape {:?}, variable {:?}",
                        x.shape(),
                        var.shape()
                    );
                }
                *slot = x.to_dtype(DType::F32)?.to_device(var.device())?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Scale `grads` so that their global L2 norm is at most `max_norm` (0 = no clipping), as
/// `torch.nn.utils.clip_grad_norm_`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let k = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * k)?;
        }
    }
    Ok(norm)
}

/// Shape of the learning-rate curve after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
}

/// Learning rate for optimizer step `step` (0-based) of `total`: linear warm-up from 0 over
/// `warmup` steps, then the chosen decay to 0 (transformers' schedulers, stepped once per update).
pub fn learning_rate(
    kind: ScheduleKind,
    base: f64,
    step: usize,
    total: usize,
    warmup: usize,
) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let decay_len = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / decay_len;
    match kind {
        ScheduleKind::Constant => base,
        ScheduleKind::Linear => base * (1.0 - progress).max(0.0),
        ScheduleKind::Cosine => {
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn adamw_matches_torch_on_two_steps() {
        // torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5), p = [1, -2],
        // grads [0.5, 0.5] then [-1, 2]; values computed by hand from the update rule.
        let var = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        let params = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut opt = AdamW::new(vec![("p".into(), var.clone())], params).unwrap();
        let g1 = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).unwrap();
        opt.step(&[g1], 0.1).unwrap();
        // step 1: m_hat = g, v_hat = g², update = sign(g) ≈ 1; p = p·(1 − 0.05) − 0.1
        let p1: Vec<f64> = [1.0f64, -2.0].iter().map(|p| p * 0.95 - 0.1).collect();
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for (g, e) in got.iter().zip(&p1) {
            assert!((f64::from(*g) - e).abs() < 1e-5, "{got:?} vs {p1:?}");
        }
        let g2 = [-1f64, 2.0];
        opt.step(&[Tensor::new(&[-1f32, 2.0], &Device::Cpu).unwrap()], 0.1)
            .unwrap();
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            let m = 0.9 * 0.1 * 0.5 + 0.1 * g2[i];
            let v = 0.999 * 0.001 * 0.25 + 0.001 * g2[i] * g2[i];
            let upd = (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
            let e = p1[i] * 0.95 - 0.1 * upd;
            assert!((f64::from(got[i]) - e).abs() < 1e-5, "{got:?} vs {e}");
        }
        assert_eq!(opt.t, 2);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![
            Tensor::new(&[3f32], &Device::Cpu).unwrap(),
            Tensor::new(&[4f32], &Device::Cpu).unwrap(),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let a = g[0].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-5, "{a}");
        let mut small = vec![Tensor::new(&[0.1f32], &Device::Cpu).unwrap()];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), vec![0.1]);
    }

    #[test]
    fn schedules_follow_transformers() {
        use ScheduleKind::*;
        assert_eq!(learning_rate(Cosine, 1.0, 0, 10, 2), 0.0);
        assert!((learning_rate(Cosine, 1.0, 1, 10, 2) - 0.5).abs() < 1e-12);
        assert!((learning_rate(Cosine, 1.0, 2, 10, 2) - 1.0).abs() < 1e-12);
        assert!((learning_rate(Cosine, 1.0, 6, 10, 2) - 0.5).abs() < 1e-12);
        assert!((learning_rate(Linear, 1.0, 6, 10, 2) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(Cosine, 2.0, 0, 10, 0), 2.0);
        assert!(learning_rate(Linear, 1.0, 10, 10, 0).abs() < 1e-12);
        assert_eq!(learning_rate(Constant, 3.0, 7, 10, 2), 3.0);
    }
}
