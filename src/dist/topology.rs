//! Where this process sits in a multi-rank run, read from the environment that
//! `mlx.launch` (and `kooka launch`) set. Two shapes, one per backend:
//!
//! - **ring**: `MLX_RANK` and `MLX_HOSTFILE`, a JSON file with one list of `"ip:port"`
//!   strings per rank (`--backend ring`);
//! - **nccl**: `MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP` and `NCCL_PORT` (rank 0's address,
//!   where NCCL's unique id is handed out; `--backend nccl`).
//!
//! Nothing set means single-rank mode. Checked here, before MLX sees them, so a bad value is a
//! clear error and not an abort.

use std::path::{Path, PathBuf};

use super::Backend;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// Nothing set: one process, no distributed group needed.
    Single,
    /// A rank of a ring described by a hostfile.
    Ring {
        rank: usize,
        hostfile: PathBuf,
        hosts: Vec<Vec<String>>,
    },
    /// A rank of an NCCL group: `size` ranks, rank 0 reachable at `host:port`.
    Nccl {
        rank: usize,
        size: usize,
        host: String,
        port: u16,
    },
}

/// The variables the launchers set, as read from the environment (`None`: unset or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: Option<String>,
    pub hostfile: Option<PathBuf>,
    pub world_size: Option<String>,
    pub nccl_host: Option<String>,
    pub nccl_port: Option<String>,
}

impl LaunchEnv {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        LaunchEnv {
            rank: var("MLX_RANK"),
            hostfile: std::env::var_os("MLX_HOSTFILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            world_size: var("MLX_WORLD_SIZE"),
            nccl_host: var("NCCL_HOST_IP"),
            nccl_port: var("NCCL_PORT"),
        }
    }

    /// The backend these variables describe: a hostfile means ring, `NCCL_HOST_IP` or
    /// `MLX_WORLD_SIZE` nccl.
    fn implied_backend(&self) -> Option<Backend> {
        if self.hostfile.is_some() {
            Some(Backend::Ring)
        } else if self.nccl_host.is_some() || self.world_size.is_some() {
            Some(Backend::Nccl)
        } else {
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{set} is set but {missing} is not; a multi-rank run needs both (mlx.launch and kooka launch set them)")]
    HalfSet {
        set: &'static str,
        missing: &'static str,
    },
    #[error("MLX_RANK is set but nothing says which group to join: a ring run sets MLX_HOSTFILE, an nccl run NCCL_HOST_IP, NCCL_PORT and MLX_WORLD_SIZE (mlx.launch and kooka launch set them)")]
    RankAlone,
    #[error("--backend nccl needs {missing} (kooka launch --backend nccl and mlx.launch --backend nccl set NCCL_HOST_IP, NCCL_PORT, MLX_WORLD_SIZE and MLX_RANK)")]
    NcclIncomplete { missing: String },
    #[error(
        "--backend {wanted} was asked for, but the environment describes a {found} run ({why})"
    )]
    BackendMismatch {
        wanted: &'static str,
        found: &'static str,
        why: &'static str,
    },
    #[error("MLX_RANK={0:?} is not a non-negative integer")]
    BadRank(String),
    #[error("MLX_WORLD_SIZE={0:?} is not a positive integer")]
    BadWorldSize(String),
    #[error("NCCL_PORT={0:?} is not a port number (1-65535)")]
    BadPort(String),
    #[error("MLX_RANK={rank} but MLX_WORLD_SIZE={size}: ranks count from 0 to size - 1")]
    RankBeyondWorld { rank: usize, size: usize },
    #[error("cannot read MLX_HOSTFILE {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("MLX_HOSTFILE {path} is not a JSON list of lists of \"ip:port\" strings: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("MLX_RANK={rank} but MLX_HOSTFILE {path} lists {size} rank(s)")]
    RankOutOfRange {
        rank: usize,
        size: usize,
        path: PathBuf,
    },
}

impl Topology {
    /// Reads the launchers' variables from the process environment. `backend`: what
    /// `--backend` asked for (`None`: whatever the environment describes).
    pub fn from_env(backend: Option<Backend>) -> Result<Self, TopologyError> {
        Self::from_launch_env(&LaunchEnv::from_process(), backend)
    }

