//! gpt-oss replies in OpenAI's "harmony" format: a sequence of messages, each a header then a
//! body, `<|start|>assistant<|channel|>CHANNEL[ to=RECIPIENT][ <|constrain|>json]<|message|>`
//! BODY `<|end|>`. The chat template ends the prompt with `<|start|>assistant`, so the reply
//! begins with the rest of the first header (`<|channel|>analysis<|message|>...`); the
//! recipient may also stand before the channel (`<|start|>assistant to=functions.f<|channel|>
//! commentary json<|message|>`). `<|return|>` (the answer is done) and `<|call|>` (a tool call
//! is done) end the reply; the engine stops on them, so they usually never reach the text.
//!
//! Bodies go where their header says: the `analysis` channel is reasoning, a message to
//! `functions.NAME` is a call of NAME with the body as its JSON arguments, everything else
//! (`final`, a `commentary` preamble, an unknown channel, text with no header at all) is
//! content. Reasoning and content stream as they come (a partial special token held back
//! until it resolves); a call is held until its body ends and announced whole, like the other
//! JSON-bodied formats, and a body that is not a JSON object is given back as content.
//!
//! Harmony replaces both the `<think>` splitter and the tool parser, so [`HarmonyParser`] emits
//! reasoning beside the [`ParseEvent`]s.

use serde_json::Value;

use super::scan::{partial_suffix, ContentGate};
use super::{arguments_object, CallCounter, ParseEvent, ToolParser};

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const CONSTRAIN: &str = "<|constrain|>";
const END: &str = "<|end|>";
const RETURN: &str = "<|return|>";
const CALL: &str = "<|call|>";

/// What ends a body: the end tokens, or (the model left out `<|end|>`) the next header.
const BODY_ENDS: [&str; 5] = [END, RETURN, CALL, START, CHANNEL];

/// What a header starts with (after its role, when it has one).
const HEADER_OPENERS: [&str; 5] = [CHANNEL, "to=", CONSTRAIN, MESSAGE, START];

/// A longer "header" is text that merely looks like one.
const MAX_HEADER: usize = 256;

/// The recipient prefix of the request's functions.
const FUNCTIONS: &str = "functions.";

/// One step of a harmony reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HarmonyEvent {
    /// Text of the `analysis` channel (`reasoning_content` / Anthropic `thinking`).
    Reasoning(String),
    /// Content or a tool call.
    Reply(ParseEvent),
}

/// Where the open message's body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    Reasoning,
    Content,
    /// A call of this function: the body is its arguments.
    Call(String),
}

#[derive(Debug)]
enum State {
    /// Reading a header. `role`: it begins with the author (after `<|start|>`); the first
    /// header's author is in the prompt.
    Header { role: bool },
    /// Reading a body.
    Body(Dest),
}

/// The parsed header of one message.
#[derive(Debug, Default, PartialEq, Eq)]
struct Header {
    channel: Option<String>,
    recipient: Option<String>,
}

/// The streaming harmony parser for one reply.
#[derive(Debug)]
pub struct HarmonyParser {
    state: State,
    /// Text not yet classified: a header, or a body's tail that may be a special token.
    buf: String,
    /// The open call's body.
    body: String,
    /// The functions a recipient may name without `functions.`; `None`: no tools were
    /// offered, so no message is a call.
    tools: Option<Vec<String>>,
    calls: CallCounter,
    gate: ContentGate,
    /// The open message has emitted text.
    said: bool,
    /// An earlier message ended with reasoning / content: the next one's text is set apart.
    sep_reasoning: bool,
    sep_content: bool,
}

impl HarmonyParser {
    /// `tools`: the offered function names (`None`: tools are not in play).
    pub fn new(tools: Option<Vec<String>>) -> Self {
        HarmonyParser {
            state: State::Header { role: false },
            buf: String::new(),
            body: String::new(),
            tools,
            calls: CallCounter::default(),
            gate: ContentGate::default(),
            said: false,
            sep_reasoning: false,
            sep_content: false,
        }
    }

