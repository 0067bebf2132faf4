//! A packed (MLX-quantized) matrix and how it multiplies an input: MLX's quantized matmul,
//! or on CUDA, by input size, a transient unpacked copy (long inputs), kooka's few-rows kernel
//! (`cuda::qmv`) or MLX's GEMM on rows padded to 8.

use mlx_rs::{ops, Array, Dtype};

use super::config::{QuantConfig, QuantMode, QuantSpec};
use super::cuda::qmv;
use super::error::{ModelError, Result};
use super::layers::Folded;
use super::quant_ops;
use super::slicing::slice_axis;
use super::weights::Weights;
use crate::dist::depends;

/// Packed quantized matrix `[rows, cols]` (MLX layout: uint32 words along cols).
pub struct QuantMatrix {
    pub w: Array,
    pub scales: Array,
    /// Affine packing's per-group offsets (`None` for mxfp4).
    pub biases: Option<Array>,
    pub spec: QuantSpec,
    /// Inputs of at least this many rows are multiplied by the unpacked matrix (a transient
    /// float copy, then a GEMM): MLX's quantized GEMM is arithmetic-bound far below the
    /// device's float GEMM on a long prompt. `None`: always the quantized matmul.
    pub dense_from_rows: Option<i32>,
    /// The unpacked matrix kept from load (`WeightPolicy::keep_unpacked`), used for inputs of
    /// at least `dense_from_rows` rows instead of a transient copy.
    pub unpacked: Option<Array>,
    /// Inputs of half up to this many rows (a small decode batch) are padded with zero rows to
    /// this many: MLX's CUDA backend multiplies fewer than 8 rows as that many matrix-vector
    /// products, each reading the whole matrix, and 8 or more in one GEMM. `None`: never.
    pub pad_rows_to: Option<i32>,
}

