//! Which blocks the folder holds, by key, and how a prompt walks them.
//!
//! A sequence is stored as full blocks of `block_tokens` positions (starting at multiples of
//! it) chained by their keys, and a partial block for its tail. Full blocks are shared by
//! every sequence that starts the same way; a tail serves a prompt that extends exactly
//! that sequence (an agent's next turn). Recurrent models resume only where a state was
//! stored (`has_state`).

use std::collections::HashMap;

use super::block::{chain_key, BlockHeader, Key};

#[derive(Debug, Clone)]
pub struct Entry {
    pub header: BlockHeader,
    pub bytes: u64,
    pub last_used: u64,
}

/// Where a stored prompt resumes: `tokens` positions, read from `chain` (root first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub tokens: usize,
    pub chain: Vec<Key>,
}

/// What a sequence still needs written: blocks from position `from` on, each
/// `(parent, start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub from: usize,
    pub blocks: Vec<(Key, usize, usize)>,
}

pub struct Index {
    block_tokens: usize,
    blocks: HashMap<Key, Entry>,
    /// Blocks by the key they follow.
    children: HashMap<Key, Vec<Key>>,
    /// Keys being written, with what they are expected to take (they count as present
    /// when planning, and against the budget).
    pending: HashMap<Key, u64>,
    bytes: u64,
    clock: u64,
}

impl Index {
    pub fn new(block_tokens: usize) -> Self {
        Index {
            block_tokens: block_tokens.max(1),
            blocks: HashMap::new(),
            children: HashMap::new(),
            pending: HashMap::new(),
            bytes: 0,
            clock: 0,
        }
    }

    /// Bytes of the blocks on disk and of those being written.
    pub fn bytes(&self) -> u64 {
        self.bytes + self.pending.values().sum::<u64>()
    }

    /// Bytes of the blocks on disk.
    pub fn stored_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    fn is_full(&self, h: &BlockHeader) -> bool {
        h.tokens.len() == self.block_tokens && h.start % self.block_tokens == 0
    }

    /// Adds a block (replacing one of the same key); `last_used` 0 means "now".
    pub fn insert(&mut self, key: Key, header: BlockHeader, bytes: u64, last_used: u64) {
        self.remove(key);
        self.pending.remove(&key);
        self.clock = self.clock.max(last_used) + 1;
        self.children.entry(header.parent).or_default().push(key);
        self.bytes += bytes;
        let last_used = if last_used == 0 {
            self.clock
        } else {
            last_used
        };
        self.blocks.insert(
            key,
            Entry {
                header,
                bytes,
                last_used,
            },
        );
    }

    pub fn remove(&mut self, key: Key) -> Option<Entry> {
        let e = self.blocks.remove(&key)?;
        self.bytes -= e.bytes;
        if let Some(list) = self.children.get_mut(&e.header.parent) {
            list.retain(|k| *k != key);
            if list.is_empty() {
                self.children.remove(&e.header.parent);
            }
        }
        Some(e)
    }

    pub fn set_pending(&mut self, keys: impl IntoIterator<Item = (Key, u64)>) {
        self.pending.extend(keys);
    }

    pub fn clear_pending(&mut self, key: Key) {
        self.pending.remove(&key);
    }

    /// The longest stored prefix of `prompt` within `limit` positions: full blocks walked
    /// from the root, then the block that shares most of the rest (any part of it for keys
    /// and values, which can be cut; for a recurrent model only whole blocks with a state).
    pub fn best(&self, prompt: &[u32], limit: usize, recurrent: bool) -> Option<Resume> {
        let limit = limit.min(prompt.len());
        let (mut parent, mut at) = (0 as Key, 0usize);
        let mut chain = Vec::new();
        let mut best: Option<Resume> = None;
        loop {
            let rest = &prompt[at..limit];
            let mut through = None;
            for &ck in self.children.get(&parent).into_iter().flatten() {
                let e = &self.blocks[&ck];
                let tokens = &e.header.tokens;
                let shared = common_prefix(tokens, rest);
                let whole = shared == tokens.len();
                if shared == 0 || (recurrent && !(whole && e.header.has_state)) {
                    if whole && self.is_full(&e.header) {
                        through.get_or_insert(ck);
                    }
                    continue;
                }
                if whole && self.is_full(&e.header) {
                    through.get_or_insert(ck);
                }
                if best.as_ref().is_none_or(|r| at + shared > r.tokens) {
                    let mut c = chain.clone();
                    c.push(ck);
                    best = Some(Resume {
                        tokens: at + shared,
                        chain: c,
                    });
                }
            }
            let Some(k) = through else {
                break;
            };
            chain.push(k);
            at += self.block_tokens;
            parent = k;
        }
        best
    }

    /// Marks the blocks of `chain` used now.
    pub fn touch(&mut self, chain: &[Key]) {
        self.clock += 1;
        for k in chain {
            if let Some(e) = self.blocks.get_mut(k) {
                e.last_used = self.clock;
            }
        }
    }

