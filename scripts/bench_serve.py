#!/usr/bin/env python3
"""kooka serve vs mlx_lm.server over HTTP: same model folder, same prompts, one run, ratios.

usage: python3 scripts/bench_serve.py [--model DIR] [--kooka PATH] [--kooka-args ARGS]
           [--python PATH | --mlx-lm-cmd CMD] [--sides kooka,mlx-lm] [--streams 1,8,32,64]
           [--max-tokens 128] [--prompt-words 400] [--long-prompt-words 3000]
           [--turn2-words 0] [--timeout 600] [--no-warmup] [--json OUT]
On the GPU machine: --python python3, or --mlx-lm-cmd "python3 scripts/gpu/mlx_lm_server.py".

Each side runs in turn: this script starts the server on a free port (kooka: `serve --port 0`,
the address read from its `kooka: listening on http://...` line; mlx-lm: a port picked here),
waits until it answers (kooka: GET /v1/models, mlx-lm: /health) and a first one-token
completion is done ("ready in"), measures, then stops it (SIGTERM, SIGKILL after 10 s).
Server output goes to temp log files; their tail is printed when a side fails.

Streams: for each N in --streams, N threads each send one streamed /v1/completions request at
the same moment (temperature 0, stream_options.include_usage). Every request of the run has its
own prompt (a different leading number, then the same text), so no prompt cache serves one from
another. EOS is not ignored (the API has no such option): completion tokens come from the usage
chunk, or the count of text chunks without one. Reported: TTFT p50/p99 (nearest rank; send ->
first chunk with text), aggregate tok/s (all completion tokens / (last end - first send)), the
median per-stream decode tok/s ((tokens - 1) / (first text -> last text)), failed and rejected
(HTTP 429) requests. With --warmup (the default) each N first runs once untimed.
Resend: one long prompt, max_tokens 1, sent cold, then again (resent), then extended by ~100
words: the three TTFTs and resent/cold. Each side gets its own long prompt text.
Turn 2 (--turn2-words N): a chat with an N-word system prompt; turn 1, then turn 2 (turn 1, its
reply, one more question): turn 2's TTFT against the same turn 2 sent cold (another session).

On Linux, where OPENBLAS_CORETYPE is unset, it is set for the servers as kooka sets it for
itself (as scripts/bench.py does), so a CPU mlx-lm does not run OpenBLAS's fallback kernels.
Only the standard library: it runs under any python3.
"""
import argparse
import itertools
import json
import os
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "The history of computing is a story of abstraction layered on abstraction. Early "
    "machines were programmed by rewiring; then came stored programs, assemblers, compilers, "
    "operating systems, networks and, eventually, models that write programs themselves. "
).split()


def words(n, skip=0):
    return " ".join(TEXT[(skip + i) % len(TEXT)] for i in range(n))


def prompt(i, n):
    # least significant digit first: consecutive requests differ from their first token on
    return f"{i:05d}"[::-1] + ". " + words(max(n - 1, 1))


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


def request(url, body, timeout, path="/v1/completions"):
    """One streamed POST (completions, or chat completions with `path`). Never raises:
    failures are in the record; `text` is the reply."""
    rec = dict(ok=False, status=None, error=None, ttft_s=None, tokens=0, decode_tps=None, finish=None,
               text="")
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    first = last = usage = None
    chunks, rec["start"] = 0, time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            rec["status"] = r.status
            for raw in r:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue  # blank lines, ": keepalive" comments
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if msg.get("error"):
                    raise RuntimeError(f"stream error: {json.dumps(msg['error'])[:200]}")
                usage = msg.get("usage") or usage
                for choice in msg.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = (choice.get("text") or delta.get("content")
                             or delta.get("reasoning_content") or delta.get("reasoning"))
                    if piece:
                        last = time.perf_counter()
                        first = first or last
                        chunks += 1
                        rec["text"] += piece
                    rec["finish"] = choice.get("finish_reason") or rec["finish"]
        rec["ok"] = True
    except urllib.error.HTTPError as e:
        rec["status"] = e.code
        try:
            rec["error"] = e.read(300).decode("utf-8", "replace")
        except Exception:
            rec["error"] = str(e)
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:300]
    rec["end"] = time.perf_counter()
    if rec["ok"]:
        rec["ttft_s"] = (first or rec["end"]) - rec["start"]
        n = (usage or {}).get("completion_tokens")
        rec["tokens"] = n if n is not None else chunks
        rec["prompt_tokens"] = (usage or {}).get("prompt_tokens")
        rec["cached_tokens"] = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if rec["tokens"] > 1 and first and last > first:
            rec["decode_tps"] = (rec["tokens"] - 1) / (last - first)
    return rec


def body(model, text, max_tokens):
    return {"model": model, "prompt": text, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}


