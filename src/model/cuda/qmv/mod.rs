//! Quantized matrix-vector products for a few rows on a CUDA GPU: decode's linear layers.
//!
//! A batch-1 decode step of an 8B 4-bit model spends most of its time in MLX's 4-bit
//! matrix-vector kernel, which reads the weights at ~800 GB/s on an H100 (a quarter of its
//! memory's speed; `scripts/gpu/decode_bound.py`), and MLX multiplies 2-7 rows as that many
//! matrix-vector products. `qmv.cu` streams each row of the packed matrix once for all rows,
//! with whole 16-byte loads per lane and several in flight: see the kernel's comment. On a
//! GPU of compute capability 8.0+ the 4-bit products of 16-bit x run on the tensor cores by
//! default (`mma.m16n8k16`; [`Tuning::mma`], `tuning.rs` says which), half the instructions a
//! weight of the scalar path.
//!
//! The kernel can also take a linear's neighbours in a decode step ([`Folded`]: the RMSNorm
//! before it, RoPE on a fused q/k/v product's heads, SwiGLU and the residual addition after
//! it), each one kernel fewer per layer.

mod fit;
mod tuning;

use std::cell::{OnceCell, RefCell};

use mlx_rs::Array;

pub use fit::{applies, applies_folded, writes_cache, FOLD_MIN_VALUES, MAX_ROWS, MIN_VALUES};
use tuning::{
    explicit_tuning, k_split, mma_shared_bytes, mma_tuning, pipe_shared_bytes, pipe_stages,
    staged_bytes, stages, tuning, uses_mma,
};
pub use tuning::{parse_tuning, Tuning};

use super::kernel::{Constant, CudaKernel, Launch};
use crate::model::cache::Positions;
use crate::model::error::{ModelError, Result};
use crate::model::layers::Folded;
use crate::model::rope::KernelFreqs;

const SOURCE: &str = include_str!("../qmv.cu");

thread_local! {
    /// One kernel per combination of folds (index: norm 1, glu 2, residual 4, RoPE 8, RoPE
    /// with per-pair frequencies 16, k and v into the cache 32), made on first use: MLX
    /// compiles and caches each under its own name.
    static KERNELS: [OnceCell<CudaKernel>; 64] = const { [const { OnceCell::new() }; 64] };
    /// The last one-sequence position handed to RoPE's fold, as the int32 `[1]` the kernel
    /// reads: every layer of a decode step asks for the same one, so a step makes one array
    /// (one upload) instead of one a layer.
    static POSITION: RefCell<Option<(i32, Array)>> = const { RefCell::new(None) };
}

/// Position `p` as an int32 `[1]` array, the same array while `p` is.
fn position_array(p: i32) -> Array {
    POSITION.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((q, a)) if *q == p => a.clone(),
            _ => {
                let a = Array::from_slice(&[p], &[1]);
                *last = Some((p, a.clone()));
                a
            }
        }
    })
}

