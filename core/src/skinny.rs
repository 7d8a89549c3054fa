//! `x·Wᵀ` for a handful of rows of x: the matmuls of a decode step.
//!
//! A batched decode step multiplies one row per live sequence (M = 1…32) by every weight matrix of
//! the model. gemm's general path packs the weight into panels on every call, which at small M
//! costs more than the multiplication itself (a batch of 8 took 5× the time of a batch of 1). This
//! kernel streams each weight row once, straight from the row-major (out, in) layout the
//! checkpoint stores, and dots it with every row of x while that row block sits in L1: a 4 × 4
//! register tile of 16-lane AVX-512 accumulators, weight rows split across the rayon pool.
//!
//! Every output is the same sum in the same order whatever M is, so a row's result does not depend
//! on the batch it is computed in.
//!
//! Two instruction sets, chosen once at run time ([`isa`]): AVX-512F (16 lanes, 32 registers, a
//! 4 × 4 tile) and AVX2 + FMA (8 lanes, 16 registers, a 4 × 2 tile), which AMD Zen 2/3 and older
//! Intel servers have. `RLLR_ISA=avx2` forces the AVX2 kernels on an AVX-512 CPU (so both can be
//! measured on one machine) and `RLLR_ISA=generic` turns the kernels off. CPUs with neither (and M
//! above [`MAX_ROWS`]) keep gemm.
//!
//! The one module of the crate with `unsafe`: SIMD intrinsics behind a runtime feature check, and
//! tasks writing disjoint columns of one output buffer. Each block says why it is sound.
#![allow(unsafe_code)]

use std::sync::OnceLock;

use rayon::prelude::*;

/// The largest input this kernel takes: a decode batch. At 1, 8 and 32 rows it beat gemm 1.3–10×
/// on SmolLM2's projection shapes (weights in cache); larger inputs (prefills, training) keep gemm,
/// whose packing is amortised there.
pub(crate) const MAX_ROWS: usize = 32;

/// Rayon tasks per pool thread for one product.
const TASKS_PER_THREAD: usize = 4;

/// The instruction set the engine's own kernels (this module and the one-pass attention) use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F: 16-lane vectors, a 4 × 4 register tile.
    Avx512,
    /// AVX2 + FMA: 8-lane vectors, a 4 × 2 register tile.
    Avx2,
    /// No kernel of this module: gemm and candle's ops do the work.
    Generic,
}

impl Isa {
    /// The name `RLLR_ISA` takes and benches print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Generic => "generic",
        }
    }
}

/// The instruction set in use, chosen once: the best this CPU has, or what `RLLR_ISA` asks for
/// (`avx512`, `avx2`, `generic`; `auto` or unset = the best) when the CPU has it.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let asked = std::env::var("RLLR_ISA").ok();
        let (isa, warning) = choose(asked.as_deref(), &supported());
        if let Some(w) = warning {
            tracing::warn!("{w}");
            eprintln!("warning: {w}");
        }
        isa
    })
}

/// The kernels this CPU can run, best first (always ending with [`Isa::Generic`]).
pub(crate) fn supported() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(Isa::Avx2);
        }
    }
    v.push(Isa::Generic);
    v
}

/// The ISA for an `RLLR_ISA` value on a CPU that supports `have` (best first), and a warning
/// when the value is unknown or names a set the CPU lacks (then the best is used).
fn choose(asked: Option<&str>, have: &[Isa]) -> (Isa, Option<String>) {
    let best = have.first().copied().unwrap_or(Isa::Generic);
    let want = match asked.map(|s| s.trim().to_ascii_lowercase()) {
        None => return (best, None),
        Some(s) if s.is_empty() || s == "auto" => return (best, None),
        Some(s) => s,
    };
    let isa = match want.as_str() {
        "avx512" | "avx512f" | "avx-512" => Isa::Avx512,
        "avx2" | "fma" => Isa::Avx2,
        "generic" | "none" | "off" => Isa::Generic,
        other => {
            return (
                best,
                Some(format!(
                    "RLLR_ISA={other} is not one of auto, avx512, avx2, generic; using {}",
                    best.name()
                )),
            )
        }
    };
    if have.contains(&isa) {
        (isa, None)
    } else {
        (
            best,
            Some(format!(
                "RLLR_ISA={want}: this CPU lacks it; using {}",
                best.name()
            )),
        )
    }
}

