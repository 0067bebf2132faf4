//! The building blocks of a transformer forward: linear layers and embeddings (float or
//! MLX-quantized) and RMSNorm (RoPE is in `rope.rs`). Each mirrors the op sequence of the matching
//! `mlx.nn` layer so results are bit-identical to mlx-lm on the same weights.

use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{fast, ops, Array};

use super::adapter::Lora;
use super::config::QuantConfig;
use super::error::Result;
pub use super::folded::{CacheSlot, Folded, RopeFold};
pub use super::quant_matrix::QuantMatrix;
use super::quant_ops;
use super::slicing::slice_axis;
use super::weights::Weights;

type Binary =
    Box<dyn for<'a> FnMut((&'a Array, &'a Array)) -> std::result::Result<Array, Exception>>;

thread_local! {
    /// One compiled SwiGLU per thread (MLX state is per thread), traced on first use and
    /// then reused: a fused kernel on GPU backends, as mlx-lm's `mx.compile`d `swiglu`.
    /// (`mlx_rs::nn::silu` compiles a fresh closure, and so re-traces, on every call.)
    static SWIGLU: RefCell<Binary> = RefCell::new(Box::new(compile(
        |(gate, up): (&Array, &Array)| gate.multiply(ops::sigmoid(gate)?)?.multiply(up),
        true,
    )));
    static SWIGLU_OAI: RefCell<Binary> = RefCell::new(Box::new(compile(
        |(gate, up): (&Array, &Array)| {
            let c = |v: f32| Array::from_f32(v).as_dtype(gate.dtype());
            let gate = ops::minimum(gate, c(7.0)?)?;
            let up = ops::clip(up, (&c(-7.0)?, &c(7.0)?))?;
            let glu = gate.multiply(ops::sigmoid(c(1.702)?.multiply(&gate)?)?)?;
            up.add(c(1.0)?)?.multiply(glu)
        },
        true,
    )));
}

/// `silu(gate) * up`, the gated MLP activation.
pub fn swiglu(gate: &Array, up: &Array) -> Result<Array> {
    Ok(SWIGLU.with(|f| (f.borrow_mut())((gate, up)))?)
}

/// [`swiglu`] of the two halves of `y`'s last axis: gate, then up (a fused gate/up product).
pub fn swiglu_halves(y: &Array) -> Result<Array> {
    let axis = y.ndim() - 1;
    let h = y.shape()[axis] / 2;
    swiglu(&slice_axis(y, axis, 0, h)?, &slice_axis(y, axis, h, 2 * h)?)
}

/// gpt-oss's SwiGLU (mlx-lm's compiled `swiglu_oai`): the gate clipped from above at 7, the
/// linear part clipped to +-7 and shifted by one, `(up + 1) * gate * sigmoid(1.702 * gate)`.
/// The constants are in the inputs' dtype, as Python scalars are in MLX.
pub fn swiglu_oai(gate: &Array, up: &Array) -> Result<Array> {
    Ok(SWIGLU_OAI.with(|f| (f.borrow_mut())((gate, up)))?)
}

/// A `[out, in]` matrix, float or packed.
pub enum Matrix {
    Dense(Array),
    Quant(QuantMatrix),
}

impl Matrix {
    /// The float matrix (dequantized when packed).
    pub fn dense(&self) -> Result<Array> {
        match self {
            Matrix::Dense(w) => Ok(w.clone()),
            Matrix::Quant(q) => q.dequantize(),
        }
    }

    /// Loads module `path`'s matrix: quantized iff `<path>.scales` exists. Under a
    /// dequantizing policy the packed matrix is expanded once here (then cast).
    pub fn load(
        ws: &mut Weights,
        path: &str,
        rows: i32,
        cols: i32,
        quant: &QuantConfig,
    ) -> Result<Self> {
        if !ws.contains(&format!("{path}.scales")) {
            return Ok(Matrix::Dense(
                ws.take_float(&format!("{path}.weight"), &[rows, cols])?,
            ));
        }
        let q = QuantMatrix::load(ws, path, &[], rows, cols, quant, !ws.policy.dequantize)?;
        if ws.policy.dequantize {
            // Dequantize in the stored scale dtype, then cast: the same values as mlx-lm's
            // `dequantize_model` followed by `set_dtype`.
            let dense = q.dequantize()?;
            return Ok(Matrix::Dense(ws.cast(path, dense)?));
        }
        Ok(Matrix::Quant(q))
    }

