//! Every method reference in the project's code (`§5.4.2`, `D11`, `quirk 3`) names something
//! that `docs/method.md` has, so a newcomer can follow it: a section heading, a row of the
//! decisions table, an item of the quirks list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The project's source files: code and scripts, not the docs that define the references.
fn sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = [
        "core", "trainer", "server", "client", "cli", "proto", "benches", "tests", "scripts",
    ]
    .iter()
    .map(|d| root().join(d))
    .collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if name != "target" && name != "fixtures" && !name.starts_with('.') {
                    stack.push(p);
                }
            } else if [".rs", ".py", ".sh"].iter().any(|x| name.ends_with(x)) {
                out.push(p);
            }
        }
    }
    out
}

/// The references in `text`: ("§", "5.4.2"), ("D", "11"), ("quirk", "3").
fn references(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let digits_from = |mut i: usize, dots: bool| {
        let s = i;
        while i < b.len() && (b[i].is_ascii_digit() || (dots && b[i] == b'.')) {
            i += 1;
        }
        text[s..i].trim_end_matches('.').to_string()
    };
    for (i, _) in text.match_indices('§') {
        let mut j = i + '§'.len_utf8();
        if b.get(j) == Some(&b' ') {
            j += 1;
        }
        let n = digits_from(j, true);
        if !n.is_empty() {
            out.push(("§", n));
        }
    }
    for (i, _) in text.match_indices('D') {
        let before_ok = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let n = digits_from(i + 1, false);
        let after = i + 1 + n.len();
        let after_ok = after >= b.len() || !(b[after].is_ascii_alphanumeric() || b[after] == b'_');
        if before_ok && after_ok && !n.is_empty() && n.len() <= 2 {
            out.push(("D", n));
        }
    }
    for (i, _) in text.match_indices("quirk ") {
        let n = digits_from(i + "quirk ".len(), false);
        if !n.is_empty() {
            out.push(("quirk", n));
        }
    }
    out
}

/// What `docs/method.md` defines: section numbers, decision ids, quirk numbers.
fn defined() -> BTreeSet<(&'static str, String)> {
    let doc = std::fs::read_to_string(root().join("docs/method.md")).unwrap();
    let mut out = BTreeSet::new();
    let mut in_quirks = false;
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix('#') {
            let h = h.trim_start_matches('#').trim();
            let n: String = h
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if !n.is_empty() {
                out.insert(("§", n.trim_end_matches('.').to_string()));
            }
            in_quirks = h.to_lowercase().contains("quirks");
        } else if let Some(rest) = line.strip_prefix("| D") {
            let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if !n.is_empty() {
                out.insert(("D", n));
            }
        } else if in_quirks {
            let n: String = line.chars().take_while(|c| c.is_ascii_digit()).collect();
            if !n.is_empty() && line[n.len()..].starts_with(". ") {
                out.insert(("quirk", n));
            }
        }
    }
    out
}

#[test]
fn references_are_recognised() {
    let r = references("see docs/method.md §5.4.2, D11 and quirk 3; not DType or D100x or §.");
    assert_eq!(
        r,
        vec![
            ("§", "5.4.2".to_string()),
            ("D", "11".to_string()),
            ("quirk", "3".to_string())
        ]
    );
}

#[test]
fn method_doc_defines_sections_decisions_and_quirks() {
    let d = defined();
    for want in [("§", "5.4.2"), ("§", "6.1"), ("D", "17"), ("quirk", "9")] {
        assert!(d.contains(&(want.0, want.1.to_string())), "{want:?}");
    }
}

#[test]
fn every_method_reference_in_code_is_in_docs_method_md() {
    let defined = defined();
    let mut missing = Vec::new();
    let mut seen = 0;
    for p in sources() {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for r in references(&text) {
            seen += 1;
            if !defined.contains(&r) {
                missing.push(format!("{}: {}{}", p.display(), r.0, r.1));
            }
        }
    }
    assert!(
        seen > 20,
        "only {seen} references found: is the scan looking in the right place?"
    );
    assert!(
        missing.is_empty(),
        "not in docs/method.md:\n{}",
        missing.join("\n")
    );
}
