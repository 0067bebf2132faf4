//! How the kernel splits its work ([`Tuning`]): the defaults, `KOOKA_QMV_TUNING`, and where x
//! is staged in shared memory.

use std::sync::OnceLock;

use mlx_rs::Dtype;

/// How the kernel splits the work: rows of W per warp, warps per block, 16-byte loads in
/// flight per row, whether 4-bit values are unpacked with the exponent trick, the most
/// blocks launched (0: one per `warps * rows_per_warp` outputs; fewer: each warp goes on to
/// further rows, its next loads in flight while it multiplies), and whether each block stages
/// x in shared memory first (4-bit, 16-bit x, the trick, x within [`STAGE_SHARED_BYTES`];
/// elsewhere ignored); and whether the products run on the tensor cores instead ([`uses_mma`]:
/// 16 rows of W a warp, `unroll` spans of 128 values in flight, K split among `k_split`
/// warps of a block, 0: [`k_split`] chooses; the L2 asked for the data `prefetch` steps
/// ahead of the loads, 0: not; and with `pipe` of 2 or more the loads go through a ring of
/// that many steps in shared memory ([`pipe_stages`]; on an H100 much slower than the
/// registers, PERFORMANCE "the ring of loads, measured"), 0: through registers, one step
/// ahead; `rows_per_warp`, `trick` and `stage` then ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    pub rows_per_warp: i32,
    pub warps: i32,
    pub unroll: i32,
    pub trick: bool,
    pub max_blocks: i32,
    pub stage: bool,
    pub mma: bool,
    pub k_split: i32,
    pub prefetch: i32,
    pub pipe: i32,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            rows_per_warp: 1,
            warps: 8,
            unroll: 4,
            trick: true,
            max_blocks: 0,
            stage: false,
            mma: false,
            k_split: 0,
            prefetch: 0,
            pipe: 0,
        }
    }
}

impl Tuning {
    /// Folded calls: two loads in flight a row, not four. With SwiGLU a warp streams two rows
    /// (gate and up), and four loads each, double-buffered, cost it occupancy: 8B 4-bit batch-1
    /// decode on an H100 227.9-232.6 tokens/s against 205.0-206.9 with the default.
    pub fn folded() -> Self {
        Tuning {
            unroll: 2,
            ..Tuning::default()
        }
    }

    /// On the tensor cores ([`uses_mma`]): two spans a lane in flight, K split as [`k_split`]
    /// chooses (4 spans were slower on every 8B shape on an H100, PERFORMANCE "The 4-bit
    /// products on the tensor cores").
    pub fn mma() -> Self {
        Tuning {
            mma: true,
            unroll: 2,
            ..Tuning::default()
        }
    }
}

/// The most bytes of staged x a block keeps in (dynamic) shared memory ([`Tuning::stage`],
/// see [`staged_bytes`]): one row of a K of 14336 (61 KiB), three blocks to a streaming
/// multiprocessor of an H100's 227 KiB.
pub const STAGE_SHARED_BYTES: i64 = 64 << 10;

/// Shared memory of `tm` staged rows of `k` values: the floats in whole passes of 32 chunks of
/// 32, and two sums a chunk.
pub(super) fn staged_bytes(tm: i32, k: i32) -> i64 {
    let passes = (k as i64 / 32 + 31) / 32;
    tm as i64 * passes * 32 * (32 + 2) * 4
}

/// Whether a call with `tuning` stages x ([`Tuning::stage`]): 4-bit, the trick, 16-bit x,
/// `tm` rows of `k` values within [`STAGE_SHARED_BYTES`].
pub(super) fn stages(tuning: &Tuning, x: Dtype, bits: i32, tm: i32, k: i32) -> bool {
    tuning.stage
        && tuning.trick
        && bits == 4
        && matches!(x, Dtype::Bfloat16 | Dtype::Float16)
        && staged_bytes(tm, k) <= STAGE_SHARED_BYTES
}

