//! Reusing the tokens of recent prompts. A coding agent resends its whole conversation every
//! turn: tokenizing 50k tokens again costs tens of milliseconds of the next turn's time to
//! the first token, even when the prefix cache holds every position. The same ids come back
//! cheaper from the last prompt that starts the same way.
//!
//! Exact by construction, not by heuristics: HF `tokenizers` first splits a text at its
//! added tokens (`<|im_start|>`, `<|im_end|>`, ...) and tokenizes the pieces between them
//! independently. So the ids up to an added token that both texts hold at the same place are
//! the same, and the rest is the tokenization of the text after that token on its own. A cut
//! is taken only where that holds:
//! - the token is matched on the raw text (not `normalized`), strips no space after it
//!   (`rstrip`) and is not `single_word` (whose match depends on the next character);
//! - it starts at least the longest added token's length before the texts part, so that no
//!   longer added token could match there in the new text;
//! - the tokenizer has no `Metaspace` pre-tokenizer with `prepend_scheme: first` (the one
//!   step that treats the text's first piece apart), no truncation and no padding.
//!
//! An identical text gets its ids back whole. Texts shorter than [`MIN_BYTES`] are
//! tokenized directly.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

/// Shorter texts are not worth a lookup.
pub const MIN_BYTES: usize = 2048;
/// Prompts remembered (several agents share a server).
const ENTRIES: usize = 16;

/// One remembered text with its ids (as `encode(text, false)` gives them) and the places a
/// later text may be cut: (byte offset after an eligible added token, ids up to it).
struct Entry {
    text: String,
    ids: Vec<u32>,
    cuts: Vec<(usize, usize)>,
}

/// What the remembered texts give a new one.
enum Base {
    /// Nothing: it is tokenized whole.
    None,
    /// The same text: its ids.
    Whole(Vec<u32>),
    /// The ids and cuts of its first `end` bytes.
    Prefix {
        ids: Vec<u32>,
        cuts: Vec<(usize, usize)>,
        end: usize,
    },
}

/// What [`EncodeCache::encode`] did (tests and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Tokenized whole.
    None,
    /// The same text was tokenized before.
    Whole,
    /// Ids up to this byte offset were reused; the rest tokenized.
    Prefix(usize),
}

pub struct EncodeCache {
    /// Added tokens a text may be cut after, by id.
    cut_ids: HashMap<u32, String>,
    /// The longest added token, in bytes.
    longest_added: usize,
    /// What `encode(_, true)` puts before and after the text's ids; `None`: not a plain
    /// prefix and suffix, such requests are tokenized whole.
    specials: Option<(Vec<u32>, Vec<u32>)>,
    /// The tokenizer allows cutting at all.
    enabled: bool,
    /// Most recently used last.
    entries: Mutex<Vec<Entry>>,
}

impl EncodeCache {
    pub fn new(tok: &tokenizers::Tokenizer) -> Self {
        let added = tok.get_added_tokens_decoder();
        let cut_ids = added
            .iter()
            .filter(|(_, t)| !t.normalized && !t.rstrip && !t.single_word)
            .map(|(&id, t)| (id, t.content.clone()))
            .collect();
        let longest_added = added.values().map(|t| t.content.len()).max().unwrap_or(0);
        let first_piece_apart = tok
            .get_pre_tokenizer()
            .and_then(|p| serde_json::to_value(p).ok())
            .is_some_and(|v| prepends_first(&v));
        let enabled =
            !first_piece_apart && tok.get_truncation().is_none() && tok.get_padding().is_none();
        EncodeCache {
            cut_ids,
            longest_added,
            specials: specials_around(tok),
            enabled,
            entries: Mutex::new(Vec::new()),
        }
    }

    /// `tok.encode(text, special)`'s ids, from a remembered text where one allows.
    pub fn encode(
        &self,
        tok: &tokenizers::Tokenizer,
        text: &str,
        special: bool,
    ) -> tokenizers::Result<(Vec<u32>, Reuse)> {
        let specials = match special {
            true => self.specials.as_ref(),
            false => None,
        };
        if !self.enabled || text.len() < MIN_BYTES || (special && specials.is_none()) {
            return Ok((tok.encode(text, special)?.get_ids().to_vec(), Reuse::None));
        }
        let (ids, reuse) = match self.base_for(text) {
            Base::Whole(ids) => (ids, Reuse::Whole),
            Base::Prefix { ids, cuts, end } => {
                (self.extend(tok, text, ids, cuts, end)?, Reuse::Prefix(end))
            }
            Base::None => (
                self.extend(tok, text, Vec::new(), Vec::new(), 0)?,
                Reuse::None,
            ),
        };
        let ids = match specials {
            Some((before, after)) => [before.as_slice(), &ids, after].concat(),
            None => ids,
        };
        Ok((ids, reuse))
    }

