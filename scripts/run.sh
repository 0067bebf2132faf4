#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh) and runs kooka's main job: serving the default model
# over the OpenAI-compatible API on http://127.0.0.1:8080 (extra arguments go to `kooka serve`,
# e.g. --port 9000 or --host 0.0.0.0). Stop it with Ctrl-C.
#
# usage: scripts/run.sh [kooka serve flags]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/target/release/kooka" serve --model "$ROOT/models/SmolLM2-135M-Instruct" "$@"
