//! The prefix cache: keys and values of past prompts and replies, so that a request that
//! starts like an earlier one (a coding agent resends its whole conversation every turn)
//! prefills only what is new.
//!
//! Entries are whole token sequences with their per-layer keys and values (arrays of their
//! own, never views of a live batch). A lookup takes the longest common prefix with any
//! entry, so any prefix of an entry serves: the first request after a prompt is cached can
//! reuse it up to where they differ. An entry that is a prefix of a newer one is replaced
//! by it. Least recently used entries go first when the total exceeds the budget, which is
//! counted in tokens so that every rank of a sharded model (each holding other layers)
//! makes the same decisions. MLX arrays are immutable, so concurrent sequences that start
//! from the same entry share it safely.
//!
//! With a disk tier ([`DiskCache`], `serve --prompt-cache-dir`) under it, every sequence
//! taken in is also written to disk, and a lookup that the disk serves further than memory
//! reads its blocks back (and keeps them here as an entry).

use std::rc::Rc;

use super::disk_cache::{self, DiskCache, DiskCacheStats, PendingRead, ReadOutcome, Resume};
use crate::dist::Group;
use crate::model::cache::LayerRow;
use crate::model::LayerCache;

/// Most state checkpoints one entry keeps besides its own end (the latest win: a growing
/// conversation resumes from its last turns).
const MAX_CHECKPOINTS: usize = 4;

struct Entry {
    tokens: Vec<u32>,
    /// Per layer, after all of `tokens`: keys and values `[1, H, tokens.len(), D]`, or a
    /// recurrent state.
    layers: Vec<LayerRow>,
    /// Recurrent models: the states after fewer tokens, ascending by position; each holds a
    /// row per layer (recurrent layers only, [`LayerRow::Stateless`] elsewhere).
    checkpoints: Vec<(usize, Vec<LayerRow>)>,
    last_used: u64,
}

impl Entry {
    /// Prefix lengths this entry can resume from, at most `limit`, longest first.
    fn resumable(&self, limit: usize, recurrent: bool) -> Option<usize> {
        if !recurrent {
            return Some(limit.min(self.tokens.len())).filter(|&n| n > 0);
        }
        std::iter::once(self.tokens.len())
            .chain(self.checkpoints.iter().rev().map(|(at, _)| *at))
            .find(|&n| n <= limit && n > 0)
    }

    fn snapshots(&self) -> usize {
        self.checkpoints.len() + 1
    }
}

/// Counters for `/health` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixCacheStats {
    pub entries: usize,
    pub tokens: usize,
    /// Recurrent-state checkpoints kept (hybrid models).
    pub checkpoints: usize,
    pub bytes: usize,
    pub budget_tokens: usize,
    pub hits: u64,
    pub hit_tokens: u64,
    pub misses: u64,
    pub evictions: u64,
}

pub(super) struct PrefixCache {
    entries: Vec<Entry>,
    budget_tokens: usize,
    /// The model has recurrent layers: an entry serves only at its checkpoints.
    recurrent: bool,
    /// What one checkpoint costs against the budget, in tokens (identical on every rank).
    checkpoint_tokens: usize,
    clock: u64,
    stats: PrefixCacheStats,
    disk: Option<DiskCache>,
    /// Several ranks with a disk tier: lookups agree on one length over this group.
    ranks: Option<Rc<Group>>,
}

impl PrefixCache {
    /// A cache for a model with only attention layers.
    #[cfg(test)]
    pub fn new(budget_tokens: usize) -> Self {
        Self::with_checkpoints(budget_tokens, false, 0)
    }

