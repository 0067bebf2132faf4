//! Splits `<think>...</think>` (or a template's own markers) out of a streamed reply into
//! `reasoning_content`, holding back partial tags like the tool parsers do. Templates that
//! open the think block in the prompt (Qwen3, DeepSeek-R1) need
//! [`ReasoningSplitter::starting_inside`]: the reply then begins as reasoning.

use super::scan::{Delimited, Piece};

/// One piece of the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReasoningEvent {
    /// Text for `reasoning_content`.
    Reasoning(String),
    /// Text after (or outside) the reasoning: feed it to the tool parser.
    Content(String),
}

/// The streaming splitter.
#[derive(Debug)]
pub struct ReasoningSplitter {
    scan: Delimited,
    /// The reasoning just closed and no content has followed yet: the blank lines that
    /// templates put after the close tag (`</think>\n\n`) are not content (an indented first
    /// line keeps its indentation).
    after_close: bool,
}

impl ReasoningSplitter {
    /// Splits on `start` / `end` (e.g. `<think>` / `</think>`).
    pub fn new(start: &'static str, end: &'static str) -> Self {
        ReasoningSplitter {
            scan: Delimited::new(start, Some(end)),
            after_close: false,
        }
    }

    /// The reply starts inside the reasoning (the prompt ended with the start tag).
    pub fn starting_inside(mut self) -> Self {
        self.scan.open_now();
        self
    }

    pub fn push(&mut self, text_delta: &str) -> Vec<ReasoningEvent> {
        let pieces = self.scan.push(text_delta);
        self.convert(pieces)
    }

    pub fn finish(&mut self) -> Vec<ReasoningEvent> {
        let pieces = self.scan.finish();
        self.convert(pieces)
    }

    fn convert(&mut self, pieces: Vec<Piece>) -> Vec<ReasoningEvent> {
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            match p {
                Piece::Text(t) if self.after_close => {
                    let t = t.trim_start_matches(['\n', '\r']);
                    if !t.is_empty() {
                        self.after_close = false;
                        out.push(ReasoningEvent::Content(t.to_string()));
                    }
                }
                Piece::Text(t) => out.push(ReasoningEvent::Content(t)),
                Piece::Body(t) => out.push(ReasoningEvent::Reasoning(t)),
                Piece::Close => self.after_close = true,
                Piece::Open => self.after_close = false,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mut s: ReasoningSplitter, text: &str) -> (String, String) {
        let (mut r, mut c) = (String::new(), String::new());
        let mut events = Vec::new();
        for ch in text.chars() {
            events.extend(s.push(&ch.to_string()));
        }
        events.extend(s.finish());
        for e in events {
            match e {
                ReasoningEvent::Reasoning(t) => r.push_str(&t),
                ReasoningEvent::Content(t) => c.push_str(&t),
            }
        }
        (r, c)
    }

    #[test]
    fn splits_think_blocks() {
        let s = ReasoningSplitter::new("<think>", "</think>");
        assert_eq!(
            run(s, "<think>2+2=4</think>\nIt is 4 <th"),
            ("2+2=4".into(), "It is 4 <th".into())
        );
        let s = ReasoningSplitter::new("<think>", "</think>").starting_inside();
        assert_eq!(run(s, "hmm</think>ok"), ("hmm".into(), "ok".into()));
        // The blank lines after the close tag are not content; later whitespace is.
        let s = ReasoningSplitter::new("<think>", "</think>").starting_inside();
        assert_eq!(
            run(s, "hmm</think>\n\n  a\n b"),
            ("hmm".into(), "  a\n b".into())
        );
    }
}
