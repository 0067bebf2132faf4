//! Getting OpenBLAS's speed on MLX's CPU backend (Linux, where MLX's matmuls are OpenBLAS's).
//!
//! **Kernels.** OpenBLAS picks its kernels from the CPU model at load time, and does not know
//! every model: on our development machine (a Xeon under a hypervisor, AVX-512) 0.3.21 falls back to
//! its SSE3 "Prescott" kernels, half the speed of its AVX-512 ones for decode's GEMVs.
//! [`use_fast_kernels`] asks OpenBLAS which kernels it chose and, where they are older than
//! the CPU supports, runs the program again with `OPENBLAS_CORETYPE` naming the right ones
//! (OpenBLAS reads it only when it loads). An `OPENBLAS_CORETYPE` already set is left alone.
//!
//! **One-row products.** MLX hands every float32 matmul to `cblas_sgemm`, also the one-row products of decode
//! (`[1, in] @ [in, out]`). OpenBLAS (0.3.21, Debian's) runs those through its GEMM driver,
//! which packs the whole weight matrix into panels on every call: at batch size 1 that copy
//! is most of a decode step. This module defines `cblas_sgemm` in kooka's executables (the
//! build script exports the symbol, so libmlx's calls bind here first): products with one
//! row or one column go to `cblas_sgemv`, which streams the matrix once; every other call
//! goes on to the BLAS library's own `cblas_sgemm`. Same arithmetic (each output a dot
//! product over `K`), summed in another order: results differ from GEMM's in the last bits.
//!
//! **A few rows.** A batched decode step multiplies a few rows (one per sequence) with each
//! weight matrix; GEMM's packing costs it about three reads of the matrix. Products with 2 to
//! 16 rows against a transposed matrix (`x @ W^T`, how MLX's linear layers call) go to
//! [`small_m`], which reads the matrix once.
//!
//! macOS builds use Accelerate, which has neither problem; this module is Linux-only.

mod small_m;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// Kernel sets of OpenBLAS that use AVX2 or better (`openblas_get_corename`, lowercased).
const AVX2_CORES: &[&str] = &["haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"];

/// Where OpenBLAS runs older kernels than this CPU supports, or would keep its idle threads
/// spinning, executes this program again (same arguments, same process id) with
/// `OPENBLAS_CORETYPE` / `OPENBLAS_THREAD_TIMEOUT` set; else returns. Call first thing in
/// `main`, before any thread starts.
///
/// OpenBLAS's threads spin (`sched_yield`) for about 2^28 cycles after each call before they
/// sleep; between the small calls of a batched decode step they take the cores that
/// [`small_m`] works on (on 2 cores: batch-4 decode 48 tokens/s with them spinning, 65 with
/// `OPENBLAS_THREAD_TIMEOUT=4`, the shortest wait; one-row decode unchanged). Values already
/// set are left alone.
pub fn use_fast_kernels() {
    let Some(current) = chosen_core() else {
        return;
    };
    let mut env: Vec<(&str, String)> = Vec::new();
    if std::env::var_os("OPENBLAS_CORETYPE").is_none()
        && !AVX2_CORES.contains(&current.to_lowercase().as_str())
    {
        if let Some(wanted) = best_core() {
            env.push(("OPENBLAS_CORETYPE", wanted.to_string()));
        }
    }
    if std::env::var_os("OPENBLAS_THREAD_TIMEOUT").is_none() {
        env.push(("OPENBLAS_THREAD_TIMEOUT", "4".into()));
    }
    if env.is_empty() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // `exec` returns only on failure: then carry on as we are.
    let err = cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).exec();
    eprintln!("kooka: could not restart with {env:?}: {err}");
}

/// The kernel set OpenBLAS runs (e.g. `SkylakeX`), if an OpenBLAS is loaded.
pub fn chosen_core() -> Option<String> {
    // SAFETY: dlsym with a pseudo-handle and a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_get_corename".as_ptr()) };
    if f.is_null() {
        return None;
    }
    // SAFETY: OpenBLAS's `char *openblas_get_corename(void)`, a static string.
    let name = unsafe {
        let f = std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const c_char>(f);
        CStr::from_ptr(f())
    };
    Some(name.to_string_lossy().into_owned())
}

