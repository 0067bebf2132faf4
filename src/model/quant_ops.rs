//! MLX's quantized ops with a quantization mode: mlx-rs 0.33 always passes `"affine"`, and
//! gpt-oss checkpoints are `"mxfp4"` (4-bit floats, one shared power-of-two scale per 32
//! values, no biases). These call mlx-c directly with the matrix's mode; for affine packing
//! they make the same call mlx-rs makes, so results are unchanged.

use std::ffi::CString;

use mlx_rs::{Array, Stream};
use mlx_sys as sys;

use super::config::QuantSpec;
use super::error::{ModelError, Result};
use crate::dist::mlx_call;

fn int(v: i32) -> sys::mlx_optional_int {
    sys::mlx_optional_int {
        value: v,
        has_value: true,
    }
}

/// Runs one mlx-c op that writes a fresh array; `op` names it in errors.
fn array_op(
    op: &str,
    f: impl FnOnce(*mut sys::mlx_array, sys::mlx_stream) -> i32,
) -> Result<Array> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: a fresh empty handle that the op fills; `Array` then owns it.
    let mut res = unsafe { sys::mlx_array_new() };
    match mlx_call(|| f(&mut res, stream.as_ptr())) {
        Ok(()) => Ok(unsafe { Array::from_ptr(res) }),
        Err(message) => {
            unsafe { sys::mlx_array_free(res) };
            Err(ModelError::Mlx(format!("{op}: {message}")))
        }
    }
}

/// A null array handle, for optional inputs left out.
fn null() -> sys::mlx_array {
    // SAFETY: an empty handle, which mlx-c reads as "absent".
    unsafe { sys::mlx_array_new() }
}

fn mode(spec: &QuantSpec) -> CString {
    CString::new(spec.mode.name()).expect("mode names have no NUL")
}

/// `x @ W.T` for packed `w` (`x @ W` when not `transpose`).
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    spec: &QuantSpec,
    transpose: bool,
) -> Result<Array> {
    let mode = mode(spec);
    let biases_ptr = biases.map(Array::as_ptr).unwrap_or_else(null);
    let out = array_op("quantized_matmul", |res, s| unsafe {
        sys::mlx_quantized_matmul(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases_ptr,
            transpose,
            int(spec.group_size),
            int(spec.bits),
            mode.as_ptr(),
            s,
        )
    });
    if biases.is_none() {
        unsafe { sys::mlx_array_free(biases_ptr) };
    }
    out
}

/// The float matrix of packed `w` (the scales' dtype).
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    spec: &QuantSpec,
) -> Result<Array> {
    let mode = mode(spec);
    let (biases_ptr, global) = (biases.map(Array::as_ptr).unwrap_or_else(null), null());
    let no_dtype = sys::mlx_optional_dtype {
        value: sys::mlx_dtype__MLX_FLOAT32,
        has_value: false,
    };
    let out = array_op("dequantize", |res, s| unsafe {
        sys::mlx_dequantize(
            res,
            w.as_ptr(),
            scales.as_ptr(),
            biases_ptr,
            int(spec.group_size),
            int(spec.bits),
            mode.as_ptr(),
            global,
            no_dtype,
            s,
        )
    });
    unsafe {
        if biases.is_none() {
            sys::mlx_array_free(biases_ptr);
        }
        sys::mlx_array_free(global);
    }
    out
}

/// `x @ W[idx].T` over stacked packed experts (`gather_qmm` with `rhs_indices`).
pub fn gather_qmm(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    idx: &Array,
    spec: &QuantSpec,
    sorted: bool,
) -> Result<Array> {
    let mode = mode(spec);
    let (biases_ptr, lhs) = (biases.map(Array::as_ptr).unwrap_or_else(null), null());
    let out = array_op("gather_qmm", |res, s| unsafe {
        sys::mlx_gather_qmm(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases_ptr,
            lhs,
            idx.as_ptr(),
            true,
            int(spec.group_size),
            int(spec.bits),
            mode.as_ptr(),
            sorted,
            s,
        )
    });
    unsafe {
        if biases.is_none() {
            sys::mlx_array_free(biases_ptr);
        }
        sys::mlx_array_free(lhs);
    }
    out
}
