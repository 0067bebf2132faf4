//! The Llama family: llama and mistral, qwen2 (QKV bias) and qwen3 (per-head q/k RMSNorm).
//! Pre-norm decoder blocks with grouped-query attention, RoPE and a SwiGLU MLP; the same
//! op sequence as mlx-lm's `llama.py` / `qwen2.py` / `qwen3.py`. llama/mistral layers that
//! `layer_types` marks `"sliding_attention"` use a rotating cache of `sliding_window`
//! positions, as mlx-lm's llama does (its qwen2/qwen3 ignore sliding windows, so do we).
//!
//! The blocks live in `block.rs` and the model around them in `decoder.rs`, shared with the
//! mixtures of experts, whose blocks carry a [`FeedForward::Sparse`] instead of the dense MLP.

use super::attention::{Attention, AttnSpec, QkNorm};
use super::block::{Block, FeedForward, Mlp};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

pub use super::decoder::Llama;

/// What distinguishes the family's members.
#[derive(Debug, Clone, Copy)]
pub struct ArchFlags {
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (qwen3).
    pub qk_norm: bool,
    /// `head_dim` from the config is honoured (qwen2 always uses hidden/heads).
    pub config_head_dim: bool,
    pub default_rope_theta: Option<f32>,
}

impl ArchFlags {
    pub fn for_config(cfg: &ModelConfig) -> Result<Self> {
        let attn_bias = cfg.attention_bias.unwrap_or(false);
        Ok(match cfg.model_type.as_str() {
            "llama" | "mistral" => ArchFlags {
                qkv_bias: attn_bias,
                o_bias: attn_bias,
                qk_norm: false,
                config_head_dim: true,
                default_rope_theta: Some(10000.0),
            },
            "qwen2" => ArchFlags {
                qkv_bias: true,
                o_bias: false,
                qk_norm: false,
                config_head_dim: false,
                default_rope_theta: Some(1_000_000.0),
            },
            "qwen3" => ArchFlags {
                qkv_bias: false,
                o_bias: false,
                qk_norm: true,
                config_head_dim: true,
                default_rope_theta: None,
            },
            other => {
                return Err(ModelError::UnsupportedModelType {
                    found: other.to_string(),
                    supported: super::SUPPORTED_MODEL_TYPES.to_vec(),
                })
            }
        })
    }
}

/// `rope_theta` (or transformers 5's `rope_parameters.rope_theta`), else `default`.
pub(crate) fn rope_theta(cfg: &ModelConfig, default: Option<f32>) -> Result<f32> {
    cfg.rope_theta
        .or_else(|| {
            cfg.rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(|v| v.as_f64())
                .map(|v| v as f32)
        })
        .or(default)
        .ok_or_else(|| ModelError::Config("rope_theta is missing".into()))
}

/// Per-layer sliding windows from `layer_types`/`sliding_window` (mlx-lm's llama: layers
/// marked `"sliding_attention"` get a rotating cache of `sliding_window`).
pub(crate) fn sliding_windows(cfg: &ModelConfig) -> Result<Vec<Option<i32>>> {
    let n = cfg.num_hidden_layers as usize;
    let Some(types) = &cfg.layer_types else {
        return Ok(vec![None; n]);
    };
    if types.len() != n {
        return Err(ModelError::Config(format!(
            "layer_types has {} entries for {n} layers",
            types.len()
        )));
    }
    types
        .iter()
        .map(|t| match t.as_str() {
            "sliding_attention" => match cfg.sliding_window {
                Some(w) if w > 0 => Ok(Some(w)),
                other => Err(ModelError::Config(format!(
                    "sliding_attention layers need a positive sliding_window, got {other:?}"
                ))),
            },
            _ => Ok(None),
        })
        .collect()
}

impl Llama {
    /// Loads the layers of `stage` (all of them unless pipeline parallel) and what goes
    /// around them.
    pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<Self> {
        cfg.check()?;
        let flags = ArchFlags::for_config(cfg)?;
        let quant: QuantConfig = cfg.quant_config()?;
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let hd = if flags.config_head_dim {
            cfg.head_dim()
        } else {
            h / heads
        };
        let theta = rope_theta(cfg, flags.default_rope_theta)?;
        let spec = AttnSpec {
            hidden: h,
            heads,
            kv_heads: cfg.kv_heads(),
            head_dim: hd,
            qkv_bias: flags.qkv_bias,
            o_bias: flags.o_bias,
            qk_norm: if flags.qk_norm {
                QkNorm::PerHead
            } else {
                QkNorm::None
            },
            eps: cfg.rms_norm_eps,
            sinks: false,
        };
        // Only mlx-lm's llama (and mistral, which it maps to llama) honours sliding windows.
        let windows = match cfg.model_type.as_str() {
            "llama" | "mistral" => sliding_windows(cfg)?,
            _ => vec![None; cfg.num_hidden_layers as usize],
        };
        let mut layers = Vec::with_capacity(stage.layers.len());
        for (i, window) in windows.into_iter().enumerate() {
            if !stage.layers.contains(&i) {
                continue;
            }
            let p = format!("model.layers.{i}");
            let rope = Rope::new(hd, theta, cfg.rope_traditional, cfg.rope_scaling())?;
            let attn = Attention::load(ws, &format!("{p}.self_attn"), &spec, rope, &quant)?;
            let mlp = Mlp::load(
                ws,
                &format!("{p}.mlp"),
                h,
                cfg.intermediate_size,
                cfg.mlp_bias,
                &quant,
            )?;
            layers.push(Block::load(
                ws,
                &p,
                attn,
                FeedForward::Dense(mlp),
                h,
                cfg.rms_norm_eps,
                window,
            )?);
        }
        Self::assemble(
            cfg,
            ws,
            &quant,
            layers,
            cfg.tie_word_embeddings.unwrap_or(true),
            stage,
        )
    }
}
