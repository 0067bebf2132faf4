//! Mixture-of-experts feed-forward, shared by qwen3_moe and mixtral: a router picks the
//! top-k experts of each token, whose SwiGLU MLPs run through MLX's gathered matmuls
//! (`gather_mm` on float experts, `gather_qmm` on affine-quantized ones) and whose outputs
//! are summed with the router scores. The same op sequence as mlx-lm's
//! `models/switch_layers.py` (`SwitchLinear`, `QuantizedSwitchLinear`, `SwitchGLU`) and the
//! sparse blocks of `qwen3_moe.py` / `mixtral.py`, so results are bit-identical.
//!
//! MLX's CPU `gather_mm` only takes float32 (mlx-lm itself fails on bf16/f16 experts on
//! CPU): there, float experts of another dtype are kept as float32 copies and each
//! gathered matmul runs on float32 inputs, its result cast back to the input's dtype.
//!
//! Expert weights are stacked `[num_experts, out, in]` under `<prefix>.switch_mlp.
//! {gate,up,down}_proj.{weight,scales,biases}`: the layout mlx-lm saves (its `sanitize`
//! stacks Hugging Face's per-expert tensors on load).

use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{ops, Array, Dtype};

use super::block::Mlp;
use super::config::QuantConfig;
use super::error::{ModelError, Result};
use super::layers::{swiglu, swiglu_oai, Linear, QuantMatrix};
use super::quant_ops;
use super::shard::{Split, TensorParallel};
use super::weights::Weights;

/// mlx-lm sorts tokens by expert once this many (token, expert) pairs are routed.
const SORT_THRESHOLD: usize = 64;

/// Stacked expert matrices `[experts, out, in]`, float or packed.
enum Experts {
    Dense(Array),
    Quant(QuantMatrix),
}

/// `SwitchLinear` / `QuantizedSwitchLinear`.
pub(crate) struct SwitchLinear {
    w: Experts,
    /// Per-expert output bias `[experts, out]` (gpt-oss).
    bias: Option<Array>,
    /// CPU fallback: the experts are float32 copies; inputs go through float32 and results
    /// back to their dtype.
    f32_on_cpu: bool,
}

impl SwitchLinear {
    /// Quantized iff `<path>.scales` exists; a dequantizing policy expands the packed
    /// experts once here, then casts (as mlx-lm's `dequantize_model` + `set_dtype`).
    pub(crate) fn load(
        ws: &mut Weights,
        path: &str,
        experts: i32,
        (input, output): (i32, i32),
        bias: bool,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let mut layer = Self::load_matrix(ws, path, experts, input, output, quant)?;
        if bias {
            layer.bias = Some(ws.take_float(&format!("{path}.bias"), &[experts, output])?);
        }
        Ok(layer)
    }

    fn load_matrix(
        ws: &mut Weights,
        path: &str,
        experts: i32,
        input: i32,
        output: i32,
        quant: &QuantConfig,
    ) -> Result<Self> {
        if !ws.contains(&format!("{path}.scales")) {
            let w = ws.take_float(&format!("{path}.weight"), &[experts, output, input])?;
            return Self::dense(w);
        }
        let q = QuantMatrix::load(
            ws,
            path,
            &[experts],
            output,
            input,
            quant,
            !ws.policy.dequantize,
        )?;
        if ws.policy.dequantize {
            let dense = q.dequantize()?;
            return Self::dense(ws.cast(path, dense)?);
        }
        Ok(SwitchLinear {
            w: Experts::Quant(q),
            bias: None,
            f32_on_cpu: false,
        })
    }

    fn dense(w: Array) -> Result<Self> {
        if w.dtype() != Dtype::Float32 && super::default_device_is_cpu() {
            return Ok(SwitchLinear {
                w: Experts::Dense(w.as_dtype(Dtype::Float32)?),
                bias: None,
                f32_on_cpu: true,
            });
        }
        Ok(SwitchLinear {
            w: Experts::Dense(w),
            bias: None,
            f32_on_cpu: false,
        })
    }

    /// `x @ W[idx].T (+ bias[idx])`, batched over the broadcast of `x`'s and `idx`'s batch
    /// shapes.
    pub(crate) fn forward(&self, x: &Array, idx: &Array, sorted: bool) -> Result<Array> {
        let y = self.matmul(x, idx, sorted)?;
        match &self.bias {
            Some(b) => Ok(y.add(b.take_axis(idx, 0)?.expand_dims(-2)?)?),
            None => Ok(y),
        }
    }

