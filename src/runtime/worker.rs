//! The model actor's state and work, one method per job: the waiting queue, admission
//! (`admission.rs`), one engine step, and turning each token into text on its request's
//! channel (detokenized, stop strings checked). `actor.rs` calls these between messages.
//!
//! Event channels are unbounded so that one slow client never stalls the thread that every
//! request shares; what one request can queue is bounded by its `max_tokens`. A closed event
//! channel (the handler, or the HTTP stream, was dropped) is a cancellation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, error, info};

use super::admission::Limits;
use super::protocol::{Event, Finish, RequestId, RuntimeError, Submit, TokenLogprob};
use super::{MlxMemory, RuntimeStatus, Shared};
use crate::cluster::{ClusterError, ReplicatedEngine};
use crate::engine::text::{Decode, StopMatcher, StreamDetokenizer};
use crate::engine::{FinishReason, SeqId, SequenceRequest, TokenEvent};
use crate::metrics::Metrics;
use crate::model::ModelError;
use crate::tokenizer::Tokenizer;

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
    /// When the handle accepted it (latencies count from here).
    queued_at: Instant,
    /// When its last token came, and how long the first took (`None`: no token yet).
    last_token: Option<(Instant, Duration)>,
}

pub(super) struct Worker {
    engine: ReplicatedEngine,
    tokenizer: Arc<Tokenizer>,
    stop_ids: Vec<u32>,
    active: HashMap<SeqId, Active>,
    /// Accepted requests not yet admitted, oldest first.
    waiting: VecDeque<Submit>,
    limits: Limits,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    queue_timeout: Duration,
}

impl Worker {
    pub fn new(
        engine: ReplicatedEngine,
        tokenizer: Arc<Tokenizer>,
        stop_ids: Vec<u32>,
        limits: Limits,
        (shared, metrics): (Arc<Shared>, Arc<Metrics>),
        queue_timeout: Duration,
    ) -> Self {
        Worker {
            engine,
            tokenizer,
            stop_ids,
            active: HashMap::new(),
            waiting: VecDeque::new(),
            limits,
            shared,
            metrics,
            queue_timeout,
        }
    }

    /// Whether a step has anything to do.
    pub fn busy(&self) -> bool {
        self.engine.has_work() || !self.waiting.is_empty()
    }

    /// One round: drop requests whose client left, admit what fits, one engine step,
    /// the tokens out, the status published.
    pub fn round(&mut self) {
        self.drop_gone();
        self.admit();
        if self.engine.has_work() {
            self.step();
        }
        self.publish();
    }

    pub fn submit(&mut self, s: Submit) {
        self.waiting.push_back(s);
    }

    /// Drops waiting and running requests whose client went away, and ends those that
    /// waited longer than the queue timeout.
    fn drop_gone(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            self.shared.waiting.fetch_sub(dropped, Ordering::SeqCst);
            info!(dropped, "clients went away while waiting");
        }
        let limit = self.queue_timeout;
        let before = self.waiting.len();
        self.waiting.retain(|s| {
            let waited = s.queued_at.elapsed();
            if waited < limit {
                return true;
            }
            let _ = s.events.send(Event::Error(RuntimeError::Overloaded {
                message: format!(
                    "The request waited {} s without starting (--queue-timeout {}): the \
                     server is at capacity; retry later",
                    waited.as_secs(),
                    limit.as_secs()
                ),
                retry_after_secs: 5,
            }));
            false
        });
        let expired = before - self.waiting.len();
        if expired > 0 {
            self.shared.waiting.fetch_sub(expired, Ordering::SeqCst);
            info!(expired, "requests waited past the queue timeout");
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
            let end = s.request.prompt_ids.len() + s.request.max_tokens;
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

    fn start(
        &mut self,
        Submit {
            request: s,
            events,
            queued_at,
        }: Submit,
        end: usize,
    ) {
        let prompt_tokens = s.prompt_ids.len();
        let req = SequenceRequest {
            prompt: s.prompt_ids,
            params: s.params,
            max_tokens: s.max_tokens,
            stop_ids: self.stop_ids.clone(),
            return_prompt_logits: false,
            constraint: s.constraint,
            checkpoints: s.checkpoints,
        };
        match self.engine.add(req) {
            Ok(seq) => {
                debug!(request = s.id, seq, prompt_tokens, "sequence added");
                self.metrics
                    .generation
                    .prompt_tokens
                    .inc_by(prompt_tokens as u64);
                self.active.insert(
                    seq,
                    Active {
                        id: s.id,
                        events,
                        detok: StreamDetokenizer::new(),
                        stops: StopMatcher::new(s.stop),
                        prompt_tokens,
                        completion_tokens: 0,
                        cached_tokens: 0,
                        end,
                        queued_at,
                        last_token: None,
                    },
                );
            }
            Err(e) => {
                error!(request = s.id, "request refused: {e}");
                let _ = events.send(Event::Error(runtime_error(e)));
            }
        }
    }

    /// What `/health` and the handlers' admission read.
    pub fn publish(&self) {
        let status = RuntimeStatus {
            waiting: self.waiting.len(),
            running: self.active.len(),
            engine: self.engine.status(),
            kv_budget_tokens: self.limits.kv_budget_tokens,
            kv_reserved_tokens: self.active.values().map(|a| a.end).sum(),
            step_ms: 0,
            memory: MlxMemory::read(),
        };
        *self.shared.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn set_step_started(&self, at: Option<Instant>) {
        *self
            .shared
            .step_started
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// Ends every waiting and running request with `e`.
    pub fn fail_all(&mut self, e: RuntimeError) {
        let waiting = self.waiting.len();
        for s in self.waiting.drain(..) {
            let _ = s.events.send(Event::Error(e.clone()));
        }
        self.shared.waiting.fetch_sub(waiting, Ordering::SeqCst);
        let running = self.active.len();
        for (seq, a) in self.active.drain() {
            self.engine.cancel(seq);
            let _ = a.events.send(Event::Error(e.clone()));
        }
        if waiting + running > 0 {
            info!(waiting, running, "requests ended: {e}");
        }
        self.publish();
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
        let started = Instant::now();
        self.set_step_started(Some(started));
        let stepped = self.engine.step();
        self.set_step_started(None);
        self.metrics.generation.observe_step(started.elapsed());
        let events = match stepped {
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
        let m = &self.metrics.generation;
        let now = Instant::now();
        m.generation_tokens.inc();
        let ttft = match a.last_token {
            None => {
                let ttft = now - a.queued_at;
                m.time_to_first_token.observe(ttft.as_secs_f64());
                debug!(
                    request = a.id,
                    micros = ttft.as_micros() as u64,
                    cached = a.cached_tokens,
                    "first token"
                );
                m.cached_prompt_tokens.inc_by(a.cached_tokens as u64);
                ttft
            }
            Some((last, ttft)) => {
                m.inter_token_latency.observe((now - last).as_secs_f64());
                ttft
            }
        };
        a.last_token = Some((now, ttft));
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
        if !ev.is_end {
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
            let m = &self.metrics.generation;
            m.e2e_latency.observe(a.queued_at.elapsed().as_secs_f64());
            let _ = a.events.send(Event::Done {
                finish,
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                cached_tokens: a.cached_tokens,
                stop_sequence,
                ttft: a.last_token.map_or(Duration::ZERO, |(_, ttft)| ttft),
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
