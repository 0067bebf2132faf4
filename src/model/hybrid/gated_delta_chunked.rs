//! The gated delta rule over a whole prompt in chunks, for prefill: the same recurrence as
//! `gated_delta_ops` (per head, `S_t = g_t S_{t-1} + beta_t (v_t - g_t S_{t-1} k_t) k_t^T`,
//! `y_t = S_t q_t`), but as a few batched matmuls per chunk of `CHUNK` tokens instead of a
//! compiled step per token. The per-token loop costs thousands of tiny kernels per layer on a
//! long prompt (a 4,108-token prompt took 62 s to prefill on an H200); here the sequential
//! part is one `[Dk, Dk] x [Dk, Dv]` matmul per chunk.
//!
//! The maths (per head, transposed state `H = S^T` `[Dk, Dv]`, one chunk with entering state
//! `H0`, cumulative log-decay `G_i = sum_{j<=i} log g_j`, `gamma_i = exp(G_i)`): writing
//! `d_i = beta_i (v_i - g_i H_{i-1}^T k_i)` for what step `i` adds, the state unrolls to
//! `H_i = gamma_i H0 + sum_{j<=i} exp(G_i - G_j) k_j d_j^T`, so the `d` solve the unit lower
//! triangular system `(I + A) D = beta V - (beta gamma) K H0` with
//! `A_ij = beta_i (k_i . k_j) exp(G_i - G_j)` for `j < i` (the WY / "UT transform" form of
//! flash-linear-attention's `chunk_gated_delta_rule`). With `T = (I + A)^-1`, `U = T beta V`
//! and `W = T (beta gamma) K`, `D = U - W H0`, and then
//! `Y = gamma Q H0 + (M o Q K^T) D` (`M_ij = exp(G_i - G_j)` for `j <= i`) and the chunk's
//! outgoing state `H_C = gamma_C H0 + K^T diag(exp(G_C - G)) D`. Everything but `H0` is
//! computed for all chunks at once; the chunks then chain through
//! `H_C = (gamma_C I - K~^T W) H0 + K~^T U` alone, and the outputs follow in one batch.
//!
//! `T` comes from matmuls alone, so it runs on any backend (MLX's triangular solves and
//! inverses run on the CPU only): 4x4 diagonal blocks by the power series
//! `(I + A)^-1 = prod_k (I + (-A)^(2^k))` (`A` is nilpotent), then merged pairwise up to the
//! chunk (`T21 = -T22 A21 T11`). The series over a whole chunk is not usable: with
//! correlated keys its terms grow like binomial coefficients before they cancel. Everything is float32 as the sequential step's state is; the output takes `q`'s
//! dtype as the sequential step's does.

use std::cell::RefCell;
use std::sync::OnceLock;

use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{ops, Array, Dtype};

use super::{run_compiled, Compiled};
use crate::model::error::{ModelError, Result};
use crate::model::slicing::slice_axis;

/// Tokens per chunk: the intra-chunk work grows as `C^2`, the sequential chain as `L / C`.
pub(crate) const CHUNK: i32 = 64;

/// From how many tokens a forward takes the chunked form. Below it the sequential step is
/// as fast and keeps mlx-lm's exact rounding; single-token decode is always sequential, so
/// it stays bit-identical to mlx-lm. Measured on the CPU (2 cores, Hv 4, Dk = Dv 64, one
/// layer): 16 tokens 1.3 ms sequential vs 2.7 ms chunked, 32 tokens 3.0 vs 2.3 ms, 64
/// tokens 5.8 vs 2.0 ms, 2,048 tokens 234 vs 55 ms.
pub(crate) const MIN_TOKENS: i32 = 32;

/// Whether `KOOKA_GDN_SEQUENTIAL` (set, not `0`) forces mlx-lm's per-token loop on prompts
/// too, to compare speed or rounding with the chunked form.
fn forced_sequential() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("KOOKA_GDN_SEQUENTIAL").is_ok_and(|v| !v.trim().is_empty() && v != "0")
    })
}

/// Whether a forward of `l` tokens takes [`gated_delta_chunked`].
pub(crate) fn use_chunked(l: i32) -> bool {
    l >= MIN_TOKENS && !forced_sequential()
}

