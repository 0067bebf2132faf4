//! The Llama family: llama and mistral, qwen2 (QKV bias) and qwen3 (per-head q/k RMSNorm).
//! Pre-norm decoder blocks with grouped-query attention, RoPE and a SwiGLU MLP; the same
//! op sequence as mlx-lm's `llama.py` / `qwen2.py` / `qwen3.py`. llama/mistral layers that
//! `layer_types` marks `"sliding_attention"` use a rotating cache of `sliding_window`
//! positions, as mlx-lm's llama does (its qwen2/qwen3 ignore sliding windows, so do we).
//!
//! The decoder skeleton (blocks, embeddings, head) is shared with the mixtures of experts,
//! whose blocks carry a [`FeedForward::Sparse`] instead of the dense MLP.

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::{nn, Array};

use super::cache::{AttnMask, KvCache};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::layers::{Embedding, Linear, RmsNorm, Rope};
use super::moe::SparseMoe;
use super::weights::Weights;
use super::LanguageModel;

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

/// What one layer's attention looks like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnSpec {
    pub hidden: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub head_dim: i32,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub qk_norm: bool,
    pub eps: f32,
}

/// Grouped-query attention with RoPE (and optional per-head q/k RMSNorm).
pub(crate) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    rope: Rope,
    n_heads: i32,
    n_kv_heads: i32,
    scale: f32,
}

impl Attention {
    /// Loads `<prefix>.{q,k,v,o}_proj` (and `<prefix>.{q,k}_norm`).
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        a: &AttnSpec,
        rope: Rope,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let lin = |ws: &mut Weights, name: &str, input: i32, output: i32, bias: bool| {
            Linear::load(ws, &format!("{prefix}.{name}"), input, output, bias, quant)
        };
        let (q_norm, k_norm) = if a.qk_norm {
            (
                Some(RmsNorm::load(
                    ws,
                    &format!("{prefix}.q_norm"),
                    a.head_dim,
                    a.eps,
                )?),
                Some(RmsNorm::load(
                    ws,
                    &format!("{prefix}.k_norm"),
                    a.head_dim,
                    a.eps,
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Attention {
            q_proj: lin(ws, "q_proj", a.hidden, a.heads * a.head_dim, a.qkv_bias)?,
            k_proj: lin(ws, "k_proj", a.hidden, a.kv_heads * a.head_dim, a.qkv_bias)?,
            v_proj: lin(ws, "v_proj", a.hidden, a.kv_heads * a.head_dim, a.qkv_bias)?,
            o_proj: lin(ws, "o_proj", a.heads * a.head_dim, a.hidden, a.o_bias)?,
            q_norm,
            k_norm,
            rope,
            n_heads: a.heads,
            n_kv_heads: a.kv_heads,
            scale: (a.head_dim as f32).powf(-0.5),
        })
    }

    fn forward(&self, x: &Array, cache: &mut KvCache, mask: &AttnMask) -> Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let heads = |a: Array, n: i32, norm: &Option<RmsNorm>| -> Result<Array> {
            let a = a.reshape(&[b, l, n, -1])?;
            let a = match norm {
                Some(norm) => norm.forward(&a)?,
                None => a,
            };
            Ok(a.transpose_axes(&[0, 2, 1, 3])?)
        };
        let q = heads(self.q_proj.forward(x)?, self.n_heads, &self.q_norm)?;
        let k = heads(self.k_proj.forward(x)?, self.n_kv_heads, &self.k_norm)?;
        let v = heads(self.v_proj.forward(x)?, self.n_kv_heads, &None)?;
        let offset = cache.offset();
        let q = self.rope.forward(&q, offset)?;
        let k = self.rope.forward(&k, offset)?;
        let (k, v) = cache.update_and_fetch(&k, &v)?;
        let mask = match mask {
            AttnMask::None => None,
            AttnMask::Causal => Some(ScaledDotProductAttentionMask::Causal),
            AttnMask::Array(m) => Some(ScaledDotProductAttentionMask::Array(m)),
        };
        let out = fast::scaled_dot_product_attention(&q, &k, &v, self.scale, mask, None)?;
        let out = out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?;
        self.o_proj.forward(&out)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
            .into_iter()
            .flat_map(Linear::arrays)
            .collect();
        v.extend(
            self.q_norm
                .iter()
                .chain(self.k_norm.iter())
                .map(|n| &n.weight),
        );
        v
    }
}

/// The SwiGLU MLP.
pub(crate) struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `<prefix>.{gate,up,down}_proj`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        dims: i32,
        hidden: i32,
        bias: bool,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let lin = |ws: &mut Weights, name: &str, input: i32, output: i32| {
            Linear::load(ws, &format!("{prefix}.{name}"), input, output, bias, quant)
        };
        Ok(Mlp {
            gate_proj: lin(ws, "gate_proj", dims, hidden)?,
            up_proj: lin(ws, "up_proj", dims, hidden)?,
            down_proj: lin(ws, "down_proj", hidden, dims)?,
        })
    }

    fn forward(&self, x: &Array) -> Result<Array> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&nn::silu(&gate)?.multiply(&up)?)
    }
}

