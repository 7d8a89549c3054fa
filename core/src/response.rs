//! The chain-of-thought response format (decision D1) and its strict label parser (D9).
//!
//! Every stage speaks the same response text: SFT targets, reward-model pair members, PPO rollouts
//! and the server's classifications. The layout is **rationale first, then a final line
//! `Answer: <label>`** just before EOS; a label-only response is just `Answer: <label>`.
//! [`ResponseFormat::render`] writes it and [`ResponseFormat::parse`] reads it back.
//!
//! # Parse rules
//!
//! 1. Lines are split on `\n` only (a `\r` before it is whitespace and trimmed away).
//! 2. The **answer line** is the LAST line whose trimmed start matches the prefix (default
//!    `Answer:`) case-insensitively. Markdown decoration is accepted when the plain prefix does not
//!    match: leading `*`, `_`, `#`, `>` are skipped and emphasis may close before or after the
//!    colon (`**Answer:** x`, `**Answer**: x`, `## Answer: x`).
//! 3. The **answer text** is the rest of that line, whitespace-trimmed.
//! 4. The answer text is matched against the label set after normalisation ([`normalize_label`]:
//!    whitespace runs collapsed to one space, trimmed, lowercased). Candidates are tried from the
//!    least to the most stripped: the raw answer text, then repeatedly with a trailing stop-token
//!    remnant (`</s>`, `<|…|>`) removed, trailing `.`/`!` removed, and surrounding quotes, asterisks,
//!    underscores and backticks removed. The first candidate that equals exactly one label gives the
//!    label; a candidate that equals two or more labels makes the answer ambiguous (`None`).
//!    Equality is whole-string, so a label that is a prefix of another ("entailment" vs
//!    "not entailment") is never confused with it, and trying the raw text first means a label that
//!    itself ends in `!` or is quoted still matches exactly.
//! 5. Text after the answer line is ignored; the rationale is the text before the answer line,
//!    trimmed. With no answer line the rationale is the whole text, trimmed, and the label is `None`.
//! 6. Labels that normalise to the empty string never match. Parsing never panics and is linear in
//!    the text length (plus a bounded number of candidates per label).
//!
//! # Round trip
//!
//! `render` trims the rationale and joins it to the answer line with one `\n`, and the answer line is
//! `{prefix} {label}`. So for a label without `\n` that is already trimmed, the rendered answer line
//! is the last line, the raw answer text is the label itself, and the text before it is the trimmed
//! rationale: `parse(render(r, l)).label` is `l`'s index and `.rationale == r.trim()`, whatever `r`
//! contains (including its own `Answer:` lines), as long as the labels are distinct after
//! normalisation. A property test checks this.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The default answer-line prefix (D1).
pub const DEFAULT_ANSWER_PREFIX: &str = "Answer:";

/// Characters that decorate a Markdown answer line before the prefix.
const LEADING_DECORATION: [char; 4] = ['*', '_', '#', '>'];
/// Emphasis characters that may close around the prefix.
const EMPHASIS: [char; 2] = ['*', '_'];
/// Characters stripped from both ends of an answer text.
const QUOTES: [char; 9] = [
    '"', '\'', '`', '*', '_', '\u{201c}', '\u{201d}', '\u{2018}', '\u{2019}',
];
/// Bound on stripping rounds, so pathological answers stay linear.
const MAX_STRIP_ROUNDS: usize = 8;

/// The response layout: rationale, then `{answer_prefix} {label}` on the last line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// Text that starts the answer line; a single line (default `Answer:`).
    pub answer_prefix: String,
}

impl Default for ResponseFormat {
    fn default() -> Self {
        ResponseFormat {
            answer_prefix: DEFAULT_ANSWER_PREFIX.to_string(),
        }
    }
}

/// What [`ResponseFormat::parse`] found in a response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parsed {
    /// Text before the answer line, trimmed (the whole text when there is no answer line).
    pub rationale: String,
    /// Index into the label set; `None` when unparseable (counts as wrong, D9).
    pub label: Option<usize>,
    /// The rest of the answer line after the prefix, trimmed; `None` when there is no answer line.
    pub answer_text: Option<String>,
}

