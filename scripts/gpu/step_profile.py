"""mlx-lm's side of examples/step_profile.rs: per decode step, the host time to build the
graph, to queue it (mx.async_eval) and to wait for the previous token, in mlx-lm's
generate_step order (its generation stream included).

usage: python3 scripts/gpu/step_profile.py MODEL_DIR [PROMPT_TOKENS] [STEPS]
"""
import statistics
import sys
import time

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generation_stream
from mlx_lm.models.cache import make_prompt_cache

path = sys.argv[1]
prompt = int(sys.argv[2]) if len(sys.argv) > 2 else 512
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 128
model, _ = load(path)
for rnd in range(2):
    cache = make_prompt_cache(model)
    ids = mx.array([[(i * 7 + 3) % 1000 for i in range(prompt)]])
    with mx.stream(generation_stream):
        tok = mx.argmax(model(ids, cache=cache)[:, -1, :], axis=-1)
    mx.eval(tok)
    build, queue, wait = [], [], []
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        with mx.stream(generation_stream):
            logits = model(tok[None], cache=cache)[:, -1, :]
            logprobs = logits - mx.logsumexp(logits, keepdims=True)
            nxt = mx.argmax(logprobs, axis=-1)
        t1 = time.perf_counter()
        mx.async_eval(nxt, logprobs)
        t2 = time.perf_counter()
        tok.item()
        t3 = time.perf_counter()
        build.append((t1 - t0) * 1e3)
        queue.append((t2 - t1) * 1e3)
        wait.append((t3 - t2) * 1e3)
        tok = nxt
    per = (time.perf_counter() - start) * 1e3 / steps
    if rnd == 1:
        print(
            f"mlx-lm step profile: build {statistics.median(build):.3f} ms | async_eval "
            f"{statistics.median(queue):.3f} ms | wait {statistics.median(wait):.3f} ms | "
            f"per token {per:.3f} ms ({1e3 / per:.1f} tok/s)"
        )