    fn matmul(&self, x: &Array, idx: &Array, sorted: bool) -> Result<Array> {
        match &self.w {
            Experts::Dense(w) if self.f32_on_cpu && x.dtype() != Dtype::Float32 => {
                let y = ops::gather_mm(
                    x.as_dtype(Dtype::Float32)?,
                    w.swap_axes(-1, -2)?,
                    None,
                    idx,
                    sorted,
                )?;
                Ok(y.as_dtype(x.dtype())?)
            }
            Experts::Dense(w) => Ok(ops::gather_mm(x, w.swap_axes(-1, -2)?, None, idx, sorted)?),
            Experts::Quant(q) => {
                quant_ops::gather_qmm(x, &q.w, &q.scales, q.biases.as_ref(), idx, &q.spec, sorted)
            }
        }
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = match &self.w {
            Experts::Dense(w) => vec![w],
            Experts::Quant(q) => q.arrays(),
        };
        v.extend(self.bias.iter());
        v
    }

    /// Split by outputs, the bias is split with them; split by inputs, every rank's partial
    /// sum would add the whole bias, so each adds `1/size` of it (as mlx-lm's gpt_oss does).
    fn shard_tensor(&mut self, tp: &TensorParallel, split: Split, name: &str) -> Result<()> {
        match &mut self.w {
            Experts::Dense(w) => *w = tp.dense(w, split, name)?,
            Experts::Quant(q) => tp.quant(q, split, name)?,
        }
        if let Some(b) = &self.bias {
            self.bias = Some(match split {
                Split::Outputs => tp.dense(b, Split::Inputs, &format!("{name}.bias"))?,
                Split::Inputs => b.divide(Array::from_int(tp.size()).as_dtype(b.dtype())?)?,
            });
        }
        Ok(())
    }
}

/// `SwitchGLU`: each token through its selected experts' gated MLPs.
struct SwitchGlu {
    gate_proj: SwitchLinear,
    up_proj: SwitchLinear,
    down_proj: SwitchLinear,
    activation: Activation,
}

/// The gated MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `silu(gate) * up`.
    Swiglu,
    /// gpt-oss's clamped variant ([`swiglu_oai`]).
    SwigluOai,
}

/// Where a block's router and experts are in the checkpoint, and what they carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MoeLayout {
    /// The router's name under the block (`gate`, gpt-oss `router`).
    pub router: &'static str,
    /// The stacked experts' name under the block (`switch_mlp`, gpt-oss `experts`).
    pub experts: &'static str,
    /// Router and experts have biases.
    pub bias: bool,
    pub activation: Activation,
}

impl MoeLayout {
    /// As mlx-lm saves most families.
    pub const SWITCH_MLP: MoeLayout = MoeLayout {
        router: "gate",
        experts: "switch_mlp",
        bias: false,
        activation: Activation::Swiglu,
    };
    pub const GPT_OSS: MoeLayout = MoeLayout {
        router: "router",
        experts: "experts",
        bias: true,
        activation: Activation::SwigluOai,
    };
}

impl SwitchGlu {
    fn load(ws: &mut Weights, prefix: &str, m: &MoeSpec, quant: &QuantConfig) -> Result<Self> {
        let p = |n: &str| format!("{prefix}.{n}");
        let (e, bias) = (m.experts, m.layout.bias);
        let (into, out_of) = ((m.dims, m.hidden), (m.hidden, m.dims));
        Ok(SwitchGlu {
            gate_proj: SwitchLinear::load(ws, &p("gate_proj"), e, into, bias, quant)?,
            up_proj: SwitchLinear::load(ws, &p("up_proj"), e, into, bias, quant)?,
            down_proj: SwitchLinear::load(ws, &p("down_proj"), e, out_of, bias, quant)?,
            activation: m.layout.activation,
        })
    }

    fn mlp(&self, x: &Array, idx: &Array, sorted: bool) -> Result<Array> {
        let up = self.up_proj.forward(x, idx, sorted)?;
        let gate = self.gate_proj.forward(x, idx, sorted)?;
        let h = match self.activation {
            Activation::Swiglu => swiglu(&gate, &up)?,
            Activation::SwigluOai => swiglu_oai(&gate, &up)?,
        };
        self.down_proj.forward(&h, idx, sorted)
    }

    /// `x`: `[B, L, D]`, `indices`: `[B, L, k]` -> `[B, L, k, D]`.
    fn forward(&self, x: &Array, indices: &Array) -> Result<Array> {
        through_experts(x, indices, |x, idx, sorted| self.mlp(x, idx, sorted))
    }

