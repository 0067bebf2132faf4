// Body of kooka's quantized matrix-vector product for a few rows: y = x W^T, W packed as MLX's
// affine BITS-bit (uint32 words of 32/BITS values along K, low bits first; per group of GROUP
// values a scale and a bias: w = scale * q + bias). MLX wraps it in a __global__ function of
// x [M, K] (T), w [N, K*BITS/32] (uint32), scales and biases [N, K/GROUP] (S), their _shape,
// and the output y [M, N] (T). Template constants: T, S, TM (rows of x held, >= M), BITS (4 or
// 8), GROUP (32, 64 or 128), RPW (rows of W per warp), WARPS (warps per block), UNROLL (16-byte
// loads a lane has in flight per row), TRICK (1: unpack 4-bit values with the exponent trick
// below when x is 16-bit; 0, or float32 x: exactly, one value at a time).
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
// Folded neighbours, each switched on by a #define in the kernel's header (one compiled
// kernel per combination), so that a decode step runs fewer kernels (each costs the device
// ~4 us however small): QMV_NORM takes `norm` [K] and normalizes x first, as MLX's RMSNorm
// (float sum of squares, rsqrt(mean + eps) with eps the float of EPS_BITS, then
// norm * T(x * r)), into shared memory that the block's warps read instead of x (KN = K);
// QMV_GLU takes W as gate and up stacked ([2H, K]) and writes silu(gate) * up ([M, H]), a
// warp computing gate row o and up row H + o together, in T at every op as MLX's compiled
// SwiGLU; QMV_RES takes `res` [M, outputs] and writes res + y (MLX's Add in T).
const int M = x_shape[0];
const int K = x_shape[1];
const int N = w_shape[0];  // rows of W
#ifdef QMV_GLU
const int NO = N / 2;  // outputs: gate row o with up row NO + o
constexpr int RR = 2 * RPW;  // rows of W a warp streams
#else
const int NO = N;
constexpr int RR = RPW;
#endif
constexpr int VPL = 128 / BITS;  // values in a lane's 16-byte load
constexpr int VPW = 32 / BITS;   // values in a word
constexpr int XB = VPW * sizeof(T);  // bytes of x under a word
const int lane = threadIdx.x & 31;
const int warp = threadIdx.x >> 5;

#ifdef QMV_NORM
// The whole block normalizes x into shared memory before any warp leaves.
__shared__ __align__(16) T xs[TM * KN];
__shared__ float part[TM][WARPS];
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
for (int m = 0; m < M; ++m) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < WARPS; ++i) {
    ss += part[m][i];
  }
  const float r = rsqrt(ss / K + __int_as_float(EPS_BITS));
  for (int i = threadIdx.x; i < K; i += 32 * WARPS) {
    const float v = static_cast<float>(x[size_t(m) * K + i]) * r;
    xs[m * KN + i] = norm[i] * static_cast<T>(v);
  }
}
__syncthreads();
const T* xin = xs;
#else
const T* xin = x;
#endif

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
if (rg >= row_groups) {
  return;
}

// Row r of row group rg; rows past the end repeat the last one, never written.
auto row_of = [&](int group, int r) {
#ifdef QMV_GLU
  const int o = min(group * RPW + r % RPW, NO - 1);
  return r < RPW ? o : NO + o;
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
auto load_x = [](const T* p, float* out) {
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

Tile cur, nxt;
load(rg, 0, cur);
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
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          float xv[VPW];
          load_x(xc + j * VPW, xv);
#pragma unroll
          for (int p = 0; p < 4; ++p) {
            xlo += xv[2 * p];
            xhi += xv[2 * p + 1];
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
#ifdef QMV_GLU
            const T g = static_cast<T>(v[r]);
            T out = Multiply{}(Multiply{}(g, Sigmoid{}(g)), static_cast<T>(v[RPW + r]));
#else
            T out = static_cast<T>(v[r]);
#endif
#ifdef QMV_RES
            out = Add{}(res[size_t(m) * NO + rg * RPW + r], out);
#endif
            y[size_t(m) * NO + rg * RPW + r] = out;
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
