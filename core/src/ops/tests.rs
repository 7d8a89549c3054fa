//! Gradient check: every fused kernel against its composite reference, forward and backward.

use candle_core::{Device, Var};
use rand::{Rng, SeedableRng};

use super::{attention, cross_entropy, dropout, frozen_linear, rms_norm, rope, softmax, swiglu};
use crate::skinny;
use candle_core::Tensor;

type Op<'a> = &'a dyn Fn(&[Tensor]) -> crate::Result<Tensor>;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
    d.max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Output of `f` at `inputs` and the gradients of Σ y·r (r fixed random) w.r.t. each input.
fn value_and_grads(f: Op, inputs: &[Tensor]) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let r = rand(y.dims(), 99);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
    (y, g)
}

fn check(name: &str, fused: Op, composite: Op, inputs: &[Tensor]) {
    let (yf, gf) = value_and_grads(fused, inputs);
    let (yc, gc) = value_and_grads(composite, inputs);
    assert_eq!(yf.dims(), yc.dims(), "{name}");
    let fwd = max_diff(&yf, &yc);
    assert!(fwd <= 1e-4, "{name} forward: max |Δ| {fwd}");
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        let bwd = max_diff(a, b);
        assert!(bwd <= 1e-4, "{name} grad of input {i}: max |Δ| {bwd}");
    }
}

#[test]
fn rms_norm_matches_composite() {
    let f = |t: &[Tensor]| Ok(rms_norm::fused(&t[0], &t[1], 1e-5)?);
    let c = |t: &[Tensor]| rms_norm::composite(&t[0], &t[1], 1e-5);
    check("rms_norm", &f, &c, &[rand(&[3, 5, 16], 1), rand(&[16], 2)]);
    // Large enough for the row-parallel branch.
    check(
        "rms_norm",
        &f,
        &c,
        &[rand(&[3, 40, 300], 12), rand(&[300], 13)],
    );
}

#[test]
fn rope_matches_composite() {
    let (cos, sin) = (rand(&[2, 1, 5, 8], 3), rand(&[2, 1, 5, 8], 4));
    let f = |t: &[Tensor]| rope::apply_heads(&t[0], &cos, &sin);
    let c = |t: &[Tensor]| {
        let x = t[0].transpose(1, 2)?.contiguous()?;
        rope::apply(&x, &cos, &sin)
    };
    check("rope", &f, &c, &[rand(&[2, 5, 3, 8], 5)]);
}

#[test]
fn masked_softmax_matches_composite() {
    let (b, g, l, t) = (2, 3, 4, 6);
    let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
    let valid = vec![vec![false, true, true, true, true, true]; b];
    let q: Vec<Vec<u32>> = vec![(2..6).collect(); b];
    let bias = attention::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap();
    let f = |x: &[Tensor]| Ok(softmax::fused(&x[0], &bias.reshape((b, l, t))?, 0.3)?);
    let c = |x: &[Tensor]| softmax::composite(&x[0], &bias.reshape((b, 1, l, t))?, 0.3);
    check("masked_softmax", &f, &c, &[rand(&[b, g, l, t], 6)]);
}

/// Grouped-query attention the unfused way: matmul, composite masked softmax, matmul.
/// q (B, KV, rep·L, D), k and v (B, KV, T, D), bias (B, 1, 1, L, T).
fn attention_composite(x: &[Tensor], bias: &Tensor, heads: usize) -> crate::Result<Tensor> {
    let (b, kv, rows, _) = x[0].dims4()?;
    let t = x[1].dim(2)?;
    let l = rows * kv / heads;
    let s = x[0].matmul(&x[1].t()?)?.reshape((b, heads, l, t))?;
    let p = softmax::composite(&s, &bias.reshape((b, 1, l, t))?, 0.3)?;
    Ok(p.reshape((b, kv, rows, t))?.matmul(&x[2])?)
}

/// Causal mask over a cache of t − l earlier slots, the first of each row padding.
fn cached_bias(b: usize, l: usize, t: usize) -> Tensor {
    let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
    let mut valid = vec![vec![true; t]; b];
    valid.iter_mut().for_each(|v| v[0] = false);
    let q: Vec<Vec<u32>> = vec![((t - l) as u32..t as u32).collect(); b];
    attention::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap()
}

