//! The model runtime: load an MLX model folder (config, safetensors, MLX affine
//! quantization) and run forwards of the supported architectures.
//!
//! All arrays built here live on the thread that loaded the model: a model is meant to be
//! owned by one model thread (actor) and only plain data crosses threads.
//!
//! [`load_model_sharded`] loads one rank's part of a model split over an MLX distributed
//! group (pipeline or tensor parallel, see [`shard`]); [`load_model`] is the one-rank case.
//!
//! # Compute dtype per backend
//!
//! [`ComputeDtype::Auto`] picks, per MLX default device:
//! - **CPU**: dequantize quantized weights once at load and keep every weight (and so all
//!   compute) in float32. MLX's CPU backend has no bf16 GEMM and a slow quantized matmul:
//!   on SmolLM2-135M float32 weights decode ~3x faster than bf16 or 4-bit ones.
//! - **GPU**: keep the checkpoint as stored (quantized matmuls, its float dtype), which is
//!   what mlx-lm does.
//!
//! `Native` always keeps the checkpoint as stored (bit-identical to mlx-lm), `F32`
//! dequantizes and casts to float32, `F16`/`Bf16` cast float weights and quantization
//! scales/biases but keep packed weights packed.

pub mod adapter;
mod attention;
mod block;
pub mod cache;
pub mod catalog;
pub mod config;
#[cfg(target_os = "linux")]
pub mod cpu_attention;
pub mod cuda;
mod decoder;
pub mod deepseek_v3;
pub mod device;
pub mod error;
mod few_queries;
mod folded;
pub mod glm4_moe;
pub mod gpt_oss;
pub mod hybrid;
pub mod layers;
pub mod llama;
pub mod minimax;
pub mod mixtral;
mod mla;
pub mod moe;
mod projections;
pub mod pull;
mod quant_matrix;
mod quant_ops;
pub mod qwen3_moe;
pub mod resolve;
pub mod rope;
pub mod shard;
pub mod slicing;
pub mod weights;

use std::path::Path;

use mlx_rs::{Array, Device, DeviceType, Dtype};

pub use cache::{KvCache, KvQuantization, LayerCache};
pub use config::ModelConfig;
use decoder::Llama;
pub use error::{ModelError, Result};
use shard::Stage;
pub use shard::{ParallelMode, Shard};
use weights::{WeightPolicy, Weights};

/// A causal language model: token ids in, logits out, with one cache per layer (keys and
/// values, or a recurrent state; see [`LayerCache`]).
pub trait LanguageModel {
    /// `tokens`: integer `[B, L]` -> logits `[B, L, vocab]` (lazy). Appends to `caches`.
    fn forward(&self, tokens: &Array, caches: &mut [LayerCache]) -> Result<Array>;
    /// Fresh, empty caches for one batch of sequences (rotating for sliding-window layers,
    /// as mlx-lm's).
    fn make_caches(&self) -> Vec<LayerCache>;
    /// Fresh caches whose rows can be batched and prefix-cached: sliding-window layers get
    /// windowed caches (see [`KvCache::windowed`]) instead of rotating ones.
    fn make_batchable_caches(&self) -> Vec<LayerCache> {
        self.make_caches()
    }
    fn num_layers(&self) -> usize;
    fn config(&self) -> &ModelConfig;
    /// For models with recurrent layers: what one snapshot of every layer's state costs in
    /// the prefix cache's budget unit (positions of keys and values of the whole model),
    /// computed from the config so that every rank agrees. 0 for attention-only models.
    fn checkpoint_tokens(&self) -> usize {
        0
    }
    /// Every weight array (to evaluate after loading).
    fn parameters(&self) -> Vec<&Array>;
}

/// The dtype weights and compute use; see the module doc for per-backend defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    #[default]
    Auto,
    Native,
    F32,
    F16,
    Bf16,
}

