//! Per-sequence sampling: a chain of logits processors (bias, penalties; grammars can plug
//! in later) followed by a sampler (greedy, or temperature with top-p / min-p / top-k
//! masks), all as lazy MLX ops so the decode loop can queue the next step before reading
//! the current token. Semantics follow mlx-lm's `sample_utils`.

use mlx_rs::ops::argpartition_axis;
use mlx_rs::ops::indexing::{argmax_axis, put_along_axis, take_along_axis, TryIndexOp};
use mlx_rs::{ops, random, Array, Dtype};

use super::speculative::Verification;
use crate::model::Result;

/// Below this temperature sampling is argmax: scaling log-probabilities by `1 / temperature`
/// overflows f32 from about 3e-39 down (every token `-inf`, and the draw is noise), and well
/// before that the distribution is one-hot anyway (vLLM draws the line at the same place).
pub const GREEDY_BELOW: f32 = 1e-5;

/// What a request asks of sampling. `Default` is greedy with no processors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 (anything below [`GREEDY_BELOW`]) = greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1); other values disable it.
    pub top_p: f32,
    /// 0 disables.
    pub top_k: i32,
    /// 0 disables.
    pub min_p: f32,
    pub repetition_penalty: Option<f32>,
    pub repetition_context_size: usize,
    pub presence_penalty: Option<f32>,
    pub presence_context_size: usize,
    pub frequency_penalty: Option<f32>,
    pub frequency_context_size: usize,
    /// Added to the logits of these token ids.
    pub logit_bias: Vec<(u32, f32)>,
    /// Same seed, same tokens. `None` draws one from the clock.
    pub seed: Option<u64>,
    /// Report each sampled token's log-probability.
    pub logprobs: bool,
    /// Also report this many most likely tokens per step.
    pub top_logprobs: usize,
}

impl SamplingParams {
    /// Whether tokens are picked by argmax (see [`GREEDY_BELOW`]).
    pub fn greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature < GREEDY_BELOW
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: None,
            repetition_context_size: 20,
            presence_penalty: None,
            presence_context_size: 20,
            frequency_penalty: None,
            frequency_context_size: 20,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

/// Rewrites one sequence's logits `[1, V]` given its token history (prompt + generated,
/// 1-D, possibly still lazy).
pub trait LogitsProcessor {
    fn process(&mut self, history: &Array, logits: &Array) -> Result<Array>;
}

/// Additive bias on chosen token ids.
pub struct LogitBias {
    bias: Array,
}

impl LogitBias {
    pub fn new(vocab: i32, bias: &[(u32, f32)]) -> Self {
        let mut dense = vec![0f32; vocab.max(0) as usize];
        for &(id, b) in bias {
            if let Some(slot) = dense.get_mut(id as usize) {
                *slot += b;
            }
        }
        LogitBias {
            bias: Array::from_slice(&dense, &[1, vocab]),
        }
    }
}

impl LogitsProcessor for LogitBias {
    fn process(&mut self, _history: &Array, logits: &Array) -> Result<Array> {
        Ok(logits.add(self.bias.as_dtype(logits.dtype())?)?)
    }
}

/// Which penalty a [`Penalty`] applies to tokens seen in the last `context` tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PenaltyKind {
    /// Multiplicative, sign-aware (CTRL): `l < 0 ? l * p : l / p`.
    Repetition,
    /// `l - p` once per distinct token.
    Presence,
    /// `l - p * count`.
    Frequency,
}

pub struct Penalty {
    pub kind: PenaltyKind,
    pub penalty: f32,
    pub context: usize,
}

impl LogitsProcessor for Penalty {
    fn process(&mut self, history: &Array, logits: &Array) -> Result<Array> {
        let n = history.shape()[0];
        if n == 0 || self.context == 0 {
            return Ok(logits.clone());
        }
        // (i32: `saturating_sub` would go negative, and a negative start counts from the end)
        let start = (n - self.context.min(i32::MAX as usize) as i32).max(0);
        let recent = history.try_index(start..n)?.as_dtype(Dtype::Int32)?;
        let vocab = logits.shape()[logits.ndim() - 1];
        // counts[v] = occurrences of v in the window, via a one-hot sum (window is small).
        let ids = ops::arange::<_, i32>(None, vocab, None)?;
        let counts = recent
            .reshape(&[-1, 1])?
            .eq(ids.reshape(&[1, -1])?)?
            .as_dtype(Dtype::Float32)?
            .sum_axis(0, true)?;
        let seen = counts.gt(Array::from_f32(0.0))?;
        let p = Array::from_f32(self.penalty).as_dtype(logits.dtype())?;
        Ok(match self.kind {
            PenaltyKind::Repetition => {
                let scaled = ops::select(
                    &logits.lt(Array::from_f32(0.0))?,
                    logits.multiply(&p)?,
                    logits.divide(&p)?,
                )?;
                ops::select(&seen, scaled, logits)?
            }
            PenaltyKind::Presence => ops::select(&seen, logits.subtract(&p)?, logits)?,
            PenaltyKind::Frequency => {
                logits.subtract(counts.as_dtype(logits.dtype())?.multiply(&p)?)?
            }
        })
    }
}

