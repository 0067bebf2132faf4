//! Hermes / Qwen2.5 tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
//! one call per block (a JSON list of calls in one block is accepted too).

use serde_json::Value;

use super::scan::BlockParser;
use super::{arguments_object, CallCounter, ParseEvent, ToolParser};

/// The `<tool_call>` JSON parser.
#[derive(Debug)]
pub struct JsonToolsParser(BlockParser);

impl JsonToolsParser {
    pub fn new() -> Self {
        JsonToolsParser(BlockParser::new(
            "<tool_call>",
            Some("</tool_call>"),
            parse_body,
        ))
    }
}

impl Default for JsonToolsParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolParser for JsonToolsParser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        self.0.push(text_delta)
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        self.0.finish()
    }

    fn finish_cut(&mut self) -> Vec<ParseEvent> {
        self.0.finish_cut()
    }
}

fn parse_body(body: &str, calls: &mut CallCounter) -> Option<Vec<ParseEvent>> {
    json_calls(
        serde_json::from_str(body.trim()).ok()?,
        &["arguments", "parameters"],
        calls,
    )
}

/// Events for a JSON call object (or a list of them) with `name` and arguments under one of
/// `arg_keys` (an object, or a string holding one); `id` is kept if present.
pub(crate) fn json_calls(
    value: Value,
    arg_keys: &[&str],
    calls: &mut CallCounter,
) -> Option<Vec<ParseEvent>> {
    let items = match value {
        Value::Array(items) => items,
        v @ Value::Object(_) => vec![v],
        _ => return None,
    };
    let mut out = Vec::new();
    for item in items {
        let name = item.get("name")?.as_str()?;
        let args = arguments_object(arg_keys.iter().find_map(|k| item.get(*k)))?;
        let id = item.get("id").and_then(Value::as_str).map(String::from);
        out.extend(calls.whole(name, id, &args));
    }
    Some(out)
}
