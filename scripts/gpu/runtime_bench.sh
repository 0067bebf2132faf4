#!/usr/bin/env bash
# Runs ON the GPU machine after `scripts/gpu/prepare.sh stash` (see prepare.sh): the runtime's
# measurements (issue 14). Results go to $OUT.
#   1. scripts/gpu/qmm_scaling.py: MLX's 4-bit and bf16 matmul time against the batch rows M
#   2. kooka bench --batch 1/8/32: continuous batching in-process (no HTTP), and one 4k-token
#      prompt's prefill; KOOKA_DENSE_FROM_ROWS as set (the results are tagged with it)
#   3. scripts/bench_serve.py: kooka serve (and mlx_lm.server with SIDES=kooka,mlx-lm) at
#      $STREAMS concurrent streams, and a ~4k-token prompt resent
#   resend (not in the default steps): a resent ~4k-token prompt's time to the first token,
#      engine only (kooka bench --resend) and over HTTP with the server's debug timings
#   kernels (not in the default steps): examples/cuda_kernels, kooka's CUDA kernels against
#      MLX's ops (parity and time); carried as third_party/gpu/cuda_kernels (stage.sh)
#   stall (not in the default steps): native stacks (eu-stack) of a 32-stream serve with KOOKA_REPORT_FIRST=1
#   qmv (not in the default steps): kooka's few-rows quantized matvec against MLX's (cuda_kernels
#      QMV_ONLY=1, carried; QMV_TUNINGS picks the tunings), then batch-1 decode with it on and
#      off (QMV_ROWS_RUNS), and for each of QMV_VARIANTS ("tuning/min-values")
#   folds (not in the default steps): kooka's matvec with its neighbours folded in (RMSNorm,
#      SwiGLU, the residual addition): cuda_kernels FOLDS_ONLY=1 (FOLD_KERNELS=QMV_ONLY: the
#      plain kernel's tunings first), batch-1 decode with KOOKA_QMV_FOLD 1 and 0, greedy parity
#      with mlx-lm with the folds on (bench.sh models parity, SmolLM2-135M and Llama-8B 4-bit
#      shapes), decode folded for each of FOLD_TUNINGS, step profiles folded and not, FOLD_RUNS
#      more decodes, SmolLM2's decode with KOOKA_QMV_FOLD 1 / 0
#   stage (not in the default steps): x staged in shared memory by the matvec (Tuning::stage):
#      cuda_kernels QMV_ONLY=1 (tunings with and without, parity, the folds), batch-1 decode for
#      each of STAGE_TUNINGS ("-": the default), step profiles, greedy parity with mlx-lm under
#      STAGE_PARITY_TUNING (SmolLM2-135M 4-bit with every matrix on the kernel, Llama-8B 4-bit);
#      STAGE_KERNELS=0 skips cuda_kernels
#   ab (not in the default steps): batch-1 decode, the default against AB_ENV / AB_BIN, with parity (see the step)
#   hostprof (not in the default steps): native stacks of a decode step's host thread, summed (see the step)
#   kattn (not in the default steps): the decode attention kernels' parity and device times (see the step)
#   ktrace (not in the default steps): every kernel of decode steps on the device's clock (CUPTI), summed (see the step)
#   rope (not in the default steps): RoPE folded into the fused q/k/v product (see the step)
#   buffers (not in the default steps): batch-1 decode and its step profile for each of BUFFER_RUNS
#      ("ops/mb" pairs: MLX_MAX_OPS_PER_BUFFER / MLX_MAX_MB_PER_BUFFER, how much of the lazy graph
#      MLX puts in one CUDA graph before launching it; "default" for MLX's own)
#   disk (not in the default steps): scripts/bench_disk_cache.py, a DISK_TOKENS (20000) prompt
#      from the disk prompt cache after restarts, for each of DISK_LOADS ("load gather")
# The synthetic Llama-8B 4-bit model gets Qwen2.5's tokenizer (151,936 ids, more than the
# model's 128,256), so that every sampled id decodes to text and time-to-first-text is the
# time to the first token. Carried: third_party/gpu/{cuda13.part.ab, kooka, qwen-tokenizer/}.
# usage: scripts/gpu/runtime_bench.sh [STEP...]   (STEPS: setup qmm engine serve resend stall kernels qmv folds stage rope ab hostprof ktrace kattn buffers disk;
#   default setup qmm engine serve)
# env: MODEL, SIDES, STREAMS, RUNS (engine: "batch prompt gen" triples, comma-separated), LONG_WORDS (resend prompt), TURN2_WORDS (a chat's turn 2 after
# a system prompt this long; 0: off), RESEND_ROUNDS.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
END=${END:-$(($(date +%s) + 570))}
SIDES=${SIDES:-kooka}
STREAMS=${STREAMS:-1,8,32}
MODEL=${MODEL:-/opt/models/llama-8b-b4-qwentok}
log() { echo "$(date +%T) $*" | tee -a "$OUT/log.txt"; }
left() { echo $((END - $(date +%s))); }
# Batch-1 decode of $MODEL (512-token prompt, 128 tokens) into $OUT/$BENCH_LOG: a label, then
# environment assignments for the run.
bench8b() {
  local label=$1; shift
  [ "$(left)" -gt 40 ] || { log "skip bench $label"; return 0; }
  echo "$label $(env "$@" timeout 60 ${KOOKA_BIN:-/opt/mlxw/kooka} bench --model $MODEL --batch 1 \
    --prompt-tokens 512 --gen-tokens 128 --reps 1 2>&1 | tail -1)" | tee -a "$OUT/${BENCH_LOG:-folds-bench.md}"
}
# Runs a command under the kernel tracer (carried in run 1 as ktrace.tar.xz), its trace into $1.
traced() {
  local trace=$1; shift
  [ -f /tmp/ktrace-lib/ktrace/libkernel_trace.so ] || { mkdir -p /tmp/ktrace-lib &&
    tar -xJf /opt/mlxw/ktrace.tar.xz -C /tmp/ktrace-lib; }
  KTRACE_OUT=$trace CUDA_INJECTION64_PATH=/tmp/ktrace-lib/ktrace/libkernel_trace.so "$@"
}
export PYTHONUNBUFFERED=1
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(setup qmm engine serve)
for step in "${steps[@]}"; do
  case $step in
    setup)
      log "prepare install"
      timeout 150 scripts/gpu/prepare.sh install 2>&1 | tail -3 | tee -a "$OUT/log.txt"
      . scripts/gpu/env.sh
      if ! [ -f $MODEL/config.json ]; then
        log "make $MODEL"
        mkdir -p /opt/models
        timeout 240 python3 scripts/make_synthetic_model.py --shape llama-8b --bits 4 \
          --tokenizer-from /opt/mlxw/qwen-tokenizer --out $MODEL 2>&1 | tail -3 | tee -a "$OUT/log.txt"
      fi
      ;;
    qmm)
      . scripts/gpu/env.sh
      log "qmm scaling"
      timeout 120 python3 scripts/gpu/qmm_scaling.py 2>&1 | tee "$OUT/qmm.md"
      ;;
    engine)
      . scripts/gpu/env.sh
      tag=dense-${KOOKA_DENSE_FROM_ROWS:-default},keep-unpacked-${KOOKA_KEEP_UNPACKED_FROM_ROWS:-off},attention-${KOOKA_DECODE_ATTENTION:-default},qmm-rows-${KOOKA_QMM_ROWS:-off}
      IFS=, read -ra runs <<< "${RUNS:-1 4096 8,1 512 64,8 512 64,32 512 64}"
      for run in "${runs[@]}"; do
        set -- $run
        [ "$(left)" -gt 60 ] || { log "skip engine batch $1 prompt $2"; continue; }
        log "kooka bench --batch $1 --prompt-tokens $2 ($tag)"
        echo "batch $1 prompt $2 ($tag):" >> "$OUT/engine.md"
        timeout 150 /opt/mlxw/kooka bench --model $MODEL --batch $1 --prompt-tokens $2 \
          --gen-tokens $3 --reps 1 2>&1 | tail -2 | tee -a "$OUT/engine.md"
      done
      ;;
    serve)
      . scripts/gpu/env.sh
      l=$(left); [ "$l" -gt 90 ] || { log "skip serve ($l s left)"; continue; }
      log "bench_serve sides=$SIDES streams=$STREAMS ($l s left)"
      mkdir -p /tmp/bslogs
      # Every 20 s from the 60th: the server's threads (state, kernel wait channel), to tell
      # a stalled engine step (the kooka-mlx thread waiting) from a busy one.
      # Also each thread's kernel stack and /health (its step_ms: the engine step running).
      ( sleep 60; while pid=$(pgrep -x kooka | head -1); [ -n "$pid" ]; do
          { date +%T; ps -L -o tid,stat,wchan:30,pcpu,comm -p "$pid"
            for t in /proc/$pid/task/*; do echo "$(cat $t/comm) $(head -3 $t/stack 2>/dev/null | tr '\n' ' ')"; done
            port=$(ss -ltnp 2>/dev/null | grep "pid=$pid," | grep -o ':[0-9]*' | head -1)
            [ -n "$port" ] && curl -s -m 3 "http://127.0.0.1$port/health"; echo
          } >> "$OUT/threads.txt" 2>&1
          sleep 20; done ) &
      TMPDIR=/tmp/bslogs timeout -s INT -k 15 $((l - 20)) python3 scripts/bench_serve.py \
        --model $MODEL --kooka /opt/mlxw/kooka --mlx-lm-cmd "python3 scripts/gpu/mlx_lm_server.py" \
        --sides $SIDES --streams $STREAMS --max-tokens 128 --prompt-words 400 \
        --long-prompt-words ${LONG_WORDS:-3000} --turn2-words ${TURN2_WORDS:-0} \
        --resend-rounds ${RESEND_ROUNDS:-2} --timeout 240 --json "$OUT/serve.json" 2>&1 | tee "$OUT/serve.md" || true
      for f in /tmp/bslogs/*; do [ -f "$f" ] && tail -c 3000 "$f" > "$OUT/$(basename "$f").tail"; done
      ;;
    stall)
      # The 32-stream stall with KOOKA_REPORT_FIRST=1 (issue 14): the server's native stacks
      # (elfutils' eu-stack carried as third_party/gpu/stack.tar.xz, run by its own loader) and
      # the GPU's utilisation, at 75, 85 and 95 s into a 32-stream run.
      tar -xJf third_party/gpu/stack.tar.xz -C /tmp
      ( sleep 65; for at in 75 85 95; do sleep 10; pid=$(pgrep -x kooka | head -1)
          [ -n "$pid" ] || continue
          { echo "== $at s"; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
            timeout 30 /tmp/stk/run.sh -p "$pid" -n 40; } >> "$OUT/stall.txt" 2>&1
        done ) &
      KOOKA_REPORT_FIRST=1 STREAMS=32 RESEND_ROUNDS=1 END=$(($(date +%s) + 120)) "$0" serve
      wait
      ;;
    qmv)
      # kooka's few-rows quantized matvec (issue 22): parity and GB/s against MLX's kernel for
      # each tuning (examples/cuda_kernels/, carried as third_party/gpu/cuda_kernels), then
      # batch-1 decode with it on and off, alternating (KOOKA_QMV_TUNING as set applies).
      . scripts/gpu/env.sh
      log "cuda_kernels QMV_ONLY"
      QMV_ONLY=1 timeout 200 /opt/mlxw/cuda_kernels > "$OUT/qmv.md" 2>&1 || echo "cuda_kernels failed" >> "$OUT/qmv.md"
      grep -E 'M=|Error|off by' "$OUT/qmv.md" || true
      for rows in ${QMV_ROWS_RUNS:-1-1 0 1-1 0 1-1 0}; do
        [ "$(left)" -gt 40 ] || { log "skip bench qmv=$rows"; continue; }
        echo "qmv=$rows tuning=${KOOKA_QMV_TUNING:-default} $(KOOKA_QMV_ROWS=$rows timeout 60 /opt/mlxw/kooka bench \
          --model $MODEL --batch 1 --prompt-tokens 512 --gen-tokens 128 --reps 1 2>&1 | tail -1)" | tee -a "$OUT/qmv-bench.md"
      done
      # QMV_VARIANTS: "TUNING/MIN_VALUES" pairs ("-" keeps the default), batch-1 decode each
      for v in ${QMV_VARIANTS:-}; do
        [ "$(left)" -gt 40 ] || { log "skip bench variant $v"; continue; }
        env=(); t=${v%/*}; mv=${v#*/}
        [ "$t" = - ] || env+=(KOOKA_QMV_TUNING=$t)
        [ "$mv" = - ] || env+=(KOOKA_QMV_MIN_VALUES=$mv)
        echo "variant $v $(env "${env[@]}" timeout 60 /opt/mlxw/kooka bench --model $MODEL --batch 1 \
          --prompt-tokens 512 --gen-tokens 128 --reps 1 2>&1 | tail -1)" | tee -a "$OUT/qmv-bench.md"
      done
      if [ -x /opt/mlxw/step_profile ]; then
        for rows in 1-1 0; do
          [ "$(left)" -gt 40 ] || continue
          echo "step_profile qmv=$rows $(KOOKA_QMV_ROWS=$rows timeout 60 /opt/mlxw/step_profile $MODEL 512 128 2>&1 | tail -1)" | tee -a "$OUT/qmv-bench.md"
        done
      fi
      ;;
    folds)
      . scripts/gpu/env.sh
      log "cuda_kernels ${FOLD_KERNELS:-FOLDS_ONLY}"
      env ${FOLD_KERNELS:-FOLDS_ONLY}=1 timeout 200 /opt/mlxw/cuda_kernels > "$OUT/folds.md" 2>&1 || echo "cuda_kernels failed" >> "$OUT/folds.md"
      grep -E 'differs|off by|rror|panic|a layer|us a call|\): |M=' "$OUT/folds.md" || true
      bench8b fold=1 KOOKA_QMV_FOLD=1
      bench8b fold=0 KOOKA_QMV_FOLD=0
      l=$(left)
      if [ "$l" -gt 100 ]; then
        ln -sfn "$MODEL" /opt/models/llama-8b-b4
        KOOKA_QMV_FOLD=1 TOK=/opt/mlxw/qwen-tokenizer KOOKA=/opt/mlxw/kooka MODELS="smollm2-135m:4 llama-8b:4" \
          DEADLINE=$(($(date +%s) + l - 80)) timeout $((l - 40)) scripts/gpu/bench.sh models parity || true
      else
        log "skip parity ($l s left)"
      fi
      for t in ${FOLD_TUNINGS:-1,8,4,1 1,8,2,1,1056}; do
        bench8b "fold=1 tuning=$t" KOOKA_QMV_FOLD=1 KOOKA_QMV_TUNING=$t
      done
      if [ -x /opt/mlxw/step_profile ]; then
        for f in 1 0; do
          [ "$(left)" -gt 40 ] || continue
          echo "step_profile fold=$f $(KOOKA_QMV_FOLD=$f timeout 60 /opt/mlxw/step_profile $MODEL 512 128 2>&1 | tail -1)" | tee -a "$OUT/folds-bench.md"
        done
      fi
      for f in ${FOLD_RUNS:-1 0}; do
        bench8b fold=$f KOOKA_QMV_FOLD=$f
      done
      for f in 1 0 1 0; do
        [ "$(left)" -gt 25 ] && [ -f /opt/models/smollm2-135m-b4/config.json ] || continue
        echo "smollm2 fold=$f $(KOOKA_QMV_FOLD=$f timeout 30 /opt/mlxw/kooka bench --model /opt/models/smollm2-135m-b4 \
          --batch 1 --prompt-tokens 512 --gen-tokens 256 --reps 1 2>&1 | tail -1)" | tee -a "$OUT/folds-bench.md"
      done
      ;;
    stage)
      . scripts/gpu/env.sh
      if [ "${STAGE_KERNELS:-1}" = 1 ]; then
        log "cuda_kernels QMV_ONLY"
        QMV_ONLY=1 timeout ${KERNELS_S:-220} /opt/mlxw/cuda_kernels > "$OUT/stage-kernels.md" 2>&1 \
          || echo "cuda_kernels failed" >> "$OUT/stage-kernels.md"
        grep -E 'differ|off by|rror|panic|a layer|M=1|\): ' "$OUT/stage-kernels.md" | head -40 || true
      fi
      export BENCH_LOG=stage-bench.md
      for t in ${STAGE_TUNINGS:-- 1,8,2,1,528,1 2,8,2,1,528,1 - 1,8,2,1,528,1 2,8,2,1,528,1}; do
        if [ "$t" = - ]; then bench8b "tuning=default"; else bench8b "tuning=$t" KOOKA_QMV_TUNING=$t; fi
      done
      pt=${STAGE_PARITY_TUNING:-1,8,2,1,528,1}
      for t in - "$pt"; do
        [ "$(left)" -gt 40 ] && [ -x /opt/mlxw/step_profile ] || continue
        env=(); [ "$t" = - ] || env=(KOOKA_QMV_TUNING=$t)
        echo "step_profile tuning=$t $(env "${env[@]}" timeout 60 /opt/mlxw/step_profile $MODEL 512 128 2>&1 | tail -1)" | tee -a "$OUT/stage-bench.md"
      done
      ln -sfn "$MODEL" /opt/models/llama-8b-b4
      # SmolLM2's matrices are below the kernel's floors: every one on it here.
      for spec in "smollm2-135m:4 KOOKA_QMV_MIN_VALUES=0 KOOKA_QMV_FOLD_MIN_VALUES=0" "llama-8b:4"; do
        set -- $spec; shape=$1; shift
        l=$(left); [ "$l" -gt 60 ] || { log "skip parity $shape ($l s left)"; continue; }
        env "$@" KOOKA_QMV_TUNING=$pt TOK=/opt/mlxw/qwen-tokenizer KOOKA=/opt/mlxw/kooka MODELS=$shape \
          DEADLINE=$(($(date +%s) + l - 50)) timeout $((l - 20)) scripts/gpu/bench.sh models parity || true
      done
      ;;
    rope)
      # RoPE folded into the fused q/k/v product: cuda_kernels ROPE_ONLY=1 (against MLX's RoPE,
      # bit for bit, and the time), $MODEL's greedy tokens and last prompt logits with the
      # folds (RoPE's too), without RoPE's and without any, batch-1 decode and step profiles
      # with and without RoPE's fold, then greedy parity with mlx-lm (bench.sh, Llama-8B;
      # ROPE_PARITY=0 skips it).
      . scripts/gpu/env.sh
      log "cuda_kernels ROPE_ONLY"
      ROPE_ONLY=1 timeout 120 /opt/mlxw/cuda_kernels > "$OUT/rope-kernels.md" 2>&1 || echo "cuda_kernels failed" >> "$OUT/rope-kernels.md"
      grep -E 'differ|rror|panic|\| (folded|staged)|us a call' "$OUT/rope-kernels.md" || true
      ids=$(python3 -c 'print(",".join(str(100 + 7 * i) for i in range(24)))')
      for v in "all KOOKA_QMV_FOLD=1" "norope KOOKA_QMV_FOLD_ROPE=0" "none KOOKA_QMV_FOLD=0"; do
        set -- $v; tag=$1; shift
        env "$@" timeout 90 /opt/mlxw/kooka generate --model $MODEL --prompt-tokens $ids --print-tokens \
          --ignore-eos --max-tokens 32 --print-logits $OUT/rope-logits-$tag.json > $OUT/rope-tokens-$tag.json 2>/dev/null || true
      done
      python3 - "$OUT" <<'PY' | tee -a "$OUT/rope-bench.md"