/// Is a kernel of this module in use (see [`isa`]).
pub(crate) fn available() -> bool {
    isa() != Isa::Generic
}

/// `y = x·wᵀ` with x (m, k) and w (n, k) row-major; returns y (m, n) row-major.
///
/// Panics if the slices do not hold those shapes or if [`available`] is false.
pub(crate) fn matmul_t(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), n * k, "skinny: w is not ({n}, {k})");
    matmul_t_many(x, &[w], m, k)
        .pop()
        .expect("one weight, one output")
}

/// `x·wᵢᵀ` for several weights (n_i, k) at once, e.g. the q, k and v projections of a decode step:
/// one pool dispatch whose tasks cover the rows of all of them. Returns one (m, n_i) output each.
///
/// Panics if a slice is not a whole number of k-wide rows or if [`available`] is false.
pub(crate) fn matmul_t_many(x: &[f32], ws: &[&[f32]], m: usize, k: usize) -> Vec<Vec<f32>> {
    matmul_t_many_on(isa(), x, ws, m, k)
}

/// [`matmul_t_many`] with the kernels of `isa`, which this CPU must support.
fn matmul_t_many_on(isa: Isa, x: &[f32], ws: &[&[f32]], m: usize, k: usize) -> Vec<Vec<f32>> {
    assert_eq!(x.len(), m * k, "skinny: x is not ({m}, {k})");
    assert!(
        ws.iter().all(|w| w.len() % k == 0),
        "skinny: a weight is not (n, {k})"
    );
    let ns: Vec<usize> = ws.iter().map(|w| w.len() / k).collect();
    let mut ys: Vec<Vec<f32>> = ns.iter().map(|n| vec![0f32; m * n]).collect();
    let outs: Vec<OutPtr> = ys.iter_mut().map(|y| OutPtr(y.as_mut_ptr())).collect();
    // Four tasks per thread over all the rows, in whole 4-row tiles of one weight each.
    let total: usize = ns.iter().sum();
    let per_task = total
        .div_ceil(TASKS_PER_THREAD * rayon::current_num_threads())
        .next_multiple_of(4);
    let tasks: Vec<(usize, usize, usize)> = ns
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            (0..n)
                .step_by(per_task)
                .map(move |n0| (i, n0, (n0 + per_task).min(n)))
        })
        .collect();
    let run = |&(i, n0, n1): &(usize, usize, usize)| {
        // SAFETY: a task writes only columns n0..n1 of output i, which no other task touches,
        // and the outputs outlive the loop; `columns` checks the CPU has `isa`.
        unsafe { columns(isa, x, ws[i], outs[i], m, k, ns[i], n0, n1) }
    };
    if tasks.len() == 1 || m * total * k < (1 << 16) {
        tasks.iter().for_each(run);
    } else {
        tasks.par_iter().for_each(run);
    }
    ys
}

/// The output buffer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_t`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `x·wᵀ` on the calling thread (the caller parallelises over many small products, e.g. one per
/// KV head in a decode step's attention).
pub(crate) fn matmul_t_serial(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    matmul_t_serial_on(isa(), x, w, m, k, n)
}

fn matmul_t_serial_on(isa: Isa, x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "skinny: x is not ({m}, {k})");
    assert_eq!(w.len(), n * k, "skinny: w is not ({n}, {k})");
    let mut y = vec![0f32; m * n];
    // SAFETY: this call alone writes y, which outlives it; `columns` checks the CPU has `isa`.
    unsafe { columns(isa, x, w, OutPtr(y.as_mut_ptr()), m, k, n, 0, n) };
    y
}

/// Columns n0..n1 of y = x·wᵀ with the kernels of `isa`.
///
/// # Safety
/// `y` must point at an (m, n) buffer whose columns n0..n1 nobody else writes meanwhile, and x
/// and w must hold (m, k) and (n, k) (checked by the callers).
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    y: OutPtr,
    m: usize,
    k: usize,
    n: usize,
    n0: usize,
    n1: usize,
) {
    assert!(
        supported().contains(&isa) && isa != Isa::Generic,
        "skinny: {isa:?} kernels need a CPU with them"
    );
    match isa {
        // SAFETY: the CPU has the instruction set (asserted above); the caller owns the columns.
        Isa::Avx512 => unsafe { imp::columns(x, w, y, m, k, n, n0, n1) },
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::columns(x, w, y, m, k, n, n0, n1) },
        Isa::Generic => unreachable!("asserted above"),
    }
}