#[test]
fn attention_matches_composite_forward_and_backward() {
    // 2 KV heads × 3 query heads each; without a cache (t = l) and with one (t > l).
    let (b, kv, rep, d) = (2, 2, 3, 8);
    for (l, t) in [(5, 5), (4, 7)] {
        let bias = cached_bias(b, l, t);
        let f = |x: &[Tensor]| {
            let bias = bias.reshape((b, l, t))?;
            Ok(attention::fused(&x[0], &x[1], &x[2], &bias, 0.3, kv * rep)?)
        };
        let c = |x: &[Tensor]| attention_composite(x, &bias, kv * rep);
        let inputs = [
            rand(&[b, kv, rep * l, d], 20 + l as u64),
            rand(&[b, kv, t, d], 21),
            rand(&[b, kv, t, d], 22),
        ];
        check(&format!("attention l {l} t {t}"), &f, &c, &inputs);
    }
}

#[test]
fn inference_attention_matches_composite_on_cache_views() {
    if skinny::tests::skip_without_avx512() {
        return;
    }
    let (b, kv, rep, d) = (3, 2, 3, 16);
    for (l, t) in [(1, 6), (4, 7)] {
        let bias = cached_bias(b, l, t);
        let q = rand(&[b, kv * rep, l, d], 30 + l as u64);
        // Keys and values as the KV cache holds them: the first t slots of a longer buffer.
        let k = rand(&[b, kv, t + 5, d], 31).narrow(2, 0, t).unwrap();
        let v = rand(&[b, kv, t + 5, d], 32).narrow(2, 0, t).unwrap();
        assert!(attention::infer_attention_fits(&q, &k, &v).unwrap());
        let got =
            attention::infer_attention(&q, &k, &v, &bias.reshape((b, l, t)).unwrap(), 0.3).unwrap();
        let qg = q.reshape((b, kv, rep * l, d)).unwrap();
        let want = attention_composite(&[qg, k.clone(), v.clone()], &bias, kv * rep)
            .unwrap()
            .reshape((b, kv * rep, l, d))
            .unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff <= 1e-5, "l {l} t {t}: max |Δ| {diff}");
    }
}

#[test]
fn dropout_matches_composite() {
    let f = |t: &[Tensor]| Ok(dropout::fused(&t[0], 0.3, 17)?);
    let c = |t: &[Tensor]| {
        let mask = dropout::dropout_mask(t[0].elem_count(), 0.3, 17);
        Ok(t[0].mul(&Tensor::from_vec(mask, t[0].shape(), &Device::Cpu)?)?)
    };
    check("dropout", &f, &c, &[rand(&[6, 40], 23)]);
}

#[test]
fn swiglu_matches_composite() {
    let f = |t: &[Tensor]| Ok(swiglu::fused(&t[0], &t[1])?);
    let c = |t: &[Tensor]| swiglu::composite(&t[0], &t[1]);
    check("swiglu", &f, &c, &[rand(&[4, 10], 7), rand(&[4, 10], 8)]);
}

#[test]
fn masked_cross_entropy_matches_composite() {
    let targets = Tensor::new(&[3u32, 0, 10, 5, 7, 1], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[1f32, 1.0, 0.0, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
    let f = |t: &[Tensor]| Ok(cross_entropy::fused(&t[0], &targets, &mask)?);
    let c = |t: &[Tensor]| cross_entropy::composite(&t[0], &targets.unsqueeze(1)?, &mask);
    check("cross_entropy", &f, &c, &[rand(&[6, 11], 9)]);
}

#[test]
fn frozen_linear_matches_matmul_and_leaves_the_weight_alone() {
    let w = rand(&[3, 7], 10);
    let f = |t: &[Tensor]| Ok(frozen_linear::frozen_linear(&t[0], &w)?);
    let c = |t: &[Tensor]| Ok(t[0].matmul(&w.t()?)?);
    check("frozen_linear", &f, &c, &[rand(&[5, 7], 11)]);
    // The forward is candle's matmul, bit for bit, for a contiguous and a transposed input.
    let a = Var::from_tensor(&rand(&[5, 7], 12)).unwrap();
    let b = Var::from_tensor(&rand(&[7, 5], 13)).unwrap();
    for x in [a.as_tensor().clone(), b.as_tensor().t().unwrap()] {
        let got = frozen_linear::frozen_linear(&x, &w).unwrap();
        let want = x.detach().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }
}
