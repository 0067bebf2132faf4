#!/usr/bin/env python3
"""Quantized KV cache at a long context: kooka and mlx-lm, full precision and --kv-bits 8 / 4.

usage: third_party/venv/bin/python scripts/bench_kv_cache.py [--model DIR] [--prompt-tokens 8000]
           [--gen-tokens 32] [--bits 8,4] [--group-size 64] [--kooka target/release/kooka]
           [--json OUT]

One prompt of --prompt-tokens token ids, --gen-tokens greedy tokens after it; every setting is
run by `kooka generate` (one process each, `--quantized-kv-start 0`) and by mlx-lm's
`stream_generate` (kv_bits, kv_group_size, quantized_kv_start=0; float32 weights on the CPU as
kooka computes there). Reported per side and setting: the KV cache's bytes at the end (computed
from the model's shape: what the cache holds), the process's peak memory (MLX's peak, weights
and transients included), and decode tokens/s; and kooka / mlx-lm ratios.
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench import bench_mlx_lm, load_mlx_lm, reexec_with_openblas_core  # noqa: E402

STATS = re.compile(r"generation: (\d+) tokens, ([\d.]+) tokens/s \| peak memory: ([\d.]+) GB")


def kv_bytes(cfg, positions, bits, group_size, value_bytes):
    """What the caches hold for `positions` (keys and values of every layer)."""
    heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_vector = dim * value_bytes if bits is None else 4 * (dim * bits // 32 + 2 * dim // group_size)
    return cfg["num_hidden_layers"] * 2 * heads * positions * per_vector


def run_kooka(kooka, model, ids, gen, extra):
    cmd = [kooka, "generate", "--model", model, "--prompt-tokens", ",".join(map(str, ids)),
           "--print-tokens", "--ignore-eos", "--max-tokens", str(gen)] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    m = STATS.search(out.stderr)
    if not m:
        sys.exit(f"no stats line from kooka generate:\n{out.stderr}")
    return float(m.group(2)), float(m.group(3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--prompt-tokens", type=int, default=8000)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--bits", default="8,4")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--kooka", default=os.path.join(ROOT, "target", "release", "kooka"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    reexec_with_openblas_core()

    import mlx.core as mx

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    ids = [100 + (i * 7919) % 20000 for i in range(args.prompt_tokens)]
    on_cpu = "cpu" in str(mx.default_device()).lower()
    value_bytes = 4 if on_cpu else 2
    positions = args.prompt_tokens + args.gen_tokens
    loaded = load_mlx_lm(args.model, f32=on_cpu)
    rows = []
    for bits in [None] + [int(b) for b in args.bits.split(",")]:
        extra, kw = [], {}
        if bits is not None:
            extra = ["--kv-bits", str(bits), "--kv-group-size", str(args.group_size),
                     "--quantized-kv-start", "0"]
            kw = {"kv_bits": bits, "kv_group_size": args.group_size, "quantized_kv_start": 0}
        k_tps, k_peak = run_kooka(args.kooka, args.model, ids, args.gen_tokens, extra)
        mx.reset_peak_memory()
        ref = bench_mlx_lm(loaded, ids, args.gen_tokens, 1, warm_up=False, **kw)
        row = {
            "kv_bits": bits,
            "kv_cache_mb": kv_bytes(cfg, positions, bits, args.group_size, value_bytes) / 1e6,
            "kooka_peak_gb": k_peak,
            "mlx_lm_peak_gb": ref["peak_memory_gb"],
            "kooka_decode_tps": k_tps,
            "mlx_lm_decode_tps": ref["decode_tps"][0],
        }
        rows.append(row)
        name = "full precision" if bits is None else f"{bits}-bit"
        print(f"{name:14}: KV cache {row['kv_cache_mb']:.0f} MB | peak memory kooka "
              f"{k_peak:.2f} GB, mlx-lm {row['mlx_lm_peak_gb']:.2f} GB | decode tok/s kooka "
              f"{k_tps:.1f}, mlx-lm {row['mlx_lm_decode_tps']:.1f} "
              f"({k_tps / row['mlx_lm_decode_tps']:.2f}x)", flush=True)
    summary = {"model": os.path.basename(os.path.normpath(args.model)),
               "device": str(mx.default_device()), "prompt_tokens": args.prompt_tokens,
               "gen_tokens": args.gen_tokens, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