    /// `ids` (and their `cuts`) for `text[..from]`, completed by tokenizing the rest; the
    /// whole is remembered.
    fn extend(
        &self,
        tok: &tokenizers::Tokenizer,
        text: &str,
        mut ids: Vec<u32>,
        mut cuts: Vec<(usize, usize)>,
        from: usize,
    ) -> tokenizers::Result<Vec<u32>> {
        let tail = &text[from..];
        let rest = tok.encode(tail, false)?;
        for (i, (id, &(_, end))) in rest.get_ids().iter().zip(rest.get_offsets()).enumerate() {
            // Only where the token's own text ends (an offset a post-processor trimmed is
            // no place to cut).
            let at_its_end = self.cut_ids.get(id).is_some_and(|content| {
                tail.get(..end)
                    .is_some_and(|t| t.ends_with(content.as_str()))
            });
            if at_its_end {
                cuts.push((from + end, ids.len() + i + 1));
            }
        }
        ids.extend_from_slice(rest.get_ids());
        self.remember(text, &ids, cuts);
        Ok(ids)
    }

    /// What the remembered texts give `text`; an identical one becomes the most recent.
    fn base_for(&self, text: &str) -> Base {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let best = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (common_prefix(e.text.as_bytes(), text.as_bytes()), i))
            .max_by_key(|&(n, _)| n);
        let Some((shared, i)) = best else {
            return Base::None;
        };
        if shared == text.len() && shared == entries[i].text.len() {
            let e = entries.remove(i);
            let ids = e.ids.clone();
            entries.push(e);
            return Base::Whole(ids);
        }
        let e = &entries[i];
        match e
            .cuts
            .iter()
            .rposition(|&(end, _)| end + self.longest_added <= shared)
        {
            Some(c) => {
                let (end, n) = e.cuts[c];
                Base::Prefix {
                    ids: e.ids[..n].to_vec(),
                    cuts: e.cuts[..=c].to_vec(),
                    end,
                }
            }
            None => Base::None,
        }
    }

    /// Keeps `text` (most recent last); it replaces an entry it extends.
    fn remember(&self, text: &str, ids: &[u32], cuts: Vec<(usize, usize)>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| !text.starts_with(e.text.as_str()) || e.text.len() < MIN_BYTES);
        entries.push(Entry {
            text: text.to_string(),
            ids: ids.to_vec(),
            cuts,
        });
        if entries.len() > ENTRIES {
            entries.remove(0);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

/// Bytes two texts share at their start, on a character boundary of both.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    // Back to a character start (the bytes before it are equal, so both agree).
    while i > 0 && i < n && (b[i] & 0xC0) == 0x80 {
        i -= 1;
    }
    i
}

/// A `Metaspace` step with `prepend_scheme: first` anywhere in the pre-tokenizer.
fn prepends_first(v: &Value) -> bool {
    match v {
        Value::Object(o) => {
            (o.get("type").and_then(Value::as_str) == Some("Metaspace")
                && o.get("prepend_scheme").and_then(Value::as_str) == Some("first"))
                || o.values().any(prepends_first)
        }
        Value::Array(a) => a.iter().any(prepends_first),
        _ => false,
    }
}

/// The ids `encode(_, true)` adds before and after a text's own, found on a probe text;
/// `None` when they are not a plain prefix and suffix.
fn specials_around(tok: &tokenizers::Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let probe = "Hello kooka, 1 2 3.";
    let with = tok.encode(probe, true).ok()?.get_ids().to_vec();
    let without = tok.encode(probe, false).ok()?.get_ids().to_vec();
    if without.is_empty() || with.len() < without.len() {
        return None;
    }
    (0..=with.len() - without.len())
        .find(|&i| with[i..i + without.len()] == without[..])
        .map(|i| (with[..i].to_vec(), with[i + without.len()..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_stops_at_a_character_start() {
        assert_eq!(common_prefix(b"abc", b"abd"), 2);
        assert_eq!(common_prefix("aé".as_bytes(), "aè".as_bytes()), 1);
        let long = "x".repeat(200);
        assert_eq!(common_prefix(long.as_bytes(), long.as_bytes()), 200);
        assert_eq!(common_prefix(long.as_bytes(), &long.as_bytes()[..150]), 150);
    }

    #[test]
    fn metaspace_first_is_found_in_a_sequence() {
        let v = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split"}, {"type": "Metaspace", "prepend_scheme": "first"}]});
        assert!(prepends_first(&v));
        let v = serde_json::json!({"type": "Metaspace", "prepend_scheme": "always"});
        assert!(!prepends_first(&v));
    }

    #[test]
    fn a_first_piece_apart_turns_reuse_off() {
        use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
        let mut tok = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
        assert!(EncodeCache::new(&tok).enabled);
        tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, true)));
        assert!(!EncodeCache::new(&tok).enabled);
        tok.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
        assert!(EncodeCache::new(&tok).enabled);
    }

    #[test]
    fn entries_are_bounded_and_extensions_replace() {
        let tok = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
        let cache = EncodeCache::new(&tok);
        for i in 0..ENTRIES + 4 {
            cache.remember(&format!("{i} {}", "x".repeat(MIN_BYTES)), &[], Vec::new());
        }
        assert_eq!(cache.remembered(), ENTRIES);
        let base = format!("0 {}", "y".repeat(MIN_BYTES));
        cache.remember(&base, &[], Vec::new());
        cache.remember(&format!("{base} and more"), &[], Vec::new());
        assert_eq!(cache.remembered(), ENTRIES);
    }
}
