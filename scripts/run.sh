#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs kooka's main job on the default model.
# Until the HTTP server lands, that is `kooka generate`; extra arguments go to it.
#
# usage: scripts/run.sh [kooka generate flags, e.g. --prompt "Hello" --max-tokens 64]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
if [ $# -eq 0 ]; then
  set -- --prompt "What is the capital of France?" --max-tokens 64
fi
exec "$ROOT/target/release/kooka" generate --model "$ROOT/models/SmolLM2-135M-Instruct" "$@"
