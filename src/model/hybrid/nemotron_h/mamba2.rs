//! Nemotron-H's Mamba-2 mixer (mlx-lm's `NemotronHMamba2Mixer`): one input projection split
//! into the output gate, the convolution's input and `dt`; a causal depthwise convolution
//! over the last `conv_kernel` positions (its last `conv_kernel - 1` inputs are the conv
//! state carried between forwards) and SiLU; the selective scan ([`super::ssd`]) over its
//! `x`, `B` and `C` parts (the SSM state carried likewise); the gated RMSNorm per group of
//! heads; the output projection.
//!
//! The cache is a [`StateCache`] of two arrays: index [`CONV`] `[B, conv_kernel - 1,
//! conv_dim]` in the activations' dtype, index [`SSM`] `[B, heads, head_dim, state]` in
//! float32.

use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{fast, ops, Array, Dtype};

use super::ssd::{scan, ScanInputs};
use crate::model::cache::StateCache;
use crate::model::config::QuantConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layers::{swiglu, Linear};
use crate::model::slicing::slice_axis;
use crate::model::weights::Weights;

/// The conv state's index in the layer's [`StateCache`].
pub(crate) const CONV: usize = 0;
/// The SSM state's index.
pub(crate) const SSM: usize = 1;

type Unary = Box<dyn for<'a> FnMut(&'a Array) -> std::result::Result<Array, Exception>>;

thread_local! {
    /// `x * sigmoid(x)`, compiled as `mlx.nn.silu` is (one per thread: MLX state is per
    /// thread).
    static SILU: RefCell<Unary> = RefCell::new(Box::new(compile(
        |x: &Array| x.multiply(ops::sigmoid(x)?),
        true,
    )));
}

/// The shape of a Mamba-2 mixer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MambaSpec {
    pub hidden: i32,
    pub heads: i32,
    pub head_dim: i32,
    /// SSM state size per head (`ssm_state_size`).
    pub state: i32,
    /// Groups of heads sharing `B` and `C` (`n_groups`), also the gated norm's groups.
    pub groups: i32,
    pub conv_kernel: i32,
    pub proj_bias: bool,
    pub conv_bias: bool,
    pub eps: f32,
    /// `dt` is clipped to this (`time_step_limit`, default `(0, inf)`).
    pub time_step_limit: (f32, f32),
}

impl MambaSpec {
    /// Width of the scanned values (`heads * head_dim`).
    pub fn inner(&self) -> i32 {
        self.heads * self.head_dim
    }

    /// Channels of the convolution: `x`, `B` and `C`.
    pub fn conv_dim(&self) -> i32 {
        self.inner() + 2 * self.groups * self.state
    }

    /// Bytes of one sequence's state: the conv state in `dtype_bytes` per value, the SSM
    /// state in float32.
    pub fn state_bytes(&self, dtype_bytes: usize) -> usize {
        let conv = (self.conv_kernel - 1).max(0) as usize * self.conv_dim() as usize;
        let ssm = (self.inner() * self.state) as usize;
        conv * dtype_bytes + ssm * 4
    }

    pub fn check(&self) -> Result<()> {
        let positive = [self.heads, self.head_dim, self.state, self.groups];
        if positive.iter().any(|&v| v <= 0) || self.conv_kernel < 1 {
            return Err(ModelError::Config(format!(
                "nemotron_h: mamba sizes must be positive: {self:?}"
            )));
        }
        if self.heads % self.groups != 0 {
            return Err(ModelError::Config(format!(
                "nemotron_h: mamba_num_heads {} is not a multiple of n_groups {}",
                self.heads, self.groups
            )));
        }
        Ok(())
    }
}

pub(crate) struct Mamba2 {
    spec: MambaSpec,
    in_proj: Linear,
    /// `[conv_dim, conv_kernel, 1]`: one filter per channel (MLX's conv weight layout).
    conv_weight: Array,
    conv_bias: Option<Array>,
    dt_bias: Array,
    a_log: Array,
    d: Array,
    norm_weight: Array,
    out_proj: Linear,
}

/// A tensor kept in float32 when stored so (mlx-lm's `cast_predicate` keeps `A_log` and the
/// router's correction bias float32 in a half-precision model), else cast per the policy.
pub(crate) fn take_keep_f32(ws: &mut Weights, name: &str, shape: &[i32]) -> Result<Array> {
    let a = ws.take(name, Some(shape))?;
    match a.dtype() {
        Dtype::Float32 => Ok(a),
        _ => ws.cast(name, a),
    }
}

