//! [`Grammar`]: the plain-data description of a constraint (llguidance Lark text), and the
//! `response_format` constraints ([`ResponseFormat`]).

use serde_json::Value;

use super::lark::{json_rule, lit, validate};
use super::ConstrainError;

/// What a reply must look like: plain data (it crosses threads inside
/// [`SequenceRequest`](crate::engine::SequenceRequest)), validated when built; the engine
/// compiles it against the tokenizer ([`super::Constrainer::matcher`]).
///
/// Serializable, so a multi-rank run can send it to the rank that samples; a deserialized
/// grammar is checked again when the engine compiles it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grammar {
    /// llguidance's Lark dialect (JSON schemas inline as `%json`).
    lark: String,
    /// What it enforces, for logs ("json_schema", "tool calls (json_tools, required)").
    what: String,
    /// The reply may be free text until markup starts (`tool_choice: auto`): while it is, the
    /// token limit may cut it anywhere, so it is not ended early to stay valid.
    #[serde(default)]
    free_text_first: bool,
}

impl Grammar {
    /// Validates `lark` (compiled once without a tokenizer) and wraps it; a failure is
    /// blamed on `param` as unsupported.
    pub(crate) fn new(
        lark: String,
        what: impl Into<String>,
        param: &'static str,
    ) -> Result<Self, ConstrainError> {
        validate(&lark).map_err(|m| ConstrainError::unsupported(param, m))?;
        Ok(Grammar {
            lark,
            what: what.into(),
            free_text_first: false,
        })
    }

    /// This grammar with free text first (see `free_text_first`).
    pub(crate) fn with_free_text_first(self) -> Self {
        Grammar {
            free_text_first: true,
            ..self
        }
    }

    /// Whether the reply may be free text until markup starts.
    pub fn free_text_first(&self) -> bool {
        self.free_text_first
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object() -> Self {
        Grammar {
            lark: format!(
                "start: {}\n",
                json_rule(&serde_json::json!({"type": "object"}), false)
            ),
            what: "json_object".into(),
            free_text_first: false,
        }
    }

    /// A JSON value valid for `schema` (`response_format: {"type": "json_schema", ...}`).
    /// `strict`: keywords the engine cannot enforce are an error naming them (else ignored).
    pub fn json_schema(schema: &Value, strict: bool) -> Result<Self, ConstrainError> {
        let any = serde_json::json!({});
        let schema = if schema.is_null() { &any } else { schema };
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(ConstrainError::invalid(
                "response_format",
                "json_schema.schema must be a JSON schema object",
            ));
        }
        Grammar::new(
            format!("start: {}\n", json_rule(schema, !strict)),
            if strict {
                "json_schema (strict)"
            } else {
                "json_schema"
            },
            "response_format",
        )
    }

    /// This grammar after the literal `text`: the reply must begin with `text` (e.g. the
    /// close of a reasoning block that the prompt opened) and then follow this grammar.
    /// Failures are blamed on `param` (the request field the grammar came from).
    pub fn after_literal(self, text: &str, param: &'static str) -> Result<Self, ConstrainError> {
        let literal = serde_json::to_string(text).unwrap_or_default();
        let what = format!("{} after {literal}", self.what);
        self.after(&literal, "", what, param)
    }

    /// This grammar as the body of a gpt-oss harmony `final` message: the reply is
    /// `<|channel|>final<|message|>` and this grammar from its first token (the prompt ended
    /// with `<|start|>assistant`), with no analysis message first, as for a forced call (see
    /// `tools::harmony_call`). Failures are blamed on `param`.
    pub fn harmony_final(self, param: &'static str) -> Result<Self, ConstrainError> {
        let what = format!("{} in harmony's final channel", self.what);
        self.after(r#"<|channel|> "final" <|message|>"#, "", what, param)
    }

    /// This grammar after `prefix` (a Lark rule body, its own rules in `rules`).
    fn after(
        self,
        prefix: &str,
        rules: &str,
        what: String,
        param: &'static str,
    ) -> Result<Self, ConstrainError> {
        let body: Vec<String> = self
            .lark
            .lines()
            .map(|l| match l.strip_prefix("start:") {
                Some(rest) => format!("after_literal:{rest}"),
                None => l.to_string(),
            })
            .collect();
        Grammar::new(
            format!(
                "start: {prefix} after_literal\n{rules}{}\n",
                body.join("\n")
            ),
            what,
            param,
        )
    }

    /// This grammar (a `response_format`'s) or `tools`' calls: the reply is either this
    /// grammar's text or free text ending in calls, as `tools` (an `auto` tool grammar,
    /// `start: FREE_TEXT | trigger ...`) allows. `None` when either grammar is not of that
    /// form (a format of several rules, whose names could clash; a forced or unconstrained
    /// tool choice).
    pub fn or_tool_calls(&self, tools: &Grammar) -> Option<Grammar> {
        let mut own = self.lark.lines().filter(|l| !l.trim().is_empty());
        let body = own.next()?.strip_prefix("start:")?.to_string();
        if own.next().is_some() {
            return None;
        }
        let mut lines = tools.lark.lines();
        let rest = lines.next()?.strip_prefix("start: FREE_TEXT | ")?;
        // Text before a call does not start with `{`, so that a JSON answer is known as one
        // from its first byte (llguidance cannot end a JSON object that free text could
        // still extend into a call).
        let others: Vec<String> = lines
            .filter(|l| !l.starts_with("FREE_TEXT:"))
            .map(|l| match l.strip_prefix("trigger[lazy]: /(?s:.*)") {
                Some(open) => format!("trigger[lazy]: /(?s:([^{{].*)?){open}"),
                None => l.to_string(),
            })
            .collect();
        Grammar::new(
            format!(
                "start: format_answer | {rest}\nformat_answer:{body}\n{}\n",
                others.join("\n")
            ),
            format!("{} or {}", self.what, tools.what),
            "response_format",
        )
        .ok()
    }

    /// The llguidance grammar text.
    pub fn lark(&self) -> &str {
        &self.lark
    }

    /// What the grammar enforces, for logs.
    pub fn describe(&self) -> &str {
        &self.what
    }
}

/// A request's `response_format`, parsed by the server from the wire shape
/// (`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Free text: no constraint.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// A value valid for `schema`.
    JsonSchema {
        /// The JSON schema (`json_schema.schema`; absent means `{}`, any JSON value).
        schema: Value,
        /// `json_schema.strict`: unsupported keywords are an error instead of ignored.
        strict: bool,
    },
    /// Text matching a regular expression (vLLM's `guided_regex`).
    Regex {
        regex: String,
        /// The request field it came from (errors name it).
        field: &'static str,
    },
    /// Exactly one of these texts (vLLM's `guided_choice`).
    Choice {
        choices: Vec<String>,
        field: &'static str,
    },
    /// Text in an llguidance Lark grammar with a `start` rule, or a GBNF one with `root`
    /// (vLLM's `guided_grammar`).
    Lark {
        grammar: String,
        field: &'static str,
    },
}

