//! Chat templates rendered the way Hugging Face transformers renders them.
//!
//! transformers' `apply_chat_template` runs the template in a sandboxed Jinja2 environment with
//! `trim_blocks`, `lstrip_blocks` and loop controls, its own `tojson` filter (`json.dumps` with
//! `ensure_ascii=False`), the globals `raise_exception` and `strftime_now`, and the render
//! kwargs `messages`, `tools`, `documents`, `add_generation_prompt`, the special tokens and the
//! caller's template kwargs. Before rendering it drops `None` message fields and copies the
//! reasoning field under `reasoning_content` and `thinking`. [`ChatTemplate`] does the same on
//! minijinja, with Python's `str()` for printed values and Python string/dict methods, so the
//! prompt is byte-identical (`tests/templates.rs` checks this against a corpus of real
//! templates).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::NaiveDateTime;
use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value};

use super::pyfilters;
use super::pyfmt::{self, JsonOptions};

/// The name the single template is stored under in its environment.
const NAME: &str = "chat";

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source is not valid Jinja (for minijinja).
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`: it rejects this conversation.
    #[error("the chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed (an undefined attribute, a type error, ...).
    #[error("chat template rendering failed: {0}")]
    Render(String),
    /// The messages, tools or kwargs cannot be passed to a template.
    #[error("invalid chat template input: {0}")]
    Input(String),
}

/// The tokenizer's special tokens, passed to the template as `bos_token`, `eos_token`, ...
/// (transformers passes `special_tokens_map`); a `None` token is left undefined.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    /// `bos_token`.
    pub bos: Option<String>,
    /// `eos_token`.
    pub eos: Option<String>,
    /// `unk_token`.
    pub unk: Option<String>,
    /// `pad_token`.
    pub pad: Option<String>,
}

/// A compiled chat template plus the special tokens it is rendered with.
pub struct ChatTemplate {
    /// The environment that owns the compiled template and the transformers globals.
    env: Environment<'static>,
    /// Passed as `bos_token` etc. unless a template kwarg overrides them.
    special: SpecialTokens,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

/// The error `raise_exception` raises, kept as the source of minijinja's error so that
/// [`ChatTemplate::render`] can tell a template's refusal from a rendering bug.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Compiles `source` (a Jinja chat template from `tokenizer_config.json` or
    /// `chat_template.jinja`).
    pub fn new(source: &str, special: SpecialTokens) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python's str/dict/list methods (`.strip()`, `.items()`, `.get()`, ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            out.write_str(&pyfmt::py_str(value)).map_err(Error::from)
        });
        env.add_filter("tojson", tojson);
        pyfilters::install(&mut env);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<JValue, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message.clone())
                    .with_source(Raised(message)))
            },
        );
        env.add_function("strftime_now", |format: String| {
            strftime(chrono::Local::now().naive_local(), &format)
        });
        env.add_template_owned(NAME, rewrite_generation_tags(source))
            .map_err(|e| TemplateError::Syntax(format!("{e:#}")))?;
        Ok(ChatTemplate { env, special })
    }

    /// Makes `strftime_now` return `now` instead of the local time (deterministic tests).
    pub fn with_frozen_now(mut self, now: NaiveDateTime) -> Self {
        self.env
            .add_function("strftime_now", move |format: String| strftime(now, &format));
        self
    }

    /// Renders `messages` (OpenAI-shaped JSON objects, passed through as transformers does)
    /// with the tool schemas `tools`, `add_generation_prompt`, and the template kwargs
    /// `kwargs` (e.g. `enable_thinking`), which override the special tokens.
    pub fn render(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let messages = prepare_messages(messages)?;
        match self.render_prepared(&messages, tools, add_generation_prompt, kwargs) {
            // Some templates read every assistant message's content as text (Devstral's
            // indexes `content[0]` when it is not a string), while OpenAI clients send a
            // tool-call turn with `content: null` or none: such a render is tried again with
            // `""` there, as llama.cpp's template polyfills do. A template that renders the
            // message without content never sees the `""`.
            Err(TemplateError::Render(e)) => match with_empty_content(&messages) {
                Some(filled) => self.render_prepared(&filled, tools, add_generation_prompt, kwargs),
                None => Err(TemplateError::Render(e)),
            },
            other => other,
        }
    }

    fn render_prepared(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
        add_generation_prompt: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let mut ctx: BTreeMap<String, JValue> = BTreeMap::new();
        let special = [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("unk_token", &self.special.unk),
            ("pad_token", &self.special.pad),
        ];
        for (name, token) in special {
            if let Some(token) = token {
                ctx.insert(name.to_string(), JValue::from(token.as_str()));
            }
        }
        for (key, value) in kwargs {
            if matches!(
                key.as_str(),
                "messages" | "tools" | "documents" | "add_generation_prompt"
            ) {
                return Err(TemplateError::Input(format!(
                    "template kwarg `{key}` is reserved"
                )));
            }
            ctx.insert(key.clone(), JValue::from_serialize(value));
        }
        ctx.insert("messages".into(), JValue::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            tools.map_or(JValue::from(()), JValue::from_serialize),
        );
        ctx.insert("documents".into(), JValue::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            JValue::from(add_generation_prompt),
        );

        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        template.render(JValue::from(ctx)).map_err(classify)
    }
}

/// `messages` with `content: ""` on each assistant message that has none (`None`: every
/// message has content).
fn with_empty_content(messages: &[Value]) -> Option<Vec<Value>> {
    let lacks = |m: &Value| m["role"] == "assistant" && m.get("content").is_none();
    if !messages.iter().any(lacks) {
        return None;
    }
    let filled = messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if lacks(&m) {
                m["content"] = Value::String(String::new());
            }
            m
        })
        .collect();
    Some(filled)
}

/// Tells a `raise_exception` refusal from other failures.
fn classify(err: Error) -> TemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        source = e.source();
    }
    TemplateError::Render(format!("{err:#}"))
}

/// transformers' message normalisation: drop `null` fields, then copy the reasoning (from
/// `reasoning_content`, `thinking` or `reasoning`) to `thinking` (front, unless present) and
/// `reasoning_content`.
fn prepare_messages(messages: &[Value]) -> Result<Vec<Value>, TemplateError> {
    const REASONING: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    messages
        .iter()
        .map(|m| {
            let Value::Object(fields) = m else {
                return Err(TemplateError::Input(format!(
                    "chat messages must be objects, got {m}"
                )));
            };
            let fields: Map<String, Value> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let Some(reasoning) = REASONING.iter().find_map(|k| fields.get(*k)).cloned() else {
                return Ok(Value::Object(fields));
            };
            let mut out = Map::new();
            if !fields.contains_key("thinking") {
                out.insert("thinking".into(), reasoning.clone());
            }
            out.extend(fields);
            out.insert("reasoning_content".into(), reasoning);
            Ok(Value::Object(out))
        })
        .collect()
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, the options also accepted positionally in that order.
fn tojson(
    value: JValue,
    args: minijinja::value::Rest<JValue>,
    kwargs: Kwargs,
) -> Result<String, Error> {
    let mut opts = JsonOptions::default();
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut given: Vec<(&str, JValue)> = names.iter().copied().zip(args.iter().cloned()).collect();
    if args.len() > names.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    for name in names {
        if let Some(v) = kwargs.get::<Option<JValue>>(name)? {
            given.push((name, v));
        }
    }
    for (name, v) in given {
        match name {
            "ensure_ascii" => opts.ensure_ascii = v.is_true(),
            "sort_keys" => opts.sort_keys = v.is_true(),
            "indent" => {
                opts.indent = match v.kind() {
                    ValueKind::None | ValueKind::Undefined => None,
                    ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
                    _ => Some(" ".repeat(v.as_i64().unwrap_or(0).max(0) as usize)),
                }
            }
            _ => {
                if !v.is_none() && !v.is_undefined() {
                    let parts: Vec<String> = v
                        .try_iter()?
                        .map(|p| p.as_str().unwrap_or_default().to_string())
                        .collect();
                    let [item, key] = <[String; 2]>::try_from(parts).map_err(|_| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            "separators must be an (item, key) pair",
                        )
                    })?;
                    opts.separators = Some((item, key));
                }
            }
        }
    }
    kwargs.assert_all_used()?;
    pyfmt::json_dumps(&value, &opts)
}

/// `datetime.strftime` for `strftime_now` (chrono's specifiers are a superset of the common
/// Python ones, `%-d` included).
fn strftime(now: NaiveDateTime, format: &str) -> Result<String, Error> {
    let mut out = String::new();
    write!(out, "{}", now.format(format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("bad strftime format {format:?}"),
        )
    })?;
    Ok(out)
}

/// Python list mutation on a namespace attribute, which minijinja's immutable lists lack (Kimi-K2's
/// templates queue call ids with it): `set _ = ns.xs.append(v)` as `set ns.xs = ns.xs + [v]`, and
/// `set v = ns.xs.pop(0)` (or `pop()`) as `set v = ns.xs[0]` then `set ns.xs = ns.xs[1:]`.
/// `inner` is the tag between `{%` and `%}`, `body` the same without whitespace control.
fn rewrite_list_mutation(inner: &str, body: &str) -> Option<String> {
    let (lhs, rhs) = body.strip_prefix("set ")?.split_once('=')?;
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    let is_attr = |x: &str| {
        x.contains('.')
            && x.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    };
    let open = &inner[..inner.len() - inner.trim_start_matches(['-', '+']).len()];
    let close = &inner[inner.trim_end_matches(['-', '+']).len()..];
    let tag = |s: String| format!("{{%{open} {s} {close}%}}");
    if let Some((list, value)) = rhs.strip_suffix(')').and_then(|r| r.split_once(".append(")) {
        if lhs == "_" && is_attr(list) {
            return Some(tag(format!("set {list} = {list} + [{value}]")));
        }
        return None;
    }
    let (list, first) = match rhs.strip_suffix(".pop(0)") {
        Some(list) => (list, true),
        None => (rhs.strip_suffix(".pop()")?, false),
    };
    if !is_attr(list) || !lhs.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    let (item, rest) = if first { ("0", "1:") } else { ("-1", ":-1") };
    Some(tag(format!("set {lhs} = {list}[{item}]")) + &tag(format!("set {list} = {list}[{rest}]")))
}

/// transformers' `{% generation %}...{% endgeneration %}` (which marks assistant tokens and
/// renders its body unchanged) as `{% if true %}...{% endif %}`, keeping whitespace control.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let body = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let replacement = match body {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        if let Some(tags) = rewrite_list_mutation(inner, body) {
            out.push_str(&tags);
            rest = &tag[end + 2..];
            continue;
        }
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(&inner.replacen(body, r, 1));
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: Value) -> Result<String, TemplateError> {
        let t = ChatTemplate::new(
            src,
            SpecialTokens {
                bos: Some("<s>".into()),
                ..Default::default()
            },
        )?;
        t.render(messages.as_array().unwrap(), None, true, &Map::new())
    }

    #[test]
    fn namespace_lists_append_and_pop() {
        let out = render(
            "{%- set q = namespace(ids=[]) -%}{%- for m in messages -%}{%- set _ = q.ids.append(m.content) -%}{%- endfor -%}\
             {%- set a = q.ids.pop(0) -%}{%- set b = q.ids.pop() -%}{{ a }}|{{ b }}|{{ q.ids | length }}",
            json!([{"role": "user", "content": "x"}, {"role": "user", "content": "y"},
                   {"role": "user", "content": "z"}]),
        )
        .unwrap();
        assert_eq!(out, "x|z|1");
    }

    #[test]
    fn python_printing_and_tojson() {
        let out = render(
            "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}|{{ m.x }}|{{ m | tojson }}\n{% endfor %}{{ tools }}",
            json!([{"role": "user", "content": "Grüße", "x": [true, null, 1.0]}]),
        )
        .unwrap();
        assert_eq!(
            out,
            "<s>user:Grüße|[True, None, 1.0]|{\"role\": \"user\", \"content\": \"Grüße\", \"x\": [true, null, 1.0]}\nNone"
        );
    }

    #[test]
    fn raise_exception_is_a_refusal() {
        let err = render("{{ raise_exception('no system role') }}", json!([])).unwrap_err();
        assert!(
            matches!(err, TemplateError::Raised(ref m) if m == "no system role"),
            "{err:?}"
        );
    }

    #[test]
    fn reasoning_is_aliased_and_nulls_dropped() {
        let out = render(
            "{% for m in messages %}{{ m.keys() | list }}{{ m.thinking }}{% endfor %}",
            json!([{"role": "assistant", "content": null, "reasoning": "hmm"}]),
        )
        .unwrap();
        assert_eq!(
            out,
            "['thinking', 'role', 'reasoning', 'reasoning_content']hmm"
        );
    }

    #[test]
    fn an_assistant_turn_without_content_is_retried_with_empty_text() {
        // Devstral's shape: content read as text, else as a list of parts.
        let src = "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}{{ m['content'][0]['text'] }}{% endif %}|{% endfor %}";
        let calls = json!([{"function": {"name": "f", "arguments": "{}"}}]);
        let out = render(
            src,
            json!([{"role": "user", "content": "hi"},
                {"role": "assistant", "content": null, "tool_calls": calls}]),
        )
        .unwrap();
        assert_eq!(out, "hi||");
        // A template that skips missing content renders the message without it.
        let out = render(
            "{% for m in messages %}{{ m.content is defined }}{% endfor %}",
            json!([{"role": "assistant", "content": null, "tool_calls": calls}]),
        )
        .unwrap();
        assert_eq!(out, "False");
        // A user turn is not patched: still an error.
        assert!(render(src, json!([{"role": "user", "content": null}])).is_err());
    }

    #[test]
    fn generation_tags() {
        let src = "{%- generation -%}\n  a {% endgeneration %}\nb";
        assert_eq!(
            rewrite_generation_tags(src),
            "{%- if true -%}\n  a {% endif %}\nb"
        );
        assert_eq!(render(src, json!([])).unwrap(), "a b");
    }
}
