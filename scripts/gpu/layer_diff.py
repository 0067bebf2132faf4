"""mlx-lm's forward of a Qwen3-Next model layer by layer on the GPU and on the CPU (same
process, same weights): where do the two backends part? Prints each layer's largest relative
difference and correlation, then the last position's logits'.

usage (GPU machine, after scripts/gpu/prepare.sh install and env.sh): python3 scripts/gpu/layer_diff.py MODEL
The CPU pass of a 512-expert 4-bit model takes several minutes; the 4l16e shape is quick.
"""
import sys, time
import mlx.core as mx
import numpy as np
_g = mx.gather_qmm
def _gq(*a, global_scale=None, **k):
    return _g(*a, **k)
mx.gather_qmm = _gq
from mlx_lm import load
model, _ = load(sys.argv[1])
ids = mx.array([[100 + 7 * i for i in range(24)]])
def run(dev):
    mx.set_default_device(dev)
    inner = model.model
    h = inner.embed_tokens(ids)
    outs = []
    for i, layer in enumerate(inner.layers):
        h = layer(h, mask=None if layer.is_linear else "causal", cache=None)
        mx.eval(h)
        outs.append(np.array(h.astype(mx.float32)))
    logits = model.lm_head(inner.norm(h)) if hasattr(model, "lm_head") else None
    outs.append(np.array(logits[0, -1].astype(mx.float32)))
    return outs
t = time.time(); g = run(mx.gpu); print("gpu", time.time() - t, flush=True)
t = time.time(); c = run(mx.cpu); print("cpu", time.time() - t, flush=True)
for i, (a, b) in enumerate(zip(g, c)):
    kind = "logits" if i == len(g) - 1 else ("linear" if model.model.layers[i].is_linear else "attn")
    d = np.abs(a - b).max() / (np.abs(b).max() + 1e-12)
    print(f"{i} {kind}: max rel diff {d:.3g}, corr {np.corrcoef(a.ravel(), b.ravel())[0, 1]:.6f}", flush=True)
