//! Next-token sampling and stop criteria for the decode loop.
//!
//! PPO rollouts (docs/method.md §5.4.1: T 1.0, top-k 50, top-p 1.0), greedy evaluation (§7) and the
//! server all pick tokens here, so a seed reproduces a rollout and the log-probabilities PPO stores
//! are computed one way.
//!
//! Order of operations follows Hugging Face `generate`: temperature → top-k → top-p → sample from the
//! softmax of what is left. Temperature 0 means greedy (first index of the maximum, as
//! `torch.argmax`).
//!
//! Robustness conventions (HF's `InfNanRemoveLogitsProcessor` scrubs non-finite logits; ours are):
//! - a NaN logit is treated as `-inf` (never chosen while any other token is possible);
//! - a `+inf` logit is treated as `f32::MAX`;
//! - if every logit is `-inf`/NaN, `sample` returns token 0 and [`log_softmax`] is uniform
//!   (`-ln n`), the limit of equal logits; an empty slice samples token 0 with log-prob `-inf`.
//!
//! Arithmetic is in `f64` so `logit / temperature` cannot overflow for any valid temperature.

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 ⇒ greedy.
    pub temperature: f32,
    /// Keep only the `k` highest logits (`None` or 0 ⇒ no limit).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of top tokens whose mass reaches `p` (`None` ⇒ no limit).
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed of the sampler's RNG.
    #[serde(default)]
    pub seed: u64,
}

impl SamplingParams {
    /// Greedy decoding (evaluation, §7).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    /// Check the limits: temperature finite and ≥ 0, top_p in (0, 1], top_k ≥ 1.
    pub fn validate(&self) -> Result<()> {
        let t = self.temperature;
        let t_ok = t.is_finite() && t >= 0.0;
        if !t_ok {
            return Err(Error::Input(format!(
                "temperature must be finite and >= 0, got {t}"
            )));
        }
        if let Some(p) = self.top_p {
            let p_ok = p > 0.0 && p <= 1.0;
            if !p_ok {
                return Err(Error::Input(format!("top_p must be in (0, 1], got {p}")));
            }
        }
        if self.top_k == Some(0) {
            return Err(Error::Input("top_k must be >= 1, got 0".to_string()));
        }
        Ok(())
    }
}

/// A seeded sampler; the same params and logits give the same tokens.
///
/// `new` does not validate (call [`SamplingParams::validate`] at the edge). Out-of-range values never
/// panic: a temperature that is not `> 0` (including NaN) means greedy, `top_k == 0` means no limit,
/// `top_p <= 0` keeps only the top token and `top_p >= 1` keeps all.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose RNG is seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token id.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let t = self.params.temperature;
        if t.is_nan() || t <= 0.0 {
            return argmax(logits);
        }
        let mut cands: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, clean(l)))
            .filter(|&(_, l)| l > f64::NEG_INFINITY)
            .map(|(i, l)| (i, l / f64::from(t)))
            .collect();
        if cands.is_empty() {
            return 0;
        }
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            top_k(&mut cands, k);
        }
        if let Some(p) = self.params.top_p {
            top_p(&mut cands, f64::from(p));
        }
        self.draw(&cands)
    }

    /// The next token id and its log-probability under the *unmodified* `softmax(logits)` (before
    /// temperature, top-k and top-p), which is what PPO stores.
    pub fn sample_with_logprob(&mut self, logits: &[f32]) -> (u32, f32) {
        let token = self.sample(logits);
        let lp = match logits.get(token as usize) {
            Some(&l) => log_prob(clean(l), logsumexp(logits), logits.len()),
            None => f32::NEG_INFINITY,
        };
        (token, lp)
    }

    /// Sample one candidate in proportion to `exp(logit)`.
    fn draw(&mut self, cands: &[(u32, f64)]) -> u32 {
        let max = cands
            .iter()
            .map(|&(_, l)| l)
            .fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = cands.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let u = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        for (&(id, _), w) in cands.iter().zip(&weights) {
            acc += w;
            if u < acc {
                return id;
            }
        }
        cands.last().map_or(0, |&(id, _)| id)
    }
}

