//! Tool-call grammars: the model's own call markup (per [`ParserKind`]) with arguments valid
//! for each tool's parameter schema, so the matching parser in `chat::tools` always yields
//! the calls.
//!
//! - `required`: the reply is one call (or, with parallel calls, several), then EOS.
//! - a named function: exactly one call of it, then EOS.
//! - `auto`: free text; once the format's start tag appears the rest is held to valid calls,
//!   then EOS (a lazy trigger: text until the tag, then the grammar).
//!
//! The JSON-bodied markups (json_tools, deepseek, kimi_k2, mistral) embed each tool's schema
//! whole (`%json`); the XML ones (qwen3_coder, minimax_m2, glm45, deepseek_v32) carry every argument as raw
//! text the parser types by schema (`chat::tools::typing::coerce`), so each parameter gets its
//! own value rule: string parameters (and ones with no schema) are free text up to the close
//! tag, `enum`/`const` a choice of literals, anything else JSON for the parameter's schema.
//! String `pattern`/`format`/`minLength`/`maxLength` cannot be enforced on raw text: an error
//! for `strict` tools, ignored otherwise.

use serde_json::{json, Map, Value};

use super::lark::{json_rule, lit, regex_escape};
use super::{ConstrainError, Grammar};
use crate::chat::tools::typing::schema_types;
use crate::chat::tools::{deepseek, kimi_k2, ParserKind};

/// A request's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// No tool calls: no constraint from tools.
    None,
    /// Text or calls; a call that starts is completed validly.
    #[default]
    Auto,
    /// At least one call.
    Required,
    /// Exactly one call of this function.
    Function(String),
}

/// What a tool-call grammar is built from; the server fills it from the request.
#[derive(Debug, Clone, Copy)]
pub struct ToolCalls<'a> {
    /// The request's `tools`: OpenAI `{"type": "function", "function": {...}}` objects (or
    /// bare function objects), as `chat::tools::new_parser` takes them.
    pub tools: &'a [Value],
    pub choice: &'a ToolChoice,
    /// The markup the model writes (the parser the server selected).
    pub format: ParserKind,
    /// `parallel_tool_calls`: allow more than one call (not for a named function).
    pub parallel: bool,
}

/// One offered function.
struct Tool {
    name: String,
    /// The parameters schema, an object schema.
    params: Value,
    /// `function.strict`.
    strict: bool,
    /// A custom tool's Lark grammar for its one `input` argument ([`CUSTOM_GRAMMAR_KEY`]).
    grammar: Option<String>,
    /// In the XML markups: the rule the embedded grammar starts at (its raw text is the
    /// `input` parameter's value).
    raw_rule: Option<String>,
}

impl Tool {
    /// The parameters' schemas, the required names, and every name a call writes: the
    /// described ones in schema order, then required ones the schema does not describe.
    fn param_keys(&self) -> (Option<&Map<String, Value>>, Vec<&str>, Vec<&str>) {
        let props = self.params.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = self
            .params
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut keys: Vec<&str> = props
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let undescribed: Vec<&str> = required
            .iter()
            .filter(|k| !keys.contains(k))
            .copied()
            .collect();
        keys.extend(undescribed);
        (props, required, keys)
    }
}

/// Where a function object carries a custom (freeform) tool's Lark grammar: the Responses API's
/// `custom` tools are offered to the model as functions with one string argument, `input`,
/// and that argument is held to the grammar (json_tools markup). Servers strip the key before
/// rendering the tools into a prompt.
pub const CUSTOM_GRAMMAR_KEY: &str = "x-kooka-grammar";

/// The markup of the formats kooka can enforce.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Markup {
    JsonTools,
    Qwen3Coder,
    MinimaxM2,
    Glm45,
    /// DeepSeek's `<｜tool▁calls▁begin｜>` tags around JSON arguments.
    Deepseek,
    /// Kimi-K2's `<|tool_calls_section_begin|>` tags around JSON arguments.
    KimiK2,
    /// Mistral's `[TOOL_CALLS]NAME[ARGS]{..}`, or a JSON list after `[TOOL_CALLS]`.
    Mistral,
    /// DeepSeek-V3.2's DSML: `<｜DSML｜invoke name=..>` with `string="true|false"` parameters.
    DeepseekV32,
    /// LFM2's `<|tool_call_start|>[NAME(KEY=VALUE, ...)]<|tool_call_end|>`.
    Pythonic,
}

/// LFM2's tags around its list of calls.
const PYTHONIC_CALLS: (&str, &str) = ("<|tool_call_start|>", "<|tool_call_end|>");

/// DeepSeek-V3.2's block of calls (plain text, not added tokens).
const DSML_CALLS: (&str, &str) = ("<｜DSML｜function_calls>", "</｜DSML｜function_calls>");

