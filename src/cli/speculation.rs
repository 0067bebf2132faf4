//! The speculative-decoding flags `serve` and `generate` share.

use clap::{Args, ValueEnum};

use crate::engine::SpeculationConfig;

/// Where draft tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Drafter {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the
    /// sequence's last 2-4 tokens, in its prompt or its reply so far.
    Ngram,
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
        self.speculative.map(|Drafter::Ngram| SpeculationConfig {
            draft_tokens: self.num_draft_tokens as usize,
            max_rows: self.speculative_max_batch,
            ..SpeculationConfig::default()
        })
    }
}
