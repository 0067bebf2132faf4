//! Lets kooka's binaries and tests find libmlx without LD_LIBRARY_PATH: mlx-sys publishes
//! the library folder (`DEP_MLX_LIB_DIR`), and a dependency's link args never reach a
//! dependent's binaries, so the rpath is set here. It is a RUNPATH, so LD_LIBRARY_PATH can
//! still swap in another libmlx (e.g. the CUDA build) at run time.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