thread_local! {
    /// `log g` of mlx-lm's `compute_g`, `-exp(A_log) * softplus(a + dt_bias)`, compiled
    /// shapeless as `compute_g` is, so its fused kernel rounds the bf16 steps alike.
    static LOG_DECAY: RefCell<Compiled> = RefCell::new(Box::new(compile(
        |xs: &[Array]| -> std::result::Result<Vec<Array>, Exception> {
            let (a_log, a, dt_bias) = (&xs[0], &xs[1], &xs[2]);
            let x = a.add(dt_bias)?;
            let softplus = ops::logaddexp(&x, Array::from_f32(0.0).as_dtype(x.dtype())?)?;
            let decay = a_log.as_dtype(Dtype::Float32)?.exp()?.negative()?;
            Ok(vec![decay.multiply(&softplus)?])
        },
        true,
    )));
}

/// `log g` of mlx-lm's `compute_g` (before its `exp`): the chunked form needs the
/// log-decay, and `log(exp(x))` would turn a decay that underflowed to zero into `-inf`
/// (and `-inf - -inf` into NaN).
pub(crate) fn log_decay(a_log: &Array, a: &Array, dt_bias: &Array) -> Result<Array> {
    let args = [a_log.clone(), a.clone(), dt_bias.clone()];
    run_compiled(&LOG_DECAY, &args, "log_decay")
}

/// Size of the diagonal blocks inverted by the power series; larger blocks merge from them.
const BLOCK: i32 = 4;

/// `(I + A)^-1` for `a` strictly lower triangular `[.., C, C]` with `C <= BLOCK`, as the
/// power series `prod_k (I + (-A)^(2^k))`. Only for small blocks: with correlated keys the
/// series' terms grow like binomial coefficients before cancelling, which over a whole
/// 64-token chunk loses every digit of float32 (measured: errors of 200%).
fn series_inverse(a: &Array, c: i32) -> Result<Array> {
    let mut power = a.negative()?;
    let mut inverse = power.add(ops::eye::<f32>(c, None, None)?)?;
    let mut covered = 2;
    while covered < c {
        power = power.matmul(&power)?;
        inverse = inverse.add(inverse.matmul(&power)?)?;
        covered *= 2;
    }
    Ok(inverse)
}

/// The diagonal `[s, s]` blocks of `a` `[.., C, C]`, as `[.., C / s, s, s]`.
fn diagonal_blocks(a: &Array, s: i32) -> Result<Array> {
    let shape = a.shape();
    let rank = shape.len();
    let m = shape[rank - 1] / s;
    let mut blocked = shape[..rank - 2].to_vec();
    blocked.extend_from_slice(&[m, s, m, s]);
    // diagonal() drops the two block axes and appends theirs last: [.., s, s, m].
    let diag = a.reshape(&blocked)?.diagonal(0, -4, -2)?;
    let mut axes: Vec<i32> = (0..rank as i32 - 2).collect();
    axes.extend_from_slice(&[rank as i32, rank as i32 - 2, rank as i32 - 1]);
    Ok(diag.transpose_axes(&axes)?)
}

/// `(I + A)^-1` for `a` strictly lower triangular `[.., C, C]` (`C` a power of two times
/// `BLOCK`): the diagonal blocks by the series, then pairs of inverted blocks merged,
/// `[[T11, 0], [T21, T22]]` with `T21 = -T22 A21 T11`, doubling the block size each level.
fn unit_lower_inverse(a: &Array, c: i32) -> Result<Array> {
    let rank = a.shape().len();
    let mut s = BLOCK.min(c);
    let mut t = series_inverse(&diagonal_blocks(a, s)?, s)?;
    while s < c {
        // [.., m, s, s] -> pairs [.., m / 2, 2, s, s].
        let mut paired = a.shape()[..rank - 2].to_vec();
        paired.extend_from_slice(&[c / (2 * s), 2, s, s]);
        let t_pairs = t.reshape(&paired)?;
        let t11 = slice_axis(&t_pairs, rank - 1, 0, 1)?.squeeze_axes(&[-3])?;
        let t22 = slice_axis(&t_pairs, rank - 1, 1, 2)?.squeeze_axes(&[-3])?;
        let a2 = diagonal_blocks(a, 2 * s)?;
        let a21 = slice_axis(&slice_axis(&a2, rank - 1, s, 2 * s)?, rank, 0, s)?;
        let t21 = t22.matmul(&a21)?.matmul(&t11)?.negative()?;
        let top = ops::concatenate(&[t11.clone(), ops::zeros_like(&t11)?], -1)?;
        let bottom = ops::concatenate(&[t21, t22], -1)?;
        t = ops::concatenate(&[top, bottom], -2)?;
        s *= 2;
    }
    // [.., 1, C, C] -> [.., C, C].
    Ok(t.squeeze_axes(&[-3])?)
}

