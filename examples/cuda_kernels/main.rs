//! kooka's CUDA kernels against MLX's ops on the GPU: the batched decode attention
//! (`model::cuda::decode_attention`) against MLX's masked attention computed in float32, at
//! several batch / head / key shapes, rows starting at random keys; then its time against
//! MLX's masked and unmasked attention (32 calls per evaluation, median of 10). Then the
//! few-rows quantized matrix-vector product (`model::cuda::qmv`) against the float32 product
//! of the dequantized matrix, and its speed against MLX's `quantized_matmul` on an 8B model's
//! decode shapes (distinct matrices, ~2 GB of each: read from memory, not cache) for several
//! tunings. Then the same kernel with its neighbours folded in (`folds.rs`) against the MLX
//! ops it replaces, and as a q/k/v projection that rotates its heads (`rope_fold.rs`) against
//! MLX's RoPE after it, and their times. Exits non-zero if any error exceeds the tolerance. Run on
//! the GPU machine.
//!
//! usage: cuda_kernels   (QMV_ONLY=1: only the qmv parts; FOLDS_ONLY=1: only the folds;
//! ROPE_ONLY=1: only the RoPE fold; ATTENTION_ONLY=1: only the decode attention; PARITY_ONLY=1:
//! the qmv's and the folds' parity, no timings)
use std::time::Instant;

mod folds;
mod rope_fold;

use kooka::model::cuda::{decode_attention, qmv};
use kooka::model::layers::Folded;
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
    let cap = (c.keys / 256 + 1) * 256; // a multiple of 256, as the cache's (MLX's cuDNN condition)
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

/// `w`, `scales` and `biases` (as `packed` makes them) as kooka's kernel takes them.
pub(crate) fn as_packed<'a>(
    w: &'a Array,
    scales: &'a Array,
    biases: &'a Array,
    bits: i32,
    group: i32,
) -> qmv::Packed<'a> {
    qmv::Packed {
        w,
        scales,
        biases,
        bits,
        group,
    }
}

/// `t` on the tensor cores when the run says `QMV_MMA=1` (the folds' checks then compare the
/// tensor-core path folded against the same path unfolded), with a ring of `QMV_PIPE` steps
/// where set.
pub(crate) fn mma_env(t: qmv::Tuning) -> qmv::Tuning {
    let pipe = std::env::var("QMV_PIPE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    match std::env::var("QMV_MMA").is_ok_and(|v| v.trim() == "1") {
        true => qmv::Tuning {
            mma: true,
            pipe,
            ..t
        },
        false => t,
    }
}

/// A tuning as the tables name it: rows per warp / warps / unroll / trick (t or x) / most
/// blocks, then `/s` when x is staged, `/mK` on the tensor cores with K split K ways (0: the
/// default split), `/pN` with the L2 asked N steps ahead, `/rN` with a ring of N steps.
pub(crate) fn tuning_name(t: &qmv::Tuning) -> String {
    let trick = if t.trick { "t" } else { "x" };
    let mut name = format!(
        "{}/{}/{}/{trick}/{}",
        t.rows_per_warp, t.warps, t.unroll, t.max_blocks
    );
    if t.mma {
        name += &format!("/m{}", t.k_split);
        if t.prefetch > 0 {
            name += &format!("/p{}", t.prefetch);
        }
        if t.pipe > 0 {
            name += &format!("/r{}", t.pipe);
        }
    } else if t.stage {
        name += "/s";
    }
    name
}

/// How many values of `a` and `b` differ.
pub(crate) fn count_differing(a: &Array, b: &Array) -> anyhow::Result<i32> {
    let differing = a.ne(b)?.sum(None)?.as_dtype(Dtype::Int32)?;
    Ok(differing.try_item_exact::<i32>()?)
}

/// Whether `a` and `b` hold the same values.
pub(crate) fn all_equal(a: &Array, b: &Array) -> anyhow::Result<bool> {
    Ok(count_differing(a, b)? == 0)
}

