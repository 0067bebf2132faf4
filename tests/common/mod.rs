//! Helpers shared by integration tests (each test binary includes what it uses).
#![allow(dead_code)]

pub mod engine;
pub mod http;
pub mod launch;
pub mod ranks;
pub mod tool_replies;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `child`'s exit status once it exits, or `None` if it is still running after `within`.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `models/<name>`, which `scripts/setup.sh --tests` makes (a clear failure when it has not).
pub fn model(name: &str) -> PathBuf {
    let dir = root().join("models").join(name);
    assert!(
        dir.join("config.json").exists(),
        "{} is missing: run scripts/setup.sh --tests",
        dir.display()
    );
    dir
}

/// The tiny models of `make_tiny_models.py` (the parity fixtures), created once per
/// target dir. Test binaries run one after another, so one lock per binary is enough.
pub fn tiny_model(name: &str) -> PathBuf {
    fixtures("tiny-models", &[], name)
}

/// The tiny models of `make_tiny_models.py --shard` (fixtures for sharded runs).
pub fn tiny_shard_model(name: &str) -> PathBuf {
    fixtures("tiny-models-shard", &["--shard"], name)
}

/// `<target tmp>/<dir>/<name>`, running `make_tiny_models.py <dir> <args>` first when the
/// folder's `models.json` does not list `name`.
fn fixtures(dir: &str, args: &[&str], name: &str) -> PathBuf {
    static CREATE: Mutex<()> = Mutex::new(());
    let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp().join(dir);
    let listed = std::fs::read_to_string(dir.join("models.json")).unwrap_or_default();
    if !listed.contains(&format!("\"{name}\"")) {
        let python = root().join("third_party/venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh --tests",
            python.display()
        );
        let out = Command::new(python)
            .arg(root().join("tests/python/make_tiny_models.py"))
            .arg(&dir)
            .args(args)
            .output()
            .expect("running make_tiny_models.py");
        assert!(
            out.status.success(),
            "make_tiny_models.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join(name)
}

/// `models/<name>` requantized to `bits` (`scripts/requantize.py`, group 64): a draft model
/// with the model's tokenizer, made once per target dir.
pub fn requantized(name: &str, bits: u32) -> PathBuf {
    static CREATE: Mutex<()> = Mutex::new(());
    let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tmp().join("requantized").join(format!("{name}-{bits}bit"));
    if !dir.exists() {
        let partial = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&partial);
        let out = Command::new(root().join("third_party/venv/bin/python"))
            .arg(root().join("scripts/requantize.py"))
            .arg(model(name))
            .arg(&partial)
            .args(["--bits", &bits.to_string()])
            .output()
            .expect("running scripts/requantize.py");
        assert!(
            out.status.success(),
            "requantize.py {name} --bits {bits} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&partial, &dir).expect("renaming the requantized model");
    }
    dir
}

/// Block files (and temporary ones) of every model and rank folder under a
/// `--prompt-cache-dir`, sorted.
pub fn disk_cache_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for model in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for rank in std::fs::read_dir(model.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(rank.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(f.path());
            }
        }
    }
    out.retain(|p| {
        p.extension()
            .is_some_and(|x| x == "safetensors" || x == "tmp")
    });
    out.sort();
    out
}

/// A disk prompt cache block file's first position (from its safetensors header).
pub fn block_start(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let head: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    head["__metadata__"]["start"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `max|got - want| / (1 + max|want|)`: how far logits are from a reference's.
pub fn logits_error(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "vocab size");
    let scale = 1.0 + want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}
