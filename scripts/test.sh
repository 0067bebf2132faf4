#!/usr/bin/env bash
# Sets up everything (scripts/setup.sh --tests) and runs the whole test suite.
#
# usage: scripts/test.sh [extra cargo test args]
#   KOOKA_SLOW_TESTS=0  skip the slow tests (they run by default here and in CI)
#
# Everything runs in release: MLX-heavy tests and the converter are much faster, and the
# build is shared with the one setup.sh makes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/setup.sh --tests
export KOOKA_SLOW_TESTS=${KOOKA_SLOW_TESTS:-1}
echo "==> cargo test --release --workspace (KOOKA_SLOW_TESTS=$KOOKA_SLOW_TESTS)" >&2
cargo test --release --workspace "$@"
