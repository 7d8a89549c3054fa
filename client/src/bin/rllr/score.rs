//! `rllr score`: rewards of given (input, rationale, label) responses.

use anyhow::{Context, Result};
use clap::Args;
use rllr_client::{v1, Client};

use crate::args::{input_of, Inputs, RewardModels};
use crate::output::{reward_json, OutputFormat, Rows};

/// Score responses (input, rationale, label) with the label-sensitive reward model.
#[derive(Args, Debug)]
pub struct Score {
    #[command(flatten)]
    inputs: Inputs,
    /// Rationale of the response to score (with --text; a file gives one per record).
    #[arg(long, env = "RLLR_CLIENT_RATIONALE", default_value = "")]
    rationale: String,
    /// Label the response argues for (with --text; a file gives one per record).
    #[arg(long, env = "RLLR_CLIENT_LABEL")]
    label: Option<String>,
    #[command(flatten)]
    models: RewardModels,
    /// Report sigmoid(score) instead of raw head outputs, to read scores as probabilities.
    #[arg(long, env = "RLLR_CLIENT_SIGMOID")]
    sigmoid: bool,
}

impl Score {
    pub async fn run(self, c: &Client, format: OutputFormat) -> Result<i32> {
        let recs = self.inputs.records()?;
        let items = recs
            .iter()
            .map(|r| {
                let label = r.label.clone().or_else(|| self.label.clone()).context(
                    "score needs the label the response argues for (--label or a 'label' field)",
                )?;
                Ok(v1::ScoreItem {
                    input: Some(input_of(r)),
                    rationale: r
                        .rationale
                        .clone()
                        .unwrap_or_else(|| self.rationale.clone()),
                    label,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let resp = c
            .score(v1::ScoreRequest {
                items,
                label_model: self.models.label_model,
                rationale_model: self.models.rationale_model,
                lambda: self.models.lambda,
                sigmoid: self.sigmoid,
            })
            .await?;
        let mut rows = Rows::new(&["id", "label_reward", "rationale_reward", "mixed", "tokens"]);
        for (r, w) in recs.iter().zip(&resp.rewards) {
            let mut json = reward_json(w);
            json["id"] = r.id.clone().into();
            rows.push(
                vec![
                    r.id.clone(),
                    format!("{:.4}", w.label_reward),
                    w.rationale_reward.map_or("-".into(), |x| format!("{x:.4}")),
                    format!("{:.4}", w.mixed_reward),
                    w.tokens.to_string(),
                ],
                json,
            );
        }
        rows.print(format)?;
        Ok(0)
    }
}
