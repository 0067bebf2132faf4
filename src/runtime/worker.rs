//! The dedicated MLX thread of `kooka serve` (the model actor): it loads the model and owns
//! the [`Engine`] (all MLX state of the process), takes [`Command`]s from a std channel, and
//! sends each request's text back on that request's own channel as [`Event`]s.
//!
//! Loop: take the pending commands (a submission joins the waiting queue), drop requests
//! whose client went away (waiting or running), admit waiting requests while the limits
//! allow (`admission.rs`), run one engine step (a prefill chunk and one token for every
//! decoding sequence), detokenize and stop-check each token, send the text, publish the
//! status. When nothing is running or waiting it blocks on the command channel (no
//! polling). Event channels are unbounded so that one slow client never stalls the thread
//! that every request shares; what one request can queue is bounded by its `max_tokens`. A
//! closed event channel (the handler, or the HTTP stream, was dropped) is a cancellation.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, info};

use super::admission::Limits;
use super::protocol::{Command, Event, Finish, ModelInfo, RuntimeError, Submit, TokenLogprob};
use super::{RuntimeConfig, RuntimeStatus, Shared};
use crate::cluster::{ClusterError, Leader, ReplicatedEngine};
use crate::engine::text::{Decode, StopMatcher, StreamDetokenizer};
use crate::engine::{Engine, EngineConfig, FinishReason, SeqId, SequenceRequest, TokenEvent};
use crate::model::{ComputeDtype, LanguageModel, ModelError};
use crate::server::error::ServeError;
use crate::tokenizer::Tokenizer;

/// Starts the MLX thread, loads the model there and waits until it is ready.
/// With a `leader` (rank 0 of a multi-rank run) the thread loads rank 0's shard and every
/// engine operation is replicated to the other ranks ([`ReplicatedEngine`]).
pub(super) fn spawn(
    dir: PathBuf,
    dtype: ComputeDtype,
    tokenizer: Arc<Tokenizer>,
    leader: Option<Leader>,
    config: RuntimeConfig,
    shared: Arc<Shared>,
) -> Result<(mpsc::Sender<Command>, ModelInfo), ServeError> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kooka-mlx".into())
        .spawn(move || {
            let loaded = match &leader {
                Some(leader) => leader.load_model(&dir, dtype),
                None => crate::model::load_model(&dir, dtype),
            };
            let model = match loaded {
                Ok(model) => model,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let (info, engine_config) = budgets(model.as_ref(), &config);
            let mut stop_ids = model.config().eos_ids();
            stop_ids.extend(&tokenizer.eos_ids);
            stop_ids.sort_unstable();
            stop_ids.dedup();
            let engine = Engine::with_config(model, engine_config);
            let mut engine = ReplicatedEngine::new(engine, leader);
            // Constrained decoding (response_format, forced tool calls) masks logits with the
            // vocabulary as bytes; without it such requests fail, others are unaffected.
            match crate::constrain::Constrainer::new(&tokenizer) {
                Ok(constrainer) => engine.set_constrainer(constrainer),
                Err(e) => tracing::warn!("constrained decoding unavailable: {e}"),
            }
            info!(
                kv_budget_tokens = info.kv_budget_tokens,
                prefix_cache_tokens = info.prefix_cache_tokens,
                max_running = config.max_running,
                max_queue = config.max_queue,
                prefill_chunk = engine_config.prefill_chunk,
                "runtime limits"
            );
            let worker = Worker {
                engine,
                tokenizer,
                stop_ids,
                active: HashMap::new(),
                waiting: VecDeque::new(),
                limits: Limits {
                    max_running: config.max_running.max(1),
                    kv_budget_tokens: info.kv_budget_tokens,
                },
                shared,
            };
            if ready_tx.send(Ok(info)).is_ok() {
                worker.run(rx);
            }
        })?;
    let info = ready_rx.recv().map_err(|_| ServeError::ModelThreadDied)??;
    Ok((tx, info))
}

