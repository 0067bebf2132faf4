//! Quantized matrix-vector products for a few rows on a CUDA GPU: decode's linear layers.
//!
//! A batch-1 decode step of an 8B 4-bit model spends most of its time in MLX's 4-bit
//! matrix-vector kernel, which reads the weights at ~800 GB/s on an H100 (a quarter of its
//! memory's speed; `scripts/gpu/decode_bound.py`), and MLX multiplies 2-7 rows as that many
//! matrix-vector products. `qmv.cu` streams each row of the packed matrix once for all rows,
//! with whole 16-byte loads per lane and several in flight: see the kernel's comment.
//!
//! The kernel can also take a linear's neighbours in a decode step ([`Folded`]: the RMSNorm
//! before it, SwiGLU and the residual addition after it), each one kernel fewer per layer.

use std::cell::OnceCell;
use std::sync::OnceLock;

use mlx_rs::{Array, Dtype};

use super::kernel::{Constant, CudaKernel, Launch};
use crate::model::cache::Positions;
use crate::model::error::{ModelError, Result};
use crate::model::layers::{Folded, RopeFold};
use crate::model::rope::KernelFreqs;

const SOURCE: &str = include_str!("qmv.cu");

/// The most rows of `x` the kernel takes (its `TM`).
pub const MAX_ROWS: i32 = 8;

/// 1-3 rows: on an H100, 8B 4-bit, batch-1 decode 197.5 / 225.3 tokens/s against 171.0 / 171.6
/// with MLX's kernel, and 2-4 rows read at 1.6-2x MLX's rate (PERFORMANCE "GPU decode at batch
/// 1"); from 4 rows
/// the batch is padded to 8 for MLX's GEMM, which reads faster still.
const DEFAULT_ROWS: Option<(i32, i32)> = Some((1, 3));

/// Matrices of fewer values keep MLX's kernel: on an H100 kooka's read a 4096x4096 4-bit
/// matrix no faster (576-642 against 673 GB/s) and a 6144x4096 one about as fast (774 against
/// 712), while each call of a custom kernel costs the host more than one of MLX's own, which is
/// what bounds the decode of small or sparse (MoE) models. 28672x4096: 1,406 against 945.
pub const MIN_VALUES: i64 = 32 << 20;

/// How the kernel splits the work: rows of W per warp, warps per block, 16-byte loads in
/// flight per row, whether 4-bit values are unpacked with the exponent trick, the most
/// blocks launched (0: one per `warps * rows_per_warp` outputs; fewer: each warp goes on to
/// further rows, its next loads in flight while it multiplies), and whether each block stages
/// x in shared memory first (4-bit, 16-bit x, the trick, x within [`STAGE_SHARED_BYTES`];
/// elsewhere ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    pub rows_per_warp: i32,
    pub warps: i32,
    pub unroll: i32,
    pub trick: bool,
    pub max_blocks: i32,
    pub stage: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            rows_per_warp: 1,
            warps: 8,
            unroll: 4,
            trick: true,
            max_blocks: 0,
            stage: false,
        }
    }
}

impl Tuning {
    /// Folded calls: two loads in flight a row, not four. With SwiGLU a warp streams two rows
    /// (gate and up), and four loads each, double-buffered, cost it occupancy: 8B 4-bit batch-1
    /// decode on an H100 227.9-232.6 tokens/s against 205.0-206.9 with the default.
    pub fn folded() -> Self {
        Tuning {
            unroll: 2,
            ..Tuning::default()
        }
    }
}

/// Whether the folds are on unless `KOOKA_QMV_FOLD` (`0` or `1`) says: on an H100 the 8B
/// 4-bit batch-1 decode went from 184.7-224.4 tokens/s unfolded to 227.9-232.6 folded, and
/// greedy tokens stay mlx-lm's (SmolLM2-135M shape, 32/32). PERFORMANCE "Folding".
const FOLD_BY_DEFAULT: bool = true;

/// The fewest values of a matrix that takes folds (`KOOKA_QMV_FOLD_MIN_VALUES` for
/// measuring): an 8B model's q/k/v and output projections and up; not a 135M model's, whose
/// decode is bound by the host, to which each custom kernel costs more than MLX's own
/// (SmolLM2-135M shape, H100: 181.0 tokens/s folded against 198.1, one run each).
pub const FOLD_MIN_VALUES: i64 = 16 << 20;

