//! kooka's CUDA kernels against MLX's ops on the GPU: the batched decode attention
//! (`model::cuda::decode_attention`) against MLX's masked attention computed in float32, at
//! several batch / head / key shapes, rows starting at random keys; then its time against
//! MLX's masked and unmasked attention (32 calls per evaluation, median of 10). Then the
//! few-rows 4-bit matmul (`model::cuda::qmm_small`) against the float32 product of the
//! dequantized matrix, and its time against MLX's `quantized_matmul` over 32 distinct
//! 14336x4096 matrices (an 8B model's layers: read from memory, not cache). Exits non-zero
//! if any error exceeds the tolerance. Run on the GPU machine (it refuses the CPU).
//!
//! usage: cuda_kernels
use std::time::Instant;

use kooka::model::cuda::{decode_attention, qmm_small};
use kooka::model::slicing::slice_axis;
use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::{random, transforms, Array, Dtype};

struct Case {
    b: i32,
    h: i32,
    kvh: i32,
    d: i32,
    keys: i32,
    dtype: Dtype,
}

/// q `[B, H, 1, D]`; k and v as the first `keys` positions of a longer buffer (as the cache
/// hands them over); row starts, the last row at 0; the boolean mask they make.
fn inputs(c: &Case, seed: u64) -> anyhow::Result<(Array, Array, Array, Array, Array)> {
    let part = |i: u64| random::key(seed * 4 + i);
    let normal = |shape: &[i32], i| -> anyhow::Result<Array> {
        Ok(random::normal::<f32>(shape, None, None, Some(&part(i)?))?.as_dtype(c.dtype)?)
    };
    let cap = c.keys + 256;
    let q = normal(&[c.b, c.h, 1, c.d], 0)?;
    let k = slice_axis(&normal(&[c.b, c.kvh, cap, c.d], 1)?, 2, 0, c.keys)?;
    let v = slice_axis(&normal(&[c.b, c.kvh, cap, c.d], 2)?, 2, 0, c.keys)?;
    let starts = random::randint::<_, i32>(0, c.keys, &[c.b - 1], Some(&part(3)?))?;
    let starts = mlx_rs::ops::concatenate(&[starts, Array::from_slice(&[0i32], &[1])], 0)?;
    let j = Array::from_iter(0..c.keys, &[1, 1, 1, c.keys]);
    let mask = j.ge(&starts.reshape(&[c.b, 1, 1, 1])?)?;
    transforms::eval([&q, &k, &v, &starts, &mask])?;
    Ok((q, k, v, starts, mask))
}

fn masked(q: &Array, k: &Array, v: &Array, mask: &Array, scale: f32) -> anyhow::Result<Array> {
    Ok(scaled_dot_product_attention(
        q,
        k,
        v,
        scale,
        Some(ScaledDotProductAttentionMask::Array(mask)),
        None,
    )?)
}

fn max_abs(a: &Array, b: &Array) -> anyhow::Result<f32> {
    let d = a
        .as_dtype(Dtype::Float32)?
        .subtract(b.as_dtype(Dtype::Float32)?)?
        .abs()?
        .max(None)?;
    d.eval()?;
    Ok(d.try_item_exact::<f32>()?)
}

/// Milliseconds per call of `f(i)`, `i` in 0..32, all 32 evaluated together (median of 10).
fn timed(f: &dyn Fn(usize) -> anyhow::Result<Array>) -> anyhow::Result<f64> {
    let run = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let outs: Vec<Array> = (0..32).map(f).collect::<anyhow::Result<_>>()?;
        transforms::eval(outs.iter())?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / 32.0)
    };
    for _ in 0..3 {
        run()?;
    }
    let mut ts: Vec<f64> = (0..10).map(|_| run()).collect::<anyhow::Result<_>>()?;
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