    /// `x @ W.T`.
    pub fn matmul_t(&self, x: &Array) -> Result<Array> {
        match self {
            Matrix::Dense(w) => Ok(ops::matmul(x, w.t())?),
            Matrix::Quant(q) => q.matmul_t(x),
        }
    }

    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            Matrix::Dense(w) => vec![w],
            Matrix::Quant(q) => q.arrays(),
        }
    }

    /// The number of rows (outputs of a linear).
    pub fn rows(&self) -> i32 {
        match self {
            Matrix::Dense(w) => w.shape()[0],
            Matrix::Quant(q) => q.w.shape()[0],
        }
    }
}

/// `nn.Linear` / `nn.QuantizedLinear`, with a LoRA adapter's update when one is loaded.
pub struct Linear {
    pub weight: Matrix,
    pub bias: Option<Array>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn load(
        ws: &mut Weights,
        path: &str,
        input: i32,
        output: i32,
        bias: bool,
        quant: &QuantConfig,
    ) -> Result<Self> {
        let weight = Matrix::load(ws, path, output, input, quant)?;
        let bias = if bias {
            Some(ws.take_float(&format!("{path}.bias"), &[output])?)
        } else {
            None
        };
        let lora = Lora::take(ws, path, input, output, &weight)?;
        Ok(Linear { weight, bias, lora })
    }

    /// One linear computing `parts` side by side (their outputs concatenated in order), when
    /// all are packed alike (one quantization spec, one scale dtype, biases on all or none);
    /// else `None`. Fewer, larger quantized matmuls per token: on GPU backends decode is
    /// bound by the host's per-kernel cost. Each output row is computed exactly as before.
    /// Float matrices are never fused (their GEMM may pick another algorithm by shape).
    pub fn fuse(parts: &[&Linear]) -> Result<Option<Linear>> {
        let quant: Option<Vec<&QuantMatrix>> = parts
            .iter()
            .map(|l| match &l.weight {
                Matrix::Quant(q) => Some(q),
                Matrix::Dense(_) => None,
            })
            .collect();
        let Some(quant) = quant else { return Ok(None) };
        if parts.iter().any(|l| l.lora.is_some()) {
            return Ok(None);
        }
        let first = quant[0];
        let alike = quant.iter().all(|q| {
            q.spec == first.spec
                && q.scales.dtype() == first.scales.dtype()
                && q.biases.as_ref().map(Array::dtype) == first.biases.as_ref().map(Array::dtype)
        });
        let with_bias = parts.iter().filter(|l| l.bias.is_some()).count();
        if parts.len() < 2 || !alike || (with_bias != 0 && with_bias != parts.len()) {
            return Ok(None);
        }
        let cat = |f: fn(&QuantMatrix) -> &Array| -> Result<Array> {
            let arrays: Vec<&Array> = quant.iter().map(|q| f(q)).collect();
            Ok(ops::concatenate(&arrays, 0)?)
        };
        let weight = Matrix::Quant(QuantMatrix {
            w: cat(|q| &q.w)?,
            scales: cat(|q| &q.scales)?,
            biases: match first.biases {
                Some(_) => {
                    let arrays: Vec<&Array> =
                        quant.iter().filter_map(|q| q.biases.as_ref()).collect();
                    Some(ops::concatenate(&arrays, 0)?)
                }
                None => None,
            },
            spec: first.spec,
            dense_from_rows: first.dense_from_rows,
            unpacked: match quant
                .iter()
                .map(|q| q.unpacked.as_ref())
                .collect::<Option<Vec<_>>>()
            {
                Some(copies) => Some(ops::concatenate(&copies, 0)?),
                None => None,
            },
            pad_rows_to: first.pad_rows_to,
        });
        let bias = match with_bias {
            0 => None,
            _ => {
                let b: Vec<&Array> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
                Some(ops::concatenate(&b, 0)?)
            }
        };
        Ok(Some(Linear {
            weight,
            bias,
            lora: None,
        }))
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        if let Some(lora) = self.lora.as_ref().filter(|l| l.rescales()) {
            // DoRA: the rescaled output, then the bias.
            let y = as_one_sequence(x, |x| self.weight.matmul_t(x))?;
            let out = lora.add_to(x, y)?;
            return match &self.bias {
                Some(b) => Ok(out.add(b)?),
                None => Ok(out),
            };
        }
        let y = as_one_sequence(x, |x| match (&self.weight, &self.bias) {
            (Matrix::Dense(w), Some(b)) => Ok(ops::addmm(b, x, w.t(), None, None)?),
            (m, None) => m.matmul_t(x),
            (m, Some(b)) => Ok(m.matmul_t(x)?.add(b)?),
        })?;
        match &self.lora {
            Some(lora) => lora.add_to(x, y),
            None => Ok(y),
        }
    }