/// The most bytes of normalized x a block keeps in shared memory (`QMV_NORM`): rows of x
/// (rounded up to a power of two) times K times the type's size.
const NORM_SHARED_BYTES: i64 = 32 << 10;

/// The most bytes of staged x a block keeps in shared memory ([`Tuning::stage`], see
/// [`staged_bytes`]); MLX's kernels get at most 48 KiB of static shared memory.
pub const STAGE_SHARED_BYTES: i64 = 40 << 10;

/// Shared memory of `tm` staged rows of `k` values: the floats in whole passes of 32 chunks of
/// 32, and two sums a chunk.
fn staged_bytes(tm: i32, k: i32) -> i64 {
    let passes = (k as i64 / 32 + 31) / 32;
    tm as i64 * passes * 32 * (32 + 2) * 4
}

/// Whether a call with `tuning` stages x ([`Tuning::stage`]): 4-bit, the trick, 16-bit x,
/// `tm` rows of `k` values within [`STAGE_SHARED_BYTES`].
fn stages(tuning: &Tuning, x: Dtype, bits: i32, tm: i32, k: i32) -> bool {
    tuning.stage
        && tuning.trick
        && bits == 4
        && matches!(x, Dtype::Bfloat16 | Dtype::Float16)
        && staged_bytes(tm, k) <= STAGE_SHARED_BYTES
}

thread_local! {
    /// One kernel per combination of folds (index: norm 1, glu 2, residual 4, RoPE 8, RoPE
    /// with per-pair frequencies 16), made on first use: MLX compiles and caches each under
    /// its own name.
    static KERNELS: [OnceCell<CudaKernel>; 32] = Default::default();
}

/// Runs `f` with the kernel for `folded`'s combination.
fn with_kernel<R>(folded: &Folded, f: impl FnOnce(&CudaKernel) -> R) -> R {
    let (norm, glu, res) = (folded.norm.is_some(), folded.glu, folded.residual.is_some());
    let rope = folded.rope.is_some();
    let freqs = folded
        .rope
        .is_some_and(|r| matches!(r.rope.kernel_freqs(), Some((KernelFreqs::PerPair(_), _))));
    let index = norm as usize
        | (glu as usize) << 1
        | (res as usize) << 2
        | (rope as usize) << 3
        | (freqs as usize) << 4;
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
            ] {
                if on {
                    name.push_str(suffix);
                    header.push_str(&format!("#define {define} 1\n"));
                    inputs.extend(input);
                }
            }
            CudaKernel::new(&name, &inputs, &["y"], SOURCE, &header, true)
        });
        f(kernel)
    })
}

/// The rows of `x` this kernel takes on a CUDA device: `KOOKA_QMV_ROWS` as `LO-HI` (up to
/// [`MAX_ROWS`]; `0` for none), else [`DEFAULT_ROWS`]; none elsewhere. Decided once per
/// process.
fn rows() -> Option<(i32, i32)> {
    static ROWS: OnceLock<Option<(i32, i32)>> = OnceLock::new();
    *ROWS.get_or_init(|| {
        if !cfg!(target_os = "linux") || crate::model::default_device_is_cpu() {
            return None;
        }
        match std::env::var("KOOKA_QMV_ROWS") {
            Err(_) => DEFAULT_ROWS,
            Ok(v) => parse_rows(&v),
        }
    })
}

fn parse_rows(v: &str) -> Option<(i32, i32)> {
    let (lo, hi) = v.trim().split_once('-')?;
    let (lo, hi) = (lo.parse::<i32>().ok()?, hi.parse::<i32>().ok()?);
    (1 <= lo && lo <= hi).then_some((lo, hi.min(MAX_ROWS)))
}

/// Whether the kernel takes `x` (`[..., K]`) times packed `w` (uint32 `[N, K*bits/32]`,
/// affine, groups of `group` with float `scales` and biases): a CUDA device, rows in
/// [`rows`]' range, float types, 4 or 8 bits, `K` a multiple of a 16-byte load's values,
/// groups of 32, 64 or 128, at least [`min_values`] values.
pub fn applies(x: &Array, w: &Array, scales: &Array, bits: i32, group: i32) -> bool {
    rows().is_some_and(|range| fits(x, w, scales, bits, group, range, min_values()))
}

