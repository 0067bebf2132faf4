//! [`Constrainer`] (grammars compiled against one tokenizer; built once, shared) and
//! [`GrammarMatcher`] (one sequence's position in its grammar: the next mask, the sampled
//! token, completion).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};

use super::tokenv::{tok_env, token_bytes};
use super::{ConstrainError, Grammar};

/// Compiles [`Grammar`]s for one tokenizer. Building it indexes the vocabulary (tens of
/// milliseconds to a second); clones share it.
#[derive(Clone)]
pub struct Constrainer {
    factory: Arc<ParserFactory>,
    /// Real token ids are below this; the mask bit at this id is the grammar's EOS.
    n_tokens: usize,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer")
            .field("n_tokens", &self.n_tokens)
            .finish()
    }
}

/// What the sequence does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskStep {
    /// Sample with the mask just written.
    Sample,
    /// The grammar is complete and only the end remains: finish the sequence (as if EOS
    /// had been sampled).
    Finish,
}

impl Constrainer {
    /// For the model's tokenizer.
    pub fn new(tokenizer: &crate::tokenizer::Tokenizer) -> Result<Self, ConstrainError> {
        let hf = tokenizer.hf();
        Self::from_token_bytes(token_bytes(hf)?, Some(hf.clone()))
    }

    /// For a vocabulary given as the bytes of each token (special ones prefixed with 0xFF).
    pub(crate) fn from_token_bytes(
        tokens: Vec<Vec<u8>>,
        hf: Option<tokenizers::Tokenizer>,
    ) -> Result<Self, ConstrainError> {
        let n_tokens = tokens.len();
        let env = tok_env(tokens, hf);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstrainError::Tokenizer(e.to_string()))?;
        factory.quiet();
        Ok(Constrainer {
            factory: Arc::new(factory),
            n_tokens,
        })
    }

    /// The number of real token ids the masks cover.
    pub fn vocab_size(&self) -> usize {
        self.n_tokens
    }

    /// A fresh matcher at the start of `grammar`.
    pub fn matcher(&self, grammar: &Grammar) -> Result<GrammarMatcher, ConstrainError> {
        let grammar = TopLevelGrammar::from_lark(grammar.lark().to_string());
        // Runs on the MLX thread: a compiler panic must not take the engine down.
        let matcher = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Matcher::new(self.factory.create_parser(grammar))
        }))
        .map_err(|_| ConstrainError::Matcher("the grammar compiler panicked".into()))?;
        if let Some(e) = matcher.get_error() {
            return Err(ConstrainError::Matcher(e));
        }
        Ok(GrammarMatcher {
            matcher,
            n_tokens: self.n_tokens,
        })
    }
}

/// One sequence's progress through its grammar.
pub struct GrammarMatcher {
    matcher: Matcher,
    n_tokens: usize,
}

impl GrammarMatcher {
    /// Writes the mask for the next token into `bias` (one entry per model vocabulary id:
    /// 0.0 allowed, -inf not; ids past the tokenizer's vocabulary are never allowed) and
    /// allows the request's `stop_ids` exactly when the grammar may end here.
    pub fn next_bias(
        &mut self,
        bias: &mut [f32],
        stop_ids: &[u32],
    ) -> Result<MaskStep, ConstrainError> {
        if self.matcher.is_stopped() {
            return self.stopped_or_error();
        }
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| ConstrainError::Matcher(e.to_string()))?;
        let any_token = fill_bias(&mask, self.n_tokens, bias);
        let may_end = mask.is_allowed(self.n_tokens as u32);
        for &s in stop_ids {
            if let Some(slot) = bias.get_mut(s as usize) {
                *slot = if may_end { 0.0 } else { f32::NEG_INFINITY };
            }
        }
        match (any_token, may_end) {
            (true, _) => Ok(MaskStep::Sample),
            (false, true) => Ok(MaskStep::Finish),
            (false, false) => Err(ConstrainError::Matcher(
                "the grammar allows no token of this model's vocabulary here".into(),
            )),
        }
    }

    /// Advances past the sampled `token`.
    pub fn accept(&mut self, token: u32) -> Result<(), ConstrainError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstrainError::Matcher(e.to_string()))
    }

    /// Whether the grammar is complete with nothing more allowed.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    fn stopped_or_error(&self) -> Result<MaskStep, ConstrainError> {
        match self.matcher.get_error() {
            Some(e) => Err(ConstrainError::Matcher(e)),
            None => Ok(MaskStep::Finish),
        }
    }
}

/// Dense additive mask from llguidance's bit set, over the first `n_tokens` ids; the rest of
/// `bias` is -inf. Returns whether any token is allowed.
fn fill_bias(mask: &SimpleVob, n_tokens: usize, bias: &mut [f32]) -> bool {
    let words = mask.as_slice();
    let limit = n_tokens.min(bias.len());
    let mut any = false;
    for (i, chunk) in bias[..limit].chunks_mut(32).enumerate() {
        let live = if chunk.len() == 32 {
            u32::MAX
        } else {
            (1u32 << chunk.len()) - 1
        };
        let word = words.get(i).copied().unwrap_or(0) & live;
        any |= word != 0;
        if word == 0 {
            chunk.fill(f32::NEG_INFINITY);
        } else if word == u32::MAX {
            chunk.fill(0.0);
        } else {
            for (b, x) in chunk.iter_mut().enumerate() {
                *x = if word >> b & 1 == 1 {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
    }
    bias[limit..].fill(f32::NEG_INFINITY);
    any
}

#[cfg(test)]
#[path = "matcher_tests.rs"]
pub(crate) mod tests;
