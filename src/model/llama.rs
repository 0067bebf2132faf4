//! The Llama family: llama and mistral, qwen2 (QKV bias) and qwen3 (per-head q/k RMSNorm).
//! Pre-norm decoder blocks with grouped-query attention, RoPE and a SwiGLU MLP; the same
//! op sequence as mlx-lm's `llama.py` / `qwen2.py` / `qwen3.py`.

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::{nn, Array};

use super::cache::KvCache;
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::layers::{Embedding, Linear, RmsNorm, Rope};
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
            "llama" | "mistral" => ArchFlags { qkv_bias: attn_bias, o_bias: attn_bias, qk_norm: false, config_head_dim: true, default_rope_theta: Some(10000.0) },
            "qwen2" => ArchFlags { qkv_bias: true, o_bias: false, qk_norm: false, config_head_dim: false, default_rope_theta: Some(1_000_000.0) },
            "qwen3" => ArchFlags { qkv_bias: false, o_bias: false, qk_norm: true, config_head_dim: true, default_rope_theta: None },
            other => {
                return Err(ModelError::UnsupportedModelType { found: other.to_string(), supported: super::SUPPORTED_MODEL_TYPES.to_vec() })
            }
        })
    }
}

struct Attention {
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
    fn forward(&self, x: &Array, cache: &mut KvCache) -> Result<Array> {
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
        let mask = if l > 1 { Some(ScaledDotProductAttentionMask::Causal) } else { None };
        let out = fast::scaled_dot_product_attention(&q, &k, &v, self.scale, mask, None)?;
        let out = out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?;
        self.o_proj.forward(&out)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Array) -> Result<Array> {
        let gate = self.gate_proj.forward(x)?;
        let up = self.up_proj.forward(x)?;
        self.down_proj.forward(&nn::silu(&gate)?.multiply(&up)?)
    }
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: RmsNorm,
    post_norm: RmsNorm,
}

/// A loaded Llama-family model.
pub struct Llama {
    cfg: ModelConfig,
    embed: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `None` when the embeddings are tied.
    lm_head: Option<Linear>,
}

impl Llama {
    pub fn load(cfg: &ModelConfig, ws: &mut Weights) -> Result<Self> {
        cfg.check()?;
        let flags = ArchFlags::for_config(cfg)?;
        let quant: QuantConfig = cfg.quant_config()?;
        let (h, heads, kv) = (cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads());
        let hd = if flags.config_head_dim { cfg.head_dim() } else { h / heads };
        let theta = cfg
            .rope_theta
            .or_else(|| cfg.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|v| v.as_f64()).map(|v| v as f32))
            .or(flags.default_rope_theta)
            .ok_or_else(|| ModelError::Config("rope_theta is missing".into()))?;
        let eps = cfg.rms_norm_eps;
        let embed = Embedding::load(ws, "model.embed_tokens", cfg.vocab_size, h, &quant)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers as usize);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |ws: &mut Weights, name: &str, input: i32, output: i32, bias: bool| {
                Linear::load(ws, &format!("{p}.{name}"), input, output, bias, &quant)
            };
            let (q_norm, k_norm) = if flags.qk_norm {
                (
                    Some(RmsNorm::load(ws, &format!("{p}.self_attn.q_norm"), hd, eps)?),
                    Some(RmsNorm::load(ws, &format!("{p}.self_attn.k_norm"), hd, eps)?),
                )
            } else {
                (None, None)
            };
            let attn = Attention {
                q_proj: lin(ws, "self_attn.q_proj", h, heads * hd, flags.qkv_bias)?,
                k_proj: lin(ws, "self_attn.k_proj", h, kv * hd, flags.qkv_bias)?,
                v_proj: lin(ws, "self_attn.v_proj", h, kv * hd, flags.qkv_bias)?,
                o_proj: lin(ws, "self_attn.o_proj", heads * hd, h, flags.o_bias)?,
                q_norm,
                k_norm,
                rope: Rope::new(hd, theta, cfg.rope_traditional, cfg.rope_scaling())?,
                n_heads: heads,
                n_kv_heads: kv,
                scale: (hd as f32).powf(-0.5),
            };
            let mlp = Mlp {
                gate_proj: lin(ws, "mlp.gate_proj", h, cfg.intermediate_size, cfg.mlp_bias)?,
                up_proj: lin(ws, "mlp.up_proj", h, cfg.intermediate_size, cfg.mlp_bias)?,
                down_proj: lin(ws, "mlp.down_proj", cfg.intermediate_size, h, cfg.mlp_bias)?,
            };
            layers.push(Block {
                attn,
                mlp,
                input_norm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), h, eps)?,
                post_norm: RmsNorm::load(ws, &format!("{p}.post_attention_layernorm"), h, eps)?,
            });
        }
        let norm = RmsNorm::load(ws, "model.norm", h, eps)?;
        let tied = cfg.tie_word_embeddings.unwrap_or(true);
        let lm_head = if tied { None } else { Some(Linear::load(ws, "lm_head", h, cfg.vocab_size, false, &quant)?) };
        Ok(Llama { cfg: cfg.clone(), embed, layers, norm, lm_head })
    }
}

impl LanguageModel for Llama {
    fn forward(&self, tokens: &Array, caches: &mut [KvCache]) -> Result<Array> {
        if caches.len() != self.layers.len() {
            return Err(ModelError::Request(format!("{} caches for {} layers", caches.len(), self.layers.len())));
        }
        let mut h = self.embed.forward(tokens)?;
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            let r = layer.attn.forward(&layer.input_norm.forward(&h)?, cache)?;
            let h1 = h.add(&r)?;
            let r = layer.mlp.forward(&layer.post_norm.forward(&h1)?)?;
            h = h1.add(&r)?;
        }
        let h = self.norm.forward(&h)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed.as_linear(&h),
        }
    }

    fn make_caches(&self) -> Vec<KvCache> {
        (0..self.layers.len()).map(|_| KvCache::new()).collect()
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
            for lin in [&l.attn.q_proj, &l.attn.k_proj, &l.attn.v_proj, &l.attn.o_proj, &l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj] {
                v.extend(lin.arrays());
            }
            v.extend(l.attn.q_norm.iter().chain(l.attn.k_norm.iter()).map(|n| &n.weight));
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