/// Whether the kernel takes `x` times `w` with `folded`'s neighbours: as [`applies`], but
/// from [`FOLD_MIN_VALUES`] (a fold saves a whole kernel, more than the kernel loses to MLX's
/// on a 4096x4096 matrix), and only while folding is on ([`FOLD_BY_DEFAULT`]); the norm's
/// weight in x's type over K, x's normalized rows within [`NORM_SHARED_BYTES`]; for SwiGLU,
/// an even number of rows; the residual in x's type and the output's shape; for RoPE, see
/// [`rope_fits`].
pub fn applies_folded(
    x: &Array,
    w: &Array,
    scales: &Array,
    bits: i32,
    group: i32,
    folded: &Folded,
) -> bool {
    static FOLD: OnceLock<Option<i64>> = OnceLock::new();
    let floor = *FOLD.get_or_init(|| {
        let on = std::env::var("KOOKA_QMV_FOLD").map_or(FOLD_BY_DEFAULT, |v| v.trim() != "0");
        let floor = std::env::var("KOOKA_QMV_FOLD_MIN_VALUES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(FOLD_MIN_VALUES);
        on.then_some(floor)
    });
    floor.is_some_and(|min| {
        rows().is_some_and(|range| fits(x, w, scales, bits, group, range, min))
            && folds_fit(x, w, folded)
    })
}

fn folds_fit(x: &Array, w: &Array, folded: &Folded) -> bool {
    let xs = x.shape();
    let k = xs[xs.len() - 1];
    let m = x.size() as i64 / k as i64;
    let n = w.shape()[0];
    let out = if folded.glu { n / 2 } else { n };
    let norm_fits = folded.norm.is_none_or(|norm| {
        let tm = (m as u64).next_power_of_two() as i64;
        norm.weight.dtype() == x.dtype()
            && norm.weight.shape() == [k]
            && tm * k as i64 * x.item_size() as i64 <= NORM_SHARED_BYTES
    });
    let res_fits = folded.residual.is_none_or(|r| {
        r.dtype() == x.dtype()
            && r.size() as i64 == m * out as i64
            && r.shape().last() == Some(&out)
    });
    let rope_fits = folded
        .rope
        .is_none_or(|r| !folded.glu && folded.residual.is_none() && rope_fits(&r, xs, n));
    norm_fits && res_fits && rope_fits && (!folded.glu || n % 2 == 0)
}

/// Whether the kernel rotates `r`'s heads of a product of `x` (shape `xs`) into `n` outputs
/// as MLX's RoPE would: all of each head rotated (MLX's `dims` = the head's), whole heads,
/// frequencies MLX's kernel takes (float32, one per pair), one position per row of x (a
/// decode step) and the positions one or one per row (int32).
fn rope_fits(r: &RopeFold, xs: &[i32], n: i32) -> bool {
    let hd = r.head_dim;
    let rows: i32 = xs[..xs.len() - 1].iter().product();
    let freqs_fit = match r.rope.kernel_freqs() {
        Some((KernelFreqs::Log2Base(_), _)) => true,
        Some((KernelFreqs::PerPair(f), _)) => f.dtype() == Dtype::Float32 && f.shape() == [hd / 2],
        None => false,
    };
    let positions_fit = match r.positions {
        Positions::Same(_) => true,
        Positions::PerRow(p) => p.dtype() == Dtype::Int32 && p.shape() == [rows],
    };
    hd > 0
        && hd % 2 == 0
        && n % hd == 0
        && (0..=n / hd).contains(&r.rotated_heads)
        && r.rope.dims == hd
        && xs.len() >= 2
        && xs[xs.len() - 2] == 1
        && freqs_fit
        && positions_fit
}

/// The fewest values of a matrix the kernel takes: `KOOKA_QMV_MIN_VALUES` (for measuring),
/// else [`MIN_VALUES`].
fn min_values() -> i64 {
    static MIN: OnceLock<i64> = OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("KOOKA_QMV_MIN_VALUES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(MIN_VALUES)
    })
}

