//! Where this process sits in a multi-rank run, read from the environment that
//! `mlx.launch` (and `kooka launch`) set: `MLX_RANK` and `MLX_HOSTFILE`, a JSON file with
//! one list of `"ip:port"` strings per rank. Neither set means single-rank mode.
//!
//! Checked here, before MLX sees them, so a bad value is a clear error and not an abort.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// No `MLX_RANK` / `MLX_HOSTFILE`: one process, no distributed group needed.
    Single,
    /// A rank of a ring described by a hostfile.
    Ring {
        rank: usize,
        hostfile: PathBuf,
        hosts: Vec<Vec<String>>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{set} is set but {missing} is not; a multi-rank run needs both (mlx.launch and kooka launch set them)")]
    HalfSet {
        set: &'static str,
        missing: &'static str,
    },
    #[error("MLX_RANK={0:?} is not a non-negative integer")]
    BadRank(String),
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
    /// Reads `MLX_RANK` and `MLX_HOSTFILE` from the process environment.
    pub fn from_env() -> Result<Self, TopologyError> {
        Self::from_vars(
            std::env::var("MLX_RANK").ok(),
            std::env::var_os("MLX_HOSTFILE").map(PathBuf::from),
        )
    }

    pub fn from_vars(
        rank: Option<String>,
        hostfile: Option<PathBuf>,
    ) -> Result<Self, TopologyError> {
        match (rank, hostfile) {
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
                let rank: usize = rank
                    .trim()
                    .parse()
                    .map_err(|_| TopologyError::BadRank(rank))?;
                let hosts = read_hostfile(&path)?;
                if rank >= hosts.len() {
                    return Err(TopologyError::RankOutOfRange {
                        rank,
                        size: hosts.len(),
                        path,
                    });
                }
                Ok(Topology::Ring {
                    rank,
                    hostfile: path,
                    hosts,
                })
            }
        }
    }

    pub fn rank(&self) -> usize {
        match self {
            Topology::Single => 0,
            Topology::Ring { rank, .. } => *rank,
        }
    }

    pub fn size(&self) -> usize {
        match self {
            Topology::Single => 1,
            Topology::Ring { hosts, .. } => hosts.len(),
        }
    }
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
}