pub(crate) fn max_abs(a: &Array, b: &Array) -> anyhow::Result<f32> {
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
    timed_n(32, f)
}

/// Milliseconds per call of `f(i)`, `i` in 0..n, all n evaluated together (median of 10).
pub(crate) fn timed_n(n: usize, f: &dyn Fn(usize) -> anyhow::Result<Array>) -> anyhow::Result<f64> {
    let run = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let outs: Vec<Array> = (0..n).map(f).collect::<anyhow::Result<_>>()?;
        transforms::eval(outs.iter())?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
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
    // The float32 references must be float32: MLX's CUDA GEMM rounds through TF32 otherwise.
    std::env::set_var("MLX_ENABLE_TF32", "0");
    if std::env::var_os("ROPE_ONLY").is_some() {
        rope_fold::parity()?;
        return rope_fold::timing();
    }
    if std::env::var_os("FOLDS_ONLY").is_some() {
        folds::parity()?;
        rope_fold::parity()?;
        folds::timing()?;
        return rope_fold::timing();
    }
    if std::env::var_os("PARITY_ONLY").is_some() {
        qmv_parity()?;
        folds::parity()?;
        return rope_fold::parity();
    }
    if std::env::var_os("QMV_ONLY").is_some() {
        // the parity first, its verdict after the timings
        let parity = qmv_parity();
        qmv_timing()?;
        parity?;
        folds::parity()?;
        rope_fold::parity()?;
        folds::timing()?;
        return rope_fold::timing();
    }
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
        case(1, 32, 8, 128, 2000, BF16),
        case(5, 16, 16, 64, 70, F16),
        case(4, 24, 4, 128, 129, F32),
        case(2, 64, 4, 128, 33, BF16),
        case(6, 8, 1, 256, 500, BF16),
    ];
    let mut worst_excess = 0.0f32;
    println!(
        "| B | H | KVH | D | keys | dtype | kernel vs f32 | MLX masked vs f32 | kernel, all keys | MLX unmasked |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, c) in cases.iter().enumerate() {
        let (q, k, v, starts, mask) = inputs(c, 7 + i as u64)?;
        anyhow::ensure!(
            decode_attention::applies(&q, &k, &v),
            "the kernel does not apply here (a CPU device, or KOOKA_DECODE_ATTENTION=mlx?)"
        );
        let scale = (c.d as f32).powf(-0.5);
        let f32s = |a: &Array| a.as_dtype(F32);
        let want = masked(&f32s(&q)?, &f32s(&k)?, &f32s(&v)?, &mask, scale)?;
        let got = decode_attention::attention(&q, &k, &v, scale, Some(&starts))?;
        anyhow::ensure!(
            got.shape() == q.shape() && got.dtype() == q.dtype(),
            "shape or type"
        );
        let mlx = masked(&q, &k, &v, &mask, scale)?;
        let (e_got, e_mlx) = (max_abs(&got, &want)?, max_abs(&mlx, &want)?);
        // Every key (one sequence's step): against MLX's unmasked attention in float32.
        let want_all =
            scaled_dot_product_attention(f32s(&q)?, f32s(&k)?, f32s(&v)?, scale, None, None)?;
        let all = decode_attention::attention(&q, &k, &v, scale, None)?;
        let mlx_all = scaled_dot_product_attention(&q, &k, &v, scale, None, None)?;
        let (e_all, e_mlx_all) = (max_abs(&all, &want_all)?, max_abs(&mlx_all, &want_all)?);
        println!(
            "| {} | {} | {} | {} | {} | {:?} | {e_got:.2e} | {e_mlx:.2e} | {e_all:.2e} | {e_mlx_all:.2e} |",
            c.b, c.h, c.kvh, c.d, c.keys, c.dtype
        );
        // The kernel accumulates in float32: it may not be worse than MLX's own rounding
        // (plus one unit of the type's precision at these magnitudes).
        let unit = match c.dtype {
            BF16 => 1.0 / 128.0,
            F16 => 1.0 / 1024.0,
            _ => 1e-5,
        };
        worst_excess = worst_excess
            .max(e_got - e_mlx.max(unit))
            .max(e_all - e_mlx_all.max(unit));
    }
    println!("\n| B | keys | kernel ms | kernel, all keys ms | MLX masked ms | MLX unmasked ms |");
    println!("|---|---|---|---|---|---|");
    for (b, keys) in [
        (1, 640),
        (1, 8192),
        (1, 32768),
        (8, 640),
        (32, 640),
        (32, 2048),
        (8, 8192),
    ] {
        let c = case(b, 32, 8, 128, keys, BF16);
        let (q, k, v, starts, mask) = inputs(&c, 99)?;
        let s = 128f32.powf(-0.5);
        let kernel = timed(&|_| Ok(decode_attention::attention(&q, &k, &v, s, Some(&starts))?))?;
        let all = timed(&|_| Ok(decode_attention::attention(&q, &k, &v, s, None)?))?;
        let with_mask = timed(&|_| masked(&q, &k, &v, &mask, s))?;
        let plain = timed(&|_| Ok(scaled_dot_product_attention(&q, &k, &v, s, None, None)?))?;
        println!("| {b} | {keys} | {kernel:.4} | {all:.4} | {with_mask:.4} | {plain:.4} |");
    }
    anyhow::ensure!(
        worst_excess <= 0.0,
        "the attention kernel is off by {worst_excess:e} more than MLX"
    );
    if std::env::var_os("ATTENTION_ONLY").is_some() {
        return Ok(());
    }
    qmv_parity()?;
    qmv_timing()?;
    folds::parity()?;
    rope_fold::parity()?;
    folds::timing()?;
    rope_fold::timing()?;
    println!("\nparity ok");
    Ok(())
}

