//! Multi-head latent attention (DeepSeek-V3, Kimi-K2), as mlx-lm's `deepseek_v3.py` and
//! `mla.py` compute it. Every head reads one shared, RMS-normed key/value latent
//! (`kv_lora_rank` wide) plus one shared rotated key part (`qk_rope_head_dim`); the cache holds
//! only those two: the latent as the keys `[B, 1, L, kv_lora_rank]` and the rotated key part
//! as the values `[B, 1, L, qk_rope_head_dim]`.
//!
//! Each head's query splits into an unrotated part, matched against the latent through the
//! per-head `embed_q` projection, and a rotated part (traditional RoPE, YaRN per
//! `rope_scaling`) matched against the rotated keys. Those rotated scores enter the fused
//! attention as its additive mask, with the causal or padding mask applied to them first
//! (the dtype's lowest value where attention is not allowed). A single query (decoding) folds
//! `embed_q` into the query and attends over the latent itself, then maps the result to
//! values with `unembed_out`; longer inputs expand the latent into per-head keys and values
//! instead. Both paths are mlx-lm's, so results are bit-identical on the same weights.
//!
//! `embed_q`/`unembed_out` are `[heads, out, in]` stacks, float or packed (mlx-lm's
//! `MultiLinear` / `QuantizedMultiLinear`). Folders saved before mlx-lm split them hold the
//! Hugging Face `kv_b_proj` instead: it is split here the way mlx-lm's `sanitize` does
//! (unpacked, split per head, packed again with the same bits and group size).

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::{ops, Array, Dtype};

use super::attention::heads_to_features;
use super::cache::{AttnMask, KvCache, Positions};
use super::config::{QuantConfig, QuantMode};
use super::error::{ModelError, Result};
use super::layers::{Linear, Matrix, QuantMatrix, RmsNorm};
use super::quant_ops;
use super::rope::Rope;
use super::shard::{Split, TensorParallel};
use super::slicing::slice_axis;
use super::weights::Weights;

/// mlx-lm's fixed epsilon of the query and latent norms.
const LORA_NORM_EPS: f32 = 1e-6;

/// The widths of one latent attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MlaSpec {
    pub hidden: i32,
    pub heads: i32,
    /// The query's low-rank width; `None`: one full `q_proj`.
    pub q_lora_rank: Option<i32>,
    pub kv_lora_rank: i32,
    pub qk_nope_head_dim: i32,
    pub qk_rope_head_dim: i32,
    pub v_head_dim: i32,
    /// Biases on `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj` (`attention_bias`).
    pub bias: bool,
    /// The softmax scale (YaRN's `mscale_all_dim` factor included).
    pub scale: f32,
}

/// mlx-lm's `MultiLinear`: one `[out, in]` matrix per head, `[heads, out, in]`.
struct MultiLinear {
    w: Matrix,
}

impl MultiLinear {
    /// Packed iff `<path>.scales` exists. A dequantizing policy unpacks with the scales
    /// already in the compute dtype: mlx-lm's float32 run keeps these packed (its
    /// `dequantize_model` skips them) and multiplies with float32 scales, which this matches
    /// up to summation order.
    fn load(
        ws: &mut Weights,
        path: &str,
        heads: i32,
        (input, output): (i32, i32),
        quant: &QuantConfig,
    ) -> Result<Self> {
        if !ws.contains(&format!("{path}.scales")) {
            let w = ws.take_float(&format!("{path}.weight"), &[heads, output, input])?;
            return Ok(MultiLinear {
                w: Matrix::Dense(w),
            });
        }
        let q = QuantMatrix::load(ws, path, &[heads], output, input, quant, true)?;
        if ws.policy.dequantize {
            let dense = q.dequantize()?;
            return Ok(MultiLinear {
                w: Matrix::Dense(ws.cast(path, dense)?),
            });
        }
        Ok(MultiLinear {
            w: Matrix::Quant(q),
        })
    }

