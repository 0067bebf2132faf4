//! Continuous batching and the prefix cache, on the default model (SmolLM2-135M-Instruct)
//! in-process: each sequence's tokens in a batch (joining and leaving at different steps,
//! mixed sampling settings) against the same request run alone, and prompts that reuse
//! cached prefixes against the same prompts without a cache.

use std::path::PathBuf;
use std::sync::Mutex;

use kooka::engine::sampling::SamplingParams;
use kooka::engine::{Engine, EngineConfig, SequenceRequest};
use kooka::model::{load_model, ComputeDtype};

mod common;

use common::engine::run;

static MLX: Mutex<()> = Mutex::new(());

fn model_dir() -> PathBuf {
    common::model("SmolLM2-135M-Instruct")
}

fn engine(config: EngineConfig) -> Engine {
    Engine::with_config(
        load_model(&model_dir(), ComputeDtype::Auto).expect("model"),
        config,
    )
}

fn prompts() -> Vec<Vec<u32>> {
    common::engine::chat_prompts(
        &model_dir(),
        &[
            "Write a haiku about the sea.",
            "What is the capital of France? Answer in one sentence.",
            "List three prime numbers and explain why each is prime, briefly, in a numbered list.",
            "def fibonacci(n):",
            "Explain what a hash map is to a child who has never seen a computer, in two \
             paragraphs, using an analogy with a library and its card catalogue.",
            "Translate 'good morning' into Spanish, French and German.",
        ],
    )
}

fn request(prompt: Vec<u32>, params: SamplingParams, max_tokens: usize) -> SequenceRequest {
    SequenceRequest {
        prompt,
        params,
        max_tokens,
        stop_ids: vec![2],
        return_prompt_logits: false,
        constraint: None,
        checkpoints: Vec::new(),
    }
}

fn params(temperature: f32, seed: Option<u64>) -> SamplingParams {
    SamplingParams {
        temperature,
        seed,
        ..Default::default()
    }
}

#[test]
fn a_sequence_gives_the_same_tokens_in_a_batch_as_alone() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let prompts = prompts();
    // Greedy, seeded sampling, penalties and logprobs mixed in one batch.
    let mut reqs: Vec<SequenceRequest> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let mut sp = match i % 3 {
            0 => params(0.0, None),
            1 => params(0.8, Some(100 + i as u64)),
            _ => params(0.0, None),
        };
        if i == 2 {
            sp.repetition_penalty = Some(1.3);
            sp.logprobs = true;
            sp.top_logprobs = 3;
        }
        reqs.push(request(p.clone(), sp, 24 + 4 * i));
    }
    let mut alone = Vec::new();
    let mut e = engine(EngineConfig::default());
    for r in &reqs {
        alone.push(run(&mut e, std::slice::from_ref(r), &[0]).remove(0).0);
    }
    // All at once, with a small prefill chunk so prompts are read over several steps while
    // others decode; then staggered joins.
    let mut e = engine(EngineConfig {
        prefill_chunk: 16,
        prefix_cache_tokens: 0,
        windowed_caches: false,
        ..Default::default()
    });
    let together = run(&mut e, &reqs, &vec![0; reqs.len()]);
    let staggered = run(&mut e, &reqs, &[0, 3, 3, 7, 20, 21]);
    let again = run(&mut e, &reqs, &vec![0; reqs.len()]);
    for i in 0..reqs.len() {
        assert!(!alone[i].is_empty());
        // Seeded sampling repeats under the same schedule; against the request alone it may
        // part where a draw sits on a boundary that a batched matmul's rounding moves
        // (docs/PERFORMANCE.md), so only greedy rows are compared with their run alone.
        assert_eq!(
            again[i].0, together[i].0,
            "request {i}, the same batch again"
        );
        if reqs[i].params.temperature > 0.0 {
            continue;
        }
        assert_eq!(together[i].0, alone[i], "request {i}, all joined at once");
        assert_eq!(staggered[i].0, alone[i], "request {i}, staggered joins");
    }
    // Greedy-only batch (one argmax for every row).
    let greedy: Vec<SequenceRequest> = prompts
        .iter()
        .map(|p| request(p.clone(), params(0.0, None), 20))
        .collect();
    let mut e = engine(EngineConfig::default());
    let mut one = Vec::new();
    for r in &greedy {
        one.push(run(&mut e, std::slice::from_ref(r), &[0]).remove(0).0);
    }
    let batched = run(&mut e, &greedy, &[0, 0, 1, 1, 2, 2]);
    for i in 0..greedy.len() {
        assert_eq!(batched[i].0, one[i], "greedy request {i}");
    }
}

