//! Loading errors of the model runtime name the problem: missing file, unsupported
//! model_type (listing the supported ones), a tensor of the wrong shape, unused tensors.
//! Also: chunked prefill gives the same greedy tokens as one chunk.

use std::path::{Path, PathBuf};
use std::process::Command;

use kooka::model::{load_model, ComputeDtype, ModelError};

mod common;

fn tiny(name: &str) -> PathBuf {
    common::tiny_model(name)
}

/// A copy of a tiny model folder whose config.json is edited by `edit`.
fn edited(name: &str, tag: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = tiny(name);
    let dst = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("edited-{tag}"));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.safetensors", "model.safetensors.index.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

fn load_err(dir: &Path) -> ModelError {
    match load_model(dir, ComputeDtype::Native) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_config_is_named() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(
        matches!(e, ModelError::MissingFile(ref p) if p.ends_with("config.json")),
        "{e}"
    );
}

#[test]
fn unsupported_model_type_lists_supported() {
    let dir = edited("llama-bf16", "gpt2", |c| c["model_type"] = "gpt2".into());
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains("\"gpt2\"") && msg.contains("llama") && msg.contains("qwen3"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_tensor() {
    let dir = edited("llama-bf16", "vocab", |c| c["vocab_size"] = 300.into());
    let msg = load_err(&dir).to_string();
    assert!(
        msg.contains("model.embed_tokens.weight") && msg.contains("300"),
        "{msg}"
    );
}

#[test]
fn wrong_quantization_override_is_an_error() {
    let dir = edited("llama-q4g64", "quant", |c| {
        c["quantization"]["model.embed_tokens"] = serde_json::json!({"group_size": 32, "bits": 8})
    });
    let msg = load_err(&dir).to_string();
    assert!(msg.contains("model.embed_tokens"), "{msg}");
}

#[test]
fn every_tiny_model_loads_in_every_dtype() {
    for name in [
        "llama-mixed",
        "qwen3-q4g64",
        "qwen2-q8g32",
        "llama_tied-q3g32",
    ] {
        for dt in [
            ComputeDtype::Auto,
            ComputeDtype::Native,
            ComputeDtype::F32,
            ComputeDtype::F16,
            ComputeDtype::Bf16,
        ] {
            if let Err(e) = load_model(&tiny(name), dt) {
                panic!("{name} {dt:?}: {e}");
            }
        }
    }
}

#[test]
fn chunked_prefill_gives_the_same_tokens() {
    let model = tiny("llama-q8g32");
    let run = |step: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kooka"))
            .args([
                "generate",
                "--print-tokens",
                "--ignore-eos",
                "--compute-dtype",
                "f32",
                "--max-tokens",
                "16",
            ])
            .args([
                "--prompt-tokens",
                "5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21",
                "--prefill-step-size",
                step,
                "--model",
            ])
            .arg(&model)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["tokens"].clone()
    };
    assert_eq!(run("3"), run("2048"));
}
