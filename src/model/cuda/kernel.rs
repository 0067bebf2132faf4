//! A custom CUDA kernel through mlx-c's `mlx_fast_cuda_kernel_*` (MLX's `fast::cuda_kernel`):
//! MLX wraps the body in a `__global__` function of the named inputs (each a `const T*`, with
//! `<name>_shape` / `<name>_strides` when the body uses them) and outputs, compiles it with
//! NVRTC the first time each set of template constants is used, and runs it as one node of
//! the lazy graph.

use std::ffi::CString;

use mlx_rs::{Array, Dtype, Stream};

use crate::dist::mlx_call;
use crate::model::error::{ModelError, Result};

/// A compile-time constant of the kernel body.
pub(crate) enum Constant {
    Int(i32),
    Type(Dtype),
}

/// One launch: the outputs to allocate, the grid in threads (as MLX counts it: blocks are
/// `grid / group`, rounded up), the threads of a block and the body's constants.
pub(crate) struct Launch<'a> {
    pub outputs: Vec<(Vec<i32>, Dtype)>,
    pub grid: [i32; 3],
    pub group: [i32; 3],
    pub constants: &'a [(&'a str, Constant)],
}

/// A kernel body and its argument names, made once per thread (the MLX object is not `Send`).
pub(crate) struct CudaKernel {
    raw: mlx_sys::mlx_fast_cuda_kernel,
    name: String,
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

/// The body without comments and indentation: MLX rebuilds and hashes the whole source on
/// every call of the kernel (host time on each decode step), so it is kept short.
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
    /// reads them in place (through `_strides`). MLX caches the compiled kernel by `name`:
    /// one name per body and header.
    pub fn new(
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        source: &str,
        header: &str,
        contiguous: bool,
    ) -> Self {
        let (n, src, header) = (c_string(name), c_string(&compact(source)), c_string(header));
        let (ins, outs) = (strings(inputs), strings(outputs));
        // SAFETY: every argument is live for the call, which copies what it keeps.
        let raw = unsafe {
            let raw = mlx_sys::mlx_fast_cuda_kernel_new(
                n.as_ptr(),
                ins,
                outs,
                src.as_ptr(),
                header.as_ptr(),
                contiguous,
                0,
            );
            mlx_sys::mlx_vector_string_free(ins);
            mlx_sys::mlx_vector_string_free(outs);
            raw
        };
        CudaKernel {
            raw,
            name: name.into(),
        }
    }

    /// The kernel's outputs for `inputs` (lazy, on the thread's stream).
    pub fn apply(&self, inputs: &[&Array], launch: &Launch) -> Result<Vec<Array>> {
        let fail = |e: String| ModelError::Mlx(format!("CUDA kernel {}: {e}", self.name));
        let names: Vec<CString> = launch.constants.iter().map(|(n, _)| c_string(n)).collect();
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
                for ((_, value), name) in launch.constants.iter().zip(&names) {
                    match value {
                        Constant::Int(v) => {
                            mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(
                                config,
                                name.as_ptr(),
                                *v,
                            )
                        }
                        Constant::Type(d) => {
                            mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_dtype(
                                config,
                                name.as_ptr(),
                                *d as mlx_sys::mlx_dtype,
                            )
                        }
                    };
                }
                for a in inputs {
                    mlx_sys::mlx_vector_array_append_value(input_vec, a.as_ptr());
                }
                mlx_sys::mlx_fast_cuda_kernel_apply(
                    &mut output_vec,
                    self.raw,
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
        // SAFETY: made by `mlx_fast_cuda_kernel_new`, freed once.
        unsafe { mlx_sys::mlx_fast_cuda_kernel_free(self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn compact_drops_comments_and_indentation_and_keeps_lines() {
        let src = "// about\nconst int a = 1;  // one\n\n#pragma unroll\n    for (;;) {}\n";
        assert_eq!(
            compact(src),
            "const int a = 1;\n#pragma unroll\nfor (;;) {}\n"
        );
    }
}
