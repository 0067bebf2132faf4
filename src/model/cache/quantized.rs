//! Quantized keys and values (`--kv-bits`), as mlx-lm's `QuantizedKVCache`: each position's
//! head vector is quantized in groups (`mx.quantize`: affine, `bits` per value, a scale and a
//! bias per `group_size` values) once the cache holds `start` positions
//! (`--quantized-kv-start`; mlx-lm's `maybe_quantize_kv_cache` converts after the step that
//! reaches it, and so does [`KvCache`](super::KvCache): at its next update). With `start` 0
//! every position is quantized before any query reads it (mlx-lm's first forward reads exact
//! keys: its 0 is kooka's 1), so a sequence reads the same keys however it was scheduled:
//! prefilled alone or batched, resumed from the prefix cache, verified with drafts.
//!
//! A quantized position is stored *packed* in one uint32 array, `[..., D * bits / 32]` of
//! quantized values then the scales and biases as float32 bits (`[..., D / group_size]`
//! each), so that everything a cache does along positions and rows (grow, slice, merge rows,
//! drop tails, copy a row out for the prefix cache, write it to disk) works unchanged on the
//! packed array. Attention reads the cache dequantized: the same values mlx-lm's quantized
//! products read, computed in the model's dtype.

use mlx_rs::{ops, Array, Dtype};

use crate::model::config::{QuantMode, QuantSpec};
use crate::model::error::{ModelError, Result};
use crate::model::quant_ops::dequantize;
use crate::model::slicing::slice_axis;

/// How keys and values are quantized; plain data (it travels in the engine's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvQuantization {
    /// 2, 3, 4, 5, 6 or 8.
    pub bits: i32,
    /// Values per scale and bias: 32, 64 or 128 (must divide the head dimension).
    pub group_size: i32,
    /// Positions a cache holds before it is quantized (mlx-lm's default: 5000).
    pub start: i32,
}

impl KvQuantization {
    fn spec(&self) -> QuantSpec {
        QuantSpec {
            group_size: self.group_size,
            bits: self.bits,
            mode: QuantMode::Affine,
        }
    }

    /// Packed uint32 lanes of one head vector of `dim` values.
    pub fn lanes(&self, dim: i32) -> i32 {
        dim * self.bits / 32 + 2 * (dim / self.group_size)
    }

    /// Bytes per position of a head vector of `dim` values, quantized.
    pub fn bytes(&self, dim: i32) -> usize {
        4 * self.lanes(dim).max(0) as usize
    }

    /// The head dimension of a packed array of `lanes` lanes.
    fn dim(&self, lanes: i32) -> i32 {
        lanes * 32 * self.group_size / (self.bits * self.group_size + 64)
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if ![2, 3, 4, 5, 6, 8].contains(&self.bits) {
            return Err(format!("--kv-bits {}: use 2, 3, 4, 5, 6 or 8", self.bits));
        }
        if ![32, 64, 128].contains(&self.group_size) {
            return Err(format!(
                "--kv-group-size {}: use 32, 64 or 128",
                self.group_size
            ));
        }
        if self.start < 0 {
            return Err("--quantized-kv-start must be at least 0".into());
        }
        Ok(())
    }
}

/// Whether `a` holds packed quantized positions (a plain cache is never uint32).
pub fn is_packed(a: &Array) -> bool {
    a.dtype() == Dtype::Uint32
}

/// `x` (`[..., D]`, float) quantized and packed into `[..., lanes(D)]` uint32.
pub fn pack(x: &Array, q: &KvQuantization) -> Result<Array> {
    let dim = x.shape().last().copied().unwrap_or(0);
    if dim % q.group_size != 0 {
        return Err(ModelError::Request(format!(
            "--kv-group-size {} does not divide the head dimension {dim}",
            q.group_size
        )));
    }
    let (w, scales, biases) = ops::quantize(x, q.group_size, q.bits)?;
    let as_lanes =
        |a: Array| -> Result<Array> { Ok(a.as_dtype(Dtype::Float32)?.view_dtype(Dtype::Uint32)?) };
    Ok(ops::concatenate(
        &[w, as_lanes(scales)?, as_lanes(biases)?],
        -1,
    )?)
}

/// The values of a packed array, in `dtype`.
pub fn unpack(p: &Array, q: &KvQuantization, dtype: Dtype) -> Result<Array> {
    let axis = p.ndim() - 1;
    let lanes = p.shape().last().copied().unwrap_or(0);
    let dim = q.dim(lanes);
    let (nw, ng) = (dim * q.bits / 32, dim / q.group_size);
    let w = slice_axis(p, axis, 0, nw)?;
    let floats = |a: i32, b: i32| -> Result<Array> {
        Ok(slice_axis(p, axis, a, b)?
            .view_dtype(Dtype::Float32)?
            .as_dtype(dtype)?)
    };
    let scales = floats(nw, nw + ng)?;
    let biases = floats(nw + ng, nw + 2 * ng)?;
    let x = dequantize(&w, &scales, Some(&biases), &q.spec())?;
    Ok(x.as_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing keeps exactly what `mx.quantize` + `mx.dequantize` give, in less memory.
    #[test]
    fn packed_positions_dequantize_as_mlx_does() {
        let x = mlx_rs::random::normal::<f32>(&[2, 3, 5, 64], None, None, None).unwrap();
        for bits in [4, 8] {
            let q = KvQuantization {
                bits,
                group_size: 32,
                start: 0,
            };
            let p = pack(&x, &q).unwrap();
            assert_eq!(p.shape(), [2, 3, 5, q.lanes(64)]);
            assert!(p.nbytes() < x.nbytes());
            let got = unpack(&p, &q, Dtype::Float32).unwrap();
            let (w, s, b) = ops::quantize(&x, 32, bits).unwrap();
            let want = dequantize(&w, &s, Some(&b), &q.spec()).unwrap();
            let diff = got
                .subtract(&want)
                .unwrap()
                .abs()
                .unwrap()
                .max(None)
                .unwrap();
            diff.eval().unwrap();
            assert_eq!(diff.try_item_exact::<f32>().unwrap(), 0.0, "{bits} bits");
            let err = got.subtract(&x).unwrap().abs().unwrap().max(None).unwrap();
            err.eval().unwrap();
            assert!(err.try_item_exact::<f32>().unwrap() < if bits == 8 { 0.05 } else { 0.8 });
        }
        let odd = KvQuantization {
            bits: 4,
            group_size: 64,
            start: 0,
        };
        let x = ops::zeros::<f32>(&[1, 1, 1, 48]).unwrap();
        assert!(pack(&x, &odd).is_err(), "64 does not divide 48");
    }
}
