#!/usr/bin/env python3
"""Time to first token of a long prompt after a restart: read from the disk prompt cache
(`kooka serve --prompt-cache-dir`) against a cold prefill, in one run.

1. A server with an empty cache folder: the prompt cold, then again (from memory).
2. Its writer finishes (the folder settles); the server stops; the page cache is dropped
   when this user may (else the files may still be in memory: said in the output).
   A last restart reads them again without dropping it (the files in the page cache, as
   after a quick restart).
3. A new server on the same folder: the prompt plus ~50 tokens (a conversation's next turn);
   then, after one more restart, the prompt exactly. Each restarted server first answers a
   short unrelated prompt, so that one-time start-up costs are not counted.
4. Beside a decoding stream (one more restart, page cache dropped): a short prompt streams
   --beside-tokens tokens, and once it has begun the long prompt comes back from disk; the
   stream's longest pause between two tokens is how long the disk hit stopped everyone else
   (its median pause, for scale).

TTFT is the time to the whole reply of a `max_tokens: 1` completion (prefill plus one token).

usage: scripts/bench_disk_cache.py --model models/SmolLM2-135M-Instruct --prompt-tokens 8000
       [--kooka target/release/kooka] [--dir /tmp/kooka-disk-bench] [--json out.json]
"""

import argparse
import http.client
import json
import statistics
import threading
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request


def start(kooka, model, cache_dir, extra):
    log = open(os.path.join(cache_dir, "..", "bench-server.log"), "a")
    p = subprocess.Popen(
        [kooka, "serve", "--port", "0", "--model", model, "--prompt-cache-dir", cache_dir, *extra],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "RUST_LOG": "info,kooka::engine::disk_cache=debug"})
    for line in p.stdout:
        if line.startswith("kooka: listening on http://"):
            return p, line.strip().split("http://", 1)[1]
    raise SystemExit("kooka serve did not start; see bench-server.log")


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()


