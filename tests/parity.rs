//! Parity of `kooka generate` with the Python reference, mlx-lm 0.32.2, on tiny random
//! models made by `tests/python/make_tiny_models.py` (llama tied/untied, llama3 rope,
//! mistral, qwen2, qwen3, the mixtures of experts qwen3_moe, mixtral, minimax, glm4_moe,
//! gpt_oss (attention sinks, YaRN, alternating sliding windows, MXFP4) and deepseek_v3
//! (multi-head latent attention; low-rank or full query, the older `kv_b_proj` layout), mistral with
//! sliding-window layers (rotating KV cache, windows 8 and 16) and qwen2 with a sliding
//! window mlx-lm ignores; bf16, f16, 4/8/3-bit and mixed per-module quantization), the
//! hybrid nemotron_h (Mamba-2, attention without RoPE, ReLU² MLP and MoE layers), and on
//! SmolLM2-135M-Instruct when `models/SmolLM2-135M-Instruct` exists.
//!
//! The MoE and sliding-window models also run a 40-token prompt: its prefill routes more
//! than 64 (token, expert) pairs (mlx-lm's sorted gathered-matmul path) and overruns the
//! windows (banded prefill mask, then trimming the rotating cache); the sliding-window
//! and deepseek_v3 models also prefill it in chunks of 7 (mlx-lm's `prefill_step_size`:
//! later chunks expand the cached latent of earlier ones).
//!
//! For each model and both compute modes (`native` = weights as stored, vs mlx-lm as
//! loaded; `f32` = dequantized float32, vs mlx-lm dequantized and cast to float32):
//! - the greedy continuation must be token-for-token identical (40 tokens);
//! - the last prompt position's logits must agree within
//!   `max|kooka - mlx_lm| <= tol * (1 + max|mlx_lm|)`, tol = 1e-4 for f32 and 2e-2 for
//!   bf16/f16 (about two bf16 ulps; the same MLX ops run in both, so 0 is expected).
//!
//! Needs the reference venv at `third_party/venv`; the tests fail (not skip) without it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

mod common;

use common::logits_error;

const KOOKA: &str = env!("CARGO_BIN_EXE_kooka");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    root().join("third_party/venv/bin/python")
}

/// The tiny models, created once per target dir.
fn tiny_models() -> (PathBuf, Vec<String>) {
    // Tests run in parallel threads: create the folder once.
    static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tiny-models");
    let list = dir.join("models.json");
    if !list.exists() {
        run_python("make_tiny_models.py", &dir);
    }
    let names: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(&list).unwrap()).unwrap();
    (dir, names)
}

fn reference(jobs: &Value) -> Vec<Value> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("jobs-{}-{call}.json", std::process::id()));
    std::fs::write(&file, jobs.to_string()).unwrap();
    serde_json::from_slice(&run_python("mlx_lm_reference.py", &file)).expect("reference JSON")
}