/// The answer line found in a text: where it starts and where its trimmed answer text lies.
struct AnswerLine {
    line_start: usize,
    answer: Range<usize>,
}

impl ResponseFormat {
    /// A format with a custom prefix; it must be non-empty and on one line.
    pub fn new(answer_prefix: impl Into<String>) -> Result<Self> {
        let answer_prefix = answer_prefix.into();
        if answer_prefix.trim().is_empty() || answer_prefix.contains(['\n', '\r']) {
            return Err(Error::Input(format!(
                "answer prefix must be non-empty and on one line, got {answer_prefix:?}"
            )));
        }
        Ok(ResponseFormat { answer_prefix })
    }

    /// `"{rationale.trim()}\n{prefix} {label}"`, or `"{prefix} {label}"` when the rationale is blank.
    pub fn render(&self, rationale: &str, label: &str) -> String {
        let rationale = rationale.trim();
        let prefix = self.answer_prefix.trim();
        if rationale.is_empty() {
            format!("{prefix} {label}")
        } else {
            format!("{rationale}\n{prefix} {label}")
        }
    }

    /// Parse a response strictly against `labels` (rules in the module docs). Never panics.
    pub fn parse<S: AsRef<str>>(&self, text: &str, labels: &[S]) -> Parsed {
        match self.find_answer_line(text) {
            None => Parsed {
                rationale: text.trim().to_string(),
                label: None,
                answer_text: None,
            },
            Some(line) => {
                let answer = &text[line.answer.clone()];
                Parsed {
                    rationale: text[..line.line_start].trim().to_string(),
                    label: match_label(answer, labels),
                    answer_text: Some(answer.to_string()),
                }
            }
        }
    }

    /// Byte range of the answer text (the label as written) on the answer line; `None` when there
    /// is no answer line or it is empty after the prefix. For a `render`ed text this is exactly the
    /// label, which is where the server reads label probabilities.
    pub fn label_span(&self, text: &str) -> Option<Range<usize>> {
        self.find_answer_line(text)
            .map(|l| l.answer)
            .filter(|r| !r.is_empty())
    }

    /// The last line matching the prefix, scanning from the end.
    fn find_answer_line(&self, text: &str) -> Option<AnswerLine> {
        let mut end = text.len();
        loop {
            let start = text[..end].rfind('\n').map_or(0, |i| i + 1);
            let line = &text[start..end];
            if let Some(offset) = self.match_prefix(line) {
                let rest = &line[offset..];
                let trimmed = rest.trim_start();
                let a = start + offset + (rest.len() - trimmed.len());
                let b = a + trimmed.trim_end().len();
                return Some(AnswerLine {
                    line_start: start,
                    answer: a..b,
                });
            }
            if start == 0 {
                return None;
            }
            end = start - 1;
        }
    }

    /// Byte offset in `line` just after the prefix (and its Markdown decoration), if it starts one.
    fn match_prefix(&self, line: &str) -> Option<usize> {
        let prefix = self.answer_prefix.trim();
        let t = line.trim_start();
        let base = line.len() - t.len();
        if let Some(n) = strip_prefix_ci(t, prefix) {
            return Some(base + n);
        }
        // Markdown: `**Answer:** x`, `**Answer**: x`, `## Answer: x`.
        let s =
            t.trim_start_matches(|c: char| LEADING_DECORATION.contains(&c) || c.is_whitespace());
        let (core, colon) = match prefix.strip_suffix(':') {
            Some(core) => (core, true),
            None => (prefix, false),
        };
        if core.is_empty() {
            return None;
        }
        let after_core = &s[strip_prefix_ci(s, core)?..];
        let mut rest = after_core.trim_start_matches(EMPHASIS);
        if colon {
            rest = rest.strip_prefix(':')?.trim_start_matches(EMPHASIS);
        }
        Some(line.len() - rest.len())
    }
}

