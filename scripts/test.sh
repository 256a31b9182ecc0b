#!/usr/bin/env bash
# Set up (if needed) and run every check CI runs: lint, layering contract, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
# The chat page's tests (tests/browser) drive the distribution's headless Chromium through Playwright;
# nothing downloads a browser (never `playwright install`). Without a chromium binary they skip.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=$(command -v sudo || true); fi
  if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    echo "installing Debian's chromium and fonts-dejavu-core with apt-get, for the browser tests"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  else
    echo "no chromium, and neither root nor sudo to install it: the browser tests will skip"
  fi
fi
.venv/bin/ruff check mimo tests benchmarks scripts
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