fn main() -> anyhow::Result<()> {
    use Dtype::{Bfloat16 as BF16, Float16 as F16, Float32 as F32};
    let case = |b, h, kvh, d, keys, dtype| Case {
        b,
        h,
        kvh,
        d,
        keys,
        dtype,
    };
    let cases = [
        case(32, 32, 8, 128, 640, BF16),
        case(8, 32, 8, 128, 1000, BF16),
        case(2, 32, 8, 128, 4100, BF16),
        case(3, 14, 2, 64, 300, BF16),
        case(5, 16, 16, 64, 70, F16),
        case(4, 24, 4, 128, 129, F32),
        case(2, 64, 4, 128, 33, BF16),
        case(6, 8, 1, 256, 500, BF16),
    ];
    let mut worst_excess = 0.0f32;
    println!("| B | H | KVH | D | keys | dtype | kernel vs f32 | MLX masked vs f32 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, c) in cases.iter().enumerate() {
        let (q, k, v, starts, mask) = inputs(c, 7 + i as u64)?;
        anyhow::ensure!(
            decode_attention::applies(&q, &k, &v),
            "the kernel does not apply here (a CPU device, or KOOKA_DECODE_ATTENTION=mlx?)"
        );
        let scale = (c.d as f32).powf(-0.5);
        let f32s = |a: &Array| a.as_dtype(F32);
        let want = masked(&f32s(&q)?, &f32s(&k)?, &f32s(&v)?, &mask, scale)?;
        let got = decode_attention::attention(&q, &k, &v, scale, &starts)?;
        anyhow::ensure!(
            got.shape() == q.shape() && got.dtype() == q.dtype(),
            "shape or type"
        );
        let mlx = masked(&q, &k, &v, &mask, scale)?;
        let (e_got, e_mlx) = (max_abs(&got, &want)?, max_abs(&mlx, &want)?);
        println!(
            "| {} | {} | {} | {} | {} | {:?} | {e_got:.2e} | {e_mlx:.2e} |",
            c.b, c.h, c.kvh, c.d, c.keys, c.dtype
        );
        // The kernel accumulates in float32: it may not be worse than MLX's own rounding
        // (plus one unit of the type's precision at these magnitudes).
        let unit = match c.dtype {
            BF16 => 1.0 / 128.0,
            F16 => 1.0 / 1024.0,
            _ => 1e-5,
        };
        worst_excess = worst_excess.max(e_got - e_mlx.max(unit));
    }
    println!("\n| B | keys | kernel ms | MLX masked ms | MLX unmasked ms |");
    println!("|---|---|---|---|---|");
    for (b, keys) in [(1, 640), (8, 640), (32, 640), (32, 2048), (8, 8192)] {
        let c = case(b, 32, 8, 128, keys, BF16);
        let (q, k, v, starts, mask) = inputs(&c, 99)?;
        let s = 128f32.powf(-0.5);
        let kernel = timed(&|_| Ok(decode_attention::attention(&q, &k, &v, s, &starts)?))?;
        let with_mask = timed(&|_| masked(&q, &k, &v, &mask, s))?;
        let plain = timed(&|_| Ok(scaled_dot_product_attention(&q, &k, &v, s, None, None)?))?;
        println!("| {b} | {keys} | {kernel:.4} | {with_mask:.4} | {plain:.4} |");
    }
    anyhow::ensure!(
        worst_excess <= 0.0,
        "the attention kernel is off by {worst_excess:e} more than MLX"
    );
    qmm()?;
    println!("\nparity ok");
    Ok(())
}

/// A random packed matrix `[n, k]`: (w, scales, biases, the dequantized float32 matrix).
fn packed(n: i32, k: i32, group: i32, dtype: Dtype, seed: u64) -> anyhow::Result<[Array; 4]> {
    let w =
        random::normal::<f32>(&[n, k], None, None, Some(&random::key(seed)?))?.as_dtype(dtype)?;
    let (q, s, b) = mlx_rs::ops::quantize(&w, group, 4)?;
    let dense = mlx_rs::ops::dequantize(&q, &s, &b, group, 4)?.as_dtype(Dtype::Float32)?;
    transforms::eval([&q, &s, &b, &dense])?;
    Ok([q, s, b, dense])
}

