//! Integration tests for `kooka convert --from-gguf`: runs the real binary on the GGUF files
//! under `third_party/` (fetched by `scripts/setup.sh --tests`), checks the folder against
//! the original blocks through MLX's own dequantize, runs mlx-lm on the result, checks the
//! tokenizer against llama.cpp's golden vectors and that damaged files fail cleanly.
//! The Qwen2.5 end-to-end test only runs with KOOKA_SLOW_TESTS=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kooka::convert::gguf::GgufFile;
use kooka::convert::{permute, quant, tokenizer_json_from_gguf};
use mlx_rs::Array;

const SMOL: &str = "third_party/gguf/SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str = "third_party/gguf/Qwen2.5-Coder-0.5B-Instruct.gguf";
const PYTHON: &str = "third_party/venv/bin/python";
const FRANCE: &str = "What is the capital of France?";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A test data path that must exist.
fn data(rel: &str) -> PathBuf {
    let p = root().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh --tests",
        p.display()
    );
    p
}

/// A fresh, unique (not yet existing) directory path under target/.
fn temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = root().join("target/test-tmp");
    std::fs::create_dir_all(&base).expect("create target/test-tmp");
    base.join(format!("{tag}-{}-{nanos}", std::process::id()))
}

fn kooka(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kooka"))
        .args(args)
        .output()
        .expect("run kooka")
}

fn convert(gguf: &Path, out: &Path, extra: &[&str]) -> String {
    let start = Instant::now();
    let mut args = vec![
        "convert",
        "--from-gguf",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = kooka(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "kooka convert failed: {stderr}");
    eprintln!(
        "converted {} in {:.1}s: {stdout}",
        gguf.display(),
        start.elapsed().as_secs_f64()
    );
    stdout.into_owned()
}

/// The SmolLM2 folder, converted once for all tests of this binary.
fn smol_folder() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = temp_dir("smol");
        let summary = convert(&data(SMOL), &out, &[]);
        assert!(
            summary.contains("llama") && summary.contains("repacked"),
            "{summary}"
        );
        out
    })
}

/// Called by each of the SMOL_USERS tests that use the shared folder when it passes; the
/// last one removes it (a failing test leaves it behind for inspection).
const SMOL_USERS: usize = 2;
fn done_with_smol_folder() {
    static DONE: AtomicUsize = AtomicUsize::new(0);
    if DONE.fetch_add(1, Ordering::SeqCst) + 1 == SMOL_USERS {
        std::fs::remove_dir_all(smol_folder()).ok();
    }
}

fn python_greedy(model: &Path, prompt: &str) -> String {
    let o = Command::new(data(PYTHON))
        .arg(root().join("tests/python/mlx_lm_greedy.py"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            prompt,
            "--max-tokens",
            "20",
        ])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "mlx-lm failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("parse json")
}

