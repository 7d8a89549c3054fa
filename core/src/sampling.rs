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
mod tests;