    /// `x @ W.T` per head (`x @ W` when not `transpose`), broadcast over `x`'s batch.
    fn forward(&self, x: &Array, transpose: bool) -> Result<Array> {
        match &self.w {
            Matrix::Dense(w) if transpose => Ok(x.matmul(w.swap_axes(-1, -2)?)?),
            Matrix::Dense(w) => Ok(x.matmul(w)?),
            Matrix::Quant(q) => quant_ops::quantized_matmul(
                x,
                &q.w,
                &q.scales,
                q.biases.as_ref(),
                &q.spec,
                transpose,
            ),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        self.w.arrays()
    }

    /// Tensor parallel: this rank's heads.
    fn shard_heads(&mut self, tp: &TensorParallel, name: &str) -> Result<()> {
        match &mut self.w {
            Matrix::Dense(w) => *w = tp.heads(w, &format!("{name}.weight"))?,
            Matrix::Quant(q) => {
                q.w = tp.heads(&q.w, &format!("{name}.weight"))?;
                q.scales = tp.heads(&q.scales, &format!("{name}.scales"))?;
                if let Some(b) = &q.biases {
                    q.biases = Some(tp.heads(b, &format!("{name}.biases"))?);
                }
            }
        }
        Ok(())
    }
}

/// The two projections that read the layer input: the query's (`q_a_proj`, or `q_proj`)
/// and `kv_a_proj_with_mqa`; one matmul where [`Linear::fuse`] allows it.
enum InputProj {
    Separate { q: Linear, kv: Linear },
    Fused { both: Linear, q_out: i32 },
}

/// Multi-head latent attention; see the module doc.
pub(crate) struct LatentAttention {
    input: InputProj,
    /// `q_a_layernorm` and `q_b_proj` of a low-rank query.
    q_b: Option<(RmsNorm, Linear)>,
    kv_a_norm: RmsNorm,
    embed_q: MultiLinear,
    unembed_out: MultiLinear,
    o_proj: Linear,
    rope: Rope,
    heads: i32,
    nope: i32,
    rope_dims: i32,
    kv_lora: i32,
    scale: f32,
}

impl LatentAttention {
    /// Loads `<prefix>.{q_a_proj, q_a_layernorm, q_b_proj | q_proj, kv_a_proj_with_mqa,
    /// kv_a_layernorm, embed_q, unembed_out | kv_b_proj, o_proj}`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        s: &MlaSpec,
        rope: Rope,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let lin = |ws: &mut Weights, name: &str, input: i32, output: i32, bias: bool| {
            Linear::load(ws, &format!("{prefix}.{name}"), input, output, bias, quant)
        };
        let q_width = s.heads * (s.qk_nope_head_dim + s.qk_rope_head_dim);
        let (q, q_b) = match s.q_lora_rank {
            None => (lin(ws, "q_proj", s.hidden, q_width, false)?, None),
            Some(r) => {
                let a = lin(ws, "q_a_proj", s.hidden, r, s.bias)?;
                let norm = RmsNorm::load(ws, &format!("{prefix}.q_a_layernorm"), r, LORA_NORM_EPS)?;
                (a, Some((norm, lin(ws, "q_b_proj", r, q_width, false)?)))
            }
        };
        let kv = lin(
            ws,
            "kv_a_proj_with_mqa",
            s.hidden,
            s.kv_lora_rank + s.qk_rope_head_dim,
            s.bias,
        )?;
        let kv_a_norm = RmsNorm::load(
            ws,
            &format!("{prefix}.kv_a_layernorm"),
            s.kv_lora_rank,
            LORA_NORM_EPS,
        )?;
        if ws.contains(&format!("{prefix}.kv_b_proj.weight")) {
            split_kv_b(ws, prefix, s, quant)?;
        }
        let (nope, lora) = (s.qk_nope_head_dim, s.kv_lora_rank);
        let embed_q = MultiLinear::load(
            ws,
            &format!("{prefix}.embed_q"),
            s.heads,
            (nope, lora),
            quant,
        )?;
        let unembed_out = MultiLinear::load(
            ws,
            &format!("{prefix}.unembed_out"),
            s.heads,
            (lora, s.v_head_dim),
            quant,
        )?;
        Ok(LatentAttention {
            input: InputProj::Separate { q, kv },
            q_b,
            kv_a_norm,
            embed_q,
            unembed_out,
            o_proj: lin(ws, "o_proj", s.heads * s.v_head_dim, s.hidden, s.bias)?,
            rope,
            heads: s.heads,
            nope,
            rope_dims: s.qk_rope_head_dim,
            kv_lora: lora,
            scale: s.scale,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Array,
        cache: &mut KvCache,
        mask: &AttnMask,
        positions: &Positions,
    ) -> Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let offset = cache.offset();
        let (q, kv) = match &self.input {
            InputProj::Separate { q, kv } => (q.forward(x)?, kv.forward(x)?),
            InputProj::Fused { both, q_out } => {
                let y = both.forward(x)?;
                let end = y.shape()[2];
                (
                    slice_axis(&y, 2, 0, *q_out)?,
                    slice_axis(&y, 2, *q_out, end)?,
                )
            }
        };
        let q = match &self.q_b {
            Some((norm, q_b)) => q_b.forward(&norm.forward(&q)?)?,
            None => q,
        };
        let q = q
            .reshape(&[b, l, self.heads, -1])?
            .transpose_axes(&[0, 2, 1, 3])?;
        let q_nope = slice_axis(&q, 3, 0, self.nope)?;
        let q_pe = slice_axis(&q, 3, self.nope, self.nope + self.rope_dims)?;
        let latent = self
            .kv_a_norm
            .forward(&slice_axis(&kv, 2, 0, self.kv_lora)?)?;
        let k_pe = slice_axis(&kv, 2, self.kv_lora, self.kv_lora + self.rope_dims)?
            .reshape(&[b, l, 1, self.rope_dims])?
            .transpose_axes(&[0, 2, 1, 3])?;
        let q_pe = self.rope.forward(&q_pe, positions)?;
        let k_pe = self.rope.forward(&k_pe, positions)?;
        let (latent, k_pe) = cache.update_and_fetch(&latent.expand_dims(1)?, &k_pe)?;

        // The rotated parts' scores, masked, are the fused attention's additive mask.
        let scale = Array::from_f32(self.scale).as_dtype(q_pe.dtype())?;
        let pe_scores = q_pe.multiply(&scale)?.matmul(k_pe.swap_axes(-1, -2)?)?;
        let allowed = match mask {
            AttnMask::None => None,
            AttnMask::Causal => Some(causal(l, offset)?),
            AttnMask::Array(_) | AttnMask::Banded { .. } | AttnMask::Rows { .. } => {
                mask.array().cloned()
            }
        };
        let pe_scores = match allowed {
            Some(m) => ops::select(&m, &pe_scores, lowest(pe_scores.dtype())?)?,
            None => pe_scores,
        };
        let (q_nope, keys, values) = if l == 1 {
            (self.embed_q.forward(&q_nope, true)?, latent.clone(), latent)
        } else {
            let keys = self.embed_q.forward(&latent, false)?;
            let values = self.unembed_out.forward(&latent, true)?;
            (q_nope, keys, values)
        };
        let out = fast::scaled_dot_product_attention(
            &q_nope,
            &keys,
            &values,
            self.scale,
            Some(ScaledDotProductAttentionMask::Array(&pe_scores)),
            None::<&Array>,
        )?;
        let out = if l == 1 {
            self.unembed_out.forward(&out, true)?
        } else {
            out
        };
        let out = heads_to_features(&out, b, l)?;
        self.o_proj.forward(&out)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = match &self.input {
            InputProj::Separate { q, kv } => [q, kv].into_iter().flat_map(Linear::arrays).collect(),
            InputProj::Fused { both, .. } => both.arrays(),
        };
        if let Some((norm, q_b)) = &self.q_b {
            v.push(&norm.weight);
            v.extend(q_b.arrays());
        }
        v.push(&self.kv_a_norm.weight);
        v.extend(self.embed_q.arrays());
        v.extend(self.unembed_out.arrays());
        v.extend(self.o_proj.arrays());
        v
    }