/// Mistral's tag before its calls (a control token the grammars spell as text).
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";

/// How a parameter's raw text is constrained in the XML formats.
enum ValueRule {
    /// Any text up to `</parameter>`.
    Text,
    /// One of these texts.
    Choice(Vec<String>),
    /// A rule body: JSON valid for a schema (the rendered `%json` rule), or the start rule of
    /// a custom tool's embedded grammar.
    Json(String),
}

impl ToolCalls<'_> {
    /// The grammar for these tools and this choice (`None`: nothing to constrain).
    pub fn grammar(&self) -> Result<Option<Grammar>, ConstrainError> {
        if *self.choice == ToolChoice::None {
            return Ok(None);
        }
        let markup = match self.format {
            ParserKind::JsonTools => Some(Markup::JsonTools),
            ParserKind::Qwen3Coder => Some(Markup::Qwen3Coder),
            ParserKind::MinimaxM2 => Some(Markup::MinimaxM2),
            ParserKind::Glm45 => Some(Markup::Glm45),
            ParserKind::Deepseek => Some(Markup::Deepseek),
            ParserKind::KimiK2 => Some(Markup::KimiK2),
            ParserKind::Mistral => Some(Markup::Mistral),
            ParserKind::DeepseekV32 => Some(Markup::DeepseekV32),
            ParserKind::Pythonic => Some(Markup::Pythonic),
            ParserKind::Harmony | ParserKind::Llama3Json => None,
        };
        let mut tools = parse_tools(self.tools)?;
        let parallel = match self.choice {
            ToolChoice::Function(name) => {
                tools.retain(|t| &t.name == name);
                if tools.is_empty() {
                    return Err(ConstrainError::invalid(
                        "tool_choice",
                        format!("names function `{name}`, which is not among the tools"),
                    ));
                }
                tools.truncate(1);
                false
            }
            _ => self.parallel,
        };
        if tools.is_empty() {
            return match self.choice {
                ToolChoice::Auto => Ok(None),
                _ => Err(ConstrainError::invalid(
                    "tool_choice",
                    "`required` needs at least one tool in `tools`",
                )),
            };
        }
        let Some(markup) = markup else {
            return match self.format {
                ParserKind::Llama3Json => llama3_call(&tools, self.choice, parallel),
                _ => harmony_call(&tools, self.choice),
            };
        };
        let mut rules = String::new();
        if markup.raw_text_args() {
            // The XML markups carry `input` as raw text: the grammar as it is.
            for (i, tool) in tools.iter_mut().enumerate() {
                let Some(definition) = tool.grammar.as_deref() else {
                    continue;
                };
                let prefix = format!("g{i}_");
                match super::embed::embed(definition, &prefix, false) {
                    Ok(embedded) => {
                        rules.push_str(&embedded);
                        rules.push('\n');
                        tool.raw_rule = Some(format!("{prefix}start"));
                    }
                    Err(e) => tracing::warn!(tool = %tool.name, "{e}"),
                }
            }
        }
        let mut alternatives = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let rule = format!("call_{i}");
            let body = match custom_call(markup, tool, i) {
                Some((body, grammar)) => {
                    rules.push_str(&grammar);
                    body
                }
                // Beside a custom tool's literal call head, the others' heads are literals
                // too: a `%json` call would take `{` as its own lexeme and never reach the
                // custom name (llguidance's lexemes are greedy).
                None if markup == Markup::JsonTools
                    && tools.iter().any(|t| t.grammar.is_some()) =>
                {
                    let name = serde_json::to_string(&tool.name).unwrap_or_default();
                    format!(
                        "{} {} {}",
                        lit(&format!("{{\"name\": {name}, \"arguments\": ")),
                        json_rule(&tool.params, !tool.strict),
                        lit("}")
                    )
                }
                None if markup == Markup::Pythonic => {
                    let (body, grammar) = Markup::pythonic_call(tool, i)?;
                    rules.push_str(&grammar);
                    body
                }
                None => markup.call(tool)?,
            };
            rules.push_str(&format!("{rule}: {body}\n"));
            alternatives.push(rule);
        }
        rules.push_str(&format!("call: {}\n", alternatives.join(" | ")));
        match markup {
            Markup::JsonTools | Markup::Deepseek | Markup::KimiK2 | Markup::Pythonic => {}
            Markup::Mistral => rules.push_str(&Markup::mistral_rules(&tools, parallel)),
            Markup::Glm45 => rules.push_str("param_text[lazy]: /(?s:.*)<\\/arg_value>/\n"),
            Markup::DeepseekV32 => {
                rules.push_str("param_text[lazy]: /(?s:.*)<\\/｜DSML｜parameter>/\n")
            }
            _ => rules.push_str("param_text[lazy]: /(?s:.*)<\\/parameter>/\n"),
        }
        let rest = markup.after_open(parallel);
        let open = markup.open();
        let start = if *self.choice == ToolChoice::Auto {
            format!(
                "start: FREE_TEXT | trigger {rest}\ntrigger[lazy]: /(?s:.*){}/\nFREE_TEXT: /(?s:.*)/\n",
                regex_escape(open)
            )
        } else {
            format!("start: {} {rest}\n", lit(open))
        };
        let what = match self.choice {
            ToolChoice::Function(name) => format!("tool call of {name}"),
            ToolChoice::Required => "required tool calls".to_string(),
            _ => "tool calls (auto)".to_string(),
        };
        let grammar = Grammar::new(
            start + &rules,
            format!("{what} ({})", self.format.name()),
            "tools",
        )?;
        Ok(Some(match self.choice {
            ToolChoice::Auto => grammar.with_free_text_first(),
            _ => grammar,
        }))
    }
}