impl ComputeDtype {
    /// The weight policy on the current default device.
    pub fn policy(self) -> WeightPolicy {
        let on_cpu = default_device_is_cpu();
        let (dequantize, dtype) = match self {
            ComputeDtype::Auto if on_cpu => (true, Some(Dtype::Float32)),
            ComputeDtype::Auto | ComputeDtype::Native => (false, None),
            ComputeDtype::F32 => (true, Some(Dtype::Float32)),
            ComputeDtype::F16 => (false, Some(Dtype::Float16)),
            ComputeDtype::Bf16 => (false, Some(Dtype::Bfloat16)),
        };
        let (dense_from_rows, keep_unpacked) = match keep_unpacked_from_rows(on_cpu) {
            Some(rows) => (Some(rows), true),
            None => (dense_from_rows(on_cpu), false),
        };
        WeightPolicy {
            dequantize,
            dtype,
            dense_from_rows,
            keep_unpacked,
            pad_rows_to: pad_rows_to(on_cpu),
        }
    }
}

/// From how many input rows packed weights are unpacked for a float GEMM:
/// `KOOKA_DENSE_FROM_ROWS` (`0` or `off`: never), else the backend's default. On CUDA, MLX's
/// 4-bit GEMM runs a 4,096-row prompt chunk 4.5x slower than unpacking and a bf16 GEMM, and
/// breaks even near 256 rows (`docs/PERFORMANCE.md`); decode batches stay below that. Metal
/// keeps MLX's quantized kernels (not measured there), and the CPU default already unpacks
/// at load.
fn dense_from_rows(on_cpu: bool) -> Option<i32> {
    match std::env::var("KOOKA_DENSE_FROM_ROWS") {
        Ok(v) => v.trim().parse::<i32>().ok().filter(|n| *n > 0),
        Err(_) if on_cpu || cfg!(target_os = "macos") => None,
        Err(_) => Some(256),
    }
}

/// `KOOKA_KEEP_UNPACKED_FROM_ROWS=N`: packed matrices also keep an unpacked float copy,
/// made at load, and multiply inputs of at least N rows by it (memory for speed: a decode
/// batch of 8-32 rows then runs at float GEMM speed, where MLX's packed GEMM on CUDA reads the
/// weights far below the memory's bandwidth: 2x the batch-32 decode rate of an 8B model on an
/// H100, docs/PERFORMANCE.md). `0` or `off`: no copy kept. Unset: [`keeps_copies_by_default`]
/// decides once the weights are known. Not on the CPU backend, which unpacks at load.
fn keep_unpacked_from_rows(on_cpu: bool) -> Option<i32> {
    if on_cpu {
        return None;
    }
    std::env::var("KOOKA_KEEP_UNPACKED_FROM_ROWS")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
}

/// The rows from which kept unpacked copies multiply when they are the default.
const KEEP_UNPACKED_DEFAULT_ROWS: i32 = 8;

/// The share of the GPU's memory that the weights and their kept copies may take by default;
/// the rest is left to the KV cache, the prefix cache and activations.
const KEPT_COPIES_MEMORY_SHARE: f64 = 0.5;

/// Without `KOOKA_KEEP_UNPACKED_FROM_ROWS`, on CUDA: packed matrices keep unpacked copies
/// (from [`KEEP_UNPACKED_DEFAULT_ROWS`] rows) when the checkpoint and the copies fit in
/// [`KEPT_COPIES_MEMORY_SHARE`] of the GPU's memory as MLX reports it (its free memory when
/// reported: another process on the GPU leaves less; an 8B 4-bit model's 14 GiB of copies fit
/// an 80 GB H100, a 70B's do not). Metal (not measured there) and the CPU backend keep none.
/// Logs what it chose.
fn keeps_copies_by_default(ws: &Weights, cfg: &ModelConfig) -> Result<bool> {
    let on_cpu = default_device_is_cpu();
    if on_cpu
        || cfg!(target_os = "macos")
        || ws.policy.dequantize
        || std::env::var_os("KOOKA_KEEP_UNPACKED_FROM_ROWS").is_some()
    {
        return Ok(false);
    }
    let elem = match ws.policy.dtype {
        Some(Dtype::Float32) => 4,
        _ => 2,
    };
    let copies = ws.unpacked_copy_bytes(&cfg.quant_config()?, elem);
    if copies == 0 {
        return Ok(false);
    }
    let weights = ws.bytes();
    let info = device::DeviceInfo::of_default_device();
    let memory = info.free_memory.or(info.total_memory);
    let keep = copies_fit(weights, copies, memory);
    let gib = |b: usize| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    tracing::info!(
        keep,
        copies = gib(copies),
        weights = gib(weights),
        device_memory = memory.map(gib).unwrap_or_else(|| "unknown".into()),
        "unpacked weight copies for batches of {KEEP_UNPACKED_DEFAULT_ROWS}+ rows \
         (KOOKA_KEEP_UNPACKED_FROM_ROWS sets the rows, 0 turns them off)"
    );
    Ok(keep)
}

