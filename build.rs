//! Lets kooka's binaries and tests find libmlx without LD_LIBRARY_PATH: mlx-sys publishes
//! the library folder (`DEP_MLX_LIB_DIR`), and a dependency's link args never reach a
//! dependent's binaries, so the rpath is set here. It is a RUNPATH, so LD_LIBRARY_PATH can
//! still swap in another libmlx (e.g. the CUDA build) at run time.
//!
//! On Linux it also puts `cblas_sgemm` (src/openblas.rs) into every executable's dynamic
//! symbol table, so that libmlx's BLAS calls bind to it before the BLAS library's own.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--undefined=cblas_sgemm");
        println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=cblas_sgemm");
    }
}
