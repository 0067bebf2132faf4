//! MLX's distributed layer, owned by the project: a safe [`Group`] over the mlx-c
//! `mlx_distributed_*` calls (mlx-rs 0.33 has no distributed API), with every failure a
//! [`DistError`] instead of an abort, [`depends`] to keep a send in the evaluated graph, plus
//! `kooka dist-check` ([`check`]).
//!
//! Like every MLX object, a [`Group`] stays on the thread that made it (it is `!Send`).

pub mod check;
mod error_capture;
pub(crate) use error_capture::call as mlx_call;
mod graph;
mod group;
mod rank_tmpdir;
mod topology;
mod watchdog;

pub use graph::depends;
pub use group::{Backend, Group};
pub use topology::{LaunchEnv, Topology, TopologyError};
pub use watchdog::Watchdog;

/// Everything that can go wrong in the distributed layer.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("the MLX distributed backend `{0}` is not available in this MLX build{hint}", hint = unavailable_hint(.0))]
    Unavailable(&'static str),
    #[error("invalid distributed environment")]
    Topology(#[from] TopologyError),
    #[error("could not initialise the MLX distributed group ({backend}): {message}")]
    Init {
        backend: &'static str,
        message: String,
    },
    #[error("{op}: rank {peer} is not a peer of rank {rank} in a group of {size}")]
    InvalidPeer {
        op: &'static str,
        rank: usize,
        peer: usize,
        size: usize,
    },
    #[error("{op}: the {backend} backend has no point-to-point operations (MLX 0.32)")]
    NoPointToPoint {
        op: &'static str,
        backend: &'static str,
    },
    #[error("{op} failed: {message}")]
    Op { op: &'static str, message: String },
}

pub type Result<T> = std::result::Result<T, DistError>;

fn unavailable_hint(backend: &str) -> &'static str {
    match backend {
        "nccl" => {
            " (nccl exists only in MLX's CUDA build, e.g. the mlx-cuda wheel's libmlx.so; \
             on Macs and CPU builds use --backend ring)"
        }
        _ => "",
    }
}
