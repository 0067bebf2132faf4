//! `kooka launch` against the real `mlx.launch` (MLX 0.32.2, from third_party/venv): the rank
//! environment, MLX_HOSTFILE, NCCL's variables and python flags as mlx.launch gives them, a
//! single rank, dry runs and configuration errors. Real processes, signals and remote ranks are
//! in `tests/launcher_procs.rs`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::launch::*;

/// Prints, as one JSON line, what mlx.launch / kooka launch gave the rank. It lingers a
/// little after printing: mlx.launch stops reading a rank's output once the rank has
/// exited, so output still in the pipe at that moment is lost.
const SHOW_ENV: &str = "import os, json, time; e = os.environ; print(json.dumps({'rank': e.get('MLX_RANK'), \
    'verbose': e.get('MLX_RING_VERBOSE'), 'foo': e.get('FOO'), 'bar': e.get('BAR'), \
    'hostfile': open(e['MLX_HOSTFILE']).read() if 'MLX_HOSTFILE' in e else None, \
    'nccl': [e.get(k) for k in ('NCCL_HOST_IP', 'NCCL_PORT', 'MLX_WORLD_SIZE', 'NCCL_DEBUG')], \
    'gpu': e.get('CUDA_VISIBLE_DEVICES'), 'nvls': e.get('NCCL_NVLS_ENABLE')}), flush=True); time.sleep(0.5)";

fn python() -> String {
    repo()
        .join("third_party/venv/bin/python")
        .display()
        .to_string()
}

/// Rank reports (one JSON object line per rank) from an output, keyed by MLX_RANK; with
/// `prefixed`, also checks that each line's `[rank] ` prefix names the same rank.
fn reports(stdout: &str, prefixed: bool) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let (tag, body) = match (prefixed, line.split_once("] ")) {
            (true, Some((tag, body))) if tag.starts_with('[') => (Some(tag[1..].to_string()), body),
            (true, _) => continue,
            (false, _) => (None, line),
        };
        let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        let rank = v["rank"].as_str().unwrap_or("none").to_string();
        if let Some(tag) = tag {
            assert_eq!(
                v["rank"].as_str().unwrap_or("0"),
                tag,
                "prefix and MLX_RANK differ: {line}"
            );
        }
        out.insert(rank, v);
    }
    out
}

fn mlx_launch(args: &[&str]) -> BTreeMap<String, Value> {
    let out = Command::new(repo().join("third_party/venv/bin/mlx.launch"))
        .args(args)
        .args(["--", &python(), "-c", SHOW_ENV])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mlx.launch {args:?}: {}",
        text(&out.stderr)
    );
    reports(&text(&out.stdout), false)
}

/// The ranks' reports without `nvls`, after checking that every kooka rank had
/// NCCL_NVLS_ENABLE=0 (kooka launch sets it for every backend; mlx.launch does not).
fn without_nvls(mut ranks: BTreeMap<String, Value>, kooka: bool) -> BTreeMap<String, Value> {
    for (rank, report) in ranks.iter_mut() {
        let nvls = report.as_object_mut().unwrap().remove("nvls");
        if kooka {
            assert_eq!(
                nvls,
                Some(Value::from("0")),
                "rank {rank}: NCCL_NVLS_ENABLE"
            );
        }
    }
    ranks
}

/// Every rank of `kooka launch ARGS` sees what it would under `mlx.launch ARGS` (NVLS aside).
fn assert_same_as_mlx_launch(args: &[&str]) {
    let expected = without_nvls(mlx_launch(args), false);
    let got = without_nvls(kooka_launch(args), true);
    assert!(expected.len() >= 2, "mlx.launch {args:?} gave {expected:?}");
    assert_eq!(
        got, expected,
        "kooka launch {args:?} differs from mlx.launch"
    );
}

fn kooka_launch(args: &[&str]) -> BTreeMap<String, Value> {
    let out = kooka()
        .arg("launch")
        .args(args)
        .args(["--", &python(), "-c", SHOW_ENV])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kooka launch {args:?}: {}",
        text(&out.stderr)
    );
    reports(&text(&out.stdout), true)
}

#[test]
fn rank_environment_matches_mlx_launch() {
    let dir = scratch("env");
    let port = free_port_block(6).to_string();
    let json = dir.join("hosts.json");
    std::fs::write(
        &json,
        r#"{"backend": "ring", "envs": ["FOO=from file"],
            "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                      {"ssh": "127.0.0.1", "ips": ["127.0.0.1", "127.0.0.2"]}]}"#,
    )
    .unwrap();
    let toml = dir.join("hosts.toml");
    std::fs::write(
        &toml,
        "backend = \"ring\"\n[env]\nFOO = \"from file\"\n\n[[hosts]]\nssh = \"127.0.0.1\"\nips = [\"127.0.0.1\"]\n\n\
         [[hosts]]\nssh = \"127.0.0.1\"\nips = [\"127.0.0.1\", \"127.0.0.2\"]\n",
    )
    .unwrap();
    let json = json.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["-n", "2"],
        vec!["-n", "3", "--connections-per-ip", "2", "-p", &port],
        vec![
            "--hostfile",
            json,
            "-p",
            &port,
            "--env",
            "BAR=cli value",
            "--verbose",
        ],
    ];
    for args in &cases {
        assert_same_as_mlx_launch(args);
    }
    // The same hosts as kooka's TOML give the same result as mlx.launch's JSON.
    let toml_args = [
        "--hostfile",
        toml.to_str().unwrap(),
        "-p",
        &port,
        "--env",
        "BAR=cli value",
        "--verbose",
    ];
    assert_eq!(
        without_nvls(kooka_launch(&toml_args), true),
        without_nvls(mlx_launch(&cases[2]), false)
    );
    // And the hostfile is what the issue spells out.
    let two = kooka_launch(&["-n", "2"]);
    assert_eq!(
        two["1"]["hostfile"],
        "[[\"127.0.0.1:32323\"], [\"127.0.0.1:32324\"]]\n"
    );
}

