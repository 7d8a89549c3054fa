//! Helpers the op tests share: seeded random tensors, max |Δ| (absolute, and relative for
//! half-precision results against their f32 reference), the gradient check of a fused
//! kernel against its composite reference, and the row-determinism check (a row's output and
//! input gradient bit-identical whatever batch and rayon thread count it runs under).

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use rand::{Rng, SeedableRng};

pub(crate) type Op<'a> = &'a dyn Fn(&[Tensor]) -> crate::Result<Tensor>;

pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| ([`crate::numerics::max_abs_diff`], unwrapped for tests).
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::numerics::max_abs_diff(a, b).unwrap()
}

/// max |a − b| relative to max |b|: how far a half-precision result `a` is from its f32
/// reference `b` (bf16 rounds at 2⁻⁹ relative, so a few roundings stay well under 1e-2).
pub(crate) fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_diff(a, b) / crate::numerics::max_abs(b).unwrap()
}

/// The dtypes the composites are checked in against f32.
pub(crate) const HALF: [DType; 2] = [DType::BF16, DType::F16];

/// `t` in `dtype`.
pub(crate) fn half(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

/// Output of `f` at `inputs` and the gradients of Σ y·r (r fixed random) w.r.t. each input.
pub(crate) fn value_and_grads(f: Op, inputs: &[Tensor]) -> (Tensor, Vec<Tensor>) {
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

pub(crate) fn check(name: &str, fused: Op, composite: Op, inputs: &[Tensor]) {
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

/// Row width: odd, and 8 rows of it cross `PAR_MIN` (row-parallel) while 1 and 3 do not.
pub(crate) const W: usize = 4099;

/// Batch sizes the target row is embedded in.
pub(crate) const SIZES: [usize; 3] = [1, 3, 8];

pub(crate) fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.into_iter().map(f32::to_bits).collect()
}

/// `target` (1, ...) at row `n / 2` of an (n, ...) batch whose other rows are random.
pub(crate) fn embed(target: &Tensor, n: usize, seed: u64) -> Tensor {
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

pub(crate) fn pools() -> Vec<rayon::ThreadPool> {
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
pub(crate) fn value_and_grad(
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
pub(crate) fn assert_row_stable(
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
