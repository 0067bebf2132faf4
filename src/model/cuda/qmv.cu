// Body of kooka's quantized matrix-vector product for a few rows: y = x W^T, W packed as MLX's
// affine BITS-bit (uint32 words of 32/BITS values along K, low bits first; per group of GROUP
// values a scale and a bias: w = scale * q + bias). MLX wraps it in a __global__ function of
// x [..., K] (T; M rows: any shape, so that callers need no view of it), w [N, K*BITS/32]
// (uint32), scales and biases [N, K/GROUP] (S), their _shape, and the output y [M, N] (T; its
// shape is the caller's). Compile-time constants: T, S, TM (rows of x held, >= M), BITS (4 or
// 8), GROUP (32, 64 or 128), RPW (rows of W per warp), WARPS (warps per block), UNROLL (16-byte
// loads a lane has in flight per row), TRICK (1: unpack 4-bit values with the exponent trick
// below when x is 16-bit; 0, or float32 x: exactly, one value at a time), KN (= K), STAGE (1:
// the block first stages x in shared memory as floats in the order the lanes read them, with
// each 32-value chunk's sums, below; 4-bit 16-bit x with the trick only).
//
// Decode reads every weight once per token, so this is a memory-bound kernel: each warp owns
// RPW rows of W at a time and streams them with whole 16-byte loads per lane (a warp reads 512
// contiguous bytes of a row per step), UNROLL loads per row in flight, so the memory system
// always has enough requests. Each lane's 16 bytes (32 values at 4 bits, 16 at 8) fall in one
// quantization group (GROUP is a multiple of them), so a load needs one scale and one bias:
// sum(x * (s q + b)) = s * sum(x q) + b * sum(x); sum(x) is shared by the warp's RPW rows and
// the x values are read (through L1) once for all of them. Sums are float32.
//
// The 4-bit unpacking is what the arithmetic units spend most on. With TRICK, one shift
// places two values at bits 12-15 and 16-19 of a word; OR-ing the exponent of 1.0 into each
// makes the floats 1 + q / 2048 and 1 + q / 128 without a conversion, so x * q comes out of
// sum(x * f) - sum(x) scaled back (1.5 integer operations a value instead of 3; the float
// sums lose at most ~2^-13 of sum |x| in the rescaling, far below bfloat16's 2^-8).
//
// Per 8 values a row the trick's multiply is 12 integer operations and 8 FMAs; reading x
// from memory adds 8 conversions and 8 additions (for sum(x)) per row unless RPW shares them.
// STAGE does both once per block instead (shared memory, conflict-free): ~40% fewer operations
// a row, best with several blocks' worth of rows per warp (max_blocks) so that each block
// stages x once. Measured faster on the largest matrices only (docs/PERFORMANCE.md), so by
// default only those are staged (qmv/tuning.rs). The staged floats live in dynamic shared
// memory, sized by the launch.
//
// MMA (1: 4-bit W, 16-bit x) runs the products on the tensor cores instead, where the
// unpacking costs a quarter of the above: a warp takes 16 rows of W (8 pairs with SwiGLU or
// RoPE) and multiplies them with mma.m16n8k16 (float32 sums). A "span" is 64 bytes of a row
// (128 values, 4 lanes' 16-byte loads); lane (g, t) = lane (4g + t) holds rows g and g + 8 of
// the tile (A's rows) over its 32 values of each span, and one lop3 makes two of them the
// 16-bit floats OFF + q (the exponent of 128 for bfloat16, 1024 for half, OR-ed over q: exact,
// no conversion); sum(x (OFF + q)) - OFF sum(x) is sum(x q). The block stages x once as the
// B fragments ((x0, x4), (x1, x5), ... the order the values come out of a word); the groups of
// a span (128 / GROUP of them) go to separate columns of B (lanes whose group a column is not
// read zeros there), so that D holds one sum per row, group and row of x, to which the group's
// scale and bias apply (float32, as the scalar path: the tensor cores only add exact products
// of 16-bit values, in float32). x's rows take the columns too (TM * 128 / GROUP <= 8). K may
// be split among KSPLIT warps of a block (the row tiles of a small matrix are too few to keep
// the memory busy), their sums added in order. UNROLL is then the spans of a step.
// No more loads than the scalar path, half the instructions a weight (docs/PERFORMANCE.md).
// How far the loads run ahead of the products: by default one step (UNROLL spans) in
// registers, double-buffered; PIPE (>= 2) runs them through a ring of PIPE steps in shared
// memory by cp.async instead (PIPE - 1 steps in flight, no registers held for them; measured
// much slower on an H100, so off: the default already runs at the speed of its own loads); PF
// (> 0) asks the L2 for the data PF steps ahead besides (not measured yet).
//
// Folded neighbours, each switched on by a #define in the kernel's header (one compiled
// kernel per combination), so that a decode step runs fewer kernels (each costs the device
// ~4 us however small): QMV_NORM takes `norm` [K] and normalizes x first, as MLX's RMSNorm
// (float sum of squares, rsqrt(mean + eps) with eps the float of EPS_BITS, then
// norm * T(x * r)), into shared memory that the block's warps read instead of x;
// QMV_GLU takes W as gate and up stacked ([2H, K]) and writes silu(gate) * up ([M, H]), a
// warp computing gate row o and up row H + o together, in T at every op as MLX's compiled
// SwiGLU; QMV_RES takes `res` [M, outputs] and writes res + y (MLX's Add in T); QMV_ROPE
// rotates the q and k heads of a fused q/k/v product as MLX's RoPE (its `rope_single` /
// `rope` kernels' float steps on the products rounded to T): heads of HD features, the first
// RH rotated (the v heads after them are not), TRAD for the traditional pairing, positions
// `pos` [1] or [M] (int32), the frequencies from log2(base) (BASE_BITS) or, with
// QMV_ROPE_FREQS, `freqs` [HD / 2] (float32), positions scaled by the float of SCALE_BITS; a
// warp computes both rows of a rotated pair. With RoPE the outputs are the heads apart, as
// the attention takes them (q's are the first QH rotated heads): `yq` [M, QH, 1, HD], `yk`
// [M, RH - QH, 1, HD] and `yv` [M, the rest, 1, HD], no y (one position a row: the layout of
// [M, 1, heads, HD], so no transpose either). With QMV_KV_CACHE as well, k and v go straight
// into the layer's cache instead (`kc`, `vc` [M, heads, capacity, HD], at position pos[0]):
// only q comes out, and the decode step needs no cache update of its own.
int M = 1;
for (int i = 0; i + 1 < x_ndim; ++i) {
  M *= x_shape[i];
}
const int K = x_shape[x_ndim - 1];
const int N = w_shape[0];  // rows of W
#if defined(QMV_GLU) || defined(QMV_ROPE)
const int NO = N / 2;  // outputs: gate row o with up row NO + o; or RoPE's pair o
constexpr int RR = 2 * RPW;  // rows of W a warp streams
constexpr bool PAIRED = true;
#else
const int NO = N;
constexpr int RR = RPW;
constexpr bool PAIRED = false;
#endif
constexpr int VPL = 128 / BITS;  // values in a lane's 16-byte load
constexpr int VPW = 32 / BITS;   // values in a word
constexpr int XB = VPW * sizeof(T);  // bytes of x under a word
const int lane = threadIdx.x & 31;
static_assert(!STAGE || (BITS == 4 && TRICK && sizeof(T) == 2), "STAGE: the trick's path only");
const int warp = threadIdx.x >> 5;

