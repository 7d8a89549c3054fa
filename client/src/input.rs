//! Input records from JSONL or CSV, with the line number of every record and every bad one.
//!
//! Both the CLI's one-off commands and `rllr batch` read the same shapes, so a file that works
//! for one works for the other and for the repository's own data (`data/<task>/*.jsonl`):
//!
//! - JSONL: one object per line with `id` (string or number; default: the line number), the text
//!   as `text` (+ optional `text_pair`) or as `input` (a string, or `[text, text_pair]`), and
//!   optional `label` and `rationale`. Blank lines are ignored.
//! - CSV: a header row naming the same columns (`id`, `text` or `input`, `text_pair`, `label`,
//!   `rationale`); other columns are ignored.
//!
//! A record that cannot be used (bad JSON, no text, a CSV row with the wrong number of fields) is
//! returned as a [`BadRecord`] with its 1-based line number; the caller decides to skip or fail.

use std::io::{BufRead, Read};
use std::path::Path;

use serde_json::Value;

/// Input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
}

impl Format {
    /// `.csv` is CSV, anything else JSONL.
    pub fn detect(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

/// One usable input record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line of the record in its file.
    pub line: usize,
    pub id: String,
    pub text: String,
    pub text_pair: Option<String>,
    /// Gold label (batch) or the label to score (score).
    pub label: Option<String>,
    pub rationale: Option<String>,
}

/// A record that could not be used.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BadRecord {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Records and bad records of one input, in file order.
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<Record>,
    pub bad: Vec<BadRecord>,
}

/// Read all records of `reader` in `format`. Only I/O errors fail; bad records are collected.
pub fn parse(reader: impl Read, format: Format) -> std::io::Result<Parsed> {
    match format {
        Format::Jsonl => parse_jsonl(std::io::BufReader::new(reader)),
        Format::Csv => Ok(parse_csv(reader)),
    }
}

fn text_field(v: Option<&Value>, name: &str) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("'{name}' must be a string, got {other}")),
    }
}

fn from_json(line: usize, v: Value) -> Result<Record, String> {
    let Value::Object(o) = v else {
        return Err("expected a JSON object".into());
    };
    let id = match o.get("id") {
        None | Some(Value::Null) => line.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "'id' must be a non-empty string or a number, got {other}"
            ))
        }
    };
    let (text, pair) = match (o.get("text"), o.get("input")) {
        (Some(t), _) => (
            text_field(Some(t), "text")?,
            text_field(o.get("text_pair"), "text_pair")?,
        ),
        (None, Some(Value::Array(a))) if (1..=2).contains(&a.len()) => (
            text_field(a.first(), "input[0]")?,
            text_field(a.get(1), "input[1]")?,
        ),
        (None, Some(i @ Value::String(_))) => (
            text_field(Some(i), "input")?,
            text_field(o.get("text_pair"), "text_pair")?,
        ),
        (None, Some(other)) => {
            return Err(format!(
                "'input' must be a string or [text, text_pair], got {other}"
            ))
        }
        (None, None) => (None, None),
    };
    record(
        line,
        id,
        text,
        pair,
        text_field(o.get("label"), "label")?,
        text_field(o.get("rationale"), "rationale")?,
    )
}

fn record(
    line: usize,
    id: String,
    text: Option<String>,
    text_pair: Option<String>,
    label: Option<String>,
    rationale: Option<String>,
) -> Result<Record, String> {
    let text = text
        .filter(|t| !t.trim().is_empty())
        .ok_or("no text (expected a non-empty 'text' or 'input')")?;
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(Record {
        line,
        id,
        text,
        text_pair: nonempty(text_pair),
        label: nonempty(label),
        rationale,
    })
}

fn parse_jsonl(reader: impl BufRead) -> std::io::Result<Parsed> {
    let mut out = Parsed::default();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line?;
        let r = std::str::from_utf8(&bytes)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|s| {
                let s = s.trim();
                if s.is_empty() {
                    return Ok(None);
                }
                let v: Value = serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}"))?;
                from_json(line_no, v).map(Some)
            });
        match r {
            Ok(Some(rec)) => out.records.push(rec),
            Ok(None) => {}
            Err(message) => out.bad.push(BadRecord {
                line: line_no,
                message,
            }),
        }
    }
    Ok(out)
}

