#!/usr/bin/env python3
"""Issues 8 and 23's run: kooka on 1 GPU and on 2 ranks (one GPU each, pipeline and tensor
parallel, MLX's ring backend, and with --extras nccl its nccl backend) against mlx-lm's server
on the same model, in one run. Started by
scripts/gpu/multi.sh (which installs CUDA MLX first); standard library only.

usage: python3 scripts/gpu/multi.py --kooka K --tokenizer DIR --work DIR --out DIR
           [--models llama-8b:4,qwen3-moe-30b-a3b:4] [--deadline 540] [--max-tokens 128]
           [--reps 3] [--prompt-words 400] [--extras nccl] [--redo]

Steps per model (each one a fresh set of processes, in this order):
  make      scripts/make_synthetic_model.py (skipped when the folder exists)
  warm      one short single-GPU kooka generate: fills MLX's PTX cache (/tmp/mlx/...), so no
            later step pays for NVRTC compiles
  gen-1, gen-pipeline, gen-tensor
            `kooka generate --prompt-tokens IDS --print-tokens --ignore-eos` on 1 GPU, then on
            2 ranks through `kooka launch -n 2` (ring); greedy tokens compared with gen-1
  mlx-1, mlx-pipeline, mlx-tensor
            `python3 -m mlx_lm.server` on 1 GPU, then 2 ranks through mlx.launch --backend ring
  kooka-1, kooka-pipeline, kooka-tensor
            `kooka serve`, 1 GPU and 2 ranks through `kooka launch -n 2` (ring)
  with --extras nccl, after all models: gen-nccl-*, kooka-nccl-* (`kooka launch --backend
  nccl`; pipeline hand-offs through all_sum) and mlx-nccl-pipeline, mlx-nccl-tensor
  (mlx.launch --backend nccl).
Servers are measured by http_bench.py's client (streamed /v1/completions, temperature 0, one
warm-up request, then --reps requests with distinct prompts of one length).

One GPU per rank: MLX's ring backend does not pick a device per rank (only its nccl backend
does, and mlx.launch / kooka launch set CUDA_VISIBLE_DEVICES only for nccl), so every ring
rank runs under `bash -c 'export CUDA_VISIBLE_DEVICES=$MLX_RANK; exec ...'`. A sampler thread reads
nvidia-smi every 0.5 s; each step records the peak memory and utilisation of every GPU, which
shows whether both GPUs did the work.

Results go to WORK/results.json as they come (a step already there is skipped, so a second
run on the same warm machine resumes where the first stopped at --deadline), the table to
OUT/summary.md, every process's output to WORK/logs/.
"""
import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import http_bench  # noqa: E402

STATS = re.compile(r"prompt: (\d+) tokens, ([\d.]+) tokens/s \| generation: (\d+) tokens, "
                   r"([\d.]+) tokens/s \| peak memory: ([\d.]+) GB")
RANK = re.compile(r"^\[(\d+)\] ?(.*)$")
MLX_LAUNCH = ("import sys; from mlx._distributed_utils.launch import main; "
              "sys.argv[0] = 'mlx.launch'; main()")


