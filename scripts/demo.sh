#!/usr/bin/env bash
# One command for a newcomer: install into .venv, then run the whole pipeline on the bundled sample.
# Extra arguments go to `plmlabel demo` (e.g. --workspace DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/plmlabel demo "$@"
