//! Pipeline parallel: the hidden state goes rank to rank with `send`/`recv`, and the last
//! rank's logits reach every rank through one `all_sum`.
//!
//! Everything stays lazy, as in a single-rank forward, which raises one hazard: MLX runs
//! only what the evaluated arrays depend on. Each rank but the last therefore ties its send
//! to the arrays the engine will evaluate: to its last KV cache (prefill evaluates only the
//! caches) and to the zeros it contributes to the logits (decoding evaluates only the
//! logits). Every rank evaluates the same collectives in the same order, so none waits for
//! a peer that never comes (mlx-lm's pipelined models use the same `depends` trick).

use std::rc::Rc;

use mlx_rs::{ops, Array, Dtype};

use super::super::cache::LayerCache;
use super::super::error::{ModelError, Result};
use crate::dist::{depends, Group};

pub(crate) struct Pipeline {
    group: Rc<Group>,
    hidden: i32,
    vocab: i32,
    /// Hidden states and logits cross ranks in this dtype: a receiver must name the dtype
    /// of what it receives without being told.
    dtype: Dtype,
}

impl Pipeline {
    pub(crate) fn new(group: Rc<Group>, hidden: i32, vocab: i32, dtype: Dtype) -> Self {
        Pipeline {
            group,
            hidden,
            vocab,
            dtype,
        }
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
        let shape = batch_shape(tokens)?;
        let h = self.group.recv(
            &[shape[0], shape[1], self.hidden],
            self.dtype,
            self.group.rank() - 1,
        )?;
        Ok(h)
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
            let sent = self.group.send(&self.on_wire(h)?, self.group.rank() + 1)?;
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
