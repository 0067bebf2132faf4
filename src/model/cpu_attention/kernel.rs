//! Flash attention over plain f32 buffers: one work item is a block of query rows of every query
//! head that shares one key/value head (GQA), against that head's keys in blocks, with an online
//! softmax (running maximum and sum per row), so that no full score matrix is ever built. The
//! products are OpenBLAS's `sgemm` on the packed query block (`Q K^T`, then `P V` added into
//! the output block); key blocks past a block's last visible key (causal) or before its first
//! (window) are never read.

use super::exp;
use super::Mask;
use crate::openblas::sgemm_direct;

/// Shapes of one call: q `[b, hq, l, d]`, k `[b, hkv, s, d]`, v `[b, hkv, s, dv]`, out
/// `[b, hq, l, dv]`, all row-major.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub l: usize,
    pub s: usize,
    pub d: usize,
    pub dv: usize,
}

impl Dims {
    /// Query heads per key/value head.
    pub fn group(&self) -> usize {
        self.hq / self.hkv
    }
}

/// Block sizes: query rows per head in one work item, and keys per step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Blocks {
    pub q: usize,
    pub k: usize,
}

impl Blocks {
    /// About 256 query rows per product (all heads of a group together), 512 keys per step:
    /// the score block (512 KiB) stays in L2. Measured at 2k x 2k on the 2-core Xeon: about 10%
    /// less time than 128 x 256; 64-512 rows x 128-512 keys all within 30% of each other.
    pub fn for_dims(dims: &Dims) -> Blocks {
        Blocks {
            q: (256 / dims.group()).clamp(16, 256),
            k: 512,
        }
    }
}

/// One work item: query rows `i0..i1` of the query heads of key/value head `kvh` in batch `b`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Item {
    pub b: usize,
    pub kvh: usize,
    pub i0: usize,
    pub i1: usize,
}

/// Work items, the most expensive first (under a causal mask, the last query rows see the most
/// keys) so that the dynamic split over threads ends evenly.
pub(super) fn items(dims: &Dims, blocks: &Blocks) -> Vec<Item> {
    let mut v = Vec::new();
    let n_blocks = dims.l.div_ceil(blocks.q);
    for qb in (0..n_blocks).rev() {
        for b in 0..dims.b {
            for kvh in 0..dims.hkv {
                let i0 = qb * blocks.q;
                v.push(Item {
                    b,
                    kvh,
                    i0,
                    i1: (i0 + blocks.q).min(dims.l),
                });
            }
        }
    }
    v
}

/// Per-thread buffers, sized for the largest item.
pub(super) struct Scratch {
    q: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
}

impl Scratch {
    pub fn new(dims: &Dims, blocks: &Blocks) -> Scratch {
        let rows = dims.group() * blocks.q.min(dims.l);
        Scratch {
            q: vec![0.0; rows * dims.d],
            s: vec![0.0; rows * blocks.k.min(dims.s)],
            o: vec![0.0; rows * dims.dv],
            m: vec![0.0; rows],
            l: vec![0.0; rows],
        }
    }
}

/// The output buffer, written by several threads at disjoint rows.
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub *mut f32);
// SAFETY: every work item writes only its own rows (see `run`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The instruction sets the kernel is compiled for, picked once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Inputs of [`run`], shared by every item of a call.
pub(super) struct Inputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub dims: Dims,
    pub blocks: Blocks,
    pub scale: f32,
    pub mask: Mask,
}