import json, sys
out = sys.argv[1]
def load(tag):
    try:
        return json.load(open(f"{out}/rope-tokens-{tag}.json"))["tokens"], json.load(open(f"{out}/rope-logits-{tag}.json"))
    except Exception as e:
        return None, None
# RoPE's fold must change nothing (all vs norope); without folds MLX's kernel does q/k/v and o.
for a, b in (("all", "norope"), ("all", "none")):
    (ta, la), (tb, lb) = load(a), load(b)
    if ta is None or tb is None:
        print(f"{a} vs {b}: missing"); continue
    same = sum(x == y for x, y in zip(ta, tb))
    diff = max(abs(x - y) for x, y in zip(la, lb))
    print(f"folds {a} vs {b}: greedy tokens identical {same}/{len(ta)}; last prompt logits max |diff| {diff:.4g}")
PY
      export BENCH_LOG=rope-bench.md
      for v in all norope all norope; do
        if [ $v = all ]; then bench8b "folds=all"; else bench8b "folds=norope" KOOKA_QMV_FOLD_ROPE=0; fi
      done
      for v in all norope; do
        [ "$(left)" -gt 40 ] && [ -x /opt/mlxw/step_profile ] || continue
        env=(); [ $v = all ] || env=(KOOKA_QMV_FOLD_ROPE=0)
        echo "step_profile folds=$v $(env "${env[@]}" timeout 60 /opt/mlxw/step_profile $MODEL 512 128 2>&1 | tail -1)" | tee -a "$OUT/rope-bench.md"
      done
      ln -sfn "$MODEL" /opt/models/llama-8b-b4
      l=$(left)
      if [ "$l" -gt 60 ] && [ "${ROPE_PARITY:-1}" = 1 ]; then
        TOK=/opt/mlxw/qwen-tokenizer KOOKA=/opt/mlxw/kooka MODELS=llama-8b:4 DEADLINE=$(($(date +%s) + l - 50)) \
          timeout $((l - 10)) scripts/gpu/bench.sh models parity || true
      fi
      ;;
    ab)
      # $MODEL's batch-1 decode alternating the default and side b: AB_ENV ("VAR=value ...")
      # and/or another build (AB_BIN, with its step_profile AB_PROFILE, e.g. the commit before
      # a change, carried), AB_RUNS (3) pairs, their step profiles, and their greedy tokens and
      # last prompt logits compared (AB_REF=1: both against mlx-lm's too).
      . scripts/gpu/env.sh
      export BENCH_LOG=ab-bench.md
      bin_b=${AB_BIN:-/opt/mlxw/kooka}; prof_b=${AB_PROFILE:-/opt/mlxw/step_profile}
      ids=$(python3 -c 'print(",".join(str(100 + 7 * i) for i in range(24)))')
      for side in a b; do
        env=(); bin=/opt/mlxw/kooka; [ $side = a ] || { env=(${AB_ENV:-}); bin=$bin_b; }
        env "${env[@]}" timeout 90 $bin generate --model $MODEL --prompt-tokens $ids --print-tokens \
          --ignore-eos --max-tokens 32 --print-logits $OUT/ab-logits-$side.json > $OUT/ab-tokens-$side.json 2>/dev/null || true
      done
      if [ -n "${AB_REF:-}" ]; then   # mlx-lm's greedy tokens and logits on the same prompt
        echo "[{\"model\": \"$MODEL\", \"max_tokens\": 32, \"tokens\": [$ids]}]" |
          timeout 240 python3 tests/python/mlx_lm_reference.py - > $OUT/ab-ref.json 2> $OUT/ab-ref.err || true
      fi
      python3 - "$OUT" <<'PY' | tee -a "$OUT/ab-bench.md"
