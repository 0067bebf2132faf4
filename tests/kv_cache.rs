//! A quantized KV cache (`--kv-bits`) in the serving engine, on the default model: rows that
//! batch, leave, resume from the prefix cache and verify drafts read the keys the sequence
//! reads alone, and the cache takes the memory its bits say. (Tokens and logits against
//! mlx-lm's `QuantizedKVCache`: tests/parity.rs.)
//!
//! Batched and alone are not bit-identical here: a key computed in a batched forward can
//! differ from the one computed alone in its last bit (plain caches never show it in the
//! tokens), and quantization turns a last-bit difference at a rounding boundary into a whole
//! quantization step. So the batched logits are compared with a tolerance (measured up to
//! 1.2e-2 of the largest logit at 8 bits on SmolLM2), and a schedule repeated gives the same
//! tokens.

use kooka::engine::{EngineConfig, SequenceRequest, SpeculationConfig};
use kooka::model::{load_model, ComputeDtype, KvQuantization, LayerCache};

mod common;

use common::engine::{chat_prompts, engine, greedy, run_with_logits};

const FOUR_BITS: KvQuantization = KvQuantization {
    bits: 4,
    group_size: 64,
    start: 0,
};

const EIGHT_BITS: KvQuantization = KvQuantization {
    bits: 8,
    ..FOUR_BITS
};

#[test]
fn quantized_rows_batch_resume_and_speculate_as_alone() {
    let dir = common::model("SmolLM2-135M-Instruct");
    let prompts = chat_prompts(
        &dir,
        &[
            "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
            "Write a haiku about the sea.",
            "def fibonacci(n):",
            "List three prime numbers.",
        ],
    );
    let reqs: Vec<SequenceRequest> = prompts
        .iter()
        .zip([40, 24, 32, 16])
        .map(|(p, n)| greedy(p.clone(), n))
        .collect();
    let quantized = EngineConfig {
        prefill_chunk: 256,
        kv_quantization: Some(EIGHT_BITS),
        ..Default::default()
    };
    let mut alone_engine = engine(&dir, quantized);
    let alone: Vec<(Vec<u32>, Vec<f32>)> = reqs
        .iter()
        .map(|r| run_with_logits(&mut alone_engine, std::slice::from_ref(r), &[0]).remove(0))
        .collect();
    let mut plain = engine(
        &dir,
        EngineConfig {
            prefill_chunk: 256,
            ..Default::default()
        },
    );
    let full: Vec<(Vec<u32>, Vec<f32>)> = reqs
        .iter()
        .map(|r| run_with_logits(&mut plain, std::slice::from_ref(r), &[0]).remove(0))
        .collect();
    // The quantized cache is in use: its keys change the prompt's logits (tokens may or may
    // not change at 8 bits, as the machine's rounding falls).
    assert_ne!(
        alone, full,
        "8-bit keys and values changed no token and no logit at all"
    );

    let serving = EngineConfig {
        prefix_cache_tokens: 8192,
        speculation: Some(SpeculationConfig::default()),
        ..quantized
    };
    let mut e = engine(&dir, serving);
    let together = run_with_logits(&mut e, &reqs, &[0; 4]);
    let staggered = run_with_logits(&mut e, &reqs, &[0, 3, 3, 7]);
    let status = e.status();
    let again = run_with_logits(&mut engine(&dir, serving), &reqs, &[0; 4]);
    eprintln!("{:?} {:?}", status.prefix_cache, status.speculation);
    let want = |i: usize| -> Vec<f64> { alone[i].1.iter().map(|&x| x as f64).collect() };
    for i in 0..reqs.len() {
        let (t, s) = (&together[i], &staggered[i]);
        let errs = [
            common::logits_error(&t.1, &want(i)),
            common::logits_error(&s.1, &want(i)),
        ];
        eprintln!(
            "request {i}: logits error batched {:.1e}, resumed {:.1e}",
            errs[0], errs[1]
        );
        assert!(errs.iter().all(|&e| e < 3e-2), "request {i}: {errs:?}");
        assert_eq!(again[i].0, t.0, "request {i}: the same schedule again");
        assert_eq!(s.0.len(), reqs[i].max_tokens, "request {i} ran to its end");
    }
    assert!(
        status.prefix_cache.hit_tokens > 0,
        "resumed from the prefix cache"
    );
    assert!(status.speculation.is_some_and(|s| s.accepted > 0));
}

/// A 600-token prompt's cache at 4 and 8 bits, against full precision.
#[test]
fn quantized_caches_take_the_memory_their_bits_say() {
    let dir = common::model("SmolLM2-135M-Instruct");
    let model = load_model(&dir, ComputeDtype::Auto).expect("model");
    let ids: Vec<u32> = (0..600u32).map(|i| 100 + (i * 37) % 5000).collect();
    let ids = mlx_rs::Array::from_slice(&ids, &[1, 600]);
    let bytes = |q: Option<KvQuantization>| -> usize {
        let mut caches = model.make_caches();
        caches.iter_mut().for_each(|c| c.set_quantization(q));
        model.forward(&ids, &mut caches).expect("forward");
        mlx_rs::transforms::eval(caches.iter().flat_map(LayerCache::state)).expect("eval");
        caches.iter().map(LayerCache::nbytes).sum()
    };
    let full = bytes(None);
    let four = bytes(Some(FOUR_BITS));
    let eight = bytes(Some(EIGHT_BITS));
    // Head dim 64, group 64: 4 bits = 8 + 2 lanes of 4 bytes per head vector, 8 bits 16 + 2;
    // full precision 64 values (float32 on the CPU, else 16-bit).
    let value = full / (600usize.next_multiple_of(256) * 30 * 2 * 3 * 64);
    eprintln!("{value}-byte values: {full} bytes, 8 bits {eight}, 4 bits {four}");
    assert_eq!(four * 64 * value, full * 40, "4 bits");
    assert_eq!(eight * 64 * value, full * 72, "8 bits");
}
