//! Nemotron-H (NVIDIA's hybrid Mamba-2 / attention / MLP / MoE models): one mixer per layer,
//! chosen by the layer pattern (`hybrid_override_pattern`, or `layers_block_type` /
//! `layer_types` spelled out): `M` a Mamba-2 mixer ([`Mamba2`]), `*` grouped-query attention
//! without any position encoding, `-` an ungated ReLU² MLP, `E` a mixture of ReLU² experts
//! ([`NemotronMoe`]). Each layer is `x + mixer(rms_norm(x))`. The same op sequence as
//! mlx-lm's `models/nemotron_h.py`.
//!
//! The parts are in `mamba2.rs` (the mixer), `ssd.rs` (its scan) and `moe.rs` (the MLP
//! and the experts).
//!
//! Weights are read under the `model.*` names [`super::canonical_names`] gives Nemotron's
//! `backbone.*` ones; the multi-token-prediction head a checkpoint may carry (`mtp.*`) is
//! dropped, as mlx-lm drops it. The output head is never tied (mlx-lm always reads
//! `lm_head`).

mod mamba2;
mod moe;
mod ssd;

use mlx_rs::Array;
use serde::Deserialize;
use serde_json::Value;

use self::mamba2::{Mamba2, MambaSpec};
use self::moe::{NemotronMoe, NemotronMoeSpec, Relu2Mlp};
use super::{attention_inputs, Hybrid, HybridLayer};
use crate::model::attention::{Attention, AttnSpec, QkNorm};
use crate::model::cache::{KvCache, LayerCache, RowsView, StateCache};
use crate::model::config::{ModelConfig, QuantConfig};
use crate::model::error::{ModelError, Result};
use crate::model::layers::RmsNorm;
use crate::model::rope::Rope;
use crate::model::shard::Stage;
use crate::model::weights::Weights;

/// The Nemotron-H keys [`ModelConfig`] leaves in `extra`.
#[derive(Debug, Deserialize)]
struct Args {
    mamba_num_heads: i32,
    mamba_head_dim: i32,
    #[serde(default)]
    mamba_proj_bias: bool,
    ssm_state_size: i32,
    conv_kernel: i32,
    n_groups: i32,
    #[serde(default = "yes")]
    use_conv_bias: bool,
    /// A string (`"M-M*E"`) or a list of one-character strings.
    #[serde(default)]
    hybrid_override_pattern: Option<Value>,
    #[serde(default)]
    layers_block_type: Option<Vec<String>>,
    /// `[min, max]`: see [`bound`].
    #[serde(default)]
    time_step_limit: Option<Value>,
    #[serde(default)]
    moe_latent_size: Option<i32>,
    #[serde(default)]
    moe_shared_expert_intermediate_size: Option<i32>,
    #[serde(default, alias = "dtype")]
    torch_dtype: Option<String>,
}

fn yes() -> bool {
    true
}

/// What one layer mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mamba,
    Attention,
    Mlp,
    Moe,
}

impl Args {
    fn parse(cfg: &ModelConfig) -> Result<Self> {
        serde_json::from_value(Value::Object(cfg.extra.clone()))
            .map_err(|e| ModelError::Config(format!("nemotron_h: {e}")))
    }