/// `--backend nccl`: NCCL_HOST_IP, NCCL_PORT, MLX_WORLD_SIZE, MLX_RANK, NCCL_DEBUG and the GPU
/// per rank as mlx.launch sets them (mlx.launch writes them without checking for a GPU, so
/// this runs here). One difference on purpose: a hostfile listing one host twice gives its
/// ranks GPUs 0 and 1 (mlx.launch: 0 and 0, rank modulo -n).
#[test]
fn nccl_environment_matches_mlx_launch() {
    let dir = scratch("nccl-env");
    let port = free_port_block(1).to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--backend", "nccl", "-n", "2"],
        vec![
            "--backend",
            "nccl",
            "-n",
            "3",
            "--nccl-port",
            &port,
            "--verbose",
            "--env",
            "BAR=cli value",
        ],
    ];
    for args in &cases {
        assert_same_as_mlx_launch(args);
    }
    let three = kooka_launch(&cases[1]);
    assert_eq!(three["2"]["gpu"], "2");
    assert_eq!(
        three["2"]["nccl"],
        serde_json::json!(["127.0.0.1", port, "3", "INFO"])
    );

    let json = dir.join("hosts.json");
    std::fs::write(
        &json,
        r#"{"backend": "nccl", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]},
                                        {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]}"#,
    )
    .unwrap();
    let args = ["--hostfile", json.to_str().unwrap()];
    let mut expected = without_nvls(mlx_launch(&args), false);
    let got = without_nvls(kooka_launch(&args), true);
    assert_eq!(expected["1"]["gpu"], "0", "mlx.launch's rank modulo -n");
    expected.get_mut("1").unwrap()["gpu"] = Value::from("1");
    assert_eq!(got, expected);
}

/// mlx.launch's `--python` (the interpreter runs the command on every rank) and
/// `--print-python`; `--mpi-arg` is accepted.
#[test]
fn python_flags_as_mlx_launch() {
    let out = kooka()
        .args([
            "launch",
            "-n",
            "2",
            "--python",
            &python(),
            "--mpi-arg",
            "-x",
            "--",
        ])
        .args(["-c", "import os; print('rank', os.environ['MLX_RANK'])"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("[0] rank 0") && stdout.contains("[1] rank 1"),
        "{stdout}"
    );
    let out = kooka()
        .args([
            "launch",
            "--print-python",
            "--python",
            "/opt/py/bin/python3",
        ])
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "/opt/py/bin/python3\n");
}

#[test]
fn single_rank_gets_no_hostfile() {
    let out = kooka()
        .args([
            "launch",
            "--",
            "sh",
            "-c",
            "echo ${MLX_RANK-unset} ${MLX_HOSTFILE-unset}",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "[0] unset unset\n");
    // And a bare kooka subcommand runs this kooka binary, as a group of one.
    let out = kooka()
        .args(["launch", "--no-prefix", "dist-check", "--expect-size", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (report["rank"].as_u64(), report["size"].as_u64()),
        (Some(0), Some(1))
    );
}

#[test]
fn dry_run_and_config_errors() {
    let out = kooka()
        .args([
            "launch",
            "--dry-run",
            "-n",
            "2",
            "-p",
            "40100",
            "--connections-per-ip",
            "2",
            "--env",
            "A=b c",
            "dist-check",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("rank 1: host 127.0.0.1 (local)"), "{s}");
    assert!(
        s.contains(&format!(
            "command: {} dist-check",
            env!("CARGO_BIN_EXE_kooka")
        )),
        "{s}"
    );
    assert!(
        s.contains("env: A='b c'") && s.contains("env: MLX_RANK=1"),
        "{s}"
    );
    assert!(s.contains(r#"MLX_HOSTFILE content: [["127.0.0.1:40100", "127.0.0.1:40101"], ["127.0.0.1:40102", "127.0.0.1:40103"]]"#), "{s}");

    let dir = scratch("errors");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[hosts]]\nssh = \"127.0.0.1\"\nips = [\"127.0.0.1\"]\n[[hosts]]\nssh = \"me@box\"\n",
    )
    .unwrap();
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec!["--hostfile", bad.to_str().unwrap()],
            format!(
                "hostfile {}: host 1 (ssh \"me@box\"), field \"ips\"",
                bad.display()
            ),
        ),
        (
            vec!["--backend", "mpi", "-n", "2"],
            "\"mpi\" is not supported yet".into(),
        ),
        (
            vec!["--env", "NOPE", "-n", "2"],
            "\"NOPE\" is not of the form K=V".into(),
        ),
        (
            vec!["--hosts", "127.0.0.1,box"],
            "host 1 (ssh \"box\"), field \"ips\"".into(),
        ),
    ];
    for (args, want) in cases {
        let out = kooka()
            .arg("launch")
            .args(&args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(&want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
