//! `rllr-train sft | reward | eval` as a user runs them, on a tiny random model written to disk with
//! a word-level tokenizer: a run killed after step 10 and resumed ends with the same weights as an
//! uninterrupted one, and bad input is refused before any training starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use rllr_core::{Config, Llama};
use serde_json::json;

const WORDS: &str =
    "is it hot or cold ? the sun fire snow ice oven winter summer bright frozen burns \
                     melts because answer : hot cold text sentence a warm thing chilly";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rllr-train"))
}

/// A tiny model directory: config, random weights, word-level tokenizer, plain template.
fn tiny_checkpoint(dir: &Path) {
    let mut vocab = BTreeMap::new();
    for (i, t) in ["<pad>", "<eos>", "<unk>"].iter().enumerate() {
        vocab.insert(t.to_string(), i);
    }
    for w in WORDS.split_whitespace() {
        let n = vocab.len();
        vocab.entry(w.to_string()).or_insert(n);
    }
    let cfg: Config = serde_json::from_value(json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "eos_token_id": 1, "pad_token_id": 0
    }))
    .unwrap();
    let model = Llama::random(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let mut manifest =
        rllr_core::manifest::Manifest::new(rllr_core::manifest::ModelKind::Base, "test");
    manifest.chat_template = Some(rllr_core::template::ChatTemplate::Plain);
    rllr_core::checkpoint::save_model(&model, dir, None, None, Some(&manifest)).unwrap();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            {"id": 0, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Task spec, 32 training examples with rationales, pairs.
fn tiny_task(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let task = write(
        &dir.join("toy.json"),
        r#"{"name":"toy","instruction":"is it hot or cold ?","input_fields":["text"],
            "labels":[{"name":"hot"},{"name":"cold"}]}"#,
    );
    let things = [
        "the sun",
        "fire",
        "snow",
        "ice",
        "the oven",
        "winter",
        "summer",
        "frozen ice",
    ];
    let mut ex = String::new();
    let mut pairs = String::new();
    for i in 0..32 {
        let thing = things[i % things.len()];
        let hot = !matches!(i % things.len(), 2 | 3 | 5 | 7);
        let (label, other) = if hot {
            ("hot", "cold")
        } else {
            ("cold", "hot")
        };
        let why = if hot { "it burns" } else { "it melts" };
        let line = json!({"id": format!("toy-{i}"), "task": "toy", "input": format!("{thing} is bright"),
            "label": label, "rationales": {label: [{"text": format!("{thing} {why}"), "source": "human"}]}});
        ex.push_str(&format!("{line}\n"));
        let pair = json!({"id": format!("p-{i}"), "task": "toy", "kind": "label", "input": format!("{thing} is bright"),
            "chosen": format!("{thing} {why}\nAnswer: {label}"), "rejected": format!("a chilly thing\nAnswer: {other}"),
            "chosen_label": label, "rejected_label": other});
        pairs.push_str(&format!("{pair}\n"));
    }
    (
        task,
        write(&dir.join("train.jsonl"), &ex),
        write(&dir.join("pairs.jsonl"), &pairs),
    )
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.env("RUST_LOG", "warn").output().unwrap();
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sft(model: &Path, task: &Path, train: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args([
        "sft",
        "--max-steps",
        "20",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--save-every",
        "5",
    ])
    .args([
        "--learning-rate",
        "3e-3",
        "--warmup-steps",
        "2",
        "--weight-decay",
        "0.01",
        "--lora-dropout",
        "0.1",
    ])
    .arg("--model")
    .arg(model)
    .arg("--task")
    .arg(task)
    .arg("--train")
    .arg(train)
    .arg("--output")
    .arg(out);
    c
}

fn adapter_tensors(dir: &Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("adapter/adapter_model.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn sft_killed_after_10_steps_and_resumed_equals_20_straight() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_checkpoint(&base);
    let (task, train, _) = tiny_task(root.path());
    let a = root.path().join("a");
    let o = run(&mut sft(&base, &task, &train, &a));
    assert!(o.status.success(), "{}", text(&o));
    let b = root.path().join("b");
    let o = run(sft(&base, &task, &train, &b).args(["--stop-after", "10"]));
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    assert!(
        !b.join("adapter").exists(),
        "a killed run writes no final model"
    );
    let o = run(sft(&base, &task, &train, &b).arg("--resume"));
    assert!(o.status.success(), "{}", text(&o));
    let (ta, tb) = (adapter_tensors(&a), adapter_tensors(&b));
    assert_eq!(ta.len(), tb.len());
    let mut worst = 0f32;
    for (k, x) in &ta {
        let d = (x - &tb[k])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        worst = worst.max(d.to_scalar::<f32>().unwrap());
    }
    assert!(worst <= 1e-6, "max |Δ| {worst}");
    // the merged M_sft is a loadable checkpoint that records its task
    let m = rllr_core::manifest::Manifest::read(&b.join("model"))
        .unwrap()
        .unwrap();
    assert_eq!(m.task.as_deref(), Some("toy"));
    let log = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 20);
}

#[test]
fn reward_trains_and_evaluates_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_checkpoint(&base);
    let (task, _, pairs) = tiny_task(root.path());
    let out = root.path().join("rm");
    let o = run(bin()
        .args([
            "reward",
            "--max-steps",
            "30",
            "--batch-size",
            "8",
            "--learning-rate",
            "5e-3",
            "--loss",
            "divergent-span",
        ])
        .arg("--model")
        .arg(&base)
        .arg("--task")
        .arg(&task)
        .arg("--pairs")
        .arg(&pairs)
        .arg("--output")
        .arg(&out)
        .arg("--eval-pairs")
        .arg(&pairs));
    assert!(o.status.success(), "{}", text(&o));
    let o = run(bin()
        .args(["eval", "reward"])
        .arg("--model")
        .arg(out.join("model"))
        .arg("--task")
        .arg(&task)
        .arg("--pairs")
        .arg(&pairs));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("accuracy 1.0000"), "{}", text(&o));
}

