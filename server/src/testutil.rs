//! Test fixtures shared by the server's tests and its clients' tests (`rllr-client`): tiny random
//! models with a byte-level tokenizer, written as real checkpoints under a temporary model root, and
//! a server started on 127.0.0.1:0. Behind the non-default `testutil` feature so production builds
//! carry none of it.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::Path;

use crate::{RunningServer, ServerConfig};
use candle_core::{DType, Device};
use rllr_core::checkpoint;
use rllr_core::manifest::{Manifest, ModelKind};
use rllr_core::task::{LabelSpec, TaskSpec};
use rllr_core::template::ChatTemplate;
use rllr_core::{Config, Llama};

pub const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];
/// 256 byte tokens + <|im_end|> (256), <|im_start|> (257), <|endoftext|> (258).
pub const VOCAB: usize = 264;
pub const EOS: u32 = 258;

fn byte_alphabet() -> Vec<char> {
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap();
                next += 1;
                c
            }
        })
        .collect()
}

/// A byte-level BPE tokenizer with no merges: every byte is a token, so any text round-trips.
pub fn tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_alphabet()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let special = |id: u32, s: &str| serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(256, "<|im_end|>"), special(257, "<|im_start|>"), special(258, "<|endoftext|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
    .to_string()
}

pub fn tiny_config() -> Config {
    let json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "head_dim": 8,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "vocab_size": VOCAB, "bos_token_id": 257, "eos_token_id": EOS,
        "pad_token_id": EOS, "hidden_act": "silu", "model_type": "llama"
    });
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, json.to_string()).unwrap();
    Config::from_file(&p).unwrap()
}

pub fn nli_task() -> TaskSpec {
    TaskSpec {
        name: "nli".into(),
        instruction: "Does the premise entail the hypothesis?".into(),
        input_fields: vec!["premise".into(), "hypothesis".into()],
        labels: LABELS
            .iter()
            .map(|l| LabelSpec {
                name: l.to_string(),
                display: None,
            })
            .collect(),
        metric: "accuracy".into(),
        answer_prefix: "Answer:".into(),
    }
}

/// Write a tiny model of `kind` (a reward model gets a random score head) under `root/name`.
pub fn write_model(root: &Path, name: &str, kind: ModelKind, seed: u64, template: &str) {
    let cfg = tiny_config();
    let mut model = Llama::random(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
    let head = matches!(kind, ModelKind::Reward | ModelKind::Value);
    if head {
        model.add_new_head("score", false, seed + 1).unwrap();
    }
    let mut m = Manifest::new(kind, "test");
    m.task = Some("nli".into());
    m.labels = LABELS.iter().map(|s| s.to_string()).collect();
    m.task_spec = Some(nli_task());
    m.chat_template = Some(ChatTemplate::from_name(template).unwrap());
    if head {
        m.head = Some("score".into());
    }
    let dir = root.join(name);
    checkpoint::save_model(&model, &dir, head.then_some("score"), None, Some(&m)).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
}

/// A model root with `pol` (policy, plain template), `pol-chat` (policy, chatml), `rm` and `rm2`
/// (reward models).
pub fn model_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    write_model(root.path(), "pol", ModelKind::Policy, 1, "plain");
    write_model(root.path(), "pol-chat", ModelKind::Policy, 2, "chatml");
    write_model(root.path(), "rm", ModelKind::Reward, 3, "plain");
    write_model(root.path(), "rm2", ModelKind::Reward, 4, "chatml");
    root
}

/// A config serving every model of `model_root` on free ports.
pub fn config(root: &Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        model_root: root.to_path_buf(),
        models: ["pol", "pol-chat", "rm", "rm2"]
            .iter()
            .map(|n| format!("{n}={n}").parse().unwrap())
            .collect(),
        max_new_tokens: 48,
        ..ServerConfig::default()
    }
}

pub async fn start(cfg: ServerConfig) -> RunningServer {
    crate::start(cfg).await.unwrap()
}

pub fn url(s: &RunningServer) -> String {
    format!("http://{}", s.addr)
}

pub fn input(a: &str, b: &str) -> Option<rllr_proto::v1::Input> {
    Some(rllr_proto::v1::Input {
        text: a.into(),
        text_pair: Some(b.into()),
    })
}

/// A Classify of four NLI inputs on the tiny policy `pol`, up to 48 new tokens each: long enough
/// to be in flight when a shutdown test stops the server.
pub fn classify_four() -> rllr_proto::v1::ClassifyRequest {
    rllr_proto::v1::ClassifyRequest {
        inputs: (0..4)
            .map(|i| input(&format!("A man sleeps {i}."), "A person rests.").unwrap())
            .collect(),
        model: "pol".into(),
        params: Some(rllr_proto::v1::GenerationParams {
            max_new_tokens: Some(48),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn item(a: &str, b: &str, rationale: &str, label: &str) -> rllr_proto::v1::ScoreItem {
    rllr_proto::v1::ScoreItem {
        input: input(a, b),
        rationale: rationale.into(),
        label: label.into(),
    }
}

/// GET `/metrics` from the exporter's listener and return the body.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let r = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Send one HTTP/1.1 request (`connection: close`) and read the whole answer, undoing chunked
/// encoding: enough for the tests, without an HTTP client crate.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut rest = body;
        let mut text = String::new();
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break text;
            }
            text.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

/// POST a JSON body to the HTTP front of `s`.
pub async fn post_json(
    s: &RunningServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> HttpReply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    http(
        s.http_addr.expect("the HTTP front is on"),
        "POST",
        path,
        &h,
        &body.to_string(),
    )
    .await
}
