//! Driving an in-process engine step by step (tests/batching.rs, tests/mla.rs,
//! tests/hybrid.rs), and mlx-lm's greedy tokens to compare with.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use kooka::engine::sampling::SamplingParams;
use kooka::engine::{Engine, EngineConfig, SeqId, SequenceRequest};
use kooka::model::{load_model, ComputeDtype};

/// Runs `reqs`, each added once `start[i]` steps have run; returns each one's tokens and
/// the cached prompt tokens of its first event.
pub fn run(
    engine: &mut Engine,
    reqs: &[SequenceRequest],
    start: &[usize],
) -> Vec<(Vec<u32>, usize)> {
    drive(engine, reqs, start, |o: &mut (Vec<u32>, usize), ev| {
        o.0.push(ev.token);
        if let Some(c) = ev.cached_tokens {
            o.1 = c;
        }
    })
}

/// [`run`] returning each one's tokens and its last prompt position's logits.
pub fn run_with_logits(
    engine: &mut Engine,
    reqs: &[SequenceRequest],
    start: &[usize],
) -> Vec<(Vec<u32>, Vec<f32>)> {
    let reqs: Vec<SequenceRequest> = reqs
        .iter()
        .map(|r| SequenceRequest {
            return_prompt_logits: true,
            ..r.clone()
        })
        .collect();
    drive(engine, &reqs, start, |o: &mut (Vec<u32>, Vec<f32>), ev| {
        o.0.push(ev.token);
        if let Some(l) = ev.prompt_logits {
            o.1 = l;
        }
    })
}

/// Adds `reqs[i]` once `start[i]` steps have run, steps until all are done, and folds each
/// event into its request's output with `record`.
fn drive<T: Default + Clone>(
    engine: &mut Engine,
    reqs: &[SequenceRequest],
    start: &[usize],
    mut record: impl FnMut(&mut T, kooka::engine::TokenEvent),
) -> Vec<T> {
    let mut ids: HashMap<SeqId, usize> = HashMap::new();
    let mut out = vec![T::default(); reqs.len()];
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
            record(&mut out[ids[&ev.seq]], ev);
        }
        step += 1;
    }
    out
}

/// An engine over `model` in compute dtype `auto` (float32 on CPU).
pub fn engine(model: &Path, config: EngineConfig) -> Engine {
    Engine::with_config(
        load_model(model, ComputeDtype::Auto).expect("model"),
        config,
    )
}

/// Token prompts of the given lengths, each different (ids below 320, the tiny models').
pub fn tiny_prompts(lengths: &[usize]) -> Vec<Vec<u32>> {
    lengths
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            (0..n as u32)
                .map(|i| (i * 37 + k as u32 * 11 + 3) % 320)
                .collect()
        })
        .collect()
}

/// Each text as a one-message user chat in the model's template, tokenized.
pub fn chat_prompts(dir: &Path, texts: &[&str]) -> Vec<Vec<u32>> {
    let tok = kooka::tokenizer::Tokenizer::load(dir).expect("tokenizer");
    texts
        .iter()
        .map(|p| {
            let msgs = json!([{"role": "user", "content": p}]);
            let text = tok.apply_chat_template(&msgs, true).expect("template");
            tok.encode(&text, false).expect("encode")
        })
        .collect()
}

/// A greedy request for `max_tokens` tokens, no stop ids.
pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> SequenceRequest {
    SequenceRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        max_tokens,
        ..Default::default()
    }
}

/// mlx-lm's greedy tokens for each prompt (float32, as `auto` computes on CPU).
pub fn greedy_reference(model: &Path, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let jobs: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"model": model, "tokens": p, "max_tokens": max_tokens, "f32": true}))
        .collect();
    let file = super::tmp().join(format!(
        "greedy-jobs-{}-{}.json",
        std::process::id(),
        model.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&file, Value::Array(jobs).to_string()).unwrap();
    let out = Command::new(super::root().join("third_party/venv/bin/python"))
        .arg(super::root().join("tests/python/mlx_lm_reference.py"))
        .arg(&file)
        .output()
        .expect("running mlx_lm_reference.py (run scripts/setup.sh --tests)");
    assert!(
        out.status.success(),
        "mlx_lm_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reference JSON");
    refs.iter()
        .map(|r| {
            r["tokens"]
                .as_array()
                .expect("tokens")
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}
