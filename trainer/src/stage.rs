//! What every stage does before its loop: open and check the starting checkpoint, load its
//! tokenizer and chat template, and turn task examples and pairs into token ids the same way for
//! training and for evaluation (prompt = chat template around `TaskSpec::query`, response =
//! `rationale\nAnswer: label` + the template's end + EOS, proportional truncation of docs/method.md §2.3).

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use rllr_core::checkpoint::Checkpoint;
use rllr_core::dataset::{Example, Pair};
use rllr_core::device::{parse_device, parse_dtype};
use rllr_core::task::{TaskInput, TaskSpec};
use rllr_core::template::ChatTemplate;
use rllr_core::Llama;
use tokenizers::Tokenizer;

/// Pick the chat template: explicit name (`jinja` = the checkpoint's own), else the manifest's,
/// else the tokenizer config's jinja template, else plain ([`ChatTemplate::resolve`]).
pub fn resolve_template(name: &str, ckpt: &Checkpoint) -> anyhow::Result<ChatTemplate> {
    let manifest = ckpt
        .manifest
        .as_ref()
        .and_then(|m| m.chat_template.as_ref());
    let origin = ckpt.dir.join("tokenizer_config.json");
    Ok(ChatTemplate::resolve(
        name,
        manifest,
        ckpt.tokenizer_config()?.as_ref(),
        &origin.display().to_string(),
    )?)
}

/// A loaded starting point: model, tokenizer, template, special ids.
pub struct Loaded {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub eos: Vec<u32>,
    pub pad: u32,
}

/// Open `dir` as the starting checkpoint and check it before anything is trained: it exists, its
/// tokenizer fits its vocabulary, it has an EOS id, and (when it was trained for a task) it was
/// trained for `task`.
pub fn open_checkpoint(
    dir: &Path,
    what: &str,
    task: Option<&TaskSpec>,
) -> anyhow::Result<Checkpoint> {
    if !dir.is_dir() {
        bail!("{what} {}: no such checkpoint directory", dir.display());
    }
    let ckpt =
        Checkpoint::open(dir).with_context(|| format!("opening {what} {}", dir.display()))?;
    if ckpt.config.eos_ids().is_empty() {
        bail!("{what} {}: config.json has no eos_token_id", dir.display());
    }
    if let (Some(task), Some(m)) = (task, &ckpt.manifest) {
        if let Some(t) = m.task.as_deref().filter(|t| *t != task.name) {
            bail!(
                "{what} {} was trained for task '{t}', not '{}'",
                dir.display(),
                task.name
            );
        }
    }
    Ok(ckpt)
}

/// Load the model and tokenizer of an opened checkpoint.
pub fn load(ckpt: Checkpoint, template: &str, device: &str, dtype: &str) -> anyhow::Result<Loaded> {
    let device: Device = parse_device(device)?;
    let dtype: DType = parse_dtype(dtype)?;
    let tokenizer = ckpt.load_tokenizer()?;
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > ckpt.config.vocab_size {
        bail!(
            "{}: tokenizer has {tok_vocab} tokens but the model only {} (mismatched checkpoint)",
            ckpt.dir.display(),
            ckpt.config.vocab_size
        );
    }
    let template = resolve_template(template, &ckpt)?;
    let model = ckpt.load_model(dtype, &device)?;
    let eos = ckpt.config.eos_ids();
    let pad = ckpt.config.pad_token_id.unwrap_or(eos[0]);
    Ok(Loaded {
        model,
        tokenizer,
        template,
        eos,
        pad,
    })
}

/// Token ids of `text` (no special tokens added; the template writes its own).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> anyhow::Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
        .get_ids()
        .to_vec())
}

/// The generation prompt for one input: template around the task query (plus an optional hint).
pub fn prompt_text(
    task: &TaskSpec,
    template: &ChatTemplate,
    input: &TaskInput,
    hint: Option<&str>,
) -> anyhow::Result<String> {
    let mut q = task.query(input)?;
    if let Some(h) = hint {
        q.push_str("\n\n");
        q.push_str(h);
    }
    Ok(template.try_render_prompt(None, &q)?)
}

/// Response ids: `text` + the template's reply end, then EOS unless the end already is EOS.
pub fn response_ids(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    eos: &[u32],
    text: &str,
) -> anyhow::Result<Vec<u32>> {
    let mut ids = encode(tokenizer, &format!("{text}{}", template.response_end()))?;
    if ids.last().is_none_or(|l| !eos.contains(l)) {
        ids.push(eos[0]);
    }
    Ok(ids)
}

