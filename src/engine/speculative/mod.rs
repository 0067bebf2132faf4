//! Speculative decoding: a sequence's next tokens are guessed cheaply (a *draft*) and the
//! model checks them all in one forward, keeping the longest run it agrees with plus one
//! token of its own. The output is the model's: greedy rows keep a draft token only where it
//! is the argmax, sampled rows by rejection sampling (a draft token `d` is kept with
//! probability `p(d)` under the row's own distribution; on rejection the next token is drawn
//! from `p` without `d`), which leaves every token distributed as plain sampling would.
//!
//! Drafts come from the context itself (`ngram.rs`, prompt lookup) or from a smaller model
//! with the same vocabulary (`draft.rs`, `--draft-model`). The verify step lives
//! in `step.rs`: inside the decode batch, every row with its own draft length, rejected
//! positions dropped from the caches afterwards ([`LayerCache::drop_tail`]).
//!
//! [`LayerCache::drop_tail`]: crate::model::LayerCache::drop_tail

use mlx_rs::Array;

use crate::model::Result;

mod draft;
pub mod ngram;
mod step;

pub use draft::DraftModel;

/// How sequences speculate (`kooka serve --speculative ngram`); plain data, identical on every
/// rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpeculationConfig {
    /// Most draft tokens a sequence proposes per step.
    pub draft_tokens: usize,
    /// Shortest n-gram of the context's end that prompt lookup matches.
    pub ngram_min: usize,
    /// Longest n-gram tried first.
    pub ngram_max: usize,
    /// Speculate only while the decode batch has at most this many rows: a larger batch
    /// already keeps the device busy, and verifying `1 + draft` positions per row would make
    /// every step longer for everyone.
    pub max_rows: usize,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        SpeculationConfig {
            draft_tokens: 8,
            ngram_min: 2,
            ngram_max: 4,
            max_rows: 8,
        }
    }
}

/// What speculation did so far (`/health`, `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpeculationStats {
    /// Verify forwards run.
    pub steps: u64,
    /// Draft tokens proposed.
    pub drafted: u64,
    /// Draft tokens the model kept.
    pub accepted: u64,
}

/// The outcome of verifying one row: how many draft tokens stand, and the model's own next
/// token after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub accepted: usize,
    pub next: u32,
}

/// Greedy: drafts stand while each equals the argmax before it; `ids` are the argmaxes of
/// the `1 + drafts.len()` verified positions.
pub fn greedy_verdict(ids: &[u32], drafts: &[u32]) -> Verdict {
    let accepted = drafts.iter().zip(ids).take_while(|(d, id)| d == id).count();
    Verdict {
        accepted,
        next: ids[accepted],
    }
}

/// Rejection sampling against a one-token draft distribution: draft `i` stands when
/// `uniform[i] < p_i(d_i)` (`draft_p`), the first that does not is replaced by `residual[i]`
/// (a draw from `p_i` without `d_i`); all standing, the next token is `residual[n]` (a plain
/// draw at the last position).
pub fn sampled_verdict(
    draft_p: &[f32],
    uniform: &[f32],
    residual: &[u32],
    drafts: &[u32],
) -> Verdict {
    let accepted = drafts
        .iter()
        .enumerate()
        .take_while(|&(i, _)| uniform[i] < draft_p[i])
        .count();
    Verdict {
        accepted,
        next: residual[accepted],
    }
}

/// What a verify step queued for one row (lazy until [`Verification::verdict`] reads it).
pub enum Verification {
    /// The argmax of every verified position, `[n + 1]`.
    Greedy(Array),
    /// `p_i(d_i)` and a uniform draw per draft (`[n]` f32), and a draw per position from
    /// `p_i` without `d_i` (the last position: plain), `[n + 1]`.
    Sampled {
        draft_p: Array,
        uniform: Array,
        residual: Array,
    },
}

impl Verification {
    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            Verification::Greedy(ids) => vec![ids],
            Verification::Sampled {
                draft_p,
                uniform,
                residual,
            } => vec![draft_p, uniform, residual],
        }
    }

    /// Reads the queued arrays: how many of `drafts` stand, and the next token.
    pub fn verdict(&self, drafts: &[u32]) -> Result<Verdict> {
        Ok(match self {
            Verification::Greedy(ids) => {
                ids.eval()?;
                greedy_verdict(ids.as_slice::<u32>(), drafts)
            }
            Verification::Sampled {
                draft_p,
                uniform,
                residual,
            } => {
                for a in [draft_p, uniform, residual] {
                    a.eval()?;
                }
                // (An empty array has no data to slice.)
                let floats = |a: &Array| match drafts.is_empty() {
                    true => Vec::new(),
                    false => a.as_slice::<f32>().to_vec(),
                };
                sampled_verdict(
                    &floats(draft_p),
                    &floats(uniform),
                    residual.as_slice::<u32>(),
                    drafts,
                )
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_keeps_the_agreeing_run() {
        let v = greedy_verdict(&[5, 6, 9, 1], &[5, 6, 7]);
        assert_eq!(
            v,
            Verdict {
                accepted: 2,
                next: 9
            }
        );
        let all = greedy_verdict(&[5, 6, 7, 1], &[5, 6, 7]);
        assert_eq!(
            all,
            Verdict {
                accepted: 3,
                next: 1
            }
        );
        let none = greedy_verdict(&[4], &[]);
        assert_eq!(
            none,
            Verdict {
                accepted: 0,
                next: 4
            }
        );
    }

    #[test]
    fn sampled_stops_at_the_first_rejection() {
        let v = sampled_verdict(
            &[0.9, 0.2, 0.9],
            &[0.5, 0.3, 0.1],
            &[11, 12, 13, 14],
            &[1, 2, 3],
        );
        assert_eq!(
            v,
            Verdict {
                accepted: 1,
                next: 12
            }
        );
        let all = sampled_verdict(&[0.9, 0.9], &[0.1, 0.1], &[11, 12, 13], &[1, 2]);
        assert_eq!(
            all,
            Verdict {
                accepted: 2,
                next: 13
            }
        );
    }
}
