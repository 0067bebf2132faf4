// Body of kooka's batched decode attention, pass 1 (MLX wraps it in a __global__ function
// whose parameters are the inputs q, k, v, starts with their _shape/_strides, then the
// outputs o_part, m_part, l_part). Compile-time constants: T (q/k/v dtype), D (head dim, a
// multiple of 32), G (query heads per key/value head), SCALE_BITS (the softmax scale times
// log2(e), as float bits). Under NO_STARTS (one sequence) there is no `starts`: every row
// sees all keys.
//
// One block of 4 warps per (key chunk, key/value head, row). Row b attends to keys
// starts[b] .. L-1 (L = k_shape[2]); this block to the chunk's share of them. The G queries
// (scaled, as floats) sit in shared memory. Each warp walks tiles of 32 keys (every 4th tile
// of the chunk): lane i scores key i of the tile against the G queries, reading the key's row
// with D / (16 / sizeof(T)) 16-byte loads, all in flight together; one warp-wide max per query
// updates the running max (scores in base 2); then the lanes split the value rows (D / 32
// elements each, one coalesced row a key) and add p * v, each key's p taken from its lane by a
// shuffle, the loads of VB keys issued before any is used. No branch guards a load (lanes and
// keys past the tile read its last key again, weighted 0), so that the loads can go out
// together: one sequence's step has too few warps to hide a chain of waits. Each lane keeps
// its share of the sum of p; the warps' running max, sum and weighted values are merged
// through shared memory, and the chunk's go to m_part, l_part, o_part for pass 2. Keys whose
// rows are not 16-byte aligned and contiguous (never the cache's) are read one element at a
// time.
const float NEG_INF = -__int_as_float(0x7f800000);
constexpr int WARPS = 4;
constexpr int E = D / 32;               // value elements a lane accumulates
constexpr int V16 = 16 / sizeof(T);     // elements in a 16-byte load
constexpr int KL = D / V16;             // 16-byte loads of a key row
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
#ifdef NO_STARTS
const int lo = chunk * per_chunk;  // one sequence: every row sees all keys
#else
const int lo = max(starts[b], chunk * per_chunk);
#endif
const int hi = min(L, (chunk + 1) * per_chunk);

__shared__ __align__(16) float qs[G][D];
for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
  const int g = i / D;
  const int d = i - g * D;
  const T* qp = q + b * q_strides[0] + (hk * G + g) * q_strides[1];
  qs[g][d] = static_cast<float>(qp[d * q_strides[3]]) * scale_log2e;
}

const T* kb = k + b * k_strides[0] + hk * k_strides[1];
const T* vb = v + b * v_strides[0] + hk * v_strides[1];
// Rows as 16-byte loads: contiguous, aligned rows (the cache's layout).
const bool k_vec = k_strides[3] == 1 && k_strides[2] % V16 == 0 &&
                   (reinterpret_cast<size_t>(kb) & 15) == 0;
const bool v_vec = v_strides[3] == 1 && v_strides[2] % V16 == 0 &&
                   (reinterpret_cast<size_t>(vb) & 15) == 0;
// A lane's E value elements as floats: one load where the rows allow it.
auto load_v = [&](const T* vp, float* vf) {
  constexpr int BYTES = E * sizeof(T);
  if (v_vec && BYTES >= 4) {
    if constexpr (BYTES >= 16) {
#pragma unroll
      for (int h = 0; h < BYTES / 16; ++h) {
        const uint4 raw = reinterpret_cast<const uint4*>(vp)[h];
        const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < V16; ++i) {
          vf[h * V16 + i] = static_cast<float>(t[i]);
        }
      }
    } else if constexpr (BYTES == 8) {
      const uint2 raw = *reinterpret_cast<const uint2*>(vp);
      const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < E; ++i) {
        vf[i] = static_cast<float>(t[i]);
      }
    } else if constexpr (BYTES == 4) {
      const unsigned raw = *reinterpret_cast<const unsigned*>(vp);
      const T* t = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < E; ++i) {
        vf[i] = static_cast<float>(t[i]);
      }
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      vf[e] = static_cast<float>(vp[e * v_strides[3]]);
    }
  }
};
__syncthreads();

