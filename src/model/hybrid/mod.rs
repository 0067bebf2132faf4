//! Hybrid models: a stack of layers of different kinds, some with keys and values, some with
//! a recurrent state (Mamba-2 in `nemotron_h.rs`, Gated DeltaNet in `qwen3_next.rs`), some
//! with neither. [`Hybrid`] is the decoder around them: embeddings, the layers, the final
//! norm and head, and the pipeline hand-off; each layer is a [`HybridLayer`] that owns its
//! residual connections and says which cache it keeps.
//!
//! Weights are read under `model.*` names (`model.embed_tokens`, `model.layers.N`,
//! `model.norm`); an architecture with other names renames them first
//! ([`Weights::rename_prefix`]), so pipeline stages and the wire dtype work unchanged.
//! Tensor parallelism is refused: the recurrent layers' projections interleave heads,
//! groups and gates in ways a plain split by output would cut through.

pub mod gated_delta;
pub mod gated_delta_chunked;
pub mod nemotron_h;
pub mod qwen3_next;

use std::cell::RefCell;
use std::thread::LocalKey;

use mlx_rs::error::Exception;
use mlx_rs::Array;

use super::cache::{AttnMask, KvCache, LayerCache, Positions, RowsView};
use super::config::{ModelConfig, QuantConfig};
use super::error::{ModelError, Result};
use super::layers::{Embedding, Linear, RmsNorm};
use super::shard::{Dist, Stage};
use super::weights::Weights;
use super::LanguageModel;

/// A compiled MLX closure over several arrays, kept one per thread (`thread_local!`: a trace
/// belongs to the thread that made it).
pub(crate) type Compiled =
    Box<dyn for<'a> FnMut(&'a [Array]) -> std::result::Result<Vec<Array>, Exception>>;

/// Runs this thread's `f` on `args`; its one output (`name` for the error).
pub(crate) fn run_compiled(
    f: &'static LocalKey<RefCell<Compiled>>,
    args: &[Array],
    name: &str,
) -> Result<Array> {
    f.with(|f| (f.borrow_mut())(args))?
        .pop()
        .ok_or_else(|| ModelError::Mlx(format!("{name} returned nothing")))
}

/// One layer of a hybrid model: `h` in, `h` out (residuals included).
pub(crate) trait HybridLayer {
    fn forward(&self, h: &Array, cache: &mut LayerCache, rows: Option<&RowsView>) -> Result<Array>;
    /// A fresh cache for this layer (one sequence).
    fn make_cache(&self) -> LayerCache;
    fn arrays(&self) -> Vec<&Array>;
}

/// The mask and RoPE positions an attention layer uses for `n` new queries: the batch's
/// shared ones, else its own cache's.
pub(crate) fn attention_inputs(
    cache: &KvCache,
    n: i32,
    rows: Option<&RowsView>,
) -> Result<(AttnMask, Positions)> {
    match rows {
        Some(v) => {
            let mask = v.mask_for(None).clone();
            let positions = match &v.positions {
                Positions::Same(p) => Positions::Same(*p),
                Positions::PerRow(a) => Positions::PerRow(a.clone()),
            };
            Ok((mask, positions))
        }
        None => Ok((cache.make_mask(n)?, cache.positions()?)),
    }
}

/// How many layers of the whole model keep keys and values: Nemotron-H's `*` layers,
/// Qwen3-Next's every `full_attention_interval`-th; `None` for other architectures.
pub(crate) fn kv_layers(cfg: &ModelConfig) -> Option<usize> {
    match cfg.model_type.as_str() {
        "nemotron_h" => {
            let pattern = cfg
                .extra
                .get("hybrid_override_pattern")
                .filter(|v| !v.is_null());
            let count = match pattern {
                Some(serde_json::Value::String(s)) => s.chars().filter(|&c| c == '*').count(),
                Some(serde_json::Value::Array(a)) => {
                    a.iter().filter(|v| v.as_str() == Some("*")).count()
                }
                _ => cfg
                    .extra
                    .get("layers_block_type")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter(|v| matches!(v.as_str(), Some("attention" | "full_attention")))
                            .count()
                    })
                    .unwrap_or(0),
            };
            Some(count)
        }
        "qwen3_next" => {
            let every = cfg
                .extra
                .get("full_attention_interval")
                .and_then(|v| v.as_u64())
                .unwrap_or(4)
                .max(1) as usize;
            Some(cfg.num_hidden_layers.max(0) as usize / every)
        }
        _ => None,
    }
}

