//! Rotary position embeddings as mlx-lm's `rope_utils.initialize_rope` builds them: plain
//! (`default`), `linear` position scaling, Llama-3 frequency scaling and YaRN. Frequencies are
//! computed with MLX ops in mlx-lm's order so they are bit-identical.

use mlx_rs::{fast, ops, Array};

use super::cache::Positions;
use super::error::{ModelError, Result};

/// Rotary position embedding over the first `dims` features of each head.
pub struct Rope {
    pub dims: i32,
    pub traditional: bool,
    pub kind: RopeKind,
}

pub enum RopeKind {
    /// `base`, position `scale` (1/factor for "linear" scaling).
    Base { base: f32, scale: f32 },
    /// Precomputed per-pair frequencies (Llama-3 scaling).
    Freqs(Array),
    /// YaRN: precomputed frequencies, and the rotated features scaled by `mscale` first.
    Yarn { freqs: Array, mscale: f32 },
}

impl Rope {
    /// From `rope_theta` and `rope_scaling` (none/default, linear, llama3, yarn).
    pub fn new(
        dims: i32,
        base: f32,
        traditional: bool,
        scaling: Option<&serde_json::Value>,
    ) -> Result<Self> {
        let kind = match scaling {
            None => RopeKind::Base { base, scale: 1.0 },
            Some(cfg) => {
                let ty = cfg
                    .get("type")
                    .or_else(|| cfg.get("rope_type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let num = |k: &str, default: Option<f64>| -> Result<f64> {
                    cfg.get(k)
                        .and_then(|v| v.as_f64())
                        .or(default)
                        .ok_or_else(|| ModelError::Config(format!("rope_scaling.{k} missing")))
                };
                match ty {
                    "default" => RopeKind::Base { base, scale: 1.0 },
                    "linear" => RopeKind::Base {
                        base,
                        scale: 1.0 / num("factor", None)? as f32,
                    },
                    "llama3" => RopeKind::Freqs(llama3_freqs(
                        dims,
                        base,
                        num("factor", None)?,
                        num("low_freq_factor", Some(1.0))?,
                        num("high_freq_factor", Some(4.0))?,
                        num("original_max_position_embeddings", Some(8192.0))?,
                    )?),
                    "yarn" | "deepseek_yarn" => {
                        let (freqs, mscale) = yarn(
                            dims,
                            base,
                            &YarnParams {
                                factor: num("factor", None)?,
                                original_ctx: num(
                                    "original_max_position_embeddings",
                                    Some(4096.0),
                                )?,
                                beta_fast: num("beta_fast", Some(32.0))?,
                                beta_slow: num("beta_slow", Some(1.0))?,
                                mscale: num("mscale", Some(1.0))?,
                                mscale_all_dim: num("mscale_all_dim", Some(0.0))?,
                            },
                        )?;
                        RopeKind::Yarn { freqs, mscale }
                    }
                    other => {
                        return Err(ModelError::Config(format!(
                        "rope_scaling type {other:?} unsupported (default, linear, llama3, yarn)"
                    )))
                    }
                }
            }
        };
        Ok(Rope {
            dims,
            traditional,
            kind,
        })
    }

    /// No rotation at all (Nemotron-H's attention layers have no position encoding): a
    /// `Rope` of zero rotated values, whose `forward` returns its input.
    pub fn none() -> Self {
        Rope {
            dims: 0,
            traditional: false,
            kind: RopeKind::Base {
                base: 1.0,
                scale: 1.0,
            },
        }
    }

    /// `x`: `[B, H, L, D]`, positions `offset..offset+L` (per row for a batch).
    pub fn forward(&self, x: &Array, offset: &Positions) -> Result<Array> {
        if self.dims == 0 {
            return Ok(x.clone());
        }
        let (base, scale, freqs) = match &self.kind {
            RopeKind::Base { base, scale } => (Some(*base), *scale, None),
            RopeKind::Freqs(f) => (None, 1.0, Some(f)),
            RopeKind::Yarn { freqs, .. } => (None, 1.0, Some(freqs)),
        };
        let scaled;
        let x = match &self.kind {
            RopeKind::Yarn { mscale, .. } if *mscale != 1.0 => {
                scaled = self.scale_rotated(x, *mscale)?;
                &scaled
            }
            _ => x,
        };
        Ok(match offset {
            Positions::Same(o) => {
                fast::rope(x, self.dims, self.traditional, base, scale, *o, freqs)?
            }
            Positions::PerRow(o) => {
                fast::rope_dynamic(x, self.dims, self.traditional, base, scale, o, freqs)?
            }
        })
    }
}

/// Llama-3 frequency scaling, computed in float32 with MLX ops in the same order as
/// mlx-lm's `Llama3RoPE` so the frequencies are bit-identical.
fn llama3_freqs(
    dims: i32,
    base: f32,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Result<Array> {
    let low_wavelen = (old_ctx / low) as f32;
    let high_wavelen = (old_ctx / high) as f32;
    let idx = Array::from_iter((0..dims).step_by(2).map(|i| i as f32), &[(dims + 1) / 2]);
    let freqs = ops::power(
        Array::from_f32(base),
        idx.divide(Array::from_f32(dims as f32))?,
    )?;
    let wavelens = freqs.multiply(Array::from_f32(2.0 * std::f32::consts::PI))?;
    let factor_a = Array::from_f32(factor as f32);
    let freqs = ops::select(
        &wavelens.gt(Array::from_f32(low_wavelen))?,
        freqs.multiply(&factor_a)?,
        &freqs,
    )?;
    let medium = wavelens
        .gt(Array::from_f32(high_wavelen))?
        .logical_and(&wavelens.lt(Array::from_f32(low_wavelen))?)?;
    let smooth = Array::from_f32(old_ctx as f32)
        .divide(&wavelens)?
        .subtract(Array::from_f32(low as f32))?
        .divide(Array::from_f32((high - low) as f32))?;
    let one = Array::from_f32(1.0);
    let smooth_freqs = freqs.divide(one.subtract(&smooth)?.divide(&factor_a)?.add(&smooth)?)?;
    Ok(ops::select(&medium, smooth_freqs, freqs)?)
}

/// The frequencies a kernel that rotates as [`Rope::forward`] needs (those of MLX's RoPE
/// kernel): from `log2(base)`, or one per pair.
pub enum KernelFreqs<'a> {
    Log2Base(f32),
    PerPair(&'a Array),
}

impl Rope {
    /// What MLX's RoPE kernel gets for this rope: the frequencies and the positions' scale;
    /// `None` where more happens first (YaRN's scaled input).
    pub fn kernel_freqs(&self) -> Option<(KernelFreqs<'_>, f32)> {
        match &self.kind {
            // MLX passes std::log2 of its float base
            RopeKind::Base { base, scale } => Some((KernelFreqs::Log2Base(base.log2()), *scale)),
            RopeKind::Freqs(f) => Some((KernelFreqs::PerPair(f), 1.0)),
            RopeKind::Yarn { freqs, mscale } if *mscale == 1.0 => {
                Some((KernelFreqs::PerPair(freqs), 1.0))
            }
            RopeKind::Yarn { .. } => None,
        }
    }

    /// `x.at[..., :dims].multiply(m)`: the rotated features scaled, the rest as they are.
    fn scale_rotated(&self, x: &Array, m: f32) -> Result<Array> {
        let d = *x.shape().last().unwrap_or(&0);
        let m = Array::from_f32(m).as_dtype(x.dtype())?;
        if d == self.dims {
            return Ok(x.multiply(&m)?);
        }
        let last = x.ndim() - 1;
        let head = super::slicing::slice_axis(x, last, 0, self.dims)?.multiply(&m)?;
        let tail = super::slicing::slice_axis(x, last, self.dims, d)?;
        Ok(ops::concatenate(&[head, tail], last as i32)?)
    }
}

/// YaRN's settings (`rope_scaling` of type `yarn`).
struct YarnParams {
    factor: f64,
    original_ctx: f64,
    beta_fast: f64,
    beta_slow: f64,
    mscale: f64,
    mscale_all_dim: f64,
}

/// YaRN frequencies and input scale, as mlx-lm's `YarnRoPE` computes them: per pair, a ramp
/// between the interpolated (`factor` x) and the original frequency over the correction
/// range of `beta_fast`..`beta_slow` rotations.
fn yarn(dims: i32, base: f32, p: &YarnParams) -> Result<(Array, f32)> {
    let base64 = base as f64;
    let correction_dim = |rotations: f64| {
        dims as f64 * (p.original_ctx / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base64.ln())
    };
    let low = correction_dim(p.beta_fast).floor().max(0.0);
    let high = correction_dim(p.beta_slow).ceil().min(dims as f64 - 1.0);
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let mscale = get_mscale(p.factor, p.mscale) / get_mscale(p.factor, p.mscale_all_dim);
    let half = dims / 2;
    let idx = Array::from_iter((0..dims).step_by(2).map(|i| i as f32), &[(dims + 1) / 2]);
    let freq_extra = ops::power(
        Array::from_f32(base),
        idx.divide(Array::from_f32(dims as f32))?,
    )?;
    let freq_inter = Array::from_f32(p.factor as f32).multiply(&freq_extra)?;
    let (low, mut high) = (low as f32, high as f32);
    if low == high {
        high += 0.001;
    }
    let ramp = Array::from_iter((0..half).map(|i| i as f32), &[half])
        .subtract(Array::from_f32(low))?
        .divide(Array::from_f32(high - low))?;
    let ramp = ops::clip(&ramp, (Array::from_f32(0.0), Array::from_f32(1.0)))?;
    let mask = Array::from_f32(1.0).subtract(&ramp)?;
    let one_minus = Array::from_f32(1.0).subtract(&mask)?;
    let freqs = freq_inter.multiply(&freq_extra)?.divide(
        &freq_inter
            .multiply(&mask)?
            .add(&freq_extra.multiply(&one_minus)?)?,
    )?;
    Ok((freqs, mscale as f32))
}