/// `out = p·v` for p (m, t) and v (t, d) row-major: the probability-weighted sum of value rows.
pub(crate) fn weighted_rows(p: &[f32], v: &[f32], m: usize, t: usize, d: usize, out: &mut [f32]) {
    weighted_rows_on(isa(), p, v, m, t, d, out)
}

fn weighted_rows_on(isa: Isa, p: &[f32], v: &[f32], m: usize, t: usize, d: usize, out: &mut [f32]) {
    assert_eq!(p.len(), m * t, "skinny: p is not ({m}, {t})");
    assert_eq!(v.len(), t * d, "skinny: v is not ({t}, {d})");
    assert_eq!(out.len(), m * d, "skinny: out is not ({m}, {d})");
    assert!(
        supported().contains(&isa) && isa != Isa::Generic,
        "skinny: {isa:?} kernels need a CPU with them"
    );
    match isa {
        // SAFETY: the CPU has AVX-512F (asserted above); the shapes were checked above.
        Isa::Avx512 => unsafe { imp::weighted_rows(p, v, m, t, d, out) },
        // SAFETY: the CPU has AVX2 and FMA; the shapes were checked above.
        Isa::Avx2 => unsafe { avx2::weighted_rows(p, v, m, t, d, out) },
        Isa::Generic => unreachable!("asserted above"),
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;

    use super::OutPtr;

    /// x rows per tile: 4 × 4 accumulators + 8 loaded vectors stay within the 32 vector
    /// registers (a 4 × 6 tile measured slower: it spills).
    const MB_MAX: usize = 4;

    /// How many weight tiles ahead the prefetches run.
    const PF_TILES: usize = 2;

    /// Columns n0..n1 of y = x·wᵀ, in 4 × 4 tiles (weight rows × x rows).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(
        x: &[f32],
        w: &[f32],
        y: OutPtr,
        m: usize,
        k: usize,
        n: usize,
        n0: usize,
        n1: usize,
    ) {
        let mut j = n0;
        while j < n1 {
            let nb = (n1 - j).min(4);
            let mut i = 0;
            while i < m {
                let mb = (m - i).min(MB_MAX);
                // The first x block of a weight tile prefetches the next tile's rows.
                let pf = i == 0 && j + PF_TILES * nb < n1;
                unsafe { tile_dispatch(nb, mb, pf, x, w, y, k, n, i, j) };
                i += mb;
            }
            j += nb;
        }
    }

    /// out (m, d) = p (m, t) · v (t, d), 64 output columns (four 16-lane accumulators) of one row
    /// at a time: a broadcast probability times value-row vectors, four independent FMA chains.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_rows(
        p: &[f32],
        v: &[f32],
        m: usize,
        t: usize,
        d: usize,
        out: &mut [f32],
    ) {
        let mask = |c: usize| -> __mmask16 {
            match d.saturating_sub(c) {
                0 => 0,
                n if n >= 16 => 0xffff,
                n => ((1u32 << n) - 1) as __mmask16,
            }
        };
        let mut c0 = 0;
        while c0 < d {
            let masks: [__mmask16; 4] = std::array::from_fn(|q| mask(c0 + 16 * q));
            for r in 0..m {
                let mut acc = [_mm512_setzero_ps(); 4];
                for j in 0..t {
                    let pj = _mm512_set1_ps(p[r * t + j]);
                    let row = v[j * d..].as_ptr();
                    for q in 0..4 {
                        // SAFETY: the mask keeps the load inside row j of v (a zero mask reads
                        // nothing).
                        let vj = unsafe {
                            _mm512_maskz_loadu_ps(masks[q], row.wrapping_add(c0 + 16 * q))
                        };
                        acc[q] = _mm512_fmadd_ps(pj, vj, acc[q]);
                    }
                }
                let dst = out[r * d..].as_mut_ptr();
                for q in 0..4 {
                    // SAFETY: the mask keeps the store inside row r of out.
                    unsafe {
                        _mm512_mask_storeu_ps(dst.wrapping_add(c0 + 16 * q), masks[q], acc[q])
                    };
                }
            }
            c0 += 64;
        }
    }

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_dispatch(
        nb: usize,
        mb: usize,
        pf: bool,
        x: &[f32],
        w: &[f32],
        y: OutPtr,
        k: usize,
        n: usize,
        i: usize,
        j: usize,
    ) {
        macro_rules! go {
            ($($nb:literal, $mb:literal);*) => {
                match (nb, mb) {
                    $(($nb, $mb) => unsafe { tile::<$nb, $mb>(pf, x, w, y, k, n, i, j) },)*
                    _ => unreachable!("tile sizes are 1..=4"),
                }
            };
        }
        go!(4, 4; 4, 3; 4, 2; 4, 1; 3, 4; 3, 3; 3, 2; 3, 1;
            2, 4; 2, 3; 2, 2; 2, 1; 1, 4; 1, 3; 1, 2; 1, 1);
    }

    /// y[i..i+MB, j..j+NB] = x[i..i+MB] · w[j..j+NB]ᵀ (prefetching the next NB weight rows when
    /// `pf`): NB·MB 16-lane accumulators over k, the tail
    /// (k % 16) through masked loads, then one horizontal sum each.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const NB: usize, const MB: usize>(
        pf: bool,
        x: &[f32],
        w: &[f32],
        y: OutPtr,
        k: usize,
        n: usize,
        i: usize,
        j: usize,
    ) {
        let wp: [*const f32; NB] = std::array::from_fn(|r| w[(j + r) * k..].as_ptr());
        let xp: [*const f32; MB] = std::array::from_fn(|c| x[(i + c) * k..].as_ptr());
        let mut acc = [[_mm512_setzero_ps(); MB]; NB];
        let full = k / 16 * 16;
        let mut p = 0;
        while p < full {
            if pf {
                // A hint (never faults): the same cache line of the next tile's rows, so DRAM
                // streams the weights while this tile computes.
                for row in wp {
                    _mm_prefetch::<_MM_HINT_T0>(
                        row.wrapping_add(PF_TILES * NB * k + p) as *const i8
                    );
                }
            }
            // SAFETY: p + 16 <= k, inside every row.
            let wv: [__m512; NB] =
                std::array::from_fn(|r| unsafe { _mm512_loadu_ps(wp[r].add(p)) });
            let xv: [__m512; MB] =
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(xp[c].add(p)) });
            for r in 0..NB {
                for c in 0..MB {
                    acc[r][c] = _mm512_fmadd_ps(wv[r], xv[c], acc[r][c]);
                }
            }
            p += 16;
        }
        if p < k {
            let mask: __mmask16 = (1u32 << (k - p)).wrapping_sub(1) as __mmask16;
            // SAFETY: the mask only reads the k - p elements left in each row.
            let wv: [__m512; NB] =
                std::array::from_fn(|r| unsafe { _mm512_maskz_loadu_ps(mask, wp[r].add(p)) });
            let xv: [__m512; MB] =
                std::array::from_fn(|c| unsafe { _mm512_maskz_loadu_ps(mask, xp[c].add(p)) });
            for r in 0..NB {
                for c in 0..MB {
                    acc[r][c] = _mm512_fmadd_ps(wv[r], xv[c], acc[r][c]);
                }
            }
        }
        let mut full = [[_mm512_setzero_ps(); 4]; 4];
        for r in 0..NB {
            full[r][..MB].copy_from_slice(&acc[r]);
        }
        // SAFETY: `__m512` and `[f32; 16]` are both 64 bytes and `__m512` is sixteen f32 lanes in
        // memory order (lane i at index i); every bit pattern is a valid f32, so the transmute is a
        // plain by-value reinterpretation (no alignment or validity requirement on the result).
        let sums: [f32; 16] = std::mem::transmute(reduce_4x4(&full));
        for c in 0..MB {
            for r in 0..NB {
                // SAFETY: (i + c, j + r) is inside y (m, n); this task owns column j + r.
                unsafe { *y.0.add((i + c) * n + j + r) = sums[4 * c + r] };
            }
        }
    }

    /// The 16 lane sums of a[r][c], as one vector with the sum of a[r][c] at 4c + r: a transposing
    /// add tree (about 30 shuffles and adds instead of 16 separate horizontal sums). Every sum
    /// adds its lanes in the same order whatever its position, so bits do not depend on the tile.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn reduce_4x4(a: &[[__m512; 4]; 4]) -> __m512 {
        // Level 1: pairs of accumulators; 256-bit halves added → [a', a'', b', b''] in 128-bit lanes.
        let flat: [__m512; 16] = std::array::from_fn(|i| a[i / 4][i % 4]);
        let l1: [__m512; 8] = std::array::from_fn(|i| {
            let (x, y) = (flat[2 * i], flat[2 * i + 1]);
            let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y);
            let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y);
            _mm512_add_ps(lo, hi)
        });
        // Level 2: four accumulators per vector, one 128-bit lane (4 partial sums) each.
        let l2: [__m512; 4] = std::array::from_fn(|i| {
            let (x, y) = (l1[2 * i], l1[2 * i + 1]);
            let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
            let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
            _mm512_add_ps(lo, hi)
        });
        // Level 3: within 128-bit lanes, interleave two vectors and add (4 → 2 sums per lane).
        let t0 = _mm512_add_ps(
            _mm512_unpacklo_ps(l2[0], l2[1]),
            _mm512_unpackhi_ps(l2[0], l2[1]),
        );
        let t1 = _mm512_add_ps(
            _mm512_unpacklo_ps(l2[2], l2[3]),
            _mm512_unpackhi_ps(l2[2], l2[3]),
        );
        // Level 4: 64-bit interleave and add: lane L, element e = total of accumulator 4e + L.
        let (p0, p1) = (_mm512_castps_pd(t0), _mm512_castps_pd(t1));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(p0, p1)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(p0, p1)),
        )
    }
}

