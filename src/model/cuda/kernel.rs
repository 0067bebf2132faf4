//! A custom CUDA kernel through mlx-c's `mlx_fast_cuda_kernel_*` (MLX's `fast::cuda_kernel`):
//! MLX wraps the body in a `__global__` function of the named inputs (each a `const T*`, with
//! `<name>_shape` / `<name>_strides` / `<name>_ndim` when the body uses them) and outputs after
//! a header (here: includes, defines and the constants), compiles it with NVRTC the first time
//! each set of constants is used, and runs it as one node of the lazy graph.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype, Stream};

use crate::dist::mlx_call;
use crate::model::error::{ModelError, Result};

/// A compile-time constant of the kernel body.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Constant {
    Int(i32),
    Type(Dtype),
}

/// One launch: the outputs to allocate, the grid in threads (as MLX counts it: blocks are
/// `grid / group`, rounded up), the threads of a block, the body's constants and the bytes of
/// dynamic shared memory a block gets (`extern __shared__`; fixed by the constants: MLX takes
/// it when it makes the constants' kernel).
pub(crate) struct Launch<'a> {
    pub outputs: Vec<(Vec<i32>, Dtype)>,
    pub grid: [i32; 3],
    pub group: [i32; 3],
    pub constants: &'a [(&'a str, Constant)],
    pub shared_bytes: i32,
}

/// A kernel body and its argument names, made once per thread (MLX's objects are not `Send`).
///
/// Each set of constants gets its own MLX kernel whose header declares them, rather than
/// passing them as MLX's template arguments: MLX formats every template argument into the
/// source on every call (fmt, ~8% of an 8B decode step's host time with qmv's 13 constants).
pub(crate) struct CudaKernel {
    name: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// What MLX gets as the body ([`body_for_mlx`]).
    body: String,
    /// The body's file when `body` includes it, and the body to write there again if the file
    /// is gone when a new variant is made (NVRTC reads it when MLX first runs the variant).
    included: Option<(PathBuf, &'static str)>,
    header: String,
    contiguous: bool,
    variants: RefCell<HashMap<u64, Variant>>,
}

/// An MLX kernel for one set of constants.
struct Variant {
    constants: Vec<(String, Constant)>,
    raw: mlx_sys::mlx_fast_cuda_kernel,
}

fn c_string(s: &str) -> CString {
    CString::new(s).expect("kernel names and sources hold no NUL")
}

/// An mlx-c vector of strings (freed by the caller).
fn strings(items: &[&str]) -> mlx_sys::mlx_vector_string {
    // SAFETY: a new vector; each CString lives through its append, which copies it.
    unsafe {
        let v = mlx_sys::mlx_vector_string_new();
        for s in items {
            let c = c_string(s);
            mlx_sys::mlx_vector_string_append_value(v, c.as_ptr());
        }
        v
    }
}

/// What MLX gets as the body. MLX rebuilds and hashes the whole source on every call of the
/// kernel (host time on each decode step: a host profile of an 8B decode step found ~17% of
/// it there with qmv's 9 KB), so the body goes to a file in the user's cache once and MLX
/// gets a two-line stub that includes it (NVRTC reads it when it compiles); where the file
/// cannot be written, the body without comments and indentation.
/// Also the file, when the stub includes one.
fn body_for_mlx(inputs: &[&str], source: &str) -> (String, Option<PathBuf>) {
    match body_file(source) {
        Ok(path) => match include_stub(inputs, source, &path) {
            Some(stub) => return (stub, Some(path)),
            None => {
                tracing::debug!(path = %path.display(), "CUDA kernel body: path not includable")
            }
        },
        Err(e) => tracing::debug!(error = %e, "CUDA kernel body not written; inline"),
    }
    (compact(source), None)
}

/// A comment with the `<input>_shape` / `_strides` / `_ndim` names the body uses (MLX passes
/// those arguments when it finds the names in the source it gets), then the `#include`.
fn include_stub(inputs: &[&str], source: &str, path: &Path) -> Option<String> {
    let path = path.to_str().filter(|p| !p.contains(['"', '\\', '\n']))?;
    let used: Vec<String> = inputs
        .iter()
        .flat_map(|n| ["_shape", "_strides", "_ndim"].map(|s| format!("{n}{s}")))
        .filter(|name| source.contains(name.as_str()))
        .collect();
    Some(format!("// {}\n#include \"{path}\"\n", used.join(" ")))
}

/// `$XDG_CACHE_HOME/kooka/cuda/body-<hash of the body>.cu` (else under `~/.cache`; kernels of
/// one body share it), with `source` in it: written unless it already holds exactly that,
/// through a rename (ranks of one machine may write it at once).
fn body_file(source: &str) -> std::io::Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| std::io::Error::other("no XDG_CACHE_HOME or HOME"))?;
    body_file_in(&cache.join("kooka").join("cuda"), source)
}

