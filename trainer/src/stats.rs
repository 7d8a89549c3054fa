//! Statistics that say whether two methods really differ on the same examples, and how well a
//! score ranks right answers above wrong ones.
//!
//! Two policies evaluated on one test split are *paired*: each example is answered by both, so
//! their accuracies are correlated and an unpaired test (two independent proportions) overstates
//! the noise. Everything here works on the 2×2 table of the pairs, where only the discordant
//! counts matter:
//!
//! |            | B right | B wrong |
//! |------------|--------:|--------:|
//! | **A right** | a      | **b**   |
//! | **A wrong** | **c**  | d       |
//!
//! - accuracy difference Δ = (b − c)/n (= acc A − acc B);
//! - the Wald 95 % interval Δ ± z·√(((b+c) − (b−c)²/n)/n²), i.e. the sample variance of the
//!   per-example differences dᵢ ∈ {−1, 0, 1} divided by n (with the 1/n variance estimator);
//! - Newcombe's hybrid score interval (Newcombe 1998, "Improved confidence intervals for the
//!   difference between binomial proportions based on paired data", method 10, no continuity
//!   correction), which behaves at small n and near 0/1 where Wald does not;
//! - the exact McNemar test: under H₀ a discordant pair is equally likely to go either way, so
//!   the smaller of b, c is Bin(b+c, ½); two-sided p = min(1, 2·P[X ≤ min(b, c)]), 1 when b+c = 0.
//!   The binomial tail is summed in log space, so b+c in the millions neither under- nor
//!   overflows.
//!
//! [`auc`] is the ROC AUC of scores against boolean labels (Mann–Whitney U / (n₊·n₋), ties ½).
//!
//! Hand-written rather than a crate: the only special function needed is a binomial tail at
//! p = ½, which is a few lines of log-space arithmetic, while the statistics crates pull in a
//! linear-algebra stack that the 2-core build machine would compile for nothing.

use serde::Serialize;

/// z for a two-sided 95 % interval (Φ⁻¹(0.975)).
pub const Z95: f64 = 1.959_963_984_540_054;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatsError {
    #[error("the two correctness vectors differ in length ({0} vs {1})")]
    LengthMismatch(usize, usize),
    #[error("no examples to compare")]
    Empty,
}

/// Paired comparison of method A against method B on the same `n` examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Paired {
    pub n: usize,
    pub accuracy_a: f64,
    pub accuracy_b: f64,
    /// accuracy_a − accuracy_b.
    pub diff: f64,
    /// Wald 95 % interval of `diff` (paired variance).
    pub ci95_wald: (f64, f64),
    /// Newcombe's hybrid-score 95 % interval of `diff` (method 10).
    pub ci95_newcombe: (f64, f64),
    /// A right, B wrong.
    pub b: usize,
    /// A wrong, B right.
    pub c: usize,
    /// Exact two-sided McNemar p-value.
    pub p_mcnemar: f64,
}

/// Compare aligned correctness vectors: `a[i]` and `b[i]` are the two methods on example `i`.
pub fn paired(a: &[bool], b: &[bool]) -> Result<Paired, StatsError> {
    if a.len() != b.len() {
        return Err(StatsError::LengthMismatch(a.len(), b.len()));
    }
    let n = a.len();
    if n == 0 {
        return Err(StatsError::Empty);
    }
    let (mut both, mut only_a, mut only_b) = (0usize, 0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        match (x, y) {
            (true, true) => both += 1,
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            (false, false) => {}
        }
    }
    let nf = n as f64;
    let neither = n - both - only_a - only_b;
    Ok(Paired {
        n,
        accuracy_a: (both + only_a) as f64 / nf,
        accuracy_b: (both + only_b) as f64 / nf,
        diff: (only_a as f64 - only_b as f64) / nf,
        ci95_wald: wald_paired(only_a, only_b, n, Z95),
        ci95_newcombe: newcombe_paired([both, only_a, only_b, neither], Z95),
        b: only_a,
        c: only_b,
        p_mcnemar: mcnemar_exact(only_a, only_b),
    })
}

/// Wald interval Δ ± z·√(((b+c) − (b−c)²/n)/n²) for the paired difference Δ = (b−c)/n.
pub fn wald_paired(b: usize, c: usize, n: usize, z: f64) -> (f64, f64) {
    let (b, c, n) = (b as f64, c as f64, n as f64);
    let d = (b - c) / n;
    // max(0): rounding can take a zero variance (all pairs discordant one way) a hair below 0.
    let var = (((b + c) - (b - c).powi(2) / n) / (n * n)).max(0.0);
    let h = z * var.sqrt();
    (d - h, d + h)
}

