//! Readers for the raw public datasets in `shared/data`, one function per task, each turning its
//! files into canonical [`Example`]s with canonical label names.
//!
//! Every quirk of the raw files is handled here and nowhere else: MR is Latin-1, MRPC has a BOM,
//! QQP has a malformed row, MNLI/SST-2/e-SNLI are tokenised text, AG News carries HTML entities,
//! STS-B is a 0–5 score (bucketed by [`stsb_bucket`]). Rows that cannot be read are skipped and
//! counted, never silently repaired into something else.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rllr_core::dataset::{Example, Rationale};
use rllr_core::task::TaskInput;

use super::split::normalize;
use super::DataError;

/// The bundled tasks, in the order the conversion writes them.
pub const TASKS: [&str; 10] = [
    "sst2", "mr", "ag_news", "mrpc", "stsb", "qqp", "mnli", "esnli", "cose", "comve",
];

/// What a reader produced: the examples, and how many raw rows it had to skip.
#[derive(Debug, Default)]
pub struct RawTask {
    pub examples: Vec<Example>,
    pub skipped: usize,
}

/// Read task `name` from the raw data root (`shared/data`).
pub fn read_task(raw: &Path, name: &str) -> Result<RawTask, DataError> {
    match name {
        "sst2" => sst2(raw),
        "mr" => mr(raw),
        "ag_news" => ag_news(raw),
        "mrpc" => mrpc(raw),
        "stsb" => stsb(raw),
        "qqp" => qqp(raw),
        "mnli" => mnli(raw),
        "esnli" => esnli(raw),
        "cose" => cose(raw),
        "comve" => comve(raw),
        other => Err(DataError::Invalid(format!(
            "no converter for task '{other}' (known: {})",
            TASKS.join(", ")
        ))),
    }
}

/// STS-B's 0–5 similarity score as a label: the annotation guideline's six grades paired up
/// (0–1 unrelated/same topic, 2–3 partly/roughly equivalent, 4–5 mostly/fully equivalent), i.e.
/// the score rounded to the nearest grade then halved: `< 1.5` low, `< 3.5` medium, else high.
pub fn stsb_bucket(score: f64) -> &'static str {
    if score < 1.5 {
        "low"
    } else if score < 3.5 {
        "medium"
    } else {
        "high"
    }
}

/// Undo the tokenisation of PTB-style text (`do n't`, `word ,`, `( x )`) so inputs read naturally.
pub fn detokenize(text: &str) -> String {
    const GLUE: [(&str, &str); 14] = [
        (" n't", "n't"),
        (" 's", "'s"),
        (" 're", "'re"),
        (" 've", "'ve"),
        (" 'm", "'m"),
        (" 'll", "'ll"),
        (" 'd", "'d"),
        (" ,", ","),
        (" .", "."),
        (" ;", ";"),
        (" :", ":"),
        (" ?", "?"),
        (" !", "!"),
        (" )", ")"),
    ];
    let mut s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for (from, to) in GLUE {
        s = s.replace(from, to);
    }
    s.replace("( ", "(")
}

/// AG News descriptions escape punctuation as (broken) HTML entities: `#39;`, `quot;`, `&lt;b&gt;`.
fn unescape_ag(text: &str) -> String {
    const ENTITIES: [(&str, &str); 11] = [
        (" #39;", "'"),
        ("#39;", "'"),
        ("#146;", "'"),
        ("#147;", "\""),
        ("#148;", "\""),
        ("#151;", "—"),
        ("#36;", "$"),
        ("#38;", "&"),
        ("quot;", "\""),
        ("&lt;", "<"),
        ("&gt;", ">"),
    ];
    let s = ENTITIES
        .iter()
        .fold(text.to_string(), |s, (from, to)| s.replace(from, to));
    s.replace("&amp;", "&")
        .replace('\\', " ")
        .trim()
        .to_string()
}

fn capitalize_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn read_utf8(path: &Path) -> Result<String, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(&text).to_string())
}

/// MR is Latin-1: every byte is the code point of the same value.
fn read_latin1(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    Ok(bytes.iter().map(|&b| b as char).collect())
}

/// Non-empty lines split on `\n` only, with their 1-based line numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
}

