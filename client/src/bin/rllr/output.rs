//! How the one-off commands print: an aligned table for people or JSON lines for scripts, from
//! one description of the rows so the two never disagree about what a command returns.

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use rllr_client::v1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Table cells longer than this are cut: a table is for reading, `--output json` has it all.
const MAX_CELL_CHARS: usize = 60;

/// The rows one command prints, as table cells and as JSON objects.
pub struct Rows {
    header: &'static [&'static str],
    cells: Vec<Vec<String>>,
    json: Vec<serde_json::Value>,
}

impl Rows {
    pub fn new(header: &'static [&'static str]) -> Self {
        Rows {
            header,
            cells: Vec::new(),
            json: Vec::new(),
        }
    }

    /// One row: its table cells (in header order) and its JSON object.
    pub fn push(&mut self, cells: Vec<String>, json: serde_json::Value) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.cells.push(cells);
        self.json.push(json);
    }

    /// Print in the chosen format on stdout.
    pub fn print(&self, format: OutputFormat) -> Result<()> {
        match format {
            OutputFormat::Json => {
                for r in &self.json {
                    println!("{}", serde_json::to_string(r)?);
                }
            }
            OutputFormat::Table => println!("{}", self.table()),
        }
        Ok(())
    }

    /// Columns separated by two spaces, no borders, cells on one line and cut at 60 characters.
    fn table(&self) -> String {
        let mut t = Table::new();
        t.load_style(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled)
            .set_header(self.header.iter().copied());
        for r in &self.cells {
            t.add_row(r.iter().map(|c| one_line(c)));
        }
        let last = self.header.len().saturating_sub(1);
        for (i, col) in t.column_iter_mut().enumerate() {
            col.set_padding((0, if i == last { 0 } else { 2 }));
            col.set_cell_alignment(CellAlignment::Left);
        }
        t.lines()
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A cell on one line, cut to [`MAX_CELL_CHARS`].
fn one_line(c: &str) -> String {
    c.replace(['\n', '\r'], " ")
        .chars()
        .take(MAX_CELL_CHARS)
        .collect()
}

/// A reward as JSON (score and compare).
pub fn reward_json(r: &v1::Reward) -> serde_json::Value {
    serde_json::json!({"label_reward": r.label_reward, "rationale_reward": r.rationale_reward, "mixed_reward": r.mixed_reward, "tokens": r.tokens})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Rows {
        let mut r = Rows::new(&["id", "label", "rationale"]);
        r.push(
            vec!["1".into(), "yes".into(), "line one\nline two".into()],
            serde_json::json!({"id": "1"}),
        );
        r.push(
            vec!["22".into(), "no".into(), "x".repeat(100)],
            serde_json::json!({"id": "22"}),
        );
        r
    }

    #[test]
    fn table_aligns_columns_two_spaces_apart() {
        let t = rows().table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "id  label  rationale");
        assert_eq!(lines[1], "1   yes    line one line two");
        assert!(lines[2].starts_with("22  no     xxx"), "{t}");
    }

    #[test]
    fn table_cells_are_cut_at_sixty_characters() {
        let t = rows().table();
        let last = t.lines().nth(2).unwrap();
        assert_eq!(last.trim_start_matches("22  no     ").len(), MAX_CELL_CHARS);
    }

    #[test]
    fn wide_characters_keep_columns_aligned() {
        let mut r = Rows::new(&["a", "b"]);
        r.push(vec!["日本".into(), "x".into()], serde_json::json!({}));
        r.push(vec!["ab".into(), "y".into()], serde_json::json!({}));
        let t = r.table();
        let cols: Vec<usize> = t
            .lines()
            .skip(1)
            .map(|l| unicode_col(l, l.rfind(['x', 'y']).unwrap()))
            .collect();
        assert_eq!(cols[0], cols[1], "{t}");
    }

    /// Display column of byte offset `i` (CJK characters are two columns wide).
    fn unicode_col(l: &str, i: usize) -> usize {
        l[..i]
            .chars()
            .map(|c| if c.len_utf8() == 3 { 2 } else { 1 })
            .sum()
    }
}
