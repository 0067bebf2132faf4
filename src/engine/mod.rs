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
//!
//! A sequence with a [`Grammar`] (constrained decoding, see [`crate::constrain`]) differs in
//! one way: its next sample needs the grammar's mask, which needs the current token. Its
//! next forward is still queued first; the current token is then read and committed to the
//! matcher, and the mask is computed on the host while the forward runs, then applied to the
//! logits before sampling (`constrained.rs`). When the grammar is complete the sequence ends
//! with [`FinishReason::Stop`] (its first stop id as the token), as if EOS had been sampled.

mod constrained;
pub mod generate;
pub mod sampling;
pub mod text;

use mlx_rs::ops::indexing::{take_along_axis, TryIndexOp};
use mlx_rs::{ops, transforms, Array, Dtype};

use crate::constrain::{Constrainer, Grammar};
use crate::model::{KvCache, LanguageModel, ModelError, Result};
use constrained::SeqConstraint;
use sampling::{make_processors, LogitsProcessor, Sampler, SamplingParams};

/// Identifies a sequence within one engine.
pub type SeqId = u64;

/// One generation request, plain data (it crosses the control plane as is).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SequenceRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    /// Token ids that end the sequence (not emitted as text, reported with the event).
    pub stop_ids: Vec<u32>,
    /// Return the raw logits of the last prompt position with the first event (debug,
    /// parity tests).
    pub return_prompt_logits: bool,
    /// Constrained decoding: the reply must match this grammar (needs
    /// [`Engine::set_constrainer`]). `None` costs nothing.
    pub constraint: Option<Grammar>,
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

/// The lazy result of one forward + sample. Everything the event needs is built here,
/// before the next step is queued: an op created after that would run behind the next
/// forward on the device's in-order stream, and reading it would wait for that forward.
struct Pending {
    /// The sampled id, `[1]` uint32.
    token: Array,
    logprobs: Array,
    /// The sampled token's log-probability `[1]` f32, when the request wants logprobs.
    logprob: Option<Array>,
    /// The most likely ids and their log-probabilities (unordered), when wanted.
    top: Option<(Array, Array)>,
}

impl Pending {
    /// A token that was not sampled (the end of a completed grammar).
    fn fixed(token: Array) -> Self {
        Pending {
            token,
            logprobs: Array::from_f32(0.0),
            logprob: None,
            top: None,
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.token, &self.logprobs];
        v.extend(self.logprob.iter());
        v.extend(self.top.iter().flat_map(|(i, l)| [i, l]));
        v
    }
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
    /// The grammar matcher of a constrained sequence.
    constraint: Option<SeqConstraint>,
}

/// What step n queued for a sequence before reading its token n.
enum Queued {
    /// Nothing: the sequence ends with token n.
    Nothing,
    /// The next token, sampled (unconstrained).
    Sample(Pending),
    /// Only the next forward's logits; the sample waits for the grammar's mask.
    Logits(Array),
}

/// Batched generation state over one model.
pub struct Engine {
    model: Box<dyn LanguageModel>,
    seqs: Vec<Sequence>,
    next_id: SeqId,
    pub prefill_step_size: usize,
    steps: u64,
    /// Compiles the grammars of constrained requests (the tokenizer's vocabulary as bytes).
    constrainer: Option<Constrainer>,
}

impl Engine {
    pub fn new(model: Box<dyn LanguageModel>) -> Self {
        Engine {
            model,
            seqs: Vec::new(),
            next_id: 0,
            prefill_step_size: 2048,
            steps: 0,
            constrainer: None,
        }
    }

    /// Enables constrained requests ([`SequenceRequest::constraint`]); build the
    /// [`Constrainer`] once from the model's tokenizer.
    pub fn set_constrainer(&mut self, constrainer: Constrainer) {
        self.constrainer = Some(constrainer);
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
        let constraint = match &req.constraint {
            None => None,
            Some(grammar) => {
                let constrainer = self.constrainer.as_ref().ok_or_else(|| {
                    ModelError::Request(
                        "constrained decoding is not enabled on this engine (no tokenizer given)"
                            .into(),
                    )
                })?;
                let matcher = constrainer
                    .matcher(grammar)
                    .map_err(|e| ModelError::Request(e.to_string()))?;
                tracing::debug!(grammar = grammar.describe(), "constrained sequence");
                Some(SeqConstraint::new(matcher, vocab.max(0) as usize))
            }
        };
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
            pending: Pending::fixed(Array::from_int(0)),
            generated: 0,
            req,
            prompt_logits: None,
            constraint,
        };
        let input = Array::from_slice(&last, &[1, 1]);
        seq.pending = if seq.constraint.is_some() {
            let logits = self.forward_logits(&mut seq, &input, true)?;
            transforms::async_eval([&logits])?;
            self.sample_constrained(&mut seq, logits)?
        } else {
            self.forward_and_sample(&mut seq, &input, true)?
        };
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
        let mut next: Vec<Queued> = Vec::with_capacity(self.seqs.len());
        let mut seqs = std::mem::take(&mut self.seqs);
        for seq in seqs.iter_mut() {
            let ending = seq.constraint.as_ref().is_some_and(|c| c.finish_next);
            if seq.generated + 1 >= seq.req.max_tokens || ending {
                next.push(Queued::Nothing);
                continue;
            }
            let input = seq.pending.token.reshape(&[1, 1])?;
            if seq.constraint.is_some() {
                let logits = self.forward_logits(seq, &input, false)?;
                transforms::async_eval([&logits])?;
                next.push(Queued::Logits(logits));
            } else {
                let p = self.forward_and_sample(seq, &input, false)?;
                transforms::async_eval(p.arrays())?;
                next.push(Queued::Sample(p));
            }
        }
        let mut events = Vec::with_capacity(seqs.len());
        let mut keep = Vec::with_capacity(seqs.len());
        for (mut seq, next) in seqs.into_iter().zip(next) {
            let ev = seq.read_event()?;
            let done = ev.finish.is_some();
            let token = ev.token;
            events.push(ev);
            if done {
                continue;
            }
            match next {
                Queued::Sample(p) => seq.pending = p,
                Queued::Logits(logits) => {
                    if let Some(c) = seq.constraint.as_mut() {
                        c.accept(seq.id, token);
                    }
                    let p = self.sample_constrained(&mut seq, logits)?;
                    transforms::async_eval(p.arrays())?;
                    seq.pending = p;
                }
                Queued::Nothing => {}
            }
            keep.push(seq);
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
        let logits = self.forward_logits(seq, input, first)?;
        sample(seq, logits, None)
    }

