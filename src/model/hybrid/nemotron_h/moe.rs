//! Nemotron-H's feed-forward layers (mlx-lm's `NemotronHMLP` and `NemotronHMoE`): an
//! ungated MLP `down(relu(up(x))^2)`, and a mixture of such experts (`switch_mlp.fc1` /
//! `fc2`, stacked `[experts, out, in]`) routed DeepSeek-style (`group_expert_select`:
//! float32 sigmoid scores plus `gate.e_score_correction_bias`, only the `topk_group` best
//! groups of experts by their top-2 sums eligible, the top-k's unbiased scores
//! renormalized with a `1e-20` guard and scaled by `routed_scaling_factor`), optionally
//! run in a smaller latent width (`fc1_latent_proj` before the experts, `fc2_latent_proj`
//! after), plus a shared expert every token goes through.

use std::cell::RefCell;

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::topk_axis;
use mlx_rs::transforms::compile::compile;
use mlx_rs::{ops, Array, Dtype};

use super::mamba2::take_keep_f32;
use crate::model::config::QuantConfig;
use crate::model::error::{ModelError, Result};
use crate::model::layers::Linear;
use crate::model::moe::{through_experts, SwitchLinear};
use crate::model::slicing::slice_axis;
use crate::model::weights::Weights;

type Unary = Box<dyn for<'a> FnMut(&'a Array) -> std::result::Result<Array, Exception>>;

thread_local! {
    /// `max(x, 0)^2`, compiled as `mlx.nn.relu2` is; the zero in `x`'s dtype, as a Python
    /// scalar is in MLX.
    static RELU2: RefCell<Unary> = RefCell::new(Box::new(compile(
        |x: &Array| ops::square(ops::maximum(x, Array::from_f32(0.0).as_dtype(x.dtype())?)?),
        true,
    )));
}

fn relu2(x: &Array) -> Result<Array> {
    Ok(RELU2.with(|f| (f.borrow_mut())(x))?)
}

/// `down_proj(relu2(up_proj(x)))`.
pub(crate) struct Relu2Mlp {
    up: Linear,
    down: Linear,
}

impl Relu2Mlp {
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        (dims, hidden): (i32, i32),
        bias: bool,
        quant: &QuantConfig,
    ) -> Result<Self> {
        Ok(Relu2Mlp {
            up: Linear::load(ws, &format!("{prefix}.up_proj"), dims, hidden, bias, quant)?,
            down: Linear::load(
                ws,
                &format!("{prefix}.down_proj"),
                hidden,
                dims,
                bias,
                quant,
            )?,
        })
    }

    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        self.down.forward(&relu2(&self.up.forward(x)?)?)
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = self.up.arrays();
        v.extend(self.down.arrays());
        v
    }
}

/// The shape and routing of a Nemotron-H MoE layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NemotronMoeSpec {
    pub hidden: i32,
    /// Each expert's hidden size (`moe_intermediate_size`).
    pub expert_hidden: i32,
    pub experts: i32,
    pub top_k: i32,
    pub n_group: i32,
    pub topk_group: i32,
    pub norm_topk_prob: bool,
    pub scaling: f32,
    /// The experts' input width when it is not `hidden` (`moe_latent_size`).
    pub latent: Option<i32>,
    /// The shared expert's hidden size, if there is one.
    pub shared_hidden: Option<i32>,
    /// Biases on the shared expert and latent projections (`mlp_bias`).
    pub bias: bool,
}

impl NemotronMoeSpec {
    pub fn check(&self) -> Result<()> {
        let (e, g, tg) = (self.experts, self.n_group, self.topk_group);
        if e <= 0 || self.top_k <= 0 || self.top_k > e || self.expert_hidden <= 0 {
            return Err(ModelError::Config(format!(
                "nemotron_h: mixture of experts needs 0 < num_experts_per_tok ({}) <= n_routed_experts ({e}) and a positive moe_intermediate_size",
                self.top_k
            )));
        }
        // Groups are ranked by their two best scores: each needs two experts.
        if g < 1 || !(1..=g).contains(&tg) || e % g != 0 || (g > 1 && e / g < 2) {
            return Err(ModelError::Config(format!(
                "nemotron_h: n_group {g} and topk_group {tg} do not fit {e} experts"
            )));
        }
        Ok(())
    }
}

pub(crate) struct NemotronMoe {
    spec: NemotronMoeSpec,
    /// Router `[experts, hidden]` (a plain matrix, never quantized by mlx-lm).
    gate: Linear,
    /// `[experts]`, float32 as stored.
    score_bias: Array,
    fc1: SwitchLinear,
    fc2: SwitchLinear,
    latent: Option<(Linear, Linear)>,
    shared: Option<Relu2Mlp>,
}