class Sampler(threading.Thread):
    """nvidia-smi every 0.5 s: (time, [(gpu, util %, memory MiB)])."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.samples = []
        self.path = path
        self.ok = subprocess.run(["bash", "-c", "command -v nvidia-smi"],
                                 capture_output=True).returncode == 0

    def run(self):
        if not self.ok:
            return
        with open(self.path, "a") as f:
            while True:
                r = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                    "--format=csv,noheader,nounits"], capture_output=True, text=True)
                now = time.time()
                gpus = []
                for line in r.stdout.strip().splitlines():
                    try:
                        i, u, m = (int(x) for x in line.split(","))
                        gpus.append((i, u, m))
                    except ValueError:
                        pass
                self.samples.append((now, gpus))
                f.write(f"{now:.2f} {gpus}\n")
                f.flush()
                time.sleep(0.5)

    def window(self, t0, t1):
        """Per GPU: memory before t0, peak memory and peak utilisation in [t0, t1]."""
        before, peak = {}, {}
        for t, gpus in list(self.samples):
            for i, u, m in gpus:
                if t < t0:
                    before[i] = m
                elif t <= t1:
                    p = peak.setdefault(i, [0, 0])
                    p[0], p[1] = max(p[0], m), max(p[1], u)
        return {str(i): {"mem_before_mib": before.get(i), "mem_peak_mib": p[0], "util_peak": p[1]}
                for i, p in sorted(peak.items())}


class Run:
    def __init__(self, a):
        self.a = a
        self.start = time.time()
        self.results_path = os.path.join(a.work, "results.json")
        self.results = {}
        if os.path.exists(self.results_path) and not a.redo:
            self.results = json.load(open(self.results_path))
        self.logs = os.path.join(a.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.sampler = Sampler(os.path.join(self.logs, "nvidia-smi.txt"))
        self.sampler.start()
        self.port = 41000 + 100 * (int(time.time()) % 50)

    def log(self, msg):
        line = f"{time.strftime('%H:%M:%S')} [{time.time() - self.start:5.0f}s] {msg}"
        print(line, flush=True)
        with open(os.path.join(self.a.out, "log.txt"), "a") as f:
            f.write(line + "\n")

    def left(self):
        return self.a.deadline - (time.time() - self.start)

    def ports(self, n=4):
        self.port += 10
        return self.port

    def save(self, key, res):
        self.results[key] = res
        tmp = self.results_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=1)
        os.replace(tmp, self.results_path)

    def env(self, gpu=None):
        e = dict(os.environ)
        if gpu is not None:
            e["CUDA_VISIBLE_DEVICES"] = str(gpu)
        return e

    def spawn(self, cmd, logname, env):
        f = open(os.path.join(self.logs, logname), "w")
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=ROOT), f

    @staticmethod
    def stop(p):
        if p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)  # the process group this script started
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass

    def step(self, key, limit, fn, min_left=30):
        """Runs fn(timeout) -> dict unless done already or too little time is left."""
        if key in self.results and self.results[key].get("status") != "cut":
            self.log(f"{key}: done in an earlier run ({self.results[key].get('status')})")
            return self.results[key]
        left = self.left()
        if left < min_left:
            self.log(f"{key}: skipped, {left:.0f}s left before the deadline")
            return None
        budget = min(limit, left)
        self.log(f"{key}: start (limit {budget:.0f}s)")
        t0 = time.time()
        try:
            res = fn(budget)
        except subprocess.TimeoutExpired:
            res = {"status": "cut" if budget < limit else "timeout",
                   "error": f"no result within {budget:.0f}s"}
        except Exception as e:  # one failing step must not stop the others
            # A socket timeout at the deadline is a cut, to be redone by the next run.
            res = {"status": "cut" if self.left() < 2 else "failed",
                   "error": f"{type(e).__name__}: {e}"}
        t1 = time.time()
        res.setdefault("status", "ok")
        res["seconds"] = round(t1 - t0, 1)
        res["gpus"] = self.sampler.window(t0, t1)
        self.save(key, res)
        brief = {k: v for k, v in res.items() if k not in ("tokens", "texts", "gpus", "warmup")}
        self.log(f"{key}: {json.dumps(brief)}")
        self.log(f"{key}: gpus {json.dumps(res['gpus'])}")
        return res

    # ---- steps ----

    def make(self, model_dir, shape, bits):
        def fn(budget):
            if os.path.exists(os.path.join(model_dir, "config.json")):
                return {"status": "ok", "note": "existed"}
            cmd = [self.a.python, os.path.join(ROOT, "scripts/make_synthetic_model.py"),
                   "--shape", shape, "--bits", str(bits), "--tokenizer-from", self.a.tokenizer,
                   "--out", model_dir]
            p, f = self.spawn(cmd, f"make-{os.path.basename(model_dir)}.log", self.env(0))
            try:
                rc = p.wait(budget)
            finally:
                self.stop(p)
                f.close()
            if rc != 0:
                return {"status": "failed", "error": f"exit {rc}"}
            size = sum(os.path.getsize(os.path.join(model_dir, x)) for x in os.listdir(model_dir))
            return {"status": "ok", "bytes": size}
        return fn

    def generate(self, model_dir, ids, tokens, mode, tag):
        def fn(budget):
            gen = [self.a.kooka, "generate", "--model", model_dir, "--prompt-tokens", ids,
                   "--print-tokens", "--ignore-eos", "--max-tokens", str(tokens)]
            if mode is None:
                cmd, env = gen, self.env(0)
            else:
                cmd, env = self.kooka_ranks(gen, mode, self.ports()), self.env()
            p, f = self.spawn(cmd, f"{tag}.log", env)
            try:
                rc = p.wait(budget)
            finally:
                self.stop(p)
                f.close()
            text = open(os.path.join(self.logs, f"{tag}.log"), errors="replace").read()
            per_rank = {}
            for line in text.splitlines()[1:]:
                m = RANK.match(line)
                rank, body = (int(m.group(1)), m.group(2)) if m else (0, line)
                if body.startswith("{") and '"tokens"' in body:
                    per_rank.setdefault(rank, {})["tokens"] = json.loads(body)["tokens"]
                s = STATS.search(body)
                if s:
                    n, ptps, g, gtps, mem = s.groups()
                    per_rank.setdefault(rank, {}).update(
                        prompt_tokens=int(n), prompt_tps=float(ptps), ttft_ms=1000 * int(n) / float(ptps),
                        gen_tokens=int(g), decode_tps=float(gtps), peak_gb=float(mem))
            r0 = per_rank.get(0, {})
            res = {"status": "ok" if rc == 0 and "tokens" in r0 else "failed", "exit": rc, **r0}
            if mode is not None:
                res["ranks_agree"] = all(v.get("tokens") == r0.get("tokens") for v in per_rank.values())
                res["ranks"] = sorted(per_rank)
            if res["status"] != "ok":
                res["error"] = "\n".join(text.splitlines()[-6:])[-800:]
            return res
        return fn

    def kooka_ranks(self, command, mode, port):
        """`kooka launch -n 2` running `command` split by `mode` (pipeline, tensor, or
        nccl-pipeline / nccl-tensor: the launcher's nccl backend gives each rank its GPU)."""
        if mode.startswith("nccl-"):
            return [self.a.kooka, "launch", "-n", "2", "--backend", "nccl", "--nccl-port", str(port),
                    "--"] + command + ["--parallel", mode[len("nccl-"):]]
        # The ring backend does not pick a GPU per rank.
        inner = "export CUDA_VISIBLE_DEVICES=$MLX_RANK; exec " + shlex.join(command + ["--parallel", mode])
        return [self.a.kooka, "launch", "-n", "2", "-p", str(port), "--", "bash", "-c", inner]

    def serve(self, model_dir, engine, mode, backend, tag):
        def fn(budget):
            port = self.ports()
            http = port + 5
            if engine == "kooka":
                base = [self.a.kooka, "serve", "--model", model_dir, "--port", str(http)]
                if mode is None:
                    cmd, env = base, self.env(0)
                else:
                    cmd = self.kooka_ranks(base, mode if backend == "ring" else f"nccl-{mode}", port)
                    env = self.env()
            else:
                base = [self.a.python, os.path.join(HERE, "mlx_lm_server.py"), "--model", model_dir,
                        "--port", str(http)]
                if mode == "pipeline":
                    base.append("--pipeline")
                if mode is None:
                    cmd, env = base, self.env(0)
                elif backend == "ring":
                    inner = "export CUDA_VISIBLE_DEVICES=$MLX_RANK; exec " + shlex.join(base)
                    cmd = [self.a.python, "-c", MLX_LAUNCH, "-n", "2", "--backend", "ring",
                           "-p", str(port), "--", "bash", "-c", inner]
                    env = self.env()
                else:  # nccl: mlx.launch sets CUDA_VISIBLE_DEVICES=rank itself
                    cmd = [self.a.python, "-c", MLX_LAUNCH, "-n", "2", "--backend", "nccl",
                           "--nccl-port", str(port), "--env", "NCCL_NVLS_ENABLE=0", "--"] + base
                    env = self.env()
                    env["MLX_LM_NCCL_FIX"] = "1"  # see mlx_lm_server.py
            p, f = self.spawn(cmd, f"{tag}.log", env)
            url = f"http://127.0.0.1:{http}"
            deadline = time.time() + budget
            try:
                t0 = time.time()
                while True:
                    if p.poll() is not None:
                        raise RuntimeError(f"server exited ({p.returncode}) before it answered")
                    if time.time() > deadline:
                        raise subprocess.TimeoutExpired(cmd, budget)
                    try:
                        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                            if r.status == 200:
                                break
                    except Exception:
                        time.sleep(0.5)
                ready_s = time.time() - t0
                apps = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                     "--format=csv,noheader"], capture_output=True, text=True).stdout.strip() \
                    if self.sampler.ok else ""
                left = deadline - time.time()
                if left < 10:
                    raise subprocess.TimeoutExpired(cmd, budget)
                warm = http_bench.one(url, http_bench.prompt(0, self.a.prompt_words),
                                      self.a.max_tokens, left)
                runs = []
                for i in range(1, self.a.reps + 1):
                    left = deadline - time.time()
                    if left < 5:
                        raise subprocess.TimeoutExpired(cmd, budget)
                    runs.append(http_bench.one(url, http_bench.prompt(i, self.a.prompt_words),
                                               self.a.max_tokens, left))
            except Exception:
                self.stop(p)
                f.close()
                tail = open(os.path.join(self.logs, f"{tag}.log"), errors="replace").read()[-1500:]
                with open(os.path.join(self.logs, f"{tag}.log"), "a") as g:
                    g.write("\n[multi.py] step failed\n")
                self.log(f"{tag}: server log tail:\n{tail}")
                raise
            self.stop(p)
            f.close()
            dec = sorted(r["decode_tps"] for r in runs if r["decode_tps"])
            ttft = sorted(1000 * r["ttft_s"] for r in runs)
            return {"status": "ok", "ready_s": round(ready_s, 1),
                    "decode_tps": dec[len(dec) // 2] if dec else None,
                    "ttft_ms": ttft[len(ttft) // 2], "decode_tps_all": dec, "ttft_ms_all": ttft,
                    "prompt_tokens": runs[0]["prompt_tokens"],
                    "completion_tokens": [r["completion_tokens"] for r in runs],
                    "warmup": {k: v for k, v in warm.items() if k != "text"},
                    "compute_apps": apps, "texts": [r["text"] for r in runs]}
        return fn


def prompt_ids(python, model_dir, words):
    """Token ids of http_bench's prompt 1, so kooka generate sees what the servers see."""
    code = ("import sys, json; sys.path.insert(0, sys.argv[3]); import http_bench; "
            "from tokenizers import Tokenizer; "
            "t = Tokenizer.from_file(sys.argv[1] + '/tokenizer.json'); "
            "print(','.join(map(str, t.encode(http_bench.prompt(1, int(sys.argv[2])), "
            "add_special_tokens=False).ids)))")
    out = subprocess.run([python, "-c", code, model_dir, str(words), HERE], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


class NoPipeline(str):
    def __bool__(self):
        return False


def mlx_has_pipeline(python, model_dir):
    """mlx-lm's sharded_load pipelines only models whose module has a PipelineMixin class
    (mlx-lm 0.32.2: qwen2, qwen3_moe, deepseek, ... but not llama)."""
    code = ("import json, sys, importlib; from mlx_lm.models.pipeline import PipelineMixin; "
            "t = json.load(open(sys.argv[1] + '/config.json'))['model_type']; "
            "m = importlib.import_module('mlx_lm.models.' + t); "
            "print(t, any(isinstance(c, type) and c is not PipelineMixin and issubclass(c, PipelineMixin) "
            "for c in vars(m).values()))")
    out = subprocess.run([python, "-c", code, model_dir], capture_output=True, text=True)
    words = out.stdout.split()
    if out.returncode == 0 and words[-1:] == ["True"]:
        return True
    return NoPipeline(f"mlx-lm's {words[0] if words else '?'} module has no pipeline()")


def first_diff(a, b):
    if a is None or b is None:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def parity(res, ref, field):
    """'identical' / 'differ at N' / '-' for tokens (a list) or texts (a list of texts)."""
    if not res or not ref or res.get("status") != "ok" or ref.get("status") != "ok":
        return "-"
    a, b = res.get(field), ref.get(field)
    if field == "tokens":
        d = first_diff(a, b)
        return f"{len(a)}/{len(b)} identical" if d is None else f"differ from token {d}"
    # mlx-lm's streaming detokenizer drops the first token's leading space; kooka keeps it.
    same = sum(x.lstrip() == y.lstrip() for x, y in zip(a, b))
    return f"{same}/{len(b)} texts identical"


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results, models, gen_tokens):
    rows = ["| model | setup | kooka serve decode tok/s | mlx-lm server decode tok/s | ratio | "
            "kooka TTFT ms | mlx-lm TTFT ms | kooka generate decode tok/s / TTFT ms | "
            "kooka generate tokens vs 1 GPU | kooka serve texts vs 1 GPU | mlx-lm texts vs 1 GPU | "
            "kooka serve vs mlx-lm texts | GPU 0 / 1 peak memory used, MiB (kooka generate; kooka serve; mlx-lm) |",
            "|" + "---|" * 13]
    ok = lambda r: r if r and r.get("status") == "ok" else None  # noqa: E731

    def added(r):
        # Peaks, not differences: the previous step's processes may still be freeing memory
        # when the next one starts.
        if not r or not r.get("gpus"):
            return "-"
        g = r["gpus"]
        return " / ".join(str(g[i]["mem_peak_mib"]) if i in g else "-" for i in ("0", "1"))

    def cell(r, v, spec):
        if r is None:
            return "-"
        return fmt(v, spec) if r.get("status") == "ok" else r.get("status")

    for m in models:
        setups = [("1 GPU", "1", "1"), ("2 GPU pipeline, ring", "pipeline", "pipeline"),
                  ("2 GPU tensor, ring", "tensor", "tensor"),
                  ("2 GPU pipeline, nccl", "nccl-pipeline", "nccl-pipeline"),
                  ("2 GPU tensor, nccl", "nccl-tensor", "nccl-tensor")]
        for label, kmode, mmode in setups:
            k = results.get(f"{m}/kooka-{kmode}") if kmode else None
            g = results.get(f"{m}/gen-{kmode}") if kmode else None
            x = results.get(f"{m}/mlx-{mmode}")
            if not any((k, g, x)):
                continue
            kd, xd = (ok(k) or {}).get("decode_tps"), (ok(x) or {}).get("decode_tps")
            ratio = f"{kd / xd:.2f}x" if kd and xd else "-"
            gen = "-"
            if ok(g):
                gen = f"{g['decode_tps']:.1f} / {g['ttft_ms']:.0f}"
            elif g:
                gen = g.get("status", "-")
            rows.append("| " + " | ".join([
                m, label, cell(k, kd, ".1f"), cell(x, xd, ".1f"), ratio,
                cell(k, (k or {}).get("ttft_ms"), ".0f"), cell(x, (x or {}).get("ttft_ms"), ".0f"), gen,
                "(reference)" if kmode == "1" else parity(g, results.get(f"{m}/gen-1"), "tokens"),
                "(reference)" if kmode == "1" else parity(k, results.get(f"{m}/kooka-1"), "texts"),
                "(reference)" if mmode == "1" else parity(x, results.get(f"{m}/mlx-1"), "texts"),
                parity(k, x, "texts"), f"{added(g)}; {added(k)}; {added(x)}"]) + " |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kooka", required=True)
    p.add_argument("--tokenizer", required=True, help="folder with tokenizer.json (+ config)")
    p.add_argument("--models-dir", default="/opt/models")
    p.add_argument("--work", default="/opt/multi")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--models", default="llama-8b:4,qwen3-moe-30b-a3b:4")
    p.add_argument("--deadline", type=float, default=540, help="seconds; later steps are skipped")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--prompt-words", type=int, default=380)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--extras", default="", help="comma list: nccl")
    p.add_argument("--only", default="", help="comma list of step names to run (e.g. gen-1,mlx-1)")
    p.add_argument("--redo", action="store_true", help="ignore earlier results")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    run = Run(a)
    only = set(filter(None, a.only.split(",")))
    models = []
    for spec in a.models.split(","):
        shape, bits = spec.split(":")
        models.append((f"{shape}-b{bits}", shape, int(bits)))
    run.log(f"models {[m[0] for m in models]}, deadline {a.deadline:.0f}s, kooka {a.kooka}")
    for name, shape, bits in models:
        d = os.path.join(a.models_dir, name)
        want = lambda s: not only or s in only  # noqa: E731
        exists = os.path.exists(os.path.join(d, "config.json"))
        mk = run.step(f"{name}/make", 420, run.make(d, shape, bits), min_left=0 if exists else 60)
        if not mk or mk.get("status") != "ok":
            continue
        try:
            ids = prompt_ids(a.python, d, a.prompt_words)
        except subprocess.CalledProcessError as e:
            run.log(f"{name}: cannot tokenize the prompt: {e.stderr[-500:]}")
            continue
        run.log(f"{name}: prompt of {len(ids.split(','))} tokens")
        if want("warm"):
            run.step(f"{name}/warm", 240, run.generate(d, ids, 8, None, f"{name}-warm"))
        for mode in ("1", "pipeline", "tensor"):
            if want(f"gen-{mode}"):
                run.step(f"{name}/gen-{mode}", 180, run.generate(
                    d, ids, a.max_tokens, None if mode == "1" else mode, f"{name}-gen-{mode}"))
        mlx_pipeline = mlx_has_pipeline(a.python, d)
        for engine in ("mlx", "kooka"):
            for mode in ("1", "pipeline", "tensor"):
                if engine == "mlx" and mode == "pipeline" and not mlx_pipeline:
                    run.log(f"{name}/mlx-pipeline: n/a ({mlx_pipeline!r})")
                    run.save(f"{name}/mlx-pipeline", {"status": "n/a", "note": str(mlx_pipeline)})
                    continue
                if want(f"{engine}-{mode}"):
                    run.step(f"{name}/{engine}-{mode}", 240, run.serve(
                        d, engine, None if mode == "1" else mode, "ring", f"{name}-{engine}-{mode}"),
                        min_left=45)
    if "nccl" in a.extras:
        for name, _, _ in models:
            d = os.path.join(a.models_dir, name)
            if not os.path.exists(os.path.join(d, "config.json")):
                continue
            try:
                ids = prompt_ids(a.python, d, a.prompt_words)
            except subprocess.CalledProcessError as e:
                run.log(f"{name}: cannot tokenize the prompt: {e.stderr[-500:]}")
                continue
            for mode in ("pipeline", "tensor"):
                run.step(f"{name}/gen-nccl-{mode}", 180, run.generate(
                    d, ids, a.max_tokens, f"nccl-{mode}", f"{name}-gen-nccl-{mode}"), min_left=45)
                run.step(f"{name}/kooka-nccl-{mode}", 240, run.serve(
                    d, "kooka", mode, "nccl", f"{name}-kooka-nccl-{mode}"), min_left=45)
                if mode == "pipeline" and not mlx_has_pipeline(a.python, d):
                    run.save(f"{name}/mlx-nccl-pipeline", {"status": "n/a"})
                    continue
                run.step(f"{name}/mlx-nccl-{mode}", 240, run.serve(
                    d, "mlx", mode, "nccl", f"{name}-mlx-nccl-{mode}"), min_left=45)
    summary = table(run.results, [m[0] for m in models], a.max_tokens)
    head = (f"{a.max_tokens} generated tokens, temperature 0; servers: http_bench.py, median of "
            f"{a.reps} after a warm-up; kooka generate: one cold process, TTFT = prompt / prompt tok/s\n\n")
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(head + summary + "\n")
    print(head + summary, flush=True)


if __name__ == "__main__":
    main()
