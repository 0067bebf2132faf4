//! Tensor parallel: slicing loaded weights to this rank's share, and the `all_sum` that
//! adds the partial outputs back up.
//!
//! Weights are `[.., out, in]` (a leading experts axis for stacked experts). A projection
//! split by **outputs** (q/k/v, gate/up) keeps rows `rank * out/size ..`; one split by
//! **inputs** (o, down) keeps the matching columns, so its output is a partial sum. For MLX
//! affine quantization the packed `uint32` words and the per-group scales and biases run
//! along the input axis: splitting by outputs slices all three by rows, splitting by inputs
//! slices words and groups alike, which needs `in/size` to be a whole number of groups.
//!
//! A slice of a loaded tensor would keep the whole tensor's buffer alive (MLX slices are
//! views), so each slice is evaluated and copied into its own buffer.

use std::rc::Rc;

use mlx_rs::Array;

use super::super::error::{ModelError, Result};
use super::super::layers::{Linear, Matrix, QuantMatrix};
use crate::dist::Group;

/// Which axis of a `[.., out, in]` weight a projection is split along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Split {
    /// Column-parallel: each rank computes `1/size` of the output features.
    Outputs,
    /// Row-parallel: each rank reads `1/size` of the input features; outputs are partial
    /// sums.
    Inputs,
}

#[derive(Clone)]
pub(crate) struct TensorParallel {
    group: Rc<Group>,
}

impl TensorParallel {
    pub(crate) fn new(group: Rc<Group>) -> Self {
        TensorParallel { group }
    }

    pub(crate) fn size(&self) -> i32 {
        self.group.size() as i32
    }

    fn rank(&self) -> i32 {
        self.group.rank() as i32
    }

    /// The sum of every rank's partial `x`.
    pub(crate) fn all_sum(&self, x: &Array) -> Result<Array> {
        Ok(self.group.all_sum(x)?)
    }

    /// Shards a linear layer. Split by inputs, its bias stays on rank 0 only, so that the
    /// sum over ranks adds it once.
    pub(crate) fn linear(&self, l: &mut Linear, split: Split, name: &str) -> Result<()> {
        self.matrix(&mut l.weight, split, name)?;
        l.bias = match (l.bias.take(), split) {
            (Some(b), Split::Outputs) => Some(self.part(&b, 0, &format!("{name}.bias"))?),
            (Some(b), Split::Inputs) if self.rank() == 0 => Some(b),
            _ => None,
        };
        Ok(())
    }

    pub(crate) fn matrix(&self, m: &mut Matrix, split: Split, name: &str) -> Result<()> {
        match m {
            Matrix::Dense(w) => *w = self.dense(w, split, name)?,
            Matrix::Quant(q) => self.quant(q, split, name)?,
        }
        Ok(())
    }

    /// This rank's part of a float `[.., out, in]` weight.
    pub(crate) fn dense(&self, w: &Array, split: Split, name: &str) -> Result<Array> {
        let name = format!("{name}.weight");
        match split {
            Split::Outputs => self.part(w, w.ndim() as i32 - 2, &name),
            Split::Inputs => self.part(w, w.ndim() as i32 - 1, &name),
        }
    }

    /// This rank's part of a packed `[.., out, in]` weight, with its scales and biases.
    pub(crate) fn quant(&self, q: &mut QuantMatrix, split: Split, name: &str) -> Result<()> {
        let axis = match split {
            Split::Outputs => q.w.ndim() as i32 - 2,
            Split::Inputs => {
                let groups = q.scales.shape().last().copied().unwrap_or(0);
                if groups % self.size() != 0 {
                    let (inputs, g) = (groups * q.spec.group_size, q.spec.group_size);
                    return Err(ModelError::Shard(format!(
                        "{name}: its {inputs} input features split over {} ranks are {} each, \
                         not a multiple of the quantization group size {g}; use --parallel \
                         pipeline, fewer ranks, or a checkpoint quantized with smaller groups",
                        self.size(),
                        inputs / self.size(),
                    )));
                }
                q.w.ndim() as i32 - 1
            }
        };
        q.w = self.part(&q.w, axis, &format!("{name}.weight"))?;
        q.scales = self.part(&q.scales, axis, &format!("{name}.scales"))?;
        if let Some(b) = &q.biases {
            q.biases = Some(self.part(b, axis, &format!("{name}.biases"))?);
        }
        // A kept unpacked copy is made again from this rank's part (the whole one, still
        // lazy, is never computed).
        if let Some(u) = q.unpacked.take() {
            q.keep_unpacked(u.dtype())?;
        }
        Ok(())
    }

    /// This rank's contiguous part of a vector (e.g. a norm's weights over split heads).
    pub(crate) fn vector(&self, v: &Array, name: &str) -> Result<Array> {
        self.part(v, 0, name)
    }

    /// This rank's heads of a per-head stack `[heads, ..]` (latent attention's per-head
    /// projections, float or packed alike).
    pub(crate) fn heads(&self, a: &Array, name: &str) -> Result<Array> {
        self.part(a, 0, name)
    }

    /// RMSNorm of `x` whose last axis is this rank's part of the normalized values (split
    /// evenly): the squared sums are added over the ranks (mlx-lm's `ShardedRMSNorm`).
    pub(crate) fn rms_norm(&self, x: &Array, weight: &Array, eps: f32) -> Result<Array> {
        let xf = x.as_dtype(mlx_rs::Dtype::Float32)?;
        let local = xf.square()?.sum_axis(-1, true)?;
        let total = self.all_sum(&local)?;
        let dims = (x.shape().last().copied().unwrap_or(1) * self.size()) as f32;
        let scale = mlx_rs::ops::rsqrt(
            &total
                .divide(Array::from_f32(dims))?
                .add(Array::from_f32(eps))?,
        )?;
        Ok(xf.multiply(&scale)?.multiply(weight)?.as_dtype(x.dtype())?)
    }

    /// The `rank`-th of `size` equal slices of `a` along `axis`, in a buffer of its own.
    fn part(&self, a: &Array, axis: i32, name: &str) -> Result<Array> {
        let n = a.shape()[axis as usize];
        if n % self.size() != 0 {
            return Err(ModelError::Shard(format!(
                "{name}: axis {axis} of shape {:?} ({n}) does not split evenly over {} ranks",
                a.shape(),
                self.size()
            )));
        }
        let mut parts = a.split_equal(self.size(), axis)?;
        let mine = parts.swap_remove(self.rank() as usize).contiguous()?;
        mine.eval()?;
        // `deep_clone` copies the evaluated elements into a fresh array, so the whole
        // tensor's buffer is released once the loader drops it.
        Ok(mine.deep_clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slicing by hand (a plain-Rust reference) against `part` on a one-rank group is not
    /// possible (a group of one has rank 0 of 1), so check the split arithmetic directly:
    /// the pieces MLX returns for `split` must be the contiguous equal blocks we assume.
    #[test]
    fn split_gives_contiguous_equal_blocks() {
        let a = Array::from_iter(0..24i32, &[2, 3, 4]);
        let parts = a.split_equal(2, 2).unwrap();
        let second = parts[1].contiguous().unwrap();
        second.eval().unwrap();
        let copy = second.deep_clone();
        assert_eq!(copy.shape(), &[2, 3, 2]);
        assert_eq!(
            copy.as_slice::<i32>(),
            &[2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23]
        );
    }
}
