//! LoRA: low-rank adapters over a frozen base linear layer, several named adapters at once.
//!
//! The reference code (docs/method.md §4) keeps one frozen M_sft and switches named adapters per forward
//! (policy, value, reward, rationale reward), so the base is held in memory once. [`LoraLinear`] is
//! that: the base weight (a plain tensor, never trained) plus any number of `(A, B)` pairs stored as
//! candle `Var`s. Which adapter is active is chosen per forward by [`ForwardCtx`]. Adapters can be
//! merged into the base (`W += scale · B·A`), as the pipeline does to build M_sft.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use crate::ops::dropout;
use crate::{Error, Result};

/// Hyper-parameters of one adapter; serialised as PEFT's `adapter_config.json` fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank.
    pub r: usize,
    /// Scaling numerator: the update is `alpha / r · B·A` (or `alpha / sqrt(r)` with rsLoRA).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    pub lora_dropout: f32,
    /// Projections that get an adapter (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`).
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// docs/method.md §4: r 16, α 32, dropout 0.1, targets q_proj and v_proj.
    fn default() -> Self {
        Self {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.1,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            use_rslora: false,
        }
    }
}

/// Every projection a LoRA adapter may target.
pub const TARGETABLE: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LoraConfig {
    /// The factor applied to `B·A`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Reject ranks of zero, dropout outside [0, 1) and unknown targets, naming the field.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Config("lora r must be >= 1".into()));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Config(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Config("lora target_modules is empty".into()));
        }
        for t in &self.target_modules {
            if !TARGETABLE.contains(&t.as_str()) {
                return Err(Error::Config(format!(
                    "lora target '{t}' unknown; valid: {}",
                    TARGETABLE.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Per-forward choices: which adapter is active and whether training-mode dropout applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardCtx<'a> {
    /// `None` runs the bare base (the PPO reference model is exactly this).
    pub adapter: Option<&'a str>,
    /// `Some(seed)` turns dropout on with masks derived from the seed (reproducible training);
    /// `None` is eval mode.
    pub dropout_seed: Option<u64>,
}

impl<'a> ForwardCtx<'a> {
    /// Eval mode through `adapter`.
    pub fn with_adapter(adapter: &'a str) -> Self {
        Self {
            adapter: Some(adapter),
            dropout_seed: None,
        }
    }
}

struct AdapterWeights {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f32,
    trainable: bool,
}

impl AdapterWeights {
    fn tensor(v: &Var, trainable: bool) -> Tensor {
        if trainable {
            v.as_tensor().clone()
        } else {
            v.as_tensor().detach()
        }
    }
}

/// A frozen linear layer (`y = x·Wᵀ + b`) with named LoRA adapters.
pub struct LoraLinear {
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    path: String,
    weight: Tensor,
    bias: Option<Tensor>,
    adapters: BTreeMap<String, AdapterWeights>,
}

impl LoraLinear {
    /// Wrap a base weight `(out, in)` and optional bias.
    pub fn new(path: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            path,
            weight,
            bias,
            adapters: BTreeMap::new(),
        }
    }

    /// HF module path of this projection.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Last path component (`q_proj`, ...), what `target_modules` names.
    pub fn kind(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    /// The (possibly merged) base weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The base bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x·Wᵀ (+ b) (+ scale · dropout(x)·Aᵀ·Bᵀ)` for x of shape (..., in).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (x2, dims) = rows(x)?;
        let y = crate::ops::frozen_linear(&x2, &self.weight)?;
        self.finish(&x2, y, dims, ctx)
    }

    /// Several projections of the same x (q, k and v): for a decode-sized input their base
    /// products run as one kernel dispatch (fused QKV without a concatenated weight), otherwise
    /// one after the other; biases and adapters are added per projection either way.
    pub fn forward_many<const N: usize>(
        lins: [&LoraLinear; N],
        x: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<[Tensor; N]> {
        let (x2, dims) = rows(x)?;
        let weights = lins.map(|l| &l.weight);
        let bases = match crate::ops::frozen_linear_many(&x2, &weights)? {
            Some(b) => b,
            None => weights
                .iter()
                .map(|w| crate::ops::frozen_linear(&x2, w))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        let outs = lins
            .iter()
            .zip(bases)
            .map(|(l, y)| l.finish(&x2, y, dims.clone(), ctx))
            .collect::<Result<Vec<_>>>()?;
        Ok(outs.try_into().expect("one output per projection"))
    }

    /// Bias and adapter on top of the base product `y` (rows, out) of `x2` (rows, in), reshaped
    /// back to x's leading `dims`.
    fn finish(
        &self,
        x2: &Tensor,
        mut y: Tensor,
        mut dims: Vec<usize>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(ad) = ctx.adapter.and_then(|n| self.adapters.get(n)) {
            let a = AdapterWeights::tensor(&ad.a, ad.trainable);
            let b = AdapterWeights::tensor(&ad.b, ad.trainable);
            let xin = match ctx.dropout_seed {
                Some(seed) if ad.dropout > 0.0 => {
                    dropout(x2, ad.dropout, seed ^ hash_str(&self.path))?
                }
                _ => x2.clone(),
            };
            // Scale the (N, r) product, not the (N, out) one: one full-width tensor less for
            // the autograd graph to keep. Through `frozen_linear`, so a frozen adapter's two
            // products in a decode step take the skinny kernel (and, under autograd, skip the
            // gradient of weights that take none); a trainable one's are candle's matmul.
            let xa = crate::ops::frozen_linear(&xin, &a)?.affine(ad.scale, 0.0)?;
            let delta = crate::ops::frozen_linear(&xa, &b)?;
            y = (y + delta)?;
        }
        *dims.last_mut().expect("non-empty") = self.weight.dim(0)?;
        Ok(y.reshape(dims)?)
    }

    /// Add adapter `name` with given `A (r, in)` and `B (out, r)` weights.
    pub fn insert_adapter(
        &mut self,
        name: &str,
        a: Tensor,
        b: Tensor,
        cfg: &LoraConfig,
        trainable: bool,
    ) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
        let expect_a = (cfg.r, inp);
        let expect_b = (out, cfg.r);
        if a.dims2()? != expect_a || b.dims2()? != expect_b {
            return Err(Error::Input(format!(
                "adapter '{name}' on {}: lora_A {:?} / lora_B {:?}, expected {expect_a:?} / {expect_b:?}",
                self.path,
                a.dims(),
                b.dims()
            )));
        }
        let dtype = self.weight.dtype();
        let weights = AdapterWeights {
            a: Var::from_tensor(&a.to_dtype(dtype)?)?,
            b: Var::from_tensor(&b.to_dtype(dtype)?)?,
            scale: cfg.scale(),
            dropout: cfg.lora_dropout,
            trainable,
        };
        self.adapters.insert(name.to_string(), weights);
        Ok(())
    }

    /// Fresh adapter as PEFT initialises it: A Kaiming-uniform (a = √5), B zero, so the
    /// adapted layer starts equal to the base.
    pub fn init_adapter(&mut self, name: &str, cfg: &LoraConfig, seed: u64) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
        let bound = (1.0 / inp as f64).sqrt(); // kaiming_uniform(a=sqrt(5)) on fan_in
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ hash_str(&self.path));
        let vals: Vec<f32> = (0..cfg.r * inp)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let dev = self.weight.device();
        let a = Tensor::from_vec(vals, (cfg.r, inp), dev)?;
        let b = Tensor::zeros((out, cfg.r), DType::F32, dev)?;
        self.insert_adapter(name, a, b, cfg, true)
    }

    /// Does this layer carry adapter `name`?
    pub fn has_adapter(&self, name: &str) -> bool {
        self.adapters.contains_key(name)
    }

    /// Freeze or unfreeze adapter `name` here.
    pub fn set_trainable(&mut self, name: &str, trainable: bool) {
        if let Some(a) = self.adapters.get_mut(name) {
            a.trainable = trainable;
        }
    }

    /// `(A, B)` variables of adapter `name`, if present.
    pub fn adapter_vars(&self, name: &str) -> Option<(&Var, &Var)> {
        self.adapters.get(name).map(|a| (&a.a, &a.b))
    }

    /// Fold adapter `name` into the base weight and drop it.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        if let Some(ad) = self.adapters.remove(name) {
            let delta =
                ad.b.as_tensor()
                    .matmul(ad.a.as_tensor())?
                    .affine(ad.scale, 0.0)?;
            self.weight = (&self.weight + delta.to_dtype(self.weight.dtype())?)?.detach();
        }
        Ok(())
    }

    /// Drop adapter `name` without merging.
    pub fn remove_adapter(&mut self, name: &str) {
        self.adapters.remove(name);
    }
}

