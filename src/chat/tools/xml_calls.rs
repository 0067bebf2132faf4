//! The streaming engine shared by the XML-ish formats ([`super::qwen3_coder`],
//! [`super::minimax_m2`], [`super::glm45`]): inside a tool-call block, functions with a name and parameters
//! whose values are raw text. A call is announced when its opening tag is complete, and each
//! parameter is emitted as an arguments delta as soon as its closing tag arrives, typed by the
//! tool's schema (so the deltas build the compact JSON object `{"k":v,...}`).

use serde_json::Value;

use super::scan::{ContentGate, Delimited, Piece};
use super::{typing, CallCounter, ParseEvent, ToolParser, ToolSchemas};

/// The tags of one XML-ish format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Syntax {
    /// The block tags, e.g. `<tool_call>` / `</tool_call>`.
    pub block: (&'static str, &'static str),
    /// A function opens with `prefix NAME suffix` and closes with the third tag (`None`:
    /// with its block, one function per block).
    pub function: (&'static str, &'static str, Option<&'static str>),
    /// A parameter opens with `prefix KEY suffix` and closes with the third tag.
    pub parameter: (&'static str, &'static str, &'static str),
    /// Where a function name also ends (the suffix left out: GLM-4.7's `NAME<arg_key>`).
    pub name_stops: &'static [&'static str],
    /// Tags the value opens with after the key's suffix (one of them), whitespace between
    /// allowed (GLM's `</arg_key>` `<arg_value>`; DeepSeek-V3.2's `" string="true">`). Empty:
    /// the value follows the suffix.
    pub value_open: &'static [&'static str],
}

/// Repairs one typed argument (`None` drops it); see [`super::fixes`].
pub(crate) type ArgFix =
    fn(key: &str, value: Value, params_schema: Option<&Value>) -> Option<Value>;

/// The function being read.
#[derive(Debug)]
struct OpenCall {
    index: usize,
    name: String,
    /// Parameters emitted so far.
    params: usize,
}

/// A [`ToolParser`] for one XML-ish [`Syntax`].
#[derive(Debug)]
pub(crate) struct XmlCallParser {
    syntax: Syntax,
    schemas: ToolSchemas,
    fix: Option<ArgFix>,
    scan: Delimited,
    gate: ContentGate,
    calls: CallCounter,
    /// The open block's body, and how much of it is consumed.
    body: String,
    pos: usize,
    /// Calls started in the open block.
    block_calls: usize,
    open: Option<OpenCall>,
}

impl XmlCallParser {
    pub fn new(syntax: Syntax, schemas: ToolSchemas, fix: Option<ArgFix>) -> Self {
        XmlCallParser {
            scan: Delimited::new(syntax.block.0, Some(syntax.block.1)),
            syntax,
            schemas,
            fix,
            gate: ContentGate::default(),
            calls: CallCounter::default(),
            body: String::new(),
            pos: 0,
            block_calls: 0,
            open: None,
        }
    }

