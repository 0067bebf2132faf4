#!/usr/bin/env bash
# Runs ON the GPU machine after `scripts/gpu/runtime_bench.sh setup`: where a batched decode
# step's GPU time goes. With Nsight Systems (`nsys`) on the machine: a profile of
# `kooka bench --batch $BATCH` and its kernel summary; without it, decode tokens/s at batch
# 1, 2, 4, ..., 32 (how the step time grows with the rows). Results go to $OUT.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
. scripts/gpu/env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MODEL=/opt/models/llama-8b-b4-qwentok
BATCH=${BATCH:-32}
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1 || true)
if [ -n "$NSYS" ]; then
  echo "nsys: $NSYS"
  timeout 200 "$NSYS" profile -o /tmp/kooka-batch -f true --stats=false \
    /opt/mlxw/kooka bench --model $MODEL --batch "$BATCH" --prompt-tokens 512 --gen-tokens 64 \
    --reps 1 2>&1 | tail -3
  timeout 120 "$NSYS" stats --report cuda_gpu_kern_sum --format csv /tmp/kooka-batch.nsys-rep \
    > "$OUT/kernels.csv" 2>/dev/null || true
  timeout 120 "$NSYS" stats --report cuda_api_sum --format csv /tmp/kooka-batch.nsys-rep \
    > "$OUT/api.csv" 2>/dev/null || true
  head -25 "$OUT/kernels.csv" | cut -c1-220
else
  echo "no nsys: decode scaling instead"
fi
for b in 1 2 4 8 16 32; do
  printf 'batch %s: ' "$b"
  timeout 100 /opt/mlxw/kooka bench --model $MODEL --batch $b --prompt-tokens 512 \
    --gen-tokens 64 --reps 1 2>&1 | tail -1
done | tee "$OUT/scaling.md"
