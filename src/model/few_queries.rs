//! Attention written out as two products, `softmax(q k^T * scale + mask) v`, for a few
//! queries on a CUDA GPU. MLX's CUDA backend has a fused kernel for one query only; for more
//! it builds a cuDNN graph per new (queries, keys) shape, and a speculative verify step (2 to
//! 33 queries over keys that grow every step) paid ~70 ms a step for it on an H200
//! (docs/PERFORMANCE.md). Two batched matrix products cost microseconds there.

use mlx_rs::{ops, Array, Dtype};

use super::cache::{causal_mask, AttnMask};
use super::error::Result;

/// The most queries written out; a prompt chunk (more) keeps MLX's fused attention.
const MAX_QUERIES: i32 = 64;

/// Whether `q` (`[B, H, L, D]`) is a few queries on a CUDA device.
pub(crate) fn use_for(q: &Array, sinks: bool) -> bool {
    let l = q.shape()[2];
    cfg!(target_os = "linux")
        && !sinks
        && (2..=MAX_QUERIES).contains(&l)
        && !super::default_device_is_cpu()
}

/// `q` `[B, H, L, D]` over `k`, `v` `[B, KVH, S, D]` (grouped-query heads: head `h` reads
/// key head `h / (H / KVH)`), masked as `mask` says; `[B, H, L, D]`.
pub(crate) fn attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: &AttnMask,
) -> Result<Array> {
    let (b, h, l, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (kvh, s) = (k.shape()[1], k.shape()[2]);
    let rep = h / kvh;
    let q = q
        .multiply(Array::from_f32(scale).as_dtype(q.dtype())?)?
        .reshape(&[b, kvh, rep * l, d])?;
    let scores = q
        .matmul(k.swap_axes(-1, -2)?)?
        .reshape(&[b, kvh, rep, l, s])?
        .as_dtype(Dtype::Float32)?;
    let allowed = match mask {
        AttnMask::None => None,
        AttnMask::Causal => Some(causal_mask(l, s - l, i32::MAX)),
        AttnMask::Array(_) | AttnMask::Banded { .. } | AttnMask::Rows { .. } => {
            mask.array().cloned()
        }
    };
    let scores = match allowed {
        None => scores,
        Some(m) => {
            // `[L, S]` or `[B, 1, L, S]` against `[B, KVH, rep, L, S]`.
            let m = match m.ndim() {
                4 => m.reshape(&[m.shape()[0], 1, 1, l, s])?,
                _ => m,
            };
            let m = match m.dtype() {
                Dtype::Bool => m,
                _ => m.as_dtype(Dtype::Bool)?,
            };
            ops::select(&m, &scores, Array::from_f32(f32::NEG_INFINITY))?
        }
    };
    let p = ops::softmax_axis(&scores, -1, None)?
        .as_dtype(v.dtype())?
        .reshape(&[b, kvh, rep * l, s])?;
    Ok(p.matmul(v)?.reshape(&[b, h, l, d])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
    use mlx_rs::random;

    /// Equal to MLX's fused attention (which the CPU backend computes unfused) for causal,
    /// boolean-array and no masks, with grouped-query heads.
    #[test]
    fn matches_fused_attention() {
        let normal = |shape: &[i32], seed: u64| {
            let k = random::key(seed).unwrap();
            random::normal::<f32>(shape, None, None, &k).unwrap()
        };
        let (b, h, kvh, l, s, d) = (2, 8, 2, 5, 37, 64);
        let q = normal(&[b, h, l, d], 1);
        let k = normal(&[b, kvh, s, d], 2);
        let v = normal(&[b, kvh, s, d], 3);
        let pad: Vec<bool> = (0..b * l * s)
            .map(|i| (i % s) >= 3 * (i / (l * s)))
            .collect();
        let arr = Array::from_slice(&pad, &[b, 1, l, s])
            .logical_and(causal_mask(l, s - l, i32::MAX))
            .unwrap();
        let cases = [
            (AttnMask::None, None),
            (
                AttnMask::Causal,
                Some(ScaledDotProductAttentionMask::Causal),
            ),
            (
                AttnMask::Array(arr.clone()),
                Some(ScaledDotProductAttentionMask::Array(&arr)),
            ),
        ];
        for (mask, fused_mask) in cases {
            let want =
                fast::scaled_dot_product_attention(&q, &k, &v, 0.125, fused_mask, None).unwrap();
            let got = attention(&q, &k, &v, 0.125, &mask).unwrap();
            let diff = want
                .subtract(&got)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap();
            let diff = diff.try_item_exact::<f32>().unwrap();
            assert!(diff < 1e-5, "max difference {diff}");
        }
    }
}
