//! kooka's CUDA kernel bodies (`src/model/cuda/*.cu`) compile: `scripts/check_cuda_kernels.py`
//! wraps each as MLX's `fast::cuda_kernel` does and compiles it with NVRTC for every type and a
//! spread of constants (no GPU needed; NVRTC comes from `scripts/setup.sh --tests`). Their
//! results are checked against MLX on a GPU by `examples/cuda_kernels/`.

mod common;

#[cfg(target_os = "linux")]
#[test]
fn cuda_kernels_compile_with_nvrtc() {
    let nvrtc = common::root().join("third_party/nvrtc");
    assert!(
        nvrtc.join(".done").exists(),
        "{} is missing: run scripts/setup.sh --tests",
        nvrtc.display()
    );
    let out = std::process::Command::new("python3")
        .arg(common::root().join("scripts/check_cuda_kernels.py"))
        .arg("--nvrtc")
        .arg(&nvrtc)
        .output()
        .expect("python3 runs");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("all kernels compile"), "{log}");
}
