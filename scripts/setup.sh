#!/usr/bin/env bash
# Create .venv and install mimo into it. torch goes first, pinned, so pip never picks a
# multi-GB CUDA build by itself. Usage: scripts/setup.sh [--dev]   (--dev adds test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==${MIMO_TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
extra=""
if [ "${1:-}" = "--dev" ]; then extra="[dev]"; fi
.venv/bin/python -m pip install -q -e ".${extra}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, mimo; print(f'mimo {mimo.__version__} ready (torch {torch.__version__})')"