#ifdef QMV_NORM
constexpr bool NORM = true;
#else
constexpr bool NORM = false;
#endif
// The x a lane reads with STAGE: chunk c's 32 values as floats in shared memory, word j's
// eight as two float4s (h = 0, 1) at (((m * QS + c / 32) * 4 + j) * 2 + h) * 32 + c % 32, so
// that a warp's 32 lanes read 512 consecutive bytes (no bank conflicts); and each chunk's sums
// of its even and odd values, which the trick needs: no value of x is then converted or added
// per row of W.
// They live in the launch's dynamic shared memory (qmv's `staged_bytes`): a K of 14336 takes
// 61 KiB, past the 48 KiB of static shared memory a kernel may have.
constexpr int QS = STAGE ? (KN / VPL + 31) / 32 : 1;
extern __shared__ __align__(16) float qmv_staged[];
float* const xst = qmv_staged;
float* const xlo_s = xst + TM * QS * 32 * VPL;
float* const xhi_s = xlo_s + TM * QS * 32;
// Without STAGE, QMV_NORM's normalized x in its own order.
__shared__ __align__(16) T xs[NORM && !STAGE && !MMA ? TM * KN : 1];

const int chunks = K / VPL;
const int words_per_row = K / VPW;
const int groups = K / GROUP;
// A warp's work is a sequence of tiles: pass b (UNROLL 16-byte loads a lane, each row of the
// group) of row group rg (RPW outputs), for its row groups rg, rg + stride, ... While it
// multiplies one tile, the next one's loads are in flight (registers double-buffered), so the
// memory never waits on the arithmetic; with fewer blocks than row groups (Tuning's
// max_blocks) warps stay resident and go on to further rows.
const int passes = (chunks + 32 * UNROLL - 1) / (32 * UNROLL);
const int row_groups = (NO + RPW - 1) / RPW;
const int stride = gridDim.x * WARPS;
int rg = blockIdx.x * WARPS + warp;
const bool active = rg < row_groups;