    /// `recurrent`: the model keeps recurrent states, which resume only where they were taken;
    /// each such snapshot costs `checkpoint_tokens` of the budget.
    pub fn with_checkpoints(
        budget_tokens: usize,
        recurrent: bool,
        checkpoint_tokens: usize,
    ) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget_tokens,
            recurrent,
            checkpoint_tokens: if recurrent { checkpoint_tokens } else { 0 },
            clock: 0,
            stats: PrefixCacheStats {
                budget_tokens,
                ..Default::default()
            },
            disk: None,
            ranks: None,
        }
    }

    /// Puts `disk` under this cache; `ranks`: the group every rank's lookups agree over
    /// (each rank must have a disk tier configured, or pass `None` for `disk`).
    pub fn with_disk(mut self, disk: Option<DiskCache>, ranks: Option<Rc<Group>>) -> Self {
        self.disk = disk;
        self.ranks = ranks;
        self
    }

    pub fn into_disk(self) -> Option<DiskCache> {
        self.disk
    }

    pub fn disk_stats(&self) -> Option<DiskCacheStats> {
        self.disk.as_ref().map(DiskCache::stats)
    }

    /// The disk tier's resume point for `prompt` beyond `in_memory` positions, agreed over
    /// the ranks: its length and this rank's rows (of at least that many positions).
    fn from_disk(
        &mut self,
        prompt: &[u32],
        limit: usize,
        in_memory: usize,
    ) -> crate::model::Result<Option<(usize, Vec<LayerRow>)>> {
        if self.disk.is_none() && self.ranks.is_none() {
            return Ok(None);
        }
        let recurrent = self.recurrent;
        let loaded = match (
            self.disk_resume(prompt, limit, in_memory),
            self.disk.as_mut(),
        ) {
            (Some(r), Some(disk)) => disk.load(&r)?.map(|rows| (r.tokens, rows)),
            _ => None,
        };
        let local = loaded.as_ref().map_or(0, |(n, _)| *n);
        let agreed = match &self.ranks {
            Some(group) => disk_cache::agree(group, local, recurrent)?,
            None => local,
        };
        Ok(loaded
            .filter(|_| agreed > in_memory)
            .map(|(_, rows)| (agreed, rows)))
    }

    /// Caches for `prompt` holding its longest cached prefix (at most `prompt.len() - 1`
    /// positions: the last prompt token is always run, for its logits; for a recurrent model,
    /// the longest checkpoint within the shared prefix), and that length; `None` when
    /// nothing useful is cached. A disk tier is read at once (see [`Self::start_disk_read`]
    /// for reading it while the engine goes on).
    pub fn lookup(
        &mut self,
        prompt: &[u32],
        fresh: &[LayerCache],
    ) -> crate::model::Result<Option<(Vec<LayerCache>, usize)>> {
        let limit = prompt.len().saturating_sub(1);
        let in_memory = self.in_memory(prompt);
        if let Some((n, rows)) = self.from_disk(prompt, limit, in_memory)? {
            return self.resume_rows(prompt, fresh, n, rows).map(Some);
        }
        self.lookup_memory(prompt, fresh)
    }

    /// Whether disk reads can go on while the engine works ([`Self::start_disk_read`]): a
    /// disk tier on one rank (several ranks agree on every lookup in lockstep, so they read
    /// at once).
    pub fn reads_in_background(&self) -> bool {
        self.disk.is_some() && self.ranks.is_none()
    }

    /// Starts reading the disk tier's blocks for `prompt` when they serve it further than
    /// memory; `None` when the disk has nothing better (then [`Self::lookup_memory`]).
    pub fn start_disk_read(&mut self, prompt: &[u32]) -> Option<PendingRead> {
        let limit = prompt.len().saturating_sub(1);
        let in_memory = self.in_memory(prompt);
        let resume = self.disk_resume(prompt, limit, in_memory)?;
        Some(self.disk.as_ref()?.start_read(resume))
    }

    /// The disk tier's longest stored prefix of `prompt` within `limit`, when it reaches
    /// beyond the `in_memory` positions memory serves (else a miss is counted).
    fn disk_resume(&mut self, prompt: &[u32], limit: usize, in_memory: usize) -> Option<Resume> {
        let disk = self.disk.as_mut()?;
        match disk.best(prompt, limit, self.recurrent) {
            Some(r) if r.tokens > in_memory => Some(r),
            _ => {
                disk.count_miss();
                None
            }
        }
    }

    /// [`Self::lookup`]'s answer from a finished disk read (from memory if it failed).
    pub fn finish_disk_read(
        &mut self,
        prompt: &[u32],
        fresh: &[LayerCache],
        read: PendingRead,
        outcome: ReadOutcome,
    ) -> crate::model::Result<Option<(Vec<LayerCache>, usize)>> {
        let n = read.tokens();
        let rows = match self.disk.as_mut() {
            Some(disk) => disk.finish_read(read, outcome)?,
            None => None,
        };
        match rows {
            Some(rows) => self.resume_rows(prompt, fresh, n, rows).map(Some),
            None => self.lookup_memory(prompt, fresh),
        }
    }

    /// The longest prefix of `prompt` (within its last token) memory can resume from.
    fn in_memory(&self, prompt: &[u32]) -> usize {
        let limit = prompt.len().saturating_sub(1);
        self.entries
            .iter()
            .filter_map(|e| e.resumable(common_prefix(&e.tokens, &prompt[..limit]), self.recurrent))
            .max()
            .unwrap_or(0)
    }

    /// Caches resumed from rows the disk gave for `prompt[..n]`, kept in memory too (as what
    /// every rank agreed on: their memory tiers stay alike).
    fn resume_rows(
        &mut self,
        prompt: &[u32],
        fresh: &[LayerCache],
        n: usize,
        rows: Vec<LayerRow>,
    ) -> crate::model::Result<(Vec<LayerCache>, usize)> {
        let caches = rows
            .iter()
            .zip(fresh)
            .map(|(row, like)| LayerCache::from_row(row, n as i32, like))
            .collect::<crate::model::Result<Vec<_>>>()?;
        self.insert(prompt[..n].to_vec(), cut_rows(rows, n)?);
        self.stats.hits += 1;
        self.stats.hit_tokens += n as u64;
        Ok((caches, n))
    }

    /// [`Self::lookup`] in memory only.
    pub fn lookup_memory(
        &mut self,
        prompt: &[u32],
        fresh: &[LayerCache],
    ) -> crate::model::Result<Option<(Vec<LayerCache>, usize)>> {
        let limit = prompt.len().saturating_sub(1);
        let recurrent = self.recurrent;
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let shared = common_prefix(&e.tokens, &prompt[..limit]);
                e.resumable(shared, recurrent).map(|n| (i, n))
            })
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)));
        let Some((i, n)) = best else {
            self.stats.misses += 1;
            return Ok(None);
        };
        self.clock += 1;
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        let states = match e.checkpoints.iter().find(|(at, _)| *at == n) {
            Some((_, rows)) if n < e.tokens.len() => Some(rows),
            _ => None,
        };
        let caches = e
            .layers
            .iter()
            .enumerate()
            .zip(fresh)
            .map(|((l, row), like)| {
                let row = match (states, like.is_recurrent()) {
                    (Some(rows), true) => &rows[l],
                    _ => row,
                };
                LayerCache::from_row(row, n as i32, like)
            })
            .collect::<crate::model::Result<Vec<_>>>()?;
        self.stats.hits += 1;
        self.stats.hit_tokens += n as u64;
        Ok(Some((caches, n)))
    }

    /// Keeps `tokens` with what each layer holds after them (`n == tokens.len()`). Returns
    /// false (and keeps nothing) when the budget is too small for it, or an entry already
    /// covers it.
    pub fn insert(&mut self, tokens: Vec<u32>, layers: Vec<LayerRow>) -> bool {
        if self.budget_tokens == 0
            || tokens.is_empty()
            || tokens.len() + self.checkpoint_tokens > self.budget_tokens
        {
            return false;
        }
        self.clock += 1;
        let clock = self.clock;
        let recurrent = self.recurrent;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens))
        {
            e.last_used = clock;
            let n = tokens.len();
            if !recurrent || n == e.tokens.len() || e.checkpoints.iter().any(|(at, _)| *at == n) {
                return false;
            }
            // A state inside a longer entry: one more place it can resume from.
            let at = e.checkpoints.partition_point(|(p, _)| *p < n);
            e.checkpoints.insert(at, (n, states_only(layers)));
            cap_checkpoints(&mut e.checkpoints);
            self.evict();
            return true;
        }
        let mut checkpoints = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            if tokens.starts_with(&self.entries[i].tokens) {
                let old = self.entries.swap_remove(i);
                if recurrent {
                    let end = (old.tokens.len(), states_only(old.layers));
                    checkpoints.extend(old.checkpoints);
                    checkpoints.push(end);
                }
            } else {
                i += 1;
            }
        }
        checkpoints.sort_by_key(|(at, _)| *at);
        checkpoints.dedup_by_key(|(at, _)| *at);
        cap_checkpoints(&mut checkpoints);
        self.entries.push(Entry {
            tokens,
            layers,
            checkpoints,
            last_used: clock,
        });
        self.evict();
        true
    }

    /// Least recently used entries go until the total fits the budget.
    fn evict(&mut self) {
        while self.total_cost() > self.budget_tokens {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i);
            match oldest {
                Some(i) => {
                    self.entries.swap_remove(i);
                    self.stats.evictions += 1;
                }
                None => break,
            }
        }
    }

    /// Keeps what row `row` of `caches` holds: a copy of its positions (or its state), which
    /// are the first of `tokens` (the ids fed so far). Nothing when the caches cannot give a
    /// row (rotating), or when this cache and its disk tier hold those tokens already (a
    /// resent prompt: no copy is made).
    pub fn offer(
        &mut self,
        caches: &[LayerCache],
        row: usize,
        tokens: &[u32],
    ) -> crate::model::Result<()> {
        let mut n = None;
        for c in caches {
            match c.row_len(row) {
                Some(len) => n = len.or(n),
                None => return Ok(()),
            }
        }
        let n = n.unwrap_or(0).max(0) as usize;
        if n == 0 || n > tokens.len() {
            return Ok(());
        }
        let tokens = &tokens[..n];
        let recurrent = caches.iter().any(LayerCache::is_recurrent);
        let disk_lacks = (self.disk.as_mut()).is_some_and(|d| d.lacks(tokens, recurrent));
        if !self.wants(tokens) && !disk_lacks {
            return Ok(());
        }
        let mut layers = Vec::with_capacity(caches.len());
        for c in caches {
            match c.row(row)? {
                Some((r, _)) => layers.push(r),
                None => return Ok(()),
            }
        }
        mlx_rs::transforms::async_eval(layers.iter().flat_map(LayerRow::arrays))?;
        if let Some(disk) = self.disk.as_mut() {
            if let Err(e) = disk.store(tokens, &layers) {
                tracing::warn!("prompt cache: not written to disk: {e}");
            }
        }
        self.insert(tokens.to_vec(), layers);
        Ok(())
    }

    /// Whether [`Self::insert`] would keep `tokens`; an entry that already covers them counts
    /// as used now.
    fn wants(&mut self, tokens: &[u32]) -> bool {
        if self.budget_tokens == 0
            || tokens.is_empty()
            || tokens.len() + self.checkpoint_tokens > self.budget_tokens
        {
            return false;
        }
        self.clock += 1;
        let (clock, recurrent, n) = (self.clock, self.recurrent, tokens.len());
        match self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(tokens))
        {
            None => true,
            Some(e) => {
                e.last_used = clock;
                // A recurrent state inside a longer entry is a new checkpoint.
                recurrent && n != e.tokens.len() && !e.checkpoints.iter().any(|(at, _)| *at == n)
            }
        }
    }

    fn total_tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// Tokens plus what the checkpoints cost.
    fn total_cost(&self) -> usize {
        let snapshots: usize = match self.recurrent {
            true => self.entries.iter().map(Entry::snapshots).sum(),
            false => 0,
        };
        self.total_tokens() + snapshots * self.checkpoint_tokens
    }

    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            entries: self.entries.len(),
            tokens: self.total_tokens(),
            checkpoints: match self.recurrent {
                true => self.entries.iter().map(Entry::snapshots).sum(),
                false => 0,
            },
            bytes: self
                .entries
                .iter()
                .flat_map(|e| {
                    e.layers
                        .iter()
                        .chain(e.checkpoints.iter().flat_map(|(_, rows)| rows.iter()))
                })
                .map(LayerRow::nbytes)
                .sum(),
            ..self.stats
        }
    }
}