    /// The blocks `tokens` still needs on disk (with a state after its last token when
    /// `state`): the first full block missing and every block after it, and the tail.
    pub fn plan(&self, tokens: &[u32], state: bool) -> Option<Plan> {
        let b = self.block_tokens;
        let n = tokens.len();
        let present = |k: &Key, want_state: bool| {
            self.pending.contains_key(k)
                || self
                    .blocks
                    .get(k)
                    .is_some_and(|e| !want_state || e.header.has_state)
        };
        let mut parent: Key = 0;
        let mut blocks = Vec::new();
        let mut from = None;
        let mut start = 0;
        while start < n {
            let end = (start + b).min(n);
            let key = chain_key(parent, &tokens[start..end]);
            let want_state = state && end == n;
            if from.is_some() || !present(&key, want_state) {
                from.get_or_insert(start);
                blocks.push((parent, start, end));
            }
            parent = key;
            start = end;
        }
        from.map(|from| Plan { from, blocks })
    }

    /// The least recently used block (the deeper first among equals, so that a chain loses
    /// its end before its start).
    pub fn oldest(&self) -> Option<Key> {
        self.blocks
            .iter()
            .min_by_key(|(_, e)| (e.last_used, std::cmp::Reverse(e.header.start)))
            .map(|(k, _)| *k)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(ix: &mut Index, parent: Key, start: usize, tokens: &[u32], state: bool) -> Key {
        let key = chain_key(parent, tokens);
        let header = BlockHeader {
            parent,
            start,
            tokens: tokens.to_vec(),
            has_state: state,
        };
        ix.insert(key, header, 10, 0);
        key
    }

    /// Stores `tokens` as `plan` says, as the writer would.
    fn store(ix: &mut Index, tokens: &[u32], state: bool) {
        let plan = ix.plan(tokens, state).unwrap();
        for (parent, start, end) in plan.blocks {
            add(
                ix,
                parent,
                start,
                &tokens[start..end],
                state && end == tokens.len(),
            );
        }
    }

    #[test]
    fn a_prompt_walks_full_blocks_then_the_longest_matching_tail() {
        let mut ix = Index::new(4);
        let seq: Vec<u32> = (1..=10).collect();
        store(&mut ix, &seq, false);
        assert_eq!(ix.len(), 3, "two full blocks and a tail of 2");
        // The same sequence plus more: everything.
        let mut longer = seq.clone();
        longer.extend([50, 51]);
        assert_eq!(ix.best(&longer, 11, false).unwrap().tokens, 10);
        // Diverging inside the tail: the full blocks and the tail's shared part.
        let mut other = seq[..9].to_vec();
        other.extend([99, 98]);
        let r = ix.best(&other, 10, false).unwrap();
        assert_eq!((r.tokens, r.chain.len()), (9, 3));
        // Diverging in the first block: its shared part.
        assert_eq!(ix.best(&[1, 2, 9, 9, 9], 4, false).unwrap().tokens, 2);
        assert!(ix.best(&[7, 2, 9, 9, 9], 4, false).is_none());
        // The limit cuts: a prompt of exactly the sequence resumes before its last token.
        assert_eq!(ix.best(&seq, 9, false).unwrap().tokens, 9);
    }

    #[test]
    fn plans_write_only_what_is_missing() {
        let mut ix = Index::new(4);
        let seq: Vec<u32> = (1..=10).collect();
        store(&mut ix, &seq, false);
        assert!(ix.plan(&seq, false).is_none(), "all there");
        // One more turn: the block that held the old tail is full now, and a new tail.
        let longer: Vec<u32> = (1..=14).collect();
        let plan = ix.plan(&longer, false).unwrap();
        assert_eq!(plan.from, 8);
        assert_eq!(
            plan.blocks.iter().map(|b| (b.1, b.2)).collect::<Vec<_>>(),
            vec![(8, 12), (12, 14)]
        );
        // Keys being written count as present.
        let mut parent = 0;
        let mut keys = Vec::new();
        for (_, start, end) in &plan.blocks {
            parent = chain_key(
                if keys.is_empty() {
                    plan.blocks[0].0
                } else {
                    parent
                },
                &longer[*start..*end],
            );
            keys.push((parent, 1));
        }
        ix.set_pending(keys);
        assert!(ix.plan(&longer, false).is_none());
    }

    #[test]
    fn recurrent_prompts_resume_only_at_states() {
        let mut ix = Index::new(4);
        let turn1: Vec<u32> = (1..=6).collect();
        store(&mut ix, &turn1, true);
        let turn2: Vec<u32> = (1..=12).collect();
        // A state at 6 (a tail); the full block [0, 4) has none.
        assert_eq!(ix.best(&turn2, 11, true).unwrap().tokens, 6);
        assert_eq!(ix.best(&turn1[..5], 4, true), None);
        // Never inside a block: the state is at its end.
        assert_eq!(ix.best(&[1, 2, 3, 4, 5, 9, 9], 6, true), None);
        store(&mut ix, &turn2[..8], true);
        assert_eq!(ix.best(&turn2, 11, true).unwrap().tokens, 8);
    }

    #[test]
    fn the_oldest_goes_first_and_a_chain_loses_its_end_first() {
        let mut ix = Index::new(2);
        store(&mut ix, &[1, 2, 3, 4], false);
        let first = chain_key(0, &[1, 2]);
        let second = chain_key(first, &[3, 4]);
        ix.touch(&[first, second]);
        assert_eq!(ix.oldest(), Some(second));
        store(&mut ix, &[7, 7], false);
        assert_eq!(ix.oldest(), Some(second));
        let e = ix.remove(second).unwrap();
        assert_eq!(ix.bytes(), 20);
        ix.set_pending([(5, 7)]);
        assert_eq!((ix.bytes(), ix.stored_bytes()), (27, 20));
        assert_eq!(e.header.start, 2);
    }
}
