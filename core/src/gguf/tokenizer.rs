//! Rebuilding a Hugging Face `tokenizer.json` from the `tokenizer.ggml.*` metadata of a GGUF file.
//!
//! A GGUF carries no `tokenizer.json`, only llama.cpp's description of the vocabulary: the tokens,
//! their types, merges or scores, and the special ids. The pipelines built here are the ones
//! transformers' GGUF loader builds (`integrations/gguf/gguf_tokenizer_mapping.py`), so a model
//! converted by rllr tokenizes exactly as `AutoTokenizer.from_pretrained(dir, gguf_file=...)`:
//!
//! - `gpt2`: byte-level BPE; the pre-tokenizer's split regex is picked by `tokenizer.ggml.pre`.
//! - `llama`: SentencePiece BPE with byte fallback and `▁` for spaces (HF's `LlamaTokenizerFast`);
//!   when the file has no merges they are derived from the token scores.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The Llama-3 split regex, shared by several `tokenizer.ggml.pre` values.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral-Nemo's (`tekken`) split regex.
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (also DeepSeek-R1 distills).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` value; `None` means GPT-2's own (ByteLevel's
/// built-in regex), which is what transformers uses for every value it does not list (e.g. `smollm`).
fn split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "dbrx" | "smaug-bpe" | "jina-v5-nano" => Some(LLAMA3_SPLIT),
        "tekken" => Some(TEKKEN_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// What a GGUF says about its tokenizer (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`: names the pre-tokenizer regex (byte-level vocabularies).
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub token_types: Option<Vec<i32>>,
    /// `"left right"` pairs, best first.
    pub merges: Option<Vec<String>>,
    pub scores: Option<Vec<f32>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece's leading `▁`).
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

impl TokenizerSpec {
    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    /// Whether the tokenizer prepends BOS: llama.cpp's default is yes for SentencePiece, no otherwise.
    pub fn adds_bos(&self) -> bool {
        self.add_bos.unwrap_or(self.model == "llama")
    }

    fn adds_eos(&self) -> bool {
        self.add_eos.unwrap_or(false)
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .as_ref()
            .and_then(|t| t.get(id).copied())
            .unwrap_or(1)
    }
}

/// Build the `tokenizer.json` document and the `Tokenizer` it describes.
pub fn build_tokenizer(spec: &TokenizerSpec) -> Result<(Tokenizer, Value)> {
    if spec.tokens.is_empty() {
        return Err(Error::Gguf(
            "tokenizer.ggml.tokens is missing or empty".into(),
        ));
    }
    let doc = match spec.model.as_str() {
        "gpt2" => byte_level_json(spec)?,
        "llama" => sentencepiece_json(spec)?,
        other => {
            return Err(Error::Gguf(format!(
                "tokenizer.ggml.model '{other}' is not supported (supported: gpt2, llama)"
            )))
        }
    };
    let bytes =
        serde_json::to_vec(&doc).map_err(|e| Error::Gguf(format!("tokenizer.json: {e}")))?;
    let tokenizer = Tokenizer::from_bytes(bytes)
        .map_err(|e| Error::Gguf(format!("rebuilt tokenizer does not load: {e}")))?;
    Ok((tokenizer, doc))
}

/// GPT-2's `bytes_to_unicode`: the printable character byte-level BPE spells each byte with.
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

/// A byte-level token as the vocabulary must spell it: unchanged when it is already in the byte
/// alphabet, else its UTF-8 bytes respelled (some converters store control tokens raw).
fn respell_byte_level(token: &str, alphabet: &HashSet<char>, table: &[char; 256]) -> String {
    if token.chars().all(|c| alphabet.contains(&c)) {
        token.to_string()
    } else {
        token.bytes().map(|b| table[b as usize]).collect()
    }
}

/// `{token: id}`; on a duplicate spelling the last id wins, as in transformers.
fn vocab_map(tokens: &[String]) -> serde_json::Map<String, Value> {
    let mut map = serde_json::Map::new();
    for (id, token) in tokens.iter().enumerate() {
        map.insert(token.clone(), json!(id));
    }
    if map.len() != tokens.len() {
        tracing::warn!(
            "{} duplicate token spellings in the vocabulary",
            tokens.len() - map.len()
        );
    }
    map
}