/// Wilson score interval of the proportion x/n.
fn wilson(x: usize, n: usize, z: f64) -> (f64, f64) {
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Newcombe's method 10 for the paired difference, from the table `[a, b, c, d]` (a: both right,
/// b: only A right, c: only B right, d: neither): Wilson intervals (l₁, u₁) of p₁ = (a+b)/n and
/// (l₂, u₂) of p₂ = (a+c)/n, φ the table's correlation (0 when a margin is empty), then
/// Δ − √((p₁−l₁)² − 2φ(p₁−l₁)(u₂−p₂) + (u₂−p₂)²) and
/// Δ + √((u₁−p₁)² − 2φ(u₁−p₁)(p₂−l₂) + (p₂−l₂)²).
pub fn newcombe_paired(table: [usize; 4], z: f64) -> (f64, f64) {
    let [a, b, c, d] = table.map(|x| x as f64);
    let n = a + b + c + d;
    let (p1, p2) = ((a + b) / n, (a + c) / n);
    let (l1, u1) = wilson(table[0] + table[1], table.iter().sum(), z);
    let (l2, u2) = wilson(table[0] + table[2], table.iter().sum(), z);
    let margins = (a + b) * (c + d) * (a + c) * (b + d);
    let phi = if margins > 0.0 {
        (a * d - b * c) / margins.sqrt()
    } else {
        0.0
    };
    let root = |x: f64, y: f64| (x * x - 2.0 * phi * x * y + y * y).max(0.0).sqrt();
    let theta = p1 - p2;
    (
        theta - root(p1 - l1, u2 - p2),
        theta + root(u1 - p1, p2 - l2),
    )
}

/// Exact two-sided McNemar p-value for `b` and `c` discordant pairs.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    (2.0 * binom_half_cdf(n, b.min(c))).min(1.0)
}

/// P[X ≤ k] for X ~ Bin(n, ½), summed in log space: ln pmf(0) = −n ln 2 and
/// ln pmf(i+1) = ln pmf(i) + ln((n−i)/(i+1)), then a log-sum-exp around the largest term.
fn binom_half_cdf(n: usize, k: usize) -> f64 {
    if k >= n {
        return 1.0;
    }
    let mut logs = Vec::with_capacity(k + 1);
    let mut l = -(n as f64) * std::f64::consts::LN_2;
    logs.push(l);
    for i in 0..k {
        l += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        logs.push(l);
    }
    let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logs.iter().map(|x| (x - max).exp()).sum();
    (max + sum.ln()).exp().min(1.0)
}

