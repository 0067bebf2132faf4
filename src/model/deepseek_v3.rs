//! deepseek_v3 (DeepSeek-V3, V3.1; Kimi-K2 as `kimi_k2`, and mlx-lm's other alias
//! `joyai_llm_flash`): multi-head latent attention ([`super::mla`]) with traditional RoPE on
//! each head's rotated part (YaRN per `rope_scaling`); after the first
//! `first_k_dense_replace` dense layers, every `moe_layer_freq`-th layer routes to experts by
//! grouped sigmoid scores with a correction bias ([`Routing::GroupedSigmoid`], DeepSeek's
//! `noaux_tc`) plus always-on shared experts. The same op sequence as mlx-lm's
//! `models/deepseek_v3.py`.
//!
//! Defaults of keys a config leaves out are mlx-lm's (`q_lora_rank` 1536, `kv_lora_rank`
//! 512, ...; `null` for `q_lora_rank` means a full `q_proj`). As in mlx-lm, only
//! `rope_scaling` is read (not transformers 5's `rope_parameters`), `scoring_func` must be
//! the sigmoid, and the multi-token-prediction layer a checkpoint may carry
//! (`model.layers.{num_hidden_layers}`) is not read. DeepSeek-V3.2 (`deepseek_v32`, with its
//! sparse-attention indexer) is another architecture.

use super::block::{Block, FeedForward, Mlp};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::llama::{rope_theta, Llama};
use super::mla::{LatentAttention, MlaSpec};
use super::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use super::rope::Rope;
use super::shard::Stage;
use super::weights::Weights;

