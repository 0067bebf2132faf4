//! Mamba-2's selective state-space scan in its chunked "state-space duality" form: mlx-lm's
//! `ssm_attn` (`models/ssm.py`), which mlx-lm runs on CPU and CUDA for prefill and for
//! single-token decode alike (its Metal kernel is never used there). Each chunk of up to
//! [`STEP`] positions is one masked "attention" `tril(C B^T * decay) @ (dt x)`, plus the
//! state carried in from earlier chunks (and earlier forwards) decayed to every position;
//! the chunk's end state is carried on. The op sequence and dtypes are mlx-lm's, so the
//! results are bit-identical: `dt` and the decays in float32, the state in float32, the
//! output cast back to the input's dtype before the `D` skip connection.

use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{ops, Array, Dtype};

use crate::model::error::{ModelError, Result};
use crate::model::slicing::slice_axis;

/// Positions per scan chunk (mlx-lm's `step`). Chunk boundaries change the rounding, so
/// they must fall where mlx-lm's do: at multiples of this within each forward.
pub(crate) const STEP: i32 = 256;

type Binary =
    Box<dyn for<'a> FnMut((&'a Array, &'a Array)) -> std::result::Result<Array, Exception>>;

thread_local! {
    /// `softplus(dt.astype(float32) + dt_bias)`, compiled as mlx-lm's `compute_dt` is (one
    /// per thread: MLX state is per thread).
    static SOFTPLUS_DT: RefCell<Binary> = RefCell::new(Box::new(compile(
        |(dt, bias): (&Array, &Array)| {
            ops::logaddexp(dt.as_dtype(Dtype::Float32)?.add(bias)?, Array::from_f32(0.0))
        },
        true,
    )));
}

/// The inputs of one scan, as mlx-lm's `ssm_attn` takes them.
pub(crate) struct ScanInputs<'a> {
    /// `[B, L, heads, head_dim]`.
    pub x: &'a Array,
    /// `[heads]` (float32 in mlx-lm's converted models).
    pub a_log: &'a Array,
    /// `[B, L, groups, state]`.
    pub b: &'a Array,
    /// `[B, L, groups, state]`.
    pub c: &'a Array,
    /// `[heads]`, in `x`'s dtype.
    pub d: &'a Array,
    /// `[B, L, heads]`, before the bias and softplus.
    pub dt: &'a Array,
    /// `[heads]`.
    pub dt_bias: &'a Array,
    /// `time_step_limit`: `dt` is clipped to it.
    pub limit: (f32, f32),
}

/// `softplus(dt + dt_bias)` in float32, clipped to `limit` (mlx-lm's `compute_dt`).
fn compute_dt(dt: &Array, bias: &Array, (lo, hi): (f32, f32)) -> Result<Array> {
    let dt = SOFTPLUS_DT.with(|f| (f.borrow_mut())((dt, bias)))?;
    let (lo, hi) = (Array::from_f32(lo), Array::from_f32(hi));
    Ok(ops::clip(&dt, (&lo, &hi))?)
}

/// `segsum(x)[..., i, j]`: the sum of `x[..., j+1..=i]` below the diagonal, 0 on and above
/// it. `x`: `[B, heads, s]` -> `[B, heads, s, s]`.
fn segsum(x: &Array) -> Result<Array> {
    let s = x.dim(-1);
    let x = Array::repeat_axis::<f32>(x.expand_dims(-1)?, s, -1)?;
    let x = ops::tril(&x, -1)?;
    Ok(x.cumsum(-2, None, None)?)
}

/// The scan: `y` `[B, L, heads, head_dim]` in `x`'s dtype and the state after the last
/// position (`[B, heads, head_dim, state]`, float32), from the state before the first
/// (`None`: zeros, without the terms that would add them).
pub(crate) fn scan(inp: &ScanInputs, mut state: Option<Array>) -> Result<(Array, Array)> {
    let sh = inp.x.shape();
    let (b, l, h) = (sh[0], sh[1], sh[2]);
    let dt = compute_dt(inp.dt, inp.dt_bias, inp.limit)?;
    let a = ops::exp(inp.a_log)?.as_dtype(dt.dtype())?.negative()?;
    let dta = dt.multiply(a.reshape(&[1, 1, -1])?)?;
    let dtx = dt.reshape(&[b, l, h, 1])?.multiply(inp.x)?;
    let mut ys = Vec::new();
    for start in (0..l).step_by(STEP as usize) {
        let end = (start + STEP).min(l);
        let chunk = |a: &Array| slice_axis(a, 1, start, end);
        let (y, next) = chunk_step(
            &chunk(&dtx)?,
            &chunk(&dta)?,
            &chunk(inp.b)?,
            &chunk(inp.c)?,
            state.as_ref(),
            inp.x.dtype(),
        )?;
        ys.push(y);
        state = Some(next);
    }
    let skip = inp.x.multiply(inp.d.reshape(&[1, 1, h, 1])?)?;
    let y = ops::concatenate(&ys, 1)?.add(&skip)?;
    // A forward reads at least one position, so a state was written.
    let state = state.ok_or_else(|| ModelError::Request("a scan over no positions".into()))?;
    Ok((y, state))
}

/// One chunk (mlx-lm's `_step`): `dtx` `[B, s, heads, head_dim]`, `dta` `[B, s, heads]`,
/// `b`/`c` `[B, s, groups, state]`.
fn chunk_step(
    dtx: &Array,
    dta: &Array,
    b: &Array,
    c: &Array,
    state: Option<&Array>,
    out: Dtype,
) -> Result<(Array, Array)> {
    let (n, s, h, dh) = (dtx.dim(0), dtx.dim(1), dtx.dim(2), dtx.dim(3));
    let (g, d) = (b.dim(2), b.dim(3));
    let repeats = h / g;
    let bt = b.transpose_axes(&[0, 2, 3, 1])?;
    let cb = c.swap_axes(1, 2)?.matmul(&bt)?;
    let cb = Array::repeat_axis::<f32>(cb, repeats, 1)?;
    let decay = ops::exp(segsum(&dta.swap_axes(1, 2)?)?)?;
    let attn = ops::tril(cb.multiply(&decay)?, 0)?;
    let mut y = attn.matmul(dtx.swap_axes(1, 2)?)?.swap_axes(1, 2)?;

    // The chunk's inputs decayed to its last position make its contribution to the state.
    let last = slice_axis(&decay, 2, s - 1, s)?.transpose_axes(&[0, 3, 1, 2])?;
    let b_heads = Array::repeat_axis::<f32>(bt, repeats, 1)?.swap_axes(2, 3)?;
    let dtx_decay = dtx.multiply(&last)?.swap_axes(1, 2)?.swap_axes(2, 3)?;
    let mut next = dtx_decay.matmul(&b_heads)?;

    if let Some(state) = state {
        let decay_in = ops::exp(dta.cumsum(-2, None, None)?)?;
        let decay_end = slice_axis(&decay_in, 1, s - 1, s)?.reshape(&[n, h, 1, 1])?;
        next = next.add(decay_end.multiply(state)?)?;
        let c = c.reshape(&[n, s, g, 1, d, 1])?;
        let y_prev = state
            .reshape(&[n, 1, g, repeats, dh, d])?
            .matmul(&c)?
            .squeeze_axes(&[-1])?
            .flatten(2, 3)?;
        y = y.add(decay_in.expand_dims(-1)?.multiply(&y_prev)?)?;
    }
    Ok((y.as_dtype(out)?, next))
}
