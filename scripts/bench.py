#!/usr/bin/env python3
"""kooka vs mlx-lm, same model folder, same prompt token ids, same MLX build, one run.

usage: third_party/venv/bin/python scripts/bench.py [--model DIR] [--prompt-tokens 512[,2048,...]]
           [--gen-tokens 128] [--reps 3] [--kooka target/release/kooka] [--json OUT]

Both sides load the model once, warm up once, then run `--reps` times; EOS is ignored so
every run generates exactly `--gen-tokens` tokens. Several prompt lengths (comma-separated)
give one table row pair per length; mlx-lm then warms up once, on at most 512 tokens. Reported per side: median prefill
tokens/s (prompt tokens / time to the first token) and median decode tokens/s (tokens after
the first / their time), then the ratio kooka / mlx-lm. mlx-lm runs as it ships (the model's
own dtypes); kooka runs with its default compute dtype for the backend.

On Linux both sides use OpenBLAS with the same kernels: where `OPENBLAS_CORETYPE` is unset,
this script sets it as kooka does for itself (src/openblas.rs: AVX-512 -> SkylakeX, AVX2 ->
Haswell) and starts again, so mlx-lm does not run OpenBLAS's fallback kernels.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "The history of computing is a story of abstraction layered on abstraction. Early "
    "machines were programmed by rewiring; then came stored programs, assemblers, compilers, "
    "operating systems, networks and, eventually, models that write programs themselves. "
)


def best_openblas_core():
    """The OpenBLAS kernel set kooka asks for on this CPU (see src/openblas.rs)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return None
    if all(x in flags for x in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd")):
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


def reexec_with_openblas_core():
    """Re-runs this script with OPENBLAS_CORETYPE set as kooka sets it, so that both sides of a
    benchmark get the same OpenBLAS kernels (once: the new process finds it set)."""
    core = best_openblas_core()
    if sys.platform == "linux" and core and "OPENBLAS_CORETYPE" not in os.environ:
        os.environ["OPENBLAS_CORETYPE"] = core
        os.execv(sys.executable, [sys.executable] + sys.argv)


def prompt_ids(tokenizer, n):
    ids = []
    while len(ids) < n:
        ids.extend(tokenizer.encode(TEXT, add_special_tokens=False))
    return ids[:n]


def load_mlx_lm(model_dir, f32=False):
    import mlx.core as mx
    from mlx_lm import load

    # mlx-lm 0.32.2's quantized experts pass `global_scale=` (nvfp4 only) to mx.gather_qmm,
    # which mlx 0.32.2 does not take: drop it when it is None, as the parity reference does
    # (tests/python/mlx_lm_reference.py), so quantized MoE models run at all.
    gather_qmm = mx.gather_qmm

    def gather_qmm_compat(*args, global_scale=None, **kwargs):
        if global_scale is not None:
            raise NotImplementedError("global_scale needs a newer mlx")
        return gather_qmm(*args, **kwargs)

    mx.gather_qmm = gather_qmm_compat

    model, tokenizer = load(model_dir)
    if f32:  # the same weights kooka's CPU default computes with
        from mlx_lm.utils import dequantize_model
        model = dequantize_model(model)
        model.set_dtype(mx.float32)
    tokenizer.eos_token_ids = []  # generate exactly `gen` tokens
    return model, tokenizer


def bench_mlx_lm(loaded, ids, gen, reps, warm_up=True, **generate_kwargs):
    import mlx.core as mx
    from mlx_lm import stream_generate

    model, tokenizer = loaded
    prefill, decode = [], []
    for rep in range(reps + (1 if warm_up else 0)):
        first = last = None
        start = time.perf_counter()
        count = 0
        for response in stream_generate(model, tokenizer, mx.array(ids), max_tokens=gen,
                                        **generate_kwargs):
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            count += 1
        if warm_up and rep == 0:
            continue
        prefill.append(len(ids) / (first - start))
        decode.append((count - 1) / (last - first))
    return {"prefill_tps": prefill, "decode_tps": decode, "peak_memory_gb": mx.get_peak_memory() / 1e9}


def bench_kooka(kooka, model_dir, ids, gen, reps):
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
        ids_file = f.name
    cmd = [kooka, "bench", "--model", model_dir, "--prompt-ids-file", ids_file,
           "--gen-tokens", str(gen), "--reps", str(reps), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--prompt-tokens", default="512",
                        help="prompt length, or several comma-separated")
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kooka", default=os.path.join(ROOT, "target", "release", "kooka"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--ref-f32", action="store_true",
                        help="run mlx-lm with the weights dequantized and cast to float32 (kooka's CPU default)")
    args = parser.parse_args()

    reexec_with_openblas_core()

    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model, "tokenizer.json"))
    lengths = [int(x) for x in str(args.prompt_tokens).split(",") if x.strip()]

    import mlx.core as mx
    device = str(mx.default_device())
    loaded = load_mlx_lm(args.model, f32=args.ref_f32)
    if len(lengths) > 1:  # one short warm-up instead of one per length
        bench_mlx_lm(loaded, prompt_ids(tokenizer, min(512, min(lengths))), 2, 1, warm_up=False)
    ref_name = "mlx-lm 0.32.2" + (" (f32 weights)" if args.ref_f32 else "")
    print(f"model {os.path.basename(args.model.rstrip('/'))}, device {device}, "
          f"{args.gen_tokens} generated, median of {args.reps}"
          + (f", OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}" if "OPENBLAS_CORETYPE" in os.environ else ""),
          flush=True)
    print(f"| prompt tokens | metric | kooka | {ref_name} | kooka / mlx-lm |")
    print(f"|---|---|---|---|---|", flush=True)
    results = []
    for n in lengths:
        ids = prompt_ids(tokenizer, n)
        kooka = bench_kooka(args.kooka, args.model, ids, args.gen_tokens, args.reps)
        ref = bench_mlx_lm(loaded, ids, args.gen_tokens, args.reps, warm_up=len(lengths) == 1)
        results.append({"prompt_tokens": n, "kooka": kooka, "mlx_lm": ref})
        for key, label in (("prefill_tps", "prefill tok/s"), ("decode_tps", "decode tok/s")):
            k, r = statistics.median(kooka[key]), statistics.median(ref[key])
            print(f"| {n} | {label} | {k:.1f} | {r:.1f} | {k / r:.2f}x |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "results": results, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
