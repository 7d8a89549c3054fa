//! Parity with Hugging Face transformers on the committed tiny fixtures: logits of left- and
//! right-padded batches (tied and untied embeddings, GQA, Llama-3 RoPE scaling), PEFT LoRA adapters
//! (active, merged, saved and reloaded), the `score` head of `LlamaForSequenceClassification`,
//! greedy decoding through the KV cache.
//!
//! The models run on `RLLR_TEST_DEVICE` in `RLLR_TEST_DTYPE` (default: the CPU in f32; see
//! `rllr_tests`), so a binary built with `--features cuda` checks the GPU path on a GPU machine
//! (`RLLR_FIXTURES_DIR` pointing at a copy of `tests/fixtures`). Outputs are compared on the CPU
//! in f32 within `rllr_tests::tolerance`: 1e-4 in f32, 2 % (f16) or 5 % (bf16) of the
//! reference's scale in half precision.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rllr_core::checkpoint::{self, Checkpoint, SCORE_HEAD};
use rllr_core::{Batch, ForwardCtx, KvCache, Llama};
use rllr_tests::{
    cpu_f32, fixture_batch, fixture_batch_on, fixtures_dir, load_fixture, max_abs_diff,
    max_diff_on_real, rows_u32, test_device, test_dtype, tolerance,
};

/// The f32 parity bar, for the tests that stay on the CPU in f32.
const TOL: f32 = 1e-4;

/// tiny-untied with the PEFT adapter of the fixtures loaded as `lora` (test device and dtype).
fn open_with_lora() -> Llama {
    open_with_lora_on(test_dtype(), &test_device())
}

fn open_with_lora_on(dtype: DType, device: &Device) -> Llama {
    let mut m = open_on("tiny-untied", dtype, device);
    checkpoint::load_adapter(
        &mut m,
        &fixtures_dir().join("tiny-untied-lora"),
        "lora",
        false,
    )
    .unwrap();
    m
}

/// Fixture checkpoint `name` on the test device in the test dtype.
fn open(name: &str) -> Llama {
    open_on(name, test_dtype(), &test_device())
}

fn open_on(name: &str, dtype: DType, device: &Device) -> Llama {
    Checkpoint::open(fixtures_dir().join(name))
        .unwrap()
        .load_model(dtype, device)
        .unwrap()
}

/// The fixture batch `side` on the test device.
fn batch(f: &HashMap<String, Tensor>, side: &str) -> Batch {
    fixture_batch_on(f, side, &test_device())
}

/// `got` (B, L, V) within [`tolerance`] of the f32 reference on the real positions of `batch`.
fn assert_logits_close(what: &str, got: &Tensor, reference: &Tensor, batch: &Batch) {
    let (d, tol) = (
        max_diff_on_real(got, reference, batch),
        tolerance(reference),
    );
    println!("{what}: max |Δ| = {d:.2e} (tolerance {tol:.2e})");
    assert!(d <= tol, "{what}: max |Δ| {d} > {tol}");
}

#[test]
fn tiny_logits_match_transformers_for_both_paddings() {
    let f = load_fixture("reference-tiny.safetensors");
    for name in ["tiny-tied", "tiny-untied"] {
        let model = open(name);
        for side in ["left", "right"] {
            let batch = batch(&f, side);
            let got = model.forward(&batch, &ForwardCtx::default()).unwrap();
            assert_eq!(got.dtype(), DType::F32, "logits come back in f32");
            let reference = &f[&format!("{name}.logits_{side}")];
            assert_logits_close(&format!("{name} {side}"), &got, reference, &batch);
        }
    }
    // our positions are transformers' position_ids for left padding
    let batch = fixture_batch(&f, "left");
    assert_eq!(batch.positions, rows_u32(&f["position_ids_left"]));
}

/// Runs on the test device too: the checkpoints it writes go to a temporary directory, and are
/// saved from (and reloaded onto) that device in the test dtype.
#[test]
fn peft_adapter_active_merged_and_round_tripped_matches_transformers() {
    let f = load_fixture("reference-tiny.safetensors");
    let mut model = open_with_lora();
    let ctx = ForwardCtx::with_adapter("lora");
    for side in ["left", "right"] {
        let batch = batch(&f, side);
        let got = model.forward(&batch, &ctx).unwrap();
        let reference = &f[&format!("tiny-untied-lora.logits_{side}")];
        assert_logits_close(&format!("lora active {side}"), &got, reference, &batch);
    }
    let batch = batch(&f, "right");
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
    let got = again.forward(&batch, &ctx).unwrap();
    assert_logits_close("adapter reloaded", &got, expect, &batch);

    // merged, saved as a full checkpoint, reloaded
    model.merge_adapter("lora").unwrap();
    let merged = model.forward(&batch, &ForwardCtx::default()).unwrap();
    assert_logits_close("merged", &merged, expect, &batch);
    checkpoint::save_model(&model, &tmp.path().join("merged"), None, None, None).unwrap();
    let reloaded = Checkpoint::open(tmp.path().join("merged"))
        .unwrap()
        .load_model(test_dtype(), &test_device())
        .unwrap();
    let got = reloaded.forward(&batch, &ForwardCtx::default()).unwrap();
    assert_logits_close("merged + reloaded", &got, expect, &batch);
}

