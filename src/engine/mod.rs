//! Generation over a [`LanguageModel`](crate::model::LanguageModel) for many sequences at
//! once: chunked prefill, continuous batching and a prefix cache.
//!
//! The engine owns MLX state and must stay on one thread (the model actor); what goes in
//! ([`SequenceRequest`]) and comes out ([`TokenEvent`]) is plain data.
//!
//! [`Engine::add`] only validates a request and queues it for prefill. Each
//! [`Engine::step`] then does two things:
//! 1. **Prefill**, up to [`EngineConfig::prefill_chunk`] prompt tokens: the sequence at the
//!    front of the queue starts from its longest prefix in the prefix cache
//!    (`prefix_cache.rs`) and reads its prompt chunk by chunk, one chunk per step, so the
//!    running streams keep flowing while a long prompt is read. Its last prompt token runs
//!    alone and queues the first sample; the sequence then joins the decode batch. When no
//!    other sequence decodes, the step ends there with the first tokens read (the next
//!    forward's host time would only delay them; see [`Engine::step`]'s `report_first`).
//! 2. **Decode**: one batched forward for every decoding sequence (`batch.rs`), each row with
//!    its own position, sampling parameters, processors, grammar and seed.
//!
//! With [`EngineConfig::speculation`], a batch of at most
//! [`SpeculationConfig::max_rows`] rows runs verify steps instead (`speculative/`): every row
//! reads its pending token and the tokens prompt lookup drafts for it in one forward, and
//! keeps those its sampler agrees with.
//!
//! Sequences leave the batch as soon as they finish or are cancelled, and their keys and
//! values go to the prefix cache. Models with sliding-window layers keep one batch per
//! sequence (rotating caches are not batched) and no prefix cache.
//!
//! Every decision depends only on the operations applied (add, step, cancel) and the
//! configuration, so the ranks of a sharded model, given the same operations, stay in step.
//!
//! A sequence with a [`Grammar`] (constrained decoding, see [`crate::constrain`]) samples
//! after its current token is read and committed to the matcher (the mask for token n+1
//! needs token n); its next forward is still queued first (`constrained.rs`). When the
//! grammar is complete the sequence ends with [`FinishReason::Stop`] (its first stop id as
//! the token), as if EOS had been sampled.

mod batch;
mod constrained;
pub mod disk_cache;
pub mod generate;
mod prefill;
mod prefix_cache;
pub mod sampling;
mod sequence;
pub mod speculative;
pub mod text;

use std::collections::VecDeque;
use std::rc::Rc;

use mlx_rs::Array;

use crate::constrain::{Constrainer, Grammar};
use crate::dist::Group;
use crate::model::{KvQuantization, LanguageModel, LayerCache, ModelError, Result};
use batch::Batch;
use constrained::SeqConstraint;
pub use disk_cache::{DiskCache, DiskCacheConfig, DiskCacheStats};
use prefix_cache::PrefixCache;
pub use prefix_cache::PrefixCacheStats;
use sampling::{make_processors, Sampler, SamplingParams};
use sequence::{Extras, Sequence};
pub use speculative::{DraftModel, SpeculationConfig, SpeculationStats};

/// Identifies a sequence within one engine.
pub type SeqId = u64;

/// How the engine schedules its work; plain data, identical on every rank (it travels in
/// the control plane's `Welcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineConfig {
    /// Prompt tokens prefilled per step (each step also advances every decoding sequence by
    /// one token): the longest a running stream waits for a prompt being read.
    pub prefill_chunk: usize,
    /// Prefix cache budget in tokens; 0 turns the cache off.
    pub prefix_cache_tokens: usize,
    /// Sliding-window layers keep windowed caches (every position, masked to the window), so
    /// such models batch and use the prefix cache; else rotating caches as mlx-lm's, one
    /// sequence per forward (bit-identical to mlx-lm, what `kooka generate` runs).
    pub windowed_caches: bool,
    /// Rank 0 has a disk tier under its prefix cache: with several ranks, every rank's
    /// lookups agree on one length (see [`disk_cache::agree`]).
    pub disk_cache: bool,
    /// Speculative decoding (prompt lookup); `None`: off.
    pub speculation: Option<SpeculationConfig>,
    /// Quantized keys and values (`--kv-bits`); `None`: as the model computes them.
    pub kv_quantization: Option<KvQuantization>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prefill_chunk: 2048,
            prefix_cache_tokens: 0,
            windowed_caches: false,
            disk_cache: false,
            speculation: None,
            kv_quantization: None,
        }
    }
}