/// Runs `tests/python/<script> <arg>` with the reference venv; returns its stdout.
fn run_python(script: &str, arg: &std::path::Path) -> Vec<u8> {
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .arg(arg)
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `kooka generate` with the debug flags; returns its JSON and the logits.
fn kooka(model: &Path, args: &[&str]) -> (Value, Vec<f32>) {
    kooka_env(model, args, &[])
}

/// [`kooka`] with extra environment variables.
fn kooka_env(model: &Path, args: &[&str], env: &[(&str, &str)]) -> (Value, Vec<f32>) {
    // Unique per call: tests run in parallel threads of one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let logits = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "logits-{}-{call}-{}.json",
        std::process::id(),
        model.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new(KOOKA)
        .envs(env.iter().copied())
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--print-tokens", "--ignore-eos", "--print-logits"])
        .arg(&logits)
        .args(args)
        .output()
        .expect("running kooka");
    assert!(
        out.status.success(),
        "kooka generate failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("kooka JSON");
    let l: Vec<f32> = serde_json::from_str(&std::fs::read_to_string(&logits).unwrap()).unwrap();
    (v, l)
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

const PROMPT: [u32; 12] = [1, 17, 42, 99, 3, 250, 7, 7, 300, 12, 64, 5];
const N: usize = 40;

/// Runs every model in `names` in both compute modes on `prompt` for `n` greedy tokens
/// (prefilling in chunks of `step`), kooka against mlx-lm; panics listing every mismatch.
fn check_parity(dir: &Path, names: &[String], prompt: &[u32], n: usize, step: usize) {
    let modes = [("native", false), ("f32", true)];
    check_parity_with(dir, names, prompt, n, step, &modes, &[]);
}

/// [`check_parity`] in the compute `modes` given (name, f32), kooka run with `env`.
fn check_parity_with(
    dir: &Path,
    names: &[String],
    prompt: &[u32],
    n: usize,
    step: usize,
    modes: &[(&str, bool)],
    env: &[(&str, &str)],
) {
    // The KV cache settings kooka takes from the environment, for the reference too.
    let mut kv = serde_json::Map::new();
    for (var, key) in [
        ("KOOKA_KV_BITS", "kv_bits"),
        ("KOOKA_KV_GROUP_SIZE", "kv_group_size"),
        ("KOOKA_QUANTIZED_KV_START", "quantized_kv_start"),
    ] {
        if let Some((_, v)) = env.iter().find(|(k, _)| *k == var) {
            kv.insert(key.into(), json!(v.parse::<i64>().expect("a number")));
        }
    }
    let mut jobs = Vec::new();
    for name in names {
        for (_, f32) in modes.iter() {
            let mut job = json!({"model": dir.join(name), "tokens": prompt, "max_tokens": n, "f32": f32, "prefill_step_size": step});
            job.as_object_mut().expect("a job").extend(kv.clone());
            jobs.push(job);
        }
    }
    let refs = reference(&Value::Array(jobs));
    let prompt_arg = prompt
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (n_arg, step_arg) = (n.to_string(), step.to_string());
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (j, (mode, _)) in modes.iter().enumerate() {
            let want = &refs[i * modes.len() + j];
            let args = [
                "--prompt-tokens",
                &prompt_arg,
                "--max-tokens",
                &n_arg,
                "--compute-dtype",
                mode,
                "--prefill-step-size",
                &step_arg,
            ];
            let (got, logits) = kooka_env(&dir.join(name), &args, env);
            let (gt, wt) = (ids(&got["tokens"]), ids(&want["tokens"]));
            let want_logits: Vec<f64> = want["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let err = logits_error(&logits, &want_logits);
            let tol = if *mode == "f32" { 1e-4 } else { 2e-2 };
            // Guard against vacuous passes: a degenerate model would repeat one token.
            let distinct = wt.iter().collect::<std::collections::HashSet<_>>().len();
            if gt != wt || err > tol || distinct < 2 {
                failures.push(format!("{name} [{mode}]: tokens equal={} err={err:.2e} (tol {tol:.0e}) distinct={distinct}\n  kooka  {gt:?}\n  mlx-lm {wt:?}", gt == wt));
            } else {
                passed.push(format!("{name}[{mode}] err={err:.1e}"));
            }
        }
    }
    println!(
        "parity passed ({}-token prompt, prefill step {step}): {}",
        prompt.len(),
        passed.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} parity failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tiny_models_match_mlx_lm() {
    let (dir, names) = tiny_models();
    check_parity(&dir, &names, &PROMPT, N, 2048);
}

#[test]
fn moe_and_sliding_window_match_mlx_lm_on_long_prompt() {
    let (dir, names) = tiny_models();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| {
            [
                "qwen3_moe",
                "mixtral",
                "minimax",
                "glm4_moe",
                "gpt_oss",
                "deepseek_v3",
                "mistral_swa",
            ]
            .iter()
            .any(|p| n.starts_with(p))
        })
        .collect();
    assert!(
        names.len() >= 25,
        "MoE / sliding-window tiny models missing: {names:?}"
    );
    check_parity(&dir, &names, &long_prompt(), 32, 2048);
}

/// Chunked prefill through rotating caches: later chunks attend to the trimmed,
/// reordered window of earlier ones (banded masks with an offset).
#[test]
fn sliding_window_chunked_prefill_matches_mlx_lm() {
    let (dir, names) = tiny_models();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| {
            n.starts_with("mistral_swa") || n == "qwen3_moe-q4g64" || n.starts_with("gpt_oss-mxfp4")
        })
        .collect();
    assert!(
        names.len() >= 6,
        "sliding-window tiny models missing: {names:?}"
    );
    check_parity(&dir, &names, &long_prompt(), 24, 7);
}

/// Multi-head latent attention prefilled in chunks: each chunk after the first attends to
/// the latent cached by the others (offset causal mask on the rotated scores).
#[test]
fn latent_attention_chunked_prefill_matches_mlx_lm() {
    let (dir, names) = tiny_models();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("deepseek_v3"))
        .collect();
    assert!(
        names.len() >= 7,
        "deepseek_v3 tiny models missing: {names:?}"
    );
    check_parity(&dir, &names, &long_prompt(), 16, 7);
}

/// Hybrid recurrent models on a 300-token prompt: in one forward it is longer than mlx-lm's
/// 256-position scan step (the SSM state carried from one scan chunk to the next); prefilled
/// in chunks of 100, the conv and SSM states are carried from one forward to the next.
#[test]
fn hybrid_models_match_mlx_lm_past_one_scan_chunk() {
    let (dir, names) = tiny_models();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("nemotron_h") || n.starts_with("qwen3_next"))
        .collect();
    let nemotron = names.iter().filter(|n| n.starts_with("nemotron_h")).count();
    assert!(nemotron >= 2, "nemotron_h tiny models missing: {names:?}");
    let prompt: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % 320).collect();
    // Gated DeltaNet as mlx-lm runs it off Metal: token by token.
    let sequential = [("KOOKA_GDN_SEQUENTIAL", "1")];
    let both = [("native", false), ("f32", true)];
    check_parity_with(&dir, &names, &prompt, 16, 2048, &both, &sequential);
    check_parity_with(&dir, &names, &prompt, 16, 100, &both, &sequential);
}