fn example(task: &str, id: String, input: TaskInput, label: &str) -> Example {
    Example {
        id,
        task: task.to_string(),
        input,
        label: label.to_string(),
        rationales: BTreeMap::new(),
    }
}

fn single(text: &str) -> TaskInput {
    TaskInput::Single(text.trim().to_string())
}

fn pair(a: &str, b: &str) -> TaskInput {
    TaskInput::Pair(a.trim().to_string(), b.trim().to_string())
}

fn binary(value: &str, zero: &'static str, one: &'static str) -> Option<&'static str> {
    match value.trim() {
        "0" => Some(zero),
        "1" => Some(one),
        _ => None,
    }
}

/// Read TSV rows (`\t`-split, no quoting: a `"` is text) and map each through `row` with its
/// 1-based line number; blank lines are left out, a row `row` rejects is counted as skipped.
fn tsv<F>(path: &Path, header: bool, out: &mut RawTask, mut row: F) -> Result<(), DataError>
where
    F: FnMut(usize, &[&str]) -> Option<Example>,
{
    let text = read_utf8(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .quoting(false)
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(text.as_bytes());
    let mut header = header;
    for record in reader.records() {
        let record = record.map_err(|e| DataError::Raw {
            path: path.to_path_buf(),
            line: e.position().map_or(0, |p| p.line() as usize),
            msg: e.to_string(),
        })?;
        let n = record.position().map_or(0, |p| p.line() as usize);
        let mut cols: Vec<&str> = record.iter().collect();
        if let Some(last) = cols.last_mut() {
            *last = last.trim_end_matches('\r');
        }
        if cols.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if std::mem::take(&mut header) {
            continue;
        }
        match row(n, &cols) {
            Some(ex) => out.examples.push(ex),
            None => out.skipped += 1,
        }
    }
    Ok(())
}

fn sst2(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    for (tag, file) in [
        ("train", "alps_train_90pct_of_glue_train.tsv"),
        ("dev", "alps_dev_10pct_of_glue_train.tsv"),
    ] {
        tsv(&raw.join("sst2").join(file), true, &mut out, |n, c| {
            let label = binary(c.get(1)?, "negative", "positive")?;
            let text = detokenize(c[0]);
            let id = format!("sst2-{tag}-{n}");
            Some(example("sst2", id, single(&text), label))
        })?;
    }
    Ok(out)
}

fn mr(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    for (file, label) in [
        ("rt-polarity.neg", "negative"),
        ("rt-polarity.pos", "positive"),
    ] {
        let text = read_latin1(&raw.join("movie_reviews").join(file))?;
        for (n, line) in lines(&text) {
            let id = format!("mr-{label}-{n}");
            out.examples
                .push(example("mr", id, single(&detokenize(line)), label));
        }
    }
    Ok(out)
}

fn ag_news(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    let path = raw.join("ag_news").join("alps_train_sample_10k.tsv");
    tsv(&path, false, &mut out, |n, c| {
        let label = match *c.get(1)? {
            "World" => "world",
            "Sports" => "sports",
            "Business" => "business",
            "Sci/Tech" => "sci_tech",
            _ => return None,
        };
        let id = format!("ag_news-{n}");
        Some(example("ag_news", id, single(&unescape_ag(c[0])), label))
    })?;
    Ok(out)
}

fn mrpc(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    for tag in ["train", "dev"] {
        let path = raw.join("mrpc").join(format!("{tag}.tsv"));
        tsv(&path, true, &mut out, |n, c| {
            let label = binary(c.first()?, "not_equivalent", "equivalent")?;
            let input = pair(c.get(3)?, c.get(4)?);
            Some(example("mrpc", format!("mrpc-{tag}-{n}"), input, label))
        })?;
    }
    Ok(out)
}

fn stsb(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    for tag in ["train", "dev"] {
        let path = raw
            .join("stsb")
            .join("original")
            .join(format!("sts-{tag}.tsv"));
        tsv(&path, false, &mut out, |n, c| {
            let score: f64 = c.get(4)?.trim().parse().ok()?;
            if !(0.0..=5.0).contains(&score) {
                return None;
            }
            let input = pair(c.get(5)?, c.get(6)?);
            let id = format!("stsb-{tag}-{n}");
            Some(example("stsb", id, input, stsb_bucket(score)))
        })?;
    }
    Ok(out)
}

fn qqp(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    let path = raw.join("qqp").join("qqp_train_sample.tsv");
    tsv(&path, false, &mut out, |_, c| {
        if c.len() != 6 {
            return None;
        }
        let label = binary(c[5], "not_duplicate", "duplicate")?;
        let id = format!("qqp-{}", c[0].trim());
        Some(example("qqp", id, pair(c[3], c[4]), label))
    })?;
    Ok(out)
}

fn mnli_label(value: &str) -> Option<&'static str> {
    match value.trim() {
        "0" | "entailment" => Some("entailment"),
        "1" | "neutral" => Some("neutral"),
        "2" | "contradiction" => Some("contradiction"),
        _ => None,
    }
}