fn body_file_in(dir: &Path, source: &str) -> std::io::Result<PathBuf> {
    let hash = fnv1a(source.as_bytes());
    let path = dir.join(format!("body-{hash:016x}.cu"));
    if std::fs::read(&path).is_ok_and(|held| held == source.as_bytes()) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".body-{hash:016x}-{}.tmp", std::process::id()));
    std::fs::write(&tmp, source)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: a name for a body that stays the same across builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a continued from `h` over `bytes`.
fn fnv1a_from(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The body without comments and indentation, for MLX when it cannot be included.
fn compact(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let code = line.split_once("//").map_or(line, |(code, _)| code).trim();
        if !code.is_empty() {
            out.push_str(code);
            out.push('\n');
        }
    }
    out
}

impl CudaKernel {
    /// `source` is the body, `header` what goes before the function (includes, defines);
    /// with `contiguous`, MLX copies inputs that are not row-contiguous first, else the body
    /// reads them in place (through `_strides`). One name per body and header: MLX names
    /// each variant's module after it.
    pub fn new(
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        source: &'static str,
        header: &str,
        contiguous: bool,
    ) -> Self {
        let (body, file) = body_for_mlx(inputs, source);
        CudaKernel {
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            body,
            included: file.map(|path| (path, source)),
            header: header.into(),
            contiguous,
            variants: RefCell::default(),
        }
    }

    /// The MLX kernel for `constants`, made on first use: the header declares them; its blocks
    /// get `shared_bytes` of dynamic shared memory.
    fn variant(
        &self,
        constants: &[(&str, Constant)],
        shared_bytes: i32,
    ) -> mlx_sys::mlx_fast_cuda_kernel {
        let key = constants_key(constants);
        let same = |v: &Variant| {
            v.constants.len() == constants.len()
                && v.constants
                    .iter()
                    .zip(constants)
                    .all(|((a, x), (b, y))| a == b && x == y)
        };
        let mut variants = self.variants.borrow_mut();
        if let Some(v) = variants.get(&key).filter(|v| same(v)) {
            return v.raw;
        }
        if let Some((path, source)) = self.included.as_ref().filter(|(p, _)| !p.exists()) {
            // Deleted while kooka runs (a cache cleaner): written again, same name.
            if let Err(e) = body_file(source) {
                tracing::warn!(path = %path.display(), error = %e, "CUDA kernel body not rewritten");
            }
        }
        let mut header = self.header.clone();
        for (name, value) in constants {
            header.push_str(&match value {
                Constant::Int(v) => format!("constexpr int {name} = {v};\n"),
                Constant::Type(d) => format!("using {name} = {};\n", cuda_type(*d)),
            });
        }
        let name = format!("{}_{:016x}", self.name, fnv1a(header.as_bytes()));
        let inputs: Vec<&str> = self.inputs.iter().map(String::as_str).collect();
        let outputs: Vec<&str> = self.outputs.iter().map(String::as_str).collect();
        let (n, src, header) = (c_string(&name), c_string(&self.body), c_string(&header));
        let (ins, outs) = (strings(&inputs), strings(&outputs));
        // SAFETY: every argument is live for the call, which copies what it keeps.
        let raw = unsafe {
            let raw = mlx_sys::mlx_fast_cuda_kernel_new(
                n.as_ptr(),
                ins,
                outs,
                src.as_ptr(),
                header.as_ptr(),
                self.contiguous,
                shared_bytes,
            );
            mlx_sys::mlx_vector_string_free(ins);
            mlx_sys::mlx_vector_string_free(outs);
            raw
        };
        let constants = constants.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        // A (never seen) hash collision replaces the other variant, which is then freed.
        if let Some(old) = variants.insert(key, Variant { constants, raw }) {
            // SAFETY: made by `mlx_fast_cuda_kernel_new`, no longer referenced.
            unsafe { mlx_sys::mlx_fast_cuda_kernel_free(old.raw) };
        }
        raw
    }

