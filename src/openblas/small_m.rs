//! Products of a few rows with a big matrix, `C[M, N] = alpha * A[M, K] @ W[N, K]^T + beta * C`
//! for 2 <= M <= [`MAX_ROWS`]: a batched decode step's linear layers on the CPU backend.
//!
//! OpenBLAS's GEMM packs the whole weight matrix on every call, which costs about as much as
//! reading it three times; one GEMV per row reads it M times. Here every weight row is read
//! from memory once and multiplied with all M input rows while it is in the L1 cache, with
//! AVX2/FMA when the CPU has them (checked at run time) and the output columns split over the
//! machine's cores. Each output is a dot product over `K` in another order than BLAS's: the
//! last bits differ.

use std::sync::OnceLock;

/// The most rows handled here; larger products (prefill) go to GEMM.
pub const MAX_ROWS: usize = 16;

/// Work (weights x rows) below which one thread does it all.
const PARALLEL_MIN: usize = 1 << 20;

/// `C = alpha * A @ W^T + beta * C`, A `[m, k]` (rows `lda` apart), W `[n, k]` (rows `ldw`
/// apart), C `[m, n]` (rows `ldc` apart).
///
/// # Safety
/// The pointers and leading dimensions describe valid, non-overlapping row-major matrices.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: usize,
    w: *const f32,
    ldw: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let threads = threads().min(n.max(1));
    let job = Job {
        m,
        k,
        alpha,
        a,
        lda,
        w,
        ldw,
        beta,
        c,
        ldc,
    };
    if threads <= 1 || n * k * m < PARALLEL_MIN {
        job.columns(0, n);
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        for t in 1..threads {
            let (lo, hi) = (t * per, ((t + 1) * per).min(n));
            if lo < hi {
                s.spawn(move || job.columns(lo, hi));
            }
        }
        job.columns(0, per.min(n));
    });
}

fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    })
}

/// Everything a thread needs; raw pointers, so it is sent by hand.
#[derive(Clone, Copy)]
struct Job {
    m: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: usize,
    w: *const f32,
    ldw: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
}

// SAFETY: threads write disjoint column ranges of C and only read A and W.
unsafe impl Send for Job {}

impl Job {
    /// Output columns `lo..hi`.
    fn columns(self, lo: usize, hi: usize) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the matrices are valid (gemm_nt's contract).
            unsafe { self.columns_avx2(lo, hi) };
            return;
        }
        // SAFETY: as above.
        unsafe { self.columns_plain(lo, hi) }
    }

    unsafe fn store(&self, i: usize, j: usize, dot: f32) {
        let out = self.c.add(i * self.ldc + j);
        *out = if self.beta == 0.0 {
            self.alpha * dot
        } else {
            self.alpha * dot + self.beta * *out
        };
    }

    unsafe fn columns_plain(&self, lo: usize, hi: usize) {
        for j in lo..hi {
            let w = std::slice::from_raw_parts(self.w.add(j * self.ldw), self.k);
            for i in 0..self.m {
                let a = std::slice::from_raw_parts(self.a.add(i * self.lda), self.k);
                let dot = a.iter().zip(w).map(|(x, y)| x * y).sum();
                self.store(i, j, dot);
            }
        }
    }

    /// Four input rows at a time against each weight row: 16 weights per iteration into two
    /// accumulators per row, so eight FMA chains hide the instruction's latency.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn columns_avx2(&self, lo: usize, hi: usize) {
        use std::arch::x86_64::*;
        let k16 = self.k / 16 * 16;
        let k8 = self.k / 8 * 8;
        let hsum = |v: __m256| -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        };
        for j in lo..hi {
            let w = self.w.add(j * self.ldw);
            let mut i = 0;
            while i < self.m {
                let rows = (self.m - i).min(4);
                let a: [*const f32; 4] =
                    std::array::from_fn(|r| self.a.add((i + r.min(rows - 1)) * self.lda));
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut acc2 = [_mm256_setzero_ps(); 4];
                let mut p = 0;
                while p < k16 {
                    let w0 = _mm256_loadu_ps(w.add(p));
                    let w1 = _mm256_loadu_ps(w.add(p + 8));
                    for r in 0..4 {
                        acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r].add(p)), w0, acc[r]);
                        acc2[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r].add(p + 8)), w1, acc2[r]);
                    }
                    p += 16;
                }
                if p < k8 {
                    let w0 = _mm256_loadu_ps(w.add(p));
                    for r in 0..4 {
                        acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r].add(p)), w0, acc[r]);
                    }
                }
                for r in 0..rows {
                    let mut dot = hsum(_mm256_add_ps(acc[r], acc2[r]));
                    for q in k8..self.k {
                        dot += *a[r].add(q) * *w.add(q);
                    }
                    self.store(i + r, j, dot);
                }
                i += 4;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition_for_every_row_count_and_tail() {
        for (m, n, k) in [
            (2, 3, 5),
            (3, 17, 8),
            (4, 9, 33),
            (5, 64, 70),
            (16, 200, 1500),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31) % 17) as f32 / 9.0 - 0.8)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0)
                .collect();
            let mut c = vec![1.0f32; m * n];
            // beta = 0.5 reads C; alpha scales.
            unsafe {
                gemm_nt(
                    m,
                    n,
                    k,
                    2.0,
                    a.as_ptr(),
                    k,
                    w.as_ptr(),
                    k,
                    0.5,
                    c.as_mut_ptr(),
                    n,
                );
            }
            for i in 0..m {
                for j in 0..n {
                    let dot: f32 = (0..k).map(|p| a[i * k + p] * w[j * k + p]).sum();
                    let want = 2.0 * dot + 0.5;
                    let got = c[i * n + j];
                    assert!(
                        (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "{m}x{n}x{k}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
