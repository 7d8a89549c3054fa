//! Tests of the samplers: greedy, temperature / top-k / top-p, seeds and stop criteria.

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
