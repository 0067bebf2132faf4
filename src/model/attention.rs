//! Grouped-query attention with RoPE (optional QKV/output biases and per-head or all-head q/k
//! RMSNorm), in mlx-lm's op sequence (`llama.py`, `qwen3.py`), and the attention product itself
//! ([`attention`]: MLX's fused kernel or, where they pay, kooka's own). A block's attention
//! takes its input norm and residual along ([`Attention::forward_folded`]).

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::Array;

use super::cache::{AttnMask, KvCache, Positions};
use super::config::QuantConfig;
use super::cuda::{decode_attention, qmv};
use super::error::Result;
use super::layers::{CacheSlot, Folded, Linear, RmsNorm, RopeFold};
use super::rope::Rope;
use super::shard::{Split, TensorParallel};
use super::slicing::slice_axis;
use super::weights::Weights;

/// `softmax(q k^T * scale + mask) v` (with `sinks`' extra logits): MLX's fused attention, or on
/// the CPU backend, for a prompt chunk where it pays, [`cpu_attention`]'s, or on a CUDA GPU,
/// for a few queries (a speculative verify step), [`few_queries`]' two products, and for a
/// batched decode step, [`decode_attention`]'s kernel.
///
/// [`few_queries`]: super::few_queries
///
/// [`cpu_attention`]: super::cpu_attention
pub(crate) fn attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: &AttnMask,
    sinks: Option<&Array>,
) -> Result<Array> {
    #[cfg(target_os = "linux")]
    if sinks.is_none() {
        if let Some(m) = super::cpu_attention::use_for(mask, q, k) {
            return super::cpu_attention::scaled_dot_product_attention(q, k, v, scale, m);
        }
    }
    if super::few_queries::use_for(q, sinks.is_some()) {
        return super::few_queries::attention(q, k, v, scale, mask);
    }
    if sinks.is_none() && decode_attention::applies(q, k, v) {
        match mask {
            AttnMask::Rows { starts, .. } => {
                return decode_attention::attention(q, k, v, scale, Some(starts));
            }
            // One sequence keeps MLX's attention (cuDNN's from 256 keys) unless asked: the
            // same whole-step speed on an H100, and mlx-lm's rounding (PERFORMANCE, "The
            // device's side of a step").
            AttnMask::None | AttnMask::Causal if decode_attention::takes_one_sequence() => {
                return decode_attention::attention(q, k, v, scale, None);
            }
            _ => {}
        }
    }
    let mask = match mask {
        AttnMask::None => None,
        AttnMask::Causal => Some(ScaledDotProductAttentionMask::Causal),
        AttnMask::Array(_) | AttnMask::Banded { .. } | AttnMask::Rows { .. } => {
            mask.array().map(ScaledDotProductAttentionMask::Array)
        }
    };
    Ok(fast::scaled_dot_product_attention(
        q, k, v, scale, mask, sinks,
    )?)
}

/// The attention's output `[B, heads, L, head_dim]` as `[B, L, heads * head_dim]`. One
/// position (decode) needs no transpose: its elements are already in that order, so a
/// reshape does it (one view less a layer).
pub(crate) fn heads_to_features(out: &Array, b: i32, l: i32) -> Result<Array> {
    if l == 1 {
        return Ok(out.reshape(&[b, 1, -1])?);
    }
    Ok(out.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, l, -1])?)
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
    pub qk_norm: QkNorm,
    pub eps: f32,
    /// A learned per-head attention sink (`<prefix>.sinks`, gpt-oss): one more logit in each
    /// head's softmax that takes probability mass and gives no value.
    pub sinks: bool,
}

/// RMSNorm of the queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QkNorm {
    None,
    /// Over each head's `head_dim` values, one weight shared by the heads (qwen3).
    PerHead,
    /// Over all heads' values at once, a weight per value (minimax).
    AllHeads,
}

/// The q, k and v projections: three matmuls, or one (see [`Linear::fuse`]).
enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    Fused {
        qkv: Linear,
        q_out: i32,
        kv_out: i32,
    },
}

