//! The model's own chat template: the Jinja `chat_template` of its `tokenizer_config.json`,
//! `chat_template.jinja` or GGUF `tokenizer.chat_template`, rendered as HF transformers'
//! `apply_chat_template` renders it, with minijinja (and minijinja-contrib's Python string
//! and dict methods, as HF's text-generation-inference does).
//!
//! The environment copies transformers' (`utils/chat_template_utils.py`): `trim_blocks` and
//! `lstrip_blocks`, loop controls, `raise_exception`, a `tojson` that writes what Python's
//! `json.dumps` writes, and the context `messages`, `tools` and `documents` (none),
//! `add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, ...). It defines
//! no `strftime_now`: a template that asks for today's date (Llama 3.1's) writes its own
//! fallback date, so that a seeded run renders the same prompt on every day.
//!
//! A model without a template gets ChatML ([`ChatTemplate::chatml`]), and
//! [`ChatTemplate::is_fallback`] says so, for the run to report it.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use rubric::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// ChatML (`<|im_start|>{role}\n{content}<|im_end|>\n` per message), the fallback for a model
/// without a template and the built-in model's own.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template.
#[derive(Clone)]
pub struct ChatTemplate {
    source: Arc<str>,
    fallback: bool,
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fallback", &self.fallback)
            .field("chars", &self.source.len())
            .finish()
    }
}

/// The special tokens a template may name (`bos_token`, `eos_token`, `unk_token`,
/// `pad_token`), as transformers passes its `special_tokens_map`.
pub type SpecialTokens = BTreeMap<&'static str, String>;

impl ChatTemplate {
    /// Compiles a model's template; a syntax error names the template's line (minijinja's
    /// `(in chat_template:LINE)`).
    pub fn new(source: &str) -> Result<Self> {
        Self::compile(source, false)
    }

    /// ChatML, for a model that has no template of its own.
    pub fn chatml() -> Self {
        Self::compile(CHATML, true).expect("the ChatML template compiles")
    }

    fn compile(source: &str, fallback: bool) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat_template", source.to_string())
            .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))?;
        Ok(ChatTemplate {
            source: source.into(),
            fallback,
            env: Arc::new(env),
        })
    }

    /// The template's Jinja text (what `tokenizer_config.json` holds).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the model had no template and this is ChatML in its place.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// The conversation's text, as `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)` writes it.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        specials: &SpecialTokens,
    ) -> Result<String> {
        let mut ctx: BTreeMap<&str, Value> = specials
            .iter()
            .map(|(k, v)| (*k, Value::from(v.as_str())))
            .collect();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let t = self
            .env
            .get_template("chat_template")
            .expect("added at compile");
        t.render(ctx)
            .map_err(|e| Error::Tokenizer(format!("chat template: {e}")))
    }
}

/// `raise_exception(message)`: the template refuses the conversation (as HF's
/// `TemplateError`).
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson(indent=None)`: Python's `json.dumps(x, ensure_ascii=False)` (HF overrides Jinja's
/// HTML-escaping `tojson` with it): `", "` and `": "` between items, or `indent` spaces and
/// newlines; keys in the order they were given.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let f = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                value,
                &mut serde_json::Serializer::with_formatter(&mut out, f),
            )
        }
        None => serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonSpaced),
        ),
    };
    written.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = String::from_utf8(out).expect("serde_json writes UTF-8");
    Ok(Value::from_safe_string(text))
}

/// Python's default `json.dumps` separators, `", "` and `": "`.
struct PythonSpaced;

impl serde_json::ser::Formatter for PythonSpaced {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `", "` before every item but the first, as `json.dumps` writes lists and dicts.
fn item_separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> Message {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_renders_every_message_and_the_generation_prompt() {
        let t = ChatTemplate::chatml();
        assert!(t.is_fallback());
        let text = t
            .render(&[user("Hi")], true, &SpecialTokens::new())
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = t
            .render(&[user("Hi")], false, &SpecialTokens::new())
            .unwrap();
        assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let t = ChatTemplate::new(
            "{{ {'name': 'f', 'args': [1, 2.5, 'é\"'], 'b': true, 'n': none} | tojson }}|{{ [1, {'a': 2}] | tojson(indent=2) }}",
        )
        .unwrap();
        let text = t.render(&[], false, &SpecialTokens::new()).unwrap();
        // json.dumps({"name": "f", "args": [1, 2.5, 'é"'], "b": True, "n": None},
        // ensure_ascii=False) and json.dumps([1, {"a": 2}], indent=2)
        assert_eq!(
            text,
            "{\"name\": \"f\", \"args\": [1, 2.5, \"é\\\"\"], \"b\": true, \"n\": null}|[\n  1,\n  {\n    \"a\": 2\n  }\n]"
        );
    }

    #[test]
    fn a_template_error_is_reported_with_its_message() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}",
        )
        .unwrap();
        let sys = Message {
            role: "system".into(),
            content: "x".into(),
        };
        let e = t.render(&[sys], true, &SpecialTokens::new()).unwrap_err();
        assert!(e.to_string().contains("System role not supported"), "{e}");
        let e = ChatTemplate::new("{% for m in messages %}").unwrap_err();
        assert!(
            e.to_string().starts_with("tokenizer: chat template:"),
            "{e}"
        );
    }

    #[test]
    fn python_string_methods_and_namespaces_work_as_in_jinja2() {
        let t = ChatTemplate::new(
            "{%- set ns = namespace(last=0) %}{%- for m in messages[::-1] %}{%- if m.content.startswith('<a>') %}{%- set ns.last = loop.index0 %}{%- endif %}{%- endfor %}{{ ns.last }}:{{ messages[0].content.split('</t>')[-1].lstrip('\\n') }}:{{ messages[0].content | trim }}",
        )
        .unwrap();
        let text = t
            .render(
                &[user(" x</t>\n y "), user("<a>b")],
                false,
                &SpecialTokens::new(),
            )
            .unwrap();
        assert_eq!(text, "0: y :x</t>\n y");
    }
}
