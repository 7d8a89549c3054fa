//! Chat templates: the exact text a chat model expects around a user turn.
//!
//! A fine-tuned chat model only behaves if its prompt is laid out the way it was trained, and the SFT
//! loss, the reward model and the server must all agree on where the prompt ends and the reply begins.
//! This module is that one agreement. The layouts follow the reference implementation (docs/method.md §2.2):
//!
//! | template  | prompt (text up to where the reply begins)                                              | reply closed by |
//! |-----------|-----------------------------------------------------------------------------------------|-----------------|
//! | `llama2`  | `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{query} [/INST] `                              | `</s>`          |
//! | `mistral` | `<s>[INST] {query} [/INST]`                                                              | `</s>`          |
//! | `chatml`  | `<\|im_start\|>system\n{system}<\|im_end\|>\n<\|im_start\|>user\n{query}<\|im_end\|>\n<\|im_start\|>assistant\n` | `<\|im_end\|>` |
//! | `plain`   | `{query}\n` (base models)                                                                | EOS id          |
//! | `jinja`   | the checkpoint's own `chat_template` rendered for `[system?, user]` with `add_generation_prompt` | derived (below) |
//!
//! `jinja` is the Hugging Face template of the checkpoint (`tokenizer_config.json` →
//! `chat_template`, a string or a list of named templates, with `bos_token` / `eos_token`), rendered
//! by `minijinja` as `transformers.apply_chat_template` renders it (see [`JinjaTemplate`]; text- and
//! token-identical on Llama-3, Mistral-v0.3 and SmolLM2: `tests/fixtures/templates/`). Its reply end
//! is derived: render `[user, assistant(sentinel)]` and take what follows the sentinel, trailing
//! whitespace trimmed (`<|im_end|>\n` → `<|im_end|>`, `<|eot_id|>`, `</s>`). A template that renders
//! no `system` message (it raises, or drops it) gets system text prepended to the user turn as
//! Mistral and Plain do. Llama-3 (`<|start_header_id|>`) has no built-in: [`ChatTemplate::detect`]
//! returns its jinja.
//!
//! Resolution from a checkpoint ([`ChatTemplate::resolve`]): an explicit name wins (`chatml`, ...,
//! or `jinja` = the checkpoint's template); `auto` takes the manifest's (`rllr.json`) template, else
//! the checkpoint's jinja, else a built-in detected from it, else `plain`. So checkpoints whose
//! manifest names a built-in render exactly as before.
//!
//! BOS is written as its text `<s>`; the tokenizer maps it to the special id (segments are tokenised
//! with special tokens parsed and `add_special_tokens = false`, so nothing adds a second BOS).
//!
//! System text: `render_prompt(Some(s), ..)` overrides the template's default; `Some("")` means "no
//! system text" (Llama-2 drops the `<<SYS>>` block, ChatML drops the system turn). Mistral and Plain
//! have no system slot: a non-empty system text is prepended to the query followed by a blank line.
//!
//! Serialisation: a template is written as `{"name": "chatml", "system": "..."}` where `system` is
//! omitted when it is the template's default (none for ChatML, the stock prompt for Llama-2; Mistral
//! and Plain have none). A bare string such as `"llama2"` is accepted on input as shorthand. A jinja
//! template is written whole, so a manifest is self-contained:
//! `{"name": "jinja", "source": "...", "bos_token": "...", "eos_token": "...", "system"?: "..."}`.

mod jinja;

pub use jinja::JinjaTemplate;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The stock Llama-2-chat system prompt (the template default the reference code uses; D17).
pub const LLAMA2_DEFAULT_SYSTEM: &str = "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.";

/// SmolLM2-Instruct's default system text (from its `tokenizer_config.json` chat template).
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// The names `from_name` accepts (the built-ins).
pub const TEMPLATE_NAMES: [&str; 4] = ["chatml", "llama2", "mistral", "plain"];

/// The name of the checkpoint's own jinja template (`--template jinja`, `{"name": "jinja"}`).
pub const JINJA_NAME: &str = "jinja";

/// Llama-3's special tokens, for [`ChatTemplate::detect`] given only the jinja text.
const LLAMA3_BOS: &str = "<|begin_of_text|>";
const LLAMA3_EOT: &str = "<|eot_id|>";

