// Body of kooka's batched decode attention, pass 2: merges the chunks of pass 1. Inputs
// o_part [B, H, C, D], m_part and l_part [B, H, C] (float32); output out [B, H, 1, D] of
// type T. Compile-time constants: T, D. One block per (row, query head), one thread per element.
const float NEG_INF = -__int_as_float(0x7f800000);
const size_t rh = blockIdx.x;
const int d = threadIdx.x;
const int nc = m_part_shape[2];
const float* mp = m_part + rh * nc;
const float* lp = l_part + rh * nc;
float mx = NEG_INF;
for (int c = 0; c < nc; ++c) {
  mx = fmaxf(mx, mp[c]);
}
float lsum = 0.f;
float osum = 0.f;
if (mx != NEG_INF) {
  for (int c = 0; c < nc; ++c) {
    const float f = exp2f(mp[c] - mx);
    lsum += lp[c] * f;
    osum += o_part[(rh * nc + c) * D + d] * f;
  }
}
out[rh * D + d] = static_cast<T>(lsum > 0.f ? osum / lsum : 0.f);
