//! One pre-norm decoder block and its parts, shared by every architecture: grouped-query
//! attention (`attention.rs`) or DeepSeek's multi-head latent attention (`mla.rs`), the SwiGLU
//! MLP or a sparse mixture of experts, the two RMSNorms. The op sequence is mlx-lm's (`llama.py`, `qwen3.py`), so results are
//! bit-identical on the same weights.
//!
//! Under tensor parallelism each part shards itself (`shard_tensor`: which projection is
//! split by output, which by input) and [`Block::forward`] sums the partial outputs.

use mlx_rs::Array;

use super::attention::Attention;
use super::cache::{AttnMask, KvCache, Positions, RowsView};
use super::config::QuantConfig;
use super::error::Result;
use super::layers::{swiglu, Folded, Linear, RmsNorm};
use super::mla::LatentAttention;
use super::moe::SparseMoe;
use super::shard::{Split, TensorParallel};
use super::weights::Weights;

/// The gate and up projections: two matmuls, or one (see [`Linear::fuse`]).
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

/// The SwiGLU MLP.
pub(crate) struct Mlp {
    gate_up: GateUp,
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
            gate_up: GateUp::Separate {
                gate: lin(ws, "gate_proj", dims, hidden)?,
                up: lin(ws, "up_proj", dims, hidden)?,
            },
            down_proj: lin(ws, "down_proj", hidden, dims)?,
        })
    }

    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        self.forward_folded(x, None, None)
    }

    /// [`Mlp::forward`] of `norm(x)` plus `residual` (each optional), folded into the
    /// products where the kernel takes them ([`Folded`]; SwiGLU too, with gate/up fused).
    pub(crate) fn forward_folded(
        &self,
        x: &Array,
        norm: Option<&RmsNorm>,
        residual: Option<&Array>,
    ) -> Result<Array> {
        let act = match &self.gate_up {
            GateUp::Fused(gate_up) => {
                let folded = Folded {
                    norm,
                    glu: true,
                    ..Folded::default()
                };
                gate_up.forward_folded(x, &folded)?
            }
            GateUp::Separate { gate, up } => {
                let x = &RmsNorm::maybe(norm, x)?;
                swiglu(&gate.forward(x)?, &up.forward(x)?)?
            }
        };
        let folded = Folded {
            residual,
            ..Folded::default()
        };
        self.down_proj.forward_folded(&act, &folded)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        match &self.gate_up {
            GateUp::Separate { gate, up } => vec![gate, up],
            GateUp::Fused(gate_up) => vec![gate_up],
        }
        .into_iter()
        .chain([&self.down_proj])
        .flat_map(Linear::arrays)
        .collect()
    }

    /// gate and up as one matmul where [`Linear::fuse`] allows it.
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        if let GateUp::Separate { gate, up } = &self.gate_up {
            if let Some(gate_up) = Linear::fuse(&[gate, up])? {
                self.gate_up = GateUp::Fused(gate_up);
            }
        }
        Ok(())
    }

    /// Tensor parallel: gate/up split by output, down by input (partial sums).
    pub(crate) fn shard_tensor(&mut self, tp: &TensorParallel, prefix: &str) -> Result<()> {
        let GateUp::Separate { gate, up } = &mut self.gate_up else {
            unreachable!("projections are fused after sharding")
        };
        tp.linear(gate, Split::Outputs, &format!("{prefix}.gate_proj"))?;
        tp.linear(up, Split::Outputs, &format!("{prefix}.up_proj"))?;
        tp.linear(
            &mut self.down_proj,
            Split::Inputs,
            &format!("{prefix}.down_proj"),
        )
    }
}

/// A block's feed-forward: dense, or a sparse mixture of experts.
pub(crate) enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

impl FeedForward {
    /// `residual + ffn(norm(x))` (no residual: the feed-forward's output alone).
    fn forward(&self, x: &Array, norm: &RmsNorm, residual: Option<&Array>) -> Result<Array> {
        match self {
            FeedForward::Dense(m) => m.forward_folded(x, Some(norm), residual),
            FeedForward::Sparse(m) => add_residual(residual, m.forward(&norm.forward(x)?)?),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            FeedForward::Dense(m) => m.arrays(),
            FeedForward::Sparse(m) => m.arrays(),
        }
    }

    fn shard_tensor(&mut self, tp: &TensorParallel, layer: &str) -> Result<()> {
        match self {
            FeedForward::Dense(m) => m.shard_tensor(tp, &format!("{layer}.mlp")),
            FeedForward::Sparse(m) => m.shard_tensor(tp),
        }
    }
}

/// A block's attention: grouped-query, or multi-head latent attention.
pub(crate) enum SelfAttention {
    Gqa(Attention),
    Mla(LatentAttention),
}

impl From<Attention> for SelfAttention {
    fn from(a: Attention) -> Self {
        SelfAttention::Gqa(a)
    }
}