/// The AVX2 + FMA kernels: the same loops as [`imp`] with 8-lane vectors. AVX2 has 16 vector
/// registers, so a tile is 4 weight rows × 2 x rows (8 accumulators + 6 loaded vectors); the k
/// tail (k % 8) is added after the horizontal sum, in the same order for every tile position.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::OutPtr;

    const MB_MAX: usize = 2;
    const PF_TILES: usize = 2;

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(
        x: &[f32],
        w: &[f32],
        y: OutPtr,
        m: usize,
        k: usize,
        n: usize,
        n0: usize,
        n1: usize,
    ) {
        let mut j = n0;
        while j < n1 {
            let nb = (n1 - j).min(4);
            let mut i = 0;
            while i < m {
                let mb = (m - i).min(MB_MAX);
                let pf = i == 0 && j + PF_TILES * nb < n1;
                macro_rules! go {
                    ($($nb:literal, $mb:literal);*) => {
                        match (nb, mb) {
                            $(($nb, $mb) => unsafe { tile::<$nb, $mb>(pf, x, w, y, k, n, i, j) },)*
                            _ => unreachable!("tile sizes are 1..=4 × 1..=2"),
                        }
                    };
                }
                go!(4, 2; 4, 1; 3, 2; 3, 1; 2, 2; 2, 1; 1, 2; 1, 1);
                i += mb;
            }
            j += nb;
        }
    }

    /// y[i..i+MB, j..j+NB] = x[i..i+MB] · w[j..j+NB]ᵀ.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const NB: usize, const MB: usize>(
        pf: bool,
        x: &[f32],
        w: &[f32],
        y: OutPtr,
        k: usize,
        n: usize,
        i: usize,
        j: usize,
    ) {
        let wp: [*const f32; NB] = std::array::from_fn(|r| w[(j + r) * k..].as_ptr());
        let xp: [*const f32; MB] = std::array::from_fn(|c| x[(i + c) * k..].as_ptr());
        let mut acc = [[_mm256_setzero_ps(); MB]; NB];
        let full = k / 8 * 8;
        let mut p = 0;
        while p < full {
            if pf && p % 16 == 0 {
                // A hint (never faults): the next tile's rows, one 64-byte line per two steps.
                for row in wp {
                    _mm_prefetch::<_MM_HINT_T0>(
                        row.wrapping_add(PF_TILES * NB * k + p) as *const i8
                    );
                }
            }
            // SAFETY: p + 8 <= k, inside every row.
            let wv: [__m256; NB] =
                std::array::from_fn(|r| unsafe { _mm256_loadu_ps(wp[r].add(p)) });
            let xv: [__m256; MB] =
                std::array::from_fn(|c| unsafe { _mm256_loadu_ps(xp[c].add(p)) });
            for r in 0..NB {
                for c in 0..MB {
                    acc[r][c] = _mm256_fmadd_ps(wv[r], xv[c], acc[r][c]);
                }
            }
            p += 8;
        }
        for c in 0..MB {
            for r in 0..NB {
                let mut s = hsum(acc[r][c]);
                for q in full..k {
                    // SAFETY: q < k, inside both rows.
                    s = unsafe { (*wp[r].add(q)).mul_add(*xp[c].add(q), s) };
                }
                // SAFETY: (i + c, j + r) is inside y (m, n); this task owns column j + r.
                unsafe { *y.0.add((i + c) * n + j + r) = s };
            }
        }
    }

    /// The sum of the 8 lanes, in a fixed order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
    }

    /// out (m, d) = p (m, t) · v (t, d): 32 columns (four 8-lane accumulators) of one row at a
    /// time; the last d % 8 columns in scalar FMA chains.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn weighted_rows(
        p: &[f32],
        v: &[f32],
        m: usize,
        t: usize,
        d: usize,
        out: &mut [f32],
    ) {
        let d8 = d / 8 * 8;
        let mut c0 = 0;
        while c0 < d8 {
            let nv = ((d8 - c0) / 8).min(4);
            for r in 0..m {
                let mut acc = [_mm256_setzero_ps(); 4];
                for j in 0..t {
                    let pj = _mm256_set1_ps(p[r * t + j]);
                    let row = v[j * d + c0..].as_ptr();
                    for (q, a) in acc.iter_mut().enumerate().take(nv) {
                        // SAFETY: c0 + 8q + 8 <= d8 <= d: inside row j of v.
                        let vj = unsafe { _mm256_loadu_ps(row.add(8 * q)) };
                        *a = _mm256_fmadd_ps(pj, vj, *a);
                    }
                }
                let dst = out[r * d + c0..].as_mut_ptr();
                for (q, a) in acc.iter().enumerate().take(nv) {
                    // SAFETY: c0 + 8q + 8 <= d: inside row r of out.
                    unsafe { _mm256_storeu_ps(dst.add(8 * q), *a) };
                }
            }
            c0 += 8 * nv;
        }
        for r in 0..m {
            for c in d8..d {
                let mut s = 0f32;
                for j in 0..t {
                    s = p[r * t + j].mul_add(v[j * d + c], s);
                }
                out[r * d + c] = s;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::OutPtr;

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns(
        _x: &[f32],
        _w: &[f32],
        _y: OutPtr,
        _m: usize,
        _k: usize,
        _n: usize,
        _n0: usize,
        _n1: usize,
    ) {
        unreachable!("skinny::available() is false off x86_64")
    }

    pub(super) unsafe fn weighted_rows(
        _p: &[f32],
        _v: &[f32],
        _m: usize,
        _t: usize,
        _d: usize,
        _out: &mut [f32],
    ) {
        unreachable!("skinny::available() is false off x86_64")
    }
}

#[cfg(not(target_arch = "x86_64"))]
use imp as avx2;

#[cfg(test)]
pub(crate) mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// True (and a note on stderr) when no kernel of this module is in use (see [`isa`]).
    pub(crate) fn skip_without_kernel() -> bool {
        if !available() {
            eprintln!("skipped: no AVX-512F or AVX2 kernel on this CPU (or RLLR_ISA=generic)");
        }
        !available()
    }

    /// Every kernel family this CPU runs (tests check each, not just the one [`isa`] picks).
    fn kernels() -> Vec<Isa> {
        let k: Vec<Isa> = supported()
            .into_iter()
            .filter(|i| *i != Isa::Generic)
            .collect();
        if k.is_empty() {
            eprintln!("skipped: no AVX-512F or AVX2 on this CPU");
        }
        k
    }

    fn matmul_t_on(isa: Isa, x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        assert_eq!(w.len(), n * k);
        matmul_t_many_on(isa, x, &[w], m, k).pop().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    /// f64 reference of x (m, k) · w (n, k)ᵀ.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
                y[i * n + j] = s as f32;
            }
        }
        y
    }

    #[test]
    fn matches_a_f64_reference_for_every_tile_and_tail_shape() {
        // Row counts 1..=9 hit every tile size; k with and without a 16- or 8-tail; n crossing
        // the per-task boundary and not a multiple of 4.
        for isa in kernels() {
            for (m, k, n) in [
                (1, 16, 4),
                (3, 7, 5),
                (5, 40, 131),
                (8, 576, 70),
                (9, 33, 200),
                (2, 12, 9),
            ] {
                for m in [1, m] {
                    let x = rand(m * k, 1 + m as u64);
                    let w = rand(n * k, 2 + k as u64);
                    let got = matmul_t_on(isa, &x, &w, m, k, n);
                    let diff = max_diff(&got, &reference(&x, &w, m, k, n));
                    assert!(diff <= 1e-4, "{isa:?} ({m}, {k}, {n}): max |Δ| {diff}");
                }
            }
        }
    }

    #[test]
    fn many_weights_match_one_at_a_time() {
        let (m, k) = (5, 48);
        let x = rand(m * k, 7);
        let ws: Vec<Vec<f32>> = [36, 12, 300]
            .iter()
            .map(|&n| rand(n * k, n as u64))
            .collect();
        let refs: Vec<&[f32]> = ws.iter().map(Vec::as_slice).collect();
        for isa in kernels() {
            let many = matmul_t_many_on(isa, &x, &refs, m, k);
            for (w, y) in ws.iter().zip(&many) {
                assert_eq!(*y, matmul_t_on(isa, &x, w, m, k, w.len() / k), "{isa:?}");
                assert_eq!(
                    *y,
                    matmul_t_serial_on(isa, &x, w, m, k, w.len() / k),
                    "{isa:?}"
                );
            }
        }
    }

    #[test]
    fn weighted_rows_matches_a_f64_reference() {
        for isa in kernels() {
            for (m, t, d) in [(1, 1, 16), (3, 5, 64), (2, 9, 40), (2, 4, 100), (1, 3, 5)] {
                let p = rand(m * t, 5);
                let v = rand(t * d, 6);
                let mut got = vec![0f32; m * d];
                weighted_rows_on(isa, &p, &v, m, t, d, &mut got);
                // p·v = p·(vᵀ)ᵀ: the f64 reference of the transposed product.
                let vt: Vec<f32> = (0..d * t).map(|i| v[(i % t) * d + i / t]).collect();
                let diff = max_diff(&got, &reference(&p, &vt, m, t, d));
                assert!(diff <= 1e-5, "{isa:?} ({m}, {t}, {d}): max |Δ| {diff}");
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_in_any_batch() {
        let (k, n) = (100, 300);
        let x = rand(7 * k, 3);
        let w = rand(n * k, 4);
        for isa in kernels() {
            let all = matmul_t_on(isa, &x, &w, 7, k, n);
            for i in 0..7 {
                let one = matmul_t_on(isa, &x[i * k..(i + 1) * k], &w, 1, k, n);
                assert_eq!(one, all[i * n..(i + 1) * n], "{isa:?} row {i}");
            }
        }
    }

    #[test]
    fn rllr_isa_picks_a_supported_set_or_warns() {
        let all = [Isa::Avx512, Isa::Avx2, Isa::Generic];
        let avx2_only = [Isa::Avx2, Isa::Generic];
        assert_eq!(choose(None, &all), (Isa::Avx512, None));
        assert_eq!(choose(Some("auto"), &avx2_only), (Isa::Avx2, None));
        assert_eq!(choose(Some("AVX2"), &all), (Isa::Avx2, None));
        assert_eq!(choose(Some("generic"), &all), (Isa::Generic, None));
        let (isa, w) = choose(Some("avx512"), &avx2_only);
        assert_eq!(isa, Isa::Avx2);
        assert!(w.unwrap().contains("lacks"));
        let (isa, w) = choose(Some("sse9"), &all);
        assert_eq!(isa, Isa::Avx512);
        assert!(w.unwrap().contains("sse9"));
    }
}