/// gpt-oss's harmony: a forced call is one message to the function on the commentary
/// channel, `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>` and the
/// JSON arguments (the reply then ends, as `<|call|>` would end it), from the reply's first
/// token: no analysis message first. An unbounded analysis can use up `max_tokens` (a small
/// model's never ends), and a forced call skips reasoning on the other reasoning templates
/// too (MiniMax-M2's think block is closed first; Anthropic offers no forced tool use with
/// thinking). Harmony's markup is special tokens, which free text cannot contain, so `auto`
/// (text until a call's start) cannot be written as a grammar: it stays unconstrained.
fn harmony_call(tools: &[Tool], choice: &ToolChoice) -> Result<Option<Grammar>, ConstrainError> {
    if *choice == ToolChoice::Auto {
        return Ok(None);
    }
    let mut rules = String::new();
    let mut alternatives = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        // The parser reads the recipient up to whitespace or the next special token.
        check_name(&tool.name, '<', &tool.name, "its name")?;
        if tool.name.contains(char::is_whitespace) {
            return Err(ConstrainError::unsupported(
                "tools",
                format!(
                    "tool `{}`: its name cannot be a harmony recipient (it contains whitespace)",
                    tool.name
                ),
            ));
        }
        let args = match tool.grammar.as_deref() {
            // A custom tool's `input` held to its grammar, as in json_tools markup.
            Some(definition) => match super::embed::embed(definition, &format!("g{i}_"), true) {
                Ok(embedded) => {
                    rules.push_str(&embedded);
                    format!("{} g{i}_start {}", lit("{\"input\": \""), lit("\"}"))
                }
                Err(e) => {
                    tracing::warn!(tool = %tool.name, "{e}");
                    json_rule(&tool.params, !tool.strict)
                }
            },
            None => json_rule(&tool.params, !tool.strict),
        };
        rules.push_str(&format!(
            "call_{i}: {} <|constrain|> \"json\" <|message|> {args}\n",
            lit(&format!("{} ", tool.name))
        ));
        alternatives.push(format!("call_{i}"));
    }
    let start = format!(
        "start: <|channel|> \"commentary to=functions.\" ({})\n",
        alternatives.join(" | "),
    );
    let what = match choice {
        ToolChoice::Function(name) => format!("tool call of {name} (harmony)"),
        _ => "required tool calls (harmony)".to_string(),
    };
    Grammar::new(start + &rules, what, "tools").map(Some)
}

/// Llama 3.x: a forced call is the whole reply, `{"name": NAME, "parameters": {...}}` (with
/// parallel calls, several joined by `; `, as the parser splits them). Under `auto` the reply
/// is a call only if it starts as one, which a lazy trigger cannot express: unconstrained.
fn llama3_call(
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
) -> Result<Option<Grammar>, ConstrainError> {
    if *choice == ToolChoice::Auto {
        return Ok(None);
    }
    let mut rules = String::new();
    let mut alternatives = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let schema = json_call_schema(tool, "parameters");
        rules.push_str(&format!("call_{i}: {}\n", json_rule(&schema, !tool.strict)));
        alternatives.push(format!("call_{i}"));
    }
    rules.push_str(&format!("call: {}\n", alternatives.join(" | ")));
    let start = match parallel {
        true => "start: call (\"; \" call)*\n",
        false => "start: call\n",
    };
    let what = match choice {
        ToolChoice::Function(name) => format!("tool call of {name} (llama3_json)"),
        _ => "required tool calls (llama3_json)".to_string(),
    };
    Grammar::new(start.to_string() + &rules, what, "tools").map(Some)
}

