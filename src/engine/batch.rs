//! The decode batch: every decoding sequence advances in one batched forward per step.
//!
//! The rows share one cache per layer (left-padded, see `model/cache/rows.rs`) and one
//! token array `[B]`. A step queues the next forward for all rows, fed with the still-lazy
//! current tokens, builds every row's next sample (one argmax when every row is plain
//! greedy, otherwise each row samples its own slice of the logits with its own
//! processors, seed and grammar), and only then reads the current tokens, so the device
//! computes step n+1 while the host handles token n. Rows join between steps (their
//! prefilled caches merged in) and leave as soon as they finish or are cancelled; what
//! leaves goes to the prefix cache.

use mlx_rs::ops::indexing::argmax_axis;
use mlx_rs::{ops, transforms, Array};

use super::prefix_cache::PrefixCache;
use super::sequence::{Sampled, Sequence};
use super::speculative::DraftModel;
use super::{SeqId, TokenEvent};
use crate::model::slicing::slice_axis;
use crate::model::{LanguageModel, LayerCache, Result};

/// A prefilled sequence ready to join: its caches and its first sample (queued).
pub(super) struct Ready {
    pub seq: Sequence,
    pub caches: Vec<LayerCache>,
    pub first: Sampled,
    /// The draft model's caches holding the prompt, when there is a draft model.
    pub draft: Option<Vec<LayerCache>>,
}

pub(super) struct Batch {
    pub(super) rows: Vec<Sequence>,
    pub(super) caches: Vec<LayerCache>,
    /// Every row's pending token, uint32 `[B]` (lazy until read).
    pub(super) tokens: Array,
    /// The draft model's caches, row for row with `caches` (speculative decoding with a
    /// draft model): they hold the same tokens.
    pub(super) draft: Option<Vec<LayerCache>>,
}

/// Merges per-row (or per-batch) caches layer by layer.
fn merge_layers(parts: Vec<Vec<LayerCache>>) -> Result<Vec<LayerCache>> {
    let mut layers: Vec<Vec<LayerCache>> = Vec::new();
    for caches in parts {
        if layers.is_empty() {
            layers = caches.iter().map(|_| Vec::new()).collect();
        }
        for (layer, c) in layers.iter_mut().zip(caches) {
            layer.push(c);
        }
    }
    layers.into_iter().map(LayerCache::merge).collect()
}

/// What a step queued for one row before reading its current token.
enum Next {
    /// Nothing: the row ends with the current token.
    Nothing,
    /// Sampled (unconstrained).
    Sampled(Sampled),
    /// Only the logits; the sample waits for the grammar's mask.
    Logits(Array),
}

impl Batch {
    /// A batch of the `ready` sequences (at least one).
    pub fn new(ready: Vec<Ready>) -> Result<Self> {
        let mut rows = Vec::with_capacity(ready.len());
        let mut caches = Vec::with_capacity(ready.len());
        let mut drafts = Some(Vec::with_capacity(ready.len()));
        let mut tokens = Vec::with_capacity(ready.len());
        for r in ready {
            caches.push(r.caches);
            match (r.draft, drafts.as_mut()) {
                (Some(d), Some(all)) => all.push(d),
                _ => drafts = None,
            }
            let mut seq = r.seq;
            seq.extras = r.first.extras;
            tokens.push(r.first.token);
            rows.push(seq);
        }
        Ok(Batch {
            rows,
            caches: merge_layers(caches)?,
            tokens: concat_tokens(tokens)?,
            draft: drafts.map(merge_layers).transpose()?,
        })
    }

    /// Adds `ready` sequences as new rows (one copy of the caches).
    pub fn join(&mut self, ready: Vec<Ready>) -> Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let old = std::mem::replace(
            self,
            Batch {
                rows: Vec::new(),
                caches: Vec::new(),
                tokens: Array::from_int(0),
                draft: None,
            },
        );
        let mut joined = Batch::new(ready)?;
        let caches = merge_layers(vec![old.caches, std::mem::take(&mut joined.caches)])?;
        let draft = match (old.draft, joined.draft.take()) {
            (Some(a), Some(b)) => Some(merge_layers(vec![a, b])?),
            _ => None,
        };
        let mut rows = old.rows;
        rows.append(&mut joined.rows);
        *self = Batch {
            rows,
            caches,
            tokens: concat_tokens(vec![old.tokens, joined.tokens])?,
            draft,
        };
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Positions the caches hold, padding included (what the batch costs).
    pub fn positions(&self) -> usize {
        let cap = self.caches.first().map(|c| c.capacity()).unwrap_or(0) as usize;
        cap * self.rows.len()
    }