/// ROC AUC of `scores` for telling `positive` examples from the others: the probability that a
/// random positive scores above a random negative, ties counting ½ (Mann–Whitney U / (n₊·n₋),
/// from mid-ranks). `None` when either class is empty, the lengths differ or a score is NaN.
// For the diagnostics stage (reward-model AUCs on M_sft's samples); only tests call it so far.
pub fn auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    if scores.len() != positive.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    // Sum of the positives' mid-ranks (1-based), one group of tied scores at a time.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mid_rank = (start + 1 + end) as f64 / 2.0;
        let pos_in_group = order[start..end].iter().filter(|&&i| positive[i]).count();
        rank_sum += mid_rank * pos_in_group as f64;
        start = end;
    }
    let (np, nn) = (n_pos as f64, n_neg as f64);
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(x: f64, y: f64, tol: f64) -> bool {
        (x - y).abs() <= tol
    }

    /// `both`×(T,T), `b`×(T,F), `c`×(F,T), `neither`×(F,F).
    fn vectors(both: usize, b: usize, c: usize, neither: usize) -> (Vec<bool>, Vec<bool>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for (n, p, q) in [
            (both, true, true),
            (b, true, false),
            (c, false, true),
            (neither, false, false),
        ] {
            x.extend(std::iter::repeat_n(p, n));
            y.extend(std::iter::repeat_n(q, n));
        }
        (x, y)
    }

    #[test]
    fn mcnemar_47_29_is_the_textbook_0_0504() {
        // 2·P[Bin(76, ½) ≤ 29] = 0.0504524102… (exact, from integer binomial sums)
        assert!(close(mcnemar_exact(47, 29), 0.050_452_410_247, 1e-10));
        assert_eq!(mcnemar_exact(47, 29), mcnemar_exact(29, 47));
    }

    #[test]
    fn mcnemar_tiny_cases_match_enumeration() {
        // n = 4, k = 1: (1 + 4)/16, doubled
        assert!(close(mcnemar_exact(3, 1), 10.0 / 16.0, 1e-12));
        // n = 12, k = 2: (1 + 12 + 66)/4096, doubled
        assert!(close(mcnemar_exact(10, 2), 158.0 / 4096.0, 1e-12));
        // n = 5, k = 0: 2/32
        assert!(close(mcnemar_exact(5, 0), 0.0625, 1e-12));
    }

    #[test]
    fn mcnemar_is_one_for_equal_or_no_discordant_pairs() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(1, 0), 1.0);
        assert_eq!(mcnemar_exact(7, 7), 1.0);
        assert_eq!(mcnemar_exact(2000, 2000), 1.0);
    }

    #[test]
    fn mcnemar_is_stable_for_thousands_of_discordant_pairs() {
        // exact integer sums: 2·P[Bin(2900, ½) ≤ 1400] and 2·P[Bin(5000, ½) ≤ 2400]
        assert!(close(mcnemar_exact(1500, 1400), 0.065_987_349_665, 1e-9));
        assert!(close(mcnemar_exact(2600, 2400), 0.004_883_649_738, 1e-10));
        // 2^-2000 underflows f64: only a log-space sum gets this one
        assert!(close(mcnemar_exact(1050, 950), 0.026_824_146_240, 1e-10));
        // a p far below f64's range rounds to 0 rather than NaN
        assert_eq!(mcnemar_exact(3000, 500), 0.0);
    }

    #[test]
    fn wald_interval_matches_the_paired_variance_formula() {
        // b = 47, c = 29, n = 200: Δ = 0.09, var = (76 − 18²/200)/200² = 0.0018595
        let (lo, hi) = wald_paired(47, 29, 200, Z95);
        assert!(close(lo, 0.005_482_589_503, 1e-10), "{lo}");
        assert!(close(hi, 0.174_517_410_497, 1e-10), "{hi}");
    }

    #[test]
    fn newcombe_matches_the_published_example() {
        // Newcombe (1998), table II, (36, 12, 2, 0): method 10 gives 0.0569 to 0.3404
        let (lo, hi) = newcombe_paired([36, 12, 2, 0], Z95);
        assert!(close(lo, 0.0569, 5e-5), "{lo}");
        assert!(close(hi, 0.3404, 5e-5), "{hi}");
    }

    #[test]
    fn paired_counts_discordant_pairs_and_accuracies() {
        let (a, b) = vectors(104, 47, 29, 20);
        let p = paired(&a, &b).unwrap();
        assert_eq!((p.n, p.b, p.c), (200, 47, 29));
        assert!(close(p.accuracy_a, 151.0 / 200.0, 1e-12));
        assert!(close(p.accuracy_b, 133.0 / 200.0, 1e-12));
        assert!(close(p.diff, 0.09, 1e-12));
        assert!(close(p.p_mcnemar, 0.050_452_410_247, 1e-10));
        assert!(close(p.ci95_wald.0, 0.005_482_589_503, 1e-10));
    }

    #[test]
    fn paired_refuses_mismatched_or_empty_input() {
        assert_eq!(
            paired(&[true], &[true, false]),
            Err(StatsError::LengthMismatch(1, 2))
        );
        assert_eq!(paired(&[], &[]), Err(StatsError::Empty));
    }

    #[test]
    fn auc_of_perfect_and_inverted_scores() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &labels), Some(1.0));
        assert_eq!(auc(&[0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
    }

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(auc(&[1.0, 1.0, 1.0], &[true, false, true]), Some(0.5));
        // pairs (pos, neg): (2 vs 1) win, (2 vs 2) tie, (3 vs 1) win, (3 vs 2) win → 3.5 / 4
        assert_eq!(
            auc(&[1.0, 2.0, 2.0, 3.0], &[false, false, true, true]),
            Some(0.875)
        );
    }

    #[test]
    fn auc_is_none_without_both_classes() {
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
        assert_eq!(auc(&[1.0, 2.0], &[false, false]), None);
        assert_eq!(auc(&[], &[]), None);
        assert_eq!(auc(&[f64::NAN, 1.0], &[true, false]), None);
    }
}
