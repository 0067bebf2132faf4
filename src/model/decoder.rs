//! The decoder-only model around the blocks: token embeddings, the layers, the final norm
//! and the head (or the tied embeddings), for every architecture (`llama.rs`,
//! `qwen3_moe.rs`, `mixtral.rs` build its layers).
//!
//! Split over ranks ([`super::shard`]) it holds only this rank's part: under pipeline
//! parallelism a contiguous range of layers, the embeddings on the first rank and the norm
//! and head on the last; under tensor parallelism every layer, each sharded.

use mlx_rs::Array;

use super::block::Block;
use super::cache::LayerCache;
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::layers::{Embedding, Linear, RmsNorm};
use super::shard::{Dist, Stage, TensorParallel};
use super::weights::Weights;
use super::LanguageModel;

/// A loaded decoder-only model: the Llama family, and the mixtures of experts built on
/// the same skeleton.
pub struct Llama {
    cfg: ModelConfig,
    /// On the first pipeline rank (and on the last when the head is tied to it).
    embed: Option<Embedding>,
    layers: Vec<Block>,
    /// The final norm: on the last pipeline rank only.
    norm: Option<RmsNorm>,
    /// `None` when the embeddings are tied (or on a pipeline rank without the head).
    lm_head: Option<Linear>,
    /// How this rank talks to the others; `None` on a single rank.
    dist: Option<Dist>,
}

impl Llama {
    /// The model around `layers`: loads the embeddings, final norm and (untied) head that
    /// `stage` needs.
    pub(crate) fn assemble(
        cfg: &ModelConfig,
        ws: &mut Weights,
        quant: &QuantConfig,
        layers: Vec<Block>,
        tied: bool,
        stage: &Stage,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let embed = if stage.needs_embed(tied) {
            Some(Embedding::load(
                ws,
                "model.embed_tokens",
                (cfg.vocab_size, h),
                quant,
                tied && stage.last,
            )?)
        } else {
            None
        };
        let (norm, lm_head) = if !stage.last {
            (None, None)
        } else if tied {
            (Some(RmsNorm::load(ws, "model.norm", h, eps)?), None)
        } else {
            (
                Some(RmsNorm::load(ws, "model.norm", h, eps)?),
                Some(Linear::load(
                    ws,
                    "lm_head",
                    h,
                    cfg.vocab_size,
                    false,
                    quant,
                )?),
            )
        };
        Ok(Llama {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            dist: None,
        })
    }

    /// Tensor parallel: shards every layer in place (embeddings and head stay whole).
    /// See [`Block::fuse_projections`].
    pub(crate) fn fuse_projections(&mut self) -> Result<()> {
        self.layers.iter_mut().try_for_each(Block::fuse_projections)
    }

    pub(crate) fn shard_tensor(&mut self, tp: &TensorParallel) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.shard_tensor(tp, &format!("model.layers.{i}"))?;
        }
        Ok(())
    }

    pub(crate) fn set_dist(&mut self, dist: Dist) {
        self.dist = Some(dist);
    }

    fn embed(&self) -> Result<&Embedding> {
        self.embed
            .as_ref()
            .ok_or_else(|| ModelError::Shard("this rank holds no token embeddings".into()))
    }

    /// Final norm and head: `[B, L, hidden]` -> logits `[B, L, vocab]`.
    fn head(&self, h: &Array) -> Result<Array> {
        let norm = self
            .norm
            .as_ref()
            .ok_or_else(|| ModelError::Shard("this rank holds no output head".into()))?;
        let h = norm.forward(h)?;
        match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.embed()?.as_linear(&h),
        }
    }
}

impl LanguageModel for Llama {
    fn forward(&self, tokens: &Array, caches: &mut [LayerCache]) -> Result<Array> {
        if caches.len() != self.layers.len() {
            return Err(ModelError::Request(format!(
                "{} caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        let (pipeline, tp) = match &self.dist {
            Some(Dist::Pipeline(p)) => (Some(p), None),
            Some(Dist::Tensor(t)) => (None, Some(t)),
            None => (None, None),
        };
        let mut h = match pipeline {
            Some(p) if !p.is_first() => p.receive(tokens)?,
            _ => self.embed()?.forward(tokens)?,
        };
        // Windowed layers (all of one window) get their mask from the shared view too.
        let window = caches.iter().find_map(LayerCache::window);
        let rows = match caches.first().and_then(LayerCache::as_kv) {
            Some(c) => c.rows_view(tokens.shape()[1], window)?,
            None => None,
        };
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            h = layer.forward(&h, cache.kv()?, tp, rows.as_ref())?;
        }
        match pipeline {
            Some(p) => p.finish(h, caches, |h| self.head(h)),
            None => self.head(&h),
        }
    }

    fn make_caches(&self) -> Vec<LayerCache> {
        self.layers.iter().map(|l| l.make_cache().into()).collect()
    }

    fn make_batchable_caches(&self) -> Vec<LayerCache> {
        self.layers
            .iter()
            .map(|l| l.make_batchable_cache().into())
            .collect()
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = self.embed.iter().flat_map(|e| e.table.arrays()).collect();
        v.extend(self.layers.iter().flat_map(Block::arrays));
        v.extend(self.norm.iter().map(|n| &n.weight));
        v.extend(self.lm_head.iter().flat_map(Linear::arrays));
        v
    }
}
