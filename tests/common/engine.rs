//! Driving an in-process engine step by step (tests/batching.rs, tests/mla.rs).

use std::collections::HashMap;

use kooka::engine::{Engine, SeqId, SequenceRequest};

/// Runs `reqs`, each added once `start[i]` steps have run; returns each one's tokens and
/// the cached prompt tokens of its first event.
pub fn run(
    engine: &mut Engine,
    reqs: &[SequenceRequest],
    start: &[usize],
) -> Vec<(Vec<u32>, usize)> {
    let mut ids: HashMap<SeqId, usize> = HashMap::new();
    let mut out = vec![(Vec::new(), 0); reqs.len()];
    let mut step = 0;
    loop {
        for (i, r) in reqs.iter().enumerate() {
            if start[i] == step {
                ids.insert(engine.add(r.clone()).expect("add"), i);
            }
        }
        let pending = start.iter().any(|&s| s > step);
        if !engine.has_work() && !pending {
            break;
        }
        for ev in engine.step().expect("step") {
            let o = &mut out[ids[&ev.seq]];
            o.0.push(ev.token);
            if let Some(c) = ev.cached_tokens {
                o.1 = c;
            }
        }
        step += 1;
    }
    out
}