/// A random packed matrix `[n, k]`: (w, scales, biases, the dequantized matrix in float32:
/// `scale * q + bias` exactly, not rounded to the scales' type as MLX's `dequantize` does).
pub(crate) fn packed(
    n: i32,
    k: i32,
    bits: i32,
    group: i32,
    dtype: Dtype,
    seed: u64,
) -> anyhow::Result<[Array; 4]> {
    let w =
        random::normal::<f32>(&[n, k], None, None, Some(&random::key(seed)?))?.as_dtype(dtype)?;
    let (q, s, b) = mlx_rs::ops::quantize(&w, group, bits)?;
    let f32s = |a: &Array| a.as_dtype(Dtype::Float32);
    let dense = mlx_rs::ops::dequantize(&q, &f32s(&s)?, &f32s(&b)?, group, bits)?;
    transforms::eval([&q, &s, &b, &dense])?;
    Ok([q, s, b, dense])
}

/// Random packed weights without a float matrix first (for the timings: gigabytes of them).
pub(crate) fn packed_fast(n: i32, k: i32, seed: u64) -> anyhow::Result<[Array; 3]> {
    let key = random::key(seed)?;
    let q =
        random::randint::<_, i32>(0, i32::MAX, &[n, k / 8], Some(&key))?.as_dtype(Dtype::Uint32)?;
    let s = random::uniform::<_, f32>(0.0, 0.01, &[n, k / 64], Some(&key))?
        .as_dtype(Dtype::Bfloat16)?;
    let b = s.negative()?;
    transforms::eval([&q, &s, &b])?;
    Ok([q, s, b])
}

