//! A model folder's tokenizer: `tokenizer.json` (HF `tokenizers`), `tokenizer_config.json`
//! (chat template, bos/eos tokens) and `generation_config.json` (eos ids), plus chat
//! template rendering (through `chat::ChatTemplate`, the one renderer).

mod encode_cache;

use std::path::Path;

use serde_json::Value;

use crate::engine::text::Decode;
use crate::model::config::{ids_of, read_to_string};
use crate::model::{ModelError, Result};
use encode_cache::EncodeCache;
pub use encode_cache::Reuse;

/// Tokenizer plus the special-token facts generation needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Recent prompts' ids, for [`Tokenizer::encode_prompt`].
    prompts: EncodeCache,
    pub chat_template: Option<String>,
    /// The template named `tool_use` where tokenizer_config lists named templates
    /// (Hermes, Command-R): transformers renders requests with tools through it.
    pub tool_use_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// EOS ids from tokenizer_config's eos_token and generation_config.json.
    pub eos_ids: Vec<u32>,
    /// tokenizer_config's `tool_parser_type`, when the model names its tool-call format.
    pub tool_parser_type: Option<String>,
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_to_string(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingFile(path));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let named = |name: &str| match cfg.get("chat_template") {
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let mut chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => named("default").or_else(|| {
                list.first()
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }),
            _ => None,
        };
        let tool_use_template = named("tool_use");
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            chat_template = Some(read_to_string(&jinja)?);
        }
        let tool_parser_type = cfg
            .get("tool_parser_type")
            .and_then(Value::as_str)
            .map(str::to_string);
        let bos_token = token_str(cfg.get("bos_token"));
        let eos_token = token_str(cfg.get("eos_token"));
        let mut eos_ids: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .into_iter()
            .collect();
        if let Some(gen) = read_json(&dir.join("generation_config.json"))? {
            eos_ids.extend(ids_of(gen.get("eos_token_id")));
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer {
            prompts: EncodeCache::new(&inner),
            inner,
            chat_template,
            tool_use_template,
            bos_token,
            eos_token,
            eos_ids,
            tool_parser_type,
        })
    }

    /// Token ids of `text`; `special` adds the post-processor's special tokens (BOS...).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] for a request's prompt: the same ids, reusing those of a recent
    /// prompt that starts the same way (see `encode_cache.rs`).
    pub fn encode_prompt(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        Ok(self.encode_prompt_reusing(text, special)?.0)
    }

    /// [`Tokenizer::encode_prompt`], and what it reused.
    pub fn encode_prompt_reusing(&self, text: &str, special: bool) -> Result<(Vec<u32>, Reuse)> {
        let started = std::time::Instant::now();
        let (ids, reuse) = self
            .prompts
            .encode(&self.inner, text, special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        if text.len() >= encode_cache::MIN_BYTES {
            tracing::debug!(
                tokens = ids.len(),
                micros = started.elapsed().as_micros() as u64,
                reused = ?reuse,
                "prompt tokenized"
            );
        }
        Ok((ids, reuse))
    }

    /// The underlying HF tokenizer (constrained decoding maps its vocabulary to bytes).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `other` maps every token to the same id (a draft model must: its drafts are
    /// ids the model reads); else what differs, for the error.
    pub fn same_vocabulary(&self, other: &Tokenizer) -> std::result::Result<(), String> {
        let (a, b) = (self.inner.get_vocab(true), other.inner.get_vocab(true));
        let mut differ: Vec<(&String, u32, Option<u32>)> = a
            .iter()
            .filter(|(t, id)| b.get(*t) != Some(id))
            .map(|(t, &id)| (t, id, b.get(t).copied()))
            .collect();
        let missing = b.keys().filter(|t| !a.contains_key(*t)).count();
        if differ.is_empty() && missing == 0 {
            return Ok(());
        }
        differ.sort_by_key(|&(_, id, _)| id);
        let example = match differ.first() {
            Some((t, id, Some(other))) => format!("; e.g. {t:?} is {id} here, {other} there"),
            Some((t, id, None)) => format!("; e.g. {t:?} ({id}) is missing there"),
            None => String::new(),
        };
        Err(format!(
            "{} of {} tokens differ, {missing} extra there{example}",
            differ.len(),
            a.len()
        ))
    }

    /// Renders the chat template for `messages` (`[{"role", "content"}]`) with
    /// `add_generation_prompt`, as transformers' `apply_chat_template` does.
    pub fn apply_chat_template(
        &self,
        messages: &Value,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::Template("the tokenizer has no chat_template".into()))?;
        let special = crate::chat::SpecialTokens {
            bos: self.bos_token.clone(),
            eos: self.eos_token.clone(),
            ..Default::default()
        };
        let messages = messages.as_array().cloned().unwrap_or_default();
        crate::chat::ChatTemplate::new(template, special)
            .and_then(|t| t.render(&messages, None, add_generation_prompt, &Default::default()))
            .map_err(|e| ModelError::Template(e.to_string()))
    }
}

impl Decode for Tokenizer {
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
}
