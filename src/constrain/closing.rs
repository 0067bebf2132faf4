//! Closing a constrained JSON reply before the token limit cuts it. A schema-constrained reply
//! from a small model can run into a string that never ends, and `max_tokens` would cut it as
//! invalid JSON. Each matcher tracks how deep the JSON it has produced is nested (objects,
//! arrays, an open string) and, near the limit, probes how many tokens the shortest-looking
//! way to the grammar's end takes (closers first, forced text such as a required key's name,
//! else any allowed token; the matcher is rolled back after). Once the tokens left are only
//! just enough for that (or for `depth + margin`), the mask keeps, among the allowed tokens, only *closers* (tokens made of
//! `"`, `}`, `]` and spaces) and the end, whenever one of them is allowed: strings end,
//! containers close, a required key still missing is written (the grammar forces it) with the
//! shortest value the model picks. The reply then parses, and ends with `finish_reason:
//! length` as a cut reply does.
//!
//! The XML-ish tool-call markups (MiniMax-M2's `<invoke>`, Qwen3-Coder's `<function=...>`,
//! GLM's `<arg_value>`, DeepSeek-V3.2's `<｜DSML｜parameter>`) write parameters as raw text up to a closing tag. There the closers are the tokens that
//! write (or continue writing) one of [`XML_CLOSE_TAGS`], so a value that would run on is
//! ended with `</parameter>` and the call's own tags follow. JSON closers count only while
//! some JSON is open (a `"` in raw text closes nothing).

use std::sync::Arc;

/// The closing tags of the XML-ish tool-call markups' parameters, calls and blocks.
pub(crate) const XML_CLOSE_TAGS: [&str; 9] = [
    "</parameter>",
    "</arg_value>",
    "</invoke>",
    "</minimax:tool_call>",
    "</function>",
    "</tool_call>",
    // DeepSeek-V3.2's DSML (the bars are fullwidth, three bytes each).
    "</｜DSML｜parameter>",
    "</｜DSML｜invoke>",
    "</｜DSML｜function_calls>",
];

/// The longest tag prefix a [`Nesting`] keeps (at least the longest closing tag, 27 bytes).
const TAG_CAP: usize = 32;

/// Tokens the closing mode may keep and the bytes of every token, per vocabulary.
pub(crate) struct Vocabulary {
    /// `closer[id]`: the token's text is only `"`, `}`, `]` and spaces.
    closer: Vec<bool>,
    /// The closers' ids, shortest text first.
    closer_ids: Vec<u32>,
    /// Tokens that can be part of a closing tag ([`XML_CLOSE_TAGS`]), longest first.
    tag_ids: Vec<u32>,
    /// Each token's bytes (empty for special tokens).
    bytes: Vec<Vec<u8>>,
}

/// Tokens beyond the JSON's own closing that a reply may still need (a tool call's closing tag,
/// the end) and a little slack for closers the vocabulary only has in pieces.
const MARGIN: usize = 4;

impl Vocabulary {
    /// From the token bytes the constrainer is built from (special tokens start with 0xFF).
    pub(crate) fn new(tokens: &[Vec<u8>]) -> Arc<Self> {
        let bytes: Vec<Vec<u8>> = tokens
            .iter()
            .map(|t| match t.first() {
                Some(0xFF) => Vec::new(),
                _ => t.clone(),
            })
            .collect();
        let closer = bytes
            .iter()
            .map(|t| {
                t.iter().any(|b| matches!(b, b'"' | b'}' | b']'))
                    && t.iter().all(|b| matches!(b, b'"' | b'}' | b']' | b' '))
            })
            .collect::<Vec<bool>>();
        let mut closer_ids: Vec<u32> = (0..closer.len() as u32)
            .filter(|&i| closer[i as usize])
            .collect();
        closer_ids.sort_by_key(|&i| bytes[i as usize].len());
        let mut tag_ids: Vec<u32> = (0..bytes.len() as u32)
            .filter(|&i| tag_fragment(&bytes[i as usize]))
            .collect();
        // Most tag bytes first; among those, no leading whitespace (or one newline) first, so
        // the closing adds no blank space to a value.
        tag_ids.sort_by_key(|&i| {
            let b = &bytes[i as usize];
            let lead = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
            let padded = lead > 1 || (lead == 1 && b[0] != b'\n');
            (padded, std::cmp::Reverse(b.len() - lead))
        });
        Arc::new(Vocabulary {
            closer,
            closer_ids,
            tag_ids,
            bytes,
        })
    }

