//! kooka's quantized matrix-vector kernel as a fused q/k/v projection that also rotates the q
//! and k heads (`Folded::rope`) and hands q, k and v over apart against the same product
//! followed by MLX's RoPE, as the attention runs it where the kernel does not apply: the
//! outputs must be identical (the kernel does MLX's RoPE's float
//! steps on the products rounded to the type). The same product writing k and v into a cache
//! in place (`RopeFold::into_cache`) must give the same q and put the same k and v at the
//! position, touching nothing else of the cache. Then the two ways' times on Llama-8B's q/k/v.

use kooka::model::cache::Positions;
use kooka::model::cuda::qmv::{self, Tuning};
use kooka::model::layers::{CacheSlot, Folded, RmsNorm, RopeFold};
use kooka::model::rope::Rope;
use kooka::model::slicing::{slice_axis, slice_update_axis};
use mlx_rs::{ops, random, Array, Dtype};

use super::{as_packed, count_differing, max_abs, mma_env, packed, packed_fast, timed_n};

/// One fused q/k/v projection to check.
struct Case {
    rows: i32,
    q_heads: i32,
    kv_heads: i32,
    head_dim: i32,
    k: i32,
    base: f32,
    /// Llama-3's frequency scaling (per-pair frequencies) instead of the base alone.
    llama3: bool,
    traditional: bool,
    /// One position for every row of x, or one per row.
    positions: &'static [i32],
    dtype: Dtype,
}

fn rope_of(c: &Case) -> anyhow::Result<Rope> {
    let scaling = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    });
    let scaling = c.llama3.then_some(&scaling);
    Ok(Rope::new(c.head_dim, c.base, c.traditional, scaling)?)
}

fn positions_of(c: &Case) -> Positions {
    match c.positions {
        [p] => Positions::Same(*p),
        all => Positions::PerRow(Array::from_slice(all, &[c.rows])),
    }
}

/// `[rows, 1, heads * head_dim]` as `[rows, heads, 1, head_dim]`.
fn heads(y: &Array, c: &Case) -> anyhow::Result<Array> {
    let h = c.q_heads + 2 * c.kv_heads;
    Ok(y.reshape(&[c.rows, 1, h, c.head_dim])?
        .transpose_axes(&[0, 2, 1, 3])?)
}

/// The norm, the product (kooka's kernel) and MLX's RoPE on the q and k heads, as separate
/// kernels.
fn separate(
    x: &Array,
    [q, s, b]: [&Array; 3],
    norm: &RmsNorm,
    rope: &Rope,
    positions: &Positions,
    c: &Case,
) -> anyhow::Result<Array> {
    let f = Folded {
        norm: Some(norm),
        ..Folded::default()
    };
    let y = heads(
        &qmv::matmul_t_tuned(x, as_packed(q, s, b, 4, 64), mma_env(Tuning::folded()), &f)?,
        c,
    )?;
    let rotated = c.q_heads + c.kv_heads;
    let qk = rope.forward(&slice_axis(&y, 1, 0, rotated)?, positions)?;
    let v = slice_axis(&y, 1, rotated, rotated + c.kv_heads)?;
    Ok(ops::concatenate(&[qk, v], 1)?)
}

fn folded<'a>(norm: &'a RmsNorm, rope: &'a Rope, positions: &'a Positions, c: &Case) -> Folded<'a> {
    Folded {
        norm: Some(norm),
        rope: Some(RopeFold {
            rope,
            positions,
            head_dim: c.head_dim,
            q_heads: c.q_heads,
            rotated_heads: c.q_heads + c.kv_heads,
            into_cache: None,
        }),
        ..Folded::default()
    }
}

