#!/usr/bin/env bash
# One command for the tests: install into .venv, lint with ruff, run pytest. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Headless Chromium for the browser tests, node and npm for the viewer-format tests (InterProt's
# TypeScript types, Neuronpedia's upload schema): Debian's packages. Those tests skip when they cannot
# be had.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1) \
        || echo "${missing[*]} could not be installed; the tests needing them will skip" >&2
fi

.venv/bin/ruff check .

# pytest exits 5 when it collected no test: that is a failure here too.
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit "$status"
