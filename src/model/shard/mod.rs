//! One model split over the ranks of an MLX distributed group: which part each rank
//! loads, and how the parts talk. The contract with the runtime: **every rank ends every
//! forward with the same full logits `[B, L, vocab]`**, so every rank samples the same token
//! with the same sampler and seed and the engines stay in lockstep without sending tokens.
//!
//! - **Pipeline** ([`pipeline`]): rank r holds a contiguous range of layers (even split, or
//!   `split` layers per rank). Rank 0 embeds; each rank receives the hidden state from rank
//!   r-1, runs its layers and sends to rank r+1; the last rank applies the final norm and
//!   the head, and its logits reach every rank through an `all_sum` to which the others add
//!   zeros. So only the first rank reads the embeddings and only the last the norm and head
//!   (both, for tied embeddings), and the results are bit-identical to one rank. Broadcasting
//!   logits costs `vocab` values per position where the hidden state would cost `hidden`, but
//!   the engine evaluates logits only for the last prompt position and during decoding,
//!   and it spares every other rank the head's weights.
//! - **Tensor** ([`tensor`]): every rank holds every layer with `1/size` of the attention
//!   heads and of the MLP (and every expert's) hidden units; partial outputs are summed
//!   with `all_sum` before each residual add. Embeddings, norms, routers and the head are
//!   replicated, so each rank computes the same logits from the same summed hidden state.
//!   Summation order differs from one rank, so logits agree within float tolerance.
//!
//! Pipeline ranks read only their own tensors from disk (MLX loads safetensors lazily, and
//! the other layers' tensors are never evaluated). Tensor ranks read each sharded tensor
//! whole, keep a copy of their slice and free the rest.

mod pipeline;
mod tensor;

use std::ops::Range;
use std::rc::Rc;

use mlx_rs::Dtype;

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::weights::Weights;
use crate::dist::Group;

pub(crate) use pipeline::Pipeline;
pub(crate) use tensor::{Split, TensorParallel};

/// How a model is split over the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParallelMode {
    /// Contiguous layer ranges; `split`: layers per rank in rank order (default: even).
    Pipeline { split: Option<Vec<usize>> },
    /// Heads and hidden units split on every layer.
    Tensor,
}

/// This rank's place in a split model. The group lives on the model thread (`!Send`).
pub struct Shard {
    pub mode: ParallelMode,
    pub group: Rc<Group>,
}

/// The part of the layer stack one rank builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Global indices of this rank's layers.
    pub layers: Range<usize>,
    /// Holds the first layer (embeds the tokens).
    pub first: bool,
    /// Holds the last layer (applies the final norm and the head).
    pub last: bool,
}

impl Stage {
    pub fn whole(layers: usize) -> Self {
        Stage {
            layers: 0..layers,
            first: true,
            last: true,
        }
    }

    /// Token embeddings are read by the first rank, and by the last when they are the head.
    pub fn needs_embed(&self, tied: bool) -> bool {
        self.first || (tied && self.last)
    }

    /// Checkpoint tensors this rank leaves unread.
    pub fn skips(&self, name: &str, tied: bool) -> bool {
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let index = rest.split('.').next().and_then(|i| i.parse::<usize>().ok());
            return index.is_some_and(|i| !self.layers.contains(&i));
        }
        if name.starts_with("model.embed_tokens.") {
            return !self.needs_embed(tied);
        }
        if name.starts_with("model.norm.") || name.starts_with("lm_head.") {
            return !self.last;
        }
        false
    }
}

/// How a loaded model talks to the other ranks.
pub(crate) enum Dist {
    Pipeline(Pipeline),
    Tensor(TensorParallel),
}

/// Layers per rank: `split` if given (one entry per rank, each at least 1, summing to
/// `layers`), else an even split with the remainder on the first ranks (the last rank
/// also runs the head).
pub fn pipeline_layers(
    layers: usize,
    ranks: usize,
    split: Option<&[usize]>,
) -> Result<Vec<Range<usize>>> {
    let counts: Vec<usize> = match split {
        Some(split) => {
            let shown = split
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",");
            if split.len() != ranks {
                return Err(ModelError::Shard(format!(
                    "--pipeline-split {shown} has {} entries but the run has {ranks} ranks (one entry per rank)",
                    split.len()
                )));
            }
            let total: usize = split.iter().sum();
            if total != layers {
                return Err(ModelError::Shard(format!(
                    "--pipeline-split {shown} sums to {total} layers but the model has {layers}"
                )));
            }
            if split.contains(&0) {
                return Err(ModelError::Shard(format!(
                    "--pipeline-split {shown} gives a rank no layer; every rank needs at least one"
                )));
            }
            split.to_vec()
        }
        None => {
            if layers < ranks {
                return Err(ModelError::Shard(format!(
                    "{layers} layers cannot be split over {ranks} pipeline ranks (at least one each)"
                )));
            }
            (0..ranks)
                .map(|r| layers / ranks + usize::from(r < layers % ranks))
                .collect()
        }
    };
    let mut start = 0;
    Ok(counts
        .into_iter()
        .map(|n| {
            start += n;
            start - n..start
        })
        .collect())
}