fn split_merges(merges: &[String]) -> Result<Vec<Value>> {
    merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(Error::Gguf(format!(
                "malformed merge '{m}' (expected 'left right')"
            ))),
        })
        .collect()
}

/// Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
/// tokens; both are matched whole in the input, so `<|im_start|>` stays one id. `keep` filters.
fn added_tokens(
    spec: &TokenizerSpec,
    tokens: &[String],
    keep: impl Fn(&str) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut push = |id: usize, special: bool| {
        out.push(
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": special}),
        );
    };
    for (id, token) in tokens.iter().enumerate() {
        match spec.token_type(id) {
            TOKEN_TYPE_CONTROL if keep(token) => push(id, true),
            TOKEN_TYPE_USER_DEFINED => push(id, false),
            _ if spec.model == "llama" && Some(id as u32) == spec.unk_id => push(id, true),
            _ => {}
        }
    }
    out
}

/// `TemplateProcessing` adding BOS/EOS as the file's `add_bos_token`/`add_eos_token` say.
fn post_processor(spec: &TokenizerSpec, tokens: &[String]) -> Value {
    let mut special_tokens = serde_json::Map::new();
    let mut bos = None;
    let mut eos = None;
    let mut register = |id: Option<u32>| -> Option<String> {
        let id = id?;
        let tok = tokens.get(id as usize)?.clone();
        special_tokens.insert(
            tok.clone(),
            json!({"id": tok, "ids": [id], "tokens": [tok]}),
        );
        Some(tok)
    };
    if spec.adds_bos() {
        bos = register(spec.bos_id);
    }
    if spec.adds_eos() {
        eos = register(spec.eos_id);
    }
    let seq = |name: &str, type_id: u32| {
        let mut v = Vec::new();
        if let Some(b) = &bos {
            v.push(json!({"SpecialToken": {"id": b, "type_id": type_id}}));
        }
        v.push(json!({"Sequence": {"id": name, "type_id": type_id}}));
        if let Some(e) = &eos {
            v.push(json!({"SpecialToken": {"id": e, "type_id": type_id}}));
        }
        v
    };
    let single = seq("A", 0);
    let mut pair = seq("A", 0);
    pair.extend(seq("B", 1));
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

fn byte_level_json(spec: &TokenizerSpec) -> Result<Value> {
    let table = byte_alphabet();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let tokens: Vec<String> = spec
        .tokens
        .iter()
        .map(|t| respell_byte_level(t, &alphabet, &table))
        .collect();
    let merges = spec.merges.as_ref().ok_or_else(|| {
        Error::Gguf("byte-level (gpt2) tokenizer without tokenizer.ggml.merges".into())
    })?;
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre = spec.pre.as_deref().unwrap_or("default");
    let pre_tokenizer = match split_regex(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
        None => byte_level(true),
    };
    // A control token spelled outside the byte alphabet is a llama.cpp mislabel; transformers skips it.
    let spelled = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(spec, &tokens, spelled),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(spec, &tokens),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map(&tokens),
            "merges": split_merges(merges)?,
        },
    }))
}

fn sentencepiece_json(spec: &TokenizerSpec) -> Result<Value> {
    let tokens = &spec.tokens;
    let merges = match &spec.merges {
        Some(m) => split_merges(m)?,
        None => {
            let scores = spec.scores.as_ref().ok_or_else(|| {
                Error::Gguf("SentencePiece (llama) tokenizer has neither merges nor scores".into())
            })?;
            if scores.len() != tokens.len() {
                return Err(Error::Gguf(format!(
                    "{} token scores for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            merges_from_scores(tokens, scores)
                .into_iter()
                .map(|(a, b)| json!([a, b]))
                .collect()
        }
    };
    let prefix = spec.add_space_prefix.unwrap_or(true);
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens(spec, tokens, |_| true),
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": if prefix { "first" } else { "never" }, "split": false},
        "post_processor": post_processor(spec, tokens),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": spec.token(spec.unk_id),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_map(tokens),
            "merges": merges,
        },
    }))
}

