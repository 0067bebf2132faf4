//! Builds mlx-c against a prebuilt MLX (a PyPI wheel's `mlx/` folder) and generates the
//! bindings. No CMake and no network: `scripts/setup.sh` puts the wheel and the mlx-c
//! sources (from crates.io's `mlx-sys-0.7.0` package) under `third_party/`.
//!
//! Inputs (environment):
//! - `MLX_DIR`: a folder with `include/mlx/` and `lib/libmlx.{so,dylib}`. Default:
//!   `third_party/mlx-cpu/mlx` on Linux, `third_party/mlx-metal/mlx` on macOS.
//! - `MLX_C_DIR`: the mlx-c source tree. Default: `third_party/mlx-c`.
//!
//! Outputs for dependents (`links = "mlx"`): `DEP_MLX_LIB_DIR` (where libmlx lives, for
//! the rpath each binary-building crate sets) and `DEP_MLX_INCLUDE`.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=MLX_C_DIR");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=build.rs");

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest
        .parent()
        .expect("mlx-sys lives inside the workspace");
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let apple = target_os == "macos" || target_os == "ios";

    let default_mlx = if apple {
        "third_party/mlx-metal/mlx"
    } else {
        "third_party/mlx-cpu/mlx"
    };
    let mlx_dir = env::var_os("MLX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(default_mlx));
    let mlx_c_dir = env::var_os("MLX_C_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("third_party/mlx-c"));

    let mlx_include = mlx_dir.join("include");
    let mlx_lib = mlx_dir.join("lib");
    require(&mlx_include.join("mlx/mlx.h"), "MLX headers", "MLX_DIR");
    require(&mlx_c_dir.join("mlx/c/mlx.h"), "mlx-c sources", "MLX_C_DIR");
    let lib_name = if apple { "libmlx.dylib" } else { "libmlx.so" };
    require(&mlx_lib.join(lib_name), "the MLX library", "MLX_DIR");

    let compat = manifest.join("include");
    compile_mlx_c(&mlx_c_dir, &mlx_include, &compat);

    println!("cargo:rustc-link-search=native={}", mlx_lib.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    // cc links the C++ runtime (libstdc++ on Linux, libc++ on Apple). The prebuilt
    // libmlx.dylib already links Metal and Foundation itself, so no frameworks here.
    println!("cargo:lib_dir={}", mlx_lib.display());
    println!("cargo:include={}", mlx_include.display());

    generate_bindings(&mlx_c_dir, &compat);
}

fn require(path: &Path, what: &str, var: &str) {
    if !path.exists() {
        panic!(
            "mlx-sys: {what} not found at {}.\n\
             Run `scripts/setup.sh` first, or point {var} at another MLX build.",
            path.display()
        );
    }
}

fn compile_mlx_c(mlx_c_dir: &Path, mlx_include: &Path, compat: &Path) {
    let sources = list(&mlx_c_dir.join("mlx/c"), "cpp");
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(mlx_c_dir)
        .include(mlx_include)
        .flag("-include")
        .flag(compat.join("kooka_format_compat.h").to_str().unwrap())
        .flag("-include")
        .flag(compat.join("kooka_mlx_half.h").to_str().unwrap())
        .warnings(false)
        .files(&sources);
    build.compile("mlxc");
}

fn generate_bindings(mlx_c_dir: &Path, compat: &Path) {
    let headers = list(&mlx_c_dir.join("mlx/c"), "h");
    let builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("rust target"))
        .clang_arg(format!("-I{}", mlx_c_dir.display()))
        .clang_arg("-include")
        .clang_arg(compat.join("kooka_mlx_half.h").to_string_lossy())
        // bindgen's `c_ulong` sizes trip rustc's suspicious_runtime_symbol_definitions lint.
        .blocklist_function("malloc")
        .blocklist_function("realloc")
        // mlx-rs expects bindgen's half newtype, which bindgen only emits for a native
        // half type that clang 14 lacks on x86_64: declare it by hand.
        .blocklist_type("float16_t")
        .raw_line(FLOAT16_NEWTYPE);
    let bindings = headers
        .iter()
        .fold(builder, |b, h| b.header(h.to_string_lossy()))
        .generate()
        .expect("mlx-sys: bindgen could not generate the mlx-c bindings");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings
        .write_to_file(out)
        .expect("mlx-sys: could not write bindings.rs");
}

const FLOAT16_NEWTYPE: &str = "
#[repr(transparent)]
#[derive(Debug, Default, Copy, Clone, Hash, PartialEq, Eq)]
pub struct __BindgenFloat16(pub u16);
pub type float16_t = __BindgenFloat16;
";

fn list(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("mlx-sys: cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension() == Some(OsStr::new(extension)))
        .collect();
    files.sort();
    files
}
