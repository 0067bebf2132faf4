//! Turns the text a model streams into the parts of an assistant reply, independent of the
//! wire format: reasoning (`<think>` text, for `reasoning_content` / Anthropic `thinking`),
//! plain content, and tool calls (start, argument deltas, end). The OpenAI and Anthropic
//! handlers both read a [`ReplyParser`]'s [`ReplyEvent`]s and only differ in how they write
//! them out.

use crate::chat::tools::{ParseEvent, ReasoningEvent, ReasoningSplitter, ToolParser};

/// One piece of a reply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyEvent {
    Reasoning(String),
    Content(String),
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolArgs {
        index: usize,
        delta: String,
    },
    ToolEnd {
        index: usize,
    },
}

/// Reasoning splitter, then tool parser, over one reply.
pub struct ReplyParser {
    reasoning: Option<ReasoningSplitter>,
    tools: Option<Box<dyn ToolParser>>,
    calls: usize,
}

impl ReplyParser {
    /// `reasoning`: split think blocks out first; `tools`: parse tool calls from the rest.
    pub fn new(reasoning: Option<ReasoningSplitter>, tools: Option<Box<dyn ToolParser>>) -> Self {
        ReplyParser {
            reasoning,
            tools,
            calls: 0,
        }
    }

    /// How many tool calls the reply has started so far.
    pub fn tool_calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<ReplyEvent> {
        let pieces = match &mut self.reasoning {
            Some(r) => r.push(text),
            None => vec![ReasoningEvent::Content(text.to_string())],
        };
        self.route(pieces, false)
    }

    /// Ends the reply: flushes held-back text and closes what the format closes at EOS.
    pub fn finish(&mut self) -> Vec<ReplyEvent> {
        let pieces = match &mut self.reasoning {
            Some(r) => r.finish(),
            None => Vec::new(),
        };
        self.route(pieces, true)
    }

    fn route(&mut self, pieces: Vec<ReasoningEvent>, end: bool) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                ReasoningEvent::Reasoning(t) if !t.is_empty() => out.push(ReplyEvent::Reasoning(t)),
                ReasoningEvent::Reasoning(_) => {}
                ReasoningEvent::Content(t) => match &mut self.tools {
                    Some(p) => {
                        let events = p.push(&t);
                        self.convert(events, &mut out);
                    }
                    None if !t.is_empty() => out.push(ReplyEvent::Content(t)),
                    None => {}
                },
            }
        }
        if end {
            if let Some(p) = &mut self.tools {
                let events = p.finish();
                self.convert(events, &mut out);
            }
        }
        out
    }

    fn convert(&mut self, events: Vec<ParseEvent>, out: &mut Vec<ReplyEvent>) {
        for e in events {
            out.push(match e {
                ParseEvent::Content(t) if t.is_empty() => continue,
                ParseEvent::Content(t) => ReplyEvent::Content(t),
                ParseEvent::ToolCallStart { index, id, name } => {
                    self.calls += 1;
                    ReplyEvent::ToolStart { index, id, name }
                }
                ParseEvent::ToolCallArgsDelta { index, delta } => {
                    ReplyEvent::ToolArgs { index, delta }
                }
                ParseEvent::ToolCallEnd { index } => ReplyEvent::ToolEnd { index },
            });
        }
    }
}

/// A whole reply, for non-streamed responses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reply {
    pub reasoning: String,
    pub content: String,
    /// `(id, name, arguments JSON string)` in call order.
    pub tool_calls: Vec<(String, String, String)>,
}

impl Reply {
    pub fn extend(&mut self, events: impl IntoIterator<Item = ReplyEvent>) {
        for e in events {
            match e {
                ReplyEvent::Reasoning(t) => self.reasoning.push_str(&t),
                ReplyEvent::Content(t) => self.content.push_str(&t),
                ReplyEvent::ToolStart { id, name, .. } => {
                    self.tool_calls.push((id, name, String::new()))
                }
                ReplyEvent::ToolArgs { index, delta } => {
                    if let Some(call) = self.tool_calls.get_mut(index) {
                        call.2.push_str(&delta);
                    }
                }
                ReplyEvent::ToolEnd { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::tools::{new_parser, ParserKind};

    #[test]
    fn reasoning_then_a_tool_call_at_every_split() {
        let text = "<think>need a file</think>Sure.<tool_call>\n{\"name\": \"read\", \"arguments\": {\"path\": \"a.rs\"}}\n</tool_call>";
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let mut p = ReplyParser::new(
                Some(ReasoningSplitter::new("<think>", "</think>")),
                Some(new_parser(ParserKind::JsonTools, &[])),
            );
            let mut reply = Reply::default();
            reply.extend(p.push(&text[..cut]));
            reply.extend(p.push(&text[cut..]));
            reply.extend(p.finish());
            assert_eq!(reply.reasoning, "need a file", "cut {cut}");
            assert_eq!(reply.content.trim(), "Sure.", "cut {cut}");
            assert_eq!(reply.tool_calls.len(), 1, "cut {cut}");
            assert_eq!(reply.tool_calls[0].1, "read");
            let args: serde_json::Value = serde_json::from_str(&reply.tool_calls[0].2).unwrap();
            assert_eq!(args["path"], "a.rs");
            assert_eq!(p.tool_calls(), 1);
        }
    }

    #[test]
    fn plain_text_passes_through() {
        let mut p = ReplyParser::new(None, None);
        let mut reply = Reply::default();
        reply.extend(p.push("a <think> b"));
        reply.extend(p.finish());
        assert_eq!(reply.content, "a <think> b");
    }
}
