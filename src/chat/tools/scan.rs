//! The streaming splitter shared by the tag-delimited formats: text outside `start`...`end`
//! blocks, and the blocks' bodies, with a partial tag held back until it resolves; and
//! [`BlockParser`], the whole parser for formats whose blocks are parsed once complete.

use super::{CallCounter, ParseEvent, ToolParser};

/// A piece of the stream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text outside any block.
    Text(String),
    /// A start tag was seen; a block begins.
    Open,
    /// More of the current block's body.
    Body(String),
    /// The end tag was seen.
    Close,
}

/// Splits a stream on `start` / `end` tags (`end: None`: the block runs to the end).
#[derive(Debug)]
pub(crate) struct Delimited {
    /// The tag that opens a block.
    pub start: &'static str,
    /// The tag that closes it, if the format has one.
    pub end: Option<&'static str>,
    /// Text not yet classified (a possible partial tag).
    buf: String,
    /// Whether we are inside a block.
    inside: bool,
}

/// The length of the longest suffix of `text` that is a proper prefix of `tag`.
pub(crate) fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

impl Delimited {
    pub fn new(start: &'static str, end: Option<&'static str>) -> Self {
        Delimited {
            start,
            end,
            buf: String::new(),
            inside: false,
        }
    }

    /// Starts inside a block (its start tag was already emitted elsewhere, e.g. the prompt).
    pub fn open_now(&mut self) {
        self.inside = true;
    }

    /// Whether a block is open (at the end: an unterminated block).
    pub fn inside(&self) -> bool {
        self.inside
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let tag = match (self.inside, self.end) {
                (false, _) => self.start,
                (true, Some(end)) => end,
                (true, None) => {
                    if !self.buf.is_empty() {
                        out.push(Piece::Body(std::mem::take(&mut self.buf)));
                    }
                    return out;
                }
            };
            if let Some(at) = self.buf.find(tag) {
                let before: String = self.buf[..at].to_string();
                self.buf.drain(..at + tag.len());
                if !before.is_empty() {
                    out.push(if self.inside {
                        Piece::Body(before)
                    } else {
                        Piece::Text(before)
                    });
                }
                out.push(if self.inside {
                    Piece::Close
                } else {
                    Piece::Open
                });
                self.inside = !self.inside;
                continue;
            }
            let keep = partial_suffix(&self.buf, tag);
            let ready: String = self.buf.drain(..self.buf.len() - keep).collect();
            if !ready.is_empty() {
                out.push(if self.inside {
                    Piece::Body(ready)
                } else {
                    Piece::Text(ready)
                });
            }
            return out;
        }
    }

    /// Flushes the held-back text (it was not a tag after all).
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        match (rest.is_empty(), self.inside) {
            (true, _) => vec![],
            (false, true) => vec![Piece::Body(rest)],
            (false, false) => vec![Piece::Text(rest)],
        }
    }
}

/// Parses one complete block body into call events, or `None` if it is malformed.
pub(crate) type BodyParser = fn(&str, &mut CallCounter) -> Option<Vec<ParseEvent>>;

/// A [`ToolParser`] for formats whose blocks are parsed whole: text passes through, each
/// block becomes calls when it closes (or at the end, for formats without an end tag, or
/// an unterminated block); a malformed block is given back as text.
#[derive(Debug)]
pub(crate) struct BlockParser {
    scan: Delimited,
    /// The open block's body so far.
    body: String,
    calls: CallCounter,
    gate: ContentGate,
    parse_body: BodyParser,
}

impl BlockParser {
    pub fn new(start: &'static str, end: Option<&'static str>, parse_body: BodyParser) -> Self {
        BlockParser {
            scan: Delimited::new(start, end),
            body: String::new(),
            calls: CallCounter::default(),
            gate: ContentGate::default(),
            parse_body,
        }
    }

    fn handle(&mut self, pieces: Vec<Piece>, at_end: bool) -> Vec<ParseEvent> {
        let mut out = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Text(text) => self.gate.text(&mut out, &text, self.calls.next > 0),
                Piece::Open => self.body.clear(),
                Piece::Body(text) => self.body.push_str(&text),
                Piece::Close => out.extend(self.close(true)),
            }
        }
        if at_end && self.scan.inside() {
            out.extend(self.close(false));
        }
        out
    }

    /// Turns the finished block into calls, or gives its text back.
    fn close(&mut self, terminated: bool) -> Vec<ParseEvent> {
        let body = std::mem::take(&mut self.body);
        if let Some(events) = self.calls_of(&body) {
            return events;
        }
        let end = if terminated {
            self.scan.end.unwrap_or("")
        } else {
            ""
        };
        let mut out = Vec::new();
        self.gate.text(
            &mut out,
            &format!("{}{body}{end}", self.scan.start),
            self.calls.next > 0,
        );
        out
    }

    /// The calls of a block's `body`, counted as made; `None` where it holds none.
    fn calls_of(&mut self, body: &str) -> Option<Vec<ParseEvent>> {
        let mut calls = CallCounter {
            next: self.calls.next,
        };
        let events = (self.parse_body)(body, &mut calls).filter(|e| !e.is_empty())?;
        self.calls = calls;
        self.gate.call();
        Some(events)
    }
}

impl ToolParser for BlockParser {
    fn push(&mut self, text_delta: &str) -> Vec<ParseEvent> {
        let pieces = self.scan.push(text_delta);
        self.handle(pieces, false)
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        let pieces = self.scan.finish();
        self.handle(pieces, true)
    }

    fn finish_cut(&mut self) -> Vec<ParseEvent> {
        // All that is held back is a partial tag (start or end): dropped.
        self.scan.finish();
        if !self.scan.inside() {
            return Vec::new();
        }
        let body = std::mem::take(&mut self.body);
        self.calls_of(&body).unwrap_or_default()
    }
}

/// Content after a tool call: whitespace is held until real text follows, and dropped if
/// none does (the newlines between and after calls), the same for any delta split.
#[derive(Debug, Default)]
pub(crate) struct ContentGate {
    /// Whitespace seen since the last call, not yet emitted.
    pending: String,
}

impl ContentGate {
    /// Emits `text` (`after_call`: a call was already made in this reply).
    pub fn text(&mut self, out: &mut Vec<ParseEvent>, text: &str, after_call: bool) {
        if text.is_empty() {
            return;
        }
        if !after_call {
            out.push(ParseEvent::Content(text.to_string()));
        } else if text.trim().is_empty() {
            self.pending.push_str(text);
        } else {
            let mut all = std::mem::take(&mut self.pending);
            all.push_str(text);
            out.push(ParseEvent::Content(all));
        }
    }

    /// A call was made: whitespace before it is dropped.
    pub fn call(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_tags() {
        let mut d = Delimited::new("<tool_call>", Some("</tool_call>"));
        assert_eq!(d.push("hi <tool"), vec![Piece::Text("hi ".into())]);
        assert_eq!(
            d.push("_call>{}</tool_c"),
            vec![Piece::Open, Piece::Body("{}".into())]
        );
        assert_eq!(d.push("all>x"), vec![Piece::Close, Piece::Text("x".into())]);
        assert_eq!(d.push("<to"), vec![]);
        assert_eq!(d.finish(), vec![Piece::Text("<to".into())]);
        assert_eq!(partial_suffix("ab東<", "<x"), 1);
    }
}
