//! The components of a decoder layer: RMSNorm, attention with rotary positions and an optional
//! KV cache, the SwiGLU MLP, and the layer that chains them. [`super::Llama`] stacks them.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::kv_cache::KvCache;
use crate::lora::{ForwardCtx, LoraLinear};
use crate::ops;
use crate::rope;
use crate::{Config, Result};

/// Root-mean-square layer norm, computed in f32 as transformers does.
pub struct RmsNorm {
    pub(super) weight: Tensor,
    pub(super) eps: f64,
}

impl RmsNorm {
    pub(super) fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    /// `w · x / sqrt(mean(x²) + eps)`, differentiable.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

pub(super) fn linear(
    vb: &VarBuilder,
    name: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<LoraLinear> {
    let sub = vb.pp(name);
    let w = sub.get((out, inp), "weight")?;
    let b = if bias {
        Some(sub.get(out, "bias")?)
    } else {
        None
    };
    Ok(LoraLinear::new(sub.prefix(), w, b))
}

pub(super) struct Attention {
    pub(super) q_proj: LoraLinear,
    pub(super) k_proj: LoraLinear,
    pub(super) v_proj: LoraLinear,
    pub(super) o_proj: LoraLinear,
    pub(super) n_heads: usize,
    pub(super) n_kv: usize,
    pub(super) head_dim: usize,
}

impl Attention {
    pub(super) fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, hd, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: linear(&vb, "q_proj", nh * hd, h, bias)?,
            k_proj: linear(&vb, "k_proj", nkv * hd, h, bias)?,
            v_proj: linear(&vb, "v_proj", nkv * hd, h, bias)?,
            o_proj: linear(&vb, "o_proj", h, nh * hd, bias)?,
            n_heads: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    /// x (B, L, H); cos/sin (B, 1, L, D); bias (B, 1, 1, L, T) with T = cached + L.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
        cache: Option<(&mut KvCache, usize)>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        // (B, L, heads·D) → (B, L, heads, D): a view; RoPE writes the (B, heads, L, D) layout.
        let split = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim));
        let [q, k, v] =
            LoraLinear::forward_many([&self.q_proj, &self.k_proj, &self.v_proj], x, ctx)?;
        let q = rope::apply_heads(&split(q, self.n_heads)?, cos, sin)?;
        let mut k = rope::apply_heads(&split(k, self.n_kv)?, cos, sin)?;
        let mut v = split(v, self.n_kv)?.transpose(1, 2)?.contiguous()?;
        if let Some((cache, layer)) = cache {
            (k, v) = cache.append(layer, &k, &v)?;
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // (B, H, L, D) → (B, L, H·D); for a decode step (L = 1) that is a free reshape.
        let out = ops::attention(&q, &k, &v, bias, scale)?
            .transpose(1, 2)?
            .reshape((b, l, self.n_heads * self.head_dim))?;
        self.o_proj.forward(&out, ctx)
    }
}

pub(super) struct Mlp {
    pub(super) gate_proj: LoraLinear,
    pub(super) up_proj: LoraLinear,
    pub(super) down_proj: LoraLinear,
}

impl Mlp {
    pub(super) fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: linear(&vb, "gate_proj", i, h, bias)?,
            up_proj: linear(&vb, "up_proj", i, h, bias)?,
            down_proj: linear(&vb, "down_proj", h, i, bias)?,
        })
    }

    /// SwiGLU: `down(silu(gate(x)) · up(x))`.
    pub(super) fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let [gate, up] = LoraLinear::forward_many([&self.gate_proj, &self.up_proj], x, ctx)?;
        let h = ops::swiglu(&gate, &up)?;
        self.down_proj.forward(&h, ctx)
    }
}

pub(super) struct DecoderLayer {
    pub(super) input_layernorm: RmsNorm,
    pub(super) self_attn: Attention,
    pub(super) post_attention_layernorm: RmsNorm,
    pub(super) mlp: Mlp,
}

impl DecoderLayer {
    pub(super) fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), h, eps)?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(vb.pp("post_attention_layernorm"), h, eps)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    pub(super) fn linears_mut(&mut self) -> [&mut LoraLinear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }

    pub(super) fn linears(&self) -> [&LoraLinear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        RmsNorm::forward(self, xs).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}