/// What `shard` makes rank `group.rank()` build, checked against the config before any
/// weight is read.
pub(crate) fn stage_for(cfg: &ModelConfig, shard: Option<&Shard>) -> Result<Stage> {
    let layers = cfg.num_hidden_layers.max(0) as usize;
    let Some(shard) = shard else {
        return Ok(Stage::whole(layers));
    };
    let (rank, size) = (shard.group.rank(), shard.group.size());
    match &shard.mode {
        ParallelMode::Pipeline { split } => {
            let ranges = pipeline_layers(layers, size, split.as_deref())?;
            Ok(Stage {
                layers: ranges[rank].clone(),
                first: rank == 0,
                last: rank + 1 == size,
            })
        }
        ParallelMode::Tensor => {
            let (heads, kv) = (cfg.num_attention_heads, cfg.kv_heads());
            let n = size as i32;
            if heads % n != 0 || kv % n != 0 {
                return Err(ModelError::Shard(format!(
                    "tensor parallel over {size} ranks splits the attention heads evenly, but \
                     num_attention_heads = {heads} and num_key_value_heads = {kv} are not both \
                     multiples of {size}; use --parallel pipeline or another rank count"
                )));
            }
            Ok(Stage::whole(layers))
        }
    }
}

/// Wires `shard` into a loaded `model`: shards its layers (tensor parallel) and gives it
/// its communication; `wire`: see [`wire_dtype`].
pub(crate) fn apply(
    model: &mut super::decoder::Llama,
    cfg: &ModelConfig,
    wire: Dtype,
    shard: Shard,
) -> Result<()> {
    match shard.mode {
        ParallelMode::Pipeline { .. } => {
            model.set_dist(Dist::Pipeline(Pipeline::new(
                shard.group,
                cfg.hidden_size,
                cfg.vocab_size,
                wire,
            )?));
        }
        ParallelMode::Tensor => {
            let tp = TensorParallel::new(shard.group);
            model.shard_tensor(&tp)?;
            // The whole tensors read for slicing sit in MLX's buffer cache otherwise.
            mlx_rs::memory::clear_cache()?;
            model.set_dist(Dist::Tensor(tp));
        }
    }
    Ok(())
}

/// The dtype of hidden states (and logits) between pipeline ranks, which every rank must
/// know without asking: the embeddings' output dtype (the table's, or its quantization
/// scales', after the weight policy's cast). Reads only tensor metadata, so call it before
/// the builder takes the embeddings.
pub(crate) fn wire_dtype(ws: &Weights) -> Result<Dtype> {
    let name = if ws.contains("model.embed_tokens.scales") {
        "model.embed_tokens.scales"
    } else {
        "model.embed_tokens.weight"
    };
    let stored = ws
        .dtype_of(name)
        .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
    Ok(ws.policy.dtype.unwrap_or(stored))
}

impl Shard {
    /// One line for logs and `/health`: what this rank holds.
    pub fn describe(&self, cfg: &ModelConfig) -> String {
        let (rank, size) = (self.group.rank(), self.group.size());
        match &self.mode {
            ParallelMode::Pipeline { split } => {
                let layers = cfg.num_hidden_layers.max(0) as usize;
                match pipeline_layers(layers, size, split.as_deref()) {
                    Ok(r) => format!(
                        "pipeline rank {rank}/{size}: layers {}..{} of {layers}",
                        r[rank].start, r[rank].end
                    ),
                    Err(e) => e.to_string(),
                }
            }
            ParallelMode::Tensor => format!("tensor rank {rank}/{size}: 1/{size} of every layer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_puts_the_remainder_first() {
        assert_eq!(pipeline_layers(30, 2, None).unwrap(), vec![0..15, 15..30]);
        assert_eq!(pipeline_layers(7, 3, None).unwrap(), vec![0..3, 3..5, 5..7]);
    }

    #[test]
    fn explicit_split_is_checked_and_named() {
        assert_eq!(
            pipeline_layers(62, 2, Some(&[25, 37])).unwrap(),
            vec![0..25, 25..62]
        );
        let err = |s: &[usize]| pipeline_layers(62, 2, Some(s)).unwrap_err().to_string();
        assert!(err(&[25, 30]).contains("25,30 sums to 55 layers but the model has 62"));
        assert!(err(&[62]).contains("has 1 entries but the run has 2 ranks"));
        assert!(err(&[0, 62]).contains("every rank needs at least one"));
        assert!(pipeline_layers(1, 2, None).is_err());
    }

    #[test]
    fn stage_skips_other_ranks_tensors() {
        let s = Stage {
            layers: 2..4,
            first: false,
            last: true,
        };
        assert!(s.skips("model.layers.1.mlp.up_proj.weight", false));
        assert!(!s.skips("model.layers.3.mlp.up_proj.weight", false));
        assert!(s.skips("model.layers.12.self_attn.q_proj.weight", false));
        assert!(s.skips("model.embed_tokens.weight", false));
        assert!(!s.skips("model.embed_tokens.weight", true));
        assert!(!s.skips("model.norm.weight", false));
        assert!(!s.skips("lm_head.scales", false));
        let first = Stage {
            layers: 0..2,
            first: true,
            last: false,
        };
        assert!(first.skips("lm_head.weight", false));
        assert!(first.skips("model.norm.weight", true));
        assert!(!first.skips("model.embed_tokens.biases", true));
    }
}
