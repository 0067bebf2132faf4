//! Operations: `kooka serve --config FILE` (file < environment < command line, and bad files
//! reported with file, line and key), and `kooka models` / `kooka models pull` against a fake
//! Hugging Face cache, checked against what the real server lists at `/v1/models`.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{self, start_with_env, MODEL};
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kooka-ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kooka() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kooka"));
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HF_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Status of `GET /v1/models` with `key`, addressed to `host`.
fn models_status(addr: &str, key: &str, host: &str) -> u16 {
    let mut s = http::connect(addr);
    write!(
        s,
        "GET /v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    http::parse(&raw).status
}

fn post_status(addr: &str, key: &str, body_len: usize) -> u16 {
    let body = vec![b' '; body_len];
    let extra = format!("Authorization: Bearer {key}\r\n");
    http::request_with(addr, "POST", "/v1/chat/completions", &body, &extra).status
}

#[test]
fn settings_come_from_file_then_environment_then_flags() {
    let dir = scratch("precedence");
    let file = dir.join("kooka.toml");
    std::fs::write(
        &file,
        "api-key = \"file-key\"\nmax_body_bytes = 1000\nallowed-hosts = [\"kooka.lan\"]\n",
    )
    .unwrap();
    let server = start_with_env(
        &["--api-key", "flag-key"],
        &[
            ("KOOKA_CONFIG", file.to_str().unwrap()),
            ("KOOKA_API_KEY", "env-key"),
            ("KOOKA_MAX_BODY_BYTES", "2000"),
        ],
    );
    let addr = &server.addr;
    // api-key: the flag beats the environment, which beats the file.
    assert_eq!(models_status(addr, "flag-key", "localhost"), 200);
    assert_eq!(models_status(addr, "env-key", "localhost"), 401);
    assert_eq!(models_status(addr, "file-key", "localhost"), 401);
    // max-body-bytes: the environment's 2000 beats the file's 1000.
    assert_eq!(
        post_status(addr, "flag-key", 1500),
        400,
        "1500 bytes fit 2000"
    );
    assert_eq!(post_status(addr, "flag-key", 2500), 413);
    // allowed-hosts: only the file sets it (with an API key the default is any host).
    assert_eq!(models_status(addr, "flag-key", "kooka.lan"), 200);
    assert_eq!(models_status(addr, "flag-key", "evil.example"), 403);
}

#[test]
fn a_bad_config_file_names_file_line_and_key() {
    let dir = scratch("bad");
    let cases = [
        (
            "unknown.toml",
            "port = 0\nmax-runing = 3\n",
            ":2: key `max-runing`: unknown key",
        ),
        (
            "type.toml",
            "\nmax-queue = [1]\n",
            ":2: key `max-queue`: expected one value",
        ),
        (
            "range.toml",
            "port = 70000\n",
            ":1: key `port`: invalid value '70000'",
        ),
        (
            "enum.toml",
            "host = \"x\"\n\nparallel = \"foo\"\n",
            ":3: key `parallel`: invalid value 'foo'",
        ),
    ];
    for (name, text, want) in cases {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let start = Instant::now();
        let out = kooka()
            .args(["serve", "--port", "0", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            start.elapsed()
        );
        let located = format!("{}{want}", file.display());
        assert!(
            stderr.contains(&located),
            "{name}: wanted {located:?} in\n{stderr}"
        );
    }
}

/// A Hugging Face cache with `org/tiny` (the default model's files, symlinked as the hub
/// does) and `org/empty` (a repo folder without a snapshot).
fn fake_cache(root: &Path) -> (PathBuf, PathBuf) {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    assert!(
        model.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh",
        model.display()
    );
    let hub = root.join("hub");
    let repo = hub.join("models--org--tiny");
    let snapshot = repo.join("snapshots/abc123");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
    for entry in std::fs::read_dir(&model).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::os::unix::fs::symlink(&path, snapshot.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(hub.join("models--org--empty")).unwrap();
    (hub, model)
}

#[test]
fn models_lists_what_the_server_lists() {
    let root = scratch("models");
    let (hub, model) = fake_cache(&root);
    let out = kooka()
        .args(["models", "--json"])
        .current_dir(&root) // no ./models here
        .env("HF_HUB_CACHE", &hub)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    let ids: Vec<&str> = listed.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["org/empty", "org/tiny"]);

    // The tiny repo's details, against its config.json and file sizes.
    let tiny = &listed[1];
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let size: u64 = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert_eq!(tiny["size_bytes"], size);
    assert_eq!(tiny["context_length"], config["max_position_embeddings"]);
    let arch = tiny["architecture"].as_str().unwrap();
    assert!(
        arch.starts_with(config["model_type"].as_str().unwrap()),
        "{arch}"
    );
    assert_eq!(
        tiny["quantization"].as_str().unwrap(),
        format!(
            "{}-bit, group {}",
            config["quantization"]["bits"], config["quantization"]["group_size"]
        )
    );
    assert!(tiny["problem"].is_null(), "{tiny}");
    assert!(listed[0]["problem"].as_str().unwrap().contains("not found"));

    // Served by repo id, the server lists the same ids.
    let hub_str = hub.to_str().unwrap();
    let server = start_with_env(&["--model", "org/tiny"], &[("HF_HUB_CACHE", hub_str)]);
    let served = http::request(&server.addr, "GET", "/v1/models", b"").json();
    let mut served_ids: Vec<&str> = served["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        served_ids[0], "org/tiny",
        "the served model comes first: {served}"
    );
    served_ids.sort();
    assert_eq!(served_ids, ids);
}

#[test]
fn pull_without_a_network_fails_at_once() {
    let root = scratch("pull");
    // `.invalid` never resolves (RFC 2606); a closed loopback port refuses at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for endpoint in [
        "https://huggingface.invalid".to_string(),
        format!("http://{closed}"),
    ] {
        let start = Instant::now();
        let out = kooka()
            .args(["models", "pull", "org/tiny"])
            .env("HF_HUB_CACHE", root.join("hub"))
            .env("HF_ENDPOINT", &endpoint)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{endpoint}: {stderr}");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{endpoint}: {:?}",
            start.elapsed()
        );
        assert!(
            stderr.contains("no network") && stderr.contains("org/tiny"),
            "{stderr}"
        );
    }
    // And with the default hub: this machine may or may not reach it, but never hangs.
    let start = Instant::now();
    let out = kooka()
        .args(["models", "pull", "kooka-test/no-such-repo-xyz"])
        .env("HF_HUB_CACHE", root.join("hub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "{:?}",
        start.elapsed()
    );
}