    /// Forward `input` `[1, L]` through the sequence's caches: the last position's logits
    /// `[1, V]` (lazy); the input joins the processors' history.
    fn forward_logits(&self, seq: &mut Sequence, input: &Array, first: bool) -> Result<Array> {
        let logits = self.model.forward(input, &mut seq.caches)?;
        let l = logits.shape()[1];
        let logits = logits.try_index((.., l - 1, ..))?;
        if first && seq.req.return_prompt_logits {
            seq.prompt_logits = Some(logits.clone());
        }
        if let (Some(hist), false) = (seq.history.as_mut(), first) {
            *hist = ops::concatenate(&[&*hist, &input.reshape(&[-1])?.as_dtype(Dtype::Int32)?], 0)?;
        }
        Ok(logits)
    }

    /// Samples a constrained sequence's next token from `logits` under its grammar's mask
    /// (computed here, on the host, while the forward behind `logits` runs), or queues its
    /// end when the grammar is complete.
    fn sample_constrained(&self, seq: &mut Sequence, logits: Array) -> Result<Pending> {
        let mask = match seq.constraint.as_mut() {
            Some(c) => c.next_mask(seq.id, &seq.req.stop_ids)?,
            None => return sample(seq, logits, None),
        };
        match mask {
            Some(mask) => sample(seq, logits, Some(&mask)),
            None => Ok(Pending::fixed(constrained::end_token(&seq.req.stop_ids))),
        }
    }
}

/// Processors, then the grammar's additive `mask` if any, then the sampler.
fn sample(seq: &mut Sequence, mut logits: Array, mask: Option<&Array>) -> Result<Pending> {
    if let Some(hist) = seq.history.as_ref() {
        for p in seq.processors.iter_mut() {
            logits = p.process(hist, &logits)?;
        }
    }
    if let Some(mask) = mask {
        logits = logits.add(mask.as_dtype(logits.dtype())?)?;
    }
    let logprobs = logits.subtract(logits.logsumexp_axis(-1, true)?)?;
    let token = seq.sampler.sample(&logprobs)?;
    let params = &seq.req.params;
    let flat = match params.logprobs || params.top_logprobs > 0 {
        true => Some(logprobs.reshape(&[-1])?.as_dtype(Dtype::Float32)?),
        false => None,
    };
    let (mut logprob, mut top) = (None, None);
    if let Some(lp) = &flat {
        if params.logprobs {
            logprob = Some(take_along_axis(lp, &token.as_dtype(Dtype::Int32)?, 0)?);
        }
        if params.top_logprobs > 0 {
            let k = (params.top_logprobs as i32).min(lp.shape()[0]);
            let ids = ops::argpartition_axis(&lp.negative()?, k - 1, 0)?.try_index(..k)?;
            let values = take_along_axis(lp, &ids, 0)?;
            top = Some((ids, values));
        }
    }
    Ok(Pending {
        token,
        logprobs,
        logprob,
        top,
    })
}

impl Sequence {
    fn pending_arrays(&self) -> Vec<&Array> {
        let mut v = self.pending.arrays();
        v.extend(self.prompt_logits.iter());
        v
    }

    /// Reads the pending token (blocks on its evaluation) and turns it into an event. Only
    /// arrays built with the pending token are read: no new op is queued here.
    fn read_event(&mut self) -> Result<TokenEvent> {
        let token = self.pending.token.try_item_exact::<u32>()?;
        self.generated += 1;
        let (mut logprob, mut top) = (None, Vec::new());
        let grammar_end = self.constraint.as_ref().is_some_and(|c| c.finish_next);
        if grammar_end {
            // Not sampled: the grammar left nothing else (probability 1).
            logprob = self.req.params.logprobs.then_some(0.0);
            if self.req.params.top_logprobs > 0 {
                top.push((token, 0.0));
            }
        } else {
            if let Some(lp) = &self.pending.logprob {
                logprob = Some(lp.try_item_exact::<f32>()?);
            }
            if let Some((ids, values)) = &self.pending.top {
                ids.eval()?;
                values.eval()?;
                top = ids
                    .as_slice::<u32>()
                    .iter()
                    .copied()
                    .zip(values.as_slice::<f32>().iter().copied())
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
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
        let finish = if grammar_end || self.req.stop_ids.contains(&token) {
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
