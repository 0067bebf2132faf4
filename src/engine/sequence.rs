//! One sequence's own state, wherever it is (being prefilled, or a row of a decode batch):
//! its request, logits processors, sampler, grammar matcher, the tokens its caches hold,
//! and the sampling of its next token from its row of logits.

use mlx_rs::ops::indexing::{take_along_axis, TryIndexOp};
use mlx_rs::{ops, Array, Dtype};

use super::constrained::{self, SeqConstraint};
use super::sampling::{LogitsProcessor, Sampler};
use super::{FinishReason, SeqId, SequenceRequest, TokenEvent};
use crate::model::Result;

/// What a queued sample carries besides the token, for its event: built with the sample,
/// before the next step is queued (an op created after that would run behind the next
/// forward on the device's in-order stream, and reading it would wait for it).
#[derive(Default)]
pub(super) struct Extras {
    /// The sampled token's log-probability `[1]` f32, when the request wants logprobs.
    logprob: Option<Array>,
    /// The most likely ids and their log-probabilities (unordered), when wanted.
    top: Option<(Array, Array)>,
}

impl Extras {
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = self.logprob.iter().collect();
        v.extend(self.top.iter().flat_map(|(i, l)| [i, l]));
        v
    }
}

/// A queued sample: the id `[1]` uint32 and its extras.
pub(super) struct Sampled {
    pub token: Array,
    pub extras: Extras,
}

impl Sampled {
    /// A token that was not sampled (the end of a completed grammar).
    fn fixed(token: Array) -> Self {
        Sampled {
            token,
            extras: Extras::default(),
        }
    }

    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.token];
        v.extend(self.extras.arrays());
        v
    }
}

pub(super) struct Sequence {
    pub id: SeqId,
    pub req: SequenceRequest,
    /// Prompt + generated ids (int32, 1-D, last entry possibly lazy); only kept when a
    /// processor needs it.
    pub history: Option<Array>,
    pub processors: Vec<Box<dyn LogitsProcessor>>,
    pub sampler: Sampler,
    pub constraint: Option<SeqConstraint>,
    pub generated: usize,
    /// The ids whose keys and values the caches hold, in order (for the prefix cache).
    pub fed: Vec<u32>,
    /// Prompt tokens that came from the prefix cache.
    pub cached: usize,
    /// The extras of the token now pending (read with it).
    pub extras: Extras,
    pub prompt_logits: Option<Array>,
    /// Draft tokens proposed for this sequence, and kept (speculative decoding).
    pub drafted: usize,
    pub accepted: usize,
    /// The pending token's event is already out: a fresh batch reports its first tokens
    /// before queuing any forward ([`super::batch::Batch::report_first`]).
    pub reported: bool,
}

impl Sequence {
    /// Greedy with nothing per row to compute: a batch of only such rows samples with one
    /// argmax.
    pub fn plain_greedy(&self) -> bool {
        let p = &self.req.params;
        p.greedy()
            && self.processors.is_empty()
            && self.constraint.is_none()
            && !p.logprobs
            && p.top_logprobs == 0
            && !self.req.return_prompt_logits
    }

    /// Whether the pending token is this sequence's last (it needs no next sample).
    pub fn ends_now(&self) -> bool {
        let ending = self.constraint.as_ref().is_some_and(|c| c.finish_next);
        self.generated + 1 >= self.req.max_tokens || ending
    }

    /// The row's `logits` `[1, V]` after the forward that read `input` (`[1]` or `[1, 1]`;
    /// `None` for the prompt's last token, already in the history): history updated.
    pub fn observe(&mut self, input: Option<&Array>) -> Result<()> {
        if let (Some(hist), Some(input)) = (self.history.as_mut(), input) {
            *hist = ops::concatenate(&[&*hist, &input.reshape(&[-1])?.as_dtype(Dtype::Int32)?], 0)?;
        }
        Ok(())
    }

