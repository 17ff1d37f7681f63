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
# This machine's pip configuration lists local indexes with gaps; pip warns for every gap.
quiet_gaps() { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
# --no-compile: Python writes the bytecode of what it imports on first import, instead of pip compiling all of the
# 6 GB at install (40 s of a fresh setup's 162 s here).
"${pip[@]}" install --quiet --no-compile -r requirements/dev.txt 2> >(quiet_gaps)
"${pip[@]}" install --quiet --no-deps -r requirements/colpali.txt 2> >(quiet_gaps)
# The client package, editable: its dependencies are pinned in requirements/dev.txt.
"${pip[@]}" install --quiet --no-deps --no-build-isolation -e ./client 2> >(quiet_gaps)
# helm and kubectl for the chart's checks (make helm-lint, tests/test_helm.py).
scripts/fetch_k8s_tools.sh "$venv"
"$venv/bin/python" -c "import colqwen2_client.gateway, colpali_engine, onnxruntime, torchvision; print('setup: ok, torch', __import__('torch').__version__)"