// Row r of row group rg; rows past the end repeat the last one, never written.
#ifdef QMV_ROPE
// Pair o's two rows: in head o / (HD / 2), features i and i + HD / 2 (TRAD: 2i and 2i + 1)
// for i = o % (HD / 2), as MLX's RoPE pairs them.
auto pair_rows = [](int o, int& a, int& b) {
  const int h = o / (HD / 2);
  const int i = o - h * (HD / 2);
  a = h * HD + (TRAD ? 2 * i : i);
  b = a + (TRAD ? 1 : HD / 2);
};
// Row `row` of x's row m into its head's output.
auto put = [&](int m, int row, T value) {
  constexpr int QR = QH * HD;
  constexpr int KR = (RH - QH) * HD;
  const int vr = N - RH * HD;
  if (row < QR) {
    yq[size_t(m) * QR + row] = value;
  } else if (row < QR + KR) {
#ifdef QMV_KV_CACHE
    // Written where it is kept: the layer's cache `kc` [M, RH - QH, capacity, HD], at the
    // position being computed (the host makes sure that is the cache's next position and
    // that nothing else reads that slot; MLX hands inputs over as const).
    const int r = row - QR;
    const_cast<T*>(kc)[(size_t(m) * (RH - QH) + r / HD) * kc_shape[2] * HD + size_t(pos[0]) * HD + r % HD] =
        value;
#else
    yk[size_t(m) * KR + row - QR] = value;
#endif
  } else {
#ifdef QMV_KV_CACHE
    const int r = row - QR - KR;
    const_cast<T*>(vc)[(size_t(m) * (vr / HD) + r / HD) * vc_shape[2] * HD + size_t(pos[0]) * HD + r % HD] =
        value;
#else
    yv[size_t(m) * vr + row - QR - KR] = value;
#endif
  }
};
#endif
auto row_of = [&](int group, int r) {
#ifdef QMV_GLU
  const int o = min(group * RPW + r % RPW, NO - 1);
  return r < RPW ? o : NO + o;
#elif defined(QMV_ROPE)
  int a, b;
  pair_rows(min(group * RPW + r % RPW, NO - 1), a, b);
  return r < RPW ? a : b;
#else
  return min(group * RPW + r, N - 1);
#endif
};
struct Tile {
  uint4 w[UNROLL][RR];
  float s[UNROLL][RR];
  float b[UNROLL][RR];
};
auto load = [&](int group, int pass, Tile& t) {
#pragma unroll
  for (int r = 0; r < RR; ++r) {
    const size_t n = row_of(group, r);
    const uint4* wr = reinterpret_cast<const uint4*>(w + n * words_per_row);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = (pass * UNROLL + u) * 32 + lane;
      if (c < chunks) {
        const int g = c * VPL / GROUP;
        t.w[u][r] = wr[c];
        t.s[u][r] = static_cast<float>(scales[n * groups + g]);
        t.b[u][r] = static_cast<float>(biases[n * groups + g]);
      }
    }
  }
};

float acc[TM][RR];
#pragma unroll
for (int m = 0; m < TM; ++m) {
#pragma unroll
  for (int r = 0; r < RR; ++r) {
    acc[m][r] = 0.f;
  }
}

// VPW values of x from `p` as floats.
[[maybe_unused]] auto load_x = [](const T* p, float* out) {  // unused: QMV_PROBE
  if constexpr (XB == 16 || XB == 32) {
#pragma unroll
    for (int h = 0; h < XB / 16; ++h) {
      const uint4 raw = reinterpret_cast<const uint4*>(p)[h];
      const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < 16 / int(sizeof(T)); ++i) {
        out[h * (16 / int(sizeof(T))) + i] = static_cast<float>(v[i]);
      }
    }
  } else {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < VPW; ++i) {
      out[i] = static_cast<float>(v[i]);
    }
  }
};

#ifdef QMV_NORM
// MLX's RMSNorm of x's rows, for x_at: the whole block computes each row's 1 / rms before any
// warp multiplies.
__shared__ float part[TM][WARPS];
__shared__ float rinv[TM];
#endif
auto normalize = [&]() {
#ifdef QMV_NORM
  for (int m = 0; m < M; ++m) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < K; i += 32 * WARPS) {
      const float v = static_cast<float>(x[size_t(m) * K + i]);
      ss += v * v;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, off);
    }
    if (lane == 0) {
      part[m][warp] = ss;
    }
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < WARPS; ++i) {
      ss += part[threadIdx.x][i];
    }
    rinv[threadIdx.x] = rsqrt(ss / K + __int_as_float(EPS_BITS));
  }
  __syncthreads();
#endif
};
// Value i of x's row m as the products read it (normalized with QMV_NORM, after normalize()).
auto x_at = [&](int m, int i) -> T {
#ifdef QMV_NORM
  const float v = static_cast<float>(x[size_t(m) * K + i]) * rinv[m];
  return norm[i] * static_cast<T>(v);
#else
  return x[size_t(m) * K + i];
#endif
};
// Output o of x's row m from its product va (with SwiGLU or RoPE: pair o's two products, va
// and vb), through the folds after the product.
auto store = [&](int m, int o, float va, [[maybe_unused]] float vb) {
#ifdef QMV_ROPE
  int a, b;
  pair_rows(o, a, b);
  const int h = o / (HD / 2);
  const int i = o - h * (HD / 2);
  T out_a = static_cast<T>(va);
  T out_b = static_cast<T>(vb);
  if (h < RH) {
    // MLX's RoPE kernel, step by step, on the products as T
#ifdef QMV_ROPE_FREQS
    float inv_freq = 1.0 / freqs[i];
#else
    float d = static_cast<float>(i) / static_cast<float>(HD / 2);
    float inv_freq = exp2(-d * __int_as_float(BASE_BITS));
#endif
    float L = __int_as_float(SCALE_BITS) * static_cast<float>(pos[pos_shape[0] == 1 ? 0 : m]);
    float theta = L * inv_freq;
    float costheta = cos(theta);
    float sintheta = sin(theta);
    float x1 = static_cast<float>(out_a);
    float x2 = static_cast<float>(out_b);
    float rx1 = x1 * costheta - x2 * sintheta;
    float rx2 = x1 * sintheta + x2 * costheta;
    out_a = static_cast<T>(rx1);
    out_b = static_cast<T>(rx2);
  }
  put(m, a, out_a);
  put(m, b, out_b);
#else
#ifdef QMV_GLU
  const T g = static_cast<T>(va);
  T out = Multiply{}(Multiply{}(g, Sigmoid{}(g)), static_cast<T>(vb));
#else
  T out = static_cast<T>(va);
#endif
#ifdef QMV_RES
  out = Add{}(res[size_t(m) * NO + o], out);
#endif
  y[size_t(m) * NO + o] = out;
#endif
};