/// The best OpenBLAS kernel set this CPU runs, among those worth switching to.
fn best_core() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vl")
            && has!("avx512dq")
            && has!("avx512cd")
        {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// CBLAS `sgemm` and `sgemv`, row/column-major flag first.
type Sgemm = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);
type Sgemv = unsafe extern "C" fn(
    order: c_int,
    trans: c_int,
    rows: c_int,
    cols: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    x: *const f32,
    inc_x: c_int,
    beta: f32,
    y: *mut f32,
    inc_y: c_int,
);

struct Blas {
    sgemm: Sgemm,
    /// Absent from some BLAS builds: then every call goes to `sgemm`.
    sgemv: Option<Sgemv>,
}

/// The BLAS library's own functions, looked up past this executable.
fn blas() -> &'static Blas {
    static BLAS: OnceLock<Blas> = OnceLock::new();
    BLAS.get_or_init(|| {
        // SAFETY: dlsym with pseudo-handles and NUL-terminated names; the symbols found are
        // the CBLAS functions with exactly these signatures.
        unsafe {
            let sgemm = libc::dlsym(libc::RTLD_NEXT, c"cblas_sgemm".as_ptr());
            if sgemm.is_null() {
                // Only reachable by calling this function directly: MLX itself cannot have
                // been linked without a BLAS.
                eprintln!("kooka: no cblas_sgemm in the loaded libraries");
                std::process::abort();
            }
            let sgemv = libc::dlsym(libc::RTLD_DEFAULT, c"cblas_sgemv".as_ptr());
            Blas {
                sgemm: std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
                sgemv: (!sgemv.is_null()).then(|| std::mem::transmute::<*mut c_void, Sgemv>(sgemv)),
            }
        }
    })
}

/// Row-major `C = alpha * op(A) @ op(B) + beta * C` on the BLAS library's own `sgemm`, past
/// this module's routing of one-row and few-row products (for callers that block their
/// products themselves, like `model::cpu_attention`).
///
/// # Safety
/// The CBLAS contract: the pointers and leading dimensions describe valid matrices.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_direct(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let t = |x: bool| if x { TRANS } else { NO_TRANS };
    (blas().sgemm)(
        ROW_MAJOR,
        t(trans_a),
        t(trans_b),
        m as c_int,
        n as c_int,
        k as c_int,
        alpha,
        a,
        lda as c_int,
        b,
        ldb as c_int,
        beta,
        c,
        ldc as c_int,
    )
}

/// Runs `f` with OpenBLAS's own threading off, so that threads of the caller can each call
/// [`sgemm_direct`] at once (OpenBLAS 0.3.21 shares one thread pool between callers) without
/// oversubscribing the cores; the previous thread count is restored after. The setting is
/// process-wide: meant for callers on the thread that owns MLX, while no MLX work is in flight.
/// Without OpenBLAS's thread functions (another BLAS), just runs `f`.
pub(crate) fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
    type Get = unsafe extern "C" fn() -> c_int;
    type Set = unsafe extern "C" fn(c_int);
    static FNS: OnceLock<Option<(Get, Set)>> = OnceLock::new();
    let fns = FNS.get_or_init(|| {
        // SAFETY: dlsym with a pseudo-handle and NUL-terminated names; OpenBLAS's
        // `int openblas_get_num_threads(void)` and `void openblas_set_num_threads(int)`.
        unsafe {
            let get = libc::dlsym(libc::RTLD_DEFAULT, c"openblas_get_num_threads".as_ptr());
            let set = libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr());
            (!get.is_null() && !set.is_null()).then(|| {
                (
                    std::mem::transmute::<*mut c_void, Get>(get),
                    std::mem::transmute::<*mut c_void, Set>(set),
                )
            })
        }
    });
    let Some((get, set)) = *fns else {
        return f();
    };
    /// Restores the thread count also when `f` panics.
    struct Restore(Set, c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: see above.
            unsafe { (self.0)(self.1) }
        }
    }
    // SAFETY: see above.
    let before = unsafe { get() };
    if before <= 1 {
        return f();
    }
    unsafe { set(1) };
    let _restore = Restore(set, before);
    f()
}