    fn arrays(&self) -> Vec<&Array> {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .into_iter()
            .flat_map(SwitchLinear::arrays)
            .collect()
    }

    /// Tensor parallel: every expert keeps `1/size` of its hidden units (mlx-lm's split).
    fn shard_tensor(&mut self, tp: &TensorParallel, prefix: &str) -> Result<()> {
        let name = |n: &str| format!("{prefix}.{n}");
        self.gate_proj
            .shard_tensor(tp, Split::Outputs, &name("gate_proj"))?;
        self.up_proj
            .shard_tensor(tp, Split::Outputs, &name("up_proj"))?;
        self.down_proj
            .shard_tensor(tp, Split::Inputs, &name("down_proj"))
    }
}

/// Each token of `x` (`[B, L, D]`) through its experts `indices` (`[B, L, k]`) by `mlp(x,
/// idx, sorted)` -> `[B, L, k, D]`, as mlx-lm's `SwitchGLU` / `SwitchMLP` call their
/// projections: past [`SORT_THRESHOLD`] pairs, sorted by expert so each expert's rows are
/// contiguous, then put back in order.
pub(crate) fn through_experts(
    x: &Array,
    indices: &Array,
    mlp: impl Fn(&Array, &Array, bool) -> Result<Array>,
) -> Result<Array> {
    let x = x.expand_dims_axes(&[-2, -3])?;
    if indices.size() < SORT_THRESHOLD {
        return Ok(mlp(&x, indices, false)?.squeeze_axes(&[-2])?);
    }
    let shape = indices.shape().to_vec();
    let k = shape.last().copied().unwrap_or(1);
    let flat = indices.flatten(None, None)?;
    let order = ops::argsort_axis(&flat, -1)?;
    let inv_order = ops::argsort_axis(&order, -1)?;
    let xs = x
        .flatten(0, -3)?
        .take_axis(order.floor_divide(Array::from_int(k))?, 0)?;
    let idx = flat.take_axis(&order, 0)?;
    let y = mlp(&xs, &idx, true)?.take_axis(&inv_order, 0)?;
    Ok(ops::unflatten(&y, 0, &shape)?.squeeze_axes(&[-2])?)
}

/// How router logits become expert choices and weights.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Routing {
    /// qwen3_moe: softmax over all experts, top-k, optionally renormalized to sum to one.
    SoftmaxTopK { norm_topk_prob: bool },
    /// mixtral: top-k logits, softmax over those.
    TopKSoftmax,
    /// minimax: the router runs in float32; sigmoid scores plus a per-expert correction
    /// bias (`e_score_correction_bias`) pick the top-k, whose unbiased scores are
    /// normalized to sum to one.
    SigmoidBias,
    /// glm4_moe (DeepSeek-V3's `noaux_tc`): sigmoid scores of the router's float logits plus
    /// the correction bias (`gate.e_score_correction_bias`); with `n_group > 1` only the
    /// `topk_group` expert groups with the best top-2 sums stay eligible; the top-k's
    /// unbiased scores, normalized when `norm_topk_prob`, times `scaling`.
    GroupedSigmoid {
        n_group: i32,
        topk_group: i32,
        norm_topk_prob: bool,
        scaling: f32,
    },
    /// gpt_oss: like mixtral's, but the top-k taken from the upper end of the partition (the
    /// order the experts' outputs are summed in).
    TopKSoftmaxUpper,
}

/// The shape of a sparse MoE block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MoeSpec {
    /// Model width.
    pub dims: i32,
    /// Each expert's hidden size.
    pub hidden: i32,
    pub experts: i32,
    pub top_k: i32,
    pub routing: Routing,
    pub layout: MoeLayout,
}

/// A sparse MoE block: router (`gate`) + stacked experts (`switch_mlp`).
pub(crate) struct SparseMoe {
    /// Checkpoint path of the block (`model.layers.N.mlp`), for error messages.
    prefix: String,
    /// Checkpoint path of the stacked experts.
    experts_path: String,
    /// The router; `None` once [`SparseMoe::take_router`] lent it to a fused projection.
    gate: Option<Linear>,
    switch_mlp: SwitchGlu,
    top_k: i32,
    experts: i32,
    routing: Routing,
    /// `e_score_correction_bias` `[experts]` (float32, never cast), for
    /// [`Routing::SigmoidBias`] and [`Routing::GroupedSigmoid`].
    score_bias: Option<Array>,
    /// Shared experts: a dense SwiGLU MLP every token goes through, added to the routed ones.
    shared: Option<Box<Mlp>>,
}

