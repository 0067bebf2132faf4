//! Tool-call parsers: turn the text a model streams into plain content plus OpenAI-style tool
//! calls, one parser per wire format (see `docs/reference-behaviour.md` §3).
//!
//! Every parser is a [`ToolParser`]: feed it text deltas with [`ToolParser::push`] and call
//! [`ToolParser::finish`] at the end of generation; both return [`ParseEvent`]s. Content is
//! only emitted once it is certainly not markup (a partial start tag is held back until it
//! resolves), so no tool-call markup leaks into `content`. For one call, the
//! [`ParseEvent::ToolCallArgsDelta`] deltas concatenate to its JSON arguments string.
//!
//! The XML-ish formats ([`qwen3_coder`], [`minimax_m2`], [`glm45`], [`deepseek_v32`])
//! announce a call as soon as its name is
//! known and stream its arguments one parameter at a time; the JSON-bodied formats announce a
//! call once its body is complete. Malformed markup (a body that does not parse) is given back
//! as content, never dropped and never a panic; only a block that the token limit or a stop
//! string cut off ([`ToolParser::finish_cut`]) is dropped. Whitespace between and after tool calls is
//! dropped.
//!
//! [`deepseek`] and [`kimi_k2`] read JSON arguments between special-token tags.
//!
//! [`harmony`] reads gpt-oss's channels: reasoning, content and calls in one parser.
//!
//! [`select`] picks the parser for a model; [`fixes`] holds MiniMax-M2's argument repairs;
//! [`reasoning`] splits `<think>` text into `reasoning_content`.

pub mod deepseek;
pub mod deepseek_v32;
pub mod fixes;
pub mod glm45;
pub mod harmony;
pub mod json_tools;
pub mod kimi_k2;
pub mod llama3_json;
pub mod minimax_m2;
pub mod mistral;
pub mod pythonic;
pub mod qwen3_coder;
pub mod reasoning;
mod scan;
pub mod select;
pub mod typing;
mod xml_calls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

pub use reasoning::{ReasoningEvent, ReasoningSplitter};
pub use select::{select_parser, ParserKind};

/// One step of a parsed model reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseEvent {
    /// Plain text for `content` (never markup).
    Content(String),
    /// A tool call begins; `index` counts calls from 0 within the reply.
    ToolCallStart {
        /// Position of the call in the reply (the OpenAI stream `index`).
        index: usize,
        /// The call id (`call_...`, or the model's own where the format carries one).
        id: String,
        /// The function name.
        name: String,
    },
    /// More of the call's JSON arguments string.
    ToolCallArgsDelta {
        /// Which call.
        index: usize,
        /// The next piece of the arguments string.
        delta: String,
    },
    /// The call is complete.
    ToolCallEnd {
        /// Which call.
        index: usize,
    },
}

/// A streaming tool-call parser for one reply.
pub trait ToolParser: Send {
    /// Consumes the next piece of generated text.
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent>;
    /// Ends the reply: flushes held-back text and any call the format closes at EOS.
    fn finish(&mut self) -> Vec<ParseEvent>;
    /// Ends a reply that the token limit or a stop string cut short: as [`Self::finish`],
    /// except that a call the model did not get to finish (an unterminated block that does
    /// not parse, a held-back partial start tag) is dropped rather than given back as
    /// content. A call already announced is closed as at the end.
    fn finish_cut(&mut self) -> Vec<ParseEvent> {
        self.finish()
    }
}

/// A finished tool call, as in an OpenAI response message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call id.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The JSON arguments string.
    pub arguments: String,
}

/// A whole reply: `content` plus its tool calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedReply {
    /// All [`ParseEvent::Content`] text.
    pub content: String,
    /// The calls in order.
    pub tool_calls: Vec<ToolCall>,
}

impl ParsedReply {
    /// Folds events into a reply (the non-streaming response).
    pub fn extend(&mut self, events: impl IntoIterator<Item = ParseEvent>) {
        for event in events {
            match event {
                ParseEvent::Content(text) => self.content.push_str(&text),
                ParseEvent::ToolCallStart { index, id, name } => {
                    debug_assert_eq!(index, self.tool_calls.len());
                    self.tool_calls.push(ToolCall {
                        id,
                        name,
                        arguments: String::new(),
                    });
                }
                ParseEvent::ToolCallArgsDelta { index, delta } => {
                    if let Some(call) = self.tool_calls.get_mut(index) {
                        call.arguments.push_str(&delta);
                    }
                }
                ParseEvent::ToolCallEnd { .. } => {}
            }
        }
    }

