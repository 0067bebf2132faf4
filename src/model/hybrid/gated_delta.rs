//! Gated DeltaNet, Qwen3-Next's linear-attention mixer, as mlx-lm's `Qwen3NextGatedDeltaNet`
//! and `gated_delta.py` run it off Metal: the input projections split per key-head group, a
//! depthwise causal conv1d over q/k/v (its last `K-1` inputs kept as the conv state), SiLU,
//! L2-normalized q and k, then the gated delta rule one token at a time (`gated_delta_ops`:
//! decay the state, read it with k, write back `beta * (v - read)`, read it with q), and a
//! gated RMSNorm before the output projection. Every op is mlx-lm's, in its order and with
//! its compiled functions compiled here too (so fused kernels round alike), for parity.
//! Prompts of `gated_delta_chunked::MIN_TOKENS` tokens or more take the chunked form of the
//! rule instead (`gated_delta_chunked.rs`; `KOOKA_GDN_SEQUENTIAL=1` keeps the loop).
//!
//! The cache holds two arrays: the conv state `[B, K-1, conv_dim]` in the input dtype and
//! the recurrent state `[B, Hv, Dv, Dk]` in float32. Our engine never left-pads a sequence
//! through a recurrent layer, so no mask is applied.

use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{fast, ops, Array, Dtype};

use super::gated_delta_chunked::{gated_delta_chunked, log_decay, use_chunked, CHUNK};
use super::{run_compiled, Compiled};
use crate::model::cache::StateCache;
use crate::model::config::QuantConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layers::Linear;
use crate::model::projections::Projections;
use crate::model::slicing::slice_axis;
use crate::model::weights::Weights;

type Unary = Box<dyn for<'a> FnMut(&'a Array) -> std::result::Result<Array, Exception>>;

/// A Python scalar in MLX arithmetic: weakly typed, so it takes the array's dtype.
fn scalar(v: f64, like: &Array) -> std::result::Result<Array, Exception> {
    Array::from_f32(v as f32).as_dtype(like.dtype())
}

thread_local! {
    /// `nn.silu` (compiled shapeless in mlx).
    static SILU: RefCell<Unary> = RefCell::new(Box::new(compile(
        |x: &Array| x.multiply(ops::sigmoid(x)?),
        true,
    )));
    /// mlx-lm's `compute_g` (compiled shapeless): `exp(-exp(A_log) * softplus(a + dt_bias))`
    /// in float32, softplus being mlx's `logaddexp(x, 0)`.
    static COMPUTE_G: RefCell<Compiled> = RefCell::new(Box::new(compile(
        |xs: &[Array]| -> std::result::Result<Vec<Array>, Exception> {
            let (a_log, a, dt_bias) = (&xs[0], &xs[1], &xs[2]);
            let x = a.add(dt_bias)?;
            let softplus = ops::logaddexp(&x, scalar(0.0, &x)?)?;
            let decay = a_log.as_dtype(Dtype::Float32)?.exp()?.negative()?;
            Ok(vec![decay.multiply(&softplus)?.exp()?])
        },
        true,
    )));
    /// mlx-lm's `precise_swiglu` (compiled shapeless): `[h, gate, x]` ->
    /// `(silu(gate) * x).astype(h.dtype)`, both in float32.
    static PRECISE_SWIGLU: RefCell<Compiled> = RefCell::new(Box::new(compile(
        |xs: &[Array]| -> std::result::Result<Vec<Array>, Exception> {
            let gate = xs[1].as_dtype(Dtype::Float32)?;
            let gate = gate.multiply(ops::sigmoid(&gate)?)?;
            Ok(vec![gate
                .multiply(xs[2].as_dtype(Dtype::Float32)?)?
                .as_dtype(xs[0].dtype())?])
        },
        true,
    )));
    /// mlx-lm's `_gated_delta_step_ops` (compiled, not shapeless) with scalar gates and no
    /// mask: `[q, k, v, g, beta, state]` -> `[y, state]`.
    static STEP: RefCell<Compiled> = RefCell::new(Box::new(compile(
        |xs: &[Array]| -> std::result::Result<Vec<Array>, Exception> {
            let (q, k, v, g, beta, state) = (&xs[0], &xs[1], &xs[2], &xs[3], &xs[4], &xs[5]);
            let state = state.multiply(g.expand_dims_axes(&[-1, -2])?)?;
            let k = k.expand_dims(-2)?;
            let kv_mem = state.multiply(&k)?.sum_axis(-1, false)?;
            let delta = v.subtract(&kv_mem)?.multiply(beta.expand_dims(-1)?)?;
            let state = state.add(k.multiply(delta.expand_dims(-1)?)?)?;
            let y = state.multiply(q.expand_dims(-2)?)?.sum_axis(-1, false)?;
            Ok(vec![y.as_dtype(q.dtype())?, state])
        },
        false,
    )));
}

fn silu(x: &Array) -> Result<Array> {
    Ok(SILU.with(|f| (f.borrow_mut())(x))?)
}

