//! A 4-bit matmul for a few rows on a CUDA GPU: a decode batch's linear layers.
//!
//! MLX's CUDA backend multiplies one row by a packed matrix with a matrix-vector kernel, 2-7
//! rows as that many matrix-vector products, and 8 or more with a tiled GEMM; on an H200 an
//! 8B 4-bit model's decode step took 5.8 ms for one row, 14.8 ms for 8 and 25.8 ms for 32,
//! while reading its 4.5 GB of weights once takes ~1 ms. `qmm_small.cu` reads each packed
//! column once for all rows (up to 32): see the kernel's comment.

use std::sync::OnceLock;

use mlx_rs::{Array, Dtype};

use super::kernel::{Constant, CudaKernel, Launch};
use crate::model::error::Result;

const SOURCE: &str = include_str!("qmm_small.cu");

/// Warps of a block, each taking every `WARPS`-th chunk of 64 inputs.
const WARPS: i32 = 8;
/// The most rows a thread holds (the largest `TM`).
const MAX_ROWS: i32 = 32;
/// Off: on an H200 it decodes at about half the speed of MLX's own kernels (8B 4-bit, batch 1:
/// 94 vs 169 tokens/s; batch 32: 605 vs 1,232; PERFORMANCE "Kernels for the batch");
/// `KOOKA_QMM_ROWS=1-32` turns it on for work on it.
const DEFAULT_ROWS: Option<(i32, i32)> = None;

thread_local! {
    static KERNEL: CudaKernel = CudaKernel::new(
        "kooka_qmm_small",
        &["x", "w", "scales", "biases"],
        &["y"],
        SOURCE,
        true,
    );
}

/// The rows this kernel takes on a CUDA device: `KOOKA_QMM_ROWS` as `LO-HI` (up to 32), else
/// [`DEFAULT_ROWS`]; none elsewhere. Decided once per process.
fn rows() -> Option<(i32, i32)> {
    static ROWS: OnceLock<Option<(i32, i32)>> = OnceLock::new();
    *ROWS.get_or_init(|| {
        if !cfg!(target_os = "linux") || crate::model::default_device_is_cpu() {
            return None;
        }
        match std::env::var("KOOKA_QMM_ROWS") {
            Err(_) => DEFAULT_ROWS,
            Ok(v) => {
                let (lo, hi) = v.trim().split_once('-')?;
                let (lo, hi) = (lo.parse::<i32>().ok()?, hi.parse::<i32>().ok()?);
                (1 <= lo && lo <= hi).then_some((lo, hi.min(MAX_ROWS)))
            }
        }
    })
}

/// Whether the kernel takes `x` (`[..., K]`) times packed `w` (uint32 `[N, K/8]`, 4-bit
/// affine, groups of `group` with float `scales` and `biases`): a CUDA device, rows in
/// [`rows`]' range, float types, `K` a multiple of 64, groups of 32, 64 or 128.
pub fn applies(x: &Array, w: &Array, scales: &Array, bits: i32, group: i32) -> bool {
    let Some((lo, hi)) = rows() else {
        return false;
    };
    let (xs, ws) = (x.shape(), w.shape());
    let Some((&k, lead)) = xs.split_last() else {
        return false;
    };
    let m: i32 = lead.iter().product();
    let float = |d: Dtype| matches!(d, Dtype::Bfloat16 | Dtype::Float16 | Dtype::Float32);
    bits == 4
        && matches!(group, 32 | 64 | 128)
        && (lo..=hi).contains(&m)
        && float(x.dtype())
        && float(scales.dtype())
        && w.dtype() == Dtype::Uint32
        && ws.len() == 2
        && k % 64 == 0
        && ws[1] * 8 == k
        && scales.shape() == [ws[0], k / group]
}

/// `x @ dequantize(w)^T` as [`applies`] says; `[..., N]` in `x`'s type.
pub fn matmul_t(x: &Array, w: &Array, scales: &Array, biases: &Array, group: i32) -> Result<Array> {
    let xs = x.shape();
    let k = xs[xs.len() - 1];
    let m = x.size() as i32 / k;
    let n = w.shape()[0];
    let tm = (m as u32).next_power_of_two() as i32;
    let constants = [
        ("T", Constant::Type(x.dtype())),
        ("S", Constant::Type(scales.dtype())),
        ("TM", Constant::Int(tm)),
        ("GROUP", Constant::Int(group)),
        ("WARPS", Constant::Int(WARPS)),
    ];
    let x2 = x.reshape(&[m, k])?;
    let blocks = (n + 31) / 32;
    let y = KERNEL.with(|kernel| {
        kernel.apply(
            &[&x2, w, scales, biases],
            &Launch {
                outputs: vec![(vec![m, n], x.dtype())],
                grid: [blocks * 32 * WARPS, 1, 1],
                group: [32 * WARPS, 1, 1],
                constants: &constants,
            },
        )
    })?;
    let mut shape = xs.to_vec();
    *shape.last_mut().expect("x has a last axis") = n;
    Ok(y[0].reshape(&shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_off_on_the_cpu() {
        let x = mlx_rs::ops::zeros::<f32>(&[1, 2, 64]).unwrap();
        let m = mlx_rs::ops::zeros::<f32>(&[32, 64]).unwrap();
        let (w, s, _) = mlx_rs::ops::quantize(m, 64, 4).unwrap();
        assert!(!applies(&x, &w, &s, 4, 64));
    }
}