/// Grouped-query attention with RoPE (and optional per-head q/k RMSNorm).
pub(crate) struct Attention {
    qkv: Qkv,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    qk_norm: QkNorm,
    /// Tensor parallel with [`QkNorm::AllHeads`]: this rank's norms cover its heads only,
    /// and their squared sums are added over the ranks.
    norm_tp: Option<TensorParallel>,
    rope: Rope,
    n_heads: i32,
    n_kv_heads: i32,
    scale: f32,
    /// `[heads]`, see [`AttnSpec::sinks`].
    sinks: Option<Array>,
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
        let norm = |ws: &mut Weights, name: &str, dims: i32| {
            RmsNorm::load(ws, &format!("{prefix}.{name}"), dims, a.eps).map(Some)
        };
        let (q_norm, k_norm) = match a.qk_norm {
            QkNorm::None => (None, None),
            QkNorm::PerHead => (
                norm(ws, "q_norm", a.head_dim)?,
                norm(ws, "k_norm", a.head_dim)?,
            ),
            QkNorm::AllHeads => (
                norm(ws, "q_norm", a.heads * a.head_dim)?,
                norm(ws, "k_norm", a.kv_heads * a.head_dim)?,
            ),
        };
        Ok(Attention {
            qkv: Qkv::Separate {
                q: lin(ws, "q_proj", a.hidden, a.heads * a.head_dim, a.qkv_bias)?,
                k: lin(ws, "k_proj", a.hidden, a.kv_heads * a.head_dim, a.qkv_bias)?,
                v: lin(ws, "v_proj", a.hidden, a.kv_heads * a.head_dim, a.qkv_bias)?,
            },
            o_proj: lin(ws, "o_proj", a.heads * a.head_dim, a.hidden, a.o_bias)?,
            q_norm,
            k_norm,
            qk_norm: a.qk_norm,
            norm_tp: None,
            rope,
            n_heads: a.heads,
            n_kv_heads: a.kv_heads,
            scale: (a.head_dim as f32).powf(-0.5),
            sinks: match a.sinks {
                true => Some(ws.take_float(&format!("{prefix}.sinks"), &[a.heads])?),
                false => None,
            },
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Array,
        cache: &mut KvCache,
        mask: &AttnMask,
        positions: &Positions,
    ) -> Result<Array> {
        self.forward_folded(x, cache, mask, positions, None, None)
    }

    /// [`Attention::forward`] of `norm(x)` plus `residual` (each optional), folded into the
    /// q/k/v and output products where the kernel takes them ([`Folded`]).
    pub(crate) fn forward_folded(
        &self,
        x: &Array,
        cache: &mut KvCache,
        mask: &AttnMask,
        positions: &Positions,
        norm: Option<&RmsNorm>,
        residual: Option<&Array>,
    ) -> Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let (q, k, v) = match self.project_into_cache(x, norm, positions, cache)? {
            Some(q) => {
                let (k, v) = cache.kernel_wrote(1)?;
                (q, k, v)
            }
            None => {
                let (q, k, v) = self.project(x, norm, positions)?;
                let (k, v) = cache.update_and_fetch(&k, &v)?;
                (q, k, v)
            }
        };
        let out = attention(&q, &k, &v, self.scale, mask, self.sinks.as_ref())?;
        let out = heads_to_features(&out, b, l)?;
        let folded = Folded {
            residual,
            ..Folded::default()
        };
        self.o_proj.forward_folded(&out, &folded)
    }

