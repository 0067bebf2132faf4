#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh --tests) and runs the whole test suite.
#
# usage: scripts/test.sh [extra cargo test args]
#   KOOKA_SLOW_TESTS=0      skip the slow tests (they run by default here and in CI; the
#                           soak in tests/hardening.rs takes KOOKA_SOAK_SECS: 300 here, to
#                           keep CI under an hour; 600 when run alone)
#   KOOKA_CONTRACT_TESTS=0  skip the contract suite (tests/contract) against `kooka serve`
#   KOOKA_FUZZ_SLOW=0       skip the contract suite's stalled-body test (up to 40 s; the other
#                           `fuzz` tests run with the SmolLM2 contract run, as `contract` tests)
#
# Everything runs in release: MLX-heavy tests and the converter are much faster, and the
# build is shared with the one setup.sh makes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/setup.sh --tests
export KOOKA_SLOW_TESTS=${KOOKA_SLOW_TESTS:-1}
export KOOKA_SOAK_SECS=${KOOKA_SOAK_SECS:-300}
echo "==> cargo test --release --workspace (KOOKA_SLOW_TESTS=$KOOKA_SLOW_TESTS)" >&2
cargo test --release --workspace "$@"

# ---- contract suite (tests/contract): real clients against a real `kooka serve` ---------------
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true' EXIT
# run_contract MODEL PYTEST_ARGS...: serves MODEL on a free port (with an API key, so the auth
# tests run too), runs the suite against it, stops the server; returns pytest's status.
run_contract() {
  local model=$1 key=kooka-contract-key dir addr="" rc=0
  shift
  dir=$(mktemp -d)
  target/release/kooka serve --port 0 --model "$model" --api-key "$key" \
    >"$dir/stdout" 2>"$dir/stderr" &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    addr=$(sed -n 's|^kooka: listening on http://||p' "$dir/stdout" | head -1)
    [ -n "$addr" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$addr" ]; then
    echo "test.sh: kooka serve --model $model did not start; its log:" >&2
    tail -50 "$dir/stderr" >&2
    rc=1
  else
    echo "==> contract suite against kooka serve --model $model (http://$addr): pytest $*" >&2
    third_party/venv/bin/python -m pytest tests/contract --base-url "http://$addr" \
      --api-key "$key" "$@" || rc=$?
    [ $rc -ne 0 ] && { echo "test.sh: contract suite failed; server log tail:" >&2; tail -30 "$dir/stderr" >&2; }
  fi
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  rm -rf "$dir"
  return $rc
}
if [ "${KOOKA_CONTRACT_TESTS:-1}" != 0 ]; then
  rc=0
  # Constrained decoding guarantees forced tool calls on any model: run the tools tests here too.
  run_contract models/SmolLM2-135M-Instruct -m "(contract or unit) and not agents" --assume-tools || rc=1
  # Forced tool calls need a model that emits them (setup.sh --tests converts this one).
  if [ -f models/Qwen2.5-Coder-0.5B-Instruct/config.json ]; then
    # ... and the coding-agent CLIs (Claude Code, Codex, opencode) run against it.
    run_contract models/Qwen2.5-Coder-0.5B-Instruct -m "contract and (tools or agents)" || rc=1
  else
    echo "test.sh: models/Qwen2.5-Coder-0.5B-Instruct is missing: run scripts/setup.sh --tests" >&2
    rc=1
  fi
  # MiniMax-M2's markup (<minimax:tool_call>, and its template's open <think>) and GLM's
  # (<arg_key>/<arg_value>), on tiny random models: forced calls come back as tool calls.
  # gpt-oss's harmony channels (<|channel|>analysis / commentary to=functions.X / final) too.
  # Nemotron-H's <tool_call><function=...><parameter=...> on a hybrid Mamba-2 model, whose
  # prefix cache resumes at checkpoints. (Model-specific tests skip other models by name.)
  for m in MiniMax-M2-tiny-random GLM-4.6-tiny-random gpt-oss-tiny-random \
      NVIDIA-Nemotron-3-Nano-tiny-random; do
    if [ -f models/$m/config.json ]; then
      run_contract models/$m -m "contract and (tools or minimax or gpt_oss or nemotron)" || rc=1
    else
      echo "test.sh: models/$m is missing: run scripts/setup.sh --tests" >&2
      rc=1
    fi
  done
  [ $rc -eq 0 ] || { echo "test.sh: the contract suite failed" >&2; exit 1; }
fi
