//! The speculative-decoding flags `serve` and `generate` share.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::engine::SpeculationConfig;

/// Where draft tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Drafter {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the
    /// sequence's last 2-4 tokens, in its prompt or its reply so far.
    Ngram,
    /// A smaller model with the same tokenizer (`--draft-model`) decodes greedily ahead.
    Draft,
}

#[derive(Debug, Clone, Args)]
pub struct SpeculationArgs {
    /// Speculative decoding: draft each sequence's next tokens and check them all in one
    /// forward (same output: greedy identical, sampling with the same distribution). `ngram`
    /// drafts from the context itself, which pays when replies repeat it (code edits) [default:
    /// off].
    #[arg(
        long,
        env = "KOOKA_SPECULATIVE",
        value_enum,
        help_heading = "Speculative decoding"
    )]
    pub speculative: Option<Drafter>,
    /// A smaller model with the same tokenizer that drafts (a folder, HF cache name or GGUF
    /// as for --model); implies `--speculative draft`. One rank only.
    #[arg(long, env = "KOOKA_DRAFT_MODEL", help_heading = "Speculative decoding")]
    pub draft_model: Option<PathBuf>,
    /// Most draft tokens per sequence and step.
    #[arg(
        long,
        env = "KOOKA_NUM_DRAFT_TOKENS",
        default_value_t = SpeculationConfig::default().draft_tokens as u16,
        value_parser = clap::value_parser!(u16).range(1..=32),
        help_heading = "Speculative decoding"
    )]
    pub num_draft_tokens: u16,
    /// Speculate only while at most this many sequences decode together (a fuller batch
    /// keeps the device busy without it).
    #[arg(
        long,
        env = "KOOKA_SPECULATIVE_MAX_BATCH",
        default_value_t = SpeculationConfig::default().max_rows,
        help_heading = "Speculative decoding"
    )]
    pub speculative_max_batch: usize,
}

impl SpeculationArgs {
    /// The engine's setting; `None` when off.
    pub fn config(&self) -> Option<SpeculationConfig> {
        self.drafter().map(|_| SpeculationConfig {
            draft_tokens: self.num_draft_tokens as usize,
            max_rows: self.speculative_max_batch,
            ..SpeculationConfig::default()
        })
    }

    fn drafter(&self) -> Option<Drafter> {
        match (self.speculative, &self.draft_model) {
            (None, Some(_)) => Some(Drafter::Draft),
            (d, _) => d,
        }
    }

    /// The draft model's folder, its tokenizer checked against the model's in `model_dir`;
    /// `None` unless drafting with a model.
    pub fn draft_dir(&self, model_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
        let given = match (self.drafter(), &self.draft_model) {
            (Some(Drafter::Draft), Some(p)) => p,
            (Some(Drafter::Draft), None) => {
                anyhow::bail!("--speculative draft needs --draft-model PATH")
            }
            (_, Some(_)) => anyhow::bail!(
                "--draft-model drafts with a model: leave out --speculative ngram (or use \
                 --speculative draft)"
            ),
            (_, None) => return Ok(None),
        };
        let dir =
            crate::model::resolve::resolve_model(given, &crate::model::resolve::hf_cache_dir())
                .with_context(|| format!("--draft-model {}", given.display()))?;
        let load = |d: &Path| {
            crate::tokenizer::Tokenizer::load(d)
                .with_context(|| format!("the tokenizer of {}", d.display()))
        };
        if let Err(diff) = load(model_dir)?.same_vocabulary(&load(&dir)?) {
            anyhow::bail!(
                "--draft-model {} has another tokenizer than the model ({diff}): a draft \
                 model must share the model's vocabulary",
                given.display()
            );
        }
        Ok(Some(dir))
    }
}
