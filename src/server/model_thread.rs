//! The dedicated MLX thread of `kooka serve`: it loads the model and owns the [`Engine`]
//! (all MLX state of the process), takes [`Command`]s from a std channel, and sends each
//! request's text back on that request's own channel as [`Event`]s.
//!
//! Loop: drain the pending commands (a submission is prefilled right away), drop sequences
//! whose client went away, run one engine step, detokenize and stop-check each sequence's
//! token, send the text. When no sequence is in flight it blocks on the command channel
//! (no polling). Event channels are unbounded so that one slow client never stalls the
//! thread that every request shares; what one request can queue is bounded by its
//! `max_tokens`. A closed event channel (the handler, or the HTTP stream, was dropped) is a
//! cancellation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, info};

use super::error::ServeError;
use crate::cluster::{Leader, ReplicatedEngine};
use crate::engine::sampling::SamplingParams;
use crate::engine::text::{Decode, StopMatcher, StreamDetokenizer};
use crate::engine::{Engine, FinishReason, SeqId, SequenceRequest, TokenEvent};
use crate::model::ComputeDtype;
use crate::tokenizer::Tokenizer;

/// Identifies a request across the server (assigned by the handler).
pub type RequestId = u64;

/// Why a completion ended, as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// EOS token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// One sampled token's log-probability (for `logprobs`), with the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's own text (may be part of a UTF-8 character, then lossy).
    pub token: String,
    pub logprob: f32,
    /// `(text, logprob)` best first; `top_logprobs` long.
    pub top: Vec<(String, f32)>,
}

/// What a request's channel carries, in order: `Text` and `Logprobs` (when asked) then one
/// `Done` or `Error`. A token's `Logprobs` comes before the text it contributes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text(String),
    Logprobs(TokenLogprob),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// The stop string that ended the completion, if one did.
        stop_sequence: Option<String>,
    },
    Error(String),
    /// The model is gone (a rank of a multi-rank run failed): a 503.
    Unavailable(String),
}

/// A request to generate, plain data.
#[derive(Debug)]
pub struct Submit {
    pub id: RequestId,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Constrained decoding: what the reply must look like.
    pub constraint: Option<crate::constrain::Grammar>,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug)]
pub enum Command {
    Submit(Submit),
    /// Stop generating for this request (its channel gets nothing more).
    Cancel(RequestId),
}

/// Facts about the loaded model the handlers need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub max_position_embeddings: Option<usize>,
}

/// Starts the MLX thread, loads the model there and waits until it is ready.
/// With a `leader` (rank 0 of a multi-rank run) the thread loads rank 0's shard and every
/// engine operation is replicated to the other ranks ([`ReplicatedEngine`]).
pub fn spawn(
    dir: PathBuf,
    dtype: ComputeDtype,
    tokenizer: Arc<Tokenizer>,
    leader: Option<Leader>,
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
            let config = model.config();
            let info = ModelInfo {
                max_position_embeddings: config
                    .max_position_embeddings
                    .and_then(|n| usize::try_from(n).ok()),
            };
            let mut stop_ids = config.eos_ids();
            stop_ids.extend(&tokenizer.eos_ids);
            stop_ids.sort_unstable();
            stop_ids.dedup();
            let mut engine = ReplicatedEngine::new(Engine::new(model), leader);
            // Constrained decoding (response_format, forced tool calls) masks logits with the
            // vocabulary as bytes; without it such requests fail, others are unaffected.
            match crate::constrain::Constrainer::new(&tokenizer) {
                Ok(constrainer) => engine.set_constrainer(constrainer),
                Err(e) => tracing::warn!("constrained decoding unavailable: {e}"),
            }
            let worker = Worker {
                engine,
                tokenizer,
                stop_ids,
                active: HashMap::new(),
            };
            if ready_tx.send(Ok(info)).is_ok() {
                worker.run(rx);
            }
        })?;
    let info = ready_rx.recv().map_err(|_| ServeError::ModelThreadDied)??;
    Ok((tx, info))
}

/// One request in flight.
struct Active {
    id: RequestId,
    events: UnboundedSender<Event>,
    detok: StreamDetokenizer,
    stops: StopMatcher,
    prompt_tokens: usize,
    completion_tokens: usize,
}

struct Worker {
    engine: ReplicatedEngine,
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    active: HashMap<SeqId, Active>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            if !self.engine.has_work() {
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
            let gone: Vec<SeqId> = self
                .active
                .iter()
                .filter(|(_, a)| a.events.is_closed())
                .map(|(&seq, _)| seq)
                .collect();
            for seq in gone {
                self.drop_client(seq);
            }
            if self.engine.has_work() {
                self.step();
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(s) => {
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
                            },
                        );
                    }
                    Err(e) => {
                        error!(request = s.id, "prefill failed: {e}");
                        let _ = s.events.send(Event::Error(e.to_string()));
                    }
                }
            }
            Command::Cancel(id) => {
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
                for (seq, a) in self.active.drain() {
                    self.engine.cancel(seq);
                    let _ = a.events.send(Event::Error(e.to_string()));
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
                    let _ = a.events.send(Event::Error(e.to_string()));
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
                stop_sequence,
            });
        }
    }
}
