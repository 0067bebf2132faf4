//! A constrained sequence's share of each step: the grammar's token mask as an additive
//! `[1, V]` array (0 allowed, -inf not), the sampled token committed to the matcher, and
//! the end of the sequence once the grammar is complete.
//!
//! The mask for token n+1 needs token n, so a constrained sequence cannot queue its next
//! *sample* before reading the current token; the engine still queues the next *forward*
//! first, so the mask (CPU, llguidance) is computed while the device runs the forward.
//! Unconstrained sequences never reach this module.

use mlx_rs::Array;
use tracing::warn;

use super::SeqId;
use crate::constrain::{GrammarMatcher, MaskStep};
use crate::model::Result;

/// One sequence's matcher and its reusable host-side mask.
pub(super) struct SeqConstraint {
    matcher: GrammarMatcher,
    /// The dense additive mask, one entry per model vocabulary id.
    bias: Vec<f32>,
    /// The grammar is complete (or failed): the pending token is the end, not a sample.
    pub finish_next: bool,
}

impl SeqConstraint {
    pub fn new(matcher: GrammarMatcher, vocab: usize) -> Self {
        SeqConstraint {
            matcher,
            bias: vec![0.0; vocab],
            finish_next: false,
        }
    }

    /// The mask for the next token, or `None` when the sequence must end instead: the
    /// grammar is complete, or the matcher failed (logged; the reply so far is kept).
    pub fn next_mask(
        &mut self,
        seq: SeqId,
        stop_ids: &[u32],
        tokens_left: usize,
    ) -> Result<Option<Array>> {
        match self
            .matcher
            .next_bias(&mut self.bias, stop_ids, tokens_left)
        {
            Ok(MaskStep::Sample) => {
                let v = self.bias.len() as i32;
                Ok(Some(Array::from_slice(&self.bias, &[1, v])))
            }
            Ok(MaskStep::Finish) => {
                self.finish_next = true;
                Ok(None)
            }
            Err(e) => {
                warn!(seq, error = %e, "grammar matcher failed; ending the sequence");
                self.finish_next = true;
                Ok(None)
            }
        }
    }

    /// The grammar was closed early because the token limit was near.
    pub fn closed_for_limit(&self) -> bool {
        self.matcher.closed_for_limit()
    }

    /// Commits the sampled token; a token the grammar rejects (it cannot happen when the
    /// mask was applied) ends the sequence after this token.
    pub fn accept(&mut self, seq: SeqId, token: u32) {
        if let Err(e) = self.matcher.accept(token) {
            warn!(seq, token, error = %e, "grammar rejected a sampled token; ending the sequence");
            self.finish_next = true;
        }
    }
}

/// The token that ends a constrained sequence in place of a sample: the request's first stop
/// id (0 when it has none; the event is marked finished either way).
pub(super) fn end_token(stop_ids: &[u32]) -> Array {
    Array::from_slice(&[stop_ids.first().copied().unwrap_or(0)], &[1])
}
