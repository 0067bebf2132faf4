#!/usr/bin/env bash
# Runs ON the GPU machine after `scripts/gpu/prepare.sh stash` (see prepare.sh): installs
# CUDA MLX, writes synthetic models (random weights, real shapes), checks greedy parity with
# mlx-lm, and benchmarks kooka against mlx-lm. Results go to $OUT.
#
# usage: scripts/gpu/bench.sh PHASE...   (MODELS="shape:bits ...")
# Phases: models parity bench profile determinism constrained. A phase that finished for a
# model is skipped when the script runs again on the same machine (markers in $M/done), and
# no phase starts after $DEADLINE (epoch seconds; default 520 s from now; export it to share
# one deadline between several calls), so a run that stops early resumes.
# Carried from the CPU machine: third_party/gpu/{cuda13.part.ab, mlx*.whl, kooka and
# step_profile (stripped release builds), tokenizer/ (SmolLM2's tokenizer files)}.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "$(date +%T) $*" | tee -a "$OUT/log.txt"; }
[ -f /opt/mlxsite/.done ] || scripts/gpu/prepare.sh install >> "$OUT/log.txt" 2>&1
. scripts/gpu/env.sh
KOOKA=${KOOKA:-$ROOT/third_party/gpu/kooka}
[ -x "$KOOKA" ] || KOOKA=/opt/mlxw/kooka
TOK=${TOK:-$ROOT/third_party/gpu/tokenizer}
[ -d "$TOK" ] || TOK=/opt/mlxw/tokenizer
PROFILE=${PROFILE:-$(dirname "$KOOKA")/step_profile}
M=/opt/models; mkdir -p $M/done
MODELS=${MODELS:-"smollm2-135m:0 smollm2-135m:4 llama-8b:4"}
DEADLINE=${DEADLINE:-$(($(date +%s) + 520))}
# decode tokens/s from `kooka generate`'s closing stats line
gen_tps() { sed -n 's/.*generation: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p' "$1" | tail -1; }
for phase in "$@"; do
  for spec in $MODELS; do
    shape=${spec%%:*}; bits=${spec##*:}; dir=$M/$shape-b$bits; name=$shape-b$bits
    [ -f $M/done/$phase-$name ] && continue
    [ "$(date +%s)" -lt "$DEADLINE" ] || { log "time budget spent, stopping before $phase $name"; exit 0; }
    case $phase in
      models)
        log "make $name"
        [ -f $dir/config.json ] || python3 scripts/make_synthetic_model.py --shape $shape --bits $bits --tokenizer-from $TOK --out $dir >> "$OUT/log.txt" 2>&1
        ;;
      parity)
        log "parity $name"
        ids=$(python3 -c 'print(",".join(str(100 + 7 * i) for i in range(24)))')
        $KOOKA generate --model $dir --prompt-tokens $ids --print-tokens --ignore-eos --max-tokens 32 \
          --print-logits $OUT/kooka-logits-$name.json > $OUT/kooka-tokens-$name.json
        echo "[{\"model\": \"$dir\", \"max_tokens\": 32, \"tokens\": [$ids]}]" | python3 tests/python/mlx_lm_reference.py - > $OUT/ref-$name.json
        python3 - "$OUT/kooka-tokens-$name.json" "$OUT/ref-$name.json" "$name" "$OUT/kooka-logits-$name.json" <<'PY' | tee -a "$OUT/parity.txt"
import json, sys
k = json.load(open(sys.argv[1]))["tokens"]; ref = json.load(open(sys.argv[2]))[0]
r = ref["tokens"][:len(k)]
same = sum(a == b for a, b in zip(k, r))
# The last prompt position's logits: the largest difference, and the reference's margin
# between its top two (random weights make near-ties: a flip there is not a bug).
kl = json.load(open(sys.argv[4])); rl = ref["logits"]
diff = max(abs(a - b) for a, b in zip(kl, rl))
top = sorted(rl, reverse=True)[:2]
print(f"{sys.argv[3]}: greedy tokens identical {same}/{len(k)}{'' if k == r else ' MISMATCH'}; "
      f"last prompt logits max |diff| {diff:.4g}, reference top-2 margin {top[0] - top[1]:.4g}")
PY
        ;;
      bench)
        log "bench $name"
        python3 scripts/bench.py --model $dir --kooka $KOOKA --json "$OUT/bench-$name.json" | tee -a "$OUT/bench.md"
        ;;
      profile)
        log "profile $name"
        { echo "## $name"; $PROFILE $dir 512 128; python3 scripts/gpu/step_profile.py $dir 512 128; } 2>&1 | grep -v '^\s*$' | tee -a "$OUT/profile.md"
        ;;
      determinism)
        # the same greedy run three times, each in a fresh process
        log "determinism $name"
        ids=$(python3 -c 'print(",".join(str(100 + 7 * i) for i in range(24)))')
        for i in 1 2 3; do
          $KOOKA generate --model $dir --prompt-tokens $ids --print-tokens --ignore-eos --max-tokens 64 > $OUT/det-kooka-$name-$i.json
        done
        python3 - "$OUT" "$name" <<'PY' | tee -a "$OUT/determinism.txt"
import json, sys
out, name = sys.argv[1:]
k = [json.load(open(f"{out}/det-kooka-{name}-{i}.json"))["tokens"] for i in (1, 2, 3)]
def first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
print(f"{name}: 64 greedy tokens, fresh processes 2 and 3 vs 1 first differ at "
      f"{[first_diff(k[0], x) for x in k[1:]]} (None: identical)")
PY
        ;;
      constrained)
        # decode tokens/s with and without a JSON schema, interleaved, same prompt
        log "constrained $name"
        S='{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":120},"hobbies":{"type":"array","items":{"type":"string"}}},"required":["name","age","hobbies"]}'
        P="Describe a fictional person as JSON with name, age and a long list of hobbies."
        free=(); schema=()
        for i in 1 2 3 4; do
          $KOOKA generate --model $dir --prompt "$P" --max-tokens 120 --ignore-eos > $OUT/free-$name-$i.txt 2>&1
          $KOOKA generate --model $dir --prompt "$P" --max-tokens 120 --ignore-eos --json-schema "$S" > $OUT/schema-$name-$i.txt 2>&1
          free+=("$(gen_tps $OUT/free-$name-$i.txt)"); schema+=("$(gen_tps $OUT/schema-$name-$i.txt)")
        done
        echo "$name decode tok/s, runs 1-4: free ${free[*]} | json-schema ${schema[*]}" | tee -a "$OUT/constrained.txt"
        ;;
    esac
    touch $M/done/$phase-$name
  done
done
log done