fn qmv_parity() -> anyhow::Result<()> {
    use Dtype::{Bfloat16 as BF16, Float16 as F16, Float32 as F32};
    println!("\n| M | N | K | bits | group | dtype | tuning | kernel vs f32 | MLX vs f32 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut worst_excess = 0.0f32;
    let mut staged_differ = Vec::new();
    let plain = Folded::default();
    let cases = [
        (1, 4096, 4096, 4, 64, BF16),
        (1, 6144, 4096, 4, 64, BF16),
        (1, 4096, 14336, 4, 64, BF16),
        (2, 100, 192, 4, 64, BF16),
        (3, 2048, 512, 4, 32, F16),
        (8, 4096, 4096, 4, 128, BF16),
        (5, 96, 256, 4, 128, F32),
        (1, 1000, 2048, 8, 64, BF16),
        (4, 512, 96, 8, 32, F16),
        (1, 513, 1024, 8, 128, F32),
    ];
    for (i, &(m, n, k, bits, group, dtype)) in cases.iter().enumerate() {
        let [q, s, b, dense] = packed(n, k, bits, group, dtype, 50 + i as u64)?;
        let x = random::normal::<f32>(&[1, m, k], None, None, Some(&random::key(70 + i as u64)?))?
            .as_dtype(dtype)?;
        let want = x.as_dtype(F32)?.matmul(dense.t())?;
        let mlx = mlx_rs::ops::quantized_matmul(&x, &q, &s, &b, true, group, bits)?;
        let e_mlx = max_abs(&mlx, &want)?;
        // Outputs are sums of thousands of products: a few units of the type's precision.
        let scale = want.abs()?.max(None)?.try_item_exact::<f32>()?;
        let unit = match dtype {
            BF16 => scale / 128.0,
            F16 => scale / 1024.0,
            _ => scale * 1e-5,
        };
        // exact, the trick, the trick with 3 blocks (each warp on many rows in turn), and the
        // trick with x staged (where it applies: the same sums, so the trick's outputs exactly);
        // then the tensor cores: K whole, 3 blocks, K split 2, a ring of 3 steps (alone and with 3 blocks)
        let mut trick_out = None;
        let mut mma_out = None;
        for (trick, max_blocks, stage, mma, k_split, pipe) in [
            (false, 0, false, false, 0, 0),
            (true, 0, false, false, 0, 0),
            (true, 3, false, false, 0, 0),
            (true, 0, true, false, 0, 0),
            (true, 3, true, false, 0, 0),
            (true, 0, false, true, 0, 0),
            (true, 3, false, true, 0, 0),
            (true, 0, false, true, 2, 0),
            (true, 0, false, true, 0, 3),
            (true, 3, false, true, 0, 3),
        ] {
            let base = match mma {
                true => qmv::Tuning::mma(),
                false => qmv::Tuning::default(),
            };
            let tuning = qmv::Tuning {
                trick,
                max_blocks,
                stage,
                k_split,
                pipe,
                ..base
            };
            let got = qmv::matmul_t_tuned(&x, as_packed(&q, &s, &b, bits, group), tuning, &plain)?;
            anyhow::ensure!(
                got.shape() == [1, m, n] && got.dtype() == dtype,
                "shape or type"
            );
            let e_got = max_abs(&got, &want)?;
            let name = tuning_name(&tuning);
            println!("| {m} | {n} | {k} | {bits} | {group} | {dtype:?} | {name} | {e_got:.2e} | {e_mlx:.2e} |");
            worst_excess = worst_excess.max(e_got - e_mlx.max(unit));
            // x staged: the trick's sums; the tensor cores with 3 blocks or a ring of loads: their own sums
            let same_as = match (mma, stage) {
                (true, _) if k_split == 0 && max_blocks == 0 && pipe == 0 => {
                    mma_out = Some(got);
                    continue;
                }
                (true, _) if k_split == 0 => &mma_out,
                (true, _) => continue,
                (false, false) if trick && trick_out.is_none() => {
                    trick_out = Some(got);
                    continue;
                }
                (false, true) => &trick_out,
                (false, false) => continue,
            };
            if let Some(want_same) = same_as {
                if !all_equal(&got, want_same)? {
                    staged_differ.push(format!("{m}x{n}x{k} {dtype:?} {name}"));
                }
            }
        }
    }
    anyhow::ensure!(
        worst_excess <= 0.0,
        "qmv is off by {worst_excess:e} more than MLX"
    );
    anyhow::ensure!(
        staged_differ.is_empty(),
        "staged x or blocks changed the outputs: {staged_differ:?}"
    );
    Ok(())
}

/// Times one 4-bit decode step's products (Llama-8B's shapes, distinct matrices so that they
/// come from memory) with MLX's kernel and each tuning of kooka's.
fn qmv_timing() -> anyhow::Result<()> {
    use qmv::Tuning;
    // rows per warp, warps, loads in flight, most blocks, x staged (all with the trick);
    // QMV_TUNINGS ("r,w,u,t[,b[,s]] ...") for others. The first is also timed with more rows of x.
    let tunings: Vec<Tuning> = match std::env::var("QMV_TUNINGS") {
        Ok(v) => v
            .split_whitespace()
            .map(|t| qmv::parse_tuning(t).ok_or_else(|| anyhow::anyhow!("QMV_TUNINGS: bad {t:?}")))
            .collect::<anyhow::Result<_>>()?,
        Err(_) => [
            (1, 8, 4, 0, false),
            (1, 8, 2, 0, false),
            (2, 8, 2, 0, false),
            (1, 8, 4, 528, true),
            (1, 8, 2, 528, true),
            (1, 8, 2, 1056, true),
            (2, 8, 2, 528, true),
            (2, 8, 2, 0, true),
            (2, 4, 2, 1056, true),
            (1, 4, 4, 1056, true),
        ]
        .map(|(rows_per_warp, warps, unroll, max_blocks, stage)| Tuning {
            rows_per_warp,
            warps,
            unroll,
            trick: true,
            max_blocks,
            stage,
            ..Tuning::default()
        })
        .to_vec(),
    };
    println!("\nGB/s of weights read (M = 1 unless said; MLX, then each tuning: rows per warp / warps / unroll / trick / most blocks, /s: x staged)");
    let shapes = [
        (6144, 4096),
        (4096, 4096),
        (28672, 4096),
        (4096, 14336),
        (128256, 4096),
    ];
    for (n, k) in shapes {
        let bytes = n as f64 * k as f64 * (0.5 + 4.0 / 64.0);
        let count = ((2e9 / bytes) as usize).clamp(2, 32);
        let mats: Vec<[Array; 3]> = (0..count)
            .map(|i| packed_fast(n, k, 300 + i as u64))
            .collect::<anyhow::Result<_>>()?;
        for m in [1, 2, 4, 8] {
            if m > 1 && (n, k) != (28672, 4096) {
                continue;
            }
            let x = random::normal::<f32>(&[1, m, k], None, None, Some(&random::key(9)?))?
                .as_dtype(Dtype::Bfloat16)?;
            x.eval()?;
            let gbs = |ms: f64| bytes / ms / 1e6;
            let mlx = timed_n(count, &|i| {
                let [q, s, b] = &mats[i];
                Ok(mlx_rs::ops::quantized_matmul(&x, q, s, b, true, 64, 4)?)
            })?;
            let mut line = format!("{n}x{k} M={m}: MLX {:.0}", gbs(mlx));
            for t in tunings.iter().take(if m == 1 { tunings.len() } else { 1 }) {
                let ms = timed_n(count, &|i| {
                    let [q, s, b] = &mats[i];
                    Ok(qmv::matmul_t_tuned(
                        &x,
                        as_packed(q, s, b, 4, 64),
                        *t,
                        &Folded::default(),
                    )?)
                })?;
                line += &format!(" | {} {:.0}", tuning_name(t), gbs(ms));
            }
            println!("{line}");
        }
    }
    Ok(())
}