    /// Runs `parser` over a complete reply.
    pub fn parse(parser: &mut dyn ToolParser, text: &str) -> ParsedReply {
        let mut reply = ParsedReply::default();
        reply.extend(parser.push(text));
        reply.extend(parser.finish());
        reply
    }
}

/// The tools offered in the request, by function name, with their parameter JSON schemas.
#[derive(Debug, Clone, Default)]
pub struct ToolSchemas {
    /// `function.name` -> `function.parameters`.
    params: HashMap<String, Value>,
}

impl ToolSchemas {
    /// From the request's `tools` (OpenAI `{"type":"function","function":{...}}` objects, or
    /// bare function objects).
    pub fn new(tools: &[Value]) -> Self {
        let params = tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function").unwrap_or(t);
                let name = f.get("name")?.as_str()?.to_string();
                Some((name, f.get("parameters").cloned().unwrap_or(Value::Null)))
            })
            .collect();
        ToolSchemas { params }
    }

    /// The parameters schema of `function`, if it was offered.
    pub fn parameters(&self, function: &str) -> Option<&Value> {
        self.params.get(function)
    }

    /// The schema of `function`'s argument `key` (`properties.key`, looking into
    /// anyOf/oneOf/allOf).
    pub fn property(&self, function: &str, key: &str) -> Option<&Value> {
        typing::property_schema(self.parameters(function)?, key)
    }
}

/// Builds the parser of `kind` for a request offering `tools`.
pub fn new_parser(kind: ParserKind, tools: &[Value]) -> Box<dyn ToolParser> {
    let schemas = ToolSchemas::new(tools);
    match kind {
        ParserKind::JsonTools => Box::new(json_tools::JsonToolsParser::new()),
        ParserKind::Qwen3Coder => Box::new(qwen3_coder::Qwen3CoderParser::new(schemas)),
        ParserKind::MinimaxM2 => Box::new(minimax_m2::MinimaxM2Parser::new(schemas)),
        ParserKind::Glm45 => Box::new(glm45::Glm45Parser::new(schemas)),
        ParserKind::Mistral => Box::new(mistral::MistralParser::new()),
        ParserKind::Llama3Json => Box::new(llama3_json::Llama3JsonParser::new()),
        ParserKind::Pythonic => Box::new(pythonic::PythonicParser::new()),
        ParserKind::Deepseek => Box::new(deepseek::parser()),
        ParserKind::DeepseekV32 => Box::new(deepseek_v32::DeepseekV32Parser::new(schemas)),
        ParserKind::KimiK2 => Box::new(kimi_k2::parser()),
        ParserKind::Harmony => Box::new(harmony::HarmonyParser::new(Some(
            harmony::HarmonyParser::tool_names(tools),
        ))),
    }
}

/// A fresh OpenAI-style call id, `call_` + 24 hex digits (unique within the process).
pub fn new_call_id() -> String {
    format!("call_{}", random_hex(24))
}

/// Random-looking hex from the std hasher's per-process keys and a counter (no rand crate).
fn random_hex(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut out = String::new();
    while out.len() < len {
        let mut h = state.build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(len);
    out
}

/// Numbers calls and turns a finished call into its three events.
#[derive(Debug, Default)]
pub(crate) struct CallCounter {
    /// How many calls were started.
    pub next: usize,
}

impl CallCounter {
    /// Starts a call: `ToolCallStart` with a fresh id unless `id` is given.
    pub fn start(&mut self, name: &str, id: Option<String>) -> (usize, ParseEvent) {
        let index = self.next;
        self.next += 1;
        let id = id.unwrap_or_else(new_call_id);
        (
            index,
            ParseEvent::ToolCallStart {
                index,
                id,
                name: name.to_string(),
            },
        )
    }

    /// A whole call at once: start, one arguments delta, end.
    pub fn whole(&mut self, name: &str, id: Option<String>, arguments: &Value) -> Vec<ParseEvent> {
        let (index, start) = self.start(name, id);
        let delta = serde_json::to_string(arguments).unwrap_or_else(|_| "{}".into());
        vec![
            start,
            ParseEvent::ToolCallArgsDelta { index, delta },
            ParseEvent::ToolCallEnd { index },
        ]
    }
}

/// Parses a JSON `arguments` value that may itself be a JSON-encoded string.
pub(crate) fn arguments_object(value: Option<&Value>) -> Option<Value> {
    match value {
        None | Some(Value::Null) => Some(Value::Object(Default::default())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => None,
        },
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => None,
    }
}
