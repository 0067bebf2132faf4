//! One prompt to completion on an [`Engine`]: EOS ids, stop strings, streaming text and
//! the throughput numbers `kooka generate` prints.

use std::time::Instant;

use super::sampling::SamplingParams;
use super::text::{Decode, StopCheck, StopMatcher, StreamDetokenizer};
use super::{Engine, FinishReason, SequenceRequest, TokenEvent};
use crate::model::Result;

#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub params: SamplingParams,
    pub stop_strings: Vec<String>,
    /// Extra EOS ids (the model config's are always added unless `ignore_eos`).
    pub eos_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub return_prompt_logits: bool,
    /// Constrained decoding (the engine needs a constrainer).
    pub constraint: Option<crate::constrain::Grammar>,
}

/// How a generation went, plain data.
#[derive(Debug, Clone, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    /// Prompt tokens per second (time to the first token).
    pub prompt_tps: f64,
    pub generation_tokens: usize,
    /// Generated tokens per second after the first one.
    pub generation_tps: f64,
    pub peak_memory_gb: f64,
    pub tokens: Vec<u32>,
    pub prompt_logits: Option<Vec<f32>>,
    /// `Some("eos" | "length" | "stop")`.
    pub finish: Option<&'static str>,
}

impl std::fmt::Display for GenerationStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prompt: {} tokens, {:.1} tokens/s | generation: {} tokens, {:.1} tokens/s | peak memory: {:.2} GB",
            self.prompt_tokens, self.prompt_tps, self.generation_tokens, self.generation_tps, self.peak_memory_gb
        )
    }
}

/// Runs `prompt` to completion. `on_text` gets complete UTF-8 text as it is produced
/// (nothing of a stop string, nothing of an EOS token); `on_token` every token event.
pub fn generate(
    engine: &mut Engine,
    decoder: Option<&dyn Decode>,
    prompt: Vec<u32>,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
    on_token: &mut dyn FnMut(&TokenEvent),
) -> Result<GenerationStats> {
    let mut stop_ids = Vec::new();
    if !opts.ignore_eos {
        stop_ids.extend(engine.model().config().eos_ids());
        stop_ids.extend(&opts.eos_ids);
        stop_ids.sort_unstable();
        stop_ids.dedup();
    }
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let start = Instant::now();
    let req = SequenceRequest {
        prompt,
        params: opts.params.clone(),
        max_tokens: opts.max_tokens,
        stop_ids,
        return_prompt_logits: opts.return_prompt_logits,
        constraint: opts.constraint.clone(),
        checkpoints: Vec::new(),
    };
    let id = engine.add(req)?;
    let mut detok = StreamDetokenizer::new();
    let mut stops = StopMatcher::new(opts.stop_strings.clone());
    let mut first_at = None;
    'outer: while engine.has_work() {
        for mut ev in engine.step()? {
            if ev.seq != id {
                continue;
            }
            let now = Instant::now();
            if first_at.is_none() {
                first_at = Some(now);
                stats.prompt_tps =
                    stats.prompt_tokens as f64 / now.duration_since(start).as_secs_f64().max(1e-9);
            }
            stats.prompt_logits = ev.prompt_logits.take().or(stats.prompt_logits.take());
            on_token(&ev);
            if !ev.is_end {
                stats.tokens.push(ev.token);
            }
            stats.generation_tokens += 1;
            if let (Some(dec), false) = (decoder, ev.is_end) {
                let piece = detok.push(dec, ev.token)?;
                let StopCheck { text, stopped } = stops.push(&piece);
                if !text.is_empty() {
                    on_text(&text);
                }
                if stopped.is_some() {
                    stats.finish = Some("stop");
                    engine.cancel(id);
                    break 'outer;
                }
            }
            match ev.finish {
                Some(FinishReason::Stop) => stats.finish = Some("eos"),
                Some(FinishReason::Length) => stats.finish = Some("length"),
                None => continue,
            }
            break 'outer;
        }
    }
    if stats.finish != Some("stop") {
        if let Some(dec) = decoder {
            let tail = detok.flush(dec)?;
            let StopCheck { text, .. } = stops.push(&tail);
            let rest = stops.flush();
            let all = text + &rest;
            if !all.is_empty() {
                on_text(&all);
            }
        }
    }
    if let Some(first) = first_at {
        let n = stats.generation_tokens.saturating_sub(1);
        let secs = Instant::now().duration_since(first).as_secs_f64();
        stats.generation_tps = if n > 0 && secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        };
    }
    stats.peak_memory_gb = mlx_rs::memory::peak_memory().unwrap_or(0) as f64 / 1e9;
    Ok(stats)
}