def run_streams(url, model, n, a, counter):
    """n concurrent requests released together; their records, in order."""
    bodies = [body(model, prompt(next(counter), a.prompt_words), a.max_tokens) for _ in range(n)]
    recs = [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        barrier.wait()
        recs[i] = request(url, bodies[i], a.timeout)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return recs


def nearest_rank(sorted_values, p):
    return sorted_values[max(0, -(-p * len(sorted_values) // 100) - 1)]


def summarize(recs):
    ok, bad = [r for r in recs if r["ok"]], [r for r in recs if not r["ok"]]
    out = {"requests": len(recs), "ok": len(ok), "rejected": sum(r["status"] == 429 for r in bad),
           "failed": sum(r["status"] != 429 for r in bad),
           "errors": [f"{r['status']}: {(r['error'] or '')[:120]}" for r in bad][:5],
           "ttft_p50_ms": None, "ttft_p99_ms": None, "agg_tps": None, "decode_tps_median": None,
           "tokens_per_req": None}
    if ok:
        ttft = sorted(1000 * r["ttft_s"] for r in ok)
        span = max(r["end"] for r in ok) - min(r["start"] for r in recs)
        dec = [r["decode_tps"] for r in ok if r["decode_tps"]]
        out.update(ttft_p50_ms=nearest_rank(ttft, 50), ttft_p99_ms=nearest_rank(ttft, 99),
                   agg_tps=sum(r["tokens"] for r in ok) / span if span > 0 else None,
                   decode_tps_median=statistics.median(dec) if dec else None,
                   tokens_per_req=statistics.mean(r["tokens"] for r in ok))
    t0 = min(r["start"] for r in recs)
    out["records"] = [dict(r, start=r["start"] - t0, end=r["end"] - t0) for r in recs]
    return out


def resend(url, model, a):
    # Round 1 pays the one-time kernel compiles of a long prompt's shapes (MLX's CUDA backend
    # compiles some kernels at first use; the warm-up waves never send a prompt this long);
    # the last round is the one reported.
    for _ in range(max(1, a.resend_rounds)):
        out = resend_round(url, model, a)
    return out


def resend_round(url, model, a):
    tag = f"Session {random.randint(100000, 999999)}. "  # a fresh long prompt per round
    text = tag + words(a.long_prompt_words)
    longer = text + " " + words(100, skip=a.long_prompt_words)
    recs = {k: request(url, body(model, t, 1), a.timeout)
            for k, t in (("cold", text), ("resent", text), ("extended", longer))}
    out = {f"{k}_ttft_ms": 1000 * r["ttft_s"] if r["ok"] else None for k, r in recs.items()}
    out["resent_over_cold"] = (out["resent_ttft_ms"] / out["cold_ttft_ms"]
                               if out["resent_ttft_ms"] and out["cold_ttft_ms"] else None)
    out["prompt_tokens"] = recs["cold"].get("prompt_tokens")
    out["cached_tokens"] = {k: r.get("cached_tokens") for k, r in recs.items()}
    out["errors"] = [f"{k}: {r['status']}: {(r['error'] or '')[:120]}" for k, r in recs.items() if not r["ok"]]
    return out


def turn2(url, model, a):
    """A chat's second turn: a long system prompt and a question, then the same conversation
    with the reply and one more question. Its TTFT against the same turn-2 request cold (another
    session, nothing cached): what a coding agent's next turn waits."""
    def chat(tag, turns, max_tokens):
        msgs = [{"role": "system", "content": tag + words(a.turn2_words)}] + turns
        body = {"model": model, "messages": msgs, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        return request(url, body, a.timeout, path="/v1/chat/completions")

    q1 = {"role": "user", "content": "Summarize the notes above in one sentence."}
    q2 = {"role": "user", "content": "Now list three keywords from them."}
    session = lambda: f"Session {random.randint(100000, 999999)}. "  # noqa: E731
    for _ in range(max(1, a.resend_rounds)):  # the first round pays one-time compiles
        cold = chat(session(), [q1, {"role": "assistant", "content": "Noted."}, q2], 1)
        tag = session()
        first = chat(tag, [q1], 16)
        second = chat(tag, [q1, {"role": "assistant", "content": first["text"] or "Noted."}, q2], 1)
    out = {"cold_ttft_ms": 1000 * cold["ttft_s"] if cold["ok"] else None,
           "turn2_ttft_ms": 1000 * second["ttft_s"] if second["ok"] else None,
           "prompt_tokens": second.get("prompt_tokens"), "cached_tokens": second.get("cached_tokens")}
    out["turn2_over_cold"] = (out["turn2_ttft_ms"] / out["cold_ttft_ms"]
                              if out["turn2_ttft_ms"] and out["cold_ttft_ms"] else None)
    out["errors"] = [f"{k}: {r['status']}: {(r['error'] or '')[:120]}"
                     for k, r in (("cold", cold), ("turn 1", first), ("turn 2", second)) if not r["ok"]]
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(p):
    if p.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(p.pid, sig)  # the process group started for this server
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


def start(side, a, log):
    """Starts one server; returns (process, base url, model name for requests)."""
    if side == "kooka":
        cmd = [a.kooka, "serve", "--model", a.model, "--port", "0"] + shlex.split(a.kooka_args)
        port = None
    else:
        port = free_port()
        base = shlex.split(a.mlx_lm_cmd) if a.mlx_lm_cmd else [a.python, "-m", "mlx_lm.server"]
        cmd = base + ["--model", a.model, "--port", str(port)]
    out_path = log + ".stdout"
    with open(log, "w") as err, open(out_path, "w") as out:
        print("$ " + shlex.join(cmd), file=err, flush=True)
        p = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, cwd=ROOT)
    deadline = time.time() + a.timeout
    url = f"http://127.0.0.1:{port}" if port else None
    while time.time() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{side} exited ({p.returncode}) before it answered")
        if url is None:
            m = re.search(r"kooka: listening on http://(\S+):(\d+)", open(out_path, errors="replace").read())
            if m:
                host = m.group(1) if m.group(1) not in ("0.0.0.0", "[::]") else "127.0.0.1"
                url = f"http://{host}:{m.group(2)}"
        if url:
            try:
                # mlx-lm: /health (its /v1/models fails when no Hugging Face cache folder exists)
                with urllib.request.urlopen(url + ("/v1/models" if side == "kooka" else "/health"), timeout=5) as r:
                    models = json.load(r)
                    if side == "kooka":  # its id (the folder's name); mlx-lm: the --model one
                        return p, url, (models.get("data") or [{}])[0].get("id", a.model)
                    return p, url, "default_model"
            except Exception:
                pass
        time.sleep(0.5)
    stop(p)
    raise RuntimeError(f"{side} not ready after {a.timeout:.0f}s")


def run_side(side, a, counter):
    fd, log = tempfile.mkstemp(prefix=f"bench_serve-{side}-", suffix=".log")
    os.close(fd)
    print(f"[{side}] starting (log {log})", file=sys.stderr, flush=True)
    t0, p = time.time(), None
    try:
        p, url, model = start(side, a, log)
        # mlx-lm loads its model after it starts answering: ready = a first completion done
        probe = request(url, body(model, "Hello", 1), a.timeout)
        if not probe["ok"]:
            raise RuntimeError(f"first request failed: {probe['status']}: {probe['error']}")
        res = {"ready_s": time.time() - t0, "url": url, "log": log, "streams": {}}
        for n in a.streams:
            if a.warmup:
                run_streams(url, model, n, a, counter)
            res["streams"][n] = summarize(run_streams(url, model, n, a, counter))
            s = res["streams"][n]
            print(f"[{side}] streams {n}: {s['ok']}/{n} ok, agg {s['agg_tps'] or 0:.1f} tok/s",
                  file=sys.stderr, flush=True)
        res["resend"] = resend(url, model, a)
        if a.turn2_words:
            res["turn2"] = turn2(url, model, a)
        return res
    except Exception as e:
        tail = "".join(open(f, errors="replace").read()[-2000:] for f in (log, log + ".stdout") if os.path.exists(f))
        print(f"[{side}] failed: {e}\n--- log tail ---\n{tail}", file=sys.stderr, flush=True)
        return {"error": str(e), "log": log}
    finally:
        p and stop(p)


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


STREAM_FIGS = (("ttft_p50_ms", "TTFT p50 ms"), ("ttft_p99_ms", "TTFT p99 ms"),
               ("agg_tps", "aggregate tok/s"), ("decode_tps_median", "decode tok/s/stream"))
TURN2_FIGS = (("cold_ttft_ms", "turn 2 cold TTFT ms"), ("turn2_ttft_ms", "turn 2 TTFT ms"),
              ("turn2_over_cold", "turn 2 / cold"))
RESEND_FIGS = (("cold_ttft_ms", "cold TTFT ms"), ("resent_ttft_ms", "resent TTFT ms"),
               ("extended_ttft_ms", "extended TTFT ms"), ("resent_over_cold", "resent/cold"))


def side_tables(side, r):
    print(f"\n### {side} (ready in {r['ready_s']:.1f} s)\n")
    print("| streams | ok | rejected | failed | " + " | ".join(l for _, l in STREAM_FIGS) + " | tokens/req |")
    print("|---" * (5 + len(STREAM_FIGS)) + "|")
    for n, s in r["streams"].items():
        print(f"| {n} | {s['ok']} | {s['rejected']} | {s['failed']} | "
              + " | ".join(fmt(s[k]) for k, _ in STREAM_FIGS) + f" | {fmt(s['tokens_per_req'])} |")
        for e in s["errors"]:
            print(f"  failed request: {e}")
    rs = r["resend"]
    print(f"\nresend, {rs['prompt_tokens']} prompt tokens:\n")
    print("| " + " | ".join(l for _, l in RESEND_FIGS) + " |\n" + "|---" * len(RESEND_FIGS) + "|")
    print("| " + " | ".join(fmt(rs[k], ".3f" if k == "resent_over_cold" else ".1f") for k, _ in RESEND_FIGS) + " |")
    for e in rs["errors"]:
        print(f"  failed request: {e}")
    if "turn2" in r:
        t = r["turn2"]
        print(f"\nchat turn 2, {t['prompt_tokens']} prompt tokens, {t['cached_tokens']} cached:\n")
        print("| " + " | ".join(l for _, l in TURN2_FIGS) + " |\n" + "|---" * len(TURN2_FIGS) + "|")
        print("| " + " | ".join(fmt(t[k], ".3f" if k == "turn2_over_cold" else ".1f") for k, _ in TURN2_FIGS) + " |")
        for e in t["errors"]:
            print(f"  failed request: {e}")


def comparison(k, m):
    print("\n### kooka / mlx-lm (TTFT: lower is better; tok/s: higher is better)\n")
    print("| figure | kooka | mlx-lm | kooka / mlx-lm |\n|---|---|---|---|")
    rows = [(f"{n} streams: {l}", k["streams"][n][key], m["streams"][n][key], ".1f")
            for n in k["streams"] if n in m["streams"] for key, l in STREAM_FIGS]
    rows += [(f"resend: {l}", k["resend"][key], m["resend"][key],
              ".3f" if key == "resent_over_cold" else ".1f") for key, l in RESEND_FIGS]
    if "turn2" in k and "turn2" in m:
        rows += [(f"chat turn 2: {l}", k["turn2"][key], m["turn2"][key],
                  ".3f" if key == "turn2_over_cold" else ".1f") for key, l in TURN2_FIGS]
    for label, x, y, spec in rows:
        print(f"| {label} | {fmt(x, spec)} | {fmt(y, spec)} | {fmt(x / y if x and y else None, '.2f')} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    p.add_argument("--kooka", default=os.path.join(ROOT, "target", "release", "kooka"))
    p.add_argument("--kooka-args", default="", help="extra arguments for `kooka serve`")
    p.add_argument("--python", default=os.path.join(ROOT, "third_party", "venv", "bin", "python"),
                   help="python with mlx_lm (runs `-m mlx_lm.server`)")
    p.add_argument("--mlx-lm-cmd", help="command starting mlx_lm.server instead, e.g. "
                   "'python3 scripts/gpu/mlx_lm_server.py' (--model/--port are appended)")
    p.add_argument("--sides", default="kooka,mlx-lm")
    p.add_argument("--streams", default="1,8,32,64")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-words", type=int, default=400)
    p.add_argument("--long-prompt-words", type=int, default=3000)
    p.add_argument("--turn2-words", type=int, default=0,
                   help="also a chat's turn 2 after a system prompt of this many words (0: off)")
    p.add_argument("--resend-rounds", type=int, default=2,
                   help="resend rounds, each with a fresh prompt; the last is reported")
    p.add_argument("--timeout", type=float, default=600, help="seconds, per HTTP call and server start")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", help="also write all raw numbers here")
    a = p.parse_args()
    a.model = os.path.abspath(a.model)
    a.streams = [int(x) for x in a.streams.split(",") if x.strip()]
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if any(s not in ("kooka", "mlx-lm") for s in sides):
        p.error("--sides takes kooka and/or mlx-lm")
    core = best_openblas_core()
    if sys.platform == "linux" and core and "OPENBLAS_CORETYPE" not in os.environ:
        os.environ["OPENBLAS_CORETYPE"] = core  # inherited by both servers

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that servers are stopped
    counter = itertools.count(1)
    results = {s: run_side(s, a, counter) for s in sides}
    print(f"model {os.path.basename(a.model)}, {a.max_tokens} max tokens, {a.prompt_words}-word "
          f"prompts, resend {a.long_prompt_words} words"
          + (f", OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}" if "OPENBLAS_CORETYPE" in os.environ else ""))
    for s, r in results.items():
        if "error" in r:
            print(f"\n### {s}: failed: {r['error']} (log {r['log']})")
        else:
            side_tables(s, r)
    if all(s in results and "error" not in results[s] for s in ("kooka", "mlx-lm")):
        comparison(results["kooka"], results["mlx-lm"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "env": {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")},
                       "sides": results}, f, indent=1)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