    /// The layer pattern, one kind per layer (mlx-lm's `__post_init__` normalization).
    fn pattern(&self, cfg: &ModelConfig) -> Result<Vec<Kind>> {
        let chars: Vec<String> = match &self.hybrid_override_pattern {
            Some(Value::String(s)) => s.chars().map(String::from).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(String::from))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    ModelError::Config(
                        "nemotron_h: hybrid_override_pattern holds non-strings".into(),
                    )
                })?,
            Some(Value::Null) | None => {
                let names = self
                    .layers_block_type
                    .as_ref()
                    .or(cfg.layer_types.as_ref())
                    .ok_or_else(|| {
                        ModelError::Config(
                            "nemotron_h: no hybrid_override_pattern or layers_block_type".into(),
                        )
                    })?;
                names
                    .iter()
                    .map(|n| block_char(n).map(String::from))
                    .collect::<Result<_>>()?
            }
            Some(other) => {
                return Err(ModelError::Config(format!(
                    "nemotron_h: hybrid_override_pattern {other} is neither a string nor a list"
                )))
            }
        };
        chars
            .iter()
            .map(|c| match c.as_str() {
                "M" => Ok(Kind::Mamba),
                "*" => Ok(Kind::Attention),
                "-" => Ok(Kind::Mlp),
                "E" => Ok(Kind::Moe),
                other => Err(ModelError::Config(format!(
                    "nemotron_h: unknown layer kind {other:?} (M, *, -, E)"
                ))),
            })
            .collect()
    }

    fn mamba(&self, cfg: &ModelConfig) -> Result<MambaSpec> {
        let limit = self.time_step_limit.as_ref().filter(|v| !v.is_null());
        let at = |i: usize, default: f32| bound(limit.and_then(|l| l.get(i)), default);
        Ok(MambaSpec {
            hidden: cfg.hidden_size,
            heads: self.mamba_num_heads,
            head_dim: self.mamba_head_dim,
            state: self.ssm_state_size,
            groups: self.n_groups,
            conv_kernel: self.conv_kernel,
            proj_bias: self.mamba_proj_bias,
            conv_bias: self.use_conv_bias,
            eps: cfg.rms_norm_eps,
            time_step_limit: (at(0, 0.0)?, at(1, f32::INFINITY)?),
        })
    }

    fn moe(&self, cfg: &ModelConfig) -> Result<NemotronMoeSpec> {
        let missing = |k: &str| ModelError::Config(format!("nemotron_h: {k} is missing"));
        Ok(NemotronMoeSpec {
            hidden: cfg.hidden_size,
            expert_hidden: cfg
                .moe_intermediate_size
                .ok_or_else(|| missing("moe_intermediate_size"))?,
            experts: cfg
                .n_routed_experts
                .ok_or_else(|| missing("n_routed_experts"))?,
            top_k: cfg
                .num_experts_per_tok
                .ok_or_else(|| missing("num_experts_per_tok"))?,
            n_group: cfg.n_group.unwrap_or(1),
            topk_group: cfg.topk_group.unwrap_or(1),
            norm_topk_prob: cfg.norm_topk_prob.unwrap_or(false),
            scaling: cfg.routed_scaling_factor.unwrap_or(1.0),
            latent: self.moe_latent_size,
            shared_hidden: match cfg.n_shared_experts {
                Some(_) => Some(
                    self.moe_shared_expert_intermediate_size
                        .ok_or_else(|| missing("moe_shared_expert_intermediate_size"))?,
                ),
                None => None,
            },
            bias: cfg.mlp_bias,
        })
    }

    /// Bytes per value of the model's activations (the conv state's dtype).
    fn dtype_bytes(&self) -> usize {
        match self.torch_dtype.as_deref() {
            Some("float32") => 4,
            _ => 2,
        }
    }
}

/// One bound of `time_step_limit`: a number; infinity as Python's `json` cannot write it in
/// strict JSON (a string `"Infinity"`, or transformers 5's `{"__float__": "Infinity"}`); a
/// missing or null bound is `default` (unbounded).
fn bound(v: Option<&Value>, default: f32) -> Result<f32> {
    let text = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => return Ok(n.as_f64().unwrap_or(f64::INFINITY) as f32),
        Some(Value::String(s)) => Some(s.as_str()),
        Some(Value::Object(o)) => o.get("__float__").and_then(Value::as_str),
        Some(_) => None,
    };
    match text.map(str::to_ascii_lowercase).as_deref() {
        Some("infinity" | "inf") => Ok(f32::INFINITY),
        Some("-infinity" | "-inf") => Ok(f32::NEG_INFINITY),
        _ => Err(ModelError::Config(format!(
            "nemotron_h: time_step_limit bound {v:?} is not a number"
        ))),
    }
}