#[test]
fn smollm2_folder_matches_gguf_blocks_through_mlx() {
    let gguf = GgufFile::open(&data(SMOL)).expect("open gguf");
    let dir = smol_folder();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let cfg = json(&dir.join("config.json"));
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(
        (
            cfg["num_attention_heads"].as_u64(),
            cfg["num_key_value_heads"].as_u64()
        ),
        (Some(9), Some(3))
    );
    assert_eq!(cfg["tie_word_embeddings"], true);
    assert_eq!(cfg["quantization"]["bits"], 4);
    assert_eq!(cfg["quantization"]["model.embed_tokens"]["bits"], 8);
    assert_eq!(cfg["quantization_config"], cfg["quantization"]);
    let tc = json(&dir.join("tokenizer_config.json"));
    assert!(tc["chat_template"]
        .as_str()
        .is_some_and(|t| t.contains("im_start")));

    let weights =
        Array::load_safetensors(dir.join("model.safetensors")).expect("mlx loads safetensors");
    assert!(!weights.contains_key("lm_head.weight"));
    let cases = [
        (
            "blk.0.attn_q.weight",
            "model.layers.0.self_attn.q_proj",
            4,
            Some(9),
        ),
        (
            "blk.0.attn_k.weight",
            "model.layers.0.self_attn.k_proj",
            4,
            Some(3),
        ),
        (
            "blk.17.attn_k.weight",
            "model.layers.17.self_attn.k_proj",
            4,
            Some(3),
        ),
        (
            "blk.29.attn_v.weight",
            "model.layers.29.self_attn.v_proj",
            4,
            None,
        ),
        (
            "blk.3.ffn_down.weight",
            "model.layers.3.mlp.down_proj",
            4,
            None,
        ),
        ("token_embd.weight", "model.embed_tokens", 8, None),
    ];
    for (gname, module, bits, heads) in cases {
        let t = gguf.tensor(gname).expect(gname);
        let (rows, cols) = t.rows_cols();
        let (rows, cols) = (rows as usize, cols as usize);
        // Reference: ggml's block formula in f32, rows put back in HF order.
        let mut want = vec![0f32; rows * cols];
        quant::dequantize(t.ty, gguf.tensor_data(t), &mut want);
        if let Some(n) = heads {
            want = permute::unpermute_rows(&want, rows, n);
        }
        let get = |s: &str| {
            weights
                .get(&format!("{module}.{s}"))
                .unwrap_or_else(|| panic!("{module}.{s} missing"))
        };
        let (w, s, b) = (get("weight"), get("scales"), get("biases"));
        assert_eq!(
            w.shape(),
            &[rows as i32, (cols * bits / 32) as i32],
            "{module}"
        );
        assert_eq!(s.shape(), &[rows as i32, (cols / 32) as i32], "{module}");
        // In f32 (scales/biases widened exactly), MLX's scale*q + bias equals ggml's d*q + m.
        let s32 = s.as_type::<f32>().unwrap();
        let b32 = b.as_type::<f32>().unwrap();
        let got = mlx_rs::ops::dequantize(w, &s32, &b32, 32, bits as i32).unwrap();
        got.eval().unwrap();
        let got: &[f32] = got.as_slice();
        assert_eq!(got.len(), want.len(), "{module}");
        let worst = (0..want.len())
            .map(|i| (want[i] - got[i]).abs())
            .fold(0f32, f32::max);
        if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
            panic!(
                "{module}: element {i} (row {}) ggml {} vs mlx {} (max abs diff {worst})",
                i / cols,
                want[i],
                got[i]
            );
        }
        // In f16 (what inference uses) MLX rounds s*q and the sum separately, so only a
        // rounding-sized difference from the exact value is allowed.
        let got16 = mlx_rs::ops::dequantize(w, s, b, 32, bits as i32)
            .unwrap()
            .as_type::<f32>()
            .unwrap();
        got16.eval().unwrap();
        let biases: &[f32] = b32.as_slice();
        for (i, (g, w)) in got16.as_slice::<f32>().iter().zip(&want).enumerate() {
            let tol = (w.abs() + biases[i / 32].abs()) * 2f32.powi(-10) + 2f32.powi(-24);
            assert!(
                (g - w).abs() <= tol,
                "{module}: f16 element {i}: mlx {g} vs exact {w}"
            );
        }
        eprintln!(
            "{module}: {bits}-bit, {} values identical to ggml's (f32), f16 within rounding",
            want.len()
        );
    }
    done_with_smol_folder();
}

#[test]
fn smollm2_mlx_lm_answers_paris() {
    let text = python_greedy(smol_folder(), FRANCE);
    eprintln!("SmolLM2 (mlx-lm, greedy): {text:?}");
    assert!(text.contains("Paris"), "answer without Paris: {text:?}");
    done_with_smol_folder();
}

