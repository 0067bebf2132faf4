//! Per-rank plans: the ring addresses (`MLX_HOSTFILE` content) and each rank's environment,
//! exactly as mlx.launch 0.32 sets them up.
//!
//! `--backend ring`:
//! - ports count up from `--starting-port` over ranks, then IPs, then connections;
//! - the `MLX_HOSTFILE` file holds Python's `json.dumps` of `[["ip:port", ...], ...]`
//!   (one list per rank) followed by a newline (mlx.launch writes it with `echo`);
//! - environment: the hostfile's, then `--env`, then `MLX_RING_VERBOSE=1` with
//!   `--verbose`, then `MLX_HOSTFILE` and `MLX_RANK`.
//!
//! `--backend nccl`: the hostfile's environment, then `--env`, then `NCCL_DEBUG=INFO` with
//! `--verbose`, then `NCCL_HOST_IP` (rank 0's first IP), `NCCL_PORT` (`--nccl-port`),
//! `MLX_WORLD_SIZE`, `CUDA_VISIBLE_DEVICES` (one GPU per rank) and `MLX_RANK`.
//!
//! Differences on purpose:
//! - a single rank gets no rendezvous variables (mlx.launch writes an empty ring hostfile,
//!   which MLX then fails to parse);
//! - every rank gets `NCCL_NVLS_ENABLE=0`, whatever the hostfile or `--env` say: NVLink
//!   multicast can take a shared host's GPUs out of service;
//! - nccl's `CUDA_VISIBLE_DEVICES` counts the ranks on each host (mlx.launch uses the rank
//!   modulo `-n`, so a hostfile that lists one host twice puts both ranks on GPU 0), and picks
//!   from a `CUDA_VISIBLE_DEVICES` list given in the hostfile or with `--env`.

use crate::hostfile::{Hostfile, HostfileError};

/// What one rank runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankPlan {
    pub rank: usize,
    /// The host's `ssh` field; `127.0.0.1` = local.
    pub host: String,
    pub local: bool,
    /// Variables to set, in order (later entries of the same name already removed), not
    /// counting a ring's `MLX_HOSTFILE` / `MLX_RANK`.
    pub env: Vec<(String, String)>,
    /// Ring: `MLX_HOSTFILE`'s content when the run has more than one rank.
    pub hostfile: Option<String>,
}

/// The backend a run is planned for, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ring {
        starting_port: u16,
        connections_per_ip: usize,
    },
    Nccl {
        port: u16,
    },
}

/// Every rank gets this (see the module docs).
pub const NCCL_NVLS: (&str, &str) = ("NCCL_NVLS_ENABLE", "0");

impl RankPlan {
    /// Ring: `MLX_RANK`'s value, set with `MLX_HOSTFILE` (nccl ranks have it in `env`).
    pub fn mlx_rank(&self) -> Option<String> {
        self.hostfile.as_ref().map(|_| self.rank.to_string())
    }
}

/// The ring's address lists, one per rank: `connections_per_ip` consecutive ports per IP.
pub fn ring_addresses(
    hostfile: &Hostfile,
    starting_port: u16,
    connections_per_ip: usize,
) -> Result<Vec<Vec<String>>, HostfileError> {
    let mut port = u32::from(starting_port);
    let mut out = Vec::with_capacity(hostfile.hosts.len());
    for (i, host) in hostfile.hosts.iter().enumerate() {
        if host.ips.is_empty() {
            return Err(hostfile.missing_ips(i, "ring"));
        }
        let mut node = Vec::new();
        for ip in &host.ips {
            for _ in 0..connections_per_ip {
                if port > u32::from(u16::MAX) {
                    return Err(HostfileError::Invalid {
                        file: hostfile.source.clone(),
                        location: crate::hostfile::location(Some((i, Some(&host.ssh))), "ips"),
                        message: format!("ports run past 65535 (starting port {starting_port}); use a lower --starting-port"),
                    });
                }
                node.push(format!("{ip}:{port}"));
                port += 1;
            }
        }
        out.push(node);
    }
    Ok(out)
}