fn qmm() -> anyhow::Result<()> {
    use Dtype::{Bfloat16 as BF16, Float16 as F16, Float32 as F32};
    println!("\n| M | N | K | group | dtype | kernel vs f32 | MLX vs f32 |");
    println!("|---|---|---|---|---|---|---|");
    let mut worst_excess = 0.0f32;
    let cases = [
        (1, 4096, 4096, 64, BF16),
        (2, 6144, 4096, 64, BF16),
        (3, 100, 192, 64, BF16),
        (8, 4096, 14336, 64, BF16),
        (17, 2048, 512, 32, F16),
        (32, 28672, 4096, 64, BF16),
        (5, 96, 256, 128, F32),
        (32, 4096, 4096, 128, BF16),
    ];
    for (i, &(m, n, k, group, dtype)) in cases.iter().enumerate() {
        let [q, s, b, dense] = packed(n, k, group, dtype, 50 + i as u64)?;
        let x = random::normal::<f32>(&[1, m, k], None, None, Some(&random::key(70 + i as u64)?))?
            .as_dtype(dtype)?;
        anyhow::ensure!(
            qmm_small::applies(&x, &q, &s, 4, group),
            "qmm_small does not apply (it is off unless KOOKA_QMM_ROWS=1-32)"
        );
        let want = x.as_dtype(F32)?.matmul(dense.t())?;
        let got = qmm_small::matmul_t(&x, &q, &s, &b, group)?;
        anyhow::ensure!(
            got.shape() == [1, m, n] && got.dtype() == dtype,
            "shape or type"
        );
        let mlx = mlx_rs::ops::quantized_matmul(&x, &q, &s, &b, true, group, 4)?;
        let (e_got, e_mlx) = (max_abs(&got, &want)?, max_abs(&mlx, &want)?);
        println!("| {m} | {n} | {k} | {group} | {dtype:?} | {e_got:.2e} | {e_mlx:.2e} |");
        // Outputs are sums of thousands of products: a few units of the type's precision.
        let scale = want.abs()?.max(None)?.try_item_exact::<f32>()?;
        let unit = match dtype {
            BF16 => scale / 128.0,
            F16 => scale / 1024.0,
            _ => scale * 1e-5,
        };
        worst_excess = worst_excess.max(e_got - e_mlx.max(unit));
    }
    anyhow::ensure!(
        worst_excess <= 0.0,
        "qmm_small is off by {worst_excess:e} more than MLX"
    );
    // Time: 32 distinct matrices, as a decode step's layers.
    let layers: Vec<[Array; 4]> = (0..32)
        .map(|i| packed(14336, 4096, 64, BF16, 200 + i))
        .collect::<anyhow::Result<_>>()?;
    println!("\n| M | kernel ms / matrix | MLX ms / matrix | kernel GB/s |");
    println!("|---|---|---|---|");
    let bytes = 14336.0 * 4096.0 * (0.5 + 4.0 / 64.0);
    for m in [1, 2, 4, 8, 16, 32] {
        let x = random::normal::<f32>(&[1, m, 4096], None, None, Some(&random::key(9)?))?
            .as_dtype(BF16)?;
        x.eval()?;
        let ours = timed(&|i| {
            let [q, s, b, _] = &layers[i];
            Ok(qmm_small::matmul_t(&x, q, s, b, 64)?)
        })?;
        let theirs = timed(&|i| {
            let [q, s, b, _] = &layers[i];
            Ok(mlx_rs::ops::quantized_matmul(&x, q, s, b, true, 64, 4)?)
        })?;
        println!(
            "| {m} | {ours:.4} | {theirs:.4} | {:.0} |",
            bytes / ours / 1e6
        );
    }
    Ok(())
}
