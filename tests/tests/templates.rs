//! The jinja chat-template path against `transformers.apply_chat_template`: for Llama-3-Instruct,
//! Mistral-Instruct-v0.3 and SmolLM2 (ChatML), and conversations with/without system text,
//! multi-line, unicode, empty and whitespace-padded input, rllr renders the identical prompt text
//! and, tokenised the way the project tokenises prompts (special tokens parsed, none added), the
//! identical ids. The reply end derived from each template matches what transformers writes after
//! an assistant message. Fixtures: `tests/fixtures/templates/` (`make_templates.py`).

use rllr_core::template::{ChatTemplate, JinjaTemplate};
use rllr_tests::fixtures_dir;
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(fixtures_dir().join("templates/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(fixtures_dir().join("templates/tokenizer.json")).unwrap()
}

fn template(spec: &Value) -> ChatTemplate {
    // Through the same entry point a checkpoint uses: a tokenizer_config.json-shaped object.
    let cfg = serde_json::json!({
        "chat_template": spec["source"],
        "bos_token": spec["bos_token"],
        "eos_token": {"content": spec["eos_token"]},
    });
    ChatTemplate::from_tokenizer_config(&cfg, "cases.json")
        .unwrap()
        .expect("a template")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn jinja_prompts_match_transformers_text_and_tokens() {
    let f = fixture();
    let tok = tokenizer();
    let templates = f["templates"].as_object().unwrap();
    assert_eq!(templates.len(), 3, "llama3, mistral_v03, smollm2");
    let mut checked = 0;
    for (name, spec) in templates {
        let t = template(spec);
        assert_eq!(t.name(), "jinja");
        for case in spec["cases"].as_array().unwrap() {
            let what = format!("{name}/{}", case["name"].as_str().unwrap());
            let system = case["system"].as_str();
            let user = case["user"].as_str().unwrap();
            let text = t.try_render_prompt(system, user).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "text of {what}");
            let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(got, ids(&case["input_ids"]), "ids of {what}");
            // the reply end closes the reply exactly as transformers renders it
            let reply = case["reply"].as_str().unwrap();
            let full = case["reply_text"].as_str().unwrap();
            let end = t.response_end();
            assert!(!end.is_empty(), "{what}: no reply end derived");
            let at = full.rfind(reply).unwrap() + reply.len();
            assert_eq!(full[at..].trim_end(), end, "reply end of {what}");
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn jinja_special_tokens_are_single_ids() {
    let f = fixture();
    let tok = tokenizer();
    let spec = &f["templates"]["llama3"];
    let text = template(spec)
        .try_render_prompt(None, "What is the capital of France?")
        .unwrap();
    let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    // The template writes BOS itself; encoding adds no second one.
    let bos = tok.token_to_id("<|begin_of_text|>").unwrap();
    assert_eq!(got[0], bos);
    assert_eq!(got.iter().filter(|&&i| i == bos).count(), 1);
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    assert_eq!(got.iter().filter(|&&i| i == eot).count(), 1);
}

#[test]
fn smollm2_jinja_equals_the_builtin_chatml_on_the_fixture() {
    let f = fixture();
    let spec = &f["templates"]["smollm2"];
    let builtin = ChatTemplate::smollm2();
    for case in spec["cases"].as_array().unwrap() {
        let system = case["system"].as_str();
        let user = case["user"].as_str().unwrap();
        assert_eq!(
            builtin.render_prompt(system, user),
            case["text"].as_str().unwrap(),
            "{}",
            case["name"]
        );
    }
}

#[test]
fn llama3_detected_from_its_jinja() {
    let f = fixture();
    let src = f["templates"]["llama3"]["source"].as_str().unwrap();
    let detected = ChatTemplate::detect(src).expect("Llama-3 detected");
    let direct = JinjaTemplate::new(src, "<|begin_of_text|>", "<|eot_id|>", "t").unwrap();
    assert_eq!(detected, ChatTemplate::Jinja(Box::new(direct)));
    assert_eq!(detected.response_end(), "<|eot_id|>");
    let stops = detected.stop_strings();
    assert!(stops.contains(&"<|eot_id|>".to_string()), "{stops:?}");
    assert!(
        stops.contains(&"<|start_header_id|>".to_string()),
        "{stops:?}"
    );
}