    /// [`Linear::forward`] with `folded`'s neighbours (not RoPE: see
    /// [`Linear::rotated_heads_in_kernel`]) in one kernel, when the matrix is packed and the
    /// kernel takes them all (no bias, no adapter); else `None`.
    pub fn folded_in_kernel(&self, x: &Array, folded: &Folded) -> Result<Option<Array>> {
        match (&self.weight, &self.bias, &self.lora) {
            (Matrix::Quant(q), None, None) => q.matmul_t_folded(x, folded),
            _ => Ok(None),
        }
    }

    /// A fused q/k/v projection of `x` (`[B, 1, in]`) with `folded`'s norm and RoPE, as q, k
    /// and v `[B, heads, 1, head_dim]`, in one kernel when the matrix is packed and the kernel
    /// takes it all; else `None`.
    pub fn rotated_heads_in_kernel(
        &self,
        x: &Array,
        folded: &Folded,
    ) -> Result<Option<[Array; 3]>> {
        match (&self.weight, &self.bias, &self.lora) {
            (Matrix::Quant(q), None, None) => q.rotated_heads(x, folded),
            _ => Ok(None),
        }
    }

    /// [`Linear::rotated_heads_in_kernel`] with the k and v heads written by the kernel into
    /// the cache slot `folded.rope` names: q alone, or `None` where the kernel does not take it.
    pub fn rotated_q_into_cache(&self, x: &Array, folded: &Folded) -> Result<Option<Array>> {
        match (&self.weight, &self.bias, &self.lora) {
            (Matrix::Quant(q), None, None) => q.rotated_q_into_cache(x, folded),
            _ => Ok(None),
        }
    }

    /// [`Linear::forward`] with `folded`'s neighbours (not RoPE: see
    /// [`Linear::rotated_heads_in_kernel`]): in one kernel where it takes them, else as MLX ops
    /// in mlx-lm's order.
    pub fn forward_folded(&self, x: &Array, folded: &Folded) -> Result<Array> {
        debug_assert!(folded.rope.is_none(), "RoPE folds only in the kernel");
        if folded.is_empty() {
            return self.forward(x);
        }
        if let Some(y) = self.folded_in_kernel(x, folded)? {
            return Ok(y);
        }
        let mut y = self.forward(&RmsNorm::maybe(folded.norm, x)?)?;
        if folded.glu {
            y = swiglu_halves(&y)?;
        }
        match folded.residual {
            Some(r) => Ok(r.add(&y)?),
            None => Ok(y),
        }
    }

    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = self.weight.arrays();
        v.extend(self.bias.iter());
        v.extend(self.lora.iter().flat_map(Lora::arrays));
        v
    }
}

/// A decode batch's `[B, L, in]` (L = 1, or the few positions of a speculative verify step)
/// goes through `f` as one sequence `[1, B * L, in]` and comes back as `[B, L, out]`. The
/// product is the same row by row, but MLX runs a batched input against one weight matrix as
/// B separate products (the CUDA backend's quantized matmul, and the CPU backend's one GEMM
/// call per batch entry), reading the weights B times; as one sequence they are read once.
/// Longer inputs (a batched prefill) go as they are: measured no faster reshaped.
fn as_one_sequence(x: &Array, f: impl FnOnce(&Array) -> Result<Array>) -> Result<Array> {
    match x.shape() {
        &[b, l, k] if b > 1 && l <= MAX_ONE_SEQUENCE_POSITIONS => {
            let y = f(&x.reshape(&[1, b * l, k])?)?;
            let n = y.shape()[2];
            Ok(y.reshape(&[b, l, n])?)
        }
        _ => f(x),
    }
}

/// The longest per-row input [`as_one_sequence`] reshapes.
const MAX_ONE_SEQUENCE_POSITIONS: i32 = 64;

/// `nn.Embedding` / `nn.QuantizedEmbedding`, usable as the tied output projection.
pub struct Embedding {
    pub table: Matrix,
}