/// How a (system, user) turn is laid out for a particular model family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TemplateRepr", into = "TemplateSpec")]
pub enum ChatTemplate {
    /// ChatML (SmolLM2, Qwen). With no system text and no default, the system turn is omitted.
    ChatMl { default_system: Option<String> },
    /// Llama-2-chat; `system` is the default system prompt (empty ⇒ no `<<SYS>>` block).
    Llama2 { system: String },
    /// Mistral-Instruct (v0.1/v0.2): no system slot.
    Mistral,
    /// Base models: the query and a newline.
    Plain,
    /// The checkpoint's Hugging Face jinja template.
    Jinja(Box<JinjaTemplate>),
}

/// `query = instruction + "\n" + input` when `input` is non-empty, else `instruction` (docs/method.md §2.2).
pub fn query(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n{input}")
    }
}

impl ChatTemplate {
    /// The template called `name` with its default system text (ChatML: none, Llama-2: the stock
    /// prompt). Unknown names are an [`Error::Template`] that lists the valid ones.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "chatml" => Ok(ChatTemplate::ChatMl {
                default_system: None,
            }),
            "llama2" => Ok(ChatTemplate::llama2()),
            "mistral" => Ok(ChatTemplate::Mistral),
            "plain" => Ok(ChatTemplate::Plain),
            JINJA_NAME => Err(Error::Template(
                "template 'jinja' is the checkpoint's own chat_template: it needs the \
                 tokenizer_config.json (resolve it from a checkpoint, or give its 'source')"
                    .into(),
            )),
            other => Err(Error::Template(format!(
                "unknown template '{other}'; valid names: {}, or jinja (the checkpoint's own)",
                TEMPLATE_NAMES.join(", ")
            ))),
        }
    }

    /// Llama-2-chat with the stock system prompt.
    pub fn llama2() -> Self {
        ChatTemplate::Llama2 {
            system: LLAMA2_DEFAULT_SYSTEM.to_string(),
        }
    }

    /// ChatML with SmolLM2-Instruct's default system text.
    pub fn smollm2() -> Self {
        ChatTemplate::ChatMl {
            default_system: Some(SMOLLM2_DEFAULT_SYSTEM.to_string()),
        }
    }

    /// The template's name, as `from_name` accepts it.
    pub fn name(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "chatml",
            ChatTemplate::Llama2 { .. } => "llama2",
            ChatTemplate::Mistral => "mistral",
            ChatTemplate::Plain => "plain",
            ChatTemplate::Jinja(_) => JINJA_NAME,
        }
    }

    /// The checkpoint's jinja template from a parsed `tokenizer_config.json` (`origin` names the
    /// file in errors); `None` when it has no `chat_template`.
    pub fn from_tokenizer_config(cfg: &serde_json::Value, origin: &str) -> Result<Option<Self>> {
        Ok(JinjaTemplate::from_tokenizer_config(cfg, origin)?
            .map(|t| ChatTemplate::Jinja(Box::new(t))))
    }

    /// The template for a checkpoint. `requested`: an explicit name (`chatml`, `llama2`, `mistral`,
    /// `plain`, or `jinja` = the checkpoint's own) wins; `auto` or empty ⇒ the manifest's template,
    /// else the checkpoint's jinja (`tokenizer_config`, read from `origin`), else a built-in
    /// detected from the jinja text when minijinja cannot compile it (with a warning), else plain.
    pub fn resolve(
        requested: &str,
        manifest: Option<&ChatTemplate>,
        tokenizer_config: Option<&serde_json::Value>,
        origin: &str,
    ) -> Result<Self> {
        let from_checkpoint = || -> Result<Self> {
            let cfg = tokenizer_config.ok_or_else(|| {
                Error::Template(format!(
                    "template 'jinja': {origin} not found (no tokenizer_config.json)"
                ))
            })?;
            Self::from_tokenizer_config(cfg, origin)?.ok_or_else(|| {
                Error::Template(format!("template 'jinja': {origin} has no chat_template"))
            })
        };
        match requested {
            "" | "auto" => {}
            JINJA_NAME => return from_checkpoint(),
            name => return Self::from_name(name),
        }
        if let Some(t) = manifest {
            return Ok(t.clone());
        }
        let Some(cfg) = tokenizer_config else {
            return Ok(ChatTemplate::Plain);
        };
        match Self::from_tokenizer_config(cfg, origin) {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Ok(ChatTemplate::Plain),
            Err(e) => {
                let detected = cfg
                    .get("chat_template")
                    .and_then(|t| t.as_str())
                    .and_then(ChatTemplate::detect)
                    .filter(|t| !matches!(t, ChatTemplate::Jinja(_)));
                tracing::warn!(
                    "{e}; using {}",
                    detected.as_ref().map_or("plain", |t| t.name())
                );
                Ok(detected.unwrap_or(ChatTemplate::Plain))
            }
        }
    }

    /// The prompt up to where the assistant's reply begins (the generation prompt).
    ///
    /// `system` overrides the template's default; `Some("")` asks for no system text (a jinja
    /// template then gets no system message and may still write its own default, as SmolLM2's
    /// does). Built-ins cannot fail; a jinja template can only fail on content its own
    /// `raise_exception` rejects, and then this logs the error and falls back to `plain`'s layout:
    /// use [`Self::try_render_prompt`] to get the error instead.
    pub fn render_prompt(&self, system: Option<&str>, user: &str) -> String {
        match self.try_render_prompt(system, user) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}; falling back to the plain layout");
                ChatTemplate::Plain.render_prompt(system, user)
            }
        }
    }

    /// [`Self::render_prompt`], with a jinja rendering error returned as [`Error::Template`].
    pub fn try_render_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        Ok(match self {
            ChatTemplate::Jinja(t) => return t.render_prompt(system, user),
            ChatTemplate::ChatMl { default_system } => {
                let sys = system.or(default_system.as_deref()).unwrap_or("");
                let mut out = String::with_capacity(sys.len() + user.len() + 80);
                if !sys.is_empty() {
                    out.push_str("<|im_start|>system\n");
                    out.push_str(sys);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>user\n");
                out.push_str(user);
                out.push_str("<|im_end|>\n<|im_start|>assistant\n");
                out
            }
            ChatTemplate::Llama2 { system: default } => {
                let sys = system.unwrap_or(default);
                if sys.is_empty() {
                    format!("<s>[INST] {user} [/INST] ")
                } else {
                    format!("<s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{user} [/INST] ")
                }
            }
            ChatTemplate::Mistral => format!("<s>[INST] {} [/INST]", with_system(system, user)),
            ChatTemplate::Plain => format!("{}\n", with_system(system, user)),
        })
    }

    /// Text that closes a reply in training targets. Empty for Plain (and a jinja template that
    /// writes nothing after a reply): the caller appends the EOS id.
    pub fn response_end(&self) -> &str {
        match self {
            ChatTemplate::ChatMl { .. } => "<|im_end|>",
            ChatTemplate::Llama2 { .. } | ChatTemplate::Mistral => "</s>",
            ChatTemplate::Plain => "",
            ChatTemplate::Jinja(t) => t.response_end(),
        }
    }

    /// Extra stop strings for generation, beyond the tokenizer's EOS id.
    ///
    /// A decoder that skips special tokens will not see these in the text; add their ids to the EOS
    /// set as well.
    pub fn stop_strings(&self) -> Vec<String> {
        let v: &[&str] = match self {
            ChatTemplate::Jinja(t) => return t.stop_strings(),
            ChatTemplate::ChatMl { .. } => &["<|im_end|>", "<|im_start|>"],
            ChatTemplate::Llama2 { .. } | ChatTemplate::Mistral => &["</s>", "[INST]"],
            ChatTemplate::Plain => &[],
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Guess the template from a Hugging Face jinja `chat_template` (`tokenizer_config.json`).
    ///
    /// `<|im_start|>` ⇒ ChatML (with the default system text when the jinja hard-codes one, as
    /// SmolLM2 and Qwen do); `<|start_header_id|>` ⇒ Llama-3, which has no built-in: the jinja
    /// itself with Llama-3's `<|begin_of_text|>` / `<|eot_id|>` (`None` if it does not compile;
    /// with the checkpoint at hand prefer [`Self::from_tokenizer_config`], which reads its real
    /// tokens); `[INST]` and `<<SYS>>` ⇒ Llama-2 with the stock prompt; `[INST]` ⇒ Mistral;
    /// anything else ⇒ `None`.
    pub fn detect(hf_chat_template: &str) -> Option<Self> {
        let t = hf_chat_template;
        if t.contains("<|im_start|>") {
            Some(ChatTemplate::ChatMl {
                default_system: chatml_default_system(t),
            })
        } else if t.contains("<|start_header_id|>") {
            JinjaTemplate::new(t, LLAMA3_BOS, LLAMA3_EOT, "a Llama-3 chat_template")
                .ok()
                .map(|j| ChatTemplate::Jinja(Box::new(j)))
        } else if t.contains("[INST]") && t.contains("<<SYS>>") {
            Some(ChatTemplate::llama2())
        } else if t.contains("[INST]") {
            Some(ChatTemplate::Mistral)
        } else {
            None
        }
    }

    /// The system text carried by the variant (ChatML default, Llama-2 prompt), if any.
    fn system_text(&self) -> Option<&str> {
        match self {
            ChatTemplate::ChatMl { default_system } => default_system.as_deref(),
            ChatTemplate::Llama2 { system } => Some(system),
            ChatTemplate::Mistral | ChatTemplate::Plain => None,
            ChatTemplate::Jinja(t) => t.default_system(),
        }
    }
}

/// `{system}\n\n{user}` when a non-empty system text is given, else `user` (templates without a slot).
fn with_system(system: Option<&str>, user: &str) -> String {
    match system {
        Some(s) if !s.is_empty() => format!("{s}\n\n{user}"),
        _ => user.to_string(),
    }
}

/// A system text hard-coded in a ChatML jinja template: the literal between `<|im_start|>system\n`
/// (or the escaped `\\n`) and `<|im_end|>`, when it is plain text rather than jinja expressions.
fn chatml_default_system(jinja: &str) -> Option<String> {
    const HEAD: &str = "<|im_start|>system";
    const END: &str = "<|im_end|>";
    let mut rest = jinja;
    while let Some(at) = rest.find(HEAD) {
        rest = &rest[at + HEAD.len()..];
        let body = rest.strip_prefix('\n').or_else(|| rest.strip_prefix("\\n"));
        let Some(body) = body else { continue };
        let Some(end) = body.find(END) else { continue };
        let literal = &body[..end];
        let is_plain = !literal.is_empty()
            && !literal.contains(['\'', '"', '{', '}', '+'])
            && !literal.contains(HEAD);
        if is_plain {
            return Some(literal.replace("\\n", "\n"));
        }
    }
    None
}

/// The serialised form: name plus optional system text (and, for `jinja`, the template itself).
#[derive(Serialize, Deserialize)]
struct TemplateSpec {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bos_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eos_token: Option<String>,
}

/// What deserialisation accepts: a bare name or the full spec.
#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateRepr {
    Name(String),
    Spec(TemplateSpec),
}

