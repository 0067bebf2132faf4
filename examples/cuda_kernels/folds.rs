//! kooka's quantized matrix-vector kernel with a block's neighbours folded in ([`Folded`]: the
//! RMSNorm before it, SwiGLU and the residual addition after it) against the same steps as
//! separate kernels (MLX's RMSNorm, the kernel alone, kooka's compiled SwiGLU, MLX's
//! addition); then each of Llama-8B's decode-step products folded against unfolded.

use kooka::model::cuda::qmv::{self, Tuning};
use kooka::model::layers::{swiglu_halves, Folded, RmsNorm};
use mlx_rs::{random, Array, Dtype};

use super::{
    all_equal, as_packed, count_differing, max_abs, mma_env, packed, packed_fast, timed_n,
    tuning_name,
};

/// `residual + swiglu(qmv(rms_norm(x)))`, as much as `f` holds, one kernel a step.
fn unfolded(
    x: &Array,
    [q, s, b]: [&Array; 3],
    bits: i32,
    group: i32,
    f: &Folded,
) -> anyhow::Result<Array> {
    let x = RmsNorm::maybe(f.norm, x)?;
    let plain = Folded::default();
    let mut y = qmv::matmul_t_tuned(
        &x,
        as_packed(q, s, b, bits, group),
        mma_env(Tuning::default()),
        &plain,
    )?;
    if f.glu {
        y = swiglu_halves(&y)?;
    }
    Ok(match f.residual {
        Some(r) => r.add(&y)?,
        None => y,
    })
}

fn normal(shape: &[i32], seed: u64, dtype: Dtype) -> anyhow::Result<Array> {
    Ok(random::normal::<f32>(shape, None, None, Some(&random::key(seed)?))?.as_dtype(dtype)?)
}

/// A norm weight around one, as trained ones are.
fn norm_weight(k: i32, seed: u64, dtype: Dtype) -> anyhow::Result<Array> {
    let w = random::normal::<f32>(&[k], None, None, Some(&random::key(seed)?))?;
    Ok(w.multiply(Array::from_f32(0.1))?
        .add(Array::from_f32(1.0))?
        .as_dtype(dtype)?)
}

/// Folded against unfolded on decode shapes (Llama-8B's, SmolLM2's) and every combination:
/// without the norm the two must be identical (the same sums, MLX's functors); with it, x's
/// sum of squares is added in another order than MLX's, so a normalized value may round the
/// other way: at most a unit of the type's precision, on under 1% of the outputs (16-bit
/// types; H100: none differed) or by float32's precision (there 42 of 256 by ~1e-7).
pub fn parity() -> anyhow::Result<()> {
    use Dtype::{Bfloat16 as BF16, Float16 as F16, Float32 as F32};
    println!("\n| M | N | K | bits | group | dtype | norm | glu | res | outputs differing | max diff | max |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    #[rustfmt::skip]
    let cases = [
        (1, 6144, 4096, 4, 64, BF16, true, false, false),
        (1, 4096, 4096, 4, 64, BF16, false, false, true),
        (1, 28672, 4096, 4, 64, BF16, true, true, false),
        (1, 4096, 14336, 4, 64, BF16, false, false, true),
        (3, 3072, 576, 4, 64, BF16, true, true, false),
        (2, 576, 1536, 4, 64, BF16, false, false, true),
        (2, 1000, 1024, 8, 64, F16, true, false, true),
        (1, 512, 256, 4, 32, F32, true, true, true),
        (3, 256, 512, 8, 128, BF16, false, true, false),
    ];
    let mut failures = Vec::new();
    for (i, &(m, n, k, bits, group, dtype, norm, glu, res)) in cases.iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let [q, s, b, _] = packed(n, k, bits, group, dtype, seed)?;
        let x = normal(&[1, m, k], seed + 1, dtype)?;
        let rms = RmsNorm {
            weight: norm_weight(k, seed + 2, dtype)?,
            eps: 1e-5,
        };
        let out = if glu { n / 2 } else { n };
        let residual = normal(&[1, m, out], seed + 3, dtype)?;
        let f = Folded {
            norm: norm.then_some(&rms),
            glu,
            residual: res.then_some(&residual),
            rope: None,
        };
        let want = unfolded(&x, [&q, &s, &b], bits, group, &f)?;
        // The folded tuning, and 3 blocks (each warp on many rows in turn).
        let capped = mma_env(Tuning {
            max_blocks: 3,
            ..Tuning::folded()
        });
        let got = qmv::matmul_t_tuned(
            &x,
            as_packed(&q, &s, &b, bits, group),
            mma_env(Tuning::folded()),
            &f,
        )?;
        // The same sums with x staged (where it applies) and with 3 blocks: the same outputs.
        let staged = |max_blocks| {
            mma_env(Tuning {
                max_blocks,
                stage: true,
                ..Tuning::folded()
            })
        };
        for (what, t) in [
            ("3 blocks", capped),
            ("staged", staged(0)),
            ("staged, 3 blocks", staged(3)),
        ] {
            let other = qmv::matmul_t_tuned(&x, as_packed(&q, &s, &b, bits, group), t, &f)?;
            if !all_equal(&other, &got)? {
                failures.push(format!(
                    "{m}x{n}x{k} {dtype:?}: {what} differ from the default"
                ));
            }
        }
        anyhow::ensure!(
            got.shape() == [1, m, out] && got.dtype() == dtype,
            "shape or type: {:?} {:?}",
            got.shape(),
            got.dtype()
        );
        let differing = count_differing(&got, &want)?;
        let diff = max_abs(&got, &want)?;
        let top = want
            .abs()?
            .max(None)?
            .as_dtype(Dtype::Float32)?
            .try_item_exact::<f32>()?;
        println!("| {m} | {n} | {k} | {bits} | {group} | {dtype:?} | {norm} | {glu} | {res} | {differing} | {diff:.2e} | {top:.2e} |");
        let unit = match dtype {
            BF16 => 1.0 / 128.0,
            F16 => 1.0 / 1024.0,
            _ => 1e-5,
        };
        // float32 outputs are not rounded to a coarse type: any change in the norm's last bit
        // shows, so only its size counts.
        let ok = match (norm, dtype) {
            (false, _) => differing == 0,
            (true, F32) => diff <= unit * top,
            (true, _) => diff <= unit * top && (differing as i64) * 100 <= (m * out) as i64,
        };
        if !ok {
            failures.push(format!(
                "{m}x{n}x{k} {dtype:?} norm {norm} glu {glu} res {res}"
            ));
        }
    }
    anyhow::ensure!(failures.is_empty(), "folded qmv differs: {failures:?}");
    Ok(())
}