/// Whether `weights` and their `copies` (bytes) fit in [`KEPT_COPIES_MEMORY_SHARE`] of
/// `memory` (unknown: no).
fn copies_fit(weights: usize, copies: usize, memory: Option<usize>) -> bool {
    memory.is_some_and(|m| (weights + copies) as f64 <= m as f64 * KEPT_COPIES_MEMORY_SHARE)
}

/// To how many rows packed weights pad a decode batch of at least half as many:
/// `KOOKA_PAD_ROWS` (`0` or `off`: never), else 8 on CUDA, where MLX multiplies 2 to 7 rows
/// as that many matrix-vector products and 8 rows in one GEMM (an 8B 4-bit step on an H200:
/// 4 rows 19.5 ms, padded to 8 16.7 ms; 2 rows 11.1 ms, padded 14.5 ms; docs/PERFORMANCE.md).
/// The CPU unpacks at load; Metal is not measured.
fn pad_rows_to(on_cpu: bool) -> Option<i32> {
    match std::env::var("KOOKA_PAD_ROWS") {
        Ok(v) => v.trim().parse::<i32>().ok().filter(|n| *n > 2),
        Err(_) if on_cpu || cfg!(target_os = "macos") => None,
        Err(_) => Some(8),
    }
}

/// Whether MLX's default device is the CPU (or cannot be queried).
pub(crate) fn default_device_is_cpu() -> bool {
    Device::try_default()
        .ok()
        .and_then(|d| d.get_type().ok())
        .is_none_or(|t| matches!(t, DeviceType::Cpu))
}

/// Layers of the whole model that keep keys and values (a hybrid model's attention layers;
/// every layer otherwise): what one position costs.
pub fn kv_layer_count(cfg: &ModelConfig) -> usize {
    hybrid::kv_layers(cfg).unwrap_or(cfg.num_hidden_layers.max(0) as usize)
}

/// `model_type` values the registry can build.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "mixtral",
    "minimax",
    "glm4_moe",
    "gpt_oss",
    "deepseek_v3",
    "kimi_k2",
    "joyai_llm_flash",
    "nemotron_h",
    "qwen3_next",
];

/// Says which checkpoint tensors an architecture drops on purpose.
type IgnoreFn = fn(&str) -> bool;
/// Builds the layers of a stage and what goes around them; returns the model and whether
/// its embeddings are tied.
type Builder = fn(&ModelConfig, &mut Weights, &Stage) -> Result<(Llama, bool)>;

/// Precomputed rotary frequencies are always dropped; so is `lm_head` under tied embeddings.
fn ignore_for(tied: bool) -> IgnoreFn {
    if tied {
        |n| n.contains("rotary_emb.inv_freq") || n.starts_with("lm_head.")
    } else {
        |n| n.contains("rotary_emb.inv_freq")
    }
}

fn build_llama(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    Ok((
        Llama::load(cfg, ws, stage)?,
        cfg.tie_word_embeddings.unwrap_or(true),
    ))
}

