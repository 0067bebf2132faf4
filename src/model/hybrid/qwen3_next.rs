//! Qwen3-Next (and Qwen3-Coder-Next), as mlx-lm's `models/qwen3_next.py`: every
//! `full_attention_interval`-th layer is gated full attention, the others Gated DeltaNet
//! linear attention ([`GatedDeltaNet`]); each layer's feed-forward is a sparse mixture of
//! experts with a gated shared expert, or a dense SwiGLU MLP on `mlp_only_layers` (and where
//! `decoder_sparse_step` skips it).
//!
//! The full-attention layers differ from qwen3's: `q_proj` gives each head its queries and
//! then as many gate values, the attention output is multiplied by `sigmoid(gate)` before
//! `o_proj`, and RoPE turns only `partial_rotary_factor` of each head.
//!
//! Folders saved by mlx-lm are read as they are (stacked experts under `switch_mlp`, norms
//! as stored). Hugging Face checkpoints (one tensor per expert, norm weights stored as
//! offsets from one) are refused: mlx-lm's `sanitize` rewrites them, so convert them with
//! `mlx_lm.convert` first.

use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{ops, Array, Dtype};
use serde::Deserialize;

use super::gated_delta::{DeltaSpec, GatedDeltaNet};
use super::{attention_inputs, run_compiled, Compiled, Hybrid, HybridLayer};
use crate::model::attention::{attention, heads_to_features};
use crate::model::block::Mlp;
use crate::model::cache::{AttnMask, KvCache, LayerCache, Positions, RowsView, StateCache};
use crate::model::config::{ModelConfig, QuantConfig};
use crate::model::error::{ModelError, Result};
use crate::model::layers::{Linear, RmsNorm};
use crate::model::llama::rope_theta;
use crate::model::moe::{MoeLayout, MoeSpec, Routing, SparseMoe};
use crate::model::projections::Projections;
use crate::model::rope::Rope;
use crate::model::shard::Stage;
use crate::model::weights::Weights;

/// The Qwen3-Next keys [`ModelConfig`] leaves in `extra`.
#[derive(Debug, Deserialize)]
struct NextArgs {
    linear_num_value_heads: i32,
    linear_num_key_heads: i32,
    linear_key_head_dim: i32,
    linear_value_head_dim: i32,
    linear_conv_kernel_dim: i32,
    shared_expert_intermediate_size: i32,
    #[serde(default = "default_interval")]
    full_attention_interval: i32,
}

fn default_interval() -> i32 {
    4
}

/// Gated full attention (mlx-lm's `Qwen3NextAttention`).
struct GatedAttention {
    /// q (with its gate), k and v: one matmul where they are alike.
    qkv: Projections,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    rope: Rope,
    heads: i32,
    kv_heads: i32,
    scale: f32,
}

impl GatedAttention {
    fn load(
        ws: &mut Weights,
        prefix: &str,
        cfg: &ModelConfig,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let (h, hd, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.rms_norm_eps);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
        let bias = cfg.attention_bias.unwrap_or(false);
        // int(head_dim * partial_rotary_factor), as mlx-lm.
        let rotary = (hd as f32 * cfg.partial_rotary_factor.unwrap_or(1.0)) as i32;
        if rotary <= 0 || rotary > hd || rotary % 2 != 0 {
            return Err(ModelError::Config(format!(
                "qwen3_next: partial_rotary_factor gives {rotary} rotated values of head_dim {hd}"
            )));
        }
        let lin = |ws: &mut Weights, n: &str, i: i32, o: i32| {
            Linear::load(ws, &format!("{prefix}.{n}"), i, o, bias, quant)
        };
        Ok(GatedAttention {
            qkv: Projections::new(vec![
                lin(ws, "q_proj", h, 2 * heads * hd)?,
                lin(ws, "k_proj", h, kv_heads * hd)?,
                lin(ws, "v_proj", h, kv_heads * hd)?,
            ])?,
            o_proj: lin(ws, "o_proj", heads * hd, h)?,
            q_norm: RmsNorm::load(ws, &format!("{prefix}.q_norm"), hd, eps)?,
            k_norm: RmsNorm::load(ws, &format!("{prefix}.k_norm"), hd, eps)?,
            rope: Rope::new(rotary, rope_theta(cfg, None)?, false, cfg.rope_scaling())?,
            heads,
            kv_heads,
            scale: (hd as f32).powf(-0.5),
        })
    }