/// The product with k and v written into a cache in place, against the product handing them
/// over, all rows at `c`'s first position: outputs and cache entries differing (q, then the
/// cache's written position, then the rest of the cache, which must keep its values).
fn into_cache(
    x: &Array,
    [q, s, b]: [&Array; 3],
    norm: &RmsNorm,
    rope: &Rope,
    c: &Case,
    tuning: Tuning,
    seed: u64,
) -> anyhow::Result<[i32; 3]> {
    let p = c.positions[0];
    let positions = Positions::Same(p);
    let m = as_packed(q, s, b, 4, 64);
    let [want_q, want_k, want_v] =
        qmv::rotated_heads_tuned(x, m, tuning, &folded(norm, rope, &positions, c))?;
    // Buffers of their own (the kernel writes into them), and copies to compare with.
    let cache_of = |seed: u64| -> anyhow::Result<(Array, Array)> {
        let shape = [c.rows, c.kv_heads, p + 3, c.head_dim];
        let a = random::normal::<f32>(&shape, None, None, Some(&random::key(seed)?))?
            .as_dtype(c.dtype)?;
        let copy = a.multiply(Array::from_f32(1.0).as_dtype(c.dtype)?)?;
        mlx_rs::transforms::eval([&a, &copy])?;
        Ok((a, copy))
    };
    let (kc, kc_before) = cache_of(seed)?;
    let (vc, vc_before) = cache_of(seed + 1)?;
    let mut f = folded(norm, rope, &positions, c);
    if let Some(r) = &mut f.rope {
        r.into_cache = Some(CacheSlot {
            keys: &kc,
            values: &vc,
        });
    }
    let got_q = qmv::rotated_q_into_cache_tuned(x, m, tuning, &f)?;
    got_q.eval()?;
    let at = |a: &Array| slice_axis(a, 2, p, p + 1);
    let written = count_differing(&at(&kc)?, &want_k)? + count_differing(&at(&vc)?, &want_v)?;
    let rest = |a: &Array, before: &Array, new: &Array| -> anyhow::Result<i32> {
        count_differing(a, &slice_update_axis(before, new, 2, p, p + 1)?)
    };
    let rest = rest(&kc, &kc_before, &want_k)? + rest(&vc, &vc_before, &want_v)?;
    Ok([count_differing(&got_q, &want_q)?, written, rest])
}

fn norm_of(k: i32, seed: u64, dtype: Dtype) -> anyhow::Result<RmsNorm> {
    let w = random::normal::<f32>(&[k], None, None, Some(&random::key(seed)?))?;
    Ok(RmsNorm {
        weight: w
            .multiply(Array::from_f32(0.1))?
            .add(Array::from_f32(1.0))?
            .as_dtype(dtype)?,
        eps: 1e-5,
    })
}

