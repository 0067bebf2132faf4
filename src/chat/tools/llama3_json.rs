//! Llama 3.x JSON tool calls: the whole reply is `{"name": ..., "parameters": {...}}`
//! (several separated by `;` are accepted), optionally after `<|python_tag|>`. A reply that
//! starts with anything else is plain content and streams as such; one that starts like a
//! call is held until the end and given back as content if it does not parse.

use serde_json::Value;

use super::json_tools::json_calls;
use super::scan::partial_suffix;
use super::{CallCounter, ParseEvent, ToolParser};

const PYTHON_TAG: &str = "<|python_tag|>";

/// What the reply turned out to be so far.
#[derive(Debug, PartialEq)]
enum Mode {
    /// Only whitespace or a prefix of `<|python_tag|>` so far.
    Undecided,
    /// Plain text: stream it.
    Content,
    /// Looks like a call: hold it to the end.
    Call,
}

/// The Llama 3 JSON parser.
#[derive(Debug)]
pub struct Llama3JsonParser {
    mode: Mode,
    buf: String,
}

impl Llama3JsonParser {
    pub fn new() -> Self {
        Llama3JsonParser {
            mode: Mode::Undecided,
            buf: String::new(),
        }
    }
}

impl Default for Llama3JsonParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolParser for Llama3JsonParser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        self.buf.push_str(text_delta);
        if self.mode == Mode::Undecided {
            let head = self.buf.trim_start();
            if head.starts_with('{') || head.starts_with(PYTHON_TAG) {
                self.mode = Mode::Call;
            } else if !(head.is_empty() || partial_suffix(head, PYTHON_TAG) == head.len()) {
                self.mode = Mode::Content;
            }
        }
        match self.mode {
            Mode::Content => vec![ParseEvent::Content(std::mem::take(&mut self.buf))],
            _ => vec![],
        }
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        let text = std::mem::take(&mut self.buf);
        if self.mode == Mode::Call {
            if let Some(events) = parse_calls(&text) {
                return events;
            }
        }
        if text.is_empty() {
            vec![]
        } else {
            vec![ParseEvent::Content(text)]
        }
    }
}

fn parse_calls(text: &str) -> Option<Vec<ParseEvent>> {
    let body = text.trim_start();
    let mut rest = body.strip_prefix(PYTHON_TAG).unwrap_or(body).trim();
    let mut calls = CallCounter::default();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        out.extend(json_calls(value, &["parameters", "arguments"], &mut calls)?);
        rest = rest[values.byte_offset()..].trim_start();
        // Calls may be separated by `;`.
        if let Some(after) = rest.strip_prefix(';') {
            rest = after.trim_start();
        } else if !rest.is_empty() {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}