/// The bytes of x a block stages for the tensor cores ([`uses_mma`]): 128 of zeros, then per row
/// of x (`tm`) each span of 128 values as 384 bytes (the B fragments of its 4 lanes, 80 bytes
/// apart so that a warp's reads hit distinct banks) and each group's sum.
pub(super) fn mma_bytes(tm: i32, k: i32, group: i32) -> i64 {
    128 + tm as i64 * (k as i64 / 128 * 384 + k as i64 / group as i64 * 4)
}

/// Whether a call with `tuning` runs on the tensor cores ([`Tuning::mma`]): 4-bit W, 16-bit x,
/// K whole spans of 128, `tm` rows of x within the 8 columns of the MMA's B (each row takes
/// a column per group of a span: `128 / group`), its staged x within [`STAGE_SHARED_BYTES`].
pub(super) fn uses_mma(tuning: &Tuning, x: Dtype, bits: i32, group: i32, tm: i32, k: i32) -> bool {
    tuning.mma
        && bits == 4
        && matches!(x, Dtype::Bfloat16 | Dtype::Float16)
        && matches!(group, 32 | 64 | 128)
        && k % 128 == 0
        && tm * (128 / group) <= 8
        && mma_bytes(tm, k, group) <= STAGE_SHARED_BYTES
}

/// The warps that split K for `tiles` row tiles of 16 of a K of `k` on the tensor cores:
/// `tuning.k_split` where set and dividing both the warps and K's spans, else doubled from 1
/// while there are fewer than [`MMA_WARPS`] warps in all (up to 8).
pub(super) fn k_split(tuning: &Tuning, tiles: i32, k: i32) -> i32 {
    let spans = k / 128;
    let fits = |s: i32| s >= 1 && tuning.warps % s == 0 && spans % s == 0;
    if tuning.k_split > 0 {
        return if fits(tuning.k_split) {
            tuning.k_split
        } else {
            1
        };
    }
    let mut s = 1;
    while s < 8 && tiles as i64 * (s as i64) < MMA_WARPS && fits(2 * s) {
        s *= 2;
    }
    s
}

/// Warps enough to keep an H100's or H200's memory busy on the tensor-core path: ~4 a
/// scheduler of its 132 streaming multiprocessors.
const MMA_WARPS: i64 = 2048;

/// Matrices of at least this many values get x staged, with [`STAGED_MAX_BLOCKS`] blocks
/// (`KOOKA_QMV_STAGE_MIN_VALUES` moves it): an 8B model's gate/up (117M) and head (525M), not
/// its down (59M). Device times on an H100 (kernel tracer, PERFORMANCE "The matvec's loads
/// alone"): gate/up 47.3 -> 44.1 us, head 170 -> 143 us; staged down 23.3 -> 33.3 us,
/// o and q/k/v slower too (their one wave of blocks waits for the staging). Bit-identical
/// outputs either way.
const STAGE_MIN_VALUES: i64 = 100_000_000;

/// The blocks of a staged call from [`STAGE_MIN_VALUES`]: 3 a streaming multiprocessor of an
/// H100 or H200 (132; 8 warps of ~80 registers a lane take 20K of its 64K registers, and 3
/// staged x of the largest fit its shared memory), all resident at once, each warp going on
/// to further rows so that a block stages x once.
const STAGED_MAX_BLOCKS: i32 = 396;