    /// Whether token `id` closes something here: a JSON closer while JSON is open (inside
    /// a string only one that starts with `"`: `}` there is just text), or a token that
    /// writes a closing tag on from what is written.
    pub(crate) fn closes(&self, id: usize, at: &Nesting) -> bool {
        if at.json_open() {
            // Inside JSON a tag is text: only the JSON's own closers close.
            self.closer.get(id).copied().unwrap_or(false)
                && (!at.in_string || self.bytes[id].first() == Some(&b'"'))
        } else {
            self.writes_tag(id, at)
        }
    }

    /// Whether token `id` starts a closing tag (after optional whitespace) or continues the
    /// one being written, possibly finishing it and adding whitespace.
    fn writes_tag(&self, id: usize, at: &Nesting) -> bool {
        let Some(b) = self.bytes.get(id).filter(|b| !b.is_empty()) else {
            return false;
        };
        let Some(t) = at.open_element() else {
            return false;
        };
        let buffered = &at.tag[..at.tag_len as usize];
        let (head, tail): (&[u8], &[u8]) =
            if !buffered.is_empty() && t.as_bytes().starts_with(buffered) {
                // Writing the closing tag on.
                (buffered, b)
            } else {
                // A new tag, after whitespace only (a stray `<` earlier in the text stays behind).
                match b.iter().position(|c| !c.is_ascii_whitespace()) {
                    Some(i) if b[i] == b'<' => (&[], &b[i..]),
                    _ => return false,
                }
            };
        // `head + tail` is a prefix of the tag, or the whole tag and then whitespace only.
        let mut text = head.iter().chain(tail);
        for &c in t.as_bytes() {
            match text.next() {
                Some(&x) if x == c => {}
                Some(_) => return false,
                None => return true,
            }
        }
        text.all(u8::is_ascii_whitespace)
    }

    /// The allowed token that closes the most directly here: outside a string one that
    /// closes a container before one that opens a string (a required key), shortest first;
    /// where no JSON closer applies, the longest token that writes a closing tag on.
    pub(crate) fn pick_closer(&self, at: &Nesting, allowed: impl Fn(u32) -> bool) -> Option<u32> {
        self.pick_json_closer(at, &allowed)
            .or_else(|| self.pick_tag_writer(at, allowed))
    }

    /// The longest allowed token that writes the open element's closing tag on, where no
    /// JSON closer applies.
    pub(crate) fn pick_tag_writer(
        &self,
        at: &Nesting,
        allowed: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        if at.json_open() {
            return None;
        }
        self.tag_ids
            .iter()
            .copied()
            .find(|&id| allowed(id) && self.writes_tag(id as usize, at))
    }

    fn pick_json_closer(&self, at: &Nesting, allowed: &impl Fn(u32) -> bool) -> Option<u32> {
        if !at.json_open() {
            return None;
        }
        let usable = |&&id: &&u32| {
            allowed(id)
                && self.closer[id as usize]
                && (!at.in_string || self.bytes[id as usize].first() == Some(&b'"'))
        };
        let ids = self.closer_ids.iter();
        match at.in_string {
            true => ids.filter(usable).copied().next(),
            false => {
                let opens = |id: &&u32| self.bytes[**id as usize].first() == Some(&b'"');
                let mut candidates = ids.filter(usable);
                let first = candidates.clone().find(|id| !opens(id));
                first.or_else(|| candidates.next()).copied()
            }
        }
    }
}

