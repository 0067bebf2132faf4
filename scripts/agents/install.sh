#!/usr/bin/env bash
# Install the pinned coding-agent CLIs that kooka is exercised with into third_party/agents/
# (git-ignored):
#   @anthropic-ai/claude-code 2.1.328   -> claude
#   @openai/codex             0.169.0   -> codex
#   opencode-ai               1.18.33   -> opencode
#
# Pinning rule ("pinned version and sha256"): versions are exact in scripts/agents/package.json and
# every tarball, including each platform binary package, is locked in scripts/agents/package-lock.json
# with its sha512 `integrity`. `npm ci` installs exactly the lock and refuses any tarball whose
# sha512 differs, so the lock is our checksum list (sha512 is stronger than the sha256 the rule asks
# for). To bump a version: edit package.json, run
#   npm install --package-lock-only --ignore-scripts --prefix scripts/agents
# re-add the version-only opencode platform entries (described below; npm drops packages it cannot
# fetch) and commit both files.
#
# Platform binaries: codex, opencode and claude-code ship their native binaries as optional
# dependencies with `os`/`cpu` fields; `npm ci` installs only the one matching this machine
# (linux-x64 here, darwin-arm64 on an Apple Silicon Mac, ...). The lock holds all of the
# claude-code and codex platform packages with their sha512. The registry we locked against only
# has the linux-x64 packages of opencode 1.18.33 (opencode-linux-x64, -baseline), so the lock
# lists opencode's other platform packages by exact version only, without `integrity` (hand-added
# so that `npm ci` accepts the lock as in sync with opencode-ai's optionalDependencies). On such a
# platform `npm ci` fetches it unverified, or skips it if it cannot; in the latter case the
# matching opencode-<os>-<arch> package is installed afterwards with `npm install --no-save` at
# the same exact version.
#
# Idempotent and quick when done: a stamp holding the lock's sha256 and the platform is written
# after a successful install; if it matches and the binaries run, nothing is reinstalled.
#
# Usage: scripts/agents/install.sh [--force]
# Env:   KOOKA_AGENTS_DIR  install prefix (default: <repo>/third_party/agents)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DEST="${KOOKA_AGENTS_DIR:-$ROOT/third_party/agents}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

command -v node >/dev/null || { echo "install.sh: node is required (apt-get install nodejs npm)" >&2; exit 1; }
command -v npm >/dev/null || { echo "install.sh: npm is required" >&2; exit 1; }

OPENCODE_VERSION="$(node -p "require('$HERE/package.json').dependencies['opencode-ai']")"
PLATFORM="$(node -p 'process.platform + "-" + process.arch')"

sha256_of() {
    if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}
STAMP_WANT="$(sha256_of "$HERE/package-lock.json") $(sha256_of "$HERE/package.json") $PLATFORM"
STAMP="$DEST/.installed"
BIN="$DEST/node_modules/.bin"

binaries_ok() {
    local b
    for b in claude codex opencode; do
        [[ -x "$BIN/$b" ]] || return 1
    done
    "$BIN/codex" --version >/dev/null 2>&1 && "$BIN/opencode" --version >/dev/null 2>&1 \
        && "$BIN/claude" --version >/dev/null 2>&1
}

if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$STAMP_WANT" ]] && binaries_ok; then
    : # already installed
else
    mkdir -p "$DEST"
    rm -f "$STAMP"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$DEST/"
    # npm ci: exact lock, sha512 verified, platform-aware for optional deps. Scripts must run:
    # claude-code and codex place their platform binary in a postinstall step.
    # (claude-code declares engines node>=22; its CLI is a native binary, so npm only warns.)
    npm ci --prefix "$DEST" --no-audit --no-fund --loglevel=error

    # opencode: platform package not in the lock on platforms other than linux-x64 (see above).
    if ! "$BIN/opencode" --version >/dev/null 2>&1; then
        case "$PLATFORM" in
            darwin-arm64) oc_pkgs="opencode-darwin-arm64" ;;
            darwin-x64)   oc_pkgs="opencode-darwin-x64 opencode-darwin-x64-baseline" ;;
            linux-arm64)  oc_pkgs="opencode-linux-arm64 opencode-linux-arm64-musl" ;;
            linux-x64)    oc_pkgs="opencode-linux-x64 opencode-linux-x64-baseline opencode-linux-x64-musl opencode-linux-x64-baseline-musl" ;;
            win32-x64)    oc_pkgs="opencode-windows-x64 opencode-windows-x64-baseline" ;;
            win32-arm64)  oc_pkgs="opencode-windows-arm64" ;;
            *) echo "install.sh: no opencode binary known for $PLATFORM" >&2; exit 1 ;;
        esac
        for p in $oc_pkgs; do
            echo "install.sh: installing $p@$OPENCODE_VERSION (not in lock for $PLATFORM)" >&2
            if (cd "$DEST" && npm install --no-save --no-audit --no-fund --loglevel=error \
                    "$p@$OPENCODE_VERSION") && "$BIN/opencode" --version >/dev/null 2>&1; then
                break
            fi
        done
    fi
    binaries_ok || { echo "install.sh: a CLI does not run after install" >&2; exit 1; }
    echo "$STAMP_WANT" > "$STAMP"
fi

for b in claude codex opencode; do
    printf '%-9s %s  (%s)\n' "$b" "$BIN/$b" "$("$BIN/$b" --version 2>&1 | head -n1)"
done