    /// One decode step for every row: queue every next forward and sample, then read every
    /// current token. Finished rows leave (into `prefix`).
    pub fn step(
        &mut self,
        model: &dyn LanguageModel,
        prefix: Option<&mut PrefixCache>,
        draft: Option<&mut DraftModel>,
    ) -> Result<Vec<TokenEvent>> {
        let b = self.rows.len() as i32;
        let input = self.tokens.reshape(&[b, 1])?;
        let logits = model.forward(&input, &mut self.caches)?;
        if let (Some(d), Some(caches)) = (draft.as_deref(), self.draft.as_mut()) {
            d.follow(&input, caches)?;
        }
        let logits = logits.reshape(&[b, -1])?;
        let greedy = self.rows.iter().all(Sequence::plain_greedy);
        let mut next: Vec<Next> = Vec::with_capacity(self.rows.len());
        let mut next_tokens = None;
        if greedy {
            // As each row would alone: argmax of the log-probabilities.
            let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
            let t = argmax_axis(&logprobs, -1, false)?;
            transforms::async_eval([&t])?;
            next_tokens = Some(t);
        } else {
            for (i, seq) in self.rows.iter_mut().enumerate() {
                if !seq.reported && seq.ends_now() {
                    next.push(Next::Nothing);
                    continue;
                }
                let i = i as i32;
                let row = slice_axis(&logits, 0, i, i + 1)?;
                seq.observe(Some(&slice_axis(&self.tokens, 0, i, i + 1)?))?;
                if seq.constraint.is_some() {
                    transforms::async_eval([&row])?;
                    next.push(Next::Logits(row));
                } else {
                    let s = seq.sample(row)?;
                    transforms::async_eval(s.arrays())?;
                    next.push(Next::Sampled(s));
                }
            }
        }
        // Now read the current tokens (the next forward is already queued).
        self.tokens.eval()?;
        let current: Vec<u32> = self.tokens.as_slice::<u32>().to_vec();
        let mut events = Vec::with_capacity(self.rows.len());
        let mut keep = Vec::with_capacity(self.rows.len());
        let mut next_rows: Vec<Array> = Vec::new();
        let mut next = next.into_iter();
        for (i, seq) in self.rows.iter_mut().enumerate() {
            let token = current[i];
            seq.fed.push(token);
            // A reported token's event is out, and it did not end its row.
            let done = match std::mem::take(&mut seq.reported) {
                true => false,
                false => {
                    let ev = seq.event(token)?;
                    let done = ev.finish.is_some();
                    events.push(ev);
                    done
                }
            };
            let n = next.next();
            if done {
                continue;
            }
            keep.push(i);
            match n {
                None => {}
                Some(Next::Sampled(s)) => {
                    seq.extras = s.extras;
                    next_rows.push(s.token);
                }
                Some(Next::Logits(row)) => {
                    seq.accept(token);
                    let s = seq.sample(row)?;
                    transforms::async_eval(s.arrays())?;
                    seq.extras = s.extras;
                    next_rows.push(s.token);
                }
                Some(Next::Nothing) => unreachable!("a row that ends now is done"),
            }
        }
        let next_tokens = match next_tokens {
            Some(t) => t,
            None if next_rows.is_empty() => Array::from_slice::<u32>(&[], &[0]),
            None => concat_tokens(next_rows)?,
        };
        let all = next_tokens.shape()[0] as usize == self.rows.len();
        self.tokens = next_tokens;
        if keep.len() < self.rows.len() {
            self.retain(&keep, all, prefix, draft)?;
        }
        Ok(events)
    }

    /// Reads every row's pending token and reports it without queuing a forward (a fresh
    /// batch, nothing else decoding: the first tokens come a forward's host time sooner).
    /// Rows that end with it leave; the next [`Batch::step`] feeds the others' tokens (whose
    /// keys and values it writes) without reporting them again.
    pub fn report_first(&mut self, prefix: Option<&mut PrefixCache>) -> Result<Vec<TokenEvent>> {
        self.tokens.eval()?;
        let current: Vec<u32> = self.tokens.as_slice::<u32>().to_vec();
        let mut events = Vec::with_capacity(self.rows.len());
        let mut keep = Vec::with_capacity(self.rows.len());
        for (i, seq) in self.rows.iter_mut().enumerate() {
            let ev = seq.event(current[i])?;
            if ev.finish.is_none() {
                seq.reported = true;
                keep.push(i);
            }
            events.push(ev);
        }
        if keep.len() < self.rows.len() {
            self.retain(&keep, true, prefix, None)?;
        }
        Ok(events)
    }

    /// Drops sequence `id` (its cached positions go to `prefix`); true if it was here.
    pub fn cancel(
        &mut self,
        id: SeqId,
        prefix: Option<&mut PrefixCache>,
        draft: Option<&mut DraftModel>,
    ) -> Result<bool> {
        let Some(pos) = self.rows.iter().position(|s| s.id == id) else {
            return Ok(false);
        };
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&i| i != pos).collect();
        self.retain(&keep, true, prefix, draft)?;
        Ok(true)
    }

    /// Keeps rows `keep`; the others' positions are offered to `prefix` (and the draft
    /// model's to its own). `tokens_all_rows`: whether `self.tokens` still has an entry for
    /// every row (else only the kept ones).
    pub(super) fn retain(
        &mut self,
        keep: &[usize],
        tokens_all_rows: bool,
        mut prefix: Option<&mut PrefixCache>,
        mut draft: Option<&mut DraftModel>,
    ) -> Result<()> {
        for (i, seq) in self.rows.iter().enumerate() {
            if keep.contains(&i) {
                continue;
            }
            if let Some(cache) = prefix.as_deref_mut() {
                cache.offer(&self.caches, i, &seq.fed)?;
            }
            if let (Some(d), Some(caches)) = (draft.as_deref_mut(), self.draft.as_ref()) {
                d.offer(caches, i, &seq.fed)?;
            }
        }
        if tokens_all_rows && !keep.is_empty() {
            let idx: Vec<i32> = keep.iter().map(|&i| i as i32).collect();
            self.tokens = self
                .tokens
                .take_axis(Array::from_slice(&idx, &[idx.len() as i32]), 0)?;
        }
        let mut i = 0;
        self.rows.retain(|_| {
            i += 1;
            keep.contains(&(i - 1))
        });
        if !self.rows.is_empty() {
            for c in self
                .caches
                .iter_mut()
                .chain(self.draft.iter_mut().flatten())
            {
                c.retain_rows(keep)?;
            }
        }
        Ok(())
    }
}

pub(super) fn concat_tokens(tokens: Vec<Array>) -> Result<Array> {
    if tokens.len() == 1 {
        return Ok(tokens
            .into_iter()
            .next()
            .unwrap_or_else(|| Array::from_int(0)));
    }
    Ok(ops::concatenate(&tokens, 0)?)
}