    /// Tensor parallel, as mlx-lm's `shard`: the query projection that yields the heads
    /// (`q_b_proj`, or `q_proj`) split by output, `embed_q`/`unembed_out` by head, `o_proj`
    /// by input; the low-rank `q_a_proj`, the latent's projection and the norms stay whole
    /// (every rank caches the whole latent).
    pub(crate) fn shard_tensor(&mut self, tp: &TensorParallel, prefix: &str) -> Result<()> {
        let InputProj::Separate { q, .. } = &mut self.input else {
            unreachable!("projections are fused after sharding")
        };
        match &mut self.q_b {
            Some((_, q_b)) => tp.linear(q_b, Split::Outputs, &format!("{prefix}.q_b_proj"))?,
            None => tp.linear(q, Split::Outputs, &format!("{prefix}.q_proj"))?,
        }
        self.embed_q.shard_heads(tp, &format!("{prefix}.embed_q"))?;
        self.unembed_out
            .shard_heads(tp, &format!("{prefix}.unembed_out"))?;
        tp.linear(&mut self.o_proj, Split::Inputs, &format!("{prefix}.o_proj"))?;
        self.heads /= tp.size();
        Ok(())
    }

    /// The query's first projection and the latent's as one matmul where
    /// [`Linear::fuse`] allows it.
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        if let InputProj::Separate { q, kv } = &self.input {
            if let Some(both) = Linear::fuse(&[q, kv])? {
                let q_out = q.weight.rows();
                self.input = InputProj::Fused { both, q_out };
            }
        }
        Ok(())
    }
}

