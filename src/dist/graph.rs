//! Graph plumbing that collectives need and mlx-rs 0.33 lacks: [`depends`], which ties a
//! send (or any array) to arrays the caller will evaluate anyway.
//!
//! MLX only runs what the evaluated arrays depend on. A pipeline rank's `send` has no
//! consumer on that rank, so without an explicit dependency it would never run and the
//! next rank would wait in its `recv` forever.

use mlx_rs::Array;
use mlx_sys as sys;

use super::error_capture::call;
use super::{DistError, Result};

/// Owns an `mlx_vector_array` for the duration of one call.
struct VectorArray(sys::mlx_vector_array);

impl VectorArray {
    fn new(arrays: &[&Array]) -> Self {
        let raw: Vec<sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: `raw` holds valid handles; mlx-c copies them (taking its own references).
        VectorArray(unsafe { sys::mlx_vector_array_new_data(raw.as_ptr(), raw.len()) })
    }

    fn empty() -> Self {
        // SAFETY: a fresh empty vector, freed in Drop.
        VectorArray(unsafe { sys::mlx_vector_array_new() })
    }

    fn into_arrays(self) -> Result<Vec<Array>> {
        // SAFETY: `self.0` is a valid vector.
        let n = unsafe { sys::mlx_vector_array_size(self.0) };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            // SAFETY: a fresh handle that mlx-c fills with a new reference to element `i`.
            let mut a = unsafe { sys::mlx_array_new() };
            if let Err(message) = call(|| unsafe { sys::mlx_vector_array_get(&mut a, self.0, i) }) {
                unsafe { sys::mlx_array_free(a) };
                return Err(DistError::Op {
                    op: "depends",
                    message,
                });
            }
            // SAFETY: `a` now owns its reference; `Array` frees it.
            out.push(unsafe { Array::from_ptr(a) });
        }
        Ok(out)
    }
}

impl Drop for VectorArray {
    fn drop(&mut self) {
        // SAFETY: created by mlx-c and freed once.
        unsafe { sys::mlx_vector_array_free(self.0) };
    }
}

/// `mx.depends(inputs, dependencies)`: arrays equal to `inputs` (sharing their buffers, no
/// copy) whose evaluation first evaluates every array of `dependencies`.
pub fn depends(inputs: &[&Array], dependencies: &[&Array]) -> Result<Vec<Array>> {
    let ins = VectorArray::new(inputs);
    let deps = VectorArray::new(dependencies);
    let mut res = VectorArray::empty();
    call(|| unsafe { sys::mlx_depends(&mut res.0, ins.0, deps.0) }).map_err(|message| {
        DistError::Op {
            op: "depends",
            message,
        }
    })?;
    res.into_arrays()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_keeps_values_and_evaluates_the_dependency() {
        let x = Array::from_slice(&[1.0f32, 2.0], &[2]);
        let dep = Array::from_slice(&[5.0f32], &[1])
            .multiply(Array::from_f32(2.0))
            .unwrap();
        let out = depends(&[&x], &[&dep]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_slice::<f32>(), &[1.0, 2.0]);
    }
}
