#!/usr/bin/env bash
# Create .venv in the repository and install plmlabel into it (editable, with the dev extra).
# Safe to rerun: an existing .venv is reused and only missing packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The local CPU build of torch first: installing torch any other way pulls several GB of CUDA packages.
# On a machine with a GPU, install the CUDA build of torch you want before running this script instead.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet torch==2.13.0
fi
# the ray extra too, so CI runs the Ray test (about 25 s; it leaves the CPU torch alone), and the
# interop extra, so CI runs the SAELens round trips against the real sae-lens (about 60 packages:
# transformer-lens, transformers, datasets...; about 2 minutes on a fresh .venv; the CPU torch stays)
.venv/bin/python -m pip install --quiet -e ".[dev,ray,interop]"
