#!/usr/bin/env python3
"""Speculation on a code edit: kooka plain, with `--speculative ngram` (and `--draft-model`), and mlx-lm, one run.

usage: third_party/venv/bin/python scripts/bench_speculative.py [--model DIR] [--reps 3]
           [--max-tokens 800] [--draft-tokens 8] [--draft-model DIR]
           [--kooka target/release/kooka] [--json OUT]

The request: "rename `compute_total` to `total_value` and return the whole file" over
tests/fixtures/code_edit/inventory.py, in the model's chat template, greedy. kooka runs
`kooka generate` on the prompt's token ids until EOS (or --max-tokens), plain and with prompt
lookup, `--reps` times each (one process per run); the two replies must be the same tokens.
mlx-lm (`stream_generate`, same model folder, float32 weights on the CPU as kooka computes
there) generates as many tokens with plain decoding, as the reference speed. With
--draft-model, kooka also runs with that draft model and mlx-lm with the same one
(`stream_generate(draft_model=..., num_draft_tokens=...)`, its own speculative decoding).
Reported: median decode tokens/s per side (tokens after the first / their time) and the ratios.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench import bench_mlx_lm, load_mlx_lm, reexec_with_openblas_core  # noqa: E402

STATS = re.compile(r"generation: (\d+) tokens, ([\d.]+) tokens/s")
KEPT = re.compile(r"speculation: (\d+) of (\d+) draft tokens kept .* in (\d+) verify steps")


def edit_prompt(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(os.path.join(ROOT, "tests", "fixtures", "code_edit", "inventory.py")) as f:
        source = f.read()
    text = ("Rename the method `compute_total` to `total_value` everywhere in this file and "
            f"return the whole file:\n\n```python\n{source}```")
    chat = tok.apply_chat_template([{"role": "user", "content": text}],
                                   add_generation_prompt=True, tokenize=False)
    return tok.encode(chat, add_special_tokens=False)


def run_kooka(kooka, model_dir, ids, max_tokens, extra):
    cmd = [kooka, "generate", "--model", model_dir, "--prompt-tokens", ",".join(map(str, ids)),
           "--print-tokens", "--max-tokens", str(max_tokens)] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    tokens = json.loads(out.stdout.strip().splitlines()[-1])["tokens"]
    m = STATS.search(out.stderr)
    if not m:
        sys.exit(f"no stats line from kooka generate:\n{out.stderr}")
    kept = KEPT.search(out.stderr)
    return tokens, float(m.group(2)), kept.groups() if kept else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "models", "Qwen2.5-Coder-0.5B-Instruct"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=800)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--draft-model", help="also speculate with this draft model (same tokenizer)")
    parser.add_argument("--kooka", default=os.path.join(ROOT, "target", "release", "kooka"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    reexec_with_openblas_core()

    import mlx.core as mx

    ids = edit_prompt(args.model)
    sides = {"plain": [], "ngram": [
        "--speculative", "ngram", "--num-draft-tokens", str(args.draft_tokens)]}
    if args.draft_model:
        sides["draft"] = ["--draft-model", args.draft_model,
                          "--num-draft-tokens", str(args.draft_tokens)]
    results, replies, drafts = {}, {}, {}
    for name, extra in sides.items():
        tps = []
        for _ in range(args.reps):
            tokens, rate, kept = run_kooka(args.kooka, args.model, ids, args.max_tokens, extra)
            if kept:
                drafts[name] = [int(x) for x in kept]
            replies.setdefault(name, tokens)
            if tokens != replies[name]:
                sys.exit(f"kooka {name}: the reply changed between runs")
            tps.append(rate)
        results[name] = tps
        print(f"kooka {name:5}: {len(replies[name])} tokens, decode tok/s {statistics.median(tps):.1f} "
              f"(runs {', '.join(f'{t:.1f}' for t in tps)})", flush=True)
        if name in drafts:
            kept, drafted, steps = drafts[name]
            print(f"  {kept} of {drafted} draft tokens kept ({100 * kept / max(drafted, 1):.1f}%), "
                  f"{steps} verify steps", flush=True)
    identical = all(r == replies["plain"] for r in replies.values())
    if not identical:
        sys.exit("FAIL: speculation changed the greedy reply")

    on_cpu = "cpu" in str(mx.default_device()).lower()
    loaded = load_mlx_lm(args.model, f32=on_cpu)
    ref = bench_mlx_lm(loaded, ids, len(replies["plain"]), args.reps)
    results["mlx-lm"] = ref["decode_tps"]
    print(f"mlx-lm plain: decode tok/s {statistics.median(ref['decode_tps']):.1f}", flush=True)
    if args.draft_model:
        draft = load_mlx_lm(args.draft_model, f32=on_cpu)[0]
        ref = bench_mlx_lm(loaded, ids, len(replies["plain"]), args.reps, draft_model=draft,
                           num_draft_tokens=args.draft_tokens)
        results["mlx-lm draft"] = ref["decode_tps"]
        print(f"mlx-lm draft: decode tok/s {statistics.median(ref['decode_tps']):.1f}", flush=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "model": os.path.basename(os.path.normpath(args.model)),
        "device": str(mx.default_device()),
        "prompt_tokens": len(ids),
        "reply_tokens": len(replies["plain"]),
        "identical": identical,
        "drafts_kept_drafted_steps": drafts,
        "decode_tps": results,
        "speedup_vs_plain": med["ngram"] / med["plain"],
        "speedup_vs_mlx_lm": med["ngram"] / med["mlx-lm"],
    }
    print(f"prompt lookup: {summary['speedup_vs_plain']:.2f}x kooka plain, "
          f"{summary['speedup_vs_mlx_lm']:.2f}x mlx-lm; replies identical: {identical}")
    if args.draft_model:
        summary["draft_speedup_vs_plain"] = med["draft"] / med["plain"]
        summary["draft_vs_mlx_lm_draft"] = med["draft"] / med["mlx-lm draft"]
        print(f"draft model: {summary['draft_speedup_vs_plain']:.2f}x kooka plain, "
              f"{summary['draft_vs_mlx_lm_draft']:.2f}x mlx-lm with the same draft")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