/// The tuning [`matmul_t`] uses for a matrix of `values` (`folded`: for a call with folds):
/// `KOOKA_QMV_TUNING` as `rows_per_warp,warps,unroll,trick[,max_blocks[,stage]]` (for
/// measuring), else the default (folded: [`Tuning::folded`]), staged from
/// [`STAGE_MIN_VALUES`].
pub(super) fn tuning(folded: bool, values: i64) -> Tuning {
    static STAGE_FROM: OnceLock<i64> = OnceLock::new();
    let set = explicit_tuning();
    let stage_from = *STAGE_FROM.get_or_init(|| {
        std::env::var("KOOKA_QMV_STAGE_MIN_VALUES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(STAGE_MIN_VALUES)
    });
    let base = match (set, folded) {
        (Some(t), _) => return *t,
        (None, false) => Tuning::default(),
        (None, true) => Tuning::folded(),
    };
    match values >= stage_from {
        true => Tuning {
            stage: true,
            max_blocks: STAGED_MAX_BLOCKS,
            ..base
        },
        false => base,
    }
}

/// `KOOKA_QMV_TUNING`, read once: one tuning for every call (for measuring).
pub(super) fn explicit_tuning() -> &'static Option<Tuning> {
    static TUNING: OnceLock<Option<Tuning>> = OnceLock::new();
    TUNING.get_or_init(|| {
        std::env::var("KOOKA_QMV_TUNING")
            .ok()
            .and_then(|v| parse_tuning(&v))
    })
}

/// Which products the tensor cores take by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MmaUse {
    None,
    All,
    /// All but a q/k/v product with RoPE folded: on an H100 its 384 row tiles make one block
    /// each (K split 8 ways), and each block's norm and staging of x cost more than the
    /// tensor cores save (20.9 against 17.8 us; PERFORMANCE "The 4-bit products on the
    /// tensor cores").
    AllButRope,
}

/// [`MmaUse`] from `KOOKA_QMV_MMA` (`0`: none, `1`: all that fit, else the default
/// [`MmaUse::AllButRope`]), none on a GPU before compute capability 8.0 (Ampere: the
/// `mma.m16n8k16` on 16-bit floats).
fn mma_use() -> MmaUse {
    static USE: OnceLock<MmaUse> = OnceLock::new();
    *USE.get_or_init(|| {
        let ampere = crate::model::cuda::arch::compute_capability().is_some_and(|(m, _)| m >= 8);
        if !ampere {
            return MmaUse::None;
        }
        match std::env::var("KOOKA_QMV_MMA").as_deref().map(str::trim) {
            Ok("0") => MmaUse::None,
            Ok("1") => MmaUse::All,
            _ => MmaUse::AllButRope,
        }
    })
}

/// The tensor cores' tuning where they take a product by default (`rope`: q/k/v with RoPE
/// folded); whether its shape fits is [`uses_mma`]'s to say.
pub(super) fn mma_tuning(rope: bool) -> Option<Tuning> {
    let on = match mma_use() {
        MmaUse::None => false,
        MmaUse::All => true,
        MmaUse::AllButRope => !rope,
    };
    on.then(|| Tuning {
        prefetch: env_steps("KOOKA_QMV_PREFETCH", &PREFETCH),
        pipe: env_steps("KOOKA_QMV_PIPE", &PIPE),
        ..Tuning::mma()
    })
}

static PREFETCH: OnceLock<i32> = OnceLock::new();
static PIPE: OnceLock<i32> = OnceLock::new();

/// A count of steps (0-16) from the environment, read once (0 where unset): for the
/// tensor-core path's default, `KOOKA_QMV_PREFETCH` ([`Tuning::prefetch`]) and
/// `KOOKA_QMV_PIPE` ([`Tuning::pipe`]), for measuring.
fn env_steps(name: &str, cell: &OnceLock<i32>) -> i32 {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|s| (0..=16).contains(s))
            .unwrap_or(0)
    })
}

/// The most bytes of dynamic shared memory a tensor-core block takes with its ring of loads
/// ([`pipe_stages`]): two blocks to a streaming multiprocessor (each also holds 1 KiB the
/// system reserves), within what a block may have; on an H100 or H200 113 KiB. None
/// without a GPU (0 where the driver did not say: no ring).
pub(super) fn pipe_shared_bytes() -> Option<i64> {
    crate::model::cuda::arch::gpu()
        .map(|g| (g.shared_per_sm as i64 / 2 - 1024).min(g.shared_per_block as i64))
}

/// The bytes of a lane's scales (or biases) of a row and span: its groups of the span (two of
/// four with groups of 32) of `scale_bytes` each.
fn lane_scale_bytes(group: i32, scale_bytes: i32) -> i64 {
    (128 / group).min(2) as i64 * scale_bytes as i64
}

