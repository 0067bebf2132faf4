//! qwen3_moe: Qwen3 attention (per-head q/k RMSNorm, no biases) with sparse mixture-of-
//! experts feed-forwards; the same op sequence as mlx-lm's `models/qwen3_moe.py`.
//!
//! Layer `i` is sparse unless it is listed in `mlp_only_layers`, and only when
//! `num_experts > 0` and `(i + 1) % decoder_sparse_step == 0`; the other layers keep a
//! dense SwiGLU MLP of `intermediate_size`. The router takes a softmax over all experts,
//! keeps the top `num_experts_per_tok` and, with `norm_topk_prob`, renormalizes them.
//! As in mlx-lm, RoPE is plain (`rope_scaling` and `rope_traditional` are not applied).

use super::attention::{Attention, AttnSpec, QkNorm};
use super::block::{Block, FeedForward, Mlp};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::llama::{rope_theta, Llama};
use super::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

/// Whether layer `i` carries the mixture of experts.
fn is_sparse(cfg: &ModelConfig, i: i32, experts: i32, step: i32) -> bool {
    let dense_only = cfg.mlp_only_layers.as_deref().unwrap_or(&[]).contains(&i);
    !dense_only && experts > 0 && (i + 1) % step == 0
}

/// Loads a qwen3_moe model; returns it and whether its embeddings are tied.
/// Only the layers of `stage` are loaded (all of them unless pipeline parallel).
pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let (h, hd, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.rms_norm_eps);
    let theta = rope_theta(cfg, None)?;
    let experts = cfg.num_experts.unwrap_or(0);
    let step = cfg.decoder_sparse_step.unwrap_or(1);
    if step <= 0 {
        return Err(ModelError::Config(format!(
            "decoder_sparse_step must be positive, got {step}"
        )));
    }
    let missing = |k: &str| ModelError::Config(format!("qwen3_moe: {k} is missing"));
    let spec = AttnSpec {
        hidden: h,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.kv_heads(),
        head_dim: hd,
        qkv_bias: false,
        o_bias: false,
        qk_norm: QkNorm::PerHead,
        eps,
        sinks: false,
    };
    let routing = Routing::SoftmaxTopK {
        norm_topk_prob: cfg.norm_topk_prob.unwrap_or(false),
    };
    let mut layers = Vec::with_capacity(stage.layers.len());
    for i in 0..cfg.num_hidden_layers {
        if !stage.layers.contains(&(i as usize)) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let attn = Attention::load(
            ws,
            &format!("{p}.self_attn"),
            &spec,
            Rope::new(hd, theta, false, None)?,
            &quant,
        )?;
        let ffn = if is_sparse(cfg, i, experts, step) {
            let moe = MoeSpec {
                dims: h,
                hidden: cfg
                    .moe_intermediate_size
                    .ok_or_else(|| missing("moe_intermediate_size"))?,
                experts,
                top_k: cfg
                    .num_experts_per_tok
                    .ok_or_else(|| missing("num_experts_per_tok"))?,
                routing,
                layout: MoeLayout::SWITCH_MLP,
            };
            FeedForward::Sparse(SparseMoe::load(ws, &format!("{p}.mlp"), &moe, &quant)?)
        } else {
            FeedForward::Dense(Mlp::load(
                ws,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                false,
                &quant,
            )?)
        };
        layers.push(Block::load(ws, &p, attn, ffn, h, eps, None)?);
    }
    let tied = cfg.tie_word_embeddings.unwrap_or(false);
    Ok((Llama::assemble(cfg, ws, &quant, layers, tied, stage)?, tied))
}
