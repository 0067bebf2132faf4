//! The runtime's error type: everything that can go wrong loading or running a model.

use std::path::PathBuf;

/// Errors of the model runtime (loading, forward passes, sampling).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing file {0}")]
    MissingFile(PathBuf),
    #[error("{0}")]
    ModelNotFound(String),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unsupported model_type {found:?}; supported: {}", supported.join(", "))]
    UnsupportedModelType {
        found: String,
        supported: Vec<&'static str>,
    },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<i32>,
        found: Vec<i32>,
    },
    #[error("tensor {name}: {message}")]
    BadTensor { name: String, message: String },
    #[error("unused tensors in the checkpoint: {0}")]
    UnusedTensors(String),
    #[error("MLX: {0}")]
    Mlx(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    Request(String),
    /// The model cannot be split the way the run asks (layer split, head counts, packing).
    #[error("cannot shard the model: {0}")]
    Shard(String),
    /// A collective (all_sum, send, recv) could not be built.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
}

impl From<mlx_rs::error::Exception> for ModelError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        ModelError::Mlx(e.to_string())
    }
}

impl From<mlx_rs::error::ConversionError> for ModelError {
    fn from(e: mlx_rs::error::ConversionError) -> Self {
        ModelError::Mlx(e.to_string())
    }
}

impl From<mlx_rs::error::IoError> for ModelError {
    fn from(e: mlx_rs::error::IoError) -> Self {
        ModelError::Mlx(e.to_string())
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
