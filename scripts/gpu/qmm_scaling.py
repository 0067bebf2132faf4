#!/usr/bin/env python3
"""How MLX's matmuls scale with the number of rows M, the batch of a decode step.

usage: python3 scripts/gpu/qmm_scaling.py [--out 14336] [--in 4096] [--bits 4] [--group 64]

Times `mx.quantized_matmul(x[M, in], W[out, in] quantized, transpose=True)` and the same
product with bf16 weights for M = 1, 2, 4, ..., 64 (median of 20 after 5 warm-ups), and prints
milliseconds, effective weight bandwidth, and time relative to M = 1. A decode step of a batch
reads every weight once, so an ideal kernel takes about as long at M = 32 as at M = 1.
"""
import argparse
import statistics
import time

import mlx.core as mx

p = argparse.ArgumentParser()
p.add_argument("--out", type=int, default=14336)
p.add_argument("--in", dest="inp", type=int, default=4096)
p.add_argument("--bits", type=int, default=4)
p.add_argument("--group", type=int, default=64)
a = p.parse_args()

w = mx.random.normal((a.out, a.inp)).astype(mx.bfloat16) * 0.02
wq, scales, biases = mx.quantize(w, group_size=a.group, bits=a.bits)
mx.eval(w, wq, scales, biases)
qbytes = wq.nbytes + scales.nbytes + biases.nbytes


def timed(f):
    for _ in range(5):
        mx.eval(f())
    ts = []
    for _ in range(20):
        t = time.perf_counter()
        mx.eval(f())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


print(f"device {mx.default_device()}, W [{a.out}, {a.inp}], {a.bits}-bit g{a.group} ({qbytes/1e6:.1f} MB) "
      f"and bf16 ({w.nbytes/1e6:.1f} MB)")
print("| M | 4-bit ms | 4-bit GB/s | 4-bit vs M=1 | bf16 ms | bf16 GB/s | bf16 vs M=1 |")
print("|---|---|---|---|---|---|---|")
base = {}
for m in (1, 2, 4, 8, 16, 32, 64):
    x = mx.random.normal((m, a.inp)).astype(mx.bfloat16)
    mx.eval(x)
    tq = timed(lambda: mx.quantized_matmul(x, wq, scales, biases, transpose=True,
                                           group_size=a.group, bits=a.bits))
    tb = timed(lambda: x @ w.T)
    base.setdefault("q", tq)
    base.setdefault("b", tb)
    print(f"| {m} | {tq*1e3:.3f} | {qbytes/tq/1e9:.0f} | {tq/base['q']:.2f}x | "
          f"{tb*1e3:.3f} | {w.nbytes/tb/1e9:.0f} | {tb/base['b']:.2f}x |", flush=True)
