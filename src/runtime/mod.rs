//! The model side of `kooka serve`, reached only through a [`RuntimeHandle`].
//!
//! - `protocol.rs`: what crosses the boundary ([`Submit`], [`Event`], [`RuntimeError`]).
//! - `actor.rs`: the model actor on the `kooka-mlx` thread (all MLX state), its messages.
//! - `worker.rs`: what the actor does: queue and admit requests, step the engine, detokenize
//!   and stream.
//! - `admission.rs`: the limits a waiting request must fit (running sequences, KV budget).
//! - `relay.rs`: rank 0's guard that fails the requests in flight when a rank is lost.
//! - `memory.rs`: how much memory the machine has (the budgets' defaults) and MLX holds.
//!
//! The handle turns a submission into a [`Job`] or a typed refusal at once: a prompt that
//! can never fit the KV budget is a 400, a full waiting queue a 429; everything after that
//! arrives on the job's event channel.

mod actor;
mod admission;
mod memory;
pub use memory::MlxMemory;
pub mod protocol;
mod relay;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::cluster::Leader;
use crate::engine::EngineStatus;
use crate::metrics::Metrics;
use crate::model::ComputeDtype;
use crate::server::error::ServeError;
use crate::tokenizer::Tokenizer;
use actor::ModelActor;
pub use protocol::{
    Event, Finish, GenerationRequest, ModelInfo, RequestId, RuntimeError, Submit, TokenLogprob,
};
use relay::FailureRelay;

/// The runtime's settings (flags of `kooka serve`).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Requests decoding or prefilling at once.
    pub max_running: usize,
    /// Requests accepted but not yet running; beyond it a request gets a 429.
    pub max_queue: usize,
    /// KV memory admission hands out; `None`: 40% of the memory the weights leave.
    pub kv_cache_bytes: Option<usize>,
    /// The prefix cache's budget; `None`: 20% of the memory the weights leave; 0: off.
    pub prompt_cache_bytes: Option<usize>,
    /// The prefix cache's disk tier (`--prompt-cache-dir`); `None`: off.
    pub disk_cache: Option<crate::engine::DiskCacheConfig>,
    /// Prompt tokens prefilled per engine step; `None`: 512 on the CPU backend, 2048 on a GPU.
    pub prefill_chunk: Option<usize>,
    /// Speculative decoding (`--speculative`); `None`: off.
    pub speculation: Option<crate::engine::SpeculationConfig>,
    /// A LoRA adapter folder (`--adapter-path`); one rank only.
    pub adapter: Option<std::path::PathBuf>,
    /// The draft model's folder (`--draft-model`, tokenizer already checked); one rank only.
    pub draft_model: Option<std::path::PathBuf>,
    /// Quantized keys and values (`--kv-bits`); `None`: off.
    pub kv_quantization: Option<crate::model::KvQuantization>,
    /// A request still waiting to start after this long gets a 429.
    pub queue_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_running: 64,
            max_queue: 256,
            kv_cache_bytes: None,
            prompt_cache_bytes: None,
            disk_cache: None,
            prefill_chunk: None,
            speculation: None,
            adapter: None,
            draft_model: None,
            kv_quantization: None,
            queue_timeout: Duration::from_secs(600),
        }
    }
}

/// What the runtime is doing, for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeStatus {
    /// Accepted, waiting for admission.
    pub waiting: usize,
    /// Admitted (prefilling or decoding).
    pub running: usize,
    pub engine: EngineStatus,
    pub kv_budget_tokens: usize,
    /// Positions admission has reserved for the running requests.
    pub kv_reserved_tokens: usize,
    /// How long the engine step now running has taken so far (0: none is running).
    pub step_ms: u64,
    /// MLX's allocator after the last round.
    pub memory: MlxMemory,
}

/// State the handle and the worker share.
#[derive(Default)]
struct Shared {
    /// Requests sent to the worker and not yet admitted (or dropped).
    waiting: AtomicUsize,
    status: Mutex<RuntimeStatus>,
    /// The server is stopping: new submissions are refused.
    draining: AtomicBool,
    /// When the engine step now running started.
    step_started: Mutex<Option<Instant>>,
}

