//! kooka's own CUDA kernels, run through MLX's custom-kernel API where MLX's ops are slow.
//! Each applies only on a CUDA device and to the shapes and types it handles; everything
//! else (the CPU, Metal, other shapes) keeps MLX's ops. `scripts/gpu/kernels.py` checks them
//! against MLX on the GPU; `scripts/check_cuda_kernels.py` compiles them with NVRTC anywhere.

mod arch;
pub mod decode_attention;
mod kernel;
pub mod qmv;