// ---- MMA: the products on the tensor cores (see the comment at the top) ----
if constexpr (MMA) {
  static_assert(!MMA || (BITS == 4 && sizeof(T) == 2), "MMA: 4-bit W, 16-bit x");
  constexpr bool BF16 = cuda::std::is_same_v<T, __nv_bfloat16>;
  // 128 + q as a bfloat16 (1024 + q as a half): the exponent OR-ed over a 4-bit value
  constexpr uint32_t MAGIC = BF16 ? 0x43004300u : 0x64006400u;
  constexpr float OFF = BF16 ? 128.f : 1024.f;
  constexpr int Q = 128 / GROUP;  // groups in a span (a row's 64 bytes: 4 lanes' 16)
  constexpr int NQ = Q < 2 ? Q : 2;  // groups a lane's two columns of D cover
  constexpr int ITEMS = PAIRED ? 8 : 16;  // outputs of a warp's 16 rows
  constexpr int TPB = WARPS / KSPLIT;  // row tiles of a block
  constexpr int SPAN_WORDS = 96;  // a staged span of a row of x: 4 lanes' 16 words 80 bytes apart
  const int nsp = K / 128;
  const int ng = K / GROUP;
  const int tiles = (NO + ITEMS - 1) / ITEMS;
  const int tile_groups = (tiles + TPB - 1) / TPB;
  if (int(blockIdx.x) >= tile_groups) {
    return;
  }
  const int g = lane >> 2, t = lane & 3;
  const int slot = warp / KSPLIT, kpart = warp - slot * KSPLIT;
  const int per_part = nsp / KSPLIT;
  const int span0 = kpart * per_part;
  const int steps = (per_part + UNROLL - 1) / UNROLL;
  uint32_t* const zero = reinterpret_cast<uint32_t*>(qmv_staged);  // 128 bytes
  uint32_t* const xp = zero + 32;
  float* const xsum = reinterpret_cast<float*>(xp + M * nsp * SPAN_WORDS);

  // Row r (0-15) of tile `tile`: rows past the end repeat the last one, never written.
  auto tile_row = [&](int tile, int r) -> int {
#ifdef QMV_GLU
    const int o = min(tile * 8 + (r & 7), NO - 1);
    return r < 8 ? o : NO + o;
#elif defined(QMV_ROPE)
    int a, b;
    pair_rows(min(tile * 8 + (r & 7), NO - 1), a, b);
    return r < 8 ? a : b;
#else
    return min(tile * 16 + r, N - 1);
#endif
  };
  struct MmaTile {
    uint4 w[UNROLL][2];
    S s[UNROLL][2][NQ];
    S b[UNROLL][2][NQ];
  };
  // The scales (or biases) of a lane's NQ groups of a span.
  auto load_groups = [](const S* p, S* out) {
    if constexpr (sizeof(S) == 2 && NQ == 2) {
      *reinterpret_cast<uint32_t*>(out) = *reinterpret_cast<const uint32_t*>(p);
    } else {
#pragma unroll
      for (int q = 0; q < NQ; ++q) {
        out[q] = p[q];
      }
    }
  };
  const int qoff = Q == 4 ? 2 * (t & 1) : 0;
  auto tile_of = [&](int it) { return (int(blockIdx.x) + it * int(gridDim.x)) * TPB + slot; };
  // Where this lane reads its two rows of a tile (found once a tile, not at every load), as
  // 32-bit offsets (fewer registers than pointers): in 16-byte words of w, and in groups.
  struct Rows {
    int w[2];
    int g[2];
    bool valid;
  };
  auto rows_of = [&](int it) {
    Rows r;
    const int tile = tile_of(it);
    r.valid = tile < tiles;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = tile_row(min(tile, tiles - 1), g + 8 * h);
      r.w[h] = row * (words_per_row / 4) + t;
      r.g[h] = row * groups + qoff;
    }
    return r;
  };
  // What a lane loads in step `st` of its rows `r`: f(u, h, its 16 bytes, its scales, its
  // biases) for span u of the step and row h (the registers' loads, or the ring's copies).
  auto each_load = [&](const Rows& r, int st, auto&& f) {
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int span = span0 + st * UNROLL + u;
      if (span < span0 + per_part) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          f(u, h, reinterpret_cast<const uint4*>(w) + r.w[h] + span * 4, scales + r.g[h] + span * Q,
            biases + r.g[h] + span * Q);
        }
      }
    }
  };
  auto mma_load = [&](const Rows& r, int st, MmaTile& tl) {
    if (r.valid) {
      each_load(r, st, [&](int u, int h, const uint4* wp, const S* sp, const S* bp) {
        tl.w[u][h] = *wp;
        load_groups(sp, tl.s[u][h]);
        load_groups(bp, tl.b[u][h]);
      });
    }
  };

  // PF > 0: the L2 is asked for the data of the step PF steps ahead of this one (of tile
  // it, or of the next tile where that is past its end): weights by lanes 0-15 (row lane
  // of the tile), scales and biases by lanes 16-31. These requests take no registers, so
  // the memory has far more in flight than the loads' two steps, and the loads then find
  // their data in the L2.
  [[maybe_unused]] auto prefetch = [&](int pit, int pst) {
    if (pst >= steps) {
      pst -= steps;
      pit += 1;
    }
    const int ptile = tile_of(pit);
    if (pst >= steps || ptile >= tiles) {
      return;
    }
    const int row = tile_row(ptile, lane & 15);
    const int span = span0 + pst * UNROLL;
    const int count = min(UNROLL, span0 + per_part - span);  // spans of the step
    if (lane < 16) {
      const char* p = reinterpret_cast<const char*>(w) + (size_t(row) * (words_per_row / 4) + span * 4) * 16;
#if __CUDA_ARCH__ >= 900
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(count * 64) : "memory");
#else
      for (int i = 0; i < count; ++i) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p + i * 64));
      }
