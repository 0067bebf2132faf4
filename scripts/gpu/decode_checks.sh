#!/usr/bin/env bash
# Runs ON the GPU machine after run 1 (scripts/gpu/prepare.sh stash; carry as in docs/PERFORMANCE.md
# "k and v straight into the cache"): the qmv parity (ring of loads, tensor cores), the whole
# model's greedy tokens and logits with and without the cache write, and the kernel trace of the
# tensor-core variants. Results in $OUT; BUDGET seconds (400).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export END=$(($(date +%s)+${BUDGET:-400})); export OUT
scripts/gpu/runtime_bench.sh setup >/dev/null 2>&1; . scripts/gpu/env.sh
tar -xJf /opt/mlxw/kernels.tar.xz -C /opt/mlxw
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
# parity: the ring and the cache write, bit for bit against the default paths
PARITY_ONLY=1 QMV_MMA=1 QMV_PIPE=3 timeout 60 /opt/mlxw/cuda_kernels > $OUT/parity.md 2>&1; echo "parity rc $?" >> $OUT/parity.md
# the whole model's greedy tokens with and without the cache write
M=/opt/models/llama-8b-b4-qwentok; ids=$(python3 -c 'print(",".join(str(100 + 7 * i) for i in range(24)))')
for e in 0 1; do
  KOOKA_QMV_WRITE_CACHE=$e timeout 60 /opt/mlxw/kooka generate --model $M --prompt-tokens $ids --print-tokens \
    --ignore-eos --max-tokens 32 --print-logits $OUT/logits-$e.json > $OUT/tok-$e.json 2>/dev/null
done
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
t = [json.load(open(f"{o}/tok-{i}.json"))["tokens"] for i in (0, 1)]
l = [json.load(open(f"{o}/logits-{i}.json")) for i in (0, 1)]
print(f"write-cache: greedy tokens identical {sum(a == b for a, b in zip(*t))}/{len(t[0])}; "
      f"last prompt logits max |diff| {max(abs(a - b) for a, b in zip(*l)):.4g}")
PY
KTRACE_TOP=12 KTRACE_ENVS="- KOOKA_QMV_MMA=1+KOOKA_QMV_PIPE=3 KOOKA_QMV_WRITE_CACHE=1 KOOKA_QMV_MMA=1+KOOKA_QMV_PROBE=1 KOOKA_QMV_TUNING=1,8,1,1,0,0,1,0,0,6" \
  scripts/gpu/runtime_bench.sh ktrace >/dev/null 2>&1
rm -f $OUT/*.tsv.gz $OUT/*-run.txt
grep -E "rc |differ|FAIL|into the cache" $OUT/parity.md | cut -c1-160 | head -24
grep -E "^## |decode steps|kooka_qmv|SliceUpdate|copy" $OUT/ktrace.md | cut -c1-170
