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

use std::sync::Arc;

/// Tokens the closing mode may keep and the bytes of every token, per vocabulary.
pub(crate) struct Vocabulary {
    /// `closer[id]`: the token's text is only `"`, `}`, `]` and spaces.
    closer: Vec<bool>,
    /// The closers' ids, shortest text first.
    closer_ids: Vec<u32>,
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
        Arc::new(Vocabulary {
            closer,
            closer_ids,
            bytes,
        })
    }

    /// Whether token `id` closes something here: inside a string only a closer that starts
    /// with `"` does (`}` there is just text).
    pub(crate) fn closes(&self, id: usize, at: &Nesting) -> bool {
        self.closer.get(id).copied().unwrap_or(false)
            && (!at.in_string || self.bytes[id].first() == Some(&b'"'))
    }

    /// The allowed token that closes the most directly here: outside a string one that
    /// closes a container before one that opens a string (a required key), shortest first.
    pub(crate) fn pick_closer(&self, at: &Nesting, allowed: impl Fn(u32) -> bool) -> Option<u32> {
        let usable = |&&id: &&u32| allowed(id) && self.closes(id as usize, at);
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

/// How deep the JSON written so far is nested.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nesting {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Nesting {
    /// Reads one token's bytes.
    pub(crate) fn push(&mut self, vocab: &Vocabulary, token: u32) {
        let Some(bytes) = vocab.bytes.get(token as usize) else {
            return;
        };
        for &b in bytes {
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
        let outside = Nesting::default();
        assert!(
            vocab.closes(4, &outside) && vocab.closes(5, &outside) && !vocab.closes(0, &outside)
        );
        let inside = Nesting {
            in_string: true,
            ..Nesting::default()
        };
        assert!(!vocab.closes(3, &inside) && vocab.closes(4, &inside));
    }
}
