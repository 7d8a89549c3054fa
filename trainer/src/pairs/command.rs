//! `rllr-train pairs`: the command line over the pair builders of [`super`] and the on-policy
//! builder of [`crate::onpolicy::pairs`] — reading the inputs, writing the pairs file. Kept
//! apart from the builders so the on-policy builder can use their checks without a cycle.

use super::*;

/// `rllr-train pairs …` arguments.
#[derive(clap::Args, Debug)]
pub struct PairsArgs {
    #[command(subcommand)]
    pub command: PairsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum PairsCommand {
    /// Label-sensitive pairs (RLLR reward data): gold rationale + gold label vs wrong-label
    /// rationale + wrong label, k per example.
    Label(LabelArgs),
    /// Rationale-sensitive pairs (RLHF baseline): same gold label, two rationales ordered by a judge.
    Rationale(RationaleArgs),
    /// Held-out label-sensitive test pairs (every wrong label) for reward-model accuracy; refuses
    /// a test set that shares an input with the training set.
    Test(TestArgs),
    /// On-policy label and rationale pairs from k samples of M_sft per prompt (right answer ≻
    /// wrong answer; gold rationale ≻ gold-labelled sample), instead of teacher rationales.
    OnPolicy(Box<crate::onpolicy::pairs::OnPolicyArgs>),
}

/// Inputs every pair builder takes.
#[derive(clap::Args, Debug)]
pub struct PairInputs {
    #[command(flatten)]
    pub task: crate::data::cli::TaskArgs,
    /// Canonical examples JSONL; rationales inside it are used.
    #[arg(long)]
    pub data: std::path::PathBuf,
    /// Extra rationale files from `rllr-train rationalize` (repeatable).
    #[arg(long)]
    pub rationales: Vec<std::path::PathBuf>,
    /// Pairs JSONL to write (atomically).
    #[arg(long)]
    pub output: std::path::PathBuf,
    /// Seed for choosing among rationales and sampling wrong labels: same seed, same file.
    #[arg(long, env = "RLLR_TRAIN_SEED", default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Debug)]
pub struct LabelArgs {
    #[command(flatten)]
    pub inputs: PairInputs,
    /// Wrong labels per example (D3): `all` or a count sampled by seed.
    #[arg(long, env = "RLLR_TRAIN_WRONG_LABELS", default_value = "all")]
    pub wrong_labels: WrongLabels,
}

#[derive(clap::Args, Debug)]
pub struct RationaleArgs {
    #[command(flatten)]
    pub inputs: PairInputs,
    /// Source-rank judge: rationale sources (or prefixes) from best to worst; rationales from
    /// unlisted sources are not judged.
    #[arg(long, value_delimiter = ',', default_value = "human,openai:,local:")]
    pub prefer: Vec<String>,
    /// Also offer rationales written for wrong labels as the worse rationale (rendered with the
    /// gold label): e.g. ComVE's human "confusing reasons".
    #[arg(long)]
    pub wrong_label_rationales: bool,
}

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub inputs: PairInputs,
    /// The training split the test pairs must not overlap.
    #[arg(long)]
    pub train: std::path::PathBuf,
}

fn load_inputs(i: &PairInputs) -> anyhow::Result<(TaskSpec, Vec<Example>, RationalePool)> {
    let task = i.task.load()?;
    let examples = rllr_core::dataset::read_examples(&i.data, &task)?;
    let mut records: Vec<RationaleRecord> = Vec::new();
    for path in &i.rationales {
        records.extend(rllr_core::dataset::read_jsonl::<RationaleRecord>(path)?);
    }
    for r in &records {
        task.label_index(&r.label)?;
    }
    let pool = rationale_pool(&examples, &records);
    Ok((task, examples, pool))
}

fn write_pairs(i: &PairInputs, pairs: &[Pair], incomplete: usize) -> anyhow::Result<()> {
    rllr_core::dataset::write_jsonl(&i.output, pairs)?;
    println!(
        "{} pairs -> {} ({incomplete} examples left out for a missing rationale)",
        pairs.len(),
        i.output.display()
    );
    Ok(())
}

/// Run a `pairs` subcommand.
pub fn run(args: &PairsArgs) -> anyhow::Result<()> {
    match &args.command {
        PairsCommand::Label(a) => {
            let (task, exs, pool) = load_inputs(&a.inputs)?;
            let b = label_pairs(&task, &exs, &pool, a.wrong_labels, a.inputs.seed)?;
            write_pairs(&a.inputs, &b.pairs, b.incomplete.len())
        }
        PairsCommand::Rationale(a) => {
            let (task, exs, pool) = load_inputs(&a.inputs)?;
            let judge = SourceRank {
                order: a.prefer.clone(),
            };
            let pairs = rationale_pairs(
                &task,
                &exs,
                &pool,
                &judge,
                a.wrong_label_rationales,
                a.inputs.seed,
            )?;
            write_pairs(&a.inputs, &pairs, exs.len() - pairs.len())
        }
        PairsCommand::Test(a) => {
            let (task, exs, pool) = load_inputs(&a.inputs)?;
            let train = rllr_core::dataset::read_examples(&a.train, &task)?;
            let b = test_pairs(&task, &exs, &train, &pool, a.inputs.seed)?;
            write_pairs(&a.inputs, &b.pairs, b.incomplete.len())
        }
        PairsCommand::OnPolicy(a) => crate::onpolicy::pairs::run(a),
    }
}
