//! Multi-head latent attention (deepseek_v3) in the engine: its caches hold the latent and
//! the rotated key part instead of keys and values, through every path that moves caches
//! around. On the tiny random deepseek_v3 models of `make_tiny_models.py` (low-rank query,
//! YaRN; and a full `q_proj` with biases), compute dtype `auto` (float32 on CPU):
//! - each prompt run alone gives mlx-lm's greedy tokens (the reference);
//! - prompts of different lengths batched (left-padded rows, per-row RoPE positions and
//!   padding masks on the rotated scores), read in chunks of 7 while others decode, joining
//!   at different steps, give the same tokens as alone;
//! - prompts read together in one right-padded batched prefill, likewise;
//! - a prompt that extends a cached one starts from the prefix cache (caches rebuilt with
//!   `KvCache::from_prefix`) and gives the same tokens as alone.
//!
//! Needs the reference venv (`scripts/setup.sh --tests`).

use kooka::engine::{EngineConfig, SequenceRequest};

mod common;

use common::engine::{engine, greedy, greedy_reference, run, tiny_prompts};

fn prompts() -> Vec<Vec<u32>> {
    tiny_prompts(&[5, 13, 29, 8, 40, 17])
}

fn request(prompt: Vec<u32>) -> SequenceRequest {
    greedy(prompt, MAX_TOKENS)
}

const MODELS: [&str; 2] = ["deepseek_v3-q4g64", "deepseek_v3_noqlora-bf16"];
const MAX_TOKENS: usize = 12;

#[test]
fn latent_attention_batches_and_reuses_prefixes_like_alone() {
    let prompts = prompts();
    let reqs: Vec<SequenceRequest> = prompts.iter().cloned().map(request).collect();
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

        // Chunks of 7 while others decode; all at once, then staggered joins.
        let mut e = engine(
            &model,
            EngineConfig {
                prefill_chunk: 7,
                prefix_cache_tokens: 4096,
                windowed_caches: true,
                ..Default::default()
            },
        );
        let together = run(&mut e, &reqs, &vec![0; reqs.len()]);
        let staggered = run(&mut e, &reqs, &[0, 2, 2, 5, 9, 10]);
        for i in 0..reqs.len() {
            assert_eq!(
                together[i].0, alone[i],
                "{name}: request {i}, joined at once"
            );
            assert_eq!(staggered[i].0, alone[i], "{name}: request {i}, staggered");
        }
        assert!(
            staggered.iter().any(|(_, cached)| *cached > 0),
            "{name}: the second round reuses cached prompts"
        );

        // A prompt extending a cached one starts from its cached prefix.
        let mut longer = prompts[4].clone();
        longer.extend_from_slice(&prompts[1]);
        let cold = run(
            &mut engine(&model, EngineConfig::default()),
            &[request(longer.clone())],
            &[0],
        );
        let hit = run(&mut e, &[request(longer)], &[0]);
        assert!(
            hit[0].1 >= prompts[4].len() - 1,
            "{name}: cached {} of the extended prompt",
            hit[0].1
        );
        assert_eq!(
            hit[0].0, cold[0].0,
            "{name}: extension from the prefix cache"
        );

        // All prompts in one right-padded batched prefill.
        let mut e = engine(&model, EngineConfig::default());
        let batched = run(&mut e, &reqs, &vec![0; reqs.len()]);
        for i in 0..reqs.len() {
            assert_eq!(
                batched[i].0, alone[i],
                "{name}: request {i}, batched prefill"
            );
        }
    }
}
