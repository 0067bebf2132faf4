//! [`Projections`]: linear layers that read the same input, run as one matmul where
//! [`Linear::fuse`] allows it (alike quantized matrices), each part's output sliced back out.
//! On GPU backends a decode step costs host time per kernel, so one matmul for q/k/v (or a
//! mixer's input projections) instead of several is time saved; each output row is computed
//! exactly as before.

use mlx_rs::Array;

use super::error::{ModelError, Result};
use super::layers::Linear;
use super::slicing::slice_axis;

pub(crate) enum Projections {
    Separate(Vec<Linear>),
    /// One matrix; `widths`: each part's outputs, in order.
    Fused {
        linear: Linear,
        widths: Vec<i32>,
    },
}

impl Projections {
    /// `parts` fused into one matmul when they can be, else kept apart.
    pub(crate) fn new(parts: Vec<Linear>) -> Result<Self> {
        let refs: Vec<&Linear> = parts.iter().collect();
        Ok(match Linear::fuse(&refs)? {
            Some(linear) => Projections::Fused {
                linear,
                widths: parts.iter().map(|l| l.weight.rows()).collect(),
            },
            None => Projections::Separate(parts),
        })
    }

    /// `x` `[..., in]` -> each part's `[..., out_i]`, in order.
    pub(crate) fn forward(&self, x: &Array) -> Result<Vec<Array>> {
        match self {
            Projections::Separate(parts) => parts.iter().map(|l| l.forward(x)).collect(),
            Projections::Fused { linear, widths } => {
                let y = linear.forward(x)?;
                let axis = y
                    .ndim()
                    .checked_sub(1)
                    .ok_or_else(|| ModelError::Mlx("a projection gave a scalar".into()))?;
                let mut start = 0;
                widths
                    .iter()
                    .map(|w| {
                        let part = slice_axis(&y, axis, start, start + w)?;
                        start += w;
                        Ok(part)
                    })
                    .collect()
            }
        }
    }

    /// `forward`, for exactly `N` parts.
    pub(crate) fn forward_n<const N: usize>(&self, x: &Array) -> Result<[Array; N]> {
        <[Array; N]>::try_from(self.forward(x)?)
            .map_err(|v| ModelError::Mlx(format!("{} projections, expected {N}", v.len())))
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        match self {
            Projections::Separate(parts) => parts.iter().flat_map(Linear::arrays).collect(),
            Projections::Fused { linear, .. } => linear.arrays(),
        }
    }
}

#[cfg(test)]
mod tests {
    use mlx_rs::{random, Array};

    use super::*;
    use crate::model::layers::tests::quantized;

    /// The values in row-major order (a fused part is a strided view: reshaping copies it).
    fn host(a: &Array) -> Vec<f32> {
        a.reshape(&[-1]).unwrap().as_slice::<f32>().to_vec()
    }

    #[test]
    fn fused_parts_equal_the_separate_ones() {
        let parts = || vec![quantized(64, 128, 1, false), quantized(32, 128, 2, false)];
        let fused = Projections::new(parts()).unwrap();
        assert!(matches!(fused, Projections::Fused { .. }));
        let separate = Projections::Separate(parts());
        let x = random::normal::<f32>(&[2, 3, 128], None, None, &random::key(4).unwrap()).unwrap();
        let [a, b] = fused.forward_n::<2>(&x).unwrap();
        let [c, d] = separate.forward_n::<2>(&x).unwrap();
        assert_eq!((a.shape(), b.shape()), (&[2, 3, 64][..], &[2, 3, 32][..]));
        assert_eq!((host(&a), host(&b)), (host(&c), host(&d)));
        assert!(fused.forward_n::<3>(&x).is_err());
    }
}