impl Mamba2 {
    /// Loads `<prefix>.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        spec: &MambaSpec,
        quant: &QuantConfig,
    ) -> Result<Self> {
        spec.check()?;
        let p = |n: &str| format!("{prefix}.{n}");
        let (inner, conv_dim, heads) = (spec.inner(), spec.conv_dim(), spec.heads);
        let projected = inner + conv_dim + heads;
        let in_proj = Linear::load(
            ws,
            &p("in_proj"),
            spec.hidden,
            projected,
            spec.proj_bias,
            quant,
        )?;
        let out_proj = Linear::load(
            ws,
            &p("out_proj"),
            inner,
            spec.hidden,
            spec.proj_bias,
            quant,
        )?;
        let name = p("conv1d.weight");
        let w = ws.take(&name, None)?;
        let k = spec.conv_kernel;
        // mlx-lm saves `[channels, kernel, 1]`; a Hugging Face checkpoint has `[channels, 1,
        // kernel]` (mlx-lm's `sanitize` moves the axis on load, as here).
        let w = match w.shape() {
            [c, kk, 1] if (*c, *kk) == (conv_dim, k) => w,
            [c, 1, kk] if (*c, *kk) == (conv_dim, k) => w.swap_axes(1, 2)?,
            found => {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: vec![conv_dim, k, 1],
                    found: found.to_vec(),
                })
            }
        };
        let conv_weight = ws.cast(&name, w)?;
        let conv_bias = match spec.conv_bias {
            true => Some(ws.take_float(&p("conv1d.bias"), &[conv_dim])?),
            false => None,
        };
        Ok(Mamba2 {
            spec: *spec,
            in_proj,
            conv_weight,
            conv_bias,
            dt_bias: ws.take_float(&p("dt_bias"), &[heads])?,
            a_log: take_keep_f32(ws, &p("A_log"), &[heads])?,
            d: ws.take_float(&p("D"), &[heads])?,
            norm_weight: ws.take_float(&p("norm.weight"), &[inner])?,
            out_proj,
        })
    }

    /// `x`: `[B, L, hidden]` (already normed) -> `[B, L, hidden]`; reads and replaces the
    /// conv and SSM states and advances `cache` by `L`.
    pub(crate) fn forward(&self, x: &Array, cache: &mut StateCache) -> Result<Array> {
        let s = &self.spec;
        let (b, l) = (x.dim(0), x.dim(1));
        let (inner, conv_dim) = (s.inner(), s.conv_dim());
        let projected = self.in_proj.forward(x)?;
        let parts = projected.split_at_indices(&[inner, inner + conv_dim], -1)?;
        let [gate, conv_input, dt] = parts.as_slice() else {
            return Err(ModelError::Mlx(
                "in_proj split into other than 3 parts".into(),
            ));
        };
        let conv = self.conv(conv_input, cache)?;
        let bc = s.groups * s.state;
        let parts = conv.split_at_indices(&[inner, inner + bc], -1)?;
        let [xs, bm, cm] = parts.as_slice() else {
            return Err(ModelError::Mlx(
                "conv output split into other than 3 parts".into(),
            ));
        };
        let x4 = xs.reshape(&[b, l, s.heads, s.head_dim])?;
        let bm = bm.reshape(&[b, l, s.groups, s.state])?;
        let cm = cm.reshape(&[b, l, s.groups, s.state])?;
        let d = self.d.as_dtype(x4.dtype())?;
        let inputs = ScanInputs {
            x: &x4,
            a_log: &self.a_log,
            b: &bm,
            c: &cm,
            d: &d,
            dt,
            dt_bias: &self.dt_bias,
            limit: s.time_step_limit,
        };
        let (y, state) = scan(&inputs, cache.get(SSM).cloned())?;
        cache.set(SSM, state);
        cache.advance(l);
        let y = y.reshape(&[b, l, inner])?;
        self.out_proj.forward(&self.gated_norm(&y, gate)?)
    }

    /// The causal depthwise convolution over the conv state and `input`, then SiLU; keeps
    /// the last `conv_kernel - 1` inputs as the new conv state.
    fn conv(&self, input: &Array, cache: &mut StateCache) -> Result<Array> {
        let keep = self.spec.conv_kernel - 1;
        let conv_dim = self.spec.conv_dim();
        let state = match cache.get(CONV) {
            Some(c) => c.clone(),
            None => ops::zeros_dtype(&[input.dim(0), keep, conv_dim], input.dtype())?,
        };
        let padded = ops::concatenate(&[&state, input], 1)?;
        let t = padded.dim(1);
        cache.set(CONV, slice_axis(&padded, 1, t - keep, t)?);
        let mut y = ops::conv1d(&padded, &self.conv_weight, 1, 0, 1, conv_dim)?;
        if let Some(bias) = &self.conv_bias {
            y = y.add(bias)?;
        }
        Ok(SILU.with(|f| (f.borrow_mut())(&y))?)
    }

    /// mlx-lm's `MambaRMSNormGated`: `swiglu(gate, y)`, RMS-normed per group of
    /// `inner / groups` values, times the weight.
    fn gated_norm(&self, y: &Array, gate: &Array) -> Result<Array> {
        let group = self.spec.inner() / self.spec.groups;
        let y = swiglu(gate, y)?;
        let y = ops::unflatten(&y, -1, &[-1, group])?;
        let y = fast::rms_norm(&y, None, self.spec.eps)?;
        Ok(self.norm_weight.multiply(y.flatten(-2, -1)?)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = self.in_proj.arrays();
        v.extend([&self.conv_weight]);
        v.extend(self.conv_bias.iter());
        v.extend([&self.dt_bias, &self.a_log, &self.d, &self.norm_weight]);
        v.extend(self.out_proj.arrays());
        v
    }
}