fn fits(
    x: &Array,
    w: &Array,
    scales: &Array,
    bits: i32,
    group: i32,
    (lo, hi): (i32, i32),
    min_values: i64,
) -> bool {
    let (xs, ws) = (x.shape(), w.shape());
    let Some((&k, lead)) = xs.split_last() else {
        return false;
    };
    let m: i32 = lead.iter().product();
    let float = |d: Dtype| matches!(d, Dtype::Bfloat16 | Dtype::Float16 | Dtype::Float32);
    matches!(bits, 4 | 8)
        && matches!(group, 32 | 64 | 128)
        && (lo..=hi).contains(&m)
        && float(x.dtype())
        && float(scales.dtype())
        && w.dtype() == Dtype::Uint32
        && ws.len() == 2
        && k % (128 / bits) == 0
        && ws[1] * 32 == k * bits
        && ws[0] as i64 * k as i64 >= min_values
        && scales.shape() == [ws[0], k / group]
}

/// The tuning [`matmul_t`] uses (`folded`: for a call with folds): `KOOKA_QMV_TUNING` as
/// `rows_per_warp,warps,unroll,trick[,max_blocks]` (for measuring), else the default (folded:
/// [`Tuning::folded`]).
fn tuning(folded: bool) -> Tuning {
    static TUNING: OnceLock<Option<Tuning>> = OnceLock::new();
    let set = TUNING.get_or_init(|| {
        std::env::var("KOOKA_QMV_TUNING")
            .ok()
            .and_then(|v| parse_tuning(&v))
    });
    match (set, folded) {
        (Some(t), _) => *t,
        (None, false) => Tuning::default(),
        (None, true) => Tuning::folded(),
    }
}

/// `rows_per_warp,warps,unroll,trick[,max_blocks[,stage]]` (trick and stage 0 or 1), as
/// `KOOKA_QMV_TUNING` takes it.
pub fn parse_tuning(v: &str) -> Option<Tuning> {
    let n: Vec<i32> = v
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    let (rows_per_warp, warps, unroll, trick, max_blocks, stage) = match n[..] {
        [r, w, u, t] => (r, w, u, t, 0, 0),
        [r, w, u, t, b] => (r, w, u, t, b, 0),
        [r, w, u, t, b, s] => (r, w, u, t, b, s),
        _ => return None,
    };
    let ok = (1..=8).contains(&rows_per_warp)
        && (1..=32).contains(&warps)
        && (1..=16).contains(&unroll)
        && max_blocks >= 0;
    ok.then_some(Tuning {
        rows_per_warp,
        warps,
        unroll,
        trick: trick != 0,
        max_blocks,
        stage: stage != 0,
    })
}

/// `residual + glu(norm(x) @ dequantize(w)^T)`, as much of it as `folded` holds (none: as
/// [`applies`] says; some: as [`applies_folded`] says), with the default [`Tuning`] (folded:
/// [`Tuning::folded`]); `[..., N]` (`N / 2` with SwiGLU) in `x`'s type.
pub fn matmul_t(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    bits: i32,
    group: i32,
    folded: &Folded,
) -> Result<Array> {
    let tuning = tuning(!folded.is_empty());
    matmul_t_tuned(x, w, scales, biases, bits, group, tuning, folded)
}