/// The bytes of a slot of the ring of loads, a step of the block's warps: `unroll` spans,
/// each lane's 16 bytes of its two rows and their scales and biases.
fn ring_slot_bytes(tuning: &Tuning, group: i32, scale_bytes: i32) -> i64 {
    let lane = 2 * 16 + 4 * lane_scale_bytes(group, scale_bytes);
    tuning.warps as i64 * tuning.unroll as i64 * 32 * lane
}

/// The staged x of [`mma_bytes`] rounded up to 16 bytes: where the ring of loads starts.
fn ring_offset(tm: i32, k: i32, group: i32) -> i64 {
    (mma_bytes(tm, k, group) + 15) / 16 * 16
}

/// The ring's slots a tensor-core call gets ([`Tuning::pipe`], fewer where the block's
/// shared memory would pass `most` bytes ([`pipe_shared_bytes`]); 0: none, loads through
/// registers): cp.async copies 4, 8 or 16 bytes, so a lane's scales of a row and span must be
/// 4 or 8 bytes (with 16-bit scales, groups of 32 or 64).
pub(super) fn pipe_stages(
    tuning: &Tuning,
    tm: i32,
    k: i32,
    group: i32,
    scale_bytes: i32,
    most: i64,
) -> i32 {
    if tuning.pipe < 2 || !matches!(lane_scale_bytes(group, scale_bytes), 4 | 8) {
        return 0;
    }
    let room =
        (most - ring_offset(tm, k, group)).max(0) / ring_slot_bytes(tuning, group, scale_bytes);
    match room.min(tuning.pipe as i64) {
        s if s >= 2 => s as i32,
        _ => 0,
    }
}

/// Dynamic shared memory of a tensor-core call: staged x, then the ring of `stages` slots.
pub(super) fn mma_shared_bytes(
    tuning: &Tuning,
    tm: i32,
    k: i32,
    group: i32,
    scale_bytes: i32,
    stages: i32,
) -> i64 {
    match stages {
        0 => mma_bytes(tm, k, group),
        s => ring_offset(tm, k, group) + s as i64 * ring_slot_bytes(tuning, group, scale_bytes),
    }
}

