"""mlx-lm 0.32.2 reference runs for kooka's parity tests.

Usage: mlx_lm_reference.py JOBS_JSON   (a file, or '-' for stdin)

JOBS_JSON is a list of jobs, each {"model": DIR, "max_tokens": N, "f32": bool, and either
"tokens": [ids] or "prompt": TEXT (rendered through the folder's chat template), and
optionally "prefill_step_size": S (default 2048, as generate_step), "adapter": DIR (a LoRA
adapter folder, loaded as mlx-lm's `load(..., adapter_path=DIR)` does) and "kv_bits",
"kv_group_size", "quantized_kv_start" (a quantized KV cache, as generate_step's arguments)}.
Prints one JSON list with, per job, {"prompt_tokens": [...], "tokens": [...greedy ids...],
"logits": [...last prompt position, float32...]}. With "f32": true the model is
dequantized and cast to float32 after loading (kooka's `--compute-dtype f32`).
The logits come from the same path as generate_step: prompt[:-1] prefilled into a KV
cache (in chunks of prefill_step_size), then the last prompt token alone. EOS does not stop the greedy run.
"""
import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step, maybe_quantize_kv_cache
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import dequantize_model

# mlx-lm 0.32.2's QuantizedSwitchLinear passes `global_scale=` (nvfp4 experts) to
# mx.gather_qmm, which mlx 0.32.2 does not accept. For affine experts it is always None:
# drop it and otherwise call gather_qmm with exactly mlx-lm's arguments.
_gather_qmm = mx.gather_qmm


def _gather_qmm_compat(*args, global_scale=None, **kwargs):
    if global_scale is not None:
        raise NotImplementedError("global_scale needs a newer mlx")
    return _gather_qmm(*args, **kwargs)


mx.gather_qmm = _gather_qmm_compat

# MLX's CPU gather_mm only supports float32, so mlx-lm fails on bf16/f16 float experts on
# CPU. kooka then runs each gathered matmul in float32 and casts the result back to the
# input's dtype; the reference does the same, to compare everything else in bf16.
_gather_mm = mx.gather_mm


def _gather_mm_f32_on_cpu(a, b, *args, **kwargs):
    if a.dtype == mx.float32 and b.dtype == mx.float32:
        return _gather_mm(a, b, *args, **kwargs)
    return _gather_mm(a.astype(mx.float32), b.astype(mx.float32), *args, **kwargs).astype(a.dtype)


mx.gather_mm = _gather_mm_f32_on_cpu


def run(job, cache):
    key = (job["model"], bool(job.get("f32")), job.get("adapter"))
    if key not in cache:
        model, tokenizer = load(job["model"]) if "prompt" in job else (None, None)
        if model is None:
            from mlx_lm.utils import load_model
            from pathlib import Path
            model, _ = load_model(Path(job["model"]))
        if job.get("adapter"):
            from mlx_lm.tuner.utils import load_adapters
            model = load_adapters(model, job["adapter"])
            model.eval()
        if job.get("f32"):
            model = dequantize_model(model)
            model.set_dtype(mx.float32)
            mx.eval(model.parameters())
        cache[key] = (model, tokenizer)
    model, tokenizer = cache[key]
    if "prompt" in job:
        messages = [{"role": "user", "content": job["prompt"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    else:
        ids = list(job["tokens"])
    prompt = mx.array(ids)
    step = job.get("prefill_step_size", 2048)
    kv = {"kv_bits": job.get("kv_bits"), "kv_group_size": job.get("kv_group_size", 64),
          "quantized_kv_start": job.get("quantized_kv_start", 5000)}
    pc = make_prompt_cache(model)
    for start in range(0, len(ids) - 1, step):
        model(prompt[None, start:min(start + step, len(ids) - 1)], cache=pc)
        maybe_quantize_kv_cache(pc, kv["quantized_kv_start"], kv["kv_group_size"], kv["kv_bits"])
        mx.eval([c.state for c in pc])
    logits = model(prompt[None, -1:], cache=pc)[0, -1].astype(mx.float32)
    out = []
    for tok, _ in generate_step(prompt, model, max_tokens=job["max_tokens"], prefill_step_size=step,
                                **kv):
        out.append(int(tok))
    return {"prompt_tokens": ids, "tokens": out, "logits": logits.tolist()}


def main():
    mx.set_default_device(mx.cpu)
    src = sys.stdin if sys.argv[1] == "-" else open(sys.argv[1])
    jobs = json.load(src)
    cache = {}
    print(json.dumps([run(job, cache) for job in jobs]))


if __name__ == "__main__":
    main()
