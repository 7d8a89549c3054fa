//! Tests against the synthetic fixtures `tests/fixtures/make_gguf.py` writes (reference values from
//! llama.cpp's Python `gguf` package and transformers), plus an ignored one on the real SmolLM2 file.

use std::path::PathBuf;

use std::collections::HashMap;

use candle_core::Device;

use super::tensors::dequantize;
use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(name)
}

fn load_safetensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::numerics::max_abs_diff(a, b).unwrap()
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    #[serde(default)]
    decoded: Option<String>,
}

/// Encode each case without special tokens and compare ids (and the decoding) to the reference.
fn check_cases(tok: &tokenizers::Tokenizer, cases_file: &Path) -> usize {
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(cases_file).unwrap()).unwrap();
    assert!(!cases.is_empty());
    for case in &cases {
        let enc = tok.encode(case.text.as_str(), false).unwrap();
        assert_eq!(
            enc.get_ids(),
            case.ids.as_slice(),
            "ids for {:?}",
            case.text
        );
        let decoded = tok.decode(&case.ids, false).unwrap();
        assert_eq!(
            &decoded,
            case.decoded.as_ref().unwrap_or(&case.text),
            "decode of {:?}",
            case.text
        );
    }
    cases.len()
}

#[test]
fn every_storage_type_dequantizes_like_the_reference() {
    let (mut reader, content) = open(&fixture("quant_types.gguf")).unwrap();
    let expected = load_safetensors("quant_types_expected.safetensors");
    assert_eq!(expected.len(), 7);
    for (name, want) in &expected {
        let got = dequantize(&mut reader, &content, name).unwrap();
        assert_eq!(
            got.dims(),
            &[3, 64],
            "{name}: GGUF dims come back in torch order"
        );
        let d = max_abs_diff(&got, want);
        assert!(d <= 1e-6, "{name}: max |diff| {d}");
    }
}

#[test]
fn tiny_llama_imports_in_hf_layout() {
    let import = import_gguf(&fixture("tiny_llama.gguf")).unwrap();
    let c = &import.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_kv_heads(),
            c.intermediate_size
        ),
        (64, 2, 4, 2, 32)
    );
    assert_eq!(c.head_dim(), 16);
    assert_eq!(c.vocab_size, import.tokenizer.get_vocab_size(true));
    assert_eq!(c.rope_theta, Some(500000.0));
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.max_position_embeddings, 256);
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_ids(), c.pad_token_id),
        (Some(0), vec![2], Some(1))
    );
    assert_eq!(c.extra["architectures"], json!(["LlamaForCausalLM"]));

    let expected = load_safetensors("tiny_llama_hf.safetensors");
    assert_eq!(import.tensors.len(), expected.len());
    for (name, got) in &import.tensors {
        let want = expected
            .get(name)
            .unwrap_or_else(|| panic!("unexpected tensor {name}"));
        assert_eq!(got.dtype(), DType::F32);
        assert_eq!(max_abs_diff(got, want), 0.0, "{name}");
    }
}