    /// A ring topology from `MLX_RANK` / `MLX_HOSTFILE` values.
    #[cfg(test)]
    fn from_vars(rank: Option<String>, hostfile: Option<PathBuf>) -> Result<Self, TopologyError> {
        let env = LaunchEnv {
            rank,
            hostfile,
            ..LaunchEnv::default()
        };
        Self::from_launch_env(&env, Some(Backend::Ring))
    }

    pub fn from_launch_env(
        env: &LaunchEnv,
        backend: Option<Backend>,
    ) -> Result<Self, TopologyError> {
        let implied = env.implied_backend();
        match (backend, implied) {
            (None | Some(Backend::Ring), Some(Backend::Ring)) => ring(env),
            (None | Some(Backend::Nccl), Some(Backend::Nccl)) => nccl(env),
            (Some(Backend::Ring), Some(Backend::Nccl)) => Err(TopologyError::BackendMismatch {
                wanted: "ring",
                found: "nccl",
                why: "NCCL_HOST_IP or MLX_WORLD_SIZE is set and MLX_HOSTFILE is not",
            }),
            (Some(Backend::Nccl), Some(Backend::Ring)) => Err(TopologyError::BackendMismatch {
                wanted: "nccl",
                found: "ring",
                why: "MLX_HOSTFILE is set",
            }),
            (Some(Backend::Ring), None) => ring(env),
            (Some(Backend::Nccl), None) => nccl(env),
            (None, None) if env.rank.is_some() => Err(TopologyError::RankAlone),
            (None, None) => Ok(Topology::Single),
        }
    }

    pub fn rank(&self) -> usize {
        match self {
            Topology::Single => 0,
            Topology::Ring { rank, .. } | Topology::Nccl { rank, .. } => *rank,
        }
    }

    pub fn size(&self) -> usize {
        match self {
            Topology::Single => 1,
            Topology::Ring { hosts, .. } => hosts.len(),
            Topology::Nccl { size, .. } => *size,
        }
    }

    /// The backend that joins this topology's group (a single rank makes a group of one
    /// with the ring backend, which every MLX build has).
    pub fn backend(&self) -> Backend {
        match self {
            Topology::Single | Topology::Ring { .. } => Backend::Ring,
            Topology::Nccl { .. } => Backend::Nccl,
        }
    }

    /// Each rank's host, as far as the environment says (an nccl run names only rank 0's).
    pub fn rank_hosts(&self) -> Vec<String> {
        match self {
            Topology::Single => vec![String::new()],
            Topology::Ring { hosts, .. } => hosts
                .iter()
                .map(|addrs| {
                    addrs
                        .first()
                        .and_then(|a| a.rsplit_once(':'))
                        .map(|(ip, _)| ip.to_string())
                        .unwrap_or_default()
                })
                .collect(),
            Topology::Nccl { size, host, .. } => (0..*size)
                .map(|r| if r == 0 { host.clone() } else { String::new() })
                .collect(),
        }
    }
}

/// NCCL's NVLink multicast (NVLS) stays off: kooka's all-reduces are small, and on shared
/// hosts a program that uses multicast can take the host's GPUs out of service (the same
/// setting `kooka launch` gives every rank).
pub use kooka_launcher::env::NCCL_NVLS;

impl Topology {
    /// Sets what the backend must find in the process environment before it starts (under
    /// nccl: [`NCCL_NVLS`], whatever was set), and a rank after 0 its own `TMPDIR` (see
    /// `rank_tmpdir.rs`). Call on the main thread, before other threads.
    pub fn apply_process_defaults(&self) {
        super::rank_tmpdir::separate(self.rank());
        if !matches!(self, Topology::Nccl { .. }) {
            return;
        }
        let (name, value) = NCCL_NVLS;
        match std::env::var(name) {
            Ok(v) if v == value => {}
            Ok(v) => {
                tracing::warn!(
                    "{name}={v} overridden: kooka keeps NVLink multicast off ({name}={value})"
                );
                std::env::set_var(name, value);
            }
            Err(_) => std::env::set_var(name, value),
        }
    }
}