float m[G];
float l[G];
float o[G][E];
#pragma unroll
for (int g = 0; g < G; ++g) {
  m[g] = NEG_INF;
  l[g] = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    o[g][e] = 0.f;
  }
}

// Keys a lane's value loads take per batch: all in flight before any is used (E floats each).
constexpr int VB = 64 / E < 8 ? 8 : (64 / E > 16 ? 16 : 64 / E);
for (int t0 = lo + warp * 32; t0 < hi; t0 += WARPS * 32) {
  const int n = min(32, hi - t0);  // keys of this tile
  const bool in = lane < n;
  float s[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    s[g] = 0.f;
  }
  // Lanes past the tile score its last key again (no branch around the loads: all of a
  // row's go out together); their p is 0.
  const T* kp = kb + size_t(t0 + (in ? lane : n - 1)) * k_strides[2];
  if (k_vec) {
    uint4 raw[KL];
#pragma unroll
    for (int c = 0; c < KL; ++c) {
      raw[c] = reinterpret_cast<const uint4*>(kp)[c];
    }
#pragma unroll
    for (int c = 0; c < KL; ++c) {
      const T* kv = reinterpret_cast<const T*>(&raw[c]);
#pragma unroll
      for (int i4 = 0; i4 < V16; i4 += 4) {
        const int d = c * V16 + i4;
        const float k0 = static_cast<float>(kv[i4]);
        const float k1 = static_cast<float>(kv[i4 + 1]);
        const float k2 = static_cast<float>(kv[i4 + 2]);
        const float k3 = static_cast<float>(kv[i4 + 3]);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float4 qv = *reinterpret_cast<const float4*>(&qs[g][d]);
          s[g] += qv.x * k0 + qv.y * k1 + qv.z * k2 + qv.w * k3;
        }
      }
    }
  } else {
    for (int d = 0; d < D; ++d) {
      const float kf = static_cast<float>(kp[d * k_strides[3]]);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        s[g] += qs[g][d] * kf;
      }
    }
  }
  // The tile's max per query (lane 0's key is always in), the running max, and p.
  float p[G];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    float t = in ? s[g] : NEG_INF;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      t = fmaxf(t, __shfl_xor_sync(0xffffffff, t, off));
    }
    const float mn = fmaxf(m[g], t);
    const float corr = exp2f(m[g] - mn);
    p[g] = in ? exp2f(s[g] - mn) : 0.f;
    l[g] = l[g] * corr + p[g];
#pragma unroll
    for (int e = 0; e < E; ++e) {
      o[g][e] *= corr;
    }
    m[g] = mn;
  }
  // p * v over the tile's keys, VB keys' loads in flight at a time (keys past the tile
  // read its last row again, with p = 0): lane owns elements lane * E .. lane * E + E - 1.
  const T* vt = vb + size_t(t0) * v_strides[2] + size_t(lane * E) * v_strides[3];
#pragma unroll
  for (int j0 = 0; j0 < 32; j0 += VB) {
    if (j0 < n) {
      float vf[VB][E];
#pragma unroll
      for (int u = 0; u < VB; ++u) {
        load_v(vt + size_t(min(j0 + u, n - 1)) * v_strides[2], vf[u]);
      }
#pragma unroll
      for (int u = 0; u < VB; ++u) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float pj = __shfl_sync(0xffffffff, p[g], j0 + u);
#pragma unroll
          for (int e = 0; e < E; ++e) {
            o[g][e] += pj * vf[u][e];
          }
        }
      }
    }
  }
}

__shared__ float sm[WARPS][G];
__shared__ float sl[WARPS][G];
__shared__ float so[WARPS][G][D];
#pragma unroll
for (int g = 0; g < G; ++g) {
  float lw = l[g];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    lw += __shfl_xor_sync(0xffffffff, lw, off);
  }
  if (lane == 0) {
    sm[warp][g] = m[g];
    sl[warp][g] = lw;
  }
#pragma unroll
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