/// `C = alpha * op(A) @ op(B) + beta * C` (CBLAS), one-row and one-column products as GEMV.
///
/// # Safety
/// The CBLAS contract: the pointers and leading dimensions describe valid matrices.
#[no_mangle]
pub unsafe extern "C" fn cblas_sgemm(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
) {
    let rows = m as usize;
    if order == ROW_MAJOR
        && trans_a == NO_TRANS
        && trans_b == TRANS
        && (2..=small_m::MAX_ROWS).contains(&rows)
        && n > 0
        && k > 0
    {
        // SAFETY: the CBLAS contract (valid matrices) is this function's own.
        return small_m::gemm_nt(
            rows,
            n as usize,
            k as usize,
            alpha,
            a,
            lda as usize,
            b,
            ldb as usize,
            beta,
            c,
            ldc as usize,
        );
    }
    let blas = blas();
    let plain = |t: c_int| t == NO_TRANS || t == TRANS;
    let one_row_or_column = m == 1 || n == 1;
    let usable = order == ROW_MAJOR && plain(trans_a) && plain(trans_b) && k > 0;
    let Some(gemv) = blas.sgemv.filter(|_| usable && one_row_or_column) else {
        return (blas.sgemm)(
            order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
        );
    };
    let flip = |t: c_int| if t == NO_TRANS { TRANS } else { NO_TRANS };
    if m == 1 {
        // C[0, :] = alpha * op(B)^T @ a + beta * C[0, :]; a's elements are lda apart when
        // A is stored transposed ([K, 1]).
        let (rows, cols) = if trans_b == NO_TRANS { (k, n) } else { (n, k) };
        let inc_a = if trans_a == NO_TRANS { 1 } else { lda };
        zero_if_overwritten(beta, c, n as usize, 1);
        gemv(
            ROW_MAJOR,
            flip(trans_b),
            rows,
            cols,
            alpha,
            b,
            ldb,
            a,
            inc_a,
            beta,
            c,
            1,
        )
    } else {
        // C[:, 0] = alpha * op(A) @ b + beta * C[:, 0]; b's elements are ldb apart when B
        // is stored as [K, 1]; C's column elements are ldc apart.
        let (rows, cols) = if trans_a == NO_TRANS { (m, k) } else { (k, m) };
        let inc_b = if trans_b == NO_TRANS { ldb } else { 1 };
        zero_if_overwritten(beta, c, m as usize, ldc as usize);
        gemv(
            ROW_MAJOR, trans_a, rows, cols, alpha, a, lda, b, inc_b, beta, c, ldc,
        )
    }
}

/// With `beta == 0` GEMM must not read C (MLX's output buffers are uninitialized, may hold
/// NaN bit patterns); make sure GEMV's `beta * y` sees zeros.
unsafe fn zero_if_overwritten(beta: f32, c: *mut f32, len: usize, stride: usize) {
    if beta == 0.0 {
        for i in 0..len {
            *c.add(i * stride) = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference `op(A) @ op(B)` for row-major matrices.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
    ) -> Vec<f32> {
        let at = |i: usize, p: usize| if ta { a[p * lda + i] } else { a[i * lda + p] };
        let bt = |p: usize, j: usize| if tb { b[j * ldb + p] } else { b[p * ldb + j] };
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
            }
        }
        c
    }

    #[test]
    fn one_row_and_one_column_products_match_the_definition() {
        let k = 37;
        let data: Vec<f32> = (0..k * 64)
            .map(|i| ((i * 7919) % 23) as f32 / 7.0 - 1.5)
            .collect();
        for (m, n) in [(1usize, 29usize), (29, 1), (1, 1)] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let lda = if ta { m } else { k };
                let ldb = if tb { k } else { n };
                let (a, b) = (&data[..m * k], &data[m * k..m * k + k * n]);
                let want = reference(ta, tb, m, n, k, a, lda, b, ldb);
                let mut got = vec![f32::NAN; m * n];
                let t = |x: bool| if x { TRANS } else { NO_TRANS };
                unsafe {
                    cblas_sgemm(
                        ROW_MAJOR,
                        t(ta),
                        t(tb),
                        m as c_int,
                        n as c_int,
                        k as c_int,
                        1.0,
                        a.as_ptr(),
                        lda as c_int,
                        b.as_ptr(),
                        ldb as c_int,
                        0.0,
                        got.as_mut_ptr(),
                        n as c_int,
                    );
                }
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{n} ta={ta} tb={tb}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
