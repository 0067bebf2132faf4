#!/usr/bin/env python3
"""Where a batched decode step's attention time goes on MLX's CUDA backend: one layer's
`scaled_dot_product_attention` for a decode query against a cache slice (Llama-8B's heads,
~640 cached positions), without a mask and with a per-row padding mask, and per-row RoPE,
at batch 1, 8 and 32 (milliseconds per call, 32 calls per evaluation, median of 10)."""
import statistics
import time

import mlx.core as mx


def timed(f, n=32):
    for _ in range(3):
        mx.eval([f() for _ in range(n)])
    ts = []
    for _ in range(10):
        t = time.perf_counter()
        mx.eval([f() for _ in range(n)])
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) / n * 1e3


H, HK, T, D = 32, 8, 640, 128
for b in (1, 8, 32):
    q = mx.random.normal((b, H, 1, D)).astype(mx.bfloat16)
    kbuf = mx.random.normal((b, HK, 1024, D)).astype(mx.bfloat16)
    vbuf = mx.random.normal((b, HK, 1024, D)).astype(mx.bfloat16)
    k, v = kbuf[:, :, :T], vbuf[:, :, :T]
    mask = mx.ones((b, 1, 1, T), dtype=mx.bool_)
    additive = mx.zeros((b, 1, 1, T), dtype=mx.bfloat16)
    offs = mx.arange(b, dtype=mx.int32) + 600
    mx.eval(q, kbuf, vbuf, mask, offs)
    s = D ** -0.5
    none = timed(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=s))
    masked = timed(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask=mask))
    added = timed(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=s, mask=additive))
    kc, vc = mx.contiguous(k), mx.contiguous(v)
    mx.eval(kc, vc)
    dense = timed(lambda: mx.fast.scaled_dot_product_attention(q, kc, vc, scale=s, mask=mask))
    rope1 = timed(lambda: mx.fast.rope(q, D, traditional=False, base=500000.0, scale=1.0, offset=600))
    roper = timed(lambda: mx.fast.rope(q, D, traditional=False, base=500000.0, scale=1.0, offset=offs))
    print(f"batch {b}: sdpa {none:.3f} ms, sdpa+bool mask {masked:.3f} ms, +additive bf16 mask "
          f"{added:.3f} ms, +bool mask on contiguous K/V {dense:.3f} ms, rope {rope1:.3f} ms, "
          f"rope per-row offsets {roper:.3f} ms", flush=True)