#endif
    } else {
      const size_t at = size_t(row) * groups + span * Q;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(scales + at));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(biases + at));
    }
  };

  // PIPE > 1: a warp's loads go through a ring of PIPE steps in shared memory (after the
  // staged x) by cp.async, PIPE - 1 steps in flight while it multiplies one, in place of the
  // registers' one step ahead: more in flight, fewer registers. Each lane copies, then reads
  // back, only its own data (its 16 bytes of each row and span, its scales and biases), so
  // a lane waits for its own copies only (cp.async.wait_group), never for the warp.
  constexpr int SB = NQ * int(sizeof(S));  // bytes of a lane's scales (or biases) of a row and span
  static_assert(PIPE < 2 || SB == 4 || SB == 8, "PIPE: cp.async copies 4, 8 or 16 bytes");
  constexpr int RING_STEP = UNROLL * 32 * (2 * 16 + 4 * SB);  // bytes of a warp's step
  constexpr int RING = PIPE > 1 ? PIPE : 1;  // slots of the ring
  constexpr int AHEAD = RING > 1 ? RING - 1 : 1;  // steps of loads in flight (registers: one)
  // where the ring starts: the staged x for TM rows, rounded up to 16 bytes (qmv's ring_offset)
  constexpr int X_BYTES = (128 + TM * (KN / 128 * 384 + KN / GROUP * 4) + 15) / 16 * 16;
  [[maybe_unused]] char* const ring =
      reinterpret_cast<char*>(qmv_staged) + X_BYTES + warp * (RING > 1 ? RING : 0) * RING_STEP;
  // where a lane's 16 bytes of row h of span u of a step in slot `slot` sit; then its scales
  // and biases of that row and span
  [[maybe_unused]] auto ring_w = [&](int slot, int u, int h) {
    return ring + slot * RING_STEP + ((u * 2 + h) * 32 + lane) * 16;
  };
  [[maybe_unused]] auto ring_sb = [&](int slot, int u, int h, int bias) {
    return ring + slot * RING_STEP + UNROLL * 2 * 32 * 16 + (((u * 2 + h) * 2 + bias) * 32 + lane) * SB;
  };
  [[maybe_unused]] auto copy_async = [](void* dst, const void* src, auto bytes) {
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    if constexpr (decltype(bytes)::value == 16) {
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
    } else {
      asm volatile("cp.async.ca.shared.global [%0], [%1], %2;" ::"r"(d), "l"(src), "n"(decltype(bytes)::value)
                   : "memory");
    }
  };
  // A step's copies into its slot of the ring (one commit group a step, empty where the
  // warp has no such step, so that the groups count the steps).
  [[maybe_unused]] auto issue = [&](const Rows& r, int st, int slot, bool any) {
    if (any && r.valid) {
      each_load(r, st, [&](int u, int h, const uint4* wp, const S* sp, const S* bp) {
        copy_async(ring_w(slot, u, h), wp, cuda::std::integral_constant<int, 16>{});
        copy_async(ring_sb(slot, u, h, 0), sp, cuda::std::integral_constant<int, SB>{});
        copy_async(ring_sb(slot, u, h, 1), bp, cuda::std::integral_constant<int, SB>{});
      });
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
  };
  // Slot `slot`'s step into registers, once its copies are in (all but the PIPE - 1 latest
  // groups).
  [[maybe_unused]] auto take = [&](int slot, MmaTile& tl) {
    asm volatile("cp.async.wait_group %0;" ::"n"(AHEAD) : "memory");
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        tl.w[u][h] = *reinterpret_cast<const uint4*>(ring_w(slot, u, h));
        if constexpr (SB == 4) {
          *reinterpret_cast<uint32_t*>(tl.s[u][h]) = *reinterpret_cast<const uint32_t*>(ring_sb(slot, u, h, 0));
          *reinterpret_cast<uint32_t*>(tl.b[u][h]) = *reinterpret_cast<const uint32_t*>(ring_sb(slot, u, h, 1));
        } else {
          *reinterpret_cast<uint2*>(tl.s[u][h]) = *reinterpret_cast<const uint2*>(ring_sb(slot, u, h, 0));
          *reinterpret_cast<uint2*>(tl.b[u][h]) = *reinterpret_cast<const uint2*>(ring_sb(slot, u, h, 1));
        }
      }
    }
  };

  // The steps this block's warps take: `steps` a tile, for tiles blockIdx.x, + gridDim.x, ...
  const int total = (tile_groups - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x) * steps;
  // Where the loads are (tile `ahead_it`, its step `ahead_st`): AHEAD steps ahead of the
  // step multiplied.
  int ahead_it = 0, ahead_st = 0;
  Rows ahead_rows = rows_of(0);
  // The next step's loads: rows found at each tile's first step.
  [[maybe_unused]] auto advance = [&]() {
    if (++ahead_st == steps) {
      ahead_st = 0;
      ++ahead_it;
      ahead_rows = rows_of(ahead_it);
    }
  };
  MmaTile cur;
  [[maybe_unused]] MmaTile nxt;
  if constexpr (PF > 0) {
    // the steps before the loop's first prefetch (the first's loads are already out)
    for (int i = 1; i < PF; ++i) {
      prefetch(0, i);
    }
  }
  // the first loads go out before the block prepares x
  if constexpr (PIPE > 1) {
    for (int j = 0; j < AHEAD; ++j) {
      issue(ahead_rows, ahead_st, j, j < total);
      advance();
    }
  } else {
    mma_load(ahead_rows, 0, cur);
    advance();
  }
  normalize();
  // x staged for the tensor cores: lane t's 32 values of a span (values 32t..32t+31) as the
  // 16 pairs its B fragments take, (x0, x4), (x1, x5), (x2, x6), (x3, x7) for each 8 (the
  // order the 4-bit values come out of a word), and each group's sum of x.
  if (threadIdx.x < 32) {
    zero[threadIdx.x] = 0u;
  }
  const int chunks8 = M * (K / 8);
  for (int base = warp * 32; base < chunks8; base += WARPS * 32) {
    const int c = base + lane;
    float sum = 0.f;
    int m = 0, k = 0;
    if (c < chunks8) {
      m = c / (K / 8);
      k = (c - m * (K / 8)) * 8;
      uint32_t bits[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const T v = x_at(m, k + e);
        sum += static_cast<float>(v);
        bits[e] = *reinterpret_cast<const uint16_t*>(&v);
      }
      const int span = k >> 7, lt = (k >> 5) & 3, j = (k >> 3) & 3;
      *reinterpret_cast<uint4*>(xp + (m * nsp + span) * SPAN_WORDS + lt * 20 + j * 4) =
          make_uint4(bits[0] | bits[4] << 16, bits[1] | bits[5] << 16, bits[2] | bits[6] << 16,
                     bits[3] | bits[7] << 16);
    }
#pragma unroll
    for (int off = 1; off < GROUP / 8; off <<= 1) {
      sum += __shfl_xor_sync(0xffffffffu, sum, off);
    }
    if (c < chunks8 && c % (GROUP / 8) == 0) {
      xsum[m * ng + k / GROUP] = sum;
    }
  }
  __syncthreads();

  // B column n holds x's row n / Q over group n % Q of a span, zeros elsewhere: lane (g, t)
  // gives column g its values of lane t's 32, or zeros.
  const bool real = g / Q < M && g % Q == t * Q / 4;
  const uint32_t* const xl = real ? xp + (g / Q) * nsp * SPAN_WORDS + t * 20 : zero + 16;
  const int xstride = real ? SPAN_WORDS : 0;
  // D's columns 2t and 2t + 1 of this lane: x's rows (2t + c) / Q, groups (2t + c) % Q.
  // Columns past x's rows read the last row's sums (and are never written): no branch.
  int cm[2], xrow[2];
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    cm[c] = (2 * t + c) / Q;
    xrow[c] = min(cm[c], M - 1) * ng + (2 * t + c) % Q;
  }
  float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
  // Values p and p + 4 of a word as 16-bit floats OFF + q: the shift a high multiply (the
  // multiply-add pipe, which the tensor-core loop leaves idle, rather than the integer
  // one), the mask and the exponent one instruction (lop3).
  [[maybe_unused]] auto unpack = [](uint32_t word, int p) -> uint32_t {  // unused: QMV_PROBE
    uint32_t shifted = word, out;
    if (p > 0) {
      asm("mul.hi.u32 %0, %1, %2;" : "=r"(shifted) : "r"(word), "r"(1u << (32 - 4 * p)));
    }
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(out) : "r"(shifted), "n"(0x000F000Fu), "n"(MAGIC));
    return out;
  };
  [[maybe_unused]] auto mma = [](float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                uint32_t b1) {
    if constexpr (BF16) {
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
      asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
          "{%8,%9}, {%0,%1,%2,%3};"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
  };
  __shared__ float red[KSPLIT > 1 ? WARPS * 4 * 32 : 1];
  int it = 0, st = 0;
  for (int step = 0; step < total; ++step) {
    if constexpr (PIPE > 1) {
      issue(ahead_rows, ahead_st, (step + AHEAD) % RING, step + AHEAD < total);
      advance();
      take(step % RING, cur);
    } else if (step + 1 < total) {
      mma_load(ahead_rows, ahead_st, nxt);
      advance();
    }
    if constexpr (PF > 0) {
      prefetch(it, st + PF);
    }
    const int tile = tile_of(it);
    if (tile < tiles) {
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int span = span0 + st * UNROLL + u;
        if (span >= span0 + per_part) {
          break;
        }
        [[maybe_unused]] const uint4* xs4 = reinterpret_cast<const uint4*>(xl + span * xstride);
        float d[4] = {0.f, 0.f, 0.f, 0.f};
#ifdef QMV_PROBE
        // Measuring only (KOOKA_QMV_PROBE): the same loads, a XOR for the arithmetic.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint4 q = cur.w[u][h];
          d[2 * h] = __uint_as_float((q.x ^ q.y ^ q.z ^ q.w) & 0x3FFFFFFFu);
        }
#else
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint4 xb = xs4[j];
          const uint32_t w0 = reinterpret_cast<const uint32_t*>(&cur.w[u][0])[j];
          const uint32_t w1 = reinterpret_cast<const uint32_t*>(&cur.w[u][1])[j];
          uint32_t p0[4], p1[4];
#pragma unroll
          for (int p = 0; p < 4; ++p) {
            p0[p] = unpack(w0, p);
            p1[p] = unpack(w1, p);
          }
          mma(d, p0[0], p1[0], p0[1], p1[1], xb.x, xb.y);
          mma(d, p0[2], p1[2], p0[3], p1[3], xb.z, xb.w);
        }
#endif
        // d = sum(x (OFF + q)) per row and column: the group's s * sum(x q) + b * sum(x)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const float xsg = xsum[xrow[c] + span * Q];
          const int q = Q == 1 ? 0 : c;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float dot = fmaf(-OFF, xsg, d[2 * h + c]);
            acc[h][c] = fmaf(static_cast<float>(cur.s[u][h][q]), dot,
                             fmaf(static_cast<float>(cur.b[u][h][q]), xsg, acc[h][c]));
          }
        }
      }
    }
    if (st == steps - 1) {
      // The tile's sums: the K parts' in order, then each row of x's from its columns.
      if constexpr (KSPLIT > 1) {
        __syncthreads();
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          red[(warp * 4 + i) * 32 + lane] = acc[i >> 1][i & 1];
        }
        __syncthreads();
        if (kpart == 0) {
          for (int p = 1; p < KSPLIT; ++p) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              acc[i >> 1][i & 1] += red[((warp + p) * 4 + i) * 32 + lane];
            }
          }
        }
      }
      if (kpart == 0 && tile < tiles) {
        // this lane's rows of x and their products for rows g and g + 8 of the tile
        float v[2][2];
        int vm[2];
        int nv = 0;
        if constexpr (Q == 1) {
          nv = 2;
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            vm[c] = 2 * t + c;
            v[c][0] = acc[0][c];
            v[c][1] = acc[1][c];
          }
        } else {
          float s0 = acc[0][0] + acc[0][1], s1 = acc[1][0] + acc[1][1];
          if constexpr (Q == 4) {
            s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
            s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
          }
          nv = Q == 4 ? (t & 1) == 0 : 1;
          vm[0] = cm[0];
          v[0][0] = s0;
          v[0][1] = s1;
        }
        for (int i = 0; i < nv; ++i) {
          const int m = vm[i];
          if (m < M) {
            if constexpr (PAIRED) {
              if (tile * 8 + g < NO) {
                store(m, tile * 8 + g, v[i][0], v[i][1]);
              }
            } else {
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                if (tile * 16 + g + 8 * h < NO) {
                  store(m, tile * 16 + g + 8 * h, v[i][h], 0.f);
                }
              }
            }
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[i >> 1][i & 1] = 0.f;
      }
    }
    if (++st == steps) {
      st = 0;
      ++it;
    }
    if constexpr (PIPE < 2) {
      cur = nxt;
    }
  }
  return;
}

