//! Turns the text a model streams into the parts of an assistant reply, independent of the
//! wire format: reasoning (`<think>` text, or gpt-oss's `analysis` channel, for
//! `reasoning_content` / Anthropic `thinking`), plain content, and tool calls (start,
//! argument deltas, end). The OpenAI and Anthropic
//! handlers both read a [`ReplyParser`]'s [`ReplyEvent`]s and only differ in how they write
//! them out.

use crate::chat::tools::harmony::{HarmonyEvent, HarmonyParser};
use crate::chat::tools::{ParseEvent, ReasoningEvent, ReasoningSplitter, ToolParser};
use crate::runtime::Finish;
use crate::server::http::Outcome;

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

impl ReplyEvent {
    /// A part of a tool call after the first: what `parallel_tool_calls: false` (Anthropic's
    /// `disable_parallel_tool_use`) drops.
    pub fn is_later_call(&self) -> bool {
        match self {
            ReplyEvent::ToolStart { index, .. }
            | ReplyEvent::ToolArgs { index, .. }
            | ReplyEvent::ToolEnd { index } => *index > 0,
            _ => false,
        }
    }
}

/// Reasoning splitter, then tool parser, over one reply (or, for gpt-oss, the harmony
/// parser, which does both).
pub struct ReplyParser {
    reasoning: Option<ReasoningSplitter>,
    tools: Option<Box<dyn ToolParser>>,
    harmony: Option<HarmonyParser>,
    calls: usize,
    /// Declared tool names, when a bare JSON reply may stand for a call of one.
    bare_calls: Option<BareCall>,
}

/// Small models often answer a tool request with a bare or fenced JSON object
/// (`{"name": "Read", "arguments": {...}}`) instead of the template's markup. Content that
/// may still be such an object is held back; a whole reply that is one, naming a declared
/// tool, becomes a call (never for an undeclared name), as kooka-server did.
struct BareCall {
    names: Vec<String>,
    held: String,
    /// The content can no longer be a bare call: pass it through.
    open: bool,
}

impl BareCall {
    /// Whether `text` (the content so far) may still turn out to be one JSON object.
    fn may_be_call(text: &str) -> bool {
        let t = text.trim_start();
        t.is_empty() || t.starts_with('{') || t.starts_with("```") || "```".starts_with(t)
    }

    /// The call a whole reply stands for: `(name, arguments JSON)`.
    fn call(&self) -> Option<(String, String)> {
        let mut t = self.held.trim();
        if let Some(rest) = t.strip_prefix("```") {
            let rest = rest.trim_end().strip_suffix("```")?;
            // Drop the info string (`json`).
            t = rest
                .split_once('\n')
                .map(|(_, body)| body)
                .unwrap_or(rest)
                .trim();
        }
        let serde_json::Value::Object(obj) = serde_json::from_str(t).ok()? else {
            return None;
        };
        let name = obj.get("name")?.as_str()?;
        if !self.names.iter().any(|n| n == name) {
            return None;
        }
        let args = ["arguments", "parameters", "input"]
            .iter()
            .find_map(|k| obj.get(*k))
            .cloned()
            .unwrap_or(serde_json::json!({}));
        let args = match args {
            serde_json::Value::String(s) => serde_json::from_str(&s).ok()?,
            v => v,
        };
        args.is_object()
            .then(|| (name.to_string(), args.to_string()))
    }
}

impl ReplyParser {
    /// `reasoning`: split think blocks out first; `tools`: parse tool calls from the rest.
    pub fn new(reasoning: Option<ReasoningSplitter>, tools: Option<Box<dyn ToolParser>>) -> Self {
        ReplyParser {
            reasoning,
            tools,
            harmony: None,
            calls: 0,
            bare_calls: None,
        }
    }

    /// A harmony reply (gpt-oss): channels, not think tags and tool markup.
    pub fn harmony(parser: HarmonyParser) -> Self {
        ReplyParser {
            harmony: Some(parser),
            ..ReplyParser::new(None, None)
        }
    }

