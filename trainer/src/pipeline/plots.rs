//! The report's plots, as SVG files under `<run_dir>/<task>/plots/`: a table of accuracies cannot
//! show *why* RL did or did not move a policy, while the PPO curves (did the reward go up, did the
//! KL move at all, did rollout accuracy follow) and the reward distributions of right and wrong
//! samples (can the reward model tell them apart) can.
//!
//! - `ppo.svg`: one panel per metric (`objective/scores`, `objective/kl`,
//!   `rollout/label_accuracy`) with one line per PPO mode, from `ppo-<mode>/metrics.jsonl` (records
//!   with a `step`; the `eval` records are skipped);
//! - `rewards.svg`: histograms of `r_label` and `r_rationale` over the diagnostics stage's samples
//!   (`diagnose/samples.jsonl`), correct and wrong samples apart, each normalised to its class.
//!
//! Each file is written only when its inputs exist; none is an error.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::plan::PPO_MODES;

/// The PPO metrics plotted, one panel each.
pub const PPO_METRICS: [&str; 3] = ["objective/scores", "objective/kl", "rollout/label_accuracy"];

/// Histogram bins per reward panel.
const BINS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("drawing {file}: {message}")]
    Draw { file: &'static str, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: rllr_core::Error,
    },
}

/// One line: a name and its (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Per-step values of each of [`PPO_METRICS`] in one `metrics.jsonl` text.
pub fn ppo_series(metrics_jsonl: &str) -> [Vec<(f64, f64)>; 3] {
    let mut out: [Vec<(f64, f64)>; 3] = Default::default();
    for line in metrics_jsonl.lines() {
        let Ok(rec) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if rec.get("eval").is_some() {
            continue;
        }
        let Some(step) = rec.get("step").and_then(Value::as_f64) else {
            continue;
        };
        for (key, points) in PPO_METRICS.iter().zip(out.iter_mut()) {
            if let Some(y) = rec
                .get(*key)
                .and_then(Value::as_f64)
                .filter(|y| y.is_finite())
            {
                points.push((step, y));
            }
        }
    }
    out
}

/// One diagnostics sample: whether it was right and its two rewards.
#[derive(Debug, Clone, Deserialize)]
pub struct RewardSample {
    pub correct: bool,
    pub r_label: f64,
    pub r_rationale: f64,
}

/// Render what the task directory has data for; the paths written, relative to `task_dir`.
pub fn write_task_plots(task_dir: &Path) -> Result<Vec<String>, PlotError> {
    let mut written = Vec::new();
    let mut panels: Vec<Vec<Series>> = vec![Vec::new(); PPO_METRICS.len()];
    for mode in PPO_MODES {
        let name = mode.name();
        let Ok(text) = std::fs::read_to_string(task_dir.join(format!("ppo-{name}/metrics.jsonl")))
        else {
            continue;
        };
        for (panel, points) in panels.iter_mut().zip(ppo_series(&text)) {
            if !points.is_empty() {
                panel.push((name.to_string(), points));
            }
        }
    }
    if panels.iter().any(|p| !p.is_empty()) {
        let titles: Vec<&str> = PPO_METRICS.to_vec();
        let svg = line_panels("ppo.svg", &titles, &panels)?;
        written.push(save(task_dir, "ppo.svg", &svg)?);
    }
    if let Ok(text) = std::fs::read_to_string(task_dir.join("diagnose/samples.jsonl")) {
        let samples: Vec<RewardSample> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !samples.is_empty() {
            let svg = reward_histograms(&samples)?;
            written.push(save(task_dir, "rewards.svg", &svg)?);
        }
    }
    Ok(written)
}

fn save(task_dir: &Path, file: &str, svg: &str) -> Result<String, PlotError> {
    let path = task_dir.join("plots").join(file);
    rllr_core::fsutil::write_file_atomic(&path, svg.as_bytes())
        .map_err(|source| PlotError::Write { path, source })?;
    Ok(format!("plots/{file}"))
}

/// `(lo, hi)` of the values, widened when they are all equal so the axis has a range.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.05 * (hi - lo);
    (lo - pad, hi + pad)
}

fn draw_err(file: &'static str) -> impl Fn(String) -> PlotError {
    move |message| PlotError::Draw { file, message }
}

