//! Pipeline parallel: the hidden state goes rank to rank, and the last rank's logits reach
//! every rank through one `all_sum`. A hand-off ([`Handoff`]) is a `send`/`recv` between
//! neighbours where the backend has them (ring), else (NCCL) an `all_sum` to which every rank
//! but the sender adds zeros: `x + 0` is exact, so both give the same bits.
//!
//! Everything stays lazy, as in a single-rank forward, which raises one hazard: MLX runs
//! only what the evaluated arrays depend on. Each rank but the last therefore ties its send
//! to the arrays the engine will evaluate: to its last KV cache (prefill evaluates only the
//! caches) and to the zeros it contributes to the logits (decoding evaluates only the
//! logits). Every rank evaluates the same collectives in the same order, so none waits for
//! a peer that never comes (mlx-lm's pipelined models use the same `depends` trick). With
//! all-sum hand-offs every rank takes part in all `size - 1` of them, chained with
//! `depends` so that MLX cannot reorder them.

use std::rc::Rc;

use mlx_rs::{ops, Array, Dtype};

use super::super::cache::LayerCache;
use super::super::error::{ModelError, Result};
use crate::dist::{depends, Group};

/// How the hidden state reaches the next rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// `send` on one rank, `recv` on the next (the ring backend).
    SendRecv,
    /// One `all_sum` per hand-off, the sender's state plus every other rank's zeros (for
    /// backends without point-to-point operations: MLX 0.32's NCCL).
    AllSum,
}

impl Handoff {
    /// `KOOKA_PIPELINE_HANDOFF` (`send-recv` or `all-sum`, the same on every rank) where set,
    /// else what the group's backend supports. The variable exists to compare the two, and
    /// to run the all-sum path on the ring where NCCL is not available.
    pub fn for_group(group: &Group) -> Result<Self> {
        let forced = std::env::var("KOOKA_PIPELINE_HANDOFF").ok();
        let handoff = match forced.as_deref() {
            None | Some("") => {
                if group.backend().has_send_recv() {
                    Handoff::SendRecv
                } else {
                    Handoff::AllSum
                }
            }
            Some("send-recv") => Handoff::SendRecv,
            Some("all-sum") => Handoff::AllSum,
            Some(other) => {
                return Err(ModelError::Shard(format!(
                    "KOOKA_PIPELINE_HANDOFF={other:?}: expected send-recv or all-sum"
                )))
            }
        };
        if handoff == Handoff::SendRecv && !group.backend().has_send_recv() {
            return Err(ModelError::Shard(format!(
                "KOOKA_PIPELINE_HANDOFF=send-recv: the {} backend has no send/recv",
                group.backend().name()
            )));
        }
        Ok(handoff)
    }
}

pub(crate) struct Pipeline {
    group: Rc<Group>,
    handoff: Handoff,
    hidden: i32,
    vocab: i32,
    /// Hidden states and logits cross ranks in this dtype: a receiver must name the dtype
    /// of what it receives without being told.
    dtype: Dtype,
}

impl Pipeline {
    pub(crate) fn new(group: Rc<Group>, hidden: i32, vocab: i32, dtype: Dtype) -> Result<Self> {
        Ok(Pipeline {
            handoff: Handoff::for_group(&group)?,
            group,
            hidden,
            vocab,
            dtype,
        })
    }

    pub(crate) fn is_first(&self) -> bool {
        self.group.rank() == 0
    }

    fn is_last(&self) -> bool {
        self.group.rank() + 1 == self.group.size()
    }

    /// `tokens` `[B, L]` -> this step's `[B, L, hidden]` from the previous rank (the tokens
    /// themselves only give the shape: the first rank embedded them).
    pub(crate) fn receive(&self, tokens: &Array) -> Result<Array> {
        let [b, l] = batch_shape(tokens)?;
        let shape = [b, l, self.hidden];
        let rank = self.group.rank();
        match self.handoff {
            Handoff::SendRecv => Ok(self.group.recv(&shape, self.dtype, rank - 1)?),
            Handoff::AllSum => {
                // Hand-offs 0..rank-1 (rank r-1's is the one this rank receives).
                let zeros = ops::zeros_dtype(&shape, self.dtype)?;
                let mut last = None;
                for _ in 0..rank {
                    last = Some(self.all_sum_after(&zeros, last.as_ref())?);
                }
                last.ok_or_else(|| ModelError::Shard("the first rank receives nothing".into()))
            }
        }
    }

    /// One all-sum hand-off of `x`, ordered after the previous one.
    fn all_sum_after(&self, x: &Array, previous: Option<&Array>) -> Result<Array> {
        let x = match previous {
            Some(p) => depends(&[x], &[p])?
                .pop()
                .ok_or_else(|| ModelError::Mlx("depends returned no array".into()))?,
            None => x.clone(),
        };
        Ok(self.group.all_sum(&x)?)
    }

    /// Hands `h` on to the next rank; the returned array completes this rank's part of
    /// every hand-off once evaluated.
    fn hand_on(&self, h: Array) -> Result<Array> {
        let rank = self.group.rank();
        match self.handoff {
            Handoff::SendRecv => Ok(self.group.send(&h, rank + 1)?),
            Handoff::AllSum => {
                let zeros = ops::zeros_like(&h)?;
                let mut done = self.all_sum_after(&h, None)?;
                // Hand-offs rank+1..size-2, between ranks further down.
                for _ in rank + 1..self.group.size() - 1 {
                    done = self.all_sum_after(&zeros, Some(&done))?;
                }
                Ok(done)
            }
        }
    }

    /// Ends this rank's part of a forward: the last rank runs `head` (final norm and head)
    /// on `h`, the others send `h` on; every rank returns the last rank's logits.
    pub(crate) fn finish(
        &self,
        h: Array,
        caches: &mut [LayerCache],
        head: impl FnOnce(&Array) -> Result<Array>,
    ) -> Result<Array> {
        let logits = if self.is_last() {
            let logits = head(&h)?;
            self.on_wire(logits)?
        } else {
            let shape = h.shape().to_vec();
            let sent = self.hand_on(self.on_wire(h)?)?;
            // The last layer that keeps something (a hybrid model's feed-forward layers keep
            // nothing, and an evaluation of their empty caches would not run the send).
            let last = caches
                .iter_mut()
                .rev()
                .find(|c| !matches!(c, LayerCache::Stateless))
                .ok_or_else(|| {
                    ModelError::Shard(
                        "a pipeline rank needs at least one attention or recurrent layer; \
                         change --pipeline-split"
                            .into(),
                    )
                })?;
            last.depend_on(&sent)?;
            let zeros = ops::zeros_dtype(&[shape[0], shape[1], self.vocab], self.dtype)?;
            depends(&[&zeros], &[&sent])?
                .pop()
                .ok_or_else(|| ModelError::Mlx("depends returned no array".into()))?
        };
        // x + 0 is exact, so every rank gets the last rank's logits bit for bit.
        Ok(self.group.all_sum(&logits)?)
    }

    /// Casts to the wire dtype. A no-op unless a checkpoint mixes float dtypes so that the
    /// activations drift from the embeddings' dtype.
    fn on_wire(&self, x: Array) -> Result<Array> {
        if x.dtype() == self.dtype {
            Ok(x)
        } else {
            Ok(x.as_dtype(self.dtype)?)
        }
    }
}

fn batch_shape(tokens: &Array) -> Result<[i32; 2]> {
    match tokens.shape() {
        [b, l] => Ok([*b, *l]),
        other => Err(ModelError::Request(format!(
            "tokens must be [batch, length], got shape {other:?}"
        ))),
    }
}