/// The KV and prefix-cache budgets in tokens: the flags' bytes, or shares of the memory the
/// weights leave, over what one position of the whole model costs.
fn budgets(model: &dyn LanguageModel, config: &RuntimeConfig) -> (ModelInfo, EngineConfig) {
    let cfg = model.config();
    let dtype_bytes: usize = if crate::model::default_device_is_cpu() {
        4
    } else {
        2
    };
    let per_token = 2
        * cfg.num_hidden_layers.max(1) as usize
        * cfg.kv_heads().max(1) as usize
        * cfg.head_dim().max(1) as usize
        * dtype_bytes;
    let weights: usize = model.parameters().iter().map(|a| a.nbytes()).sum();
    let free = super::memory::total_bytes().saturating_sub(weights);
    let kv_bytes = config.kv_cache_bytes.unwrap_or(free / 10 * 4);
    let prefix_bytes = config.prompt_cache_bytes.unwrap_or(free / 10 * 2);
    let info = ModelInfo {
        max_position_embeddings: cfg
            .max_position_embeddings
            .and_then(|n| usize::try_from(n).ok()),
        kv_budget_tokens: (kv_bytes / per_token).max(1),
        prefix_cache_tokens: prefix_bytes / per_token,
    };
    let engine = EngineConfig {
        prefill_chunk: config.prefill_chunk.max(1),
        prefix_cache_tokens: info.prefix_cache_tokens,
    };
    (info, engine)
}

/// One request in flight.
struct Active {
    id: RequestId,
    events: UnboundedSender<Event>,
    detok: StreamDetokenizer,
    stops: StopMatcher,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    /// Prompt + `max_tokens`: the KV positions admission reserved.
    end: usize,
}

struct Worker {
    engine: ReplicatedEngine,
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    active: HashMap<SeqId, Active>,
    /// Accepted requests not yet admitted, oldest first.
    waiting: VecDeque<Submit>,
    limits: Limits,
    shared: Arc<Shared>,
}

use super::protocol::RequestId;

