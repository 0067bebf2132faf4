//! MLX affine quantization (group size 32): bit packing as MLX lays it out, lossless
//! repacking of GGUF Q4_1 / Q8_0 blocks, and a plain affine quantizer for `--requantize`.
//!
//! MLX stores `bits`-bit values as one contiguous little-endian bit stream per row, lowest
//! bits first, read as uint32 words (for 2/4/8 bits that is "32/bits values per word").
//! A group of 32 values always fills exactly `bits` words. Dequantized = scale * q + bias.

use half::f16;

use super::quant::QK;

pub const GROUP: usize = 32;

/// One tensor in MLX affine form: `weight` is [rows, cols*bits/32] u32, scales and biases
/// are [rows, cols/32] f16.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    pub bits: u8,
    pub weight: Vec<u32>,
    pub scales: Vec<f16>,
    pub biases: Vec<f16>,
}

/// Packs one group of 32 unsigned values (each < 2^bits) into `bits` words.
pub fn pack_group(q: &[u8; GROUP], bits: u8, out: &mut Vec<u32>) {
    let start = out.len();
    out.resize(start + bits as usize, 0);
    let words = &mut out[start..];
    for (i, &v) in q.iter().enumerate() {
        let pos = i * bits as usize;
        let (w, s) = (pos / 32, pos % 32);
        words[w] |= (v as u32) << s;
        if s + bits as usize > 32 {
            words[w + 1] |= (v as u32) >> (32 - s);
        }
    }
}

/// Inverse of [`pack_group`]: `words` holds exactly `bits` words.
pub fn unpack_group(words: &[u32], bits: u8) -> [u8; GROUP] {
    let mask = (1u64 << bits) - 1;
    let mut q = [0u8; GROUP];
    for (i, qi) in q.iter_mut().enumerate() {
        let pos = i * bits as usize;
        let (w, s) = (pos / 32, pos % 32);
        let lo = words[w] as u64;
        let hi = words.get(w + 1).copied().unwrap_or(0) as u64;
        *qi = (((lo | hi << 32) >> s) & mask) as u8;
    }
    q
}

/// Q4_1 blocks (f16 d, f16 m, 16 bytes of nibbles) -> 4-bit affine, losslessly:
/// scale = d, bias = m, and the nibbles reordered to MLX's sequential packing.
pub fn repack_q4_1(data: &[u8]) -> Affine {
    let n = data.len() / 20;
    let mut a = Affine {
        bits: 4,
        weight: Vec::with_capacity(n * 4),
        scales: Vec::with_capacity(n),
        biases: Vec::with_capacity(n),
    };
    for b in data.chunks_exact(20) {
        a.scales.push(f16::from_le_bytes([b[0], b[1]]));
        a.biases.push(f16::from_le_bytes([b[2], b[3]]));
        let mut q = [0u8; GROUP];
        for j in 0..16 {
            q[j] = b[4 + j] & 0xF;
            q[j + 16] = b[4 + j] >> 4;
        }
        pack_group(&q, 4, &mut a.weight);
    }
    a
}

/// Q8_0 blocks (f16 d, 32 x i8) -> 8-bit affine, losslessly: q + 128 with bias -128*d
/// (a power-of-two multiple, exact in f16 unless it overflows: then None).
pub fn repack_q8_0(data: &[u8]) -> Option<Affine> {
    let n = data.len() / 34;
    let mut a = Affine {
        bits: 8,
        weight: Vec::with_capacity(n * 8),
        scales: Vec::with_capacity(n),
        biases: Vec::with_capacity(n),
    };
    for b in data.chunks_exact(34) {
        let d = f16::from_le_bytes([b[0], b[1]]);
        let bias = f16::from_f32(-128.0 * d.to_f32());
        if !bias.is_finite() {
            return None;
        }
        a.scales.push(d);
        a.biases.push(bias);
        let mut q = [0u8; GROUP];
        for (qi, &v) in q.iter_mut().zip(&b[2..34]) {
            *qi = (v as i8 as i16 + 128) as u8;
        }
        pack_group(&q, 8, &mut a.weight);
    }
    Some(a)
}