fn mnli(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    // TextFooler's numeric file uses 0 entailment, 1 neutral, 2 contradiction (checked by reading).
    for (tag, file) in [
        ("matched", "textfooler_mnli_matched_1000.tsv"),
        ("mixed", "textfooler_mnli_1000.tsv"),
    ] {
        tsv(&raw.join("mnli").join(file), false, &mut out, |n, c| {
            let label = mnli_label(c.first()?)?;
            let input = pair(&detokenize(c.get(1)?), &detokenize(c.get(2)?));
            Some(example("mnli", format!("mnli-{tag}-{n}"), input, label))
        })?;
    }
    Ok(out)
}

/// e-SNLI's line-aligned files: premise, hypothesis, label, three human explanations.
fn esnli(raw: &Path) -> Result<RawTask, DataError> {
    let dir = raw.join("esnli");
    let read = |name: &str| -> Result<Vec<String>, DataError> {
        let text = read_utf8(&dir.join(name))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        Ok(text.split('\n').map(str::to_string).collect())
    };
    let (s1, s2, labels) = (read("s1.dev")?, read("s2.dev")?, read("labels.dev")?);
    let expls = [
        read("preproc1_expl_1.dev")?,
        read("preproc1_expl_2.dev")?,
        read("preproc1_expl_3.dev")?,
    ];
    let mut out = RawTask::default();
    for (i, label) in labels.iter().enumerate() {
        let (Some(label), Some(p), Some(h)) = (mnli_label(label), s1.get(i), s2.get(i)) else {
            out.skipped += 1;
            continue;
        };
        let input = pair(&detokenize(p), &detokenize(h));
        let mut ex = example("esnli", format!("esnli-dev-{}", i + 1), input, label);
        let human: Vec<Rationale> = expls
            .iter()
            .filter_map(|e| e.get(i))
            .map(|t| capitalize_first(&detokenize(t)))
            .filter(|t| !t.is_empty())
            .map(|text| Rationale {
                text,
                source: "human".into(),
            })
            .collect();
        if !human.is_empty() {
            ex.rationales.insert(label.to_string(), human);
        }
        out.examples.push(ex);
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct CoseQuestion {
    id: String,
    #[serde(rename = "answerKey")]
    answer_key: String,
    question: CoseStem,
}
#[derive(serde::Deserialize)]
struct CoseStem {
    stem: String,
    choices: Vec<CoseChoice>,
}
#[derive(serde::Deserialize)]
struct CoseChoice {
    label: String,
    text: String,
}
#[derive(serde::Deserialize)]
struct CoseExplanation {
    id: String,
    explanation: CoseOpenEnded,
}
#[derive(serde::Deserialize)]
struct CoseOpenEnded {
    #[serde(rename = "open-ended")]
    open_ended: String,
}

fn jsonl_rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let text = read_utf8(path)?;
    lines(&text)
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| DataError::raw(path, n, e.to_string())))
        .collect()
}

