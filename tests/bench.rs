//! `kooka bench` through the real binary: the report's shape, and (Linux x86_64) that the
//! CPU backend runs OpenBLAS kernels that use the CPU's AVX2/AVX-512 even when OpenBLAS's
//! own detection falls back to older ones (src/openblas.rs).

mod common;

use std::process::Command;

use common::tiny_model;

fn bench(env_coretype: Option<&str>) -> serde_json::Value {
    let model = tiny_model("llama-q4g64");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kooka"));
    cmd.args(["bench", "--model"]).arg(&model).args([
        "--prompt-tokens",
        "16",
        "--gen-tokens",
        "4",
        "--reps",
        "1",
        "--json",
    ]);
    match env_coretype {
        Some(core) => cmd.env("OPENBLAS_CORETYPE", core),
        None => cmd.env_remove("OPENBLAS_CORETYPE"),
    };
    let out = cmd.output().expect("running kooka bench");
    assert!(
        out.status.success(),
        "kooka bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON line")
}

#[test]
fn bench_reports_speeds() {
    let report = bench(None);
    for key in ["prefill_tps", "decode_tps"] {
        let runs = report[key].as_array().expect(key);
        assert_eq!(runs.len(), 1, "{report}");
        assert!(runs[0].as_f64().unwrap() > 0.0, "{report}");
    }
    assert_eq!(report["prompt_tokens"], 16);
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn openblas_runs_the_cpus_vector_kernels() {
    let core = |r: &serde_json::Value| r["blas_kernels"].as_str().map(str::to_lowercase);
    if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    {
        println!("SKIPPED: this CPU has no AVX2/FMA");
        return;
    }
    let chosen = core(&bench(None)).expect("an OpenBLAS is loaded");
    assert!(
        ["haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"].contains(&chosen.as_str()),
        "OpenBLAS runs {chosen} kernels on an AVX2 CPU"
    );
    // A setting of the user's own is kept as it is.
    assert_eq!(core(&bench(Some("Haswell"))).as_deref(), Some("haswell"));
}