/// The merges a SentencePiece BPE vocabulary implies: every split of a token into two tokens,
/// ranked by the merged token's score (best first), ties broken by longer left then longer right
/// piece, then by vocabulary order. This is transformers' `generate_merges(vocab, vocab_scores)`.
pub fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t, i);
    }
    // Python iterates `dict(zip(tokens, scores))`: first position, last score, for duplicates.
    let mut seen = HashSet::new();
    let mut last_score: HashMap<&str, f32> = HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        last_score.insert(t, *s);
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for token in tokens {
        if !seen.insert(token.as_str()) {
            continue;
        }
        let score = last_score[token.as_str()];
        let mut local: Vec<(&str, &str, f32)> = token
            .char_indices()
            .skip(1)
            .map(|(i, _)| token.split_at(i))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    // Python's stable sort with reverse=True keeps equal keys in their original order.
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// HF `tokenizer_config.json` for the rebuilt tokenizer.
pub fn tokenizer_config(spec: &TokenizerSpec, model_max_length: usize) -> Value {
    let mut cfg = serde_json::Map::new();
    cfg.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    cfg.insert("add_bos_token".into(), json!(spec.adds_bos()));
    cfg.insert("add_eos_token".into(), json!(spec.adds_eos()));
    cfg.insert("clean_up_tokenization_spaces".into(), json!(false));
    cfg.insert("model_max_length".into(), json!(model_max_length));
    for (name, value) in special_tokens_map(spec).as_object().into_iter().flatten() {
        cfg.insert(name.clone(), value.clone());
    }
    if let Some(t) = &spec.chat_template {
        cfg.insert("chat_template".into(), json!(t));
    }
    Value::Object(cfg)
}

/// HF `special_tokens_map.json`: the named special tokens the file declares.
pub fn special_tokens_map(spec: &TokenizerSpec) -> Value {
    let mut map = serde_json::Map::new();
    for (name, id) in [
        ("bos_token", spec.bos_id),
        ("eos_token", spec.eos_id),
        ("unk_token", spec.unk_id),
        ("pad_token", spec.pad_id),
    ] {
        if let Some(tok) = spec.token(id) {
            map.insert(name.into(), json!(tok));
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm_spec(pieces: &[(&str, f32)]) -> TokenizerSpec {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (p, s) in pieces {
            tokens.push(p.to_string());
            types.push(1);
            scores.push(*s);
        }
        TokenizerSpec {
            model: "llama".into(),
            tokens,
            token_types: Some(types),
            scores: Some(scores),
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let t = byte_alphabet();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_follow_scores_then_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -1.0];
        let merges = merges_from_scores(&tokens, &scores);
        let expect = [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")];
        let got: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn sentencepiece_vocab_with_byte_fallback_encodes_and_decodes() {
        let spec = spm_spec(&[
            ("▁", -1.0),
            ("h", -2.0),
            ("i", -3.0),
            ("▁h", -4.0),
            ("▁hi", -5.0),
        ]);
        let (tok, _) = build_tokenizer(&spec).unwrap();
        let hi = tok.token_to_id("▁hi").unwrap();
        let enc = tok.encode("hi hi", false).unwrap();
        assert_eq!(enc.get_ids(), &[hi, hi]);
        // BOS is added by default for SentencePiece vocabularies.
        assert_eq!(tok.encode("hi", true).unwrap().get_ids(), &[1, hi]);
        // 'é' is not a piece: its two UTF-8 bytes fall back to <0xC3> <0xA9>.
        let enc = tok.encode("é", false).unwrap();
        let ids = enc.get_ids();
        assert_eq!(&ids[1..], &[3 + 0xC3, 3 + 0xA9]);
        assert_eq!(tok.decode(&[hi, ids[1], ids[2]], false).unwrap(), "hié");
        // Control tokens stay whole.
        assert_eq!(tok.encode("</s>", false).unwrap().get_ids(), &[2]);
    }

    #[test]
    fn unknown_model_is_rejected() {
        let spec = TokenizerSpec {
            model: "bert".into(),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        let e = build_tokenizer(&spec).unwrap_err().to_string();
        assert!(e.contains("'bert'"), "{e}");
    }
}
