//! MLX through mlx-rs on this machine's backend: each op against a plain-Rust reference.

use mlx_rs::{fast, ops, random, Array};

fn host(a: &Array) -> Vec<f32> {
    a.as_dtype(mlx_rs::Dtype::Float32)
        .unwrap()
        .as_slice::<f32>()
        .to_vec()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: worst relative error {worst} > {tol}");
}

fn uniform(shape: &[i32], seed: u64) -> Array {
    let key = random::key(seed).unwrap();
    random::uniform::<_, f32>(-1.0, 1.0, shape, &key).unwrap()
}

/// Row-major matmul of [m,k] x [k,n].
fn matmul_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

#[test]
fn matmul_matches_reference() {
    let (m, k, n) = (7, 33, 5);
    let a = uniform(&[m, k], 1);
    let b = uniform(&[k, n], 2);
    let got = host(&ops::matmul(&a, &b).unwrap());
    let want = matmul_ref(&host(&a), &host(&b), m as usize, k as usize, n as usize);
    assert_close(&got, &want, 1e-5, "matmul");
}

#[test]
fn rms_norm_matches_reference() {
    let (rows, dim, eps) = (3usize, 64usize, 1e-5f32);
    let x = uniform(&[rows as i32, dim as i32], 3);
    let w = uniform(&[dim as i32], 4);
    let got = host(&fast::rms_norm(&x, Some(&w), eps).unwrap());
    let (xs, ws) = (host(&x), host(&w));
    let mut want = Vec::new();
    for r in 0..rows {
        let row = &xs[r * dim..(r + 1) * dim];
        let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / dim as f32 + eps).sqrt();
        want.extend(row.iter().zip(&ws).map(|(v, w)| v * inv * w));
    }
    assert_close(&got, &want, 1e-5, "rms_norm");
}

#[test]
fn rope_matches_reference() {
    // Non-traditional (GPT-NeoX / Llama) rotation: pairs (i, i + d/2), angle pos * base^(-2i/d).
    let (seq, dim, base, offset) = (5usize, 8usize, 10000.0f32, 3usize);
    let x = uniform(&[1, 1, seq as i32, dim as i32], 5);
    let got = host(&fast::rope(&x, dim as i32, false, base, 1.0, offset as i32, None).unwrap());
    let xs = host(&x);
    let half = dim / 2;
    let mut want = vec![0.0; seq * dim];
    for p in 0..seq {
        for i in 0..half {
            let theta = (p + offset) as f32 * base.powf(-2.0 * i as f32 / dim as f32);
            let (a, b) = (xs[p * dim + i], xs[p * dim + i + half]);
            want[p * dim + i] = a * theta.cos() - b * theta.sin();
            want[p * dim + i + half] = a * theta.sin() + b * theta.cos();
        }
    }
    assert_close(&got, &want, 1e-4, "rope");
}

#[test]
fn causal_sdpa_matches_reference() {
    let (len, dim) = (6usize, 16usize);
    let scale = 1.0 / (dim as f32).sqrt();
    let q = uniform(&[1, 1, len as i32, dim as i32], 6);
    let k = uniform(&[1, 1, len as i32, dim as i32], 7);
    let v = uniform(&[1, 1, len as i32, dim as i32], 8);
    let got = host(
        &fast::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            scale,
            fast::ScaledDotProductAttentionMask::Causal,
            None,
        )
        .unwrap(),
    );
    let (qs, ks, vs) = (host(&q), host(&k), host(&v));
    let mut want = vec![0.0; len * dim];
    for i in 0..len {
        let scores: Vec<f32> = (0..=i)
            .map(|j| {
                (0..dim)
                    .map(|d| qs[i * dim + d] * ks[j * dim + d])
                    .sum::<f32>()
                    * scale
            })
            .collect();
        let max = scores.iter().cloned().fold(f32::MIN, f32::max);
        let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        for d in 0..dim {
            want[i * dim + d] = (0..=i).map(|j| exps[j] / total * vs[j * dim + d]).sum();
        }
    }
    assert_close(&got, &want, 1e-5, "sdpa");
}

#[test]
fn quantized_matmul_matches_dequantized_reference() {
    for (bits, group) in [(4, 32), (4, 64), (8, 32), (8, 64)] {
        let w = uniform(&[48, 128], 9);
        let (wq, scales, biases) = ops::quantize(&w, group, bits).unwrap();
        let w_deq = ops::dequantize(&wq, &scales, &biases, group, bits).unwrap();
        let x = uniform(&[3, 128], 10);
        let got =
            host(&ops::quantized_matmul(&x, &wq, &scales, &biases, true, group, bits).unwrap());
        let (xs, ws) = (host(&x), host(&w_deq));
        // x [3,128] times w^T, w being [48,128].
        let want: Vec<f32> = (0..3)
            .flat_map(|i| (0..48).map(move |j| (i, j)))
            .map(|(i, j)| (0..128).map(|p| xs[i * 128 + p] * ws[j * 128 + p]).sum())
            .collect();
        assert_close(
            &got,
            &want,
            1e-4,
            &format!("quantized_matmul {bits}-bit g{group}"),
        );
        // And the quantization itself is close to the original weights.
        let err = host(&w)
            .iter()
            .zip(host(&w_deq))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let step = 2.0 / ((1 << bits) - 1) as f32;
        assert!(
            err <= step,
            "{bits}-bit g{group}: dequantized error {err} above one step {step}"
        );
    }
}

#[test]
fn half_precision_round_trips() {
    let values = [0.5f32, -1.25, 3.0, 1024.0];
    let a = Array::from_slice(&values, &[4]);
    for dtype in [mlx_rs::Dtype::Float16, mlx_rs::Dtype::Bfloat16] {
        assert_eq!(host(&a.as_dtype(dtype).unwrap()), values, "{dtype:?}");
    }
    let h = a.as_dtype(mlx_rs::Dtype::Float16).unwrap();
    let raw: Vec<half::f16> = h.as_slice::<half::f16>().to_vec();
    assert_eq!(raw[1], half::f16::from_f32(-1.25));
}
