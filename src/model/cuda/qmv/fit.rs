//! Which products the kernel takes: the rows of x, the matrix's packing and size, and the
//! neighbours it folds (each a `#define` of the kernel, see `qmv.cu`).

use std::sync::OnceLock;

use mlx_rs::{Array, Dtype};

use crate::model::cache::Positions;
use crate::model::layers::{CacheSlot, Folded, RopeFold};
use crate::model::rope::KernelFreqs;

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
        .is_none_or(|r| !folded.glu && folded.residual.is_none() && rope_fits(&r, x, n));
    norm_fits && res_fits && rope_fits && (!folded.glu || n % 2 == 0)
}

/// Whether a decode step's fused q/k/v kernel writes its k and v heads straight into the
/// layer's cache, where the kernel runs at all (`KOOKA_QMV_WRITE_CACHE=0` or `1`;
/// [`WRITE_CACHE_BY_DEFAULT`] otherwise).
pub fn writes_cache() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("KOOKA_QMV_WRITE_CACHE")
            .map_or(WRITE_CACHE_BY_DEFAULT, |v| v.trim() != "0");
        on && rows().is_some()
    })
}

/// On an H100 the 8B 4-bit batch-1 decode went from 258.2 / 251.0 to 309.5 / 309.1 tokens/s
/// (step 3.60 -> 3.21 ms, the host's `async_eval` 2.16 -> 1.66 ms: 64 cache updates fewer a
/// step), greedy tokens 32/32 and last prompt logits identical (PERFORMANCE "k and v straight
/// into the cache").
const WRITE_CACHE_BY_DEFAULT: bool = true;

/// Whether the kernel rotates `r`'s heads of a product of `x` (shape `xs`) into `n` outputs
/// as MLX's RoPE would: all of each head rotated (MLX's `dims` = the head's), whole heads, q's
/// among the rotated, frequencies MLX's kernel takes (float32, one per pair), x as `[B, 1, K]`
/// (a decode step, whose heads come out as `[B, heads, 1, head_dim]`) and the positions one
/// or one per row (int32); and a cache to write k and v into that [`slot_fits`].
fn rope_fits(r: &RopeFold, x: &Array, n: i32) -> bool {
    // `KOOKA_QMV_FOLD_ROPE=0` leaves RoPE to MLX's kernel (for measuring).
    static ON: OnceLock<bool> = OnceLock::new();
    if !*ON.get_or_init(|| std::env::var("KOOKA_QMV_FOLD_ROPE").map_or(true, |v| v.trim() != "0")) {
        return false;
    }
    let xs = x.shape();
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
        && (0..=r.rotated_heads).contains(&r.q_heads)
        && r.rope.dims == hd
        && xs.len() == 3
        && xs[1] == 1
        && freqs_fit
        && positions_fit
        && r.into_cache.is_none_or(|slot| slot_fits(&slot, r, x, n))
}

/// Whether the kernel can write the k and v heads of a product of `x` into `slot`: one
/// position for every row (`Positions::Same`) inside the buffers, which are of x's type and
/// shaped `[rows, heads, capacity, head_dim]` as the heads come out.
fn slot_fits(slot: &CacheSlot, r: &RopeFold, x: &Array, n: i32) -> bool {
    let Positions::Same(p) = *r.positions else {
        return false;
    };
    let hd = r.head_dim;
    let fits = |a: &Array, heads: i32| {
        let s = a.shape();
        a.dtype() == x.dtype()
            && s.len() == 4
            && s[0] == x.shape()[0]
            && s[1] == heads
            && (0..s[2]).contains(&p)
            && s[3] == hd
    };
    fits(slot.keys, r.rotated_heads - r.q_heads) && fits(slot.values, n / hd - r.rotated_heads)
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

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::Dtype;

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
    fn rows_from_the_environment() {
        assert_eq!(parse_rows("1-4"), Some((1, 4)));
        assert_eq!(parse_rows("2-32"), Some((2, MAX_ROWS)));
        assert_eq!(parse_rows("0"), None);
        assert_eq!(parse_rows("3-1"), None);
    }
}