def complete(addr, prompt):
    body = json.dumps({"prompt": prompt, "max_tokens": 1, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://{addr}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json", "Host": "localhost"})
    t = time.perf_counter()
    try:
        r = json.load(urllib.request.urlopen(req, timeout=3600))
    except urllib.error.HTTPError as e:
        raise SystemExit(f"kooka answered {e.code}: {e.read().decode()}")
    dt = time.perf_counter() - t
    u = r["usage"]
    return dt, u["prompt_tokens"], u.get("prompt_tokens_details", {}).get("cached_tokens", 0)


def stream_times(addr, prompt, max_tokens, begun):
    """Streams a completion; the arrival time of each text chunk (`begun` set after 8)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=3600)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True})
    conn.request("POST", "/v1/completions", body=body,
                 headers={"Content-Type": "application/json", "Host": "localhost"})
    times = []
    for line in conn.getresponse():
        if line.startswith(b"data: {"):
            times.append(time.perf_counter())
            if len(times) == 8:
                begun.set()
    begun.set()
    return times


def sentences(first, n, seed):
    rng = random.Random(seed)
    words = ("river stone lamp harbour engine garden silver winter letter market bridge cloud "
             "orchard signal copper meadow lantern compass island thunder").split()
    return " ".join(f"Entry {first + i}: the {rng.choice(words)} and the {rng.choice(words)} "
                    f"met near the {rng.choice(words)}." for i in range(n))


def settle(folder, quiet=1.0, timeout=600):
    """Waits until no temporary files remain and the folder's size holds for `quiet` s."""
    def size():
        total, tmp = 0, False
        for root, _, files in os.walk(folder):
            for f in files:
                tmp |= f.endswith(".tmp")
                try:
                    total += os.path.getsize(os.path.join(root, f))
                except OSError:
                    pass
        return total, tmp
    deadline = time.time() + timeout
    last, since = None, time.time()
    while time.time() < deadline:
        now = size()
        if now != last:
            last, since = now, time.time()
        elif not now[1] and time.time() - since >= quiet:
            return now[0]
        time.sleep(0.1)
    return last[0]


def drop_page_cache():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=20000)
    ap.add_argument("--kooka", default="target/release/kooka")
    ap.add_argument("--dir", default="/tmp/kooka-disk-bench")
    ap.add_argument("--json")
    ap.add_argument("--beside-tokens", type=int, default=300,
                    help="tokens the stream beside the disk hit asks for (0: skip that part)")
    ap.add_argument("serve_args", nargs="*", help="more `kooka serve` flags (after --)")
    a = ap.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    cache = os.path.join(a.dir, "cache")
    os.makedirs(cache)

    p, addr = start(a.kooka, a.model, cache, a.serve_args)
    try:
        # Tokens per sentence, on text that shares no prefix with the prompt.
        _, n, _ = complete(addr, "Calibration. " + sentences(0, 100, 1))
        count = max(1, int(a.prompt_tokens / (n / 100)))
        prompt = sentences(0, count, 2)
        cold, tokens, c0 = complete(addr, prompt)
        memory, _, c1 = complete(addr, prompt)
    finally:
        written = settle(cache)
        stop(p)
    def restarted(text, drop=True):
        dropped = drop and drop_page_cache()
        p, addr = start(a.kooka, a.model, cache, a.serve_args)
        try:
            complete(addr, "Warm-up. " + sentences(0, 3, 4))
            return complete(addr, text) + (dropped,)
        finally:
            stop(p)
    nxt, tokens_next, c3, dropped = restarted(prompt + " " + sentences(5000, 4, 3))
    disk, _, c2, _ = restarted(prompt)
    warm, _, _, _ = restarted(prompt, drop=False)
    beside = None
    if a.beside_tokens > 0:
        drop_page_cache()
        p, addr = start(a.kooka, a.model, cache, a.serve_args)
        try:
            complete(addr, "Warm-up. " + sentences(0, 3, 4))
            begun, times = threading.Event(), []
            story = "Once upon a time, in a lighthouse by the sea, there lived"
            t = threading.Thread(target=lambda: times.extend(
                stream_times(addr, story, a.beside_tokens, begun)))
            t.start()
            begun.wait(600)
            hit, _, _ = complete(addr, prompt)
            t.join()
        finally:
            stop(p)
        gaps = [b - a_ for a_, b in zip(times, times[1:])]
        if gaps:
            beside = {"stream_tokens": len(times), "max_pause_s": round(max(gaps), 3),
                      "median_pause_s": round(statistics.median(gaps), 4), "disk_hit_s": round(hit, 3)}
    out = {
        "model": a.model, "prompt_tokens": tokens, "bytes_on_disk": written,
        "beside_a_stream": beside,
        "page_cache_dropped": dropped,
        "cold_s": round(cold, 3), "memory_s": round(memory, 3), "disk_s": round(disk, 3),
        "next_turn_from_disk_s": round(nxt, 3), "disk_page_cache_warm_s": round(warm, 3), "next_turn_tokens": tokens_next,
        "cached": {"cold": c0, "memory": c1, "disk": c2, "next_turn": c3},
        "disk_over_cold": round(disk / cold, 4), "warm_over_cold": round(warm / cold, 4), "next_turn_over_cold": round(nxt / cold, 4),
    }
    print(json.dumps(out, indent=1))
    print(f"{os.path.basename(a.model.rstrip('/'))}: {tokens} tokens: cold {cold:.2f} s, "
          f"from memory {memory:.2f} s, after a restart from disk {disk:.2f} s "
          f"({100 * disk / cold:.1f}% of cold; next turn {100 * nxt / cold:.1f}%; "
          f"files in the page cache {warm:.2f} s, {100 * warm / cold:.1f}%), "
          f"{written / 1e6:.0f} MB on disk, page cache {'dropped' if dropped else 'NOT dropped'}")
    if beside:
        print(f"beside a decoding stream: the disk hit took {beside['disk_hit_s']:.2f} s; the "
              f"stream's longest pause {beside['max_pause_s']:.2f} s (median {beside['median_pause_s']:.3f} s, "
              f"{beside['stream_tokens']} tokens)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