/// A custom tool's call in json_tools markup with its `input` held to the tool's grammar:
/// the call's rule body and the grammar's rules. `None` (the call is constrained as any other
/// function's) for other markups or a grammar that cannot be embedded (logged).
fn custom_call(markup: Markup, tool: &Tool, i: usize) -> Option<(String, String)> {
    let definition = tool.grammar.as_deref()?;
    if !markup.json_bodied() {
        // The XML markups hold the raw text to the grammar (`Tool::raw_rule`).
        return None;
    }
    let prefix = format!("g{i}_");
    match super::embed::embed(definition, &prefix, true) {
        Ok(rules) if markup == Markup::JsonTools => {
            let name = serde_json::to_string(&tool.name).ok()?;
            let open = format!("{{\"name\": {name}, \"arguments\": {{\"input\": \"");
            let body = format!("{} {prefix}start {}", lit(&open), lit("\"}}"));
            Some((body, rules))
        }
        Ok(rules) => {
            let args = format!("{} {prefix}start {}", lit("{\"input\": \""), lit("\"}"));
            Some((markup.tagged_call(tool, &args).ok()?, rules))
        }
        Err(e) => {
            tracing::warn!(tool = %tool.name, "{e}");
            None
        }
    }
}

fn parse_tools(tools: &[Value]) -> Result<Vec<Tool>, ConstrainError> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = t.get("function").unwrap_or(t);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    ConstrainError::invalid("tools", format!("tools[{i}] has no function name"))
                })?;
            let mut params = match f.get("parameters") {
                None | Some(Value::Null) | Some(Value::Bool(true)) => json!({"type": "object"}),
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(ConstrainError::invalid(
                        "tools",
                        format!("tool `{name}`: parameters must be a JSON schema object"),
                    ))
                }
            };
            match params.get("type") {
                None => {
                    params["type"] = json!("object");
                }
                Some(t) if t == "object" => {}
                Some(t) => {
                    return Err(ConstrainError::invalid(
                        "tools",
                        format!("tool `{name}`: parameters must have type object, not {t}"),
                    ))
                }
            }
            Ok(Tool {
                name: name.to_string(),
                params,
                strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
                grammar: f
                    .get(CUSTOM_GRAMMAR_KEY)
                    .and_then(Value::as_str)
                    .map(str::to_string),
                raw_rule: None,
            })
        })
        .collect()
}

/// Names in the XML formats end at a delimiter and are trimmed by the parser.
fn check_name(name: &str, forbidden: char, tool: &str, what: &str) -> Result<(), ConstrainError> {
    if name.contains(forbidden) || name.contains('\n') || name.trim() != name || name.is_empty() {
        return Err(ConstrainError::unsupported(
            "tools",
            format!("tool `{tool}`: {what} cannot be written in this tool-call markup (it contains `{forbidden}`, a newline or edge whitespace)"),
        ));
    }
    Ok(())
}

const DEFS: [&str; 2] = ["$defs", "definitions"];

/// An optional newline, as a Lark rule body fragment (GLM's tags).
const OPTIONAL_NEWLINE: &str = r#""\n"?"#;

/// 2^53 - 1: the largest integer a double (JavaScript's numbers) holds exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// `{"name": NAME, ARGS_KEY: PARAMS}` as one schema; the parameters' `$defs` move to its
/// root so `#/$defs/...` references still resolve.
fn json_call_schema(tool: &Tool, args_key: &str) -> Value {
    let mut args = tool.params.clone();
    let mut root = Map::new();
    if let Some(obj) = args.as_object_mut() {
        for k in DEFS {
            if let Some(d) = obj.remove(k) {
                root.insert(k.into(), d);
            }
        }
    }
    root.insert("type".into(), json!("object"));
    root.insert(
        "properties".into(),
        json!({"name": {"const": tool.name}, args_key: args}),
    );
    root.insert("required".into(), json!(["name", args_key]));
    root.insert("additionalProperties".into(), json!(false));
    Value::Object(root)
}

/// A property schema with its tool's `$defs` copied in, so it compiles on its own.
fn with_defs(prop: &Value, params: &Value) -> Value {
    let mut prop = prop.clone();
    if let Some(obj) = prop.as_object_mut() {
        for k in DEFS {
            if let (Some(d), false) = (params.get(k), obj.contains_key(k)) {
                obj.insert(k.into(), d.clone());
            }
        }
    }
    prop
}

// The per-markup rule writers (`impl Markup`).
#[path = "tool_markups.rs"]
mod markups;

#[cfg(test)]
#[path = "tools_custom_tests.rs"]
mod custom_tests;
#[cfg(test)]
#[path = "tools_format_tests.rs"]
mod format_tests;
#[cfg(test)]
#[path = "tools_formats_tests.rs"]
mod formats_tests;
#[cfg(test)]
#[path = "tools_harmony_tests.rs"]
mod harmony_tests;
#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
