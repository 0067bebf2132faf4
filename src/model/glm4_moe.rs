//! glm4_moe (GLM-4.5, 4.6, 4.7): grouped-query attention with optional QKV biases and
//! per-head q/k RMSNorm, RoPE on `partial_rotary_factor` of each head; after the first
//! `first_k_dense_replace` dense layers, routed experts chosen by grouped sigmoid routing
//! ([`Routing::GroupedSigmoid`]) plus always-on shared experts. The same op sequence as
//! mlx-lm's `models/glm4_moe.py`.
//!
//! The router is a plain float matrix (`mlp.gate.weight`, never quantized) with its
//! correction bias beside it; the multi-token-prediction layer a checkpoint may carry
//! (`model.layers.{num_hidden_layers}`) is not read, as mlx-lm drops it. As in mlx-lm,
//! `rope_scaling` is not applied.

use super::attention::{Attention, AttnSpec, QkNorm};
use super::block::{Block, FeedForward, Mlp};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::llama::{rope_theta, Llama};
use super::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

/// Loads a glm4_moe model; returns it and whether its embeddings are tied (never).
/// Only the layers of `stage` are loaded (all of them unless pipeline parallel).
pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let (h, hd, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.rms_norm_eps);
    let missing = |k: &str| ModelError::Config(format!("glm4_moe: {k} is missing"));
    if let Some(m) = cfg.topk_method.as_deref().filter(|m| *m != "noaux_tc") {
        return Err(ModelError::Config(format!(
            "glm4_moe: topk_method {m:?} is not supported (only \"noaux_tc\")"
        )));
    }
    if let Some(f) = cfg.scoring_func.as_deref().filter(|f| *f != "sigmoid") {
        return Err(ModelError::Config(format!(
            "glm4_moe: scoring_func {f:?} is not supported (only \"sigmoid\")"
        )));
    }
    let rotary = (hd as f32 * cfg.partial_rotary_factor.unwrap_or(1.0)) as i32;
    if rotary <= 0 || rotary > hd {
        return Err(ModelError::Config(format!(
            "glm4_moe: partial_rotary_factor gives {rotary} rotated values of head_dim {hd}"
        )));
    }
    let theta = rope_theta(cfg, None)?;
    let bias = cfg.attention_bias.unwrap_or(false);
    let spec = AttnSpec {
        hidden: h,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.kv_heads(),
        head_dim: hd,
        qkv_bias: bias,
        o_bias: false,
        qk_norm: if cfg.use_qk_norm.unwrap_or(false) {
            QkNorm::PerHead
        } else {
            QkNorm::None
        },
        eps,
        sinks: false,
    };
    let experts = cfg.n_routed_experts;
    let first_sparse = cfg.first_k_dense_replace.unwrap_or(0);
    let (n_group, topk_group) = (cfg.n_group.unwrap_or(1), cfg.topk_group.unwrap_or(1));
    if n_group < 1 || !(1..=n_group).contains(&topk_group) {
        return Err(ModelError::Config(format!(
            "glm4_moe: n_group {n_group} and topk_group {topk_group} must satisfy 1 <= topk_group <= n_group"
        )));
    }
    let moe = match experts {
        Some(e) => {
            if e % n_group != 0 {
                return Err(ModelError::Config(format!(
                    "glm4_moe: {e} routed experts do not split into {n_group} groups"
                )));
            }
            Some(MoeSpec {
                dims: h,
                hidden: cfg
                    .moe_intermediate_size
                    .ok_or_else(|| missing("moe_intermediate_size"))?,
                experts: e,
                top_k: cfg
                    .num_experts_per_tok
                    .ok_or_else(|| missing("num_experts_per_tok"))?,
                routing: Routing::GroupedSigmoid {
                    n_group,
                    topk_group,
                    norm_topk_prob: cfg.norm_topk_prob.unwrap_or(false),
                    scaling: cfg.routed_scaling_factor.unwrap_or(1.0),
                },
                layout: MoeLayout::SWITCH_MLP,
            })
        }
        None => None,
    };
    ws.discard_prefix(&format!("model.layers.{}.", cfg.num_hidden_layers));
    let mut layers = Vec::with_capacity(stage.layers.len());
    for i in 0..cfg.num_hidden_layers {
        if !stage.layers.contains(&(i as usize)) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let rope = Rope::new(rotary, theta, false, None)?;
        let attn = Attention::load(ws, &format!("{p}.self_attn"), &spec, rope, &quant)?;
        let ffn = match &moe {
            Some(m) if i >= first_sparse => {
                let mut sparse = SparseMoe::load(ws, &format!("{p}.mlp"), m, &quant)?;
                if let Some(n) = cfg.n_shared_experts {
                    sparse = sparse.with_shared(ws, h, m.hidden * n, &quant)?;
                }
                FeedForward::Sparse(sparse)
            }
            _ => FeedForward::Dense(Mlp::load(
                ws,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                false,
                &quant,
            )?),
        };
        layers.push(Block::load(ws, &p, attn, ffn, h, eps, None)?);
    }
    Ok((
        Llama::assemble(cfg, ws, &quant, layers, false, stage)?,
        false,
    ))
}
