//! The element-wise half of the online softmax: a row's maximum, and `exp(x - max)` written back
//! with its sum. Written as plain loops over fixed-width lanes so that LLVM vectorizes them; the
//! exponential is a polynomial (Cephes' `expf`: a degree-6 polynomial on `[-ln2/2, ln2/2]` times
//! `2^n` built from the exponent bits, about 2 ulp), not libm's scalar `expf`.
//!
//! Every function is `#[inline(always)]` and generic over `FMA`, so that it takes the target
//! features of the kernel it is inlined into (`kernel.rs` compiles one variant with AVX2+FMA,
//! one with AVX-512, and a portable one). `FMA = false` must not use `mul_add`: without the
//! `fma` feature it is a call to libm's scalar `fmaf`.

/// Lanes of the accumulators: two AVX2 registers, one AVX-512 register.
const LANES: usize = 16;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in a part exact in few bits and the rest (Cephes).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// `1.5 * 2^23`: adding it rounds to an integer held in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Inputs are clamped to `[MIN_X, MAX_X]` so that `2^n` stays a normal float; `exp(MIN_X)` is
/// about 1e-38, nothing next to the row maximum's `exp(0) = 1`.
const MIN_X: f32 = -87.0;
const MAX_X: f32 = 88.0;

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` to about 2 ulp for `x` in `[MIN_X, MAX_X]` (clamped outside).
#[inline(always)]
pub(super) fn exp<const FMA: bool>(x: f32) -> f32 {
    let x = if x < MIN_X { MIN_X } else { x };
    let x = if x > MAX_X { MAX_X } else { x };
    let t = fmadd::<FMA>(x, LOG2E, ROUND);
    let n = t - ROUND;
    let r = fmadd::<FMA>(n, -LN2_HI, x);
    let r = fmadd::<FMA>(n, -LN2_LO, r);
    let mut p = 1.987_569_1e-4;
    p = fmadd::<FMA>(p, r, 1.398_199_9e-3);
    p = fmadd::<FMA>(p, r, 8.333_452e-3);
    p = fmadd::<FMA>(p, r, 4.166_579_6e-2);
    p = fmadd::<FMA>(p, r, 0.166_666_65);
    p = fmadd::<FMA>(p, r, 0.5);
    let y = fmadd::<FMA>(p, r * r, r) + 1.0;
    // t's low bits hold n + 2^22: move n + 127 into the exponent field.
    let bits = t
        .to_bits()
        .wrapping_add(127u32.wrapping_sub(ROUND.to_bits()))
        << 23;
    y * f32::from_bits(bits)
}

/// The largest element of `row` (`-inf` for an empty row).
#[inline(always)]
pub(super) fn max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in chunks.remainder() {
        m = m.max(x);
    }
    m
}

/// `row[j] = exp(row[j] - m)`; returns the sum of the new values.
#[inline(always)]
pub(super) fn exp_sub_sum<const FMA: bool>(row: &mut [f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            let e = exp::<FMA>(c[j] - m);
            c[j] = e;
            acc[j] += e;
        }
    }
    let mut sum = 0.0;
    for x in chunks.into_remainder() {
        *x = exp::<FMA>(*x - m);
        sum += *x;
    }
    sum + acc.iter().sum::<f32>()
}

/// `row *= a`.
#[inline(always)]
pub(super) fn scale(row: &mut [f32], a: f32) {
    for x in row {
        *x *= a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            for got in [exp::<false>(x), exp::<true>(x)] {
                let want = (x as f64).exp();
                worst = worst.max(((got as f64) - want).abs() / want);
            }
            x += 0.0137;
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst}"
        );
        assert_eq!(exp::<false>(0.0), 1.0);
        assert!(exp::<false>(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn rows_reduce_like_the_scalar_loops() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 31) as f32 * 0.3 - 4.0)
            .collect();
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&row), m);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut got = row.clone();
        let sum = exp_sub_sum::<false>(&mut got, m);
        let want: Vec<f64> = row.iter().map(|&x| ((x - m) as f64).exp()).collect();
        for (g, w) in got.iter().zip(&want) {
            assert!(((*g as f64) - w).abs() <= 1e-6 * w, "{g} vs {w}");
        }
        let want_sum: f64 = want.iter().sum();
        assert!(((sum as f64) - want_sum).abs() <= 1e-6 * want_sum);
    }
}