/// NaN → -inf, +inf → f32::MAX, as f64.
fn clean(l: f32) -> f64 {
    if l.is_nan() {
        f64::NEG_INFINITY
    } else if l == f32::INFINITY {
        f64::from(f32::MAX)
    } else {
        f64::from(l)
    }
}

/// First index of the maximum (NaN counts as -inf); 0 for an empty or all -inf slice.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0u32, f64::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        let l = clean(l);
        if l > best.1 {
            best = (i as u32, l);
        }
    }
    best.0
}

/// Ordering for "better" candidates: higher logit first, then lower index.
fn better(a: &(u32, f64), b: &(u32, f64)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keep exactly the `k` best candidates (ties at the boundary go to the lower index, so `k = 1` is
/// greedy; HF keeps every token tied with the k-th value, which differs only on exact ties).
fn top_k(cands: &mut Vec<(u32, f64)>, k: usize) {
    if k < cands.len() {
        cands.select_nth_unstable_by(k - 1, better);
        cands.truncate(k);
    }
}

/// HF `TopPLogitsWarper`: sort ascending, `cumsum(softmax)`, remove tokens whose cumulative
/// probability is `<= 1 - p`, always keeping the best token. Equivalently, keep a token when the
/// mass of the tokens ranked above it is `< p`: the smallest top set with mass `>= p`.
fn top_p(cands: &mut Vec<(u32, f64)>, p: f64) {
    cands.sort_unstable_by(better);
    let max = cands.first().map_or(0.0, |c| c.1);
    let weights: Vec<f64> = cands.iter().map(|&(_, l)| (l - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let threshold = 1.0 - p;
    let mut cum = 0.0;
    let mut removed = 0;
    // Ascending order = the sorted list from the back; never remove the best (index 0).
    for w in weights[1..].iter().rev() {
        cum += w / total;
        if cum <= threshold {
            removed += 1;
        } else {
            break;
        }
    }
    cands.truncate(cands.len() - removed);
}

/// `log(sum(exp(l)))` over cleaned logits; `-inf` when all are `-inf`.
fn logsumexp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .map(|&l| clean(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| (clean(l) - max).exp()).sum();
    max + sum.ln()
}

/// `l - lse`, or the uniform `-ln n` when every logit is `-inf`.
fn log_prob(l: f64, lse: f64, n: usize) -> f32 {
    if lse == f64::NEG_INFINITY {
        -(n as f64).ln() as f32
    } else {
        (l - lse) as f32
    }
}

/// Log-softmax with this module's NaN/inf conventions (see the module docs).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = logsumexp(logits);
    logits
        .iter()
        .map(|&l| log_prob(clean(l), lse, logits.len()))
        .collect()
}

/// Why generation stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// The last token was an EOS id.
    Eos,
    /// The decoded text contains this stop string.
    StopString(String),
    /// `max_new_tokens` were generated.
    Length,
}

/// When to stop a sequence: checked after each new token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopCriteria {
    /// Token ids that end generation (EOS and e.g. `<|im_end|>`).
    pub eos_ids: Vec<u32>,
    /// Strings that end generation when they appear in the decoded text (empty ones are ignored).
    pub stop_strings: Vec<String>,
    /// Length limit on generated tokens.
    pub max_new_tokens: usize,
}

impl StopCriteria {
    /// Whether to stop after the latest token. Precedence: EOS (on the last id), then a stop string
    /// (the one that occurs earliest in `text`; ties go to the first listed), then length.
    ///
    /// `text` is the decoded generated text so far. The whole text is searched (it is short), so a
    /// stop string split across tokens, or one missed by a skipped call, is still found.
    pub fn check(&self, generated: &[u32], text: &str) -> Option<FinishReason> {
        if generated.last().is_some_and(|id| self.eos_ids.contains(id)) {
            return Some(FinishReason::Eos);
        }
        if let Some((_, stop)) = self.first_stop(text) {
            return Some(FinishReason::StopString(stop.to_string()));
        }
        if generated.len() >= self.max_new_tokens {
            return Some(FinishReason::Length);
        }
        None
    }

    /// `text` with the earliest stop string and everything after it removed.
    pub fn truncate_at_stop(&self, text: &str) -> String {
        match self.first_stop(text) {
            Some((at, _)) => text[..at].to_string(),
            None => text.to_string(),
        }
    }

    /// Byte position and value of the stop string that occurs earliest in `text`.
    fn first_stop(&self, text: &str) -> Option<(usize, &str)> {
        self.stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str())))
            .min_by_key(|&(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sampler(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        })
    }

    /// Empirical frequencies of `n` draws.
    fn frequencies(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        counts.into_iter().map(|c| c as f64 / n as f64).collect()
    }

    fn softmax(logits: &[f32]) -> Vec<f64> {
        log_softmax(logits)
            .into_iter()
            .map(|l| f64::from(l).exp())
            .collect()
    }

    #[test]
    fn greedy_is_first_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0]), 1);
        assert_eq!(s.sample(&[5.0, 5.0]), 0);
        assert_eq!(s.sample(&[f32::NAN, 1.0, f32::NAN]), 1);
        assert_eq!(s.sample(&[1.0, f32::INFINITY]), 1);
    }

    #[test]
    fn degenerate_logits_do_not_panic() {
        for t in [0.0, 1.0] {
            let mut s = sampler(t, Some(2), Some(0.9), 7);
            assert_eq!(s.sample(&[]), 0);
            assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::NAN]), 0);
            assert_eq!(s.sample_with_logprob(&[]), (0, f32::NEG_INFINITY));
            let (tok, lp) = s.sample_with_logprob(&[f32::NEG_INFINITY; 4]);
            assert_eq!(tok, 0);
            assert!((lp - -(4f32).ln()).abs() < 1e-6);
            assert_eq!(s.sample(&[f32::NEG_INFINITY, 3.0, f32::NAN]), 1);
        }
        let mut s = sampler(1e-30, None, None, 1);
        assert_eq!(s.sample(&[f32::MAX, -f32::MAX, 0.0]), 0);
        let mut s = sampler(f32::INFINITY, None, None, 1);
        assert!(s.sample(&[1.0, 2.0, f32::NEG_INFINITY]) < 2);
    }

    #[test]
    fn log_softmax_matches_hand_values() {
        // softmax([0, ln 3]) = [1/4, 3/4].
        let lp = log_softmax(&[0.0, 3f32.ln()]);
        assert!((lp[0] - 0.25f32.ln()).abs() < 1e-6, "{lp:?}");
        assert!((lp[1] - 0.75f32.ln()).abs() < 1e-6, "{lp:?}");
        // [1, 2, 3]: lse = 3 + ln(1 + e^-1 + e^-2) = 3.40760596.
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let expected = [-2.407_606, -1.407_606, -0.407_606];
        for (a, b) in lp.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{lp:?}");
        }
        // Shift invariance at large magnitudes, NaN as -inf.
        let lp = log_softmax(&[1000.0, 1000.0, f32::NAN]);
        assert!((lp[0] - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(lp[2], f32::NEG_INFINITY);
        assert!(log_softmax(&[]).is_empty());
    }

    #[test]
    fn logprob_is_under_unmodified_softmax() {
        let logits = [0.0, 3f32.ln()];
        let mut s = sampler(0.5, Some(1), None, 3);
        let (tok, lp) = s.sample_with_logprob(&logits);
        assert_eq!(tok, 1);
        assert!((lp - 0.75f32.ln()).abs() < 1e-6, "{lp}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let run = |seed| {
            let mut s = sampler(1.0, Some(20), Some(0.95), seed);
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn empirical_distribution_matches_softmax() {
        let logits = [0.5, 1.5, -0.3, 1.0];
        let freq = frequencies(&mut sampler(1.0, None, None, 11), &logits, 20_000);
        for (f, p) in freq.iter().zip(softmax(&logits)) {
            assert!((f - p).abs() < 0.015, "{freq:?} vs softmax");
        }
    }

    #[test]
    fn top_k_keeps_only_the_best_in_proportion() {
        let logits = [0.5, 1.5, -0.3, 1.0];
        let freq = frequencies(&mut sampler(1.0, Some(2), None, 5), &logits, 20_000);
        assert_eq!((freq[0], freq[2]), (0.0, 0.0), "{freq:?}");
        let p1 = 1.0 / (1.0 + (-0.5f64).exp()); // softmax over logits 1.5 and 1.0
        assert!((freq[1] - p1).abs() < 0.015, "{freq:?}");
        assert!((freq[3] - (1.0 - p1)).abs() < 0.015, "{freq:?}");
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [0.0, 1.0];
        let cold = frequencies(&mut sampler(0.5, None, None, 1), &logits, 20_000);
        let hot = frequencies(&mut sampler(2.0, None, None, 1), &logits, 20_000);
        let p = |t: f64| 1.0 / (1.0 + (-1.0 / t).exp());
        assert!((cold[1] - p(0.5)).abs() < 0.015, "{cold:?}");
        assert!((hot[1] - p(2.0)).abs() < 0.015, "{hot:?}");
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        // probabilities 0.5, 0.3, 0.15, 0.05 (shuffled order); thresholds avoid exact boundaries.
        let logits: Vec<f32> = [0.15f32, 0.5, 0.05, 0.3].iter().map(|p| p.ln()).collect();
        let kept = |p: f32| {
            let mut cands: Vec<(u32, f64)> = logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, f64::from(l)))
                .collect();
            top_p(&mut cands, f64::from(p));
            let mut ids: Vec<u32> = cands.into_iter().map(|c| c.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(kept(0.3), vec![1]);
        assert_eq!(kept(0.45), vec![1]);
        assert_eq!(kept(0.55), vec![1, 3]);
        assert_eq!(kept(0.75), vec![1, 3]);
        assert_eq!(kept(0.85), vec![0, 1, 3]);
        assert_eq!(kept(0.99), vec![0, 1, 2, 3]);
        assert_eq!(kept(1.0), vec![0, 1, 2, 3]);
        assert_eq!(kept(1e-9), vec![1]);
        assert_eq!(kept(0.0), vec![1], "always keeps one");
        // Sampling with top-p 0.75 draws tokens 1 and 3 in proportion 0.5 : 0.3.
        let freq = frequencies(&mut sampler(1.0, None, Some(0.75), 9), &logits, 20_000);
        assert_eq!((freq[0], freq[2]), (0.0, 0.0), "{freq:?}");
        assert!((freq[1] - 0.625).abs() < 0.015, "{freq:?}");
    }

    #[test]
    fn validate_names_field_and_limit() {
        assert!(SamplingParams::greedy().validate().is_ok());
        let ok = SamplingParams {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(1.0),
            seed: 1,
        };
        assert!(ok.validate().is_ok());
        let bad = [
            (
                SamplingParams {
                    temperature: -0.1,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::INFINITY,
                    ..ok.clone()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: Some(0.0),
                    ..ok.clone()
                },
                "top_p must be in (0, 1]",
            ),
            (
                SamplingParams {
                    top_p: Some(1.5),
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: Some(f32::NAN),
                    ..ok.clone()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_k: Some(0),
                    ..ok.clone()
                },
                "top_k must be >= 1",
            ),
        ];
        for (p, needle) in bad {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn params_deserialize_with_defaults() {
        let p: SamplingParams = serde_json::from_str(r#"{"temperature": 1.0}"#).unwrap();
        assert_eq!(
            p,
            SamplingParams {
                temperature: 1.0,
                top_k: None,
                top_p: None,
                seed: 0
            }
        );
    }

    #[test]
    fn stop_criteria_cases() {
        let stop = StopCriteria {
            eos_ids: vec![2, 0],
            stop_strings: vec!["<|im_end|>".into(), "\nUser:".into(), String::new()],
            max_new_tokens: 4,
        };
        assert_eq!(stop.check(&[], ""), None);
        assert_eq!(stop.check(&[5, 6], "Answer: x"), None);
        assert_eq!(stop.check(&[5, 2], "Answer: x"), Some(FinishReason::Eos));
        assert_eq!(
            stop.check(&[2, 5], "ab"),
            None,
            "only the last id is an EOS check"
        );
        assert_eq!(
            stop.check(&[5, 6], "Answer: x<|im_e"),
            None,
            "partial stop string does not stop"
        );
        assert_eq!(
            stop.check(&[5, 6, 7], "Answer: x<|im_end|>"),
            Some(FinishReason::StopString("<|im_end|>".into()))
        );
        assert_eq!(
            stop.check(&[5, 6, 7], "a\nUser: b<|im_end|>"),
            Some(FinishReason::StopString("\nUser:".into())),
            "earliest stop string wins"
        );
        assert_eq!(
            stop.check(&[5, 6, 7, 8], "abcd"),
            Some(FinishReason::Length)
        );
        assert_eq!(
            stop.check(&[5, 6, 7, 2], "abcd"),
            Some(FinishReason::Eos),
            "EOS beats length"
        );
        let none = StopCriteria {
            max_new_tokens: 0,
            ..StopCriteria::default()
        };
        assert_eq!(none.check(&[], ""), Some(FinishReason::Length));
    }

    #[test]
    fn truncate_at_stop_cuts_first_stop() {
        let stop = StopCriteria {
            eos_ids: vec![],
            stop_strings: vec!["<|im_end|>".into(), "<|im_start|>".into(), String::new()],
            max_new_tokens: 10,
        };
        assert_eq!(
            stop.truncate_at_stop("Answer: x<|im_start|>u<|im_end|>"),
            "Answer: x"
        );
        assert_eq!(stop.truncate_at_stop("Answer: x<|im_end|>\n"), "Answer: x");
        assert_eq!(stop.truncate_at_stop("no stop"), "no stop");
        assert_eq!(stop.truncate_at_stop(""), "");
    }

    proptest! {
        #[test]
        fn top_k_one_is_greedy(
            logits in prop::collection::vec(-50f32..50.0, 1..40),
            t in 0.01f32..10.0,
            p in prop::option::of(0.01f32..1.0),
            seed in any::<u64>(),
        ) {
            let mut s = sampler(t, Some(1), p, seed);
            prop_assert_eq!(s.sample(&logits), argmax(&logits));
        }

        #[test]
        fn sampled_token_is_in_range_and_finite_logprob(
            logits in prop::collection::vec(prop_oneof![any::<f32>(), -10f32..10.0], 1..30),
            t in prop_oneof![Just(0.0f32), 0.01f32..5.0],
            k in prop::option::of(0usize..10),
            p in prop::option::of(any::<f32>()),
            seed in any::<u64>(),
        ) {
            let mut s = sampler(t, k, p, seed);
            let (tok, lp) = s.sample_with_logprob(&logits);
            prop_assert!((tok as usize) < logits.len());
            prop_assert!(!lp.is_nan());
            prop_assert!(lp <= 1e-6);
            let any_finite = logits.iter().any(|l| !l.is_nan() && *l > f32::NEG_INFINITY);
            if any_finite {
                prop_assert!(logits[tok as usize] > f32::NEG_INFINITY, "picked an impossible token");
            }
        }
    }
}
