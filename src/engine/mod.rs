//! Generation over a [`LanguageModel`](crate::model::LanguageModel) for a batch of
//! sequences, each with its own position, KV caches, logits processors and sampler.
//!
//! The engine owns MLX state and must stay on one thread (the future model actor); what
//! goes in ([`SequenceRequest`]) and comes out ([`TokenEvent`]) is plain data.
//!
//! Per sequence: the prompt except its last token is prefilled in chunks of
//! `prefill_step_size` (caches evaluated after each chunk), then the last prompt token is
//! run alone and its sample queued. Each [`Engine::step`] first queues (async_eval) every
//! sequence's next forward, fed with the still-lazy sampled token, and only then reads the
//! current tokens, so the device computes step n+1 while the host handles token n (as
//! mlx-lm's `generate_step`). Sequences are run one forward each for now; the API is
//! already batch-shaped.

pub mod generate;
pub mod sampling;
pub mod text;

use mlx_rs::ops::indexing::{take_along_axis, TryIndexOp};
use mlx_rs::{ops, transforms, Array, Dtype};

use crate::model::{KvCache, LanguageModel, ModelError, Result};
use sampling::{make_processors, LogitsProcessor, Sampler, SamplingParams};

/// Identifies a sequence within one engine.
pub type SeqId = u64;

/// One generation request, plain data.
#[derive(Debug, Clone, Default)]
pub struct SequenceRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Token ids that end the sequence (not emitted as text, reported with the event).
    pub stop_ids: Vec<u32>,
    /// Return the raw logits of the last prompt position with the first event (debug,
    /// parity tests).
    pub return_prompt_logits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS / stop token was sampled.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One generated token, plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub seq: SeqId,
    pub token: u32,
    /// Log-probability of `token` (when the request asked for logprobs).
    pub logprob: Option<f32>,
    /// Most likely tokens and their log-probabilities, best first.
    pub top_logprobs: Vec<(u32, f32)>,
    pub finish: Option<FinishReason>,
    /// Raw last-prompt-position logits, first event only, when requested.
    pub prompt_logits: Option<Vec<f32>>,
}

/// The lazy result of one forward + sample.
struct Pending {
    token: Array,
    logprobs: Array,
}

struct Sequence {
    id: SeqId,
    caches: Vec<KvCache>,
    /// Prompt + generated ids (int32, 1-D, last entry possibly lazy); only kept when a
    /// processor needs it.
    history: Option<Array>,
    processors: Vec<Box<dyn LogitsProcessor>>,
    sampler: Sampler,
    pending: Pending,
    generated: usize,
    req: SequenceRequest,
    prompt_logits: Option<Array>,
}

/// Batched generation state over one model.
pub struct Engine {
    model: Box<dyn LanguageModel>,
    seqs: Vec<Sequence>,
    next_id: SeqId,
    pub prefill_step_size: usize,
    steps: u64,
}

