#!/usr/bin/env bash
# Points the BLAS/LAPACK bundled in an MLX CPU wheel (reference netlib builds, renamed by
# auditwheel, e.g. libblas-bd8a282c.so.3.10.0) at Debian's OpenBLAS, which has the same
# cblas and Fortran ABI and is ~5x faster on matmuls. The originals are kept as *.netlib.
#
# usage: scripts/use-openblas.sh DIR_WITH_BUNDLED_LIBS
set -euo pipefail
dir=$1
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread
for f in libblas.so.3 liblapack.so.3; do
  [ -e "$openblas/$f" ] || { echo "use-openblas.sh: $openblas/$f missing (apt-get install libopenblas0-pthread)" >&2; exit 1; }
done
shopt -s nullglob
for lib in "$dir"/libblas-*.so.* "$dir"/liblapack-*.so.*; do
  case "$lib" in *.netlib) continue ;; esac
  name=$(basename "$lib")
  target="$openblas/${name%%-*}.so.3"
  [ -L "$lib" ] && [ "$(readlink "$lib")" = "$target" ] && continue
  [ -L "$lib" ] || mv "$lib" "$lib.netlib"
  ln -sfn "$target" "$lib"
done