    /// The RoPE fold of the fused q/k/v product `qkv` (its q and k heads rotated for
    /// `positions`), its k and v heads written into `into_cache` where given.
    fn rope_fold<'a>(
        &'a self,
        qkv: &Linear,
        positions: &'a Positions,
        into_cache: Option<CacheSlot<'a>>,
    ) -> RopeFold<'a> {
        let (nq, nkv) = (self.n_heads, self.n_kv_heads);
        RopeFold {
            rope: &self.rope,
            positions,
            head_dim: qkv.weight.rows() / (nq + 2 * nkv),
            q_heads: nq,
            rotated_heads: nq + nkv,
            into_cache,
        }
    }

    /// q of a decode step of one sequence (`x` `[1, 1, hidden]` at the cache's position) whose
    /// k and v heads the q/k/v kernel writes straight into `cache`'s buffers
    /// ([`qmv::writes_cache`]; then [`KvCache::kernel_wrote`]): no cache update of its own, and
    /// no copy of the cache where MLX still holds it; `None` where that does not apply.
    fn project_into_cache(
        &self,
        x: &Array,
        norm: Option<&RmsNorm>,
        positions: &Positions,
        cache: &mut KvCache,
    ) -> Result<Option<Array>> {
        let (Qkv::Fused { qkv, .. }, None, None) = (&self.qkv, &self.q_norm, &self.k_norm) else {
            return Ok(None);
        };
        let at_cache = matches!(positions, Positions::Same(p) if *p == cache.offset());
        if !qmv::writes_cache() || x.shape()[..2] != [1, 1] || !at_cache {
            return Ok(None);
        }
        let Some((keys, values)) = cache.kernel_slot(1)? else {
            return Ok(None);
        };
        let slot = CacheSlot {
            keys: &keys,
            values: &values,
        };
        let folded = Folded {
            norm,
            rope: Some(self.rope_fold(qkv, positions, Some(slot))),
            ..Folded::default()
        };
        qkv.rotated_q_into_cache(x, &folded)
    }

    /// q, k, v of `norm(x)` as `[B, heads, L, head_dim]`, q and k rotated for positions from
    /// `offset`.
    fn project(
        &self,
        x: &Array,
        norm: Option<&RmsNorm>,
        offset: &Positions,
    ) -> Result<(Array, Array, Array)> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let (nq, nkv) = (self.n_heads, self.n_kv_heads);
        if let (Qkv::Fused { qkv, .. }, None, None) = (&self.qkv, &self.q_norm, &self.k_norm) {
            // All heads from one matmul: kooka's kernel rotates the q and k heads itself and
            // hands q, k and v over apart (no views); else the product, then RoPE on the q and
            // k heads in one call (RoPE is per head, so the values are those of two calls).
            let with_rope = Folded {
                norm,
                rope: Some(self.rope_fold(qkv, offset, None)),
                ..Folded::default()
            };
            if let Some([q, k, v]) = qkv.rotated_heads_in_kernel(x, &with_rope)? {
                return Ok((q, k, v));
            }
            let folded = Folded {
                norm,
                ..Folded::default()
            };
            let y = qkv
                .forward_folded(x, &folded)?
                .reshape(&[b, l, nq + 2 * nkv, -1])?
                .transpose_axes(&[0, 2, 1, 3])?;
            let qk = self
                .rope
                .forward(&slice_axis(&y, 1, 0, nq + nkv)?, offset)?;
            return Ok((
                slice_axis(&qk, 1, 0, nq)?,
                slice_axis(&qk, 1, nq, nq + nkv)?,
                slice_axis(&y, 1, nq + nkv, nq + 2 * nkv)?,
            ));
        }
        let heads = |a: Array, n: i32, norm: &Option<RmsNorm>| -> Result<Array> {
            let a = match (self.qk_norm, norm, &self.norm_tp) {
                (QkNorm::AllHeads, Some(norm), Some(tp)) => {
                    tp.rms_norm(&a, &norm.weight, norm.eps)?
                }
                (QkNorm::AllHeads, Some(norm), None) => norm.forward(&a)?,
                _ => a,
            };
            let a = a.reshape(&[b, l, n, -1])?;
            let a = match (self.qk_norm, norm) {
                (QkNorm::PerHead, Some(norm)) => norm.forward(&a)?,
                _ => a,
            };
            Ok(a.transpose_axes(&[0, 2, 1, 3])?)
        };
        let x = &RmsNorm::maybe(norm, x)?;
        let (q, k, v) = match &self.qkv {
            Qkv::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
            Qkv::Fused { qkv, q_out, kv_out } => {
                let y = qkv.forward(x)?;
                let (a, c) = (*q_out, q_out + kv_out);
                (
                    slice_axis(&y, 2, 0, a)?,
                    slice_axis(&y, 2, a, c)?,
                    slice_axis(&y, 2, c, c + kv_out)?,
                )
            }
        };
        let q = self.rope.forward(&heads(q, nq, &self.q_norm)?, offset)?;
        let k = self.rope.forward(&heads(k, nkv, &self.k_norm)?, offset)?;
        Ok((q, k, heads(v, nkv, &None)?))
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = match &self.qkv {
            Qkv::Separate { q, k, v } => vec![q, k, v],
            Qkv::Fused { qkv, .. } => vec![qkv],
        }
        .into_iter()
        .chain([&self.o_proj])
        .flat_map(Linear::arrays)
        .collect();
        v.extend(
            self.q_norm
                .iter()
                .chain(self.k_norm.iter())
                .map(|n| &n.weight),
        );
        v.extend(self.sinks.iter());
        v
    }

    /// Tensor parallel: this rank keeps `1/size` of the query and key/value heads (q/k/v
    /// split by output, o split by input; the caller sums the partial outputs).
    pub(crate) fn shard_tensor(&mut self, tp: &TensorParallel, prefix: &str) -> Result<()> {
        if self.qk_norm == QkNorm::AllHeads {
            // The norms span all heads: each rank keeps its heads' weights and adds its
            // squared sums to the others' in every forward.
            for (norm, name) in [(&mut self.q_norm, "q_norm"), (&mut self.k_norm, "k_norm")] {
                if let Some(n) = norm {
                    n.weight = tp.vector(&n.weight, &format!("{prefix}.{name}.weight"))?;
                }
            }
            self.norm_tp = Some(tp.clone());
        }
        let Qkv::Separate { q, k, v } = &mut self.qkv else {
            unreachable!("projections are fused after sharding")
        };
        for (l, name) in [(q, "q_proj"), (k, "k_proj"), (v, "v_proj")] {
            tp.linear(l, Split::Outputs, &format!("{prefix}.{name}"))?;
        }
        tp.linear(&mut self.o_proj, Split::Inputs, &format!("{prefix}.o_proj"))?;
        if let Some(sinks) = &self.sinks {
            self.sinks = Some(tp.vector(sinks, &format!("{prefix}.sinks"))?);
        }
        self.n_heads /= tp.size();
        self.n_kv_heads /= tp.size();
        Ok(())
    }

    /// q, k and v as one matmul where [`Linear::fuse`] allows it.
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        if let Qkv::Separate { q, k, v } = &self.qkv {
            if let Some(qkv) = Linear::fuse(&[q, k, v])? {
                let (q_out, kv_out) = (q.weight.rows(), k.weight.rows());
                self.qkv = Qkv::Fused { qkv, q_out, kv_out };
            }
        }
        Ok(())
    }
}