/// [`matmul_t`] with an explicit [`Tuning`] (for `examples/cuda_kernels`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_tuned(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    bits: i32,
    group: i32,
    tuning: Tuning,
    folded: &Folded,
) -> Result<Array> {
    let xs = x.shape();
    let k = xs[xs.len() - 1];
    let m = x.size() as i32 / k;
    let n = w.shape()[0];
    let out = if folded.glu { n / 2 } else { n };
    // What a warp computes: an output, or with SwiGLU or RoPE a pair of rows.
    let items = if folded.glu || folded.rope.is_some() {
        n / 2
    } else {
        n
    };
    let tm = (m as u32).next_power_of_two() as i32;
    let Tuning {
        rows_per_warp: rpw,
        warps,
        unroll,
        trick,
        max_blocks,
        ..
    } = tuning;
    let stage = stages(&tuning, x.dtype(), bits, tm, k);
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
    ];
    let x2 = x.reshape(&[m, k])?;
    let mut inputs = vec![&x2, w, scales, biases];
    if let Some(norm) = folded.norm {
        constants.push(("EPS_BITS", Constant::Int(norm.eps.to_bits() as i32)));
        inputs.push(&norm.weight);
    }
    inputs.extend(folded.residual);
    let (positions, freqs);
    if let Some(r) = &folded.rope {
        let (kind, scale) = r.rope.kernel_freqs().ok_or_else(|| {
            ModelError::Request("qmv: RoPE folded where the kernel cannot take it".into())
        })?;
        constants.push(("HD", Constant::Int(r.head_dim)));
        constants.push(("RH", Constant::Int(r.rotated_heads)));
        constants.push(("TRAD", Constant::Int(r.rope.traditional as i32)));
        constants.push(("SCALE_BITS", Constant::Int(scale.to_bits() as i32)));
        positions = match r.positions {
            Positions::Same(p) => Array::from_slice(&[*p], &[1]),
            Positions::PerRow(p) => p.clone(),
        };
        inputs.push(&positions);
        match kind {
            KernelFreqs::Log2Base(b) => {
                constants.push(("BASE_BITS", Constant::Int(b.to_bits() as i32)))
            }
            KernelFreqs::PerPair(f) => {
                freqs = f.clone();
                inputs.push(&freqs);
            }
        }
    }
    let per_block = rpw * warps;
    let mut blocks = (items + per_block - 1) / per_block;
    if max_blocks > 0 {
        blocks = blocks.min(max_blocks);
    }
    let y = with_kernel(folded, |kernel| {
        kernel.apply(
            &inputs,
            &Launch {
                outputs: vec![(vec![m, out], x.dtype())],
                grid: [blocks * 32 * warps, 1, 1],
                group: [32 * warps, 1, 1],
                constants: &constants,
            },
        )
    })?;
    let mut shape = xs.to_vec();
    *shape.last_mut().expect("x has a last axis") = out;
    Ok(y[0].reshape(&shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_off_on_the_cpu() {
        let x = mlx_rs::ops::zeros::<f32>(&[1, 1, 64]).unwrap();
        let m = mlx_rs::ops::zeros::<f32>(&[32, 64]).unwrap();
        let (w, s, _) = mlx_rs::ops::quantize(m, 64, 4).unwrap();
        assert!(!applies(&x, &w, &s, 4, 64));
    }

    #[test]
    fn shapes_and_rows_it_takes() {
        let x = |m: i32, k: i32| mlx_rs::ops::zeros::<f32>(&[1, m, k]).unwrap();
        let packed = |n: i32, k: i32, bits: i32, group: i32| {
            let m = mlx_rs::ops::zeros::<f32>(&[n, k]).unwrap();
            let (w, s, _) = mlx_rs::ops::quantize(m, group, bits).unwrap();
            (w, s)
        };
        // (rows of x, x's K, matrix K, bits, group, rows taken, fewest values, takes it, why)
        #[rustfmt::skip]
        let cases = [
            (1, 256, 256, 4, 64, (1, 1), 0, true, "one row"),
            (2, 256, 256, 4, 64, (1, 1), 0, false, "two rows, one taken"),
            (2, 256, 256, 4, 64, (1, 8), 0, true, "two rows of 1-8"),
            (1, 128, 256, 4, 64, (1, 1), 0, false, "K must match the matrix"),
            (1, 256, 256, 8, 32, (1, 1), 0, true, "8 bits"),
            (1, 256, 256, 2, 64, (1, 1), 0, false, "2 bits is MLX's"),
            (1, 96, 96, 8, 32, (1, 1), 0, true, "K of 96: six 16-byte loads at 8 bits"),
            (1, 96, 96, 4, 32, (1, 1), 0, true, "K of 96: three at 4 bits"),
            (1, 96, 96, 4, 32, (1, 1), MIN_VALUES, false, "small: MLX's kernel"),
        ];
        for (m, xk, k, bits, group, rows, min, want, why) in cases {
            let (w, s) = packed(16, k, bits, group);
            assert_eq!(
                fits(&x(m, xk), &w, &s, bits, group, rows, min),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn folds_it_takes() {
        use crate::model::layers::RmsNorm;
        let bf16 = |shape: &[i32]| {
            mlx_rs::ops::zeros::<f32>(shape)
                .unwrap()
                .as_dtype(Dtype::Bfloat16)
                .unwrap()
        };
        let (x, w) = (bf16(&[1, 1, 4096]), bf16(&[6, 4096 / 8]));
        let norm = |k: i32, dtype: Dtype| RmsNorm {
            weight: bf16(&[k]).as_dtype(dtype).unwrap(),
            eps: 1e-5,
        };
        let (good, short, f32_norm) = (
            norm(4096, Dtype::Bfloat16),
            norm(2048, Dtype::Bfloat16),
            norm(4096, Dtype::Float32),
        );
        let (res, half_res) = (bf16(&[1, 1, 6]), bf16(&[1, 1, 3]));
        fn folded<'a>(
            norm: Option<&'a RmsNorm>,
            glu: bool,
            residual: Option<&'a Array>,
        ) -> Folded<'a> {
            Folded {
                norm,
                glu,
                residual,
                rope: None,
            }
        }
        #[rustfmt::skip]
        let cases = [
            (folded(Some(&good), false, None), true, "the norm"),
            (folded(Some(&short), false, None), false, "a norm over another K"),
            (folded(Some(&f32_norm), false, None), false, "a norm in another type"),
            (folded(None, true, Some(&half_res)), true, "SwiGLU halves the outputs"),
            (folded(None, true, Some(&res)), false, "the residual must match the outputs"),
            (folded(Some(&good), true, Some(&half_res)), true, "all three"),
        ];
        for (f, want, why) in cases {
            assert_eq!(folds_fit(&x, &w, &f), want, "{why}");
        }
        let odd = bf16(&[5, 4096 / 8]);
        assert!(!folds_fit(&x, &odd, &folded(None, true, None)), "odd rows");
        // 8 rows of x normalized: 8 * 4096 * 2 bytes, past the shared memory a block keeps.
        let x8 = bf16(&[1, 8, 4096]);
        assert!(!folds_fit(&x8, &w, &folded(Some(&good), false, None)));
    }

    #[test]
    fn x_is_staged_where_it_fits() {
        let staged = Tuning {
            stage: true,
            ..Tuning::default()
        };
        // Llama-8B's K of 4096: 128 chunks, one row 17 KiB, two 34 KiB; its 14336: 61 KiB.
        assert_eq!(staged_bytes(1, 4096), 4 * 32 * 34 * 4);
        assert!(stages(&staged, Dtype::Bfloat16, 4, 1, 4096));
        assert!(stages(&staged, Dtype::Float16, 4, 2, 4096));
        assert!(!stages(&staged, Dtype::Bfloat16, 4, 4, 4096), "four rows");
        assert!(!stages(&staged, Dtype::Bfloat16, 4, 1, 14336), "K of 14336");
        assert!(!stages(&staged, Dtype::Float32, 4, 1, 4096), "float32 x");
        assert!(!stages(&staged, Dtype::Bfloat16, 8, 1, 4096), "8 bits");
        let exact = Tuning {
            trick: false,
            ..staged
        };
        assert!(
            !stages(&exact, Dtype::Bfloat16, 4, 1, 4096),
            "without the trick"
        );
        assert!(!stages(&Tuning::default(), Dtype::Bfloat16, 4, 1, 4096));
        // SmolLM2's K of 576: 18 chunks, one pass of 32.
        assert_eq!(staged_bytes(3, 576), 3 * 32 * 34 * 4);
    }

    #[test]
    fn rows_from_the_environment() {
        assert_eq!(parse_rows("1-4"), Some((1, 4)));
        assert_eq!(parse_rows("2-32"), Some((2, MAX_ROWS)));
        assert_eq!(parse_rows("0"), None);
        assert_eq!(parse_rows("3-1"), None);
        let t = parse_tuning("2,4,8,0").unwrap();
        assert_eq!(
            (t.rows_per_warp, t.warps, t.unroll, t.trick),
            (2, 4, 8, false)
        );
        assert_eq!(parse_tuning("2,4,8"), None);
        assert_eq!(parse_tuning("1,8,4,1,528").unwrap().max_blocks, 528);
        assert!(parse_tuning("1,8,2,1,528,1").unwrap().stage);
        assert!(!parse_tuning("1,8,2,1,528").unwrap().stage);
        assert_eq!(parse_tuning("1,8,2,1,528,1,0"), None);
        assert_eq!(parse_tuning("1,8,4,1,-1"), None);
        assert_eq!(parse_tuning("0,4,8,1"), None);
    }
}