/// Builds a hybrid model's stage (see [`hybrid`]); returns it and whether its embeddings
/// are tied.
type HybridBuilder = fn(&ModelConfig, &mut Weights, &Stage) -> Result<(hybrid::Hybrid, bool)>;

/// The hybrid part of the registry: `model_type` -> builder.
fn hybrid_builder_for(model_type: &str) -> Option<HybridBuilder> {
    match model_type {
        "nemotron_h" => Some(hybrid::nemotron_h::load),
        "qwen3_next" => Some(hybrid::qwen3_next::load),
        _ => None,
    }
}

/// The registry: `model_type` -> builder.
fn builder_for(model_type: &str) -> Option<Builder> {
    match model_type {
        "llama" | "mistral" | "qwen2" | "qwen3" => Some(build_llama),
        "qwen3_moe" => Some(qwen3_moe::load),
        "mixtral" => Some(mixtral::load),
        "minimax" => Some(minimax::load),
        "glm4_moe" => Some(glm4_moe::load),
        "gpt_oss" => Some(gpt_oss::load),
        // mlx-lm's MODEL_REMAPPING sends Kimi-K2 and JoyAI-LLM-Flash to deepseek_v3.
        "deepseek_v3" | "kimi_k2" | "joyai_llm_flash" => Some(deepseek_v3::load),
        _ => None,
    }
}

/// Loads the model of folder `dir` and evaluates its weights.
pub fn load_model(dir: &Path, dtype: ComputeDtype) -> Result<Box<dyn LanguageModel>> {
    load_model_sharded(dir, dtype, None)
}

/// [`load_model`] with a LoRA adapter folder (mlx-lm's format, see [`adapter`]) applied to
/// its linear layers; `None`: the plain model. One rank only.
pub fn load_model_adapted(
    dir: &Path,
    dtype: ComputeDtype,
    adapter: Option<&Path>,
) -> Result<Box<dyn LanguageModel>> {
    load_model_with(dir, dtype, None, adapter)
}

/// Loads this rank's part of the model of folder `dir` (the whole model for `None` or a
/// one-rank group) and evaluates its weights. Every rank of a sharded model returns the
/// same full logits from each forward; see [`shard`].
pub fn load_model_sharded(
    dir: &Path,
    dtype: ComputeDtype,
    shard: Option<Shard>,
) -> Result<Box<dyn LanguageModel>> {
    load_model_with(dir, dtype, shard, None)
}

/// The weights of `dir`, with `adapter`'s matrices beside them when one is given.
fn weights_with(
    dir: &Path,
    cfg: &ModelConfig,
    dtype: ComputeDtype,
    adapter: Option<&Path>,
) -> Result<Weights> {
    let mut ws = Weights::load(dir, dtype.policy())?;
    if keeps_copies_by_default(&ws, cfg)? {
        ws.policy.keep_unpacked = true;
        ws.policy.dense_from_rows = Some(KEEP_UNPACKED_DEFAULT_ROWS);
    }
    if let Some(adapter) = adapter {
        ws.add_adapter(adapter::Adapter::load(adapter)?)?;
    }
    Ok(ws)
}