fn parse_rank(rank: &str) -> Result<usize, TopologyError> {
    rank.trim()
        .parse()
        .map_err(|_| TopologyError::BadRank(rank.to_string()))
}

fn ring(env: &LaunchEnv) -> Result<Topology, TopologyError> {
    match (&env.rank, &env.hostfile) {
        (None, None) => Ok(Topology::Single),
        (Some(_), None) => Err(TopologyError::HalfSet {
            set: "MLX_RANK",
            missing: "MLX_HOSTFILE",
        }),
        (None, Some(_)) => Err(TopologyError::HalfSet {
            set: "MLX_HOSTFILE",
            missing: "MLX_RANK",
        }),
        (Some(rank), Some(path)) => {
            let rank = parse_rank(rank)?;
            let hosts = read_hostfile(path)?;
            // `mlx.launch -n 1` writes an empty hostfile: a world of one.
            if hosts.is_empty() && rank == 0 {
                return Ok(Topology::Single);
            }
            if rank >= hosts.len() {
                return Err(TopologyError::RankOutOfRange {
                    rank,
                    size: hosts.len().max(1),
                    path: path.clone(),
                });
            }
            Ok(Topology::Ring {
                rank,
                hostfile: path.clone(),
                hosts,
            })
        }
    }
}

fn nccl(env: &LaunchEnv) -> Result<Topology, TopologyError> {
    let fields = [
        ("MLX_RANK", &env.rank),
        ("MLX_WORLD_SIZE", &env.world_size),
        ("NCCL_HOST_IP", &env.nccl_host),
        ("NCCL_PORT", &env.nccl_port),
    ];
    let missing: Vec<&str> = fields
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.len() == fields.len() {
        return Ok(Topology::Single);
    }
    if !missing.is_empty() {
        return Err(TopologyError::NcclIncomplete {
            missing: missing.join(", "),
        });
    }
    let (rank, size, host, port) = (
        env.rank.as_deref().unwrap_or_default(),
        env.world_size.as_deref().unwrap_or_default(),
        env.nccl_host.clone().unwrap_or_default(),
        env.nccl_port.as_deref().unwrap_or_default(),
    );
    let rank = parse_rank(rank)?;
    let size: usize = match size.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(TopologyError::BadWorldSize(size.to_string())),
    };
    let port: u16 = match port.trim().parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(TopologyError::BadPort(port.to_string())),
    };
    if rank >= size {
        return Err(TopologyError::RankBeyondWorld { rank, size });
    }
    if size == 1 {
        return Ok(Topology::Single);
    }
    Ok(Topology::Nccl {
        rank,
        size,
        host,
        port,
    })
}

