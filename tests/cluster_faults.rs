//! Faults and lifecycle of the multi-rank runtime across real processes on loopback (the
//! harness: `tests/common/ranks.rs`): ranks joining at different times, a killed, a silent or
//! a mismatched rank becoming a clear error and a non-zero exit, never a hang; a client leaving
//! cancelling on every rank; ranks started by plain `mlx.launch`; `kooka launch` draining on
//! SIGTERM; ranks resuming from their own disk folders. One test at a time, every wait bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::ranks::*;

/// A rank that joins early keeps its heartbeats while a later one is still starting.
#[test]
fn three_ranks_joining_at_different_times() {
    let _serial = serial();
    let (hostfile, control) = hostfile("three", 3);
    let r0 = serve(Some((0, &hostfile, control)), &[]);
    let r1 = serve(Some((1, &hostfile, control)), &[]);
    r0.wait_for("rank connected rank=1", Duration::from_secs(60));
    // Longer than the 3 s after which a silent peer counts as lost.
    std::thread::sleep(Duration::from_secs(5));
    let r2 = serve(Some((2, &hostfile, control)), &[]);
    let addr = r0.address();
    asks_for_paris(&addr);
    let (status, health) = request(&addr, "GET", "/health", "");
    assert_eq!(status, 200, "{health}");
    assert!(
        health.contains("pipeline rank 2/3: layers 20..30 of 30"),
        "{health}"
    );
    drop((r2, r1));
}

#[test]
fn killing_a_follower_mid_stream_fails_the_request_and_ends_rank_zero() {
    let _serial = serial();
    let (mut r0, mut r1, addr) = two_ranks("kill", &[]);
    let mut stream = stream_some(&addr, 5);
    r1.child.kill().unwrap();
    let killed = Instant::now();
    r1.child.wait().unwrap();

    // The stream ends with an error event naming the rank, then [DONE].
    let (_, error) = rest_and_error_event(&mut stream);
    assert!(error.contains("rank 1 (127.0.0.1)"), "{error}");

    // Meanwhile /health is 503 (or rank 0 is already gone).
    if let Ok(mut s) = TcpStream::connect(&addr) {
        let _ = write!(
            s,
            "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 503"), "{raw}");
    }

    let status = r0.exit_within(Duration::from_secs(15));
    eprintln!(
        "rank 0 exited {:.2}s after rank 1 was killed",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{}", r0.stderr());
    assert!(
        r0.stderr().contains("rank 1 (127.0.0.1) is unavailable"),
        "{}",
        r0.stderr()
    );
}

