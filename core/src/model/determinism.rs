//! Row determinism one level up from the op kernels: on a tiny random [`Llama`], a sequence's
//! logits alone vs inside padded batches, and KV-cache decoding vs prefill, for the fused and the
//! composite path; and the chunked LM-head loss against logits then cross-entropy.

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::{Rng, SeedableRng};

use crate::batch::{Batch, PaddingSide};
use crate::kv_cache::KvCache;
use crate::lora::ForwardCtx;
use crate::model::Llama;
use crate::ops::{
    cross_entropy,
    test_util::{bits, embed, rand, value_and_grad},
    with_fused,
};
use crate::Config;

fn tiny() -> Llama {
    let cfg: Config = serde_json::from_str(
        r#"{"vocab_size":64,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true}"#,
    )
    .unwrap();
    Llama::random(&cfg, 5, DType::F32, &Device::Cpu).unwrap()
}

/// A prompt of `len` ids from `seed`.
fn prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(1..64)).collect()
}

/// Greedy next-token logits of `batch[at]`: prefill, then `steps` decode steps feeding the
/// argmax; the logits of every step, (steps + 1, vocab).
fn decode(model: &Llama, seqs: &[Vec<u32>], at: usize, steps: usize) -> Tensor {
    let batch = Batch::new(seqs, 0, PaddingSide::Left, &Device::Cpu).unwrap();
    let ctx = ForwardCtx::default();
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut logits = model.prefill(&batch, &mut cache, &ctx).unwrap();
    let mut out = vec![logits.i(at).unwrap()];
    for _ in 0..steps {
        let next: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        logits = model.decode_step(&next, &mut cache, &ctx).unwrap();
        out.push(logits.i(at).unwrap());
    }
    Tensor::stack(&out, 0).unwrap()
}

/// Which of (batch of 3, batch of 8, decode vs prefill) keep a sequence's logits bit-identical
/// to the sequence alone, and the largest |Δ| seen.
fn model_stability(fused_on: bool) -> ([bool; 3], f32) {
    with_fused(fused_on, || {
        let model = tiny();
        let target = prompt(7, 1);
        let others = |n: usize| -> Vec<Vec<u32>> {
            (0..n)
                .map(|i| {
                    if i == n / 2 {
                        target.clone()
                    } else {
                        prompt(3 + 2 * i, 100 + i as u64)
                    }
                })
                .collect()
        };
        let alone = decode(&model, std::slice::from_ref(&target), 0, 6);
        let mut same = [false; 3];
        let mut worst = 0f32;
        for (k, n) in [3, 8].into_iter().enumerate() {
            let got = decode(&model, &others(n), n / 2, 6);
            same[k] = bits(&got) == bits(&alone);
            worst = worst.max(crate::numerics::max_abs_diff(&got, &alone).unwrap());
        }
        // Decode vs prefill: the logits of step k of the decode equal a prefill of the prompt
        // plus the k tokens it chose.
        let mut seq = target.clone();
        let mut all = Vec::new();
        for k in 0..=6 {
            let l = decode(&model, &[seq.clone()], 0, 0).i(0).unwrap();
            seq.push(
                alone
                    .i(k)
                    .unwrap()
                    .argmax(0)
                    .unwrap()
                    .to_scalar::<u32>()
                    .unwrap(),
            );
            all.push(l);
        }
        let prefilled = Tensor::stack(&all, 0).unwrap();
        same[2] = bits(&prefilled) == bits(&alone);
        worst = worst.max(crate::numerics::max_abs_diff(&prefilled, &alone).unwrap());
        (same, worst)
    })
}

#[test]
fn model_logits_are_stable_across_batches_and_decode() {
    for fused_on in [true, false] {
        let (same, worst) = model_stability(fused_on);
        eprintln!("fused {fused_on}: bit-identical [batch 3, batch 8, decode vs prefill] = {same:?}, max |Δ| {worst:e}");
        assert!(worst <= 1e-5, "fused {fused_on}: max |Δ| {worst}");
    }
}

#[test]
fn matmul_rows_stay_close_across_batch_sizes() {
    // Not bit-identical: candle's gemm blocks differently with the row count (rows of batches of
    // 8 and more differ from the same row alone in the last bits), so no path through the model's
    // projections is row-deterministic; both the fused and the composite path inherit this.
    for (k, o) in [(32, 64), (576, 49)] {
        let w = rand(&[o, k], 40);
        let x = rand(&[1, k], 41);
        let alone = x.matmul(&w.t().unwrap()).unwrap();
        for n in [3, 8, 17] {
            let y = embed(&x, n, 42).matmul(&w.t().unwrap()).unwrap();
            let d = crate::numerics::max_abs_diff(&y.i(n / 2).unwrap(), &alone.i(0).unwrap());
            assert!(d.unwrap() <= 1e-4, "k {k}, batch {n}");
        }
    }
}

#[test]
fn lm_cross_entropy_matches_logits_then_cross_entropy() {
    // 600 rows (3 chunks, the last partial), some masked out; loss and d/dh against the composite
    // path (logits, then log-softmax cross-entropy), with a vocabulary large enough to go parallel.
    let model = tiny();
    let (n, hidden) = (600, model.config().hidden_size);
    let h = rand(&[2, n / 2, hidden], 50);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 37) % 64).collect();
    let targets = Tensor::from_vec(targets, (2, n / 2), &Device::Cpu).unwrap();
    let mask: Vec<f32> = (0..n).map(|i| (i % 5 != 3) as u8 as f32).collect();
    let mask = Tensor::from_vec(mask, (2, n / 2), &Device::Cpu).unwrap();
    let one = Tensor::new(2.5f32, &Device::Cpu).unwrap();
    let fused_path = |x: &[Tensor]| model.lm_cross_entropy(&x[0], &targets, &mask).unwrap();
    let composite = |x: &[Tensor]| {
        let logits = model.lm_logits(&x[0]).unwrap().reshape((n, 64)).unwrap();
        let t = targets.flatten_all().unwrap().unsqueeze(1).unwrap();
        cross_entropy::composite(&logits, &t, &mask.flatten_all().unwrap()).unwrap()
    };
    let [lf, gf] = with_fused(true, || {
        value_and_grad(&fused_path, std::slice::from_ref(&h), &one)
    });
    let [lc, gc] = with_fused(false, || {
        value_and_grad(&composite, std::slice::from_ref(&h), &one)
    });
    let d = |a: &Tensor, b: &Tensor| crate::numerics::max_abs_diff(a, b).unwrap();
    assert!(d(&lf, &lc) <= 1e-5, "loss {lf} vs {lc}");
    assert!(d(&gf, &gc) <= 1e-6, "grad max |Δ| {}", d(&gf, &gc));
    // Without a gradient it is the same loss, bit for bit.
    let plain = with_fused(true, || {
        model.lm_cross_entropy(&h, &targets, &mask).unwrap()
    });
    assert_eq!(bits(&plain), bits(&lf));
}
