//! Nemotron-H (placeholder: being written).
use super::Hybrid;
use crate::model::config::ModelConfig;
use crate::model::error::{ModelError, Result};
use crate::model::shard::Stage;
use crate::model::weights::Weights;

pub(crate) fn load(cfg: &ModelConfig, _ws: &mut Weights, _stage: &Stage) -> Result<(Hybrid, bool)> {
    Err(ModelError::Config(format!("{} is not built yet", cfg.model_type)))
}
