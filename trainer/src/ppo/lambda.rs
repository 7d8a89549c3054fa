//! λ calibration for `lambda = "auto"` (D7): a percentile of the label RM's scores on held-out
//! gold responses. Its own module because PPO and the on-policy diagnostics both calibrate λ.

use std::path::Path;

use anyhow::bail;
use rllr_core::dataset::read_examples;
use rllr_core::task::TaskSpec;

use super::math;
use super::rollout::Rollout;
use super::scorer::rm_scores;
use super::RM_LABEL;
use crate::stage::{self, Loaded};

/// How `lambda = "auto"` is calibrated (D7); PPO and the on-policy diagnostics share it.
pub struct LambdaSpec<'a> {
    /// Held-out examples whose gold responses (human rationale + gold label) are scored.
    pub data: &'a Path,
    /// Score at most this many examples (0: all).
    pub limit: usize,
    /// The percentile (0–100) of the scores that becomes λ.
    pub percentile: f64,
    /// Token cap of prompt + response (proportional cut, docs/method.md §2.3).
    pub cutoff: usize,
}

/// λ for `--lambda auto` (D7): the percentile of the label RM's scores (adapter and head
/// [`RM_LABEL`]) on the gold (correct-label, human-rationale) responses of held-out examples.
pub fn calibrate_lambda(
    loaded: &Loaded,
    task: &TaskSpec,
    spec: &LambdaSpec,
) -> anyhow::Result<(f64, String)> {
    let path = spec.data;
    let mut examples = read_examples(path, task)?;
    if spec.limit > 0 {
        examples.truncate(spec.limit);
    }
    let mut seqs = Vec::new();
    for ex in &examples {
        let Some(resp) = stage::gold_response(task, ex, true)? else {
            continue;
        };
        let prompt = stage::encode(
            &loaded.tokenizer,
            &stage::prompt_text(task, &loaded.template, &ex.input, None)?,
        )?;
        let r = stage::response_ids(&loaded.tokenizer, &loaded.template, &loaded.eos, &resp)?;
        let (s, t) = stage::proportional_cut(prompt.len(), r.len(), spec.cutoff);
        seqs.push(Rollout {
            item: 0,
            query: prompt[..s].to_vec(),
            response: r[..t.max(1).min(r.len())].to_vec(),
            text: String::new(),
        });
    }
    if seqs.is_empty() {
        bail!(
            "{}: no example with a gold rationale for --lambda auto",
            path.display()
        );
    }
    let refs: Vec<&Rollout> = seqs.iter().collect();
    let scores = rm_scores(&loaded.model, loaded.pad, &refs, RM_LABEL, None, 8)?;
    let lambda = math::percentile(&scores, spec.percentile).expect("non-empty");
    let source = format!(
        "auto: p{} of the label RM's scores on {} gold responses of {} (min {:.3}, median {:.3}, max {:.3})",
        spec.percentile,
        scores.len(),
        path.display(),
        math::percentile(&scores, 0.0).unwrap_or(f64::NAN),
        math::percentile(&scores, 50.0).unwrap_or(f64::NAN),
        math::percentile(&scores, 100.0).unwrap_or(f64::NAN),
    );
    Ok((lambda, source))
}
