//! ggml tensor types: block geometry and dequantization to f32 of every supported block
//! format (F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q8_1 and the K-quants Q2_K..Q8_K).
//! The block maths is written from the format definitions (scale/min layout per block).

use half::{bf16, f16};

/// The ggml types this importer understands (ids as stored in GGUF tensor infos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

pub const QK: usize = 32;
pub const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            30 => BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (QK, 18),
            Q4_1 => (QK, 20),
            Q5_0 => (QK, 22),
            Q5_1 => (QK, 24),
            Q8_0 => (QK, 34),
            Q8_1 => (QK, 36),
            Q2K => (QK_K, 84),
            Q3K => (QK_K, 110),
            Q4K => (QK_K, 144),
            Q5K => (QK_K, 176),
            Q6K => (QK_K, 210),
            Q8K => (QK_K, 292),
        }
    }

    /// Bytes taken by a tensor of these GGUF dims, or None when rows don't split into
    /// whole blocks or the size overflows.
    pub fn bytes_for(self, dims: &[u64]) -> Option<u64> {
        let (bs, bb) = self.block();
        let cols = *dims.first()?;
        if cols % bs as u64 != 0 {
            return None;
        }
        dims.iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))?
            .checked_div(bs as u64)?
            .checked_mul(bb as u64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantizes `data` (whole blocks of type `ty`) into `out` (one f32 per element).
/// `data.len()` must be a multiple of the block size and match `out.len()`.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    let (bs, bb) = ty.block();
    debug_assert_eq!(data.len() / bb * bs, out.len());
    for (b, y) in data.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        dequantize_block(ty, b, y);
    }
}

/// One block; `b` has exactly the block's bytes, `y` its elements.
pub fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    use GgmlType::*;
    match ty {
        F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        F16 => y[0] = h(b, 0),
        BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        // Element j in the low nibble of qs[j], element j+16 in the high nibble.
        Q4_0 => {
            let d = h(b, 0);
            for j in 0..16 {
                y[j] = d * ((b[2 + j] & 0xF) as f32 - 8.0);
                y[j + 16] = d * ((b[2 + j] >> 4) as f32 - 8.0);
            }
        }
        Q4_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            for j in 0..16 {
                y[j] = d * (b[4 + j] & 0xF) as f32 + m;
                y[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
            }
        }
        Q5_0 | Q5_1 => {
            // 5th bit of element j is bit j of the 32-bit qh.
            let (d, m, p) = if ty == Q5_0 {
                (h(b, 0), 0.0, 2)
            } else {
                (h(b, 0), h(b, 2), 4)
            };
            let qh = u32::from_le_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]);
            let qs = &b[p + 4..];
            let off = if ty == Q5_0 { 16.0 } else { 0.0 };
            for j in 0..16 {
                let lo = (qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
                let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                y[j] = d * (lo as f32 - off) + m;
                y[j + 16] = d * (hi as f32 - off) + m;
            }
        }
        Q8_0 | Q8_1 => {
            let d = h(b, 0);
            let qs = if ty == Q8_0 { &b[2..34] } else { &b[4..36] };
            for (yi, &q) in y.iter_mut().zip(qs) {
                *yi = d * (q as i8) as f32;
            }
        }
        Q8K => {
            let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            for (yi, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
                *yi = d * (q as i8) as f32;
            }
        }
        Q2K => dequant_q2k(b, y),
        Q3K => dequant_q3k(b, y),
        Q4K | Q5K => dequant_q45k(ty == Q5K, b, y),
        Q6K => dequant_q6k(b, y),
    }
}

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), d, dmin.
fn dequant_q2k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (h(b, 80), h(b, 82));
    let mut k = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for sub in 0..2 {
                let sc = scales[half * 8 + shift + sub];
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    y[k] = dl * ((q[sub * 16 + l] >> shift) & 3) as f32 - ml;
                    k += 1;
                }
            }
        }
    }
}

/// Q3_K: hmask[32] (3rd bit), qs[64] (low 2 bits), 16 6-bit scales packed in 12 bytes, d.
fn dequant_q3k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = h(b, 108);
    // Scale i: low 4 bits from byte i%8 (nibble i/8), high 2 bits from byte 8 + i%4.
    let scale = |i: usize| -> f32 {
        let lo = (sc[i % 8] >> (4 * (i / 8))) & 0xF;
        let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 3;
        ((lo | hi << 4) as i32 - 32) as f32
    };
    let mut k = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for j in 0..4 {
            let (shift, m) = (2 * j, 1u8 << (half * 4 + j));
            for sub in 0..2 {
                let dl = d * scale(is);
                is += 1;
                for l in sub * 16..sub * 16 + 16 {
                    let lowbits = ((q[l] >> shift) & 3) as i32;
                    let v = lowbits - if hmask[l] & m != 0 { 0 } else { 4 };
                    y[k] = dl * v as f32;
                    k += 1;
                }
            }
        }
    }
}

/// The 6-bit (scale, min) pair `j` (0..8) of Q4_K/Q5_K's 12-byte scales field.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: d, dmin, scales[12], qs[128]. Q5_K adds qh[32] (5th bits) before qs.
fn dequant_q45k(five: bool, b: &[u8], y: &mut [f32]) {
    let (d, dmin, scales) = (h(b, 0), h(b, 2), &b[4..16]);
    let (qh, qs) = if five {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        for sub in 0..2 {
            let (sc, m) = scale_min_k4(2 * chunk + sub, scales);
            let (dl, ml) = (d * sc as f32, dmin * m as f32);
            let bit = 1u8 << (2 * chunk + sub);
            for l in 0..32 {
                let mut v = if sub == 0 { q[l] & 0xF } else { q[l] >> 4 };
                if five && qh[l] & bit != 0 {
                    v += 16;
                }
                y[chunk * 64 + sub * 32 + l] = dl * v as f32 - ml;
            }
        }
    }
}

/// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16], d.
fn dequant_q6k(b: &[u8], y: &mut [f32]) {
    let d = h(b, 208);
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let yo = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (i, &qi) in q.iter().enumerate() {
                yo[l + 32 * i] = d * (sc[is + 2 * i] as i8) as f32 * (qi as i32 - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_and_bytes_for() {
        assert_eq!(GgmlType::Q4_1.bytes_for(&[64, 3]), Some(3 * 2 * 20));
        assert_eq!(GgmlType::Q4K.bytes_for(&[64, 3]), None);
        assert_eq!(GgmlType::F32.bytes_for(&[u64::MAX, 2]), None);
        assert_eq!(GgmlType::from_id(4), None); // removed Q4_2
    }

    #[test]
    fn q5_0_high_bits() {
        // d = 1, qh sets the 5th bit of element 0 and element 16; all nibbles 0xF.
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16::ONE.to_le_bytes());
        b[2..6].copy_from_slice(&(1u32 | 1 << 16).to_le_bytes());
        b[6..].fill(0xFF);
        let mut y = [0f32; 32];
        dequantize_block(GgmlType::Q5_0, &b, &mut y);
        assert_eq!((y[0], y[1], y[16], y[17]), (15.0, -1.0, 15.0, -1.0));
    }

    #[test]
    fn q8_k_and_q6_k_zero_point() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[192..208].fill(2); // scales = 2
        let mut y = [0f32; QK_K];
        dequantize_block(GgmlType::Q6K, &b, &mut y);
        // all q = 0 -> (0 - 32) * 2 * 0.5
        assert!(y.iter().all(|&v| v == -32.0));
    }
}
