//! The GPU's compute capability, from the CUDA driver MLX has already loaded: some kernels
//! (the tensor-core matvec's `mma.m16n8k16` on 16-bit floats) need 8.0 or later.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// CUDA's `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` / `_MINOR`.
const MAJOR: c_int = 75;
const MINOR: c_int = 76;

/// Device 0's compute capability (the device MLX uses), or None where the CUDA driver cannot
/// be loaded or answer (no GPU; then no kernel that needs it is chosen). Asked once.
pub fn compute_capability() -> Option<(i32, i32)> {
    static CC: OnceLock<Option<(i32, i32)>> = OnceLock::new();
    *CC.get_or_init(|| {
        let cc = query();
        tracing::debug!(?cc, "CUDA compute capability");
        cc
    })
}

fn query() -> Option<(i32, i32)> {
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
        let (mut major, mut minor) = (0, 0);
        if attribute(&mut major, MAJOR, device) != 0 || attribute(&mut minor, MINOR, device) != 0 {
            return None;
        }
        Some((major, minor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compute_capability_is_a_real_one_or_none() {
        // None without a CUDA driver (the CPU machine); else a capability CUDA has shipped.
        if let Some((major, minor)) = compute_capability() {
            assert!((3..=20).contains(&major) && (0..10).contains(&minor));
        }
    }
}
