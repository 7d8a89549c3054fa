//! What the bench binaries share: the `--model` flag that names the base model they load, so
//! `rllr-bench` and `rllr-serve-bench` read the same variable with the same default.

use std::path::PathBuf;

/// The base model every engine bench loads.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArg {
    /// HF-layout model directory with tokenizer.json (e.g. from scripts/fetch-smollm2.sh);
    /// rllr-bench's PyTorch peer loads the same directory, so both sides run the same weights.
    #[arg(
        long,
        env = "RLLR_BENCH_MODEL",
        default_value = "models/smollm2-135m-instruct"
    )]
    pub model: PathBuf,
}