/// [`load_model_sharded`] with an optional LoRA adapter folder (one rank only).
pub fn load_model_with(
    dir: &Path,
    dtype: ComputeDtype,
    shard: Option<Shard>,
    adapter: Option<&Path>,
) -> Result<Box<dyn LanguageModel>> {
    let cfg = ModelConfig::load(dir)?;
    let shard = shard.filter(|s| s.group.size() > 1);
    if adapter.is_some() && shard.is_some() {
        return Err(ModelError::Shard(
            "LoRA adapters run on one rank for now (serve the model whole, or fuse the \
             adapter with `mlx_lm.fuse`)"
                .into(),
        ));
    }
    if let Some(builder) = hybrid_builder_for(&cfg.model_type) {
        return load_hybrid(dir, &cfg, dtype, shard, builder, adapter);
    }
    let builder = builder_for(&cfg.model_type).ok_or_else(|| ModelError::UnsupportedModelType {
        found: cfg.model_type.clone(),
        supported: SUPPORTED_MODEL_TYPES.to_vec(),
    })?;
    let stage = shard::stage_for(&cfg, shard.as_ref())?;
    let mut ws = weights_with(dir, &cfg, dtype, adapter)?;
    // Before the builder takes the embeddings out of the map.
    let wire = shard::wire_dtype(&ws)?;
    let (mut model, tied) = builder(&cfg, &mut ws, &stage)?;
    let ignore = ignore_for(tied);
    ws.finish(|n| ignore(n) || stage.skips(n, tied))?;
    if let Some(shard) = shard {
        shard::apply(&mut model, &cfg, wire, shard)?;
    }
    if std::env::var_os("KOOKA_NO_FUSE").is_none() {
        model.fuse_projections()?;
    }
    eval_with_progress(model.parameters())?;
    Ok(Box::new(model))
}

/// [`load_model_sharded`] for a hybrid model: pipeline parallel only.
fn load_hybrid(
    dir: &Path,
    cfg: &ModelConfig,
    dtype: ComputeDtype,
    shard: Option<Shard>,
    builder: HybridBuilder,
    adapter: Option<&Path>,
) -> Result<Box<dyn LanguageModel>> {
    let shard = shard.filter(|s| s.group.size() > 1);
    if let Some(Shard {
        mode: ParallelMode::Tensor,
        ..
    }) = &shard
    {
        return Err(ModelError::Shard(format!(
            "{} (a hybrid recurrent model) cannot be split tensor-parallel: its recurrent \
             layers' projections interleave heads, groups and gates; use --parallel pipeline",
            cfg.model_type
        )));
    }
    let stage = shard::stage_for(cfg, shard.as_ref())?;
    let mut ws = weights_with(dir, cfg, dtype, adapter)?;
    hybrid::canonical_names(cfg, &mut ws);
    let wire = shard::wire_dtype(&ws)?;
    let (mut model, tied) = builder(cfg, &mut ws, &stage)?;
    let ignore = ignore_for(tied);
    ws.finish(|n| ignore(n) || stage.skips(n, tied))?;
    if let Some(shard) = shard {
        model.set_dist(shard::Dist::Pipeline(shard::Pipeline::new(
            shard.group,
            cfg.hidden_size,
            cfg.vocab_size,
            wire,
        )?))?;
    }
    eval_with_progress(model.parameters())?;
    Ok(Box::new(model))
}

/// Evaluates (reads, and converts per the weight policy) every weight, with progress (a bar
/// on a terminal, log lines otherwise) when the model is big enough for the wait to be
/// noticeable.
fn eval_with_progress(params: Vec<&Array>) -> Result<()> {
    use crate::progress::{Progress, Unit};
    let total: usize = params.iter().map(|a| a.nbytes()).sum();
    let mut progress = match total > (512 << 20) {
        true => Progress::new("loading weights", total as u64, Unit::Bytes),
        false => Progress::hidden(),
    };
    for chunk in params.chunks(16) {
        mlx_rs::transforms::eval(chunk.iter().copied())?;
        progress.inc(chunk.iter().map(|a| a.nbytes() as u64).sum());
    }
    progress.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::copies_fit;

    const GIB: usize = 1 << 30;

    #[test]
    fn kept_copies_fit_in_half_the_gpu_memory() {
        // An 8B 4-bit model on an 80 GB H100 (measured: 4.2 + 14.0 GiB of 79.6).
        assert!(copies_fit(
            4 * GIB + GIB / 5,
            14 * GIB,
            Some(79 * GIB + 3 * GIB / 5)
        ));
        // A 70B 4-bit model's ~37 + ~130 GiB do not fit there; nothing fits an unknown device.
        assert!(!copies_fit(37 * GIB, 130 * GIB, Some(80 * GIB)));
        assert!(!copies_fit(GIB, GIB, None));
    }
}
