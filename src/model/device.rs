//! The device MLX computes on, as MLX describes it (`mlx_device_info_get`): its name and
//! memory, for the startup log and the memory defaults (the KV budget, kept weight copies).

use std::ffi::{CStr, CString};

/// What MLX reports about its default device. Keys vary by backend: CUDA reports
/// `total_memory` and `free_memory`, Metal `memory_size` (unified memory); absent keys are
/// `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: Option<String>,
    /// The device's own memory in bytes.
    pub total_memory: Option<usize>,
    /// Unused device memory in bytes when asked (CUDA only).
    pub free_memory: Option<usize>,
}

impl DeviceInfo {
    /// MLX's description of its default device (empty when it cannot be read).
    pub fn of_default_device() -> DeviceInfo {
        // SAFETY: each mlx-c object made here is freed here; strings are copied out before
        // their owner is freed.
        unsafe {
            let mut dev = mlx_sys::mlx_device_new();
            let mut info = mlx_sys::mlx_device_info_new();
            let mut out = DeviceInfo::default();
            if mlx_sys::mlx_get_default_device(&mut dev) == 0
                && mlx_sys::mlx_device_info_get(&mut info, dev) == 0
            {
                out.name = string(info, "device_name");
                out.total_memory = size(info, "total_memory").or_else(|| size(info, "memory_size"));
                out.free_memory = size(info, "free_memory");
            }
            mlx_sys::mlx_device_info_free(info);
            mlx_sys::mlx_device_free(dev);
            out
        }
    }
}

/// `key`'s number, if `info` has one.
unsafe fn size(info: mlx_sys::mlx_device_info, key: &str) -> Option<usize> {
    let key = CString::new(key).ok()?;
    let mut value: usize = 0;
    (mlx_sys::mlx_device_info_get_size(&mut value, info, key.as_ptr()) == 0).then_some(value)
}

/// `key`'s text, if `info` has one.
unsafe fn string(info: mlx_sys::mlx_device_info, key: &str) -> Option<String> {
    let key = CString::new(key).ok()?;
    let mut value: *const std::os::raw::c_char = std::ptr::null();
    if mlx_sys::mlx_device_info_get_string(&mut value, info, key.as_ptr()) != 0 || value.is_null() {
        return None;
    }
    Some(CStr::from_ptr(value).to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_device_is_described_without_failing() {
        // The CPU backend may report no memory; a GPU must report some.
        let info = DeviceInfo::of_default_device();
        if !super::super::default_device_is_cpu() {
            assert!(info.total_memory.is_some_and(|b| b > 0), "{info:?}");
        }
        if let (Some(free), Some(total)) = (info.free_memory, info.total_memory) {
            assert!(free <= total, "{info:?}");
        }
    }
}