/// Work the engine queued with `async_eval` (the next tokens, prefix-cache rows) may still be
/// running: an engine dropped with it in flight would free arrays under MLX's feet (seen as
/// a heap abort at process exit). Dropping waits for the default stream.
impl Drop for Engine {
    fn drop(&mut self) {
        let stream = mlx_rs::Stream::thread_local_or_default();
        // SAFETY: a valid stream handle; the call only waits.
        let _ = unsafe { mlx_sys::mlx_synchronize(stream.as_ptr()) };
    }
}

/// Fresh caches for one sequence of `model`, of the kind `config` asks for.
fn fresh_caches(model: &dyn LanguageModel, config: &EngineConfig) -> Vec<LayerCache> {
    let mut caches = if config.windowed_caches {
        model.make_batchable_caches()
    } else {
        model.make_caches()
    };
    for c in caches.iter_mut() {
        c.set_quantization(config.kv_quantization);
    }
    caches
}

/// What the engine holds now, for `/health` and the scheduler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStatus {
    /// Sequences waiting for or in prefill.
    pub prefilling: usize,
    /// Sequences in the decode batch.
    pub decoding: usize,
    /// KV positions the decode batch holds (rows x longest row, padding included).
    pub batch_positions: usize,
    pub prefix_cache: PrefixCacheStats,
    /// The disk tier under it (`--prompt-cache-dir`).
    pub disk_cache: Option<DiskCacheStats>,
    /// Speculative decoding so far, when it is on.
    pub speculation: Option<SpeculationStats>,
}

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
    /// Prompt positions worth a prefix-cache checkpoint (the ends of a chat's messages),
    /// ascending. Models with recurrent layers can resume a later prompt only where a
    /// checkpoint was taken; attention-only models ignore them.
    #[serde(default)]
    pub checkpoints: Vec<usize>,
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
    /// `token` marks the end (a stop id, or the end a complete grammar put in place of a
    /// sample): it is not text.
    pub is_end: bool,
    /// Raw last-prompt-position logits, first event only, when requested.
    pub prompt_logits: Option<Vec<f32>>,
    /// First event only: how many prompt tokens came from the prefix cache.
    pub cached_tokens: Option<usize>,
}

/// A sequence waiting for, or in, prefill.
struct Prefilling {
    seq: Sequence,
    /// `None` until its prefill starts (the prefix cache is asked then).
    caches: Option<Vec<LayerCache>>,
    /// Prompt positions the caches hold.
    done: usize,
    /// Its cached prefix being read from disk while the engine goes on.
    disk: Option<disk_cache::PendingRead>,
}

/// Batched generation state over one model.
pub struct Engine {
    model: Box<dyn LanguageModel>,
    config: EngineConfig,
    prefilling: VecDeque<Prefilling>,
    /// One batch when the model's caches can be batched, else one per sequence.
    batches: Vec<Batch>,
    batchable: bool,
    /// The model has recurrent layers: prompts are prefilled one at a time (a padded row
    /// would run its padding through the recurrence) and checkpoints are taken.
    recurrent: bool,
    prefix: Option<PrefixCache>,
    /// The disk tier until a prefix cache takes it (see [`Engine::set_disk_cache`]).
    disk: Option<DiskCache>,
    /// The ranks of a sharded model (lookups with a disk tier agree over them).
    ranks: Option<Rc<Group>>,
    next_id: SeqId,
    steps: u64,
    /// Caches can drop positions (no rotating or recurrent layer): speculation can run.
    trimmable: bool,
    speculation: SpeculationStats,
    /// The draft model of speculative decoding, when one is set (else prompt lookup).
    draft: Option<DraftModel>,
    /// Compiles the grammars of constrained requests (the tokenizer's vocabulary as bytes).
    constrainer: Option<Constrainer>,
    /// A fresh batch reads its first tokens before queuing the next forward (see
    /// [`reports_first_tokens_early`]).
    report_first: bool,
}