/// Cases of a llama.cpp vocab test: (.inp cases, .out expected ids).
fn golden(name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(data(&format!(
        "third_party/llama.cpp/ggml-vocab-{name}.gguf.inp"
    )))
    .unwrap();
    let out = std::fs::read_to_string(data(&format!(
        "third_party/llama.cpp/ggml-vocab-{name}.gguf.out"
    )))
    .unwrap();
    let mut cases: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if cases.last() == Some(&"") {
        cases.pop(); // the file ends with a separator
    }
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|x| x.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(
        cases.len(),
        expected.len(),
        "{name}: .inp/.out case counts differ"
    );
    cases.into_iter().map(String::from).zip(expected).collect()
}

#[test]
fn tokenizer_matches_llama_cpp_golden_vectors() {
    for name in ["llama-bpe", "qwen2", "gpt-2"] {
        let doc = tokenizer_json_from_gguf(&data(&format!(
            "third_party/llama.cpp/ggml-vocab-{name}.gguf"
        )))
        .expect(name);
        let tok =
            tokenizers::Tokenizer::from_str(&doc.to_string()).expect("tokenizers loads our json");
        let cases = golden(name);
        let mut failures = Vec::new();
        for (text, want) in &cases {
            let got = tok
                .encode(text.as_str(), false)
                .expect("encode")
                .get_ids()
                .to_vec();
            if &got != want {
                failures.push(format!("{text:?}: want {want:?} got {got:?}"));
            }
        }
        eprintln!(
            "{name}: {}/{} golden cases match",
            cases.len() - failures.len(),
            cases.len()
        );
        assert!(
            failures.is_empty(),
            "{name}: {} mismatches:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn truncated_gguf_fails_cleanly() {
    let full = std::fs::read(data(SMOL)).unwrap();
    let dir = temp_dir("trunc");
    std::fs::create_dir_all(&dir).unwrap();
    for n in [
        0,
        3,
        11,
        24,
        1000,
        200_000,
        1_700_000,
        full.len() / 2,
        full.len() - 1,
    ] {
        let cut = dir.join(format!("cut-{n}.gguf"));
        std::fs::write(&cut, &full[..n]).unwrap();
        let out = dir.join(format!("out-{n}"));
        let o = kooka(&[
            "convert",
            "--from-gguf",
            cut.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "cut at {n} converted");
        assert!(
            !stderr.contains("panicked"),
            "cut at {n} panicked: {stderr}"
        );
        assert!(
            stderr.contains("truncated") || stderr.contains("malformed"),
            "cut at {n}: unclear error: {stderr}"
        );
        assert!(
            !out.exists(),
            "cut at {n}: output folder created for a bad input"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn refuses_non_empty_out_dir_without_force() {
    let out = temp_dir("nonempty");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let o = kooka(&[
        "convert",
        "--from-gguf",
        data(SMOL).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn rejects_bit_width_mlx_lacks() {
    let out = temp_dir("bits7");
    let o = kooka(&[
        "convert",
        "--from-gguf",
        data(SMOL).to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--requantize",
        "7",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("2, 3, 4, 5, 6 or 8"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn qwen25_converts_and_answers_slow() {
    if std::env::var("KOOKA_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("SKIPPED qwen25_converts_and_answers_slow: set KOOKA_SLOW_TESTS=1 to run it");
        return;
    }
    let out = temp_dir("qwen");
    let summary = convert(&data(QWEN), &out, &["--requantize", "8"]);
    assert!(summary.contains("qwen2"), "{summary}");
    let cfg = json(&out.join("config.json"));
    assert_eq!(
        (
            cfg["model_type"].as_str(),
            cfg["quantization"]["bits"].as_u64()
        ),
        (Some("qwen2"), Some(8))
    );
    let text = python_greedy(&out, FRANCE);
    eprintln!("Qwen2.5-Coder (mlx-lm, greedy, --requantize 8): {text:?}");
    assert!(text.contains("Paris"), "answer without Paris: {text:?}");
    std::fs::remove_dir_all(&out).ok();
}
