//! Parity with Hugging Face transformers on the committed tiny fixtures: logits of left- and
//! right-padded batches (tied and untied embeddings, GQA, Llama-3 RoPE scaling), PEFT LoRA adapters
//! (active, merged, saved and reloaded), the `score` head of `LlamaForSequenceClassification`.

use candle_core::{DType, Device};
use rllr_core::checkpoint::{self, Checkpoint, SCORE_HEAD};
use rllr_core::ForwardCtx;
use rllr_tests::{
    fixture_batch, fixtures_dir, load_fixture, max_abs_diff, max_diff_on_real, rows_u32,
};

const TOL: f32 = 1e-4;

/// tiny-untied with the PEFT adapter of the fixtures loaded as `lora`.
fn open_with_lora() -> rllr_core::Llama {
    let mut m = open("tiny-untied");
    checkpoint::load_adapter(
        &mut m,
        &fixtures_dir().join("tiny-untied-lora"),
        "lora",
        false,
    )
    .unwrap();
    m
}

fn open(name: &str) -> rllr_core::Llama {
    Checkpoint::open(fixtures_dir().join(name))
        .unwrap()
        .load_model(DType::F32, &Device::Cpu)
        .unwrap()
}

#[test]
fn tiny_logits_match_transformers_for_both_paddings() {
    let f = load_fixture("reference-tiny.safetensors");
    for name in ["tiny-tied", "tiny-untied"] {
        let model = open(name);
        for side in ["left", "right"] {
            let batch = fixture_batch(&f, side);
            let got = model.forward(&batch, &ForwardCtx::default()).unwrap();
            let d = max_diff_on_real(&got, &f[&format!("{name}.logits_{side}")], &batch);
            println!("{name} {side}: max |Δ| = {d:.2e}");
            assert!(d <= TOL, "{name} {side}: max |Δ| {d}");
        }
    }
    // our positions are transformers' position_ids for left padding
    let batch = fixture_batch(&f, "left");
    assert_eq!(batch.positions, rows_u32(&f["position_ids_left"]));
}

#[test]
fn peft_adapter_active_merged_and_round_tripped_matches_transformers() {
    let f = load_fixture("reference-tiny.safetensors");
    let mut model = open_with_lora();
    let ctx = ForwardCtx::with_adapter("lora");
    for side in ["left", "right"] {
        let batch = fixture_batch(&f, side);
        let got = model.forward(&batch, &ctx).unwrap();
        let d = max_diff_on_real(&got, &f[&format!("tiny-untied-lora.logits_{side}")], &batch);
        println!("lora active {side}: max |Δ| = {d:.2e}");
        assert!(d <= TOL, "adapter {side}: {d}");
    }
    let batch = fixture_batch(&f, "right");
    let expect = &f["tiny-untied-lora.merged_logits_right"];

    // saved as PEFT and loaded back
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::save_adapter(
        &model,
        "lora",
        None,
        "../tiny-untied",
        &tmp.path().join("adapter"),
        None,
    )
    .unwrap();
    let mut again = open("tiny-untied");
    checkpoint::load_adapter(&mut again, &tmp.path().join("adapter"), "lora", false).unwrap();
    let d = max_diff_on_real(&again.forward(&batch, &ctx).unwrap(), expect, &batch);
    assert!(d <= TOL, "adapter reloaded: {d}");

    // merged, saved as a full checkpoint, reloaded
    model.merge_adapter("lora").unwrap();
    let merged = model.forward(&batch, &ForwardCtx::default()).unwrap();
    let d = max_diff_on_real(&merged, expect, &batch);
    println!("merged: max |Δ| = {d:.2e}");
    assert!(d <= TOL, "merged: {d}");
    checkpoint::save_model(&model, &tmp.path().join("merged"), None, None, None).unwrap();
    let reloaded = Checkpoint::open(tmp.path().join("merged"))
        .unwrap()
        .load_model(DType::F32, &Device::Cpu)
        .unwrap();
    let d = max_diff_on_real(
        &reloaded.forward(&batch, &ForwardCtx::default()).unwrap(),
        expect,
        &batch,
    );
    assert!(d <= TOL, "merged + reloaded: {d}");
}

#[test]
fn score_head_matches_llama_for_sequence_classification() {
    let f = load_fixture("reference-tiny.safetensors");
    let model = open("tiny-tied-score");
    for side in ["left", "right"] {
        let batch = fixture_batch(&f, side);
        let h = model.hidden_states(&batch, &ForwardCtx::default()).unwrap();
        let got = model.score(&h, &batch, SCORE_HEAD).unwrap();
        let d = max_abs_diff(&got, &f[&format!("tiny-tied-score.scores_{side}")]);
        println!(
            "score {side}: {:?} max |Δ| = {d:.2e}",
            got.to_vec1::<f32>().unwrap()
        );
        assert!(d <= TOL, "score {side}: {d}");
    }
}

