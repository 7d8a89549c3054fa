//! `rllr-train pipeline CONFIG`: the whole method in one command (method.md §1). For every task
//! of the config it plans the stages (rationales → pairs → SFT without and with rationales → RM
//! label and RM rationale → PPO rlhf, rllr, rllr-mixed → evaluation on the test split), skips the
//! ones whose stamp says their outputs are current, runs the rest in-process with their resolved
//! config written under `<run_dir>/configs/`, times each, and writes `report.{md,json}`.

pub mod config;
pub mod exec;
pub mod plan;
pub mod report;
pub mod stamp;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

use exec::Runners;
use plan::Stage;
use report::{Report, StageTime};
use stamp::{Currency, Key};

#[derive(Args, Debug)]
pub struct PipelineArgs {
    /// Pipeline config (TOML): [pipeline], [[tasks]] and one table per stage.
    pub config: PathBuf,
    /// Run only these stages (comma-separated names such as sft,rm-label, or the groups ppo,
    /// eval, rm); the others are left as they are.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Only these tasks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub task: Vec<String>,
    /// Rerun the selected stages even when they are current (and so every stage below them).
    #[arg(long)]
    pub force: bool,
    /// Print the plan and which stages are current, run nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Run the pipeline with the real stages.
pub fn run(args: &PipelineArgs) -> anyhow::Result<()> {
    run_with(args, &Runners::default())
}

/// Does `--only` select this stage?
fn selected(only: &[String], stage: &str) -> bool {
    only.is_empty()
        || only.iter().any(|o| {
            o == stage
                || (matches!(o.as_str(), "ppo" | "eval" | "rm")
                    && stage.starts_with(&format!("{o}-")))
        })
}

/// Every stage of the selected tasks, in run order.
fn plan_all(loaded: &config::Loaded, tasks: &[String]) -> anyhow::Result<Vec<Stage>> {
    let run = &loaded.file.pipeline;
    for t in tasks {
        if !loaded.per_task.iter().any(|(e, _)| &e.name == t) {
            bail!("--task {t}: not in the config");
        }
    }
    let mut stages = Vec::new();
    for (t, f) in &loaded.per_task {
        if tasks.is_empty() || tasks.contains(&t.name) {
            stages
                .extend(plan::task_stages(run, t, f).with_context(|| format!("task {}", t.name))?);
        }
    }
    Ok(stages)
}

/// The key a stage would run with now.
fn key_of(s: &Stage) -> anyhow::Result<Key> {
    Ok(Key {
        config_hash: stamp::hash_bytes(s.config.as_bytes()),
        inputs: stamp::input_hashes(&s.inputs)?,
    })
}

/// A clear error before anything runs when the base model is not there.
fn check_base_model(model: &Path) -> anyhow::Result<()> {
    if !model.join("config.json").is_file() {
        bail!(
            "base model {} not found: run `bash scripts/fetch-smollm2.sh` (or set [pipeline] model to a converted checkpoint)",
            model.display()
        );
    }
    Ok(())
}

/// What the pipeline decided for one stage.
enum Decision {
    Skip(String),
    Run(String),
}

fn decide(s: &Stage, key: &Key, args: &PipelineArgs, upstream_runs: bool) -> Decision {
    if !selected(&args.only, &s.name) {
        return Decision::Skip("not selected".into());
    }
    if args.force {
        return Decision::Run("forced".into());
    }
    if upstream_runs {
        return Decision::Run("an upstream stage reruns".into());
    }
    match stamp::check(&s.out, key) {
        Currency::Current(st) => Decision::Skip(format!("current ({:.1} s)", st.wall_s)),
        Currency::Missing => Decision::Run("no outputs yet".into()),
        Currency::Stale(why) => Decision::Run(why.into()),
    }
}

/// Run (or with `--dry-run`, print) the pipeline; stage entry points come from `runners`.
pub fn run_with(args: &PipelineArgs, runners: &Runners) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let loaded = config::load(&args.config)?;
    let run_dir = loaded.file.pipeline.run_dir.clone();
    let stages = plan_all(&loaded, &args.task)?;
    if !args.dry_run {
        check_base_model(&loaded.file.pipeline.model)?;
    }
    let n = stages.len();
    let mut times = Vec::new();
    let mut rerun: Vec<PathBuf> = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        let head = format!("[{}/{n}] {} {}", i + 1, s.task, s.name);
        let key = key_of(s)?;
        let upstream_runs = s
            .inputs
            .iter()
            .any(|inp| matches!(inp, stamp::Input::Stage(p) if rerun.contains(p)));
        let (status, wall_s) = match decide(s, &key, args, upstream_runs) {
            Decision::Skip(why) => {
                println!("{head} ... skipped ({why})");
                let recorded = match stamp::check(&s.out, &key) {
                    Currency::Current(st) => Some(st.wall_s),
                    _ => None,
                };
                (format!("skipped ({why})"), recorded)
            }
            Decision::Run(why) if args.dry_run => {
                println!("{head} ... would run ({why})");
                rerun.push(s.out.clone());
                (format!("planned ({why})"), None)
            }
            Decision::Run(why) => {
                println!("{head} ... running ({why})");
                let wall = execute(s, &run_dir, runners)
                    .with_context(|| format!("stage {} of task {}", s.name, s.task))?;
                println!("{head} ... {wall:.1} s");
                rerun.push(s.out.clone());
                ("ran".into(), Some(wall))
            }
        };
        times.push(StageTime {
            task: s.task.clone(),
            stage: s.name.clone(),
            status,
            wall_s,
        });
    }
    if args.dry_run {
        return Ok(());
    }
    let report = Report {
        config: args.config.display().to_string(),
        tasks: loaded
            .per_task
            .iter()
            .filter(|(t, _)| args.task.is_empty() || args.task.contains(&t.name))
            .map(|(t, _)| report::task_row(&t.name, &run_dir.join(&t.name)))
            .collect(),
        stages: times,
        total_wall_s: t0.elapsed().as_secs_f64(),
    };
    report::write(&run_dir, &report)?;
    print!("{}", report::render_markdown(&report));
    println!("report: {}", run_dir.join("report.md").display());
    Ok(())
}

/// Write the stage's config, run it (resuming an interrupted run with the same key), stamp it.
fn execute(s: &Stage, run_dir: &Path, runners: &Runners) -> anyhow::Result<f64> {
    let t = Instant::now();
    let key = key_of(s)?;
    let config = plan::config_path(run_dir, s);
    if let Some(dir) = config.parent() {
        std::fs::create_dir_all(dir)?;
    }
    rllr_core::fsutil::write_file_atomic(&config, s.config.as_bytes())?;
    let resume = stamp::prepare(&s.out, &key)?;
    exec::run_stage(s, &config, resume, runners)?;
    let wall = t.elapsed().as_secs_f64();
    stamp::finish(&s.out, &s.name, key, wall)?;
    Ok(wall)
}