/// mlx-lm's `create_causal_mask(l, offset)`: bool `[l, offset + l]`, query `i` (position
/// `offset + i`) sees keys `0..=offset + i`. Built on the device: it is as large as the
/// attention scores.
fn causal(l: i32, offset: i32) -> Result<Array> {
    let keys = Array::arange::<_, i32>(None, offset + l, None)?;
    let queries = Array::arange::<_, i32>(offset, offset + l, None)?.reshape(&[l, 1])?;
    Ok(queries.ge(&keys)?)
}

/// `mx.finfo(dtype).min` as a scalar of `dtype`.
fn lowest(dtype: Dtype) -> Result<Array> {
    let v = match dtype {
        Dtype::Float16 => -65504.0,
        Dtype::Bfloat16 => f32::from_bits(0xff7f_0000),
        _ => f32::MIN,
    };
    Ok(Array::from_f32(v).as_dtype(dtype)?)
}

/// mlx-lm's `sanitize` for a folder with Hugging Face's `kv_b_proj` (`[heads * (nope + v),
/// kv_lora_rank]`): per head, the first `nope` rows transposed become `embed_q`, the other
/// `v` rows `unembed_out`. A packed `kv_b_proj` is unpacked and both parts are packed again
/// with its bits and group size, as mlx-lm does. The parts go back into `ws` under their
/// new names.
fn split_kv_b(ws: &mut Weights, prefix: &str, s: &MlaSpec, quant: &QuantConfig) -> Result<()> {
    let path = format!("{prefix}.kv_b_proj");
    let (nope, v_dim, lora) = (s.qk_nope_head_dim, s.v_head_dim, s.kv_lora_rank);
    let rows = s.heads * (nope + v_dim);
    let (w, packing) = if ws.contains(&format!("{path}.scales")) {
        let q = QuantMatrix::load(ws, &path, &[], rows, lora, quant, false)?;
        if q.spec.mode != QuantMode::Affine {
            return Err(ModelError::BadTensor {
                name: format!("{path}.weight"),
                message: format!(
                    "a {} packed kv_b_proj cannot be split (mlx-lm repacks it as affine only); \
                     convert the model again with a current mlx-lm",
                    q.spec.mode.name()
                ),
            });
        }
        (q.dequantize()?, Some(q.spec))
    } else {
        (
            ws.take(&format!("{path}.weight"), Some(&[rows, lora]))?,
            None,
        )
    };
    let w = w.reshape(&[s.heads, nope + v_dim, lora])?;
    let wk = slice_axis(&w, 1, 0, nope)?
        .swap_axes(-1, -2)?
        .contiguous()?;
    let wv = slice_axis(&w, 1, nope, nope + v_dim)?.contiguous()?;
    for (name, part) in [("embed_q", wk), ("unembed_out", wv)] {
        let p = format!("{prefix}.{name}");
        match packing {
            Some(spec) => {
                let (w, scales, biases) = ops::quantize(&part, spec.group_size, spec.bits)?;
                ws.insert(&format!("{p}.weight"), w);
                ws.insert(&format!("{p}.scales"), scales);
                ws.insert(&format!("{p}.biases"), biases);
            }
            None => ws.insert(&format!("{p}.weight"), part),
        }
    }
    Ok(())
}
