#!/usr/bin/env bash
# Runs ON the 2-GPU machine (device tool, kind nvidia-h200-x2) after
# `scripts/gpu/prepare.sh stash` (see prepare.sh): installs CUDA MLX, then issue 8's run
# (scripts/gpu/multi.py): synthetic 8B Llama and Qwen3-30B-A3B-shaped MoE models, 4-bit;
# kooka generate and kooka serve on 1 GPU and on 2 ranks (pipeline, tensor; ring backend),
# mlx-lm's server likewise, greedy parity, decode tok/s and TTFT, one table.
#
# usage: scripts/gpu/multi.sh [multi.py flags, e.g. --models llama-8b:4 --extras nccl]
# Carried from the CPU machine: third_party/gpu/{cuda13.part.ab, mlx*.whl, kooka (stripped
# release build), qwen-tokenizer/ (tokenizer.json or .json.gz, tokenizer_config.json)}.
# Results: $OUT/summary.md (the table), $OUT/results.json, $OUT/log.txt, $OUT/logs.tar.gz.
# A second call on the same warm machine resumes: finished steps are kept in /opt/multi.
# --extras nccl adds kooka (kooka launch --backend nccl: generate and serve, pipeline and
# tensor) and mlx-lm (mlx.launch --backend nccl, with a shim for mlx-lm's CPU-stream barrier:
# scripts/gpu/mlx_lm_server.py) over MLX's nccl backend: issue 23's run is
#   scripts/gpu/multi.sh --models llama-8b:4,qwen3-moe-30b-a3b:4 --extras nccl
# Dry run on the CPU machine (tiny models, CPU MLX):
#   MULTI_LOCAL=1 PY=third_party/venv/bin/python scripts/gpu/multi.sh \
#     --models llama-tiny:4,qwen3-moe-tiny:4 --models-dir /tmp/mt/models --work /tmp/mt/work
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# NVLink multicast stays off (the machine's notes: it can take the host's GPUs down).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if [ -z "${MULTI_LOCAL:-}" ]; then
  if ! [ -f /opt/mlxsite/.done ]; then
    scripts/gpu/prepare.sh install > "$OUT/prepare.txt" 2>&1 || { tail -20 "$OUT/prepare.txt"; exit 1; }
  fi
  . scripts/gpu/env.sh
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
  nvidia-smi topo -m 2>&1 | head -8
  echo "python3: $(command -v python3) $(python3 -V 2>&1); kernel $(uname -r); $(nproc) cores"
fi
KOOKA=${KOOKA:-$ROOT/third_party/gpu/kooka}
[ -x "$KOOKA" ] || KOOKA=/opt/mlxw/kooka
TOK=${TOK:-/opt/mlxw/qwen-tokenizer}
if ! [ -f "$TOK/tokenizer.json" ]; then
  src=$ROOT/third_party/gpu/qwen-tokenizer
  [ -d "$src" ] || src=/opt/mlxw/qwen-tokenizer
  mkdir -p "$TOK" && cp "$src"/tokenizer_config.json "$TOK"/
  if [ -f "$src"/tokenizer.json ]; then  # stage.sh carries it as is; older stagings gzipped it
    cp "$src"/tokenizer.json "$TOK"/
  else
    python3 -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$src"/tokenizer.json.gz "$TOK"/tokenizer.json
  fi
fi
"$PY" -c 'import mlx.core as mx; print("mlx", mx.__version__, mx.default_device())'
WORK=/opt/multi
for a in "$@"; do [ "${prev:-}" = --work ] && WORK=$a; prev=$a; done
# Steps stop starting (and running ones are cut) MULTI_BUDGET seconds after this script
# started, so that the device tool's 600 s limit still leaves time to pack the logs.
DEADLINE=$(( ${MULTI_BUDGET:-550} - SECONDS ))
"$PY" scripts/gpu/multi.py --kooka "$KOOKA" --tokenizer "$TOK" --python "$PY" --out "$OUT" \
  --deadline "$DEADLINE" "$@"
rc=$?
cp "$WORK/results.json" "$OUT/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
exit $rc
