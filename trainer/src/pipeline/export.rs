//! Shipping a pipeline's results as the embedded default: the small pieces (the SFT adapter that
//! makes M_sft from the public base, the reward models' adapters + heads, the PPO policy
//! adapters, and the SFT-without-rationales adapter of the baseline) are copied under `[pipeline] export_dir/<task>/` with their bases rewritten as paths
//! relative to each adapter directory — `sft/` on the base model, the others on `../sft` — so the
//! tree works wherever it lands next to the base (`rllr-server` merges the chain when it loads).
//! The 540 MB merged M_sft is never copied.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};
use rllr_core::checkpoint::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use rllr_core::fsutil::{write_dir_atomic, write_file_atomic};
use serde_json::Value;

/// (shipped name, source directory under `<run_dir>/<task>/`, built on M_sft?)
const PIECES: [(&str, &str, bool); 7] = [
    ("sft", "sft/adapter", false),
    ("sft-norat", "sft-norat/adapter", false),
    ("rm-label", "rm-label/model", true),
    ("rm-rationale", "rm-rationale/model", true),
    ("rlhf", "ppo-rlhf/model", true),
    ("rllr", "ppo-rllr/model", true),
    ("rllr-mixed", "ppo-rllr-mixed/model", true),
];

/// `to` as a path relative to the directory `from` (both made absolute first).
pub fn relative(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let abs = |p: &Path| -> anyhow::Result<PathBuf> {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()?.join(p)
        };
        // Lexical normalisation: the export directory does not exist yet.
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        Ok(out)
    };
    let (from, to) = (abs(from)?, abs(to)?);
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in to.components().skip(common) {
        rel.push(c);
    }
    Ok(rel)
}

/// Copy one adapter directory to `dest` with its base set to `base` (relative to `dest`).
fn ship(src: &Path, dest: &Path, base: &str) -> anyhow::Result<()> {
    if !src.join(ADAPTER_WEIGHTS_FILE).is_file() {
        bail!("{}: no {ADAPTER_WEIGHTS_FILE} to export", src.display());
    }
    let read = |name: &str| -> anyhow::Result<Option<Value>> {
        let p = src.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&std::fs::read_to_string(&p)?)
                .with_context(|| format!("{}", p.display()))?,
        ))
    };
    let mut config = read(ADAPTER_CONFIG_FILE)?
        .with_context(|| format!("{}: no {ADAPTER_CONFIG_FILE}", src.display()))?;
    config["base_model_name_or_path"] = Value::from(base);
    let manifest = read("rllr.json")?.map(|mut m| {
        m["base_checkpoint"] = Value::from(base);
        m
    });
    write_dir_atomic(dest, |dir| {
        write_file_atomic(
            &dir.join(ADAPTER_CONFIG_FILE),
            serde_json::to_string_pretty(&config)
                .expect("json")
                .as_bytes(),
        )?;
        std::fs::copy(
            src.join(ADAPTER_WEIGHTS_FILE),
            dir.join(ADAPTER_WEIGHTS_FILE),
        )
        .map_err(|e| rllr_core::Error::io(dir.join(ADAPTER_WEIGHTS_FILE), e))?;
        if let Some(m) = &manifest {
            write_file_atomic(
                &dir.join("rllr.json"),
                serde_json::to_string_pretty(m).expect("json").as_bytes(),
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Export the pieces of `<run_dir>/<task>` to `<export_dir>/<task>`; pieces a run did not produce
/// are reported and skipped. Returns the names shipped.
pub fn export_task(
    task_dir: &Path,
    base_model: &Path,
    dest: &Path,
) -> anyhow::Result<Vec<&'static str>> {
    let mut shipped = Vec::new();
    for (name, src, on_sft) in PIECES {
        let src = task_dir.join(src);
        if !src.is_dir() {
            eprintln!("export: {} missing, not shipped", src.display());
            continue;
        }
        let out = dest.join(name);
        let base = if on_sft {
            PathBuf::from("../sft")
        } else {
            relative(&out, base_model)?
        };
        ship(&src, &out, &base.to_string_lossy())
            .with_context(|| format!("exporting {}", src.display()))?;
        shipped.push(name);
    }
    Ok(shipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_walk_up_then_down() {
        assert_eq!(
            relative(
                Path::new("/a/models/quickstart/comve/sft"),
                Path::new("/a/models/smollm2")
            )
            .unwrap(),
            PathBuf::from("../../../smollm2")
        );
        assert_eq!(
            relative(Path::new("/x/y"), Path::new("/x/y/z")).unwrap(),
            PathBuf::from("z")
        );
        assert_eq!(
            relative(Path::new("/x/./y/../y"), Path::new("/x/w")).unwrap(),
            PathBuf::from("../w")
        );
    }

    #[test]
    fn shipped_adapters_point_at_their_bases() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run/comve");
        for src in ["sft/adapter", "rm-label/model"] {
            let d = run.join(src);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join(ADAPTER_CONFIG_FILE),
                r#"{"base_model_name_or_path": "/abs/base", "r": 16}"#,
            )
            .unwrap();
            std::fs::write(d.join(ADAPTER_WEIGHTS_FILE), b"weights").unwrap();
            std::fs::write(
                d.join("rllr.json"),
                r#"{"kind": "reward", "base_checkpoint": "runs/x/sft/model"}"#,
            )
            .unwrap();
        }
        let base = tmp.path().join("models/smollm2");
        let dest = tmp.path().join("models/quickstart/comve");
        let shipped = export_task(&run, &base, &dest).unwrap();
        assert_eq!(shipped, vec!["sft", "rm-label"]);
        let cfg = |p: &str, f: &str| -> Value {
            serde_json::from_str(&std::fs::read_to_string(dest.join(p).join(f)).unwrap()).unwrap()
        };
        assert_eq!(
            cfg("sft", ADAPTER_CONFIG_FILE)["base_model_name_or_path"],
            "../../../smollm2"
        );
        assert_eq!(
            cfg("sft", "rllr.json")["base_checkpoint"],
            "../../../smollm2"
        );
        assert_eq!(cfg("rm-label", "rllr.json")["base_checkpoint"], "../sft");
        assert_eq!(cfg("rm-label", ADAPTER_CONFIG_FILE)["r"], 16);
        assert_eq!(
            std::fs::read(dest.join("rm-label").join(ADAPTER_WEIGHTS_FILE)).unwrap(),
            b"weights"
        );
        // the base resolves from the shipped directory
        std::fs::create_dir_all(&base).unwrap();
        assert_eq!(
            dest.join("sft")
                .join("../../../smollm2")
                .canonicalize()
                .unwrap(),
            base.canonicalize().unwrap()
        );
    }
}