/// A quantized KV cache (`--kv-bits`) against mlx-lm's `QuantizedKVCache` (generate_step with
/// `kv_bits`): 8 bits after the first step, and 4 bits from position 6 of a prompt prefilled
/// in chunks of 4 (converted mid-prompt, as mlx-lm converts after the step that reaches it).
/// kooka attends to the dequantized cache where mlx-lm multiplies by the packed one: the same
/// values, summed in another order, and mlx-lm rounds the scores and probabilities to the
/// model's dtype between its products. So: every model in float32 (logits within 1e-4), and
/// natively the float16 one (in bfloat16 those roundings flip the tiny random models' tokens).
/// The 4-bit logits must also differ from a full-precision cache's (else the setting did
/// nothing).
#[test]
fn quantized_kv_cache_matches_mlx_lm() {
    let (dir, names) = tiny_models();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| {
            [
                "llama-bf16",
                "llama-q4g64",
                "qwen2-q8g32",
                "llama_tied-f16",
                "mistral-bf16",
            ]
            .contains(&n.as_str())
        })
        .collect();
    assert_eq!(names.len(), 5, "tiny models missing: {names:?}");
    let f16 = ["llama_tied-f16".to_string()];
    for (bits, start) in [("8", "1"), ("4", "6")] {
        let env = [
            ("KOOKA_KV_BITS", bits),
            ("KOOKA_KV_GROUP_SIZE", "32"),
            ("KOOKA_QUANTIZED_KV_START", start),
        ];
        check_parity_with(&dir, &names, &PROMPT, 24, 4, &[("f32", true)], &env);
        check_parity_with(&dir, &f16, &PROMPT, 24, 4, &[("native", false)], &env);
    }
    let prompt = PROMPT.map(|t| t.to_string()).join(",");
    let args = [
        "--prompt-tokens",
        &prompt,
        "--max-tokens",
        "1",
        "--compute-dtype",
        "f32",
    ];
    let model = dir.join("llama-bf16");
    let (_, plain) = kooka(&model, &args);
    let (_, quantized) = kooka_env(
        &model,
        &args,
        &[
            ("KOOKA_KV_BITS", "4"),
            ("KOOKA_KV_GROUP_SIZE", "32"),
            ("KOOKA_QUANTIZED_KV_START", "0"),
        ],
    );
    let moved = plain
        .iter()
        .zip(&quantized)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved > 1e-3,
        "4-bit keys and values changed the logits by only {moved}"
    );
}

