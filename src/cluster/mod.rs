//! The multi-rank runtime of `kooka serve`: rank 0 replicates its sequence of engine
//! operations to every other rank over a TCP control plane; every rank runs the same
//! [`Engine`](crate::engine::Engine) on its shard and so samples the same tokens (the model
//! forward itself exchanges activations over MLX's ring or NCCL backend). Tokens never travel
//! back.
//!
//! - [`protocol`]: the messages ([`Op`]: add / step / cancel / shutdown), the version
//!   preamble, the follower's [`Hello`].
//! - [`codec`]: length-prefixed postcard frames (the only file that knows the codec).
//! - [`net`]: socket options (socket2), the control address, connecting with retries.
//! - [`admission`]: rank 0's accept loop and handshake (who may join the run).
//! - [`leader`]: rank 0's side: accepts and checks the followers, heartbeats, broadcasts,
//!   turns a lost rank into failed requests, a 503 `/health` and a non-zero exit.
//! - [`follower`]: ranks > 0: connect, load the shard, apply operations until `Shutdown`.
//! - [`replicated`]: [`ReplicatedEngine`], the engine wrapper rank 0's model thread uses
//!   (broadcast, then run locally), and [`replicated::apply`], its follower-side mirror.
//! - [`status`]: [`ClusterStatus`], every rank's state for `/health`.
//! - [`shard`]: each rank joins the MLX group and loads its part of the model.
//!
//! The control port is rank 0's first `MLX_HOSTFILE` address with the port one above the
//! highest port in the hostfile (the ring uses exactly the listed ports, and mlx.launch /
//! kooka launch hand them out consecutively from `--starting-port`); under nccl it is
//! `NCCL_HOST_IP` with the port one above `NCCL_PORT`; `--control-port` overrides the port.
//! Rank 0 listens there; the others connect.

mod admission;
pub mod codec;
pub mod follower;
pub mod leader;
pub mod net;
pub mod protocol;
pub mod replicated;
pub mod shard;
pub mod status;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use leader::Leader;
pub use protocol::{Hello, Op, ParallelSpec};
pub use replicated::ReplicatedEngine;
pub use status::{ClusterStatus, RankState, RankStatus, Snapshot};

use crate::dist::{Topology, TopologyError};
use crate::model::ModelError;

/// Heartbeat and failure timings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often each side sends a heartbeat.
    pub heartbeat: Duration,
    /// A peer silent this long (no frame at all) is lost; also the socket write timeout.
    pub peer_timeout: Duration,
    /// Rank 0 keeps answering (errors, 503 `/health`) this long after a loss, then exits.
    pub exit_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            exit_grace: Duration::from_secs(1),
        }
    }
}

/// Everything a rank needs to join the control plane.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The launcher's environment, for joining the MLX group.
    pub topology: Topology,
    pub rank: usize,
    pub parallel: ParallelSpec,
    /// Where the others connect to rank 0.
    pub control: SocketAddr,
    /// Where rank 0 listens: `control`, or every interface when `NCCL_HOST_IP` is a host
    /// name (it may resolve to a loopback address on rank 0's own host).
    pub listen: SocketAddr,
    /// Every rank connected and loaded within this, or startup fails naming the missing.
    pub startup_timeout: Duration,
    pub model_id: String,
    pub model_fingerprint: u64,
    pub timing: Timing,
}