/// Affine-quantizes rows of f32 (length a multiple of 32) to `bits` (2..=8):
/// scale = (max - min) / (2^bits - 1), bias = min, q = round((x - bias) / scale).
pub fn quantize(values: &[f32], bits: u8) -> Affine {
    let n = values.len() / GROUP;
    let levels = ((1u32 << bits) - 1) as f32;
    let mut a = Affine {
        bits,
        weight: Vec::with_capacity(n * bits as usize),
        scales: Vec::with_capacity(n),
        biases: Vec::with_capacity(n),
    };
    for g in values.chunks_exact(GROUP) {
        let (lo, hi) = g
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        // Quantize against the f16-rounded parameters that will actually be stored.
        let bias = f16::from_f32(lo);
        let scale = f16::from_f32((hi - lo) / levels);
        let (s, b) = (scale.to_f32(), bias.to_f32());
        let mut q = [0u8; GROUP];
        for (qi, &x) in q.iter_mut().zip(g) {
            let v = if s > 0.0 { ((x - b) / s).round() } else { 0.0 };
            *qi = v.clamp(0.0, levels) as u8;
        }
        pack_group(&q, bits, &mut a.weight);
        a.scales.push(scale);
        a.biases.push(bias);
    }
    a
}

/// Dequantizes the affine form back to f32 (scale * q + bias), group by group.
pub fn dequantize(a: &Affine) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.scales.len() * GROUP);
    for (g, words) in a.weight.chunks_exact(a.bits as usize).enumerate() {
        let (s, b) = (a.scales[g].to_f32(), a.biases[g].to_f32());
        out.extend(
            unpack_group(words, a.bits)
                .iter()
                .map(|&q| s * q as f32 + b),
        );
    }
    out
}

