//! The model actor: an actix actor on a dedicated thread (its own `System`, so all MLX
//! state stays on that thread) that loads the model and owns the [`Worker`].
//!
//! It takes typed messages: [`Submit`] (a request joins the waiting queue) from the
//! [`RuntimeHandle`](super::RuntimeHandle), and `Step`, which it sends itself while there is
//! work: each `Step` runs one round (drop requests whose client left, admit, one engine
//! step, tokens out), so submissions are taken between steps. A request is cancelled by
//! dropping its [`Job`](super::Job): its closed channel is noticed in the next round,
//! whether it waits or runs. With nothing running or waiting no `Step` is queued and the thread sleeps in its
//! mailbox. The status for `/health` is published as a snapshot after every round, so it is
//! readable while a step runs. When every handle is gone the actor stops, the engine (and
//! with it a multi-rank run's control plane) shuts down, and the thread ends.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, System};
use tracing::info;

use super::admission::Limits;
use super::protocol::{ModelInfo, RuntimeError, Submit};
use super::worker::Worker;
use super::{RuntimeConfig, Shared};
use crate::cluster::{Leader, ReplicatedEngine};
use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;
use crate::model::{ComputeDtype, LanguageModel};
use crate::server::error::ServeError;
use crate::tokenizer::Tokenizer;

impl Message for Submit {
    type Result = ();
}

/// Ends every waiting and running request with this error (the server is stopping).
pub(super) struct FailAll(pub RuntimeError);

impl Message for FailAll {
    type Result = ();
}

impl Handler<FailAll> for ModelActor {
    type Result = ();
    fn handle(&mut self, FailAll(e): FailAll, _: &mut Context<Self>) {
        self.worker.fail_all(e);
    }
}

/// One round of work; the actor sends it to itself.
struct Step;

impl Message for Step {
    type Result = ();
}

pub(super) struct ModelActor {
    worker: Worker,
    /// A `Step` is queued.
    stepping: bool,
}

impl ModelActor {
    /// Queues the next round if there is work and none is queued.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.stepping && self.worker.busy() {
            self.stepping = true;
            ctx.notify(Step);
        }
    }
}

impl Actor for ModelActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        info!("model actor stopped");
        System::current().stop();
    }
}

impl Handler<Submit> for ModelActor {
    type Result = ();
    fn handle(&mut self, s: Submit, ctx: &mut Context<Self>) {
        self.worker.submit(s);
        self.schedule(ctx);
    }
}

impl Handler<Step> for ModelActor {
    type Result = ();
    fn handle(&mut self, _: Step, ctx: &mut Context<Self>) {
        self.stepping = false;
        self.worker.round();
        self.schedule(ctx);
    }
}

/// Starts the actor's thread, loads the model there and waits until it is ready.
/// With a `leader` (rank 0 of a multi-rank run) the thread loads rank 0's shard and every
/// engine operation is replicated to the other ranks ([`ReplicatedEngine`]).
pub(super) fn spawn(
    dir: PathBuf,
    dtype: ComputeDtype,
    tokenizer: Arc<Tokenizer>,
    leader: Option<Leader>,
    config: RuntimeConfig,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) -> Result<(Addr<ModelActor>, ModelInfo), ServeError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kooka-mlx".into())
        .spawn(move || {
            let system = System::new();
            let started = system.block_on(async move {
                let loaded = match &leader {
                    Some(leader) => leader
                        .load_model(&dir, dtype)
                        .map(|(m, shard, group)| (m, Some((shard, group)))),
                    None => {
                        crate::model::load_model_adapted(&dir, dtype, config.adapter.as_deref())
                            .map(|m| (m, None))
                    }
                };
                let (model, shard) = match loaded {
                    Ok(model) => model,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return false;
                    }
                };
                let (info, mut engine_config) = budgets(model.as_ref(), &config);
                let disk = config.disk_cache.as_ref().and_then(|c| {
                    // How these weights differ from the folder's: the shard, or an adapter.
                    let variant = match (&shard, config.adapter.as_deref()) {
                        (Some((s, _)), _) => Some(s.clone()),
                        (None, Some(a)) => match crate::model::adapter::Adapter::fingerprint(a) {
                            Ok(id) => Some(id),
                            Err(e) => {
                                tracing::warn!("disk prompt cache off: reading the adapter: {e}");
                                return None;
                            }
                        },
                        (None, None) => None,
                    };
                    let variant =
                        crate::engine::disk_cache::with_kv_layout(variant, config.kv_quantization);
                    crate::engine::disk_cache::open_for_model(c, &dir, dtype, variant.as_deref(), 0)
                });
                engine_config.disk_cache = disk.is_some();
                let mut stop_ids = model.config().eos_ids();
                stop_ids.extend(&tokenizer.eos_ids);
                stop_ids.sort_unstable();
                stop_ids.dedup();
                let mut engine = Engine::with_config(model, engine_config);
                engine.set_disk_cache(disk, shard.map(|(_, group)| group));
                if let Some(d) = &config.draft_model {
                    let drafted =
                        crate::model::load_model(d, dtype).and_then(|m| engine.set_draft_model(m));
                    if let Err(e) = drafted {
                        let _ = ready_tx.send(Err(e));
                        return false;
                    }
                    info!(draft_model = %d.display(), "speculative decoding with a draft model");
                }
                let mut engine = ReplicatedEngine::new(engine, leader);
                // Constrained decoding (response_format, forced tool calls) masks logits with
                // the vocabulary as bytes; without it such requests fail, others are unaffected.
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
                    memory_gib = format!(
                        "{:.1}",
                        super::memory::total_bytes() as f64 / f64::from(1u32 << 30)
                    ),
                    "runtime limits"
                );
                let limits = Limits {
                    max_running: config.max_running.max(1),
                    kv_budget_tokens: info.kv_budget_tokens,
                };
                let queue_timeout = config.queue_timeout;
                let worker = Worker::new(
                    engine,
                    tokenizer,
                    stop_ids,
                    limits,
                    (shared, metrics),
                    queue_timeout,
                );
                worker.publish();
                let addr = ModelActor {
                    worker,
                    stepping: false,
                }
                .start();
                ready_tx.send(Ok((addr, info))).is_ok()
            });
            if started {
                let _ = system.run();
            }
        })?;
    Ok(ready_rx.recv().map_err(|_| ServeError::ModelThreadDied)??)
}

