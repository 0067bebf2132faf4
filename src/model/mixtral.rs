//! mixtral: Llama attention (head_dim = hidden / heads, no biases) with a sparse mixture
//! of experts in every layer; the same op sequence as mlx-lm's `models/mixtral.py`.
//!
//! The router keeps the top `num_experts_per_tok` logits of `num_local_experts` and takes
//! a softmax over those. Defaults follow mlx-lm's `ModelArgs` (8 experts, top-2, rope_theta
//! 1e6, 8 KV heads, untied embeddings); as in mlx-lm, `rope_scaling` is not applied.

use super::attention::{Attention, AttnSpec, QkNorm};
use super::block::{Block, FeedForward};
use super::config::{ModelConfig, QuantConfig};
use super::error::Result;
use super::llama::{rope_theta, Llama};
use super::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

/// Loads a mixtral model; returns it and whether its embeddings are tied.
/// Only the layers of `stage` are loaded (all of them unless pipeline parallel).
pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let (h, heads, eps) = (cfg.hidden_size, cfg.num_attention_heads, cfg.rms_norm_eps);
    let hd = h / heads;
    let theta = rope_theta(cfg, Some(1_000_000.0))?;
    let spec = AttnSpec {
        hidden: h,
        heads,
        kv_heads: cfg.num_key_value_heads.unwrap_or(8),
        head_dim: hd,
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::None,
        eps,
        sinks: false,
    };
    let moe = MoeSpec {
        dims: h,
        hidden: cfg.intermediate_size,
        experts: cfg.num_local_experts.unwrap_or(8),
        top_k: cfg.num_experts_per_tok.unwrap_or(2),
        routing: Routing::TopKSoftmax,
        layout: MoeLayout::SWITCH_MLP,
    };
    let mut layers = Vec::with_capacity(stage.layers.len());
    for i in 0..cfg.num_hidden_layers {
        if !stage.layers.contains(&(i as usize)) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let rope = Rope::new(hd, theta, cfg.rope_traditional, None)?;
        let attn = Attention::load(ws, &format!("{p}.self_attn"), &spec, rope, &quant)?;
        let moe = SparseMoe::load(ws, &format!("{p}.block_sparse_moe"), &moe, &quant)?;
        layers.push(Block::load(
            ws,
            &p,
            attn,
            FeedForward::Sparse(moe),
            h,
            eps,
            None,
        )?);
    }
    let tied = cfg.tie_word_embeddings.unwrap_or(false);
    Ok((Llama::assemble(cfg, ws, &quant, layers, tied, stage)?, tied))
}