/// Computes `item` into `out`.
///
/// # Safety
/// `out` points to `b * hq * l * dv` floats that no other thread writes at this item's rows;
/// `isa` was returned by [`Isa::detect`] on this machine.
pub(super) unsafe fn run(isa: Isa, x: &Inputs, item: Item, scratch: &mut Scratch, out: OutPtr) {
    match isa {
        Isa::Portable => run_impl::<false>(x, item, scratch, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => run_avx2(x, item, scratch, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => run_avx512(x, item, scratch, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(x: &Inputs, item: Item, scratch: &mut Scratch, out: OutPtr) {
    run_impl::<true>(x, item, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512(x: &Inputs, item: Item, scratch: &mut Scratch, out: OutPtr) {
    run_impl::<true>(x, item, scratch, out)
}

#[inline(always)]
unsafe fn run_impl<const FMA: bool>(x: &Inputs, item: Item, sc: &mut Scratch, out: OutPtr) {
    let Dims {
        hq,
        hkv,
        l,
        s,
        d,
        dv,
        ..
    } = x.dims;
    let g = x.dims.group();
    let rows = item.i1 - item.i0;
    let m_rows = g * rows;
    let heads = item.b * hq + item.kvh * g..item.b * hq + (item.kvh + 1) * g;
    // The query rows of the group's heads, one after the other.
    for (j, h) in heads.clone().enumerate() {
        let src = &x.q[(h * l + item.i0) * d..(h * l + item.i1) * d];
        sc.q[j * rows * d..(j + 1) * rows * d].copy_from_slice(src);
    }
    let kv = item.b * hkv + item.kvh;
    let k = &x.k[kv * s * d..(kv + 1) * s * d];
    let v = &x.v[kv * s * dv..(kv + 1) * s * dv];
    let o = &mut sc.o[..m_rows * dv];
    o.fill(0.0);
    let m = &mut sc.m[..m_rows];
    m.fill(f32::NEG_INFINITY);
    let sum = &mut sc.l[..m_rows];
    sum.fill(0.0);

    // Query i sits at position off + i; keys visible to it: lo(i)..hi(i).
    let off = s.saturating_sub(l); // causal masks need s >= l (checked); without one, unused
    let hi = |i: usize| match x.mask {
        Mask::None => s,
        Mask::Causal | Mask::Window(_) => off + i + 1,
    };
    let lo = |i: usize| match x.mask {
        Mask::Window(w) => (off + i + 1).saturating_sub(w),
        Mask::None | Mask::Causal => 0,
    };
    let (first, end) = (lo(item.i0), hi(item.i1 - 1));
    let mut j0 = first;
    while j0 < end {
        let j1 = (j0 + x.blocks.k).min(end);
        let nk = j1 - j0;
        let scores = &mut sc.s[..m_rows * nk];
        sgemm_direct(
            false,
            true,
            m_rows,
            nk,
            d,
            x.scale,
            sc.q.as_ptr(),
            d,
            k[j0 * d..].as_ptr(),
            d,
            0.0,
            scores.as_mut_ptr(),
            nk,
        );
        for r in 0..m_rows {
            let i = item.i0 + r % rows;
            let a = lo(i).clamp(j0, j1) - j0;
            let b = hi(i).clamp(j0, j1) - j0;
            let row = &mut scores[r * nk..(r + 1) * nk];
            if a >= b {
                row.fill(0.0);
                continue;
            }
            row[..a].fill(0.0);
            row[b..].fill(0.0);
            let valid = &mut row[a..b];
            let new_max = m[r].max(exp::max(valid));
            let block_sum = exp::exp_sub_sum::<FMA>(valid, new_max);
            if new_max > m[r] {
                // The first block of a row has m = -inf: alpha 0, and o and sum are 0.
                let alpha = (m[r] - new_max).exp();
                exp::scale(&mut o[r * dv..(r + 1) * dv], alpha);
                sum[r] *= alpha;
                m[r] = new_max;
            }
            sum[r] += block_sum;
        }
        sgemm_direct(
            false,
            false,
            m_rows,
            dv,
            nk,
            1.0,
            scores.as_ptr(),
            nk,
            v[j0 * dv..].as_ptr(),
            dv,
            1.0,
            o.as_mut_ptr(),
            dv,
        );
        j0 = j1;
    }
    for (j, h) in heads.enumerate() {
        for r in 0..rows {
            let src = &o[(j * rows + r) * dv..(j * rows + r + 1) * dv];
            let inv = 1.0 / sum[j * rows + r];
            let dst = out.0.add((h * l + item.i0 + r) * dv);
            for (c, &val) in src.iter().enumerate() {
                *dst.add(c) = val * inv;
            }
        }
    }
}
