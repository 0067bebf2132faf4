//! Attention of a batched decode step on a CUDA GPU: one query per row over left-padded
//! keys, each row starting at its own key.
//!
//! MLX's CUDA backend has a fused kernel for one query only without a mask; with the
//! padding mask of a batch it computes the scores, the softmax and the product as separate
//! ops, 5x slower at batch 32 on an H200 (`scripts/gpu/attn_batch.py`, docs/PERFORMANCE.md).
//! These two kernels take the rows' first keys instead of a mask, split the keys into chunks
//! so that short batches still fill the GPU (flash-decoding): pass 1
//! (`decode_attention_partial.cu`) gives each chunk's running max, sum and weighted values
//! per query head, pass 2 (`decode_attention_combine.cu`) merges the chunks.

use std::sync::OnceLock;

use mlx_rs::{Array, Dtype};

use super::kernel::{Constant, CudaKernel, Launch};
use crate::model::error::Result;

const PARTIAL: &str = include_str!("decode_attention_partial.cu");
const COMBINE: &str = include_str!("decode_attention_combine.cu");

/// Threads of a pass-1 block (4 warps).
const PARTIAL_THREADS: i32 = 128;
/// Blocks pass 1 aims for: a few per SM of the largest GPUs (an H200 has 132).
const TARGET_BLOCKS: i32 = 1024;
/// The fewest keys a chunk gets: one 32-key tile for each of pass 1's four warps (fewer: the
/// merge costs more than the parallelism gives).
const MIN_CHUNK: i32 = 128;

thread_local! {
    static KERNELS: (CudaKernel, CudaKernel, CudaKernel) = (
        CudaKernel::new(
            "kooka_decode_attention_partial",
            &["q", "k", "v", "starts"],
            &["o_part", "m_part", "l_part"],
            PARTIAL,
            "",
            false,
        ),
        CudaKernel::new(
            "kooka_decode_attention_partial_all_keys",
            &["q", "k", "v"],
            &["o_part", "m_part", "l_part"],
            PARTIAL,
            "#define NO_STARTS 1\n",
            false,
        ),
        CudaKernel::new(
            "kooka_decode_attention_combine",
            &["o_part", "m_part", "l_part"],
            &["out"],
            COMBINE,
            "",
            true,
        ),
    );
}

/// Where `KOOKA_DECODE_ATTENTION` puts the kernel: batched decode steps (the default), none
/// (`mlx`: MLX's masked attention instead), or also one sequence's (`all`: instead of MLX's
/// cuDNN attention). Decided once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Off,
    Batched,
    All,
}

fn setting() -> Use {
    static USE: OnceLock<Use> = OnceLock::new();
    *USE.get_or_init(|| {
        if !cfg!(target_os = "linux") || crate::model::default_device_is_cpu() {
            return Use::Off;
        }
        match std::env::var("KOOKA_DECODE_ATTENTION")
            .as_deref()
            .map(str::trim)
        {
            Ok("mlx" | "0" | "off" | "false") => Use::Off,
            Ok("all") => Use::All,
            _ => Use::Batched,
        }
    })
}

fn enabled() -> bool {
    setting() != Use::Off
}

/// Whether one sequence's decode step (no mask: every key seen) takes the kernel too
/// (`KOOKA_DECODE_ATTENTION=all`), where [`applies`].
pub fn takes_one_sequence() -> bool {
    setting() == Use::All
}

/// Whether the kernel takes `q` `[B, H, 1, D]` over `k`, `v` `[B, KVH, S, D]`: a CUDA
/// device, one query, the same float type throughout, `D` a multiple of 32 up to 256, whole
/// query groups, and a group small enough for the block's shared memory.
pub fn applies(q: &Array, k: &Array, v: &Array) -> bool {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 4 || ks.len() != 4 || ks != vs || !enabled() {
        return false;
    }
    let (b, h, l, d) = (qs[0], qs[1], qs[2], qs[3]);
    let float = matches!(q.dtype(), Dtype::Bfloat16 | Dtype::Float16 | Dtype::Float32);
    l == 1
        && float
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && ks[0] == b
        && ks[3] == d
        && d % 32 == 0
        && d <= 256
        && ks[1] > 0
        && h % ks[1] == 0
        && (h / ks[1]) * d <= 2048
}

