//! The distributed wrapper across real processes: `kooka dist-check` on 2 ranks over a
//! loopback ring (MLX's ring backend), and clean errors for a bad environment.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn kooka() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kooka"))
}

/// Loopback ports the OS says are free now; distinct per call, so parallel runs differ.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dist-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ring_hostfile(name: &str, ranks: usize) -> PathBuf {
    let hosts: Vec<Vec<String>> = free_ports(ranks)
        .into_iter()
        .map(|p| vec![format!("127.0.0.1:{p}")])
        .collect();
    let path = scratch(name).join("hostfile.json");
    std::fs::write(&path, serde_json::to_string(&hosts).unwrap()).unwrap();
    path
}

fn run_ranks(hostfile: &PathBuf, ranks: usize) -> Vec<Output> {
    let children: Vec<_> = (0..ranks)
        .map(|rank| {
            kooka()
                .args([
                    "dist-check",
                    "--expect-size",
                    &ranks.to_string(),
                    "--timeout-secs",
                    "90",
                ])
                .env("MLX_RANK", rank.to_string())
                .env("MLX_HOSTFILE", hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

#[test]
fn two_rank_ring_all_sum_all_gather_send_recv() {
    let hostfile = ring_hostfile("ring2", 2);
    let outputs = run_ranks(&hostfile, 2);
    for (rank, out) in outputs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "rank {rank} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["rank"], rank);
        assert_eq!(report["size"], 2);
        assert_eq!(report["all_sum"], serde_json::json!([3.0, 3.0, 3.0, 3.0]));
        assert_eq!(report["all_gather"], serde_json::json!([0.0, 1.0]));
        let peer = 1 - rank;
        let sent = 10.0 * peer as f64;
        assert_eq!(
            report["received"],
            serde_json::json!([peer, [sent, sent + 1.0]])
        );
    }
}

#[test]
fn single_rank_without_environment() {
    let out = kooka()
        .arg("dist-check")
        .env_remove("MLX_RANK")
        .env_remove("MLX_HOSTFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["rank"].as_u64(), report["size"].as_u64()),
        (Some(0), Some(1))
    );
}

/// The launchers' variables, removed from a command so that only a case's own count.
const LAUNCH_VARS: [&str; 5] = [
    "MLX_RANK",
    "MLX_HOSTFILE",
    "MLX_WORLD_SIZE",
    "NCCL_HOST_IP",
    "NCCL_PORT",
];

#[test]
fn bad_environment_is_a_clear_error_not_a_crash() {
    let dir = scratch("bad");
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let ring = ring_hostfile("bad-ring", 2);
    let nccl = [
        ("MLX_RANK", "1"),
        ("MLX_WORLD_SIZE", "2"),
        ("NCCL_HOST_IP", "127.0.0.1"),
        ("NCCL_PORT", "1"),
    ];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 8] = [
        (
            &[],
            &[("MLX_RANK", "0")],
            "nothing says which group to join",
        ),
        (
            &[],
            &[
                ("MLX_RANK", "zero"),
                ("MLX_HOSTFILE", garbage.to_str().unwrap()),
            ],
            "not a non-negative integer",
        ),
        (
            &[],
            &[
                ("MLX_RANK", "0"),
                ("MLX_HOSTFILE", garbage.to_str().unwrap()),
            ],
            "not a JSON list",
        ),
        (
            &[],
            &[
                ("MLX_RANK", "0"),
                ("MLX_HOSTFILE", "/nonexistent/hosts.json"),
            ],
            "cannot read MLX_HOSTFILE",
        ),
        (
            &[],
            &[("MLX_RANK", "0"), ("NCCL_HOST_IP", "127.0.0.1")],
            "--backend nccl needs MLX_WORLD_SIZE, NCCL_PORT",
        ),
        (
            &["--backend", "nccl"],
            &[("MLX_RANK", "0"), ("MLX_HOSTFILE", ring.to_str().unwrap())],
            "--backend nccl was asked for, but the environment describes a ring run",
        ),
        (
            &["--backend", "ring"],
            &nccl,
            "--backend ring was asked for, but the environment describes a nccl run",
        ),
        // A complete nccl environment on this CPU build: MLX has no nccl here.
        (&[], &nccl, "nccl exists only in MLX's CUDA build"),
    ];
    for (args, env, expected) in cases {
        let mut cmd = kooka();
        cmd.arg("dist-check").args(args);
        for k in LAUNCH_VARS {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{env:?}: {stderr:?} lacks {expected:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `kooka launch --backend nccl` on a CPU build of MLX: every rank of a server says why and
/// the launch ends at once with an error (nothing waits for NCCL's rendezvous).
#[test]
fn nccl_on_a_cpu_build_ends_the_launch_with_the_reason() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct");
    assert!(
        model.join("config.json").exists(),
        "run scripts/setup.sh --tests"
    );
    let port = free_ports(1)[0].to_string();
    let started = std::time::Instant::now();
    let mut cmd = kooka();
    cmd.args([
        "launch",
        "-n",
        "2",
        "--backend",
        "nccl",
        "--nccl-port",
        &port,
        "--",
    ])
    .args(["serve", "--port", "0", "--parallel", "tensor", "--model"])
    .arg(&model);
    for k in LAUNCH_VARS {
        cmd.env_remove(k);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("joining the MLX nccl group") && stderr.contains("MLX's CUDA build"),
        "{stderr}"
    );
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_peer_times_out_with_a_message() {
    let hostfile = ring_hostfile("alone", 2);
    let out = kooka()
        .args(["dist-check", "--timeout-secs", "2"])
        .env("MLX_RANK", "0")
        .env("MLX_HOSTFILE", &hostfile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not finish within 2s"), "{stderr}");
}
