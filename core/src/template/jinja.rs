//! Hugging Face jinja chat templates (`tokenizer_config.json` → `chat_template`), rendered with
//! `minijinja` the way `transformers.apply_chat_template` renders them with Jinja2.
//!
//! What is matched: `trim_blocks` and `lstrip_blocks` on (as transformers sets them), loop
//! controls, Python string/dict/list methods (`.strip()`, `.startswith()`, `.items()`, ... via
//! `minijinja-contrib`'s pycompat callback), `raise_exception(msg)`, `strftime_now(fmt)` (UTC),
//! and a `tojson` with Python's `json.dumps(ensure_ascii=False)` separators. The context is
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools = none` and
//! `documents = none`, as transformers passes them.
//!
//! Not matched: the `{% generation %}` tag (assistant masks), and Jinja2's strict undefined
//! attribute chains (minijinja is lenient there).

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Kwargs, Value};
use minijinja::{context, Environment, ErrorKind};

use crate::{Error, Result};

/// Name of the one template registered in each environment.
const NAME: &str = "chat_template";
/// Stand-ins rendered in place of real text to find where the parts of a turn go.
const SYS_SENTINEL: &str = "\u{1}rllr-system\u{1}";
const REPLY_SENTINEL: &str = "\u{1}rllr-reply\u{1}";
/// Markers that open a new turn in the common families; a reply that writes one has ended.
const TURN_OPENERS: [&str; 4] = [
    "<|im_start|>",
    "<|start_header_id|>",
    "[INST]",
    "<start_of_turn>",
];

/// A compiled jinja chat template plus what it derives from probing itself.
#[derive(Clone)]
pub struct JinjaTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// System text used when the caller gives none (overrides the template's own default).
    default_system: Option<String>,
    /// Whether a `system` message renders (else system text is folded into the user turn).
    system_slot: bool,
    /// What the template writes after an assistant message's content, trailing whitespace trimmed.
    response_end: String,
    env: Arc<Environment<'static>>,
}

impl fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("default_system", &self.default_system)
            .field("system_slot", &self.system_slot)
            .field("response_end", &self.response_end)
            .finish()
    }
}

impl PartialEq for JinjaTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.bos_token == other.bos_token
            && self.eos_token == other.eos_token
            && self.default_system == other.default_system
    }
}
impl Eq for JinjaTemplate {}

impl JinjaTemplate {
    /// Compile `source` (errors name `origin`, e.g. the `tokenizer_config.json` path) and probe it:
    /// it must render a user turn with `add_generation_prompt = true`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str, origin: &str) -> Result<Self> {
        let env = environment(source).map_err(|e| {
            Error::Template(format!(
                "chat_template of {origin}: syntax error: {}",
                describe(&e)
            ))
        })?;
        let mut t = JinjaTemplate {
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            default_system: None,
            system_slot: false,
            response_end: String::new(),
            env: Arc::new(env),
        };
        t.render(&[("user", "x")], true).map_err(|e| {
            Error::Template(format!(
                "chat_template of {origin}: cannot render a user turn: {e}"
            ))
        })?;
        t.system_slot = t
            .render(&[("system", SYS_SENTINEL), ("user", "x")], true)
            .is_ok_and(|s| s.contains(SYS_SENTINEL));
        t.response_end = t.derive_response_end();
        Ok(t)
    }

    /// The template from a parsed `tokenizer_config.json`: `chat_template` as a string, or a list
    /// of `{"name", "template"}` (the one named `default`, else the first). `bos_token` /
    /// `eos_token` may be strings or `{"content": ...}` objects. `None` when there is no template.
    pub fn from_tokenizer_config(cfg: &serde_json::Value, origin: &str) -> Result<Option<Self>> {
        let Some(source) = chat_template_source(cfg, origin)? else {
            return Ok(None);
        };
        let bos = special_token(cfg, "bos_token");
        let eos = special_token(cfg, "eos_token");
        Self::new(&source, &bos, &eos, origin).map(Some)
    }

    /// With `system` as the text used when the caller gives none.
    pub fn with_default_system(mut self, system: Option<String>) -> Self {
        self.default_system = system;
        self
    }

    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
    pub fn default_system(&self) -> Option<&str> {
        self.default_system.as_deref()
    }
    /// Whether the template renders a `system` message (else it is folded into the user turn).
    pub fn has_system_slot(&self) -> bool {
        self.system_slot
    }
    pub fn response_end(&self) -> &str {
        &self.response_end
    }

    /// The generation prompt for `[system?, user]`. `system`: `None` ⇒ the default system text if
    /// one was set, else no system message (the template may add its own default); `Some("")` ⇒
    /// no system message. Without a system slot the text is prepended to the user turn.
    pub fn render_prompt(&self, system: Option<&str>, user: &str) -> Result<String> {
        let sys = system
            .or(self.default_system.as_deref())
            .filter(|s| !s.is_empty());
        match sys {
            Some(s) if self.system_slot => self.render(&[("system", s), ("user", user)], true),
            Some(s) => self.render(&[("user", &format!("{s}\n\n{user}"))], true),
            None => self.render(&[("user", user)], true),
        }
    }

    /// Extra stop strings: the reply end, the EOS text and any turn opener the prompt uses.
    pub fn stop_strings(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |s: &str| {
            if !s.is_empty() && !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        };
        push(&self.response_end);
        push(&self.eos_token);
        if let Ok(p) = self.render(&[("user", "x")], true) {
            for m in TURN_OPENERS {
                if p.contains(m) {
                    push(m);
                }
            }
        }
        out
    }

    /// Render `messages` (role, content) with the transformers context.
    pub fn render(&self, messages: &[(&str, &str)], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|(role, content)| context! { role => *role, content => *content })
            .collect();
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(describe(&e)))?;
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
            documents => Value::from(()),
        })
        .map_err(|e| Error::Template(format!("rendering the chat template: {}", describe(&e))))
    }

    /// What follows an assistant message's content: render `[user, assistant(sentinel)]` and take
    /// the text after the sentinel with trailing whitespace trimmed (`<|im_end|>\n` → `<|im_end|>`).
    /// Falls back to the EOS text when the template cannot render an assistant turn.
    fn derive_response_end(&self) -> String {
        match self.render(&[("user", "x"), ("assistant", REPLY_SENTINEL)], false) {
            Ok(s) => match s.find(REPLY_SENTINEL) {
                Some(at) => s[at + REPLY_SENTINEL.len()..].trim_end().to_string(),
                None => self.eos_token.clone(),
            },
            Err(_) => self.eos_token.clone(),
        }
    }
}

/// A minijinja error with its line and the chain of causes.
fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.line() {
        Some(line) => format!("{e} (template line {line})"),
        None => e.to_string(),
    };
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(&format!(": {cause}"));
        src = cause.source();
    }
    s
}

fn chat_template_source(cfg: &serde_json::Value, origin: &str) -> Result<Option<String>> {
    match cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |want: Option<&str>| {
                list.iter().find(|t| {
                    want.is_none_or(|w| t.get("name").and_then(|n| n.as_str()) == Some(w))
                })
            };
            let pick = named(Some("default")).or_else(|| named(None));
            match pick.and_then(|t| t.get("template")).and_then(|t| t.as_str()) {
                Some(s) => Ok(Some(s.to_string())),
                None if list.is_empty() => Ok(None),
                None => Err(Error::Template(format!(
                    "chat_template of {origin}: a list entry has no string 'template'"
                ))),
            }
        }
        Some(other) => Err(Error::Template(format!(
            "chat_template of {origin}: expected a string or a list of {{name, template}}, got {other}"
        ))),
    }
}

/// `cfg[key]` as a string or `{"content": ...}`; empty when absent.
fn special_token(cfg: &serde_json::Value, key: &str) -> String {
    match cfg.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    }
}

fn environment(source: &str) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(NAME, source.to_string())?;
    Ok(env)
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the current UTC time formatted with the common `strftime` codes
/// (`%d %m %Y %y %b %B %a %A %H %M %S %j %%`; others are written as is).
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &fmt)
}

fn strftime(unix_secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let tod = unix_secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&mname[..3]),
            Some('B') => out.push_str(mname),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`, so