/// Normalise a label or answer for comparison: whitespace runs → one space, trimmed, lowercased.
pub fn normalize_label(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// If `s` starts with `prefix` (case-insensitively, char by char), the byte length it spans in `s`.
fn strip_prefix_ci(s: &str, prefix: &str) -> Option<usize> {
    let mut chars = s.char_indices();
    for p in prefix.chars() {
        let (_, c) = chars.next()?;
        if !c.to_lowercase().eq(p.to_lowercase()) {
            return None;
        }
    }
    Some(chars.next().map_or(s.len(), |(i, _)| i))
}

/// The label `answer` names, trying candidates from least to most stripped (module docs, rule 4).
fn match_label<S: AsRef<str>>(answer: &str, labels: &[S]) -> Option<usize> {
    if labels.is_empty() {
        return None;
    }
    let normalized: Vec<String> = labels.iter().map(|l| normalize_label(l.as_ref())).collect();
    for candidate in candidates(answer) {
        let key = normalize_label(candidate);
        if key.is_empty() {
            continue;
        }
        let mut hits = normalized
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == key)
            .map(|(i, _)| i);
        match (hits.next(), hits.next()) {
            (Some(i), None) => return Some(i),
            (Some(_), Some(_)) => return None,
            _ => {}
        }
    }
    None
}

