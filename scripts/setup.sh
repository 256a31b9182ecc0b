#!/usr/bin/env bash
# Create .venv and install mimo into it, saying what each step does. torch goes first, pinned, so pip
# never picks a multi-GB CUDA build by itself. Usage: scripts/setup.sh [--dev]   (--dev adds test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${MIMO_TORCH_VERSION:-2.13.0}
# setuptools' editable-install notice is a warning block about import shadowing that does not apply here.
export PYTHONWARNINGS=ignore
step() { printf '==> %s\n' "$*"; }
# pip's own lines that show progress (what it fetches and installs), without "Requirement already satisfied".
pip_progress() { grep -E '^(Collecting|Downloading|Installing collected|Successfully installed)' || true; }
pip_install() {  # pip install "$@", showing its progress lines; its whole output if it fails
  local log; log=$(mktemp)
  if .venv/bin/python -m pip install "$@" 2>&1 | tee "$log" | pip_progress; then rm -f "$log"; return; fi
  echo "pip install $* failed; its full output:"; cat "$log"; rm -f "$log"; exit 1
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
step "updating pip"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" 2>/dev/null; then
  step "torch $TORCH already installed"
else
  step "installing torch $TORCH (CPU build: from this machine's wheel cache if it has one, else PyPI)"
  pip_install "torch==$TORCH"
fi
extra=""
what="mimo and its dependencies (safetensors, tokenizers, jinja2, fastapi, uvicorn, pydantic, tqdm, matplotlib)"
if [ "${1:-}" = "--dev" ]; then
  extra="[dev]"
  what="$what, and the test tools (pytest, ruff, import-linter, transformers, openai)"
fi
step "installing $what"
pip_install -e ".${extra}"
# mimo[structured] is xgrammar, whose package also requires triton, the compiler of its GPU kernels (~1 GB
# installed) that a CPU never imports (xgrammar masks CPU logits in C++). So here: xgrammar without its
# dependencies, then the ones it imports on a CPU.
step "installing xgrammar (constrained tool calls and JSON replies in mimo serve) and what it imports on a CPU"
pip_install --no-deps "xgrammar>=0.2.9"
pip_install "apache-tvm-ffi>=0.1.11" "transformers>=4.38" "typing-extensions>=4.9"
step "building mimo's CPU decode kernels (once per machine, about 15 s; mimo falls back to torch ops without a compiler)"
.venv/bin/mimo kernels --build | grep -v "^building" || echo "    (not built: decoding will use torch ops)"
.venv/bin/python -c "import torch, mimo; print(f'mimo {mimo.__version__} ready (torch {torch.__version__})')"
