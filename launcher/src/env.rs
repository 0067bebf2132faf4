//! Per-rank plans: the ring addresses (`MLX_HOSTFILE` content) and each rank's environment,
//! exactly as mlx.launch 0.32 sets them up for `--backend ring`:
//!
//! - ports count up from `--starting-port` over ranks, then IPs, then connections;
//! - the `MLX_HOSTFILE` file holds Python's `json.dumps` of `[["ip:port", ...], ...]`
//!   (one list per rank) followed by a newline (mlx.launch writes it with `echo`);
//! - environment: the hostfile's, then `--env`, then `MLX_RING_VERBOSE=1` with
//!   `--verbose`, then `MLX_HOSTFILE` and `MLX_RANK`.
//!
//! One difference on purpose: a single rank gets neither `MLX_RANK` nor `MLX_HOSTFILE`
//! (mlx.launch writes an empty hostfile, which MLX then fails to parse).

use crate::hostfile::{Hostfile, HostfileError};

/// What one rank runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankPlan {
    pub rank: usize,
    /// The host's `ssh` field; `127.0.0.1` = local.
    pub host: String,
    pub local: bool,
    /// Variables to set, in order (later entries of the same name already removed), not
    /// counting `MLX_HOSTFILE` / `MLX_RANK`.
    pub env: Vec<(String, String)>,
    /// `MLX_HOSTFILE`'s content when the run has more than one rank.
    pub hostfile: Option<String>,
}

impl RankPlan {
    /// `MLX_RANK`'s value, when set.
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
            return Err(hostfile.missing_ips(i));
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
    starting_port: u16,
    connections_per_ip: usize,
) -> Result<Vec<RankPlan>, HostfileError> {
    let multi = hostfile.hosts.len() > 1;
    let content = if multi {
        Some(hostfile_content(&ring_addresses(
            hostfile,
            starting_port,
            connections_per_ip,
        )?))
    } else {
        None
    };
    Ok(hostfile
        .hosts
        .iter()
        .enumerate()
        .map(|(rank, host)| {
            let mut env: Vec<(String, String)> = hostfile.env.clone();
            env.extend(host.env.iter().cloned());
            env.extend(cli_env.iter().cloned());
            if verbose {
                env.push(("MLX_RING_VERBOSE".into(), "1".into()));
            }
            RankPlan {
                rank,
                host: host.ssh.clone(),
                local: host.is_local(),
                env: last_wins(env),
                hostfile: content.clone(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfile::{Format, Host};

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
        let e = plan(&hf, &[], false, 32323, 1).unwrap_err().to_string();
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
        let plans = plan(&hf, &[("A".into(), "cli".into())], true, 32323, 1).unwrap();
        assert_eq!(
            plans[0].env,
            vec![
                ("B".into(), "file".into()),
                ("A".into(), "cli".into()),
                ("MLX_RING_VERBOSE".into(), "1".into())
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
        let plans = plan(&one, &[], false, 32323, 1).unwrap();
        assert_eq!(
            (plans[0].hostfile.clone(), plans[0].mlx_rank()),
            (None, None)
        );
        assert!(!plans[0].local);
    }
}