/// kooka's chunked Gated DeltaNet prefill (the default from 32 tokens; mlx-lm has none off
/// Metal) against mlx-lm's token-by-token recurrence, in float32: the same greedy tokens and
/// logits within 1e-4. (In bf16 the chunked form's float32 rounding, ~1e-6 relative, is
/// amplified by the tiny random models past bf16's tolerance: q4g32 flips its 5th token.)
#[test]
fn chunked_gated_delta_prefill_matches_mlx_lm_in_f32() {
    let (dir, names) = tiny_models();
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with("qwen3_next"))
        .collect();
    assert!(
        names.len() >= 2,
        "qwen3_next tiny models missing: {names:?}"
    );
    let prompt: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % 320).collect();
    check_parity_with(&dir, &names, &prompt, 16, 2048, &[("f32", true)], &[]);
    check_parity_with(&dir, &names, &prompt, 16, 100, &[("f32", true)], &[]);
}

fn long_prompt() -> Vec<u32> {
    (0..40u32).map(|i| (i * 37 + 11) % 320).collect()
}

#[test]
fn seeded_sampling_repeats() {
    let (dir, _) = tiny_models();
    let model = dir.join("llama-q4g64");
    let run = |seed: &str| {
        let args = [
            "--prompt-tokens",
            "1,2,3,4",
            "--max-tokens",
            "24",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--top-k",
            "50",
            "--seed",
            seed,
        ];
        ids(&kooka(&model, &args).0["tokens"])
    };
    let a = run("42");
    assert_eq!(a, run("42"), "same seed, same tokens");
    assert_ne!(a, run("43"), "another seed should give other tokens");
}

/// The sampling flags of `kooka generate` reach the sampler: a large logit bias forces its
/// token on every step, and a presence or frequency penalty larger than the bias allows it
/// once per context window (20 tokens).
#[test]
fn generate_sampling_flags_take_effect() {
    let (dir, _) = tiny_models();
    let model = dir.join("llama-q4g64");
    let run = |extra: &[&str]| {
        let mut args = vec!["--prompt-tokens", "1,2,3,4", "--max-tokens", "16"];
        args.extend_from_slice(extra);
        ids(&kooka(&model, &args).0["tokens"])
    };
    assert_eq!(run(&["--logit-bias", "77:100"]), vec![77; 16]);
    for flag in ["--presence-penalty", "--frequency-penalty"] {
        let got = run(&["--logit-bias", "77:100", flag, "1000"]);
        assert_eq!(got[0], 77, "{flag}: {got:?}");
        assert!(!got[1..].contains(&77), "{flag}: {got:?}");
    }
}

#[test]
fn smollm2_matches_mlx_lm_through_chat_template() {
    let model = root().join("models/SmolLM2-135M-Instruct");
    if !model.join("config.json").exists() {
        println!(
            "SKIPPED: {} not found (the GGUF importer has not produced it yet)",
            model.display()
        );
        return;
    }
    let prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers and explain why they are prime.",
    ];
    let jobs: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"model": model, "prompt": p, "max_tokens": 64, "f32": true}))
        .collect();
    let refs = reference(&Value::Array(jobs));
    for (p, want) in prompts.iter().zip(&refs) {
        let (got, logits) = kooka(
            &model,
            &[
                "--prompt",
                p,
                "--max-tokens",
                "64",
                "--compute-dtype",
                "f32",
                "--chat",
            ],
        );
        assert_eq!(
            ids(&got["prompt_tokens"]),
            ids(&want["prompt_tokens"]),
            "prompt tokens (chat template) for {p:?}"
        );
        assert_eq!(
            ids(&got["tokens"]),
            ids(&want["tokens"]),
            "greedy tokens for {p:?}"
        );
        let want_logits: Vec<f64> = want["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let err = logits_error(&logits, &want_logits);
        assert!(err <= 1e-4, "logits error {err} for {p:?}");
    }
}
