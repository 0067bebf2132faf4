//! Reading prompts: each step prefills up to [`EngineConfig::prefill_chunk`] prompt tokens,
//! front of the queue first. A prompt's prefill starts by asking the prefix cache; a long
//! prompt is read in chunks over several steps. Prompts that start cold (no cached prefix)
//! and fit the step's budget together are read in ONE batched forward: left-padded rows
//! `[B, L]` in a rows cache (padding masked, per-row RoPE positions), the last position's
//! logits of every row sampled, and each row's keys and values taken out as the sequence's
//! own cache. A burst of new requests then costs one forward per step instead of one per
//! prompt (and one host sync).
//!
//! [`EngineConfig::prefill_chunk`]: super::EngineConfig::prefill_chunk

use mlx_rs::{transforms, Array};

use super::batch::Ready;
use super::{fresh_caches, Engine, Prefilling};
use crate::model::slicing::slice_axis;
use crate::model::{LayerCache, Result};

/// The first checkpoint after `done` (at most `head`, the end of the prefill).
fn next_checkpoint(checkpoints: &[usize], done: usize, head: usize) -> usize {
    checkpoints
        .iter()
        .copied()
        .find(|&c| c > done && c < head)
        .unwrap_or(head)
}

/// Most prompts one batched prefill reads.
const MAX_PREFILL_ROWS: usize = 16;

impl Engine {
    /// Prefills up to `prefill_chunk` prompt tokens, front of the queue first; returns the
    /// sequences whose prompt is done.
    pub(super) fn prefill(&mut self) -> Result<Vec<Ready>> {
        let mut budget = self.config.prefill_chunk.max(1);
        let mut ready = self.prefill_cold_batch(&mut budget)?;
        while budget > 0 {
            let Some(p) = self.prefilling.front_mut() else {
                break;
            };
            if p.caches.is_none() {
                let Some((caches, n)) = self.ask_prefix(0)? else {
                    // Its blocks are still being read: the batch decodes meanwhile.
                    break;
                };
                let Some(p) = self.prefilling.front_mut() else {
                    break;
                };
                p.done = n;
                p.seq.cached = n;
                p.caches = Some(caches);
                continue;
            }
            let prompt = &p.seq.req.prompt;
            let head = prompt.len() - 1;
            let Some(caches) = p.caches.as_mut() else {
                break;
            };
            if p.done < head {
                // A chunk ends at the next checkpoint, where the prefix cache takes the
                // recurrent state (it cannot be had later).
                let stop = match self.recurrent {
                    true => next_checkpoint(&p.seq.req.checkpoints, p.done, head),
                    false => head,
                };
                let n = budget.min(stop - p.done);
                let chunk = &prompt[p.done..p.done + n];
                let ids = Array::from_slice(chunk, &[1, n as i32]);
                let _ = self.model.forward(&ids, caches)?;
                transforms::eval(caches.iter().flat_map(|c| c.state()))?;
                // A long prompt's temporaries go back to the system, but not while a batch
                // decodes: its buffers would only be allocated again, every step.
                if self.batches.is_empty() {
                    mlx_rs::memory::clear_cache()?;
                }
                p.done += n;
                budget -= n;
                if self.recurrent && p.done == stop {
                    if let Some(prefix) = self.prefix.as_mut() {
                        prefix.offer(caches, 0, &p.seq.req.prompt[..p.done])?;
                    }
                }
                if p.done < head {
                    if budget > 0 {
                        continue;
                    }
                    break;
                }
            }
            let Some(p) = self.prefilling.pop_front() else {
                break;
            };
            ready.push(self.finish_prefill(p)?);
            budget = budget.saturating_sub(1);
        }
        Ok(ready)
    }