pub fn parity() -> anyhow::Result<()> {
    use Dtype::{Bfloat16 as BF16, Float16 as F16};
    #[rustfmt::skip]
    let cases = [
        // Llama-3-8B: 32 q and 8 kv heads of 128, Llama-3 frequencies
        Case { rows: 1, q_heads: 32, kv_heads: 8, head_dim: 128, k: 4096, base: 500000.0, llama3: true, traditional: false, positions: &[1234], dtype: BF16 },
        Case { rows: 1, q_heads: 32, kv_heads: 8, head_dim: 128, k: 4096, base: 500000.0, llama3: false, traditional: false, positions: &[5], dtype: BF16 },
        Case { rows: 2, q_heads: 32, kv_heads: 8, head_dim: 128, k: 4096, base: 10000.0, llama3: false, traditional: false, positions: &[17, 3000], dtype: BF16 },
        // SmolLM2-135M: 9 q and 3 kv heads of 64, the traditional pairing for the check
        Case { rows: 3, q_heads: 9, kv_heads: 3, head_dim: 64, k: 576, base: 100000.0, llama3: false, traditional: true, positions: &[0, 1, 4095], dtype: BF16 },
        Case { rows: 1, q_heads: 8, kv_heads: 2, head_dim: 64, k: 1024, base: 10000.0, llama3: true, traditional: false, positions: &[100000], dtype: F16 },
    ];
    println!("\n| rows | heads q/kv x dim | K | frequencies | traditional | positions | dtype | tuning | outputs differing | max diff |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let seed = 900 + 10 * i as u64;
        let n = (c.q_heads + 2 * c.kv_heads) * c.head_dim;
        let [q, s, b, _] = packed(n, c.k, 4, 64, c.dtype, seed)?;
        let x =
            random::normal::<f32>(&[c.rows, 1, c.k], None, None, Some(&random::key(seed + 1)?))?
                .as_dtype(c.dtype)?;
        let norm = norm_of(c.k, seed + 2, c.dtype)?;
        let rope = rope_of(c)?;
        let positions = positions_of(c);
        let want = separate(&x, [&q, &s, &b], &norm, &rope, &positions, c)?;
        let f = folded(&norm, &rope, &positions, c);
        let staged = mma_env(Tuning {
            stage: true,
            max_blocks: 3,
            ..Tuning::folded()
        });
        let plain = mma_env(Tuning::folded());
        for (what, t) in [("folded", plain), ("staged, 3 blocks", staged)] {
            let got = ops::concatenate(
                &qmv::rotated_heads_tuned(&x, as_packed(&q, &s, &b, 4, 64), t, &f)?,
                1,
            )?;
            let differing = count_differing(&got, &want)?;
            let diff = max_abs(&got, &want)?;
            let freqs = if c.llama3 { "llama3" } else { "base" };
            println!(
                "| {} | {}/{} x {} | {} | {freqs} {} | {} | {:?} | {:?} | {what} | {differing} | {diff:.2e} |",
                c.rows, c.q_heads, c.kv_heads, c.head_dim, c.k, c.base, c.traditional, c.positions, c.dtype
            );
            if differing != 0 {
                failures.push(format!("case {i} ({what}): {differing} outputs differ"));
            }
            let [q_diff, written, rest] =
                into_cache(&x, [&q, &s, &b], &norm, &rope, c, t, seed + 3)?;
            println!(
                "| {} | {}/{} x {} | {} | | | {} into the cache | {:?} | {what} | q {q_diff}, k/v written {written}, rest {rest} | |",
                c.rows, c.q_heads, c.kv_heads, c.head_dim, c.k, c.positions[0], c.dtype
            );
            if q_diff + written + rest != 0 {
                failures.push(format!(
                    "case {i} ({what}, into the cache): q {q_diff}, written {written}, rest {rest} differ"
                ));
            }
        }
    }
    anyhow::ensure!(failures.is_empty(), "RoPE folded differs: {failures:?}");
    Ok(())
}

/// Microseconds per call of Llama-8B's q/k/v (with its norm) and RoPE: separate (kooka's kernel,
/// then MLX's RoPE) and folded, over distinct matrices.
pub fn timing() -> anyhow::Result<()> {
    let c = Case {
        rows: 1,
        q_heads: 32,
        kv_heads: 8,
        head_dim: 128,
        k: 4096,
        base: 500000.0,
        llama3: true,
        traditional: false,
        positions: &[1000],
        dtype: Dtype::Bfloat16,
    };
    let n = (c.q_heads + 2 * c.kv_heads) * c.head_dim;
    let count = 32;
    let mats: Vec<[Array; 3]> = (0..count)
        .map(|i| packed_fast(n, c.k, 800 + i as u64))
        .collect::<anyhow::Result<_>>()?;
    let x = random::normal::<f32>(&[1, 1, c.k], None, None, Some(&random::key(3)?))?
        .as_dtype(c.dtype)?;
    let norm = norm_of(c.k, 4, c.dtype)?;
    let rope = rope_of(&c)?;
    let positions = positions_of(&c);
    mlx_rs::transforms::eval([&x, &norm.weight])?;
    let f = folded(&norm, &rope, &positions, &c);
    let split = timed_n(count, &|i| {
        let [q, s, b] = &mats[i];
        separate(&x, [q, s, b], &norm, &rope, &positions, &c)
    })?;
    let together = timed_n(count, &|i| {
        let [q, s, b] = &mats[i];
        let [q, ..] =
            qmv::rotated_heads_tuned(&x, as_packed(q, s, b, 4, 64), mma_env(Tuning::folded()), &f)?;
        Ok(q)
    })?;
    println!(
        "\nq/k/v + norm + RoPE (6144x4096), us a call: separate {:.1} | folded {:.1}",
        split * 1e3,
        together * 1e3
    );
    Ok(())
}