/// KV positions for requests out of `positions`: a recurrent model's running sequences also
/// hold a state each (worth [`LanguageModel::checkpoint_tokens`] positions), reserved for
/// `max_running` of them but never more than three quarters of the budget.
fn kv_positions(positions: usize, model: &dyn LanguageModel, max_running: usize) -> usize {
    let reserve = max_running.max(1).saturating_mul(model.checkpoint_tokens());
    positions.saturating_sub(reserve).max(positions / 4).max(1)
}

/// The KV and prefix-cache budgets in tokens: the flags' bytes, or shares of the memory the
/// weights leave, over what one position of the whole model costs.
fn budgets(model: &dyn LanguageModel, config: &RuntimeConfig) -> (ModelInfo, EngineConfig) {
    let cfg = model.config();
    let on_cpu = crate::model::default_device_is_cpu();
    let dtype_bytes: usize = if on_cpu { 4 } else { 2 };
    let mut per_token =
        crate::model::kv_layer_count(cfg).max(1) * cfg.cache_width().max(1) as usize * dtype_bytes;
    // Quantized from the first position: each costs its packed size (with a later start,
    // positions before it are full size, and admission counts every one as such).
    if let Some(q) = config.kv_quantization.filter(|q| q.start == 0) {
        let dim = cfg.head_dim().max(1);
        per_token = (per_token * q.bytes(dim) / (dim as usize * dtype_bytes)).max(1);
    }
    let weights: usize = model.parameters().iter().map(|a| a.nbytes()).sum();
    let free = super::memory::total_bytes().saturating_sub(weights);
    let kv_bytes = config.kv_cache_bytes.unwrap_or(free / 10 * 4);
    let prefix_bytes = config.prompt_cache_bytes.unwrap_or(free / 10 * 2);
    let info = ModelInfo {
        max_position_embeddings: cfg
            .max_position_embeddings
            .and_then(|n| usize::try_from(n).ok()),
        kv_budget_tokens: kv_positions(kv_bytes / per_token, model, config.max_running),
        prefix_cache_tokens: prefix_bytes / per_token,
        recurrent: model.checkpoint_tokens() > 0,
        vocab_size: usize::try_from(cfg.vocab_size).unwrap_or(0),
    };
    let engine = EngineConfig {
        prefill_chunk: config
            .prefill_chunk
            .unwrap_or(default_prefill_chunk(on_cpu))
            .max(1),
        prefix_cache_tokens: info.prefix_cache_tokens,
        // Serving batches sliding-window models too (gpt-oss, Mistral with windows).
        windowed_caches: true,
        disk_cache: false,
        speculation: config.speculation,
        kv_quantization: config.kv_quantization,
    };
    (info, engine)
}

/// Prompt tokens a step reads unless `--prefill-chunk` says: 512 on the CPU backend, 2048 on
/// Metal, 8192 on CUDA, where an 8B 4-bit model reads ~23,000 prompt tokens a second on an
/// H200 (a step's stall stays near 0.35 s) and a burst of 32 prompts was served 10% faster
/// than with 2048 (docs/PERFORMANCE.md).
fn default_prefill_chunk(on_cpu: bool) -> usize {
    match (on_cpu, cfg!(target_os = "macos")) {
        (true, _) => 512,
        (false, true) => 2048,
        (false, false) => 8192,
    }
}
