//! Tests of the chat templates: the built-ins, Jinja rendering from a checkpoint, detection and
//! the manifest form.

use super::*;

// Short representative excerpts of real `chat_template` values (as JSON-decoded strings).
const SMOLLM2_JINJA: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const QWEN25_JINJA: &str = "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}";
const GENERIC_CHATML_JINJA: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LLAMA2_JINJA: &str = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const MISTRAL_JINJA: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
const LLAMA3_JINJA: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}";

#[test]
fn query_joins_instruction_and_input() {
    assert_eq!(query("Classify.", "great film"), "Classify.\ngreat film");
    assert_eq!(query("Classify: great film", ""), "Classify: great film");
}

#[test]
fn llama2_renders_stock_system_prompt() {
    let t = ChatTemplate::from_name("llama2").unwrap();
    let expected = "<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\n<</SYS>>\n\nIs it good? [/INST] ";
    assert_eq!(t.render_prompt(None, "Is it good?"), expected);
    assert_eq!(t.response_end(), "</s>");
}

#[test]
fn llama2_system_override_and_empty() {
    let t = ChatTemplate::llama2();
    assert_eq!(
        t.render_prompt(Some("Be brief."), "Hi"),
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] "
    );
    assert_eq!(t.render_prompt(Some(""), "Hi"), "<s>[INST] Hi [/INST] ");
}

#[test]
fn mistral_renders_without_trailing_space() {
    let t = ChatTemplate::from_name("mistral").unwrap();
    assert_eq!(
        t.render_prompt(None, "Is it good?"),
        "<s>[INST] Is it good? [/INST]"
    );
    assert_eq!(
        t.render_prompt(Some("Be brief."), "Is it good?"),
        "<s>[INST] Be brief.\n\nIs it good? [/INST]"
    );
    assert_eq!(t.response_end(), "</s>");
}

