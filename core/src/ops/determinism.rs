//! Row determinism of the fused kernels: a row's (or a sequence's) output, and its input gradient,
//! must be bit-identical whatever batch it is computed in — alone, among 2, 4 or 7 other random
//! rows, behind left or right padding — and whatever the rayon thread count (the kernels switch
//! to row-parallel above `PAR_MIN` elements). Then the same question one level up, on a tiny
//! random [`Llama`]: a sequence alone vs inside padded batches, and KV-cache decoding vs prefill,
//! for the fused and the composite path.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use rand::{Rng, SeedableRng};

use super::MASKED;
use super::{cross_entropy, rms_norm, rope, softmax, swiglu};
use crate::batch::{Batch, PaddingSide};
use crate::kv_cache::KvCache;
use crate::lora::ForwardCtx;
use crate::model::Llama;
use crate::Config;

/// Row width: odd, and 8 rows of it cross `PAR_MIN` (row-parallel) while 1 and 3 do not.
const W: usize = 4099;
/// Batch sizes the target row is embedded in.
const SIZES: [usize; 3] = [1, 3, 8];

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

/// `target` (1, ...) at row `n / 2` of an (n, ...) batch whose other rows are random.
fn embed(target: &Tensor, n: usize, seed: u64) -> Tensor {
    let at = n / 2;
    let mut shape = target.dims().to_vec();
    let rows: Vec<Tensor> = (0..n)
        .map(|i| {
            if i == at {
                return target.clone();
            }
            shape[0] = 1;
            rand(&shape, seed * 31 + i as u64)
        })
        .collect();
    Tensor::cat(&rows, 0).unwrap()
}

fn pools() -> Vec<rayon::ThreadPool> {
    [1, 2, 3]
        .map(|t| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
        })
        .into()
}

/// Forward value of `f` and the gradient of Σ y·r with respect to its first input.
fn value_and_grad(
    f: &(dyn Fn(&[Tensor]) -> Tensor + Sync),
    inputs: &[Tensor],
    r: &Tensor,
) -> [Tensor; 2] {
    let x = Var::from_tensor(&inputs[0]).unwrap();
    let mut all = vec![x.as_tensor().clone()];
    all.extend_from_slice(&inputs[1..]);
    let y = f(&all);
    let grads = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(&x).unwrap().clone();
    [y, dx]
}

/// Assert that row `n / 2` of `f` over batched inputs (forward and input gradient) is
/// bit-identical to `f` over the (1, ...) `targets` alone, for every batch size and thread count.
/// `shared` inputs (weights) are passed unbatched after the batched ones; `out` is the (1, ...)
/// shape of one row of the output.
fn assert_row_stable(
    name: &str,
    f: &(dyn Fn(&[Tensor]) -> Tensor + Sync),
    targets: &[Tensor],
    shared: &[Tensor],
    out: &[usize],
) {
    let r = rand(out, 77);
    let run = |n: usize| -> [Tensor; 2] {
        let mut inputs: Vec<Tensor> = (0..targets.len())
            .map(|i| embed(&targets[i], n, 10 + i as u64))
            .collect();
        inputs.extend_from_slice(shared);
        let [y, dx] = value_and_grad(f, &inputs, &embed(&r, n, 9));
        [y.i(n / 2).unwrap(), dx.i(n / 2).unwrap()]
    };
    let alone = run(1).map(|t| bits(&t));
    for pool in pools() {
        for n in SIZES {
            let got = pool.install(|| run(n)).map(|t| bits(&t));
            let threads = pool.current_num_threads();
            assert!(
                got[0] == alone[0],
                "{name}: forward, batch {n}, {threads} threads"
            );
            assert!(
                got[1] == alone[1],
                "{name}: backward, batch {n}, {threads} threads"
            );
        }
    }
}

#[test]
fn rms_norm_is_row_deterministic() {
    let f = |t: &[Tensor]| rms_norm::fused(&t[0], &t[1], 1e-5).unwrap();
    assert_row_stable(
        "rms_norm",
        &f,
        &[rand(&[1, W], 1)],
        &[rand(&[W], 2)],
        &[1, W],
    );
}

#[test]
fn swiglu_is_row_deterministic() {
    let f = |t: &[Tensor]| swiglu::fused(&t[0], &t[1]).unwrap();
    let targets = [rand(&[1, W], 3), rand(&[1, W], 4)];
    assert_row_stable("swiglu", &f, &targets, &[], &[1, W]);
}

#[test]
fn rope_is_row_deterministic() {
    // One sequence of 11 tokens, 7 heads of 64: (1, L, H, D) → (1, H, L, D).
    let (l, h, d) = (11, 7, 64);
    let f = |t: &[Tensor]| rope::fused(&t[0], &t[1], &t[2]).unwrap();
    let targets = [
        rand(&[1, l, h, d], 5),
        rand(&[1, l, d], 6),
        rand(&[1, l, d], 7),
    ];
    assert_row_stable("rope", &f, &targets, &[], &[1, h, l, d]);
}

#[test]
fn masked_softmax_is_row_deterministic() {
    // One sequence's scores over 4 head groups × 9 queries × 523 keys, causal bias.
    let (g, l, t) = (4, 9, 523);
    let bias: Vec<f32> = (0..l * t)
        .map(|i| if i % t <= t - l + i / t { 0.0 } else { MASKED })
        .collect();
    let bias = Tensor::from_vec(bias, (1, l, t), &Device::Cpu).unwrap();
    let f = |x: &[Tensor]| softmax::fused(&x[0], &x[1], 0.125).unwrap();
    let targets = [rand(&[1, g, l, t], 8), bias];
    assert_row_stable("masked_softmax", &f, &targets, &[], &[1, g, l, t]);
}