fn read_hostfile(path: &Path) -> Result<Vec<Vec<String>>, TopologyError> {
    let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let malformed = |message: String| TopologyError::Malformed {
        path: path.to_owned(),
        message,
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let hosts: Vec<Vec<String>> =
        serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    if hosts.is_empty() {
        return Err(malformed("it lists no ranks".into()));
    }
    for (rank, addresses) in hosts.iter().enumerate() {
        if addresses.is_empty() {
            return Err(malformed(format!("rank {rank} has no address")));
        }
        for address in addresses {
            let port_ok = address
                .rsplit_once(':')
                .is_some_and(|(ip, port)| !ip.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(malformed(format!(
                    "rank {rank}: {address:?} is not \"ip:port\""
                )));
            }
        }
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostfile(content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kooka-topology-{}-{}",
            std::process::id(),
            content.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.json",
            content
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
        ));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn neither_variable_means_single_rank() {
        assert_eq!(Topology::from_vars(None, None).unwrap(), Topology::Single);
    }

    #[test]
    fn reads_a_ring_hostfile() {
        let path = hostfile(r#"[["127.0.0.1:5000"],["127.0.0.1:5001"]]"#);
        let t = Topology::from_vars(Some("1".into()), Some(path)).unwrap();
        assert_eq!((t.rank(), t.size()), (1, 2));
    }

    #[test]
    fn an_empty_hostfile_is_a_world_of_one() {
        // What `mlx.launch -n 1` writes (`echo '' > file`).
        let path = hostfile("\n");
        let t = Topology::from_vars(Some("0".into()), Some(path.clone())).unwrap();
        assert_eq!(t, Topology::Single);
        let err = Topology::from_vars(Some("1".into()), Some(path)).unwrap_err();
        assert!(err.to_string().contains("lists 1 rank"), "{err}");
    }

    #[test]
    fn rejects_bad_values_with_the_reason() {
        let ok = hostfile(r#"[["127.0.0.1:5000"]]"#);
        let cases = [
            (
                Some("x".to_string()),
                Some(ok.clone()),
                "not a non-negative integer",
            ),
            (Some("0".to_string()), None, "MLX_HOSTFILE is not"),
            (None, Some(ok.clone()), "MLX_RANK is not"),
            (Some("3".to_string()), Some(ok.clone()), "lists 1 rank"),
            (
                Some("0".to_string()),
                Some(hostfile("{}")),
                "not a JSON list",
            ),
            (
                Some("0".to_string()),
                Some(hostfile(r#"[["nohostport"]]"#)),
                "is not \"ip:port\"",
            ),
            (
                Some("0".to_string()),
                Some(PathBuf::from("/nonexistent/h.json")),
                "cannot read",
            ),
        ];
        for (rank, path, expected) in cases {
            let err = Topology::from_vars(rank, path).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    fn nccl_env(rank: &str, size: &str, host: &str, port: &str) -> LaunchEnv {
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        LaunchEnv {
            rank: some(rank),
            world_size: some(size),
            nccl_host: some(host),
            nccl_port: some(port),
            hostfile: None,
        }
    }

    #[test]
    fn reads_an_nccl_environment() {
        let t = Topology::from_launch_env(&nccl_env("1", "2", "10.0.0.1", "12345"), None).unwrap();
        assert_eq!(
            t,
            Topology::Nccl {
                rank: 1,
                size: 2,
                host: "10.0.0.1".into(),
                port: 12345
            }
        );
        assert_eq!((t.rank(), t.size(), t.backend()), (1, 2, Backend::Nccl));
        assert_eq!(t.rank_hosts(), vec!["10.0.0.1".to_string(), String::new()]);
        // --backend nccl with nothing set, or a world of one, is a single rank.
        assert_eq!(
            Topology::from_launch_env(&LaunchEnv::default(), Some(Backend::Nccl)).unwrap(),
            Topology::Single
        );
        assert_eq!(
            Topology::from_launch_env(&nccl_env("0", "1", "h", "1"), None).unwrap(),
            Topology::Single
        );
    }

    #[test]
    fn rejects_bad_nccl_environments_with_the_reason() {
        let ring_file = hostfile(r#"[["127.0.0.1:5000"],["127.0.0.1:5001"]]"#);
        let with_hostfile = LaunchEnv {
            rank: Some("0".into()),
            hostfile: Some(ring_file),
            ..LaunchEnv::default()
        };
        let cases = [
            (nccl_env("0", "2", "", "12345"), None, "needs NCCL_HOST_IP"),
            (
                nccl_env("", "2", "h", ""),
                None,
                "needs MLX_RANK, NCCL_PORT",
            ),
            (
                nccl_env("0", "two", "h", "1"),
                None,
                "MLX_WORLD_SIZE=\"two\"",
            ),
            (nccl_env("0", "0", "h", "1"), None, "not a positive integer"),
            (
                nccl_env("0", "2", "h", "70000"),
                None,
                "NCCL_PORT=\"70000\"",
            ),
            (nccl_env("2", "2", "h", "1"), None, "ranks count from 0"),
            (
                nccl_env("0", "2", "h", "1"),
                Some(Backend::Ring),
                "--backend ring was asked for, but the environment describes a nccl run",
            ),
            (
                with_hostfile,
                Some(Backend::Nccl),
                "describes a ring run (MLX_HOSTFILE is set)",
            ),
            (
                LaunchEnv {
                    rank: Some("0".into()),
                    ..LaunchEnv::default()
                },
                None,
                "nothing says which group to join",
            ),
        ];
        for (env, backend, expected) in cases {
            let err = Topology::from_launch_env(&env, backend)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