/// `", "` / `": "` separators without indent and no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let err = |e: serde_json::Error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialise to JSON")
            .with_source(e)
    };
    let mut buf = Vec::new();
    match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let f = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, f);
            serde::Serialize::serialize(&value, &mut ser).map_err(err)?;
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut buf, PyCompact);
            serde::Serialize::serialize(&value, &mut ser).map_err(err)?;
        }
    }
    Ok(Value::from_safe_string(
        String::from_utf8(buf).unwrap_or_default(),
    ))
}

/// Python's default `json.dumps` layout: `, ` between items, `: ` after keys.
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 00:00:00 UTC, a Friday, day 208 of a leap year.
        assert_eq!(strftime(1_721_952_000, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            strftime(1_721_952_000 + 3_723, "%A %B %j %H:%M:%S %y %m %% %q"),
            "Friday July 208 01:02:03 24 07 % %q"
        );
        assert_eq!(strftime(0, "%a %d %m %Y"), "Thu 01 01 1970");
        assert_eq!(strftime(951_782_400, "%Y-%m-%d %j"), "2000-02-29 060");
    }

    #[test]
    fn python_compat_methods_filters_and_functions() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m['content'].strip().upper() }}|{{ m.role.startswith('us') }}|{{ {'a': 1, 'b': [1, 'é<']} | tojson }}|{{ {'a': 1} | tojson(indent=2) }}{% endfor %}{% if add_generation_prompt %}!{% endif %}";
        let t = JinjaTemplate::new(src, "<s>", "</s>", "test").unwrap();
        assert_eq!(
            t.render(&[("user", "  hi  ")], true).unwrap(),
            "<s>HI|True|{\"a\": 1, \"b\": [1, \"é<\"]}|{\n  \"a\": 1\n}!"
        );
        let items = "{% for k, v in {'x': 1, 'y': 2}.items() %}{{ k }}={{ v }};{% endfor %}";
        let t = JinjaTemplate::new(items, "", "", "test").unwrap();
        assert_eq!(t.render(&[("user", "x")], true).unwrap(), "x=1;y=2;");
    }

    #[test]
    fn trim_and_lstrip_blocks_match_transformers() {
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}\n";
        let t = JinjaTemplate::new(src, "", "", "test").unwrap();
        assert_eq!(t.render(&[("user", "a")], true).unwrap(), "[a]\n");
    }

    #[test]
    fn raise_exception_is_a_template_error_with_its_message() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}ok";
        let t = JinjaTemplate::new(src, "", "", "test").unwrap();
        let err = t.render(&[("assistant", "x")], true).unwrap_err();
        assert!(matches!(err, Error::Template(_)));
        assert!(err.to_string().contains("roles must alternate"), "{err}");
        // No system slot: the probe raised, so system text is folded into the user turn.
        let t = JinjaTemplate::new(
            "{% for m in messages %}{% if m.role != 'user' %}{{ raise_exception('no') }}{% endif %}<{{ m.content }}>{% endfor %}",
            "",
            "",
            "test",
        )
        .unwrap();
        assert!(!t.has_system_slot());
        assert_eq!(t.render_prompt(Some("S"), "U").unwrap(), "<S\n\nU>");
    }

    #[test]
    fn syntax_errors_name_the_origin() {
        let err = JinjaTemplate::new(
            "{% for m in messages %}",
            "",
            "",
            "/m/tokenizer_config.json",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/m/tokenizer_config.json"), "{err}");
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn config_forms_list_templates_and_token_objects() {
        let cfg = serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
            ],
            "bos_token": {"content": "<B>", "lstrip": false},
            "eos_token": "<E>"
        });
        let t = JinjaTemplate::from_tokenizer_config(&cfg, "cfg")
            .unwrap()
            .unwrap();
        assert_eq!(t.render(&[("user", "q")], true).unwrap(), "<B>q<E>");
        assert_eq!(t.bos_token(), "<B>");
        let none = serde_json::json!({"bos_token": "<s>"});
        assert!(JinjaTemplate::from_tokenizer_config(&none, "cfg")
            .unwrap()
            .is_none());
        let bad = serde_json::json!({"chat_template": 3});
        assert!(JinjaTemplate::from_tokenizer_config(&bad, "cfg").is_err());
    }
}