#[test]
fn tiny_llama_tokenizer_matches_transformers() {
    let import = import_gguf(&fixture("tiny_llama.gguf")).unwrap();
    let n = check_cases(
        &import.tokenizer,
        &fixture("tiny_llama_tokenizer_cases.json"),
    );
    assert!(n >= 10);
    // add_bos_token = true in the file: BOS is prepended when special tokens are asked for.
    assert_eq!(
        import.tokenizer.encode("hello", true).unwrap().get_ids()[0],
        0
    );
    let tc = &import.tokenizer_config;
    assert_eq!(tc["bos_token"], "<|begin_of_text|>");
    assert_eq!(tc["eos_token"], "<|eot_id|>");
    assert_eq!(tc["pad_token"], "<|end_of_text|>");
    assert_eq!(tc["add_bos_token"], true);
    assert_eq!(tc["model_max_length"], 256);
    assert!(tc["chat_template"].as_str().unwrap().contains("messages"));
    assert_eq!(
        import.generation_config,
        json!({"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1})
    );
}

#[test]
fn sentencepiece_tokenizer_matches_transformers() {
    let tok = read_tokenizer(&fixture("tiny_spm.gguf")).unwrap();
    let n = check_cases(&tok, &fixture("tiny_spm_tokenizer_cases.json"));
    assert!(n >= 10);
    assert_eq!(
        tok.encode("hello", true).unwrap().get_ids()[0],
        1,
        "SentencePiece adds BOS"
    );
}

#[test]
fn checkpoint_directory_round_trips() {
    let import = import_gguf(&fixture("tiny_llama.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model");
    write_hf_checkpoint(&import, &dest, DType::BF16).unwrap();
    let config = Config::from_file(dest.join("config.json")).unwrap();
    assert_eq!(config.num_hidden_layers, 2);
    assert_eq!(config.extra["torch_dtype"], "bfloat16");
    let weights =
        candle_core::safetensors::load(dest.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(weights.len(), import.tensors.len());
    assert_eq!(weights["model.embed_tokens.weight"].dtype(), DType::BF16);
    let tok = tokenizers::Tokenizer::from_file(dest.join("tokenizer.json")).unwrap();
    check_cases(&tok, &fixture("tiny_llama_tokenizer_cases.json"));
    for f in [
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join(f)).unwrap()).unwrap();
        assert!(v.is_object(), "{f}");
    }
    let dir_err = write_hf_checkpoint(&import, &dest, DType::U8)
        .unwrap_err()
        .to_string();
    assert!(dir_err.contains("U8"), "{dir_err}");
}

#[test]
fn unsupported_tensor_type_names_tensor_and_type() {
    let e = import_gguf(&fixture("unsupported_type.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("IQ4_NL"),
        "{e}"
    );
}

#[test]
fn non_llama_architecture_is_rejected() {
    let e = import_gguf(&fixture("not_llama.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'gpt2'") && e.contains("llama"), "{e}");
}

#[test]
fn non_gguf_and_missing_files_are_rejected() {
    let e = import_gguf(&fixture("quant_types_expected.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let e = import_gguf(&fixture("does_not_exist.gguf")).err().unwrap();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn gguf_names_map_to_hf_names() {
    for (g, h) in [
        ("token_embd.weight", Some("model.embed_tokens.weight")),
        ("output.weight", Some("lm_head.weight")),
        ("output_norm.weight", Some("model.norm.weight")),
        (
            "blk.3.attn_q.weight",
            Some("model.layers.3.self_attn.q_proj.weight"),
        ),
        (
            "blk.3.attn_q.bias",
            Some("model.layers.3.self_attn.q_proj.bias"),
        ),
        (
            "blk.12.attn_output.weight",
            Some("model.layers.12.self_attn.o_proj.weight"),
        ),
        (
            "blk.0.ffn_down.weight",
            Some("model.layers.0.mlp.down_proj.weight"),
        ),
        (
            "blk.0.ffn_norm.weight",
            Some("model.layers.0.post_attention_layernorm.weight"),
        ),
        (
            "blk.0.attn_norm.weight",
            Some("model.layers.0.input_layernorm.weight"),
        ),
        ("rope_freqs.weight", None),
        ("blk.x.attn_q.weight", None),
    ] {
        assert_eq!(hf_tensor_name(g).as_deref(), h, "{g}");
    }
}

/// llama.cpp's permute (HF -> GGUF), written the way convert_hf_to_gguf.py does it.
fn permute(t: &Tensor, n_head: usize) -> Tensor {
    let dims = t.dims().to_vec();
    let mut shape = vec![n_head, 2, dims[0] / n_head / 2];
    shape.extend_from_slice(&dims[1..]);
    t.reshape(shape)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape(dims)
        .unwrap()
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    let w = Tensor::arange(0f32, 6.0 * 8.0 * 3.0, &Device::Cpu)
        .unwrap()
        .reshape((48, 3))
        .unwrap();
    for n_head in [1, 2, 3, 6] {
        let back = unpermute(&permute(&w, n_head), n_head).unwrap();
        assert_eq!(max_abs_diff(&back, &w), 0.0, "n_head {n_head}");
    }
    // Head dim 4: GGUF rows [0, 2, 1, 3] (interleaved pairs) are HF rows [0, 1, 2, 3].
    let g = Tensor::new(&[0f32, 2.0, 1.0, 3.0], &Device::Cpu).unwrap();
    assert_eq!(
        unpermute(&g, 1).unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0, 1.0, 2.0, 3.0]
    );
    assert!(unpermute(&w, 5).is_err());
}

/// The real SmolLM2-135M-Instruct GGUF (`scripts/fetch-smollm2.sh` downloads it): its tokenizer
/// must give transformers' ids on the committed cases. Run with
/// `cargo test -p rllr-core -- --ignored smollm2`; the file is looked up at `RLLR_SMOLLM2_GGUF`, else
/// in the fetch script's cache (`$RLLR_CACHE_DIR`, default `~/.cache/rllr`).
#[test]
#[ignore = "needs the SmolLM2 GGUF (scripts/fetch-smollm2.sh)"]
fn smollm2_tokenizer_matches_transformers() {
    let path = std::env::var_os("RLLR_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("RLLR_CACHE_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/rllr")
                });
            cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.exists(),
        "{} not found: run scripts/fetch-smollm2.sh or set RLLR_SMOLLM2_GGUF",
        path.display()
    );
    let tok = read_tokenizer(&path).unwrap();
    let n = check_cases(&tok, &fixture("smollm2_tokenizer_cases.json"));
    assert!(n >= 20);
    assert_eq!(tok.encode("<|im_start|>", false).unwrap().get_ids(), &[1]);
}