impl Embedding {
    /// `output`: the table is also the output projection (tied embeddings, on the last
    /// stage); only then does it keep an unpacked copy (`WeightPolicy::keep_unpacked`), which
    /// serves products, not row lookups.
    pub fn load(
        ws: &mut Weights,
        path: &str,
        (vocab, dims): (i32, i32),
        quant: &QuantConfig,
        output: bool,
    ) -> Result<Self> {
        let mut table = Matrix::load(ws, path, vocab, dims, quant)?;
        if let (Matrix::Quant(q), false) = (&mut table, output) {
            q.unpacked = None;
        }
        Ok(Embedding { table })
    }

    /// Rows for `ids` (any integer shape) -> `[..., dims]`. A packed table gathers the
    /// packed rows, scales and biases, then dequantizes only those.
    pub fn forward(&self, ids: &Array) -> Result<Array> {
        match &self.table {
            Matrix::Dense(w) => Ok(w.take_axis(ids, 0)?),
            Matrix::Quant(q) => {
                let biases = q.biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?;
                quant_ops::dequantize(
                    &q.w.take_axis(ids, 0)?,
                    &q.scales.take_axis(ids, 0)?,
                    biases.as_ref(),
                    &q.spec,
                )
            }
        }
    }

    /// The embedding used as the output projection: `x @ E.T`.
    pub fn as_linear(&self, x: &Array) -> Result<Array> {
        as_one_sequence(x, |x| self.table.matmul_t(x))
    }
}

/// `nn.RMSNorm`.
pub struct RmsNorm {
    pub weight: Array,
    pub eps: f32,
}