#[test]
fn masked_softmax_ignores_padding_keys() {
    // The same sequence with `pad` masked keys in front of (left) or behind (right) its own:
    // identical probabilities on the real keys, exact zeros on the pads, forward and backward.
    let (g, l, t) = (3, 5, 37);
    let scores = rand(&[1, g, l, t], 20);
    let alone = value_and_grad(
        &|x: &[Tensor]| softmax::fused(&x[0], &x[1], 0.3).unwrap(),
        &[
            scores.clone(),
            Tensor::zeros((1, l, t), DType::F32, &Device::Cpu).unwrap(),
        ],
        &rand(&[1, g, l, t], 21),
    );
    for (pad, left) in [(1, true), (6, false), (13, true)] {
        let noise = rand(&[1, g, l, pad], 22);
        let cat = |a: &Tensor, b: &Tensor| {
            let parts = if left { [b, a] } else { [a, b] };
            Tensor::cat(&parts, 3).unwrap()
        };
        let masked = Tensor::full(MASKED, (1, l, pad), &Device::Cpu).unwrap();
        let zeros = Tensor::zeros((1, l, t), DType::F32, &Device::Cpu).unwrap();
        let bias = if left {
            Tensor::cat(&[&masked, &zeros], 2)
        } else {
            Tensor::cat(&[&zeros, &masked], 2)
        }
        .unwrap();
        let r = cat(&rand(&[1, g, l, t], 21), &noise);
        let [y, dx] = value_and_grad(
            &|x: &[Tensor]| softmax::fused(&x[0], &x[1], 0.3).unwrap(),
            &[cat(&scores, &noise), bias],
            &r,
        );
        let real = |x: &Tensor| x.narrow(3, if left { pad } else { 0 }, t).unwrap();
        let pads = |x: &Tensor| x.narrow(3, if left { 0 } else { t }, pad).unwrap();
        assert!(bits(&real(&y)) == bits(&alone[0]), "forward, pad {pad}");
        assert!(bits(&real(&dx)) == bits(&alone[1]), "backward, pad {pad}");
        assert!(bits(&pads(&y)).iter().all(|b| *b == 0), "pads get 0");
    }
}

#[test]
fn masked_cross_entropy_is_row_and_thread_deterministic() {
    let (n, v) = (400, 97); // 400 rows of 97 cross PAR_MIN
    let logits = rand(&[n, v], 30);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97) % v as u32).collect();
    let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
    let mask: Vec<f32> = (0..n).map(|i| (i % 3 != 1) as u8 as f32).collect();
    let mask = Tensor::new(mask.as_slice(), &Device::Cpu).unwrap();
    let ce = |x: &[Tensor]| cross_entropy::fused(&x[0], &x[1], &x[2]).unwrap();
    let run = |rows: usize| {
        let x = [0, 1, 2].map(|i| [&logits, &targets, &mask][i].narrow(0, 0, rows).unwrap());
        let one = Tensor::new(1f32, &Device::Cpu).unwrap();
        value_and_grad(&ce, &x, &one).map(|t| bits(&t))
    };
    // The whole batch: the same loss and gradient bits on 1, 2 or 3 threads.
    let reference = run(n);
    for pool in pools() {
        let threads = pool.current_num_threads();
        assert!(pool.install(|| run(n)) == reference, "{threads} threads");
    }
    // One row's gradient does not depend on the rows after it (with the same masked count).
    let alone = |rows: usize, row: usize| {
        let m: Vec<f32> = (0..rows).map(|i| (i == row) as u8 as f32).collect();
        let m = Tensor::new(m.as_slice(), &Device::Cpu).unwrap();
        let x = [
            logits.narrow(0, 0, rows).unwrap(),
            targets.narrow(0, 0, rows).unwrap(),
            m,
        ];
        let one = Tensor::new(1f32, &Device::Cpu).unwrap();
        let [y, dx] = value_and_grad(&ce, &x, &one);
        [bits(&y), bits(&dx.i(row).unwrap())]
    };
    for rows in [3, 8, n] {
        assert!(alone(rows, 2) == alone(3, 2), "row 2 in a batch of {rows}");
    }
}

// ---- the model ------------------------------------------------------------------------------

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
    super::with_fused(fused_on, || {
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
    let [lf, gf] = super::with_fused(true, || {
        value_and_grad(&fused_path, std::slice::from_ref(&h), &one)
    });
    let [lc, gc] = super::with_fused(false, || {
        value_and_grad(&composite, std::slice::from_ref(&h), &one)
    });
    let d = |a: &Tensor, b: &Tensor| crate::numerics::max_abs_diff(a, b).unwrap();
    assert!(d(&lf, &lc) <= 1e-5, "loss {lf} vs {lc}");
    assert!(d(&gf, &gc) <= 1e-6, "grad max |Δ| {}", d(&gf, &gc));
    // Without a gradient it is the same loss, bit for bit.
    let plain = super::with_fused(true, || {
        model.lm_cross_entropy(&h, &targets, &mask).unwrap()
    });
    assert_eq!(bits(&plain), bits(&lf));
}