/// The processors a request's parameters ask for, in mlx-lm's order.
pub fn make_processors(params: &SamplingParams, vocab: i32) -> Vec<Box<dyn LogitsProcessor>> {
    let mut v: Vec<Box<dyn LogitsProcessor>> = Vec::new();
    if !params.logit_bias.is_empty() {
        v.push(Box::new(LogitBias::new(vocab, &params.logit_bias)));
    }
    let penalties = [
        (
            PenaltyKind::Repetition,
            params.repetition_penalty,
            params.repetition_context_size,
        ),
        (
            PenaltyKind::Presence,
            params.presence_penalty,
            params.presence_context_size,
        ),
        (
            PenaltyKind::Frequency,
            params.frequency_penalty,
            params.frequency_context_size,
        ),
    ];
    for (kind, penalty, context) in penalties {
        if let Some(p) = penalty.filter(|p| *p != 0.0) {
            v.push(Box::new(Penalty {
                kind,
                penalty: p,
                context,
            }));
        }
    }
    v
}

fn neg_inf(like: &Array) -> Result<Array> {
    Ok(Array::from_f32(f32::NEG_INFINITY).as_dtype(like.dtype())?)
}

/// Keeps the smallest set of most likely tokens whose mass reaches `top_p`.
pub fn apply_top_p(logprobs: &Array, top_p: f32) -> Result<Array> {
    let sorted = ops::sort_axis(logprobs, -1)?;
    let probs = sorted.as_dtype(Dtype::Float32)?.exp()?;
    let above = ops::cumsum(&probs, -1, true, false)?;
    let total = above
        .try_index((.., ..1))?
        .add(probs.try_index((.., ..1))?)?;
    let dropped = above
        .ge(total.multiply(Array::from_f32(top_p))?)?
        .as_dtype(Dtype::Int32)?
        .sum_axis(-1, true)?;
    let threshold = take_along_axis(&sorted, &dropped, -1)?;
    Ok(ops::select(
        &logprobs.lt(&threshold)?,
        neg_inf(logprobs)?,
        logprobs,
    )?)
}

/// Drops tokens less likely than `min_p` times the most likely one.
pub fn apply_min_p(logprobs: &Array, min_p: f32) -> Result<Array> {
    let top = logprobs.max_axis(-1, true)?;
    let threshold = top.add(Array::from_f32(min_p.ln()))?;
    Ok(ops::select(
        &logprobs.lt(&threshold)?,
        neg_inf(logprobs)?,
        logprobs,
    )?)
}

/// Keeps the `k` most likely tokens.
pub fn apply_top_k(logprobs: &Array, k: i32) -> Result<Array> {
    let vocab = logprobs.shape()[logprobs.ndim() - 1];
    if k <= 0 || k >= vocab {
        return Ok(logprobs.clone());
    }
    let part = argpartition_axis(&logprobs.negative()?, k - 1, -1)?;
    let masked = part.try_index((.., k..))?;
    let fill = ops::broadcast_to(neg_inf(logprobs)?, masked.shape())?;
    Ok(put_along_axis(logprobs, &masked, &fill, -1)?)
}

/// Picks the next token from log-probabilities `[1, V]`; owns the sequence's PRNG key.
pub struct Sampler {
    params: SamplingParams,
    key: Array,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Result<Self> {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(Sampler {
            params: params.clone(),
            key: random::key(seed)?,
        })
    }

    /// The sampled token ids `[1]` (uint32, lazy).
    pub fn sample(&mut self, logprobs: &Array) -> Result<Array> {
        if self.params.greedy() {
            return Ok(argmax_axis(logprobs, -1, false)?);
        }
        let scaled = self.filtered_and_scaled(logprobs)?;
        let sub = self.next_key()?;
        Ok(random::categorical(&scaled, -1, None, &sub)?)
    }

