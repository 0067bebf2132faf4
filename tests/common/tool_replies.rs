//! Tool-call parser helpers shared by `tool_parsers.rs` and `tool_parser_selection.rs`: two
//! tool definitions, a parse run (at once or char by char) summarised as JSON with the event
//! stream's invariants checked, and expected-reply builders.

use kooka::chat::tools::{new_parser, ParseEvent, ParsedReply, ParserKind};
use serde_json::{json, Value};

pub fn tools() -> Vec<Value> {
    vec![
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"}},
            "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "write_file", "parameters": {
            "type": "object",
            "additionalProperties": false,
            "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}, "mode": {"type": "object"},
                           "tags": {"type": "array"}, "ratio": {"type": "number"}}}}}),
    ]
}

/// The reply as `{"content", "tool_calls": [{"name", "arguments": <parsed>}]}`, checking the
/// event stream's invariants on the way.
pub fn summarise(events: Vec<ParseEvent>) -> Value {
    let mut open = None;
    for e in &events {
        match e {
            ParseEvent::ToolCallStart { index, id, .. } => {
                assert!(open.is_none(), "call {index} started inside another");
                assert!(!id.is_empty());
                open = Some(*index);
            }
            ParseEvent::ToolCallArgsDelta { index, .. } => {
                assert_eq!(open, Some(*index), "delta outside its call")
            }
            ParseEvent::ToolCallEnd { index } => {
                assert_eq!(open.take(), Some(*index));
            }
            ParseEvent::Content(text) => assert!(!text.is_empty(), "empty content event"),
        }
    }
    assert!(open.is_none(), "unterminated call");
    let mut reply = ParsedReply::default();
    reply.extend(events);
    let calls: Vec<Value> = reply
        .tool_calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.arguments)
                .unwrap_or_else(|e| panic!("arguments {:?} are not JSON: {e}", c.arguments));
            json!({"name": c.name, "arguments": args})
        })
        .collect();
    json!({"content": reply.content, "tool_calls": calls})
}

pub fn run(kind: ParserKind, text: &str, per_char: bool) -> Value {
    let mut parser = new_parser(kind, &tools());
    let mut events = Vec::new();
    if per_char {
        for c in text.chars() {
            events.extend(parser.push(&c.to_string()));
        }
    } else {
        events.extend(parser.push(text));
    }
    events.extend(parser.finish());
    summarise(events)
}

/// Parses `text` at once and char by char; both must equal `want`.
#[track_caller]
pub fn check(kind: ParserKind, text: &str, want: Value) {
    assert_eq!(run(kind, text, false), want, "{kind:?} at once: {text:?}");
    assert_eq!(
        run(kind, text, true),
        want,
        "{kind:?} char by char: {text:?}"
    );
}

pub fn call(name: &str, arguments: Value) -> Value {
    json!({"name": name, "arguments": arguments})
}

pub fn reply(content: &str, calls: Vec<Value>) -> Value {
    json!({"content": content, "tool_calls": calls})
}
