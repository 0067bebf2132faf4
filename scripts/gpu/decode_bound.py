#!/usr/bin/env python3
"""Is a batch-1 decode step bound by the host or by the device? (issue 22)

usage: python3 scripts/gpu/decode_bound.py [--layers 32] [--reps 10]

Queues the matrix-vector products of one Llama-8B 4-bit decode step (per layer the fused
q/k/v, o, fused gate/up and down projections, then the 128,256-row head: the same weight bytes
as the real model, every matrix distinct so nothing stays in L2) and times a pass from queueing
to the result. Then the same number of products on tiny matrices (the host's cost of encoding
them, the device doing almost nothing), and a chain of 500 elementwise additions (the host's
cost per kernel). If the real pass takes about as long as the tiny one, the host is the bound;
if much longer, the device (MLX's 4-bit matrix-vector kernel) is, and its effective bandwidth
says how far from the memory's speed it runs. MLX's environment (MLX_USE_CUDA_GRAPHS,
MLX_MAX_OPS_PER_BUFFER) applies; the printed header names it.
"""
import argparse
import os
import statistics
import time

import mlx.core as mx

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=32)
p.add_argument("--reps", type=int, default=10)
p.add_argument("--bits", type=int, default=4)
p.add_argument("--group", type=int, default=64)
p.add_argument("--shape-gb", type=float, default=2.0, help="weights per shape in the per-shape timings")
a = p.parse_args()

HIDDEN, INTER, KV, VOCAB = 4096, 14336, 1024, 128256
LAYER = [(HIDDEN + 2 * KV, HIDDEN), (HIDDEN, HIDDEN), (2 * INTER, HIDDEN), (HIDDEN, INTER)]


def packed(out, inp):
    """Random packed weights with MLX's affine layout (no float matrix made first)."""
    w = mx.random.randint(0, 2**31 - 1, (out, inp * a.bits // 32)).astype(mx.uint32)
    groups = inp // a.group
    s = (mx.random.uniform(shape=(out, groups)) * 0.01).astype(mx.bfloat16)
    b = (mx.random.uniform(shape=(out, groups)) * -0.01).astype(mx.bfloat16)
    mx.eval(w, s, b)
    return w, s, b


def timed(pass_fn):
    for _ in range(3):
        mx.eval(pass_fn())
    ts = []
    for _ in range(a.reps):
        t = time.perf_counter()
        mx.eval(pass_fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def products(mats, xs):
    def run():
        return [mx.quantized_matmul(xs[w[0].shape[1] * 32 // a.bits], *w, transpose=True,
                                    group_size=a.group, bits=a.bits) for w in mats]
    return run


env = {k: os.environ[k] for k in ("MLX_USE_CUDA_GRAPHS", "MLX_MAX_OPS_PER_BUFFER") if k in os.environ}
print(f"## decode_bound ({mx.default_device()}, {env or 'MLX defaults'})")
shapes = LAYER * a.layers + [(VOCAB, HIDDEN)]
big = [packed(o, i) for o, i in shapes]
nbytes = sum(x.nbytes for w in big for x in w)
xs = {d: mx.random.normal((1, d)).astype(mx.bfloat16) for d in (HIDDEN, INTER)}
mx.eval(list(xs.values()))
t_big = timed(products(big, xs))
tiny = [packed(64, i) for _, i in shapes]
t_tiny = timed(products(tiny, xs))


def adds():
    y = xs[HIDDEN]
    for _ in range(500):
        y = y + 1
    return y


t_add = timed(adds)
print(f"{len(shapes)} products, {nbytes / 1e9:.2f} GB of weights: {t_big * 1e3:.3f} ms a pass, "
      f"{nbytes / t_big / 1e9:.0f} GB/s effective")
print(f"same count on 64-row matrices: {t_tiny * 1e3:.3f} ms a pass "
      f"({t_tiny / len(shapes) * 1e6:.1f} us a product)")
print(f"500 chained additions: {t_add * 1e3:.3f} ms ({t_add / 500 * 1e6:.2f} us a kernel)")
per = {}
for o, i in sorted(set(LAYER + [(VOCAB, HIDDEN)])):
    mats = [packed(o, i) for _ in range(max(1, int(a.shape_gb * 1e9 / (o * i * a.bits / 8))))]
    b = sum(x.nbytes for w in mats for x in w)
    t = timed(products(mats, xs))
    per[(o, i)] = (len(mats), t / len(mats), b / t)
for (o, i), (n, t, bw) in per.items():
    print(f"  {o}x{i}: {n} distinct matrices, {t * 1e6:.1f} us a product, {bw / 1e9:.0f} GB/s")
