//! Prefill attention for MLX's CPU backend that scales with the context.
//!
//! MLX's CPU `scaled_dot_product_attention` builds the whole `[L, S]` score matrix and runs its
//! softmax one float at a time (scalar `expf`): on a 16k-token prompt a third of the time went
//! to that `exp`. [`scaled_dot_product_attention`] computes the same thing flash-style
//! (`kernel.rs`): blocks of queries against blocks of keys with an online softmax, the products
//! on OpenBLAS's `sgemm`, a vectorized exponential (`exp.rs`) compiled for AVX-512, AVX2+FMA or
//! portable code and picked at run time, and the work items (a block of query rows of the
//! query heads sharing one key/value head) spread over the cores with scoped threads. OpenBLAS's
//! own threads are off meanwhile (each worker's products are small, and two pools on two cores
//! would fight).
//!
//! Data goes through host memory: q, k and v are evaluated (made contiguous and float32 where
//! they are not), read as slices, and the output is a new array in q's dtype. `use_for` says
//! when `block.rs` should call it (the crossover measured with `examples/cpu_attention.rs`).

mod exp;
mod kernel;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use mlx_rs::{transforms, Array, Dtype};

use super::cache::AttnMask;
use super::error::{ModelError, Result};
use kernel::{Blocks, Dims, Inputs, Isa, OutPtr, Scratch};

/// Which keys a query sees. Query `i` of `L` sits at position `S - L + i` of the `S` keys (the
/// new queries are the last positions: a chunk of a prompt after a cached prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// Every key.
    None,
    /// Keys `0..=S - L + i`.
    Causal,
    /// Causal, and only the last `w` of those keys (`w >= 1`).
    Window(usize),
}

/// Queries x keys from which [`scaled_dot_product_attention`] beats MLX's on the CPU backend
/// (`examples/cpu_attention.rs` on the 2-core Xeon: parity between 12 x 12 and 24 x 24,
/// 1.4-1.8x at 32 x 32, 9-13x at 512 x 512).
const CROSSOVER: i64 = 32 * 32;

/// Whether attention runs here: MLX's default device is the CPU and `KOOKA_CPU_ATTENTION` is
/// not `0` (or `off`, `false`). Decided once per process.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("KOOKA_CPU_ATTENTION")
            .is_ok_and(|v| matches!(v.trim(), "0" | "off" | "false"));
        !off && super::default_device_is_cpu()
    })
}

/// This module's mask for `mask` when attention of `q` over `k` (`[B, H, L, D]`) should run
/// here: enabled, float32 (the CPU default; half-precision runs keep MLX's rounding, which
/// `tests/parity.rs` compares with mlx-lm's), a prompt chunk (`L >= 2`: decode stays on MLX's
/// lazy graph) of at least [`CROSSOVER`] queries x keys, under a causal or banded mask (a
/// padding mask of batched rows is not one of this module's).
pub(crate) fn use_for(mask: &AttnMask, q: &Array, k: &Array) -> Option<Mask> {
    let (qs, ks) = (q.shape(), k.shape());
    if qs.len() != 4 || ks.len() != 4 || q.dtype() != Dtype::Float32 {
        return None;
    }
    let (l, s) = (qs[2], ks[2]);
    if l < 2 || i64::from(l) * i64::from(s) < CROSSOVER || !enabled() {
        return None;
    }
    match mask {
        AttnMask::Causal => Some(Mask::Causal),
        AttnMask::Banded { window, array } if *window >= 1 && array.shape() == [l, s] => {
            Some(Mask::Window(*window as usize))
        }
        AttnMask::Banded { .. } | AttnMask::Array(_) | AttnMask::Rows { .. } | AttnMask::None => {
            None
        }
    }
}