/// `softmax(q k^T * scale) v` with row `b` seeing keys `starts[b]..` (int32 `[B]`; `None`:
/// every key); `q`, `k`, `v` as [`applies`] says. `[B, H, 1, D]` in `q`'s type.
pub fn attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    starts: Option<&Array>,
) -> Result<Array> {
    let (b, h, d) = (q.shape()[0], q.shape()[1], q.shape()[3]);
    let (kvh, keys) = (k.shape()[1], k.shape()[2]);
    let chunks = chunk_count(b * kvh, keys);
    let scale_log2e = (scale * std::f32::consts::LOG2_E).to_bits() as i32;
    let partial = [
        ("T", Constant::Type(q.dtype())),
        ("D", Constant::Int(d)),
        ("G", Constant::Int(h / kvh)),
        ("SCALE_BITS", Constant::Int(scale_log2e)),
    ];
    KERNELS.with(|(with_starts, all_keys, pass2)| {
        let inputs = [q, k, v, starts.unwrap_or(q)];
        let (pass1, inputs) = match starts {
            Some(_) => (with_starts, &inputs[..]),
            None => (all_keys, &inputs[..3]),
        };
        let parts = pass1.apply(
            inputs,
            &Launch {
                outputs: vec![
                    (vec![b, h, chunks, d], Dtype::Float32),
                    (vec![b, h, chunks], Dtype::Float32),
                    (vec![b, h, chunks], Dtype::Float32),
                ],
                grid: [chunks * PARTIAL_THREADS, kvh, b],
                group: [PARTIAL_THREADS, 1, 1],
                constants: &partial,
                shared_bytes: 0,
            },
        )?;
        let combine = [("T", Constant::Type(q.dtype())), ("D", Constant::Int(d))];
        let out = pass2.apply(
            &[&parts[0], &parts[1], &parts[2]],
            &Launch {
                outputs: vec![(vec![b, h, 1, d], q.dtype())],
                grid: [b * h * d, 1, 1],
                group: [d, 1, 1],
                constants: &combine,
                shared_bytes: 0,
            },
        )?;
        Ok(out.into_iter().next().expect("one output"))
    })
}

/// Chunks of the keys per (row, key head): enough blocks to fill the GPU, none shorter
/// than [`MIN_CHUNK`] keys.
fn chunk_count(heads: i32, keys: i32) -> i32 {
    let by_keys = (keys + MIN_CHUNK - 1) / MIN_CHUNK;
    let by_blocks = (TARGET_BLOCKS + heads - 1) / heads.max(1);
    by_keys.min(by_blocks).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fill_the_gpu_without_tiny_chunks() {
        // Batch 32 of 8 key heads over 640 keys: 4 chunks of 160.
        assert_eq!(chunk_count(256, 640), 4);
        // One row of 8 heads over 640 keys: as many 128-key chunks as there are.
        assert_eq!(chunk_count(8, 640), 5);
        // A long context: bounded by the block target.
        assert_eq!(chunk_count(8, 100_000), 128);
        assert_eq!(chunk_count(4096, 10), 1);
    }

    #[test]
    fn the_kernel_is_off_on_the_cpu() {
        // The test process's MLX runs on the CPU: MLX's attention, never the CUDA kernel.
        let q = mlx_rs::ops::zeros::<f32>(&[2, 4, 1, 64]).unwrap();
        let k = mlx_rs::ops::zeros::<f32>(&[2, 2, 8, 64]).unwrap();
        assert!(!applies(&q, &k, &k));
    }
}
