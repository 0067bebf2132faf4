//! `kooka bench`: prefill and decode speed of the engine on one model and one prompt, with
//! the same definitions `scripts/bench.py` uses for mlx-lm, so the two compare directly.
//!
//! The model loads once; one warm-up run (MLX compiles kernels on first use on some
//! backends), then `reps` timed runs. EOS is ignored so every run generates exactly
//! `gen_tokens`. Prefill tokens/s = prompt tokens / time to the first token; decode
//! tokens/s = (tokens after the first) / their time.
//!
//! With `batch` > 1 that many copies of the prompt (each with its own first token, so none
//! shares another's prefix) start together: prefill is all prompt tokens over the time until
//! every sequence has its first token, decode the aggregate of every later token over the
//! time from then to the end: the engine's continuous batching, without HTTP.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::engine::{sampling::SamplingParams, Engine, EngineConfig, SequenceRequest};
use crate::model::{load_model, ComputeDtype};

pub struct BenchOptions {
    pub model: PathBuf,
    pub prompt_ids: Vec<u32>,
    pub gen_tokens: usize,
    pub reps: usize,
    pub dtype: ComputeDtype,
    /// Sequences decoding together.
    pub batch: usize,
    /// Prompt tokens prefilled per engine step.
    pub prefill_chunk: usize,
}

/// `kooka bench --resend`: the engine's time to the first token of one prompt cold, resent
/// (its prefix cached) and resent with `extra` more tokens, in milliseconds, per repetition.
/// No HTTP and no tokenizer: with the same figures over HTTP (`scripts/bench_serve.py`) the
/// difference is what the server adds around the engine.
#[derive(Debug, Default, serde::Serialize)]
pub struct ResendReport {
    pub prompt_tokens: usize,
    pub extra_tokens: usize,
    pub cold_ms: Vec<f64>,
    pub resent_ms: Vec<f64>,
    pub extended_ms: Vec<f64>,
}

#[derive(Debug, serde::Serialize)]
pub struct BenchReport {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub batch: usize,
    pub prefill_tps: Vec<f64>,
    pub decode_tps: Vec<f64>,
    pub peak_memory_gb: f64,
    /// OpenBLAS's kernel set (Linux), which decides the CPU backend's float32 matmul speed.
    pub blas_kernels: Option<String>,
}

impl BenchReport {
    pub fn median(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

pub fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    if options.prompt_ids.is_empty() || options.gen_tokens < 2 {
        bail!("bench needs a non-empty prompt and at least 2 generated tokens");
    }
    let mut engine = Engine::new(load(options)?);
    engine.set_prefill_chunk(options.prefill_chunk);
    let mut report = BenchReport {
        prompt_tokens: options.prompt_ids.len(),
        gen_tokens: options.gen_tokens,
        batch: options.batch.max(1),
        prefill_tps: Vec::new(),
        decode_tps: Vec::new(),
        peak_memory_gb: 0.0,
        #[cfg(target_os = "linux")]
        blas_kernels: crate::openblas::chosen_core(),
        #[cfg(not(target_os = "linux"))]
        blas_kernels: None,
    };
    for rep in 0..=options.reps {
        let (prefill, decode) = one_run(&mut engine, options)?;
        if rep > 0 {
            report.prefill_tps.push(prefill);
            report.decode_tps.push(decode);
        }
    }
    report.peak_memory_gb = mlx_rs::memory::peak_memory().unwrap_or(0) as f64 / 1e9;
    Ok(report)
}

/// Time to the first token, cold / resent / extended, `reps` times after one warm-up (each
/// repetition a prompt of its own, so nothing is cached before its cold run).
pub fn run_resend(options: &BenchOptions, extra: usize) -> anyhow::Result<ResendReport> {
    if options.prompt_ids.is_empty() {
        bail!("bench needs a non-empty prompt");
    }
    let model = load(options)?;
    let vocab = model.config().vocab_size.max(1) as u32;
    let longest = options.prompt_ids.len() + extra;
    let mut engine = Engine::with_config(
        model,
        EngineConfig {
            prefill_chunk: options.prefill_chunk.max(1),
            prefix_cache_tokens: 4 * longest,
            ..EngineConfig::default()
        },
    );
    let mut report = ResendReport {
        prompt_tokens: options.prompt_ids.len(),
        extra_tokens: extra,
        ..ResendReport::default()
    };
    for rep in 0..=options.reps {
        let mut prompt = options.prompt_ids.clone();
        prompt[0] = (prompt[0] + rep as u32) % vocab;
        let mut extended = prompt.clone();
        extended.extend((0..extra as u32).map(|i| 100 + (i * 7 + 3) % 1000));
        let cold = first_token_ms(&mut engine, &prompt)?;
        let resent = first_token_ms(&mut engine, &prompt)?;
        let longer = first_token_ms(&mut engine, &extended)?;
        if rep > 0 {
            report.cold_ms.push(cold);
            report.resent_ms.push(resent);
            report.extended_ms.push(longer);
        }
    }
    Ok(report)
}

fn load(options: &BenchOptions) -> anyhow::Result<Box<dyn crate::model::LanguageModel>> {
    load_model(&options.model, options.dtype)
        .with_context(|| format!("loading {}", options.model.display()))
}

/// A greedy request with no stop ids (every run generates exactly `max_tokens`).
fn greedy(prompt: Vec<u32>, max_tokens: usize) -> SequenceRequest {
    SequenceRequest {
        prompt,
        params: SamplingParams::default(),
        max_tokens,
        ..SequenceRequest::default()
    }
}

/// Milliseconds from adding `prompt` (one token asked) to its token event; runs it out.
fn first_token_ms(engine: &mut Engine, prompt: &[u32]) -> anyhow::Result<f64> {
    let start = Instant::now();
    engine.add(greedy(prompt.to_vec(), 1))?;
    let mut first = None;
    while engine.has_work() {
        let events = engine.step()?;
        if first.is_none() && !events.is_empty() {
            first = Some(start.elapsed());
        }
    }
    let first = first.context("the engine produced no token")?;
    Ok(first.as_secs_f64() * 1e3)
}

fn one_run(engine: &mut Engine, options: &BenchOptions) -> anyhow::Result<(f64, f64)> {
    let batch = options.batch.max(1);
    let vocab = engine.model().config().vocab_size.max(1) as u32;
    let start = Instant::now();
    for i in 0..batch {
        let mut prompt = options.prompt_ids.clone();
        prompt[0] = (prompt[0] + i as u32) % vocab;
        engine.add(greedy(prompt, options.gen_tokens))?;
    }
    let (mut firsts, mut count) = (0usize, 0usize);
    let mut first = None;
    while engine.has_work() {
        for ev in engine.step()? {
            count += 1;
            if ev.cached_tokens.is_some() {
                firsts += 1;
            }
        }
        if first.is_none() && firsts == batch {
            first = Some((Instant::now(), count));
        }
    }
    let end = Instant::now();
    let (first, at_first) = first.context("the engine produced no token")?;
    let prefill = (batch * options.prompt_ids.len()) as f64 / (first - start).as_secs_f64();
    let decode = (count - at_first) as f64 / (end - first).as_secs_f64();
    Ok((prefill, decode))
}