/// Runs `f` with the kernel for `folded`'s combination.
fn with_kernel<R>(folded: &Folded, f: impl FnOnce(&CudaKernel) -> R) -> R {
    let (norm, glu, res) = (folded.norm.is_some(), folded.glu, folded.residual.is_some());
    let rope = folded.rope.is_some();
    let freqs = folded
        .rope
        .is_some_and(|r| matches!(r.rope.kernel_freqs(), Some((KernelFreqs::PerPair(_), _))));
    let cache = folded.rope.is_some_and(|r| r.into_cache.is_some());
    let index = norm as usize
        | (glu as usize) << 1
        | (res as usize) << 2
        | (rope as usize) << 3
        | (freqs as usize) << 4
        | (cache as usize) << 5;
    KERNELS.with(|kernels| {
        let kernel = kernels[index].get_or_init(|| {
            let mut name = String::from("kooka_qmv");
            let mut inputs = vec!["x", "w", "scales", "biases"];
            let mut header = String::new();
            if index != 0 {
                // MLX's functors, so that SwiGLU and the addition round as MLX's own kernels.
                header.push_str("#include \"mlx/backend/cuda/device/unary_ops.cuh\"\n");
                header.push_str("#include \"mlx/backend/cuda/device/binary_ops.cuh\"\n");
            }
            for (on, define, suffix, input) in [
                (norm, "QMV_NORM", "_norm", Some("norm")),
                (glu, "QMV_GLU", "_glu", None),
                (res, "QMV_RES", "_res", Some("res")),
                (rope, "QMV_ROPE", "_rope", Some("pos")),
                (freqs, "QMV_ROPE_FREQS", "_freqs", Some("freqs")),
                (cache, "QMV_KV_CACHE", "_kv", Some("kc")),
            ] {
                if on {
                    name.push_str(suffix);
                    header.push_str(&format!("#define {define} 1\n"));
                    inputs.extend(input);
                }
            }
            if cache {
                inputs.push("vc");
            }
            if std::env::var_os("KOOKA_QMV_PROBE").is_some() {
                // measuring only: the loads without the arithmetic (wrong outputs; qmv.cu)
                header.push_str("#define QMV_PROBE 1\n");
            }
            let outputs: &[&str] = match (rope, cache) {
                (true, true) => &["yq"],
                (true, false) => &["yq", "yk", "yv"],
                (false, _) => &["y"],
            };
            CudaKernel::new(&name, &inputs, outputs, SOURCE, &header, true)
        });
        f(kernel)
    })
}

/// A packed matrix as the kernel takes it: MLX's affine packing, `w` uint32
/// `[N, K * bits / 32]` with `scales` and `biases` `[N, K / group]`.
#[derive(Clone, Copy)]
pub struct Packed<'a> {
    pub w: &'a Array,
    pub scales: &'a Array,
    pub biases: &'a Array,
    pub bits: i32,
    pub group: i32,
}

/// `residual + glu(norm(x) @ dequantize(w)^T)`, as much of it as `folded` holds (none: as
/// [`applies`] says; some: as [`applies_folded`] says; not RoPE: [`rotated_heads`]), with the
/// default [`Tuning`] (folded: [`Tuning::folded`]); `[..., N]` (`N / 2` with SwiGLU) in `x`'s
/// type.
pub fn matmul_t(x: &Array, m: Packed, folded: &Folded) -> Result<Array> {
    matmul_t_tuned(x, m, default_tuning(x, m, folded), folded)
}

/// A fused q/k/v product with its q and k heads rotated (`folded.rope`, as
/// [`applies_folded`] says): q, k and v as `[B, heads, 1, head_dim]` of `x` `[B, 1, K]`.
pub fn rotated_heads(x: &Array, m: Packed, folded: &Folded) -> Result<[Array; 3]> {
    rotated_heads_tuned(x, m, default_tuning(x, m, folded), folded)
}

/// `KOOKA_QMV_TUNING` where set; else the tensor cores where they take the product
/// ([`mma_tuning`], [`uses_mma`]); else the scalar path's tuning for its size.
fn default_tuning(x: &Array, m: Packed, folded: &Folded) -> Tuning {
    let k = *x.shape().last().expect("x has a last axis");
    let tm = (x.size() as u32 / k as u32).next_power_of_two() as i32;
    let mma = mma_tuning(folded.rope.is_some())
        .filter(|t| explicit_tuning().is_none() && uses_mma(t, x.dtype(), m.bits, m.group, tm, k));
    mma.unwrap_or_else(|| tuning(!folded.is_empty(), m.w.shape()[0] as i64 * k as i64))
}

/// [`matmul_t`] with an explicit [`Tuning`] (for `examples/cuda_kernels`).
pub fn matmul_t_tuned(x: &Array, m: Packed, tuning: Tuning, folded: &Folded) -> Result<Array> {
    if folded.rope.is_some() {
        return Err(ModelError::Request(
            "qmv: a product with RoPE comes out as heads (rotated_heads)".into(),
        ));
    }
    let n = m.w.shape()[0];
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last axis") = if folded.glu { n / 2 } else { n };
    let mut y = launch(x, m, tuning, folded, vec![shape])?;
    Ok(y.remove(0))
}

