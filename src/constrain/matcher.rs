//! [`Constrainer`] (grammars compiled against one tokenizer; built once, shared) and
//! [`GrammarMatcher`] (one sequence's position in its grammar: the next mask, the sampled
//! token, completion).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::SimpleVob;
use llguidance::{Matcher, ParserFactory};

use super::closing::{Nesting, Vocabulary};
use super::tokenv::{tok_env, token_bytes};
use super::{ConstrainError, Grammar};

/// Compiles [`Grammar`]s for one tokenizer. Building it indexes the vocabulary (tens of
/// milliseconds to a second); clones share it.
#[derive(Clone)]
pub struct Constrainer {
    factory: Arc<ParserFactory>,
    /// Real token ids are below this; the mask bit at this id is the grammar's EOS.
    n_tokens: usize,
    /// What closing before the token limit needs (see [`super::closing`]).
    vocab: Arc<Vocabulary>,
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
        let vocab = Vocabulary::new(&tokens);
        let env = tok_env(tokens, hf);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstrainError::Tokenizer(e.to_string()))?;
        factory.quiet();
        Ok(Constrainer {
            factory: Arc::new(factory),
            n_tokens,
            vocab,
        })
    }

    /// The number of real token ids the masks cover.
    pub fn vocab_size(&self) -> usize {
        self.n_tokens
    }

    /// A fresh matcher at the start of `grammar`.
    pub fn matcher(&self, grammar: &Grammar) -> Result<GrammarMatcher, ConstrainError> {
        let free_text = grammar.free_text_first();
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
            vocab: self.vocab.clone(),
            nesting: Nesting::default(),
            closed: false,
            free_text,
        })
    }
}

/// One sequence's progress through its grammar.
pub struct GrammarMatcher {
    matcher: Matcher,
    n_tokens: usize,
    vocab: Arc<Vocabulary>,
    /// The JSON nesting of what was accepted so far.
    nesting: Nesting,
    /// The closing mode has narrowed a mask: the reply ends because of the token limit.
    closed: bool,
    /// The reply is still free text ([`Grammar::free_text_first`], and the grammar could end
    /// at every token so far): the limit may cut it anywhere, so it is not ended early. A call
    /// the limit then cuts is dropped from the reply (`ToolParser::finish_cut`).
    free_text: bool,
}

impl GrammarMatcher {
    /// Writes the mask for the next token into `bias` (one entry per model vocabulary id:
    /// 0.0 allowed, -inf not; ids past the tokenizer's vocabulary are never allowed) and
    /// allows the request's `stop_ids` exactly when the grammar may end here. With only
    /// `tokens_left` tokens to go, JSON is closed instead of continued ([`super::closing`]).
    pub fn next_bias(
        &mut self,
        bias: &mut [f32],
        stop_ids: &[u32],
        tokens_left: usize,
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
        self.free_text &= may_end;
        for &s in stop_ids {
            if let Some(slot) = bias.get_mut(s as usize) {
                *slot = if may_end { 0.0 } else { f32::NEG_INFINITY };
            }
        }
        if any_token && !self.free_text && self.must_close(tokens_left) {
            if may_end {
                // The shortest way to a valid reply: end it here.
                self.closed = true;
                return Ok(MaskStep::Finish);
            }
            self.narrow_to_closers(bias);
        }
        match (any_token, may_end) {
            (true, _) => Ok(MaskStep::Sample),
            (false, true) => Ok(MaskStep::Finish),
            (false, false) => Err(ConstrainError::Matcher(
                "the grammar allows no token of this model's vocabulary here".into(),
            )),
        }
    }

    /// Whether the tokens left are only just enough to reach the grammar's end. Not when the
    /// probe finds no way to the end in time: closers that do not lead there (a closing tag
    /// written inside a custom grammar's text) would only bend the reply.
    fn must_close(&mut self, tokens_left: usize) -> bool {
        if self.closed {
            // Committed: half a closing tag is worse than none.
            return true;
        }
        if tokens_left > self.nesting.reserve() + PROBE_WINDOW {
            return false;
        }
        if tokens_left <= self.nesting.reserve() && self.nesting.json_open() {
            // JSON's closers always lead to its end; the probe may overestimate forced text.
            return true;
        }
        let cap = tokens_left + 1;
        let cost = self.closing_cost(cap);
        // The probe's token, then the end, must fit; one token of slack for the model's
        // own choices where no closer is allowed.
        cost < cap && (tokens_left <= self.nesting.reserve() || cost + 2 >= tokens_left)
    }

    /// Tokens the shortest-looking way to the grammar's end takes from here (an allowed closer
    /// if any, else the first allowed token), up to `cap`; the matcher is left as it was.
    fn closing_cost(&mut self, cap: usize) -> usize {
        let mut used = 0;
        let mut cost = cap;
        let mut at = self.nesting;
        while used < cap {
            if self.matcher.is_stopped() {
                cost = used;
                break;
            }
            let Ok(mask) = self.matcher.compute_mask() else {
                break;
            };
            if mask.is_allowed(self.n_tokens as u32) {
                cost = used;
                break;
            }
            let pick = self
                .vocab
                .pick_closer(&at, |id| mask.is_allowed(id))
                .or_else(|| first_allowed(&mask, self.n_tokens));
            let Some(token) = pick else {
                break;
            };
            if self.matcher.consume_token(token).is_err() {
                break;
            }
            at.push(&self.vocab, token);
            used += 1;
        }
        if used > 0 {
            let _ = self.matcher.rollback(used);
        }
        cost
    }

    /// Keeps only the allowed closers, when there is one; where a closing tag is being
    /// written, only the token that writes most of it.
    fn narrow_to_closers(&mut self, bias: &mut [f32]) {
        let at = self.nesting;
        let allowed = |id: u32| bias.get(id as usize) == Some(&0.0);
        if let Some(tag) = self.vocab.pick_tag_writer(&at, allowed) {
            for (id, b) in bias.iter_mut().enumerate() {
                if id != tag as usize {
                    *b = f32::NEG_INFINITY;
                }
            }
            self.closed = true;
            return;
        }
        let allowed = |(id, b): (usize, &f32)| *b == 0.0 && self.vocab.closes(id, &at);
        if !bias.iter().enumerate().any(allowed) {
            return;
        }
        for (id, b) in bias.iter_mut().enumerate() {
            if *b == 0.0 && !self.vocab.closes(id, &at) {
                *b = f32::NEG_INFINITY;
            }
        }
        self.closed = true;
    }

    /// Whether the reply was closed early for the token limit.
    pub fn closed_for_limit(&self) -> bool {
        self.closed
    }

    /// Advances past the sampled `token`.
    pub fn accept(&mut self, token: u32) -> Result<(), ConstrainError> {
        self.nesting.push(&self.vocab, token);
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

/// How close to the limit (beyond the nesting's reserve) the closing probe starts running.
const PROBE_WINDOW: usize = 32;

/// The lowest allowed real token id.
fn first_allowed(mask: &SimpleVob, n_tokens: usize) -> Option<u32> {
    mask.as_slice().iter().enumerate().find_map(|(i, &w)| {
        (w != 0)
            .then(|| i as u32 * 32 + w.trailing_zeros())
            .filter(|&id| (id as usize) < n_tokens)
    })
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