    /// Queues the check of `drafts` against the log-probabilities `[n + 1, V]` of the
    /// positions that read the pending token and the `n` drafts (see
    /// [`speculative`](super::speculative) for the rule).
    pub fn verify(&mut self, logprobs: &Array, drafts: &[u32]) -> Result<Verification> {
        if self.params.greedy() {
            return Ok(Verification::Greedy(argmax_axis(logprobs, -1, false)?));
        }
        let scaled = self.filtered_and_scaled(logprobs)?;
        let sub = self.next_key()?;
        let keys = random::split(&sub, 2)?;
        let n = drafts.len() as i32;
        let (draft_p, uniform, candidates) = if n == 0 {
            let none = Array::from_slice::<f32>(&[], &[0]);
            (none.clone(), none, scaled)
        } else {
            let ids: Vec<i32> = drafts.iter().map(|&d| d as i32).collect();
            let ids = Array::from_slice(&ids, &[n, 1]);
            let head = scaled.try_index(..n)?;
            let probs = ops::softmax_axis(&head.as_dtype(Dtype::Float32)?, -1, None)?;
            let draft_p = take_along_axis(&probs, &ids, -1)?.reshape(&[n])?;
            let uniform = random::uniform::<_, f32>(0.0, 1.0, &[n], &keys.0)?;
            let fill = ops::broadcast_to(neg_inf(&head)?, &[n, 1])?;
            let without = put_along_axis(&head, &ids, &fill, -1)?;
            let last = scaled.try_index(n..)?;
            (draft_p, uniform, ops::concatenate(&[without, last], 0)?)
        };
        let residual = random::categorical(&candidates, -1, None, &keys.1)?;
        Ok(Verification::Sampled {
            draft_p,
            uniform,
            residual,
        })
    }

    /// The log-probabilities with the request's top-p / min-p / top-k filters applied,
    /// over the temperature.
    fn filtered_and_scaled(&self, logprobs: &Array) -> Result<Array> {
        let p = &self.params;
        let mut x = logprobs.clone();
        if 0.0 < p.top_p && p.top_p < 1.0 {
            x = apply_top_p(&x, p.top_p)?;
        }
        if p.min_p != 0.0 {
            x = apply_min_p(&x, p.min_p)?;
        }
        if p.top_k > 0 {
            x = apply_top_k(&x, p.top_k)?;
        }
        Ok(x.multiply(Array::from_f32(1.0 / p.temperature))?)
    }

    /// A fresh key for one draw; the sequence's key moves on.
    fn next_key(&mut self) -> Result<Array> {
        let (next, sub) = random::split(&self.key, 2)?;
        self.key = next;
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(a: &Array) -> Vec<f32> {
        let a = a.as_dtype(Dtype::Float32).unwrap();
        a.eval().unwrap();
        a.as_slice::<f32>().to_vec()
    }

    fn kept(a: &Array) -> Vec<bool> {
        host(a).iter().map(|x| x.is_finite()).collect()
    }

    /// log-softmax of probabilities [0.5, 0.25, 0.15, 0.07, 0.03].
    fn logprobs() -> Array {
        let p = [0.07f32, 0.5, 0.03, 0.25, 0.15];
        Array::from_iter(p.iter().map(|x| x.ln()), &[1, 5])
    }

    #[test]
    fn top_k_keeps_k_most_likely() {
        assert_eq!(
            kept(&apply_top_k(&logprobs(), 2).unwrap()),
            [false, true, false, true, false]
        );
        assert_eq!(kept(&apply_top_k(&logprobs(), 5).unwrap()), [true; 5]);
    }

    #[test]
    fn top_p_keeps_nucleus() {
        // 0.5 + 0.25 = 0.75 < 0.8, so 0.15 is needed too.
        assert_eq!(
            kept(&apply_top_p(&logprobs(), 0.8).unwrap()),
            [false, true, false, true, true]
        );
        assert_eq!(
            kept(&apply_top_p(&logprobs(), 0.5).unwrap()),
            [false, true, false, false, false]
        );
    }

    #[test]
    fn min_p_scales_with_top_token() {
        // threshold 0.2 * 0.5 = 0.1: keeps 0.5, 0.25, 0.15.
        assert_eq!(
            kept(&apply_min_p(&logprobs(), 0.2).unwrap()),
            [false, true, false, true, true]
        );
    }

    #[test]
    fn penalties_touch_only_recent_tokens() {
        let logits = Array::from_slice(&[2.0f32, -2.0, 1.0, 4.0], &[1, 4]);
        let history = Array::from_slice(&[3u32, 0, 1, 1], &[4]);
        let mut rep = Penalty {
            kind: PenaltyKind::Repetition,
            penalty: 2.0,
            context: 3,
        };
        assert_eq!(
            host(&rep.process(&history, &logits).unwrap()),
            [1.0, -4.0, 1.0, 4.0]
        );
        let mut pres = Penalty {
            kind: PenaltyKind::Presence,
            penalty: 0.5,
            context: 20,
        };
        assert_eq!(
            host(&pres.process(&history, &logits).unwrap()),
            [1.5, -2.5, 1.0, 3.5]
        );
        let mut freq = Penalty {
            kind: PenaltyKind::Frequency,
            penalty: 0.5,
            context: 20,
        };
        assert_eq!(
            host(&freq.process(&history, &logits).unwrap()),
            [1.5, -3.0, 1.0, 3.5]
        );
        let mut bias = LogitBias::new(4, &[(2, 10.0)]);
        assert_eq!(
            host(&bias.process(&history, &logits).unwrap()),
            [2.0, -2.0, 11.0, 4.0]
        );
    }

    #[test]
    fn seeded_sampling_repeats_and_greedy_is_argmax() {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let draw = |params: &SamplingParams| -> Vec<u32> {
            let mut s = Sampler::new(params).unwrap();
            (0..20)
                .map(|_| {
                    s.sample(&logprobs())
                        .unwrap()
                        .try_item_exact::<u32>()
                        .unwrap()
                })
                .collect()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params));
        assert!(
            a.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "temperature 1 should vary: {a:?}"
        );
        let g = draw(&SamplingParams::default());
        assert!(g.iter().all(|&t| t == 1));
        let k1 = draw(&SamplingParams {
            temperature: 1.0,
            top_k: 1,
            seed: Some(3),
            ..Default::default()
        });
        assert!(k1.iter().all(|&t| t == 1));
    }