    /// Reads a whole reply that is a bare JSON call of one of `names` as that call.
    pub fn with_bare_calls(mut self, names: Vec<String>) -> Self {
        if !names.is_empty() {
            self.bare_calls = Some(BareCall {
                names,
                held: String::new(),
                open: false,
            });
        }
        self
    }

    /// How many tool calls the reply has started so far.
    pub fn tool_calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<ReplyEvent> {
        if let Some(h) = &mut self.harmony {
            let events = h.push(text);
            return self.route_harmony(events);
        }
        let pieces = match &mut self.reasoning {
            Some(r) => r.push(text),
            None => vec![ReasoningEvent::Content(text.to_string())],
        };
        self.route(pieces, None)
    }

    /// Ends a reply that ended by itself: flushes held-back text and closes what the format
    /// closes at EOS (the routes call [`Self::finish_as`]).
    #[cfg(test)]
    pub fn finish(&mut self) -> Vec<ReplyEvent> {
        self.end(false)
    }

    /// Ends the reply as `outcome` says: a reply the token limit or a stop string cut short
    /// drops the tool call it did not get to finish ([`ToolParser::finish_cut`]).
    pub fn finish_as(&mut self, outcome: &Outcome) -> Vec<ReplyEvent> {
        self.end(outcome.finish == Finish::Length || outcome.stop_sequence.is_some())
    }

    fn end(&mut self, cut: bool) -> Vec<ReplyEvent> {
        if let Some(h) = &mut self.harmony {
            let events = h.finish();
            return self.route_harmony(events);
        }
        let pieces = match &mut self.reasoning {
            Some(r) => r.finish(),
            None => Vec::new(),
        };
        self.route(pieces, Some(cut))
    }

    /// `end`: the reply ended (cut short or not).
    fn route(&mut self, pieces: Vec<ReasoningEvent>, end: Option<bool>) -> Vec<ReplyEvent> {
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
        if let Some(cut) = end {
            if let Some(p) = &mut self.tools {
                let events = if cut { p.finish_cut() } else { p.finish() };
                self.convert(events, &mut out);
            }
            self.end_bare_call(&mut out);
        }
        out
    }

    fn route_harmony(&mut self, events: Vec<HarmonyEvent>) -> Vec<ReplyEvent> {
        let mut out = Vec::new();
        for e in events {
            match e {
                HarmonyEvent::Reasoning(t) if !t.is_empty() => out.push(ReplyEvent::Reasoning(t)),
                HarmonyEvent::Reasoning(_) => {}
                HarmonyEvent::Reply(e) => self.convert(vec![e], &mut out),
            }
        }
        out
    }

    /// Content, unless it may be a bare call (then held until it is known).
    fn content(&mut self, text: String, out: &mut Vec<ReplyEvent>) {
        match &mut self.bare_calls {
            Some(b) if !b.open && self.calls == 0 => {
                b.held.push_str(&text);
                if !BareCall::may_be_call(&b.held) {
                    b.open = true;
                    out.push(ReplyEvent::Content(std::mem::take(&mut b.held)));
                }
            }
            _ => out.push(ReplyEvent::Content(text)),
        }
    }

    /// At the end: the held content as a call, or as the content it is.
    fn end_bare_call(&mut self, out: &mut Vec<ReplyEvent>) {
        let Some(b) = &mut self.bare_calls else {
            return;
        };
        if b.held.is_empty() {
            return;
        }
        match b.call().filter(|_| self.calls == 0) {
            Some((name, args)) => {
                b.held.clear();
                self.calls += 1;
                let id = crate::chat::tools::new_call_id();
                out.push(ReplyEvent::ToolStart { index: 0, id, name });
                out.push(ReplyEvent::ToolArgs {
                    index: 0,
                    delta: args,
                });
                out.push(ReplyEvent::ToolEnd { index: 0 });
            }
            None => out.push(ReplyEvent::Content(std::mem::take(&mut b.held))),
        }
    }