/// Whether a fresh batch (nothing else decoding) reads its first tokens before queuing the
/// next forward: `KOOKA_REPORT_FIRST=0` turns it off (on by default). CUDA had it off for a
/// while, for a 32-stream stall seen only with it on; a native stack taken during one showed
/// MLX compiling a quantized-matmul kernel variant with NVRTC on its first use, with the GPU
/// idle (docs/PERFORMANCE.md): a first-use cost of the shapes a run happens to meet, not a
/// hang of the early read.
fn reports_first_tokens_early() -> bool {
    !matches!(
        std::env::var("KOOKA_REPORT_FIRST")
            .ok()
            .as_deref()
            .map(str::trim),
        Some("0")
    )
}

impl Engine {
    pub fn new(model: Box<dyn LanguageModel>) -> Self {
        Self::with_config(model, EngineConfig::default())
    }

    pub fn with_config(model: Box<dyn LanguageModel>, config: EngineConfig) -> Self {
        let mut engine = Engine {
            model,
            config,
            prefilling: VecDeque::new(),
            batches: Vec::new(),
            batchable: false,
            recurrent: false,
            prefix: None,
            disk: None,
            ranks: None,
            next_id: 0,
            steps: 0,
            trimmable: false,
            speculation: SpeculationStats::default(),
            draft: None,
            constrainer: None,
            report_first: reports_first_tokens_early(),
        };
        engine.configure(config);
        engine
    }

    /// Enables constrained requests ([`SequenceRequest::constraint`]); build the
    /// [`Constrainer`] once from the model's tokenizer.
    pub fn set_constrainer(&mut self, constrainer: Constrainer) {
        self.constrainer = Some(constrainer);
    }

    /// Takes new settings; the prefix cache starts empty. Meant for an idle engine (a
    /// follower gets rank 0's settings before any request).
    pub fn configure(&mut self, config: EngineConfig) {
        self.config = config;
        let fresh = self.new_caches();
        self.batchable = !fresh.iter().any(LayerCache::is_rotating);
        self.recurrent = fresh.iter().any(LayerCache::is_recurrent);
        self.trimmable = self.batchable && !self.recurrent;
        if config.speculation.is_some() && !self.trimmable {
            tracing::warn!(
                "speculative decoding needs caches that can drop positions \
                 (no sliding-window rotation, no recurrent layers): off for this model"
            );
        }
        if config.kv_quantization.is_some() && fresh.iter().any(LayerCache::is_rotating) {
            tracing::warn!(
                "--kv-bits: rotating sliding-window caches stay in full precision (as mlx-lm's)"
            );
        }
        let checkpoint_tokens = self.model.checkpoint_tokens();
        if let Some(disk) = self.prefix.take().and_then(PrefixCache::into_disk) {
            self.disk = Some(disk);
        }
        if self.batchable && config.prefix_cache_tokens > 0 {
            let ranks = self.ranks.clone().filter(|_| config.disk_cache);
            self.prefix = Some(
                PrefixCache::with_checkpoints(
                    config.prefix_cache_tokens,
                    self.recurrent,
                    checkpoint_tokens,
                )
                .with_disk(self.disk.take(), ranks),
            );
        } else if self.disk.is_some() {
            tracing::warn!(
                "the disk prompt cache needs the prefix cache (--prompt-cache-bytes > 0): off"
            );
        }
    }

    /// Speculation drafts with `model` (a smaller model with the model's vocabulary: the
    /// caller checks the tokenizers) instead of prompt lookup; needs
    /// [`EngineConfig::speculation`] and one rank. Call on an idle engine.
    pub fn set_draft_model(&mut self, model: Box<dyn LanguageModel>) -> Result<()> {
        if self.ranks.is_some() {
            return Err(ModelError::Request(
                "a draft model runs on one rank for now".into(),
            ));
        }
        let draft = DraftModel::new(
            model,
            self.config.prefix_cache_tokens,
            self.config.windowed_caches,
        )?;
        self.draft = Some(draft);
        Ok(())
    }

    /// Puts a disk tier under the prefix cache (`disk`: this rank's, if it has one) and,
    /// for a sharded model, the group whose ranks agree on what the disk serves. Call before
    /// [`Engine::configure`] (rank 0: then set [`EngineConfig::disk_cache`]).
    pub fn set_disk_cache(&mut self, disk: Option<DiskCache>, ranks: Option<Rc<Group>>) {
        self.disk = disk;
        self.ranks = ranks;
        self.configure(self.config);
    }

