#!/usr/bin/env bash
# Runs ON the GPU machine after `scripts/gpu/prepare.sh stash` (see prepare.sh): installs
# CUDA MLX, writes synthetic models (random weights, real shapes), checks greedy parity with
# mlx-lm, and benchmarks kooka against mlx-lm. Results go to $OUT.
#
# usage: scripts/gpu/bench.sh PHASE...   (phases: models parity bench; MODELS="shape:bits ...")
# Carried from the CPU machine: third_party/gpu/{cuda13.part.ab, mlx*.whl, kooka (stripped
# release build), tokenizer/ (SmolLM2's tokenizer files)}.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "$(date +%T) $*" | tee -a "$OUT/log.txt"; }
[ -f /opt/mlxsite/.done ] || scripts/gpu/prepare.sh install >> "$OUT/log.txt" 2>&1
. scripts/gpu/env.sh
KOOKA=${KOOKA:-$ROOT/third_party/gpu/kooka}
[ -x "$KOOKA" ] || KOOKA=/opt/mlxw/kooka
TOK=$ROOT/third_party/gpu/tokenizer
[ -d "$TOK" ] || TOK=/opt/mlxw/tokenizer
M=/opt/models; mkdir -p $M
MODELS=${MODELS:-"smollm2-135m:0 smollm2-135m:4 llama-8b:4"}
for phase in "$@"; do
  for spec in $MODELS; do
    shape=${spec%%:*}; bits=${spec##*:}; dir=$M/$shape-b$bits; name=$shape-b$bits
    case $phase in
      models)
        log "make $name"
        [ -f $dir/config.json ] || python3 scripts/make_synthetic_model.py --shape $shape --bits $bits --tokenizer-from $TOK --out $dir >> "$OUT/log.txt" 2>&1
        ;;
      parity)
        log "parity $name"
        ids=$(python3 -c 'print(",".join(str(100 + 7 * i) for i in range(24)))')
        $KOOKA generate --model $dir --prompt-tokens $ids --print-tokens --ignore-eos --max-tokens 32 > $OUT/kooka-tokens-$name.json
        echo "[{\"model\": \"$dir\", \"max_tokens\": 32, \"tokens\": [$ids]}]" | python3 tests/python/mlx_lm_reference.py - > $OUT/ref-$name.json
        python3 - "$OUT/kooka-tokens-$name.json" "$OUT/ref-$name.json" "$name" <<'PY' | tee -a "$OUT/parity.txt"
import json, sys
k = json.load(open(sys.argv[1]))["tokens"]; r = json.load(open(sys.argv[2]))[0]["tokens"][:len(k)]
same = sum(a == b for a, b in zip(k, r))
print(f"{sys.argv[3]}: greedy tokens identical {same}/{len(k)}{'' if k == r else ' MISMATCH'}")
PY
        ;;
      bench)
        log "bench $name"
        python3 scripts/bench.py --model $dir --kooka $KOOKA --json "$OUT/bench-$name.json" | tee -a "$OUT/bench.md"
        ;;
    esac
  done
done
log done