const _: () = assert!(QK == GROUP);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::quant::{dequantize as ggml_dequant, GgmlType};

    /// Deterministic pseudo-random bytes (xorshift), so tests need no extra crates.
    pub fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Random blocks with finite, modest f16 scales in the first `n_f16` bytes of each.
    fn blocks(n: usize, size: usize, n_f16: usize, seed: u64) -> Vec<u8> {
        let mut data = noise(n * size, seed);
        for (i, b) in data.chunks_exact_mut(size).enumerate() {
            for k in 0..n_f16 / 2 {
                let v = ((i * 7 + k * 3) % 23) as f32 * 0.01 - 0.11;
                b[2 * k..2 * k + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        data
    }

    /// Exact f32 equality, element by element (+0.0 == -0.0: for Q8_0 a zero q gives d*0 = -0.0
    /// in ggml for negative d, while q_u*d + bias gives +0.0; same value).
    fn assert_same(want: &[f32], got: &[f32]) {
        assert_eq!(want.len(), got.len());
        if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
            panic!("element {i}: ggml {} vs mlx form {}", want[i], got[i]);
        }
    }

    #[test]
    fn q4_1_repack_is_bit_identical() {
        let data = blocks(64, 20, 4, 7);
        let mut want = vec![0f32; 64 * 32];
        ggml_dequant(GgmlType::Q4_1, &data, &mut want);
        assert_same(&want, &dequantize(&repack_q4_1(&data)));
    }

    #[test]
    fn q4_1_packing_order() {
        // Element j = low nibble of qs[j]; element j+16 = high nibble. qs[0] = 0x21 -> e0=1, e16=2.
        let mut b = [0u8; 20];
        b[4] = 0x21;
        b[5] = 0x03;
        let a = repack_q4_1(&b);
        assert_eq!(a.weight[0], 0x31); // e0 = 1 in bits 0..4, e1 = 3 in bits 4..8
        assert_eq!(a.weight[2], 0x2); // e16 = 2 starts word 2
    }

    #[test]
    fn q8_0_repack_is_bit_identical() {
        let data = blocks(64, 34, 2, 11);
        let mut want = vec![0f32; 64 * 32];
        ggml_dequant(GgmlType::Q8_0, &data, &mut want);
        let a = repack_q8_0(&data).expect("finite");
        assert_same(&want, &dequantize(&a));
        // And a known value: q = -128 stored as 0.
        let mut b = [0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = 0x80;
        let a = repack_q8_0(&b).expect("finite");
        assert_eq!((a.weight[0] & 0xFF, a.biases[0].to_f32()), (0, -64.0));
    }

    #[test]
    fn pack_roundtrip_all_bits() {
        for bits in 2..=8u8 {
            let raw = noise(GROUP, bits as u64);
            let mut q = [0u8; GROUP];
            for (qi, r) in q.iter_mut().zip(raw) {
                *qi = r & ((1u16 << bits) - 1) as u8;
            }
            let mut words = Vec::new();
            pack_group(&q, bits, &mut words);
            assert_eq!(words.len(), bits as usize);
            assert_eq!(unpack_group(&words, bits), q, "bits {bits}");
        }
    }

    /// Our packing must be what MLX unpacks: dequantize our form with MLX and compare, and
    /// unpack MLX's own `quantize` output with our code.
    #[test]
    fn packing_matches_mlx_for_all_bits() {
        use mlx_rs::{ops, Array};
        let (rows, cols) = (4usize, 128usize);
        let x: Vec<f32> = noise(rows * cols, 5)
            .iter()
            .map(|&b| b as f32 / 50.0 - 2.5)
            .collect();
        for bits in [2u8, 3, 4, 5, 6, 8] {
            let a = quantize(&x, bits);
            let f32s = |h: &[f16]| h.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
            let groups = [rows as i32, (cols / GROUP) as i32];
            let w = Array::from_slice(
                &a.weight,
                &[rows as i32, (cols * bits as usize / 32) as i32],
            );
            let (s, b) = (
                Array::from_slice(&f32s(&a.scales), &groups),
                Array::from_slice(&f32s(&a.biases), &groups),
            );
            let got = ops::dequantize(&w, &s, &b, 32, bits as i32).expect("mlx dequantize");
            got.eval().expect("eval");
            assert_eq!(
                got.as_slice::<f32>(),
                dequantize(&a).as_slice(),
                "bits {bits}: MLX reads our packing differently"
            );

            let xa = Array::from_slice(&x, &[rows as i32, cols as i32]);
            let (mw, ms, mb) = ops::quantize(&xa, 32, bits as i32).expect("mlx quantize");
            let theirs = Affine {
                bits,
                weight: mw.as_slice::<u32>().to_vec(),
                scales: ms
                    .as_slice::<f32>()
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect(),
                biases: mb
                    .as_slice::<f32>()
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect(),
            };
            let (mine, ref_) = (
                dequantize(&theirs),
                ops::dequantize(&mw, &ms, &mb, 32, bits as i32).expect("deq"),
            );
            // Same q values; only the f16 rounding of MLX's f32 scales/biases may differ.
            let mb = mb.as_slice::<f32>();
            for (i, (p, q)) in mine.iter().zip(ref_.as_slice::<f32>()).enumerate() {
                let tol = (q.abs() + mb[i / GROUP].abs()) * 2f32.powi(-10) + 1e-6;
                assert!(
                    (p - q).abs() <= tol,
                    "bits {bits}: our unpack of MLX's quantize {p} vs {q}"
                );
            }
        }
    }

    #[test]
    fn quantize_error_is_bounded() {
        let x: Vec<f32> = noise(256, 3)
            .iter()
            .map(|&b| b as f32 / 37.0 - 3.0)
            .collect();
        for bits in [2u8, 3, 4, 5, 6, 8] {
            let a = quantize(&x, bits);
            let y = dequantize(&a);
            for (g, (xg, yg)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                let step = a.scales[g].to_f32();
                let err = xg
                    .iter()
                    .zip(yg)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err <= step * 0.51 + 1e-2,
                    "bits {bits} group {g}: err {err} step {step}"
                );
            }
        }
    }
}