/// The answer text, then successively stripped variants (distinct, at most a bounded number).
fn candidates(answer: &str) -> Vec<&str> {
    let mut out = vec![answer.trim()];
    let strips: [fn(&str) -> &str; 3] = [strip_stop_remnant, strip_trailing_punct, strip_quotes];
    for _ in 0..MAX_STRIP_ROUNDS {
        let before = out.len();
        for strip in strips {
            let last = out[out.len() - 1];
            let next = strip(last).trim();
            if next != last {
                out.push(next);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

/// Remove one trailing `</s>` or `<|…|>` special-token text.
fn strip_stop_remnant(s: &str) -> &str {
    if let Some(rest) = s.strip_suffix("</s>") {
        return rest;
    }
    if let Some(rest) = s.strip_suffix("|>") {
        if let Some(open) = rest.rfind("<|") {
            if !rest[open..].contains(char::is_whitespace) {
                return &rest[..open];
            }
        }
    }
    s
}

fn strip_trailing_punct(s: &str) -> &str {
    s.trim_end_matches(['.', '!'])
}

fn strip_quotes(s: &str) -> &str {
    s.trim_matches(QUOTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AG: [&str; 4] = ["World", "Sports", "Business", "Sci/Tech"];
    const MRPC: [&str; 2] = ["equivalent", "not equivalent"];
    const MNLI: [&str; 3] = ["entailment", "neutral", "contradiction"];

    fn fmt() -> ResponseFormat {
        ResponseFormat::default()
    }

    #[test]
    fn render_layout() {
        assert_eq!(
            fmt().render("  It is upbeat.\n", "positive"),
            "It is upbeat.\nAnswer: positive"
        );
        assert_eq!(fmt().render(" \n\t", "positive"), "Answer: positive");
        assert_eq!(fmt().render("", "Sci/Tech"), "Answer: Sci/Tech");
    }

    #[test]
    fn parses_rationale_and_multiword_labels() {
        let p = fmt().parse("The article is about chips.\nAnswer: Sci/Tech", &AG);
        assert_eq!(p.label, Some(3));
        assert_eq!(p.rationale, "The article is about chips.");
        assert_eq!(p.answer_text.as_deref(), Some("Sci/Tech"));
        assert_eq!(
            fmt().parse("Answer:   not   equivalent  ", &MRPC).label,
            Some(1)
        );
        assert_eq!(fmt().parse("Answer: equivalent", &MRPC).label, Some(0));
    }

    #[test]
    fn prefix_labels_are_never_confused() {
        let labels = ["entailment", "not entailment"];
        assert_eq!(fmt().parse("Answer: entailment", &labels).label, Some(0));
        assert_eq!(
            fmt().parse("Answer: not entailment", &labels).label,
            Some(1)
        );
        assert_eq!(fmt().parse("Answer: not", &labels).label, None);
        assert_eq!(
            fmt().parse("Answer: entailment or not", &labels).label,
            None
        );
    }

    #[test]
    fn case_punctuation_and_markup_are_tolerated() {
        for text in [
            "answer: NEUTRAL",
            "ANSWER: neutral.",
            "Answer: neutral!",
            "Answer: \"neutral\"",
            "Answer: `neutral`",
            "Answer: **neutral**.",
            "**Answer:** neutral",
            "**Answer**: neutral",
            "## Answer: neutral",
            "  Answer: neutral</s>",
            "Answer: neutral<|im_end|>",
            "Reasoning.\r\nAnswer: neutral\r\n",
        ] {
            assert_eq!(fmt().parse(text, &MNLI).label, Some(1), "{text:?}");
        }
    }

    #[test]
    fn labels_with_own_punctuation_match_exactly() {
        let labels = ["yes", "yes!", "\"quoted\""];
        assert_eq!(fmt().parse("Answer: yes", &labels).label, Some(0));
        assert_eq!(fmt().parse("Answer: yes!", &labels).label, Some(1));
        assert_eq!(fmt().parse("Answer: yes.", &labels).label, Some(0));
        assert_eq!(fmt().parse("Answer: \"quoted\"", &labels).label, Some(2));
    }

    #[test]
    fn missing_or_unknown_answers_are_none() {
        let p = fmt().parse("It is about sports, I think.", &AG);
        assert_eq!(
            p,
            Parsed {
                rationale: "It is about sports, I think.".into(),
                label: None,
                answer_text: None
            }
        );
        assert_eq!(fmt().parse("Answer: Politics", &AG).label, None);
        assert_eq!(fmt().parse("Answer:", &AG).label, None);
        assert_eq!(fmt().parse("Answer:\nSports", &AG).label, None);
        assert_eq!(fmt().parse("Answers: Sports", &AG).label, None);
        assert_eq!(
            fmt().parse("", &AG),
            Parsed {
                rationale: String::new(),
                label: None,
                answer_text: None
            }
        );
    }

    #[test]
    fn last_answer_line_wins() {
        let p = fmt().parse("Answer: World\nOn reflection, no.\nAnswer: Sports\n", &AG);
        assert_eq!(p.label, Some(1));
        assert_eq!(p.rationale, "Answer: World\nOn reflection, no.");
        let p = fmt().parse("Answer: Sports\nAnswer: Nonsense", &AG);
        assert_eq!(p.label, None);
        assert_eq!(p.answer_text.as_deref(), Some("Nonsense"));
    }

    #[test]
    fn text_after_answer_line_is_ignored() {
        let p = fmt().parse("Because.\nAnswer: Business\n<|im_end|>\nstray", &AG);
        assert_eq!(p.label, Some(2));
        assert_eq!(p.rationale, "Because.");
    }

    #[test]
    fn empty_and_ambiguous_label_sets_give_none() {
        let empty: [&str; 0] = [];
        let p = fmt().parse("Why.\nAnswer: World", &empty);
        assert_eq!((p.label, p.rationale.as_str()), (None, "Why."));
        assert_eq!(
            fmt().parse("Answer: world", &["World", "world"]).label,
            None
        );
        assert_eq!(fmt().parse("Answer:", &["", "x"]).label, None);
    }

    #[test]
    fn label_span_points_at_label() {
        let text = "Because.\nAnswer:  not equivalent \n";
        let span = fmt().label_span(text).unwrap();
        assert_eq!(&text[span], "not equivalent");
        assert_eq!(fmt().label_span("no answer here"), None);
        assert_eq!(fmt().label_span("Answer:   "), None);
    }

    #[test]
    fn custom_prefix() {
        let f = ResponseFormat::new("Label:").unwrap();
        assert_eq!(f.render("r", "World"), "r\nLabel: World");
        assert_eq!(f.parse("r\n**Label**: world", &AG).label, Some(0));
        assert!(ResponseFormat::new("").is_err());
        assert!(ResponseFormat::new("A\nB:").is_err());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let huge = "Answer: ".repeat(20_000) + &"*.".repeat(50_000);
        let p = fmt().parse(&huge, &AG);
        assert_eq!(p.label, None);
        let p = fmt().parse("**\n_\n#\nÅnswer: İ\nAnswer: ß", &["SS", "ß"]);
        assert_eq!(p.label, Some(1));
        assert_eq!(
            ResponseFormat {
                answer_prefix: String::new()
            }
            .parse("World", &AG)
            .label,
            Some(0)
        );
    }

    /// A label drawn from a small pool (so near-collisions are common), maybe decorated with the
    /// punctuation, quotes and remnants the parser strips, or arbitrary newline-free text.
    fn label() -> impl Strategy<Value = String> {
        let base = prop_oneof![
            "(yes|no|entailment|not entailment|Sci/Tech|equivalent|not equivalent|[a-z]{1,3})",
            "[a-zA-Z/ .!*\"'`-]{1,16}",
            "[^\n]{1,12}",
        ];
        (base, 0u8..8).prop_map(|(b, deco)| match deco {
            0 => format!("{b}."),
            1 => format!("{b}!"),
            2 => format!("\"{b}\""),
            3 => format!("**{b}**"),
            4 => format!("{b}<|im_end|>"),
            5 => format!("`{b}`."),
            _ => b,
        })
    }

    /// Label sets of distinct (after normalisation), trimmed, non-empty, newline-free labels.
    fn label_set() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(label(), 1..10)
            .prop_map(|raw| {
                let mut seen = std::collections::HashSet::new();
                raw.into_iter()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty() && !l.contains('\n'))
                    .filter(|l| seen.insert(normalize_label(l)))
                    .collect::<Vec<_>>()
            })
            .prop_filter("non-empty label set", |v| !v.is_empty())
    }

    /// Rationales: arbitrary text, plus lines that look like answers or markup.
    fn rationale() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            any::<String>(),
            "[^\n]{0,20}",
            "(Answer|answer|\\*\\*Answer\\*\\*): ?[^\n]{0,12}",
            Just(String::new()),
            Just("\r".to_string()),
        ];
        prop::collection::vec(line, 0..6).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #[test]
        fn render_then_parse_is_identity(r in rationale(), labels in label_set(), pick in any::<prop::sample::Index>()) {
            let idx = pick.index(labels.len());
            let text = fmt().render(&r, &labels[idx]);
            let p = fmt().parse(&text, &labels);
            prop_assert_eq!(p.label, Some(idx));
            prop_assert_eq!(p.rationale.as_str(), r.trim());
            prop_assert_eq!(p.answer_text.as_deref(), Some(labels[idx].as_str()));
        }

        #[test]
        fn label_span_covers_the_rendered_label(r in rationale(), labels in label_set(), pick in any::<prop::sample::Index>()) {
            let label = &labels[pick.index(labels.len())];
            let text = fmt().render(&r, label);
            let span = fmt().label_span(&text);
            prop_assert!(span.is_some());
            let span = span.unwrap_or(0..0);
            prop_assert_eq!(&text[span.clone()], label.as_str());
            prop_assert_eq!(span.end, text.len());
        }

        #[test]
        fn parse_never_panics(text in any::<String>(), labels in prop::collection::vec(any::<String>(), 0..6), prefix in any::<String>()) {
            let p = fmt().parse(&text, &labels);
            prop_assert!(p.label.is_none_or(|i| i < labels.len()));
            let f = ResponseFormat { answer_prefix: prefix };
            let p = f.parse(&text, &labels);
            prop_assert!(p.label.is_none_or(|i| i < labels.len()));
            if let Some(span) = f.label_span(&text) {
                prop_assert!(text.get(span).is_some());
            }
        }

        #[test]
        fn parse_finds_answers_in_answer_like_text(labels in label_set(), pick in any::<prop::sample::Index>(), noise in "[^\n]{0,30}") {
            let idx = pick.index(labels.len());
            let text = format!("{noise}\nAnswer: {}\n", labels[idx]);
            prop_assert_eq!(fmt().parse(&text, &labels).label, Some(idx));
        }
    }
}