fn compute_g(a_log: &Array, a: &Array, dt_bias: &Array) -> Result<Array> {
    let args = [a_log.clone(), a.clone(), dt_bias.clone()];
    run_compiled(&COMPUTE_G, &args, "compute_g")
}

/// mlx-lm's `gated_delta_ops`: `q`, `k` `[B, T, Hk, Dk]`, `v` `[B, T, Hv, Dv]`, `g` and
/// `beta` `[B, T, Hv]`, `state` `[B, Hv, Dv, Dk]` -> (`y` `[B, T, Hv, Dv]`, new state).
pub(crate) fn gated_delta_ops(
    q: &Array,
    k: &Array,
    v: &Array,
    g: &Array,
    beta: &Array,
    state: Array,
) -> Result<(Array, Array)> {
    let (hk, hv) = (q.shape()[2], v.shape()[2]);
    let (q, k) = match hv / hk {
        r if r > 1 => (
            ops::repeat_axis::<f32>(q.clone(), r, -2)?,
            ops::repeat_axis::<f32>(k.clone(), r, -2)?,
        ),
        _ => (q.clone(), k.clone()),
    };
    let at = |a: &Array, t: i32| -> Result<Array> {
        Ok(slice_axis(a, 1, t, t + 1)?.squeeze_axes(&[1])?)
    };
    let mut state = state;
    let mut ys = Vec::with_capacity(q.shape()[1] as usize);
    for t in 0..q.shape()[1] {
        let args = [
            at(&q, t)?,
            at(&k, t)?,
            at(v, t)?,
            at(g, t)?,
            at(beta, t)?,
            state,
        ];
        let mut out = STEP.with(|f| (f.borrow_mut())(&args))?.into_iter();
        let (Some(y), Some(s)) = (out.next(), out.next()) else {
            return Err(ModelError::Mlx(
                "gated delta step returned too little".into(),
            ));
        };
        ys.push(y);
        state = s;
    }
    Ok((ops::stack(&ys, 1)?, state))
}

/// The shape of a Gated DeltaNet layer (the `linear_*` config keys).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeltaSpec {
    pub hidden: i32,
    pub k_heads: i32,
    pub v_heads: i32,
    pub k_dim: i32,
    pub v_dim: i32,
    pub conv_kernel: i32,
    pub eps: f32,
}

impl DeltaSpec {
    pub fn key_dim(&self) -> i32 {
        self.k_heads * self.k_dim
    }

    pub fn value_dim(&self) -> i32 {
        self.v_heads * self.v_dim
    }

    /// Channels through the conv: q, k and v side by side.
    pub fn conv_dim(&self) -> i32 {
        2 * self.key_dim() + self.value_dim()
    }

    /// Bytes of one sequence's state: the conv state in a `dtype_bytes` dtype and the
    /// float32 recurrent state.
    pub fn state_bytes(&self, dtype_bytes: usize) -> usize {
        let conv = ((self.conv_kernel - 1) * self.conv_dim()) as usize * dtype_bytes;
        conv + (self.v_heads * self.v_dim * self.k_dim) as usize * 4
    }
}

/// mlx-lm's `Qwen3NextGatedDeltaNet`.
pub(crate) struct GatedDeltaNet {
    /// `in_proj_qkvz` and `in_proj_ba`, one matmul where they are alike.
    in_proj: Projections,
    /// Depthwise conv weight `[conv_dim, K, 1]`.
    conv_weight: Array,
    dt_bias: Array,
    a_log: Array,
    /// The gated RMSNorm's weight `[Dv]`.
    norm_weight: Array,
    out_proj: Linear,
    s: DeltaSpec,
}