/// The `MLX_HOSTFILE` content: Python's `json.dumps(addresses)` plus mlx.launch's newline.
pub fn hostfile_content(addresses: &[Vec<String>]) -> String {
    let json_str = |s: &String| serde_json::to_string(s).expect("strings serialize");
    let ranks: Vec<String> = addresses
        .iter()
        .map(|node| {
            format!(
                "[{}]",
                node.iter().map(json_str).collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    format!("[{}]\n", ranks.join(", "))
}

/// Drops earlier entries of a name that appears again later, keeping the order otherwise.
fn last_wins(env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
    for (k, v) in env {
        out.retain(|(ok, _)| ok != &k);
        out.push((k, v));
    }
    out
}

/// Every rank's plan. `cli_env` are the `--env` values (already checked).
pub fn plan(
    hostfile: &Hostfile,
    cli_env: &[(String, String)],
    verbose: bool,
    backend: Backend,
) -> Result<Vec<RankPlan>, HostfileError> {
    let size = hostfile.hosts.len();
    let multi = size > 1;
    let ring_content = match backend {
        Backend::Ring {
            starting_port,
            connections_per_ip,
        } if multi => Some(hostfile_content(&ring_addresses(
            hostfile,
            starting_port,
            connections_per_ip,
        )?)),
        _ => None,
    };
    let nccl_host = match backend {
        Backend::Nccl { .. } if multi => Some(
            hostfile.hosts[0]
                .ips
                .first()
                .cloned()
                .ok_or_else(|| hostfile.missing_ips(0, "nccl"))?,
        ),
        _ => None,
    };
    let mut plans = Vec::with_capacity(size);
    for (rank, host) in hostfile.hosts.iter().enumerate() {
        let mut env: Vec<(String, String)> = hostfile.env.clone();
        env.extend(host.env.iter().cloned());
        env.extend(cli_env.iter().cloned());
        match (backend, &nccl_host) {
            (Backend::Ring { .. }, _) if verbose => {
                env.push(("MLX_RING_VERBOSE".into(), "1".into()))
            }
            (Backend::Nccl { port }, nccl_host) => {
                if verbose {
                    env.push(("NCCL_DEBUG".into(), "INFO".into()));
                }
                if let Some(ip) = nccl_host {
                    let local_rank = hostfile.hosts[..rank]
                        .iter()
                        .filter(|h| h.ssh == host.ssh)
                        .count();
                    let gpu = gpu_for(&last_wins(env.clone()), host.is_local(), local_rank)
                        .map_err(|message| HostfileError::Invalid {
                            file: hostfile.source.clone(),
                            location: crate::hostfile::location(
                                Some((rank, Some(&host.ssh))),
                                "env",
                            ),
                            message,
                        })?;
                    env.push(("NCCL_HOST_IP".into(), ip.clone()));
                    env.push(("NCCL_PORT".into(), port.to_string()));
                    env.push(("MLX_WORLD_SIZE".into(), size.to_string()));
                    env.push(("CUDA_VISIBLE_DEVICES".into(), gpu));
                    env.push(("MLX_RANK".into(), rank.to_string()));
                }
            }
            _ => {}
        }
        env.push((NCCL_NVLS.0.into(), NCCL_NVLS.1.into()));
        plans.push(RankPlan {
            rank,
            host: host.ssh.clone(),
            local: host.is_local(),
            env: last_wins(env),
            hostfile: ring_content.clone(),
        });
    }
    Ok(plans)
}

/// The GPU of the `local_rank`-th rank on its host: that entry of a `CUDA_VISIBLE_DEVICES`
/// list in `env` (for a local host, else in the launcher's own environment), else the local
/// rank itself. A list shorter than the host's ranks is an error: NCCL refuses two ranks on
/// one GPU.
fn gpu_for(env: &[(String, String)], local: bool, local_rank: usize) -> Result<String, String> {
    let given = env
        .iter()
        .find(|(k, _)| k == "CUDA_VISIBLE_DEVICES")
        .map(|(_, v)| v.clone())
        .or_else(|| {
            local
                .then(|| std::env::var("CUDA_VISIBLE_DEVICES").ok())
                .flatten()
        });
    let Some(given) = given else {
        return Ok(local_rank.to_string());
    };
    let list: Vec<&str> = given
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    list.get(local_rank).map(|d| d.to_string()).ok_or_else(|| {
        format!(
            "rank {} of this host needs a GPU of its own, but CUDA_VISIBLE_DEVICES={given:?} \
             lists {}",
            local_rank + 1,
            list.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfile::{Format, Host};

    const RING: Backend = Backend::Ring {
        starting_port: 32323,
        connections_per_ip: 1,
    };

    fn nvls() -> (String, String) {
        (NCCL_NVLS.0.into(), NCCL_NVLS.1.into())
    }

    fn local(n: usize) -> Hostfile {
        Hostfile::from_list("127.0.0.1", n).unwrap()
    }

    #[test]
    fn ports_match_mlx_launch() {
        assert_eq!(
            hostfile_content(&ring_addresses(&local(2), 32323, 1).unwrap()),
            "[[\"127.0.0.1:32323\"], [\"127.0.0.1:32324\"]]\n"
        );
        assert_eq!(
            hostfile_content(&ring_addresses(&local(2), 40100, 2).unwrap()),
            "[[\"127.0.0.1:40100\", \"127.0.0.1:40101\"], [\"127.0.0.1:40102\", \"127.0.0.1:40103\"]]\n"
        );
        let hf = Hostfile::parse(
            "h.json",
            r#"[{"ssh": "a", "ips": ["10.0.0.1", "10.0.1.1"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(
            ring_addresses(&hf, 5000, 2).unwrap(),
            vec![
                vec![
                    "10.0.0.1:5000",
                    "10.0.0.1:5001",
                    "10.0.1.1:5002",
                    "10.0.1.1:5003"
                ],
                vec!["10.0.0.2:5004", "10.0.0.2:5005"]
            ]
        );
    }

    #[test]
    fn port_overflow_and_missing_ips_are_errors() {
        assert!(ring_addresses(&local(3), 65534, 1)
            .unwrap_err()
            .to_string()
            .contains("past 65535"));
        let hf = Hostfile::from_list("127.0.0.1,box", 1).unwrap();
        let e = plan(&hf, &[], false, RING).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"hostfile --hosts: host 1 (ssh "box"), field "ips""#),
            "{e}"
        );
    }

    #[test]
    fn environment_order_and_single_rank() {
        let mut hf = local(2);
        hf.env = vec![("A".into(), "file".into()), ("B".into(), "file".into())];
        hf.hosts[1].env = vec![("B".into(), "host".into())];
        let plans = plan(&hf, &[("A".into(), "cli".into())], true, RING).unwrap();
        assert_eq!(
            plans[0].env,
            vec![
                ("B".into(), "file".into()),
                ("A".into(), "cli".into()),
                ("MLX_RING_VERBOSE".into(), "1".into()),
                nvls(),
            ]
        );
        assert_eq!(plans[1].env[0], ("B".into(), "host".into()));
        assert_eq!(plans[1].mlx_rank().as_deref(), Some("1"));

        // One rank: no hostfile, no MLX_RANK, and no IPs needed.
        let one = Hostfile {
            source: "x".into(),
            backend: None,
            env: vec![],
            hosts: vec![Host {
                ssh: "box".into(),
                ips: vec![],
                env: vec![],
            }],
        };
        let plans = plan(&one, &[], false, RING).unwrap();
        assert_eq!(
            (plans[0].hostfile.clone(), plans[0].mlx_rank()),
            (None, None)
        );
        assert!(!plans[0].local);
    }

    fn vars(plan: &RankPlan) -> Vec<String> {
        plan.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[test]
    fn nccl_ranks_get_the_rendezvous_and_a_gpu_each() {
        let nccl = Backend::Nccl { port: 12345 };
        let plans = plan(&local(2), &[], true, nccl).unwrap();
        assert_eq!(
            vars(&plans[1]),
            [
                "NCCL_DEBUG=INFO",
                "NCCL_HOST_IP=127.0.0.1",
                "NCCL_PORT=12345",
                "MLX_WORLD_SIZE=2",
                "CUDA_VISIBLE_DEVICES=1",
                "MLX_RANK=1",
                "NCCL_NVLS_ENABLE=0"
            ]
        );
        assert_eq!(
            (plans[0].hostfile.clone(), plans[0].mlx_rank()),
            (None, None)
        );

        // Two hosts, two ranks each: GPUs count per host, from a given list; NVLS stays off
        // whatever --env says.
        let hf = Hostfile::parse(
            "h.json",
            r#"[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "a", "ips": ["10.0.0.1"]},
                {"ssh": "b", "ips": ["10.0.0.2"]}, {"ssh": "b", "ips": ["10.0.0.2"]}]"#,
            Format::Json,
        )
        .unwrap();
        let cli = [
            ("CUDA_VISIBLE_DEVICES".to_string(), "4, 5".to_string()),
            ("NCCL_NVLS_ENABLE".to_string(), "1".to_string()),
        ];
        let short = [("CUDA_VISIBLE_DEVICES".to_string(), "4".to_string())];
        let e = plan(&hf, &short, false, nccl).unwrap_err().to_string();
        assert!(
            e.contains(r#"host 1 (ssh "a"), field "env""#) && e.contains("lists 1"),
            "{e}"
        );
        let plans = plan(&hf, &cli, false, nccl).unwrap();
        let gpus: Vec<String> = plans
            .iter()
            .map(|p| {
                p.env
                    .iter()
                    .find(|(k, _)| k == "CUDA_VISIBLE_DEVICES")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        assert_eq!(gpus, ["4", "5", "4", "5"]);
        assert!(plans.iter().all(|p| p.env.last() == Some(&nvls())
            && p.env
                .iter()
                .filter(|(k, _)| k == "NCCL_NVLS_ENABLE")
                .count()
                == 1));
        assert!(vars(&plans[3]).contains(&"NCCL_HOST_IP=10.0.0.1".to_string()));

        // One rank: nothing to rendezvous with. Rank 0 without an IP: an error naming it.
        let plans = plan(&local(1), &[], false, nccl).unwrap();
        assert_eq!(vars(&plans[0]), ["NCCL_NVLS_ENABLE=0"]);
        let hf = Hostfile::from_list("box,127.0.0.1", 1).unwrap();
        let e = plan(&hf, &[], false, nccl).unwrap_err().to_string();
        assert!(
            e.contains(r#"host 0 (ssh "box"), field "ips""#) && e.contains("nccl"),
            "{e}"
        );
    }
}
