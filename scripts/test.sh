#!/usr/bin/env bash
# Set up the environment (idempotent) and run the whole test suite, lint included; without
# arguments, then the quick demo end to end in a fresh folder (its report must come out).
#   scripts/test.sh                  everything
#   scripts/test.sh tests/test_x.py  pytest's arguments: those tests only, no demo
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
if [ $# -eq 0 ]; then
  demo=$(mktemp -d)
  trap 'rm -rf "$demo"' EXIT
  scripts/demo.sh "$demo/run" --quick
  test -s "$demo/run/REPORT.md"
  grep -q "^## Real-time agents" "$demo/run/REPORT.md"
fi