fn greedy_requests(
    f: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Vec<rllr_core::GenerationRequest> {
    let batch = fixture_batch(f, "right");
    let ids = rows_u32(&f["input_ids_right"]);
    ids.iter()
        .zip(batch.lengths())
        .map(|(row, n)| rllr_core::GenerationRequest {
            prompt: row[..n].to_vec(),
            sampling: rllr_core::SamplingParams::greedy(),
            stop: rllr_core::StopCriteria {
                eos_ids: vec![],
                stop_strings: vec![],
                max_new_tokens: 32,
            },
        })
        .collect()
}

#[test]
fn greedy_32_tokens_match_transformers_alone_and_batched() {
    let f = load_fixture("reference-tiny.safetensors");
    let reqs = greedy_requests(&f);
    for name in ["tiny-tied", "tiny-untied", "tiny-untied-lora"] {
        let model = if name == "tiny-untied-lora" {
            open_with_lora()
        } else {
            open(name)
        };
        let ctx = if name == "tiny-untied-lora" {
            ForwardCtx::with_adapter("lora")
        } else {
            ForwardCtx::default()
        };
        let expect = rows_u32(&f[&format!("{name}.greedy")]);
        let batched = rllr_core::generate(&model, None, &reqs, &ctx, 0).unwrap();
        for (i, r) in reqs.iter().enumerate() {
            let alone =
                rllr_core::generate(&model, None, std::slice::from_ref(r), &ctx, 0).unwrap();
            assert_eq!(alone[0].tokens, expect[i], "{name} prompt {i} alone");
            assert_eq!(batched[i].tokens, expect[i], "{name} prompt {i} batched");
            assert_eq!(batched[i].finish, rllr_core::FinishReason::Length);
        }
    }
}

/// Save the left-padded fixture batch and rllr's `outputs` (under `key`) for check_in_transformers.py.
fn write_expect(
    f: &std::collections::HashMap<String, candle_core::Tensor>,
    path: &std::path::Path,
    key: &str,
    outputs: candle_core::Tensor,
) {
    let expect: std::collections::HashMap<String, candle_core::Tensor> = [
        ("input_ids".to_string(), f["input_ids_left"].clone()),
        (
            "attention_mask".to_string(),
            f["attention_mask_left"].clone(),
        ),
        ("position_ids".to_string(), f["position_ids_left"].clone()),
        (key.to_string(), outputs),
    ]
    .into();
    candle_core::safetensors::save(&expect, path).unwrap();
}

/// A checkpoint written by rllr (tiny-untied with its LoRA adapter merged, and the score model)
/// loads in transformers and gives rllr's logits/scores. Needs Python with torch + transformers:
/// `cargo test -p rllr-tests --test parity -- --ignored transformers_loads`.
#[test]
#[ignore = "needs python3 with torch and transformers"]
fn transformers_loads_rllr_written_checkpoints() {
    let f = load_fixture("reference-tiny.safetensors");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("roundtrip");
    std::fs::create_dir_all(&out).unwrap();
    let batch = fixture_batch(&f, "left");

    let mut model = open_with_lora();
    let base = fixtures_dir().join("tiny-untied");
    checkpoint::save_adapter(
        &model,
        "lora",
        None,
        base.to_str().unwrap(),
        &out.join("adapter"),
        None,
    )
    .unwrap();
    let logits = model
        .forward(&batch, &ForwardCtx::with_adapter("lora"))
        .unwrap();
    write_expect(
        &f,
        &out.join("adapter.expect.safetensors"),
        "logits",
        logits,
    );
    model.merge_adapter("lora").unwrap();
    checkpoint::save_model(&model, &out.join("merged"), None, None, None).unwrap();
    let logits = model.forward(&batch, &ForwardCtx::default()).unwrap();
    write_expect(&f, &out.join("merged.expect.safetensors"), "logits", logits);

    let score = open("tiny-tied-score");
    checkpoint::save_model(&score, &out.join("score"), Some(SCORE_HEAD), None, None).unwrap();
    let h = score.hidden_states(&batch, &ForwardCtx::default()).unwrap();
    let scores = score.score(&h, &batch, SCORE_HEAD).unwrap();
    write_expect(&f, &out.join("score.expect.safetensors"), "scores", scores);

    let script = fixtures_dir().join("check_in_transformers.py");
    let cases: [(&str, Vec<std::ffi::OsString>); 3] = [
        ("merged", vec!["--model".into(), out.join("merged").into()]),
        (
            "score",
            vec![
                "--model".into(),
                out.join("score").into(),
                "--seq-cls".into(),
            ],
        ),
        (
            "adapter",
            vec![
                "--model".into(),
                base.into(),
                "--adapter".into(),
                out.join("adapter").into(),
            ],
        ),
    ];
    for (dir, args) in cases {
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .args(args)
            .arg("--expect")
            .arg(out.join(format!("{dir}.expect.safetensors")));
        let o = cmd.output().expect("python3 runs");
        println!(
            "{dir}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "transformers disagrees with rllr on {dir}"
        );
    }
}

#[test]
fn sharded_checkpoints_load_like_single_file_ones() {
    let f = load_fixture("reference-tiny.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures_dir().join("tiny-untied");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let part: std::collections::HashMap<String, candle_core::Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, tmp.path().join(&file)).unwrap();
        for n in chunk {
            weight_map.insert((*n).clone(), serde_json::json!(file));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(ckpt.weight_files().unwrap().len(), 2);
    let model = ckpt.load_model(DType::F32, &Device::Cpu).unwrap();
    let batch = fixture_batch(&f, "right");
    let d = max_diff_on_real(
        &model.forward(&batch, &ForwardCtx::default()).unwrap(),
        &f["tiny-untied.logits_right"],
        &batch,
    );
    assert!(d <= TOL, "sharded: {d}");
    // a missing shard is a clear error, not a panic
    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = Checkpoint::open(tmp.path())
        .unwrap()
        .load_model(DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing shard"), "{err}");
}
