//! Builds a Hugging Face `tokenizer.json` from a GGUF vocabulary (`tokenizer.ggml.*`):
//! GPT-2 style byte-level BPE with the merges list, a pre-tokenizer chosen by
//! `tokenizer.ggml.pre`, a byte-level decoder, and added tokens for control/user-defined
//! entries. Works on vocab-only GGUFs (no tensors needed).

use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use super::gguf::{GgufFile, Value};
use super::ConvertError;

/// `tokenizer.ggml.pre` values we know how to express, with their split regexes.
pub const SUPPORTED_PRE: &[&str] = &["default", "gpt-2", "smollm", "qwen2", "llama-bpe", "llama3"];

/// Llama-3 split regex (1-3 digit groups).
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 split regex (single digits).
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_bytes(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
pub fn pre_tokenizer(pre: &str) -> Result<Json, ConvertError> {
    Ok(match pre {
        // GPT-2's own regex is what ByteLevel(use_regex) applies.
        "default" | "gpt-2" => byte_level(true),
        // SmolLM: every digit on its own, then GPT-2 byte-level splitting.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "qwen2" => split_then_bytes(QWEN2_RE),
        "llama-bpe" | "llama3" => split_then_bytes(LLAMA3_RE),
        other => {
            return Err(ConvertError::UnsupportedPreTokenizer {
                pre: other.to_string(),
                supported: SUPPORTED_PRE.join(", "),
            })
        }
    })
}

/// Llama-3 looks a whole pre-token up in the vocabulary before applying merges (some vocab
/// entries are unreachable through the merge list), like llama.cpp's `ignore_merges`.
fn ignore_merges(pre: &str) -> bool {
    matches!(pre, "llama-bpe" | "llama3")
}

/// The GGUF vocabulary pieces a tokenizer needs.
pub struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<i64>,
    pub merges: Vec<String>,
    pub pre: String,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub unk: Option<u64>,
    pub pad: Option<u64>,
    pub add_bos: bool,
    pub add_eos: bool,
}

fn str_array(g: &GgufFile, key: &str) -> Result<Vec<String>, ConvertError> {
    let arr = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| ConvertError::missing(key, "string array"))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| ConvertError::missing(key, "string array"))
        })
        .collect()
}

impl Vocab {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ConvertError> {
        let model = g.req_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ConvertError::UnsupportedTokenizer(model.to_string()));
        }
        let tokens = str_array(g, "tokenizer.ggml.tokens")?;
        let types = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|v| v.as_f64().map_or(1, |x| x as i64))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let id = |k: &str| g.opt_u64(k).filter(|&i| (i as usize) < tokens.len());
        Ok(Self {
            merges: str_array(g, "tokenizer.ggml.merges")?,
            pre: g
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string(),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            add_eos: g
                .get("tokenizer.ggml.add_eos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            tokens,
            types,
        })
    }

    /// Ids of tokens that become HF added tokens, with their `special` flag.
    pub fn added(&self) -> Vec<(usize, bool)> {
        let named: HashSet<u64> = [self.bos, self.eos, self.unk, self.pad]
            .into_iter()
            .flatten()
            .collect();
        (0..self.tokens.len())
            .filter_map(|i| {
                let ty = self.types.get(i).copied().unwrap_or(1);
                let special = ty == TYPE_CONTROL || named.contains(&(i as u64));
                (special || ty == TYPE_USER_DEFINED).then_some((i, special))
            })
            .collect()
    }

    pub fn token(&self, id: Option<u64>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize))
            .map(String::as_str)
    }

    /// The full tokenizer.json document.
    pub fn tokenizer_json(&self) -> Result<Json, ConvertError> {
        let mut vocab = Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            // Keep the first id when a piece repeats (it can, for padding entries).
            vocab.entry(t.clone()).or_insert(json!(i));
        }
        let merges: Vec<Json> = self
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| json!([a, b]))
                    .ok_or_else(|| {
                        ConvertError::BadTokenizer(format!("merge without a space: {m:?}"))
                    })
            })
            .collect::<Result<_, _>>()?;
        let added: Vec<Json> = self
            .added()
            .into_iter()
            .map(|(i, special)| {
                json!({"id": i, "content": self.tokens[i], "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": !special, "special": special})
            })
            .collect();
        let post = match (self.add_bos, self.token(self.bos)) {
            (true, Some(bos)) => {
                let id = self.bos.unwrap_or(0);
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos: {"id": bos, "ids": [id], "tokens": [bos]}}})
            }
            _ => {
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
            }
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer(&self.pre)?,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": self.token(self.unk), "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": ignore_merges(&self.pre),
                      "vocab": vocab, "merges": merges},
        }))
    }
}

/// tokenizer.json for the vocabulary in a GGUF file (full model or vocab-only).
pub fn tokenizer_json_from_gguf(path: &Path) -> Result<Json, ConvertError> {
    Vocab::from_gguf(&GgufFile::open(path)?)?.tokenizer_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pre_lists_supported() {
        let err = pre_tokenizer("klingon").unwrap_err().to_string();
        assert!(
            err.contains("klingon") && err.contains("smollm") && err.contains("llama-bpe"),
            "{err}"
        );
    }

    #[test]
    fn tiny_vocab_round_trips_through_tokenizers() {
        let v = Vocab {
            tokens: [
                "h", "e", "l", "o", "he", "ll", "hell", "hello", "Ġ", "<|end|>", "1", "2",
            ]
            .map(String::from)
            .to_vec(),
            types: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1],
            merges: ["h e", "l l", "he ll", "hell o"].map(String::from).to_vec(),
            pre: "smollm".into(),
            bos: None,
            eos: Some(9),
            unk: None,
            pad: None,
            add_bos: false,
            add_eos: false,
        };
        let doc = v.tokenizer_json().unwrap().to_string();
        let tok: tokenizers::Tokenizer = doc.parse().unwrap();
        let enc = tok.encode("hello<|end|>12", false).unwrap();
        assert_eq!(enc.get_ids(), &[7, 9, 10, 11]);
        assert_eq!(tok.decode(&[7, 8, 7], false).unwrap(), "hello hello");
    }
}