/// CoS-E v1.0: CommonsenseQA questions (3 choices) joined by id with their human explanations.
fn cose(raw: &Path) -> Result<RawTask, DataError> {
    let dir: PathBuf = raw.join("cose").join("v1.0");
    let questions: Vec<CoseQuestion> = jsonl_rows(&dir.join("train_rand_split.jsonl"))?;
    let expl: Vec<CoseExplanation> = jsonl_rows(&dir.join("cose_train_v1.0.jsonl"))?;
    let expl: HashMap<String, String> = expl
        .into_iter()
        .map(|e| (e.id, e.explanation.open_ended))
        .collect();
    let mut out = RawTask::default();
    for q in questions {
        let labels: Vec<&str> = q
            .question
            .choices
            .iter()
            .map(|c| c.label.as_str())
            .collect();
        if labels != ["A", "B", "C"] || !labels.contains(&q.answer_key.as_str()) {
            out.skipped += 1;
            continue;
        }
        let choices: Vec<String> = q
            .question
            .choices
            .iter()
            .map(|c| format!("{}) {}", c.label, c.text.trim()))
            .collect();
        let text = format!("{}\n{}", q.question.stem.trim(), choices.join("\n"));
        let mut ex = example(
            "cose",
            format!("cose-{}", q.id),
            single(&text),
            &q.answer_key,
        );
        if let Some(e) = expl.get(&q.id).map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let r = Rationale {
                text: e.to_string(),
                source: "human".into(),
            };
            ex.rationales.insert(q.answer_key.clone(), vec![r]);
        }
        out.examples.push(ex);
    }
    Ok(out)
}

/// ComVE: which of two statements is against common sense. The order of the two statements is
/// decided per row by a hash, so both labels occur; the right reasons explain the gold label,
/// and the "confusing reasons" (human-written, plausible but wrong) are filed under the other label.
fn comve(raw: &Path) -> Result<RawTask, DataError> {
    let mut out = RawTask::default();
    for tag in ["train", "dev"] {
        let path = raw.join("comve").join(format!("{tag}.csv"));
        let text = read_utf8(&path)?;
        let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        for (i, row) in reader.records().enumerate() {
            let line = i + 2;
            let row = row.map_err(|e| DataError::raw(&path, line, e.to_string()))?;
            match comve_row(tag, line, &row) {
                Some(ex) => out.examples.push(ex),
                None => out.skipped += 1,
            }
        }
    }
    Ok(out)
}

fn comve_row(tag: &str, line: usize, row: &csv::StringRecord) -> Option<Example> {
    let col = |i: usize| row.get(i).map(str::trim).unwrap_or("");
    let (correct, incorrect) = (col(0), col(1));
    if correct.is_empty() || incorrect.is_empty() {
        return None;
    }
    let id = format!("comve-{tag}-{line}");
    let flip = super::split::rank_key(0, &id)[0] & 1 == 1;
    let (input, gold, other) = if flip {
        (pair(incorrect, correct), "first", "second")
    } else {
        (pair(correct, incorrect), "second", "first")
    };
    let reasons = |cols: &[usize], source: &str| -> Vec<Rationale> {
        cols.iter()
            .map(|&i| col(i))
            .filter(|t| !t.is_empty())
            .map(|t| Rationale {
                text: t.to_string(),
                source: source.to_string(),
            })
            .collect()
    };
    let right = reasons(&[2, 5, 6], "human");
    let right_norm: Vec<String> = right.iter().map(|r| normalize(&r.text)).collect();
    // Some rows repeat a right reason in a confusing-reason column; such a text is not wrong.
    let confusing: Vec<Rationale> = reasons(&[3, 4], "human-confusing")
        .into_iter()
        .filter(|r| !right_norm.contains(&normalize(&r.text)))
        .collect();
    let mut ex = example("comve", id, input, gold);
    for (label, rs) in [(gold, right), (other, confusing)] {
        if !rs.is_empty() {
            ex.rationales.insert(label.to_string(), rs);
        }
    }
    Some(ex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detokenizes_ptb_text() {
        assert_eq!(
            detokenize("You ca n't take it , ( really ) ."),
            "You can't take it, (really)."
        );
    }

    #[test]
    fn stsb_buckets_pair_the_guideline_grades() {
        let got: Vec<&str> = [0.0, 1.4, 1.5, 3.49, 3.5, 5.0]
            .iter()
            .map(|&s| stsb_bucket(s))
            .collect();
        assert_eq!(got, ["low", "low", "medium", "medium", "high", "high"]);
    }

    #[test]
    fn ag_entities_are_unescaped() {
        assert_eq!(unescape_ag("It #39;s #36;5 quot;hiquot;"), "It's $5 \"hi\"");
    }

    #[test]
    fn latin1_is_decoded_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"caf\xe9\n").unwrap();
        assert_eq!(read_latin1(&p).unwrap(), "café\n");
    }
}
