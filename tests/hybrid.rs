//! Hybrid recurrent models (nemotron_h: Mamba-2; qwen3_next: Gated DeltaNet) in the engine:
//! their recurrent states batch, split and resume through the same paths as keys and
//! values. On the tiny random models of `make_tiny_models.py`, compute dtype `auto`
//! (float32 on CPU):
//! - each prompt run alone gives mlx-lm's greedy tokens (the reference);
//! - prompts of different lengths read in chunks of 7 while others decode, joining the decode
//!   batch at different steps (states concatenated, rows leaving), give the same tokens;
//! - turn 2 of a conversation (turn 1's prompt and reply, then a new message) resumes from
//!   the checkpoint turn 1 left where its messages ended, reports those tokens as cached, and
//!   gives the tokens of a cold run; a prompt that shares less than a checkpoint's worth starts
//!   cold.
//!
//! Needs the reference venv (`scripts/setup.sh --tests`).

use kooka::engine::{EngineConfig, SequenceRequest};

mod common;

use common::engine::{engine, greedy, greedy_reference, run, tiny_prompts};

fn prompts() -> Vec<Vec<u32>> {
    tiny_prompts(&[5, 13, 29, 8, 40])
}

const MODELS: [&str; 2] = ["nemotron_h-bf16", "qwen3_next-bf16"];
const MAX_TOKENS: usize = 10;

fn serving() -> EngineConfig {
    EngineConfig {
        prefill_chunk: 7,
        prefix_cache_tokens: 1 << 20,
        windowed_caches: true,
        ..Default::default()
    }
}

fn request(prompt: Vec<u32>, checkpoints: Vec<usize>) -> SequenceRequest {
    SequenceRequest {
        checkpoints,
        ..greedy(prompt, MAX_TOKENS)
    }
}

#[test]
fn recurrent_states_batch_like_alone() {
    let prompts = prompts();
    let reqs: Vec<SequenceRequest> = prompts
        .iter()
        .map(|p| request(p.clone(), Vec::new()))
        .collect();
    for name in MODELS {
        let model = common::tiny_model(name);
        let mut e = engine(&model, EngineConfig::default());
        let alone: Vec<Vec<u32>> = reqs
            .iter()
            .map(|r| run(&mut e, std::slice::from_ref(r), &[0]).remove(0).0)
            .collect();
        let want = greedy_reference(&model, &prompts, MAX_TOKENS);
        assert_eq!(alone, want, "{name}: each prompt alone against mlx-lm");
        let distinct: std::collections::HashSet<&u32> = alone.iter().flatten().collect();
        assert!(distinct.len() > 4, "{name}: degenerate reference {alone:?}");

        let mut e = engine(&model, serving());
        let staggered = run(&mut e, &reqs, &[0, 1, 1, 4, 6]);
        for i in 0..reqs.len() {
            assert_eq!(staggered[i].0, alone[i], "{name}: request {i}, staggered");
        }
    }
}

#[test]
fn turn_two_resumes_from_turn_one_checkpoint() {
    for name in MODELS {
        let model = common::tiny_model(name);
        // Turn 1: 30 tokens of "messages" and 3 of generation prompt.
        let messages: Vec<u32> = (0..30u32).map(|i| (i * 53 + 7) % 320).collect();
        let mut turn1 = messages.clone();
        turn1.extend([11, 12, 13]);
        let mut e = engine(&model, serving());
        let first = run(&mut e, &[request(turn1.clone(), vec![30])], &[0]);
        assert_eq!(first[0].1, 0, "{name}: turn 1 starts cold");
        // Turn 2 renders turn 1's reply differently (as chat templates do): it shares turn
        // 1's messages and one token more, then differs.
        let mut turn2 = messages.clone();
        turn2.extend([11, 99, 100, 101, 5, 6, 7]);
        let hit = run(&mut e, &[request(turn2.clone(), vec![37])], &[0]);
        let cold = run(
            &mut engine(&model, EngineConfig::default()),
            &[request(turn2.clone(), Vec::new())],
            &[0],
        );
        assert_eq!(
            hit[0].1, 30,
            "{name}: turn 2 resumes where turn 1's messages ended"
        );
        assert_eq!(hit[0].0, cold[0].0, "{name}: turn 2 from the checkpoint");
        // Turn 3 extends all of turn 2 and its reply: it resumes at the reply's end.
        let mut turn3 = turn2.clone();
        turn3.extend(&hit[0].0);
        turn3.extend([42, 43]);
        let hit3 = run(&mut e, &[request(turn3.clone(), Vec::new())], &[0]);
        let cold3 = run(
            &mut engine(&model, EngineConfig::default()),
            &[request(turn3.clone(), Vec::new())],
            &[0],
        );
        assert_eq!(
            hit3[0].1,
            turn2.len() + MAX_TOKENS,
            "{name}: turn 3 resumes at the end of turn 2's reply"
        );
        assert_eq!(hit3[0].0, cold3[0].0, "{name}: turn 3 from the checkpoint");
        // Shares 20 tokens: less than any checkpoint, so nothing is reused.
        let mut other: Vec<u32> = messages[..20].to_vec();
        other.extend([1, 2, 3]);
        let miss = run(&mut e, &[request(other, Vec::new())], &[0]);
        assert_eq!(
            miss[0].1, 0,
            "{name}: no checkpoint within the shared prefix"
        );
    }
}

/// The disk tier keeps recurrent checkpoints too: turn 1 on one engine, turn 2 on a new
/// engine (a restarted server) over the same folder resumes at turn 1's checkpoint, with a
/// cold run's tokens. Blocks of 8 positions, so the states sit in tails and full blocks.
#[test]
fn checkpoints_survive_a_restart_on_disk() {
    use kooka::engine::disk_cache::open_for_model;
    use kooka::engine::DiskCacheConfig;
    use kooka::model::ComputeDtype;
    for name in MODELS {
        let model = common::tiny_model(name);
        let dir = common::tmp().join(format!("hybrid-disk-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let config = DiskCacheConfig {
            dir: dir.clone(),
            budget_bytes: 1 << 30,
            block_tokens: 8,
        };
        let with_disk = || {
            let mut e = engine(&model, serving());
            let disk = open_for_model(&config, &model, ComputeDtype::Auto, None, 0);
            assert!(disk.is_some(), "{name}: the folder opens");
            e.set_disk_cache(disk, None);
            e
        };
        let messages: Vec<u32> = (0..30u32).map(|i| (i * 37 + 3) % 320).collect();
        let mut turn1 = messages.clone();
        turn1.extend([11, 12, 13]);
        {
            // Dropping the engine finishes its writes.
            let mut e = with_disk();
            let first = run(&mut e, &[request(turn1.clone(), vec![30])], &[0]);
            assert_eq!(first[0].1, 0, "{name}: turn 1 starts cold");
        }
        let mut turn2 = messages.clone();
        turn2.extend([11, 99, 100, 101, 5, 6, 7]);
        let mut e = with_disk();
        let hit = run(&mut e, &[request(turn2.clone(), vec![37])], &[0]);
        let cold = run(
            &mut engine(&model, EngineConfig::default()),
            &[request(turn2.clone(), Vec::new())],
            &[0],
        );
        assert_eq!(
            hit[0].1, 30,
            "{name}: turn 2 resumes at turn 1's checkpoint from disk"
        );
        assert_eq!(
            hit[0].0, cold[0].0,
            "{name}: turn 2 from the disk checkpoint"
        );
        let stats = e.status().disk_cache.unwrap();
        assert_eq!((stats.hits, stats.hit_tokens), (1, 30), "{name}: {stats:?}");
    }
}