/// x (..., in) as (rows, in), and x's dims.
fn rows(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let in_dim = *dims
        .last()
        .ok_or_else(|| Error::Input("linear input has no dims".into()))?;
    Ok((x.reshape((x.elem_count() / in_dim, in_dim))?, dims))
}

/// FNV-1a: a stable per-module salt for dropout seeds.
fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn layer() -> LoraLinear {
        let w = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        LoraLinear::new("model.layers.0.self_attn.q_proj".into(), w, None)
    }

    #[test]
    fn fresh_adapter_is_identity_and_merge_matches_unmerged() {
        let mut l = layer();
        let cfg = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            ..Default::default()
        };
        l.init_adapter("p", &cfg, 7).unwrap();
        let x = Tensor::new(&[[1f32, -2.0, 0.5, 3.0]], &Device::Cpu).unwrap();
        let base = l.forward(&x, &ForwardCtx::default()).unwrap();
        let fresh = l.forward(&x, &ForwardCtx::with_adapter("p")).unwrap();
        assert_eq!(
            base.to_vec2::<f32>().unwrap(),
            fresh.to_vec2::<f32>().unwrap()
        );
        // hand-set A, B: delta = 2 * x·Aᵀ·Bᵀ
        let a = Tensor::new(&[[1f32, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &Device::Cpu).unwrap();
        l.insert_adapter("h", a, b, &cfg, true).unwrap();
        let y = l
            .forward(&x, &ForwardCtx::with_adapter("h"))
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let base = base.to_vec2::<f32>().unwrap();
        let expect = [base[0][0] + 2.0, base[0][1] - 4.0, base[0][2] - 2.0];
        for (g, e) in y[0].iter().zip(expect) {
            assert!((g - e).abs() < 1e-5, "{y:?} vs {expect:?}");
        }
        l.merge_adapter("h").unwrap();
        let merged = l
            .forward(&x, &ForwardCtx::default())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(merged, y);
        assert!(!l.has_adapter("h"));
    }

    #[test]
    fn a_frozen_adapter_gives_what_a_trainable_one_gives() {
        // Decode-sized rows (the skinny kernel's shape when the CPU has one) and a prefill-sized
        // input under autograd: the frozen adapter's products go through `frozen_linear`, the
        // trainable one's through candle's matmul; values and the input gradient agree.
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.2, (48, 64), &dev).unwrap();
        let (a, b) = (
            Tensor::randn(0f32, 0.2, (8, 64), &dev).unwrap(),
            Tensor::randn(0f32, 0.2, (48, 8), &dev).unwrap(),
        );
        let cfg = LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            ..Default::default()
        };
        let mut l = LoraLinear::new("q".into(), w, None);
        l.insert_adapter("frozen", a.clone(), b.clone(), &cfg, false)
            .unwrap();
        l.insert_adapter("trained", a, b, &cfg, true).unwrap();
        let close = |x: &Tensor, y: &Tensor| {
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap()
        };
        for rows in [3, 40] {
            let x =
                candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, 64), &dev).unwrap())
                    .unwrap();
            let run = |name: &str, track: bool| {
                let input = if track {
                    x.as_tensor().clone()
                } else {
                    x.as_tensor().detach()
                };
                l.forward(&input, &ForwardCtx::with_adapter(name)).unwrap()
            };
            let (f, t) = (run("frozen", false), run("trained", false));
            assert!(close(&f, &t) < 1e-5, "{rows} rows: {}", close(&f, &t));
            let gf = run("frozen", true).sum_all().unwrap().backward().unwrap();
            let gt = run("trained", true).sum_all().unwrap().backward().unwrap();
            let (gf, gt) = (gf.get(&x).unwrap(), gt.get(&x).unwrap());
            assert!(close(gf, gt) < 1e-5, "{rows} rows: grad {}", close(gf, gt));
        }
    }

    #[test]
    fn dropout_is_seeded_and_inverted() {
        let x = Tensor::ones((1000,), DType::F32, &Device::Cpu).unwrap();
        let a = dropout(&x, 0.25, 3).unwrap().to_vec1::<f32>().unwrap();
        let b = dropout(&x, 0.25, 3).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let zeros = a.iter().filter(|v| **v == 0.0).count();
        assert!((180..320).contains(&zeros), "{zeros}");
        assert!(a.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let bad = LoraConfig {
            target_modules: vec!["qkv".into()],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("qkv"));
        assert!(LoraConfig {
            r: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(LoraConfig::default().validate().is_ok());
    }
}