impl RmsNorm {
    pub fn load(ws: &mut Weights, path: &str, dims: i32, eps: f32) -> Result<Self> {
        Ok(RmsNorm {
            weight: ws.take_float(&format!("{path}.weight"), &[dims])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array> {
        Ok(fast::rms_norm(x, Some(&self.weight), self.eps)?)
    }

    /// `norm(x)` with a norm, else `x` as it is.
    pub fn maybe(norm: Option<&RmsNorm>, x: &Array) -> Result<Array> {
        match norm {
            Some(norm) => norm.forward(x),
            None => Ok(x.clone()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::config::QuantSpec;
    use mlx_rs::random;

    pub(crate) fn quantized(rows: i32, cols: i32, seed: u64, bias: bool) -> Linear {
        let key = random::key(seed).unwrap();
        let w = random::normal::<f32>(&[rows, cols], None, None, &key).unwrap();
        let (w, scales, biases) = ops::quantize(&w, 64, 4).unwrap();
        let spec = QuantSpec::affine(64, 4);
        let bias = bias.then(|| Array::from_slice(&vec![0.5f32; rows as usize], &[rows]));
        Linear {
            weight: Matrix::Quant(QuantMatrix {
                w,
                scales,
                biases: Some(biases),
                spec,
                dense_from_rows: None,
                unpacked: None,
                pad_rows_to: None,
            }),
            bias,
            lora: None,
        }
    }

    fn host(a: &Array) -> Vec<f32> {
        a.eval().unwrap();
        a.as_slice::<f32>().to_vec()
    }

    #[test]
    fn fused_quantized_linears_compute_the_same_outputs() {
        for bias in [false, true] {
            let parts = [
                quantized(192, 128, 1, bias),
                quantized(64, 128, 2, bias),
                quantized(64, 128, 3, bias),
            ];
            let fused = Linear::fuse(&[&parts[0], &parts[1], &parts[2]])
                .unwrap()
                .expect("alike quantized linears fuse");
            let key = random::key(9).unwrap();
            for rows in [1, 5] {
                let x = random::normal::<f32>(&[1, rows, 128], None, None, &key).unwrap();
                let separate: Vec<Array> = parts.iter().map(|l| l.forward(&x).unwrap()).collect();
                let expected = ops::concatenate(&separate, -1).unwrap();
                assert_eq!(host(&fused.forward(&x).unwrap()), host(&expected));
            }
        }
    }

    #[test]
    fn fused_linears_keep_their_unpacked_copies_in_order() {
        let mut parts = [quantized(64, 128, 1, true), quantized(32, 128, 2, true)];
        for p in parts.iter_mut() {
            if let Matrix::Quant(q) = &mut p.weight {
                q.dense_from_rows = Some(2);
                q.unpacked = Some(q.dequantize().unwrap());
            }
        }
        let fused = Linear::fuse(&[&parts[0], &parts[1]]).unwrap().unwrap();
        let Matrix::Quant(q) = &fused.weight else {
            panic!("fused quantized linears stay quantized")
        };
        assert_eq!(
            q.unpacked.as_ref().map(|u| u.shape().to_vec()),
            Some(vec![96, 128])
        );
        let key = random::key(3).unwrap();
        let x = random::normal::<f32>(&[1, 4, 128], None, None, &key).unwrap();
        let separate: Vec<Array> = parts.iter().map(|l| l.forward(&x).unwrap()).collect();
        let expected = ops::concatenate(&separate, -1).unwrap();
        assert_eq!(host(&fused.forward(&x).unwrap()), host(&expected));
    }

    #[test]
    fn small_batches_padded_to_more_rows_give_the_same_rows() {
        let plain = quantized(96, 128, 5, true);
        let mut padding = quantized(96, 128, 5, true);
        if let Matrix::Quant(q) = &mut padding.weight {
            q.pad_rows_to = Some(8);
        }
        let key = random::key(12).unwrap();
        for (b, l) in [(1, 1), (3, 1), (1, 5), (7, 1), (8, 1), (12, 1)] {
            let x = random::normal::<f32>(&[b, l, 128], None, None, &key).unwrap();
            let (want, got) = (plain.forward(&x).unwrap(), padding.forward(&x).unwrap());
            assert_eq!(got.shape(), want.shape());
            let diff = host(
                &want
                    .subtract(&got)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max(None)
                    .unwrap(),
            );
            assert!(diff[0] < 1e-4, "{b}x{l}: {}", diff[0]);
        }
    }

    #[test]
    fn a_kept_unpacked_copy_is_what_long_inputs_multiply() {
        let packed = quantized(96, 128, 4, true);
        let mut kept = quantized(96, 128, 4, true);
        if let Matrix::Quant(q) = &mut kept.weight {
            q.dense_from_rows = Some(4);
            q.unpacked = Some(q.dequantize().unwrap());
            // From here the packed words are zeros: only the kept copy gives the right values.
            q.w = ops::zeros_like(&q.w).unwrap();
        }
        let key = random::key(5).unwrap();
        let x = random::normal::<f32>(&[1, 6, 128], None, None, &key).unwrap();
        let (a, b) = (
            host(&packed.forward(&x).unwrap()),
            host(&kept.forward(&x).unwrap()),
        );
        for (p, u) in a.iter().zip(&b) {
            assert!((p - u).abs() <= 1e-3 * (1.0 + p.abs()), "{p} vs {u}");
        }
        let one = random::normal::<f32>(&[1, 1, 128], None, None, &key).unwrap();
        assert_ne!(
            host(&packed.forward(&one).unwrap()),
            host(&kept.forward(&one).unwrap()),
            "below the threshold the (zeroed) packed matrix runs"
        );
    }

    #[test]
    fn long_inputs_go_through_the_unpacked_matrix_with_the_same_values() {
        let packed = quantized(96, 128, 4, true);
        let mut unpacking = quantized(96, 128, 4, true);
        if let Matrix::Quant(q) = &mut unpacking.weight {
            q.dense_from_rows = Some(4);
        }
        let key = random::key(11).unwrap();
        for rows in [1, 3, 4, 9] {
            let x = random::normal::<f32>(&[1, rows, 128], None, None, &key).unwrap();
            let (a, b) = (
                host(&packed.forward(&x).unwrap()),
                host(&unpacking.forward(&x).unwrap()),
            );
            assert_eq!(a.len(), b.len());
            if rows < 4 {
                assert_eq!(a, b, "below the threshold the quantized matmul runs");
            }
            for (p, u) in a.iter().zip(&b) {
                assert!(
                    (p - u).abs() <= 1e-3 * (1.0 + p.abs()),
                    "{p} vs {u} at {rows} rows"
                );
            }
        }
    }

    #[test]
    fn unlike_linears_do_not_fuse() {
        let dense = Linear {
            weight: Matrix::Dense(Array::ones::<f32>(&[64, 128]).unwrap()),
            bias: None,
            lora: None,
        };
        let q = quantized(64, 128, 1, false);
        assert!(Linear::fuse(&[&q, &dense]).unwrap().is_none());
        assert!(Linear::fuse(&[&q, &quantized(64, 128, 2, true)])
            .unwrap()
            .is_none());
    }
}
