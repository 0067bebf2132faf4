//! minimax (MiniMax-M2, M2.1): grouped-query attention with RMSNorm over all query and all
//! key heads at once and RoPE on the first `rotary_dim` values of each head, then a sparse
//! mixture of experts in every layer, routed by sigmoid scores with a per-expert
//! correction bias ([`Routing::SigmoidBias`]); the same op sequence as mlx-lm's
//! `models/minimax.py`.
//!
//! The experts are `block_sparse_moe.switch_mlp.{gate,up,down}_proj` as mlx-lm saves them
//! (its `sanitize` stacks Hugging Face's per-expert `w1/w2/w3` and dequantizes FP8
//! checkpoints; kooka reads MLX folders). `shared_intermediate_size` is in the config but
//! unused by the model, as in mlx-lm. Under tensor parallelism the q/k norms are sharded
//! with their heads and reduce their squared sums over the ranks, as mlx-lm's `shard` does.

use super::attention::{Attention, AttnSpec, QkNorm};
use super::block::{Block, FeedForward};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::llama::{rope_theta, Llama};
use super::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

/// Loads a minimax model; returns it and whether its embeddings are tied.
/// Only the layers of `stage` are loaded (all of them unless pipeline parallel).
pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let (h, hd, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.rms_norm_eps);
    let missing = |k: &str| ModelError::Config(format!("minimax: {k} is missing"));
    if let Some(f) = cfg.scoring_func.as_deref().filter(|f| *f != "sigmoid") {
        return Err(ModelError::Config(format!(
            "minimax: scoring_func {f:?} is not supported (only \"sigmoid\")"
        )));
    }
    let rotary = cfg.rotary_dim.ok_or_else(|| missing("rotary_dim"))?;
    if rotary <= 0 || rotary > hd || rotary % 2 != 0 {
        return Err(ModelError::Config(format!(
            "minimax: rotary_dim {rotary} must be even and within head_dim {hd}"
        )));
    }
    let theta = rope_theta(cfg, None)?;
    let spec = AttnSpec {
        hidden: h,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.kv_heads(),
        head_dim: hd,
        qkv_bias: false,
        o_bias: false,
        qk_norm: if cfg.use_qk_norm.unwrap_or(true) {
            QkNorm::AllHeads
        } else {
            QkNorm::None
        },
        eps,
        sinks: false,
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
        routing: Routing::SigmoidBias,
        layout: MoeLayout::SWITCH_MLP,
    };
    let mut layers = Vec::with_capacity(stage.layers.len());
    for i in 0..cfg.num_hidden_layers {
        if !stage.layers.contains(&(i as usize)) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let rope = Rope::new(rotary, theta, false, None)?;
        let attn = Attention::load(ws, &format!("{p}.self_attn"), &spec, rope, &quant)?;
        let ffn = SparseMoe::load(ws, &format!("{p}.block_sparse_moe"), &moe, &quant)?;
        layers.push(Block::load(
            ws,
            &p,
            attn,
            FeedForward::Sparse(ffn),
            h,
            eps,
            None,
        )?);
    }
    let tied = cfg.tie_word_embeddings.unwrap_or(false);
    Ok((Llama::assemble(cfg, ws, &quant, layers, tied, stage)?, tied))
}