/// `layers_block_type` names as pattern characters (mlx-lm's `_block_type_to_char`).
fn block_char(name: &str) -> Result<&'static str> {
    match name {
        "full_attention" | "attention" => Ok("*"),
        "linear_attention" | "mamba" | "conv" => Ok("M"),
        "moe" => Ok("E"),
        "mlp" => Ok("-"),
        other => Err(ModelError::Config(format!(
            "nemotron_h: unsupported layers_block_type {other:?}"
        ))),
    }
}

enum Mixer {
    Mamba(Mamba2),
    Attention(Attention),
    Mlp(Relu2Mlp),
    Moe(NemotronMoe),
}

/// `x + mixer(norm(x))` (mlx-lm's `NemotronHBlock`).
struct Block {
    norm: RmsNorm,
    mixer: Mixer,
}

impl HybridLayer for Block {
    fn forward(&self, h: &Array, cache: &mut LayerCache, rows: Option<&RowsView>) -> Result<Array> {
        let x = self.norm.forward(h)?;
        let y = match &self.mixer {
            Mixer::Mamba(m) => m.forward(&x, cache.recurrent()?)?,
            Mixer::Attention(a) => {
                let kv = cache.kv()?;
                let (mask, positions) = attention_inputs(kv, x.dim(1), rows)?;
                a.forward(&x, kv, &mask, &positions)?
            }
            Mixer::Mlp(m) => m.forward(&x)?,
            Mixer::Moe(m) => m.forward(&x)?,
        };
        Ok(h.add(&y)?)
    }

    fn make_cache(&self) -> LayerCache {
        match &self.mixer {
            Mixer::Mamba(_) => LayerCache::State(StateCache::new(2)),
            Mixer::Attention(_) => LayerCache::Kv(KvCache::new()),
            Mixer::Mlp(_) | Mixer::Moe(_) => LayerCache::Stateless,
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.norm.weight];
        v.extend(match &self.mixer {
            Mixer::Mamba(m) => m.arrays(),
            Mixer::Attention(a) => a.arrays(),
            Mixer::Mlp(m) => m.arrays(),
            Mixer::Moe(m) => m.arrays(),
        });
        v
    }
}

/// One snapshot of every Mamba layer's state in positions of the whole model's keys and
/// values, rounded up (at least 1). From the config alone, so every pipeline rank agrees.
fn checkpoint_tokens(cfg: &ModelConfig, args: &Args, mamba: &MambaSpec, pattern: &[Kind]) -> usize {
    let count = |k: Kind| pattern.iter().filter(|&&p| p == k).count();
    let bytes = args.dtype_bytes();
    let snapshot = count(Kind::Mamba) * mamba.state_bytes(bytes);
    let per_token =
        count(Kind::Attention) * 2 * (cfg.kv_heads() * cfg.head_dim()).max(0) as usize * bytes;
    // A model without attention has no key/value positions to count in: a snapshot then
    // costs its bytes (the budget's unit is at least a byte).
    snapshot.div_ceil(per_token.max(1)).max(1)
}

