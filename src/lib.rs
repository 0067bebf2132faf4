//! kooka: an MLX inference server with OpenAI- and Anthropic-compatible APIs, on one machine
//! or sharded across several.
//!
//! # Layout
//!
//! - [`bench`]: `kooka bench`, prefill/decode speed with the definitions `scripts/bench.py`
//!   uses for mlx-lm.
//! - [`chat`]: chat templates rendered as transformers does, and tool-call parsers.
//! - [`cli`]: the command line (clap derive); `main.rs` only parses it and dispatches.
//! - [`cluster`]: the multi-rank runtime of `kooka serve`: rank 0 replicates its engine
//!   operations to the other ranks over a TCP control plane (heartbeats, failure handling).
//! - [`openblas`] (Linux): OpenBLAS's fast kernels for MLX's CPU backend, and its one-row
//!   float32 matmuls as GEMV calls (OpenBLAS's GEMM packs the whole weight matrix per call).
//! - [`constrain`]: constrained decoding: grammars from JSON schemas and tool lists (plain
//!   data), compiled to per-sequence token masks (llguidance).
//! - [`convert`]: the GGUF importer (`kooka convert --from-gguf`): GGUF reader, lossless
//!   Q4_1/Q8_0 -> MLX affine repacking, dequantization of other types, tokenizer.json from
//!   the GGUF vocabulary, and the MLX model folder writer. Pure Rust, no MLX state.
//! - [`dist`]: MLX's distributed group (ring backend) behind a safe, `Result`-returning
//!   wrapper over the mlx-c calls.
//! - [`metrics`]: the Prometheus metrics of `kooka serve` (`GET /metrics`): HTTP requests,
//!   generation latencies and tokens, runtime and MLX memory gauges (`prometheus-client`).
//! - [`model`]: the model runtime: load MLX model folders (whole, or one rank's pipeline or
//!   tensor-parallel shard), Llama-family and MoE forwards, KV caches; [`model::catalog`]
//!   lists the model folders and cached repos `kooka models` shows, [`model::pull`] downloads
//!   one into the Hugging Face cache.
//! - [`progress`]: progress of long work: a bar on a terminal, log lines otherwise.
//! - [`runtime`]: the model side of `kooka serve` behind a `RuntimeHandle`: the MLX thread
//!   (model actor), admission (waiting queue, running and KV limits), the multi-rank relay.
//! - [`server`]: `kooka serve`: the HTTP side (actix-web), wire formats only.
//! - [`engine`]: generation over a model: chunked prefill, continuous batching (one batched
//!   forward per step), the prefix cache, sampling, stops.
//! - [`tokenizer`]: tokenizer.json + chat template + EOS ids, streaming detokenizer.
//!
//! See `docs/ARCHITECTURE.md` for how a request will flow through the actors.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod cluster;
pub mod constrain;
pub mod convert;
pub mod dist;
pub mod engine;
pub mod metrics;
pub mod model;
#[cfg(target_os = "linux")]
pub mod openblas;
pub mod progress;
pub mod runtime;
pub mod server;
pub mod tokenizer;