    /// The function names of a request's `tools` (OpenAI or bare function objects).
    pub fn tool_names(tools: &[Value]) -> Vec<String> {
        tools
            .iter()
            .filter_map(|t| t.get("function").unwrap_or(t).get("name")?.as_str())
            .map(str::to_string)
            .collect()
    }

    /// Consumes the next piece of generated text.
    pub fn push(&mut self, text_delta: &str) -> Vec<HarmonyEvent> {
        self.buf.push_str(text_delta);
        let mut out = Vec::new();
        self.run(&mut out, false);
        out
    }

    /// Ends the reply: flushes held-back text and the call the reply ended in.
    pub fn finish(&mut self) -> Vec<HarmonyEvent> {
        let mut out = Vec::new();
        self.run(&mut out, true);
        out
    }

    fn run(&mut self, out: &mut Vec<HarmonyEvent>, at_end: bool) {
        loop {
            match self.state {
                State::Header { role } => {
                    let lead = self.buf.len() - self.buf.trim_start().len();
                    if self.buf[lead..].starts_with(START) {
                        self.buf.drain(..lead + START.len());
                        self.state = State::Header { role: true };
                        continue;
                    }
                    if let Some(at) = self.buf.find(MESSAGE) {
                        if at <= MAX_HEADER && header_like(&self.buf[..at], role) {
                            let header = parse_header(&self.buf[..at]);
                            self.buf.drain(..at + MESSAGE.len());
                            self.open(header);
                            continue;
                        }
                    } else if self.buf.len() < MAX_HEADER + MESSAGE.len()
                        && header_like(&self.buf, role)
                    {
                        if !at_end {
                            return;
                        }
                        if role || self.buf.contains("<|") || self.buf.trim().is_empty() {
                            // A header cut off by the end of the reply: markup, not text.
                            self.buf.clear();
                            return;
                        }
                    }
                    // Not a header: the model wrote text without one.
                    self.state = State::Body(Dest::Content);
                    self.said = false;
                    if self.buf.starts_with(CHANNEL) {
                        // A broken header: its `<|channel|>` is text here, not the next one.
                        self.buf.drain(..CHANNEL.len());
                        self.body_text(&Dest::Content, CHANNEL.to_string(), out);
                    }
                }
                State::Body(ref dest) => {
                    let dest = dest.clone();
                    let found = BODY_ENDS
                        .iter()
                        .filter_map(|t| self.buf.find(t).map(|i| (i, *t)))
                        .min();
                    match found {
                        Some((at, tag)) => {
                            let text: String = self.buf.drain(..at).collect();
                            self.body_text(&dest, text, out);
                            // The next header's own tokens stay for it to read.
                            let role = tag == START;
                            if tag != CHANNEL {
                                self.buf.drain(..tag.len());
                            }
                            self.close(&dest, out);
                            self.state = State::Header { role };
                        }
                        None => {
                            let keep = if at_end {
                                0
                            } else {
                                BODY_ENDS
                                    .iter()
                                    .map(|t| partial_suffix(&self.buf, t))
                                    .max()
                                    .unwrap_or(0)
                            };
                            let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                            self.body_text(&dest, text, out);
                            if at_end {
                                self.close(&dest, out);
                                self.state = State::Header { role: false };
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A header is complete: its body starts.
    fn open(&mut self, header: Header) {
        let call = header.recipient.as_deref().and_then(|r| {
            let names = self.tools.as_ref()?;
            match r.strip_prefix(FUNCTIONS) {
                Some(name) if !name.is_empty() => Some(name.to_string()),
                // A recipient naming an offered function without its namespace.
                _ => names.iter().any(|n| n == r).then(|| r.to_string()),
            }
        });
        let dest = match (call, header.channel.as_deref()) {
            (Some(name), _) => Dest::Call(name),
            (None, Some("analysis")) => Dest::Reasoning,
            (None, _) => Dest::Content,
        };
        self.body.clear();
        self.said = false;
        self.state = State::Body(dest);
    }

    /// More of the open body.
    fn body_text(&mut self, dest: &Dest, text: String, out: &mut Vec<HarmonyEvent>) {
        if text.is_empty() {
            return;
        }
        let first = !self.said;
        self.said = true;
        match dest {
            Dest::Call(_) => self.body.push_str(&text),
            Dest::Reasoning => {
                let text = match std::mem::take(&mut self.sep_reasoning) && first {
                    true => format!("\n\n{text}"),
                    false => text,
                };
                out.push(HarmonyEvent::Reasoning(text));
            }
            Dest::Content => {
                let text = match std::mem::take(&mut self.sep_content) && first {
                    true => format!("\n\n{text}"),
                    false => text,
                };
                self.content(&text, out);
            }
        }
    }

    fn content(&mut self, text: &str, out: &mut Vec<HarmonyEvent>) {
        let mut events = Vec::new();
        self.gate.text(&mut events, text, self.calls.next > 0);
        out.extend(events.into_iter().map(HarmonyEvent::Reply));
    }

    /// The open message ended.
    fn close(&mut self, dest: &Dest, out: &mut Vec<HarmonyEvent>) {
        match dest {
            Dest::Reasoning => self.sep_reasoning |= self.said,
            Dest::Content => self.sep_content |= self.said,
            Dest::Call(name) => {
                let body = std::mem::take(&mut self.body);
                match call_arguments(&body) {
                    Some(args) => {
                        self.gate.call();
                        self.sep_content = false;
                        let events = self.calls.whole(name, None, &args);
                        out.extend(events.into_iter().map(HarmonyEvent::Reply));
                    }
                    // Not arguments after all: the text is given back, never dropped.
                    None => {
                        self.content(&body, out);
                        self.sep_content = true;
                    }
                }
            }
        }
        self.said = false;
    }
}

/// As a plain [`ToolParser`] (content and calls only, e.g. for [`super::ParsedReply`]): the
/// reasoning is left out, as the other parsers leave it to the `<think>` splitter before
/// them. The server reads replies through [`HarmonyEvent`]s and keeps it.
impl ToolParser for HarmonyParser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        replies(HarmonyParser::push(self, text_delta))
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        replies(HarmonyParser::finish(self))
    }
}

fn replies(events: Vec<HarmonyEvent>) -> Vec<ParseEvent> {
    events
        .into_iter()
        .filter_map(|e| match e {
            HarmonyEvent::Reply(e) => Some(e),
            HarmonyEvent::Reasoning(_) => None,
        })
        .collect()
}

/// A call's arguments from its body: a JSON object (or a string holding one); an empty body
/// is a call without arguments.
fn call_arguments(body: &str) -> Option<Value> {
    let body = body.trim();
    if body.is_empty() {
        return Some(Value::Object(Default::default()));
    }
    let value: Value = serde_json::from_str(body).ok()?;
    match value {
        Value::Null => None,
        v => arguments_object(Some(&v)),
    }
}

/// Whether `text` is (the start of) a header: its author when `role`, then the channel, a
/// recipient, a content type or the `<|message|>` that ends it, on one line.
fn header_like(text: &str, role: bool) -> bool {
    let mut s = text.trim_start();
    if role {
        s = s
            .trim_start_matches(|c: char| c.is_alphanumeric() || "_-.:".contains(c))
            .trim_start();
    }
    !s.contains('\n')
        && (s.is_empty()
            || HEADER_OPENERS
                .iter()
                .any(|o| s.starts_with(o) || o.starts_with(s)))
}

/// The channel and recipient of a header (the author and content type are not needed).
fn parse_header(text: &str) -> Header {
    let spaced = text
        .replace(CHANNEL, &format!(" {CHANNEL} "))
        .replace(CONSTRAIN, &format!(" {CONSTRAIN} "));
    let mut header = Header::default();
    let mut words = spaced.split_whitespace();
    while let Some(word) = words.next() {
        if word == CHANNEL {
            header.channel = words.next().map(str::to_string);
        } else if word == CONSTRAIN {
            words.next();
        } else if let Some(r) = word.strip_prefix("to=") {
            header.recipient = Some(r.to_string());
        }
    }
    header
}

#[cfg(test)]
#[path = "harmony_tests.rs"]
mod tests;