impl GatedDeltaNet {
    /// Loads `<prefix>.{in_proj_qkvz, in_proj_ba, conv1d, dt_bias, A_log, norm, out_proj}`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        s: &DeltaSpec,
        quant: &QuantConfig,
    ) -> Result<Self> {
        if s.k_heads <= 0 || s.v_heads % s.k_heads != 0 || s.conv_kernel < 2 {
            return Err(ModelError::Config(format!(
                "{prefix}: linear_num_value_heads ({}) must be a multiple of linear_num_key_heads ({}), and linear_conv_kernel_dim ({}) at least 2",
                s.v_heads, s.k_heads, s.conv_kernel
            )));
        }
        let p = |n: &str| format!("{prefix}.{n}");
        let (kd, vd) = (s.key_dim(), s.value_dim());
        let conv_weight = ws.take_float(&p("conv1d.weight"), &[s.conv_dim(), s.conv_kernel, 1])?;
        Ok(GatedDeltaNet {
            in_proj: Projections::new(vec![
                Linear::load(
                    ws,
                    &p("in_proj_qkvz"),
                    s.hidden,
                    2 * (kd + vd),
                    false,
                    quant,
                )?,
                Linear::load(ws, &p("in_proj_ba"), s.hidden, 2 * s.v_heads, false, quant)?,
            ])?,
            conv_weight,
            dt_bias: ws.take_float(&p("dt_bias"), &[s.v_heads])?,
            a_log: ws.take_float(&p("A_log"), &[s.v_heads])?,
            norm_weight: ws.take_float(&p("norm.weight"), &[s.v_dim])?,
            out_proj: Linear::load(ws, &p("out_proj"), vd, s.hidden, false, quant)?,
            s: *s,
        })
    }

    /// `x` `[B, S, hidden]` through the mixer, reading and replacing `cache`'s states.
    pub(crate) fn forward(&self, x: &Array, cache: &mut StateCache) -> Result<Array> {
        let s = &self.s;
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let (nk, dk, nv, dv) = (s.k_heads, s.k_dim, s.v_heads, s.v_dim);
        let r = nv / nk;
        // fix_query_key_value_ordering: per key head, q, k, then its value heads' v and z.
        let [qkvz, ba] = self.in_proj.forward_n::<2>(x)?;
        let qkvz = qkvz
            .reshape(&[b, l, nk, -1])?
            .split_at_indices(&[dk, 2 * dk, 2 * dk + r * dv], -1)?;
        let ba = ba.reshape(&[b, l, nk, -1])?.split_at_indices(&[r], -1)?;
        let [q, k, v, z] = <[Array; 4]>::try_from(qkvz)
            .map_err(|_| ModelError::Mlx("in_proj_qkvz split".into()))?;
        let [bg, a] =
            <[Array; 2]>::try_from(ba).map_err(|_| ModelError::Mlx("in_proj_ba split".into()))?;
        let z = z.reshape(&[b, l, -1, dv])?;
        let (bg, a) = (bg.reshape(&[b, l, nv])?, a.reshape(&[b, l, nv])?);

        let conv_state = match cache.get(0) {
            Some(c) => c.clone(),
            None => ops::zeros_dtype(&[b, s.conv_kernel - 1, s.conv_dim()], x.dtype())?,
        };
        let mixed = ops::concatenate(
            &[
                q.reshape(&[b, l, -1])?,
                k.reshape(&[b, l, -1])?,
                v.reshape(&[b, l, -1])?,
            ],
            -1,
        )?;
        let conv_input = ops::concatenate(&[conv_state, mixed], 1)?;
        let total = conv_input.shape()[1];
        cache.set(
            0,
            slice_axis(&conv_input, 1, total - (s.conv_kernel - 1), total)?.contiguous()?,
        );
        let conv_out = silu(&ops::conv1d(
            &conv_input,
            &self.conv_weight,
            1,
            0,
            1,
            s.conv_dim(),
        )?)?;
        let (kd, conv_dim) = (s.key_dim(), s.conv_dim());
        let q = slice_axis(&conv_out, 2, 0, kd)?.reshape(&[b, l, nk, dk])?;
        let k = slice_axis(&conv_out, 2, kd, 2 * kd)?.reshape(&[b, l, nk, dk])?;
        let v = slice_axis(&conv_out, 2, 2 * kd, conv_dim)?.reshape(&[b, l, nv, dv])?;

        // normalize_qk: an L2 norm with eps 1e-6 on the sum of squares, from rms_norm (whose
        // eps is on the mean), and the readout scale Dk^-0.5 folded into q.
        let inv_scale = (dk as f64).powf(-0.5);
        let rms_eps = (1e-6 * inv_scale * inv_scale) as f32;
        let q = scalar(inv_scale * inv_scale, &q)?.multiply(fast::rms_norm(&q, None, rms_eps)?)?;
        let k = scalar(inv_scale, &k)?.multiply(fast::rms_norm(&k, None, rms_eps)?)?;

        let beta = ops::sigmoid(&bg)?;
        let state = match cache.get(1) {
            Some(st) => st.clone(),
            None => ops::zeros_dtype(&[b, nv, dv, dk], Dtype::Float32)?,
        };
        // Prompts go through the chunked form (a few matmuls per 64 tokens instead of a step
        // per token); decode and short inputs keep mlx-lm's exact step.
        let (out, state) = if use_chunked(l) {
            let log_g = log_decay(&self.a_log, &a, &self.dt_bias)?;
            gated_delta_chunked(&q, &k, &v, &log_g, &beta, state, CHUNK)?
        } else {
            let g = compute_g(&self.a_log, &a, &self.dt_bias)?;
            gated_delta_ops(&q, &k, &v, &g, &beta, state)?
        };
        cache.set(1, state);
        cache.advance(l);

        // Qwen3NextRMSNormGated: rms_norm, then precise_swiglu (silu(z) * x in float32).
        let normed = fast::rms_norm(&out, Some(&self.norm_weight), s.eps)?;
        let args = [out, z, normed];
        let gated = run_compiled(&PRECISE_SWIGLU, &args, "precise_swiglu")?;
        self.out_proj.forward(&gated.reshape(&[b, l, -1])?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = self.in_proj.arrays();
        v.extend([
            &self.conv_weight,
            &self.dt_bias,
            &self.a_log,
            &self.norm_weight,
        ]);
        v.extend(self.out_proj.arrays());
        v
    }
}