impl ResponseFormat {
    /// The grammar this format asks for (`None` for text).
    pub fn grammar(&self) -> Result<Option<Grammar>, ConstrainError> {
        Ok(match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => Some(Grammar::json_object()),
            ResponseFormat::JsonSchema { schema, strict } => {
                Some(Grammar::json_schema(schema, *strict)?)
            }
            ResponseFormat::Regex { regex, field } => Some(Grammar::new(
                format!("start: /{}/\n", lark_regex(regex)),
                "regex",
                field,
            )?),
            ResponseFormat::Choice { choices, field } => {
                let texts: Vec<String> = choices.iter().map(|c| lit(c)).collect();
                Some(Grammar::new(
                    format!("start: {}\n", texts.join(" | ")),
                    "choice",
                    field,
                )?)
            }
            // GBNF (`root ::= ...`, llama.cpp's and xgrammar's format) is read as Lark.
            ResponseFormat::Lark { grammar, field } if grammar.contains("::=") => {
                let lark = super::gbnf::to_lark(grammar)
                    .map_err(|e| ConstrainError::invalid(field, e))?;
                Some(Grammar::new(lark, "grammar (GBNF)", field)?)
            }
            ResponseFormat::Lark { grammar, field } => Some(
                Grammar::new(format!("{grammar}\n"), "grammar", field).map_err(|e| {
                    ConstrainError::invalid(
                        field,
                        format!("{e} (expected: a Lark grammar with a `start` rule as llguidance reads it, or GBNF with a `root` rule)"),
                    )
                })?,
            ),
        })
    }
}

/// A regular expression as the body of a Lark `/.../` token: `/` escaped, newlines as `\n`.
fn lark_regex(regex: &str) -> String {
    let mut out = String::new();
    let mut chars = regex.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn regex_choice_and_lark_formats() {
        let g = ResponseFormat::Regex {
            regex: "[0-9]{3}/x".into(),
            field: "guided_regex",
        };
        assert_eq!(
            g.grammar().unwrap().unwrap().lark(),
            "start: /[0-9]{3}\\/x/\n"
        );
        let err = ResponseFormat::Regex {
            regex: "(".into(),
            field: "guided_regex",
        }
        .grammar()
        .unwrap_err();
        assert_eq!(err.param(), Some("guided_regex"));
        let g = ResponseFormat::Choice {
            choices: vec!["yes".into(), "no \"way\"".into()],
            field: "guided_choice",
        };
        assert!(g.grammar().unwrap().is_some());
        let gbnf = ResponseFormat::Lark {
            grammar: "root ::= \"a\" [0-9]+".into(),
            field: "guided_grammar",
        };
        assert!(gbnf.grammar().unwrap().unwrap().lark().contains("g_root"));
        let err = ResponseFormat::Lark {
            grammar: "start: (".into(),
            field: "guided_grammar",
        }
        .grammar()
        .unwrap_err();
        assert_eq!(err.param(), Some("guided_grammar"));
    }

    #[test]
    fn unsupported_schema_names_the_feature_when_strict() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string", "format": "kooka-id"}}});
        let err = Grammar::json_schema(&schema, true).unwrap_err();
        assert_eq!(err.param(), Some("response_format"));
        assert!(
            matches!(&err, ConstrainError::Unsupported { message, .. } if message.contains("kooka-id")),
            "{err}"
        );
        // Not strict: the unknown format is ignored.
        assert!(Grammar::json_schema(&schema, false).is_ok());
        let err = Grammar::json_schema(&json!({"not": {"type": "string"}}), true).unwrap_err();
        assert!(err.to_string().contains("not"), "{err}");
    }

    #[test]
    fn schema_must_be_an_object() {
        let err = Grammar::json_schema(&json!("object"), true).unwrap_err();
        assert!(matches!(
            err,
            ConstrainError::Invalid {
                param: "response_format",
                ..
            }
        ));
        assert_eq!(ResponseFormat::Text.grammar().unwrap(), None);
        assert!(ResponseFormat::JsonObject.grammar().unwrap().is_some());
    }

    #[test]
    fn unsatisfiable_bounds_are_errors() {
        let schema = json!({"type": "integer", "minimum": 5, "maximum": 1});
        assert!(Grammar::json_schema(&schema, true).is_err());
    }
}
