#!/usr/bin/env bash
# Build the project's virtual environment from the pinned requirements. Safe to re-run.
set -euo pipefail
python_bin=${1:-python3.11}
venv=${2:-.venv}

if ! command -v "$python_bin" >/dev/null; then
  echo "setup: $python_bin not found; install Python 3.11 or pass PYTHON=..." >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet -r requirements/dev.txt
"${pip[@]}" install --quiet --no-deps -r requirements/colpali.txt
"$venv/bin/python" -c "import colpali_engine, onnxruntime, torchvision; print('setup: ok, torch', __import__('torch').__version__)"
