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

use mlx_rs::Array;

use crate::model::KvCache;

struct Entry {
    tokens: Vec<u32>,
    /// Per layer: keys and values `[1, H, tokens.len(), D]`.
    layers: Vec<(Array, Array)>,
    last_used: u64,
}

/// Counters for `/health` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixCacheStats {
    pub entries: usize,
    pub tokens: usize,
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
    clock: u64,
    stats: PrefixCacheStats,
}

impl PrefixCache {
    pub fn new(budget_tokens: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            budget_tokens,
            clock: 0,
            stats: PrefixCacheStats {
                budget_tokens,
                ..Default::default()
            },
        }
    }

    /// Caches for `prompt` holding its longest cached prefix (at most `prompt.len() - 1`
    /// positions: the last prompt token is always run, for its logits), and that length;
    /// `None` when nothing useful is cached.
    pub fn lookup(
        &mut self,
        prompt: &[u32],
        fresh: &[KvCache],
    ) -> crate::model::Result<Option<(Vec<KvCache>, usize)>> {
        let limit = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, &prompt[..limit])))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)));
        let Some((i, n)) = best.filter(|&(_, n)| n > 0) else {
            self.stats.misses += 1;
            return Ok(None);
        };
        self.clock += 1;
        let e = &mut self.entries[i];
        e.last_used = self.clock;
        let caches = e
            .layers
            .iter()
            .zip(fresh)
            .map(|((k, v), like)| KvCache::from_prefix(k, v, n as i32, like))
            .collect::<crate::model::Result<Vec<_>>>()?;
        self.stats.hits += 1;
        self.stats.hit_tokens += n as u64;
        Ok(Some((caches, n)))
    }

    /// Keeps `tokens` with their keys and values (one pair per layer, `[1, H, n, D]` with
    /// `n == tokens.len()`). Returns false (and keeps nothing) when the budget is too small
    /// for it, or an entry already covers it.
    pub fn insert(&mut self, tokens: Vec<u32>, layers: Vec<(Array, Array)>) -> bool {
        if self.budget_tokens == 0 || tokens.is_empty() || tokens.len() > self.budget_tokens {
            return false;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens))
        {
            e.last_used = self.clock;
            return false;
        }
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        self.entries.push(Entry {
            tokens,
            layers,
            last_used: self.clock,
        });
        while self.total_tokens() > self.budget_tokens {
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
        true
    }

    /// Keeps what row `row` of `caches` holds: a copy of its positions, which are the first of
    /// `tokens` (the ids fed so far). Nothing when the caches cannot give a row (rotating).
    pub fn offer(
        &mut self,
        caches: &[KvCache],
        row: usize,
        tokens: &[u32],
    ) -> crate::model::Result<()> {
        let mut layers = Vec::with_capacity(caches.len());
        let mut n = 0;
        for c in caches {
            match c.row(row)? {
                Some((k, v, len)) => {
                    n = len as usize;
                    layers.push((k, v));
                }
                None => return Ok(()),
            }
        }
        if n == 0 || n > tokens.len() {
            return Ok(());
        }
        mlx_rs::transforms::async_eval(layers.iter().flat_map(|(k, v)| [k, v]))?;
        self.insert(tokens[..n].to_vec(), layers);
        Ok(())
    }

    fn total_tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            entries: self.entries.len(),
            tokens: self.total_tokens(),
            bytes: self
                .entries
                .iter()
                .flat_map(|e| e.layers.iter())
                .map(|(k, v)| k.nbytes() + v.nbytes())
                .sum(),
            ..self.stats
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(layers: usize) -> Vec<KvCache> {
        (0..layers).map(|_| KvCache::new()).collect()
    }

    fn kv(n: i32) -> Vec<(Array, Array)> {
        let a = mlx_rs::ops::zeros::<f32>(&[1, 1, n, 2]).unwrap();
        vec![(a.clone(), a)]
    }

    #[test]
    fn longest_prefix_wins_and_the_last_prompt_token_is_never_cached() {
        let mut c = PrefixCache::new(100);
        assert!(c.insert(vec![1, 2, 3, 4], kv(4)));
        assert!(c.insert(vec![1, 2, 9], kv(3)));
        let (caches, n) = c.lookup(&[1, 2, 3, 4, 5], &fresh(1)).unwrap().unwrap();
        assert_eq!((n, caches[0].offset()), (4, 4));
        // The same prompt again: everything but its last token.
        let (_, n) = c.lookup(&[1, 2, 3, 4], &fresh(1)).unwrap().unwrap();
        assert_eq!(n, 3);
        assert!(c.lookup(&[7, 1, 2], &fresh(1)).unwrap().is_none());
        assert_eq!(c.stats().hits, 2);
        assert_eq!(c.stats().misses, 1);
    }

    #[test]
    fn a_longer_sequence_replaces_its_prefix_and_lru_evicts_under_budget() {
        let mut c = PrefixCache::new(10);
        assert!(c.insert(vec![1, 2, 3], kv(3)));
        assert!(c.insert(vec![1, 2, 3, 4, 5], kv(5)));
        assert_eq!(c.stats().entries, 1);
        // Covered by the entry already there.
        assert!(!c.insert(vec![1, 2], kv(2)));
        assert!(c.insert(vec![8, 8, 8, 8], kv(4)));
        assert_eq!(c.stats().tokens, 9);
        // [1..5] is the least recently used: it goes.
        assert!(c.insert(vec![9, 9], kv(2)));
        assert_eq!(c.stats().tokens, 6);
        assert_eq!(c.stats().evictions, 1);
        assert!(c.lookup(&[1, 2, 3, 4, 5, 6], &fresh(1)).unwrap().is_none());
        // Too big for the budget: never kept.
        assert!(!c.insert((0..11).collect(), kv(11)));
    }
}
