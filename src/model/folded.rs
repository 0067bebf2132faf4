//! What a linear's kernel may take along with its product in a decode step ([`Folded`]): the
//! RMSNorm before it, SwiGLU and the residual after it, RoPE on a fused q/k/v product's heads
//! ([`RopeFold`]) and where that product's k and v heads go ([`CacheSlot`]).

use mlx_rs::Array;

use super::cache::Positions;
use super::layers::RmsNorm;
use super::rope::Rope;

/// A linear's neighbours in a block, to fold into its product where kooka's CUDA kernel takes
/// them (`cuda::qmv`: one kernel instead of two or three, a decode step's cost on a GPU), else
/// run as MLX ops in mlx-lm's order: `residual + swiglu(norm(x) @ W^T)`.
#[derive(Clone, Copy, Default)]
pub struct Folded<'a> {
    /// The RMSNorm before the product.
    pub norm: Option<&'a RmsNorm>,
    /// The product is gate and up side by side; the output is `silu(gate) * up`.
    pub glu: bool,
    /// Added to the output: the block's residual stream.
    pub residual: Option<&'a Array>,
    /// The product is a fused q/k/v projection whose q and k heads RoPE rotates (the kernel
    /// only: [`super::layers::Linear::rotated_heads_in_kernel`]).
    pub rope: Option<RopeFold<'a>>,
}

impl Folded<'_> {
    /// Nothing to fold: a plain product.
    pub fn is_empty(&self) -> bool {
        self.norm.is_none() && !self.glu && self.residual.is_none() && self.rope.is_none()
    }
}

/// RoPE on a fused q/k/v product's outputs: heads of `head_dim` features, the first
/// `rotated_heads` (`q_heads` of q's, then k's) rotated for `positions`, the rest (v's) as
/// they are.
#[derive(Clone, Copy)]
pub struct RopeFold<'a> {
    pub rope: &'a Rope,
    pub positions: &'a Positions,
    pub head_dim: i32,
    pub q_heads: i32,
    pub rotated_heads: i32,
    /// Where the kernel writes the k and v heads itself, instead of handing them over.
    pub into_cache: Option<CacheSlot<'a>>,
}

/// A layer's whole key and value buffers (`[B, heads, capacity, head_dim]`, this cache's own:
/// [`crate::model::cache::KvCache::kernel_slot`]), which a fused q/k/v product with RoPE
/// writes in place at the position it rotates for (`Positions::Same`).
#[derive(Clone, Copy)]
pub struct CacheSlot<'a> {
    pub keys: &'a Array,
    pub values: &'a Array,
}