/// Cut (prompt, response) to at most `cutoff` tokens in proportion to their lengths (docs/method.md
/// §2.3): `max_src = ⌊cutoff·src/(src+tgt)⌋`, `max_tgt = ⌊cutoff·tgt/(src+tgt)⌋`, both cut on the
/// right. `tgt_len` is the length the proportion is computed with (the longer response for pairs).
pub fn proportional_cut(src: usize, tgt_len: usize, cutoff: usize) -> (usize, usize) {
    if src + tgt_len <= cutoff {
        return (src, tgt_len);
    }
    let total = (src + tgt_len) as f64;
    let max_src = (cutoff as f64 * src as f64 / total).floor() as usize;
    let max_tgt = (cutoff as f64 * tgt_len as f64 / total).floor() as usize;
    (max_src, max_tgt)
}

/// The gold response of an example: a rationale for its gold label (a human one first) and the
/// answer line, or the answer line alone. `None` when rationales are asked for and there is none.
pub fn gold_response(
    task: &TaskSpec,
    ex: &Example,
    rationales: bool,
) -> anyhow::Result<Option<String>> {
    let display = task.labels[task.label_index(&ex.label)?]
        .display()
        .to_string();
    let fmt = task.response_format();
    if !rationales {
        return Ok(Some(fmt.render("", &display)));
    }
    let Some(list) = ex.rationales.get(&ex.label) else {
        return Ok(None);
    };
    let pick = list.iter().find(|r| r.source == "human").or(list.first());
    Ok(pick.map(|r| fmt.render(&r.text, &display)))
}

/// Check pairs against the task before training: right task, labels in the label set, non-empty.
pub fn check_pairs(pairs: &[Pair], task: &TaskSpec, path: &Path) -> anyhow::Result<()> {
    if pairs.is_empty() {
        bail!("{}: no pairs", path.display());
    }
    for (i, p) in pairs.iter().enumerate() {
        if p.task != task.name {
            bail!(
                "{}: record {}: pair '{}' is for task '{}', expected '{}'",
                path.display(),
                i + 1,
                p.id,
                p.task,
                task.name
            );
        }
        // An on-policy label pair may reject an unparseable sample: rejected_label "" (no label).
        let unlabelled =
            p.kind == rllr_core::dataset::PairKind::Label && p.rejected_label.is_empty();
        task.label_index(&p.chosen_label)
            .and_then(|_| match unlabelled {
                true => Ok(0),
                false => task.label_index(&p.rejected_label),
            })
            .with_context(|| format!("{}: record {}", path.display(), i + 1))?;
        if p.chosen.trim().is_empty() || p.rejected.trim().is_empty() {
            bail!("{}: record {}: empty response", path.display(), i + 1);
        }
    }
    Ok(())
}

/// Write a stage's `report.json` (atomically) into `out` and print its one-line summary.
pub fn finish(
    stage: &str,
    artefact: &str,
    out: &Path,
    report: &crate::train::train_loop::LoopReport,
) -> anyhow::Result<()> {
    rllr_core::fsutil::write_file_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    println!(
        "{stage}: {} steps in {:.1}s, final loss {:.4}; {artefact} at {}; evals {}",
        report.steps,
        report.wall_s,
        report.final_loss.unwrap_or(f64::NAN),
        out.join("model").display(),
        serde_json::to_string(&report.evals.last())?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_cut_follows_the_reference() {
        assert_eq!(proportional_cut(10, 5, 20), (10, 5));
        // 30 + 10 > 20: max_src = ⌊20·30/40⌋ = 15, max_tgt = ⌊20·10/40⌋ = 5
        assert_eq!(proportional_cut(30, 10, 20), (15, 5));
        assert_eq!(proportional_cut(7, 7, 9), (4, 4));
    }

    #[test]
    fn check_pairs_lets_only_a_label_pair_reject_an_unlabelled_answer() {
        let task = crate::train::testutil::toy_task();
        let pair = |kind: &str, rejected_label: &str| -> Pair {
            serde_json::from_value(serde_json::json!({
                "id": "p", "task": "toy", "kind": kind, "input": "x", "chosen": "c\nAnswer: hot",
                "rejected": "no answer", "chosen_label": "hot", "rejected_label": rejected_label
            }))
            .unwrap()
        };
        let path = Path::new("pairs.jsonl");
        assert!(check_pairs(&[pair("label", "")], &task, path).is_ok());
        assert!(check_pairs(&[pair("rationale", "")], &task, path).is_err());
        assert!(check_pairs(&[pair("label", "warm")], &task, path).is_err());
    }
}
