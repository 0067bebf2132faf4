//! Against MLX's own `fast::scaled_dot_product_attention`, with the masks spelled out as
//! boolean arrays for MLX.

use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::{Array, Dtype};

use super::{scaled_dot_product_attention, Mask};
use crate::model::cache::causal_mask;

/// Largest `|ours - mlx| / (1 + |mlx|)` over the outputs that the tests allow: float32 sums in
/// another order (blocks of keys, an online softmax, a polynomial `exp`). Measured: at most
/// 1.6e-6 over these cases.
const TOLERANCE: f32 = 1e-5;

/// Deterministic values in about [-2, 2) (scores of a few units, like RoPE'd heads).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

fn array(shape: [usize; 4], seed: u64) -> Array {
    let n = shape.iter().product();
    Array::from_slice(&data(n, seed), &shape.map(|x| x as i32))
}

struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    l: usize,
    s: usize,
    d: usize,
    mask: Mask,
}

/// The largest scaled difference between ours and MLX's.
fn worst_error(c: &Case) -> f32 {
    let q = array([c.b, c.hq, c.l, c.d], 1 + c.l as u64);
    let k = array([c.b, c.hkv, c.s, c.d], 2 + c.s as u64);
    let v = array([c.b, c.hkv, c.s, c.d], 3 + c.s as u64);
    let scale = (c.d as f32).powf(-0.5);
    let (l, s) = (c.l as i32, c.s as i32);
    let mask_array = match c.mask {
        Mask::None => None,
        Mask::Causal => Some(causal_mask(l, s - l, i32::MAX)),
        Mask::Window(w) => Some(causal_mask(l, s - l, w as i32)),
    };
    let want = fast::scaled_dot_product_attention(
        &q,
        &k,
        &v,
        scale,
        mask_array
            .as_ref()
            .map(ScaledDotProductAttentionMask::Array),
        None,
    )
    .unwrap();
    let got = scaled_dot_product_attention(&q, &k, &v, scale, c.mask).unwrap();
    assert_eq!(got.shape(), want.shape());
    let (got, want) = (got.as_slice::<f32>(), want.as_slice::<f32>());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
        .fold(0.0, f32::max)
}

fn check(c: Case) {
    let err = worst_error(&c);
    assert!(
        err <= TOLERANCE,
        "b={} hq={} hkv={} l={} s={} d={} {:?}: error {err}",
        c.b,
        c.hq,
        c.hkv,
        c.l,
        c.s,
        c.d,
        c.mask
    );
}

#[test]
fn causal_matches_mlx_over_lengths_head_dims_and_groups() {
    for (hq, hkv) in [(2, 2), (4, 2), (8, 1)] {
        for d in [64, 128] {
            for l in [1, 7, 64, 100, 257, 1000] {
                let mask = Mask::Causal;
                check(Case {
                    b: 1,
                    hq,
                    hkv,
                    l,
                    s: l,
                    d,
                    mask,
                });
            }
        }
    }
}

#[test]
fn long_prompts_match_mlx() {
    for (l, mask) in [(2000, Mask::Causal), (1999, Mask::Window(700))] {
        check(Case {
            b: 1,
            hq: 9,
            hkv: 3,
            l,
            s: l,
            d: 64,
            mask,
        });
    }
}

#[test]
fn causal_after_a_cached_prefix_matches_mlx() {
    // Query i sits at position s - l + i (a chunk after a prefix-cache hit).
    for (l, s) in [(1, 300), (5, 300), (100, 357), (300, 1025), (257, 513)] {
        for (hq, hkv, d) in [(4, 2, 64), (8, 1, 128), (3, 3, 128)] {
            let mask = Mask::Causal;
            check(Case {
                b: 1,
                hq,
                hkv,
                l,
                s,
                d,
                mask,
            });
        }
    }
}

#[test]
fn sliding_windows_match_mlx() {
    for (l, s, w) in [
        (64, 64, 16),
        (300, 300, 100),
        (200, 700, 256),
        (513, 513, 1),
        (90, 90, 4096),
    ] {
        for (hq, hkv, d) in [(4, 2, 64), (8, 8, 128), (8, 1, 64)] {
            let mask = Mask::Window(w);
            check(Case {
                b: 1,
                hq,
                hkv,
                l,
                s,
                d,
                mask,
            });
        }
    }
}

#[test]
fn no_mask_and_batches_match_mlx() {
    for (b, l, s) in [(1, 1, 1), (2, 33, 300), (3, 300, 100), (2, 129, 129)] {
        for (hq, hkv, d) in [(4, 2, 64), (8, 1, 128)] {
            check(Case {
                b,
                hq,
                hkv,
                l,
                s,
                d,
                mask: Mask::None,
            });
        }
    }
    check(Case {
        b: 2,
        hq: 6,
        hkv: 2,
        l: 100,
        s: 260,
        d: 64,
        mask: Mask::Causal,
    });
}

#[test]
fn strided_views_are_read_as_their_values() {
    // q as a transposed projection ([B, L, H, D] viewed as [B, H, L, D]), k and v as the first
    // positions of a larger cache buffer: what `Attention::forward` passes.
    let (l, s, cap) = (70, 90, 256);
    let q = array([1, l, 4, 64], 1)
        .transpose_axes(&[0, 2, 1, 3])
        .unwrap();
    let slice = |a: Array| crate::model::slicing::slice_axis(&a, 2, 0, s as i32).unwrap();
    let k = slice(array([1, 2, cap, 64], 2));
    let v = slice(array([1, 2, cap, 64], 3));
    let mask = causal_mask(l as i32, (s - l) as i32, i32::MAX);
    let want = fast::scaled_dot_product_attention(&q, &k, &v, 0.125, &mask, None).unwrap();
    let got = scaled_dot_product_attention(&q, &k, &v, 0.125, Mask::Causal).unwrap();
    for (g, w) in got.as_slice::<f32>().iter().zip(want.as_slice::<f32>()) {
        assert!((g - w).abs() <= TOLERANCE * (1.0 + w.abs()), "{g} vs {w}");
    }
}

#[test]
fn half_precision_inputs_come_back_in_their_dtype() {
    let q = array([1, 2, 40, 64], 1).as_dtype(Dtype::Bfloat16).unwrap();
    let k = array([1, 1, 40, 64], 2).as_dtype(Dtype::Bfloat16).unwrap();
    let out = scaled_dot_product_attention(&q, &k, &k, 0.125, Mask::Causal).unwrap();
    assert_eq!(out.dtype(), Dtype::Bfloat16);
    assert_eq!(out.shape(), [1, 2, 40, 64]);
}

#[test]
fn bad_shapes_are_errors() {
    let q = array([1, 3, 4, 8], 1);
    let k = array([1, 2, 4, 8], 2);
    assert!(scaled_dot_product_attention(&q, &k, &k, 1.0, Mask::Causal).is_err());
    let k = array([1, 1, 2, 8], 2);
    assert!(scaled_dot_product_attention(&q, &k, &k, 1.0, Mask::Causal).is_err());
    assert!(scaled_dot_product_attention(&q, &k, &k, 1.0, Mask::None).is_ok());
}
