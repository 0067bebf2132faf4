//! The GPU's compute capability and shared memory, from the CUDA driver MLX has already
//! loaded: some kernels (the tensor-core matvec's `mma.m16n8k16` on 16-bit floats) need 8.0
//! or later, and its ring of loads sizes itself to the shared memory.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// CUDA's `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` / `_MINOR`,
/// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR` and
/// `CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN`.
const MAJOR: c_int = 75;
const MINOR: c_int = 76;
const SHARED_PER_SM: c_int = 81;
const SHARED_PER_BLOCK: c_int = 97;

/// What kooka's kernels ask of device 0 (the device MLX uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub major: i32,
    pub minor: i32,
    /// Bytes of shared memory a streaming multiprocessor has, and the most a block may take
    /// (opting in past 48 KiB).
    pub shared_per_sm: i32,
    pub shared_per_block: i32,
}

/// Device 0, or None where the CUDA driver cannot be loaded or answer (no GPU; then no
/// kernel that needs it is chosen). Asked once.
pub fn gpu() -> Option<Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    *GPU.get_or_init(|| {
        let gpu = query();
        tracing::debug!(?gpu, "CUDA device");
        gpu
    })
}

/// Device 0's compute capability ([`gpu`]).
pub fn compute_capability() -> Option<(i32, i32)> {
    gpu().map(|g| (g.major, g.minor))
}

fn query() -> Option<Gpu> {
    type Init = unsafe extern "C" fn(u32) -> c_int;
    type DeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type Attribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    let symbol = |lib: *mut c_void, name: &CStr| {
        // SAFETY: a symbol looked up in a library handle that stays open (never closed).
        let f = unsafe { libc::dlsym(lib, name.as_ptr() as *const c_char) };
        (!f.is_null()).then_some(f)
    };
    // SAFETY: dlopen of the driver library by name; RTLD_NOLOAD is not used, so this opens it
    // if MLX has not (the handle is kept: the driver stays loaded for the process anyway).
    let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if lib.is_null() {
        return None;
    }
    // SAFETY: the driver API's documented signatures (cuInit, cuDeviceGet,
    // cuDeviceGetAttribute); each returns CUDA_SUCCESS (0) or an error code.
    unsafe {
        let init: Init = std::mem::transmute(symbol(lib, c"cuInit")?);
        let device_get: DeviceGet = std::mem::transmute(symbol(lib, c"cuDeviceGet")?);
        let attribute: Attribute = std::mem::transmute(symbol(lib, c"cuDeviceGetAttribute")?);
        if init(0) != 0 {
            return None;
        }
        let mut device = 0;
        if device_get(&mut device, 0) != 0 {
            return None;
        }
        let get = |what| {
            let mut value = 0;
            (attribute(&mut value, what, device) == 0).then_some(value)
        };
        // (shared memory unknown: 0, so nothing that sizes itself to it runs)
        Some(Gpu {
            major: get(MAJOR)?,
            minor: get(MINOR)?,
            shared_per_sm: get(SHARED_PER_SM).unwrap_or(0),
            shared_per_block: get(SHARED_PER_BLOCK).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compute_capability_is_a_real_one_or_none() {
        // None without a CUDA driver (the CPU machine); else a capability CUDA has shipped.
        if let Some(g) = gpu() {
            assert!((3..=20).contains(&g.major) && (0..10).contains(&g.minor));
            assert!(g.shared_per_sm >= g.shared_per_block);
        }
    }
}