/// Renames a checkpoint's tensors to the `model.*` names the loaders read (Nemotron-H's
/// `backbone.embeddings`, `backbone.layers`, `backbone.norm_f`).
pub(crate) fn canonical_names(cfg: &ModelConfig, ws: &mut Weights) {
    if cfg.model_type == "nemotron_h" {
        ws.rename_prefix("backbone.embeddings.", "model.embed_tokens.");
        ws.rename_prefix("backbone.layers.", "model.layers.");
        ws.rename_prefix("backbone.norm_f.", "model.norm.");
    }
}

/// A loaded hybrid model (this rank's part of it under pipeline parallelism).
pub struct Hybrid {
    cfg: ModelConfig,
    embed: Option<Embedding>,
    layers: Vec<Box<dyn HybridLayer>>,
    norm: Option<RmsNorm>,
    lm_head: Option<Linear>,
    dist: Option<Dist>,
    /// What one recurrent-state checkpoint of the whole model costs, in positions of the
    /// whole model's keys and values (the prefix cache's budget unit).
    checkpoint_tokens: usize,
}

impl Hybrid {
    /// The model around `layers`: loads `model.embed_tokens`, `model.norm` and `lm_head`
    /// as `stage` needs them.
    pub(crate) fn assemble(
        cfg: &ModelConfig,
        ws: &mut Weights,
        quant: &QuantConfig,
        layers: Vec<Box<dyn HybridLayer>>,
        tied: bool,
        stage: &Stage,
        checkpoint_tokens: usize,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let embed = match stage.needs_embed(tied) {
            true => Some(Embedding::load(
                ws,
                "model.embed_tokens",
                (cfg.vocab_size, h),
                quant,
                tied && stage.last,
            )?),
            false => None,
        };
        let norm = match stage.last {
            true => Some(RmsNorm::load(ws, "model.norm", h, eps)?),
            false => None,
        };
        let lm_head = match stage.last && !tied {
            true => Some(Linear::load(
                ws,
                "lm_head",
                h,
                cfg.vocab_size,
                false,
                quant,
            )?),
            false => None,
        };
        Ok(Hybrid {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            dist: None,
            checkpoint_tokens,
        })
    }

    pub(crate) fn set_dist(&mut self, dist: Dist) -> Result<()> {
        if let Dist::Tensor(_) = dist {
            return Err(ModelError::Shard(format!(
                "{} (a hybrid recurrent model) cannot be split tensor-parallel yet; use --parallel pipeline",
                self.cfg.model_type
            )));
        }
        self.dist = Some(dist);
        Ok(())
    }

    fn embed(&self) -> Result<&Embedding> {
        self.embed
            .as_ref()
            .ok_or_else(|| ModelError::Shard("this rank holds no token embeddings".into()))
    }

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

impl LanguageModel for Hybrid {
    fn forward(&self, tokens: &Array, caches: &mut [LayerCache]) -> Result<Array> {
        if caches.len() != self.layers.len() {
            return Err(ModelError::Request(format!(
                "{} caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        let pipeline = match &self.dist {
            Some(Dist::Pipeline(p)) => Some(p),
            _ => None,
        };
        let mut h = match pipeline {
            Some(p) if !p.is_first() => p.receive(tokens)?,
            _ => self.embed()?.forward(tokens)?,
        };
        // Batched rows share the attention layers' mask and positions.
        let rows = match caches.iter().find_map(LayerCache::as_kv) {
            Some(c) => c.rows_view(tokens.shape()[1], None)?,
            None => None,
        };
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            h = layer.forward(&h, cache, rows.as_ref())?;
        }
        match pipeline {
            Some(p) => p.finish(h, caches, |h| self.head(h)),
            None => self.head(&h),
        }
    }

    fn make_caches(&self) -> Vec<LayerCache> {
        self.layers.iter().map(|l| l.make_cache()).collect()
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut v: Vec<&Array> = self.embed.iter().flat_map(|e| e.table.arrays()).collect();
        v.extend(self.layers.iter().flat_map(|l| l.arrays()));
        v.extend(self.norm.iter().map(|n| &n.weight));
        v.extend(self.lm_head.iter().flat_map(Linear::arrays));
        v
    }

    fn checkpoint_tokens(&self) -> usize {
        self.checkpoint_tokens
    }
}