#[test]
fn chatml_renders_with_and_without_system() {
    let bare = ChatTemplate::from_name("chatml").unwrap();
    assert_eq!(
        bare.render_prompt(None, "Hi"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
            bare.render_prompt(Some("Be brief."), "Hi"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    let smol = ChatTemplate::smollm2();
    assert_eq!(
            smol.render_prompt(None, "What is the capital of France?"),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    assert_eq!(
        smol.render_prompt(Some(""), "Hi"),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(smol.response_end(), "<|im_end|>");
    assert_eq!(smol.stop_strings(), vec!["<|im_end|>", "<|im_start|>"]);
}

#[test]
fn plain_renders_query_and_newline() {
    let t = ChatTemplate::from_name("plain").unwrap();
    assert_eq!(t.render_prompt(None, "Is it good?"), "Is it good?\n");
    assert_eq!(t.render_prompt(Some("Sys"), "Q"), "Sys\n\nQ\n");
    assert_eq!(t.response_end(), "");
    assert!(t.stop_strings().is_empty());
}

#[test]
fn names_round_trip() {
    for name in TEMPLATE_NAMES {
        assert_eq!(ChatTemplate::from_name(name).unwrap().name(), name);
    }
}

#[test]
fn unknown_name_lists_valid_ones() {
    let err = ChatTemplate::from_name("mistarl").unwrap_err().to_string();
    assert!(err.contains("mistarl"), "{err}");
    for name in TEMPLATE_NAMES {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn detects_real_templates() {
    assert_eq!(
        ChatTemplate::detect(SMOLLM2_JINJA),
        Some(ChatTemplate::smollm2())
    );
    assert_eq!(
        ChatTemplate::detect(QWEN25_JINJA),
        Some(ChatTemplate::ChatMl {
            default_system: Some(
                "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.".into()
            )
        })
    );
    assert_eq!(
        ChatTemplate::detect(GENERIC_CHATML_JINJA),
        Some(ChatTemplate::ChatMl {
            default_system: None
        })
    );
    assert_eq!(
        ChatTemplate::detect(LLAMA2_JINJA),
        Some(ChatTemplate::llama2())
    );
    assert_eq!(
        ChatTemplate::detect(MISTRAL_JINJA),
        Some(ChatTemplate::Mistral)
    );
    match ChatTemplate::detect(LLAMA3_JINJA) {
        Some(ChatTemplate::Jinja(j)) => {
            assert_eq!(j.source(), LLAMA3_JINJA);
            assert_eq!(j.bos_token(), "<|begin_of_text|>");
            assert_eq!(j.response_end(), "<|eot_id|>");
        }
        other => panic!("Llama-3 detected as {other:?}"),
    }
    // a Llama-3-looking template minijinja cannot compile is not detected
    assert_eq!(ChatTemplate::detect("<|start_header_id|>{% if %}"), None);
    assert_eq!(ChatTemplate::detect(""), None);
}

#[test]
fn serde_round_trips_and_omits_defaults() {
    let cases = [
        (
            ChatTemplate::from_name("chatml").unwrap(),
            r#"{"name":"chatml"}"#,
        ),
        (
            ChatTemplate::smollm2(),
            r#"{"name":"chatml","system":"You are a helpful AI assistant named SmolLM, trained by Hugging Face"}"#,
        ),
        (ChatTemplate::llama2(), r#"{"name":"llama2"}"#),
        (
            ChatTemplate::Llama2 {
                system: String::new(),
            },
            r#"{"name":"llama2","system":""}"#,
        ),
        (ChatTemplate::Mistral, r#"{"name":"mistral"}"#),
        (ChatTemplate::Plain, r#"{"name":"plain"}"#),
    ];
    for (t, json) in cases {
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert_eq!(serde_json::from_str::<ChatTemplate>(json).unwrap(), t);
    }
}

fn smollm2_jinja() -> ChatTemplate {
    ChatTemplate::Jinja(Box::new(
        JinjaTemplate::new(SMOLLM2_JINJA, "<|im_start|>", "<|im_end|>", "test").unwrap(),
    ))
}

#[test]
fn smollm2_jinja_renders_like_the_builtin() {
    let (jinja, builtin) = (smollm2_jinja(), ChatTemplate::smollm2());
    for (sys, user) in [
        (None, "What is the capital of France?"),
        (Some("Be brief."), "Is it good?"),
        (None, ""),
        (Some("Two\nlines"), "naïve café 🙂"),
    ] {
        assert_eq!(
            jinja.try_render_prompt(sys, user).unwrap(),
            builtin.render_prompt(sys, user),
            "{sys:?} {user:?}"
        );
    }
    assert_eq!(jinja.response_end(), "<|im_end|>");
    assert_eq!(jinja.stop_strings(), vec!["<|im_end|>", "<|im_start|>"]);
    assert_eq!(jinja.name(), "jinja");
    // Some("") means no system message: SmolLM2's jinja then writes its own default.
    assert!(jinja.render_prompt(Some(""), "Hi").contains("SmolLM"));
}

#[test]
fn jinja_default_system_and_no_system_slot() {
    let j = JinjaTemplate::new(LLAMA3_JINJA, "<|begin_of_text|>", "<|eot_id|>", "t")
        .unwrap()
        .with_default_system(Some("Sys".into()));
    let t = ChatTemplate::Jinja(Box::new(j));
    assert_eq!(
            t.try_render_prompt(None, " Hi ").unwrap(),
            "<|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        );
    assert_eq!(
        t.try_render_prompt(Some(""), "Hi").unwrap(),
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    );
    // Mistral v0.1 raises on a system message: the text goes into the user turn.
    let m = JinjaTemplate::new(MISTRAL_JINJA, "<s>", "</s>", "t").unwrap();
    assert!(!m.has_system_slot());
    assert_eq!(m.response_end(), "</s>");
    let m = ChatTemplate::Jinja(Box::new(m));
    assert_eq!(
        m.try_render_prompt(Some("Be brief."), "Is it good?")
            .unwrap(),
        ChatTemplate::Mistral.render_prompt(Some("Be brief."), "Is it good?")
    );
    // An assistant-first conversation is what that template rejects: a Template error.
    let err = match &m {
        ChatTemplate::Jinja(j) => j.render(&[("assistant", "x")], true).unwrap_err(),
        _ => unreachable!(),
    };
    assert!(err.to_string().contains("alternate"), "{err}");
}

#[test]
fn resolve_prefers_explicit_then_manifest_then_jinja() {
    let cfg = serde_json::json!({
        "chat_template": SMOLLM2_JINJA, "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>"}
    });
    let chatml = ChatTemplate::from_name("chatml").unwrap();
    // explicit name wins over manifest and checkpoint
    assert_eq!(
        ChatTemplate::resolve("mistral", Some(&chatml), Some(&cfg), "o").unwrap(),
        ChatTemplate::Mistral
    );
    // explicit `jinja` reads the checkpoint even when the manifest names a built-in
    assert_eq!(
        ChatTemplate::resolve("jinja", Some(&chatml), Some(&cfg), "o").unwrap(),
        smollm2_jinja()
    );
    let err = ChatTemplate::resolve("jinja", None, None, "/ck/tokenizer_config.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/ck/tokenizer_config.json"), "{err}");
    // auto: the manifest's template (an existing checkpoint renders as before)
    assert_eq!(
        ChatTemplate::resolve("auto", Some(&chatml), Some(&cfg), "o").unwrap(),
        chatml
    );
    // auto without a manifest template: the checkpoint's jinja
    assert_eq!(
        ChatTemplate::resolve("auto", None, Some(&cfg), "o").unwrap(),
        smollm2_jinja()
    );
    // jinja minijinja cannot compile: the detected built-in, else plain
    let broken = serde_json::json!({"chat_template": "<|im_start|>{% if %}"});
    assert_eq!(
        ChatTemplate::resolve("", None, Some(&broken), "o").unwrap(),
        ChatTemplate::ChatMl {
            default_system: None
        }
    );
    assert_eq!(
        ChatTemplate::resolve("auto", None, Some(&serde_json::json!({})), "o").unwrap(),
        ChatTemplate::Plain
    );
    assert_eq!(
        ChatTemplate::resolve("auto", None, None, "o").unwrap(),
        ChatTemplate::Plain
    );
    assert!(ChatTemplate::resolve("nope", None, Some(&cfg), "o").is_err());
}

#[test]
fn jinja_serde_round_trips_whole() {
    let t = ChatTemplate::Jinja(Box::new(
        JinjaTemplate::new(LLAMA3_JINJA, "<|begin_of_text|>", "<|eot_id|>", "t")
            .unwrap()
            .with_default_system(Some("S".into())),
    ));
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["name"], "jinja");
    assert_eq!(json["source"], LLAMA3_JINJA);
    assert_eq!(json["bos_token"], "<|begin_of_text|>");
    assert_eq!(json["eos_token"], "<|eot_id|>");
    assert_eq!(json["system"], "S");
    let back: ChatTemplate = serde_json::from_value(json).unwrap();
    assert_eq!(back, t);
    assert_eq!(
        back.try_render_prompt(None, "q").unwrap(),
        t.try_render_prompt(None, "q").unwrap()
    );
    // bare "jinja" has no source; built-ins take no source
    let err = serde_json::from_str::<ChatTemplate>(r#""jinja""#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("source"), "{err}");
    let err = serde_json::from_str::<ChatTemplate>(r#"{"name":"chatml","source":"x"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only for jinja"), "{err}");
    let err = serde_json::from_str::<ChatTemplate>(r#"{"name":"jinja","source":"{% if %}"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("syntax error"), "{err}");
    assert!(ChatTemplate::from_name("jinja")
        .unwrap_err()
        .to_string()
        .contains("tokenizer_config.json"));
}

#[test]
fn manifest_field_reads_old_names_and_new_specs() {
    #[derive(Deserialize)]
    struct M {
        t: Option<ChatTemplate>,
    }
    let old: M = serde_json::from_str(r#"{"t": "chatml"}"#).unwrap();
    assert_eq!(old.t, Some(ChatTemplate::from_name("chatml").unwrap()));
    let none: M = serde_json::from_str(r#"{"t": null}"#).unwrap();
    assert_eq!(none.t, None);
}

#[test]
fn serde_accepts_bare_name_and_rejects_bad_input() {
    assert_eq!(
        serde_json::from_str::<ChatTemplate>(r#""llama2""#).unwrap(),
        ChatTemplate::llama2()
    );
    let err = serde_json::from_str::<ChatTemplate>(r#""nope""#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("valid names"), "{err}");
    let err = serde_json::from_str::<ChatTemplate>(r#"{"name":"mistral","system":"x"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no system text"), "{err}");
}
