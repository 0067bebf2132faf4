// Body of kooka's 4-bit matmul for a few rows: y = x W^T with W packed as MLX's affine 4-bit
// (uint32 words of 8 values along K, low bits first; per group of GROUP values a scale and a
// bias: w = scale * q + bias). MLX wraps it in a __global__ function of x [M, K] (T), w
// [N, K/8] (uint32), scales and biases [N, K/GROUP] (S), their _shape, and the output y
// [M, N] (T). Template constants: T, S, TM (rows held per thread, >= M), GROUP, WARPS.
//
// One block per 32 output columns, one column per lane; the block's WARPS warps split K in
// chunks of 64 values (warp w takes chunks w, w + WARPS, ...). A lane reads its column's 64
// packed values at once (32 bytes: whole memory sectors), unpacks them to float, and
// multiplies them with the chunk of every row of x (the same addresses for all lanes:
// broadcast from L1); the warps' sums meet in shared memory. The weights are read once
// whatever M is, which MLX's kernels for 2-32 rows do not manage on CUDA.
const int M = x_shape[0];
const int K = x_shape[1];
const int N = w_shape[0];
const int lane = threadIdx.x % 32;
const int warp = threadIdx.x / 32;
const int n = blockIdx.x * 32 + lane;
const int chunks = K / 64;
constexpr int PER_VEC = 16 / sizeof(T);

float acc[TM];
#pragma unroll
for (int m = 0; m < TM; ++m) {
  acc[m] = 0.f;
}
if (n < N) {
  const uint32_t* wrow = w + size_t(n) * (K / 8);
  const S* srow = scales + size_t(n) * (K / GROUP);
  const S* brow = biases + size_t(n) * (K / GROUP);
  for (int c = warp; c < chunks; c += WARPS) {
    const int k0 = c * 64;
    const uint4* wp = reinterpret_cast<const uint4*>(wrow + k0 / 8);
    const uint4 wa = wp[0];
    const uint4 wb = wp[1];
    const uint32_t words[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
    float wf[64];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int g = (k0 + 8 * j) / GROUP;
      const float s = static_cast<float>(srow[g]);
      const float b = static_cast<float>(brow[g]);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        // q as a float without a conversion instruction: 2^23 + q, minus 2^23.
        const float q = __uint_as_float(0x4B000000u | ((words[j] >> (4 * i)) & 15u)) - 8388608.f;
        wf[8 * j + i] = fmaf(s, q, b);
      }
    }
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      if (m < M) {
        const uint4* xp = reinterpret_cast<const uint4*>(x + size_t(m) * K + k0);
        float d = 0.f;
#pragma unroll
        for (int v = 0; v < 64 / PER_VEC; ++v) {
          const uint4 raw = xp[v];
          const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
          for (int e = 0; e < PER_VEC; ++e) {
            d = fmaf(static_cast<float>(vals[e]), wf[v * PER_VEC + e], d);
          }
        }
        acc[m] += d;
      }
    }
  }
}

__shared__ float partial[WARPS][TM][32];
#pragma unroll
for (int m = 0; m < TM; ++m) {
  partial[warp][m][lane] = acc[m];
}
__syncthreads();
for (int idx = threadIdx.x; idx < TM * 32; idx += blockDim.x) {
  const int m = idx / 32;
  const int col = blockIdx.x * 32 + idx % 32;
  if (m < M && col < N) {
    float sum = 0.f;
#pragma unroll
    for (int ww = 0; ww < WARPS; ++ww) {
      sum += partial[ww][m][idx % 32];
    }
    y[size_t(m) * N + col] = static_cast<T>(sum);
  }
}
