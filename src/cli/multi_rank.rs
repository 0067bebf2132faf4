//! The multi-rank flags shared by `serve`, `generate` and `dist-check` (`--parallel`,
//! `--backend`), and how `generate` joins a group.

use anyhow::Context;
use clap::ValueEnum;

use crate::dist::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParallelArg {
    /// Contiguous layer ranges per rank, activations passed along (best over TCP).
    Pipeline,
    /// Heads and MLP columns sharded on every rank, partial sums all-reduced.
    Tensor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// What the launcher set up: MLX_HOSTFILE means ring, NCCL_HOST_IP / MLX_WORLD_SIZE nccl.
    Auto,
    /// MLX's TCP ring (`mlx.launch --backend ring`): every MLX build, CPU and GPU.
    Ring,
    /// NVIDIA's NCCL between GPUs (`mlx.launch --backend nccl`): MLX's CUDA build only.
    Nccl,
}

impl BackendArg {
    /// `None` for auto.
    pub fn backend(self) -> Option<Backend> {
        match self {
            BackendArg::Auto => None,
            BackendArg::Ring => Some(Backend::Ring),
            BackendArg::Nccl => Some(Backend::Nccl),
        }
    }
}

/// In a launcher's environment: joins the group and says how to shard the model. `None` on
/// a single rank.
pub(super) fn join_shard(
    parallel: ParallelArg,
    split: Option<Vec<usize>>,
    backend: BackendArg,
) -> anyhow::Result<Option<crate::model::Shard>> {
    use crate::dist::{Group, Topology, Watchdog};
    use crate::model::ParallelMode;
    let topology = Topology::from_env(backend.backend())?;
    if topology == Topology::Single {
        return Ok(None);
    }
    topology.apply_process_defaults();
    let mode = match (parallel, split) {
        (ParallelArg::Pipeline, split) => ParallelMode::Pipeline { split },
        (ParallelArg::Tensor, None) => ParallelMode::Tensor,
        (ParallelArg::Tensor, Some(_)) => {
            anyhow::bail!("--pipeline-split only applies to --parallel pipeline")
        }
    };
    // Group setup waits without limit for a rank that never starts.
    let watchdog = Watchdog::arm(
        std::time::Duration::from_secs(120),
        "joining the distributed group",
    );
    let group = Group::init(&topology).context("joining the distributed group")?;
    watchdog.disarm();
    Ok(Some(crate::model::Shard {
        mode,
        group: std::rc::Rc::new(group),
    }))
}