/// Microseconds per call of each Llama-8B 4-bit decode product with its neighbours, as the
/// step ran them unfolded (q/k/v and o on MLX's kernel, below kooka's floor) and folded.
pub fn timing() -> anyhow::Result<()> {
    // The folded default, then QMV_FOLD_TUNINGS ("r,w,u,t[,b[,s]] ...").
    let mut tunings = vec![Tuning::folded()];
    let more = std::env::var("QMV_FOLD_TUNINGS")
        .unwrap_or_else(|_| "1,8,4,1 1,8,2,1,528,1 1,8,2,1,1056,1 2,8,2,1,528,1".into());
    for t in more.split_whitespace() {
        let bad = || anyhow::anyhow!("QMV_FOLD_TUNINGS: bad {t:?}");
        tunings.push(qmv::parse_tuning(t).ok_or_else(bad)?);
    }
    let names: Vec<String> = tunings.iter().map(tuning_name).collect();
    println!(
        "\nus a call, M = 1 (distinct matrices): unfolded (separate kernels) | folded, tuned {}",
        names.join(" | ")
    );
    let bf16 = Dtype::Bfloat16;
    // (what, rows, K, norm, glu, residual, MLX's kernel when unfolded)
    let products = [
        ("q/k/v + norm", 6144, 4096, true, false, false, true),
        ("o + residual", 4096, 4096, false, false, true, true),
        (
            "gate/up + norm + SwiGLU",
            28672,
            4096,
            true,
            true,
            false,
            false,
        ),
        ("down + residual", 4096, 14336, false, false, true, false),
    ];
    let (mut before, mut after) = (0.0, vec![0.0; tunings.len()]);
    for (what, n, k, norm, glu, res, mlx) in products {
        let bytes = n as f64 * k as f64 * (0.5 + 4.0 / 64.0);
        let count = ((2e9 / bytes) as usize).clamp(2, 32);
        let mats: Vec<[Array; 3]> = (0..count)
            .map(|i| packed_fast(n, k, 700 + i as u64))
            .collect::<anyhow::Result<_>>()?;
        let x = normal(&[1, 1, k], 11, bf16)?;
        let rms = RmsNorm {
            weight: norm_weight(k, 12, bf16)?,
            eps: 1e-5,
        };
        let residual = normal(&[1, 1, if glu { n / 2 } else { n }], 13, bf16)?;
        mlx_rs::transforms::eval([&x, &rms.weight, &residual])?;
        let f = Folded {
            norm: norm.then_some(&rms),
            glu,
            residual: res.then_some(&residual),
            rope: None,
        };
        let split = timed_n(count, &|i| {
            let [q, s, b] = &mats[i];
            if !mlx {
                return unfolded(&x, [q, s, b], 4, 64, &f);
            }
            let xn = RmsNorm::maybe(f.norm, &x)?;
            let y = mlx_rs::ops::quantized_matmul(&xn, q, s, b, true, 64, 4)?;
            Ok(match f.residual {
                Some(r) => r.add(&y)?,
                None => y,
            })
        })?;
        let mut line = format!("{what} ({n}x{k}): {:.1}", split * 1e3);
        for (t, total) in tunings.iter().zip(after.iter_mut()) {
            let folded = timed_n(count, &|i| {
                let [q, s, b] = &mats[i];
                Ok(qmv::matmul_t_tuned(&x, as_packed(q, s, b, 4, 64), *t, &f)?)
            })?;
            line += &format!(" | {:.1}", folded * 1e3);
            *total += folded;
        }
        println!("{line}");
        before += split;
    }
    let totals: Vec<String> = after.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
    println!("a layer: {:.1} | {} us", before * 1e3, totals.join(" | "));
    Ok(())
}