#[test]
fn a_silent_follower_is_found_by_heartbeats() {
    let _serial = serial();
    let (mut r0, r1, addr) = two_ranks("silent", &[]);
    r1.signal("-STOP");
    let stopped = Instant::now();
    // Timing::default(): 3 s without a heartbeat, then 1 s of grace.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = request(&addr, "GET", "/health", "");
        if status == 503 {
            assert!(body.contains("no heartbeat"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "/health still {status}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = r0.exit_within(Duration::from_secs(15));
    eprintln!(
        "rank 0 exited {:.2}s after rank 1 went silent",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(1));
    r1.signal("-KILL");
}

#[test]
fn a_client_leaving_cancels_on_every_rank_and_both_serve_on() {
    let _serial = serial();
    let (r0, mut r1, addr) = two_ranks("cancel", &[]);
    drop(stream_some(&addr, 5));
    r0.wait_for("client went away", Duration::from_secs(60));
    r1.wait_for(
        "follower: sequence cancelled seq=0",
        Duration::from_secs(30),
    );
    r1.wait_for("follower: idle", Duration::from_secs(30));

    let c = asks_for_paris(&addr);
    let tokens = c["usage"]["completion_tokens"].as_u64().unwrap();
    r1.wait_for(
        &format!("sequence finished seq=1 tokens={tokens}"),
        Duration::from_secs(30),
    );

    // And a follower whose rank 0 dies exits non-zero at once.
    drop(r0);
    let status = r1.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    assert!(r1.stderr().contains("rank 0 is gone"), "{}", r1.stderr());
}

#[test]
fn rank_zero_names_the_ranks_that_never_came() {
    let _serial = serial();
    let (hostfile, control) = hostfile("alone", 3);
    let mut r0 = serve(
        Some((0, &hostfile, control)),
        &["--startup-timeout-secs", "2"],
    );
    let status = r0.exit_within(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let err = r0.stderr();
    assert!(
        err.contains("rank 1 (127.0.0.1), rank 2 (127.0.0.1) did not connect"),
        "{err}"
    );
}

#[test]
fn ranks_started_with_different_flags_are_refused() {
    let _serial = serial();
    let (hostfile, control) = hostfile("mismatch", 2);
    let mut r1 = serve(Some((1, &hostfile, control)), &["--parallel", "tensor"]);
    let mut r0 = serve(Some((0, &hostfile, control)), &["--parallel", "pipeline"]);
    for (rank, p) in [(0, &mut r0), (1, &mut r1)] {
        let status = p.exit_within(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "rank {rank}");
        let err = p.stderr();
        assert!(
            err.contains("rank 1 was started with --parallel tensor, rank 0 with pipeline"),
            "rank {rank}: {err}"
        );
    }
}

/// Compatibility mode: plain `mlx.launch` sets only MLX_RANK / MLX_HOSTFILE (with `-n 1`, an
/// empty hostfile: one rank).
#[test]
fn ranks_started_by_mlx_launch() {
    let _serial = serial();
    for ranks in [2, 1] {
        mlx_launch_serves(ranks);
    }
}

fn mlx_launch_serves(ranks: usize) {
    let launch = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("third_party/venv/bin/mlx.launch");
    assert!(
        launch.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        launch.display()
    );
    let ports = free_ports(3);
    let mut cmd = Command::new(&launch);
    cmd.args([
        "-n",
        &ranks.to_string(),
        "--backend",
        "ring",
        "-p",
        &ports[0].to_string(),
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_kooka"))
    .args([
        "serve",
        "--port",
        "0",
        "--control-port",
        &ports[2].to_string(),
        "--model",
    ])
    .arg(model())
    .env_remove("MLX_RANK")
    .env_remove("MLX_HOSTFILE");
    // mlx.launch leaves its ranks running when it is killed: kill the whole group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let launcher = spawn(cmd);
    let group = launcher.child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let addr = launcher.address();
        asks_for_paris(&addr);
        let (status, health) = request(&addr, "GET", "/health", "");
        assert_eq!(status, 200, "{health}");
        match ranks {
            1 => assert!(!health.contains("rank"), "one rank: {health}"),
            _ => assert!(health.contains("pipeline rank 1/2"), "{health}"),
        }
    }));
    kill_group();
    drop(launcher);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A deliberate stop: SIGTERM to `kooka launch` drains rank 0 (its stream ends with an error
/// event saying the server is stopping, then [DONE]), rank 0 stops the other rank, and every
/// process exits 0 without reporting a lost rank.
#[test]
fn sigterm_to_kooka_launch_drains_and_exits_zero() {
    let _serial = serial();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kooka"));
    cmd.args([
        "launch",
        "-n",
        "2",
        "--",
        "serve",
        "--port",
        "0",
        "--shutdown-grace",
        "1",
    ])
    .arg("--model")
    .arg(model())
    .env_remove("MLX_RANK")
    .env_remove("MLX_HOSTFILE");
    let mut launcher = spawn(cmd);
    let addr = launcher.address();
    let mut stream = stream_some(&addr, 3);
    launcher.signal("-TERM");
    let (rest, error) = rest_and_error_event(&mut stream);
    assert!(error.contains("shutting down"), "{error}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "no chunked terminator: {rest:?}"
    );
    let status = launcher.exit_within(Duration::from_secs(40));
    let log = launcher.stderr();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        !log.contains("ERROR") && !log.contains("is unavailable"),
        "{log}"
    );
}

/// Each rank keeps its own layers' blocks; after a restart the ranks agree on where to
/// resume even when their folders differ (rank 1 lost its tail block): the shorter length,
/// and the reply of a cold single-rank run.
#[test]
fn ranks_resume_from_their_own_disk_folders_at_one_agreed_length() {
    let _serial = serial();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cluster-disk-cache");
    let _ = std::fs::remove_dir_all(&dir);
    let flag = ["--prompt-cache-dir", dir.to_str().unwrap()];
    let story: String = (0..60)
        .map(|i| format!("Note {i} about the harbour: the ships go out."))
        .collect::<Vec<_>>()
        .join(" ");
    let first = json!({"prompt": story, "max_tokens": 8, "temperature": 0});
    let longer = json!({"prompt": format!("{story} And then the storm came."), "max_tokens": 8, "temperature": 0});
    let completion = |addr: &str, body: &Value| -> Value {
        let (status, text) = request(addr, "POST", "/v1/completions", &body.to_string());
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let cold = {
        let one = serve(None, &["--prompt-cache-bytes", "0"]);
        completion(&one.address(), &longer)
    };
    let written = {
        let (_r0, _r1, addr) = two_ranks("disk-1", &flag);
        completion(&addr, &first);
        // Both ranks' writers finish (three blocks each) before the run is stopped.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let files = common::disk_cache_files(&dir);
            if files.len() >= 6 && files.iter().all(|p| p.extension().unwrap() != "tmp") {
                std::thread::sleep(Duration::from_millis(500));
                break common::disk_cache_files(&dir);
            }
            assert!(Instant::now() < deadline, "{files:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let rank1: Vec<&PathBuf> = written
        .iter()
        .filter(|p| p.parent().unwrap().ends_with("rank1"))
        .collect();
    assert!(
        !rank1.is_empty() && rank1.len() < written.len(),
        "{written:?}"
    );
    // Rank 1 loses its tail blocks (the prompt's and the whole sequence's).
    let tail_start = rank1.iter().map(|p| common::block_start(p)).max().unwrap();
    for p in rank1
        .iter()
        .filter(|p| common::block_start(p) == tail_start)
    {
        std::fs::remove_file(p).unwrap();
    }

    let (_r0, _r1, addr) = two_ranks("disk-2", &flag);
    let warm = completion(&addr, &longer);
    let cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached, tail_start,
        "resumed where rank 1's blocks end: {warm}"
    );
    assert_eq!(warm["choices"][0]["text"], cold["choices"][0]["text"]);
}
