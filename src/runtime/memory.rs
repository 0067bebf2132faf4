//! The machine's memory, for the default budgets.

/// Physical memory in bytes (16 GiB when it cannot be read). On Apple silicon this is the
/// unified memory the GPU also uses; on a CUDA machine host memory stands in for the GPU's.
pub fn total_bytes() -> usize {
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