/// `rows_per_warp,warps,unroll,trick[,max_blocks[,stage[,mma[,k_split[,prefetch[,pipe]]]]]]`
/// (trick, stage and mma 0 or 1), as `KOOKA_QMV_TUNING` takes it.
pub fn parse_tuning(v: &str) -> Option<Tuning> {
    let n: Vec<i32> = v
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    if !(4..=10).contains(&n.len()) {
        return None;
    }
    let at = |i: usize| n.get(i).copied().unwrap_or(0);
    let t = Tuning {
        rows_per_warp: at(0),
        warps: at(1),
        unroll: at(2),
        trick: at(3) != 0,
        max_blocks: at(4),
        stage: at(5) != 0,
        mma: at(6) != 0,
        k_split: at(7),
        prefetch: at(8),
        pipe: at(9),
    };
    let ok = (1..=8).contains(&t.rows_per_warp)
        && (1..=32).contains(&t.warps)
        && (1..=16).contains(&t.unroll)
        && t.max_blocks >= 0
        && (0..=8).contains(&t.k_split)
        && (0..=16).contains(&t.prefetch)
        && (0..=16).contains(&t.pipe);
    ok.then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_largest_matrices_are_staged_by_default() {
        if std::env::var_os("KOOKA_QMV_TUNING").is_none()
            && std::env::var_os("KOOKA_QMV_STAGE_MIN_VALUES").is_none()
        {
            // an 8B model's down projection (4096 x 14336) and q/k/v (6144 x 4096): not staged
            assert_eq!(tuning(true, 4096 * 14336), Tuning::folded());
            assert_eq!(tuning(false, 6144 * 4096), Tuning::default());
            // its gate/up (28672 x 4096) and head (128256 x 4096): staged, blocks all resident
            let staged = tuning(true, 28672 * 4096);
            assert!(staged.stage);
            assert_eq!(staged.max_blocks, STAGED_MAX_BLOCKS);
            assert_eq!(staged.unroll, Tuning::folded().unroll);
            assert!(tuning(false, 128256 * 4096).stage);
        }
    }

    #[test]
    fn x_is_staged_where_it_fits() {
        let staged = Tuning {
            stage: true,
            ..Tuning::default()
        };
        // Llama-8B's K of 4096: 128 chunks, one row 17 KiB, two 34 KiB; its 14336: 60,928 bytes.
        assert_eq!(staged_bytes(1, 4096), 4 * 32 * 34 * 4);
        assert!(stages(&staged, Dtype::Bfloat16, 4, 1, 4096));
        assert!(stages(&staged, Dtype::Float16, 4, 2, 4096));
        assert!(!stages(&staged, Dtype::Bfloat16, 4, 4, 4096), "four rows");
        assert!(
            stages(&staged, Dtype::Bfloat16, 4, 1, 14336),
            "K of 14336: 61 KiB"
        );
        assert!(
            !stages(&staged, Dtype::Bfloat16, 4, 2, 14336),
            "two rows of 14336"
        );
        assert!(!stages(&staged, Dtype::Float32, 4, 1, 4096), "float32 x");
        assert!(!stages(&staged, Dtype::Bfloat16, 8, 1, 4096), "8 bits");
        let exact = Tuning {
            trick: false,
            ..staged
        };
        assert!(
            !stages(&exact, Dtype::Bfloat16, 4, 1, 4096),
            "without the trick"
        );
        assert!(!stages(&Tuning::default(), Dtype::Bfloat16, 4, 1, 4096));
        // SmolLM2's K of 576: 18 chunks, one pass of 32.
        assert_eq!(staged_bytes(3, 576), 3 * 32 * 34 * 4);
    }

    #[test]
    fn tuning_from_the_environment() {
        let t = parse_tuning("2,4,8,0").unwrap();
        assert_eq!(
            (t.rows_per_warp, t.warps, t.unroll, t.trick),
            (2, 4, 8, false)
        );
        assert_eq!(parse_tuning("2,4,8"), None);
        assert_eq!(parse_tuning("1,8,4,1,528").unwrap().max_blocks, 528);
        assert!(parse_tuning("1,8,2,1,528,1").unwrap().stage);
        assert!(!parse_tuning("1,8,2,1,528").unwrap().stage);
        let mma = parse_tuning("1,8,2,1,0,0,1,4").unwrap();
        assert!(mma.mma && !mma.stage);
        assert_eq!(mma.k_split, 4);
        assert_eq!(parse_tuning("1,8,2,1,0,0,1,9"), None);
        assert_eq!(parse_tuning("1,8,2,1,0,0,1,4,3").unwrap().prefetch, 3);
        assert_eq!(parse_tuning("1,8,2,1,0,0,1,4,3,4").unwrap().pipe, 4);
        assert_eq!(parse_tuning("1,8,2,1,0,0,1,4,3,4,0"), None);
        assert_eq!(parse_tuning("1,8,2,1,0,0,1,4,17"), None);
        assert_eq!(parse_tuning("1,8,4,1,-1"), None);
        assert_eq!(parse_tuning("0,4,8,1"), None);
    }

    #[test]
    fn the_tensor_cores_take_4_bit_16_bit_whole_spans() {
        let mma = Tuning {
            mma: true,
            ..Tuning::default()
        };
        assert!(uses_mma(&mma, Dtype::Bfloat16, 4, 64, 1, 4096));
        assert!(
            uses_mma(&mma, Dtype::Float16, 4, 64, 4, 4096),
            "4 rows: 8 columns"
        );
        assert!(
            !uses_mma(&mma, Dtype::Bfloat16, 4, 64, 8, 4096),
            "8 rows: 16 columns"
        );
        assert!(uses_mma(&mma, Dtype::Bfloat16, 4, 128, 8, 1024));
        assert!(
            !uses_mma(&mma, Dtype::Bfloat16, 4, 128, 8, 4096),
            "8 rows of 4096: 97 KiB"
        );
        assert!(!uses_mma(&mma, Dtype::Bfloat16, 4, 32, 4, 4096));
        assert!(
            !uses_mma(&mma, Dtype::Bfloat16, 4, 64, 1, 576),
            "K of 576: 4.5 spans"
        );
        assert!(!uses_mma(&mma, Dtype::Float32, 4, 64, 1, 4096));
        assert!(!uses_mma(&mma, Dtype::Bfloat16, 8, 64, 1, 4096));
        assert!(!uses_mma(
            &Tuning::default(),
            Dtype::Bfloat16,
            4,
            64,
            1,
            4096
        ));
        // a K of 14336: 112 spans, 43,904 bytes a row of x
        assert_eq!(mma_bytes(1, 14336, 64), 128 + 112 * 384 + 224 * 4);
        assert!(uses_mma(&mma, Dtype::Bfloat16, 4, 64, 1, 14336));
        assert!(
            !uses_mma(&mma, Dtype::Bfloat16, 4, 64, 2, 14336),
            "two rows: 86 KiB"
        );
    }

    #[test]
    fn the_ring_of_loads_fits_its_shared_memory() {
        let t = Tuning {
            pipe: 3,
            ..Tuning::mma()
        };
        // an H100's 113 KiB a block; 8 warps, 2 spans a step, bf16 scales of groups of 64:
        // 24 KiB a slot
        let most = 228 * 1024 / 2 - 1024;
        assert_eq!(ring_slot_bytes(&t, 64, 2), 8 * 2 * 32 * 48);
        assert_eq!(pipe_stages(&t, 1, 4096, 64, 2, most), 3);
        let bytes = mma_shared_bytes(&t, 1, 4096, 64, 2, 3);
        assert_eq!(bytes, ring_offset(1, 4096, 64) + 3 * 8 * 3072);
        assert!(bytes <= most);
        // six slots do not fit: as many as do; a K of 14336 stages 43 KiB of x first
        let six = Tuning { pipe: 6, ..t };
        assert_eq!(pipe_stages(&six, 1, 4096, 64, 2, most), 4);
        assert_eq!(pipe_stages(&six, 1, 14336, 64, 2, most), 2);
        assert_eq!(
            pipe_stages(&six, 1, 14336, 64, 2, 60_000),
            0,
            "no room for 2"
        );
        // groups of 128 with 16-bit scales: 2 bytes a lane, which cp.async cannot copy
        assert_eq!(pipe_stages(&t, 1, 4096, 128, 2, most), 0);
        assert_eq!(pipe_stages(&t, 1, 4096, 128, 4, most), 3, "float32 scales");
        assert_eq!(pipe_stages(&Tuning::mma(), 1, 4096, 64, 2, most), 0, "off");
        assert_eq!(
            mma_shared_bytes(&t, 1, 4096, 64, 2, 0),
            mma_bytes(1, 4096, 64)
        );
    }

    #[test]
    fn k_is_split_while_the_warps_are_few() {
        let t = Tuning {
            mma: true,
            ..Tuning::default()
        };
        // an 8B model's head (8016 tiles), gate/up (1792), q/k/v (384), down (256 of K 14336)
        assert_eq!(k_split(&t, 8016, 4096), 1);
        assert_eq!(k_split(&t, 1792, 4096), 2);
        assert_eq!(k_split(&t, 384, 4096), 8);
        assert_eq!(k_split(&t, 256, 14336), 8);
        // spans that do not halve, warps that do not
        assert_eq!(k_split(&t, 10, 384), 1);
        let four = Tuning { warps: 4, ..t };
        assert_eq!(k_split(&four, 256, 4096), 4);
        let set = Tuning { k_split: 2, ..t };
        assert_eq!(k_split(&set, 8016, 4096), 2);
        assert_eq!(k_split(&set, 8016, 384), 1, "3 spans");
    }
}
