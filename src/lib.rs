//! kooka: an MLX inference server with OpenAI- and Anthropic-compatible APIs, on one machine
//! or sharded across several.
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap derive); `main.rs` only parses it and dispatches.
//! - [`convert`]: the GGUF importer (`kooka convert --from-gguf`): GGUF reader, lossless
//!   Q4_1/Q8_0 -> MLX affine repacking, dequantization of other types, tokenizer.json from
//!   the GGUF vocabulary, and the MLX model folder writer. Pure Rust, no MLX state.
//! - [`dist`]: MLX's distributed group (ring backend) behind a safe, `Result`-returning
//!   wrapper over the mlx-c calls.
//! - [`mlx`]: small helpers around mlx-rs shared by the rest (error conversion, checks).
//!
//! See `docs/ARCHITECTURE.md` for how a request will flow through the actors.

pub mod cli;
pub mod convert;
pub mod dist;
pub mod mlx;
