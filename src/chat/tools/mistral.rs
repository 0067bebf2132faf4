//! Mistral tool calls, after `[TOOL_CALLS]` up to the end of the reply, in either shape:
//! a JSON list (`[{"name": ..., "arguments": {...}, "id": ...}]`, Mistral-Nemo), or one or
//! more `name[CALL_ID]id[ARGS]{json}` / `name[ARGS]{json}` (Small 3.2, Devstral,
//! Ministral), each after its own `[TOOL_CALLS]`.

use serde_json::Value;

use super::json_tools::json_calls;
use super::scan::BlockParser;
use super::{arguments_object, random_hex, CallCounter, ParseEvent, ToolParser};

const TOOL_CALLS: &str = "[TOOL_CALLS]";

/// The `[TOOL_CALLS]` parser.
#[derive(Debug)]
pub struct MistralParser(BlockParser);

impl MistralParser {
    pub fn new() -> Self {
        MistralParser(BlockParser::new(TOOL_CALLS, None, parse_body))
    }
}

impl Default for MistralParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolParser for MistralParser {
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

/// Mistral's templates require 9 alphanumeric characters for a call id.
fn mistral_id() -> String {
    random_hex(9)
}

fn parse_body(body: &str, calls: &mut CallCounter) -> Option<Vec<ParseEvent>> {
    let trimmed = body.trim();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let mut events = json_calls(
            serde_json::from_str(trimmed).ok()?,
            &["arguments", "parameters"],
            calls,
        )?;
        for e in &mut events {
            if let ParseEvent::ToolCallStart { id, .. } = e {
                if id.starts_with("call_") {
                    *id = mistral_id();
                }
            }
        }
        return Some(events);
    }
    let mut out = Vec::new();
    for part in body.split(TOOL_CALLS).filter(|p| !p.trim().is_empty()) {
        let (head, args) = part.split_once("[ARGS]")?;
        let (name, id) = match head.split_once("[CALL_ID]") {
            Some((name, id)) => (name, Some(id.trim().to_string())),
            None => (head, None),
        };
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        let args = arguments_object(Some(&Value::String(args.trim().to_string())))?;
        out.extend(calls.whole(name, Some(id.unwrap_or_else(mistral_id)), &args));
    }
    Some(out)
}