Tile cur, nxt;
if (active) {
  // The first loads go out before the block prepares x.
  load(rg, 0, cur);
}

normalize();
if constexpr (STAGE) {
  // A thread a chunk: its values in the lanes' order, its sums in the order the trick adds.
  for (int t = threadIdx.x; t < M * chunks; t += 32 * WARPS) {
    const int m = t / chunks;
    const int c = t - m * chunks;
    float lo = 0.f, hi = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        v[e] = static_cast<float>(x_at(m, c * VPL + j * 8 + e));
      }
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        lo += v[2 * p];
        hi += v[2 * p + 1];
      }
      float4* dst = reinterpret_cast<float4*>(xst) +
          ((size_t(m) * QS + (c >> 5)) * 4 + j) * 64 + (c & 31);
      dst[0] = make_float4(v[0], v[1], v[2], v[3]);
      dst[32] = make_float4(v[4], v[5], v[6], v[7]);
    }
    xlo_s[m * QS * 32 + c] = lo;
    xhi_s[m * QS * 32 + c] = hi;
  }
  __syncthreads();
} else if constexpr (NORM) {
  for (int m = 0; m < M; ++m) {
    for (int i = threadIdx.x; i < K; i += 32 * WARPS) {
      xs[m * KN + i] = x_at(m, i);
    }
  }
  __syncthreads();
}
if (!active) {
  return;
}
[[maybe_unused]] const T* xin = NORM ? xs : x;  // unused: QMV_PROBE
int b = 0;
while (true) {
  int next_rg = rg, next_b = b + 1;
  if (next_b == passes) {
    next_rg = rg + stride;
    next_b = 0;
  }
  const bool more = next_rg < row_groups;
  if (more) {
    load(next_rg, next_b, nxt);
  }
#pragma unroll
  for (int u = 0; u < UNROLL; ++u) {
    const int c = (b * UNROLL + u) * 32 + lane;
    if (c >= chunks) {
      break;
    }
#ifdef QMV_PROBE
    // Measuring only (KOOKA_QMV_PROBE): the same loads, no arithmetic on them but a XOR, so
    // that the time says what the memory alone allows at this occupancy. Wrong outputs.
#pragma unroll
    for (int r = 0; r < RR; ++r) {
      const uint4 q = cur.w[u][r];
      acc[0][r] += __uint_as_float((q.x ^ q.y ^ q.z ^ q.w) & 0x3FFFFFFFu) * cur.s[u][r] + cur.b[u][r];
    }
#else
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      if (m >= M) {
        break;
      }
      const T* xc = xin + size_t(m) * K + size_t(c) * VPL;
      float dot[RR];
#pragma unroll
      for (int r = 0; r < RR; ++r) {
        dot[r] = 0.f;
      }
      float xsum = 0.f;
      if constexpr (BITS == 4 && TRICK && sizeof(T) == 2) {
        float lo[RR], hi[RR];
        float xlo = 0.f, xhi = 0.f;
#pragma unroll
        for (int r = 0; r < RR; ++r) {
          lo[r] = 0.f;
          hi[r] = 0.f;
        }
        if constexpr (STAGE) {
          xlo = xlo_s[m * QS * 32 + c];
          xhi = xhi_s[m * QS * 32 + c];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float xv[VPW];
          if constexpr (STAGE) {
            const float4* src = reinterpret_cast<const float4*>(xst) +
                ((size_t(m) * QS + b * UNROLL + u) * 4 + j) * 64 + lane;
            const float4 a0 = src[0];
            const float4 a1 = src[32];
            xv[0] = a0.x, xv[1] = a0.y, xv[2] = a0.z, xv[3] = a0.w;
            xv[4] = a1.x, xv[5] = a1.y, xv[6] = a1.z, xv[7] = a1.w;
          } else {
            load_x(xc + j * VPW, xv);
#pragma unroll
            for (int p = 0; p < 4; ++p) {
              xlo += xv[2 * p];
              xhi += xv[2 * p + 1];
            }
          }
#pragma unroll
          for (int r = 0; r < RR; ++r) {
            const uint32_t word = reinterpret_cast<const uint32_t*>(&cur.w[u][r])[j];
            // values 2p and 2p+1 at bits 12-15 and 16-19
            const uint32_t shifted[4] = {word << 12, word << 4, word >> 4, word >> 12};
#pragma unroll
            for (int p = 0; p < 4; ++p) {
              lo[r] = fmaf(xv[2 * p], __uint_as_float(0x3F800000u | (shifted[p] & 0xF000u)), lo[r]);
              hi[r] = fmaf(xv[2 * p + 1], __uint_as_float(0x3F800000u | (shifted[p] & 0xF0000u)), hi[r]);
            }
          }
        }
#pragma unroll
        for (int r = 0; r < RR; ++r) {
          dot[r] = 2048.f * (lo[r] - xlo) + 128.f * (hi[r] - xhi);
        }
        xsum = xlo + xhi;
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float xv[VPW];
          load_x(xc + j * VPW, xv);
#pragma unroll
          for (int i = 0; i < VPW; ++i) {
            xsum += xv[i];
          }
#pragma unroll
          for (int r = 0; r < RR; ++r) {
            const uint32_t word = reinterpret_cast<const uint32_t*>(&cur.w[u][r])[j];
#pragma unroll
            for (int i = 0; i < VPW; ++i) {
              // q as a float without a conversion instruction: 2^23 + q, minus 2^23
              const uint32_t q = (word >> (BITS * i)) & ((1u << BITS) - 1u);
              dot[r] = fmaf(xv[i], __uint_as_float(0x4B000000u | q) - 8388608.f, dot[r]);
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < RR; ++r) {
        acc[m][r] += cur.s[u][r] * dot[r] + cur.b[u][r] * xsum;
      }
    }
#endif
  }
  if (next_b == 0) {
    // Every lane ends with the full sums; lane 0 writes the warp's outputs.
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      if (m >= M) {
        break;
      }
      float v[RR];
#pragma unroll
      for (int r = 0; r < RR; ++r) {
        v[r] = acc[m][r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
          v[r] += __shfl_xor_sync(0xffffffffu, v[r], off);
        }
      }
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < RPW; ++r) {
          if (rg * RPW + r < NO) {
            store(m, rg * RPW + r, v[r], v[PAIRED ? RPW + r : r]);
          }
        }
      }
    }
#pragma unroll
    for (int m = 0; m < TM; ++m) {
#pragma unroll
      for (int r = 0; r < RR; ++r) {
        acc[m][r] = 0.f;
      }
    }
  }
  if (!more) {
    break;
  }
  rg = next_rg;
  b = next_b;
  cur = nxt;
}
