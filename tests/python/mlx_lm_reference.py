"""mlx-lm 0.32.2 reference runs for kooka's parity tests.

Usage: mlx_lm_reference.py JOBS_JSON   (a file, or '-' for stdin)

JOBS_JSON is a list of jobs, each {"model": DIR, "max_tokens": N, "f32": bool, and either
"tokens": [ids] or "prompt": TEXT (rendered through the folder's chat template)}.
Prints one JSON list with, per job, {"prompt_tokens": [...], "tokens": [...greedy ids...],
"logits": [...last prompt position, float32...]}. With "f32": true the model is
dequantized and cast to float32 after loading (kooka's `--compute-dtype f32`).
The logits come from the same path as generate_step: prompt[:-1] prefilled into a KV
cache, then the last prompt token alone. EOS does not stop the greedy run.
"""
import json
import sys

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import dequantize_model


def run(job, cache):
    key = (job["model"], bool(job.get("f32")))
    if key not in cache:
        model, tokenizer = load(job["model"]) if "prompt" in job else (None, None)
        if model is None:
            from mlx_lm.utils import load_model
            from pathlib import Path
            model, _ = load_model(Path(job["model"]))
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
    pc = make_prompt_cache(model)
    if len(ids) > 1:
        model(prompt[None, :-1], cache=pc)
    logits = model(prompt[None, -1:], cache=pc)[0, -1].astype(mx.float32)
    out = []
    for tok, _ in generate_step(prompt, model, max_tokens=job["max_tokens"]):
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