/// The recurrent layers' rows of `layers` (the others' become [`LayerRow::Stateless`]: a
/// checkpoint takes keys and values from its entry's own).
fn states_only(layers: Vec<LayerRow>) -> Vec<LayerRow> {
    layers
        .into_iter()
        .map(|r| match r {
            LayerRow::State(_) => r,
            _ => LayerRow::Stateless,
        })
        .collect()
}

/// Keys and values cut to their first `n` positions (the disk's blocks may hold more).
fn cut_rows(rows: Vec<LayerRow>, n: usize) -> crate::model::Result<Vec<LayerRow>> {
    use crate::model::slicing::slice_axis;
    rows.into_iter()
        .map(|r| match r {
            LayerRow::Kv(k, v) if k.dim(2) as usize > n => Ok(LayerRow::Kv(
                slice_axis(&k, 2, 0, n as i32)?,
                slice_axis(&v, 2, 0, n as i32)?,
            )),
            r => Ok(r),
        })
        .collect()
}

fn cap_checkpoints(c: &mut Vec<(usize, Vec<LayerRow>)>) {
    if c.len() > MAX_CHECKPOINTS {
        c.drain(..c.len() - MAX_CHECKPOINTS);
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
#[path = "prefix_cache_tests.rs"]
mod tests;
