#!/usr/bin/env bash
# Runs ON the GPU machine (device tool): installs MLX 0.32.2's CUDA build and the Python
# reference from wheels carried in third_party/gpu/ (the machine has no network).
#
# The mlx-cuda-13 wheel (~86 MiB) is larger than one transfer, so it travels as two parts
# (third_party/gpu/cuda13.part.aa, .ab) in two consecutive runs on the same warm machine:
#   run 1: scripts/gpu/prepare.sh stash     (copies the parts present to /opt/mlxw)
#   run 2: scripts/gpu/prepare.sh install   (stashes the rest, joins, checks, unpacks)
# Afterwards: source scripts/gpu/env.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CUDA_WHEEL_SHA=335094ccd1c0c6dc3e09c8caba207c8180602bacc0c38ba20c1d81e9456ab394
mkdir -p /opt/mlxw
cp -rn "$ROOT"/third_party/gpu/* /opt/mlxw/ 2>/dev/null || true
[ "${1:-}" = stash ] && { ls -la /opt/mlxw; exit 0; }
cd /opt/mlxw
if ! [ -f /opt/mlxsite/.done ]; then
  cat cuda13.part.* > mlx_cuda_13.whl
  echo "$CUDA_WHEEL_SHA  mlx_cuda_13.whl" | sha256sum -c -
  rm -rf /opt/mlxsite && mkdir -p /opt/mlxsite
  python3 -m zipfile -e mlx_cuda_13.whl /opt/mlxsite
  python3 -m zipfile -e mlx-0.32.2-cp312-cp312-manylinux_2_35_x86_64.whl /opt/mlxsite
  python3 -m zipfile -e mlx_lm-0.32.2-py3-none-any.whl /opt/mlxsite
  ln -sfn "$(python3 -c 'import nvidia, os; print(nvidia.__path__[0])')" /opt/mlxsite/nvidia
  touch /opt/mlxsite/.done
fi
. "$ROOT/scripts/gpu/env.sh"
python3 -c 'import mlx.core as mx; print("mlx", mx.__version__, mx.default_device())'