impl From<ChatTemplate> for TemplateSpec {
    fn from(t: ChatTemplate) -> Self {
        if let ChatTemplate::Jinja(j) = &t {
            return TemplateSpec {
                name: JINJA_NAME.into(),
                system: j.default_system().map(str::to_string),
                source: Some(j.source().to_string()),
                bos_token: Some(j.bos_token().to_string()),
                eos_token: Some(j.eos_token().to_string()),
            };
        }
        let default = ChatTemplate::from_name(t.name()).ok();
        let system = match t.system_text() {
            Some(s) if default.as_ref().and_then(|d| d.system_text()) != Some(s) => {
                Some(s.to_string())
            }
            _ => None,
        };
        TemplateSpec {
            name: t.name().to_string(),
            system,
            source: None,
            bos_token: None,
            eos_token: None,
        }
    }
}

impl TryFrom<TemplateRepr> for ChatTemplate {
    type Error = Error;
    fn try_from(r: TemplateRepr) -> Result<Self> {
        let spec = match r {
            TemplateRepr::Name(name) => TemplateSpec {
                name,
                system: None,
                source: None,
                bos_token: None,
                eos_token: None,
            },
            TemplateRepr::Spec(spec) => spec,
        };
        if spec.name == JINJA_NAME {
            let source = spec.source.ok_or_else(|| {
                Error::Template(
                    "template 'jinja' needs its 'source' (the chat_template text)".into(),
                )
            })?;
            let t = JinjaTemplate::new(
                &source,
                spec.bos_token.as_deref().unwrap_or(""),
                spec.eos_token.as_deref().unwrap_or(""),
                "a serialised template",
            )?;
            return Ok(ChatTemplate::Jinja(Box::new(
                t.with_default_system(spec.system),
            )));
        }
        if spec.source.is_some() || spec.bos_token.is_some() || spec.eos_token.is_some() {
            return Err(Error::Template(format!(
                "template '{}' is a built-in: 'source', 'bos_token' and 'eos_token' are only for jinja",
                spec.name
            )));
        }
        let base = ChatTemplate::from_name(&spec.name)?;
        match (base, spec.system) {
            (base, None) => Ok(base),
            (ChatTemplate::ChatMl { .. }, Some(s)) => Ok(ChatTemplate::ChatMl {
                default_system: Some(s),
            }),
            (ChatTemplate::Llama2 { .. }, Some(s)) => Ok(ChatTemplate::Llama2 { system: s }),
            (other, Some(_)) => Err(Error::Template(format!(
                "template '{}' has no system text; remove the 'system' field",
                other.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