fn parse_csv(reader: impl Read) -> Parsed {
    let mut out = Parsed::default();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            out.bad.push(BadRecord {
                line: 1,
                message: format!("unreadable CSV header: {e}"),
            });
            return out;
        }
    };
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (id_c, text_c, pair_c, label_c, rat_c) = (
        col("id"),
        col("text").or_else(|| col("input")),
        col("text_pair"),
        col("label"),
        col("rationale"),
    );
    if text_c.is_none() {
        out.bad.push(BadRecord {
            line: 1,
            message: format!(
                "the CSV header has no 'text' or 'input' column (found: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        });
        return out;
    }
    for row in rdr.records() {
        match row {
            Ok(row) => {
                let line = row.position().map_or(0, |p| p.line() as usize);
                let get = |c: Option<usize>| c.and_then(|c| row.get(c)).map(str::to_string);
                let id = get(id_c)
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| line.to_string());
                match record(line, id, get(text_c), get(pair_c), get(label_c), get(rat_c)) {
                    Ok(r) => out.records.push(r),
                    Err(message) => out.bad.push(BadRecord { line, message }),
                }
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => {
                        format!("expected {expected_len} fields, found {len}")
                    }
                    _ => e.to_string(),
                };
                out.bad.push(BadRecord { line, message });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_shapes_and_bad_lines_with_numbers() {
        let text = r#"{"id":"a","text":"hello","text_pair":"world","label":"neutral"}
{"id":7,"input":["p","h"],"label":"entailment"}

{"input":"only one"}
{"id":"b","text":""}
not json
{"id":"c","text":5}
["array"]
{"id":"d","text":"ok","rationale":"because"}
"#;
        let p = parse(text.as_bytes(), Format::Jsonl).unwrap();
        let ids: Vec<_> = p.records.iter().map(|r| (r.line, r.id.as_str())).collect();
        assert_eq!(ids, [(1, "a"), (2, "7"), (4, "4"), (9, "d")]);
        assert_eq!(p.records[0].text_pair.as_deref(), Some("world"));
        assert_eq!(p.records[1].text, "p");
        assert_eq!(p.records[1].text_pair.as_deref(), Some("h"));
        assert_eq!(p.records[1].label.as_deref(), Some("entailment"));
        assert_eq!(p.records[2].text_pair, None);
        assert_eq!(p.records[3].rationale.as_deref(), Some("because"));
        let bad: Vec<_> = p.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, [5, 6, 7, 8]);
        assert!(p.bad[0].message.contains("no text"), "{}", p.bad[0]);
        assert!(p.bad[1].message.contains("invalid JSON"), "{}", p.bad[1]);
        assert_eq!(p.bad[1].to_string().split(':').next(), Some("line 6"));
    }

    #[test]
    fn csv_with_header_quotes_and_bad_rows() {
        let text = "id,text,text_pair,label,extra\n\
                    a,\"Hello, world\",,positive,x\n\
                    b,\"multi\nline\",pair,negative,y\n\
                    c,too,few\n\
                    d,,,positive,z\n\
                    ,no id,,,\n";
        let p = parse(text.as_bytes(), Format::Csv).unwrap();
        let got: Vec<_> = p
            .records
            .iter()
            .map(|r| (r.line, r.id.as_str(), r.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (2, "a", "Hello, world"),
                (3, "b", "multi\nline"),
                (7, "7", "no id")
            ]
        );
        assert_eq!(p.records[0].text_pair, None);
        assert_eq!(p.records[1].text_pair.as_deref(), Some("pair"));
        assert_eq!(p.records[1].label.as_deref(), Some("negative"));
        let bad: Vec<_> = p.bad.iter().map(|b| (b.line, b.message.as_str())).collect();
        assert_eq!(bad[0], (5, "expected 5 fields, found 3"));
        assert_eq!(bad[1].0, 6);
        let p = parse("id,body\n1,x\n".as_bytes(), Format::Csv).unwrap();
        assert!(p.records.is_empty() && p.bad[0].message.contains("no 'text'"));
    }

    #[test]
    fn format_detection() {
        assert_eq!(Format::detect(Path::new("x.CSV")), Format::Csv);
        assert_eq!(Format::detect(Path::new("x.jsonl")), Format::Jsonl);
        assert_eq!(Format::detect(Path::new("-")), Format::Jsonl);
    }
}