    /// Rejection sampling keeps the target distribution: the first token out of a verify
    /// step (the draft when it stands, else the residual draw) is distributed as a plain
    /// draw, whatever the draft, with and without filters. 20,000 draws per case: each
    /// frequency's standard deviation is at most 0.0036, so a total variation distance
    /// above 0.02 means a wrong rule (a verify that always kept its draft is at 0.5 or
    /// more here).
    #[test]
    fn verification_keeps_the_sampling_distribution() {
        let cases = [
            (
                SamplingParams {
                    temperature: 1.0,
                    ..Default::default()
                },
                1u32,
            ),
            (
                SamplingParams {
                    temperature: 1.0,
                    ..Default::default()
                },
                2,
            ),
            (
                SamplingParams {
                    temperature: 0.7,
                    ..Default::default()
                },
                3,
            ),
            (
                SamplingParams {
                    temperature: 1.0,
                    top_k: 3,
                    ..Default::default()
                },
                0,
            ),
            (
                SamplingParams {
                    temperature: 1.0,
                    top_p: 0.8,
                    ..Default::default()
                },
                4,
            ),
        ];
        let n = 20_000;
        for (params, draft) in cases {
            // The same target at both verified positions, one draft.
            let lp = logprobs();
            let lp2 = ops::concatenate(&[&lp, &lp], 0).unwrap();
            let plain = Sampler::new(&params).unwrap();
            let mut want = [0f64; 5];
            let x = plain.filtered_and_scaled(&lp).unwrap();
            let probs = ops::softmax_axis(&x, -1, None).unwrap();
            for (w, v) in want.iter_mut().zip(host(&probs)) {
                *w = v as f64;
            }
            let mut got = [0f64; 5];
            for seed in 0..n {
                let mut s = Sampler::new(&SamplingParams {
                    seed: Some(seed),
                    ..params.clone()
                })
                .unwrap();
                let v = s.verify(&lp2, &[draft]).unwrap().verdict(&[draft]).unwrap();
                let first = if v.accepted == 1 { draft } else { v.next };
                got[first as usize] += 1.0 / n as f64;
            }
            let tv: f64 = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
                / 2.0;
            assert!(
                tv < 0.02,
                "{params:?}, draft {draft}: want {want:?}, got {got:?} (tv {tv:.4})"
            );
        }
    }

    #[test]
    fn greedy_verification_is_argmax() {
        let lp = logprobs();
        let lp3 = ops::concatenate(&[&lp, &lp, &lp], 0).unwrap();
        let mut s = Sampler::new(&SamplingParams::default()).unwrap();
        let v = s.verify(&lp3, &[1, 3]).unwrap().verdict(&[1, 3]).unwrap();
        assert_eq!((v.accepted, v.next), (1, 1));
        let v = s.verify(&lp3, &[1, 1]).unwrap().verdict(&[1, 1]).unwrap();
        assert_eq!((v.accepted, v.next), (2, 1));
    }

    /// A temperature whose reciprocal overflows f32 (below ~3e-39) once scaled every
    /// log-probability to -inf, and the draw was noise.
    #[test]
    fn tiny_temperatures_are_greedy() {
        for temperature in [1e-45f32, 1e-40, 1e-38, 1e-30, 1e-6] {
            let mut s = Sampler::new(&SamplingParams {
                temperature,
                seed: Some(5),
                ..Default::default()
            })
            .unwrap();
            for _ in 0..20 {
                let t = s
                    .sample(&logprobs())
                    .unwrap()
                    .try_item_exact::<u32>()
                    .unwrap();
                assert_eq!(t, 1, "temperature {temperature:e}");
            }
        }
    }
}