/// [`rotated_heads`] with an explicit [`Tuning`] (for `examples/cuda_kernels`).
pub fn rotated_heads_tuned(
    x: &Array,
    m: Packed,
    tuning: Tuning,
    folded: &Folded,
) -> Result<[Array; 3]> {
    if folded.rope.is_some_and(|r| r.into_cache.is_some()) {
        return Err(ModelError::Request(
            "qmv: k and v go into the cache: rotated_q_into_cache".into(),
        ));
    }
    let y = rotated(x, m, tuning, folded)?;
    let [q, k, v]: [Array; 3] = y
        .try_into()
        .map_err(|_| ModelError::Request("qmv: three outputs expected".into()))?;
    Ok([q, k, v])
}

/// [`rotated_heads`] whose k and v heads the kernel writes into `folded.rope`'s cache slot
/// (as [`applies_folded`] says) at the position it rotates for: q alone comes out.
pub fn rotated_q_into_cache(x: &Array, m: Packed, folded: &Folded) -> Result<Array> {
    rotated_q_into_cache_tuned(x, m, default_tuning(x, m, folded), folded)
}

/// [`rotated_q_into_cache`] with an explicit [`Tuning`] (for `examples/cuda_kernels`).
pub fn rotated_q_into_cache_tuned(
    x: &Array,
    m: Packed,
    tuning: Tuning,
    folded: &Folded,
) -> Result<Array> {
    if folded.rope.is_none_or(|r| r.into_cache.is_none()) {
        return Err(ModelError::Request(
            "qmv: no cache slot to write k and v into".into(),
        ));
    }
    let mut y = rotated(x, m, tuning, folded)?;
    match y.len() {
        1 => Ok(y.remove(0)),
        _ => Err(ModelError::Request("qmv: q alone expected".into())),
    }
}

/// The rotated heads' product: q, k and v, or q alone where k and v go into the cache.
fn rotated(x: &Array, m: Packed, tuning: Tuning, folded: &Folded) -> Result<Vec<Array>> {
    let (Some(r), &[b, 1, _]) = (&folded.rope, x.shape()) else {
        return Err(ModelError::Request(
            "qmv: rotated heads need RoPE and x as [B, 1, K]".into(),
        ));
    };
    let hd = r.head_dim;
    let heads = m.w.shape()[0] / hd;
    let mut shapes = vec![vec![b, r.q_heads, 1, hd]];
    if r.into_cache.is_none() {
        shapes.push(vec![b, r.rotated_heads - r.q_heads, 1, hd]);
        shapes.push(vec![b, heads - r.rotated_heads, 1, hd]);
    }
    launch(x, m, tuning, folded, shapes)
}

