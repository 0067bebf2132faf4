//! gpt_oss (gpt-oss-20b, gpt-oss-120b): grouped-query attention with biases, a learned
//! per-head attention sink and YaRN RoPE, alternating sliding-window (rotating cache of
//! `sliding_window` positions) and full layers, and a sparse mixture of experts in every
//! layer: a biased router whose top-k logits are softmaxed, experts with biases and the
//! clamped SwiGLU ([`super::layers::swiglu_oai`]), usually MXFP4-packed. The same op sequence
//! as mlx-lm's `models/gpt_oss.py`.
//!
//! The experts are `mlp.experts.{gate,up,down}_proj` as mlx-lm saves them (its `sanitize`
//! splits Hugging Face's interleaved `gate_up_proj` blocks; kooka reads MLX folders). The
//! output head is never tied. Under tensor parallelism the sinks are split with their heads
//! and each rank adds `1/size` of the experts' down bias, as mlx-lm's `shard` does.

use super::attention::{Attention, AttnSpec, QkNorm};
use super::block::{Block, FeedForward};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::llama::{rope_theta, sliding_windows, Llama};
use super::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

/// Loads a gpt_oss model; returns it and whether its embeddings are tied (never).
/// Only the layers of `stage` are loaded (all of them unless pipeline parallel).
pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let (h, hd, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.rms_norm_eps);
    let missing = |k: &str| ModelError::Config(format!("gpt_oss: {k} is missing"));
    let spec = AttnSpec {
        hidden: h,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.kv_heads(),
        head_dim: hd,
        qkv_bias: true,
        o_bias: true,
        qk_norm: QkNorm::None,
        eps,
        sinks: true,
    };
    let moe = MoeSpec {
        dims: h,
        hidden: cfg.intermediate_size,
        experts: cfg
            .num_local_experts
            .ok_or_else(|| missing("num_local_experts"))?,
        top_k: cfg
            .num_experts_per_tok
            .ok_or_else(|| missing("num_experts_per_tok"))?,
        routing: Routing::TopKSoftmaxUpper,
        layout: MoeLayout::GPT_OSS,
    };
    let theta = rope_theta(cfg, Some(150_000.0))?;
    let mut layers = Vec::with_capacity(stage.layers.len());
    for (i, window) in windows(cfg)?.into_iter().enumerate() {
        if !stage.layers.contains(&i) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let rope = Rope::new(hd, theta, false, cfg.rope_scaling())?;
        let attn = Attention::load(ws, &format!("{p}.self_attn"), &spec, rope, &quant)?;
        let ffn = SparseMoe::load(ws, &format!("{p}.mlp"), &moe, &quant)?;
        layers.push(Block::load(
            ws,
            &p,
            attn,
            FeedForward::Sparse(ffn),
            h,
            eps,
            window,
        )?);
    }
    Ok((
        Llama::assemble(cfg, ws, &quant, layers, false, stage)?,
        false,
    ))
}

/// Per-layer windows: `layer_types` when the config has it, else mlx-lm's default of
/// sliding and full layers in turn (sliding first).
fn windows(cfg: &ModelConfig) -> Result<Vec<Option<i32>>> {
    if cfg.layer_types.is_some() {
        return sliding_windows(cfg);
    }
    let w = cfg
        .sliding_window
        .filter(|w| *w > 0)
        .ok_or_else(|| ModelError::Config("gpt_oss: sliding_window is missing".into()))?;
    Ok((0..cfg.num_hidden_layers)
        .map(|i| (i % 2 == 0).then_some(w))
        .collect())
}