import json, os, sys
out = sys.argv[1]
t = [json.load(open(f"{out}/ab-tokens-{s}.json"))["tokens"] for s in "ab"]
l = [json.load(open(f"{out}/ab-logits-{s}.json")) for s in "ab"]
print(f"a vs b: greedy tokens identical {sum(x == y for x, y in zip(*t))}/{len(t[0])}; "
      f"last prompt logits max |diff| {max(abs(x - y) for x, y in zip(*l)):.4g}")
if os.path.getsize(f"{out}/ab-ref.json") if os.path.exists(f"{out}/ab-ref.json") else 0:
    ref = json.load(open(f"{out}/ab-ref.json"))[0]
    top = sorted(ref["logits"], reverse=True)[:2]
    for side, tokens, logits in zip("ab", t, l):
        same = sum(x == y for x, y in zip(tokens, ref["tokens"]))
        diff = max(abs(x - y) for x, y in zip(logits, ref["logits"]))
        print(f"{side} vs mlx-lm: greedy tokens identical {same}/{len(tokens)}; last prompt logits "
              f"max |diff| {diff:.4g} (mlx-lm's top-2 margin {top[0] - top[1]:.4g})")
PY
      for i in $(seq ${AB_RUNS:-3}); do
        bench8b a
        KOOKA_BIN=$bin_b bench8b "b ${AB_ENV:-} ${AB_BIN:-}" ${AB_ENV:-}
      done
      for side in a b; do
        env=(); prof=/opt/mlxw/step_profile; [ $side = a ] || { env=(${AB_ENV:-}); prof=$prof_b; }
        [ "$(left)" -gt 40 ] && [ -x $prof ] || continue
        echo "step_profile $side ${env[*]:-} $(env "${env[@]}" timeout 60 $prof $MODEL 512 128 2>&1 | tail -1)" | tee -a "$OUT/ab-bench.md"
      done
      ;;
    hostprof)
      # Where the host's time goes in a decode step: HOSTPROF_SAMPLES (60) native stacks of
      # step_profile's main thread (eu-stack, carried in run 1 as stack.tar.xz) while it
      # decodes, summed per function (scripts/gpu/stack_summary.py). step_profile staged with
      # its symbols (strip --strip-debug).
      . scripts/gpu/env.sh
      tar -xJf /opt/mlxw/stack.tar.xz -C /tmp
      /opt/mlxw/step_profile $MODEL 512 6000 > "$OUT/hostprof-run.txt" 2>&1 &
      pid=$!
      sleep ${HOSTPROF_WAIT:-20}
      : > "$OUT/hostprof-stacks.txt"
      for i in $(seq ${HOSTPROF_SAMPLES:-60}); do
        kill -0 $pid 2>/dev/null || break
        timeout 10 /tmp/stk/run.sh -p $pid -n 40 >> "$OUT/hostprof-stacks.txt" 2>&1 || true
      done
      kill $pid 2>/dev/null || true
      python3 scripts/gpu/stack_summary.py --tid $pid "$OUT/hostprof-stacks.txt" | tee "$OUT/hostprof.md" | head -${HOSTPROF_LINES:-60}
      ;;
    ktrace)
      # Where a decode step's device time goes: step_profile (KTRACE_PROMPT tokens, 64 steps a
      # round) under the CUPTI kernel tracer (scripts/gpu/kernel_trace.c, carried in run 1 as
      # ktrace.tar.xz), once for each of KTRACE_ENVS (env assignments joined by "+", since
      # values such as KOOKA_QMV_TUNING's hold commas; "-" for none), summed per kernel by
      # scripts/gpu/kernel_trace.py.
      . scripts/gpu/env.sh
      n=0
      for e in ${KTRACE_ENVS:--}; do
        [ "$(left)" -gt 45 ] || { log "skip ktrace $e"; continue; }
        n=$((n + 1)); env=(); [ "$e" = - ] || IFS=+ read -ra env <<< "$e"
        trace=/tmp/ktrace-${KTRACE_PROMPT:-512}-$n.tsv; rm -f $trace   # (no stale trace if the run fails)
        traced $trace env "${env[@]}" \
          timeout 150 /opt/mlxw/step_profile $MODEL ${KTRACE_PROMPT:-512} 64 > "$OUT/ktrace-${KTRACE_PROMPT:-512}-$n-run.txt" 2>&1 || true
        { echo "## $e (prompt ${KTRACE_PROMPT:-512})"; tail -1 "$OUT/ktrace-${KTRACE_PROMPT:-512}-$n-run.txt"
          python3 scripts/gpu/kernel_trace.py $trace --top ${KTRACE_TOP:-40}; } 2>&1 | tee -a "$OUT/ktrace.md"
        gzip -c $trace > "$OUT/ktrace-${KTRACE_PROMPT:-512}-$n.tsv.gz" || true
      done
      ;;
    kattn)
      # kooka's decode attention against MLX's (cuda_kernels ATTENTION_ONLY=1: parity, then
      # times as the host sees them) under the kernel tracer: each kernel's device time; for
      # each binary of KATTN_BINS (another build's cuda_kernels to compare against).
      # KATTN_MODE=QMV_ONLY (or FOLDS_ONLY, ROPE_ONLY) traces those parts instead: the matvec's
      # device time per tuning, where the host-timed tables include the host's per-call cost.
      . scripts/gpu/env.sh
      # (binaries may come packed, to fit a run: cd third_party/gpu && tar -cJf kernels.tar.xz cuda_kernels ...)
      [ -f /opt/mlxw/kernels.tar.xz ] && tar -xJf /opt/mlxw/kernels.tar.xz -C /opt/mlxw
      for bin in ${KATTN_BINS:-/opt/mlxw/cuda_kernels}; do
        [ "$(left)" -gt 60 ] || { log "skip kattn $bin"; continue; }
        tag=$(basename $bin)
        traced /tmp/kattn-$tag.tsv env \
          ${KATTN_MODE:-ATTENTION_ONLY}=1 timeout 240 $bin 2>&1 | tee "$OUT/kattn-$tag.md" || true
        python3 scripts/gpu/kernel_trace.py /tmp/kattn-$tag.tsv --whole --top 60 2>&1 | tee -a "$OUT/kattn-$tag.md"
      done
      ;;
    buffers)
      # How MLX cuts a decode step into CUDA graphs (issue 22): each graph costs the host an
      # update and a launch, and MLX lets at most 10 be in flight before async_eval waits.
      . scripts/gpu/env.sh
      if [ -x /opt/mlxw/step_profile ]; then
        # one decode step's nodes by primitive, at batch 1 (MLX's DOT export)
        DOT=/tmp/step.dot timeout 60 /opt/mlxw/step_profile $MODEL 16 1 > /dev/null 2>&1 || true
        { echo "nodes of one decode step:"; grep -o 'label ="[A-Za-z_]*' /tmp/step.dot | cut -d'"' -f2 \
          | sort | uniq -c | sort -rn; } > "$OUT/step-nodes.md" 2>&1 || true
      fi
      for run in ${BUFFER_RUNS:-default 50/1000 400/100000 1000/100000 default}; do
        [ "$(left)" -gt 50 ] || { log "skip buffers $run"; continue; }
        env=()
        [ "$run" = default ] || env=(MLX_MAX_OPS_PER_BUFFER=${run%/*} MLX_MAX_MB_PER_BUFFER=${run#*/})
        echo "buffers=$run bench $(env "${env[@]}" timeout 60 /opt/mlxw/kooka bench --model $MODEL \
          --batch 1 --prompt-tokens 512 --gen-tokens 128 --reps 1 2>&1 | tail -1)" | tee -a "$OUT/buffers.md"
        if [ -x /opt/mlxw/step_profile ]; then
          echo "buffers=$run step_profile $(env "${env[@]}" timeout 60 /opt/mlxw/step_profile \
            $MODEL 512 128 2>&1 | tail -1)" | tee -a "$OUT/buffers.md"
        fi
      done
      ;;
    disk)
      # The disk prompt cache (issue 20): a DISK_TOKENS prompt after restarts, for each block
      # loading mode (KOOKA_DISK_LOAD: load = MLX's safetensors Load, gather = host arrays).
      . scripts/gpu/env.sh
      python3 -c "import json,sys; p=sys.argv[1]; c=json.load(open(p)); c['max_position_embeddings']=max(c.get('max_position_embeddings',0),32768); json.dump(c,open(p,'w'))" $MODEL/config.json
      for mode in ${DISK_LOADS:-load gather}; do
        l=$(left); [ "$l" -gt 120 ] || { log "skip disk $mode ($l s left)"; continue; }
        log "bench_disk_cache KOOKA_DISK_LOAD=$mode"
        KOOKA_DISK_LOAD=$mode timeout $((l - 20)) python3 scripts/bench_disk_cache.py --model $MODEL \
          --kooka /opt/mlxw/kooka --prompt-tokens ${DISK_TOKENS:-20000} --dir /tmp/kdb-$mode/cache 2>&1 \
          | tail -2 | tee -a "$OUT/disk.md" || true
        grep "read from disk" /tmp/kdb-$mode/cache/bench-server.log >> "$OUT/disk.md" || true
      done
      ;;
    resend)
      # Where a resent prompt's time to the first token goes (issue 14): the engine alone
      # (kooka bench --resend: no HTTP, no tokenizer), then over HTTP with the server's debug
      # lines (tokenizing time, queued-to-first-token time) beside the client's figure.
      . scripts/gpu/env.sh
      log "kooka bench --resend"
      timeout 150 /opt/mlxw/kooka bench --model $MODEL --prompt-tokens 4065 --resend 130 \
        --reps 3 --prefill-chunk 8192 2>&1 | tail -1 | tee -a "$OUT/resend.md"
      l=$(left); [ "$l" -gt 90 ] || { log "skip resend over HTTP ($l s left)"; continue; }
      rm -rf /tmp/rslogs; mkdir -p /tmp/rslogs
      RUST_LOG=kooka=debug TMPDIR=/tmp/rslogs timeout -s INT -k 15 $((l - 20)) python3 \
        scripts/bench_serve.py --model $MODEL --kooka /opt/mlxw/kooka --sides kooka --streams "" \
        --long-prompt-words ${LONG_WORDS:-3000} --resend-rounds 3 --timeout 120 2>&1 \
        | tail -4 | tee -a "$OUT/resend.md" || true
      grep -h "first token\|prompt tokenized" /tmp/rslogs/* | tail -12 >> "$OUT/resend.md" || true
      ;;
    kernels)
      . scripts/gpu/env.sh
      log "cuda_kernels"
      KOOKA_QMM_ROWS=${KOOKA_QMM_ROWS:-1-32} timeout 120 /opt/mlxw/cuda_kernels 2>&1 | tee "$OUT/kernels.md"
      ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
log done
