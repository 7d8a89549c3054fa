//! `rllr classify`: a label and a rationale for each input, from the policy model.

use anyhow::Result;
use clap::Args;
use rllr_client::{v1, Client};

use crate::args::{input_of, Generation, Inputs};
use crate::output::{OutputFormat, Rows};

/// Classify inputs with a rationale each.
#[derive(Args, Debug)]
pub struct Classify {
    #[command(flatten)]
    inputs: Inputs,
    #[command(flatten)]
    gen: Generation,
    /// Best-of-n: sample n responses per input and keep the highest-reward one (needs a
    /// reward model on the server); trades n x compute for accuracy.
    #[arg(long, env = "RLLR_CLIENT_BEST_OF_N", default_value_t = 0)]
    best_of_n: u32,
}

impl Classify {
    pub async fn run(self, c: &Client, format: OutputFormat) -> Result<i32> {
        let recs = self.inputs.records()?;
        let resp = c
            .classify(v1::ClassifyRequest {
                inputs: recs.iter().map(input_of).collect(),
                model: self.gen.model.clone(),
                params: Some(self.gen.params()),
                system: self.gen.system.clone(),
                best_of_n: self.best_of_n,
                ..Default::default()
            })
            .await?;
        let mut rows = Rows::new(&["id", "label", "confidence", "rationale"]);
        for (r, x) in recs.iter().zip(&resp.results) {
            rows.push(
                vec![
                    r.id.clone(),
                    if x.label.is_empty() {
                        "<none>".into()
                    } else {
                        x.label.clone()
                    },
                    format!("{:.3}", x.confidence),
                    x.rationale.clone(),
                ],
                serde_json::json!({"id": r.id, "label": x.label, "confidence": x.confidence, "rationale": x.rationale, "finish_reason": x.finish_reason, "generated_tokens": x.generated_tokens, "model": resp.model}),
            );
        }
        rows.print(format)?;
        Ok(0)
    }
}