    fn forward(&self, x: &Array, cache: &mut KvCache, rows: Option<&RowsView>) -> Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let (mask, positions): (AttnMask, Positions) = attention_inputs(cache, l, rows)?;
        let [q, keys, values] = self.qkv.forward_n::<3>(x)?;
        let mut qg = q
            .reshape(&[b, l, self.heads, -1])?
            .split_equal(2, -1)?
            .into_iter();
        let (Some(queries), Some(gate)) = (qg.next(), qg.next()) else {
            return Err(ModelError::Mlx("q_proj split".into()));
        };
        let gate = gate.reshape(&[b, l, -1])?;
        let queries = self
            .q_norm
            .forward(&queries)?
            .transpose_axes(&[0, 2, 1, 3])?;
        let keys = self
            .k_norm
            .forward(&keys.reshape(&[b, l, self.kv_heads, -1])?)?
            .transpose_axes(&[0, 2, 1, 3])?;
        let values = values
            .reshape(&[b, l, self.kv_heads, -1])?
            .transpose_axes(&[0, 2, 1, 3])?;
        let queries = self.rope.forward(&queries, &positions)?;
        let keys = self.rope.forward(&keys, &positions)?;
        let (keys, values) = cache.update_and_fetch(&keys, &values)?;
        let out = attention(&queries, &keys, &values, self.scale, &mask, None)?;
        let out = heads_to_features(&out, b, l)?;
        self.o_proj.forward(&out.multiply(ops::sigmoid(&gate)?)?)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = self.qkv.arrays();
        v.extend(self.o_proj.arrays());
        v.extend([&self.q_norm.weight, &self.k_norm.weight]);
        v
    }
}

/// The sparse block (mlx-lm's `Qwen3NextSparseMoeBlock`): softmax top-k routed experts plus
/// `sigmoid(shared_expert_gate(x)) * shared_expert(x)`. The router and the shared expert's
/// gate read the same input: one matmul where they are alike (both 8-bit in mlx_lm.convert's
/// checkpoints), as are the shared expert's gate and up projections.
struct NextMoe {
    /// The experts; their router moved into `gates`.
    routed: SparseMoe,
    shared: Mlp,
    /// The router's logits and the shared expert's gate.
    gates: Projections,
}

