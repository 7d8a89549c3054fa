//! `rllr-train pipeline CONFIG`: the whole method in one command (docs/method.md §1). For every task
//! of the config it plans the stages (rationales → pairs → SFT without and with rationales → RM
//! label and RM rationale → diagnose → PPO rlhf, rllr, rllr-mixed → evaluation on the test split,
//! best-of-N included; on-policy pairs come after SFT), skips the
//! ones whose stamp says their outputs are current, runs the rest in-process with their resolved
//! config written under `<run_dir>/configs/`, times each, and writes `report.{md,json}`.

pub mod config;
pub mod exec;
pub mod export;
pub mod plan;
pub mod plots;
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
                println!("{head} ... would run ({why})\n      {}", plan::describe(s));
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
    if let Some(dest) = &loaded.file.pipeline.export_dir {
        export_all(&loaded, &report, &run_dir, dest)?;
    }
    Ok(())
}

/// Ship every task's adapters and the report to `dest` (see [`export`]).
fn export_all(
    loaded: &config::Loaded,
    report: &Report,
    run_dir: &Path,
    dest: &Path,
) -> anyhow::Result<()> {
    for t in &report.tasks {
        let shipped = export::export_task(
            &run_dir.join(&t.task),
            &loaded.file.pipeline.model,
            &dest.join(&t.task),
        )?;
        println!(
            "exported {} of {} to {}",
            shipped.join(", "),
            t.task,
            dest.join(&t.task).display()
        );
        // The report links its plots relative to itself: ship them beside it.
        for plot in &t.plots {
            let bytes = std::fs::read(run_dir.join(plot))
                .with_context(|| format!("reading plot {}", run_dir.join(plot).display()))?;
            rllr_core::fsutil::write_file_atomic(&dest.join(plot), &bytes)?;
        }
    }
    report::write(dest, report)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A quickstart-like config over the bundled ComVE files (tests run in `trainer/`).
    fn write_config(dir: &Path, extra: &str) -> PathBuf {
        let model = dir.join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let text = format!(
            "[pipeline]\nrun_dir = {:?}\nmodel = {:?}\n\n[[tasks]]\nname = \"comve\"\ntasks_dir = \"../data/tasks\"\ndata_dir = \"../data/comve\"\n\n[data]\ntrain_limit = 12\ndev_limit = 4\ntest_limit = 6\n\n[pairs]\nprefer = [\"human\"]\nwrong_label_rationales = true\n{extra}",
            dir.join("run"),
            model
        );
        let path = dir.join("p.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn args(config: &Path) -> PipelineArgs {
        PipelineArgs {
            config: config.to_path_buf(),
            only: vec!["rationales".into(), "pairs".into()],
            task: Vec::new(),
            force: false,
            dry_run: false,
        }
    }

    fn finished_at(dir: &Path, stage: &str) -> f64 {
        let s: stamp::Stamp = serde_json::from_str(
            &std::fs::read_to_string(dir.join("run/comve").join(stage).join(stamp::STAMP)).unwrap(),
        )
        .unwrap();
        s.finished_at
    }

    #[test]
    fn unchanged_stages_are_skipped_and_changes_rerun_what_depends_on_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "");
        run_with(&args(&cfg), &Runners::default()).unwrap();
        let pairs = dir.path().join("run/comve/pairs");
        let label = std::fs::read_to_string(pairs.join("label.jsonl")).unwrap();
        assert_eq!(
            label.lines().count(),
            12,
            "one wrong label per ComVE example"
        );
        assert!(dir.path().join("run/configs/comve/pairs.toml").is_file());
        let (r0, p0) = (
            finished_at(dir.path(), "rationales"),
            finished_at(dir.path(), "pairs"),
        );
        run_with(&args(&cfg), &Runners::default()).unwrap();
        assert_eq!(
            finished_at(dir.path(), "rationales"),
            r0,
            "unchanged: skipped"
        );
        assert_eq!(finished_at(dir.path(), "pairs"), p0, "unchanged: skipped");
        let report = std::fs::read_to_string(dir.path().join("run/report.md")).unwrap();
        assert!(
            report.contains("| comve | pairs | skipped (current"),
            "{report}"
        );
        // a downstream config change reruns only the downstream stage
        let cfg = write_config(dir.path(), "seed_note = 0\n");
        assert!(
            run_with(&args(&cfg), &Runners::default()).is_err(),
            "unknown key"
        );
        let cfg = write_config(
            dir.path(),
            "\n[tasks.overrides.pairs]\nwrong_label_rationales = false\n",
        );
        run_with(&args(&cfg), &Runners::default()).unwrap();
        assert_eq!(finished_at(dir.path(), "rationales"), r0);
        let p1 = finished_at(dir.path(), "pairs");
        assert!(p1 > p0, "pairs reran");
        // an upstream change reruns the upstream stage and everything below it
        let cfg = write_config(
            dir.path(),
            "\n[tasks.overrides.pairs]\nwrong_label_rationales = false\n[tasks.overrides.data]\ntest_limit = 5\n",
        );
        run_with(&args(&cfg), &Runners::default()).unwrap();
        assert!(finished_at(dir.path(), "rationales") > r0);
        assert!(finished_at(dir.path(), "pairs") > p1);
        let test = std::fs::read_to_string(pairs.join("test.jsonl")).unwrap();
        assert_eq!(test.lines().count(), 5);
    }

    #[test]
    fn dry_run_propagates_reruns_and_a_missing_model_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "");
        let mut a = args(&cfg);
        a.dry_run = true;
        a.only.clear();
        run_with(&a, &Runners::default()).unwrap();
        assert!(
            !dir.path().join("run/comve").exists(),
            "dry run writes nothing"
        );
        std::fs::remove_file(dir.path().join("model/config.json")).unwrap();
        let e = run_with(&args(&cfg), &Runners::default()).unwrap_err();
        assert!(
            format!("{e:#}").contains("scripts/fetch-smollm2.sh"),
            "{e:#}"
        );
    }

    #[test]
    fn dry_run_plans_on_policy_pairs_without_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "source = \"on-policy\"\n");
        let mut a = args(&cfg);
        a.dry_run = true;
        a.only.clear();
        std::fs::remove_file(dir.path().join("model/config.json")).unwrap();
        run_with(&a, &Runners::default()).unwrap();
        assert!(
            !dir.path().join("run/comve").exists(),
            "dry run writes nothing"
        );
    }

    #[test]
    fn only_selects_names_and_groups() {
        let only = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert!(selected(&[], "sft"));
        assert!(selected(&only("sft"), "sft"));
        assert!(!selected(&only("sft"), "sft-norat"));
        assert!(selected(&only("ppo"), "ppo-rllr-mixed"));
        assert!(selected(&only("eval"), "eval-rm-label"));
        assert!(selected(&only("eval"), "eval-best-of-n"));
        assert!(selected(&only("diagnose"), "diagnose"));
        assert!(selected(&only("rm"), "rm-label"));
        assert!(!selected(&only("ppo"), "pairs"));
    }
}