#[test]
fn score_head_matches_llama_for_sequence_classification() {
    let f = load_fixture("reference-tiny.safetensors");
    let model = open("tiny-tied-score");
    for side in ["left", "right"] {
        let batch = batch(&f, side);
        let h = model.hidden_states(&batch, &ForwardCtx::default()).unwrap();
        let got = model.score(&h, &batch, SCORE_HEAD).unwrap();
        let reference = &f[&format!("tiny-tied-score.scores_{side}")];
        let (d, tol) = (max_abs_diff(&got, reference), tolerance(reference));
        println!(
            "score {side}: {:?} max |Δ| = {d:.2e} (tolerance {tol:.2e})",
            cpu_f32(&got).to_vec1::<f32>().unwrap()
        );
        assert!(d <= tol, "score {side}: {d} > {tol}");
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

/// Greedy decoding (prefill, then one step at a time through the KV cache) gives transformers'
/// 32 tokens, alone and batched. In f32 the tokens must match exactly. In bf16/f16 a near-tie
/// may legitimately flip (`{name}.greedy_min_gap` holds the fixtures' smallest top-2 gaps) and
/// the continuation diverge after it, so there the token agreement is printed, and what is
/// asserted is the logits tolerance along transformers' tokens: decoding them through the
/// cache, each one's logit is within [`tolerance`] of the best logit of its step.
#[test]
fn greedy_32_tokens_match_transformers_alone_and_batched() {
    let f = load_fixture("reference-tiny.safetensors");
    let reqs = greedy_requests(&f);
    let exact = test_dtype() == DType::F32;
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
            assert_eq!(batched[i].finish, rllr_core::FinishReason::Length);
            if exact {
                assert_eq!(alone[0].tokens, expect[i], "{name} prompt {i} alone");
                assert_eq!(batched[i].tokens, expect[i], "{name} prompt {i} batched");
            } else {
                let (a, b) = (&alone[0].tokens, &batched[i].tokens);
                println!(
                    "{name} prompt {i}: transformers' first {} (alone) / {} (batched) of {} tokens",
                    agreeing_prefix(a, &expect[i]),
                    agreeing_prefix(b, &expect[i]),
                    expect[i].len()
                );
            }
        }
        if !exact {
            let tol = tolerance(&f[&format!("{name}.logits_right")]);
            let short = forced_shortfall(&model, &ctx, &reqs, &expect);
            println!("{name}: transformers' tokens at most {short:.2e} below the best logit (tolerance {tol:.2e})");
            assert!(
                short <= tol,
                "{name}: a reference token {short} below the best logit"
            );
        }
    }
}

/// How many leading tokens of `got` equal `want`'s.
fn agreeing_prefix(got: &[u32], want: &[u32]) -> usize {
    got.iter().zip(want).take_while(|(a, b)| a == b).count()
}

/// Decode the reference continuations `expect` through the KV cache (prefill the prompts, then
/// feed each step the reference token): the largest shortfall of a reference token's logit below
/// the best logit of its step, over every row and step.
fn forced_shortfall(
    model: &Llama,
    ctx: &ForwardCtx,
    reqs: &[rllr_core::GenerationRequest],
    expect: &[Vec<u32>],
) -> f32 {
    let prompts: Vec<Vec<u32>> = reqs.iter().map(|r| r.prompt.clone()).collect();
    let left = rllr_core::PaddingSide::Left;
    let batch = Batch::new(&prompts, 0, left, model.device()).unwrap();
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut logits = model.prefill(&batch, &mut cache, ctx).unwrap();
    let mut worst = 0f32;
    let steps = expect[0].len();
    for step in 0..steps {
        let rows = cpu_f32(&logits).to_vec2::<f32>().unwrap();
        for (row, want) in rows.iter().zip(expect) {
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            worst = worst.max(best - row[want[step] as usize]);
        }
        if step + 1 < steps {
            let next: Vec<u32> = expect.iter().map(|e| e[step]).collect();
            logits = model.decode_step(&next, &mut cache, ctx).unwrap();
        }
    }
    worst
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
/// `cargo test -p rllr-tests --test parity -- --ignored transformers_loads`. Always on the CPU
/// in f32, whatever `RLLR_TEST_DEVICE`/`RLLR_TEST_DTYPE` say: it checks the files rllr writes
/// (under the build's target directory) against transformers at the f32 bar, not a device.
#[test]
#[ignore = "needs python3 with torch and transformers"]
fn transformers_loads_rllr_written_checkpoints() {
    let f = load_fixture("reference-tiny.safetensors");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("roundtrip");
    std::fs::create_dir_all(&out).unwrap();
    let batch = fixture_batch(&f, "left");

    let mut model = open_with_lora_on(DType::F32, &Device::Cpu);
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

    let score = open_on("tiny-tied-score", DType::F32, &Device::Cpu);
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

/// On the CPU in f32 whatever the test device and dtype: what it checks (finding and reading the
/// shards of an index) does not depend on the device.
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
