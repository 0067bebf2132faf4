// Body of kooka's batched decode attention, pass 1 (MLX wraps it in a __global__ function
// whose parameters are the inputs q, k, v, starts with their _shape/_strides, then the
// outputs o_part, m_part, l_part). Compile-time constants: T (q/k/v dtype), D (head dim, a
// multiple of 32), G (query heads per key/value head), SCALE_BITS (the softmax scale times
// log2(e), as float bits).
//
// One block of 4 warps per (key chunk, key/value head, row). Row b attends to keys
// starts[b] .. L-1 (L = k_shape[2]); this block to the chunk's share of them. Each warp
// walks every 4th key of the chunk: its 32 lanes hold D/32 elements of each of the G
// queries, of the key and of the value, and keep a running max, sum and weighted value per
// query (scores in base 2). The warps' partial results are merged through shared memory;
// the chunk's (max, sum, weighted values) go to m_part, l_part, o_part for pass 2.
const float NEG_INF = -__int_as_float(0x7f800000);
constexpr int WARPS = 4;
constexpr int E = D / 32;
const float scale_log2e = __int_as_float(SCALE_BITS);
const int chunk = blockIdx.x;
const int hk = blockIdx.y;
const int b = blockIdx.z;
const int warp = threadIdx.x / 32;
const int lane = threadIdx.x % 32;
const int nc = gridDim.x;
const int L = k_shape[2];
const int hq = q_shape[1];
const int per_chunk = (L + nc - 1) / nc;
const int lo = max(starts[b], chunk * per_chunk);
const int hi = min(L, (chunk + 1) * per_chunk);

float qr[G][E];
float m[G];
float l[G];
float o[G][E];
for (int g = 0; g < G; ++g) {
  const T* qp = q + b * q_strides[0] + (hk * G + g) * q_strides[1];
  for (int e = 0; e < E; ++e) {
    qr[g][e] = static_cast<float>(qp[(lane * E + e) * q_strides[3]]) * scale_log2e;
    o[g][e] = 0.f;
  }
  m[g] = NEG_INF;
  l[g] = 0.f;
}

const T* kb = k + b * k_strides[0] + hk * k_strides[1];
const T* vb = v + b * v_strides[0] + hk * v_strides[1];
for (int j = lo + warp; j < hi; j += WARPS) {
  const T* kp = kb + j * k_strides[2];
  const T* vp = vb + j * v_strides[2];
  float kr[E];
  float vr[E];
  for (int e = 0; e < E; ++e) {
    kr[e] = static_cast<float>(kp[(lane * E + e) * k_strides[3]]);
    vr[e] = static_cast<float>(vp[(lane * E + e) * v_strides[3]]);
  }
  for (int g = 0; g < G; ++g) {
    float s = 0.f;
    for (int e = 0; e < E; ++e) {
      s += qr[g][e] * kr[e];
    }
    for (int off = 16; off > 0; off /= 2) {
      s += __shfl_xor_sync(0xffffffff, s, off);
    }
    const float mn = fmaxf(m[g], s);
    const float corr = exp2f(m[g] - mn);
    const float p = exp2f(s - mn);
    l[g] = l[g] * corr + p;
    for (int e = 0; e < E; ++e) {
      o[g][e] = o[g][e] * corr + p * vr[e];
    }
    m[g] = mn;
  }
}

__shared__ float sm[WARPS][G];
__shared__ float sl[WARPS][G];
__shared__ float so[WARPS][G][D];
for (int g = 0; g < G; ++g) {
  if (lane == 0) {
    sm[warp][g] = m[g];
    sl[warp][g] = l[g];
  }
  for (int e = 0; e < E; ++e) {
    so[warp][g][lane * E + e] = o[g][e];
  }
}
__syncthreads();
for (int idx = threadIdx.x; idx < G * D; idx += blockDim.x) {
  const int g = idx / D;
  const int d = idx % D;
  float mx = NEG_INF;
  for (int w = 0; w < WARPS; ++w) {
    mx = fmaxf(mx, sm[w][g]);
  }
  float lsum = 0.f;
  float osum = 0.f;
  if (mx != NEG_INF) {
    for (int w = 0; w < WARPS; ++w) {
      const float f = exp2f(sm[w][g] - mx);
      lsum += sl[w][g] * f;
      osum += so[w][g][d] * f;
    }
  }
  const size_t row = (size_t(b) * hq + hk * G + g) * nc + chunk;
  o_part[row * D + d] = osum;
  if (d == 0) {
    m_part[row] = mx;
    l_part[row] = lsum;
  }
}
