#!/usr/bin/env bash
# Set up (if needed) and run every check CI runs: lint, layering contract, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check mimo tests benchmarks
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