impl From<LatentAttention> for SelfAttention {
    fn from(a: LatentAttention) -> Self {
        SelfAttention::Mla(a)
    }
}

/// `residual + y`, or `y` alone.
fn add_residual(residual: Option<&Array>, y: Array) -> Result<Array> {
    match residual {
        Some(r) => Ok(r.add(&y)?),
        None => Ok(y),
    }
}

impl SelfAttention {
    /// `residual + attention(norm(x))` (no residual: the attention's output alone).
    fn forward(
        &self,
        x: &Array,
        (c, m, p): (&mut KvCache, &AttnMask, &Positions),
        norm: &RmsNorm,
        residual: Option<&Array>,
    ) -> Result<Array> {
        match self {
            SelfAttention::Gqa(a) => a.forward_folded(x, c, m, p, Some(norm), residual),
            SelfAttention::Mla(a) => add_residual(residual, a.forward(&norm.forward(x)?, c, m, p)?),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            SelfAttention::Gqa(a) => a.arrays(),
            SelfAttention::Mla(a) => a.arrays(),
        }
    }

    fn shard_tensor(&mut self, tp: &TensorParallel, prefix: &str) -> Result<()> {
        match self {
            SelfAttention::Gqa(a) => a.shard_tensor(tp, prefix),
            SelfAttention::Mla(a) => a.shard_tensor(tp, prefix),
        }
    }

    fn fuse_projections(&mut self) -> Result<()> {
        match self {
            SelfAttention::Gqa(a) => a.fuse_projections(),
            SelfAttention::Mla(a) => a.fuse_projections(),
        }
    }
}

/// A pre-norm decoder block.
pub(crate) struct Block {
    attn: SelfAttention,
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
        attn: impl Into<SelfAttention>,
        ffn: FeedForward,
        hidden: i32,
        eps: f32,
        window: Option<i32>,
    ) -> Result<Self> {
        Ok(Block {
            attn: attn.into(),
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

    /// `h` through the block. `tp`: the partial outputs of a tensor-parallel rank's
    /// attention and feed-forward are summed over the ranks before each residual add.
    /// `rows`: a batch's mask and positions, shared by every layer (else the cache's own).
    pub(crate) fn forward(
        &self,
        h: &Array,
        cache: &mut KvCache,
        tp: Option<&TensorParallel>,
        rows: Option<&RowsView>,
    ) -> Result<Array> {
        // Alone, the norms and residual additions fold into the products (`Folded`); under
        // tensor parallelism the partial outputs are summed over the ranks first.
        let attend = |residual: Option<&Array>, cache: &mut KvCache| match rows {
            Some(v) => {
                let at = (cache, v.mask_for(self.window), &v.positions);
                self.attn.forward(h, at, &self.input_norm, residual)
            }
            None => {
                let (mask, positions) = (cache.make_mask(h.shape()[1])?, cache.positions()?);
                let at = (cache, &mask, &positions);
                self.attn.forward(h, at, &self.input_norm, residual)
            }
        };
        let Some(tp) = tp else {
            let h1 = attend(Some(h), cache)?;
            return self.ffn.forward(&h1, &self.post_norm, Some(&h1));
        };
        let h1 = h.add(&tp.all_sum(&attend(None, cache)?)?)?;
        let r = self.ffn.forward(&h1, &self.post_norm, None)?;
        Ok(h1.add(&tp.all_sum(&r)?)?)
    }

    /// A fresh cache for this layer (rotating for sliding-window layers).
    pub(crate) fn make_cache(&self) -> KvCache {
        match self.window {
            Some(w) => KvCache::rotating(w, 0),
            None => KvCache::new(),
        }
    }

    /// A fresh cache for this layer that can be batched (windowed for sliding-window layers).
    pub(crate) fn make_batchable_cache(&self) -> KvCache {
        match self.window {
            Some(w) => KvCache::windowed(w),
            None => KvCache::new(),
        }
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = self.attn.arrays();
        v.extend(self.ffn.arrays());
        v.push(&self.input_norm.weight);
        v.push(&self.post_norm.weight);
        v
    }

    /// Tensor parallel: shards the attention and the feed-forward of layer `prefix`.
    pub(crate) fn shard_tensor(&mut self, tp: &TensorParallel, prefix: &str) -> Result<()> {
        self.attn.shard_tensor(tp, &format!("{prefix}.self_attn"))?;
        self.ffn.shard_tensor(tp, prefix)
    }

    /// Fuses the projections that read the same input into one matmul each (q/k/v, and a
    /// dense or shared expert MLP's gate/up) where the weights allow it; after any sharding.
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        self.attn.fuse_projections()?;
        match &mut self.ffn {
            FeedForward::Dense(m) => m.fuse_projections(),
            FeedForward::Sparse(m) => m.fuse_projections(),
        }
    }
}