/// Loads a deepseek_v3 model; returns it and whether its embeddings are tied (never).
/// Only the layers of `stage` are loaded (all of them unless pipeline parallel).
pub fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Llama, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    let err = |m: String| ModelError::Config(format!("deepseek_v3: {m}"));
    if let Some(m) = cfg.topk_method.as_deref().filter(|m| *m != "noaux_tc") {
        return Err(err(format!(
            "topk_method {m:?} is not supported (only \"noaux_tc\")"
        )));
    }
    if let Some(f) = cfg.scoring_func.as_deref().filter(|f| *f != "sigmoid") {
        return Err(err(format!(
            "scoring_func {f:?} is not supported (only \"sigmoid\")"
        )));
    }
    let spec = attention_spec(cfg)?;
    let theta = rope_theta(cfg, Some(10000.0))?;
    let scaling = cfg.rope_scaling.as_ref().filter(|v| v.is_object());
    let (n_group, topk_group) = (cfg.n_group.unwrap_or(1), cfg.topk_group.unwrap_or(1));
    if n_group < 1 || !(1..=n_group).contains(&topk_group) {
        return Err(err(format!(
            "n_group {n_group} and topk_group {topk_group} must satisfy 1 <= topk_group <= n_group"
        )));
    }
    let moe = match cfg.n_routed_experts {
        Some(e) => {
            if e % n_group != 0 {
                return Err(err(format!(
                    "{e} routed experts do not split into {n_group} groups"
                )));
            }
            Some(MoeSpec {
                dims: h,
                hidden: cfg
                    .moe_intermediate_size
                    .ok_or_else(|| err("moe_intermediate_size is missing".into()))?,
                experts: e,
                top_k: cfg.num_experts_per_tok.unwrap_or(1),
                routing: Routing::GroupedSigmoid {
                    n_group,
                    topk_group,
                    norm_topk_prob: cfg.norm_topk_prob.unwrap_or(true),
                    scaling: cfg.routed_scaling_factor.unwrap_or(1.0),
                },
                layout: MoeLayout::SWITCH_MLP,
            })
        }
        None => None,
    };
    let (first_sparse, freq) = (
        cfg.first_k_dense_replace.unwrap_or(0),
        cfg.moe_layer_freq.unwrap_or(1),
    );
    if freq < 1 {
        return Err(err(format!("moe_layer_freq must be positive, got {freq}")));
    }
    ws.discard_prefix(&format!("model.layers.{}.", cfg.num_hidden_layers));
    let mut layers = Vec::with_capacity(stage.layers.len());
    for i in 0..cfg.num_hidden_layers {
        if !stage.layers.contains(&(i as usize)) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let rope = Rope::new(spec.qk_rope_head_dim, theta, true, scaling)?;
        let attn = LatentAttention::load(ws, &format!("{p}.self_attn"), &spec, rope, &quant)?;
        let ffn = match &moe {
            Some(m) if i >= first_sparse && i % freq == 0 => {
                let mut sparse = SparseMoe::load(ws, &format!("{p}.mlp"), m, &quant)?;
                if let Some(n) = cfg.n_shared_experts.filter(|n| *n > 0) {
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

/// The latent attention's widths (mlx-lm's defaults for missing keys) and softmax scale:
/// `1/sqrt(qk_nope_head_dim + qk_rope_head_dim)`, times the square of YaRN's
/// `0.1 * mscale_all_dim * ln(factor) + 1` when `rope_scaling` has a nonzero `mscale_all_dim`
/// and a `factor` above one, computed in double precision as mlx-lm does.
fn attention_spec(cfg: &ModelConfig) -> Result<MlaSpec> {
    let spec = MlaSpec {
        hidden: cfg.hidden_size,
        heads: cfg.num_attention_heads,
        q_lora_rank: cfg.q_lora_rank.unwrap_or(Some(1536)),
        kv_lora_rank: cfg.kv_lora_rank.unwrap_or(512),
        qk_nope_head_dim: cfg.qk_nope_head_dim.unwrap_or(128),
        qk_rope_head_dim: cfg.qk_rope_head_dim.unwrap_or(64),
        v_head_dim: cfg.v_head_dim.unwrap_or(128),
        bias: cfg.attention_bias.unwrap_or(false),
        scale: 0.0,
    };
    let widths = [
        ("q_lora_rank", spec.q_lora_rank.unwrap_or(1)),
        ("kv_lora_rank", spec.kv_lora_rank),
        ("qk_nope_head_dim", spec.qk_nope_head_dim),
        ("qk_rope_head_dim", spec.qk_rope_head_dim),
        ("v_head_dim", spec.v_head_dim),
    ];
    for (name, v) in widths {
        if v <= 0 {
            return Err(ModelError::Config(format!(
                "deepseek_v3: {name} must be positive, got {v}"
            )));
        }
    }
    if spec.qk_rope_head_dim % 2 != 0 {
        return Err(ModelError::Config(format!(
            "deepseek_v3: qk_rope_head_dim {} must be even (RoPE rotates pairs)",
            spec.qk_rope_head_dim
        )));
    }
    let mut scale = f64::from(spec.qk_nope_head_dim + spec.qk_rope_head_dim).powf(-0.5);
    if let Some(rs) = cfg.rope_scaling.as_ref().filter(|v| v.is_object()) {
        let m = rs
            .get("mscale_all_dim")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        if m != 0.0 {
            let factor = rs.get("factor").and_then(|v| v.as_f64()).ok_or_else(|| {
                ModelError::Config("deepseek_v3: rope_scaling.factor is missing".into())
            })?;
            if factor > 1.0 {
                let s = 0.1 * m * factor.ln() + 1.0;
                scale = scale * s * s;
            }
        }
    }
    Ok(MlaSpec {
        scale: scale as f32,
        ..spec
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> ModelConfig {
        let mut v = json!({
            "model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 2,
            "intermediate_size": 128, "num_attention_heads": 4, "rms_norm_eps": 1e-6,
            "vocab_size": 100, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn q_lora_rank_absent_null_or_set() {
        let absent = attention_spec(&config(json!({}))).unwrap();
        assert_eq!(absent.q_lora_rank, Some(1536), "mlx-lm's default");
        let null = attention_spec(&config(json!({"q_lora_rank": null}))).unwrap();
        assert_eq!(null.q_lora_rank, None, "a full q_proj");
        let set = attention_spec(&config(json!({"q_lora_rank": 32}))).unwrap();
        assert_eq!(set.q_lora_rank, Some(32));
    }

    #[test]
    fn softmax_scale_takes_yarn_mscale_all_dim_squared() {
        let plain = attention_spec(&config(json!({}))).unwrap().scale;
        assert_eq!(plain, (192f64).powf(-0.5) as f32);
        // DeepSeek-V3's rope_scaling: s = 0.1 * ln(40) + 1.
        let yarn = json!({"rope_scaling": {"type": "yarn", "factor": 40.0, "mscale": 1.0,
                          "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}});
        let scaled = attention_spec(&config(yarn)).unwrap().scale;
        let s = 0.1 * 40f64.ln() + 1.0;
        assert_eq!(scaled, ((192f64).powf(-0.5) * s * s) as f32);
        assert!((scaled / plain - 1.8739).abs() < 1e-3, "{}", scaled / plain);
        let no_all_dim = json!({"rope_scaling": {"type": "yarn", "factor": 40.0}});
        assert_eq!(attention_spec(&config(no_all_dim)).unwrap().scale, plain);
    }
}
