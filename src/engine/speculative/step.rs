//! The verify step of a decode batch: every row reads its pending token and its drafts in
//! ONE forward (`[B, 1 + width]`, shorter drafts padded), the rows that speculate keep the
//! drafts their sampler agrees with, and what was not kept is dropped from the caches.
//!
//! Unlike a plain step (`batch.rs`), which queues the next forward before reading the
//! current tokens, this one must read them first: the drafts continue them.

use mlx_rs::ops::indexing::argmax_axis;
use mlx_rs::{transforms, Array};

use super::{
    greedy_verdict, ngram, DraftModel, SpeculationConfig, SpeculationStats, Verdict, Verification,
};
use crate::engine::batch::{concat_tokens, Batch};
use crate::engine::prefix_cache::PrefixCache;
use crate::engine::sequence::{Sampled, Sequence};
use crate::engine::TokenEvent;
use crate::model::slicing::slice_axis;
use crate::model::{LanguageModel, Result};

/// What the step queued for one row.
enum Queued {
    /// Greedy verdicts of an all-greedy batch, read at once for every row.
    Read(Verdict),
    /// A row that speculates (its drafts possibly empty).
    Verify(Verification),
    /// A row that cannot speculate, sampled from its first position as in a plain step.
    Sample(Sampled),
}

impl Sequence {
    /// Nothing but its sampler decides this sequence's tokens (no grammar, processors or
    /// logprobs), so it can keep draft tokens.
    pub(in crate::engine) fn can_speculate(&self) -> bool {
        let p = &self.req.params;
        self.processors.is_empty()
            && self.constraint.is_none()
            && !p.logprobs
            && p.top_logprobs == 0
    }
}

impl Batch {
    /// Whether some row could keep draft tokens.
    pub fn any_speculates(&self) -> bool {
        self.rows.iter().any(Sequence::can_speculate)
    }