    fn convert(&mut self, events: Vec<ParseEvent>, out: &mut Vec<ReplyEvent>) {
        // Content held as a possible bare call is content after all once a real call starts.
        if events
            .iter()
            .any(|e| matches!(e, ParseEvent::ToolCallStart { .. }))
        {
            if let Some(b) = self.bare_calls.as_mut().filter(|b| !b.held.is_empty()) {
                b.open = true;
                out.push(ReplyEvent::Content(std::mem::take(&mut b.held)));
            }
        }
        for e in events {
            out.push(match e {
                ParseEvent::Content(t) if t.is_empty() => continue,
                ParseEvent::Content(t) => {
                    self.content(t, out);
                    continue;
                }
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

    fn bare(text: &str, cut: usize) -> Reply {
        let mut p = ReplyParser::new(None, Some(new_parser(ParserKind::JsonTools, &[])))
            .with_bare_calls(vec!["Read".into()]);
        let mut reply = Reply::default();
        reply.extend(p.push(&text[..cut]));
        reply.extend(p.push(&text[cut..]));
        reply.extend(p.finish());
        reply
    }

    #[test]
    fn a_bare_json_call_of_a_declared_tool_is_a_call() {
        for text in [
            "{\"name\": \"Read\", \"arguments\": {\"file_path\": \"a.rs\"}}",
            "```json\n{\"name\": \"Read\", \"arguments\": {\"file_path\": \"a.rs\"}}\n```",
        ] {
            for cut in 0..text.len() {
                let r = bare(text, cut);
                assert_eq!(r.tool_calls.len(), 1, "{text:?} cut {cut}");
                assert_eq!(r.tool_calls[0].1, "Read");
                assert!(r.content.is_empty());
            }
        }
        // Undeclared names and other text stay text.
        let other = "{\"name\": \"Write\", \"arguments\": {}}";
        assert_eq!(bare(other, 3).content, other);
        assert_eq!(bare("Sure: {\"a\": 1}", 2).content, "Sure: {\"a\": 1}");
    }

    #[test]
    fn harmony_reasoning_call_and_content_in_order() {
        let text = "<|channel|>analysis<|message|>Need the weather.<|end|>\
                    <|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>\
                    <|start|>assistant to=functions.get_weather<|channel|>commentary \
                    <|constrain|>json<|message|>{\"location\": \"SF\"}<|call|>";
        for cut in 0..=text.len() {
            let mut p = ReplyParser::harmony(HarmonyParser::new(Some(vec!["get_weather".into()])));
            let mut events = p.push(&text[..cut]);
            events.extend(p.push(&text[cut..]));
            events.extend(p.finish());
            // The kinds in order, adjacent pieces of one kind merged.
            let mut kinds: Vec<&str> = Vec::new();
            for e in &events {
                let kind = match e {
                    ReplyEvent::Reasoning(_) => "reasoning",
                    ReplyEvent::Content(_) => "content",
                    ReplyEvent::ToolStart { .. } => "start",
                    ReplyEvent::ToolArgs { .. } => "args",
                    ReplyEvent::ToolEnd { .. } => "end",
                };
                if kinds.last() != Some(&kind) {
                    kinds.push(kind);
                }
            }
            assert_eq!(
                kinds,
                ["reasoning", "content", "start", "args", "end"],
                "cut {cut}"
            );
            let mut reply = Reply::default();
            reply.extend(events);
            assert_eq!(reply.reasoning, "Need the weather.");
            assert_eq!(reply.content, "Checking.");
            assert_eq!(reply.tool_calls.len(), 1);
            assert_eq!(reply.tool_calls[0].1, "get_weather");
            assert_eq!(reply.tool_calls[0].2, r#"{"location":"SF"}"#);
            assert_eq!(p.tool_calls(), 1);
        }
        // Without tools in the request, the reasoning still comes out.
        let mut p = ReplyParser::harmony(HarmonyParser::new(None));
        let mut reply = Reply::default();
        reply.extend(p.push(
            "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>4",
        ));
        reply.extend(p.finish());
        assert_eq!(
            (reply.reasoning.as_str(), reply.content.as_str()),
            ("hm", "4")
        );
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
