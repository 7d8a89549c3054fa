//! Reading a PPO run's `metrics.jsonl` back: the first- and last-quarter means of the headline
//! statistics that `report.json` and the pipeline report show.

use std::path::Path;

use serde_json::{json, Map, Value};

/// Means of the headline statistics over the first and the last quarter of the logged steps.
pub(super) fn quarter_means(log: &Path) -> anyhow::Result<(Value, Value)> {
    let recs: Vec<Value> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let q = (recs.len() / 4).max(1);
    let keys = [
        "objective/scores",
        "rollout/label_accuracy",
        "objective/kl",
        "tokens/responses_len_mean",
    ];
    let summarise = |rs: &[Value]| {
        let mut m = Map::new();
        for k in keys {
            let v: Vec<f64> = rs.iter().filter_map(|r| r[k].as_f64()).collect();
            m.insert(
                k.into(),
                json!(v.iter().sum::<f64>() / v.len().max(1) as f64),
            );
        }
        Value::Object(m)
    };
    let n = recs.len();
    Ok((
        summarise(&recs[..q.min(n)]),
        summarise(&recs[n.saturating_sub(q)..]),
    ))
}