    /// Fresh caches for one sequence, of the kind the settings ask for.
    fn new_caches(&self) -> Vec<LayerCache> {
        fresh_caches(self.model.as_ref(), &self.config)
    }

    pub fn set_prefill_chunk(&mut self, tokens: usize) {
        self.config.prefill_chunk = tokens.max(1);
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    pub fn has_work(&self) -> bool {
        !self.prefilling.is_empty() || !self.batches.is_empty()
    }

    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            prefilling: self.prefilling.len(),
            decoding: self.batches.iter().map(Batch::len).sum(),
            batch_positions: self.batches.iter().map(Batch::positions).sum(),
            prefix_cache: self
                .prefix
                .as_ref()
                .map(PrefixCache::stats)
                .unwrap_or_default(),
            disk_cache: self.prefix.as_ref().and_then(PrefixCache::disk_stats),
            speculation: self
                .config
                .speculation
                .filter(|_| self.trimmable)
                .map(|_| self.speculation),
        }
    }

    /// Validates a request and queues it for prefill (the next steps run it).
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
        let processors = make_processors(&req.params, vocab);
        let sampler = Sampler::new(&req.params)?;
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
        self.prefilling.push_back(Prefilling {
            seq: Sequence {
                id,
                req,
                history,
                processors,
                sampler,
                constraint,
                generated: 0,
                fed: Vec::new(),
                cached: 0,
                extras: Extras::default(),
                prompt_logits: None,
                drafted: 0,
                accepted: 0,
                reported: false,
            },
            caches: None,
            done: 0,
            disk: None,
        });
        Ok(id)
    }

    /// Drops a sequence (e.g. a stop string matched, or the client went away); what its
    /// caches hold goes to the prefix cache.
    pub fn cancel(&mut self, id: SeqId) {
        if let Some(i) = self.prefilling.iter().position(|p| p.seq.id == id) {
            if let Some(p) = self.prefilling.remove(i) {
                if let (Some(caches), Some(prefix)) = (&p.caches, self.prefix.as_mut()) {
                    let _ = prefix.offer(caches, 0, &p.seq.req.prompt[..p.done]);
                }
            }
            return;
        }
        for b in self.batches.iter_mut() {
            match b.cancel(id, self.prefix.as_mut(), self.draft.as_mut()) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(seq = id, "cancel: {e}"),
            }
        }
        self.batches.retain(|b| b.len() > 0);
    }

    /// One step: a prefill chunk (if a prompt is waiting), then one token for every
    /// decoding sequence.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>> {
        let ready = self.prefill()?;
        // Nothing else decodes: the first tokens are read before the next forward is queued
        // (its host time would only delay them; the device has no other work meanwhile).
        let report_first = self.report_first
            && !ready.is_empty()
            && self.batches.is_empty()
            && self.batchable
            && self.draft.is_none()
            && self.config.speculation.is_none()
            && ready.iter().all(|r| r.seq.constraint.is_none());
        if !ready.is_empty() {
            if self.batchable {
                match self.batches.first_mut() {
                    Some(b) => b.join(ready)?,
                    None => self.batches.push(Batch::new(ready)?),
                }
            } else {
                for r in ready {
                    self.batches.push(Batch::new(vec![r])?);
                }
            }
        }
        if report_first {
            let mut events = Vec::new();
            for b in self.batches.iter_mut() {
                events.extend(b.report_first(self.prefix.as_mut())?);
            }
            self.batches.retain(|b| b.len() > 0);
            self.steps += 1;
            return Ok(events);
        }
        let mut events = Vec::new();
        let speculation = self.config.speculation.filter(|_| self.trimmable);
        for b in self.batches.iter_mut() {
            let model = self.model.as_ref();
            events.extend(match speculation {
                Some(s) if b.len() <= s.max_rows && b.any_speculates() => b.step_speculative(
                    model,
                    self.prefix.as_mut(),
                    self.draft.as_mut(),
                    &s,
                    &mut self.speculation,
                )?,
                _ => b.step(model, self.prefix.as_mut(), self.draft.as_mut())?,
            });
        }
        self.batches.retain(|b| b.len() > 0);
        self.steps += 1;
        if self.steps & 255 == 0 {
            mlx_rs::memory::clear_cache()?;
        }
        Ok(events)
    }
}