    /// One verify step for every row (see the module doc); finished rows leave (into
    /// `prefix`).
    pub fn step_speculative(
        &mut self,
        model: &dyn LanguageModel,
        mut prefix: Option<&mut PrefixCache>,
        mut draft: Option<&mut DraftModel>,
        config: &SpeculationConfig,
        stats: &mut SpeculationStats,
    ) -> Result<Vec<TokenEvent>> {
        // The pending tokens, read first: their events, and the rows they end leave.
        self.tokens.eval()?;
        let read: Vec<u32> = self.tokens.as_slice::<u32>().to_vec();
        let mut events = Vec::with_capacity(self.rows.len());
        let mut keep = Vec::with_capacity(self.rows.len());
        for (i, seq) in self.rows.iter_mut().enumerate() {
            seq.fed.push(read[i]);
            let ev = seq.event(read[i])?;
            if ev.finish.is_none() {
                keep.push(i);
            }
            events.push(ev);
        }
        let pending: Vec<u32> = keep.iter().map(|&i| read[i]).collect();
        if keep.len() < self.rows.len() {
            self.retain(&keep, true, prefix.as_deref_mut(), draft.as_deref_mut())?;
            if self.rows.is_empty() {
                return Ok(events);
            }
        }

        // Drafts, within what each row may still generate: the draft model's (as many for
        // every row, `k`, as the roomiest speculating row takes), else prompt lookup's.
        let room = |seq: &Sequence| {
            let left = seq.req.max_tokens.saturating_sub(seq.generated + 1);
            config.draft_tokens.min(left)
        };
        let mut modelled = None;
        if let (Some(d), Some(caches)) = (draft.as_deref(), self.draft.as_mut()) {
            let rows = self.rows.iter().filter(|s| s.can_speculate());
            let k = rows.map(room).max().unwrap_or(0);
            let vocab = model.config().vocab_size.max(0) as usize;
            modelled = Some((k, d.propose(&pending, k, vocab, caches)?));
        }
        let drafts: Vec<Option<Vec<u32>>> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                seq.can_speculate().then(|| match &modelled {
                    Some((_, all)) => all[i][..all[i].len().min(room(seq))].to_vec(),
                    None => ngram::draft(&seq.fed, config, room(seq)),
                })
            })
            .collect();
        let width = drafts.iter().flatten().map(Vec::len).max().unwrap_or(0);

        // One forward: each row's pending token, its drafts, then copies of the pending
        // token up to `width` (dropped below like rejected drafts).
        let (b, n) = (self.rows.len() as i32, width as i32 + 1);
        let mut input = Vec::with_capacity((b * n) as usize);
        for (i, d) in drafts.iter().enumerate() {
            let d = d.as_deref().unwrap_or(&[]);
            input.push(pending[i]);
            input.extend_from_slice(d);
            input.extend(std::iter::repeat_n(pending[i], width - d.len()));
        }
        let input = Array::from_slice(&input, &[b, n]);
        let logits = model.forward(&input, &mut self.caches)?;
        let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;

        let all_greedy = self
            .rows
            .iter()
            .all(|s| s.can_speculate() && s.req.params.greedy());
        let mut queued = Vec::with_capacity(self.rows.len());
        if all_greedy {
            // As each row would alone: the argmax of its log-probabilities, one read.
            let ids = argmax_axis(&logprobs, -1, false)?;
            ids.eval()?;
            let ids = ids.as_slice::<u32>();
            for (i, d) in drafts.iter().enumerate() {
                let row = &ids[i * n as usize..(i + 1) * n as usize];
                queued.push(Queued::Read(greedy_verdict(
                    row,
                    d.as_deref().unwrap_or(&[]),
                )));
            }
        } else {
            for (i, (seq, d)) in self.rows.iter_mut().zip(&drafts).enumerate() {
                let i = i as i32;
                match d {
                    Some(d) => {
                        let rows = slice_axis(&logprobs, 0, i, i + 1)?.reshape(&[n, -1])?;
                        let rows = slice_axis(&rows, 0, 0, d.len() as i32 + 1)?;
                        let v = seq.sampler.verify(&rows, d)?;
                        transforms::async_eval(v.arrays())?;
                        queued.push(Queued::Verify(v));
                    }
                    None => {
                        let token = pending[i as usize];
                        seq.observe(Some(&Array::from_slice(&[token], &[1])))?;
                        seq.accept(token);
                        let row = slice_axis(&logits, 0, i, i + 1)?.reshape(&[n, -1])?;
                        let s = seq.sample(slice_axis(&row, 0, 0, 1)?)?;
                        transforms::async_eval(s.arrays())?;
                        queued.push(Queued::Sample(s));
                    }
                }
            }
        }

        // Standing drafts become events; each row's next token is pending.
        let mut next = Vec::with_capacity(self.rows.len());
        let mut dropped = Vec::with_capacity(self.rows.len());
        let mut stood_per_row = Vec::with_capacity(self.rows.len());
        let mut keep = Vec::with_capacity(self.rows.len());
        for (i, (seq, q)) in self.rows.iter_mut().zip(queued).enumerate() {
            let d = drafts[i].as_deref().unwrap_or(&[]);
            let verdict = match q {
                Queued::Read(v) => v,
                Queued::Verify(v) => v.verdict(d)?,
                Queued::Sample(s) => {
                    seq.extras = s.extras;
                    next.push(s.token);
                    dropped.push(width as i32);
                    stood_per_row.push(0);
                    keep.push(i);
                    continue;
                }
            };
            stats.drafted += d.len() as u64;
            stats.accepted += verdict.accepted as u64;
            seq.drafted += d.len();
            seq.accepted += verdict.accepted;
            let mut stood = 0;
            let mut finished = false;
            for &token in &d[..verdict.accepted] {
                seq.fed.push(token);
                let ev = seq.event(token)?;
                stood += 1;
                finished = ev.finish.is_some();
                events.push(ev);
                if finished {
                    break;
                }
            }
            dropped.push((width - stood) as i32);
            stood_per_row.push(stood);
            if !finished {
                keep.push(i);
                next.push(Array::from_slice(&[verdict.next], &[1]));
            }
        }
        stats.steps += 1;
        if width > 0 {
            for c in self.caches.iter_mut() {
                c.drop_tail(&dropped)?;
            }
        }
        // The draft read `k` drafts after every pending token: it drops what was not kept.
        if let (Some((k, _)), Some(caches)) = (&modelled, self.draft.as_mut()) {
            if *k > 0 {
                let dropped: Vec<i32> = stood_per_row.iter().map(|&s| (k - s) as i32).collect();
                for c in caches.iter_mut() {
                    c.drop_tail(&dropped)?;
                }
            }
        }
        self.tokens = match next.is_empty() {
            true => Array::from_slice::<u32>(&[], &[0]),
            false => concat_tokens(next)?,
        };
        if keep.len() < self.rows.len() {
            self.retain(&keep, false, prefix, draft)?;
        }
        Ok(events)
    }
}