    /// `at_end`: the reply ended (`cut`: cut short, see [`ToolParser::finish_cut`]).
    fn handle(&mut self, pieces: Vec<Piece>, at_end: bool, cut: bool) -> Vec<ParseEvent> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => self.gate.text(&mut out, &text, self.calls.next > 0),
                Piece::Open => {
                    self.body.clear();
                    self.pos = 0;
                    self.block_calls = 0;
                }
                Piece::Body(text) => {
                    self.body.push_str(&text);
                    self.advance(&mut out);
                }
                Piece::Close => self.close_block(&mut out, true, false),
            }
        }
        if at_end && self.scan.inside() {
            self.close_block(&mut out, false, cut);
        }
        out
    }

    /// Emits everything complete in the body after `pos`.
    fn advance(&mut self, out: &mut Vec<ParseEvent>) {
        let (f_open, f_suffix, f_close) = self.syntax.function;
        let (p_open, p_suffix, p_close) = self.syntax.parameter;
        loop {
            let rest = &self.body[self.pos..];
            let skipped = rest.len() - rest.trim_start().len();
            let rest = rest.trim_start();
            match &mut self.open {
                None => {
                    let Some(start) = rest.find(f_open) else {
                        return;
                    };
                    let after = &rest[start + f_open.len()..];
                    let suffix_at = after.find(f_suffix).map(|i| (i, f_suffix.len()));
                    let stop_at = self
                        .syntax
                        .name_stops
                        .iter()
                        .filter_map(|s| after.find(s))
                        .min()
                        .map(|i| (i, 0));
                    let found = match (suffix_at, stop_at) {
                        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
                        (a, b) => a.or(b),
                    };
                    let Some((end, suffix_len)) = found else {
                        return;
                    };
                    let name = after[..end].trim().to_string();
                    let (index, event) = self.calls.start(&name, None);
                    self.gate.call();
                    out.push(event);
                    self.block_calls += 1;
                    self.open = Some(OpenCall {
                        index,
                        name,
                        params: 0,
                    });
                    self.pos += skipped + start + f_open.len() + end + suffix_len;
                }
                Some(call) => {
                    if let Some(after) = f_close.and_then(|c| rest.strip_prefix(c)) {
                        let consumed = self.body.len() - self.pos - after.len();
                        self.pos += consumed;
                        let index = call.index;
                        out.push(ParseEvent::ToolCallArgsDelta {
                            index,
                            delta: if call.params == 0 { "{}" } else { "}" }.into(),
                        });
                        out.push(ParseEvent::ToolCallEnd { index });
                        self.open = None;
                        continue;
                    }
                    let Some(after) = rest.strip_prefix(p_open) else {
                        // Not a parameter (yet): wait for more, skipping stray text before one.
                        let close_at = f_close.and_then(|c| rest.find(c));
                        match rest
                            .find(p_open)
                            .filter(|&i| close_at.is_none_or(|j| i < j))
                        {
                            Some(i) => self.pos += skipped + i,
                            None => match close_at {
                                Some(j) => self.pos += skipped + j,
                                None => return,
                            },
                        }
                        continue;
                    };
                    let Some(key_end) = after.find(p_suffix) else {
                        return;
                    };
                    let key = after[..key_end].trim().to_string();
                    let mut value_text = &after[key_end + p_suffix.len()..];
                    if !self.syntax.value_open.is_empty() {
                        let trimmed = value_text.trim_start();
                        // Until the value tag has come, wait for more.
                        let Some(v) = self
                            .syntax
                            .value_open
                            .iter()
                            .find_map(|open| trimmed.strip_prefix(open))
                        else {
                            return;
                        };
                        value_text = v;
                    }
                    let Some(value_end) = value_text.find(p_close) else {
                        return;
                    };
                    let raw = strip_one_newline(&value_text[..value_end]);
                    let consumed =
                        self.body.len() - self.pos - value_text[value_end + p_close.len()..].len();
                    self.pos += consumed;
                    let params_schema = self.schemas.parameters(&call.name);
                    let typed = typing::coerce(raw, self.schemas.property(&call.name, &key));
                    let value = match self.fix {
                        Some(fix) => fix(&key, typed, params_schema),
                        None => Some(typed),
                    };
                    if let Some(value) = value {
                        let sep = if call.params == 0 { "{" } else { "," };
                        let key_json = serde_json::to_string(&key).unwrap_or_default();
                        let delta = format!(
                            "{sep}{key_json}:{}",
                            serde_json::to_string(&value).unwrap_or_default()
                        );
                        call.params += 1;
                        out.push(ParseEvent::ToolCallArgsDelta {
                            index: call.index,
                            delta,
                        });
                    }
                }
            }
        }
    }

    /// The block ended: close an unclosed function; a block with no function is text (none
    /// where the reply was `cut` short).
    fn close_block(&mut self, out: &mut Vec<ParseEvent>, terminated: bool, cut: bool) {
        self.advance(out);
        if let Some(call) = self.open.take() {
            out.push(ParseEvent::ToolCallArgsDelta {
                index: call.index,
                delta: if call.params == 0 { "{}" } else { "}" }.into(),
            });
            out.push(ParseEvent::ToolCallEnd { index: call.index });
        }
        let bare_name = self.body.trim();
        if self.block_calls == 0
            && terminated
            && self.syntax.function.0.is_empty()
            && !bare_name.is_empty()
            && !bare_name.contains(['<', '\n', ' '])
        {
            // A call without arguments in a one-call block: `<tool_call>NAME</tool_call>`.
            let name = bare_name.to_string();
            let (index, event) = self.calls.start(&name, None);
            self.gate.call();
            out.push(event);
            out.push(ParseEvent::ToolCallArgsDelta {
                index,
                delta: "{}".into(),
            });
            out.push(ParseEvent::ToolCallEnd { index });
            self.block_calls += 1;
        }
        if self.block_calls == 0 && !cut {
            let end = if terminated { self.syntax.block.1 } else { "" };
            let text = format!("{}{}{end}", self.syntax.block.0, self.body);
            self.gate.text(out, &text, self.calls.next > 0);
        }
        self.body.clear();
        self.pos = 0;
    }
}

/// Qwen3-Coder writes values on their own lines: drop one newline on each side.
fn strip_one_newline(s: &str) -> &str {
    let s = s.strip_prefix('\n').unwrap_or(s);
    s.strip_suffix('\n').unwrap_or(s)
}

impl ToolParser for XmlCallParser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        let pieces = self.scan.push(text_delta);
        self.handle(pieces, false, false)
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        let pieces = self.scan.finish();
        self.handle(pieces, true, false)
    }

    fn finish_cut(&mut self) -> Vec<ParseEvent> {
        // All that is held back is a partial tag (start or end): dropped.
        self.scan.finish();
        self.handle(Vec::new(), true, true)
    }
}