/// Stacked panels, each with its title and its lines (one colour per series name, legend).
pub fn line_panels(
    file: &'static str,
    titles: &[&str],
    panels: &[Vec<Series>],
) -> Result<String, PlotError> {
    let err = draw_err(file);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (900, 320 * panels.len() as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((panels.len(), 1));
        for ((area, title), series) in areas.iter().zip(titles).zip(panels) {
            let (x0, x1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)));
            let (y0, y1) = range(series.iter().flat_map(|(_, p)| p.iter().map(|q| q.1)));
            let mut chart = ChartBuilder::on(area)
                .caption(*title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("step")
                .draw()
                .map_err(|e| err(e.to_string()))?;
            for (i, (name, points)) in series.iter().enumerate() {
                let colour = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                    .map_err(|e| err(e.to_string()))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
            if !series.is_empty() {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// Share of `values` in each of `bins` equal bins over `[lo, hi]` (the last bin is closed).
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    let mut counts = vec![0.0; bins];
    if values.is_empty() {
        return counts;
    }
    let width = (hi - lo) / bins as f64;
    for v in values {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
        counts[i] += 1.0;
    }
    counts.iter().map(|c| c / values.len() as f64).collect()
}

/// Which reward of a sample a panel shows.
type RewardOf = fn(&RewardSample) -> f64;

/// Side-by-side histograms of r_label and r_rationale, correct and wrong samples overlaid.
pub fn reward_histograms(samples: &[RewardSample]) -> Result<String, PlotError> {
    let err = draw_err("rewards.svg");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((1, 2));
        let panels: [(&str, RewardOf); 2] = [
            ("r_label (RM label)", |s| s.r_label),
            ("r_rationale (RM rationale)", |s| s.r_rationale),
        ];
        for (area, (title, get)) in areas.iter().zip(panels) {
            let values: Vec<f64> = samples.iter().map(get).filter(|v| v.is_finite()).collect();
            let (lo, hi) = range(values.iter().copied());
            let classes = [("correct", true, GREEN), ("wrong", false, RED)];
            let hists: Vec<Vec<f64>> = classes
                .iter()
                .map(|(_, want, _)| {
                    let v: Vec<f64> = samples
                        .iter()
                        .filter(|s| s.correct == *want)
                        .map(get)
                        .filter(|v| v.is_finite())
                        .collect();
                    histogram(&v, lo, hi, BINS)
                })
                .collect();
            let top = hists
                .iter()
                .flatten()
                .copied()
                .fold(0.0, f64::max)
                .max(1e-9)
                * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(32)
                .y_label_area_size(56)
                .build_cartesian_2d(lo..hi, 0.0..top)
                .map_err(|e| err(e.to_string()))?;
            chart
                .configure_mesh()
                .x_desc("reward")
                .y_desc("share of class")
                .draw()
                .map_err(|e| err(e.to_string()))?;
            let width = (hi - lo) / BINS as f64;
            for ((name, want, colour), hist) in classes.iter().zip(&hists) {
                let n = samples.iter().filter(|s| s.correct == *want).count();
                let style = colour.mix(0.4).filled();
                chart
                    .draw_series(hist.iter().enumerate().map(|(i, &h)| {
                        let x = lo + i as f64 * width;
                        Rectangle::new([(x, 0.0), (x + width, h)], style)
                    }))
                    .map_err(|e| err(e.to_string()))?
                    .label(format!("{name} (n = {n})"))
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], style));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppo_series_skip_eval_records_and_missing_keys() {
        let text = [
            r#"{"step": 1, "objective/scores": 0.5, "objective/kl": 0.01}"#,
            r#"{"step": 1, "eval": {"accuracy": 0.4}}"#,
            r#"{"step": 2, "objective/scores": 0.7, "objective/kl": 0.02, "rollout/label_accuracy": 0.25}"#,
            r#"{"objective/scores": 9.0}"#,
        ]
        .join("\n");
        let [scores, kl, acc] = ppo_series(&text);
        assert_eq!(scores, vec![(1.0, 0.5), (2.0, 0.7)]);
        assert_eq!(kl, vec![(1.0, 0.01), (2.0, 0.02)]);
        assert_eq!(acc, vec![(2.0, 0.25)]);
    }

    #[test]
    fn histogram_shares_sum_to_one_and_the_top_edge_is_in_the_last_bin() {
        let h = histogram(&[0.0, 0.1, 0.5, 1.0], 0.0, 1.0, 4);
        assert_eq!(h, vec![0.5, 0.0, 0.25, 0.25]);
    }

    #[test]
    fn plots_are_rendered_from_a_synthetic_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: String| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        for (mode, slope) in [("rlhf", 0.1), ("rllr-mixed", 0.3)] {
            let lines: Vec<String> = (1..=4)
                .map(|s| {
                    serde_json::json!({"step": s, "objective/scores": slope * s as f64,
                        "objective/kl": 0.01 * s as f64, "rollout/label_accuracy": 0.5})
                    .to_string()
                })
                .collect();
            put(&format!("ppo-{mode}/metrics.jsonl"), lines.join("\n"));
        }
        let samples: Vec<String> = (0..10)
            .map(|i| {
                serde_json::json!({"id": format!("e{i}"), "sample": i % 2, "label": "a",
                    "correct": i % 3 == 0, "r_label": i as f64 * 0.2, "r_rationale": -(i as f64)})
                .to_string()
            })
            .collect();
        put("diagnose/samples.jsonl", samples.join("\n"));
        let written = write_task_plots(dir.path()).unwrap();
        assert_eq!(written, vec!["plots/ppo.svg", "plots/rewards.svg"]);
        let ppo = std::fs::read_to_string(dir.path().join("plots/ppo.svg")).unwrap();
        assert!(ppo.starts_with("<svg"), "{}", &ppo[..50]);
        for name in [
            "rlhf",
            "rllr-mixed",
            "objective/kl",
            "rollout/label_accuracy",
        ] {
            assert!(ppo.contains(name), "{name} missing from ppo.svg");
        }
        assert!(!ppo.contains(">rllr<"), "no rllr run, no rllr line");
        let rewards = std::fs::read_to_string(dir.path().join("plots/rewards.svg")).unwrap();
        for name in ["r_label", "r_rationale", "correct (n = 4)", "wrong (n = 6)"] {
            assert!(rewards.contains(name), "{name} missing from rewards.svg");
        }
    }

    #[test]
    fn nothing_is_written_without_data() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_task_plots(dir.path()).unwrap().is_empty());
        assert!(!dir.path().join("plots").exists());
    }
}