    /// The cold prompts at the front of the queue that fit `budget` together (padded to the
    /// longest), read in one batched forward; fewer than two: nothing (the loop above reads
    /// them). The prefix cache is asked first: a hit stops the run (that prompt starts from
    /// its cached prefix on its own).
    fn prefill_cold_batch(&mut self, budget: &mut usize) -> Result<Vec<Ready>> {
        if !self.batchable || self.recurrent {
            return Ok(Vec::new());
        }
        let mut take = 0;
        let mut longest = 0;
        for i in 0..self.prefilling.len().min(MAX_PREFILL_ROWS) {
            let p = &self.prefilling[i];
            if p.caches.is_some() || p.disk.is_some() {
                break;
            }
            let len = p.seq.req.prompt.len();
            if longest.max(len) * (take + 1) > *budget {
                break;
            }
            // Asked once: the cache is settled even if this prompt is read alone.
            let Some((caches, n)) = self.ask_prefix(i)? else {
                break;
            };
            let p = &mut self.prefilling[i];
            p.done = n;
            p.seq.cached = n;
            p.caches = Some(caches);
            if n > 0 {
                break;
            }
            longest = longest.max(len);
            take += 1;
        }
        if take < 2 {
            return Ok(Vec::new());
        }
        let rows: Vec<Prefilling> = self.prefilling.drain(..take).collect();
        // Right-padded: every row starts at position 0, so the causal mask alone keeps each
        // row's tokens from the padding after them.
        let mut ids = Vec::with_capacity(take * longest);
        for p in &rows {
            ids.extend_from_slice(&p.seq.req.prompt);
            ids.extend(std::iter::repeat_n(0u32, longest - p.seq.req.prompt.len()));
        }
        let ids = Array::from_slice(&ids, &[take as i32, longest as i32]);
        let mut caches = self.new_caches();
        let logits = self.model.forward(&ids, &mut caches)?;
        let v = logits.shape()[2];
        let mut lasts = Vec::with_capacity(take);
        for (b, p) in rows.iter().enumerate() {
            let at = p.seq.req.prompt.len() as i32 - 1;
            let row = slice_axis(
                &slice_axis(&logits, 0, b as i32, b as i32 + 1)?,
                1,
                at,
                at + 1,
            )?;
            lasts.push(row.reshape(&[1, v])?);
        }
        transforms::eval(caches.iter().flat_map(|c| c.state()).chain(lasts.iter()))?;
        *budget = budget.saturating_sub(take * longest);
        let mut ready = Vec::with_capacity(take);
        for ((b, p), row) in rows.into_iter().enumerate().zip(lasts) {
            let n = p.seq.req.prompt.len() as i32;
            let own = caches
                .iter()
                .map(|c| c.row_head(b, n))
                .collect::<Result<Vec<_>>>()?;
            ready.push(self.start_decoding(p.seq, own, row)?);
        }
        Ok(ready)
    }

    /// What the prefix cache holds for prefilling sequence `i`: caches and the positions they
    /// hold (fresh ones and 0 when nothing is cached); `None` while its blocks are read from
    /// disk on a thread of their own, which this waits for only when no batch is decoding.
    fn ask_prefix(&mut self, i: usize) -> Result<Option<(Vec<LayerCache>, usize)>> {
        let fresh = fresh_caches(self.model.as_ref(), &self.config);
        let wait = self.batches.is_empty();
        let (Some(prefix), Some(p)) = (self.prefix.as_mut(), self.prefilling.get_mut(i)) else {
            return Ok(Some((fresh, 0)));
        };
        let prompt = &p.seq.req.prompt;
        let hit = if !prefix.reads_in_background() {
            prefix.lookup(prompt, &fresh)?
        } else {
            if p.disk.is_none() {
                p.disk = prefix.start_disk_read(prompt);
            }
            match p.disk.as_ref().map(|read| read.poll(wait)) {
                None => prefix.lookup_memory(prompt, &fresh)?,
                Some(None) => return Ok(None),
                Some(Some(outcome)) => match p.disk.take() {
                    Some(read) => prefix.finish_disk_read(prompt, &fresh, read, outcome)?,
                    None => None,
                },
            }
        };
        Ok(Some(hit.unwrap_or((fresh, 0))))
    }

    /// The last prompt token: its logits, and the first sample queued.
    fn finish_prefill(&mut self, p: Prefilling) -> Result<Ready> {
        let Prefilling { seq, caches, .. } = p;
        let mut caches = caches.unwrap_or_else(|| self.new_caches());
        let prompt = &seq.req.prompt;
        let last = Array::from_slice(&prompt[prompt.len() - 1..], &[1, 1]);
        let logits = self.model.forward(&last, &mut caches)?;
        let v = logits.shape()[2];
        let row = logits.reshape(&[1, v])?;
        self.start_decoding(seq, caches, row)
    }

    /// A prefilled sequence's first sample from its last prompt position's logits `[1, V]`;
    /// its prompt is offered to the prefix cache.
    fn start_decoding(
        &mut self,
        mut seq: super::Sequence,
        caches: Vec<LayerCache>,
        row: Array,
    ) -> Result<Ready> {
        if seq.req.return_prompt_logits {
            seq.prompt_logits = Some(row.clone());
        }
        seq.observe(None)?;
        if seq.constraint.is_some() {
            transforms::async_eval([&row])?;
        }
        let first = seq.sample(row)?;
        let mut queued = first.arrays();
        queued.extend(seq.prompt_logits.iter());
        transforms::async_eval(queued)?;
        seq.fed = seq.req.prompt.clone();
        // A prompt whose prefix cache hit holds all but its last token gains nothing from
        // being offered now (a lookup never takes a prompt's last token; what grows it is
        // offered when the sequence ends) but a copy of its whole row. A recurrent state
        // after the whole prompt is a checkpoint the next turn may resume from: kept.
        let news = seq.req.prompt.len() > seq.cached + 1;
        if let (Some(prefix), true) = (self.prefix.as_mut(), news || self.recurrent) {
            prefix.offer(&caches, 0, &seq.fed)?;
        }
        // The draft model reads every prompt: a batch drafts for all its rows in one chain.
        let chunk = self.config.prefill_chunk;
        let draft = match self.draft.as_mut() {
            Some(d) if self.config.speculation.is_some() && self.trimmable => {
                Some(d.prefill(&seq.fed, chunk)?)
            }
            _ => None,
        };
        Ok(Ready {
            seq,
            caches,
            first,
            draft,
        })
    }
}
