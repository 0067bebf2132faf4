//! Memory: the machine's (for the default budgets) and what MLX's allocator holds (for
//! `/health` and `/metrics`).

/// MLX's allocator counters, in bytes. Read on the MLX thread only ([`MlxMemory::read`]);
/// the copy crosses threads as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MlxMemory {
    /// Held by live arrays.
    pub active_bytes: usize,
    /// The most live arrays have held since the process started.
    pub peak_bytes: usize,
    /// Freed by arrays, kept by the allocator for reuse.
    pub cache_bytes: usize,
}

impl MlxMemory {
    /// The allocator's counters now (0 where MLX reports an error). Call it on the thread
    /// that owns MLX state.
    pub fn read() -> Self {
        MlxMemory {
            active_bytes: mlx_rs::memory::active_memory().unwrap_or(0),
            peak_bytes: mlx_rs::memory::peak_memory().unwrap_or(0),
            cache_bytes: mlx_rs::memory::cache_memory().unwrap_or(0),
        }
    }
}

/// The memory the model's arrays live in, in bytes: a CUDA GPU's own memory as MLX reports
/// it, else physical memory (the CPU backend; on Apple silicon the unified memory the GPU
/// shares). Call it on the thread that owns MLX state.
pub fn total_bytes() -> usize {
    let gpu = !crate::model::default_device_is_cpu() && !cfg!(target_os = "macos");
    gpu.then(|| crate::model::device::DeviceInfo::of_default_device().total_memory)
        .flatten()
        .unwrap_or_else(physical_bytes)
}

/// Physical memory in bytes (16 GiB when it cannot be read).
fn physical_bytes() -> usize {
    // SAFETY: sysconf only reads system configuration.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        (pages as usize).saturating_mul(size as usize)
    } else {
        16 << 30
    }
}