#[test]
fn bad_input_is_refused_before_training() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_checkpoint(&base);
    let (task, train, pairs) = tiny_task(root.path());
    let out = root.path().join("out");
    let expect_err = |cmd: &mut Command, needle: &str| {
        let o = run(cmd);
        assert!(!o.status.success(), "expected failure with '{needle}'");
        let t = text(&o);
        assert!(t.contains(needle), "'{needle}' not in: {t}");
        assert!(
            !out.join("checkpoints").exists() && !out.join("metrics.jsonl").exists(),
            "training started: {t}"
        );
    };
    // missing base checkpoint
    expect_err(
        &mut sft(&root.path().join("nope"), &task, &train, &out),
        "no such checkpoint",
    );
    // empty dataset
    let empty = write(&root.path().join("empty.jsonl"), "");
    expect_err(&mut sft(&base, &task, &empty, &out), "no training examples");
    // a config key that does not exist
    let cfg = write(&root.path().join("c.toml"), "[train]\nlearnig_rate = 0.1\n");
    expect_err(
        sft(&base, &task, &train, &out).arg("--config").arg(&cfg),
        "learnig_rate",
    );
    // a pair file for another task
    let other = std::fs::read_to_string(&pairs)
        .unwrap()
        .replace("\"task\":\"toy\"", "\"task\":\"sst2\"");
    let other = write(&root.path().join("other.jsonl"), &other);
    let reward = |p: &Path, m: &Path| {
        let mut c = bin();
        c.args(["reward", "--max-steps", "2"])
            .arg("--model")
            .arg(m)
            .arg("--task")
            .arg(&task)
            .arg("--pairs")
            .arg(p)
            .arg("--output")
            .arg(&out);
        c
    };
    expect_err(&mut reward(&other, &base), "is for task 'sst2'");
    // a base checkpoint trained for another task
    let mut m = rllr_core::manifest::Manifest::read(&base).unwrap().unwrap();
    m.task = Some("esnli".into());
    m.write(&base).unwrap();
    expect_err(&mut reward(&pairs, &base), "trained for task 'esnli'");
    // a base whose tokenizer does not fit its vocabulary
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"] = json!(8);
    m.task = None;
    m.write(&base).unwrap();
    std::fs::write(base.join("config.json"), cfg.to_string()).unwrap();
    expect_err(&mut reward(&pairs, &base), "mismatched checkpoint");
}

/// `rllr-train data <sub> --task toy --tasks-dir <dir> ...`.
fn data(sub: &str, dir: &Path) -> Command {
    let mut c = bin();
    c.args(["data", sub, "--task", "toy", "--tasks-dir"])
        .arg(dir);
    c
}

fn read_pairs(path: &Path) -> Vec<rllr_core::dataset::Pair> {
    rllr_core::dataset::read_jsonl(path).unwrap()
}

#[test]
fn trl_export_then_import_from_the_command_line_gives_the_same_pairs() {
    let root = tempfile::tempdir().unwrap();
    let (_, _, pairs) = tiny_task(root.path());
    let (trl, back) = (
        root.path().join("trl.jsonl"),
        root.path().join("back.jsonl"),
    );
    let o = run(data("export-trl", root.path())
        .arg("--conversational")
        .arg("--pairs")
        .arg(&pairs)
        .arg("--to")
        .arg(&trl));
    assert!(o.status.success(), "{}", text(&o));
    let o = run(data("import-trl", root.path())
        .arg("--from")
        .arg(&trl)
        .arg("--to")
        .arg(&back));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(read_pairs(&back), read_pairs(&pairs));
}

#[test]
fn reward_trains_on_trl_pairs() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_checkpoint(&base);
    let (task, _, pairs) = tiny_task(root.path());
    let trl = root.path().join("trl.jsonl");
    let o = run(data("export-trl", root.path())
        .arg("--pairs")
        .arg(&pairs)
        .arg("--to")
        .arg(&trl));
    assert!(o.status.success(), "{}", text(&o));
    let out = root.path().join("rm");
    let o = run(bin()
        .args(["reward", "--max-steps", "2", "--batch-size", "8"])
        .arg("--model")
        .arg(&base)
        .arg("--task")
        .arg(&task)
        .arg("--pairs")
        .arg(&trl)
        .arg("--output")
        .arg(&out));
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("model").join("rllr.json").exists(), "{}", text(&o));
}

#[test]
fn a_malformed_trl_file_fails_naming_file_line_and_field() {
    let root = tempfile::tempdir().unwrap();
    tiny_task(root.path());
    let good = json!({"prompt": "is it hot or cold ?\nfire", "chosen": "it burns\nAnswer: hot",
        "rejected": "Answer: cold"});
    let bad = json!({"prompt": "is it hot or cold ?\nice", "rejected": "Answer: hot"});
    let from = write(&root.path().join("bad.jsonl"), &format!("{good}\n{bad}\n"));
    let to = root.path().join("out.jsonl");
    let o = run(data("import-trl", root.path())
        .arg("--from")
        .arg(&from)
        .arg("--to")
        .arg(&to));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("bad.jsonl:2: field 'chosen': missing"),
        "{}",
        text(&o)
    );
    assert!(!to.exists());
}

#[test]
fn the_command_line_follows_the_conventions() {
    rllr_cli::conformance::check_binary(
        Path::new(env!("CARGO_BIN_EXE_rllr-train")),
        &[(&["rationalize"], "OPENAI_API_KEY")],
    );
}