impl ClusterConfig {
    /// `None` in single-rank mode (no launcher environment).
    pub fn from_topology(
        topology: &Topology,
        parallel: ParallelSpec,
        control_port: Option<u16>,
        startup_timeout: Duration,
        model_dir: &Path,
    ) -> Result<Option<Self>, ClusterError> {
        let (control, listen) = match topology {
            Topology::Single => return Ok(None),
            Topology::Ring { hosts, .. } => {
                let control = net::control_addr(hosts, control_port)?;
                (control, control)
            }
            Topology::Nccl { host, port, .. } => {
                let control = net::nccl_control_addr(host, *port, control_port)?;
                let listen = match host.parse::<std::net::IpAddr>() {
                    Ok(_) => control,
                    Err(_) => SocketAddr::from(([0, 0, 0, 0], control.port())),
                };
                (control, listen)
            }
        };
        let size = topology.size();
        if let ParallelSpec::Pipeline { split: Some(split) } = &parallel {
            if split.len() != size {
                return Err(ClusterError::Config(format!(
                    "--pipeline-split lists {} rank(s) but the run has {size}",
                    split.len(),
                )));
            }
            if split.contains(&0) {
                return Err(ClusterError::Config(
                    "--pipeline-split gives a rank no layers; every rank needs at least one".into(),
                ));
            }
        }
        let config_json = model_dir.join("config.json");
        let bytes = std::fs::read(&config_json).map_err(|source| ClusterError::Io {
            what: format!("reading {}", config_json.display()),
            source,
        })?;
        Ok(Some(ClusterConfig {
            topology: topology.clone(),
            rank: topology.rank(),
            parallel,
            control,
            listen,
            startup_timeout,
            model_id: model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| model_dir.display().to_string()),
            model_fingerprint: fnv1a(&bytes),
            timing: Timing::default(),
        }))
    }

    pub fn world_size(&self) -> usize {
        self.topology.size()
    }

    /// What this rank says when it connects.
    pub fn hello(&self) -> Hello {
        Hello {
            rank: self.rank,
            world_size: self.world_size(),
            model_id: self.model_id.clone(),
            model_fingerprint: self.model_fingerprint,
            parallel: self.parallel.clone(),
            pid: std::process::id(),
        }
    }

    /// Why rank 0 refuses `hello`, if it does.
    pub fn check_hello(&self, hello: &Hello) -> Result<(), String> {
        let r = hello.rank;
        if hello.world_size != self.world_size() {
            return Err(format!(
                "rank {r} counts {} rank(s), rank 0 counts {}: do all ranks share one launcher environment (MLX_HOSTFILE, MLX_WORLD_SIZE)?",
                hello.world_size,
                self.world_size()
            ));
        }
        if r == 0 || r >= self.world_size() {
            return Err(format!(
                "rank {r} is not a follower rank of a {}-rank run",
                self.world_size()
            ));
        }
        if hello.model_id != self.model_id || hello.model_fingerprint != self.model_fingerprint {
            return Err(format!(
                "rank {r} serves model {:?} (config.json {:016x}), rank 0 serves {:?} ({:016x}): \
                 start every rank with the same --model",
                hello.model_id, hello.model_fingerprint, self.model_id, self.model_fingerprint
            ));
        }
        if hello.parallel != self.parallel {
            return Err(format!(
                "rank {r} was started with --parallel {}, rank 0 with {}: use the same flags on every rank",
                hello.parallel, self.parallel
            ));
        }
        Ok(())
    }
}

/// 64-bit FNV-1a: a cheap fingerprint, not a security measure.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Everything that can go wrong in the multi-rank runtime.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid distributed environment: {0}")]
    Topology(#[from] TopologyError),
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cluster startup failed: {0}")]
    Startup(String),
    #[error("rank {rank} ({host}) is unavailable: {reason}")]
    RankLost {
        rank: usize,
        host: String,
        reason: String,
    },
    #[error("control plane: {0}")]
    Protocol(String),
    #[error("control plane frame: {0}")]
    Frame(#[from] codec::FrameError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("ranks diverged: {0}")]
    Diverged(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(parallel: ParallelSpec) -> ClusterConfig {
        ClusterConfig {
            topology: Topology::Nccl {
                rank: 0,
                size: 2,
                host: "127.0.0.1".into(),
                port: 5000,
            },
            rank: 0,
            parallel,
            control: "127.0.0.1:5002".parse().unwrap(),
            listen: "127.0.0.1:5002".parse().unwrap(),
            startup_timeout: Duration::from_secs(1),
            model_id: "m".into(),
            model_fingerprint: 7,
            timing: Timing::default(),
        }
    }

    #[test]
    fn rank_zero_refuses_a_mismatched_follower_with_the_reason() {
        let c = config(ParallelSpec::Tensor);
        let mut hello = Hello {
            rank: 1,
            ..c.hello()
        };
        assert_eq!(c.check_hello(&hello), Ok(()));
        type Change = Box<dyn Fn(&mut Hello)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|h| h.world_size = 3), "counts 3 rank(s)"),
            (Box::new(|h| h.rank = 2), "not a follower rank"),
            (Box::new(|h| h.rank = 0), "not a follower rank"),
            (Box::new(|h| h.model_fingerprint = 8), "same --model"),
            (
                Box::new(|h| h.parallel = ParallelSpec::Pipeline { split: None }),
                "--parallel pipeline (even split), rank 0 with tensor",
            ),
        ];
        for (change, expected) in cases {
            let mut h = hello.clone();
            change(&mut h);
            let err = c.check_hello(&h).unwrap_err();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
        hello.pid = 1;
        assert_eq!(c.check_hello(&hello), Ok(()));
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