    /// Samples the next token from `logits` `[1, V]`: processors, then (constrained) the
    /// grammar's mask, computed here on the host while the forward behind `logits` runs, or
    /// the sequence's end when the grammar is complete.
    pub fn sample(&mut self, logits: Array) -> Result<Sampled> {
        let mask = match self.constraint.as_mut() {
            // The token sampled here is number `generated + 1`; the end needs one more.
            Some(c) => match c.next_mask(
                self.id,
                &self.req.stop_ids,
                self.req.max_tokens.saturating_sub(self.generated + 1),
            )? {
                Some(mask) => Some(mask),
                None => return Ok(Sampled::fixed(constrained::end_token(&self.req.stop_ids))),
            },
            None => None,
        };
        let mut logits = logits;
        if let Some(hist) = self.history.as_ref() {
            for p in self.processors.iter_mut() {
                logits = p.process(hist, &logits)?;
            }
        }
        if let Some(mask) = mask {
            logits = logits.add(mask.as_dtype(logits.dtype())?)?;
        }
        let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
        let token = self.sampler.sample(&logprobs)?;
        let params = &self.req.params;
        let flat = match params.logprobs || params.top_logprobs > 0 {
            true => Some(logprobs.reshape(&[-1])?.as_dtype(Dtype::Float32)?),
            false => None,
        };
        let mut extras = Extras::default();
        if let Some(lp) = &flat {
            if params.logprobs {
                extras.logprob = Some(take_along_axis(lp, &token.as_dtype(Dtype::Int32)?, 0)?);
            }
            if params.top_logprobs > 0 {
                let k = (params.top_logprobs as i32).min(lp.shape()[0]);
                let ids = ops::argpartition_axis(&lp.negative()?, k - 1, 0)?.try_index(..k)?;
                let values = take_along_axis(lp, &ids, 0)?;
                extras.top = Some((ids, values));
            }
        }
        Ok(Sampled { token, extras })
    }

    /// Commits `token` (read from the device) to the grammar, if any.
    pub fn accept(&mut self, token: u32) {
        if let Some(c) = self.constraint.as_mut() {
            c.accept(self.id, token);
        }
    }

    /// The event of the pending token, now read as `token`; only arrays built with that
    /// token are read here, so no new op is queued.
    pub fn event(&mut self, token: u32) -> Result<TokenEvent> {
        self.generated += 1;
        let (mut logprob, mut top) = (None, Vec::new());
        let grammar_end = self.constraint.as_ref().is_some_and(|c| c.finish_next);
        let extras = std::mem::take(&mut self.extras);
        if grammar_end {
            // Not sampled: the grammar left nothing else (probability 1).
            logprob = self.req.params.logprobs.then_some(0.0);
            if self.req.params.top_logprobs > 0 {
                top.push((token, 0.0));
            }
        } else {
            if let Some(lp) = &extras.logprob {
                logprob = Some(lp.try_item_exact::<f32>()?);
            }
            if let Some((ids, values)) = &extras.top {
                ids.eval()?;
                values.eval()?;
                top = ids
                    .as_slice::<u32>()
                    .iter()
                    .copied()
                    .zip(values.as_slice::<f32>().iter().copied())
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
            }
        }
        let prompt_logits = match self.prompt_logits.take() {
            Some(a) => {
                let a = a.reshape(&[-1])?.as_dtype(Dtype::Float32)?;
                a.eval()?;
                Some(a.as_slice::<f32>().to_vec())
            }
            None => None,
        };
        let closed_for_limit = self
            .constraint
            .as_ref()
            .is_some_and(|c| c.closed_for_limit());
        let is_end = grammar_end || self.req.stop_ids.contains(&token);
        let finish = if grammar_end && closed_for_limit {
            // Closed early so that it parses: still a reply the limit cut.
            Some(FinishReason::Length)
        } else if grammar_end || self.req.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated >= self.req.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        if finish.is_some() && self.drafted > 0 {
            tracing::debug!(
                seq = self.id,
                drafted = self.drafted,
                accepted = self.accepted,
                rate = self.accepted as f64 / self.drafted as f64,
                "speculation"
            );
        }
        Ok(TokenEvent {
            seq: self.id,
            token,
            logprob,
            top_logprobs: top,
            finish,
            is_end,
            prompt_logits,
            cached_tokens: (self.generated == 1).then_some(self.cached),
        })
    }
}
