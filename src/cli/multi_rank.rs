//! The multi-rank flags shared by `serve`, `generate` and `dist-check` (`--parallel`,
//! `--backend`), and how `generate` joins a group.

use anyhow::Context;
use clap::ValueEnum;

use crate::cluster::ParallelSpec;
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

/// `--parallel` and `--pipeline-split` (else, for pipeline runs, kooka-server's
/// `MINIMAX_PIPELINE_SPLIT`, with a warning that names the new flag) as one split spec.
pub(super) fn parallel_spec(
    parallel: ParallelArg,
    split: Option<Vec<usize>>,
) -> anyhow::Result<ParallelSpec> {
    match (parallel, split) {
        (ParallelArg::Pipeline, Some(split)) => Ok(ParallelSpec::Pipeline { split: Some(split) }),
        (ParallelArg::Pipeline, None) => {
            let legacy = std::env::var("MINIMAX_PIPELINE_SPLIT").ok();
            let split = parse_legacy_split(legacy.as_deref())?;
            if split.is_some() {
                tracing::warn!(
                    "MINIMAX_PIPELINE_SPLIT is kooka-server's name: use --pipeline-split or KOOKA_PIPELINE_SPLIT"
                );
            }
            Ok(ParallelSpec::Pipeline { split })
        }
        (ParallelArg::Tensor, None) => Ok(ParallelSpec::Tensor),
        (ParallelArg::Tensor, Some(_)) => {
            anyhow::bail!("--pipeline-split only applies to --parallel pipeline")
        }
    }
}

fn parse_legacy_split(value: Option<&str>) -> anyhow::Result<Option<Vec<usize>>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value
        .split(',')
        .map(|n| n.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|_| {
            anyhow::anyhow!(
                "MINIMAX_PIPELINE_SPLIT={value:?} is not a list of layer counts like 25,37"
            )
        })
}

/// In a launcher's environment: joins the group and says how to shard the model. `None` on
/// a single rank.
pub(super) fn join_shard(
    parallel: &ParallelSpec,
    backend: BackendArg,
) -> anyhow::Result<Option<crate::model::Shard>> {
    use crate::dist::{Group, Topology, Watchdog};
    let topology = Topology::from_env(backend.backend())?;
    if topology == Topology::Single {
        return Ok(None);
    }
    topology.apply_process_defaults();
    // Group setup waits without limit for a rank that never starts.
    let watchdog = Watchdog::arm(
        std::time::Duration::from_secs(120),
        "joining the distributed group",
    );
    let group = Group::init(&topology).context("joining the distributed group")?;
    watchdog.disarm();
    Ok(Some(crate::model::Shard {
        mode: parallel.into(),
        group: std::rc::Rc::new(group),
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_legacy_split;

    #[test]
    fn kooka_servers_split_variable_is_read() {
        assert_eq!(
            parse_legacy_split(Some("25, 37")).unwrap(),
            Some(vec![25, 37])
        );
        assert_eq!(parse_legacy_split(Some(" ")).unwrap(), None);
        assert_eq!(parse_legacy_split(None).unwrap(), None);
        let err = parse_legacy_split(Some("25;37")).unwrap_err().to_string();
        assert!(err.contains("MINIMAX_PIPELINE_SPLIT=\"25;37\""), "{err}");
    }
}