/// Loads a Nemotron-H model's stage; returns it and whether its embeddings are tied
/// (never).
pub(crate) fn load(cfg: &ModelConfig, ws: &mut Weights, stage: &Stage) -> Result<(Hybrid, bool)> {
    cfg.check()?;
    let quant: QuantConfig = cfg.quant_config()?;
    let args = Args::parse(cfg)?;
    let pattern = args.pattern(cfg)?;
    if pattern.len() != cfg.num_hidden_layers as usize {
        return Err(ModelError::Config(format!(
            "nemotron_h: the layer pattern has {} layers, num_hidden_layers is {}",
            pattern.len(),
            cfg.num_hidden_layers
        )));
    }
    let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
    let mamba = args.mamba(cfg)?;
    let bias = cfg.attention_bias.unwrap_or(false);
    let attn = AttnSpec {
        hidden: h,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.kv_heads(),
        head_dim: cfg.head_dim(),
        qkv_bias: bias,
        o_bias: bias,
        qk_norm: QkNorm::None,
        eps,
        sinks: false,
    };
    ws.discard_prefix("mtp.");
    let mut layers: Vec<Box<dyn HybridLayer>> = Vec::with_capacity(stage.layers.len());
    for i in stage.layers.clone() {
        let p = format!("model.layers.{i}");
        let m = format!("{p}.mixer");
        let mixer = match pattern[i] {
            Kind::Mamba => Mixer::Mamba(Mamba2::load(ws, &m, &mamba, &quant)?),
            Kind::Attention => {
                // Layers split by pipeline only (never by heads): q/k/v fuse at load.
                let mut a = Attention::load(ws, &m, &attn, Rope::none(), &quant)?;
                a.fuse_projections()?;
                Mixer::Attention(a)
            }
            Kind::Mlp => Mixer::Mlp(Relu2Mlp::load(
                ws,
                &m,
                (h, cfg.intermediate_size),
                cfg.mlp_bias,
                &quant,
            )?),
            Kind::Moe => Mixer::Moe(NemotronMoe::load(ws, &m, &args.moe(cfg)?, &quant)?),
        };
        let norm = RmsNorm::load(ws, &format!("{p}.norm"), h, eps)?;
        layers.push(Box::new(Block { norm, mixer }));
    }
    let tokens = checkpoint_tokens(cfg, &args, &mamba, &pattern);
    let model = Hybrid::assemble(cfg, ws, &quant, layers, false, stage, tokens)?;
    Ok((model, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> ModelConfig {
        let mut v = json!({
            "model_type": "nemotron_h", "hidden_size": 128, "intermediate_size": 128,
            "num_attention_heads": 4, "num_key_value_heads": 2, "layer_norm_epsilon": 1e-5,
            "vocab_size": 320, "mamba_num_heads": 8, "mamba_head_dim": 16,
            "ssm_state_size": 16, "conv_kernel": 4, "n_groups": 2,
        });
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn layer_patterns_read_in_every_spelling() {
        use Kind::*;
        let want = vec![Mamba, Moe, Attention, Mlp];
        for extra in [
            json!({"hybrid_override_pattern": "ME*-"}),
            json!({"hybrid_override_pattern": ["M", "E", "*", "-"]}),
            json!({"layers_block_type": ["mamba", "moe", "attention", "mlp"]}),
            json!({"layer_types": ["linear_attention", "moe", "full_attention", "mlp"]}),
        ] {
            let cfg = config(extra.clone());
            assert_eq!(
                Args::parse(&cfg).unwrap().pattern(&cfg).unwrap(),
                want,
                "{extra}"
            );
        }
        let cfg = config(json!({"hybrid_override_pattern": "M+"}));
        assert!(Args::parse(&cfg).unwrap().pattern(&cfg).is_err());
    }

    #[test]
    fn time_step_limits_accept_python_infinity_spellings() {
        for (limit, want) in [
            (json!(null), (0.0, f32::INFINITY)),
            (json!([0.001, 100.0]), (0.001, 100.0)),
            (json!([0.0, "Infinity"]), (0.0, f32::INFINITY)),
            (
                json!([0.0, {"__float__": "Infinity"}]),
                (0.0, f32::INFINITY),
            ),
        ] {
            let cfg = config(json!({"time_step_limit": limit}));
            let spec = Args::parse(&cfg).unwrap().mamba(&cfg).unwrap();
            assert_eq!(spec.time_step_limit, want, "{limit}");
        }
        let cfg = config(json!({"time_step_limit": [0.0, "big"]}));
        assert!(Args::parse(&cfg).unwrap().mamba(&cfg).is_err());
    }

    /// Two Mamba layers' states (conv 3 x 192 bf16 + SSM 8 x 16 x 16 float32: 9,344 bytes
    /// each) against one attention layer's 2 x 2 x 32 bf16 values per position (256 bytes).
    #[test]
    fn checkpoint_tokens_count_state_in_kv_positions() {
        let cfg = config(json!({"hybrid_override_pattern": "M*M-"}));
        let args = Args::parse(&cfg).unwrap();
        let (mamba, pattern) = (args.mamba(&cfg).unwrap(), args.pattern(&cfg).unwrap());
        assert_eq!(checkpoint_tokens(&cfg, &args, &mamba, &pattern), 73);
    }
}