impl NextMoe {
    fn new(mut routed: SparseMoe, mut shared: Mlp, shared_gate: Linear) -> Result<Self> {
        let router = routed
            .take_router()
            .ok_or_else(|| ModelError::Mlx("qwen3_next: the router is missing".into()))?;
        shared.fuse_projections()?;
        Ok(NextMoe {
            routed,
            shared,
            gates: Projections::new(vec![router, shared_gate])?,
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let [router, shared_gate] = self.gates.forward_n::<2>(x)?;
        let y = self.routed.forward_routed(x, &router)?;
        gated_add(&y, &shared_gate, &self.shared.forward(x)?)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = self.routed.arrays();
        v.extend(self.shared.arrays());
        v.extend(self.gates.arrays());
        v
    }
}

thread_local! {
    /// `y + sigmoid(gate) * shared`, one fused kernel (traced once per thread).
    static GATED_ADD: RefCell<Compiled> = RefCell::new(Box::new(compile(
        |a: &[Array]| -> std::result::Result<Vec<Array>, Exception> {
            Ok(vec![a[0].add(ops::sigmoid(&a[1])?.multiply(&a[2])?)?])
        },
        false,
    )));
}

fn gated_add(y: &Array, gate: &Array, shared: &Array) -> Result<Array> {
    let args = [y.clone(), gate.clone(), shared.clone()];
    run_compiled(&GATED_ADD, &args, "gated_add")
}

enum Mixer {
    Linear(GatedDeltaNet),
    Full(GatedAttention),
}

// One per layer, built at load: the MoE variant's size does not matter.
#[allow(clippy::large_enum_variant)]
enum FeedForward {
    Dense(Mlp),
    Sparse(NextMoe),
}

/// One decoder layer: pre-norm mixer and feed-forward, each with its residual.
struct NextLayer {
    mixer: Mixer,
    ffn: FeedForward,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
}

impl HybridLayer for NextLayer {
    fn forward(&self, h: &Array, cache: &mut LayerCache, rows: Option<&RowsView>) -> Result<Array> {
        let x = self.input_norm.forward(h)?;
        let r = match &self.mixer {
            Mixer::Linear(m) => m.forward(&x, cache.recurrent()?)?,
            Mixer::Full(a) => a.forward(&x, cache.kv()?, rows)?,
        };
        let h = h.add(&r)?;
        let x = self.post_norm.forward(&h)?;
        let r = match &self.ffn {
            FeedForward::Dense(m) => m.forward(&x)?,
            FeedForward::Sparse(m) => m.forward(&x)?,
        };
        Ok(h.add(&r)?)
    }

    fn make_cache(&self) -> LayerCache {
        match self.mixer {
            Mixer::Linear(_) => LayerCache::State(StateCache::new(2)),
            Mixer::Full(_) => LayerCache::Kv(KvCache::new()),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = match &self.mixer {
            Mixer::Linear(m) => m.arrays(),
            Mixer::Full(a) => a.arrays(),
        };
        match &self.ffn {
            FeedForward::Dense(m) => v.extend(m.arrays()),
            FeedForward::Sparse(m) => v.extend(m.arrays()),
        }
        v.extend([&self.input_norm.weight, &self.post_norm.weight]);
        v
    }
}

/// Whether layer `i` is linear attention (else full attention).
fn is_linear(i: i32, interval: i32) -> bool {
    (i + 1) % interval != 0
}

/// One snapshot of every linear layer's state over one position of every full-attention
/// layer's keys and values, rounded up (the prefix cache's price of a checkpoint). From the
/// config alone, so that every pipeline rank agrees.
fn checkpoint_tokens(
    cfg: &ModelConfig,
    args: &NextArgs,
    delta: &DeltaSpec,
    dtype_bytes: usize,
) -> usize {
    let n = cfg.num_hidden_layers;
    let linear = (0..n)
        .filter(|&i| is_linear(i, args.full_attention_interval))
        .count();
    let full = n as usize - linear;
    let state = linear * delta.state_bytes(dtype_bytes);
    let kv = full * 2 * (cfg.kv_heads() * cfg.head_dim()) as usize * dtype_bytes;
    match kv {
        0 => 1,
        kv => state.div_ceil(kv).max(1),
    }
}

/// Loads a qwen3_next model (the layers of `stage`); returns it and whether its embeddings
/// are tied.
pub(crate) fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Hybrid, bool)> {
    cfg.check()?;
    let args: NextArgs = serde_json::from_value(serde_json::Value::Object(cfg.extra.clone()))
        .map_err(|e| ModelError::Config(format!("qwen3_next: {e}")))?;
    if args.full_attention_interval <= 0 {
        return Err(ModelError::Config(format!(
            "qwen3_next: full_attention_interval must be positive, got {}",
            args.full_attention_interval
        )));
    }
    let n = cfg.num_hidden_layers;
    if (0..n).any(|i| ws.contains(&format!("model.layers.{i}.mlp.experts.0.up_proj.weight"))) {
        return Err(ModelError::Config(
            "qwen3_next: this is a Hugging Face checkpoint (one tensor per expert); convert it \
             with mlx_lm.convert first"
                .into(),
        ));
    }
    let quant = cfg.quant_config()?;
    let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    let delta = DeltaSpec {
        hidden: h,
        k_heads: args.linear_num_key_heads,
        v_heads: args.linear_num_value_heads,
        k_dim: args.linear_key_head_dim,
        v_dim: args.linear_value_head_dim,
        conv_kernel: args.linear_conv_kernel_dim,
        eps,
    };
    let experts = cfg.num_experts.unwrap_or(0);
    let step = cfg.decoder_sparse_step.unwrap_or(1);
    if step <= 0 {
        return Err(ModelError::Config(format!(
            "decoder_sparse_step must be positive, got {step}"
        )));
    }
    let moe = MoeSpec {
        dims: h,
        hidden: cfg.moe_intermediate_size.unwrap_or(0),
        experts,
        // Missing: 0, which SparseMoe::load refuses with the numbers.
        top_k: cfg.num_experts_per_tok.unwrap_or(0),
        routing: Routing::SoftmaxTopK {
            norm_topk_prob: cfg.norm_topk_prob.unwrap_or(false),
        },
        layout: MoeLayout::SWITCH_MLP,
    };
    let dense_only = cfg.mlp_only_layers.as_deref().unwrap_or(&[]);
    let mut layers: Vec<Box<dyn HybridLayer>> = Vec::with_capacity(stage.layers.len());
    for i in 0..n {
        if !stage.layers.contains(&(i as usize)) {
            continue;
        }
        let p = format!("model.layers.{i}");
        let mixer = match is_linear(i, args.full_attention_interval) {
            true => Mixer::Linear(GatedDeltaNet::load(
                ws,
                &format!("{p}.linear_attn"),
                &delta,
                &quant,
            )?),
            false => Mixer::Full(GatedAttention::load(
                ws,
                &format!("{p}.self_attn"),
                cfg,
                &quant,
            )?),
        };
        let mlp = format!("{p}.mlp");
        let ffn = if !dense_only.contains(&i) && experts > 0 && (i + 1) % step == 0 {
            let hidden = args.shared_expert_intermediate_size;
            FeedForward::Sparse(NextMoe::new(
                SparseMoe::load(ws, &mlp, &moe, &quant)?,
                Mlp::load(
                    ws,
                    &format!("{mlp}.shared_expert"),
                    h,
                    hidden,
                    false,
                    &quant,
                )?,
                Linear::load(
                    ws,
                    &format!("{mlp}.shared_expert_gate"),
                    h,
                    1,
                    false,
                    &quant,
                )?,
            )?)
        } else {
            let mut dense = Mlp::load(ws, &mlp, h, cfg.intermediate_size, false, &quant)?;
            dense.fuse_projections()?;
            FeedForward::Dense(dense)
        };
        layers.push(Box::new(NextLayer {
            mixer,
            ffn,
            input_norm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), h, eps)?,
            post_norm: RmsNorm::load(ws, &format!("{p}.post_attention_layernorm"), h, eps)?,
        }));
    }
    // The model's float dtype (what the conv state and the keys and values are kept in).
    let dtype_bytes = match ws.policy.dtype.or_else(|| ws.dtype_of("model.norm.weight")) {
        Some(Dtype::Float32) => 4,
        _ => 2,
    };
    let checkpoint = checkpoint_tokens(cfg, &args, &delta, dtype_bytes);
    let tied = cfg.tie_word_embeddings.unwrap_or(false);
    let model = Hybrid::assemble(cfg, ws, &quant, layers, tied, stage, checkpoint)?;
    Ok((model, tied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_costs_whole_positions() {
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
            "model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 48,
            "intermediate_size": 5120, "num_attention_heads": 16, "num_key_value_heads": 2,
            "head_dim": 256, "rms_norm_eps": 1e-6, "vocab_size": 151936,
        }))
        .unwrap();
        let args = NextArgs {
            linear_num_value_heads: 32,
            linear_num_key_heads: 16,
            linear_key_head_dim: 128,
            linear_value_head_dim: 128,
            linear_conv_kernel_dim: 4,
            shared_expert_intermediate_size: 512,
            full_attention_interval: 4,
        };
        let delta = DeltaSpec {
            hidden: 2048,
            k_heads: 16,
            v_heads: 32,
            k_dim: 128,
            v_dim: 128,
            conv_kernel: 4,
            eps: 1e-6,
        };
        // 36 linear layers of (3 * 8192 * 2 + 32 * 128 * 128 * 4) bytes over 12 full layers
        // of 2 * 2 * 256 * 2 bytes a position.
        let state: usize = 36 * (3 * 8192 * 2 + 32 * 128 * 128 * 4);
        let kv: usize = 12 * 2 * 2 * 256 * 2;
        assert_eq!(
            checkpoint_tokens(&cfg, &args, &delta, 2),
            state.div_ceil(kv)
        );
    }
}
