//! `rllr compare`: which of two responses to one input the reward model prefers.

use anyhow::Result;
use clap::Args;
use rllr_client::{v1, Client};

use crate::args::RewardModels;
use crate::output::{reward_json, OutputFormat, Rows};

/// Which of two responses to one input the reward model prefers.
#[derive(Args, Debug)]
pub struct Compare {
    /// The input both responses answer.
    #[arg(long, env = "RLLR_CLIENT_TEXT")]
    text: String,
    /// The second text of a pair task.
    #[arg(long, env = "RLLR_CLIENT_TEXT_PAIR")]
    text_pair: Option<String>,
    /// Rationale of response A.
    #[arg(long, env = "RLLR_CLIENT_A_RATIONALE", default_value = "")]
    a_rationale: String,
    /// Label of response A.
    #[arg(long, env = "RLLR_CLIENT_A_LABEL")]
    a_label: String,
    /// Rationale of response B.
    #[arg(long, env = "RLLR_CLIENT_B_RATIONALE", default_value = "")]
    b_rationale: String,
    /// Label of response B.
    #[arg(long, env = "RLLR_CLIENT_B_LABEL")]
    b_label: String,
    #[command(flatten)]
    models: RewardModels,
}

impl Compare {
    pub async fn run(self, c: &Client, format: OutputFormat) -> Result<i32> {
        let resp = c
            .compare(v1::CompareRequest {
                input: Some(v1::Input {
                    text: self.text,
                    text_pair: self.text_pair,
                }),
                a: Some(v1::Candidate {
                    rationale: self.a_rationale,
                    label: self.a_label,
                }),
                b: Some(v1::Candidate {
                    rationale: self.b_rationale,
                    label: self.b_label,
                }),
                label_model: self.models.label_model,
                rationale_model: self.models.rationale_model,
                lambda: self.models.lambda,
            })
            .await?;
        let (a, b) = (
            resp.reward_a.unwrap_or_default(),
            resp.reward_b.unwrap_or_default(),
        );
        let mut rows = Rows::new(&["probability_a", "mixed_a", "mixed_b"]);
        rows.push(
            vec![
                format!("{:.4}", resp.probability_a),
                format!("{:.4}", a.mixed_reward),
                format!("{:.4}", b.mixed_reward),
            ],
            serde_json::json!({"probability_a": resp.probability_a, "reward_a": reward_json(&a), "reward_b": reward_json(&b)}),
        );
        rows.print(format)?;
        Ok(0)
    }
}