impl SparseMoe {
    /// Loads `<prefix>.gate` and `<prefix>.switch_mlp.*`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        m: &MoeSpec,
        quant: &QuantConfig,
    ) -> Result<Self> {
        if m.experts <= 0 || m.top_k <= 0 || m.top_k > m.experts || m.hidden <= 0 {
            return Err(ModelError::Config(format!(
                "mixture of experts needs 0 < num_experts_per_tok ({}) <= experts ({}) and a positive expert size ({})",
                m.top_k, m.experts, m.hidden
            )));
        }
        let experts_path = format!("{prefix}.{}", m.layout.experts);
        Ok(SparseMoe {
            prefix: prefix.to_string(),
            gate: Some(Linear::load(
                ws,
                &format!("{prefix}.{}", m.layout.router),
                m.dims,
                m.experts,
                m.layout.bias,
                quant,
            )?),
            switch_mlp: SwitchGlu::load(ws, &experts_path, m, quant)?,
            experts_path,
            top_k: m.top_k,
            experts: m.experts,
            routing: m.routing,
            score_bias: match m.routing {
                Routing::SigmoidBias => Some(ws.take(
                    &format!("{prefix}.e_score_correction_bias"),
                    Some(&[m.experts]),
                )?),
                Routing::GroupedSigmoid { .. } => Some(ws.take(
                    &format!("{prefix}.gate.e_score_correction_bias"),
                    Some(&[m.experts]),
                )?),
                _ => None,
            },
            shared: None,
        })
    }

    /// Adds shared experts (`<prefix>.shared_experts`, a SwiGLU MLP of `hidden` units).
    pub(crate) fn with_shared(
        mut self,
        ws: &mut Weights,
        dims: i32,
        hidden: i32,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let path = format!("{}.shared_experts", self.prefix);
        self.shared = Some(Box::new(Mlp::load(ws, &path, dims, hidden, false, quant)?));
        Ok(self)
    }

    /// `x`: `[B, L, D]` -> `[B, L, D]`.
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        match (self.routing, &self.score_bias) {
            (Routing::SigmoidBias, Some(bias)) => return self.forward_sigmoid(x, bias),
            (Routing::GroupedSigmoid { .. }, Some(bias)) => return self.forward_grouped(x, bias),
            _ => {}
        }
        let gates = self.router()?.forward(x)?;
        self.forward_routed(x, &gates)
    }

    /// The router, unless [`SparseMoe::take_router`] took it.
    fn router(&self) -> Result<&Linear> {
        self.gate.as_ref().ok_or_else(|| {
            ModelError::Mlx(format!(
                "{}: the router was fused away; call forward_routed",
                self.prefix
            ))
        })
    }

    /// Takes the router out, to compute its logits in a fused projection (they then go to
    /// [`SparseMoe::forward_routed`]).
    pub(crate) fn take_router(&mut self) -> Option<Linear> {
        self.gate.take()
    }

    /// [`SparseMoe::forward`] from the router's logits `gates` `[B, L, experts]` (softmax
    /// routings only).
    pub(crate) fn forward_routed(&self, x: &Array, gates: &Array) -> Result<Array> {
        let (k, e) = (self.top_k, self.experts);
        let (inds, scores) =
            match self.routing {
                Routing::SoftmaxTopK { norm_topk_prob } => {
                    let gates = ops::softmax_axis(gates, -1, true)?;
                    let inds =
                        ops::argpartition_axis(&gates, -k, -1)?.try_index((.., .., (e - k)..))?;
                    let scores = gates.take_along_axis(&inds, -1)?;
                    let scores = if norm_topk_prob {
                        scores.divide(scores.sum_axis(-1, true)?)?
                    } else {
                        scores
                    };
                    (inds, scores)
                }
                Routing::TopKSoftmax => {
                    let inds = ops::argpartition_axis(gates.negative()?, k - 1, -1)?
                        .try_index((.., .., ..k))?;
                    let scores = ops::softmax_axis(gates.take_along_axis(&inds, -1)?, -1, true)?;
                    (inds, scores)
                }
                Routing::TopKSoftmaxUpper => {
                    let inds =
                        ops::argpartition_axis(&gates, -k, -1)?.try_index((.., .., (e - k)..))?;
                    let scores = ops::softmax_axis(gates.take_along_axis(&inds, -1)?, -1, true)?;
                    (inds, scores)
                }
                Routing::SigmoidBias | Routing::GroupedSigmoid { .. } => {
                    return Err(ModelError::Config(format!(
                        "{}: sigmoid routing without e_score_correction_bias",
                        self.prefix
                    )))
                }
            };
        let y = self.switch_mlp.forward(x, &inds)?;
        let out = y.multiply(scores.expand_dims(-1)?)?.sum_axis(-2, false)?;
        match self.routing {
            // qwen3_moe casts back to the experts' dtype (a no-op unless the router's differs).
            Routing::SoftmaxTopK { .. } if out.dtype() != y.dtype() => Ok(out.as_dtype(y.dtype())?),
            _ => Ok(out),
        }
    }

    /// [`Routing::SigmoidBias`]: mlx-lm's `MiniMaxSparseMoeBlock`.
    fn forward_sigmoid(&self, x: &Array, bias: &Array) -> Result<Array> {
        let k = self.top_k;
        let scores = ops::sigmoid(&self.router()?.forward(&x.as_dtype(Dtype::Float32)?)?)?;
        let biased = scores.add(bias)?;
        let inds =
            ops::argpartition_axis(biased.negative()?, k - 1, -1)?.try_index((.., .., ..k))?;
        let picked = scores.take_along_axis(&inds, -1)?;
        let picked = picked
            .divide(picked.sum_axis(-1, true)?.add(Array::from_f32(1e-20))?)?
            .as_dtype(x.dtype())?;
        let y = self.switch_mlp.forward(x, &inds)?;
        Ok(y.multiply(picked.expand_dims(-1)?)?.sum_axis(-2, false)?)
    }

    /// [`Routing::GroupedSigmoid`]: mlx-lm's glm4_moe `MoE` (`group_expert_select`).
    fn forward_grouped(&self, x: &Array, bias: &Array) -> Result<Array> {
        let Routing::GroupedSigmoid {
            n_group,
            topk_group,
            norm_topk_prob,
            scaling,
        } = self.routing
        else {
            unreachable!("grouped routing only")
        };
        let k = self.top_k;
        let scores = ops::sigmoid(&self.router()?.forward(x)?.as_dtype(Dtype::Float32)?)?;
        let mut biased = scores.add(bias)?;
        if n_group > 1 && topk_group < n_group {
            // Groups outside the best `topk_group` (by their two best scores) are zeroed.
            let grouped = ops::unflatten(&biased, -1, &[n_group, -1])?;
            let group_scores = ops::indexing::topk_axis(&grouped, 2, -1)?.sum_axis(-1, true)?;
            let drop = n_group - topk_group;
            let worst = ops::argpartition_axis(&group_scores, drop - 1, -2)?.try_index((
                ..,
                ..,
                ..drop,
                ..,
            ))?;
            let kept = grouped.put_along_axis(&worst, Array::from_f32(0.0), -2)?;
            biased = ops::flatten(&kept, -2, -1)?;
        }
        let inds =
            ops::argpartition_axis(biased.negative()?, k - 1, -1)?.try_index((.., .., ..k))?;
        let mut picked = scores.take_along_axis(&inds, -1)?;
        if k > 1 && norm_topk_prob {
            picked = picked.divide(picked.sum_axis(-1, true)?)?;
        }
        let picked = picked.multiply(Array::from_f32(scaling))?;
        let y = self.switch_mlp.forward(x, &inds)?;
        let out = y
            .multiply(picked.expand_dims(-1)?)?
            .sum_axis(-2, false)?
            .as_dtype(y.dtype())?;
        match &self.shared {
            Some(mlp) => Ok(out.add(mlp.forward(x)?)?),
            None => Ok(out),
        }
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = self.gate.iter().flat_map(Linear::arrays).collect();
        v.extend(self.switch_mlp.arrays());
        v.extend(self.score_bias.iter());
        v.extend(self.shared.iter().flat_map(|m| m.arrays()));
        v
    }

    /// The shared experts' gate and up as one matmul where they allow it; after any sharding.
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        match &mut self.shared {
            Some(mlp) => mlp.fuse_projections(),
            None => Ok(()),
        }
    }

    /// Tensor parallel: the router stays whole (every rank routes identically); the
    /// experts are split, so the block's output is a partial sum the caller reduces.
    pub(crate) fn shard_tensor(&mut self, tp: &TensorParallel) -> Result<()> {
        self.switch_mlp.shard_tensor(tp, &self.experts_path)?;
        if let Some(mlp) = &mut self.shared {
            mlp.shard_tensor(tp, &format!("{}.shared_experts", self.prefix))?;
        }
        Ok(())
    }
}