/// `[B, T, H, ..]` -> float32 `[B, H, N, C, ..]`, zero-padded to `N * C` tokens: a padded
/// step (`k = v = beta = log g = 0`) leaves the state as it is.
fn chunked(a: &Array, pad: i32, n: i32, c: i32) -> Result<Array> {
    let a = a.as_dtype(Dtype::Float32)?;
    let mut shape = a.shape().to_vec();
    let a = match pad {
        0 => a,
        _ => {
            shape[1] = pad;
            ops::concatenate(&[a, ops::zeros_dtype(&shape, Dtype::Float32)?], 1)?
        }
    };
    let mut axes: Vec<i32> = (0..shape.len() as i32).collect();
    axes.swap(1, 2);
    let mut out = vec![shape[0], shape[2], n, c];
    out.extend_from_slice(&shape[3..]);
    Ok(a.transpose_axes(&axes)?.reshape(&out)?)
}

/// The chunked gated delta rule, in `gated_delta_ops`'s layout: `q`, `k` `[B, T, Hk, Dk]`,
/// `v` `[B, T, Hv, Dv]`, `log_g` and `beta` `[B, T, Hv]`, `state` `[B, Hv, Dv, Dk]` float32
/// -> (`y` `[B, T, Hv, Dv]` in `q`'s dtype, new state).
pub(crate) fn gated_delta_chunked(
    q: &Array,
    k: &Array,
    v: &Array,
    log_g: &Array,
    beta: &Array,
    state: Array,
    c: i32,
) -> Result<(Array, Array)> {
    let (b, t, hk) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let (hv, dv) = (v.shape()[2], v.shape()[3]);
    let blocks = c / BLOCK.min(c);
    if c < 1
        || c % BLOCK.min(c) != 0
        || blocks & (blocks - 1) != 0
        || hk < 1
        || hv % hk != 0
        || t < 1
    {
        return Err(ModelError::Mlx(format!(
            "gated delta chunks: {t} tokens in chunks of {c}, {hv} value heads over {hk} key heads"
        )));
    }
    let (q, k) = match hv / hk {
        r if r > 1 => (
            ops::repeat_axis::<f32>(q.clone(), r, 2)?,
            ops::repeat_axis::<f32>(k.clone(), r, 2)?,
        ),
        _ => (q.clone(), k.clone()),
    };
    let n = (t + c - 1) / c;
    let pad = n * c - t;
    let q_ = chunked(&q, pad, n, c)?;
    let k_ = chunked(&k, pad, n, c)?;
    let v_ = chunked(v, pad, n, c)?;
    let beta = chunked(beta, pad, n, c)?;
    // [B, H, N, C]: the cumulative log-decay within each chunk.
    let g_cum = ops::cumsum(chunked(log_g, pad, n, c)?, -1, None, None)?;
    let g_last = slice_axis(&g_cum, 3, c - 1, c)?;

    // exp(G_i - G_j) on and below the diagonal, 0 above: masked before the exp, where the
    // difference is positive and could overflow into inf * 0.
    let causal = ops::tri::<f32>(c, None, Some(0))?.as_dtype(Dtype::Bool)?;
    let diff = g_cum.expand_dims(-1)?.subtract(g_cum.expand_dims(-2)?)?;
    let decay = ops::select(&causal, &diff, Array::from_f32(f32::NEG_INFINITY))?.exp()?;
    let strict = ops::tri::<f32>(c, None, Some(-1))?;

    let k_t = k_.swap_axes(-1, -2)?;
    let a = k_
        .matmul(&k_t)?
        .multiply(&decay)?
        .multiply(&strict)?
        .multiply(beta.expand_dims(-1)?)?;
    let t_inv = unit_lower_inverse(&a, c)?;
    let gamma = g_cum.exp()?;
    let u = t_inv.matmul(v_.multiply(beta.expand_dims(-1)?)?)?;
    let w = t_inv.matmul(k_.multiply(beta.multiply(&gamma)?.expand_dims(-1)?)?)?;

    // Outputs: Y = (gamma Q - (M o Q K^T) W) H0 + (M o Q K^T) U.
    let qk = q_.matmul(&k_t)?.multiply(&decay)?;
    let y_state = q_
        .multiply(gamma.expand_dims(-1)?)?
        .subtract(qk.matmul(&w)?)?;
    let y_local = qk.matmul(&u)?;
    // Chunk transitions: H_C = (gamma_C I - K~^T W) H0 + K~^T U, K~ = exp(G_C - G) K.
    let k_tail = k_
        .multiply(g_last.subtract(&g_cum)?.exp()?.expand_dims(-1)?)?
        .swap_axes(-1, -2)?;
    let dk = k_.shape()[4];
    let carry = ops::eye::<f32>(dk, None, None)?
        .multiply(g_last.exp()?.expand_dims(-1)?)?
        .subtract(k_tail.matmul(&w)?)?;
    let inject = k_tail.matmul(&u)?;

    // [B, H, 1, Dk, Dv]: the chunk axis kept so each entering state lines up with its chunk.
    let mut h = state
        .as_dtype(Dtype::Float32)?
        .swap_axes(-1, -2)?
        .expand_dims(2)?;
    let mut entering = Vec::with_capacity(n as usize);
    for i in 0..n {
        entering.push(h.clone());
        h = slice_axis(&carry, 2, i, i + 1)?
            .matmul(&h)?
            .add(slice_axis(&inject, 2, i, i + 1)?)?;
    }
    let entering = ops::concatenate(&entering, 2)?;
    let y = y_state.matmul(&entering)?.add(&y_local)?;
    let y = slice_axis(&y.reshape(&[b, hv, n * c, dv])?, 2, 0, t)?
        .transpose_axes(&[0, 2, 1, 3])?
        .as_dtype(q.dtype())?;
    let state = h.squeeze_axes(&[2])?.swap_axes(-1, -2)?.contiguous()?;
    Ok((y, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hybrid::gated_delta::gated_delta_ops;
    use mlx_rs::random;

    fn host(a: &Array) -> Vec<f32> {
        let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
        a.eval().unwrap();
        a.as_slice::<f32>().to_vec()
    }

    /// Largest |a - b| and the largest |b|.
    fn max_err(a: &Array, b: &Array) -> (f32, f32) {
        let (a, b) = (host(a), host(b));
        assert_eq!(a.len(), b.len());
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs());
        let scale = b.iter().map(|y| y.abs()).fold(0.0, f32::max);
        (err.fold(0.0, f32::max), scale)
    }

    /// Unit-norm rows along the last axis, as normalize_qk leaves k (q is also scaled).
    fn unit(x: &Array) -> Array {
        let norm = x
            .square()
            .unwrap()
            .sum_axis(-1, true)
            .unwrap()
            .sqrt()
            .unwrap();
        x.divide(&norm).unwrap()
    }

    struct Case {
        b: i32,
        l: i32,
        hk: i32,
        r: i32,
        d: i32,
        initial: bool,
        /// Keys sharing a common direction, so `A` is far from zero.
        correlated: bool,
    }

    /// Compares the chunked form with `gated_delta_ops` on random inputs shaped as the model
    /// feeds them; returns the relative errors of the outputs and of the final state.
    fn compare(case: &Case, seed: u64) -> (f32, f32) {
        let Case { b, l, hk, r, d, .. } = *case;
        let hv = hk * r;
        let key = |i: u64| random::key(seed * 16 + i).unwrap();
        let normal =
            |shape: &[i32], i: u64| random::normal::<f32>(shape, None, None, &key(i)).unwrap();
        let q = unit(&normal(&[b, l, hk, d], 0))
            .multiply(Array::from_f32((d as f32).powf(-0.5)))
            .unwrap();
        let mut k = normal(&[b, l, hk, d], 1);
        if case.correlated {
            k = k
                .add(
                    normal(&[1, 1, hk, d], 2)
                        .multiply(Array::from_f32(3.0))
                        .unwrap(),
                )
                .unwrap();
        }
        let k = unit(&k);
        let v = normal(&[b, l, hv, d], 3);
        let beta = ops::sigmoid(normal(&[b, l, hv], 4)).unwrap();
        // Decays from nearly 1 to nearly 0, as -exp(A_log) * softplus(a + dt_bias) gives.
        let log_g = log_decay(
            &normal(&[hv], 5),
            &normal(&[b, l, hv], 6)
                .multiply(Array::from_f32(2.0))
                .unwrap(),
            &Array::from_f32(-1.0),
        )
        .unwrap();
        let state = match case.initial {
            true => normal(&[b, hv, d, d], 7),
            false => ops::zeros_dtype(&[b, hv, d, d], Dtype::Float32).unwrap(),
        };
        let (y_seq, s_seq) =
            gated_delta_ops(&q, &k, &v, &log_g.exp().unwrap(), &beta, state.clone()).unwrap();
        let (y, s) = gated_delta_chunked(&q, &k, &v, &log_g, &beta, state, CHUNK).unwrap();
        assert_eq!(y.shape(), y_seq.shape());
        assert_eq!(s.shape(), s_seq.shape());
        let (ye, ys) = max_err(&y, &y_seq);
        let (se, ss) = max_err(&s, &s_seq);
        (ye / ys.max(1e-6), se / ss.max(1e-6))
    }

    #[test]
    fn chunked_gated_delta_matches_the_sequential_step() {
        let mut worst = (0.0f32, 0.0f32);
        let mut seed = 0;
        for (hk, r, d) in [(2, 1, 16), (1, 2, 16), (2, 1, 64), (1, 2, 64)] {
            for l in [1, 7, 63, 64, 65, 150, 300] {
                for (initial, correlated) in [(false, false), (true, false), (true, true)] {
                    seed += 1;
                    let case = Case {
                        b: 2,
                        l,
                        hk,
                        r,
                        d,
                        initial,
                        correlated,
                    };
                    let (ye, se) = compare(&case, seed);
                    assert!(
                        ye < 5e-5 && se < 5e-5,
                        "L={l} Hk={hk} Hv/Hk={r} D={d} initial={initial} correlated={correlated}: \
                         relative error {ye:e} (outputs), {se:e} (state)"
                    );
                    worst = (worst.0.max(ye), worst.1.max(se));
                }
            }
        }
        println!(
            "chunked vs sequential: worst relative error {:e} (outputs), {:e} (state)",
            worst.0, worst.1
        );
    }

    /// A long prompt arrives as several forwards: chunking each one and carrying the state
    /// across gives what one pass over all of it gives.
    #[test]
    fn chunked_gated_delta_carries_state_across_calls() {
        let (b, l, h, d) = (1, 200, 2, 32);
        let key = random::key(42).unwrap();
        let k = unit(&random::normal::<f32>(&[b, l, h, d], None, None, &key).unwrap());
        let q = k.multiply(Array::from_f32(0.5)).unwrap();
        let v = random::normal::<f32>(&[b, l, h, d], None, None, &key).unwrap();
        let beta = Array::from_f32(0.7)
            .multiply(ops::ones::<f32>(&[b, l, h]).unwrap())
            .unwrap();
        let log_g = Array::from_f32(-0.05)
            .multiply(ops::ones::<f32>(&[b, l, h]).unwrap())
            .unwrap();
        let zero = ops::zeros_dtype(&[b, h, d, d], Dtype::Float32).unwrap();
        let (y_all, s_all) =
            gated_delta_chunked(&q, &k, &v, &log_g, &beta, zero.clone(), CHUNK).unwrap();
        let part = |a: &Array, s: i32, e: i32| slice_axis(a, 1, s, e).unwrap();
        let (y1, s1) = gated_delta_chunked(
            &part(&q, 0, 90),
            &part(&k, 0, 90),
            &part(&v, 0, 90),
            &part(&log_g, 0, 90),
            &part(&beta, 0, 90),
            zero,
            CHUNK,
        )
        .unwrap();
        let (y2, s2) = gated_delta_chunked(
            &part(&q, 90, l),
            &part(&k, 90, l),
            &part(&v, 90, l),
            &part(&log_g, 90, l),
            &part(&beta, 90, l),
            s1,
            CHUNK,
        )
        .unwrap();
        let y_split = ops::concatenate(&[y1, y2], 1).unwrap();
        let (ye, ys) = max_err(&y_split, &y_all);
        let (se, ss) = max_err(&s2, &s_all);
        assert!(
            ye < 1e-5 * ys && se < 1e-5 * ss,
            "{ye:e} of {ys}, {se:e} of {ss}"
        );
    }
}