/// The instruction set the kernel runs with on this machine.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// `softmax(q k^T * scale + mask) v` for q `[B, Hq, L, D]`, k `[B, Hkv, S, D]`, v
/// `[B, Hkv, S, Dv]` (Hq a multiple of Hkv), as `[B, Hq, L, Dv]` in q's dtype. Evaluates its
/// inputs and computes on the calling thread and its helpers before returning.
pub fn scaled_dot_product_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: Mask,
) -> Result<Array> {
    let dims = dims(q, k, v, mask)?;
    let out_dtype = q.dtype();
    let host = |a: &Array| -> Result<Array> {
        let a = match a.dtype() {
            Dtype::Float32 => a.clone(),
            _ => a.as_dtype(Dtype::Float32)?,
        };
        Ok(a.contiguous()?)
    };
    let (q, k, v) = (host(q)?, host(k)?, host(v)?);
    transforms::eval([&q, &k, &v])?;
    let mut out = vec![0.0f32; dims.b * dims.hq * dims.l * dims.dv];
    attend(
        slice(&q)?,
        slice(&k)?,
        slice(&v)?,
        &mut out,
        dims,
        scale,
        mask,
    );
    let shape = [dims.b, dims.hq, dims.l, dims.dv].map(|n| n as i32);
    let out = Array::from_slice(&out, &shape);
    Ok(match out_dtype {
        Dtype::Float32 => out,
        t => out.as_dtype(t)?,
    })
}

/// An evaluated, contiguous float32 array's data.
fn slice(a: &Array) -> Result<&[f32]> {
    a.try_as_slice::<f32>()
        .map_err(|e| ModelError::Mlx(format!("cpu attention: reading an input: {e}")))
}

/// The shapes of a call, or why it cannot run here.
fn dims(q: &Array, k: &Array, v: &Array, mask: Mask) -> Result<Dims> {
    let bad = |message: String| ModelError::BadTensor {
        name: "cpu attention inputs".into(),
        message,
    };
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(bad(format!("want 4-d q, k, v; got {qs:?} {ks:?} {vs:?}")));
    }
    let u = |x: i32| x.max(0) as usize;
    let dims = Dims {
        b: u(qs[0]),
        hq: u(qs[1]),
        hkv: u(ks[1]),
        l: u(qs[2]),
        s: u(ks[2]),
        d: u(qs[3]),
        dv: u(vs[3]),
    };
    let consistent = ks[0] == qs[0]
        && vs[0] == qs[0]
        && vs[1] == ks[1]
        && vs[2] == ks[2]
        && ks[3] == qs[3]
        && dims.hkv > 0
        && dims.hq.is_multiple_of(dims.hkv)
        && dims.l >= 1
        && dims.s >= 1
        && dims.d >= 1
        && dims.dv >= 1;
    if !consistent {
        return Err(bad(format!("q {qs:?}, k {ks:?}, v {vs:?} do not fit")));
    }
    if mask != Mask::None && dims.l > dims.s {
        return Err(bad(format!("{} queries but {} keys", dims.l, dims.s)));
    }
    if mask == Mask::Window(0) {
        return Err(bad("a window of 0 keys".into()));
    }
    Ok(dims)
}

/// The kernel on host buffers, over all cores: one worker per core, each calling `sgemm` with
/// OpenBLAS's threads off. Measured (`examples/cpu_attention.rs`, 2 cores, 2k x 2k): as fast as
/// one worker on OpenBLAS's two threads while another process holds a core, faster without
/// one; workers calling a threaded OpenBLAS at once were 10-30x slower (its shared pool).
fn attend(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], dims: Dims, scale: f32, mask: Mask) {
    let blocks = Blocks::for_dims(&dims);
    let items = kernel::items(&dims, &blocks);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    let x = Inputs {
        q,
        k,
        v,
        dims,
        blocks,
        scale,
        mask,
    };
    let isa = isa();
    let next = AtomicUsize::new(0);
    let out = OutPtr(out.as_mut_ptr());
    let work = || {
        let mut scratch = Scratch::new(&dims, &blocks);
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let Some(&item) = items.get(n) else { break };
            // SAFETY: items cover disjoint output rows; `out` holds the whole output; `isa`
            // is this machine's.
            unsafe { kernel::run(isa, &x, item, &mut scratch, out) };
        }
    };
    // One call at a time: each uses every core, and OpenBLAS's thread setting is
    // process-wide (two calls interleaving it could leave it threaded under the other's
    // workers, 10-30x slower).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    crate::openblas::single_threaded(|| {
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        })
    });
}