/// One call of the kernel for `folded`'s combination, its outputs in `shapes` (x's type).
fn launch(
    x: &Array,
    Packed {
        w,
        scales,
        biases,
        bits,
        group,
    }: Packed,
    tuning: Tuning,
    folded: &Folded,
    shapes: Vec<Vec<i32>>,
) -> Result<Vec<Array>> {
    let k = *x.shape().last().expect("x has a last axis");
    let m = x.size() as i32 / k;
    let n = w.shape()[0];
    // What a warp computes: an output, or with SwiGLU or RoPE a pair of rows.
    let paired = folded.glu || folded.rope.is_some();
    let items = if paired { n / 2 } else { n };
    let tm = (m as u32).next_power_of_two() as i32;
    let Tuning {
        rows_per_warp: rpw,
        warps,
        unroll,
        trick,
        max_blocks,
        ..
    } = tuning;
    let mma = uses_mma(&tuning, x.dtype(), bits, group, tm, k);
    let stage = !mma && stages(&tuning, x.dtype(), bits, tm, k);
    // On the tensor cores a warp computes 16 rows of W (8 pairs), `ks` warps of a block
    // each over a part of K.
    let per_tile = if paired { 8 } else { 16 };
    let tiles = (items + per_tile - 1) / per_tile;
    let ks = if mma { k_split(&tuning, tiles, k) } else { 1 };
    let scale_bytes = scales.item_size() as i32;
    let pipe = match (mma, pipe_shared_bytes()) {
        (true, Some(most)) => pipe_stages(&tuning, tm, k, group, scale_bytes, most),
        _ => 0,
    };
    let mut constants = vec![
        ("T", Constant::Type(x.dtype())),
        ("S", Constant::Type(scales.dtype())),
        ("TM", Constant::Int(tm)),
        ("BITS", Constant::Int(bits)),
        ("GROUP", Constant::Int(group)),
        ("RPW", Constant::Int(rpw)),
        ("WARPS", Constant::Int(warps)),
        ("UNROLL", Constant::Int(unroll)),
        ("TRICK", Constant::Int(trick as i32)),
        ("KN", Constant::Int(k)),
        ("STAGE", Constant::Int(stage as i32)),
        ("MMA", Constant::Int(mma as i32)),
        ("KSPLIT", Constant::Int(ks)),
        ("PF", Constant::Int(if mma { tuning.prefetch } else { 0 })),
        ("PIPE", Constant::Int(pipe)),
    ];
    let mut inputs = vec![x, w, scales, biases];
    if let Some(norm) = folded.norm {
        constants.push(("EPS_BITS", Constant::Int(norm.eps.to_bits() as i32)));
        inputs.push(&norm.weight);
    }
    inputs.extend(folded.residual);
    let positions;
    if let Some(r) = &folded.rope {
        let (kind, scale) = r.rope.kernel_freqs().ok_or_else(|| {
            ModelError::Request("qmv: RoPE folded where the kernel cannot take it".into())
        })?;
        constants.push(("HD", Constant::Int(r.head_dim)));
        constants.push(("RH", Constant::Int(r.rotated_heads)));
        constants.push(("QH", Constant::Int(r.q_heads)));
        constants.push(("TRAD", Constant::Int(r.rope.traditional as i32)));
        constants.push(("SCALE_BITS", Constant::Int(scale.to_bits() as i32)));
        positions = match r.positions {
            Positions::Same(p) => position_array(*p),
            Positions::PerRow(p) => p.clone(),
        };
        inputs.push(&positions);
        match kind {
            KernelFreqs::Log2Base(b) => {
                constants.push(("BASE_BITS", Constant::Int(b.to_bits() as i32)))
            }
            KernelFreqs::PerPair(f) => inputs.push(f),
        }
        if let Some(slot) = &r.into_cache {
            inputs.extend([slot.keys, slot.values]);
        }
    }
    let mut blocks = match mma {
        true => {
            let per_block = warps / ks;
            (tiles + per_block - 1) / per_block
        }
        false => {
            let per_block = rpw * warps;
            (items + per_block - 1) / per_block
        }
    };
    if max_blocks > 0 {
        blocks = blocks.min(max_blocks);
    }
    with_kernel(folded, |kernel| {
        kernel.apply(
            &inputs,
            &Launch {
                outputs: shapes.into_iter().map(|s| (s, x.dtype())).collect(),
                grid: [blocks * 32 * warps, 1, 1],
                group: [32 * warps, 1, 1],
                constants: &constants,
                shared_bytes: match (mma, stage) {
                    (true, _) => mma_shared_bytes(&tuning, tm, k, group, scale_bytes, pipe) as i32,
                    (false, true) => staged_bytes(tm, k) as i32,
                    (false, false) => 0,
                },
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_array_holds_the_position_asked_for() {
        let value = |a: Array| a.try_item_exact::<i32>().unwrap();
        assert_eq!(value(position_array(7)), 7);
        assert_eq!(value(position_array(7)), 7); // the same array again
        assert_eq!(value(position_array(8)), 8);
        assert_eq!(value(position_array(7)), 7);
    }
}