/// Whether `bytes` (trailing whitespace aside, and leading whitespace before a `<`) can be
/// part of a closing tag.
fn tag_fragment(bytes: &[u8]) -> bool {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t.trim_end(),
        Err(_) => return false,
    };
    let text = match text.trim_start() {
        t if t.starts_with('<') => t,
        _ => text,
    };
    !text.is_empty() && XML_CLOSE_TAGS.iter().any(|t| t.contains(text))
}

/// How deep the JSON written so far is nested, and the tag being written, if any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nesting {
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// The text from the last `<` on while no `>` has followed (up to [`TAG_CAP`] bytes).
    tag: [u8; TAG_CAP],
    tag_len: u8,
    /// The markup elements open (indices into [`XML_CLOSE_TAGS`]), innermost last.
    open: [u8; OPEN_CAP],
    open_len: u8,
}

/// How many nested markup elements a [`Nesting`] follows.
const OPEN_CAP: usize = 4;

impl Nesting {
    /// Reads one token's bytes.
    pub(crate) fn push(&mut self, vocab: &Vocabulary, token: u32) {
        let Some(bytes) = vocab.bytes.get(token as usize) else {
            return;
        };
        for &b in bytes {
            self.track_tag(b);
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// The closing tag of the innermost open markup element.
    fn open_element(&self) -> Option<&'static str> {
        let n = self.open_len as usize;
        (n > 0).then(|| XML_CLOSE_TAGS[self.open[n - 1] as usize])
    }

    /// Whether JSON is open (a container or a string).
    pub(crate) fn json_open(&self) -> bool {
        self.depth > 0 || self.in_string
    }

    /// A markup element opened or closed: what came before (raw text with stray quotes or
    /// braces) does not nest the JSON that may follow.
    fn reset_json(&mut self) {
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
    }

    /// A tag just ended with `>`: an opening tag of a markup element opens it, its closing
    /// tag closes it.
    fn end_tag(&mut self) {
        let tag = &self.tag[..self.tag_len as usize];
        for (i, close) in XML_CLOSE_TAGS.iter().enumerate() {
            let name = &close.as_bytes()[2..close.len() - 1];
            if tag.len() > 2 && &tag[2..] == name && tag[1] == b'/' {
                let n = self.open_len as usize;
                if n > 0 && self.open[n - 1] as usize == i {
                    self.open_len -= 1;
                    self.reset_json();
                }
                return;
            }
            let opens = tag.len() > name.len()
                && &tag[1..=name.len()] == name
                && matches!(tag.get(name.len() + 1), None | Some(b' ' | b'='));
            let bare = tag.len() == name.len() + 1 && &tag[1..] == name;
            if (opens || bare) && (self.open_len as usize) < OPEN_CAP {
                self.open[self.open_len as usize] = i as u8;
                self.open_len += 1;
                self.reset_json();
                return;
            }
        }
    }

    fn track_tag(&mut self, b: u8) {
        let len = self.tag_len as usize;
        match b {
            b'<' => {
                self.tag[0] = b;
                self.tag_len = 1;
            }
            b'>' => {
                if len > 0 {
                    self.end_tag();
                }
                self.tag_len = 0;
            }
            _ if len > 0 && len < TAG_CAP => {
                self.tag[len] = b;
                self.tag_len += 1;
            }
            // A long tag (`<parameter name="a_long_key">`): its start is all `end_tag` reads.
            _ if len == TAG_CAP => {}
            _ => self.tag_len = 0,
        }
    }

    /// Tokens to keep in hand for closing: one per open string and container, plus margin.
    pub(crate) fn reserve(&self) -> usize {
        self.depth + usize::from(self.in_string) + MARGIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_follows_strings_and_escapes() {
        let tokens: Vec<Vec<u8>> = ["{\"a\": [", "\"x}\\\"", "\"", "]}", "\"}", " ]"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        let vocab = Vocabulary::new(&tokens);
        let mut n = Nesting::default();
        n.push(&vocab, 0);
        assert_eq!((n.depth, n.in_string), (2, false));
        n.push(&vocab, 1);
        assert_eq!(
            (n.depth, n.in_string),
            (2, true),
            "a brace inside a string, an escaped quote"
        );
        n.push(&vocab, 2);
        assert_eq!((n.depth, n.in_string), (2, false));
        n.push(&vocab, 3);
        assert_eq!(n.reserve(), MARGIN);
        let outside = Nesting {
            depth: 1,
            ..Nesting::default()
        };
        assert!(
            vocab.closes(4, &outside) && vocab.closes(5, &outside) && !vocab.closes(0, &outside)
        );
        assert!(
            !vocab.closes(4, &Nesting::default()),
            "with no JSON open a quote closes nothing"
        );
        let inside = Nesting {
            in_string: true,
            ..Nesting::default()
        };
        assert!(!vocab.closes(3, &inside) && vocab.closes(4, &inside));
    }

    #[test]
    fn closing_tags_are_written_on() {
        let texts = [
            "hello",
            "</",
            "parameter",
            ">\n",
            "\n</invoke>",
            "</parameter>",
            "<div",
            "\"",
            "param",
            "<invoke name=\"f\">\n<parameter name=\"x\">",
        ];
        let tokens: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
        let vocab = Vocabulary::new(&tokens);
        let mut at = Nesting::default();
        at.push(&vocab, 0);
        assert!(!vocab.closes(5, &at), "no markup element is open");
        at.push(&vocab, 9);
        assert_eq!(at.open_element(), Some("</parameter>"));
        at.push(&vocab, 0);
        let closers: Vec<&str> = (0..texts.len())
            .filter(|&i| vocab.closes(i, &at))
            .map(|i| texts[i])
            .collect();
        assert_eq!(
            closers,
            ["</", "</parameter>"],
            "only the open element's tag"
        );
        // The longest tag writer first.
        assert_eq!(vocab.pick_closer(&at, |_| true), Some(5));
        at.push(&vocab, 1);
        assert!(vocab.closes(2, &at) && vocab.closes(8, &at) && !vocab.closes(0, &at));
        at.push(&vocab, 2);
        assert!(vocab.closes(3, &at), "`>` and a newline finish </parameter");
        at.push(&vocab, 3);
        assert_eq!(at.tag_len, 0);
        assert_eq!(at.open_element(), Some("</invoke>"));
        assert!(vocab.closes(4, &at));
        // A tag longer than the buffer still opens its element; a stray `<` in a value does
        // not hide the closing tag.
        let texts = [
            "<parameter name=\"a_rather_long_parameter_key\">",
            "a <",
            " b",
            "</",
        ];
        let tokens: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
        let vocab = Vocabulary::new(&tokens);
        let mut at = Nesting::default();
        at.push(&vocab, 0);
        assert_eq!(at.open_element(), Some("</parameter>"));
        at.push(&vocab, 1);
        at.push(&vocab, 2);
        assert!(vocab.closes(3, &at), "a fresh `</` after a stray `<`");
    }

    #[test]
    fn dsml_elements_are_followed_to_the_outermost() {
        let texts = [
            "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n",
            "<｜DSML｜parameter name=\"x\" string=\"true\">",
            "Oslo",
            "</｜DSML｜parameter>\n",
            "</｜DSML｜invoke>\n",
        ];
        let tokens: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
        let vocab = Vocabulary::new(&tokens);
        let mut at = Nesting::default();
        let mut open = Vec::new();
        for token in 0..texts.len() {
            at.push(&vocab, token as u32);
            open.push(at.open_element());
        }
        assert_eq!(
            open,
            [
                Some("</｜DSML｜invoke>"),
                Some("</｜DSML｜parameter>"),
                Some("</｜DSML｜parameter>"),
                Some("</｜DSML｜invoke>"),
                Some("</｜DSML｜function_calls>"),
            ]
        );
        assert!(vocab.closes(3, &{
            let mut at = Nesting::default();
            (0..3).for_each(|t| at.push(&vocab, t));
            at
        }));
    }
}