impl NemotronMoe {
    /// Loads `<prefix>.{gate, switch_mlp, fc{1,2}_latent_proj, shared_experts}`.
    pub(crate) fn load(
        ws: &mut Weights,
        prefix: &str,
        spec: &NemotronMoeSpec,
        quant: &QuantConfig,
    ) -> Result<Self> {
        spec.check()?;
        let p = |n: &str| format!("{prefix}.{n}");
        let (h, e) = (spec.hidden, spec.experts);
        let width = spec.latent.unwrap_or(h);
        let latent = match spec.latent {
            Some(w) => Some((
                Linear::load(ws, &p("fc1_latent_proj"), h, w, spec.bias, quant)?,
                Linear::load(ws, &p("fc2_latent_proj"), w, h, spec.bias, quant)?,
            )),
            None => None,
        };
        let shared = match spec.shared_hidden {
            Some(sh) => Some(Relu2Mlp::load(
                ws,
                &p("shared_experts"),
                (h, sh),
                spec.bias,
                quant,
            )?),
            None => None,
        };
        let expert_dims = (width, spec.expert_hidden);
        Ok(NemotronMoe {
            spec: *spec,
            gate: Linear::load(ws, &p("gate"), h, e, false, quant)?,
            score_bias: take_keep_f32(ws, &p("gate.e_score_correction_bias"), &[e])?,
            fc1: SwitchLinear::load(ws, &p("switch_mlp.fc1"), e, expert_dims, false, quant)?,
            fc2: SwitchLinear::load(
                ws,
                &p("switch_mlp.fc2"),
                e,
                (spec.expert_hidden, width),
                false,
                quant,
            )?,
            latent,
            shared,
        })
    }

    /// mlx-lm's `group_expert_select`: the experts `[B, L, k]` and their weights (float32).
    fn route(&self, x: &Array) -> Result<(Array, Array)> {
        let s = &self.spec;
        let scores = ops::sigmoid(self.gate.forward(x)?.as_dtype(Dtype::Float32)?)?;
        let mut biased = scores.add(&self.score_bias)?;
        let drop = s.n_group - s.topk_group;
        if s.n_group > 1 && drop > 0 {
            // Groups outside the best `topk_group` (by their two best scores) are zeroed.
            let grouped = ops::unflatten(&biased, -1, &[s.n_group, -1])?;
            let group_scores = topk_axis(&grouped, 2, -1)?.sum_axis(-1, true)?;
            let worst = ops::argpartition_axis(&group_scores, drop - 1, -2)?;
            let worst = slice_axis(&worst, (worst.ndim() - 2) as usize, 0, drop)?;
            let kept = grouped.put_along_axis(&worst, Array::from_f32(0.0), -2)?;
            biased = ops::flatten(&kept, -2, -1)?;
        }
        let k = s.top_k;
        let inds = ops::argpartition_axis(biased.negative()?, k - 1, -1)?;
        let inds = slice_axis(&inds, (inds.ndim() - 1) as usize, 0, k)?;
        let mut picked = scores.take_along_axis(&inds, -1)?;
        if k > 1 && s.norm_topk_prob {
            let denominator = picked.sum_axis(-1, true)?.add(Array::from_f32(1e-20))?;
            picked = picked.divide(&denominator)?;
        }
        Ok((inds, picked.multiply(Array::from_f32(s.scaling))?))
    }

    /// `x`: `[B, L, hidden]` (already normed) -> `[B, L, hidden]`.
    pub(crate) fn forward(&self, x: &Array) -> Result<Array> {
        let (inds, weights) = self.route(x)?;
        let xin = match &self.latent {
            Some((down, _)) => down.forward(x)?,
            None => x.clone(),
        };
        let y = through_experts(&xin, &inds, |x, idx, sorted| {
            let h = relu2(&self.fc1.forward(x, idx, sorted)?)?;
            self.fc2.forward(&h, idx, sorted)
        })?;
        let mut out = y
            .multiply(weights.expand_dims(-1)?)?
            .sum_axis(-2, false)?
            .as_dtype(y.dtype())?;
        if let Some((_, up)) = &self.latent {
            out = up.forward(&out)?;
        }
        match &self.shared {
            Some(mlp) => Ok(out.add(mlp.forward(x)?)?),
            None => Ok(out),
        }
    }

    pub(crate) fn arrays(&self) -> Vec<&Array> {
        let mut v = self.gate.arrays();
        v.push(&self.score_bias);
        v.extend(self.fc1.arrays());
        v.extend(self.fc2.arrays());
        if let Some((a, b)) = &self.latent {
            v.extend(a.arrays());
            v.extend(b.arrays());
        }
        v.extend(self.shared.iter().flat_map(Relu2Mlp::arrays));
        v
    }
}