/// A block's feed-forward: dense, or a sparse mixture of experts.
pub(crate) enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    fn forward(&self, x: &Array) -> Result<Array> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Sparse(m) => m.forward(x),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            FeedForward::Dense(m) => [&m.gate_proj, &m.up_proj, &m.down_proj]
                .into_iter()
                .flat_map(Linear::arrays)
                .collect(),
            FeedForward::Sparse(m) => m.arrays(),
        }
    }
}

/// A pre-norm decoder block.
pub(crate) struct Block {
    attn: Attention,
    ffn: FeedForward,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
    /// Sliding-window size: this layer keeps a rotating cache of that many positions.
    window: Option<i32>,
}

impl Block {
    /// Loads the block's norms (`<prefix>.{input,post_attention}_layernorm`) around `attn`
    /// and `ffn`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        attn: Attention,
        ffn: FeedForward,
        hidden: i32,
        eps: f32,
        window: Option<i32>,
    ) -> Result<Self> {
        Ok(Block {
            attn,
            ffn,
            input_norm: RmsNorm::load(ws, &format!("{prefix}.input_layernorm"), hidden, eps)?,
            post_norm: RmsNorm::load(
                ws,
                &format!("{prefix}.post_attention_layernorm"),
                hidden,
                eps,
            )?,
            window,
        })
    }
}

/// A loaded decoder-only model: the Llama family, and the mixtures of experts built on
/// the same skeleton (see `qwen3_moe.rs`, `mixtral.rs`).
pub struct Llama {
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `None` when the embeddings are tied.
    lm_head: Option<Linear>,
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
fn sliding_windows(cfg: &ModelConfig) -> Result<Vec<Option<i32>>> {
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
    pub fn load(cfg: &ModelConfig, ws: &mut Weights) -> Result<Self> {
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
            qk_norm: flags.qk_norm,
            eps: cfg.rms_norm_eps,
        };
        // Only mlx-lm's llama (and mistral, which it maps to llama) honours sliding windows.
        let windows = match cfg.model_type.as_str() {
            "llama" | "mistral" => sliding_windows(cfg)?,
            _ => vec![None; cfg.num_hidden_layers as usize],
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for (i, window) in windows.into_iter().enumerate() {
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
        )
    }

    /// The model around `layers`: loads the embeddings, final norm and (untied) head.
    pub(crate) fn assemble(
        cfg: &ModelConfig,
        ws: &mut Weights,
        quant: &QuantConfig,
        layers: Vec<Block>,
        tied: bool,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let embed = Embedding::load(ws, "model.embed_tokens", cfg.vocab_size, h, quant)?;
        let norm = RmsNorm::load(ws, "model.norm", h, eps)?;
        let lm_head = if tied {
            None
        } else {
            Some(Linear::load(
                ws,
                "lm_head",
                h,
                cfg.vocab_size,
                false,
                quant,
            )?)
        };
        Ok(Llama {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
        })
    }
}

impl LanguageModel for Llama {
    fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        if caches.len() != self.layers.len() {
            return Err(ModelError::Request(format!(
                "{} caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        let l = tokens.shape().last().copied().unwrap_or(1);
        let mut h = self.embed.forward(tokens)?;
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            let mask = cache.make_mask(l)?;
            let r = layer
                .attn
                .forward(&layer.input_norm.forward(&h)?, cache, &mask)?;
            let h1 = h.add(&r)?;
            let r = layer.ffn.forward(&layer.post_norm.forward(&h1)?)?;
            h = h1.add(&r)?;
        }
        let h = self.norm.forward(&h)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed.as_linear(&h),
        }
    }

    fn make_caches(&self) -> Vec<KvCache> {
        self.layers
            .iter()
            .map(|l| match l.window {
                Some(w) => KvCache::rotating(w, 0),
                None => KvCache::new(),
            })
            .collect()
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut v = self.embed.table.arrays();
        for l in &self.layers {
            v.extend(l.attn.arrays());
            v.extend(l.ffn.arrays());
            v.push(&l.input_norm.weight);
            v.push(&l.post_norm.weight);
        }
        v.push(&self.norm.weight);
        if let Some(head) = &self.lm_head {
            v.extend(head.arrays());
        }
        v
    }
}
