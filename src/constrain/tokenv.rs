//! The tokenizer as llguidance sees it: the bytes of every token, in a `TokTrie`.
//!
//! Built from our `tokenizers` 0.22 tokenizer directly (toktrie_hf_tokenizers wants 0.21):
//! byte-level BPE tokens map back through GPT-2's byte-to-unicode table, SentencePiece
//! tokens through `▁` -> space and `<0xHH>` byte fallback. Special added tokens get
//! llguidance's 0xFF marker, so no grammar of ours can produce them as text, except the
//! tool-call tags (Qwen's `<tool_call>`, DeepSeek's, Kimi-K2's, Mistral's and LFM2's call tags are added tokens
//! the model emits whole; the tool grammars spell them as text).
//!
//! One extra, virtual token follows the vocabulary: the grammar's EOS. The engine reads its
//! mask bit as "the reply may end here" and applies it to the request's own stop ids, which
//! need not be special tokens at all.

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use serde_json::Value;

use super::ConstrainError;

/// Added tokens that are markup the grammars spell out, never hidden behind the marker.
const MARKUP_TOKENS: [&str; 19] = [
    "<tool_call>",
    "</tool_call>",
    "<minimax:tool_call>",
    "</minimax:tool_call>",
    // DeepSeek (V3, R1, V3.1).
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    // Mistral (Nemo, Small 3.2, Devstral, Ministral 3).
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    // LFM2.
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    // Kimi-K2.
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
];

/// llguidance's tokenizer environment over our vocabulary.
pub(crate) struct KookaTokEnv {
    trie: TokTrie,
    /// For llguidance's own tokenizing (forced text); `None` in tests (greedy over the trie).
    hf: Option<tokenizers::Tokenizer>,
}

impl TokenizerEnv for KookaTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.hf
                .as_ref()
                .and_then(|hf| hf.encode(text, false).ok())
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_else(|| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// The environment for `tokens` (bytes per id, the marker on special ones) plus the virtual
/// EOS at id `tokens.len()`.
pub(crate) fn tok_env(mut tokens: Vec<Vec<u8>>, hf: Option<tokenizers::Tokenizer>) -> TokEnv {
    let eos = tokens.len() as u32;
    let mut name = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    name.extend_from_slice(b"<|kooka_grammar_end|>");
    tokens.push(name);
    let info = TokRxInfo::new(tokens.len() as u32, eos);
    Arc::new(KookaTokEnv {
        trie: TokTrie::from(&info, &tokens),
        hf,
    })
}

/// How the tokenizer's token strings encode bytes.
enum Encoding {
    /// GPT-2 byte-to-unicode characters.
    ByteLevel,
    /// SentencePiece: `space` stands for ' ', `<0xHH>` for a byte when `byte_fallback`.
    Metaspace { space: char, byte_fallback: bool },
}

fn encoding_of(decoder: &Value) -> Option<Encoding> {
    let mut byte_level = false;
    let mut byte_fallback = false;
    let mut space = None;
    let mut visit = vec![decoder];
    while let Some(d) = visit.pop() {
        match d.get("type").and_then(Value::as_str) {
            Some("ByteLevel") => byte_level = true,
            Some("ByteFallback") => byte_fallback = true,
            Some("Metaspace") => {
                space = d
                    .get("replacement")
                    .and_then(Value::as_str)
                    .and_then(|s| s.chars().next())
                    .or(space)
            }
            Some("Replace") if d.get("content").and_then(Value::as_str) == Some(" ") => {
                let pattern = d.get("pattern").and_then(|p| p.get("String"));
                let mut chars = pattern.and_then(Value::as_str).unwrap_or("").chars();
                if let (Some(c), None) = (chars.next(), chars.next()) {
                    space = Some(c);
                }
            }
            Some("Sequence") => visit.extend(
                d.get("decoders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            ),
            _ => {}
        }
    }
    if byte_level {
        Some(Encoding::ByteLevel)
    } else if byte_fallback || space.is_some() {
        Some(Encoding::Metaspace {
            space: space.unwrap_or('▁'),
            byte_fallback,
        })
    } else {
        None
    }
}

/// GPT-2's table: the printable bytes stand for themselves, the others for U+0100 onwards.
fn byte_level_map() -> HashMap<char, u8> {
    let mut map = HashMap::new();
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let c = b as char;
        if matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}') {
            map.insert(c, b);
        } else {
            map.insert(char::from_u32(next).unwrap_or('\0'), b);
            next += 1;
        }
    }
    map
}

/// The bytes of every token id of `hf` (empty for ids with no token).
pub(crate) fn token_bytes(hf: &tokenizers::Tokenizer) -> Result<Vec<Vec<u8>>, ConstrainError> {
    let decoder = hf
        .get_decoder()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| ConstrainError::Tokenizer(e.to_string()))?
        .unwrap_or(Value::Null);
    let encoding = encoding_of(&decoder).ok_or_else(|| {
        ConstrainError::Tokenizer(format!(
            "cannot map its tokens to bytes (decoder {}; byte-level BPE and SentencePiece are supported)",
            decoder.get("type").and_then(Value::as_str).unwrap_or("none")
        ))
    })?;
    let vocab = hf.get_vocab(true);
    let added = hf.get_added_tokens_decoder();
    let n = vocab
        .values()
        .copied()
        .chain(added.keys().copied())
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut out = vec![Vec::new(); n];
    let map = byte_level_map();
    for (text, &id) in &vocab {
        if added.contains_key(&id) {
            continue;
        }
        let bytes = match encoding {
            Encoding::ByteLevel => text.chars().map(|c| map.get(&c).copied()).collect(),
            Encoding::Metaspace {
                space,
                byte_fallback,
            } => match text.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                Some(hex) if byte_fallback && hex.len() == 2 => {
                    u8::from_str_radix(hex, 16).ok().map(|b| vec![b])
                }
                _ => Some(text.replace(space, " ").into_bytes()),
            },
        };
        // A token with no byte spelling (a broken vocabulary) is simply never allowed.
        out[id as usize] = bytes.unwrap_or_default();
    }
    for (id, tok) in &added {
        let mut bytes = Vec::new();
        if tok.special && !MARKUP_TOKENS.contains(&tok.content.as_str()) {
            bytes.push(TokTrie::SPECIAL_TOKEN_MARKER);
        }
        bytes.extend_from_slice(tok.content.as_bytes());
        out[*id as usize] = bytes;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection() {
        let map = byte_level_map();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn decoders_are_recognized() {
        let bl = serde_json::json!({"type": "ByteLevel"});
        assert!(matches!(encoding_of(&bl), Some(Encoding::ByteLevel)));
        let sp = serde_json::json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]});
        assert!(matches!(
            encoding_of(&sp),
            Some(Encoding::Metaspace {
                space: '▁',
                byte_fallback: true
            })
        ));
        assert!(encoding_of(&serde_json::json!({"type": "WordPiece"})).is_none());
    }
}