#[test]
fn cached_prefixes_give_the_same_tokens_and_are_reported() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let prompts = prompts();
    let base = prompts[4].clone();
    let mut extended = base.clone();
    extended.extend_from_slice(&prompts[1][3..]);
    let reqs = [
        request(base.clone(), params(0.0, None), 16),
        request(base.clone(), params(0.0, None), 16),
        request(extended.clone(), params(0.0, None), 16),
    ];
    let mut cold = engine(EngineConfig::default());
    let expected: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| run(&mut cold, std::slice::from_ref(r), &[0]).remove(0).0)
        .collect();
    let mut e = engine(EngineConfig {
        prefill_chunk: 2048,
        prefix_cache_tokens: 10_000,
        windowed_caches: false,
        ..Default::default()
    });
    let got: Vec<(Vec<u32>, usize)> = reqs
        .iter()
        .map(|r| run(&mut e, std::slice::from_ref(r), &[0]).remove(0))
        .collect();
    assert_eq!(got[0].1, 0, "nothing cached yet");
    assert_eq!(
        got[1].1,
        base.len() - 1,
        "the same prompt: all but its last token"
    );
    assert!(
        got[2].1 >= base.len() - 1,
        "an extension reuses the whole earlier prompt"
    );
    for i in 0..reqs.len() {
        assert_eq!(got[i].0, expected[i], "request {i}");
    }
    let stats = e.status().prefix_cache;
    assert_eq!(stats.hits, 2);
    assert!(stats.tokens <= 10_000 && stats.bytes > 0);

    // A small budget: many distinct prompts never hold more than it.
    let mut e = engine(EngineConfig {
        prefill_chunk: 2048,
        prefix_cache_tokens: 120,
        windowed_caches: false,
        ..Default::default()
    });
    let all: Vec<SequenceRequest> = prompts
        .iter()
        .map(|p| request(p.clone(), params(0.0, None), 8))
        .collect();
    run(&mut e, &all, &vec![0; all.len()]);
    let stats = e.status().prefix_cache;
    assert!(stats.tokens <= 120, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
}

/// Sliding-window models (gpt-oss's alternating windows, Mistral's): with windowed caches, as
/// `kooka serve` runs them, their sequences batch (joining at different steps, prompts read in
/// chunks longer and shorter than the window of 8) and reuse cached prefixes, and give the
/// tokens they give alone with mlx-lm's rotating caches.
#[test]
fn sliding_window_models_batch_with_windowed_caches() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["gpt_oss-mxfp4", "mistral_swa-q4g64"] {
        let dir = common::tiny_model(name);
        let load = || load_model(&dir, ComputeDtype::Auto).expect("model");
        let mut reqs: Vec<SequenceRequest> = [5u32, 13, 27, 40]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let prompt = (0..n)
                    .map(|i| (i * 37 + 11 + 53 * k as u32) % 320)
                    .collect();
                request(prompt, params(0.0, None), 20)
            })
            .collect();
        let mut longer = reqs[3].prompt.clone();
        longer.extend([7, 8, 9]);
        reqs.push(request(longer, params(0.0, None), 20));
        let mut rotating = Engine::new(load());
        let alone: Vec<Vec<u32>> = reqs
            .iter()
            .map(|r| {
                run(&mut rotating, std::slice::from_ref(r), &[0])
                    .remove(0)
                    .0
            })
            .collect();
        let mut windowed = Engine::with_config(
            load(),
            EngineConfig {
                prefill_chunk: 7,
                prefix_cache_tokens: 4096,
                windowed_caches: true,
                ..Default::default()
            },
        );
        let mut got = run(&mut windowed, &reqs[..4], &[0, 0, 2, 5]);
        let reused = run(&mut windowed, &reqs[4..], &[0]);
        assert!(
            reused[0].1 >= 40,
            "{name}: the longer prompt reused {} tokens",
            reused[0].1
        );
        got.extend(reused);
        for (i, (tokens, _)) in got.iter().enumerate() {
            assert_eq!(tokens, &alone[i], "{name}: request {i} batched vs alone");
        }
    }
}

/// With nothing else decoding, a prompt's first token comes out of the step that reads the
/// prompt (before any forward for the next token is queued); a one-token request is then
/// done, and a longer one goes on with the same tokens as when it joins a running batch.
#[test]
fn the_first_token_comes_with_the_prompt_when_nothing_else_decodes() {
    let _g = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let prompt = prompts().remove(4);
    let mut e = engine(EngineConfig::default());
    e.add(request(prompt.clone(), params(0.0, None), 1))
        .unwrap();
    let events = e.step().unwrap();
    assert_eq!(events.len(), 1, "the first step reports the first token");
    assert!(events[0].finish.is_some());
    assert!(!e.has_work(), "a one-token request is done after one step");
    // A longer one: its first token is out after one step, and no forward has read it yet
    // (cancelled now, the prefix cache gets the prompt's positions only).
    let mut e = engine(EngineConfig {
        prefix_cache_tokens: 4096,
        ..Default::default()
    });
    let id = e
        .add(request(prompt.clone(), params(0.0, None), 12))
        .unwrap();
    assert_eq!(e.step().unwrap().len(), 1);
    e.cancel(id);
    assert_eq!(e.status().prefix_cache.tokens, prompt.len());
    let alone = run(
        &mut e,
        &[request(prompt.clone(), params(0.0, None), 12)],
        &[0],
    );
    // The same request joining a batch that is already decoding another one.
    let other = prompts().remove(0);
    let joined = run(
        &mut e,
        &[
            request(other, params(0.0, None), 30),
            request(prompt, params(0.0, None), 12),
        ],
        &[0, 3],
    );
    assert_eq!(joined[1].0, alone[0].0);
    assert_eq!(alone[0].0.len(), 12);
}