impl Engine {
    pub fn new(model: Box<dyn LanguageModel>) -> Self {
        Engine {
            model,
            seqs: Vec::new(),
            next_id: 0,
            prefill_step_size: 2048,
            steps: 0,
        }
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Prefills a new sequence and queues its first token.
    pub fn add(&mut self, req: SequenceRequest) -> Result<SeqId> {
        if req.prompt.is_empty() {
            return Err(ModelError::Request("empty prompt".into()));
        }
        if req.max_tokens == 0 {
            return Err(ModelError::Request("max_tokens must be at least 1".into()));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(bad) = req.prompt.iter().find(|&&t| t as i64 >= vocab as i64) {
            return Err(ModelError::Request(format!(
                "token id {bad} outside the vocabulary ({vocab})"
            )));
        }
        let mut caches = self.model.make_caches();
        let processors = make_processors(&req.params, vocab);
        let sampler = Sampler::new(&req.params)?;
        let step = self.prefill_step_size.max(1);
        let (head, last) = req.prompt.split_at(req.prompt.len() - 1);
        let last = last.to_vec();
        for chunk in head.chunks(step) {
            let ids = Array::from_slice(chunk, &[1, chunk.len() as i32]);
            let _ = self.model.forward(&ids, &mut caches)?;
            transforms::eval(caches.iter().flat_map(|c| c.state()))?;
            mlx_rs::memory::clear_cache()?;
        }
        let history = if processors.is_empty() {
            None
        } else {
            Some(Array::from_slice(
                &req.prompt.iter().map(|&t| t as i32).collect::<Vec<_>>(),
                &[req.prompt.len() as i32],
            ))
        };
        let id = self.next_id;
        self.next_id += 1;
        let mut seq = Sequence {
            id,
            caches,
            history,
            processors,
            sampler,
            pending: Pending {
                token: Array::from_int(0),
                logprobs: Array::from_int(0),
            },
            generated: 0,
            req,
            prompt_logits: None,
        };
        let input = Array::from_slice(&last, &[1, 1]);
        seq.pending = self.forward_and_sample(&mut seq, &input, true)?;
        transforms::async_eval(seq.pending_arrays())?;
        self.seqs.push(seq);
        Ok(id)
    }

    /// Drops a sequence (e.g. a stop string matched, or the client went away).
    pub fn cancel(&mut self, id: SeqId) {
        self.seqs.retain(|s| s.id != id);
    }

    /// One decode step for every sequence: queue each next forward, then read each token.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>> {
        let mut next: Vec<Option<Pending>> = Vec::with_capacity(self.seqs.len());
        let mut seqs = std::mem::take(&mut self.seqs);
        for seq in seqs.iter_mut() {
            if seq.generated + 1 < seq.req.max_tokens {
                let input = seq.pending.token.reshape(&[1, 1])?;
                let p = self.forward_and_sample(seq, &input, false)?;
                transforms::async_eval([&p.token, &p.logprobs])?;
                next.push(Some(p));
            } else {
                next.push(None);
            }
        }
        let mut events = Vec::with_capacity(seqs.len());
        let mut keep = Vec::with_capacity(seqs.len());
        for (mut seq, next) in seqs.into_iter().zip(next) {
            let ev = seq.read_event()?;
            let done = ev.finish.is_some();
            events.push(ev);
            if !done {
                if let Some(p) = next {
                    seq.pending = p;
                }
                keep.push(seq);
            }
        }
        self.seqs = keep;
        self.steps += 1;
        if self.steps & 255 == 0 {
            mlx_rs::memory::clear_cache()?;
        }
        Ok(events)
    }

    /// Forward `input` `[1, L]` through the sequence's caches, process and sample.
    fn forward_and_sample(
        &self,
        seq: &mut Sequence,
        input: &Array,
        first: bool,
    ) -> Result<Pending> {
        let logits = self.model.forward(input, &mut seq.caches)?;
        let l = logits.shape()[1];
        let mut logits = logits.try_index((.., l - 1, ..))?;
        if first && seq.req.return_prompt_logits {
            seq.prompt_logits = Some(logits.clone());
        }
        if let Some(hist) = seq.history.as_mut() {
            if !first {
                *hist =
                    ops::concatenate(&[&*hist, &input.reshape(&[-1])?.as_dtype(Dtype::Int32)?], 0)?;
            }
            for p in seq.processors.iter_mut() {
                logits = p.process(hist, &logits)?;
            }
        }
        let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
        let token = seq.sampler.sample(&logprobs)?;
        Ok(Pending { token, logprobs })
    }
}

impl Sequence {
    fn pending_arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.pending.token, &self.pending.logprobs];
        v.extend(self.prompt_logits.iter());
        v
    }

    /// Reads the pending token (blocks on its evaluation) and turns it into an event.
    fn read_event(&mut self) -> Result<TokenEvent> {
        let token = self.pending.token.try_index(0)?.try_item_exact::<u32>()?;
        self.generated += 1;
        let wants = self.req.params.logprobs || self.req.params.top_logprobs > 0;
        let (mut logprob, mut top) = (None, Vec::new());
        if wants {
            let lp = self
                .pending
                .logprobs
                .reshape(&[-1])?
                .as_dtype(Dtype::Float32)?;
            if self.req.params.logprobs {
                let idx = Array::from_slice(&[token as i32], &[1]);
                logprob = Some(take_along_axis(&lp, &idx, 0)?.try_item_exact::<f32>()?);
            }
            if self.req.params.top_logprobs > 0 {
                lp.eval()?;
                let host = lp.as_slice::<f32>();
                let mut order: Vec<u32> = (0..host.len() as u32).collect();
                let k = self.req.params.top_logprobs.min(order.len());
                order.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
                    host[b as usize].total_cmp(&host[a as usize])
                });
                order.truncate(k);
                order.sort_by(|&a, &b| host[b as usize].total_cmp(&host[a as usize]));
                top = order.into_iter().map(|i| (i, host[i as usize])).collect();
            }
        }
        let prompt_logits = match self.prompt_logits.take() {
            Some(a) => {
                let a = a.reshape(&[-1])?.as_dtype(Dtype::Float32)?;
                a.eval()?;
                Some(a.as_slice::<f32>().to_vec())
            }
            None => None,
        };
        let finish = if self.req.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.generated >= self.req.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        Ok(TokenEvent {
            seq: self.id,
            token,
            logprob,
            top_logprobs: top,
            finish,
            prompt_logits,
        })
    }
}
