#!/usr/bin/env python3
"""How MLX's matmuls scale with the number of rows M, the batch of a decode step.

usage: python3 scripts/gpu/qmm_scaling.py [--out 14336] [--in 4096] [--bits 4] [--group 64]

Times `mx.quantized_matmul(x[M, in], W[out, in] quantized, transpose=True)`, the same
product with bf16 weights, and `mx.dequantize` followed by a bf16 product (the weights unpacked
for each call) for M = 1, 2, 4, ..., 4096 (10 products per evaluation, median of 20 after 5
warm-ups), and prints milliseconds per product, effective weight bandwidth, and time relative
to M = 1. A decode step of a batch reads every weight once, so an ideal kernel takes about as
long at M = 32 as at M = 1; a prompt chunk (M in the thousands) is bound by arithmetic.
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


def timed(f, n=10):
    for _ in range(5):
        mx.eval([f() for _ in range(n)])
    ts = []
    for _ in range(20):
        t = time.perf_counter()
        mx.eval([f() for _ in range(n)])
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) / n


print(f"device {mx.default_device()}, W [{a.out}, {a.inp}], {a.bits}-bit g{a.group} ({qbytes/1e6:.1f} MB) "
      f"and bf16 ({w.nbytes/1e6:.1f} MB)")
print("| M | 4-bit ms | 4-bit GB/s | 4-bit vs M=1 | bf16 ms | bf16 GB/s | dequant+bf16 ms | best |")
print("|---|---|---|---|---|---|---|---|")
base = {}
for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
    x = mx.random.normal((m, a.inp)).astype(mx.bfloat16)
    mx.eval(x)
    tq = timed(lambda: mx.quantized_matmul(x, wq, scales, biases, transpose=True,
                                           group_size=a.group, bits=a.bits))
    tb = timed(lambda: x @ w.T)
    td = timed(lambda: x @ mx.dequantize(wq, scales, biases, group_size=a.group,
                                         bits=a.bits).T)
    base.setdefault("q", tq)
    best = "4-bit" if tq <= td else "dequant"
    print(f"| {m} | {tq*1e3:.3f} | {qbytes/tq/1e9:.0f} | {tq/base['q']:.2f}x | "
          f"{tb*1e3:.3f} | {w.nbytes/tb/1e9:.0f} | {td*1e3:.3f} | {best} |", flush=True)