/// A submitted generation: its id (for logs), prompt length and event channel. Dropping it
/// (the client went away) cancels the request, waiting or running.
pub struct Job {
    pub id: RequestId,
    pub prompt_tokens: usize,
    pub events: UnboundedReceiver<Event>,
}

/// The HTTP side's way to the model.
pub struct RuntimeHandle {
    actor: Addr<ModelActor>,
    /// Rank 0 of a multi-rank run: fails requests in flight when a rank is lost.
    relay: Option<FailureRelay>,
    shared: Arc<Shared>,
    max_queue: usize,
    info: ModelInfo,
}

impl RuntimeHandle {
    /// Starts the model actor and waits until the model is loaded (on rank 0 of a
    /// multi-rank run, until every rank is ready).
    pub fn start(
        dir: PathBuf,
        dtype: ComputeDtype,
        tokenizer: Arc<Tokenizer>,
        leader: Option<Leader>,
        config: RuntimeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        let shared = Arc::new(Shared::default());
        let max_queue = config.max_queue;
        let (actor, info) = actor::spawn(
            dir,
            dtype,
            tokenizer,
            leader.clone(),
            config,
            shared.clone(),
            metrics,
        )?;
        let relay = match &leader {
            Some(leader) => {
                leader.wait_ready()?;
                Some(FailureRelay::new(leader))
            }
            None => None,
        };
        Ok(RuntimeHandle {
            actor,
            relay,
            shared,
            max_queue,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn status(&self) -> RuntimeStatus {
        let mut status = *self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        let started = *self
            .shared
            .step_started
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        status.step_ms = started.map_or(0, |t| t.elapsed().as_millis() as u64);
        status
    }

    /// From now on, submissions are refused (503): the server is stopping.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// Whether the model actor still takes messages (its thread has not ended).
    pub fn is_alive(&self) -> bool {
        self.actor.connected()
    }

    /// Ends every waiting and running request with [`RuntimeError::Unavailable`]`(why)`:
    /// streams get an error event and their end, non-streamed requests a 503.
    pub fn fail_all(&self, why: &str) {
        self.actor
            .do_send(actor::FailAll(RuntimeError::Unavailable(why.to_string())));
    }

    /// Queues a generation, or says at once why it cannot run.
    pub fn submit(&self, mut req: GenerationRequest) -> Result<Job, RuntimeError> {
        if self.is_draining() {
            return Err(RuntimeError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        let prompt_tokens = req.prompt_ids.len();
        let budget = self.info.kv_budget_tokens;
        if prompt_tokens + 1 > budget {
            return Err(RuntimeError::BadRequest {
                // Claude Code compacts its conversation on this wording (Anthropic's).
                message: format!(
                    "prompt is too long: {prompt_tokens} tokens > {} maximum (this server's \
                     KV cache budget holds {budget} positions per request: --kv-cache-bytes)",
                    budget - 1
                ),
                param: None,
            });
        }
        // What the budget cannot hold could never be generated: end there (`length`).
        req.max_tokens = req.max_tokens.min(budget - prompt_tokens);
        let id = req.id;
        let before = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if before >= self.max_queue {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(RuntimeError::Overloaded {
                message: format!(
                    "The server is at capacity: {before} requests are already waiting \
                     (--max-queue {}); retry shortly",
                    self.max_queue
                ),
                retry_after_secs: 1,
            });
        }
        let (tx, rx) = unbounded_channel();
        let registered = match &self.relay {
            Some(relay) => relay.register(id, &tx),
            None => Ok(()),
        };
        let sent = registered.and_then(|()| {
            if !self.actor.connected() {
                return Err(RuntimeError::Unavailable(
                    "the model actor has stopped".into(),
                ));
            }
            // Queued even when the mailbox is over its capacity: the waiting queue's bound
            // is `max_queue`, checked above.
            self.actor.do_send(Submit {
                request: req,
                events: tx,
                queued_at: std::time::Instant::now(),
            });
            Ok(())
        });
        if let Err(e) = sent {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        Ok(Job {
            id,
            prompt_tokens,
            events: rx,
        })
    }
}
