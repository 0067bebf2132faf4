//! What each rank loads, and how `/health` describes it: this rank joins the MLX group its
//! launcher described (ring or nccl; on the calling thread, which must be the rank's MLX thread: the group
//! is `!Send`) and loads its part of the model with
//! [`load_model_sharded`](crate::model::load_model_sharded). Every rank then ends each
//! forward with the same logits, which is what lets the control plane replicate operations
//! and never tokens.

use std::path::Path;
use std::rc::Rc;

use super::protocol::ParallelSpec;
use super::ClusterConfig;
use crate::dist::{Group, Watchdog};
use crate::model::{
    load_model_sharded, ComputeDtype, LanguageModel, ModelConfig, ModelError, ParallelMode, Shard,
};

impl From<&ParallelSpec> for ParallelMode {
    fn from(spec: &ParallelSpec) -> Self {
        match spec {
            ParallelSpec::Pipeline { split } => ParallelMode::Pipeline {
                split: split.clone(),
            },
            ParallelSpec::Tensor => ParallelMode::Tensor,
        }
    }
}

/// Joins the group and loads this rank's shard; returns it, a one-line description and the
/// group (the engine's disk tier agrees over it).
pub fn load(
    dir: &Path,
    dtype: ComputeDtype,
    config: &ClusterConfig,
) -> Result<(Box<dyn LanguageModel>, String, Rc<Group>), ModelError> {
    let cfg = ModelConfig::load(dir)?;
    // Ring setup blocks without limit for a rank that never joins; the control plane has
    // already seen every rank, so this is the rare rank that died in between.
    let what = format!("joining the MLX {} group", config.topology.backend().name());
    let watchdog = Watchdog::arm(config.startup_timeout, &what);
    let group =
        Group::init(&config.topology).map_err(|e| ModelError::Shard(format!("{what}: {e}")))?;
    watchdog.disarm();
    let group = Rc::new(group);
    let shard = Shard {
        mode: (&config.parallel).into(),
        group: group.clone(),
    };
    let description = shard.describe(&cfg);
    let model = load_model_sharded(dir, dtype, Some(shard))?;
    Ok((model, description, group))
}
