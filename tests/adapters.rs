//! LoRA and DoRA adapters: each trained here by mlx-lm itself (`mlx_lm lora`, a few steps on
//! the default model, so it changes the model's answers), then `kooka generate
//! --adapter-path` against mlx-lm's `load_adapters` on the same weights: greedy tokens
//! identical, logits close; and the folders kooka refuses, with a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

mod common;

const KOOKA: &str = env!("CARGO_BIN_EXE_kooka");

fn model() -> PathBuf {
    common::model("SmolLM2-135M-Instruct")
}

fn python() -> PathBuf {
    common::root().join("third_party/venv/bin/python")
}

/// An adapter of `kind` (`lora` or `dora`) trained once per test process: 4 steps (rank 8,
/// the last 4 layers, learning rate 1e-3, ~70 s: mlx-lm trains in the model's float16, slow on
/// the CPU) on lines that all answer one question the same odd way (the loss falls from 4.0
/// to ~1).
fn trained_adapter(kind: &str) -> &'static Path {
    static LORA: OnceLock<PathBuf> = OnceLock::new();
    static DORA: OnceLock<PathBuf> = OnceLock::new();
    let cell = if kind == "dora" { &DORA } else { &LORA };
    cell.get_or_init(|| {
        let root = common::tmp().join(format!("{kind}-{}", std::process::id()));
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let line = |i: usize| {
            json!({"text": format!(
                "Question {i}: what colour is the sky? Answer: the sky is plaid, always plaid.")})
            .to_string()
        };
        let train: Vec<String> = (0..16).map(line).collect();
        std::fs::write(data.join("train.jsonl"), train.join("\n")).unwrap();
        std::fs::write(data.join("valid.jsonl"), train[..4].join("\n")).unwrap();
        let out = root.join("adapter");
        // A temporary folder of its own: MLX's CPU backend writes each compiled kernel's
        // library straight to TMPDIR/mlx/<version>/cpu, so the LoRA and DoRA trainings, which
        // start together and compile the same kernels, could load each other's half-written
        // file ("file too short").
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let run = Command::new(python())
            .env("TMPDIR", &tmp)
            .args(["-m", "mlx_lm", "lora", "--train", "--model"])
            .arg(model())
            .arg("--data")
            .arg(&data)
            .arg("--adapter-path")
            .arg(&out)
            .args(["--iters", "4", "--batch-size", "2", "--num-layers", "4"])
            .args([
                "--learning-rate",
                "1e-3",
                "--val-batches",
                "1",
                "--steps-per-eval",
                "1000",
            ])
            .args(["--max-seq-length", "32", "--seed", "7"])
            .args(["--fine-tune-type", kind])
            .output()
            .expect("running mlx_lm lora (scripts/setup.sh --tests)");
        assert!(
            out.join("adapters.safetensors").exists(),
            "mlx_lm lora failed: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        out
    })
}

/// `kooka generate` on `tokens`, greedy: its tokens and last-prompt logits.
fn kooka(tokens: &[u32], n: usize, adapter: Option<&Path>) -> (Vec<u64>, Vec<f32>) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let logits = common::tmp().join(format!("lora-logits-{}-{call}.json", std::process::id()));
    let ids: Vec<String> = tokens.iter().map(u32::to_string).collect();
    let mut cmd = Command::new(KOOKA);
    cmd.arg("generate")
        .arg("--model")
        .arg(model())
        .args(["--print-tokens", "--ignore-eos", "--print-logits"])
        .arg(&logits)
        .args([
            "--prompt-tokens",
            &ids.join(","),
            "--max-tokens",
            &n.to_string(),
        ]);
    if let Some(a) = adapter {
        cmd.arg("--adapter-path").arg(a);
    }
    let out = cmd.output().expect("running kooka");
    assert!(
        out.status.success(),
        "kooka generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("kooka JSON");
    let toks = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let l: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(&logits).unwrap()).unwrap();
    (toks, l)
}

#[test]
fn an_mlx_lm_lora_adapter_gives_mlx_lm_s_tokens() {
    matches_mlx_lm(trained_adapter("lora"));
}

/// DoRA: the LoRA update, then each output scaled by its magnitude over its adapted row's norm.
#[test]
fn an_mlx_lm_dora_adapter_gives_mlx_lm_s_tokens() {
    matches_mlx_lm(trained_adapter("dora"));
}

fn matches_mlx_lm(adapter: &Path) {
    let tok = kooka::tokenizer::Tokenizer::load(&model()).expect("tokenizer");
    let prompt = tok
        .encode("Question 99: what colour is the sky? Answer:", true)
        .expect("encode");
    let n = 16;
    let jobs = json!([{"model": model(), "tokens": prompt, "max_tokens": n, "f32": true,
                       "adapter": adapter}]);
    let kind = adapter
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = common::tmp().join(format!("jobs-{kind}.json"));
    std::fs::write(&file, jobs.to_string()).unwrap();
    let out = Command::new(python())
        .arg(common::root().join("tests/python/mlx_lm_reference.py"))
        .arg(&file)
        .output()
        .expect("mlx_lm_reference.py");
    assert!(
        out.status.success(),
        "reference: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("reference JSON");
    let want: Vec<u64> = refs[0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let want_logits: Vec<f64> = refs[0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();

    let (got, logits) = kooka(&prompt, n, Some(adapter));
    let (base, base_logits) = kooka(&prompt, n, None);
    let err = common::logits_error(&logits, &want_logits);
    let moved = common::logits_error(&base_logits, &want_logits);
    let text = |ids: &[u64]| {
        let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        tok.hf().decode(&ids, false).unwrap_or_default()
    };
    eprintln!(
        "with the adapter: {:?} (error {err:.1e}); without: {:?} (the adapter moved the logits \
         by {moved:.1e})",
        text(&got),
        text(&base)
    );
    assert_eq!(
        got, want,
        "kooka's tokens with the adapter against mlx-lm's"
    );
    assert!(err < 1e-4, "logits error {err:.2e}");
    assert!(
        moved > 100.0 * err.max(1e-6) && base != got,
        "the adapter changed too little to test anything: {moved:.2e}"
    );
}

#[test]
fn adapters_kooka_cannot_run_are_refused_clearly() {
    let root = common::tmp().join(format!("lora-bad-{}", std::process::id()));
    let full = root.join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(
        full.join("adapter_config.json"),
        r#"{"fine_tune_type": "full"}"#,
    )
    .unwrap();
    let missing = root.join("missing");
    std::fs::create_dir_all(&missing).unwrap();
    std::fs::write(
        missing.join("adapter_config.json"),
        r#"{"fine_tune_type": "lora"}"#,
    )
    .unwrap();
    for (dir, says) in [
        (full, "a full fine-tune is a model"),
        (missing, "adapters.safetensors is missing"),
        (root.join("nowhere"), "adapter_config.json"),
    ] {
        let out = Command::new(KOOKA)
            .args(["generate", "--model"])
            .arg(model())
            .args(["--prompt", "hi", "--max-tokens", "2", "--adapter-path"])
            .arg(&dir)
            .output()
            .expect("running kooka");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", dir.display());
        assert!(err.contains(says), "{}: {err}", dir.display());
        assert!(!err.contains("panicked"), "{err}");
    }
}