    /// The kernel's outputs for `inputs` (lazy, on the thread's stream).
    pub fn apply(&self, inputs: &[&Array], launch: &Launch) -> Result<Vec<Array>> {
        let fail = |e: String| ModelError::Mlx(format!("CUDA kernel {}: {e}", self.name));
        let raw = self.variant(launch.constants, launch.shared_bytes);
        let stream = Stream::thread_local_or_default();
        // SAFETY: the config, vectors and names live until freed below; `raw` is live.
        unsafe {
            let config = mlx_sys::mlx_fast_cuda_kernel_config_new();
            let input_vec = mlx_sys::mlx_vector_array_new();
            let mut output_vec = mlx_sys::mlx_vector_array_new();
            let status = mlx_call(|| {
                for (shape, dtype) in &launch.outputs {
                    let s = mlx_sys::mlx_fast_cuda_kernel_config_add_output_arg(
                        config,
                        shape.as_ptr(),
                        shape.len(),
                        *dtype as mlx_sys::mlx_dtype,
                    );
                    if s != 0 {
                        return s;
                    }
                }
                let [g1, g2, g3] = launch.grid;
                let [t1, t2, t3] = launch.group;
                mlx_sys::mlx_fast_cuda_kernel_config_set_grid(config, g1, g2, g3);
                mlx_sys::mlx_fast_cuda_kernel_config_set_thread_group(config, t1, t2, t3);
                for a in inputs {
                    mlx_sys::mlx_vector_array_append_value(input_vec, a.as_ptr());
                }
                mlx_sys::mlx_fast_cuda_kernel_apply(
                    &mut output_vec,
                    raw,
                    input_vec,
                    config,
                    stream.as_ptr(),
                )
            });
            let mut outputs = Vec::new();
            if status.is_ok() {
                for i in 0..mlx_sys::mlx_vector_array_size(output_vec) {
                    let mut a = mlx_sys::mlx_array_new();
                    mlx_sys::mlx_vector_array_get(&mut a, output_vec, i);
                    outputs.push(Array::from_ptr(a));
                }
            }
            mlx_sys::mlx_vector_array_free(input_vec);
            mlx_sys::mlx_vector_array_free(output_vec);
            mlx_sys::mlx_fast_cuda_kernel_config_free(config);
            status.map_err(fail)?;
            if outputs.len() != launch.outputs.len() {
                return Err(fail(format!(
                    "{} outputs, expected {}",
                    outputs.len(),
                    launch.outputs.len()
                )));
            }
            Ok(outputs)
        }
    }
}

impl Drop for CudaKernel {
    fn drop(&mut self) {
        for v in self.variants.get_mut().values() {
            // SAFETY: made by `mlx_fast_cuda_kernel_new`, freed once.
            unsafe { mlx_sys::mlx_fast_cuda_kernel_free(v.raw) };
        }
    }
}

/// A hash of the constants' names and values (the variants' key), without allocating: it runs
/// on every call.
fn constants_key(constants: &[(&str, Constant)]) -> u64 {
    constants.iter().fold(FNV_OFFSET, |h, (name, value)| {
        let v = match value {
            Constant::Int(v) => *v as i64,
            Constant::Type(d) => (1 << 40) | *d as i64,
        };
        let h = fnv1a_from(h, name.as_bytes());
        fnv1a_from(fnv1a_from(h, &[0]), &v.to_le_bytes())
    })
}

/// The CUDA type MLX gives arrays of `dtype` (its `dtype_to_cuda_type`).
fn cuda_type(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::Bool => "bool",
        Dtype::Int8 => "int8_t",
        Dtype::Int16 => "int16_t",
        Dtype::Int32 => "int32_t",
        Dtype::Int64 => "int64_t",
        Dtype::Uint8 => "uint8_t",
        Dtype::Uint16 => "uint16_t",
        Dtype::Uint32 => "uint32_t",
        Dtype::Uint64 => "uint64_t",
        Dtype::Float16 => "__half",
        Dtype::Bfloat16 => "__nv_bfloat16",
        Dtype::Float32 => "float",
        Dtype::Float64 => "double",
        Dtype::Complex64 => "mlx::core::cu::complex64_t",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_names_the_shapes_the_body_uses_and_includes_it() {
        let body = "int m = x_shape[0] * x_ndim;\nint n = w_shape[0];\n";
        let stub = include_stub(&["x", "w", "pos"], body, Path::new("/c/k-1.cu")).unwrap();
        assert_eq!(stub, "// x_shape x_ndim w_shape\n#include \"/c/k-1.cu\"\n");
        assert_eq!(include_stub(&["x"], body, Path::new("/c/a\"b.cu")), None);
    }

    #[test]
    fn each_set_of_constants_has_its_own_key() {
        use Constant::{Int, Type};
        let a = [("T", Type(Dtype::Bfloat16)), ("TM", Int(1))];
        assert_eq!(constants_key(&a), constants_key(&a.clone()));
        for other in [
            [("T", Type(Dtype::Float16)), ("TM", Int(1))],
            [("T", Type(Dtype::Bfloat16)), ("TM", Int(2))],
            [("T", Type(Dtype::Bfloat16)), ("RPW", Int(1))],
        ] {
            assert_ne!(constants_key(&a), constants_key(&other), "{other:?}");
        }
    }

    #[test]
    fn the_body_file_holds_the_body_and_is_named_by_it() {
        let dir = std::env::temp_dir().join(format!("kooka-kernel-test-{}", std::process::id()));
        let a = body_file_in(&dir, "int a;\n").unwrap();
        let b = body_file_in(&dir, "int b;\n").unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "int a;\n");
        // A file changed under that name is written again.
        std::fs::write(&a, "tampered").unwrap();
        assert_eq!(body_file_in(&dir, "int a;\n").unwrap(), a);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "int a;\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compact_drops_comments_and_indentation_and_keeps_lines() {
        let src = "// about\nconst int a = 1;  // one\n\n#pragma unroll\n    for (;;) {}\n";
        assert_eq!(
            compact(src),
            "const int a = 1;\n#pragma unroll\nfor (;;) {}\n"
        );
    }
}
