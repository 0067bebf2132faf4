#!/usr/bin/env python3
"""Time to first token and decode tokens/s of an OpenAI-compatible server (kooka serve or
mlx_lm.server), measured the same way for both: streamed /v1/completions, temperature 0.

usage: python3 scripts/gpu/http_bench.py --url http://127.0.0.1:PORT --label NAME
           [--max-tokens 128] [--reps 3] [--prompt-words 400] [--wait 600] [--json OUT]

Waits until the server answers (GET /v1/models), sends one warm-up request, then `--reps`
measured requests. Every request has its own prompt (a different first word, then the same
text), so no prompt cache can serve one request from another while all have the same length.
TTFT: request sent -> first chunk with text. Decode tokens/s: (completion tokens - 1) / (first
text chunk -> last chunk); the completion token count comes from the usage chunk
(`stream_options.include_usage`). Prints one JSON line: medians, and the texts (for parity
between runs of the same prompts on other configurations).
Only the standard library: it runs under any python3.
"""
import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request

TEXT = (
    "The history of computing is a story of abstraction layered on abstraction. Early "
    "machines were programmed by rewiring; then came stored programs, assemblers, compilers, "
    "operating systems, networks and, eventually, models that write programs themselves. "
)


def prompt(i, words):
    # A different first token (one digit) per request, the same length for all.
    body = (TEXT * (words // len(TEXT.split()) + 1)).split()[: max(words - 1, 1)]
    return f"{i % 10}. " + " ".join(body)


def wait_ready(url, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise SystemExit(f"server at {url} not ready after {timeout}s: {last}")


def one(url, text, max_tokens, timeout):
    body = {
        "prompt": text,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first = last = None
    out = []
    usage = None
    finish = None
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank lines, ": keepalive" comments
            data = line[5:].strip()
            if data == "[DONE]":
                break
            msg = json.loads(data)
            if msg.get("error"):
                raise RuntimeError(f"server error: {msg['error']}")
            if msg.get("usage"):
                usage = msg["usage"]
            for choice in msg.get("choices") or []:
                piece = choice.get("text") or ""
                if piece:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
                    out.append(piece)
                finish = choice.get("finish_reason") or finish
    end = time.perf_counter()
    if first is None:
        first = last = end
    last = max(last, first)
    n = (usage or {}).get("completion_tokens")
    decode = (n - 1) / (last - first) if n and n > 1 and last > first else None
    return {"ttft_s": first - start, "decode_tps": decode, "completion_tokens": n,
            "prompt_tokens": (usage or {}).get("prompt_tokens"), "total_s": end - start,
            "finish": finish, "text": "".join(out)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--prompt-words", type=int, default=400)
    p.add_argument("--wait", type=float, default=600)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--json")
    a = p.parse_args()
    url = a.url.rstrip("/")
    t0 = time.time()
    wait_ready(url, a.wait)
    ready_s = time.time() - t0
    warm = one(url, prompt(0, a.prompt_words), a.max_tokens, a.timeout)
    runs = [one(url, prompt(i, a.prompt_words), a.max_tokens, a.timeout) for i in range(1, a.reps + 1)]
    dec = [r["decode_tps"] for r in runs if r["decode_tps"]]
    res = {
        "label": a.label,
        "ready_s": ready_s,
        "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
        "decode_tps": statistics.median(dec) if dec else None,
        "decode_tps_all": dec,
        "ttft_ms_all": [1000 * r["ttft_s"] for r in runs],
        "prompt_tokens": runs[0]["prompt_tokens"],
        "completion_tokens": [r["completion_tokens"] for r in runs],
        "warmup": {k: v for k, v in warm.items() if k != "text"},
        "texts": [r["text"] for r in runs],
    }
    line = json.dumps(res)
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
