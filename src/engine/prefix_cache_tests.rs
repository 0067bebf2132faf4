//! The prefix cache against hand-made rows: longest prefixes, replacement and LRU under the
//! budget, offers of what it holds, recurrent checkpoints.

use super::*;

use crate::model::cache::StateCache;
use crate::model::KvCache;
use mlx_rs::Array;

fn fresh(layers: usize) -> Vec<LayerCache> {
    (0..layers).map(|_| KvCache::new().into()).collect()
}

fn kv(n: i32) -> Vec<LayerRow> {
    let a = mlx_rs::ops::zeros::<f32>(&[1, 1, n, 2]).unwrap();
    vec![LayerRow::Kv(a.clone(), a)]
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

#[test]
fn offering_what_is_held_copies_nothing_and_counts_as_use() {
    let mut c = PrefixCache::new(10);
    let held = |n: i32| vec![LayerCache::from_row(&kv(n)[0], n, &fresh(1)[0]).unwrap()];
    c.offer(&held(4), 0, &[1, 2, 3, 4, 5]).unwrap();
    assert_eq!(
        (c.stats().entries, c.stats().tokens),
        (1, 4),
        "the 4 positions held"
    );
    assert!(c.insert(vec![8, 8, 8], kv(3)));
    // Resent: covered, so no row is taken, but [1..4] is now the most recently used.
    assert!(!c.wants(&[1, 2, 3]));
    c.offer(&held(4), 0, &[1, 2, 3, 4]).unwrap();
    assert_eq!(c.stats().entries, 2);
    assert!(c.insert(vec![9, 9, 9, 9], kv(4)));
    assert_eq!(c.stats().evictions, 1);
    assert!(c.lookup(&[1, 2, 3, 4, 5], &fresh(1)).unwrap().is_some());
    assert!(c.lookup(&[8, 8, 8, 8], &fresh(1)).unwrap().is_none());
}

/// A layer of keys and values and a recurrent layer; the state's value says after how
/// many tokens it was taken.
fn hybrid_row(n: i32) -> Vec<LayerRow> {
    let kv = mlx_rs::ops::zeros::<f32>(&[1, 1, n, 2]).unwrap();
    let state = Array::from_slice(&[n as f32], &[1, 1]);
    vec![LayerRow::Kv(kv.clone(), kv), LayerRow::State(vec![state])]
}

fn hybrid_fresh() -> Vec<LayerCache> {
    vec![KvCache::new().into(), LayerCache::State(StateCache::new(1))]
}

fn state_of(caches: &mut [LayerCache]) -> f32 {
    let s = caches[1].recurrent().unwrap();
    s.get(0).unwrap().as_slice::<f32>()[0]
}

#[test]
fn recurrent_entries_resume_only_at_their_checkpoints() {
    let mut c = PrefixCache::with_checkpoints(1000, true, 10);
    // Turn 1: a checkpoint where its messages end (4), then the whole sequence (8).
    assert!(c.insert(vec![1, 2, 3, 4], hybrid_row(4)));
    assert!(c.insert(vec![1, 2, 3, 4, 5, 6, 7, 8], hybrid_row(8)));
    assert_eq!(
        c.stats().entries,
        1,
        "the longer sequence took the shorter in"
    );
    assert_eq!(c.stats().checkpoints, 2);
    // Turn 2 shares 6 tokens: it resumes at the checkpoint within them, 4.
    let (mut caches, n) = c
        .lookup(&[1, 2, 3, 4, 5, 6, 9, 9], &hybrid_fresh())
        .unwrap()
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(
        caches[0].offset(),
        4,
        "keys and values cut to the checkpoint"
    );
    assert_eq!(state_of(&mut caches), 4.0, "the state taken after 4 tokens");
    // A prompt that extends the whole sequence resumes at its end.
    let (mut caches, n) = c
        .lookup(&[1, 2, 3, 4, 5, 6, 7, 8, 10], &hybrid_fresh())
        .unwrap()
        .unwrap();
    assert_eq!((n, state_of(&mut caches)), (8, 8.0));
    // Shared, but short of the first checkpoint: nothing to resume from.
    assert!(c.lookup(&[1, 2, 3, 7], &hybrid_fresh()).unwrap().is_none());
    // A checkpoint inside an entry is added to it, not stored again.
    assert!(c.insert(vec![1, 2, 3, 4, 5, 6], hybrid_row(6)));
    assert_eq!((c.stats().entries, c.stats().checkpoints), (1, 3));
    let (_, n) = c
        .lookup(&[1, 2, 3, 4, 5, 6, 9], &hybrid_fresh())
        .unwrap()
        .unwrap();
    assert_eq!(n, 6);
    // Checkpoints count against the budget: 8 tokens + 3 x 10.
    assert_eq!(c.total_cost(), 38);
}