impl QuantMatrix {
    /// Loads `<path>.weight/.scales/.biases` for a `[..lead, rows, cols]` matrix (`lead`
    /// is empty for a linear, `[experts]` for stacked experts). The packing comes from the
    /// config's per-module entry when it has one, else from the shapes (as mlx-lm does; uint8
    /// scales and no biases mean mxfp4), and is then checked against every shape.
    /// `cast_scales`: apply the weight policy's dtype to scales/biases (else keep them as
    /// stored, for dequantizing exactly as mlx-lm's `dequantize_model` does).
    pub(crate) fn load(
        ws: &mut Weights,
        path: &str,
        lead: &[i32],
        rows: i32,
        cols: i32,
        quant: &QuantConfig,
        cast_scales: bool,
    ) -> Result<Self> {
        let wname = format!("{path}.weight");
        let sname = format!("{path}.scales");
        let bname = format!("{path}.biases");
        let w = ws.take(&wname, None)?;
        let scales = ws.take(&sname, None)?;
        let spec = match quant.for_module(path) {
            Some(Some(spec)) => spec,
            Some(None) => {
                return Err(ModelError::BadTensor {
                    name: sname,
                    message: "config says this module is not quantized, but it has scales".into(),
                })
            }
            None => {
                let (ws_last, ss_last) = (
                    w.shape().last().copied().unwrap_or(0),
                    scales.shape().last().copied().unwrap_or(0),
                );
                if ws_last <= 0 || ss_last <= 0 {
                    return Err(ModelError::BadTensor {
                        name: wname,
                        message: "empty quantized tensor".into(),
                    });
                }
                let mxfp4 = scales.dtype() == Dtype::Uint8 && !ws.contains(&bname);
                QuantSpec {
                    group_size: cols / ss_last,
                    bits: ws_last * 32 / cols,
                    mode: if mxfp4 {
                        QuantMode::Mxfp4
                    } else {
                        QuantMode::Affine
                    },
                }
                .validate(&format!("inferred packing of {path}"))?
            }
        };
        if w.dtype() != Dtype::Uint32 {
            return Err(ModelError::BadTensor {
                name: wname,
                message: format!("packed weight must be uint32, found {:?}", w.dtype()),
            });
        }
        if cols % spec.group_size != 0 || (cols * spec.bits) % 32 != 0 {
            return Err(ModelError::BadTensor {
                name: wname,
                message: format!("{cols} columns do not fit {spec:?}"),
            });
        }
        let shape = |last: i32| -> Vec<i32> { lead.iter().copied().chain([rows, last]).collect() };
        let check = |name: &str, a: &Array, want: Vec<i32>| -> Result<()> {
            if a.shape() != want.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name: name.into(),
                    expected: want,
                    found: a.shape().to_vec(),
                });
            }
            Ok(())
        };
        check(&wname, &w, shape(cols * spec.bits / 32))?;
        check(&sname, &scales, shape(cols / spec.group_size))?;
        let (scales, biases) = match spec.mode {
            QuantMode::Affine => {
                let biases = ws.take(&bname, Some(&shape(cols / spec.group_size)))?;
                if cast_scales {
                    (ws.cast(&sname, scales)?, Some(ws.cast(&bname, biases)?))
                } else {
                    (scales, Some(biases))
                }
            }
            // Exponents (uint8), never cast.
            QuantMode::Mxfp4 => (scales, None),
        };
        let mut q = QuantMatrix {
            w,
            scales,
            biases,
            spec,
            dense_from_rows: ws.policy.dense_from_rows,
            unpacked: None,
            pad_rows_to: ws.policy.pad_rows_to,
        };
        // Stacked experts go through MLX's gathered matmul: they keep no copy.
        if ws.policy.keep_unpacked && lead.is_empty() {
            q.keep_unpacked(ws.policy.dtype.unwrap_or(q.scales.dtype()))?;
        }
        Ok(q)
    }

    /// Makes the kept unpacked copy (lazily) from the packed matrix as it is now, in `dtype`.
    pub(crate) fn keep_unpacked(&mut self, dtype: Dtype) -> Result<()> {
        self.unpacked = Some(self.dequantize()?.as_dtype(dtype)?);
        Ok(())
    }

    pub(crate) fn dequantize(&self) -> Result<Array> {
        quant_ops::dequantize(&self.w, &self.scales, self.biases.as_ref(), &self.spec)
    }

    /// `x @ W.T` with the packed matrix.
    pub(crate) fn matmul_t(&self, x: &Array) -> Result<Array> {
        let shape = x.shape();
        let rows: i32 = shape[..shape.len().saturating_sub(1)].iter().product();
        if let Some(w) = self
            .unpacked
            .as_ref()
            .filter(|_| self.dense_from_rows.is_some_and(|min| rows >= min))
        {
            let w = match w.dtype() == x.dtype() {
                true => w.clone(),
                false => w.as_dtype(x.dtype())?,
            };
            return Ok(ops::matmul(x, w.t())?);
        }
        if self.dense_from_rows.is_some_and(|min| rows >= min) {
            // Unpacked only once `x` exists: MLX would otherwise schedule the unpacking of
            // every layer's weights early and hold all those float copies at once.
            let w = depends(&[&self.w], &[x])?.remove(0);
            let w = quant_ops::dequantize(&w, &self.scales, self.biases.as_ref(), &self.spec)?
                .as_dtype(x.dtype())?;
            return Ok(ops::matmul(x, w.t())?);
        }
        if let Some(m) = self.packed() {
            if qmv::applies(x, m.w, m.scales, m.bits, m.group) {
                return qmv::matmul_t(x, m, &Folded::default());
            }
        }
        let pad = match (self.pad_rows_to, shape) {
            // Padding at most doubles the rows: 2 rows padded to 8 measured slower than
            // two matrix-vector products (H200: 14.5 vs 11.1 ms a step), 4 rows faster.
            (Some(n), &[1, m, _]) if m < n && 2 * m >= n && self.spec.mode == QuantMode::Affine => {
                Some((m, n))
            }
            _ => None,
        };
        if let Some((m, n)) = pad {
            let padded = ops::pad(x, &[(0, 0), (0, n - m), (0, 0)], None, None)?;
            let y = quant_ops::quantized_matmul(
                &padded,
                &self.w,
                &self.scales,
                self.biases.as_ref(),
                &self.spec,
                true,
            )?;
            return slice_axis(&y, 1, 0, m);
        }
        quant_ops::quantized_matmul(
            x,
            &self.w,
            &self.scales,
            self.biases.as_ref(),
            &self.spec,
            true,
        )
    }

    /// `x @ W.T` with `folded`'s neighbours in kooka's kernel, when it takes them (affine
    /// packing, a decode step's few rows: [`qmv::applies_folded`]); else `None`.
    pub(crate) fn matmul_t_folded(&self, x: &Array, folded: &Folded) -> Result<Option<Array>> {
        match self.kernel_takes(x, folded) {
            Some(m) if folded.rope.is_none() => Ok(Some(qmv::matmul_t(x, m, folded)?)),
            _ => Ok(None),
        }
    }

    /// A fused q/k/v product with RoPE in kooka's kernel, as q, k and v heads
    /// ([`qmv::rotated_heads`]), when it takes it; else `None`.
    pub(crate) fn rotated_heads(&self, x: &Array, folded: &Folded) -> Result<Option<[Array; 3]>> {
        match self.kernel_takes(x, folded) {
            Some(m) if folded.rope.is_some() => Ok(Some(qmv::rotated_heads(x, m, folded)?)),
            _ => Ok(None),
        }
    }

    /// [`Self::rotated_heads`] with k and v written into `folded.rope`'s cache slot by the
    /// kernel ([`qmv::rotated_q_into_cache`]): q, when the kernel takes it all; else `None`.
    pub(crate) fn rotated_q_into_cache(&self, x: &Array, folded: &Folded) -> Result<Option<Array>> {
        match self.kernel_takes(x, folded) {
            Some(m) if folded.rope.is_some_and(|r| r.into_cache.is_some()) => {
                Ok(Some(qmv::rotated_q_into_cache(x, m, folded)?))
            }
            _ => Ok(None),
        }
    }

    /// This matrix as kooka's kernel takes it, when it does take `x` and `folded` here.
    fn kernel_takes(&self, x: &Array, folded: &Folded) -> Option<qmv::Packed<'_>> {
        self.packed()
            .filter(|m| qmv::applies_folded(x, m.w, m.scales, m.bits, m.group, folded))
    }

    /// The matrix for kooka's kernel: affine packing with biases.
    fn packed(&self) -> Option<qmv::Packed<'_>> {
        match (&self.biases, self.spec.mode) {
            (Some(biases), QuantMode::Affine) => Some(qmv::Packed {
                w: &self.w,
                scales: &self.scales,
                biases,
                bits: self.spec.bits,
                group: self.spec.group_size,
            }),
            _ => None,
        }
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = vec![&self.w, &self.scales];
        v.extend(self.biases.iter());
        v.extend(self.unpacked.iter());
        v
    }
}