impl Worker {
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            if !self.engine.has_work() && self.waiting.is_empty() {
                self.publish();
                match rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    // Every sender is gone: the server is shutting down.
                    Err(_) => return,
                }
            }
            // A disconnected channel is noticed by the blocking `recv` once idle.
            while let Ok(cmd) = rx.try_recv() {
                self.handle(cmd);
            }
            self.drop_gone();
            self.admit();
            if self.engine.has_work() {
                self.step();
            }
            self.publish();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(s) => self.waiting.push_back(s),
            Command::Cancel(id) => {
                if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
                    self.waiting.remove(i);
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                if let Some(seq) = self
                    .active
                    .iter()
                    .find(|(_, a)| a.id == id)
                    .map(|(&s, _)| s)
                {
                    self.engine.cancel(seq);
                    self.active.remove(&seq);
                    info!(request = id, "request cancelled");
                }
            }
        }
    }

    /// Drops waiting and running requests whose client went away.
    fn drop_gone(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            self.shared.waiting.fetch_sub(dropped, Ordering::SeqCst);
            info!(dropped, "clients went away while waiting");
        }
        let gone: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&seq, _)| seq)
            .collect();
        for seq in gone {
            self.drop_client(seq);
        }
    }

    /// Starts waiting requests, oldest first, while the limits allow.
    fn admit(&mut self) {
        loop {
            let ends: Vec<usize> = self.active.values().map(|a| a.end).collect();
            let Some(s) = self.waiting.front() else {
                return;
            };
            let end = s.prompt_ids.len() + s.max_tokens;
            if !self.limits.admits(&ends, end) {
                return;
            }
            let Some(s) = self.waiting.pop_front() else {
                return;
            };
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            self.start(s, end);
        }
    }

    fn start(&mut self, s: Submit, end: usize) {
        let prompt_tokens = s.prompt_ids.len();
        let req = SequenceRequest {
            prompt: s.prompt_ids,
            params: s.params,
            max_tokens: s.max_tokens,
            stop_ids: self.stop_ids.clone(),
            return_prompt_logits: false,
            constraint: s.constraint,
        };
        match self.engine.add(req) {
            Ok(seq) => {
                debug!(request = s.id, seq, prompt_tokens, "sequence added");
                self.active.insert(
                    seq,
                    Active {
                        id: s.id,
                        events: s.events,
                        detok: StreamDetokenizer::new(),
                        stops: StopMatcher::new(s.stop),
                        prompt_tokens,
                        completion_tokens: 0,
                        cached_tokens: 0,
                        end,
                    },
                );
            }
            Err(e) => {
                error!(request = s.id, "request refused: {e}");
                let _ = s.events.send(Event::Error(runtime_error(e)));
            }
        }
    }

    /// What `/health` and the handlers' admission read.
    fn publish(&self) {
        let status = RuntimeStatus {
            waiting: self.waiting.len(),
            running: self.active.len(),
            engine: self.engine.status(),
            kv_budget_tokens: self.limits.kv_budget_tokens,
            kv_reserved_tokens: self.active.values().map(|a| a.end).sum(),
        };
        *self.shared.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn drop_client(&mut self, seq: SeqId) {
        self.engine.cancel(seq);
        if let Some(a) = self.active.remove(&seq) {
            info!(
                request = a.id,
                completion_tokens = a.completion_tokens,
                "client went away; sequence cancelled"
            );
        }
    }

    fn step(&mut self) {
        let events = match self.engine.step() {
            Ok(events) => events,
            Err(e) => {
                // The engine's state is unknown after a failed step: fail everything in it.
                error!("engine step failed: {e}");
                let e = runtime_error(e);
                for (seq, a) in self.active.drain() {
                    self.engine.cancel(seq);
                    let _ = a.events.send(Event::Error(e.clone()));
                }
                return;
            }
        };
        for ev in events {
            self.on_token(ev);
        }
    }

    fn on_token(&mut self, ev: TokenEvent) {
        let seq = ev.seq;
        let Some(a) = self.active.get_mut(&seq) else {
            return;
        };
        a.completion_tokens += 1;
        if let Some(cached) = ev.cached_tokens {
            a.cached_tokens = cached;
        }
        if let Some(logprob) = ev.logprob {
            let text = |id: u32| self.tokenizer.decode(&[id]).unwrap_or_default();
            let entry = TokenLogprob {
                token: text(ev.token),
                logprob,
                top: ev
                    .top_logprobs
                    .iter()
                    .map(|&(id, lp)| (text(id), lp))
                    .collect(),
            };
            if a.events.send(Event::Logprobs(entry)).is_err() {
                self.drop_client(seq);
                return;
            }
        }
        let mut text = String::new();
        let mut finish = match ev.finish {
            Some(FinishReason::Stop) => Some(Finish::Stop),
            Some(FinishReason::Length) => Some(Finish::Length),
            None => None,
        };
        let mut stopped = false;
        let mut stop_sequence = None;
        // An EOS token is never text.
        if ev.finish != Some(FinishReason::Stop) {
            match a.detok.push(&*self.tokenizer, ev.token) {
                Ok(piece) => {
                    let check = a.stops.push(&piece);
                    text = check.text;
                    if check.stopped.is_some() {
                        stopped = true;
                        stop_sequence = check.stopped;
                        finish = Some(Finish::Stop);
                    }
                }
                Err(e) => {
                    let _ = a
                        .events
                        .send(Event::Error(RuntimeError::Internal(e.to_string())));
                    self.engine.cancel(seq);
                    self.active.remove(&seq);
                    return;
                }
            }
        }
        if finish.is_some() && !stopped {
            if let Ok(tail) = a.detok.flush(&*self.tokenizer) {
                text += &a.stops.push(&tail).text;
            }
            text += &a.stops.flush();
        }
        if !text.is_empty() && a.events.send(Event::Text(text)).is_err() {
            self.drop_client(seq);
            return;
        }
        let Some(finish) = finish else {
            return;
        };
        if let Some(a) = self.active.remove(&seq) {
            self.engine.cancel(seq);
            debug!(
                request = a.id,
                completion_tokens = a.completion_tokens,
                finish = finish.as_str(),
                "sequence finished"
            );
            let _ = a.events.send(Event::Done {
                finish,
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                cached_tokens: a.cached_tokens,
                stop_sequence,
            });
        }
    }
}

/// The engine's and the cluster's errors as the runtime reports them.
fn runtime_error(e: impl Into<ClusterError>) -> RuntimeError {
    match e.into() {
        ClusterError::Model(ModelError::Request(message)) => RuntimeError::BadRequest {
            message,
            param: None,
        },
        e @ ClusterError::RankLost { .. } => RuntimeError::Unavailable(e.to_string()),
        e => RuntimeError::Internal(e.to_string()),
    }
}
